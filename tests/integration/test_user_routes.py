"""UI routes that act as the signed-in user: GET /api/pages/recent and POST /api/jobs, through the real
forge_calls handler (moto for AWS, the Confluence emulator on loopback for the site).

What must hold: Confluence is asked with the request's own user token (never the app's in its place);
a call without a user token is a 403 JSON with the reason and sends nothing; the answer leaves within
the UI budget with what it has, marked partial; only a site administrator (as Confluence says, asked
as that user) may request a job, and the request records who asked.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pytest

from forge_remote import clock
from local.apigw import http_api_event
from local.confluence_emulator import ConfluenceEmulator
from local.forge_emulator import ForgeEmulator, Site, new_installation_id
from local.lambda_context import LocalLambdaContext
from local.stack import LocalStack

ADMIN = "557058:aaaaaaaa-0000-4000-8000-000000000001"
READER = "557058:bbbbbbbb-0000-4000-8000-000000000002"


@pytest.fixture
def site_confluence() -> Iterator[ConfluenceEmulator]:
    with ConfluenceEmulator(page_size_cap=5) as emulator:
        yield emulator


@pytest.fixture
def calls(stack: LocalStack, site_confluence: ConfluenceEmulator, handler: Callable[[str], Any]) -> Any:
    """forge_calls, allowed to send tokens to the emulator (http on loopback, as the local stack does)."""
    stack.parameters["AllowedApiHosts"] = site_confluence.api_base_url.split("/")[2]
    return handler("ForgeCallsFunction")


@pytest.fixture
def emulated_site(site_confluence: ConfluenceEmulator) -> Site:
    base = site_confluence.api_base_url
    return Site(new_installation_id(), base.rsplit("/", 1)[1], base, "https://example.atlassian.net")


@dataclass(frozen=True)
class UiWorld:
    """This module's world: moto, the Forge emulator, a Confluence site on the emulator, forge_calls."""

    stack: LocalStack
    forge: ForgeEmulator
    confluence: ConfluenceEmulator
    site: Site
    calls: Any


@pytest.fixture
def ui(
    stack: LocalStack, forge: ForgeEmulator, site_confluence: ConfluenceEmulator, emulated_site: Site, calls: Any
) -> UiWorld:
    return UiWorld(stack, forge, site_confluence, emulated_site, calls)


def call(
    module: Any,
    method: str,
    path: str,
    headers: dict[str, str],
    body: Any = None,
    *,
    query: str = "",
    timeout_s: float = 25,
) -> tuple[int, dict[str, Any]]:
    event = http_api_event(method, path, headers=headers, body=body, query=query)
    response = module.lambda_handler(event, LocalLambdaContext("forge-calls", timeout_s=timeout_s))
    return int(response["statusCode"]), json.loads(response["body"]) if response.get("body") else {}


def as_user(forge: ForgeEmulator, site: Site, account: str) -> tuple[dict[str, str], str]:
    token = forge.app_token(lifetime_s=3600, subject=account)
    return forge.headers(site, user_token=token, principal=account, app_token=forge.app_token()), token


def bearers(confluence: ConfluenceEmulator) -> list[str | None]:
    return [seen[3] for seen in confluence.requests_seen]


def queued(stack: LocalStack) -> list[dict[str, Any]]:
    """The job requests on the jobs queue, each with the message group it was sent in (``"group"``)."""
    sqs = boto3.client("sqs")
    messages = sqs.receive_message(
        QueueUrl=stack.physical["JobsQueue"], MaxNumberOfMessages=10, AttributeNames=["MessageGroupId"]
    ).get("Messages", [])
    return [{**json.loads(m["Body"]), "group": m.get("Attributes", {}).get("MessageGroupId")} for m in messages]


def days_ago(days: float) -> datetime:
    return datetime.fromtimestamp(clock.now(), UTC) - timedelta(days=days)


# -- GET /api/pages/recent ----------------------------------------------------------------------------
def test_recent_pages_are_the_users_newest_first_within_the_window(ui: UiWorld) -> None:
    ui.confluence.add_space("ENG", "Engineering")
    fresh = [ui.confluence.add_page("ENG", f"Fresh {n}", last_modified=days_ago(n + 0.5)) for n in range(3)]
    ui.confluence.add_page("ENG", "Old", last_modified=days_ago(30))
    headers, user_token = as_user(ui.forge, ui.site, READER)
    status, body = call(ui.calls, "GET", "/api/pages/recent", headers, query="days=7")
    assert status == 200, body
    assert [p["title"] for p in body["pages"]] == [p["title"] for p in fresh]
    assert body["partial"] is False
    assert set(bearers(ui.confluence)) == {user_token}  # as the user, never as the app


def test_recent_pages_cannot_include_what_the_user_may_not_see(ui: UiWorld) -> None:
    ui.confluence.add_space("ENG", "Engineering")
    ui.confluence.add_space("HR", "People")
    ui.confluence.add_page("ENG", "Roadmap", last_modified=days_ago(1))
    ui.confluence.add_page("HR", "Salaries", last_modified=days_ago(1))
    ui.confluence.restrict_space("HR", {ADMIN})
    reader, _ = as_user(ui.forge, ui.site, READER)
    admin, _ = as_user(ui.forge, ui.site, ADMIN)
    assert [p["title"] for p in call(ui.calls, "GET", "/api/pages/recent", reader)[1]["pages"]] == ["Roadmap"]
    assert sorted(p["title"] for p in call(ui.calls, "GET", "/api/pages/recent", admin)[1]["pages"]) == [
        "Roadmap",
        "Salaries",
    ]


def test_a_call_without_a_user_token_is_refused_and_sends_nothing(ui: UiWorld) -> None:
    headers = ui.forge.headers(ui.site, principal=READER, app_token=ui.forge.app_token())
    for method, path, body in (("GET", "/api/pages/recent", None), ("POST", "/api/jobs", {"job": "space-digest"})):
        status, answer = call(ui.calls, method, path, headers, body)
        assert status == 403
        assert answer["error"] == "user_token_required"
        assert "appUserToken" in answer["message"]
    assert ui.confluence.requests_seen == []  # no silent fall back to the app's token


@pytest.mark.parametrize(
    "query", ["days=0", "days=91", "days=x", "limit=0", "limit=201", "limit=-1", "days=%C2%B2", "days=7&days=7", "x=1"]
)
def test_out_of_range_parameters_are_a_400(ui: UiWorld, query: str) -> None:
    status, body = call(ui.calls, "GET", "/api/pages/recent", as_user(ui.forge, ui.site, READER)[0], query=query)
    assert status == 400
    assert body["error"] == "bad_request"
    assert ui.confluence.requests_seen == []


def test_a_slow_confluence_gets_a_partial_answer_inside_the_budget(ui: UiWorld) -> None:
    ui.confluence.add_space("ENG", "Engineering")
    for n in range(40):
        ui.confluence.add_page("ENG", f"Page {n}", last_modified=days_ago(1 + n / 100))
    ui.confluence.delay_s = 0.8  # 5 pages per answer: all 40 need 8 answers, more than the budget holds
    headers, _ = as_user(ui.forge, ui.site, READER)
    # A Lambda with 6 s left: the route keeps 2 s to answer, and no request may outlive the rest.
    status, body = call(ui.calls, "GET", "/api/pages/recent", headers, timeout_s=6)
    assert status == 200, body
    assert body["partial"] is True
    assert "time" in body["partialReason"]
    assert 0 < len(body["pages"]) < 40


def test_the_limit_stops_the_search_and_says_so(ui: UiWorld) -> None:
    ui.confluence.add_space("ENG", "Engineering")
    for n in range(12):
        ui.confluence.add_page("ENG", f"Page {n}", last_modified=days_ago(1 + n / 100))
    status, body = call(ui.calls, "GET", "/api/pages/recent", as_user(ui.forge, ui.site, READER)[0], query="limit=7")
    assert status == 200
    assert len(body["pages"]) == 7
    assert body["partial"] is True
    assert body["partialReason"] == "stopped at limit=7"
    assert len(ui.confluence.requests_seen) == 2  # 5 + 2 of the second answer: no page fetched past the limit


# -- POST /api/jobs -------------------------------------------------------------------------------------
def test_a_site_administrator_requests_a_job_and_is_recorded(ui: UiWorld) -> None:
    ui.confluence.set_admins({ADMIN})
    headers, user_token = as_user(ui.forge, ui.site, ADMIN)
    status, body = call(ui.calls, "POST", "/api/jobs", headers, {"job": "space-digest", "args": {"spaceKeys": ["ENG"]}})
    assert status == 202, body
    assert body["requestedBy"] == ADMIN
    [request] = queued(ui.stack)
    assert request["job"] == "space-digest"
    assert request["installationId"] == ui.site.installation_id  # from the FIT, never the body
    assert request["requestedBy"] == ADMIN
    assert request["requestId"] == body["requestId"]
    assert request["priority"] == "interactive"  # an administrator is waiting for it
    assert request["group"] == ui.site.installation_id  # the fair queue's tenant: this installation
    assert "notBefore" not in request  # now, not at a slot
    assert bearers(ui.confluence) == [user_token]  # Confluence was asked, as this user


def test_a_user_who_is_not_an_administrator_may_not_request_a_job(ui: UiWorld) -> None:
    ui.confluence.set_admins({ADMIN})
    headers, _ = as_user(ui.forge, ui.site, READER)
    status, answer = call(ui.calls, "POST", "/api/jobs", headers, {"job": "space-digest", "args": {}})
    assert status == 403
    assert answer["error"] == "forbidden"
    # The front end cannot vouch for the user: a body claiming admin rights is refused as it stands.
    body = {"job": "space-digest", "args": {}, "admin": True, "requestedBy": ADMIN}
    status, answer = call(ui.calls, "POST", "/api/jobs", headers, body)
    assert status == 400
    assert answer["error"] == "bad_request"
    assert queued(ui.stack) == []


def test_no_job_is_requested_for_an_uninstalled_site_even_by_an_administrator(ui: UiWorld) -> None:
    from forge_remote.storage.installations import InstallationRegistry

    ui.confluence.set_admins({ADMIN})
    headers, _ = as_user(ui.forge, ui.site, ADMIN)
    # The first call records the installation; then it is uninstalled (a page left open, a late call).
    assert call(ui.calls, "GET", "/api/status", headers)[0] == 200
    InstallationRegistry(boto3.client("dynamodb"), ui.stack.physical["AppTable"]).mark_uninstalled(
        ui.site.installation_id
    )
    status, answer = call(ui.calls, "POST", "/api/jobs", as_user(ui.forge, ui.site, ADMIN)[0], {"job": "space-digest"})
    assert status == 409, answer
    assert answer["error"] == "uninstalled"
    assert "uninstalled" in answer["message"]
    assert queued(ui.stack) == []
    assert bearers(ui.confluence) == []  # refused before Confluence is asked


@pytest.mark.parametrize(
    "body",
    [
        {"job": "drop-tables"},
        {"job": "space-digest", "args": ["ENG"]},
        {"args": {}},
        {"job": "space-digest", "args": {"pad": "x" * 5000}},
        {"job": []},
        {"job": "space-digest", "admin": True},
    ],
    ids=["unknown job", "args not an object", "no job", "too large", "job a list", "unknown field"],
)
def test_a_bad_job_request_is_a_400_and_queues_nothing(ui: UiWorld, body: dict[str, Any]) -> None:
    ui.confluence.set_admins({ADMIN})
    status, answer = call(ui.calls, "POST", "/api/jobs", as_user(ui.forge, ui.site, ADMIN)[0], body)
    assert status == 400
    assert answer["error"] == "bad_request"
    assert queued(ui.stack) == []
