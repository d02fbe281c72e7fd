"""What an admin's status page shows of an installation's jobs, kept by the worker.

Two kinds of items under the installation (app table), both small and both with a ``ttl``:

- ``LASTRUN#<job>``: the last run of each job kind that finished, with its summary (bounded);
- ``DEAD#<time>#<requestId>``: a job sent to the dead-letter queue, with its reason, kept as long as
  the DLQ keeps messages. The DLQ itself cannot be read per installation without receiving every
  message; this record can, newest first, with one query.

Writing them is bookkeeping: a failure is logged and never changes the job's outcome. A busy job kind
(a page snapshot per page event) would write its ``LASTRUN#`` item once per run: a container writes it
at most once a minute per installation and job kind, so the page may show a run up to a minute old.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

from forge_remote import clock
from forge_remote.storage.table_keys import DEAD_SK_PREFIX, LAST_RUN_SK_PREFIX, dead_sk, installation_pk, last_run_sk

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

logger = logging.getLogger(__name__)

DEAD_LETTER_KEEP_S = 14 * 24 * 3600  # the DLQ's MessageRetentionPeriod
LAST_RUN_KEEP_S = 35 * 24 * 3600  # refreshed by every run; a job kind unused for 5 weeks drops off the page
LAST_RUN_EVERY_S = 60.0  # per container, installation and job kind
MAX_SUMMARY_CHARS = 4000  # a summary is a few counts; anything bigger is not shown
MAX_REASON_CHARS = 500


@dataclass(frozen=True)
class DeadLetteredJob:
    job: str
    reason: str
    at: float
    request_id: str


@dataclass(frozen=True)
class LastRun:
    job: str
    finished_at: float
    summary: dict[str, Any]


class JobActivity:
    def __init__(self, client: DynamoDBClient, table_name: str) -> None:
        self._client = client
        self.table_name = table_name
        self._last_run_written: dict[tuple[str, str], float] = {}

    def _put(self, item: dict[str, Any]) -> None:
        try:
            self._client.put_item(TableName=self.table_name, Item=item)
        except (ClientError, BotoCoreError) as exc:
            logger.warning("job activity not recorded", extra={"sk": item["sk"]["S"], "error": type(exc).__name__})

    def record_done(self, installation_id: str, job: str, summary: dict[str, Any]) -> None:
        now = clock.now()
        written = self._last_run_written.get((installation_id, job))
        if written is not None and 0 <= now - written < LAST_RUN_EVERY_S:
            return
        if len(self._last_run_written) > 10_000:  # a long-lived container: memory stays bounded
            self._last_run_written.clear()
        self._last_run_written[(installation_id, job)] = now
        text = json.dumps(summary, ensure_ascii=False, default=str)
        if len(text) > MAX_SUMMARY_CHARS:
            text = json.dumps({"_truncated": True})
        self._put(
            {
                "pk": {"S": installation_pk(installation_id)},
                "sk": {"S": last_run_sk(job)},
                "job": {"S": job},
                "finishedAt": {"N": f"{now:.3f}"},
                "summary": {"S": text},
                "ttl": {"N": str(int(now) + LAST_RUN_KEEP_S)},
            }
        )

    def record_dead(self, installation_id: str, request_id: str, job: str, reason: str) -> None:
        now = clock.now()
        self._put(
            {
                "pk": {"S": installation_pk(installation_id)},
                "sk": {"S": dead_sk(clock.iso(now), request_id)},
                "job": {"S": job},
                "reason": {"S": reason[:MAX_REASON_CHARS]},
                "at": {"N": f"{now:.3f}"},
                "requestId": {"S": request_id},
                "ttl": {"N": str(int(now) + DEAD_LETTER_KEEP_S)},
            }
        )

    def _query(self, installation_id: str, prefix: str, **kwargs: Any) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self._client.query(
            TableName=self.table_name,
            KeyConditionExpression="pk = :pk AND begins_with(sk, :prefix)",
            ExpressionAttributeValues={":pk": {"S": installation_pk(installation_id)}, ":prefix": {"S": prefix}},
            **kwargs,
        ).get("Items", [])
        return items

    def dead_lettered(self, installation_id: str, *, limit: int = 10) -> list[DeadLetteredJob]:
        """The newest dead-lettered jobs still in the DLQ's retention window (expired ones are skipped:
        TTL deletion is lazy)."""
        now = clock.now()
        items = self._query(installation_id, DEAD_SK_PREFIX, ScanIndexForward=False, Limit=limit)
        return [
            DeadLetteredJob(
                job=i.get("job", {}).get("S", ""),
                reason=i.get("reason", {}).get("S", ""),
                at=float(i.get("at", {}).get("N", "0")),
                request_id=i.get("requestId", {}).get("S", ""),
            )
            for i in items
            if float(i.get("ttl", {}).get("N", "0")) > now
        ]

    def last_runs(self, installation_id: str) -> list[LastRun]:
        """The last finished run of each job kind, newest first."""
        now = clock.now()
        runs = []
        for item in self._query(installation_id, LAST_RUN_SK_PREFIX):
            if float(item.get("ttl", {}).get("N", "0")) <= now:
                continue
            try:
                summary = json.loads(item.get("summary", {}).get("S", "{}"))
            except ValueError:
                summary = {}
            runs.append(
                LastRun(
                    job=item.get("job", {}).get("S", ""),
                    finished_at=float(item.get("finishedAt", {}).get("N", "0")),
                    summary=summary if isinstance(summary, dict) else {},
                )
            )
        return sorted(runs, key=lambda r: r.finished_at, reverse=True)
