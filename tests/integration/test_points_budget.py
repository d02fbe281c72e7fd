"""The fleet's points budget: the ledger (in memory and on DynamoDB, the same assertions), the meter's
rules, and the budget under containers racing for the same hour.

Times are placed on the stack's clock (``clock.set``), never read from the wall: 2026-12-03 17:29:13 UTC,
the moment of Atlassian's documented ``Retry-After: 1847`` example.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from types import SimpleNamespace

import boto3
import pytest
from moto import mock_aws

from forge_remote import clock
from forge_remote.budget.ledger import Ceilings, DynamoLedger, Ledger, Refusal
from forge_remote.budget.meter import FleetBudget
from forge_remote.budget.policy import RESUME_JITTER_S, RESUME_SPREAD_S, BudgetPolicy, Pool, hour_of, reset_at
from forge_remote.confluence.rate_limits import RateLimitReport
from forge_remote.errors import BudgetWait, ConfigurationError
from forge_remote.testing import MemoryLedger
from local.stack import LocalStack

AT = datetime(2026, 12, 3, 17, 29, 13, tzinfo=UTC).timestamp()
HOUR = hour_of(AT)
RESET = reset_at(AT)  # 18:00:00
A = "ari:cloud:ecosystem::installation/aaaaaaaa-budget"
B = "ari:cloud:ecosystem::installation/bbbbbbbb-budget"
NO_HEADERS = RateLimitReport.from_headers({}, AT)


@pytest.fixture(autouse=True)
def placed_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """The stack's clock stands still at AT (``clock.set`` moves it; the wall clock never does)."""
    monkeypatch.setattr(clock, "time", SimpleNamespace(time=lambda: AT))


def dynamodb_ledger() -> DynamoLedger:
    client = boto3.client("dynamodb")
    tables = LocalStack.from_template().create(dynamodb=client).physical
    return DynamoLedger(client, tables["AppTable"])


@pytest.fixture(params=["memory", "dynamodb"])
def ledger(request: pytest.FixtureRequest) -> Iterator[Ledger]:
    if request.param == "memory":
        yield MemoryLedger()
        return
    with mock_aws():
        yield dynamodb_ledger()


# -- the ledger's contract ---------------------------------------------------------------------------
def test_a_reservation_within_the_ceilings_is_counted_in_both_hours(ledger: Ledger) -> None:
    assert ledger.reserve(HOUR, A, 40, Ceilings(fleet_background=100, installation_background=50), AT) is None
    assert (ledger.usage(HOUR, None).background, ledger.usage(HOUR, A).background) == (40, 40)
    assert ledger.usage(HOUR, None).total == 40
    assert ledger.usage(HOUR, B).background == 0


def test_a_reservation_past_a_ceiling_is_refused_and_changes_nothing(ledger: Ledger) -> None:
    ceilings = Ceilings(fleet_background=100, installation_background=50)
    assert ledger.reserve(HOUR, A, 40, ceilings, AT) is None
    assert ledger.reserve(HOUR, A, 11, ceilings, AT) is Refusal.INSTALLATION_SPENT
    assert ledger.reserve(HOUR, B, 50, ceilings, AT) is None
    assert ledger.reserve(HOUR, B, 11, ceilings, AT) is Refusal.FLEET_SPENT
    assert ledger.usage(HOUR, None).background == 90  # neither refused reservation left a trace
    assert ledger.usage(HOUR, A).background == 40
    assert ledger.reserve(HOUR, A, 10, ceilings, AT) is None  # exactly up to both ceilings is allowed


def test_the_total_ceiling_counts_ui_points_and_reported_totals(ledger: Ledger) -> None:
    ceilings = Ceilings(fleet_total=100)
    ledger.record_ui(HOUR, B, 60)
    assert ledger.reserve(HOUR, A, 41, ceilings, AT) is Refusal.FLEET_SPENT
    assert ledger.reserve(HOUR, A, 40, ceilings, AT) is None
    ledger.raise_total(HOUR, None, 90)  # lower than known: nothing changes
    assert ledger.usage(HOUR, None).total == 100
    ledger.raise_total(HOUR, None, 120)
    assert ledger.usage(HOUR, None).total == 120
    assert ledger.usage(HOUR, None).ui == 60


def test_settling_corrects_a_reservation_in_both_hours(ledger: Ledger) -> None:
    ledger.reserve(HOUR, A, 51, Ceilings(), AT)
    ledger.settle(HOUR, A, -25)
    assert (ledger.usage(HOUR, None).background, ledger.usage(HOUR, A).background) == (26, 26)
    assert ledger.usage(HOUR, A).total == 26


def test_a_pause_refuses_until_it_ends_and_only_where_it_was_set(ledger: Ledger) -> None:
    ledger.pause(HOUR, A, AT + 60, Refusal.INSTALLATION_PAUSED.value)
    assert ledger.reserve(HOUR, A, 1, Ceilings(), AT) is Refusal.INSTALLATION_PAUSED
    assert ledger.reserve(HOUR, B, 1, Ceilings(), AT) is None
    ledger.pause(HOUR, A, AT + 30, "shorter")  # a shorter pause never shortens a longer one
    assert ledger.usage(HOUR, A).paused_until == AT + 60
    assert ledger.reserve(HOUR, A, 1, Ceilings(), AT + 61) is None
    ledger.pause(HOUR, None, AT + 120, Refusal.FLEET_PAUSED.value)
    assert ledger.reserve(HOUR, B, 1, Ceilings(), AT + 61) is Refusal.FLEET_PAUSED
    assert ledger.usage(HOUR, None).pause_reason == Refusal.FLEET_PAUSED.value


def test_a_new_hour_starts_from_nothing(ledger: Ledger) -> None:
    ledger.reserve(HOUR, A, 100, Ceilings(fleet_background=100), AT)
    ledger.pause(HOUR, None, RESET, "spent")
    assert ledger.reserve(HOUR, A, 1, Ceilings(fleet_background=100), AT) is not None
    assert ledger.reserve(HOUR + 1, A, 100, Ceilings(fleet_background=100), RESET) is None


# -- the policy ----------------------------------------------------------------------------------------
def test_the_policy_reads_its_settings_and_refuses_bad_ones() -> None:
    policy = BudgetPolicy.from_env({"BACKGROUND_SHARE": "0.5", "INSTALLATION_SHARE": "0.2", "RATE_LIMIT_QUOTA": "1000"})
    assert (policy.background_points(1000), policy.installation_ceiling(1000)) == (500, 100)
    assert policy.job_ceiling(1000, interactive=False) == 450  # the last tenth is the interactive jobs'
    assert BudgetPolicy.from_env({"RATE_LIMIT_POOL": "tenant"}).pool is Pool.TENANT
    for env in (
        {"BACKGROUND_SHARE": "1.5"},
        {"BACKGROUND_SHARE": "0"},
        {"RATE_LIMIT_POOL": "both"},
        {"RATE_LIMIT_QUOTA": "12.5"},
        {"INSTALLATION_SHARE": "lots"},
    ):
        with pytest.raises(ConfigurationError):
            BudgetPolicy.from_env(env)


# -- the meter -------------------------------------------------------------------------------------------
def budget(pool: Pool = Pool.GLOBAL, quota: int = 1000, **shares: float) -> FleetBudget:
    return FleetBudget(BudgetPolicy(pool=pool, quota=quota, **shares), MemoryLedger())


def report(**headers: str) -> RateLimitReport:
    return RateLimitReport.from_headers({k.replace("_", "-"): v for k, v in headers.items()}, clock.now())


def test_background_spends_its_share_then_waits_for_its_slot_in_the_next_hour() -> None:
    fleet = budget(background_share=0.5, installation_share=1.0)
    meter = fleet.meter(A, interactive=True)
    for _ in range(10):
        meter.after(meter.before(50), 50, NO_HEADERS, 200)
    with pytest.raises(BudgetWait) as waited:
        meter.before(1)
    assert RESET <= waited.value.resume_at <= RESET + RESUME_SPREAD_S + RESUME_JITTER_S
    assert waited.value.delay_s == pytest.approx(waited.value.resume_at - AT)
    assert meter.spent == 500
    state = fleet.state(A)
    assert state is not None
    assert (state.refusal, state.until) == (Refusal.FLEET_SPENT, RESET)


def test_ui_calls_are_counted_and_never_refused() -> None:
    fleet = budget(background_share=0.5)
    ui = fleet.meter(A, background=False)
    for _ in range(30):  # three times the whole quota: the UI is never refused by the budget
        ui.after(ui.before(100), 100, NO_HEADERS, 200)
    usage = fleet.ledger.usage(HOUR, None)
    assert (usage.ui, usage.background, usage.total) == (3000, 0, 3000)
    with pytest.raises(BudgetWait):  # ...but background work stops once the hour's total is that high
        fleet.meter(B).before(1)


def test_bulk_jobs_leave_the_last_tenth_of_the_share_to_interactive_ones() -> None:
    fleet = budget(background_share=0.5, installation_share=1.0)
    bulk = fleet.meter(A)
    bulk.after(bulk.before(450), 450, NO_HEADERS, 200)
    with pytest.raises(BudgetWait):
        bulk.before(1)
    interactive = fleet.meter(B, interactive=True)
    interactive.after(interactive.before(50), 50, NO_HEADERS, 200)
    with pytest.raises(BudgetWait):
        interactive.before(1)


def test_one_installation_cannot_spend_the_fleets_hour() -> None:
    fleet = budget(background_share=0.5, installation_share=0.1)  # 50 points each
    big = fleet.meter(A)
    big.after(big.before(50), 50, NO_HEADERS, 200)
    with pytest.raises(BudgetWait) as waited:
        big.before(1)
    assert "this site's jobs" in waited.value.reason
    other = fleet.meter(B)
    other.before(50)  # another installation still has its share


def test_a_reservation_is_settled_to_what_the_answer_cost() -> None:
    fleet = budget()
    meter = fleet.meter(A)
    meter.after(meter.before(26), 3, NO_HEADERS, 200)
    assert fleet.ledger.usage(HOUR, A).background == 3
    assert meter.spent == 3


def test_a_global_quota_429_pauses_every_installation_until_the_reset() -> None:
    fleet = budget()
    meter = fleet.meter(A)
    ticket = meter.before(26)
    refusal = report(Retry_After="1847", RateLimit_Reason="confluence-quota-global-based")
    with pytest.raises(BudgetWait) as waited:
        meter.after(ticket, 0, refusal, 429)
    assert waited.value.resume_at >= RESET
    other_container = FleetBudget(fleet.policy, fleet.ledger)  # learns it from the ledger alone
    with pytest.raises(BudgetWait) as other:
        other_container.meter(B).before(1)
    assert "for this app" in other.value.reason
    assert other.value.resume_at >= RESET
    clock.set(RESET + 1)
    other_container.meter(B).before(1)  # the next hour is not paused


def test_a_tenant_quota_429_pauses_only_that_installation() -> None:
    fleet = budget(pool=Pool.TENANT)
    meter = fleet.meter(A)
    with pytest.raises(BudgetWait) as waited:
        meter.after(
            meter.before(2), 0, report(Retry_After="1847", RateLimit_Reason="confluence-quota-tenant-based"), 429
        )
    assert "this site's" in waited.value.reason
    with pytest.raises(BudgetWait):
        fleet.meter(A).before(1)
    fleet.meter(B).before(1)


def test_a_burst_429_pauses_nothing() -> None:
    fleet = budget()
    meter = fleet.meter(A)
    meter.after(meter.before(2), 0, report(Retry_After="2", RateLimit_Reason="confluence-burst-based"), 429)
    fleet.meter(B).before(1)
    assert fleet.ledger.usage(HOUR, None).paused_until is None


def test_a_429_that_names_no_pool_or_says_come_back_now_pauses_nothing() -> None:
    fleet = budget()
    meter = fleet.meter(A)
    meter.after(meter.before(2), 0, report(Retry_After="1847"), 429)  # no RateLimit-Reason: this job's alone
    meter.after(meter.before(2), 0, report(Retry_After="0", RateLimit_Reason="confluence-quota-global-based"), 429)
    fleet.meter(B).before(1)
    assert fleet.ledger.usage(HOUR, None).paused_until is None


def test_a_ui_call_refused_by_the_global_quota_still_pauses_background_work() -> None:
    fleet = budget()
    ui = fleet.meter(A, background=False)
    ui.after(ui.before(3), 0, report(Retry_After="1847", RateLimit_Reason="confluence-quota-global-based"), 429)
    with pytest.raises(BudgetWait):
        fleet.meter(B).before(1)


def test_totals_atlassian_reports_raise_the_ledgers() -> None:
    fleet = budget(quota=65_000)
    meter = fleet.meter(A)
    headers = report(RateLimit_Policy='"global-app-quota";q=65000;w=3600', RateLimit='"global-app-quota";r=5000;t=1847')
    meter.after(meter.before(2), 2, headers, 200)
    assert fleet.ledger.usage(HOUR, None).total == 60_000  # other regions' stacks, UI calls not seen here
    with pytest.raises(BudgetWait):  # past 90% known spent: background work stops
        fleet.meter(B).before(500)


def test_the_tenant_pool_learns_each_sites_quota_from_its_headers() -> None:
    fleet = budget(pool=Pool.TENANT, quota=65_000, background_share=0.5)
    meter = fleet.meter(A)
    meter.after(meter.before(1), 1, report(RateLimit_Policy='"tenant-app-quota";q=130000;w=3600'), 200)
    assert (fleet.quota_for(A), fleet.quota_for(B)) == (130_000, 65_000)
    assert fleet.ceilings(A, interactive=True).installation_background == 65_000
    assert fleet.ceilings(A, interactive=True).fleet_background is None  # no fleet-wide limit in Tier 2


# -- containers racing for one hour -------------------------------------------------------------------
CONTAINERS = 8
MAX_OVERRUN = 5  # what one answer may cost above its estimate (an estimate that guessed low)


def spend_until_refused(fleet: FleetBudget, installation_id: str, seed: int, spent: list[int]) -> None:
    """One container: requests of random estimates, each answered at up to MAX_OVERRUN above it."""
    rng = random.Random(seed)
    meter = fleet.meter(installation_id, interactive=True)
    while True:
        estimate = rng.randint(1, 26)
        try:
            ticket = meter.before(estimate)
        except BudgetWait:
            break
        meter.after(ticket, rng.randint(1, estimate + MAX_OVERRUN), NO_HEADERS, 200)
    spent.append(meter.spent)


@pytest.mark.parametrize("store", ["memory", "dynamodb"])
def test_containers_never_overspend_the_share_by_more_than_one_request_each(store: str, atomic_dynamodb: None) -> None:
    policy = BudgetPolicy(quota=2000, background_share=0.5, installation_share=1.0)
    with mock_aws():
        shared: Ledger = MemoryLedger() if store == "memory" else dynamodb_ledger()
        spent: list[int] = []
        threads = [
            threading.Thread(
                target=spend_until_refused,
                args=(FleetBudget(policy, shared), [A, B][n % 2], n, spent),  # each its own container
            )
            for n in range(CONTAINERS)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        share = policy.background_points(policy.quota)
        background = shared.usage(HOUR, None).background
    assert len(spent) == CONTAINERS
    assert background == sum(spent)  # every point the meters counted is in the ledger
    assert background <= share + CONTAINERS * MAX_OVERRUN
    assert background >= share - 26 - CONTAINERS * 26  # and the share was used, not left idle
