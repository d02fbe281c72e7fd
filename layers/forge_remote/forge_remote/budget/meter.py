"""Spending points: the fleet budget of one container, and the meter each job or UI call spends through.

``FleetBudget`` holds the policy, the ledger and what this container learned from Atlassian's headers
(a site's Tier 2 quota, the fleet's total as Atlassian counts it). ``PointsMeter`` is what a
``ConfluenceClient`` calls around every request:

- ``before(estimate)``: a background meter reserves the request's estimated points (an upper bound)
  in the ledger, or raises ``BudgetWait``: the share is spent or a 429 paused the pool. A UI meter
  reserves nothing: UI calls made in-request are never refused by this library.
- ``after(ticket, points, report, status)``: the reservation is corrected to what the answer cost;
  totals Atlassian reports (``RateLimit`` past 80% used, ``X-RateLimit-Remaining``) raise the ledger's;
  a quota 429 pauses the fleet (global reason) or the installation (tenant reason) until its reset,
  one signal every container sees at its next reservation, and a background meter raises
  ``BudgetWait``. A burst 429 pauses nothing: the client waits its ``Retry-After`` and slows down.

Because every request reserves its upper bound before it is sent and DynamoDB checks the ceiling
atomically, background spending can pass its share only by what Atlassian's count differs from the
estimate: at most one request in flight per container.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from forge_remote import clock
from forge_remote.budget.ledger import Ceilings, Ledger, Refusal
from forge_remote.budget.policy import BudgetPolicy, Pool, hour_of, reset_at, resume_at
from forge_remote.confluence.points import DEFAULT_PAGE_SIZE
from forge_remote.errors import BudgetWait

if TYPE_CHECKING:  # the header reader imports requests' helpers: loaded by the first answer, not at cold start
    from forge_remote.confluence.rate_limits import RateLimitReport

ONE_PAGE_POINTS = 1 + DEFAULT_PAGE_SIZE  # a search request's reservation: the status page's "nearly spent"
RAISE_STEP = 0.005  # of the quota: a reported total this much above the last one is written back
WAIT_REASONS = {
    Refusal.FLEET_PAUSED: "Atlassian's rate limit for this app is spent (a 429 said so)",
    Refusal.INSTALLATION_PAUSED: "this site's Atlassian rate limit is spent (a 429 said so)",
    Refusal.FLEET_SPENT: "background jobs spent this hour's share of the app's Atlassian quota",
    Refusal.INSTALLATION_SPENT: "this site's jobs spent their share of this hour's Atlassian quota",
}


@dataclass(frozen=True)
class Ticket:
    """A reservation: which hour it counts in and the points reserved."""

    hour: int
    estimate: int


@dataclass(frozen=True)
class BudgetState:
    """Why an installation's background jobs wait now, and until when (for the status page)."""

    refusal: Refusal
    reason: str
    until: float

    def describe(self) -> str:
        when = datetime.fromtimestamp(self.until, UTC).strftime("%Y-%m-%d %H:%M UTC")
        return f"{self.reason}; jobs resume from {when}"


@dataclass
class FleetBudget:
    policy: BudgetPolicy
    ledger: Ledger
    now: Callable[[], float] = clock.now
    # Learned from RateLimit-Policy: a site's own quota in the tenant pool (Tier 2 sizes vary).
    tenant_quotas: dict[str, int] = field(default_factory=dict)
    _reported: dict[tuple[int, str | None], int] = field(default_factory=dict)

    def meter(self, installation_id: str, *, interactive: bool = False, background: bool = True) -> PointsMeter:
        return PointsMeter(self, installation_id, interactive=interactive, background=background)

    def quota_for(self, installation_id: str) -> int:
        if self.policy.pool is Pool.TENANT:
            return self.tenant_quotas.get(installation_id, self.policy.quota)
        return self.policy.quota

    def ceilings(self, installation_id: str, *, interactive: bool) -> Ceilings:
        policy, quota = self.policy, self.quota_for(installation_id)
        job_ceiling, total = policy.job_ceiling(quota, interactive=interactive), policy.total_ceiling(quota)
        if policy.pool is Pool.TENANT:  # the site's own pool: the fleet's item only counts (and pauses)
            return Ceilings(installation_background=job_ceiling, installation_total=total)
        return Ceilings(
            fleet_background=job_ceiling,
            fleet_total=total,
            installation_background=min(job_ceiling, policy.installation_ceiling(quota)),
        )

    def wait(
        self, refusal: Refusal, installation_id: str, now: float, *, paused_until: float | None = None
    ) -> BudgetWait:
        """The ``BudgetWait`` for a refusal: back after the pause or the hour's reset, at the site's slot."""
        until = paused_until if paused_until is not None and paused_until > now else reset_at(now)
        resume = resume_at(installation_id, until)
        return BudgetWait(WAIT_REASONS[refusal], resume_at=resume, delay_s=resume - now)

    def state(self, installation_id: str, now: float | None = None) -> BudgetState | None:
        """Whether this installation's bulk jobs wait now, and why (two reads of the ledger): a pool
        paused, or less left of a ceiling than one page of search results costs."""
        now = self.now() if now is None else now
        hour, ceilings = hour_of(now), self.ceilings(installation_id, interactive=False)
        sides = (
            (None, Refusal.FLEET_PAUSED, Refusal.FLEET_SPENT, ceilings.fleet_background, ceilings.fleet_total),
            (
                installation_id,
                Refusal.INSTALLATION_PAUSED,
                Refusal.INSTALLATION_SPENT,
                ceilings.installation_background,
                ceilings.installation_total,
            ),
        )
        for who, refusal_paused, refusal_spent, background, total in sides:
            usage = self.ledger.usage(hour, who)
            if usage.paused_until is not None and usage.paused_until > now:
                return BudgetState(refusal_paused, WAIT_REASONS[refusal_paused], usage.paused_until)
            spent = [(usage.background, background), (usage.total, total)]
            if any(ceiling is not None and used + ONE_PAGE_POINTS > ceiling for used, ceiling in spent):
                return BudgetState(refusal_spent, WAIT_REASONS[refusal_spent], reset_at(now))
        return None

    def learn(self, installation_id: str, report: RateLimitReport, hour: int) -> None:
        """What the answer's headers say of the pools: a site's quota, and totals above the ledger's."""
        from forge_remote.confluence.rate_limits import LimitKind

        tenant = report.policy(LimitKind.TENANT)
        if tenant is not None and tenant.quota:
            self.tenant_quotas[installation_id] = tenant.quota
        for kind, who in ((LimitKind.GLOBAL, None), (LimitKind.TENANT, installation_id)):
            policy, remaining = report.policy(kind), report.quota_remaining(kind)
            if policy is None or not policy.quota or remaining is None:
                continue
            spent = max(0, policy.quota - remaining)
            if spent > self._reported.get((hour, who), 0) + RAISE_STEP * policy.quota:
                self._reported[(hour, who)] = spent
                self.ledger.raise_total(hour, who, spent)

    def refused(self, installation_id: str, report: RateLimitReport, now: float) -> BudgetWait | None:
        """A 429: pause the pool it names until its reset and return the wait; None for a burst (or a
        quota 429 that asks to come back at once)."""
        from forge_remote.confluence.rate_limits import LimitKind

        kind = report.kind_refused()
        if kind is None or kind is LimitKind.BURST:
            # A burst says slow down; a 429 that names no pool is handled as any rate limit was before
            # the quotas (the client's wait or a deferral of this job): a fleet-wide pause needs a reason.
            return None
        hint = report.retry_after_s if report.retry_after_s is not None else report.reset_in_s
        if hint is not None and hint < 1:
            return None  # "come back now": the client's own retry does, nothing to pause
        until = now + hint if hint is not None else reset_at(now)
        who = None if kind is LimitKind.GLOBAL else installation_id
        refusal = Refusal.FLEET_PAUSED if who is None else Refusal.INSTALLATION_PAUSED
        self.ledger.pause(hour_of(now), who, until, refusal.value)
        return self.wait(refusal, installation_id, now, paused_until=until)


class PointsMeter:
    """One job's (or one UI call's) spending: ``spent`` is its cost in points, a number a team can read."""

    def __init__(self, budget: FleetBudget, installation_id: str, *, interactive: bool, background: bool) -> None:
        self.budget = budget
        self.installation_id = installation_id
        self.interactive = interactive
        self.background = background
        self.spent = 0

    def before(self, estimate: int) -> Ticket:
        """Reserve ``estimate`` points for the next request (background), or raise ``BudgetWait``."""
        now = self.budget.now()
        ticket = Ticket(hour_of(now), estimate if self.background else 0)
        if not self.background or estimate <= 0:
            return ticket
        ceilings = self.budget.ceilings(self.installation_id, interactive=self.interactive)
        refusal = self.budget.ledger.reserve(ticket.hour, self.installation_id, estimate, ceilings, now)
        if refusal is None:
            return ticket
        paused_until = None
        if refusal in (Refusal.FLEET_PAUSED, Refusal.INSTALLATION_PAUSED):
            who = None if refusal is Refusal.FLEET_PAUSED else self.installation_id
            paused_until = self.budget.ledger.usage(ticket.hour, who).paused_until
        raise self.budget.wait(refusal, self.installation_id, now, paused_until=paused_until)

    def after(self, ticket: Ticket, points: int, report: RateLimitReport, status: int) -> None:
        """Settle the request's cost; on a quota 429 pause the pool and (background) raise ``BudgetWait``."""
        from forge_remote.telemetry import counts

        self.spent += points
        ledger = self.budget.ledger
        spender = "background" if self.background else "ui"
        if self.background:
            total = ledger.settle(ticket.hour, self.installation_id, points - ticket.estimate)
        else:
            total = ledger.record_ui(ticket.hour, self.installation_id, points)
        if points:
            counts.count("ConfluencePoints", "spender", spender, points)
        if total is not None:  # the hour's points so far, fleet-wide: the quota alarm's gauge (Maximum)
            counts.count("ConfluencePointsThisHour", "spender", spender, total)
        if report.seen:
            self.budget.learn(self.installation_id, report, ticket.hour)
        if status != 429:
            return
        wait = self.budget.refused(self.installation_id, report, self.budget.now())
        kind = report.kind_refused()
        counts.count("ConfluenceRateLimits", "reason", kind.value if kind else "unnamed")
        if wait is not None and self.background:
            raise wait
