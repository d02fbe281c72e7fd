"""The Confluence client against the emulator on loopback; requests and responses validated against
Atlassian's OpenAPI descriptions (shared/reference)."""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import pytest
import requests
from openapi_core import Config, OpenAPI
from openapi_core.contrib.requests import RequestsOpenAPIRequest, RequestsOpenAPIResponse

from forge_remote import clock
from forge_remote.confluence import ConfluenceClient, Forbidden, NotFound
from forge_remote.cql import and_, field_eq, field_in
from forge_remote.errors import ConfluenceError, DisallowedApiBaseUrl, RetryLater, TokenRejected, TokenUnavailable
from local.confluence_emulator import ConfluenceEmulator
from local.forge_emulator import ForgeEmulator

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference"


@pytest.fixture(scope="module")
def openapi_documents() -> dict[str, dict[str, Any]]:
    if not (REFERENCE / "confluence-openapi-v1.json").exists():
        pytest.fail(
            f"Atlassian's OpenAPI descriptions are expected in {REFERENCE} (the repo is checked out beside shared/)"
        )
    return {v: json.loads((REFERENCE / f"confluence-openapi-{v}.json").read_text()) for v in ("v1", "v2")}


@pytest.fixture
def confluence() -> Iterator[ConfluenceEmulator]:
    emulator = ConfluenceEmulator(page_size_cap=10)
    emulator.start()
    emulator.add_space("ENG", "Engineering")
    yield emulator
    emulator.stop()


class Recorder(requests.Session):
    """A session that keeps every exchange, for contract validation."""

    def __init__(self) -> None:
        super().__init__()
        self.exchanges: list[requests.Response] = []
        self.hooks["response"].append(lambda r, *a, **k: self.exchanges.append(r))


@pytest.fixture
def openapi(openapi_documents: dict[str, dict[str, Any]], confluence: ConfluenceEmulator) -> dict[str, OpenAPI]:
    base = confluence.start()
    specs = {}
    for version, server in (("v1", base), ("v2", base + "/wiki/api/v2")):
        document = copy.deepcopy(openapi_documents[version])
        document["servers"] = [{"url": server}]
        # Atlassian's published files do not pass strict spec validation (an enum default); the
        # request and response schemas are what we check against.
        specs[version] = OpenAPI.from_dict(document, config=Config(spec_validator_cls=None))
    return specs


def validate_exchanges(openapi: dict[str, OpenAPI], session: Recorder) -> int:
    checked = 0
    for response in session.exchanges:
        version = "v2" if "/wiki/api/v2/" in response.request.url else "v1"
        request = RequestsOpenAPIRequest(response.request)
        openapi[version].validate_request(request)
        if response.status_code == 200:
            openapi[version].validate_response(request, RequestsOpenAPIResponse(response))
        checked += 1
    return checked


class Sleeps(list[float]):
    def __call__(self, seconds: float) -> None:
        self.append(seconds)


@pytest.fixture
def forge_tokens() -> ForgeEmulator:
    return ForgeEmulator.__new__(ForgeEmulator)


def client_for(
    confluence: ConfluenceEmulator, token: str, *, session: requests.Session | None = None, **kwargs: Any
) -> tuple[ConfluenceClient, list[int], Sleeps]:
    base = confluence.start()
    calls: list[int] = []
    sleeps = Sleeps()

    def token_source() -> str:
        calls.append(1)
        return token

    client = ConfluenceClient(
        base, token_source, allowed_hosts=[base.split("/")[2]], session=session, sleep=sleeps, **kwargs
    )
    return client, calls, sleeps


@pytest.fixture
def token() -> str:
    forge = ForgeEmulator.__new__(ForgeEmulator)
    from local.forge_emulator import _rsa_key

    forge._token_key = _rsa_key()
    return forge.app_token(lifetime_s=3600)


def add_pages(confluence: ConfluenceEmulator, count: int, **kwargs: Any) -> list[dict[str, Any]]:
    return [confluence.add_page("ENG", f"Page {i}", **kwargs) for i in range(count)]


def test_search_follows_v1_cursors_and_matches_the_contract(
    confluence: ConfluenceEmulator, token: str, openapi: dict[str, OpenAPI]
) -> None:
    pages = add_pages(confluence, 27)
    session = Recorder()
    client, calls, _ = client_for(confluence, token, session=session)
    found = list(
        client.search_content(
            and_(field_in("space", ["ENG"]), field_eq("type", "page")), expand=["version", "space"], limit=50
        )
    )
    assert [int(p["id"]) for p in found] == [p["id"] for p in pages]
    assert all(p["space"]["key"] == "ENG" and p["version"]["number"] == 1 for p in found)
    assert len(session.exchanges) == 3  # 10 + 10 + 7: every next cursor followed
    assert len(calls) == 3  # the token was read before every request
    assert all(r.request.headers["Accept"] == "application/json" for r in session.exchanges)
    assert validate_exchanges(openapi, session) == 3


def test_v2_spaces_by_keys_follows_links_with_wiki(
    confluence: ConfluenceEmulator, token: str, openapi: dict[str, OpenAPI]
) -> None:
    for i in range(24):
        confluence.add_space(f"S{i}", f"Space {i}")
    session = Recorder()
    client, _, _ = client_for(confluence, token, session=session)
    keys = [f"S{i}" for i in range(24)]
    found = list(client.spaces_by_keys(keys))
    assert [s["key"] for s in found] == keys
    assert len(session.exchanges) == 3
    assert validate_exchanges(openapi, session) == 3


def test_get_page_and_not_found(confluence: ConfluenceEmulator, token: str, openapi: dict[str, OpenAPI]) -> None:
    [page] = add_pages(confluence, 1)
    session = Recorder()
    client, _, _ = client_for(confluence, token, session=session)
    assert client.get_page(page["id"])["title"] == "Page 0"
    with pytest.raises(NotFound) as caught:
        client.get_page(999999999)
    assert caught.value.status == 404
    assert caught.value.message == "Not Found"
    validate_exchanges(openapi, session)


def test_retry_after_is_honoured(confluence: ConfluenceEmulator, token: str) -> None:
    add_pages(confluence, 2)
    confluence.fail_next(2, 429, retry_after="7")
    client, _, sleeps = client_for(confluence, token)
    assert len(list(client.search_content(field_eq("type", "page")))) == 2
    assert sleeps == [7.0, 7.0]


def test_http_date_retry_after_is_understood(confluence: ConfluenceEmulator, token: str) -> None:
    confluence.fail_next(1, 503, retry_after=format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True))
    client, _, sleeps = client_for(confluence, token)
    list(client.search_content(field_eq("type", "page")))
    assert 25 <= sleeps[0] <= 31


def test_ratelimit_reset_is_used_without_retry_after(confluence: ConfluenceEmulator, token: str) -> None:
    reset = (datetime.now(UTC) + timedelta(seconds=20)).isoformat().replace("+00:00", "Z")
    confluence.fail_next(1, 429, ratelimit_reset=reset)
    client, _, sleeps = client_for(confluence, token)
    list(client.search_content(field_eq("type", "page")))
    assert 15 <= sleeps[0] <= 21


def test_backoff_with_jitter_when_no_hint_and_bounded_attempts(confluence: ConfluenceEmulator, token: str) -> None:
    confluence.fail_next(10, 429)
    client, _, sleeps = client_for(confluence, token, max_attempts=4)
    with pytest.raises(RetryLater):
        list(client.search_content(field_eq("type", "page")))
    assert len(sleeps) == 3
    assert all(0 <= s <= cap for s, cap in zip(sleeps, (1, 2, 4), strict=True))
    assert len(confluence.requests_seen) == 4


def test_garbage_retry_after_falls_back_to_backoff(confluence: ConfluenceEmulator, token: str) -> None:
    confluence.fail_next(1, 429, retry_after="soon-ish")
    client, _, sleeps = client_for(confluence, token)
    list(client.search_content(field_eq("type", "page")))
    assert 0 <= sleeps[0] <= 1


def test_absurd_retry_after_defers_with_a_clamped_delay(confluence: ConfluenceEmulator, token: str) -> None:
    confluence.fail_next(1, 429, retry_after="999999999")
    client, _, sleeps = client_for(confluence, token)
    with pytest.raises(RetryLater) as caught:
        list(client.search_content(field_eq("type", "page")))
    assert sleeps == []
    assert caught.value.delay_s <= 3600


def test_503_and_500_are_retried(confluence: ConfluenceEmulator, token: str) -> None:
    add_pages(confluence, 1)
    confluence.fail_next(1, 503)
    confluence.fail_next(1, 500)
    client, _, sleeps = client_for(confluence, token)
    assert len(list(client.search_content(field_eq("type", "page")))) == 1
    assert len(sleeps) == 2


def test_never_sleeps_past_the_remaining_time(confluence: ConfluenceEmulator, token: str) -> None:
    confluence.fail_next(1, 429, retry_after="20")
    client, _, sleeps = client_for(confluence, token, remaining_ms=lambda: 25_000)
    with pytest.raises(RetryLater, match="not enough time"):
        list(client.search_content(field_eq("type", "page")))
    assert sleeps == []


def test_timeouts_are_retried_then_deferred(confluence: ConfluenceEmulator, token: str) -> None:
    confluence.delay_s = 0.5
    client, _, sleeps = client_for(confluence, token, timeout_s=(1.0, 0.1), max_attempts=2)
    with pytest.raises(RetryLater, match="unreachable"):
        list(client.search_content(field_eq("type", "page")))
    assert len(sleeps) == 1


def test_401_is_token_rejected(confluence: ConfluenceEmulator, token: str) -> None:
    confluence.revoke(token)
    client, _, _ = client_for(confluence, token)
    with pytest.raises(TokenRejected) as caught:
        client.get_page(1)
    assert caught.value.status == 401


def test_expired_token_answered_404_is_recognised_by_the_probe(token: str) -> None:
    with ConfluenceEmulator(expired_token_status="v1-403-v2-404") as confluence:
        confluence.add_space("ENG", "Engineering")
        confluence.revoke(token)
        client, _, _ = client_for(confluence, token)
        with pytest.raises(TokenRejected) as caught:
            client.get_page(1)
        assert caught.value.status == 404
        with pytest.raises(TokenRejected) as caught:
            list(client.search_content(field_eq("type", "page")))
        assert caught.value.status == 403


def test_a_real_403_with_a_valid_token_is_forbidden_not_token_rejected(
    confluence: ConfluenceEmulator, token: str
) -> None:
    client, _, _ = client_for(confluence, token)
    confluence.fail_next(1, 403)
    with pytest.raises(Forbidden):
        client.get_page(1)


def test_token_unavailable_propagates_before_any_request(confluence: ConfluenceEmulator) -> None:
    base = confluence.start()

    def no_token() -> str:
        raise TokenUnavailable("inst")

    client = ConfluenceClient(base, no_token, allowed_hosts=[base.split("/")[2]])
    with pytest.raises(TokenUnavailable):
        client.get_page(1)
    assert confluence.requests_seen == []


def test_next_link_to_another_host_is_refused(confluence: ConfluenceEmulator, token: str) -> None:
    client, _, _ = client_for(confluence, token)
    with pytest.raises(ConfluenceError, match="another host"):
        client._next_url("https://evil.example.com/wiki/rest/api/content/search?cursor=x")
    assert client._next_url("/rest/api/content/search?cursor=x").startswith(client.wiki_url + "/rest/api/")
    assert client._next_url("/wiki/api/v2/spaces?cursor=x") == client.base_url + "/wiki/api/v2/spaces?cursor=x"


@pytest.mark.parametrize(
    "base", ["http://api.atlassian.com/ex/confluence/x", "https://evil.example.com/ex/confluence/x"]
)
def test_disallowed_api_base_is_refused_before_any_token_is_read(base: str) -> None:
    def token_source() -> str:
        raise AssertionError("token read")

    with pytest.raises(DisallowedApiBaseUrl):
        ConfluenceClient(base, token_source)


def test_cql_must_come_from_the_builder(confluence: ConfluenceEmulator, token: str) -> None:
    client, _, _ = client_for(confluence, token)
    with pytest.raises(TypeError):
        list(client.search_content('type = page or space = "X"'))  # type: ignore[arg-type]


def test_no_token_in_errors_or_logs(
    confluence: ConfluenceEmulator, token: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    client, _, _ = client_for(confluence, token, max_attempts=2)
    errors: list[Exception] = []
    for status in (429, 500, 403, 400):
        confluence.fail_next(2, status)
        try:
            list(client.search_content(field_eq("type", "page")))
        except Exception as exc:
            errors.append(exc)
    confluence.revoke(token)
    try:
        client.get_page(1)
    except TokenRejected as exc:
        errors.append(exc)
    assert len(errors) >= 3
    logs = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    assert "Confluence GET" in logs
    for part in token.split(".")[1:]:
        assert part not in logs
        assert all(part not in str(e) and part not in repr(e.args) for e in errors)


def test_emulator_refuses_expired_tokens_on_the_stack_clock(confluence: ConfluenceEmulator, token: str) -> None:
    client, _, _ = client_for(confluence, token)
    add_pages(confluence, 1)
    assert list(client.search_content(field_eq("type", "page")))
    clock.advance(3601)
    with pytest.raises(TokenRejected):
        list(client.search_content(field_eq("type", "page")))


def test_emulator_rejects_cql_it_does_not_know(confluence: ConfluenceEmulator, token: str) -> None:
    client, _, _ = client_for(confluence, token)
    with pytest.raises(ConfluenceError) as caught:
        list(client.search_content(field_eq("ancestor", "1")))
    assert caught.value.status == 400
