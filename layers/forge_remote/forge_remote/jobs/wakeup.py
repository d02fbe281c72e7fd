"""Token wake-up: a stored app token wakes the installation's parked jobs.

Fed by the tokens table's stream (keys only: no token ever leaves the table this way), filtered by
the event source mapping to inserts and replacements of app-token items. For each installation it
checks that the stored token is usable by jobs and is not the one Confluence last refused
(re-delivered: the jobs retry it when their own delay ends), then makes every parked job's message
visible at once (``jobs/parking.py``). Jobs that cannot be woken keep their delay: the queue brings
them back anyway, so a failure here delays a job, it never loses one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from forge_remote import aws
from forge_remote.handler import LambdaHandler, batch_handler
from forge_remote.storage.table_keys import INSTALLATION_PK_PREFIX

if TYPE_CHECKING:
    from aws_lambda_powertools import Logger, Metrics
    from aws_lambda_powertools.utilities.batch import BatchProcessor
    from aws_lambda_powertools.utilities.data_classes.dynamo_db_stream_event import DynamoDBRecord

    from forge_remote.jobs.parking import ParkingLot
    from forge_remote.tokens.store import TokenStore


@dataclass
class TokenWakeup:
    parking: ParkingLot
    tokens: TokenStore
    queue_url: str
    token_min_validity_s: float
    logger: Logger
    metrics: Metrics

    def handle(self, record: DynamoDBRecord) -> None:
        from forge_remote.jobs.parking import wake_parked

        pk = record.dynamodb.keys.get("pk") if record.dynamodb else None
        if not isinstance(pk, str) or not pk.startswith(INSTALLATION_PK_PREFIX):
            self.logger.warning(
                "stream record without an installation key ignored", extra={"event_id": record.event_id}
            )
            return
        installation_id = pk[len(INSTALLATION_PK_PREFIX) :]
        if not self.tokens.wakes_jobs(installation_id, self.token_min_validity_s):
            # Too short-lived for a job, already replaced, or the very token Confluence last refused,
            # delivered again: waking would only spend a receive. The jobs' own delays bring them back.
            self.logger.info("token stored but not one that parked jobs wait for; they keep their delay")
            return
        report = wake_parked(self.parking, aws.sqs(), self.queue_url, installation_id)
        if report.woken or report.already_back:
            from aws_lambda_powertools.metrics import MetricUnit

            self.metrics.add_metric(name="JobsWoken", unit=MetricUnit.Count, value=len(report.woken))
            self.logger.info(
                "parked jobs woken",
                extra={
                    "installation_id": installation_id,
                    "woken": len(report.woken),
                    "already_back": report.already_back,
                },
            )


class WakeupHandler(LambdaHandler):
    """The wake-up function's Lambda handler: ``lambda_handler = wakeup_handler()``."""

    def __init__(self, wakeup: TokenWakeup, processor: BatchProcessor) -> None:
        self.wakeup = wakeup
        # Most deliveries wake nothing and record nothing: no metrics line for them.
        super().__init__(batch_handler(wakeup.logger, wakeup.metrics, processor, wakeup.handle))


def wakeup_handler() -> WakeupHandler:
    """The wake-up function's Lambda handler, built once per container from the environment."""
    from aws_lambda_powertools import Logger, Metrics
    from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType

    from forge_remote.telemetry.logs import use_function_logger
    from forge_remote.wiring import Wiring

    logger = Logger()
    use_function_logger(logger)
    wiring = Wiring.from_env()
    wakeup = TokenWakeup(
        parking=wiring.parking,
        tokens=wiring.tokens,
        queue_url=wiring.settings.required("jobs_queue_url"),
        token_min_validity_s=wiring.settings.token_min_validity_s,
        logger=logger,
        metrics=Metrics(),
    )
    # A failed record is retried from its sequence number; the rest of the batch is not replayed.
    return WakeupHandler(
        wakeup, BatchProcessor(event_type=EventType.DynamoDBStreams, raise_on_entire_batch_failure=False)
    )
