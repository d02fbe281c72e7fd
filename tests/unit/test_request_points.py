"""Rate-limit points (``forge_remote/confluence/points.py``): Atlassian's documented examples, identity
and core paths, and estimates that are upper bounds of what the answer is charged (hypothesis)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from forge_remote.confluence.points import (
    CORE,
    DEFAULT_PAGE_SIZE,
    IDENTITY,
    MAX_LIMIT,
    object_points,
    request_estimate,
    response_points,
)

WRITES = ["POST", "PUT", "PATCH", "DELETE"]
BASE = "https://api.atlassian.com/ex/confluence/8a1b6d3e-0000-4000-8000-000000000001"


def results(n: int) -> dict[str, object]:
    return {"results": [{"id": str(i)} for i in range(n)], "_links": {}}


# -- Atlassian's examples ----------------------------------------------------------------------------------
def test_a_search_returning_25_pages_costs_26() -> None:
    path = "/rest/api/content/search"
    assert response_points("GET", path, 200, results(25)) == 26
    assert request_estimate("GET", path, {"cql": 'type = "page"'}) == 26  # the default page of 25


def test_a_user_lookup_costs_3() -> None:
    user = {"accountId": "5b10a2844c20165700ede21g", "displayName": "Ada"}
    assert response_points("GET", "/rest/api/user", 200, user) == 3
    assert request_estimate("GET", "/rest/api/user", {"accountId": "5b10a2844c20165700ede21g"}) == 3
    assert response_points("GET", "/rest/api/user/current", 200, user) == 3
    assert request_estimate("GET", "/rest/api/user/current", None) == 3


@pytest.mark.parametrize("method", [*WRITES, "post", "Delete"])
def test_a_write_costs_1(method: str) -> None:
    assert request_estimate(method, "/api/v2/pages", {"limit": "250"}) == 1
    assert response_points(method, "/api/v2/pages", 200, {"id": "1", "title": "x"}) == 1
    assert response_points(method, "/rest/api/user", 201, results(50)) == 1
    assert response_points(method, "/api/v2/pages/1", 400, None) == 1


@pytest.mark.parametrize("method", ["GET", *WRITES])
def test_a_refused_request_costs_nothing(method: str) -> None:
    assert response_points(method, "/rest/api/content/search", 429, {"message": "Rate limit exceeded"}) == 0


@pytest.mark.parametrize("status", [400, 401, 403, 404, 500, 503, 302])
def test_any_other_failure_costs_1(status: int) -> None:
    assert response_points("GET", "/rest/api/content/search", status, results(25)) == 1
    assert response_points("GET", "/rest/api/user", status, {"accountId": "a"}) == 1


# -- what an answer is charged ---------------------------------------------------------------------------
def test_a_listing_costs_its_length_times_its_objects_points() -> None:
    assert response_points("GET", "/api/v2/pages", 200, results(0)) == 1
    assert response_points("GET", "/api/v2/pages", 200, results(250)) == 251
    assert response_points("GET", "/rest/api/user/bulk", 200, results(10)) == 21
    assert response_points("GET", "/rest/api/group/member", 200, results(7)) == 15
    assert response_points("GET", "/rest/api/space/DEV/permission", 200, [{}, {}, {}]) == 7  # a bare JSON list


def test_a_single_object_costs_its_points() -> None:
    assert response_points("GET", "/api/v2/pages/123", 200, {"id": "123", "title": "Home"}) == 2
    assert response_points("GET", "/rest/api/space/DEV", 200, {"key": "DEV", "results_count": 3}) == 2
    assert response_points("GET", "/rest/api/group/by-id", 200, {"id": "g", "results": "not a list"}) == 3
    assert response_points("GET", "/api/v2/pages/123", 204, None) == 1  # no body: no object


@pytest.mark.parametrize("status", [200, 201, 204, 299])
def test_every_2xx_is_charged_for_its_objects(status: int) -> None:
    assert response_points("GET", "/api/v2/spaces", status, results(3)) == 4


# -- classification ------------------------------------------------------------------------------------------
IDENTITY_PATHS = [
    "/rest/api/user",
    "/rest/api/user/current",
    "/rest/api/user/bulk",
    "/rest/api/user/memberof",
    "/rest/api/user/email",
    "/rest/api/search/user",
    "/rest/api/group",
    "/rest/api/group/member",
    "/rest/api/group/by-id",
    "/rest/api/group/0d3b7a2e/membersByGroupId",
    "/rest/api/groups",
    "/api/v2/users-bulk",
    "/api/v2/users",
    "/api/v2/user/access/check-access-by-email",
    "/rest/api/space/DEV/permission",
    "/rest/api/space/DEV/permission/custom-content",
    "/api/v2/spaces/123/permissions",
    "/api/v2/space-permissions",
    "/rest/api/content/123/restriction",
    "/rest/api/content/123/restriction/byOperation/read/user",
    "/api/v2/pages/123/restrictions",
    "/api/v2/pages/123/likes/users",
    "/api/v2/blogposts/9/likes/users",
]
CORE_PATHS = [
    "/rest/api/content",
    "/rest/api/content/search",
    "/rest/api/content/123",
    "/rest/api/content/123/child/page",
    "/rest/api/content/123/child/attachment",
    "/rest/api/content/123/child/comment",
    "/rest/api/content/123/label",
    "/rest/api/search",
    "/rest/api/space",
    "/rest/api/space/DEV",
    "/rest/api/space/DEV/content",
    "/api/v2/pages",
    "/api/v2/pages/123",
    "/api/v2/pages/123/children",
    "/api/v2/pages/123/labels",
    "/api/v2/pages/123/footer-comments",
    "/api/v2/spaces",
    "/api/v2/spaces/123",
    "/api/v2/blogposts",
    "/api/v2/attachments/att123",
    "/api/v2/labels/1/pages",
    "/rest/api/settings/lookandfeel",
    "/rest/api/usergroups-report",  # "user" only as part of another word is not /user
    "/rest/api/space/USER",  # a space key, not a segment name
    "/api/v2/pages/123/likes/count",
]


@pytest.mark.parametrize("path", IDENTITY_PATHS)
def test_identity_paths(path: str) -> None:
    assert object_points(path) == IDENTITY


@pytest.mark.parametrize("path", CORE_PATHS)
def test_core_paths(path: str) -> None:
    assert object_points(path) == CORE


def spellings(path: str) -> list[str]:
    """``path`` relative to /wiki, under it, as a full URL, as the gateway's path, and with a query."""
    return [path, f"/wiki{path}", f"{BASE}/wiki{path}?limit=5", f"/ex/confluence/abc/wiki{path}", f"{path}?x=/user"]


@pytest.mark.parametrize("path", ["/rest/api/user/current", "/api/v2/users-bulk", "/rest/api/space/DEV/permission"])
def test_identity_in_every_spelling(path: str) -> None:
    assert [object_points(p) for p in spellings(path)] == [IDENTITY] * 5


@pytest.mark.parametrize("path", ["/rest/api/content/search", "/api/v2/pages/123"])
def test_core_in_every_spelling(path: str) -> None:
    assert [object_points(p) for p in spellings(path)] == [CORE] * 5


def test_only_the_part_from_wiki_is_read() -> None:
    # a cloud id or host that looks like an identity path does not make the call one
    assert object_points("https://api.atlassian.com/ex/confluence/rest/api/user/wiki/api/v2/pages") == CORE
    assert object_points("/ex/confluence/permission/wiki/rest/api/content/1") == CORE
    assert object_points("/wikis/rest/api/user") == IDENTITY  # "/wikis" is not "/wiki": from "/rest" on


# -- estimates -------------------------------------------------------------------------------------------------
SINGLE_PATHS = [
    ("/api/v2/pages/123", CORE),
    ("/api/v2/blogposts/9", CORE),
    ("/api/v2/spaces/77", CORE),
    ("/api/v2/pages/123/versions/4", CORE),
    ("/rest/api/content/123", CORE),
    ("/rest/api/space/DEV", CORE),
    ("/rest/api/user", IDENTITY),
    ("/rest/api/user/current", IDENTITY),
    ("/rest/api/group/by-name", IDENTITY),
]
LISTING_PATHS = [
    ("/rest/api/content/search", CORE),
    ("/rest/api/content/scan", CORE),
    ("/rest/api/search", CORE),
    ("/api/v2/pages", CORE),
    ("/api/v2/spaces", CORE),
    ("/api/v2/blogposts", CORE),
    ("/api/v2/pages/123/children", CORE),
    ("/api/v2/pages/123/labels", CORE),
    ("/api/v2/pages/123/footer-comments", CORE),
    ("/api/v2/pages/123/versions", CORE),
    ("/rest/api/content/123/child/comment", CORE),
    ("/rest/api/content/123/label", CORE),
    ("/rest/api/user/bulk", IDENTITY),
    ("/rest/api/user/memberof", IDENTITY),
    ("/rest/api/group/member", IDENTITY),
    ("/rest/api/group/0d3b7a2e/membersByGroupId", IDENTITY),
    ("/rest/api/search/user", IDENTITY),
    ("/api/v2/spaces/77/permissions", IDENTITY),
    ("/rest/api/something/new", CORE),  # unknown: a listing, the upper bound
    ("/api/v2/pages/123/somethings/4", CORE),  # not a known single child
]


@pytest.mark.parametrize(("path", "points"), SINGLE_PATHS)
def test_a_single_object_is_estimated_as_one(path: str, points: int) -> None:
    assert request_estimate("GET", path, {"limit": "200"}) == 1 + points  # a limit changes nothing
    assert request_estimate("GET", f"{BASE}/wiki{path}", None) == 1 + points


@pytest.mark.parametrize(("path", "points"), LISTING_PATHS)
def test_a_listing_is_estimated_at_its_limit(path: str, points: int) -> None:
    assert request_estimate("GET", path, None) == 1 + DEFAULT_PAGE_SIZE * points
    assert request_estimate("GET", path, {"limit": "10"}) == 1 + 10 * points
    assert request_estimate("get", f"{BASE}/wiki{path}", {"limit": "250"}) == 1 + 250 * points


@pytest.mark.parametrize(
    "limit", ["0", "-1", "abc", "", " ", " 5", "5 ", "1.5", "+5", "1e3", "\uff15\uff10", "0x10", "000"]
)
def test_a_limit_that_is_not_a_positive_integer_is_the_default(limit: str) -> None:
    assert request_estimate("GET", "/api/v2/pages", {"limit": limit}) == 1 + DEFAULT_PAGE_SIZE


@pytest.mark.parametrize("limit", ["1001", "100000", "9" * 50, "9" * 5000])
def test_an_absurd_limit_is_capped(limit: str) -> None:
    assert request_estimate("GET", "/api/v2/pages", {"limit": limit}) == 1 + MAX_LIMIT
    assert request_estimate("GET", "/rest/api/user/bulk", {"limit": limit}) == 1 + MAX_LIMIT * IDENTITY


def test_the_limit_of_a_next_link_is_read_from_its_query() -> None:
    link = f"{BASE}/wiki/rest/api/content/search?cql=type%3Dpage&limit=50&cursor=abc"
    assert request_estimate("GET", link, None) == 51
    assert request_estimate("GET", "/rest/api/content/search?limit=7", None) == 8
    # both: the larger, since which one the server reads is not known
    assert request_estimate("GET", link, {"limit": "10"}) == 51
    assert request_estimate("GET", "/api/v2/pages?limit=10", {"limit": "100"}) == 101
    assert request_estimate("GET", "/api/v2/pages?limit=x&limit=30", None) == 31


def test_an_estimate_is_never_below_one_request() -> None:
    assert request_estimate("GET", "", None) == 1 + DEFAULT_PAGE_SIZE
    assert request_estimate("HEAD", "/api/v2/pages", None) == 1
    assert request_estimate("GET", "/api/v2/pages", {"limit": "1"}) == 2


# -- estimates are upper bounds (hypothesis) -------------------------------------------------------------------
def requested(limit: str | None) -> int:
    """The page size the server is asked for, as the test reads it: a positive integer, else 25."""
    if limit is not None and limit.isascii() and limit.isdigit() and int(limit) > 0:
        return int(limit)
    return DEFAULT_PAGE_SIZE


prefixes = st.sampled_from(["", "/wiki", f"{BASE}/wiki", "/ex/confluence/abc/wiki"])
limits = st.one_of(
    st.none(),
    st.integers(min_value=-5, max_value=5000).map(str),
    st.text(max_size=6),
)
statuses = st.sampled_from([200, 201, 204, 400, 401, 403, 404, 429, 500, 503])


@settings(max_examples=300, deadline=None)
@given(
    path=st.sampled_from([p for p, _ in LISTING_PATHS]),
    prefix=prefixes,
    limit=limits,
    data=st.data(),
    status=statuses,
)
def test_a_listing_estimate_bounds_any_answer_up_to_the_limit(
    path: str, prefix: str, limit: str | None, data: st.DataObject, status: int
) -> None:
    full = prefix + path
    params = None if limit is None else {"limit": limit}
    n = data.draw(st.integers(min_value=0, max_value=min(requested(limit), MAX_LIMIT)), label="results")
    estimate = request_estimate("GET", full, params)
    charged = response_points("GET", full, status, results(n))
    assert 0 <= charged <= estimate
    if status == 200 and n == min(requested(limit), MAX_LIMIT):
        assert charged == estimate  # the bound is tight: a full page costs what was reserved


@settings(max_examples=200, deadline=None)
@given(
    path=st.sampled_from([p for p, _ in SINGLE_PATHS]),
    prefix=prefixes,
    limit=limits,
    document=st.one_of(st.none(), st.dictionaries(st.sampled_from(["id", "title", "key"]), st.text(max_size=5))),
    status=statuses,
)
def test_a_single_object_estimate_bounds_its_answer(
    path: str, prefix: str, limit: str | None, document: object, status: int
) -> None:
    full = prefix + path
    params = None if limit is None else {"limit": limit}
    assert 0 <= response_points("GET", full, status, document) <= request_estimate("GET", full, params)


@settings(max_examples=200, deadline=None)
@given(
    method=st.sampled_from(WRITES),
    path=st.sampled_from([p for p, _ in LISTING_PATHS + SINGLE_PATHS]),
    n=st.integers(min_value=0, max_value=2000),
    status=statuses,
)
def test_a_write_estimate_bounds_its_answer(method: str, path: str, n: int, status: int) -> None:
    assert response_points(method, path, status, results(n)) <= request_estimate(method, path, None) == 1
