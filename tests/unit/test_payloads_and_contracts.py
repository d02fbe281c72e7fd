"""Parsing and contracts: Forge event bodies (flat or wrapped), job requests, the apiBaseUrl
allow-list, settings, and the deferral schedule."""

from __future__ import annotations

import base64
import itertools
import json
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from forge_remote.config import Settings, app_ari
from forge_remote.confluence.api_hosts import require_allowed_api_base
from forge_remote.errors import BadJobRequest, ConfigurationError, DisallowedApiBaseUrl, MalformedEvent
from forge_remote.forge.payloads import decode_body, json_object, page_ref, parse_event
from forge_remote.jobs.contract import JOB_SOURCE, JobRegistry, JobRequest
from forge_remote.jobs.runner import MAX_DEFER_S, deferral_delay
from local.forge_emulator import ForgeEmulator

APP = "5c7bd2a4-0f1e-4d3b-9a6c-2e8f1b7d4a90"


def test_flat_and_wrapped_events_parse_to_the_same_delivery() -> None:
    forge = ForgeEmulator.__new__(ForgeEmulator)  # only the body builders are needed
    flat = parse_event(forge.page_event("42", "ENG", version=2))
    wrapped = parse_event(forge.page_event("42", "ENG", version=2, wrapped=True, retry_count=3))
    assert wrapped.retry_count == 3
    assert flat.event_type == wrapped.event_type == "avi:confluence:created:page"
    assert flat.dedup_key == wrapped.dedup_key  # a Forge retry is the same delivery
    ref = page_ref(wrapped)
    assert ref is not None
    assert (ref.page_id, ref.space_key, ref.version) == ("42", "ENG", 2)


def test_retry_context_at_the_top_level_is_understood() -> None:
    event = parse_event({"payload": {"eventType": "avi:forge:installed:app"}, "retryContext": {"retryCount": 2}})
    assert event.retry_count == 2


@pytest.mark.parametrize(
    "content",
    [None, "str", {"id": "12a"}, {"id": True}, {"id": ""}, {"id": "1" * 30}, {"type": "page"}],
)
def test_page_events_without_a_usable_id_give_no_page(content: object) -> None:
    assert page_ref(parse_event({"eventType": "avi:confluence:updated:page", "content": content})) is None


def test_numeric_page_id_is_accepted() -> None:
    ref = page_ref(parse_event({"eventType": "avi:confluence:updated:page", "content": {"id": 77}}))
    assert ref is not None
    assert ref.page_id == "77"


@pytest.mark.parametrize(
    ("raw", "message"),
    [(b"", "empty"), (b"nope", "not valid JSON"), (b"[]", "not a JSON object"), (b"\xff\xfe", "not valid JSON")],
)
def test_bad_bodies_are_malformed(raw: bytes, message: str) -> None:
    with pytest.raises(MalformedEvent, match=message):
        json_object(raw)


def test_body_decoding_handles_base64_and_limits_size() -> None:
    assert decode_body(base64.b64encode(b'{"a":1}').decode(), is_base64=True) == b'{"a":1}'
    with pytest.raises(MalformedEvent, match="base64"):
        decode_body("***", is_base64=True)
    with pytest.raises(MalformedEvent, match="too large"):
        decode_body("x" * (600 * 1024))


def test_deeply_nested_json_is_malformed_not_a_crash() -> None:
    with pytest.raises(MalformedEvent):
        json_object(b"[" * 100000 + b"]" * 100000)


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(), lambda c: st.lists(c) | st.dictionaries(st.text(), c)
    )
)
def test_parse_event_never_raises_anything_but_malformed(document: object) -> None:
    if not isinstance(document, dict):
        return
    try:
        event = parse_event(document)
    except MalformedEvent:
        return
    page_ref(event)  # must not raise either


def test_job_request_round_trips_bare_and_in_the_envelope_of_earlier_versions() -> None:
    request = JobRequest(
        job="page-snapshot", installation_id="ari:cloud:ecosystem::installation/x", args={"pageId": "1"}
    )
    assert JobRequest.from_message_body(json.dumps(request.to_detail())) == request  # what is sent now
    # Messages an earlier version queued through EventBridge, still on the queue after an upgrade.
    envelope = {"source": JOB_SOURCE, "detail-type": "JobRequest", "detail": request.to_detail()}
    assert JobRequest.from_message_body(json.dumps(envelope)) == request


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("not json", "not valid JSON"),
        ("[]", "not a JSON object"),
        ('{"installationId": "i"}', "job name"),
        ('{"job": "Bad Name", "installationId": "i"}', "job name"),
        ('{"job": "x"}', "installationId"),
        ('{"job": "x", "installationId": "i", "args": []}', "args"),
        ('{"job": "x", "installationId": "' + "i" * 300 + '"}', "installationId"),
    ],
)
def test_invalid_job_requests_are_bad_requests(body: str, message: str) -> None:
    with pytest.raises(BadJobRequest, match=message):
        JobRequest.from_message_body(body)


def test_unknown_job_and_bad_arguments_are_bad_requests() -> None:
    registry = JobRegistry()

    def parse(args: dict) -> int:
        return int(args["n"])

    @registry.job("count", parse)
    def count(ctx: object, n: int) -> None:
        return None

    with pytest.raises(BadJobRequest, match="unknown job"):
        registry.get("nope")
    with pytest.raises(ValueError, match="already registered"):
        registry.job("count", parse)(count)
    assert registry.names() == ["count"]


@pytest.mark.parametrize(
    "url",
    [
        "https://api.atlassian.com/ex/confluence/abc",
        "https://API.atlassian.com/ex/confluence/abc/",
        "https://api.atlassian.com:443/ex/confluence/abc",
    ],
)
def test_allowed_api_base_urls(url: str) -> None:
    assert require_allowed_api_base(url, ["api.atlassian.com"]).endswith("/ex/confluence/abc")


@pytest.mark.parametrize(
    "url",
    [
        "",
        "http://api.atlassian.com/ex",
        "https://api.atlassian.com.evil.com/ex",
        "https://evil.com/api.atlassian.com",
        "https://user:pw@api.atlassian.com/ex",
        "https://api.atlassian.com/ex?x=1",
        "https://api.atlassian.com:8443/ex",
        "ftp://api.atlassian.com/ex",
        "http://127.0.0.1:8080/ex",  # loopback, but not explicitly allowed
        "https://api.atlassian.com:99999/ex",
    ],
)
def test_disallowed_api_base_urls(url: str) -> None:
    with pytest.raises(DisallowedApiBaseUrl):
        require_allowed_api_base(url, ["api.atlassian.com"])


def test_http_is_allowed_only_for_an_explicitly_allowed_loopback_host() -> None:
    assert require_allowed_api_base("http://127.0.0.1:8080/ex", ["127.0.0.1:8080"]) == "http://127.0.0.1:8080/ex"
    with pytest.raises(DisallowedApiBaseUrl):
        require_allowed_api_base("http://10.0.0.1:8080/ex", ["10.0.0.1:8080"])


def test_settings_from_env() -> None:
    env = {
        "FORGE_APP_ID": APP,
        "TOKENS_TABLE": "t",
        "APP_TABLE": "a",
        "ALLOWED_API_HOSTS": " api.atlassian.com, X.example ",
    }
    settings = Settings.from_env(env)
    assert settings.app_ari == f"ari:cloud:ecosystem::app/{APP}"
    assert settings.allowed_api_hosts == ("api.atlassian.com", "x.example")
    assert settings.token_min_validity_s == 600
    assert settings.jwks_url.startswith("https://forge.cdn.prod.atlassian-dev.net/")


@pytest.mark.parametrize(
    "env",
    [
        {"TOKENS_TABLE": "t", "APP_TABLE": "a"},
        {"FORGE_APP_ID": "not-a-uuid", "TOKENS_TABLE": "t", "APP_TABLE": "a"},
        {"FORGE_APP_ID": APP, "APP_TABLE": "a"},
        {"FORGE_APP_ID": APP, "TOKENS_TABLE": "t", "APP_TABLE": "a", "TOKEN_MIN_VALIDITY_S": "soon"},
        {"FORGE_APP_ID": APP, "TOKENS_TABLE": "t", "APP_TABLE": "a", "TOKEN_MIN_VALIDITY_S": "99999"},
        {"FORGE_APP_ID": APP, "TOKENS_TABLE": "t", "APP_TABLE": "a", "FORGE_JWKS_URL": "http://evil.example/jwks"},
    ],
)
def test_bad_settings_fail_at_cold_start(env: dict[str, str]) -> None:
    with pytest.raises(ConfigurationError):
        Settings.from_env(env)


def test_app_ari_accepts_both_forms() -> None:
    assert app_ari(APP.upper()) == app_ari(f"ari:cloud:ecosystem::app/{APP}") == f"ari:cloud:ecosystem::app/{APP}"


def test_deferral_grows_and_is_capped() -> None:
    rng = random.Random(1)
    delays = [deferral_delay(n, rng=rng) for n in range(1, 12)]
    assert 54 <= delays[0] <= 66
    assert all(b >= a * 0.8 for a, b in itertools.pairwise(delays))
    assert max(delays) <= MAX_DEFER_S * 1.1
    assert deferral_delay(1, at_least=900, rng=rng) >= 810  # a long Retry-After is respected
    assert sum(delays[:9]) > 2 * 3600  # nine deferrals outlast two hourly keepalives


def test_local_http_api_events_join_repeated_query_values() -> None:
    from local.apigw import http_api_event

    event = http_api_event("GET", "/api/status", query="key=A&key=B&limit=1")
    assert event["queryStringParameters"] == {"key": "A,B", "limit": "1"}
    assert event["rawQueryString"] == "key=A&key=B&limit=1"
