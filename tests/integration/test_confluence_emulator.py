"""The Confluence emulator on its own: tokens, the CQL subset, cursors, faults, and every 200 response
checked against Atlassian's OpenAPI descriptions (``tests/reference``).
(The OpenAPI contract helpers, shared with ``test_confluence_client.py``: ``tests/confluence_contract.py``.)
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import requests
from openapi_core import OpenAPI
from openapi_core.validation.request.exceptions import MissingRequiredParameter
from openapi_core.validation.response.exceptions import InvalidData

from forge_remote import clock
from forge_remote.confluence.cql import and_, date_gte, field_eq, field_in, id_eq
from local.confluence_emulator import ConfluenceEmulator, CqlError, parse_cql
from tests.confluence_contract import check_exchange, load_openapi, make_token, spec_request


@pytest.fixture(scope="module")
def openapi() -> dict[str, OpenAPI]:
    return load_openapi()


@pytest.fixture
def confluence() -> Iterator[ConfluenceEmulator]:
    with ConfluenceEmulator(page_size_cap=10, cloud_id="cloud-1234") as emulator:
        emulator.add_space("ENG", "Engineering")
        emulator.add_space("OPS", "Operations")
        yield emulator


@pytest.fixture
def token() -> str:
    return make_token()


def get(confluence: ConfluenceEmulator, path: str, token: str | None, **params: str) -> requests.Response:
    headers = {"Accept": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return requests.get(confluence.api_base_url + path, params=params, headers=headers, timeout=10)


def search(confluence: ConfluenceEmulator, token: str, cql: object, **params: str) -> requests.Response:
    return get(confluence, "/wiki/rest/api/content/search", token, cql=str(cql), **params)


# -- lifecycle and tokens


def test_start_returns_the_api_base_url_and_stop_closes_the_port() -> None:
    emulator = ConfluenceEmulator(cloud_id="my-cloud")
    base = emulator.start()
    assert base.startswith("http://127.0.0.1:")
    assert base.endswith("/ex/confluence/my-cloud")
    assert emulator.start() == base  # idempotent: fixtures may call it again
    emulator.stop()
    with pytest.raises(requests.ConnectionError):
        requests.get(base + "/wiki/api/v2/spaces", timeout=2)
    emulator.stop()  # idempotent too


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer", "Basic dXNlcjpwYXNz", "Bearer not-a-jwt", "Bearer " + make_token(lifetime_s=-60)],
)
def test_missing_malformed_or_expired_tokens_get_the_gateway_401(
    confluence: ConfluenceEmulator, authorization: str | None
) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    response = requests.get(confluence.api_base_url + "/wiki/api/v2/spaces", headers=headers, timeout=10)
    assert response.status_code == 401
    assert response.json() == {"code": 401, "message": "Unauthorized"}
    assert response.headers["atl-traceid"]


def test_tokens_expire_on_the_stack_clock_and_can_be_revoked(confluence: ConfluenceEmulator, token: str) -> None:
    assert get(confluence, "/wiki/api/v2/spaces", token).status_code == 200
    clock.advance(3601)
    assert get(confluence, "/wiki/api/v2/spaces", token).status_code == 401
    clock.reset()
    assert get(confluence, "/wiki/api/v2/spaces", token).status_code == 200
    confluence.revoke(token)
    assert get(confluence, "/wiki/api/v2/spaces", token).status_code == 401
    assert get(confluence, "/wiki/api/v2/spaces", make_token()).status_code == 200


def test_a_custom_validator_decides(token: str) -> None:
    with ConfluenceEmulator(token_validator=lambda t: t == "opaque-ok") as emulator:
        assert get(emulator, "/wiki/api/v2/spaces", "opaque-ok").status_code == 200
        assert get(emulator, "/wiki/api/v2/spaces", token).status_code == 401


def test_expired_tokens_get_403_on_v1_and_404_on_v2_in_that_mode() -> None:
    with ConfluenceEmulator(expired_token_status="v1-403-v2-404") as emulator:
        emulator.add_space("ENG", "Engineering")
        expired = make_token(lifetime_s=-1)
        v1 = search(emulator, expired, field_eq("type", "page"))
        assert v1.status_code == 403
        assert v1.json()["statusCode"] == 403
        assert v1.json()["message"]
        v2 = get(emulator, "/wiki/api/v2/pages/1", expired)
        assert v2.status_code == 404
        assert v2.json() == {"errors": [{"status": 404, "code": "NOT_FOUND", "title": "Not Found", "detail": None}]}
        assert get(emulator, "/wiki/api/v2/spaces", expired).status_code == 404
        assert get(emulator, "/wiki/api/v2/spaces", None).status_code == 401  # no token at all is still 401
        assert get(emulator, "/wiki/api/v2/spaces", make_token()).status_code == 200


def test_unknown_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="expired_token_status"):
        ConfluenceEmulator(expired_token_status="403")


def test_requests_seen_records_method_path_query_and_bearer(confluence: ConfluenceEmulator, token: str) -> None:
    search(confluence, token, field_eq("type", "page"), limit="5")
    get(confluence, "/wiki/api/v2/spaces", None)
    assert confluence.requests_seen == [
        (
            "GET",
            "/ex/confluence/cloud-1234/wiki/rest/api/content/search",
            {"cql": 'type = "page"', "limit": "5"},
            token,
        ),
        ("GET", "/ex/confluence/cloud-1234/wiki/api/v2/spaces", {}, None),
    ]


# -- v1 content search


def test_search_pages_through_opaque_cursors_with_v1_next_links(
    confluence: ConfluenceEmulator, token: str, openapi: dict[str, OpenAPI]
) -> None:
    pages = [confluence.add_page("ENG", f"Page {i}") for i in range(23)]
    response = search(confluence, token, field_eq("type", "page"), limit="50", expand="version,space")
    seen: list[str] = []
    requests_made = 0
    while True:
        requests_made += 1
        assert response.status_code == 200
        check_exchange(openapi, response)
        body = response.json()
        assert body["size"] == len(body["results"]) <= 10  # the emulator's system limit
        assert body["_links"]["context"] == "/wiki"
        seen += [r["id"] for r in body["results"]]
        link = body["_links"].get("next")
        if link is None:
            break
        assert link.startswith("/rest/api/content/search?")  # v1: no /wiki prefix
        assert "cursor=" in link
        assert "expand=space%2Cversion" in link
        response = requests.get(
            confluence.api_base_url + "/wiki" + link, headers={"Authorization": f"Bearer {token}"}, timeout=10
        )
    assert seen == [str(p["id"]) for p in pages]
    assert requests_made == 3


def test_expand_is_honoured(confluence: ConfluenceEmulator, token: str, openapi: dict[str, OpenAPI]) -> None:
    page = confluence.add_page("ENG", "Plan", body="<p>plan</p>")
    bare = search(confluence, token, id_eq(page["id"])).json()["results"][0]
    assert "space" not in bare
    assert "version" not in bare
    assert {"space", "version", "body"} <= set(bare["_expandable"])
    response = search(confluence, token, id_eq(page["id"]), expand="space,version,body.storage")
    check_exchange(openapi, response)
    full = response.json()["results"][0]
    assert full["space"]["key"] == "ENG"
    assert full["version"]["number"] == 1
    assert full["body"]["storage"] == {
        "value": "<p>plan</p>",
        "representation": "storage",
        "embeddedContent": [],
        "_expandable": {},
    }


def test_the_cql_subset_filters_like_confluence(confluence: ConfluenceEmulator, token: str) -> None:
    now = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    old = confluence.add_page("ENG", "Old", last_modified=now - timedelta(days=3))
    recent = confluence.add_page("ENG", "Recent", last_modified=now - timedelta(hours=1))
    ops = confluence.add_page("OPS", "Ops runbook", last_modified=now - timedelta(hours=1))

    def ids(cql: object) -> set[int]:
        response = search(confluence, token, cql)
        assert response.status_code == 200, response.text
        return {int(r["id"]) for r in response.json()["results"]}

    everything = {old["id"], recent["id"], ops["id"]}
    assert ids(field_eq("type", "page")) == everything
    assert ids(field_eq("type", "blogpost")) == set()
    assert ids(field_in("space", ["ENG"])) == {old["id"], recent["id"]}
    assert ids(field_eq("space", "OPS")) == {ops["id"]}
    motivating = and_(field_in("space", ["ENG", "OPS"]), field_eq("type", "page"), id_eq(recent["id"]))
    assert ids(motivating) == {recent["id"]}
    assert ids(date_gte("lastmodified", now - timedelta(days=1))) == {recent["id"], ops["id"]}
    assert ids("type = page and space in (ENG, OPS) and not title ~ runbook") == {old["id"], recent["id"]}
    assert ids('space = "ENG" or id = ' + str(ops["id"])) == everything


def test_an_injection_attempt_stays_a_literal_end_to_end(confluence: ConfluenceEmulator, token: str) -> None:
    confluence.add_page("ENG", "Secret plans")
    response = search(confluence, token, and_(field_eq("space", 'x" OR type = page'), field_eq("type", "page")))
    assert response.status_code == 200
    assert response.json()["results"] == []
    # The same text pasted into a string really does break out: the emulator would have matched.
    naive = search(confluence, token, 'space = "x" OR type = page')
    assert len(naive.json()["results"]) == 1


@pytest.mark.parametrize(
    "cql",
    ["nosuchfield = 123", "favourite = draft", "type = page and", 'title = "unterminated', "type page", "(type = page"],
)
def test_unknown_or_broken_cql_is_a_v1_400(confluence: ConfluenceEmulator, token: str, cql: str) -> None:
    response = search(confluence, token, cql)
    assert response.status_code == 400
    body = response.json()
    assert body["statusCode"] == 400
    assert body["message"].startswith("Could not parse cql")
    assert isinstance(body["data"], dict)


def test_order_by_is_understood(confluence: ConfluenceEmulator, token: str) -> None:
    first = confluence.add_page("ENG", "b", last_modified=datetime(2026, 1, 1, tzinfo=UTC))
    second = confluence.add_page("ENG", "a", last_modified=datetime(2026, 1, 2, tzinfo=UTC))
    newest_first = search(confluence, token, field_eq("space", "ENG").order_by("lastmodified", desc=True))
    assert [int(r["id"]) for r in newest_first.json()["results"]] == [second["id"], first["id"]]
    assert parse_cql('space = "A" order by title').order == ("title", False)
    with pytest.raises(CqlError):
        parse_cql("type = page order lastmodified")


def test_a_forged_cursor_is_refused(confluence: ConfluenceEmulator, token: str) -> None:
    assert search(confluence, token, field_eq("type", "page"), cursor="bm90LWEtY3Vyc29y").status_code == 400
    forged = base64.urlsafe_b64encode(json.dumps({"offset": -5}).encode()).decode()
    assert search(confluence, token, field_eq("type", "page"), cursor=forged).status_code == 400


# -- v2


def test_v2_page_with_and_without_body(confluence: ConfluenceEmulator, token: str, openapi: dict[str, OpenAPI]) -> None:
    page = confluence.add_page("ENG", "Release notes", body="<p>v1</p>")
    response = get(confluence, f"/wiki/api/v2/pages/{page['id']}", token)
    check_exchange(openapi, response)
    body = response.json()
    assert body["id"] == str(page["id"])
    assert body["spaceId"] == str(confluence.spaces["ENG"]["id"])
    assert body["version"]["number"] == 1
    assert body["body"] == {}
    confluence.update_page(page["id"], body="<p>v2</p>")
    response = get(confluence, f"/wiki/api/v2/pages/{page['id']}", token, **{"body-format": "storage"})
    check_exchange(openapi, response)
    assert response.json()["version"]["number"] == 2
    assert response.json()["body"] == {"storage": {"representation": "storage", "value": "<p>v2</p>"}}


def test_v2_missing_page_is_the_v2_error_shape(confluence: ConfluenceEmulator, token: str) -> None:
    response = get(confluence, "/wiki/api/v2/pages/4242", token)
    assert response.status_code == 404
    assert response.json() == {"errors": [{"status": 404, "code": "NOT_FOUND", "title": "Not Found", "detail": None}]}
    assert get(confluence, "/wiki/api/v2/pages/abc", token).status_code == 400


def test_v2_spaces_by_keys_paginate_with_wiki_links_and_a_link_header(
    confluence: ConfluenceEmulator, token: str, openapi: dict[str, OpenAPI]
) -> None:
    keys = [f"S{i:02d}" for i in range(23)]
    for key in keys:
        confluence.add_space(key, f"Space {key}")
    response = get(confluence, "/wiki/api/v2/spaces", token, keys=",".join(keys), limit="250")
    found: list[str] = []
    while True:
        assert response.status_code == 200
        check_exchange(openapi, response)
        body = response.json()
        found += [s["key"] for s in body["results"]]
        link = body["_links"].get("next")
        if link is None:
            assert "Link" not in response.headers
            break
        assert link.startswith("/wiki/api/v2/spaces?")  # v2: with /wiki
        assert response.headers["Link"].startswith(f'<{link}>; rel="next"')
        origin = confluence.api_base_url.rsplit("/wiki", 1)[0]
        response = requests.get(origin + link, headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert found == keys


def test_v2_spaces_refuses_a_limit_out_of_range(confluence: ConfluenceEmulator, token: str) -> None:
    assert get(confluence, "/wiki/api/v2/spaces", token, limit="251").status_code == 400
    assert get(confluence, "/wiki/api/v2/spaces", token, limit="0").status_code == 400


# -- faults and the rest


def test_fail_next_queues_failures_with_rate_limit_headers(confluence: ConfluenceEmulator, token: str) -> None:
    confluence.fail_next(2, 429, retry_after="7", ratelimit_reset="2026-03-01T12:00:00Z")
    confluence.fail_next(1, 503, retry_after="3")
    confluence.fail_next(1, 500)
    answers = [get(confluence, "/wiki/api/v2/spaces", token) for _ in range(5)]
    assert [a.status_code for a in answers] == [429, 429, 503, 500, 200]
    limited = answers[0].headers
    assert limited["Retry-After"] == "7"
    assert limited["X-RateLimit-Reset"] == "2026-03-01T12:00:00Z"
    assert limited["X-RateLimit-Remaining"] == "0"
    assert int(limited["X-RateLimit-Limit"]) > 0
    assert "RateLimit-Reason" not in limited  # a scripted 429 names no pool unless told to
    assert answers[2].headers["Retry-After"] == "3"
    assert "Retry-After" not in answers[3].headers


def test_a_429_without_hints_has_neither_header(confluence: ConfluenceEmulator, token: str) -> None:
    confluence.fail_next(1, 429)
    headers = get(confluence, "/wiki/api/v2/spaces", token).headers
    assert "Retry-After" not in headers
    assert "X-RateLimit-Reset" not in headers
    assert headers["X-RateLimit-Remaining"] == "0"


def test_every_response_carries_a_trace_id(confluence: ConfluenceEmulator, token: str) -> None:
    confluence.fail_next(1, 429)
    answers = [
        get(confluence, "/wiki/api/v2/spaces", token),  # 429
        get(confluence, "/wiki/api/v2/spaces", token),  # 200
        get(confluence, "/wiki/api/v2/spaces", None),  # 401
        get(confluence, "/wiki/api/v2/pages/1", token),  # 404
        search(confluence, token, "nosuchfield = 1"),  # 400
    ]
    assert [a.status_code for a in answers] == [429, 200, 401, 404, 400]
    trace_ids = [a.headers["atl-traceid"] for a in answers]
    assert all(trace_ids)
    assert len(set(trace_ids)) == len(trace_ids)


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/wiki/rest/api/space"), ("GET", "/wiki/api/v2/blogposts"), ("POST", "/wiki/rest/api/content/search")],
)
def test_anything_else_is_404(confluence: ConfluenceEmulator, token: str, method: str, path: str) -> None:
    response = requests.request(
        method, confluence.api_base_url + path, headers={"Authorization": f"Bearer {token}"}, timeout=10
    )
    assert response.status_code == 404


def test_another_cloud_id_is_404(confluence: ConfluenceEmulator, token: str) -> None:
    other = confluence.api_base_url.replace("cloud-1234", "cloud-9999")
    response = requests.get(other + "/wiki/api/v2/spaces", headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert response.status_code == 404


def test_delay_makes_a_short_read_timeout_fire(token: str) -> None:
    with ConfluenceEmulator(delay_s=0.5) as emulator, pytest.raises(requests.Timeout):
        requests.get(
            emulator.api_base_url + "/wiki/api/v2/spaces",
            headers={"Authorization": f"Bearer {token}"},
            timeout=(2, 0.05),
        )


def test_the_contract_check_can_fail(confluence: ConfluenceEmulator, token: str, openapi: dict[str, OpenAPI]) -> None:
    """A response missing required fields (ContentArray.size, Content.type) and a request without cql are caught."""
    confluence.add_page("ENG", "Plan")
    response = search(confluence, token, field_eq("type", "page"))
    check_exchange(openapi, response)
    broken = response.json()
    del broken["size"]
    del broken["results"][0]["type"]
    response._content = json.dumps(broken).encode()
    with pytest.raises(InvalidData, match="'size' is a required property"):
        check_exchange(openapi, response)
    version, request = spec_request("GET", confluence.api_base_url + "/wiki/rest/api/content/search")
    with pytest.raises(MissingRequiredParameter, match="cql"):
        openapi[version].validate_request(request)


def test_space_and_page_records(confluence: ConfluenceEmulator) -> None:
    with pytest.raises(ValueError, match="exists"):
        confluence.add_space("ENG", "again")
    with pytest.raises(KeyError):
        confluence.add_page("NOPE", "x")
    page = confluence.add_page("ENG", "T", last_modified=datetime(2026, 1, 1, 8, 0))  # naive is UTC
    assert page["lastModified"] == datetime(2026, 1, 1, 8, 0, tzinfo=UTC)
    updated = confluence.update_page(page["id"], title="T2")
    assert (updated["version"], updated["title"], updated["body"]) == (2, "T2", page["body"])
    assert page["version"] == 1  # records handed out are copies
