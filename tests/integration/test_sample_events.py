"""The sample events in events/ stay valid for the handlers they are for (sam local invoke -e)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from forge_remote.forge.payloads import parse_event
from forge_remote.jobs.contract import JobRequest
from local.forge_emulator import ForgeEmulator, Site
from local.lambda_context import LocalLambdaContext
from tests.support import ROOT, Gateway, body_of

EVENTS = ROOT / "events"
HTTP_SAMPLES = sorted((EVENTS / "forge_triggers").glob("*.json")) + sorted((EVENTS / "forge_calls").glob("*.json"))
SAMPLE_SITE = Site(
    installation_id="ari:cloud:ecosystem::installation/8d0c7a51-3f2e-4b6a-9c1d-5e7f9a2b4c6d",
    cloud_id="a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d",
    api_base_url="https://api.atlassian.com/ex/confluence/a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d",
    site_url="https://example-site.atlassian.net",
)


def load(path: Path) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(path.read_text())
    return document


def test_there_is_a_sample_for_every_route() -> None:
    routes = {load(p)["rawPath"] for p in HTTP_SAMPLES}
    assert routes == {"/forge/lifecycle", "/forge/uninstall", "/forge/events", "/forge/keepalive", "/api/status"}


@pytest.mark.parametrize("path", HTTP_SAMPLES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_sample_with_its_placeholder_fit_is_a_clean_401(path: Path, gateway: Gateway) -> None:
    event = load(path)
    module = gateway.calls if event["rawPath"].startswith("/api/") else gateway.triggers
    response = module.lambda_handler(event, LocalLambdaContext())
    assert response["statusCode"] == 401
    assert body_of(response)["error"] == "unauthorized"


@pytest.mark.parametrize("path", HTTP_SAMPLES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_sample_with_a_real_fit_is_accepted(path: Path, gateway: Gateway, forge: ForgeEmulator) -> None:
    event = load(path)
    principal = "557058:sample-user" if event["rawPath"].startswith("/api/") else None
    real = forge.headers(SAMPLE_SITE, app_token=forge.app_token(), principal=principal)
    event["headers"].update({k: v for k, v in real.items() if k in ("authorization", "x-forge-oauth-system")})
    module = gateway.calls if event["rawPath"].startswith("/api/") else gateway.triggers
    response = module.lambda_handler(event, LocalLambdaContext())
    assert 200 <= response["statusCode"] < 300, response.get("body")


@pytest.mark.parametrize("path", sorted((EVENTS / "forge_payloads").glob("*.json")), ids=lambda p: p.name)
def test_forge_payload_samples_parse(path: Path) -> None:
    assert parse_event(load(path)).event_type.startswith("avi:")


def test_worker_sample_batch_holds_valid_job_requests() -> None:
    records = load(EVENTS / "confluence_worker" / "sqs_batch.json")["Records"]
    jobs = [JobRequest.from_message_body(r["body"]).job for r in records]
    assert jobs == ["page-snapshot", "space-digest"]


def test_scheduler_sample_is_what_the_template_schedules() -> None:
    from local.stack import LocalStack

    stack = LocalStack.from_template(EVENTS.parent / "template.yaml")  # parameters at their defaults
    schedule = stack.resources["JobSchedulerFunction"]["Properties"]["Events"]["DailyDigest"]["Properties"]
    scheduled = json.loads(stack.resolve(schedule["Input"]))  # an !Sub naming DigestSpreadMinutes
    sample = load(EVENTS / "job_scheduler" / "daily_digest.json")
    assert (
        (scheduled["job"], scheduled["spreadMinutes"])
        == (sample["job"], sample["spreadMinutes"])
        == ("space-digest", 60)
    )
