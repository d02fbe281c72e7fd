"""The Confluence worker: job requests from SQS, run with a token that is still valid.

Partial batch failures (Powertools batch processor): a deferred job is made visible again after a
growing delay and reported failed, so SQS counts the receive and, past the redrive limit, moves it
to the DLQ; a request that can never succeed goes to the DLQ at once; the rest of the batch is
unaffected either way. A job deferred for lack of a token is also parked, so the next token delivery
wakes it (``token_wakeup``); from its second delivery on, a request id runs to the end at most once
(``RunOnce``): a wake-up and the delay's own redelivery can then race.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext
from confluence_jobs import registry

from forge_remote import aws, clock
from forge_remote.config import Settings
from forge_remote.errors import BadJobRequest, JobDeferred
from forge_remote.jobs.activity import JobActivity
from forge_remote.jobs.contract import JobRequest
from forge_remote.jobs.parking import ParkingLot, wake_parked
from forge_remote.jobs.run_once import RunOnce
from forge_remote.jobs.runner import JobRunner, JobStatus, Outcome, gives_up
from forge_remote.storage.installations import InstallationRegistry
from forge_remote.storage.results import ResultStore
from forge_remote.telemetry.logs import publishing_recorded_metrics, use_function_logger
from forge_remote.tokens.store import TokenStore

logger = Logger()
use_function_logger(logger)
metrics = Metrics()
# A batch of only deferred jobs is a normal answer, not a Lambda error (that would page someone).
processor = BatchProcessor(event_type=EventType.SQS, raise_on_entire_batch_failure=False)
settings = Settings.from_env()
QUEUE_URL = settings.required("jobs_queue_url")
DLQ_URL = settings.required("jobs_dlq_url")
MIN_REMAINING_MS = 15_000  # don't start a job that cannot finish a request before the timeout
RESTART_DELAY_S = 5  # such a job is picked up again almost at once, by a fresh invocation

_dynamodb = aws.dynamodb()
runner = JobRunner(
    registry=registry,
    tokens=TokenStore(_dynamodb, settings.tokens_table),
    installations=InstallationRegistry(_dynamodb, settings.app_table),
    results=ResultStore(_dynamodb, settings.app_table),
    allowed_api_hosts=settings.allowed_api_hosts,
    min_validity_s=settings.token_min_validity_s,
    graphql_url=settings.forge_graphql_url,
    offline_token_context_id=settings.offline_token_context_id,
)
parking = ParkingLot(_dynamodb, settings.app_table)
activity = JobActivity(_dynamodb, settings.app_table)
run_once = RunOnce(settings.app_table)


def _dead_letter(record: SQSRecord, reason: str, request: JobRequest | None = None) -> None:
    aws.sqs().send_message(
        QueueUrl=DLQ_URL,
        MessageBody=record.body,
        MessageAttributes={
            "reason": {"DataType": "String", "StringValue": reason[:500]},
            "sourceMessageId": {"DataType": "String", "StringValue": record.message_id},
        },
    )
    if request is not None:  # for the installation's status page; the DLQ cannot be read per installation
        activity.record_dead(request.installation_id, request.request_id, request.job, reason)
    metrics.add_metric(name="JobsDeadLettered", unit=MetricUnit.Count, value=1)
    logger.error("job request sent to the DLQ", extra={"reason": reason, "message_id": record.message_id})


def _defer(record: SQSRecord, request: JobRequest, outcome: Outcome) -> None:
    """Keep the message, visible again after the delay; the batch processor reports it failed.

    A job waiting for a token is also parked, so the next token delivery wakes it long before the
    delay ends. A token stored between this job's check and its parking would wake nobody: so once
    parked, the store is looked at again, and a usable token wakes the job at once.
    """
    aws.sqs().change_message_visibility(
        QueueUrl=QUEUE_URL,
        ReceiptHandle=record.receipt_handle,
        VisibilityTimeout=outcome.delay_s,
    )
    metrics.add_metric(name="JobsDeferred", unit=MetricUnit.Count, value=1)
    logger.warning("job deferred", extra={"reason": outcome.reason, "delay_s": outcome.delay_s})
    if outcome.waiting_for_token:
        parking.park(
            request.installation_id,
            request.request_id,
            job=request.job,
            receipt_handle=record.receipt_handle,
            retry_at=clock.now() + outcome.delay_s,
        )
        metrics.add_metric(name="JobsParked", unit=MetricUnit.Count, value=1)
        if runner.token_wakes_jobs(request.installation_id):
            woken = wake_parked(parking, aws.sqs(), QUEUE_URL, request.installation_id, request_id=request.request_id)
            metrics.add_metric(name="JobsWoken", unit=MetricUnit.Count, value=len(woken.woken))
    raise JobDeferred(outcome.reason, outcome.delay_s)


def _run(request: JobRequest, receive_count: int, lambda_context: LambdaContext) -> Outcome:
    if lambda_context.get_remaining_time_in_millis() < MIN_REMAINING_MS:
        return Outcome(JobStatus.DEFERRED, "too little time left in this invocation", RESTART_DELAY_S, attempted=False)

    def attempt() -> Outcome:
        return runner.run(
            request, receive_count=receive_count, remaining_ms=lambda_context.get_remaining_time_in_millis
        )

    if receive_count == 1:
        # A first delivery was never parked, so no wake-up can race it: no run-once records to write.
        return attempt()
    parking.unpark(request.installation_id, request.request_id)  # back by its delay, or woken: not waiting
    return run_once.run(request.request_id, attempt, lambda_context)


def _waited_s(record: SQSRecord) -> float | None:
    """Seconds since the message's first receive, on the stack's clock (None if SQS did not say)."""
    first_ms = record.attributes.approximate_first_receive_timestamp
    try:
        return clock.now() - int(first_ms) / 1000
    except (TypeError, ValueError):
        return None


def record_handler(record: SQSRecord, lambda_context: LambdaContext) -> None:
    """One job request. Returning marks the record done; raising ``JobDeferred`` keeps it queued."""
    receive_count = int(record.attributes.approximate_receive_count or 1)
    try:
        request = JobRequest.from_message_body(record.body)
    except BadJobRequest as exc:
        _dead_letter(record, exc.reason)
        return
    logger.append_keys(job=request.job, installation_id=request.installation_id, request_id=request.request_id)
    try:
        outcome = _run(request, receive_count, lambda_context)
        match outcome.status:
            case JobStatus.DEFERRED if gives_up(
                receive_count=receive_count,
                waited_s=_waited_s(record),
                max_attempts=settings.job_max_receives,
                queue_max_receives=settings.job_queue_max_receives,
                attempted=outcome.attempted,
            ):
                # Said now, with the reason: the queue's redrive would move it without a word.
                _dead_letter(record, f"{outcome.reason} (gave up after {receive_count} attempts)", request)
            case JobStatus.DEFERRED:
                _defer(record, request, outcome)
            case JobStatus.DEAD:
                _dead_letter(record, outcome.reason, request)
            case JobStatus.DISCARDED:
                metrics.add_metric(name="JobsDiscarded", unit=MetricUnit.Count, value=1)
                logger.info("job discarded", extra={"reason": outcome.reason})
            case JobStatus.DONE if outcome.repeated:
                metrics.add_metric(name="JobsRepeatedDeliveries", unit=MetricUnit.Count, value=1)
                logger.info("job already done; repeated delivery acknowledged", extra={"receive_count": receive_count})
            case JobStatus.DONE:
                activity.record_done(request.installation_id, request.job, outcome.summary)
                metrics.add_metric(name="JobsDone", unit=MetricUnit.Count, value=1)
                logger.info("job done", extra={"summary": outcome.summary, "receive_count": receive_count})
    finally:
        logger.remove_keys(["job", "installation_id", "request_id"])


@logger.inject_lambda_context
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    with publishing_recorded_metrics(metrics):
        response = process_partial_response(
            event=event, record_handler=record_handler, processor=processor, context=context
        )
    return dict(response)
