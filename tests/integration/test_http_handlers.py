"""The HTTP handlers end to end (API Gateway v2 event in, response out) against moto and the Forge
emulator: FIT first, tokens stored, lifecycle, uninstall, events, status, isolation, secrecy."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import boto3
import pytest

from forge_remote import clock
from forge_remote.storage.table_keys import INSTALLATION_SK, installation_pk
from local.forge_emulator import ForgeEmulator, Site
from local.stack import LocalStack
from tests.support import Gateway, body_of, stored_item, token_items


def queued_job_requests(stack: LocalStack) -> list[dict[str, Any]]:
    sqs = boto3.client("sqs")
    messages = sqs.receive_message(QueueUrl=stack.physical["JobsQueue"], MaxNumberOfMessages=10).get("Messages", [])
    return [json.loads(m["Body"]) for m in messages]  # bare requests, as send_job_requests sends them


def installation_item(stack: LocalStack, installation_id: str) -> dict[str, Any] | None:
    return stored_item(stack, "AppTable", installation_id, INSTALLATION_SK)


ROUTES = [
    ("POST", "/forge/lifecycle"),
    ("POST", "/forge/uninstall"),
    ("POST", "/forge/events"),
    ("POST", "/forge/keepalive"),
    ("GET", "/api/status"),
]


@pytest.mark.parametrize(("method", "path"), ROUTES)
def test_every_route_rejects_a_missing_or_bad_fit_with_401_json_and_writes_nothing(
    gateway: Gateway, forge: ForgeEmulator, site: Site, stack: LocalStack, method: str, path: str
) -> None:
    token = forge.app_token()
    good = forge.headers(site, app_token=token)
    for headers in (
        {"x-forge-oauth-system": token},  # no FIT at all
        {**good, "authorization": good["authorization"][:-4] + "AAAA"},  # bad signature
    ):
        response = gateway(method, path, headers, forge.installed_event(site))
        assert response["statusCode"] == 401
        assert response["headers"]["Content-Type"] == "application/json"
        assert body_of(response)["error"] == "unauthorized"
    assert token_items(stack) == []
    assert installation_item(stack, site.installation_id) is None


@pytest.mark.parametrize(("method", "path"), ROUTES)
def test_every_route_answers_a_jwks_outage_with_503_json_and_writes_nothing(
    gateway: Gateway,
    forge: ForgeEmulator,
    site: Site,
    stack: LocalStack,
    capsys: pytest.CaptureFixture[str],
    method: str,
    path: str,
) -> None:
    """A cold container that cannot fetch Forge's keys cannot tell a genuine FIT from a forged one: that is
    our outage, answered as one (a 401 would tell Forge the token failed validation)."""
    forge.jwks_available = False
    capsys.readouterr()
    try:
        response = gateway(method, path, forge.headers(site, app_token=forge.app_token()), forge.installed_event(site))
    finally:
        forge.jwks_available = True
    assert response["statusCode"] == 503
    assert response["headers"]["Content-Type"] == "application/json"
    assert response["headers"]["Retry-After"] == "60"  # Forge's own retry spacing for triggers
    body = body_of(response)
    assert body["error"] == "unavailable"
    assert body["message"].startswith("service temporarily unavailable")
    assert token_items(stack) == []
    assert installation_item(stack, site.installation_id) is None
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if '"_aws"' in line]
    assert [line["reason"] for line in lines if "SigningKeysUnavailable" in line] == [
        "signing keys could not be fetched"
    ]
    assert [line for line in lines if "FitRejections" in line] == []  # not a forged call: FitRejectionAlarm stays quiet


def test_keepalive_stores_the_token_and_answers_204(
    gateway: Gateway, forge: ForgeEmulator, site: Site, stack: LocalStack
) -> None:
    token = forge.app_token(lifetime_s=7200)
    response = gateway("POST", "/forge/keepalive", forge.headers(site, app_token=token), {})
    assert response["statusCode"] == 204
    items = token_items(stack)
    assert len(items) == 1
    assert items[0]["token"]["S"] == token
    # The keepalive also registers an installation that predates the backend.
    assert installation_item(stack, site.installation_id)["status"]["S"] == "active"


def test_keepalive_without_token_header_stores_nothing(
    gateway: Gateway, forge: ForgeEmulator, site: Site, stack: LocalStack
) -> None:
    response = gateway("POST", "/forge/keepalive", forge.headers(site), {})
    assert response["statusCode"] == 204
    assert token_items(stack) == []


def test_redelivered_token_is_written_once(
    handler: Callable, forge: ForgeEmulator, site: Site, stack: LocalStack
) -> None:
    triggers = handler("ForgeTriggersFunction")
    gateway = Gateway(triggers, triggers)
    token = forge.app_token()
    for _ in range(20):
        assert gateway("POST", "/forge/keepalive", forge.headers(site, app_token=token))["statusCode"] == 204
    assert triggers.wiring.tokens.write_count == 1


def test_lifecycle_installed_records_the_installation(
    gateway: Gateway, forge: ForgeEmulator, site: Site, stack: LocalStack
) -> None:
    response = gateway(
        "POST", "/forge/lifecycle", forge.headers(site, app_token=forge.app_token()), forge.installed_event(site)
    )
    assert response["statusCode"] == 200
    assert body_of(response)["installation"] == "active"
    item = installation_item(stack, site.installation_id)
    assert item["status"]["S"] == "active"
    assert item["cloudId"]["S"] == site.cloud_id
    assert item["apiBaseUrl"]["S"] == site.api_base_url
    assert item["environmentType"]["S"] == "DEVELOPMENT"
    assert "installedAt" in item
    assert len(token_items(stack)) == 1


def test_lifecycle_upgraded_wrapped_in_payload_is_accepted(
    gateway: Gateway, forge: ForgeEmulator, site: Site, stack: LocalStack
) -> None:
    body = {"payload": {**forge.installed_event(site, "avi:forge:upgraded:app"), "retryContext": {"retryCount": 1}}}
    response = gateway("POST", "/forge/lifecycle", forge.headers(site), body)
    assert response["statusCode"] == 200
    assert "upgradedAt" in installation_item(stack, site.installation_id)


@pytest.mark.parametrize("body", ["not json", "[1, 2]", "", '{"no": "eventType"}'])
def test_malformed_lifecycle_body_is_400_json(
    gateway: Gateway, forge: ForgeEmulator, site: Site, stack: LocalStack, body: str
) -> None:
    response = gateway("POST", "/forge/lifecycle", forge.headers(site), body)
    assert response["statusCode"] == 400
    assert body_of(response)["error"] == "bad_request"
    assert installation_item(stack, site.installation_id) is None


def test_uninstall_deletes_tokens_and_marks_uninstalled(
    gateway: Gateway, forge: ForgeEmulator, site: Site, stack: LocalStack
) -> None:
    gateway("POST", "/forge/lifecycle", forge.headers(site, app_token=forge.app_token()), forge.installed_event(site))
    gateway("GET", "/api/status", forge.headers(site, user_token=forge.app_token(), principal="557058:user-1"))
    assert len(token_items(stack)) == 2
    response = gateway("POST", "/forge/uninstall", forge.headers(site), {"eventType": "avi:forge:uninstalled:app"})
    assert response["statusCode"] == 200
    assert body_of(response)["tokensDeleted"] == 2
    assert token_items(stack) == []
    item = installation_item(stack, site.installation_id)
    assert item["status"]["S"] == "uninstalled"
    assert "activePk" not in item
    # A late keepalive (Forge retry, or one racing the uninstall) can never bring a token back.
    late = gateway("POST", "/forge/keepalive", forge.headers(site, app_token=forge.app_token(lifetime_s=9000)))
    assert late["statusCode"] == 204
    assert token_items(stack) == []


def test_page_event_becomes_one_job_request_even_when_retried(
    gateway: Gateway, forge: ForgeEmulator, site: Site, stack: LocalStack
) -> None:
    event = forge.page_event("12345", "ENG", version=3)
    first = gateway("POST", "/forge/events", forge.headers(site, app_token=forge.app_token()), event)
    assert first["statusCode"] == 202
    assert body_of(first)["jobs"] == 1
    # Forge retries the same delivery, wrapped, with a retryContext: no second job.
    retried = forge.page_event("12345", "ENG", version=3, wrapped=True, retry_count=2)
    again = gateway("POST", "/forge/events", forge.headers(site), retried)
    assert again["statusCode"] == 202
    requests = queued_job_requests(stack)
    assert len(requests) == 1
    assert requests[0]["job"] == "page-snapshot"
    assert requests[0]["installationId"] == site.installation_id
    assert requests[0]["args"] == {"pageId": "12345", "spaceKey": "ENG", "version": 3}
    assert "priority" not in requests[0]  # bulk: nobody is waiting for an event's job


def test_a_new_version_of_the_page_is_a_new_job(
    gateway: Gateway, forge: ForgeEmulator, site: Site, stack: LocalStack
) -> None:
    gateway("POST", "/forge/events", forge.headers(site), forge.page_event("7", "ENG", version=1))
    gateway("POST", "/forge/events", forge.headers(site), forge.page_event("7", "ENG", version=2, created=False))
    assert len(queued_job_requests(stack)) == 2


def test_non_page_event_is_acknowledged_without_a_job(
    gateway: Gateway, forge: ForgeEmulator, site: Site, stack: LocalStack
) -> None:
    response = gateway(
        "POST",
        "/forge/events",
        forge.headers(site),
        {"eventType": "avi:confluence:created:blogpost", "content": {"id": "1"}},
    )
    assert response["statusCode"] == 202
    assert body_of(response)["jobs"] == 0
    assert queued_job_requests(stack) == []


def test_status_reports_expiry_never_the_token(gateway: Gateway, forge: ForgeEmulator, site: Site) -> None:
    system, user = forge.app_token(lifetime_s=7200), forge.app_token(lifetime_s=3000)
    response = gateway(
        "GET", "/api/status", forge.headers(site, app_token=system, user_token=user, principal="557058:u")
    )
    assert response["statusCode"] == 200
    body = body_of(response)
    assert body["installationId"] == site.installation_id
    by_subject = {t["subject"]: t for t in body["tokens"]}
    assert by_subject["system"]["usableByJobs"] is True
    assert 7100 < by_subject["system"]["validForSeconds"] <= 7200
    assert 2900 < by_subject["user"]["validForSeconds"] <= 3000
    assert "usableByJobs" not in by_subject["user"]  # jobs act as the app, never with a user's token
    assert system not in response["body"]
    assert user not in response["body"]
    stops = body["lastToken"]["usableByJobsUntil"]  # the app token's expiry, less the minimum a job needs
    assert stops == body["jobs"]["canRunUntil"]
    clock.advance(6800)
    later = body_of(gateway("GET", "/api/status", forge.headers(site)))
    assert {t["subject"]: t["usableByJobs"] for t in later["tokens"]} == {"system": False}
    assert later["jobs"]["canRunUntil"] is None
    assert later["lastToken"]["usableByJobsUntil"] == stops  # still said once past: "jobs stopped at ..."


def test_unknown_api_route_is_404_json(gateway: Gateway, forge: ForgeEmulator, site: Site) -> None:
    response = gateway("GET", "/api/nope", forge.headers(site))
    assert response["statusCode"] == 404
    assert body_of(response)["error"] == "not_found"


def test_installation_comes_only_from_the_verified_fit(
    gateway: Gateway, forge: ForgeEmulator, stack: LocalStack
) -> None:
    a, b = forge.site(), forge.site()
    token_b = forge.app_token(lifetime_s=9000)
    gateway("POST", "/forge/keepalive", forge.headers(b, app_token=token_b))
    # A FIT for A, with B's id smuggled into the body and query: A's call only touches A.
    smuggled = {"installationId": b.installation_id, "payload": {"installationId": b.installation_id}}
    token_a = forge.app_token(lifetime_s=3600)
    gateway("POST", "/forge/keepalive", forge.headers(a, app_token=token_a), smuggled)
    status_a = body_of(gateway("GET", "/api/status", forge.headers(a)))
    assert status_a["installationId"] == a.installation_id
    assert status_a["tokens"][0]["validForSeconds"] <= 3600
    items = {i["pk"]["S"]: i["token"]["S"] for i in token_items(stack)}
    assert items == {installation_pk(a.installation_id): token_a, installation_pk(b.installation_id): token_b}


def test_storage_failure_is_503_json_not_a_crash(
    gateway: Gateway, forge: ForgeEmulator, site: Site, stack: LocalStack
) -> None:
    boto3.client("dynamodb").delete_table(TableName=stack.physical["TokensTable"])
    response = gateway("POST", "/forge/keepalive", forge.headers(site, app_token=forge.app_token()))
    assert response["statusCode"] == 503
    assert body_of(response)["error"] == "unavailable"


def test_no_token_or_fit_in_logs_or_responses(
    gateway: Gateway, forge: ForgeEmulator, site: Site, all_logs: Callable[[], str]
) -> None:
    secrets: list[str] = []

    def call(method: str, path: str, body: Any = None, **kw: Any) -> str:
        headers = forge.headers(site, **kw)
        secrets.append(headers["authorization"].split(" ", 1)[1])
        secrets.extend(v for k, v in headers.items() if k.startswith("x-forge-oauth"))
        response = gateway(method, path, headers, body)
        return response.get("body") or ""

    bodies = [
        call("POST", "/forge/lifecycle", forge.installed_event(site), app_token=forge.app_token()),
        call("POST", "/forge/keepalive", None, app_token=forge.app_token(lifetime_s=-5)),  # expired on arrival
        call("POST", "/forge/events", forge.page_event("1", "X"), app_token=forge.app_token()),
        call("POST", "/forge/events", "{broken", app_token=forge.app_token()),
        call(
            "GET",
            "/api/status",
            None,
            app_token=forge.app_token(),
            user_token=forge.app_token(),
            principal="557058:u",
        ),
        call("POST", "/forge/uninstall", {}),
    ]
    forged = forge.headers(site, app_token=forge.app_token())
    forged["authorization"] = forged["authorization"][:-6] + "AAAAAA"
    secrets.extend([forged["authorization"].split(" ", 1)[1], forged["x-forge-oauth-system"]])
    bodies.append(gateway("POST", "/forge/keepalive", forged).get("body") or "")
    logs = all_logs()
    assert "Forge invocation rejected" in logs  # the capture really sees the handlers' logs
    for secret in secrets:
        # A JWT's header segment is shared by many tokens; its payload and signature are its own.
        for part in secret.split(".")[1:] or [secret]:
            assert part not in logs
            assert all(part not in body for body in bodies)


def test_library_log_lines_are_json_with_the_correlation_id(
    handler: Callable, forge: ForgeEmulator, site: Site
) -> None:
    """forge_remote's own lines (here the FIT rejection) go out as the function's JSON, correlation id included."""
    import io
    import logging

    triggers = handler("ForgeTriggersFunction")
    library = logging.getLogger("forge_remote")
    assert library.handlers, "use_function_logger did not give the library the function's handler"
    assert not library.propagate  # else the Lambda runtime's root handler prints it again, as plain text
    captured = io.StringIO()
    tap = logging.StreamHandler(captured)
    tap.setFormatter(library.handlers[0].formatter)
    library.addHandler(tap)
    headers = forge.headers(site)
    headers["authorization"] = "Bearer not-a-jwt"
    try:
        response = Gateway(triggers, triggers)("POST", "/forge/keepalive", headers, {})
    finally:
        library.removeHandler(tap)
    assert response["statusCode"] == 401
    [line] = [json.loads(text) for text in captured.getvalue().splitlines() if "rejected" in text]
    assert line["message"] == "Forge invocation rejected: malformed token"
    assert line["correlation_id"] == headers["x-b3-traceid"]
    assert line["reason"] == "malformed token"
    assert line["service"] == "forge-triggers"


def test_a_rejected_call_prints_no_powertools_metrics_warning(
    handler: Callable, forge: ForgeEmulator, site: Site
) -> None:
    import warnings

    triggers = handler("ForgeTriggersFunction")
    headers = forge.headers(site)
    headers["authorization"] = "Bearer not-a-jwt"
    with warnings.catch_warnings(record=True) as caught:
        assert Gateway(triggers, triggers)("POST", "/forge/keepalive", headers, {})["statusCode"] == 401
    assert [str(w.message) for w in caught if "metrics" in str(w.message)] == []


def test_a_stored_token_is_published_as_a_metric(
    handler: Callable, forge: ForgeEmulator, site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    triggers = handler("ForgeTriggersFunction")
    gateway = Gateway(triggers, triggers)
    token = forge.app_token()
    capsys.readouterr()
    for _ in range(2):  # the second delivery stores nothing: no metric, and no warning about it
        assert gateway("POST", "/forge/keepalive", forge.headers(site, app_token=token))["statusCode"] == 204
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if '"_aws"' in line]
    assert [line["TokensStored"] for line in lines] == [[1.0]]
