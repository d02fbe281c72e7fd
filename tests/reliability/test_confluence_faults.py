"""Confluence faults, through the real worker, the real client and the Confluence emulator: timeouts,
429 storms (with and without Retry-After / X-RateLimit-Reset), 503s and other 5xx. Retries are
bounded, hints are honoured (clamped), nothing sleeps past the Lambda's remaining time, a job that
cannot finish now is deferred (its message stays in the queue), and in the end every job is done
exactly once and none is lost.

The client's sleeps are recorded instead of slept, and its timeouts are short: what is checked is
how many attempts were made and how long the client asked to wait, never how long anything took.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from forge_remote.confluence.client import ConfluenceClient
from forge_remote.jobs.contract import JobRequest
from tests.reliability.harness import installed_pages, queue_messages, settle
from tests.reliability.ledger import Ledger
from tests.support import LocalWorld

pytestmark = pytest.mark.reliability

MAX_ATTEMPTS = 4  # ConfluenceClient's default
READ_TIMEOUT_S = 0.3


class Recorder:
    """A client factory for the worker: real clients, short timeouts, sleeps recorded not slept."""

    def __init__(self) -> None:
        self.sleeps: list[float] = []

    def __call__(self, api_base_url: str, token: Callable[[], str], **kwargs: Any) -> ConfluenceClient:
        return ConfluenceClient(
            api_base_url, token, **kwargs, sleep=self.sleeps.append, timeout_s=(1.0, READ_TIMEOUT_S)
        )


@pytest.fixture
def recorder(local_world: LocalWorld) -> Recorder:
    """The world's worker makes its Confluence clients with this."""
    recorder = Recorder()
    local_world.worker.runner.client_factory = recorder
    return recorder


def queued_job(world: LocalWorld, ledger: Ledger) -> list[JobRequest]:
    """The world's site installed and one page-snapshot job request on the queue."""
    requests = installed_pages(world, 1, ledger)
    world.enqueue(*requests)
    return requests


def one_round(world: LocalWorld, expected: str, *, timeout_s: float = 120, why: str = "") -> None:
    """One invocation for a batch of one job, then the deferral delay passes: ``expected`` is what became
    of the job, ``"done"`` or ``"deferred"``."""
    done, failed = world.run_round(timeout_s=timeout_s)
    outcome = {(1, 0): "done", (0, 1): "deferred"}.get((len(done), len(failed)), f"{done} done, {failed} failed")
    assert outcome == expected, why


def test_429_storm_without_hints_backs_off_a_bounded_number_of_times_then_defers(
    local_world: LocalWorld, recorder: Recorder, ledger: Ledger
) -> None:
    requests = queued_job(local_world, ledger)
    local_world.confluence.fail_next(2 * MAX_ATTEMPTS, 429)  # no Retry-After, no X-RateLimit-Reset
    for round_ in (1, 2):
        one_round(local_world, "deferred", why=f"round {round_}: the job should have been deferred")
        assert len(local_world.searches()) == MAX_ATTEMPTS * round_  # bounded attempts per invocation
        assert len(queue_messages(local_world.stack, "JobsQueue")) == 1  # deferred, not dropped
    # Exponential backoff with full jitter: between 0 and 1, 2, 4 s; never more.
    caps = [1.0, 2.0, 4.0] * 2
    assert len(recorder.sleeps) == len(caps)
    assert all(0 <= s <= cap for s, cap in zip(recorder.sleeps, caps, strict=True))
    one_round(local_world, "done")  # the storm is over
    result = settle(local_world, requests, ledger)
    assert len(result["done"]) == 1
    assert queue_messages(local_world.stack, "JobsDeadLetterQueue") == []


@pytest.mark.parametrize(
    ("status", "hint", "expected_s"),
    [
        (429, {"retry_after": "7"}, 7.0),
        (503, {"retry_after": "3"}, 3.0),
        (429, {"retry_after": "Wed, 21 Oct 2015 07:28:00 GMT"}, None),  # a date in the past: backoff instead
    ],
    ids=["429 Retry-After seconds", "503 Retry-After seconds", "Retry-After date in the past"],
)
def test_retry_after_is_honoured_within_the_invocation(
    status: int,
    hint: dict[str, str],
    expected_s: float | None,
    local_world: LocalWorld,
    recorder: Recorder,
    ledger: Ledger,
) -> None:
    requests = queued_job(local_world, ledger)
    local_world.confluence.fail_next(2, status, **hint)
    one_round(local_world, "done")
    assert len(local_world.searches()) == 3
    if expected_s is None:
        assert all(0 <= s <= 2.0 for s in recorder.sleeps)
    else:
        assert recorder.sleeps == [expected_s, expected_s]
    settle(local_world, requests, ledger)


def test_ratelimit_reset_is_the_fallback_hint(local_world: LocalWorld, recorder: Recorder, ledger: Ledger) -> None:
    requests = queued_job(local_world, ledger)
    reset = (datetime.now(UTC) + timedelta(seconds=40)).isoformat(timespec="seconds")
    local_world.confluence.fail_next(1, 429, ratelimit_reset=reset)
    done, _ = local_world.run_round()
    assert len(done) == 1
    [slept] = recorder.sleeps
    assert 20 < slept <= 40  # "until the reset", read from the header (not a backoff of a few seconds)
    settle(local_world, requests, ledger)


@pytest.mark.parametrize(
    "hint",
    [{"retry_after": "999999"}, {"retry_after": "60"}],
    ids=["absurd Retry-After (clamped)", "Retry-After beyond the remaining time"],
)
def test_a_wait_that_does_not_fit_defers_the_job_instead_of_sleeping(
    hint: dict[str, str], local_world: LocalWorld, recorder: Recorder, ledger: Ledger
) -> None:
    requests = queued_job(local_world, ledger)
    local_world.confluence.fail_next(1, 429, **hint)
    one_round(local_world, "deferred", timeout_s=30)  # ~26 s of budget: less than 60 s, far less than days
    assert recorder.sleeps == []
    assert len(local_world.searches()) == 1
    assert len(queue_messages(local_world.stack, "JobsQueue")) == 1
    one_round(local_world, "done")
    settle(local_world, requests, ledger)


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_5xx_storm_is_retried_a_bounded_number_of_times_then_deferred(
    status: int, local_world: LocalWorld, recorder: Recorder, ledger: Ledger
) -> None:
    requests = queued_job(local_world, ledger)
    local_world.confluence.fail_next(MAX_ATTEMPTS, status)
    one_round(local_world, "deferred")
    assert len(local_world.searches()) == MAX_ATTEMPTS
    assert queue_messages(local_world.stack, "JobsDeadLetterQueue") == []  # a server error is not the job's fault
    one_round(local_world, "done")
    settle(local_world, requests, ledger)


def test_timeouts_are_retried_a_bounded_number_of_times_then_deferred(
    local_world: LocalWorld, recorder: Recorder, ledger: Ledger
) -> None:
    requests = queued_job(local_world, ledger)
    local_world.confluence.delay_s = READ_TIMEOUT_S * 3  # every answer comes after the client gave up
    try:
        one_round(local_world, "deferred")
    finally:
        local_world.confluence.delay_s = 0.0
    assert len(local_world.searches()) == MAX_ATTEMPTS
    assert len(recorder.sleeps) == MAX_ATTEMPTS - 1
    one_round(local_world, "done")
    settle(local_world, requests, ledger)


def test_a_storm_over_a_batch_loses_nothing_and_does_nothing_twice(
    local_world: LocalWorld, recorder: Recorder, ledger: Ledger
) -> None:
    requests = installed_pages(local_world, 8, ledger)
    local_world.enqueue(*requests)
    local_world.confluence.fail_next(9, 429)
    local_world.confluence.fail_next(5, 503, retry_after="1")
    local_world.confluence.fail_next(6, 500)
    local_world.confluence.fail_next(3, 429, ratelimit_reset="5")
    invocations = local_world.drain(rounds=12)
    assert queue_messages(local_world.stack, "JobsQueue") == []
    assert queue_messages(local_world.stack, "JobsDeadLetterQueue") == []
    result = settle(local_world, requests, ledger)
    assert sorted(result["done"]) == sorted(r.request_id for r in requests)
    assert sorted(local_world.snapshot_request_ids()) == sorted(r.request_id for r in requests)
    assert len(local_world.searches()) <= MAX_ATTEMPTS * len(requests) * invocations  # bounded, whatever happened
    assert all(s <= 30 for s in recorder.sleeps)  # the client's backoff cap
