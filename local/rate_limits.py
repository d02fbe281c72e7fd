"""Confluence Cloud's points-based rate limits, as the Confluence emulator enforces them.

The rules (Atlassian's 'Rate limiting' page for Confluence Cloud, enforced since early 2026):

- Cost. Every request costs 1 point, plus 1 per core object it returns (pages, spaces, attachments: a
  search returning 25 pages costs 26) and 2 per identity object (users, groups, permissions: a user
  lookup costs 3). Writes (POST, PUT, PATCH, DELETE) cost 1 flat.
- Pools. Tier 1, the "Global Pool" every app starts in, is ONE quota of 65,000 points per hour shared by
  all the app's tenants (sites): one busy site can starve the others. Tier 2, the "Per-Tenant Pool",
  gives each tenant its own quota by edition (``tenant_quota``): Free 65,000, Standard 100,000 + 10 per
  user, Premium 130,000 + 20 per user, Enterprise 150,000 + 30 per user, at most 500,000.
- Window. Quotas reset at the top of each UTC hour, with no carry-over. Once a quota is used up every
  further request is refused with a 429 until the reset: there is no partial throttling. Burst limits
  (windows of seconds, stricter on search) are enforced separately.
- Headers. ``X-RateLimit-Limit``, ``X-RateLimit-Remaining``, ``X-RateLimit-Reset`` (ISO 8601, e.g.
  ``2026-12-03T18:00:00Z``), ``X-RateLimit-NearLimit: true`` when under 20% is left; on a 429,
  ``RateLimit-Reason`` (``confluence-quota-global-based``, ``confluence-quota-tenant-based``,
  ``confluence-burst-based``) and ``Retry-After`` in integer seconds (``Retry-After: 1847`` at hh:29:13
  for a quota resetting at the top of the hour). The structured ones: ``RateLimit-Policy:
  "global-app-quota";q=65000;w=3600`` (``"tenant-app-quota"`` in Tier 2) and ``RateLimit:
  "global-app-quota";r=11000;t=600``, the latter (remaining ``r``, seconds to reset ``t``) only once
  more than 80% of the quota is used. Before enforcement they carried a ``Beta-`` prefix
  (``Beta-RateLimit``, ``Beta-RateLimit-Policy``, ``Beta-Retry-After``); ``beta_headers=True`` sends
  those, so a client can be tested against both generations.

How the emulator reads them, where the page leaves room:

- What a response costs is ``response_points``: the objects counted are those the operation returns at
  the top level. The documented examples (a search of 25 pages, a user lookup) count only those, so
  objects embedded in them (a page's expanded ``space``, the user in ``version.by``) are not charged.
- A request is admitted while its pool's spent points are below the quota; the request admitted last
  may take the pool past it (its cost is known only once it is answered), and the next one is refused.
  Refused requests cost nothing. Error answers cost the flat 1.
- Burst limits are per tenant: admitted requests in a sliding window of ``burst_window_s`` seconds,
  with a separate, stricter count for search operations. Atlassian does not publish the figures, so
  there is no burst limit unless one is given.
- Time is the stack's clock (``forge_remote.clock``), so tests can place it and move it over the top of
  an hour; the hour window is ``int(now // 3600)``.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from forge_remote import clock

__all__ = [
    "BURST_REASON",
    "DEFAULT_QUOTA",
    "GLOBAL_REASON",
    "MAX_TENANT_QUOTA",
    "TENANT_REASON",
    "PointsPools",
    "Refusal",
    "response_points",
    "search_operation",
    "tenant_quota",
]

WINDOW_S = 3600  # quotas are per UTC hour
DEFAULT_QUOTA = 65_000  # the Global Pool, and a Free site's per-tenant pool
MAX_TENANT_QUOTA = 500_000
NEAR_LIMIT_DIVISOR = 5  # X-RateLimit-NearLimit under 1/5 (20%) left; RateLimit's r and t over 80% used
GLOBAL_REASON = "confluence-quota-global-based"
TENANT_REASON = "confluence-quota-tenant-based"
BURST_REASON = "confluence-burst-based"
TIERS = {"global": "global-app-quota", "tenant": "tenant-app-quota"}  # tier -> policy name in the headers

# Edition -> (base points, points per user) of the Per-Tenant Pool.
_EDITIONS = {
    "free": (65_000, 0),
    "standard": (100_000, 10),
    "premium": (130_000, 20),
    "enterprise": (150_000, 30),
}

# Path segments naming identity objects (users, groups, permissions): they cost 2 points each, not 1.
_IDENTITY_SEGMENTS = frozenset(
    {"user", "users", "group", "groups", "member", "members", "permission", "permissions", "memberships"}
)
_READ = "GET"


def tenant_quota(edition: str, users: int) -> int:
    """A site's hourly quota in the Per-Tenant Pool (Tier 2), from its edition and user count.

    Free sites get the Global Pool's figure whatever their size; the paid editions grow with users
    up to the cap of 500,000. ``ValueError`` for an edition Atlassian does not list (the names are
    lower-case, as here) or a negative user count, rather than guessing a quota.
    """
    if edition not in _EDITIONS:
        raise ValueError(f"edition must be one of {sorted(_EDITIONS)}, not {edition!r}")
    if users < 0:
        raise ValueError(f"users must not be negative, not {users}")
    base, per_user = _EDITIONS[edition]
    return min(base + per_user * users, MAX_TENANT_QUOTA)


def search_operation(operation_template: str) -> bool:
    """Whether an operation is a search (``/wiki/rest/api/content/search``, ``/wiki/rest/api/search``
    ...): burst limits are stricter on those, as they are the expensive reads."""
    return "search" in operation_template.strip("/").split("/")


def _identity_operation(operation_template: str) -> bool:
    """Whether an operation returns identity objects (users, groups, permissions), by its path."""
    return not _IDENTITY_SEGMENTS.isdisjoint(operation_template.strip("/").split("/"))


def response_points(method: str, operation_template: str, body: object, *, status: int = 200) -> int:
    """What one answered request costs, by the emulator's charging rule.

    Writes (anything but GET) cost 1 whatever they return. A GET costs 1, plus 1 per core object and 2
    per identity object it returns at the top level: a document with a ``results`` list (content
    search, v2 spaces, user listings) counts its items, a bare list its items, and any other JSON
    object is one object (a page from ``/wiki/api/v2/pages/{id}``, the user from
    ``/wiki/rest/api/user/current``). Whether the objects are identity objects is read from the path
    (a ``user``, ``group`` or ``permission`` segment); everything else is core. Objects embedded in
    the ones returned (a page's expanded ``space``, ``version.by``) are not counted: that is the
    emulator's reading of the page, whose examples count top-level objects only.

    ``status`` is the answer's: an error (4xx or 5xx) returns no objects and costs the flat 1, except a
    429, which is a refusal and costs nothing.
    """
    if status == 429:
        return 0
    if method.upper() != _READ or status >= 400:
        return 1
    if isinstance(body, dict):
        results = body.get("results")
        objects = len(results) if isinstance(results, list) else 1
    elif isinstance(body, list):
        objects = len(body)
    else:  # no body (a 204) or not JSON
        objects = 0
    return 1 + objects * (2 if _identity_operation(operation_template) else 1)


@dataclass(frozen=True)
class Refusal:
    """Why a request was refused (a ``RateLimit-Reason``), when to come back, and the 429's headers."""

    reason: str
    retry_after_s: int
    headers: dict[str, str] = field(default_factory=dict)


class PointsPools:
    """The hourly points quota of ONE app across all its sites, and the per-site burst limits.

    Several emulators (sites) given the same instance share it as Atlassian's pools are shared: in the
    global tier every site draws on one counter, in the tenant tier each on its own. Thread-safe: the
    emulators serve from threads, so every read and update holds one lock.
    """

    def __init__(
        self,
        *,
        tier: str = "global",
        global_quota: int = DEFAULT_QUOTA,
        tenant_quotas: Mapping[str, int] | None = None,
        burst_limit: int | None = None,
        search_burst_limit: int | None = None,
        burst_window_s: float = 10.0,
        beta_headers: bool = False,
    ) -> None:
        if tier not in TIERS:
            raise ValueError(f"tier must be one of {sorted(TIERS)}, not {tier!r}")
        if global_quota < 1 or any(q < 1 for q in (tenant_quotas or {}).values()):
            raise ValueError("quotas must be at least 1 point")
        if burst_window_s <= 0:
            raise ValueError("burst_window_s must be positive")
        self.tier = tier
        self.global_quota = global_quota
        self.tenant_quotas = dict(tenant_quotas or {})
        self.burst_limit = burst_limit
        # Search is stricter: half the general limit unless told (at least one request, or none would pass).
        if search_burst_limit is None and burst_limit is not None:
            search_burst_limit = max(1, burst_limit // 2)
        self.search_burst_limit = search_burst_limit
        self.burst_window_s = burst_window_s
        self.beta_headers = beta_headers
        self.refusals: dict[str, int] = {}  # RateLimit-Reason -> how many 429s gave it
        self.charged = 0  # every point ever charged, across hours and sites
        self._policy = TIERS[tier]
        self._lock = threading.Lock()
        self._hour: int | None = None  # the window the counters below belong to
        self._global_spent = 0
        self._tenant_spent: dict[str, int] = {}
        self._recent: dict[str, deque[float]] = {}  # tenant -> times of admitted requests in the burst window
        self._recent_searches: dict[str, deque[float]] = {}

    # -- the pools
    def quota(self, tenant: str) -> int:
        """The hourly quota ``tenant``'s requests draw on (the shared one in the global tier)."""
        if self.tier == "global":
            return self.global_quota
        return self.tenant_quotas.get(tenant, DEFAULT_QUOTA)

    def spent(self, tenant: str | None = None, *, now: float | None = None) -> int:
        """Points spent this hour: the global pool's (``tenant`` is then ignored), or in the tenant tier
        ``tenant``'s own (``ValueError`` without one: there is no single figure to give)."""
        moment = clock.now() if now is None else now
        with self._lock:
            if self._hour != _hour(moment):
                return 0  # an earlier hour's points no longer count
            if self.tier == "global":
                return self._global_spent
            if tenant is None:
                raise ValueError("in the tenant tier, spent() needs the tenant whose pool to read")
            return self._tenant_spent.get(tenant, 0)

    def admit(self, tenant: str, *, search: bool, now: float | None = None) -> Refusal | None:
        """None if ``tenant``'s request may be served now; else why not, as a 429's ``Refusal``.

        The quota is checked first (a spent pool refuses everything until the top of the hour), then
        the burst limits. An admitted request counts towards the burst window; a refused one does not,
        and costs nothing.
        """
        moment = clock.now() if now is None else now
        with self._lock:
            self._roll(moment)
            if self._spent_locked(tenant) >= self.quota(tenant):
                reason = GLOBAL_REASON if self.tier == "global" else TENANT_REASON
                return self._refuse(tenant, reason, _seconds_to_reset(moment), moment)
            recent = self._window(self._recent, tenant, moment)
            searches = self._window(self._recent_searches, tenant, moment)
            limits = [(recent, self.burst_limit)]
            if search:
                limits.append((searches, self.search_burst_limit))
            for times, limit in limits:
                if limit is not None and len(times) >= limit:
                    # Room for one more once the oldest request in the window has left it.
                    wait_s = math.ceil(times[0] + self.burst_window_s - moment)
                    return self._refuse(tenant, BURST_REASON, max(1, wait_s), moment)
            recent.append(moment)
            if search:
                searches.append(moment)
            return None

    def charge(self, tenant: str, points: int, *, now: float | None = None) -> dict[str, str]:
        """Add an answered request's points to ``tenant``'s pool; returns the headers for that answer."""
        if points < 0:
            raise ValueError(f"points must not be negative, not {points}")
        moment = clock.now() if now is None else now
        with self._lock:
            self._roll(moment)
            if self.tier == "global":
                self._global_spent += points
            else:
                self._tenant_spent[tenant] = self._tenant_spent.get(tenant, 0) + points
            self.charged += points
            return self._headers(tenant, moment)

    # -- plumbing (callers hold the lock)
    def _roll(self, moment: float) -> None:
        """Forget an earlier hour's points at the first request of a new one (no carry-over). A clock
        moved back (tests restoring wall time) starts afresh too, burst windows included."""
        hour = _hour(moment)
        if self._hour == hour:
            return
        if self._hour is not None and hour < self._hour:
            self._recent.clear()
            self._recent_searches.clear()
        self._hour = hour
        self._global_spent = 0
        self._tenant_spent.clear()

    def _spent_locked(self, tenant: str) -> int:
        return self._global_spent if self.tier == "global" else self._tenant_spent.get(tenant, 0)

    def _window(self, windows: dict[str, deque[float]], tenant: str, moment: float) -> deque[float]:
        """``tenant``'s admitted request times still inside the sliding burst window ending now."""
        times = windows.setdefault(tenant, deque())
        while times and times[0] <= moment - self.burst_window_s:
            times.popleft()
        return times

    def _refuse(self, tenant: str, reason: str, retry_after_s: int, moment: float) -> Refusal:
        self.refusals[reason] = self.refusals.get(reason, 0) + 1
        headers = self._headers(tenant, moment)
        headers["RateLimit-Reason"] = reason
        headers["Beta-Retry-After" if self.beta_headers else "Retry-After"] = str(retry_after_s)
        return Refusal(reason, retry_after_s, headers)

    def _headers(self, tenant: str, moment: float) -> dict[str, str]:
        """The quota headers every answer carries, as the pool stands after it."""
        quota = self.quota(tenant)
        remaining = max(0, quota - self._spent_locked(tenant))
        prefix = "Beta-" if self.beta_headers else ""
        headers = {
            "X-RateLimit-Limit": str(quota),
            "X-RateLimit-Remaining": str(remaining),
            "X-RateLimit-Reset": _reset_iso(moment),
            f"{prefix}RateLimit-Policy": f'"{self._policy}";q={quota};w={WINDOW_S}',
        }
        # Under 20% left is the same as over 80% used: both signals appear together (integers: no rounding).
        if remaining * NEAR_LIMIT_DIVISOR < quota:
            headers["X-RateLimit-NearLimit"] = "true"
            headers[f"{prefix}RateLimit"] = f'"{self._policy}";r={remaining};t={_seconds_to_reset(moment)}'
        return headers


def _hour(moment: float) -> int:
    return int(moment // WINDOW_S)


def _seconds_to_reset(moment: float) -> int:
    """Whole seconds, rounded up, until the top of the next UTC hour (1847 at hh:29:13)."""
    return math.ceil((_hour(moment) + 1) * WINDOW_S - moment)


def _reset_iso(moment: float) -> str:
    """The next top of the hour as ``X-RateLimit-Reset`` gives it: ``2026-12-03T18:00:00Z``."""
    return datetime.fromtimestamp((_hour(moment) + 1) * WINDOW_S, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
