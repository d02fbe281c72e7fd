"""Token wake-up: a stored app token wakes the installation's parked jobs.

Fed by the tokens table's stream (keys only: no token ever leaves the table this way), filtered by
the event source mapping to inserts and replacements of app-token items (``sk = SYSTEM``). For each
installation it checks that the stored token is usable by jobs and is not the one Confluence last
refused (re-delivered: the jobs retry it when their own delay ends), then makes every parked job's
message visible at once (``forge_remote.jobs.parking``). Jobs that cannot be woken keep their delay: the
queue brings them back anyway, so a failure here delays a job, it never loses one.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.dynamo_db_stream_event import DynamoDBRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from forge_remote import aws
from forge_remote.config import Settings
from forge_remote.jobs.parking import ParkingLot, wake_parked
from forge_remote.storage.table_keys import INSTALLATION_PK_PREFIX
from forge_remote.telemetry.logs import publishing_recorded_metrics, use_function_logger
from forge_remote.tokens.store import TokenStore

logger = Logger()
use_function_logger(logger)
metrics = Metrics()
# A failed record is retried from its sequence number; the rest of the batch is not replayed.
processor = BatchProcessor(event_type=EventType.DynamoDBStreams, raise_on_entire_batch_failure=False)
settings = Settings.from_env()
QUEUE_URL = settings.required("jobs_queue_url")
_dynamodb = aws.dynamodb()
parking = ParkingLot(_dynamodb, settings.app_table)
tokens = TokenStore(_dynamodb, settings.tokens_table)


def record_handler(record: DynamoDBRecord) -> None:
    pk = record.dynamodb.keys.get("pk") if record.dynamodb else None
    if not isinstance(pk, str) or not pk.startswith(INSTALLATION_PK_PREFIX):
        logger.warning("stream record without an installation key ignored", extra={"event_id": record.event_id})
        return
    installation_id = pk[len(INSTALLATION_PK_PREFIX) :]
    if not tokens.wakes_jobs(installation_id, settings.token_min_validity_s):
        # Too short-lived for a job, already replaced, or the very token Confluence last refused,
        # delivered again: waking would only spend a receive. The jobs' own delays bring them back.
        logger.info("token stored but not one that parked jobs wait for; they keep their delay")
        return
    report = wake_parked(parking, aws.sqs(), QUEUE_URL, installation_id)
    if report.woken or report.already_back:
        metrics.add_metric(name="JobsWoken", unit=MetricUnit.Count, value=len(report.woken))
        logger.info(
            "parked jobs woken",
            extra={"installation_id": installation_id, "woken": len(report.woken), "already_back": report.already_back},
        )


@logger.inject_lambda_context
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    with publishing_recorded_metrics(metrics):  # most deliveries wake nothing and record nothing
        response = process_partial_response(
            event=event, record_handler=record_handler, processor=processor, context=context
        )
    return dict(response)
