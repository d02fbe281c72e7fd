"""Jobs waiting for a token: parked per installation, woken by the next token delivery.

A job that finds no usable app token goes back to the queue with a growing delay (up to 30 min).
Forge has no endpoint to ask for a token, so the next one may arrive long before that delay ends.
The worker therefore also *parks* such a job: an item ``PARKED#<requestId>`` under the installation
(app table) holding the SQS receipt handle of the delivery that was deferred. When a token is stored
for the installation, ``wake_parked`` claims each parked item (a delete that only one caller can win)
and makes its message visible at once (``ChangeMessageVisibility`` to 0): the job runs within seconds
instead of waiting out its delay.

The delay stays the safety net: a job nobody wakes comes back by itself, and after the queue's
``maxReceiveCount`` it lands in the dead-letter queue, as before. Waking never sends a message twice:
it only shortens the wait of the one delivery in flight. A wake-up that races the delay's own
redelivery can make the message visible twice; the worker runs each request id to the end at most
once (``jobs/run_once.py``), so the job still runs once.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from forge_remote import clock
from forge_remote.storage.table_keys import PARKED_SK_PREFIX, installation_pk, parked_sk

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_sqs import SQSClient

    from forge_remote.storage.interfaces import ParkedJobs

logger = logging.getLogger(__name__)

PARK_GRACE_S = 24 * 3600  # a parked item outlives its delivery's delay by a day, then TTL removes it
STALE_AFTER_S = 900  # its delay ended this long ago: the job is back in the queue's hands, not waiting
# SQS's answers for a receipt handle whose delivery is over (the message was received again, deleted,
# or moved to the DLQ): the job is no longer waiting, so there is nothing to wake.
_DELIVERY_OVER = {
    "ReceiptHandleIsInvalid",
    "InvalidParameterValue",
    "MessageNotInflight",
    "AWS.SimpleQueueService.MessageNotInflight",
}


@dataclass(frozen=True)
class ParkedJob:
    installation_id: str
    request_id: str
    job: str
    parked_at: float
    retry_at: float  # when the deferral delay brings it back anyway
    receipt_handle: str = field(repr=False)


class ParkingLot:
    """The parked jobs of every installation (app table). One instance per container."""

    def __init__(self, client: DynamoDBClient, table_name: str) -> None:
        self._client = client
        self.table_name = table_name

    def _key(self, installation_id: str, request_id: str) -> dict[str, Any]:
        return {"pk": {"S": installation_pk(installation_id)}, "sk": {"S": parked_sk(request_id)}}

    def park(self, installation_id: str, request_id: str, *, job: str, receipt_handle: str, retry_at: float) -> None:
        """Record that this delivery waits for a token (the newest delivery of a request wins)."""
        now = clock.now()
        self._client.put_item(
            TableName=self.table_name,
            Item={
                **self._key(installation_id, request_id),
                "job": {"S": job},
                "receiptHandle": {"S": receipt_handle},
                "parkedAt": {"N": f"{now:.3f}"},
                "retryAt": {"N": f"{retry_at:.3f}"},
                "ttl": {"N": str(int(retry_at) + PARK_GRACE_S)},
            },
        )

    def unpark(self, installation_id: str, request_id: str) -> None:
        """The job is being run again (its delay ended): it no longer waits."""
        self._client.delete_item(TableName=self.table_name, Key=self._key(installation_id, request_id))

    def waiting(self, installation_id: str) -> int:
        """How many jobs of this installation wait for a token (one partition's count, no scan).

        A parked item whose delay ended long ago no longer stands for a waiting job: its message was
        received again (which unparks it) or left the queue without the worker (SQS's redrive after a
        crash); it is left to its ``ttl`` but not counted.
        """
        pages = self._pages(
            installation_id,
            Select="COUNT",
            FilterExpression="retryAt > :stale",
            values={":stale": {"N": f"{clock.now() - STALE_AFTER_S:.3f}"}},
        )
        return sum(page.get("Count", 0) for page in pages)

    def _pages(self, installation_id: str, *, values: dict[str, Any] | None = None, **query: Any) -> Iterator[Any]:
        """The query pages of this installation's parked items (``values``: more expression values)."""
        paginator = self._client.get_paginator("query")
        yield from paginator.paginate(
            TableName=self.table_name,
            KeyConditionExpression="pk = :pk AND begins_with(sk, :parked)",
            ExpressionAttributeValues={
                ":pk": {"S": installation_pk(installation_id)},
                ":parked": {"S": PARKED_SK_PREFIX},
                **(values or {}),
            },
            **query,
        )

    def claim(self, installation_id: str, request_id: str | None = None) -> Iterator[ParkedJob]:
        """Take the parked jobs (one, if ``request_id`` is given): each is deleted by exactly one caller,
        which gets it; a job another caller claimed, or unparked, is not yielded."""
        if request_id is not None:
            claimed = self._take(self._key(installation_id, request_id))
            if claimed is not None:
                yield claimed
            return
        for page in self._pages(installation_id, ProjectionExpression="pk, sk", ConsistentRead=True):
            for item in page.get("Items", []):
                claimed = self._take({"pk": item["pk"], "sk": item["sk"]})
                if claimed is not None:
                    yield claimed

    def _take(self, key: dict[str, Any]) -> ParkedJob | None:
        try:
            old = self._client.delete_item(
                TableName=self.table_name,
                Key=key,
                ConditionExpression="attribute_exists(pk)",
                ReturnValues="ALL_OLD",
            ).get("Attributes")
        except self._client.exceptions.ConditionalCheckFailedException:
            return None
        if not old:
            return None
        return ParkedJob(
            installation_id=old["pk"]["S"].split("#", 1)[1],
            request_id=old["sk"]["S"][len(PARKED_SK_PREFIX) :],
            job=old.get("job", {}).get("S", ""),
            parked_at=float(old.get("parkedAt", {}).get("N", "0")),
            retry_at=float(old.get("retryAt", {}).get("N", "0")),
            receipt_handle=old.get("receiptHandle", {}).get("S", ""),
        )

    def restore(self, parked: ParkedJob) -> None:
        """Put back a claimed job that could not be woken, so the next token delivery tries again."""
        self.park(
            parked.installation_id,
            parked.request_id,
            job=parked.job,
            receipt_handle=parked.receipt_handle,
            retry_at=parked.retry_at,
        )


@dataclass
class WakeReport:
    woken: list[ParkedJob] = field(default_factory=list)
    already_back: int = 0  # their delivery was over (redelivered by the delay, done, or dead-lettered)


def wake_parked(
    lot: ParkedJobs, sqs: SQSClient, queue_url: str, installation_id: str, *, request_id: str | None = None
) -> WakeReport:
    """Make this installation's parked jobs (or one of them) visible on the queue now."""
    report = WakeReport()
    for parked in lot.claim(installation_id, request_id):
        try:
            sqs.change_message_visibility(QueueUrl=queue_url, ReceiptHandle=parked.receipt_handle, VisibilityTimeout=0)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in _DELIVERY_OVER:
                report.already_back += 1
                continue
            lot.restore(parked)  # SQS is unwell: leave it parked for the next delivery (the delay still holds)
            raise
        report.woken.append(parked)
        waited = clock.now() - parked.parked_at
        logger.info(
            "parked job woken",
            extra={"job": parked.job, "request_id": parked.request_id, "parked_for_s": round(waited, 1)},
        )
    return report
