"""The embedded local stack (``LocalRuntime``), driven the way ``make demo`` and ``make local`` drive it:
real HTTP through the local gateway, moto in server mode, the SQS poller feeding the real worker,
the Forge and Confluence emulators. Plus the gateway's routing and the poller's batch rules alone."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import requests

from forge_remote import clock
from forge_remote.config import PRODUCTION_JWKS_URL
from forge_remote.jobs.contract import JobRequest
from local.cfn_yaml import http_routes, load_template
from local.forge_emulator import Site
from local.gateway import MAX_PAYLOAD_BYTES, LocalGateway, Route, match_route, to_response
from local.moto_server import MotoServer
from local.poller import failed_message_ids, schedules, sqs_event_sources
from local.runtime import LocalRuntime
from local.stack import TEMPLATE, LocalStack
from tests.support import ROOT

TEMPLATE_ROUTES = [Route(m, p, f) for m, p, f in http_routes(load_template(TEMPLATE))]


# -- gateway routing, alone
@pytest.mark.parametrize(
    ("method", "path", "function", "params"),
    [
        ("POST", "/forge/lifecycle", "ForgeTriggersFunction", {}),
        ("POST", "/forge/keepalive", "ForgeTriggersFunction", {}),
        ("GET", "/api/status", "ForgeCallsFunction", {"proxy": "status"}),
        ("DELETE", "/api/items/42/notes", "ForgeCallsFunction", {"proxy": "items/42/notes"}),
    ],
)
def test_template_routes_match_like_api_gateway(method: str, path: str, function: str, params: dict[str, str]) -> None:
    matched = match_route(TEMPLATE_ROUTES, method, path)
    assert matched is not None
    route, found = matched
    assert route.function == function
    assert found == params


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/forge/keepalive"),  # right path, wrong method: HTTP APIs answer 404, not 405
        ("POST", "/forge/keepalive/extra"),
        ("POST", "/forge"),
        ("GET", "/api"),  # a greedy variable needs at least one segment
        ("GET", "/api/"),
        ("GET", "/apix/status"),
        ("GET", "/"),
    ],
)
def test_unmatched_requests_find_no_route(method: str, path: str) -> None:
    assert match_route(TEMPLATE_ROUTES, method, path) is None


def test_exact_paths_and_methods_win_over_variables_and_any() -> None:
    routes = [
        Route("ANY", "/api/{proxy+}", "Greedy"),
        Route("GET", "/api/{id}", "Variable"),
        Route("ANY", "/api/status", "AnyExact"),
        Route("GET", "/api/status", "GetExact"),
    ]
    assert match_route(routes, "GET", "/api/status")[0].function == "GetExact"  # type: ignore[index]
    assert match_route(routes, "POST", "/api/status")[0].function == "AnyExact"  # type: ignore[index]
    assert match_route(routes, "GET", "/api/7") == (routes[1], {"id": "7"})
    assert match_route(routes, "GET", "/api/7/x") == (routes[0], {"proxy": "7/x"})


def test_handler_results_become_http_responses() -> None:
    plain = to_response({"statusCode": 201, "headers": {"X-A": "1"}, "body": "hi", "cookies": ["a=b"]})
    assert (plain.status_code, plain.get_data(), plain.headers["X-A"], plain.headers["Set-Cookie"]) == (
        201,
        b"hi",
        "1",
        "a=b",
    )
    binary = to_response({"statusCode": 200, "body": "AAEC", "isBase64Encoded": True})
    assert binary.get_data() == b"\x00\x01\x02"
    inferred = to_response({"hello": "world"})  # payload 2.0 infers a 200 JSON response
    assert (inferred.status_code, json.loads(inferred.get_data())) == (200, {"hello": "world"})
    broken = to_response({"statusCode": "nope"})
    assert (broken.status_code, json.loads(broken.get_data())) == (500, {"message": "Internal Server Error"})


@pytest.fixture
def echo_gateway() -> Iterator[tuple[LocalGateway, list[tuple[str, dict[str, Any]]]]]:
    """The gateway in front of a handler that echoes the event it got."""
    calls: list[tuple[str, dict[str, Any]]] = []

    def invoke(function: str, event: dict[str, Any]) -> dict[str, Any]:
        calls.append((function, event))
        if event["rawPath"] == "/api/boom":
            raise RuntimeError("handler bug")
        return {"statusCode": 200, "headers": {"Content-Type": "application/json"}, "body": json.dumps(event)}

    gateway = LocalGateway(TEMPLATE_ROUTES, invoke)
    gateway.start()
    yield gateway, calls
    gateway.stop()


def test_gateway_serves_v2_events_over_http(echo_gateway: tuple[LocalGateway, list[Any]]) -> None:
    gateway, calls = echo_gateway
    response = requests.get(
        gateway.url + "/api/pages/12?expand=a&x=1", headers={"X-Forge-Thing": "v", "Cookie": "s=1; t=2"}, timeout=10
    )
    assert response.status_code == 200
    event = response.json()
    assert calls[0][0] == "ForgeCallsFunction"
    assert event["version"] == "2.0"
    assert event["routeKey"] == "ANY /api/{proxy+}"
    assert event["pathParameters"] == {"proxy": "pages/12"}
    assert event["rawQueryString"] == "expand=a&x=1"
    assert event["headers"]["x-forge-thing"] == "v"
    assert event["cookies"] == ["s=1", "t=2"]
    assert event["requestContext"]["http"]["method"] == "GET"

    posted = requests.post(gateway.url + "/forge/events", data=b"\x00\xffbinary", timeout=10).json()
    assert posted["isBase64Encoded"] is True
    assert posted["routeKey"] == "POST /forge/events"
    text = requests.post(gateway.url + "/forge/events", json={"a": 1}, timeout=10).json()
    assert (text["isBase64Encoded"], json.loads(text["body"])) == (False, {"a": 1})


def test_gateway_answers_what_api_gateway_answers(echo_gateway: tuple[LocalGateway, list[Any]]) -> None:
    gateway, calls = echo_gateway
    for method, path in (("GET", "/nowhere"), ("GET", "/forge/keepalive"), ("PUT", "/forge/lifecycle")):
        response = requests.request(method, gateway.url + path, timeout=10)
        assert (response.status_code, response.json()) == (404, {"message": "Not Found"})
    too_big = requests.post(gateway.url + "/forge/events", data=b"x" * (MAX_PAYLOAD_BYTES + 1), timeout=30)
    assert (too_big.status_code, too_big.json()) == (413, {"message": "Request Entity Too Large"})
    failing = requests.get(gateway.url + "/api/boom", timeout=10)
    assert (failing.status_code, failing.json()) == (500, {"message": "Internal Server Error"})
    assert [path for _, event in calls for path in [event["rawPath"]]] == ["/api/boom"]


# -- poller rules, alone
def test_event_source_and_schedule_come_from_the_template() -> None:
    template = load_template(TEMPLATE)
    (source,) = sqs_event_sources(template)
    assert (source.function, source.queue, source.batch_size) == ("ConfluenceWorkerFunction", "JobsQueue", 10)
    assert source.report_batch_item_failures is True
    found = {s.name: (s.function, s.input) for s in schedules(template)}
    expected = {
        "DailyDigest": ("JobSchedulerFunction", {"job": "space-digest", "spreadMinutes": 60}),  # the default
        "PersonalDataReport": ("JobSchedulerFunction", {"job": "personal-data-report"}),
        "CleanupSweep": ("JobSchedulerFunction", {"task": "cleanup-sweep"}),
        "TokenCensus": ("JobSchedulerFunction", {"task": "token-census"}),
    }
    assert found == expected
    # An Input's !Sub is resolved with the stack's own parameters when given them.
    spread = LocalStack(template=template, parameters={"DigestSpreadMinutes": "15"})
    digest = {s.name: s.input for s in schedules(template, spread.resolve)}["DailyDigest"]
    assert digest == {"job": "space-digest", "spreadMinutes": 15}


@pytest.mark.parametrize(
    ("result", "failed"),
    [
        (None, set()),
        ({}, set()),
        ({"batchItemFailures": []}, set()),
        ({"batchItemFailures": None}, set()),
        ({"batchItemFailures": [{"itemIdentifier": "b"}]}, {"b"}),
        ({"batchItemFailures": [{"itemIdentifier": ""}]}, {"a", "b"}),  # Lambda: the whole batch failed
        ({"batchItemFailures": [{"itemIdentifier": None}]}, {"a", "b"}),
        ({"batchItemFailures": [{"itemIdentifier": "zz"}]}, {"a", "b"}),
        ({"batchItemFailures": [{"id": "a"}]}, {"a", "b"}),
        ("not an object", {"a", "b"}),
    ],
)
def test_batch_item_failures_follow_lambdas_rules(result: Any, failed: set[str]) -> None:
    assert failed_message_ids(result, ["a", "b"]) == failed


def test_trailing_slash_and_default_route() -> None:
    assert match_route(TEMPLATE_ROUTES, "POST", "/forge/keepalive/") is None
    routes = [*TEMPLATE_ROUTES, Route("ANY", "$default", "Fallback")]
    route, _ = match_route(routes, "GET", "/anything/else")  # type: ignore[misc]
    assert (route.function, route.route_key) == ("Fallback", "$default")
    assert match_route(routes, "POST", "/forge/keepalive")[0].function == "ForgeTriggersFunction"  # type: ignore[index]


# -- moto in server mode
def test_moto_server_points_boto3_at_itself_and_puts_the_environment_back(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_PROFILE", "someone-real")
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    server = MotoServer()
    url = server.start()
    try:
        assert url.startswith("http://127.0.0.1:")
        assert os.environ["AWS_ENDPOINT_URL"] == url
        assert "AWS_PROFILE" not in os.environ  # never sign with real credentials
        sqs = boto3.client("sqs")
        sqs.create_queue(QueueName="left-over")
        assert sqs.list_queues().get("QueueUrls")
        server.reset()
        assert not sqs.list_queues().get("QueueUrls")
    finally:
        server.stop()
    assert "AWS_ENDPOINT_URL" not in os.environ
    assert os.environ["AWS_PROFILE"] == "someone-real"


# -- the whole stack
@pytest.fixture
def rt() -> Iterator[LocalRuntime]:
    """A fresh local stack per test (queues cannot be purged twice a minute, and tests count messages)."""
    with LocalRuntime() as runtime:
        yield runtime


def forge_call(
    rt: LocalRuntime, site: Site, path: str, body: Any = None, token: str | None = None
) -> requests.Response:
    return rt.call("POST", path, rt.forge.headers(site, app_token=token), body if body is not None else {})


def install(rt: LocalRuntime, lifetime_s: float = 3 * 3600) -> tuple[Site, str]:
    site = rt.site()
    token = rt.forge.app_token(lifetime_s=lifetime_s)
    response = forge_call(rt, site, "/forge/lifecycle", rt.forge.installed_event(site), token)
    assert response.status_code == 200, response.text
    return site, token


def bearers_seen(rt: LocalRuntime, since: int = 0) -> list[str | None]:
    return [seen[3] for seen in rt.confluence.requests_seen[since:]]


def enqueue(rt: LocalRuntime, *bodies: str) -> None:
    sqs = boto3.client("sqs")
    for body in bodies:
        sqs.send_message(QueueUrl=rt.poller.queue_url, MessageBody=body)


def snapshot_job(site: Site, page_id: str) -> str:
    request = JobRequest(job="page-snapshot", installation_id=site.installation_id, args={"pageId": page_id})
    return json.dumps(request.to_detail(), separators=(",", ":"))  # the body send_job_requests sends


def test_the_expired_token_story_end_to_end(rt: LocalRuntime) -> None:
    # Install: the app token is stored with the expiry read from the token itself.
    site, first = install(rt)
    [item] = rt.token_items(site.installation_id)
    assert item["token"]["S"] == first
    assert float(item["expiresAt"]["N"]) == pytest.approx(clock.now() + 3 * 3600, abs=5)

    # Page created: event -> job request on the jobs queue -> worker -> snapshot stored.
    rt.confluence.add_space("ENG", "Engineering")
    page_id = str(rt.confluence.add_page("ENG", "Release notes")["id"])
    response = forge_call(rt, site, "/forge/events", rt.forge.page_event(page_id, "ENG"), first)
    assert response.status_code == 202
    assert rt.poller.drain().succeeded == 1
    assert [s["version"] for s in rt.results(site.installation_id, "SNAPSHOT")] == [1]
    assert bearers_seen(rt)
    assert set(bearers_seen(rt)) == {first}

    # Four hours without a Forge call: the stored token expires.
    rt.advance(4 * 3600)
    assert float(rt.token_items(site.installation_id)[0]["expiresAt"]["N"]) < clock.now()

    # Page updated, delivered without a token: the job is deferred, nothing is sent, nothing is lost.
    rt.confluence.update_page(int(page_id), body="<p>v2</p>")
    seen = len(rt.confluence.requests_seen)
    response = forge_call(rt, site, "/forge/events", rt.forge.page_event(page_id, "ENG", created=False, version=2))
    assert response.status_code == 202
    report = rt.poller.drain()
    assert (report.received, report.failed) == (1, 1)
    assert bearers_seen(rt, seen) == []
    assert rt.queue_depths() == {"queue": (0, 1), "dlq": (0, 0)}
    assert rt.poller.drain().received == 0  # the deferral is real: not redelivered by itself

    # The hourly keepalive brings a fresh token; once the delay passes the deferred job succeeds with it.
    fresh = rt.forge.app_token(lifetime_s=2 * 3600)
    assert forge_call(rt, site, "/forge/keepalive", token=fresh).status_code == 204
    assert rt.advance(120) == 1
    report = rt.poller.drain()
    assert (report.received, report.succeeded) == (1, 1)
    assert bearers_seen(rt, seen) == [fresh] * len(bearers_seen(rt, seen)) != []
    assert sorted(s["version"] for s in rt.results(site.installation_id, "SNAPSHOT")) == [1, 2]
    assert rt.queue_depths() == {"queue": (0, 0), "dlq": (0, 0)}

    # Uninstall: every token of the installation is gone.
    response = forge_call(rt, site, "/forge/uninstall")
    assert (response.status_code, response.json()["tokensDeleted"]) == (200, 1)
    assert rt.token_items(site.installation_id) == []


def test_the_gateway_routes_to_the_real_handlers(rt: LocalRuntime) -> None:
    site, token = install(rt)
    assert (rt.call("GET", "/nowhere").status_code, rt.call("GET", "/nowhere").json()) == (
        404,
        {"message": "Not Found"},
    )
    wrong_method = rt.call("GET", "/forge/keepalive", rt.forge.headers(site, app_token=token))
    assert (wrong_method.status_code, wrong_method.json()) == (404, {"message": "Not Found"})
    no_fit = rt.call("GET", "/api/status")
    assert (no_fit.status_code, no_fit.json()["error"]) == (401, "unauthorized")  # the real forge_calls answered
    headers = rt.forge.headers(site, app_token=token, principal="557058:abc", module_key="ui-endpoint")
    status = rt.call("GET", "/api/status", headers)
    assert status.status_code == 200
    assert status.json()["installationId"] == site.installation_id
    assert token not in status.text
    unknown = rt.call("POST", "/api/not/a/route", headers, {})
    assert (unknown.status_code, unknown.json()["error"]) == (404, "not_found")  # the resolver's 404, not the gateway's


def test_a_poisoned_message_goes_to_the_dlq_and_the_rest_of_the_batch_succeeds(rt: LocalRuntime) -> None:
    site, _ = install(rt)
    rt.confluence.add_space("ENG", "Engineering")
    pages = [str(rt.confluence.add_page("ENG", f"Page {i}")["id"]) for i in range(2)]
    enqueue(rt, snapshot_job(site, pages[0]), "{not json", snapshot_job(site, pages[1]))
    report = rt.poller.drain()
    assert report.received == 3
    assert report.failed == 0  # the worker dead-letters the poison itself: nothing left to retry
    assert sorted(s["pageId"] for s in rt.results(site.installation_id, "SNAPSHOT")) == sorted(pages)
    assert rt.queue_depths() == {"queue": (0, 0), "dlq": (1, 0)}
    [dead] = boto3.client("sqs").receive_message(QueueUrl=rt.dlq_url, MessageAttributeNames=["All"])["Messages"]
    assert dead["Body"] == "{not json"


def test_a_job_deferred_past_its_tries_lands_in_the_dlq(rt: LocalRuntime) -> None:
    max_receives = int(rt.stack.environment("ConfluenceWorkerFunction")["JOB_MAX_RECEIVES"])
    redrive = rt.stack.resolve(rt.stack.resources["JobsQueue"]["Properties"]["RedrivePolicy"])
    assert int(redrive["maxReceiveCount"]) > max_receives  # the queue's hard limit never comes first
    site, expired = install(rt, lifetime_s=3600)
    rt.confluence.add_space("ENG", "Engineering")
    page_id = str(rt.confluence.add_page("ENG", "Never fetched")["id"])
    rt.advance(2 * 3600)  # the token expires and no Forge call brings another
    enqueue(rt, snapshot_job(site, page_id))
    receives = 0
    for attempt in range(1, max_receives + 5):
        report = rt.poller.drain()
        receives += report.received
        # Deferred every time, never "done", never dropped; the last receive is sent to the DLQ by the worker.
        assert report.failed == (report.received if attempt < max_receives else 0)
        if rt.advance(1800) == 0:
            break
    assert receives == max_receives
    assert rt.queue_depths() == {"queue": (0, 0), "dlq": (1, 0)}
    [dead] = boto3.client("sqs").receive_message(QueueUrl=rt.dlq_url, MessageAttributeNames=["All"])["Messages"]
    reason = dead["MessageAttributes"]["reason"]["StringValue"]
    assert "valid for less than" in reason
    assert f"gave up after {max_receives} attempts" in reason
    assert expired not in bearers_seen(rt)
    assert rt.confluence.requests_seen == []


def test_the_schedule_fires_one_job_per_active_installation(rt: LocalRuntime) -> None:
    rt.confluence.add_space("ENG", "Engineering")
    rt.confluence.add_page("ENG", "Changed today")
    sites = [install(rt)[0] for _ in range(3)]
    assert forge_call(rt, sites[0], "/forge/uninstall").status_code == 200
    # The template's Input, with the local stack's DigestSpreadMinutes (0: SQS would delay the jobs for real).
    report = rt.fire_scheduler(name="DailyDigest")
    assert (report["installations"], report["requested"], report["spreadSeconds"]) == (2, 2, 0)
    assert rt.queue_depths()["queue"] == (2, 0)
    assert rt.poller.drain().succeeded == 2
    for site in sites[1:]:
        [digest] = rt.results(site.installation_id, "DIGEST")
        assert (digest["spaceKey"], digest["count"]) == ("ENG", 1)
    assert rt.results(sites[0].installation_id, "DIGEST") == []


def test_the_demo_plays_and_exits_zero() -> None:
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "local.demo"], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "All steps behaved" in result.stdout
    assert "eyJ" not in result.stdout + result.stderr  # no JWT (FIT or token) printed or logged
    assert time.monotonic() - started < 60
    # Every step is numbered out of the count of steps there are, and the count announced is that one.
    numbered = re.findall(r"^\[(\d+)/(\d+)\] ", result.stdout, re.MULTILINE)
    steps = len(numbered)
    assert steps >= 8
    assert numbered == [(str(n), str(steps)) for n in range(1, steps + 1)]
    assert f"      {steps} steps" in result.stdout
    table_rows = [line for line in result.stdout.splitlines() if line.endswith(("| yes", "| NO"))]
    assert len(table_rows) == steps
    # Counted things read as English: "1 token", "2 tokens", never "1 tokens" or "account(s)".
    plural = r"\b1 (?:[a-z-]+ )?(?:jobs|tokens|accounts|spaces|digests|snapshots|steps|requests|lines)\b"
    assert re.findall(plural, result.stdout) == []
    assert "(s)" not in result.stdout
    # The worker's deferral warning is told in words, at the stack's time (4 h after the install, the
    # token's expiry 3 h after it plus one); no function's raw log line is printed, mid-story or after.
    assert not [line for line in (result.stdout + result.stderr).splitlines() if line.lstrip().startswith("{")]
    expires = re.search(r"token stored, expires (\d\d):(\d\d) UTC \(in 3\.0 h\)", result.stdout)
    warned = re.search(r"the worker logged it as a WARNING at (\d\d):(\d\d) UTC on the stack's clock", result.stdout)
    assert expires is not None, result.stdout
    assert warned is not None, result.stdout
    minutes = [int(m.group(1)) * 60 + int(m.group(2)) for m in (expires, warned)]
    assert (minutes[1] - minutes[0] - 60) % (24 * 60) in (0, 1)  # within the same minute, or the next


def test_serve_and_the_forge_cli_work_together_and_stop_on_ctrl_c(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    serve = subprocess.Popen(  # noqa: S603
        [
            sys.executable,
            "-m",
            "local.serve",
            "--port",
            "0",  # any free port: the CLI finds the gateway in the state file, as a developer's does
            "--ui-port",
            "0",
            "--state-file",
            str(state),
            "--log-level",
            "WARNING",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not state.exists() and serve.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert state.exists(), serve.communicate(timeout=10)[0] if serve.poll() is not None else "no state file"
        assert state.stat().st_mode & 0o777 == 0o600

        def cli(command: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(  # noqa: S603
                [
                    sys.executable,
                    "-m",
                    "local.forge_cli",
                    command,
                    "--state-file",
                    str(state),
                ],
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )

        installed = cli("install")
        assert installed.returncode == 0, installed.stdout + installed.stderr
        assert "HTTP 200" in installed.stdout
        status = cli("status")
        assert status.returncode == 0, status.stdout + status.stderr
        assert '"usableByJobs": true' in status.stdout
        assert cli("page-created").returncode == 0
        assert "HTTP 204" in cli("keepalive").stdout
        assert '"tokensDeleted": 2' in cli("uninstall").stdout  # the app token and the status caller's user token
        assert "eyJ" not in installed.stdout + status.stdout
    finally:
        serve.send_signal(signal.SIGINT)
        output, _ = serve.communicate(timeout=90)
    assert serve.returncode == 0, output
    assert "stopping the local stack" in output
    assert not state.exists()  # the dev key does not outlive the run


def test_production_jwks_mode_wires_atlassian_keys_and_the_real_api_host() -> None:
    """``make local ARGS='--jwks production ...'``: checked by configuration only (no network here)."""
    app_id = "0f1e2d3c-4b5a-4987-8654-3210fedcba98"
    before = dict(os.environ)
    with LocalRuntime(production_jwks=True, app_id=app_id, allowed_api_hosts="api.atlassian.com") as runtime:
        settings = runtime.functions["ForgeTriggersFunction"].module.wiring.settings
        assert settings.jwks_url == PRODUCTION_JWKS_URL
        assert settings.app_ari == f"ari:cloud:ecosystem::app/{app_id}"
        assert settings.allowed_api_hosts == ("api.atlassian.com",)
        assert runtime.stack.environment("ConfluenceWorkerFunction")["ALLOWED_API_HOSTS"] == "api.atlassian.com"
    assert dict(os.environ) == before  # stop() put the process back
