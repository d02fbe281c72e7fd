"""The SQS worker's policy: what happens to a job request on each receive, and the handler that applies it.

``JobRunner`` decides an ``Outcome`` (done, deferred, dead, discarded); this module acts on it, per
record of a Powertools ``BatchProcessor`` batch (partial batch failures):

| outcome | what the worker does |
| --- | --- |
| done | acknowledged; the job's last run is recorded for the status page |
| done before (a repeated delivery) | acknowledged without running |
| discarded (installation uninstalled) | acknowledged, nothing runs |
| deferred | kept: visible again after the growing delay, reported failed so SQS counts the receive |
| deferred for want of an app token | as deferred, and parked: the next token delivery wakes it |
| deferred, attempts used up | to the DLQ now, with the reason and "gave up after N attempts" |
| waiting: its slot, or points (share spent, a quota 429) | kept, back at its slot or the reset; not an attempt |
| dead (``PermanentFailure``, unknown job, bad arguments) | to the DLQ now, with the reason |
| a body that is not a job request | to the DLQ now, with the reason |

The runner turns every exception of a job into one of these (``RetryLater`` and any exception it does
not know are deferred; ``PermanentFailure`` is dead). Only a failure of the worker's own AWS calls
outside the job escapes (reading the installation, unparking, invalidating a refused token, deferring,
parking, the DLQ): the record is reported failed and SQS brings it back after the queue's visibility
timeout, counted towards the queue's redrive limit. docs/architecture.md has every case.

From its second delivery on, a request id runs to the end at most once (``RunOnce``): a wake-up and
the delay's own redelivery can then race.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from forge_remote import aws, clock
from forge_remote.errors import BadJobRequest, JobDeferred
from forge_remote.handler import LambdaHandler, batch_handler, import_modules
from forge_remote.jobs.contract import JOBS, JobRegistry, JobRequest
from forge_remote.jobs.runner import JobRunner, JobStatus, Outcome, gives_up

if TYPE_CHECKING:
    from aws_lambda_powertools import Logger, Metrics
    from aws_lambda_powertools.utilities.batch import BatchProcessor
    from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
    from aws_lambda_powertools.utilities.typing import LambdaContext

    from forge_remote.jobs.activity import JobActivity
    from forge_remote.jobs.run_once import RunOnce
    from forge_remote.storage.interfaces import ParkedJobs

MIN_REMAINING_MS = 15_000  # don't start a job that cannot finish a request before the timeout
RESTART_DELAY_S = 5  # such a job is picked up again almost at once, by a fresh invocation
REASON_CHARS = 500  # an SQS message attribute is small; a reason is one line

OutcomeObserver = Callable[[JobRequest, Outcome], None]


def import_jobs(package: str) -> tuple[str, ...]:
    """Import every module of ``package``: each registers the jobs it decorates with ``@job``."""
    return tuple(module.__name__.rsplit(".", 1)[1] for module in import_modules(package))


@dataclass
class JobWorker:
    """One container's worker: the runner, the stores the policy writes, and the queues."""

    runner: JobRunner
    parking: ParkedJobs
    activity: JobActivity
    run_once: RunOnce
    queue_url: str
    dlq_url: str
    max_attempts: int
    queue_max_receives: int
    logger: Logger
    metrics: Metrics
    # Called with every outcome the runner decides (the local stack's journal): never changes it.
    observers: list[OutcomeObserver] = field(default_factory=list)
    sqs: Any = None  # None: the container's client (aws.sqs()); a test gives its own

    def _queue(self) -> Any:
        return self.sqs if self.sqs is not None else aws.sqs()

    def handle(self, record: SQSRecord, lambda_context: LambdaContext) -> None:
        """One job request. Returning marks the record done; raising ``JobDeferred`` keeps it queued."""
        receive_count = int(record.attributes.approximate_receive_count or 1)
        try:
            request = JobRequest.from_message_body(record.body)
        except BadJobRequest as exc:
            self._dead_letter(record, exc.reason)
            return
        self.logger.append_keys(job=request.job, installation_id=request.installation_id, request_id=request.request_id)
        try:
            outcome = self._run(request, receive_count, lambda_context)
            for observe in self.observers:
                observe(request, outcome)
            self._act(record, request, outcome, receive_count)
        finally:
            self.logger.remove_keys(["job", "installation_id", "request_id"])

    def _act(self, record: SQSRecord, request: JobRequest, outcome: Outcome, receive_count: int) -> None:
        match outcome.status:
            case JobStatus.DEFERRED if gives_up(
                receive_count=receive_count,
                waited_s=_waited_s(record),
                max_attempts=self.max_attempts,
                queue_max_receives=self.queue_max_receives,
                attempted=outcome.attempted,
            ):
                # Said now, with the reason: the queue's redrive would move it without a word.
                self._dead_letter(record, f"{outcome.reason} (gave up after {receive_count} attempts)", request)
            case JobStatus.DEFERRED:
                if outcome.waiting_for_budget:
                    self._count("JobsWaitingForBudget")
                self._defer(record, request, outcome)
            case JobStatus.DEAD:
                self._dead_letter(record, outcome.reason, request)
            case JobStatus.DISCARDED:
                self._count("JobsDiscarded")
                self.logger.info("job discarded", extra={"reason": outcome.reason})
            case JobStatus.DONE if outcome.repeated:
                self._count("JobsRepeatedDeliveries")
                self.logger.info(
                    "job already done; repeated delivery acknowledged", extra={"receive_count": receive_count}
                )
            case JobStatus.DONE:
                self.activity.record_done(request.installation_id, request.job, outcome.summary)
                self._count("JobsDone")
                self.logger.info("job done", extra={"summary": outcome.summary, "receive_count": receive_count})

    def _run(self, request: JobRequest, receive_count: int, lambda_context: LambdaContext) -> Outcome:
        if lambda_context.get_remaining_time_in_millis() < MIN_REMAINING_MS:
            return Outcome(
                JobStatus.DEFERRED, "too little time left in this invocation", RESTART_DELAY_S, attempted=False
            )

        def attempt() -> Outcome:
            return self.runner.run(
                request, receive_count=receive_count, remaining_ms=lambda_context.get_remaining_time_in_millis
            )

        if receive_count == 1:
            # A first delivery was never parked, so no wake-up can race it: no run-once records to write.
            return attempt()
        self.parking.unpark(request.installation_id, request.request_id)  # back by its delay, or woken
        return self.run_once.run(request.request_id, attempt, lambda_context)

    def _dead_letter(self, record: SQSRecord, reason: str, request: JobRequest | None = None) -> None:
        self._queue().send_message(
            QueueUrl=self.dlq_url,
            MessageBody=record.body,
            MessageAttributes={
                "reason": {"DataType": "String", "StringValue": reason[:REASON_CHARS]},
                "sourceMessageId": {"DataType": "String", "StringValue": record.message_id},
            },
        )
        if request is not None:  # for the installation's status page; the DLQ cannot be read per installation
            self.activity.record_dead(request.installation_id, request.request_id, request.job, reason)
        self._count("JobsDeadLettered")
        self.logger.error("job request sent to the DLQ", extra={"reason": reason, "message_id": record.message_id})

    def _defer(self, record: SQSRecord, request: JobRequest, outcome: Outcome) -> None:
        """Keep the message, visible again after the delay; the batch processor reports it failed.

        A job waiting for a token is also parked, so the next token delivery wakes it long before the
        delay ends. A token stored between this job's check and its parking would wake nobody: so once
        parked, the store is looked at again, and a usable token wakes the job at once.
        """
        from forge_remote.jobs.parking import wake_parked

        self._queue().change_message_visibility(
            QueueUrl=self.queue_url, ReceiptHandle=record.receipt_handle, VisibilityTimeout=outcome.delay_s
        )
        self._count("JobsDeferred")
        self.logger.warning("job deferred", extra={"reason": outcome.reason, "delay_s": outcome.delay_s})
        if outcome.waiting_for_token:
            self.parking.park(
                request.installation_id,
                request.request_id,
                job=request.job,
                receipt_handle=record.receipt_handle,
                retry_at=clock.now() + outcome.delay_s,
            )
            self._count("JobsParked")
            if self.runner.token_wakes_jobs(request.installation_id):
                woken = wake_parked(
                    self.parking, self._queue(), self.queue_url, request.installation_id, request_id=request.request_id
                )
                self._count("JobsWoken", len(woken.woken))
        raise JobDeferred(outcome.reason, outcome.delay_s)

    def _count(self, name: str, value: int = 1) -> None:
        from aws_lambda_powertools.metrics import MetricUnit

        self.metrics.add_metric(name=name, unit=MetricUnit.Count, value=value)


def _waited_s(record: SQSRecord) -> float | None:
    """Seconds since the message's first receive, on the stack's clock (None if SQS did not say)."""
    # Read with .get: Powertools' property raises KeyError when the attribute is absent.
    first_ms = record.attributes.get("ApproximateFirstReceiveTimestamp")
    if first_ms is None:
        return None
    try:
        return clock.now() - int(first_ms) / 1000
    except (TypeError, ValueError):
        return None


class WorkerHandler(LambdaHandler):
    """The worker function's Lambda handler: ``lambda_handler = worker_handler(jobs="my_jobs")``."""

    def __init__(self, worker: JobWorker, processor: BatchProcessor) -> None:
        self.worker = worker
        self.processor = processor
        super().__init__(batch_handler(worker.logger, worker.metrics, processor, worker.handle))

    @property
    def runner(self) -> JobRunner:
        return self.worker.runner

    @property
    def parking(self) -> ParkedJobs:
        return self.worker.parking


def worker_handler(jobs: str, *, registry: JobRegistry = JOBS) -> WorkerHandler:
    """The worker's Lambda handler, built once per container from the environment.

    ``jobs`` names the app's package of job modules (imported here, so each ``@job`` registers).
    Settings are read and checked now (a missing queue URL fails the cold start, not a job).
    """
    from aws_lambda_powertools import Logger, Metrics
    from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType

    from forge_remote.jobs.run_once import RunOnce
    from forge_remote.telemetry.logs import use_function_logger
    from forge_remote.wiring import Wiring

    import_jobs(jobs)
    logger = Logger()
    use_function_logger(logger)
    wiring = Wiring.from_env()
    settings = wiring.settings
    runner = JobRunner(
        registry=registry,
        tokens=wiring.tokens,
        installations=wiring.installations,
        results=wiring.results,
        allowed_api_hosts=settings.allowed_api_hosts,
        min_validity_s=settings.token_min_validity_s,
        graphql_url=settings.forge_graphql_url,
        offline_token_context_id=settings.offline_token_context_id,
        budget=wiring.budget,  # read and checked now: a bad share fails the cold start
    )
    worker = JobWorker(
        runner=runner,
        parking=wiring.parking,
        activity=wiring.activity,
        run_once=RunOnce(settings.app_table),
        queue_url=settings.required("jobs_queue_url"),
        dlq_url=settings.required("jobs_dlq_url"),
        max_attempts=settings.job_max_receives,
        queue_max_receives=settings.job_queue_max_receives,
        logger=logger,
        metrics=Metrics(),
    )
    # A batch of only deferred jobs is a normal answer, not a Lambda error (that would page someone).
    return WorkerHandler(worker, BatchProcessor(event_type=EventType.SQS, raise_on_entire_batch_failure=False))
