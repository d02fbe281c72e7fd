"""The Confluence client against the emulator on loopback (and ``responses`` for what the emulator
would never send: foreign ``next`` links, redirects, bodies echoing the token). Requests and responses
are validated against Atlassian's OpenAPI descriptions; sleeps are recorded, never slept."""

from __future__ import annotations

import functools
import logging
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import pytest
import requests
import responses
from openapi_core import OpenAPI

from forge_remote import clock, outbound
from forge_remote.confluence.client import ConfluenceClient
from forge_remote.confluence.cql import and_, field_eq, field_in, id_eq
from forge_remote.errors import (
    ConfluenceError,
    ConfluenceUnavailable,
    DisallowedApiBaseUrl,
    Forbidden,
    NotFound,
    PermanentFailure,
    RetryLater,
    TokenRejected,
    TokenUnavailable,
)
from local.confluence_emulator import ConfluenceEmulator
from tests.confluence_contract import check_exchange, load_openapi, make_token

REMOTE_BASE = "https://api.atlassian.com/ex/confluence/cloud-1"  # for the ``responses`` tests


class Recorder(requests.Session):
    """A session that keeps every response (with its request), for contract checks."""

    def __init__(self) -> None:
        super().__init__()
        self.exchanges: list[requests.Response] = []
        self.hooks["response"].append(self._keep)

    def _keep(self, response: requests.Response, *args: Any, **kwargs: Any) -> None:
        self.exchanges.append(response)


@dataclass
class Harness:
    client: ConfluenceClient
    session: Recorder
    sleeps: list[float]
    tokens_read: list[str]


def connect(base: str, token: str | Callable[[], str], **kwargs: Any) -> Harness:
    """A client on ``base`` whose sleeps and token reads are recorded."""
    source = token if callable(token) else (lambda: token)
    tokens_read: list[str] = []

    def read_token() -> str:
        tokens_read.append(value := source())
        return value

    sleeps: list[float] = []
    session = Recorder()
    kwargs.setdefault("allowed_hosts", [base.split("/")[2]])
    client = ConfluenceClient(base, read_token, session=session, sleep=sleeps.append, **kwargs)
    return Harness(client, session, sleeps, tokens_read)


@pytest.fixture(scope="module")
def openapi() -> dict[str, OpenAPI]:
    return load_openapi()


@pytest.fixture
def confluence() -> Iterator[ConfluenceEmulator]:
    with ConfluenceEmulator(page_size_cap=10) as emulator:
        emulator.add_space("ENG", "Engineering")
        yield emulator


@pytest.fixture
def token() -> str:
    return make_token()


def add_pages(confluence: ConfluenceEmulator, count: int) -> list[dict[str, Any]]:
    return [confluence.add_page("ENG", f"Page {i}") for i in range(count)]


def search_all(harness: Harness) -> list[dict[str, Any]]:
    return list(harness.client.search_content(field_eq("type", "page")))


# -- pagination and the contract


def test_search_streams_every_v1_cursor_page_and_matches_the_contract(
    confluence: ConfluenceEmulator, token: str, openapi: dict[str, OpenAPI]
) -> None:
    pages = add_pages(confluence, 27)
    harness = connect(confluence.api_base_url, token)
    cql = and_(field_in("space", ["ENG", "OPS"]), field_eq("type", "page"))
    found = list(harness.client.search_content(cql, expand=["version", "space"]))
    assert [int(p["id"]) for p in found] == [p["id"] for p in pages]
    assert all(p["space"]["key"] == "ENG" and p["version"]["number"] == 1 for p in found)
    assert len(harness.session.exchanges) == 3  # 10 + 10 + 7: every next cursor followed
    assert [check_exchange(openapi, r) for r in harness.session.exchanges] == ["v1"] * 3
    # v1 next links lack /wiki: the client put it back, exactly once.
    assert {seen[1] for seen in confluence.requests_seen} == {
        f"/ex/confluence/{confluence.cloud_id}/wiki/rest/api/content/search"
    }
    for response in harness.session.exchanges:
        assert response.request.headers["Authorization"] == f"Bearer {token}"
        assert response.request.headers["Accept"] == "application/json"


def test_spaces_by_keys_streams_v2_cursor_pages(
    confluence: ConfluenceEmulator, token: str, openapi: dict[str, OpenAPI]
) -> None:
    keys = [f"S{i:02d}" for i in range(24)]
    for key in keys:
        confluence.add_space(key, f"Space {key}")
    harness = connect(confluence.api_base_url, token)
    assert [s["key"] for s in harness.client.spaces_by_keys(keys)] == keys
    assert [check_exchange(openapi, r) for r in harness.session.exchanges] == ["v2"] * 3
    # v2 next links include /wiki: appended to the apiBaseUrl, not to <apiBaseUrl>/wiki.
    assert {seen[1] for seen in confluence.requests_seen} == {
        f"/ex/confluence/{confluence.cloud_id}/wiki/api/v2/spaces"
    }


def test_more_than_250_keys_are_sent_in_chunks(token: str) -> None:
    with ConfluenceEmulator(page_size_cap=250) as emulator:
        keys = [f"K{i:03d}" for i in range(260)]
        for key in keys:
            emulator.add_space(key, key)
        harness = connect(emulator.api_base_url, token)
        assert [s["key"] for s in harness.client.spaces_by_keys(keys)] == keys
        assert [len(seen[2]["keys"].split(",")) for seen in emulator.requests_seen] == [250, 10]


def test_get_page_and_get_json(confluence: ConfluenceEmulator, token: str, openapi: dict[str, OpenAPI]) -> None:
    [page] = add_pages(confluence, 1)
    harness = connect(confluence.api_base_url, token)
    fetched = harness.client.get_page(page["id"], body_format="storage")
    assert (fetched["title"], fetched["body"]["storage"]["value"]) == ("Page 0", page["body"])
    assert harness.client.get_json(f"/api/v2/pages/{page['id']}")["id"] == str(page["id"])
    assert harness.client.get_json("/api/v2/spaces", {"keys": "ENG"})["results"][0]["key"] == "ENG"
    assert [check_exchange(openapi, r) for r in harness.session.exchanges] == ["v2"] * 3


def test_a_value_cannot_widen_the_search(confluence: ConfluenceEmulator, token: str) -> None:
    add_pages(confluence, 3)
    harness = connect(confluence.api_base_url, token)
    assert list(harness.client.search_content(field_eq("space", 'x" OR type = page'))) == []
    assert len(list(harness.client.search_content(field_eq("space", "ENG")))) == 3


def test_the_motivating_query_finds_one_page(confluence: ConfluenceEmulator, token: str) -> None:
    pages = add_pages(confluence, 12)
    harness = connect(confluence.api_base_url, token)
    query = and_(field_in("space", ["ENG"]), field_eq("type", "page"), id_eq(pages[7]["id"]))
    [found] = harness.client.search_content(query, expand=["version", "space"], limit=1)
    assert found["id"] == str(pages[7]["id"])


# -- rate limits, outages and the time budget


def test_retry_after_is_honoured(confluence: ConfluenceEmulator, token: str) -> None:
    add_pages(confluence, 2)
    confluence.fail_next(2, 429, retry_after="7")
    harness = connect(confluence.api_base_url, token)
    assert len(search_all(harness)) == 2
    assert harness.sleeps == [7.0, 7.0]


def test_ratelimit_reset_is_used_without_retry_after(confluence: ConfluenceEmulator, token: str) -> None:
    reset = (datetime.now(UTC) + timedelta(seconds=100)).isoformat().replace("+00:00", "Z")
    confluence.fail_next(1, 429, ratelimit_reset=reset)
    harness = connect(confluence.api_base_url, token)
    search_all(harness)
    [slept] = harness.sleeps
    assert 30 < slept <= 100  # until the reset (wide margin: wall time moves), not a backoff of 1 s at most


def test_without_hints_backoff_is_exponential_with_full_jitter(confluence: ConfluenceEmulator, token: str) -> None:
    confluence.fail_next(3, 429)
    harness = connect(confluence.api_base_url, token, rng=random.Random(7), max_attempts=4)
    search_all(harness)
    same = random.Random(7)
    assert harness.sleeps == [same.uniform(0, 1), same.uniform(0, 2), same.uniform(0, 4)]


def test_backoff_is_capped_at_30_seconds(confluence: ConfluenceEmulator, token: str) -> None:
    confluence.fail_next(7, 500)
    harness = connect(confluence.api_base_url, token, rng=random.Random(1), max_attempts=8, max_retry_after_s=60)
    search_all(harness)
    caps = [1, 2, 4, 8, 16, 30, 30]
    assert len(harness.sleeps) == 7
    assert all(0 <= s <= cap for s, cap in zip(harness.sleeps, caps, strict=True))
    assert max(harness.sleeps[5:]) > 16  # the cap is 30, not 2**6


def test_attempts_are_bounded_and_a_rate_limit_defers(confluence: ConfluenceEmulator, token: str) -> None:
    confluence.fail_next(10, 429)
    harness = connect(confluence.api_base_url, token, max_attempts=3)
    with pytest.raises(RetryLater, match="after 3 attempts") as caught:
        search_all(harness)
    assert len(confluence.requests_seen) == 3
    assert len(harness.sleeps) == 2
    assert caught.value.delay_s == 4.0  # the backoff the next attempt would have had


def test_503_is_retried_with_its_retry_after_and_deferred_when_it_persists(
    confluence: ConfluenceEmulator, token: str
) -> None:
    confluence.fail_next(1, 503, retry_after="2")
    harness = connect(confluence.api_base_url, token)
    search_all(harness)
    assert harness.sleeps == [2.0]
    confluence.fail_next(5, 503, retry_after="3")
    with pytest.raises(RetryLater) as caught:
        search_all(connect(confluence.api_base_url, token, max_attempts=2))
    assert caught.value.delay_s == 3.0


@pytest.mark.parametrize("status", [500, 502, 504])
def test_other_5xx_back_off_then_fail_with_the_status(confluence: ConfluenceEmulator, token: str, status: int) -> None:
    confluence.fail_next(1, status)
    harness = connect(confluence.api_base_url, token)
    search_all(harness)
    assert len(harness.sleeps) == 1
    assert 0 <= harness.sleeps[0] <= 1
    confluence.fail_next(3, status)
    with pytest.raises(ConfluenceUnavailable) as caught:
        search_all(connect(confluence.api_base_url, token, max_attempts=3))
    assert caught.value.status == status
    assert isinstance(caught.value, RetryLater)  # the worker defers it; a 4xx is permanent instead
    assert not isinstance(caught.value, PermanentFailure)


@pytest.mark.parametrize(("retry_after", "deferred"), [("10", False), ("11", True), ("999999", True)])
def test_retry_after_beyond_the_clamp_defers_with_the_clamped_delay(
    confluence: ConfluenceEmulator, token: str, retry_after: str, deferred: bool
) -> None:
    confluence.fail_next(1, 429, retry_after=retry_after)
    harness = connect(confluence.api_base_url, token, max_retry_after_s=10)
    if not deferred:
        search_all(harness)
        assert harness.sleeps == [10.0]
        return
    with pytest.raises(RetryLater) as caught:
        search_all(harness)
    assert caught.value.delay_s == 10.0
    assert harness.sleeps == []
    assert len(confluence.requests_seen) == 1


@pytest.mark.parametrize("value", ["-5", "soon-ish", "", "nan"])
def test_garbage_retry_after_falls_back_to_backoff(confluence: ConfluenceEmulator, token: str, value: str) -> None:
    confluence.fail_next(1, 429, retry_after=value)
    harness = connect(confluence.api_base_url, token)
    search_all(harness)
    assert len(harness.sleeps) == 1
    assert 0 <= harness.sleeps[0] <= 1


@pytest.mark.parametrize(("remaining_ms", "slept"), [(18_000, True), (17_999, False), (4_000, False)])
def test_never_sleeps_past_the_remaining_time(
    confluence: ConfluenceEmulator, token: str, remaining_ms: int, slept: bool
) -> None:
    # Retry-After 5 s + read timeout 10 s + 3 s margin = 18 s needed.
    confluence.fail_next(1, 429, retry_after="5")
    harness = connect(confluence.api_base_url, token, remaining_ms=lambda: remaining_ms, timeout_s=(3.05, 10.0))
    if slept:
        search_all(harness)
        assert harness.sleeps == [5.0]
        return
    with pytest.raises(RetryLater, match="not enough time") as caught:
        search_all(harness)
    assert harness.sleeps == []
    assert caught.value.delay_s == 5.0


@pytest.mark.parametrize("remaining_ms", [3_999, 3_000, 0])
def test_no_request_is_sent_without_a_second_left_for_it(
    confluence: ConfluenceEmulator, token: str, remaining_ms: int
) -> None:
    # 3 s margin + 1 s for the request itself: with less left, nothing goes out (it could not finish).
    harness = connect(confluence.api_base_url, token, remaining_ms=lambda: remaining_ms)
    with pytest.raises(RetryLater, match="not enough time"):
        search_all(harness)
    assert confluence.requests_seen == []


def test_a_request_never_waits_longer_than_the_time_left(confluence: ConfluenceEmulator, token: str) -> None:
    confluence.delay_s = 2.0  # slower than the 1.5 s this invocation has left for it
    harness = connect(confluence.api_base_url, token, remaining_ms=lambda: 4_500, timeout_s=(3.05, 10.0))
    with pytest.raises(RetryLater, match="unreachable"):
        search_all(harness)


def test_timeouts_are_retried_then_deferred(confluence: ConfluenceEmulator, token: str) -> None:
    confluence.delay_s = 0.5
    harness = connect(confluence.api_base_url, token, timeout_s=(1.0, 0.05), max_attempts=2)
    with pytest.raises(RetryLater, match="unreachable"):
        search_all(harness)
    assert len(harness.sleeps) == 1
    assert len(harness.tokens_read) == 2


def test_a_refused_connection_is_retried_then_deferred(token: str) -> None:
    emulator = ConfluenceEmulator()
    base = emulator.start()
    emulator.stop()  # nothing listens on that port any more
    harness = connect(base, token, max_attempts=3)
    with pytest.raises(RetryLater, match=r"unreachable \(ConnectionError\) after 3 attempts"):
        harness.client.get_page(1)
    assert len(harness.sleeps) == 2


# -- tokens


def test_token_is_read_before_every_request(confluence: ConfluenceEmulator) -> None:
    add_pages(confluence, 25)
    confluence.fail_next(2, 429, retry_after="0")
    harness = connect(confluence.api_base_url, make_token)  # a new token on every read
    assert len(search_all(harness)) == 25
    assert len(harness.tokens_read) == 5  # 2 rate-limited + 3 cursor pages
    assert [seen[3] for seen in confluence.requests_seen] == harness.tokens_read
    assert harness.client.request_count == 5


def test_token_unavailable_propagates_and_nothing_is_sent(confluence: ConfluenceEmulator) -> None:
    def no_token() -> str:
        raise TokenUnavailable("ari:cloud:ecosystem::installation/x")

    harness = connect(confluence.api_base_url, no_token)
    with pytest.raises(TokenUnavailable):
        harness.client.get_page(1)
    assert confluence.requests_seen == []


def test_token_unavailable_mid_pagination_stops_the_stream(confluence: ConfluenceEmulator, token: str) -> None:
    add_pages(confluence, 15)
    reads: list[int] = []

    def token_once() -> str:
        reads.append(1)
        if len(reads) > 1:  # the lease found the token too close to expiry
            raise TokenUnavailable("ari:cloud:ecosystem::installation/x")
        return token

    stream = connect(confluence.api_base_url, token_once).client.search_content(field_eq("type", "page"))
    assert len([next(stream) for _ in range(10)]) == 10
    with pytest.raises(TokenUnavailable):
        next(stream)
    assert len(confluence.requests_seen) == 1


def test_401_is_token_rejected_without_a_probe(confluence: ConfluenceEmulator, token: str) -> None:
    confluence.revoke(token)
    with pytest.raises(TokenRejected) as caught:
        connect(confluence.api_base_url, token).client.get_page(1)
    assert caught.value.status == 401
    assert caught.value.trace_id
    assert len(confluence.requests_seen) == 1


def test_404_with_a_valid_token_is_not_found_after_a_probe(confluence: ConfluenceEmulator, token: str) -> None:
    harness = connect(confluence.api_base_url, token)
    with pytest.raises(NotFound) as caught:
        harness.client.get_page(999_999_999)
    assert (caught.value.status, caught.value.message) == (404, "Not Found")
    assert caught.value.trace_id
    _, path, query, probe_token = confluence.requests_seen[1]
    assert (path.endswith("/wiki/api/v2/spaces"), query, probe_token) == (True, {"limit": "1"}, token)


def test_403_with_a_valid_token_is_forbidden(confluence: ConfluenceEmulator, token: str) -> None:
    confluence.fail_next(1, 403)
    with pytest.raises(Forbidden) as caught:
        search_all(connect(confluence.api_base_url, token))
    assert caught.value.status == 403


def test_expired_token_answered_403_or_404_is_token_rejected(token: str) -> None:
    with ConfluenceEmulator(expired_token_status="v1-403-v2-404") as emulator:
        emulator.add_space("ENG", "Engineering")
        [page] = [emulator.add_page("ENG", "Plan")]
        harness = connect(emulator.api_base_url, token)  # a store that still believes in the token
        assert harness.client.get_page(page["id"])["id"] == str(page["id"])
        clock.advance(3601)
        with pytest.raises(TokenRejected) as caught:
            harness.client.get_page(page["id"])
        assert caught.value.status == 404
        with pytest.raises(TokenRejected) as caught:
            search_all(harness)
        assert caught.value.status == 403


def test_an_inconclusive_probe_defers(confluence: ConfluenceEmulator, token: str) -> None:
    [page] = add_pages(confluence, 1)
    confluence.fail_next(1, 403)
    confluence.fail_next(1, 503)  # the probe is rate limited: we cannot tell
    with pytest.raises(RetryLater, match="inconclusive"):
        connect(confluence.api_base_url, token).client.get_page(page["id"])


# -- where the token may go


@pytest.mark.parametrize(
    "link",
    [
        "https://evil.example.com/wiki/rest/api/content/search?cursor=x",
        "//evil.example.com/wiki/rest/api/content/search?cursor=x",
        "http://api.atlassian.com/ex/confluence/cloud-1/wiki/rest/api/content/search?cursor=x",
        "https://api.atlassian.com/ex/confluence/another-cloud/wiki/rest/api/content/search?cursor=x",
        "rest/api/content/search?cursor=x",
    ],
)
def test_a_next_link_elsewhere_is_refused(token: str, link: str) -> None:
    with responses.RequestsMock() as remote:
        remote.get(
            f"{REMOTE_BASE}/wiki/rest/api/content/search", json={"results": [{"id": "1"}], "_links": {"next": link}}
        )
        stream = connect(REMOTE_BASE, token).client.search_content(field_eq("type", "page"))
        assert next(stream) == {"id": "1"}
        with pytest.raises(ConfluenceError, match="next link"):
            next(stream)
        assert len(remote.calls) == 1


def test_an_absolute_next_link_on_the_same_site_is_followed(token: str) -> None:
    with responses.RequestsMock() as remote:
        url = f"{REMOTE_BASE}/wiki/rest/api/content/search"
        remote.get(url, json={"results": [{"id": "1"}], "_links": {"next": url + "?cursor=2"}})
        remote.get(url, json={"results": [{"id": "2"}], "_links": {}})
        assert [p["id"] for p in connect(REMOTE_BASE, token).client.search_content(field_eq("type", "page"))] == [
            "1",
            "2",
        ]


def test_redirects_are_not_followed(token: str) -> None:
    with responses.RequestsMock() as remote:
        remote.get(f"{REMOTE_BASE}/wiki/api/v2/pages/1", status=302, headers={"Location": "https://evil.example.com/"})
        with pytest.raises(ConfluenceError, match="redirect") as caught:
            connect(REMOTE_BASE, token).client.get_page(1)
        assert caught.value.status == 302
        assert len(remote.calls) == 1


@pytest.mark.parametrize(
    "base",
    [
        "http://api.atlassian.com/ex/confluence/x",
        "https://evil.example.com/ex/confluence/x",
        "https://api.atlassian.com.evil.example/ex/confluence/x",
        "https://user:pw@api.atlassian.com/ex/confluence/x",
    ],
)
def test_a_disallowed_api_base_is_refused_before_any_token_is_read(base: str) -> None:
    def token_source() -> str:
        raise AssertionError("token read")

    with pytest.raises(DisallowedApiBaseUrl):
        ConfluenceClient(base, token_source)


def test_only_idempotent_requests_are_sent(confluence: ConfluenceEmulator, token: str) -> None:
    harness = connect(confluence.api_base_url, token)
    with pytest.raises(ValueError, match="not idempotent"):
        harness.client._request("POST", harness.client.wiki_url + "/rest/api/content", None)
    assert harness.tokens_read == []
    assert confluence.requests_seen == []


@pytest.mark.parametrize(
    "call",
    [
        lambda c: list(c.search_content('type = page or space = "X"')),
        lambda c: list(c.search_content(field_eq("type", "page"), limit=0)),
        lambda c: c.get_page("12; DROP"),
        lambda c: c.get_page(True),
        lambda c: c.get_page(-1),
        lambda c: c.get_page(1, body_format="html"),
        lambda c: list(c.spaces_by_keys("ENG")),
        lambda c: list(c.spaces_by_keys(["A,B"])),
        lambda c: c.get_json("/../admin"),
        lambda c: c.get_json("//evil.example.com/x"),
        lambda c: c.get_json("/rest/api/content?cql=x"),
        lambda c: c.get_json("/rest/api/%2e%2e/x"),
        lambda c: c.get_json("rest/api/space"),
    ],
)
def test_bad_arguments_are_refused_before_any_request(
    confluence: ConfluenceEmulator, token: str, call: Callable[[ConfluenceClient], object]
) -> None:
    with pytest.raises((TypeError, ValueError)):
        call(connect(confluence.api_base_url, token).client)
    assert confluence.requests_seen == []


def test_the_container_session_is_shared(
    monkeypatch: pytest.MonkeyPatch, confluence: ConfluenceEmulator, token: str
) -> None:
    monkeypatch.setattr(outbound, "_session", None)
    first = outbound.shared_session()
    assert outbound.shared_session() is first
    recorder = Recorder()
    monkeypatch.setattr(outbound, "_session", recorder)
    client = ConfluenceClient(
        confluence.api_base_url, lambda: token, allowed_hosts=[confluence.api_base_url.split("/")[2]]
    )
    client.get_json("/api/v2/spaces")
    ConfluenceClient(
        confluence.api_base_url, lambda: token, allowed_hosts=[confluence.api_base_url.split("/")[2]]
    ).get_json("/api/v2/spaces")
    assert len(recorder.exchanges) == 2


# -- secrecy and logs


def expect(kind: type[Exception], call: Callable[[], object]) -> Exception:
    with pytest.raises(kind) as caught:
        call()
    return caught.value


def every_error_path(confluence: ConfluenceEmulator, token: str) -> list[Exception]:
    """One exception from each way the client can fail, all with ``token`` in play."""
    base = confluence.api_base_url
    errors = []
    confluence.fail_next(1, 403)
    errors.append(expect(Forbidden, lambda: connect(base, token).client.get_page(1)))
    errors.append(expect(NotFound, lambda: connect(base, token).client.get_page(1)))
    errors.append(
        expect(ConfluenceError, lambda: list(connect(base, token).client.search_content(field_eq("nosuchfield", "1"))))
    )
    confluence.fail_next(2, 500)
    errors.append(expect(ConfluenceUnavailable, lambda: connect(base, token, max_attempts=2).client.get_page(1)))
    confluence.fail_next(2, 429)
    errors.append(expect(RetryLater, lambda: connect(base, token, max_attempts=2).client.get_page(1)))
    confluence.fail_next(1, 429, retry_after="999999")
    errors.append(expect(RetryLater, lambda: connect(base, token).client.get_page(1)))
    confluence.fail_next(1, 503, retry_after="30")
    errors.append(expect(RetryLater, lambda: connect(base, token, remaining_ms=lambda: 5000).client.get_page(1)))
    confluence.fail_next(1, 403)
    confluence.fail_next(1, 503)
    errors.append(expect(RetryLater, lambda: connect(base, token).client.get_page(1)))
    confluence.delay_s = 0.5
    errors.append(
        expect(RetryLater, lambda: connect(base, token, timeout_s=(1.0, 0.05), max_attempts=1).client.get_page(1))
    )
    confluence.delay_s = 0.0
    with ConfluenceEmulator(expired_token_status="v1-403-v2-404", token_validator=lambda t: False) as expired:
        errors.append(expect(TokenRejected, lambda: connect(expired.api_base_url, token).client.get_page(1)))
        errors.append(expect(TokenRejected, lambda: search_all(connect(expired.api_base_url, token))))
    with responses.RequestsMock() as remote:
        remote.get(
            f"{REMOTE_BASE}/wiki/api/v2/pages/1", json={"message": f"bad token {token}", "statusCode": 400}, status=400
        )
        remote.get(f"{REMOTE_BASE}/wiki/api/v2/pages/2", body=f"<html>token {token.split('.')[2]}</html>", status=400)
        remote.get(f"{REMOTE_BASE}/wiki/api/v2/pages/3", body="not json", status=200)
        remote.get(
            f"{REMOTE_BASE}/wiki/api/v2/pages/4", status=302, headers={"Location": f"https://evil.example/?t={token}"}
        )
        remote.get(
            f"{REMOTE_BASE}/wiki/api/v2/spaces", json={"results": [], "_links": {"next": "https://evil.example/x"}}
        )
        remote_client = connect(REMOTE_BASE, token).client
        for page_id in (1, 2, 3, 4):
            errors.append(expect(ConfluenceError, functools.partial(remote_client.get_page, page_id)))
        errors.append(expect(ConfluenceError, lambda: list(remote_client.spaces_by_keys(["ENG"]))))
    confluence.revoke(token)
    errors.append(expect(TokenRejected, lambda: connect(base, token).client.get_page(1)))
    return errors


def test_no_token_in_any_error_or_log_record(
    confluence: ConfluenceEmulator, token: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    errors = every_error_path(confluence, token)
    assert len(errors) == 17
    assert {type(e).__name__ for e in errors} >= {
        "Forbidden",
        "NotFound",
        "ConfluenceError",
        "RetryLater",
        "TokenRejected",
    }
    secrets = [token, *token.split(".")[1:]]  # the header segment is the same for every HS256 JWT
    for error in errors:
        chain = [error, error.__cause__, error.__context__]
        text = " ".join(f"{e!s} {e!r} {vars(e)!r}" for e in chain if e is not None)
        assert not any(secret in text for secret in secrets), f"token leaked through {type(error).__name__}: {error}"
    assert "[redacted]" in str(errors[11])
    assert "[redacted]" in str(errors[12])
    logged = "\n".join(f"{r.getMessage()} {vars(r)!r}" for r in caplog.records)
    assert "Confluence GET" in logged
    assert not any(secret in logged for secret in secrets)


def test_log_records_carry_status_trace_and_rate_limit_headers_but_no_query(
    confluence: ConfluenceEmulator, token: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="forge_remote.confluence.client")
    confluence.fail_next(
        1, 429, retry_after="1", ratelimit_reset="2026-03-01T12:00:00Z", reason="confluence-burst-based"
    )
    search_all(connect(confluence.api_base_url, token))
    exchanges = [r for r in caplog.records if r.name == "forge_remote.confluence.client" and hasattr(r, "confluence")]
    assert [r.confluence["status"] for r in exchanges] == [429, 200]
    limited = exchanges[0].confluence
    assert limited["method"] == "GET"
    assert limited["path"] == f"/ex/confluence/{confluence.cloud_id}/wiki/rest/api/content/search"
    assert limited["atl-traceid"]
    assert limited["atl-request-id"]
    assert limited["rate_limit"] == {
        "Retry-After": "1",
        "X-RateLimit-Limit": "65000",
        "X-RateLimit-Remaining": "0",
        "X-RateLimit-Reset": "2026-03-01T12:00:00Z",
        "RateLimit-Reason": "confluence-burst-based",
    }
    assert exchanges[0].levelno == logging.WARNING
    ours = [r.getMessage() for r in caplog.records if r.name == "forge_remote.confluence.client"]
    assert ours
    assert all("cql" not in message and "?" not in message for message in ours)


# -- the pieces


NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC).timestamp()


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("7", 7.0),
        (" 0 ", 0.0),
        ("1.5", 1.5),
        (format_datetime(datetime(2026, 3, 1, 12, 0, 30, tzinfo=UTC), usegmt=True), 30.0),
        ("Sun, 01 Mar 2026 12:00:45 GMT", 45.0),
        ("Sun, 01 Mar 2026 11:59:00 GMT", None),  # in the past
        ("-5", None),
        ("soon", None),
        ("inf", None),
        ("nan", None),
        ("", None),
        (None, None),
    ],
)
def test_retry_after_parsing(value: str | None, seconds: float | None) -> None:
    assert outbound.retry_after_s(value, NOW) == seconds


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("2026-03-01T12:00:30Z", 30.0),
        ("2026-03-01T12:00:30.250Z", 30.25),
        ("2026-03-01T12:00:30+00:00", 30.0),
        ("2026-03-01T13:00:30+01:00", 30.0),
        ("2026-03-01 12:00:30", 30.0),  # no zone: UTC
        ("2026-03-01t12:00:30z", 30.0),
        ("20260301T120030Z", 30.0),
        (str(int(NOW) + 30), 30.0),  # epoch seconds
        (str(int(NOW * 1000) + 30_000), 30.0),  # epoch milliseconds
        ("45", 45.0),  # a small number: seconds from now
        ("2026-03-01T11:00:00Z", None),  # in the past
        ("next tuesday", None),
        ("", None),
        (None, None),
    ],
)
def test_ratelimit_reset_parsing(value: str | None, seconds: float | None) -> None:
    result = outbound.ratelimit_reset_s(value, NOW)
    assert result == (pytest.approx(seconds) if seconds is not None else None)


def canned(
    status: int, body: bytes, content_type: str = "application/json", reason: str = "Reason"
) -> requests.Response:
    response = requests.Response()
    response.status_code, response._content, response.reason, response.encoding = status, body, reason, "utf-8"
    response.headers["Content-Type"] = content_type
    return response


@pytest.mark.parametrize(
    ("body", "content_type", "message"),
    [
        (
            b'{"statusCode": 400, "message": "Could not parse cql : x", "data": {}}',
            "application/json",
            "Could not parse cql : x",
        ),
        (
            b'{"errors": [{"status": 404, "code": "NOT_FOUND", "title": "Not Found", "detail": null}]}',
            "application/json",
            "Not Found",
        ),
        (
            b'{"errors": [{"status": 400, "code": "INVALID", "title": "Bad", "detail": "limit too big"}]}',
            "application/json",
            "Bad: limit too big",
        ),
        (b'{"errors": [{"status": 400, "code": "INVALID_REQUEST"}]}', "application/json", "INVALID_REQUEST"),
        (
            b'{"code": 401, "message": "Unauthorized; scope does not match"}',
            "application/json",
            "Unauthorized; scope does not match",
        ),
        (b"", "text/plain", "Reason"),
        (b"<html>\n  Bad   gateway\n</html>", "text/html", "<html> Bad gateway </html>"),
        (b"[1, 2]", "application/json", "Reason"),
        (b"x" * 1000, "text/plain", "x" * 300),
    ],
)
def test_error_messages_from_every_body_shape(body: bytes, content_type: str, message: str) -> None:
    assert outbound.error_message(canned(400, body, content_type)) == message
