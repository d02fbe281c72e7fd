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
from types import ModuleType
from typing import Any

import pytest

from forge_remote.confluence import ConfluenceClient
from forge_remote.jobs import JobRequest
from local.confluence_emulator import ConfluenceEmulator
from local.forge_emulator import ForgeEmulator, Site
from local.lambda_context import LocalLambdaContext
from local.stack import LocalStack
from tests.conftest import Gateway
from tests.reliability.harness import account_jobs, queue_messages, snapshot_request_ids
from tests.reliability.ledger import Ledger
from tests.test_worker import enqueue, install, make_visible, snapshot_request, sqs_event

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
def recorder(worker: ModuleType) -> Recorder:
    recorder = Recorder()
    worker.runner.client_factory = recorder
    return recorder


def pages(
    triggers: Gateway, forge: ForgeEmulator, confluence: ConfluenceEmulator, site: Site, ledger: Ledger, count: int
) -> list[JobRequest]:
    token = ledger.secret(install(triggers, forge, site))
    assert len(token) > 450  # a real RS256 app token: the secrecy scan must see secrets of real size
    confluence.add_space("ENG", "Engineering")
    return [snapshot_request(site, str(confluence.add_page("ENG", f"Page {i}")["id"])) for i in range(count)]


def run_once(worker: ModuleType, stack: LocalStack, *, timeout_s: float = 120) -> tuple[list[str], list[str]]:
    """One invocation as the event source mapping makes it: (succeeded, failed) message ids."""
    import boto3

    batch = sqs_event(stack)
    if not batch["Records"]:
        return [], []
    response = worker.lambda_handler(batch, LocalLambdaContext(function_name="worker", timeout_s=timeout_s))
    failed = {f["itemIdentifier"] for f in response["batchItemFailures"]}
    sqs = boto3.client("sqs")
    for record in batch["Records"]:
        if record["messageId"] not in failed:
            sqs.delete_message(QueueUrl=stack.physical["JobsQueue"], ReceiptHandle=record["receiptHandle"])
    make_visible(stack, {"Records": [r for r in batch["Records"] if r["messageId"] in failed]})  # time passes
    return [r["messageId"] for r in batch["Records"] if r["messageId"] not in failed], sorted(failed)


def searches(confluence: ConfluenceEmulator) -> int:
    return sum(1 for seen in confluence.requests_seen if seen[1].endswith("/rest/api/content/search"))


def settle(stack: LocalStack, requests: list[JobRequest], site: Site, ledger: Ledger) -> dict[str, list[str]]:
    ledger.tried += len(requests)
    result = account_jobs(stack, requests, set(snapshot_request_ids(stack, site.installation_id)))
    assert result["lost"] == []
    return result


def test_429_storm_without_hints_backs_off_a_bounded_number_of_times_then_defers(
    triggers: Gateway,
    worker: ModuleType,
    forge: ForgeEmulator,
    confluence: ConfluenceEmulator,
    confluence_site: Site,
    stack: LocalStack,
    recorder: Recorder,
    ledger: Ledger,
) -> None:
    requests = pages(triggers, forge, confluence, confluence_site, ledger, 1)
    enqueue(stack, *requests)
    confluence.fail_next(2 * MAX_ATTEMPTS, 429)  # no Retry-After, no X-RateLimit-Reset
    for round_ in (1, 2):
        done, failed = run_once(worker, stack)
        assert (done, len(failed)) == ([], 1), f"round {round_}: the job should have been deferred"
        assert searches(confluence) == MAX_ATTEMPTS * round_  # bounded attempts per invocation
        assert len(queue_messages(stack, "JobsQueue")) == 1  # deferred, not dropped
    # Exponential backoff with full jitter: between 0 and 1, 2, 4 s; never more.
    caps = [1.0, 2.0, 4.0] * 2
    assert len(recorder.sleeps) == len(caps)
    assert all(0 <= s <= cap for s, cap in zip(recorder.sleeps, caps, strict=True))
    done, failed = run_once(worker, stack)  # the storm is over
    assert (len(done), failed) == (1, [])
    result = settle(stack, requests, confluence_site, ledger)
    assert len(result["done"]) == 1
    assert queue_messages(stack, "JobsDeadLetterQueue") == []


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
    triggers: Gateway,
    worker: ModuleType,
    forge: ForgeEmulator,
    confluence: ConfluenceEmulator,
    confluence_site: Site,
    stack: LocalStack,
    recorder: Recorder,
    ledger: Ledger,
) -> None:
    requests = pages(triggers, forge, confluence, confluence_site, ledger, 1)
    enqueue(stack, *requests)
    confluence.fail_next(2, status, **hint)
    done, failed = run_once(worker, stack)
    assert (len(done), failed) == (1, [])
    assert searches(confluence) == 3
    if expected_s is None:
        assert all(0 <= s <= 2.0 for s in recorder.sleeps)
    else:
        assert recorder.sleeps == [expected_s, expected_s]
    settle(stack, requests, confluence_site, ledger)


def test_ratelimit_reset_is_the_fallback_hint(
    triggers: Gateway,
    worker: ModuleType,
    forge: ForgeEmulator,
    confluence: ConfluenceEmulator,
    confluence_site: Site,
    stack: LocalStack,
    recorder: Recorder,
    ledger: Ledger,
) -> None:
    requests = pages(triggers, forge, confluence, confluence_site, ledger, 1)
    enqueue(stack, *requests)
    reset = (datetime.now(UTC) + timedelta(seconds=40)).isoformat(timespec="seconds")
    confluence.fail_next(1, 429, ratelimit_reset=reset)
    done, _ = run_once(worker, stack)
    assert len(done) == 1
    [slept] = recorder.sleeps
    assert 20 < slept <= 40  # "until the reset", read from the header (not a backoff of a few seconds)
    settle(stack, requests, confluence_site, ledger)


@pytest.mark.parametrize(
    "hint",
    [{"retry_after": "999999"}, {"retry_after": "60"}],
    ids=["absurd Retry-After (clamped)", "Retry-After beyond the remaining time"],
)
def test_a_wait_that_does_not_fit_defers_the_job_instead_of_sleeping(
    hint: dict[str, str],
    triggers: Gateway,
    worker: ModuleType,
    forge: ForgeEmulator,
    confluence: ConfluenceEmulator,
    confluence_site: Site,
    stack: LocalStack,
    recorder: Recorder,
    ledger: Ledger,
) -> None:
    requests = pages(triggers, forge, confluence, confluence_site, ledger, 1)
    enqueue(stack, *requests)
    confluence.fail_next(1, 429, **hint)
    done, failed = run_once(worker, stack, timeout_s=30)  # ~26 s of budget: less than 60 s, far less than days
    assert (done, len(failed)) == ([], 1)
    assert recorder.sleeps == []
    assert searches(confluence) == 1
    assert len(queue_messages(stack, "JobsQueue")) == 1
    done, failed = run_once(worker, stack)
    assert (len(done), failed) == (1, [])
    settle(stack, requests, confluence_site, ledger)


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_5xx_storm_is_retried_a_bounded_number_of_times_then_deferred(
    status: int,
    triggers: Gateway,
    worker: ModuleType,
    forge: ForgeEmulator,
    confluence: ConfluenceEmulator,
    confluence_site: Site,
    stack: LocalStack,
    recorder: Recorder,
    ledger: Ledger,
) -> None:
    requests = pages(triggers, forge, confluence, confluence_site, ledger, 1)
    enqueue(stack, *requests)
    confluence.fail_next(MAX_ATTEMPTS, status)
    done, failed = run_once(worker, stack)
    assert (done, len(failed)) == ([], 1)
    assert searches(confluence) == MAX_ATTEMPTS
    assert queue_messages(stack, "JobsDeadLetterQueue") == []  # a server error is not the job's fault
    done, failed = run_once(worker, stack)
    assert (len(done), failed) == (1, [])
    settle(stack, requests, confluence_site, ledger)


def test_timeouts_are_retried_a_bounded_number_of_times_then_deferred(
    triggers: Gateway,
    worker: ModuleType,
    forge: ForgeEmulator,
    confluence: ConfluenceEmulator,
    confluence_site: Site,
    stack: LocalStack,
    recorder: Recorder,
    ledger: Ledger,
) -> None:
    requests = pages(triggers, forge, confluence, confluence_site, ledger, 1)
    enqueue(stack, *requests)
    confluence.delay_s = READ_TIMEOUT_S * 3  # every answer comes after the client gave up
    try:
        done, failed = run_once(worker, stack)
    finally:
        confluence.delay_s = 0.0
    assert (done, len(failed)) == ([], 1)
    assert searches(confluence) == MAX_ATTEMPTS
    assert len(recorder.sleeps) == MAX_ATTEMPTS - 1
    done, failed = run_once(worker, stack)
    assert (len(done), failed) == (1, [])
    settle(stack, requests, confluence_site, ledger)


def test_a_storm_over_a_batch_loses_nothing_and_does_nothing_twice(
    triggers: Gateway,
    worker: ModuleType,
    forge: ForgeEmulator,
    confluence: ConfluenceEmulator,
    confluence_site: Site,
    stack: LocalStack,
    recorder: Recorder,
    ledger: Ledger,
) -> None:
    requests = pages(triggers, forge, confluence, confluence_site, ledger, 8)
    enqueue(stack, *requests)
    confluence.fail_next(9, 429)
    confluence.fail_next(5, 503, retry_after="1")
    confluence.fail_next(6, 500)
    confluence.fail_next(3, 429, ratelimit_reset="5")
    invocations = 0
    for _ in range(12):
        done, failed = run_once(worker, stack)
        if not done and not failed:
            break
        invocations += 1
    assert queue_messages(stack, "JobsQueue") == []
    assert queue_messages(stack, "JobsDeadLetterQueue") == []
    result = settle(stack, requests, confluence_site, ledger)
    assert sorted(result["done"]) == sorted(r.request_id for r in requests)
    assert sorted(snapshot_request_ids(stack, confluence_site.installation_id)) == sorted(
        r.request_id for r in requests
    )
    assert searches(confluence) <= MAX_ATTEMPTS * len(requests) * invocations  # bounded, whatever happened
    assert all(s <= 30 for s in recorder.sleeps)  # the client's backoff cap
