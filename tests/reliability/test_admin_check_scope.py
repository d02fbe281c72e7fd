"""The admin check behind POST /api/jobs needs its own OAuth scope, and its absence is said clearly.

``POST /api/jobs`` asks Confluence, as the signed-in user, whether they administer the site
(``GET /wiki/rest/api/user/current?expand=operations``). Atlassian's OpenAPI description gives that
operation ``read:confluence-user`` or ``read:content-details:confluence``; the manifest declared
neither, so in production Atlassian's gateway refused every such request with 401 "scope does not
match", administrators' included, and no job could ever be requested from the UI. No test saw it: the
Confluence emulator ignored scopes. Now Forge's emulated tokens carry the manifest's scopes and the
Confluence emulator checks them against the OpenAPI descriptions for every request, so the local
stack fails where production would.

Every token here is the Forge emulator's RS256 token, registered with the ledger, so the suite's
final secrecy scan covers what the refusal made the code say.
"""

from __future__ import annotations

import json
from typing import Any

import requests

from local.confluence_emulator import SCOPE_REFUSAL
from local.oauth_scopes import manifest_scopes, read_manifest_scopes, scope_book
from tests.reliability.harness import queue_messages
from tests.reliability.ledger import Ledger
from tests.support import LocalWorld

ADMIN = "557058:aaaaaaaa-0000-4000-8000-0000000000a1"
ADMIN_CHECK = ("GET", "/wiki/rest/api/user/current")
JOB = {"job": "space-digest", "args": {"spaceKeys": ["ENG"], "hours": 24}}


def admin_asks_for_a_job(world: LocalWorld, ledger: Ledger, user_token: str) -> tuple[int, dict[str, Any]]:
    """The installed site's administrator, signed in with ``user_token``, asks for a space digest."""
    world.confluence.set_admins({ADMIN})
    headers = world.forge.headers(world.site, user_token=ledger.secret(user_token), principal=ADMIN)
    response = world.send("POST", "/api/jobs", headers, JOB)
    return int(response["statusCode"]), json.loads(response["body"]) if response.get("body") else {}


def queued_jobs(world: LocalWorld) -> list[dict[str, Any]]:
    return [json.loads(m["body"]) for m in queue_messages(world.stack, "JobsQueue")]


def test_the_manifest_grants_the_admin_checks_scope() -> None:
    operation = scope_book().operation(*ADMIN_CHECK)
    assert operation is not None
    assert operation.allows(read_manifest_scopes()), operation.describe()


def test_an_administrator_requests_a_job_with_the_scopes_forge_grants(local_world: LocalWorld, ledger: Ledger) -> None:
    ledger.secret(local_world.install())
    local_world.confluence.add_space("ENG", "Engineering")
    local_world.confluence.add_page("ENG", "Release notes")
    user_token = local_world.forge.app_token(subject=ADMIN)  # the manifest's scopes, as Forge grants them

    status, body = admin_asks_for_a_job(local_world, ledger, user_token)

    assert status == 202, body
    assert body["requestedBy"] == ADMIN
    [job] = queued_jobs(local_world)
    assert (job["job"], job["requestedBy"], job["requestId"]) == ("space-digest", ADMIN, body["requestId"])
    assert local_world.confluence.scope_refusals == []
    assert [(m, p) for m, p, _, t in local_world.confluence.requests_seen if t == user_token] == [
        ("GET", f"/ex/confluence/{local_world.site.cloud_id}{ADMIN_CHECK[1]}")
    ]
    # The job it asked for then runs as the app, with the app token's (the manifest's) scopes too.
    local_world.drain()
    [digest] = local_world.results("DIGEST")
    assert [p["title"] for p in digest["pages"]] == ["Release notes"]
    assert local_world.confluence.scope_refusals == []
    ledger.tried += 1


def test_a_user_token_without_the_scope_is_refused_and_no_job_is_queued(
    local_world: LocalWorld, ledger: Ledger
) -> None:
    ledger.secret(local_world.install())
    operation = scope_book().operation(*ADMIN_CHECK)
    assert operation is not None
    # The manifest of before the fix: every scope it granted, none of the admin check's.
    before = manifest_scopes() - {scope for alternative in operation.alternatives for scope in alternative}
    user_token = local_world.forge.app_token(subject=ADMIN, scopes=before)

    status, body = admin_asks_for_a_job(local_world, ledger, user_token)

    assert 400 <= status < 600, body
    assert "error" in body  # a JSON answer the UI can show, not a success
    assert queued_jobs(local_world) == []
    assert local_world.confluence.scope_refusals == [ADMIN_CHECK]
    # What the emulator answered is Atlassian's answer to a missing scope.
    answer = requests.get(
        local_world.site.api_base_url + ADMIN_CHECK[1],
        params={"expand": "operations"},
        headers={"Authorization": f"Bearer {user_token}"},
        timeout=10,
    )
    assert (answer.status_code, answer.json()) == (401, SCOPE_REFUSAL)
    ledger.seen(json.dumps(body), "response body")
    ledger.refused(1)
