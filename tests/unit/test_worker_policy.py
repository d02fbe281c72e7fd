"""The SQS worker's policy (``JobWorker``) on in-memory stores and a recording queue: what each outcome
does to the message, with no AWS at all."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

import pytest
from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

from forge_remote import clock
from forge_remote.errors import JobDeferred, PermanentFailure, RetryLater
from forge_remote.jobs.contract import JobContext, JobRegistry, JobRequest, JobResult
from forge_remote.jobs.runner import JobRunner, Outcome
from forge_remote.jobs.worker import MIN_REMAINING_MS, JobWorker
from forge_remote.storage.installations import InstallationFacts
from forge_remote.testing import MemoryInstallations, MemoryParkingLot, MemoryResults, MemoryTokenStore, app_token

INSTALLATION = "ari:cloud:ecosystem::installation/5e1f-worker-unit"
API_BASE = "https://api.atlassian.com/ex/confluence/cloud-9"
MAX_ATTEMPTS = 10
QUEUE_MAX = 30


class RecordingQueue:
    """The two SQS calls the policy makes, recorded."""

    def __init__(self) -> None:
        self.dead: list[dict[str, Any]] = []
        self.visibility: list[tuple[str, int]] = []

    def send_message(self, **kwargs: Any) -> dict[str, Any]:
        self.dead.append(kwargs)
        return {}

    def change_message_visibility(self, *, QueueUrl: str, ReceiptHandle: str, VisibilityTimeout: int) -> dict[str, Any]:  # noqa: N803 (boto3's names)
        self.visibility.append((ReceiptHandle, VisibilityTimeout))
        return {}


class RecordingActivity:
    def __init__(self) -> None:
        self.done: list[tuple[str, str]] = []
        self.dead: list[tuple[str, str, str]] = []

    def record_done(self, installation_id: str, job: str, summary: Mapping[str, Any]) -> None:
        self.done.append((installation_id, job))

    def record_dead(self, installation_id: str, request_id: str, job: str, reason: str) -> None:
        self.dead.append((installation_id, job, reason))


class RunDirectly:
    """``RunOnce`` without its records: these tests are about what follows a run, not twin deliveries."""

    def run(self, request_id: str, attempt: Callable[[], Outcome], lambda_context: Any = None) -> Outcome:
        return attempt()


class Context:
    def __init__(self, remaining_ms: int = 100_000) -> None:
        self.remaining_ms = remaining_ms

    def get_remaining_time_in_millis(self) -> int:
        return self.remaining_ms


def no_args(args: Mapping[str, Any]) -> None:
    return None


@pytest.fixture
def parts(frozen_clock: float) -> dict[str, Any]:
    installations = MemoryInstallations()
    assert installations.record_lifecycle(InstallationFacts(INSTALLATION, API_BASE, cloud_id="cloud-9"))
    tokens = MemoryTokenStore(installations)
    registry = JobRegistry()
    runner = JobRunner(
        registry=registry,
        tokens=tokens,
        installations=installations,
        results=MemoryResults(),
        allowed_api_hosts=("api.atlassian.com",),
        min_validity_s=600,
        client_factory=lambda *args, **kwargs: object(),
    )
    queue, activity, parking = RecordingQueue(), RecordingActivity(), MemoryParkingLot()
    seen: list[Outcome] = []
    worker = JobWorker(
        runner=runner,
        parking=parking,  # type: ignore[arg-type]
        activity=activity,  # type: ignore[arg-type]
        run_once=RunDirectly(),  # type: ignore[arg-type]
        queue_url="https://sqs.example/jobs",
        dlq_url="https://sqs.example/dlq",
        max_attempts=MAX_ATTEMPTS,
        queue_max_receives=QUEUE_MAX,
        logger=Logger(service="worker-unit"),
        metrics=Metrics(namespace="Unit"),
        observers=[lambda _request, outcome: seen.append(outcome)],
        sqs=queue,
    )
    return {
        "worker": worker,
        "registry": registry,
        "tokens": tokens,
        "queue": queue,
        "activity": activity,
        "parking": parking,
        "seen": seen,
    }


def record(body: str, receive_count: int = 1, first_receive_s: float | None = None) -> SQSRecord:
    first = clock.now() if first_receive_s is None else first_receive_s
    return SQSRecord(
        {
            "messageId": "m-1",
            "receiptHandle": "r-1",
            "body": body,
            "attributes": {
                "ApproximateReceiveCount": str(receive_count),
                "ApproximateFirstReceiveTimestamp": str(int(first * 1000)),
            },
        }
    )


def request_body(job: str = "unit-job") -> str:
    return json.dumps(JobRequest(job=job, installation_id=INSTALLATION).to_detail())


def register(parts: dict[str, Any], body: Callable[[JobContext], JobResult | None]) -> None:
    parts["registry"].job("unit-job", no_args)(lambda ctx, _args: body(ctx))


def test_a_done_job_is_acknowledged_and_its_run_recorded(parts: dict[str, Any]) -> None:
    parts["tokens"].put_if_newer(INSTALLATION, app_token(3600))
    register(parts, lambda ctx: JobResult({"n": 1}))
    parts["worker"].handle(record(request_body()), Context())
    assert parts["activity"].done == [(INSTALLATION, "unit-job")]
    assert parts["queue"].dead == []
    assert parts["queue"].visibility == []
    assert [o.status for o in parts["seen"]] == ["done"]


def test_a_permanent_failure_goes_to_the_dlq_now_with_its_reason(parts: dict[str, Any]) -> None:
    parts["tokens"].put_if_newer(INSTALLATION, app_token(3600))

    def fails(ctx: JobContext) -> None:
        raise PermanentFailure("the page is gone for good")

    register(parts, fails)
    parts["worker"].handle(record(request_body()), Context())
    [dead] = parts["queue"].dead
    assert dead["QueueUrl"] == "https://sqs.example/dlq"
    assert dead["MessageAttributes"]["reason"]["StringValue"] == "the page is gone for good"
    assert parts["activity"].dead == [(INSTALLATION, "unit-job", "the page is gone for good")]


def test_a_body_that_is_no_job_request_goes_to_the_dlq_without_running_anything(parts: dict[str, Any]) -> None:
    parts["worker"].handle(record("{not json"), Context())
    [dead] = parts["queue"].dead
    assert dead["MessageAttributes"]["reason"]["StringValue"] == "job request is not valid JSON"
    assert parts["activity"].dead == []
    assert parts["seen"] == []


def test_a_retry_later_keeps_the_message_for_its_delay_and_is_not_parked(parts: dict[str, Any]) -> None:
    parts["tokens"].put_if_newer(INSTALLATION, app_token(3600))

    def limited(ctx: JobContext) -> None:
        raise RetryLater("rate limited", delay_s=300)

    register(parts, limited)
    with pytest.raises(JobDeferred):
        parts["worker"].handle(record(request_body()), Context())
    [(handle, delay)] = parts["queue"].visibility
    assert handle == "r-1"
    assert delay >= 300 * 0.9
    assert parts["parking"].waiting(INSTALLATION) == 0
    assert parts["queue"].dead == []


def test_a_job_without_a_token_is_deferred_and_parked_for_the_next_delivery(parts: dict[str, Any]) -> None:
    register(parts, lambda ctx: None)
    with pytest.raises(JobDeferred):
        parts["worker"].handle(record(request_body()), Context())
    assert parts["parking"].waiting(INSTALLATION) == 1
    assert len(parts["queue"].visibility) == 1  # its delay; nothing stored to wake it at once


def test_a_record_without_its_first_receive_time_is_still_deferred_and_parked(parts: dict[str, Any]) -> None:
    # SQS always sends it to Lambda; a record without it (a replayed or hand-made event) must not make
    # the deferral itself raise, which would leave the job unparked and back only after its visibility.
    register(parts, lambda ctx: None)
    bare = record(request_body())
    del bare["attributes"]["ApproximateFirstReceiveTimestamp"]
    with pytest.raises(JobDeferred):
        parts["worker"].handle(bare, Context())
    assert parts["parking"].waiting(INSTALLATION) == 1
    assert len(parts["queue"].visibility) == 1


def test_an_unknown_exception_is_deferred_with_its_type_then_dead_after_the_schedule(parts: dict[str, Any]) -> None:
    parts["tokens"].put_if_newer(INSTALLATION, app_token(3600))

    def buggy(ctx: JobContext) -> None:
        raise KeyError("secret-looking message")

    register(parts, buggy)
    with pytest.raises(JobDeferred):
        parts["worker"].handle(record(request_body()), Context())
    assert parts["queue"].dead == []
    long_ago = clock.now() - 24 * 3600  # the schedule's time has passed since the first receive
    parts["worker"].handle(record(request_body(), receive_count=MAX_ATTEMPTS, first_receive_s=long_ago), Context())
    [dead] = parts["queue"].dead
    reason = dead["MessageAttributes"]["reason"]["StringValue"]
    assert reason.startswith("job unit-job raised KeyError at test_worker_policy.py:")
    assert reason.endswith(f"(gave up after {MAX_ATTEMPTS} attempts)")
    assert "secret-looking" not in reason


def test_too_little_time_defers_briefly_without_running_and_never_gives_up(parts: dict[str, Any]) -> None:
    ran: list[int] = []
    register(parts, lambda ctx: ran.append(1) or None)
    long_ago = clock.now() - 24 * 3600
    with pytest.raises(JobDeferred):
        parts["worker"].handle(
            record(request_body(), receive_count=MAX_ATTEMPTS + 5, first_receive_s=long_ago),
            Context(remaining_ms=MIN_REMAINING_MS - 1),
        )
    assert ran == []
    assert parts["queue"].dead == []
    assert parts["seen"][0].attempted is False


def test_at_the_queue_s_own_limit_a_deferred_job_is_dead_lettered_with_its_reason(parts: dict[str, Any]) -> None:
    register(parts, lambda ctx: None)  # no token: deferred
    parts["worker"].handle(record(request_body(), receive_count=QUEUE_MAX, first_receive_s=clock.now()), Context())
    [dead] = parts["queue"].dead
    assert f"(gave up after {QUEUE_MAX} attempts)" in dead["MessageAttributes"]["reason"]["StringValue"]
