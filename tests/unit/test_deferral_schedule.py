"""The deferral schedule (``jobs/runner.py``): how long a deferred job waits, and when the worker gives up on
it, whatever the receive count, the jitter or the wake-ups in between."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from forge_remote.jobs.runner import (
    BASE_DEFER_S,
    JITTER,
    MAX_DEFER_S,
    deferral_delay,
    deferral_schedule_s,
    gives_up,
)

SQS_MAX_VISIBILITY_S = 43200


def scheduled(receive_count: int) -> int:
    """The un-jittered delay: a minute, doubling per receive, capped at half an hour."""
    return min(BASE_DEFER_S * 2 ** max(receive_count - 1, 0), MAX_DEFER_S)


class Fixed(random.Random):
    """An rng whose jitter is always ``factor``."""

    def __init__(self, factor: float) -> None:
        super().__init__(0)
        self.factor = factor

    def uniform(self, a: float, b: float) -> float:
        return self.factor


@given(receive_count=st.integers(-5, 200), seed=st.integers(0, 2**32))
def test_a_delay_is_the_schedule_jittered_by_at_most_ten_percent(receive_count: int, seed: int) -> None:
    delay = deferral_delay(receive_count, rng=random.Random(seed))
    expected = scheduled(receive_count)
    assert int(expected * (1 - JITTER)) <= delay <= expected * (1 + JITTER)


@pytest.mark.parametrize("factor", [1 - JITTER, 1.0, 1 + JITTER])
def test_at_a_fixed_jitter_delays_double_until_the_cap(factor: float) -> None:
    delays = [deferral_delay(n, rng=Fixed(factor)) for n in range(1, 12)]
    assert delays == [int(scheduled(n) * factor) for n in range(1, 12)]
    assert delays[:5] == [int(60 * 2**k * factor) for k in range(5)]  # 1, 2, 4, 8, 16 minutes
    assert delays[-1] == int(MAX_DEFER_S * factor)


@given(at_least=st.floats(0, 10**7), receive_count=st.integers(1, 30))
def test_a_requested_delay_is_kept_up_to_the_cap_and_sqs_limit(at_least: float, receive_count: int) -> None:
    delay = deferral_delay(receive_count, at_least=at_least, rng=Fixed(1.0))
    assert delay == int(max(scheduled(receive_count), min(at_least, MAX_DEFER_S)))
    assert delay <= SQS_MAX_VISIBILITY_S


def test_the_schedule_is_the_sum_of_the_shortest_delays() -> None:
    assert deferral_schedule_s(1) == 0
    assert deferral_schedule_s(2) == pytest.approx(BASE_DEFER_S * (1 - JITTER))
    for attempts in range(2, 15):
        lowest = sum(deferral_delay(n, rng=Fixed(1 - JITTER)) for n in range(1, attempts))
        assert deferral_schedule_s(attempts) == pytest.approx(lowest)
        assert deferral_schedule_s(attempts + 1) > deferral_schedule_s(attempts)


@given(
    receive_count=st.integers(1, 100),
    max_attempts=st.integers(1, 30),
    extra=st.integers(0, 50),
    waited_fraction=st.floats(0, 0.999),
)
def test_a_job_is_never_given_up_before_the_schedule_has_passed(
    receive_count: int, max_attempts: int, extra: int, waited_fraction: float
) -> None:
    queue_max = max_attempts + extra + 1
    if receive_count >= queue_max:
        receive_count = queue_max - 1  # the queue's own limit is another rule
    waited = deferral_schedule_s(max_attempts) * waited_fraction
    if deferral_schedule_s(max_attempts) > 0:
        assert not gives_up(
            receive_count=receive_count,
            waited_s=waited,
            max_attempts=max_attempts,
            queue_max_receives=queue_max,
            attempted=True,
        )


def test_giving_up_needs_the_attempts_and_the_time() -> None:
    schedule = deferral_schedule_s(10)

    def decide(receive_count: int, waited_s: float | None, *, attempted: bool = True) -> bool:
        return gives_up(
            receive_count=receive_count,
            waited_s=waited_s,
            max_attempts=10,
            queue_max_receives=30,
            attempted=attempted,
        )

    assert decide(9, schedule * 10) is False  # the time, not yet the attempts
    assert decide(10, schedule - 1) is False  # the attempts came sooner (wake-ups): not yet the time
    assert decide(10, schedule) is True
    assert decide(10, None) is True  # first receive unknown: the count decides
    assert decide(25, schedule * 10, attempted=False) is False  # a receive that ran nothing never counts


@pytest.mark.parametrize("attempted", [True, False])
def test_at_the_queue_limit_the_worker_gives_up_itself(attempted: bool) -> None:
    # Otherwise SQS would move the message to the DLQ on its next receive, without a reason.
    assert gives_up(receive_count=30, waited_s=0, max_attempts=10, queue_max_receives=30, attempted=attempted)
    assert not gives_up(receive_count=29, waited_s=0, max_attempts=10, queue_max_receives=30, attempted=attempted)
