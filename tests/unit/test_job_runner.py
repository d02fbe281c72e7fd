"""The real ``JobRunner`` on the in-memory stores and a fake Confluence client: the token rules a job runs
under (docs/token-rules.md, rules 4-6) and the outcome every kind of failure gets."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest

import forge_remote.jobs.runner as runner_module
from forge_remote import clock
from forge_remote.errors import BudgetWait, PermanentFailure, RetryLater, TokenRejected
from forge_remote.jobs.contract import JobContext, JobRegistry, JobRequest, JobResult
from forge_remote.jobs.runner import JITTER, JobRunner, JobStatus, Outcome
from forge_remote.storage.installations import InstallationFacts
from forge_remote.testing import MemoryInstallations, MemoryResults, MemoryTokenStore, app_token
from forge_remote.tokens.lease import REQUEST_MARGIN_S
from forge_remote.tokens.store import token_sha256

INSTALLATION = "ari:cloud:ecosystem::installation/7f3c2a1e-unit"
API_BASE = "https://api.atlassian.com/ex/confluence/cloud-1"
MIN_VALIDITY_S = 600


class FakeConfluence:
    """What ``ctx.confluence`` is here: it sends nothing, and reads its bearer as each real request does."""

    def __init__(
        self, api_base_url: str, token: Callable[[], str], *, allowed_hosts: Any, remaining_ms: Callable[[], int]
    ) -> None:
        self.api_base_url = api_base_url
        self._token = token
        self.sent: list[str] = []  # the bearer of every request, in order

    def request(self) -> str:
        bearer = self._token()
        self.sent.append(bearer)
        return bearer


@dataclass
class World:
    registry: JobRegistry = field(default_factory=JobRegistry)
    installations: MemoryInstallations = field(default_factory=MemoryInstallations)
    results: MemoryResults = field(default_factory=MemoryResults)
    clients: list[FakeConfluence] = field(default_factory=list)
    runs: list[JobContext] = field(default_factory=list)  # every time a job body ran

    def __post_init__(self) -> None:
        self.tokens = MemoryTokenStore(self.installations)

        def client_factory(*args: Any, **kwargs: Any) -> FakeConfluence:
            self.clients.append(FakeConfluence(*args, **kwargs))
            return self.clients[-1]

        self.runner = JobRunner(
            registry=self.registry,
            tokens=self.tokens,
            installations=self.installations,
            results=self.results,
            allowed_api_hosts=("api.atlassian.com",),
            min_validity_s=MIN_VALIDITY_S,
            client_factory=client_factory,
        )

    def install(self) -> None:
        assert self.installations.record_lifecycle(InstallationFacts(INSTALLATION, API_BASE, cloud_id="cloud-1"))

    def job(self, body: Callable[[JobContext], JobResult | None], name: str = "test-job") -> str:
        """Register ``body`` as a job that takes no arguments; every run is recorded."""

        def run(ctx: JobContext, _args: None) -> JobResult | None:
            self.runs.append(ctx)
            return body(ctx)

        self.registry.job(name, no_args)(run)
        return name

    def run(self, job: str, *, receive_count: int = 1) -> Outcome:
        request = JobRequest(job=job, installation_id=INSTALLATION)
        return self.runner.run(request, receive_count=receive_count, remaining_ms=lambda: 60_000)

    @property
    def sent(self) -> list[str]:
        return [bearer for client in self.clients for bearer in client.sent]


def no_args(args: Mapping[str, Any]) -> None:
    if args:
        raise ValueError("takes no arguments")


def confluence(ctx: JobContext) -> FakeConfluence:
    client = ctx.confluence
    assert isinstance(client, FakeConfluence)
    return client


def one_request(ctx: JobContext) -> JobResult:
    confluence(ctx).request()
    return JobResult({"requests": 1})


@pytest.fixture
def world(frozen_clock: float) -> World:
    world = World()
    world.install()
    return world


@pytest.fixture
def nominal_jitter(monkeypatch: pytest.MonkeyPatch) -> None:
    """Deferral delays without their ±10% jitter, so a test can name them exactly."""
    monkeypatch.setattr(runner_module, "random", SimpleNamespace(uniform=lambda low, high: (low + high) / 2))


# -- which token a job gets ---------------------------------------------------------------------------
def test_a_job_runs_with_the_stored_token_when_it_is_valid_for_the_minimum(world: World) -> None:
    token = app_token(MIN_VALIDITY_S)  # exactly the minimum left: valid enough
    world.tokens.put_if_newer(INSTALLATION, token)
    outcome = world.run(world.job(one_request))
    assert (outcome.status, outcome.summary) == (JobStatus.DONE, {"requests": 1})
    assert world.sent == [token]
    assert world.clients[0].api_base_url == API_BASE


def test_a_token_valid_for_less_than_the_minimum_is_never_used(world: World) -> None:
    world.tokens.put_if_newer(INSTALLATION, app_token(MIN_VALIDITY_S - 1))
    outcome = world.run(world.job(one_request))
    assert outcome.status is JobStatus.DEFERRED
    assert outcome.waiting_for_token
    assert f"valid for less than {MIN_VALIDITY_S}s" in outcome.reason
    assert world.runs == []
    assert world.sent == []


def test_with_no_token_stored_the_job_waits_for_one(world: World) -> None:
    outcome = world.run(world.job(one_request))
    assert (outcome.status, outcome.waiting_for_token) == (JobStatus.DEFERRED, True)
    assert "no token stored" in outcome.reason
    assert world.runs == []


def test_a_long_job_never_sends_a_token_about_to_expire(world: World) -> None:
    world.tokens.put_if_newer(INSTALLATION, app_token(MIN_VALIDITY_S + 300))

    def long_job(ctx: JobContext) -> None:
        confluence(ctx).request()
        clock.advance(MIN_VALIDITY_S + 300 - REQUEST_MARGIN_S + 1)  # hours of work: the token nearly gone
        confluence(ctx).request()

    outcome = world.run(world.job(long_job))
    assert (outcome.status, outcome.waiting_for_token) == (JobStatus.DEFERRED, True)
    assert len(world.sent) == 1  # the second request was never sent


def test_a_long_job_moves_to_a_newer_token_stored_meanwhile(world: World) -> None:
    first, second = app_token(MIN_VALIDITY_S + 300), app_token(7200)
    world.tokens.put_if_newer(INSTALLATION, first)

    def long_job(ctx: JobContext) -> None:
        confluence(ctx).request()
        clock.advance(MIN_VALIDITY_S + 300 - REQUEST_MARGIN_S + 1)
        world.tokens.put_if_newer(INSTALLATION, second)  # a keepalive arrived
        confluence(ctx).request()

    assert world.run(world.job(long_job)).status is JobStatus.DONE
    assert world.sent == [first, second]


# -- a rejected token ---------------------------------------------------------------------------------
def test_a_rejected_token_is_invalidated_and_the_job_retried_once_with_a_newer_one(world: World) -> None:
    rejected, newer = app_token(1800), app_token(3600)
    world.tokens.put_if_newer(INSTALLATION, rejected)

    def refused_first(ctx: JobContext) -> JobResult:
        bearer = confluence(ctx).request()
        if bearer == rejected:
            world.tokens.put_if_newer(INSTALLATION, newer)  # delivered while the request was refused
            raise TokenRejected(401, token_sha256=token_sha256(bearer))
        return JobResult({"with": "newer"})

    outcome = world.run(world.job(refused_first))
    assert (outcome.status, outcome.summary) == (JobStatus.DONE, {"with": "newer"})
    assert world.sent == [rejected, newer]
    held = world.tokens.held(INSTALLATION)
    assert held is not None
    assert held.token == newer  # invalidating the rejected one did not take its replacement


def test_a_rejected_token_with_nothing_newer_is_removed_and_the_job_waits(world: World) -> None:
    rejected = app_token(3600)
    world.tokens.put_if_newer(INSTALLATION, rejected)

    def refused(ctx: JobContext) -> None:
        raise TokenRejected(401, token_sha256=token_sha256(confluence(ctx).request()))

    outcome = world.run(world.job(refused))
    assert (outcome.status, outcome.waiting_for_token) == (JobStatus.DEFERRED, True)
    assert outcome.reason == "Confluence rejected the token (HTTP 401) and no other token to retry with"
    assert len(world.runs) == 1
    assert world.tokens.held(INSTALLATION) is None
    # Forge delivering the refused token again stores it, but it wakes no parked job: jobs wait for another.
    world.tokens.put_if_newer(INSTALLATION, rejected)
    assert world.runner.token_wakes_jobs(INSTALLATION) is False
    world.tokens.put_if_newer(INSTALLATION, app_token(7200))
    assert world.runner.token_wakes_jobs(INSTALLATION) is True


def test_a_job_is_retried_at_most_once_after_a_rejection(world: World) -> None:
    world.tokens.put_if_newer(INSTALLATION, app_token(1800))

    def always_refused(ctx: JobContext) -> None:
        bearer = confluence(ctx).request()
        world.tokens.put_if_newer(INSTALLATION, app_token(1800 + 100 * len(world.runs)))  # always a newer one
        raise TokenRejected(401, token_sha256=token_sha256(bearer))

    outcome = world.run(world.job(always_refused))
    assert len(world.runs) == 2
    assert outcome.status is JobStatus.DEFERRED
    assert outcome.reason.endswith("and no other token to retry with")


def test_a_rejection_of_a_token_the_job_never_held_removes_nothing(world: World) -> None:
    token = app_token(3600)
    world.tokens.put_if_newer(INSTALLATION, token)

    def refused_elsewhere(ctx: JobContext) -> None:
        confluence(ctx).request()
        raise TokenRejected(401, token_sha256=token_sha256("a token of some other client"))

    outcome = world.run(world.job(refused_elsewhere))
    assert (outcome.status, outcome.waiting_for_token) == (JobStatus.DEFERRED, False)
    held = world.tokens.held(INSTALLATION)
    assert held is not None
    assert held.token == token
    assert len(world.runs) == 1


def test_a_rejection_that_names_no_token_removes_the_app_token_in_use(world: World) -> None:
    world.tokens.put_if_newer(INSTALLATION, app_token(3600))

    def refused(ctx: JobContext) -> None:
        confluence(ctx).request()
        raise TokenRejected(401)  # a custom client that does not say which token

    outcome = world.run(world.job(refused))
    assert (outcome.status, outcome.waiting_for_token) == (JobStatus.DEFERRED, True)
    assert world.tokens.held(INSTALLATION) is None


# -- what each failure becomes ------------------------------------------------------------------------
def test_a_permanent_failure_is_dead_with_its_reason(world: World) -> None:
    world.tokens.put_if_newer(INSTALLATION, app_token(3600))

    def gone(ctx: JobContext) -> None:
        raise PermanentFailure("page 42 no longer exists")

    outcome = world.run(world.job(gone))
    assert (outcome.status, outcome.reason) == (JobStatus.DEAD, "page 42 no longer exists")
    assert world.tokens.held(INSTALLATION) is not None  # a failure that is not the token's keeps it


def test_bad_arguments_are_dead_before_the_job_body_runs(world: World) -> None:
    world.tokens.put_if_newer(INSTALLATION, app_token(3600))
    name = world.job(one_request)
    request = JobRequest(job=name, installation_id=INSTALLATION, args={"unexpected": True})
    outcome = world.runner.run(request, receive_count=1, remaining_ms=lambda: 60_000)
    assert outcome.status is JobStatus.DEAD
    assert name in outcome.reason
    assert world.runs == []


@pytest.mark.usefixtures("nominal_jitter")
@pytest.mark.parametrize("delay_s", [0.0, 900.0, 1500.0])
def test_retry_later_is_deferred_for_at_least_its_delay(world: World, delay_s: float) -> None:
    world.tokens.put_if_newer(INSTALLATION, app_token(3600))

    def rate_limited(ctx: JobContext) -> None:
        raise RetryLater("Confluence rate limited the app", delay_s=delay_s)

    outcome = world.run(world.job(rate_limited))
    assert (outcome.status, outcome.reason, outcome.waiting_for_token) == (
        JobStatus.DEFERRED,
        "Confluence rate limited the app",
        False,
    )
    assert outcome.delay_s >= max(delay_s, runner_module.BASE_DEFER_S)


def test_retry_later_keeps_its_delay_within_the_jitter(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    # The lowest jitter: the delay may come up to JITTER early (see the report on deferral_delay).
    monkeypatch.setattr(runner_module, "random", SimpleNamespace(uniform=lambda low, high: low))
    world.tokens.put_if_newer(INSTALLATION, app_token(3600))

    def rate_limited(ctx: JobContext) -> None:
        raise RetryLater("slow down", delay_s=900)

    outcome = world.run(world.job(rate_limited))
    assert outcome.delay_s >= 900 * (1 - JITTER)


@pytest.mark.usefixtures("nominal_jitter")
def test_an_unexpected_exception_is_deferred_naming_its_type_and_never_its_message(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    world.tokens.put_if_newer(INSTALLATION, app_token(3600))
    secret = "eyJhbGciOi-a-token-quoted-by-a-bug"

    def buggy(ctx: JobContext) -> None:
        confluence(ctx).request()
        raise KeyError(secret)

    caplog.set_level(logging.DEBUG)
    outcome = world.run(world.job(buggy, "buggy-job"), receive_count=3)
    assert (outcome.status, outcome.waiting_for_token) == (JobStatus.DEFERRED, False)
    assert outcome.reason.startswith("job buggy-job raised KeyError at test_job_runner.py:")
    assert secret not in outcome.reason
    assert secret not in caplog.text
    assert outcome.delay_s == 4 * runner_module.BASE_DEFER_S  # the ordinary schedule for a third receive
    assert world.tokens.held(INSTALLATION) is not None


def test_an_uninstalled_installation_discards_the_job(world: World) -> None:
    world.tokens.put_if_newer(INSTALLATION, app_token(3600))
    world.installations.mark_uninstalled(INSTALLATION)
    outcome = world.run(world.job(one_request))
    assert outcome.status is JobStatus.DISCARDED
    assert world.runs == []


def test_an_installation_not_seen_yet_waits_for_its_first_token(frozen_clock: float) -> None:
    world = World()  # nothing recorded for the installation
    outcome = world.run(world.job(one_request))
    assert (outcome.status, outcome.waiting_for_token) == (JobStatus.DEFERRED, True)
    assert outcome.reason == "installation not seen yet"


def test_an_unknown_job_is_dead(world: World) -> None:
    world.tokens.put_if_newer(INSTALLATION, app_token(3600))
    world.job(one_request, "known-job")
    outcome = world.run("unknown-job")
    assert outcome.status is JobStatus.DEAD
    assert "unknown job 'unknown-job'" in outcome.reason


@pytest.mark.usefixtures("nominal_jitter")
def test_deferrals_grow_with_the_receive_count(world: World) -> None:
    name = world.job(one_request)  # no token stored: deferred each time
    delays = [world.run(name, receive_count=n).delay_s for n in (1, 2, 3, 10)]
    assert delays == [60, 120, 240, runner_module.MAX_DEFER_S]


# -- what the job gets --------------------------------------------------------------------------------
def test_a_job_writes_results_under_its_own_installation(world: World) -> None:
    world.tokens.put_if_newer(INSTALLATION, app_token(3600))

    def snapshot(ctx: JobContext) -> None:
        ctx.results.put("SNAPSHOT", "42", {"title": "Page 42"})
        assert ctx.results.get("SNAPSHOT", "42") == {"title": "Page 42"}

    assert world.run(world.job(snapshot)).status is JobStatus.DONE
    assert world.results.list(INSTALLATION, "SNAPSHOT") == [{"title": "Page 42"}]
    assert world.results.list("ari:cloud:ecosystem::installation/another", "SNAPSHOT") == []


def test_the_app_token_a_job_gets_is_the_lease_s(world: World) -> None:
    token = app_token(3600)
    world.tokens.put_if_newer(INSTALLATION, token)
    seen: list[str] = []

    def other_api(ctx: JobContext) -> None:
        assert ctx.app_token is not None
        seen.append(ctx.app_token())

    assert world.run(world.job(other_api)).status is JobStatus.DONE
    assert seen == [token]


# -- waiting: a spread schedule's slot, and the points budget -------------------------------------------
def run_at(world: World, job: str, not_before: float) -> Outcome:
    request = JobRequest(job=job, installation_id=INSTALLATION, not_before=not_before)
    return world.runner.run(request, receive_count=1, remaining_ms=lambda: 60_000)


def test_a_job_before_its_slot_waits_for_it_without_an_attempt(world: World, frozen_clock: float) -> None:
    world.tokens.put_if_newer(INSTALLATION, app_token(3600))
    job = world.job(one_request)
    early = run_at(world, job, clock.now() + 1800)
    assert (early.status, early.attempted, early.delay_s) == (JobStatus.DEFERRED, False, 1800)
    assert world.runs == []  # nothing ran, nothing was sent
    assert run_at(world, job, clock.now() - 5).status is JobStatus.DONE  # its slot has come


def test_a_slot_beyond_what_sqs_can_hold_back_is_refused_not_kept_until_it_vanishes(world: World) -> None:
    outcome = run_at(world, world.job(one_request), clock.now() + 13 * 3600)
    assert outcome.status is JobStatus.DEAD
    assert "12 h" in outcome.reason


def test_a_job_that_finds_the_budget_spent_waits_without_an_attempt(world: World) -> None:
    world.tokens.put_if_newer(INSTALLATION, app_token(3600))

    def spent(ctx: JobContext) -> JobResult:
        raise BudgetWait("background jobs spent this hour's share", resume_at=clock.now() + 1234.2, delay_s=1234.2)

    outcome = world.run(world.job(spent))
    assert (outcome.status, outcome.attempted, outcome.waiting_for_budget) == (JobStatus.DEFERRED, False, True)
    assert outcome.delay_s == 1235  # rounded up: never back before the slot
    assert not outcome.waiting_for_token
