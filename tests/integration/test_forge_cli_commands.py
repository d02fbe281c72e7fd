"""``forge_cli``'s commands that act on the running stack itself, against a stack in this process wired as
``make local`` wires it (``serve.share_with_forge_cli``: seeded site, state file, dev control endpoint),
with the jobs queue polled: ``call`` (and ``status``, its alias), ``--admin``, install after uninstall
(a reinstall's new installation id), ``clock``, ``ui-token``, ``page-updated``, ``event``, ``site``, and
the control endpoint's own answers. Loopback only; no wall-clock waits (the stack's clock is moved)."""

from __future__ import annotations

import json
import re
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
import requests

from local import forge_cli, serve
from local.dev_control import SECRET_HEADER
from local.forge_emulator import DEFAULT_ACCOUNT_ID, Content, ForgeEmulator
from local.job_outcomes import JobOutcome
from local.runtime import LocalRuntime
from local.seed import ADMIN_ACCOUNT_ID, AUDIT_LABEL, BOB_ACCOUNT_ID, EXAMPLE_PAGE_ID, USERS
from local.ui_dev import StatusPageServer

JOBS_BODY = json.dumps({"job": "space-digest", "args": {}})
RESTRICTED_TITLE = "Security review: payments service"
RUNBOOK_ID = "98306"  # On-call runbook: labelled audit, not restricted


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[tuple[LocalRuntime, serve.Shared]]:
    """``make local``'s wiring in this process, the jobs queue polled as it comes. The status page is a
    ``StatusPageServer`` that is never started: what the serve process tells it is what is checked."""
    with LocalRuntime() as rt:
        shared = serve.share_with_forge_cli(rt, tmp_path / "state.json")
        shared.attach(StatusPageServer(rt.forge, shared.site, rt.gateway_url, port=0))
        rt.poller.start(0.05)
        try:
            yield rt, shared
        finally:
            shared.remove()


@pytest.fixture
def installed(
    stack: tuple[LocalRuntime, serve.Shared], capsys: pytest.CaptureFixture[str]
) -> tuple[LocalRuntime, serve.Shared]:
    assert cli(stack[1], "install") == 0
    capsys.readouterr()
    return stack


def cli(shared: serve.Shared, *args: str) -> int:
    return forge_cli.main([*args, "--state-file", str(shared.state_file)])


def body_of(out: str) -> Any:
    """The JSON body a command printed after its ``METHOD PATH -> HTTP n`` line."""
    _, _, rest = out.partition(" -> HTTP ")
    text = rest.partition("\n")[2]
    document, _ = json.JSONDecoder().raw_decode(text)
    return document


def status_now(shared: serve.Shared, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    assert cli(shared, "status") == 0
    document: dict[str, Any] = body_of(capsys.readouterr().out)
    return document


def eventually(condition: Callable[[], bool], timeout_s: float = 20) -> bool:
    """Polls a condition the background poller makes true (bounded): a wait, never the assertion itself."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def outcomes(shared: serve.Shared, request_id: str) -> list[JobOutcome]:
    return [o for o in shared.journal.outcomes() if o.request_id == request_id]


def request_id_in(out: str) -> str:
    found = re.search(r"\(request ([0-9a-f]+)\)|\"requestId\": \"([0-9a-f]+)\"", out)
    assert found is not None, out
    return found.group(1) or found.group(2)


# -- call, status, --admin
def test_call_signs_a_ui_call_as_forge_does_with_a_query_string_and_another_user(
    installed: tuple[LocalRuntime, serve.Shared], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    rt, shared = installed
    assert cli(shared, "call", "GET", "/api/pages/recent?days=30&limit=50") == 0
    out = capsys.readouterr().out
    assert out.startswith("GET /api/pages/recent?days=30&limit=50 -> HTTP 200\n")
    titles = [page["title"] for page in body_of(out)["pages"]]
    assert "Release notes" in titles
    assert RESTRICTED_TITLE not in titles  # the route used the default user's own token: she may not see it
    assert cli(shared, "call", "get", "/api/pages/recent?days=30&limit=50", "--as", BOB_ACCOUNT_ID) == 0
    bob = capsys.readouterr().out
    assert RESTRICTED_TITLE in [page["title"] for page in body_of(bob)["pages"]]  # Bob is on the restriction
    assert "eyJ" not in out + bob  # no FIT, no token printed

    # What reached the remote: a FIT for the UI endpoint with the account as principal, and both tokens.
    captured: list[dict[str, Any]] = []

    def invoke(function: str, event: dict[str, Any]) -> Any:
        captured.append(event)
        return rt.invoke(function, event)

    monkeypatch.setattr(rt.gateway, "_invoke", invoke)
    assert cli(shared, "call", "GET", "/api/status", "--as", BOB_ACCOUNT_ID) == 0
    capsys.readouterr()
    [event] = captured
    headers = event["headers"]
    assert {"x-forge-oauth-system", "x-forge-oauth-user"} <= set(headers)
    claims = jwt.decode(headers["authorization"].split()[1], options={"verify_signature": False})
    assert (claims["principal"], claims["app"]["module"]["key"]) == (BOB_ACCOUNT_ID, "ui-endpoint")
    assert claims["app"]["installationId"] == shared.site.installation_id
    assert jwt.decode(headers["x-forge-oauth-user"], options={"verify_signature": False})["sub"] == BOB_ACCOUNT_ID


def test_status_is_call_get_api_status(
    installed: tuple[LocalRuntime, serve.Shared], capsys: pytest.CaptureFixture[str]
) -> None:
    _, shared = installed
    via_status = status_now(shared, capsys)
    assert cli(shared, "call", "GET", "/api/status") == 0
    via_call = body_of(capsys.readouterr().out)
    assert via_status.keys() == via_call.keys()
    assert via_status["installationId"] == via_call["installationId"] == shared.site.installation_id
    assert via_call["jobs"]["canRun"] is True


def test_post_api_jobs_needs_a_site_administrator_and_admin_makes_one(
    installed: tuple[LocalRuntime, serve.Shared], capsys: pytest.CaptureFixture[str]
) -> None:
    rt, shared = installed
    assert DEFAULT_ACCOUNT_ID not in rt.confluence.admins  # the CLI's default user is a plain user
    assert cli(shared, "call", "POST", "/api/jobs", "--body", JOBS_BODY) == 1
    out = capsys.readouterr().out
    assert "POST /api/jobs -> HTTP 403" in out
    assert body_of(out)["error"] == "forbidden"

    assert cli(shared, "call", "POST", "/api/jobs", "--body", JOBS_BODY, "--admin", "--wait") == 0
    out = capsys.readouterr().out
    assert f"{DEFAULT_ACCOUNT_ID} is now a Confluence administrator of the emulated site" in out
    assert "POST /api/jobs -> HTTP 202" in out
    assert body_of(out)["requestedBy"] == DEFAULT_ACCOUNT_ID
    assert 'done: {"spaces": 2, "pages": 4' in out  # ENG (3 pages edited in the last day) and PROD (1)
    assert "stored result (DIGEST, 2 records):" in out
    assert DEFAULT_ACCOUNT_ID in rt.confluence.admins  # for the stack, not just that call

    assert cli(shared, "call", "POST", "/api/jobs", "--body", JOBS_BODY) == 0  # still an administrator
    capsys.readouterr()
    assert cli(shared, "call", "POST", "/api/jobs", "--body", JOBS_BODY, "--no-admin") == 1
    assert "HTTP 403" in capsys.readouterr().out
    assert DEFAULT_ACCOUNT_ID not in rt.confluence.admins
    assert cli(shared, "call", "POST", "/api/jobs", "--body", JOBS_BODY, "--as", ADMIN_ACCOUNT_ID) == 0  # seeded
    assert "HTTP 202" in capsys.readouterr().out


# -- install after uninstall
def test_install_after_uninstall_is_a_reinstall_with_a_new_installation_id_everyone_uses(
    installed: tuple[LocalRuntime, serve.Shared], capsys: pytest.CaptureFixture[str]
) -> None:
    rt, shared = installed
    first = shared.site.installation_id
    assert cli(shared, "install") == 0  # installed already: the same installation, as an upgrade keeps it
    assert shared.site.installation_id == first
    assert cli(shared, "uninstall") == 0
    assert "Run install to reinstall" in capsys.readouterr().out
    assert cli(shared, "install") == 0
    out = capsys.readouterr().out
    second = shared.site.installation_id
    assert second != first
    assert f"{first} was uninstalled, so as Forge does this install gets a new installation id: {second}" in out
    assert '"installation": "active"' in out

    # The serve process uses it (its status page signs FITs for it), and so does every command.
    assert shared.status_page is not None
    assert shared.status_page.site.installation_id == second
    state = json.loads(shared.state_file.read_text(encoding="utf-8"))
    assert state["site"]["installationId"] == second
    assert stat.S_IMODE(shared.state_file.stat().st_mode) == 0o600
    assert status_now(shared, capsys)["installationId"] == second

    assert cli(shared, "job", "space-digest", "--wait") == 0
    out = capsys.readouterr().out
    assert f"job space-digest requested for {second}" in out
    assert "done: " in out
    assert rt.results(second, "DIGEST")
    assert rt.results(first, "DIGEST") == []  # the old installation's data went with its uninstall
    assert cli(shared, "page-created", "--wait") == 0
    assert [s["version"] for s in rt.results(second, "SNAPSHOT")] == [1]


# -- the stack's clock and the UI calls' app token
def test_clock_advance_expires_the_token_and_releases_deferred_jobs(
    installed: tuple[LocalRuntime, serve.Shared], capsys: pytest.CaptureFixture[str]
) -> None:
    rt, shared = installed
    assert cli(shared, "clock") == 0
    assert "(the same as this machine's clock)" in capsys.readouterr().out
    assert cli(shared, "ui-token", "none") == 0  # UI calls now hand over no app token: status shows what is stored
    assert "UI calls hand over no app token" in capsys.readouterr().out
    assert shared.status_page is not None
    assert shared.status_page.app_token_lifetime_s is None  # the status page's calls too

    assert cli(shared, "clock", "advance", "2h30m") == 0
    out = capsys.readouterr().out
    assert "stack clock moved 2 h 30 min forward" in out
    assert "(2 h 30 min ahead of this machine's clock)" in out
    soon = status_now(shared, capsys)  # installed with a 3 h token: 30 min left, jobs for 20 more
    [system] = [t for t in soon["tokens"] if t["subject"] == "system"]
    assert 1700 < system["validForSeconds"] <= 1800
    assert soon["jobs"]["canRun"] is True

    assert cli(shared, "clock", "advance", "90m") == 0
    capsys.readouterr()
    expired = status_now(shared, capsys)
    [system] = [t for t in expired["tokens"] if t["subject"] == "system"]
    assert (system["validForSeconds"], system["usableByJobs"]) == (0, False)
    assert (expired["jobs"]["canRun"], expired["jobs"]["canRunUntil"]) == (False, None)

    assert cli(shared, "job", "space-digest", "--wait") == 1
    out = capsys.readouterr().out
    assert "deferred: stored token is valid for less than" in out
    request_id = request_id_in(out)
    assert eventually(lambda: rt.poller.deferred == 1)  # the poller holds it back for its delay
    assert cli(shared, "clock", "advance", "10m") == 0
    assert "1 deferred job released: it runs again on the poller's next round" in capsys.readouterr().out
    assert eventually(lambda: len(outcomes(shared, request_id)) == 2)
    assert [o.status for o in outcomes(shared, request_id)] == ["deferred", "deferred"]  # still no token

    assert eventually(lambda: rt.poller.deferred == 1)
    assert cli(shared, "keepalive") == 0  # a token at last (the wake-up is not polled here: the clock is)
    assert cli(shared, "clock", "advance", "5m") == 0
    assert eventually(lambda: len(outcomes(shared, request_id)) == 3)
    assert outcomes(shared, request_id)[-1].status == "done"

    assert cli(shared, "ui-token", "30m") == 0
    assert "a fresh app token valid for 30 min" in capsys.readouterr().out
    assert shared.status_page.app_token_lifetime_s == 1800


# -- page edits and product events
def test_page_updated_makes_a_new_version_each_time(
    installed: tuple[LocalRuntime, serve.Shared], capsys: pytest.CaptureFixture[str]
) -> None:
    rt, shared = installed
    seen: list[str] = []
    for expected in (2, 3):
        assert cli(shared, "page-updated", "--wait") == 0
        out = capsys.readouterr().out
        assert f"page {EXAMPLE_PAGE_ID} (Release notes) edited: now version {expected}" in out
        assert f'"version": {expected}' in out  # the snapshot the job stored
        seen.append(request_id_in(out))
    assert len(set(seen)) == 2  # two deliveries, two job requests
    assert rt.confluence.pages[int(EXAMPLE_PAGE_ID)]["version"] == 3
    assert sorted(s["version"] for s in rt.results(shared.site.installation_id, "SNAPSHOT")) == [2, 3]


def test_event_sends_any_product_event_type_and_a_mapped_one_requests_its_job(
    installed: tuple[LocalRuntime, serve.Shared], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    rt, shared = installed
    assert cli(shared, "event", "avi:confluence:added:label", "--page-id", RUNBOOK_ID) == 0
    out = capsys.readouterr().out
    assert "POST /forge/events -> HTTP 202" in out
    assert body_of(out) == {"event": "avi:confluence:added:label", "jobs": 0}  # not in EVENTS: acknowledged

    # What a user does in functions/forge_triggers/app.py's EVENTS, done to the loaded handler.
    def audit_label(event: Any) -> tuple[str, dict[str, Any]] | None:
        if event.body["label"]["name"] != AUDIT_LABEL:
            return None
        return "page-snapshot", {"pageId": event.body["content"]["id"]}

    handler = rt.functions["ForgeTriggersFunction"].module  # the loaded app.py's lambda_handler object
    monkeypatch.setitem(handler.intake._events, "avi:confluence:added:label", audit_label)
    assert (
        cli(shared, "event", "avi:confluence:added:label", "--page-id", RUNBOOK_ID, "--label", "audit", "--wait") == 0
    )
    out = capsys.readouterr().out
    assert f'done: {{"pageId": {RUNBOOK_ID}, "found": true, "version": 2' in out
    assert '"title": "On-call runbook"' in out
    assert cli(shared, "event", "avi:confluence:added:label", "--label", "draft", "--wait") == 1
    assert "no job was requested, so there is nothing to wait for" in capsys.readouterr().out
    assert cli(shared, "event", "avi:confluence:created:space") == 0
    assert body_of(capsys.readouterr().out)["jobs"] == 0


def test_product_events_take_the_shape_of_their_kind() -> None:
    forge = ForgeEmulator()
    page = Content("98306", "On-call runbook", "ENG", "Engineering", version=2, space_id=98301)
    added = forge.product_event("avi:confluence:added:label", content=page, label="audit", created_at=0)
    assert added["eventCreatedDate"] == "1970-01-01T00:00:00.000Z"
    assert added["label"]["name"] == added["label"]["label"] == "audit"
    assert added["content"]["id"] == "98306"
    assert added["content"]["space"] == {
        "id": 98301,
        "key": "ENG",
        "name": "Engineering",
        "type": "global",
        "status": "current",
    }
    assert "content" not in forge.product_event("avi:confluence:created:label", content=page)
    space = forge.product_event("avi:confluence:updated:space", content=page)
    assert (space["space"]["key"], "content" in space) == ("ENG", False)
    updated = forge.product_event("avi:confluence:updated:page", content=page)
    assert (updated["content"]["type"], updated["content"]["version"]) == ("page", {"number": 2})
    assert forge.product_event("avi:confluence:created:blogpost", content=page)["content"]["type"] == "blogpost"
    # Two events sent apart are two deliveries: the backend de-duplicates only Forge's retries of one.
    assert forge.product_event("avi:confluence:updated:page", content=page, created_at=1) != forge.product_event(
        "avi:confluence:updated:page", content=page, created_at=2
    )


# -- the seeded site
def test_the_seeded_site_is_a_realistic_handful(
    stack: tuple[LocalRuntime, serve.Shared], capsys: pytest.CaptureFixture[str]
) -> None:
    rt, shared = stack
    assert shared.page_id == EXAMPLE_PAGE_ID  # what job --help and the banner name exists
    assert cli(shared, "site") == 0
    out = capsys.readouterr().out
    assert [line.split()[0] for line in out.split("spaces:\n")[1].split("pages")[0].splitlines()] == [
        "ENG",
        "PROD",
        "HR",
    ]
    pages = re.findall(r"^  (\d+) +(\w+) +v(\d+) +(.+?)  \[(.*?)\]", out, re.MULTILINE)
    assert len(pages) == 10
    assert sum(AUDIT_LABEL in labels.split(", ") for *_, labels in pages) == 4
    assert f"{RESTRICTED_TITLE}  [security, audit]  restricted: only Priya Raman, Bob Chen and the app" in out
    assert re.search(rf"{re.escape(ADMIN_ACCOUNT_ID)} +Priya Raman  \(site administrator\)", out)
    assert re.search(rf"{re.escape(DEFAULT_ACCOUNT_ID)} +Dana Lee  \(the CLI's default user", out)
    assert all(name in out for name in USERS.values())
    assert rt.confluence.admins == {ADMIN_ACCOUNT_ID}

    # The README's label example finds pages: as the app (a job) all four, as the default user three.
    def audited(token: str) -> list[str]:
        response = requests.get(
            rt.confluence.api_base_url + "/wiki/rest/api/content/search",
            params={"cql": f'type = page AND label = "{AUDIT_LABEL}"', "limit": "50"},
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        )
        assert response.status_code == 200, response.text
        return [result["title"] for result in response.json()["results"]]

    assert len(audited(rt.forge.app_token())) == 4
    assert RESTRICTED_TITLE not in audited(rt.forge.app_token(subject=DEFAULT_ACCOUNT_ID))
    assert len(audited(rt.forge.app_token(subject=BOB_ACCOUNT_ID))) == 4
    with pytest.raises(SystemExit):
        forge_cli.main(["job", "--help"])
    assert f'{{"pageId": "{EXAMPLE_PAGE_ID}"}}' in capsys.readouterr().out  # job --help's example page exists


# -- bad usage: exit 2, nothing sent
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["call", "TRACE", "/api/status"], "METHOD must be one of DELETE, GET, PATCH, POST, PUT"),
        (["call", "GET", "api/status"], "PATH must be an absolute path"),
        (["call", "GET", "//elsewhere/api"], "PATH must be an absolute path"),
        (["call", "POST", "/api/jobs", "--body", "{job: 1}"], "--body is not valid JSON"),
        (["call", "GET", "/api/status", "--body", "{}"], "a GET sends no body"),
        (["call", "GET", "/api/status", "--as", "not an id"], "--as must be an Atlassian account id"),
        (["clock", "advance"], "clock advance needs a DURATION"),
        (["clock", "advance", "soon"], "not a duration: 'soon'"),
        (["clock", "advance", "0s"], "must be more than 0 seconds"),
        (["ui-token", "forever"], "not a duration: 'forever' (for example 90m, 3h, 3600s, 1h30m or 2d); or none"),
        (["event", "created:page"], "EVENT_TYPE must be a product event type"),
        (["page-updated", "--page-id", "abc"], "--page-id must be a page's numeric id"),
        (["page-created", "--wait", "--timeout", "0"], "--timeout must be a positive number"),
    ],
)
def test_bad_usage_exits_2_before_anything_is_read_or_sent(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    with pytest.raises(SystemExit) as exited:
        forge_cli.main([*args, "--state-file", str(tmp_path / "no-stack.json")])  # no stack at all: never read
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("text", "seconds"), [("90m", 5400), ("3h", 10800), ("3600s", 3600), ("1h30m", 5400), ("2d", 172800), ("45", 45)]
)
def test_durations(text: str, seconds: float) -> None:
    assert forge_cli.parse_duration(text) == seconds


# -- the control endpoint itself
def test_the_control_endpoint_wants_its_secret_and_answers_in_json_without_secrets(
    stack: tuple[LocalRuntime, serve.Shared],
) -> None:
    rt, shared = stack
    state = json.loads(shared.state_file.read_text(encoding="utf-8"))
    url, secret = state["control"]["url"], state["control"]["secret"]
    assert url.startswith("http://127.0.0.1:")
    assert url != rt.gateway_url  # not part of the API Gateway emulation

    def ask(method: str, path: str, body: Any = None, *, key: str | None = secret, **kwargs: Any) -> requests.Response:
        headers = {SECRET_HEADER: key} if key is not None else {}
        return requests.request(method, url + path, headers=headers, json=body, timeout=30, **kwargs)

    for key in (None, "", secret[:-1] + ("A" if secret[-1] != "A" else "B")):
        refused = ask("GET", "/v1/stack", key=key)
        assert (refused.status_code, refused.json()["error"]) == (401, "unauthorized")
    assert ask("GET", "/v1/nowhere", key=None).status_code == 401  # the secret before anything else
    assert (ask("GET", "/v1/nowhere").status_code, ask("GET", "/v1/nowhere").json()["error"]) == (404, "not_found")
    assert ask("GET", "/v1/clock/advance").status_code == 405
    form = requests.post(url + "/v1/clock/advance", headers={SECRET_HEADER: secret}, data="seconds=60", timeout=30)
    assert form.status_code == 415  # what a browser's cross-site form could send
    for bad in ({}, {"seconds": "60"}, {"seconds": -1}, {"seconds": True}, {"seconds": 10**9}):
        answer = ask("POST", "/v1/clock/advance", bad)
        assert (answer.status_code, answer.json()["error"]) == (400, "bad_request"), bad
        assert "seconds must be" in answer.json()["message"]
    assert ask("POST", "/v1/admins", {"accountId": "x y", "admin": True}).status_code == 400
    assert ask("POST", "/v1/admins", {"accountId": DEFAULT_ACCOUNT_ID, "admin": "yes"}).status_code == 400
    assert ask("GET", "/v1/pages/1").status_code == 404
    assert ask("PUT", "/v1/ui-token", {}).status_code == 400
    too_big = requests.post(
        url + "/v1/install",
        headers={SECRET_HEADER: secret, "Content-Type": "application/json"},
        data=b" " * 20000,
        timeout=30,
    )
    assert (too_big.status_code, too_big.json()["error"]) == (413, "too_large")

    answers = [ask("GET", path).text for path in ("/v1/stack", "/v1/site", f"/v1/pages/{EXAMPLE_PAGE_ID}")]
    answers.append(ask("POST", "/v1/install", {}).text)
    for text in answers:
        assert "eyJ" not in text  # no JWT (FIT, app or user token)
        assert "PRIVATE KEY" not in text
        assert secret not in text
    stack_now = json.loads(answers[0])
    assert stack_now["site"]["installationId"] == shared.site.installation_id
    assert stack_now["uiAppTokenLifetimeSeconds"] == 3 * 3600


def test_a_page_view_restriction_covers_the_pages_under_it() -> None:
    """The Confluence emulator's page restriction (what the seeded site's restricted page uses)."""
    from local.confluence_emulator import ConfluenceEmulator

    forge = ForgeEmulator()
    with ConfluenceEmulator() as confluence:
        confluence.add_space("OPS", "Operations")
        parent = confluence.add_page("OPS", "Incidents")
        child = confluence.add_page("OPS", "Incident 42", parent_id=parent["id"])
        confluence.add_page("OPS", "Open page")
        confluence.restrict_page(parent["id"], [BOB_ACCOUNT_ID])

        def titles(subject: str) -> list[str]:
            token = forge.app_token(subject=subject)
            response = requests.get(
                confluence.api_base_url + "/wiki/rest/api/content/search",
                params={"cql": "type = page"},
                headers={"Authorization": f"Bearer {token}"},
                timeout=30,
            )
            return sorted(result["title"] for result in response.json()["results"])

        def read(subject: str, page_id: int) -> int:
            token = forge.app_token(subject=subject)
            url = f"{confluence.api_base_url}/wiki/api/v2/pages/{page_id}"
            return requests.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=30).status_code

        assert titles(DEFAULT_ACCOUNT_ID) == ["Open page"]
        assert titles(BOB_ACCOUNT_ID) == ["Incident 42", "Incidents", "Open page"]
        assert titles("app") == ["Incident 42", "Incidents", "Open page"]  # the app is never kept out
        assert (read(DEFAULT_ACCOUNT_ID, child["id"]), read(BOB_ACCOUNT_ID, child["id"])) == (404, 200)
        assert confluence.page_viewers(parent["id"]) == frozenset({BOB_ACCOUNT_ID})
        confluence.restrict_page(parent["id"], None)
        assert titles(DEFAULT_ACCOUNT_ID) == ["Incident 42", "Incidents", "Open page"]
