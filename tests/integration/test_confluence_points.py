"""Atlassian's points-based rate limits in the Confluence emulator (``local/rate_limits.py``), checked
against the examples of Atlassian's 'Rate limiting' page for Confluence Cloud: what a request costs,
the quota headers, the 429 once a pool is spent, the hourly reset, the shared Global Pool and the
Per-Tenant Pool, burst limits, and the ``Beta-`` headers sent before enforcement.

The stack's clock stands still at 2026-12-03T17:29:13Z in these tests (``placed_clock``), so the
figures the page gives (``Retry-After: 1847``, ``X-RateLimit-Reset: 2026-12-03T18:00:00Z``) are exact
and nothing depends on the wall clock. Quotas are small (100 points) to keep the tests fast.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from types import SimpleNamespace

import pytest
import requests

from forge_remote import clock
from local.confluence_emulator import RATE_LIMITED, ConfluenceEmulator
from local.forge_emulator import ForgeEmulator
from local.rate_limits import PointsPools, Refusal, response_points, tenant_quota
from tests.confluence_contract import make_token

T0 = datetime(2026, 12, 3, 17, 29, 13, tzinfo=UTC).timestamp()  # 1847 s before the top of the hour
RESET = "2026-12-03T18:00:00Z"
SEARCH = ("GET", "/wiki/rest/api/content/search")
GLOBAL = "confluence-quota-global-based"
TENANT = "confluence-quota-tenant-based"
BURST = "confluence-burst-based"

Sites = Callable[..., ConfluenceEmulator]


@pytest.fixture
def placed_clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The stack's clock at ``T0``, standing still until a test moves it with ``clock.advance``.

    ``forge_remote.clock`` is wall time plus an offset, and would go on ticking: the wall time it reads
    is frozen at a whole second (so the offset to ``T0`` is exact in floating point and ``Retry-After``
    cannot slip by a second on a slow machine), then the offset placed with ``advance``. The suite's
    ``_wall_clock`` fixture and ``monkeypatch`` restore both afterwards.
    """
    wall = float(int(clock.time.time()))
    monkeypatch.setattr(clock, "time", SimpleNamespace(time=lambda: wall))
    clock.advance(T0 - clock.now())
    assert clock.now() == T0
    yield
    clock.reset()


@pytest.fixture
def token(placed_clock: None) -> str:
    """An app token unexpired on the placed clock (an hour's lifetime from ``T0``)."""
    return make_token()


@pytest.fixture
def sites(placed_clock: None) -> Iterator[Sites]:
    """Start Confluence sites: ``sites(pools, pages=n, cloud_id=...)``, each with a space ENG of n pages."""
    started: list[ConfluenceEmulator] = []

    def start(pools: PointsPools | None = None, *, pages: int = 0, cloud_id: str | None = None) -> ConfluenceEmulator:
        emulator = ConfluenceEmulator(pools=pools, cloud_id=cloud_id, page_size_cap=25)
        started.append(emulator)
        emulator.start()
        emulator.add_space("ENG", "Engineering")
        for n in range(pages):
            emulator.add_page("ENG", f"Page {n}")
        return emulator

    yield start
    for emulator in started:
        emulator.stop()


def get(confluence: ConfluenceEmulator, path: str, token: str | None, **params: str) -> requests.Response:
    headers = {"Accept": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return requests.get(confluence.api_base_url + path, params=params, headers=headers, timeout=10)


def search(
    confluence: ConfluenceEmulator, token: str, cql: str = "type = page", limit: int = 25, **params: str
) -> requests.Response:
    return get(confluence, "/wiki/rest/api/content/search", token, cql=cql, limit=str(limit), **params)


def current_user(confluence: ConfluenceEmulator, token: str) -> requests.Response:
    return get(confluence, "/wiki/rest/api/user/current", token)


def report(confluence: ConfluenceEmulator, token: str, account_id: str = "557058:reported") -> requests.Response:
    root = confluence.api_base_url.split("/ex/")[0]
    body = {"accounts": [{"accountId": account_id, "updatedAt": "2026-11-01T00:00:00Z"}]}
    return requests.post(
        root + "/app/report-accounts/", json=body, headers={"Authorization": f"Bearer {token}"}, timeout=10
    )


def assert_refused(response: requests.Response, reason: str, retry_after: str) -> None:
    assert response.status_code == 429, response.text
    assert response.json() == RATE_LIMITED == {"code": 429, "message": "Rate limit exceeded"}
    assert response.headers["RateLimit-Reason"] == reason
    assert response.headers["Retry-After"] == retry_after


# -- what a request costs -------------------------------------------------------------------------------
def test_a_search_returning_25_pages_costs_26(sites: Sites, token: str) -> None:
    confluence = sites(pages=30)
    first = search(confluence, token, expand="space,version")
    assert first.status_code == 200
    assert len(first.json()["results"]) == 25
    assert "space" in first.json()["results"][0]  # expanded, and still not charged apart
    assert confluence.points_seen == [(*SEARCH, 26)]
    assert confluence.pools.spent() == 26
    assert first.headers["X-RateLimit-Limit"] == "65000"
    assert first.headers["X-RateLimit-Remaining"] == str(65_000 - 26)
    # The next cursor page holds the other 5: 6 points.
    next_url = confluence.api_base_url + "/wiki" + first.json()["_links"]["next"]  # v1: no /wiki in it
    second = requests.get(next_url, headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert len(second.json()["results"]) == 5
    assert confluence.points_seen[-1] == (*SEARCH, 6)
    assert second.headers["X-RateLimit-Remaining"] == str(65_000 - 32)


def test_a_user_lookup_costs_3_a_page_2_and_an_error_1(sites: Sites, token: str) -> None:
    confluence = sites(pages=1)
    confluence.add_space("OPS", "Operations")
    page_id = next(iter(confluence.pages))
    assert current_user(confluence, token).status_code == 200
    assert get(confluence, "/wiki/rest/api/user/current", token, expand="operations").status_code == 200
    assert get(confluence, f"/wiki/api/v2/pages/{page_id}", token, **{"body-format": "storage"}).status_code == 200
    assert get(confluence, "/wiki/api/v2/spaces", token).status_code == 200  # two spaces
    assert get(confluence, "/wiki/api/v2/pages/999999", token).status_code == 404
    assert get(confluence, "/wiki/rest/api/content/search", token, cql="nonsense ~~").status_code == 400
    assert search(confluence, token).json()["size"] == 1
    assert search(confluence, token, cql='title = "nothing"').json()["size"] == 0
    assert confluence.points_seen == [
        ("GET", "/wiki/rest/api/user/current", 3),
        ("GET", "/wiki/rest/api/user/current", 3),
        ("GET", "/wiki/api/v2/pages/{id}", 2),
        ("GET", "/wiki/api/v2/spaces", 3),
        ("GET", "/wiki/api/v2/pages/{id}", 1),
        (*SEARCH, 1),  # refused CQL: an error
        (*SEARCH, 2),
        (*SEARCH, 1),  # nothing found
    ]
    assert confluence.pools.charged == confluence.pools.spent() == 16


def test_the_report_post_costs_1_whatever_it_answers(sites: Sites, token: str) -> None:
    confluence = sites()
    nothing_to_do = report(confluence, token)
    confluence.close_account("557058:closed")
    closed = report(confluence, token, "557058:closed")
    assert (nothing_to_do.status_code, closed.status_code) == (204, 200)
    assert confluence.points_seen == [("POST", "/app/report-accounts/", 1)] * 2
    assert closed.headers["X-RateLimit-Remaining"] == str(65_000 - 2)


@pytest.mark.parametrize(
    ("method", "template", "body", "status", "points"),
    [
        ("GET", "/wiki/rest/api/content/search", {"results": [{"space": {}, "version": {"by": {}}}] * 25}, 200, 26),
        ("GET", "/wiki/rest/api/content/search", {"results": []}, 200, 1),
        ("GET", "/wiki/api/v2/spaces", {"results": [{}, {}, {}]}, 200, 4),
        ("GET", "/wiki/api/v2/pages/{id}", {"id": "1", "version": {"authorId": "x"}}, 200, 2),
        ("GET", "/wiki/rest/api/user/current", {"accountId": "x"}, 200, 3),
        ("GET", "/wiki/rest/api/search/user", {"results": [{}] * 4}, 200, 9),  # identity objects: 2 each
        ("GET", "/wiki/api/v2/spaces/{id}/permissions", {"results": [{}] * 2}, 200, 5),
        ("GET", "/wiki/rest/api/content/{id}/child/attachment", [{}, {}], 200, 3),
        ("GET", "/wiki/api/v2/pages/{id}", None, 204, 1),
        ("GET", "/wiki/api/v2/pages/{id}", {"errors": []}, 404, 1),
        ("GET", "/wiki/rest/api/content/search", {"results": [{}] * 3}, 500, 1),
        ("GET", "/wiki/rest/api/content/search", {"code": 429}, 429, 0),
        ("POST", "/app/report-accounts/", {"accounts": [{}] * 5}, 200, 1),
        ("PUT", "/wiki/api/v2/pages/{id}", {"id": "1"}, 200, 1),
        ("DELETE", "/wiki/api/v2/pages/{id}", None, 204, 1),
    ],
)
def test_response_points_follow_the_charging_rule(
    method: str, template: str, body: object, status: int, points: int
) -> None:
    assert response_points(method, template, body, status=status) == points


# -- the quota headers ----------------------------------------------------------------------------------
def test_headers_below_and_above_80_percent_used(sites: Sites, token: str) -> None:
    confluence = sites(PointsPools(global_quota=100), pages=30)
    page_id = next(iter(confluence.pages))
    low = search(confluence, token)  # 26 used
    assert low.headers["X-RateLimit-Limit"] == "100"
    assert low.headers["X-RateLimit-Remaining"] == "74"
    assert low.headers["X-RateLimit-Reset"] == RESET
    assert low.headers["RateLimit-Policy"] == '"global-app-quota";q=100;w=3600'
    assert "RateLimit" not in low.headers
    assert "X-RateLimit-NearLimit" not in low.headers
    search(confluence, token)
    search(confluence, token)
    at_80 = get(confluence, f"/wiki/api/v2/pages/{page_id}", token)  # 80 used: exactly 20% left
    assert at_80.headers["X-RateLimit-Remaining"] == "20"
    assert "RateLimit" not in at_80.headers
    assert "X-RateLimit-NearLimit" not in at_80.headers
    high = get(confluence, f"/wiki/api/v2/pages/{page_id}", token)  # 82 used
    assert high.headers["X-RateLimit-Remaining"] == "18"
    assert high.headers["X-RateLimit-NearLimit"] == "true"
    assert high.headers["RateLimit"] == '"global-app-quota";r=18;t=1847'
    assert high.headers["RateLimit-Policy"] == '"global-app-quota";q=100;w=3600'
    assert "Retry-After" not in high.headers  # on 429s only
    assert "RateLimit-Reason" not in high.headers


def test_near_limit_appears_only_under_20_percent_left_of_the_documented_quota() -> None:
    pools = PointsPools()
    assert pools.charge("site", 52_000, now=T0) == {
        "X-RateLimit-Limit": "65000",
        "X-RateLimit-Remaining": "13000",  # 20% left: not under it
        "X-RateLimit-Reset": RESET,
        "RateLimit-Policy": '"global-app-quota";q=65000;w=3600',
    }
    near = pools.charge("site", 1, now=T0)
    assert near["X-RateLimit-NearLimit"] == "true"
    assert near["X-RateLimit-Remaining"] == "12999"
    assert near["RateLimit"] == '"global-app-quota";r=12999;t=1847'
    assert pools.charge("site", 20_000, now=T0 + 1)["RateLimit"] == '"global-app-quota";r=0;t=1846'


# -- a spent quota, and the hourly reset ------------------------------------------------------------------
def test_a_spent_global_quota_refuses_every_request_until_the_top_of_the_hour(sites: Sites, token: str) -> None:
    confluence = sites(PointsPools(global_quota=100), pages=30)
    answers = [search(confluence, token) for _ in range(4)]  # 26, 52, 78: the 4th is admitted, to 104
    assert [a.status_code for a in answers] == [200] * 4
    assert answers[-1].headers["X-RateLimit-Remaining"] == "0"
    refused = current_user(confluence, token)
    assert_refused(refused, GLOBAL, "1847")
    assert refused.headers["X-RateLimit-Reset"] == RESET
    assert refused.headers["X-RateLimit-Remaining"] == "0"
    assert refused.headers["X-RateLimit-Limit"] == "100"
    # No partial throttling: the cheapest request and the reporting API are refused as well.
    assert_refused(report(confluence, token), GLOBAL, "1847")
    assert confluence.reports_seen == []  # refused before it was served
    assert confluence.pools.refusals == {GLOBAL: 2}
    assert confluence.pools.charged == confluence.pools.spent() == 104  # refusals cost nothing
    assert len(confluence.points_seen) == 4


def test_a_new_hour_resets_the_pool(sites: Sites, token: str) -> None:
    confluence = sites(PointsPools(global_quota=100))
    confluence.pools.charge(confluence.cloud_id, 100)
    assert_refused(current_user(confluence, token), GLOBAL, "1847")
    clock.advance(1846)  # 17:59:59
    assert_refused(current_user(confluence, token), GLOBAL, "1")
    clock.advance(1)  # 18:00:00: no carry-over
    assert confluence.pools.spent() == 0
    served = current_user(confluence, token)
    assert served.status_code == 200
    assert served.headers["X-RateLimit-Remaining"] == "97"
    assert served.headers["X-RateLimit-Reset"] == "2026-12-03T19:00:00Z"
    assert confluence.pools.charged == 103  # every point ever charged, across hours


def test_admit_and_spent_read_the_given_time() -> None:
    pools = PointsPools(global_quota=10)
    assert pools.admit("site", search=False, now=T0) is None
    pools.charge("site", 10, now=T0)
    refusal = pools.admit("other-site", search=False, now=T0)
    assert isinstance(refusal, Refusal)
    assert (refusal.reason, refusal.retry_after_s) == (GLOBAL, 1847)
    assert refusal.headers["Retry-After"] == "1847"
    assert pools.spent(now=T0) == 10
    assert pools.spent(now=T0 + 1847) == 0  # an earlier hour's points are gone
    assert pools.admit("site", search=False, now=T0 + 1847) is None


def test_a_new_hour_resets_every_tenants_pool_in_the_tenant_tier() -> None:
    pools = PointsPools(tier="tenant", tenant_quotas={"site-a": 10})
    pools.charge("site-a", 10, now=T0)
    assert pools.admit("site-a", search=False, now=T0) is not None
    pools.charge("site-b", 5, now=T0 + 1847)  # the first request of the next hour, from another site
    assert pools.spent("site-a", now=T0 + 1847) == 0
    assert pools.spent("site-b", now=T0 + 1847) == 5
    assert pools.admit("site-a", search=False, now=T0 + 1847) is None


# -- pools shared by sites --------------------------------------------------------------------------------
def test_two_sites_share_the_global_pool(sites: Sites, token: str) -> None:
    pools = PointsPools(global_quota=100)
    site_a = sites(pools, pages=30, cloud_id="site-a")
    site_b = sites(pools, cloud_id="site-b")
    assert current_user(site_b, token).headers["X-RateLimit-Remaining"] == "97"
    assert search(site_a, token).headers["X-RateLimit-Remaining"] == "71"  # B's points count against A
    assert [search(site_a, token).status_code for _ in range(3)] == [200] * 3  # 81 used before the last
    assert_refused(search(site_a, token), GLOBAL, "1847")
    assert pools.spent() == 3 + 4 * 26
    refused = current_user(site_b, token)  # B spent little, but the pool is one
    assert_refused(refused, GLOBAL, "1847")
    assert site_b.points_seen == [("GET", "/wiki/rest/api/user/current", 3)]
    assert pools.refusals == {GLOBAL: 2}


def test_in_the_tenant_tier_each_site_has_its_own_pool(sites: Sites, token: str) -> None:
    quotas = {"site-a": tenant_quota("standard", 50), "site-b": tenant_quota("premium", 10)}
    assert quotas == {"site-a": 100_500, "site-b": 130_200}
    pools = PointsPools(tier="tenant", tenant_quotas=quotas)
    site_a, site_b, site_c = (sites(pools, cloud_id=c) for c in ("site-a", "site-b", "site-c"))
    pools.charge("site-a", 100_499)
    last = current_user(site_a, token)  # below the quota: admitted, and takes A past it
    assert last.status_code == 200
    assert last.headers["X-RateLimit-Remaining"] == "0"
    assert last.headers["RateLimit-Policy"] == '"tenant-app-quota";q=100500;w=3600'
    assert last.headers["RateLimit"] == '"tenant-app-quota";r=0;t=1847'
    assert_refused(current_user(site_a, token), TENANT, "1847")
    served = current_user(site_b, token)
    assert served.status_code == 200
    assert served.headers["X-RateLimit-Limit"] == "130200"
    assert served.headers["X-RateLimit-Remaining"] == "130197"
    assert "RateLimit" not in served.headers
    unknown = current_user(site_c, token)
    assert unknown.headers["X-RateLimit-Limit"] == "65000"  # a tenant without a quota given
    assert (pools.spent("site-a"), pools.spent("site-b"), pools.spent("site-c")) == (100_502, 3, 3)
    assert pools.refusals == {TENANT: 1}
    with pytest.raises(ValueError, match="tenant"):
        pools.spent()


@pytest.mark.parametrize(
    ("edition", "users", "quota"),
    [
        ("free", 0, 65_000),
        ("free", 5_000, 65_000),
        ("standard", 0, 100_000),
        ("standard", 100, 101_000),
        ("premium", 100, 132_000),
        ("enterprise", 100, 153_000),
        ("standard", 40_000, 500_000),  # exactly the cap
        ("standard", 40_001, 500_000),
        ("premium", 18_500, 500_000),
        ("enterprise", 11_666, 499_980),
        ("enterprise", 11_667, 500_000),
        ("enterprise", 1_000_000, 500_000),
    ],
)
def test_tenant_quota_follows_the_editions_table(edition: str, users: int, quota: int) -> None:
    assert tenant_quota(edition, users) == quota


@pytest.mark.parametrize(("edition", "users"), [("team", 10), ("Standard", 10), ("", 0), ("premium", -1)])
def test_tenant_quota_refuses_what_the_table_does_not_list(edition: str, users: int) -> None:
    with pytest.raises(ValueError, match=r"edition|users"):
        tenant_quota(edition, users)


# -- burst limits -----------------------------------------------------------------------------------------
def test_burst_limits_refuse_within_the_window_and_search_is_stricter(sites: Sites, token: str) -> None:
    confluence = sites(PointsPools(burst_limit=4, search_burst_limit=2, burst_window_s=10), pages=3)
    assert [search(confluence, token).status_code for _ in range(2)] == [200, 200]
    assert_refused(search(confluence, token), BURST, "10")  # the oldest leaves the window in 10 s
    assert [current_user(confluence, token).status_code for _ in range(2)] == [200, 200]  # other reads go on
    assert_refused(current_user(confluence, token), BURST, "10")  # 4 requests in the window
    clock.advance(9.5)
    refused = current_user(confluence, token)
    assert_refused(refused, BURST, "1")  # half a second left: at least 1
    assert refused.headers["X-RateLimit-Remaining"] == str(65_000 - 2 * 4 - 2 * 3)  # the quota is untouched
    clock.advance(0.5)  # the first requests have left the window
    assert search(confluence, token).status_code == 200
    assert confluence.pools.refusals == {BURST: 3}
    assert len(confluence.points_seen) == 5  # refusals were not charged


def test_the_search_burst_limit_defaults_to_half_the_burst_limit() -> None:
    pools = PointsPools(burst_limit=6)
    assert pools.search_burst_limit == 3
    assert [pools.admit("site", search=True, now=T0) for _ in range(3)] == [None] * 3
    refusal = pools.admit("site", search=True, now=T0 + 2.5)
    assert refusal is not None
    assert (refusal.reason, refusal.retry_after_s) == (BURST, 8)  # ceil(T0 + 10 - (T0 + 2.5))
    assert [pools.admit("site", search=False, now=T0 + 3) for _ in range(3)] == [None] * 3
    refusal = pools.admit("site", search=False, now=T0 + 3)
    assert refusal is not None
    assert refusal.reason == BURST
    assert pools.admit("other-site", search=True, now=T0 + 3) is None  # burst limits are per tenant
    assert PointsPools().admit("site", search=True, now=T0) is None  # no burst limit unless given


# -- the headers before enforcement ----------------------------------------------------------------------
def test_beta_headers_mode_sends_the_prefixed_structured_headers(sites: Sites, token: str) -> None:
    confluence = sites(PointsPools(global_quota=100, beta_headers=True), pages=30)
    first = search(confluence, token)
    assert first.headers["Beta-RateLimit-Policy"] == '"global-app-quota";q=100;w=3600'
    assert "RateLimit-Policy" not in first.headers
    assert first.headers["X-RateLimit-Remaining"] == "74"  # the X- headers stay
    last = [search(confluence, token) for _ in range(3)][-1]  # 104 used
    assert last.headers["Beta-RateLimit"] == '"global-app-quota";r=0;t=1847'
    assert "RateLimit" not in last.headers
    assert last.headers["X-RateLimit-NearLimit"] == "true"
    refused = current_user(confluence, token)
    assert refused.status_code == 429
    assert refused.headers["Beta-Retry-After"] == "1847"
    assert "Retry-After" not in refused.headers
    assert refused.headers["RateLimit-Reason"] == GLOBAL
    assert refused.headers["X-RateLimit-Reset"] == RESET


# -- what is not charged ----------------------------------------------------------------------------------
def test_faults_and_refused_tokens_cost_nothing_and_come_before_admission(
    sites: Sites, token: str, forge: ForgeEmulator
) -> None:
    pools = PointsPools(global_quota=100)
    confluence = sites(pools)
    confluence.fail_next(1)
    fault = current_user(confluence, token)
    assert fault.status_code == 429
    assert fault.headers["X-RateLimit-Limit"] == "65000"  # the scripted fault's own headers, as before
    assert "Retry-After" not in fault.headers
    assert current_user(confluence, None).status_code == 401
    assert current_user(confluence, make_token(lifetime_s=-1)).status_code == 401
    assert current_user(confluence, forge.app_token(scopes=[])).status_code == 401  # scope does not match
    assert (pools.charged, pools.refusals, confluence.points_seen) == (0, {}, [])
    pools.charge(confluence.cloud_id, 100)
    confluence.fail_next(1, 503)
    assert current_user(confluence, token).status_code == 503  # a fault still runs first
    assert current_user(confluence, None).status_code == 401  # tokens are checked before the quota
    assert_refused(current_user(confluence, token), GLOBAL, "1847")
    assert pools.refusals == {GLOBAL: 1}
