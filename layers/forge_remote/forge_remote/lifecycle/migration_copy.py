"""The copy of an installation's app-table partition into another regional stack's app table, and its undoing.

Why DynamoDB to DynamoDB, from this stack's own role: DynamoDB is where the data is already, and a table
in another region is one more endpoint of the same API. The source stack writes the destination's
table directly (its role may do exactly ``PutItem``, ``DeleteItem`` and ``Query`` on the ``PeerAppTables``
ARNs): no endpoint on the peer stack to expose and authenticate, no secret to share between stacks, no
second copy of the copy logic to deploy and keep in step. The alternative, calling the peer stack's API,
would need an authenticated machine-to-machine route there (Forge's FITs cannot be minted by us) and
would still end in the same writes.

What is copied: every item of ``INST#<installationId>`` in the app table (the registry item, job results,
job records, the personal data report's progress), except this stack's own business: migration records
(``MIGRATION#``), uninstall once-records (``FIT#``) and parked jobs (``PARKED#``, which hold receipt
handles of this region's queue). Tokens are NOT copied (they are in the tokens table and stay here
until the commit deletes them): Forge delivers fresh ones with its next call to the destination. The
registry item goes without its scheduler index keys and its job hold, so the destination's scheduler
ignores it until Forge's first call there marks it active again.

Every destination item carries ``migratedBy = <migrationId>`` and is written on condition that the
destination has no such item or only one this migration wrote: a destination item written by anything
else is never overwritten; the copy stops with a conflict (E0002). Writes go 100 items (or ~3 MB) to a
``TransactWriteItems`` call, one round trip for each, and each item keeps its own condition. The source
is read page by page in key order from a cursor the caller stores after every batch, and no batch is
started once the time budget is spent, so a call that is cut short, fails or crashes loses nothing: the
next one starts after the last batch recorded, and a batch written twice is written the same way
(``migratedBy`` matches). The rollback deletes exactly the destination items marked with the migration's id,
except that a ``moved`` tombstone the copy wrote over (the installation once left that realm) is put back,
so that realm keeps refusing the installation.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

from forge_remote.storage.table_keys import (
    INSTALLATION_SK,
    MIGRATION_SK_PREFIX,
    ONCE_SK_PREFIX,
    PARKED_SK_PREFIX,
    installation_pk,
)

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

logger = logging.getLogger(__name__)

MARKER = "migratedBy"  # the migration that wrote a destination item
# On the destination's registry item: the "moved" tombstone it replaced (an earlier move out of that realm),
# which a rollback puts back instead of deleting, so the realm keeps refusing the installation.
REPLACED = "replacedTombstone"
SKIPPED_PREFIXES = (MIGRATION_SK_PREFIX, ONCE_SK_PREFIX, PARKED_SK_PREFIX)
# What the registry item leaves behind: the scheduler's index keys and the job hold are this stack's.
REGISTRY_DROPS = ("activePk", "activeSk", "migrationId", "holdFrom", "holdUntil", "cleanupCursor")
PAGE_SIZE = 100
MAX_TRANSACTION_ITEMS = 100  # DynamoDB's limit for one TransactWriteItems
MAX_TRANSACTION_BYTES = 3_000_000  # under its 4 MB, with room for the estimate's error
# Errors that say the destination cannot be used at all (not a blip): the realm is not served (E0001).
UNREACHABLE = frozenset({"AccessDeniedException", "ResourceNotFoundException", "UnrecognizedClientException"})


class Deadline:
    """The call's time budget: a batch is started only while ``remaining_ms()`` is at least ``reserve_ms``,
    which leaves the call time to record its progress and answer inside Forge's wait."""

    def __init__(self, remaining_ms: Callable[[], int], reserve_ms: int) -> None:
        self._remaining_ms = remaining_ms
        self.reserve_ms = reserve_ms

    def left(self) -> bool:
        return self._remaining_ms() >= self.reserve_ms


@dataclass(frozen=True)
class CopyReport:
    complete: bool
    copied: int = 0
    conflict: str | None = None  # the kind of item (its sort key's first part) the destination holds already
    unreachable: str | None = None  # the error code that says the destination cannot be used
    interrupted: str | None = None  # the error that stopped this call (the next one resumes)


def _kind(sk: str) -> str:
    """A sort key's first part (``SNAPSHOT``, ``USER_DIGEST``): names no page and no person."""
    return sk.split("#", 1)[0][:40]


def _size(item: dict[str, Any]) -> int:
    return len(json.dumps(item, separators=(",", ":")))


def _code(exc: BaseException) -> str:
    return str(exc.response.get("Error", {}).get("Code", "")) if isinstance(exc, ClientError) else type(exc).__name__


def destination_item(item: dict[str, Any], migration_id: str) -> dict[str, Any]:
    """The item as the destination gets it: marked with the migration, the registry item without this
    stack's own keys."""
    copied = dict(item)
    if item["sk"]["S"] == INSTALLATION_SK:
        for name in REGISTRY_DROPS:
            copied.pop(name, None)
    copied[MARKER] = {"S": migration_id}
    return copied


class PartitionCopier:
    """One migration's copy of one installation, from this stack's table to a peer's (by ARN)."""

    def __init__(
        self,
        source: DynamoDBClient,
        source_table: str,
        destination: DynamoDBClient,
        destination_table: str,
        migration_id: str,
    ) -> None:
        self.source, self.source_table = source, source_table
        self.destination, self.destination_table = destination, destination_table
        self.migration_id = migration_id

    def copy(
        self,
        installation_id: str,
        *,
        cursor: str | None,
        deadline: Deadline,
        progress: Callable[[str, int], None],
    ) -> CopyReport:
        """Copy from after ``cursor`` while the deadline allows; ``progress(cursor, n)`` after each batch."""
        pk = {"S": installation_pk(installation_id)}
        copied = 0
        while True:
            if not deadline.left():
                return CopyReport(False, copied)
            query: dict[str, Any] = {
                "TableName": self.source_table,
                "KeyConditionExpression": "pk = :pk",
                "ExpressionAttributeValues": {":pk": pk},
                "ConsistentRead": True,
                "Limit": PAGE_SIZE,
            }
            if cursor is not None:
                query["ExclusiveStartKey"] = {"pk": pk, "sk": {"S": cursor}}
            page = self.source.query(**query)
            items = page.get("Items", [])
            batch: list[dict[str, Any]] = []
            size = 0
            for index, item in enumerate(items):
                sk = item["sk"]["S"]
                if not sk.startswith(SKIPPED_PREFIXES):
                    out = destination_item(item, self.migration_id)
                    if batch and (len(batch) >= MAX_TRANSACTION_ITEMS or size + _size(out) > MAX_TRANSACTION_BYTES):
                        previous = items[index - 1]["sk"]["S"]
                        if not deadline.left():
                            return CopyReport(False, copied)
                        stopped = self._flush(batch)
                        if stopped is not None:
                            return CopyReport(False, copied, **stopped)
                        copied += len(batch)
                        cursor = previous
                        progress(cursor, len(batch))
                        batch, size = [], 0
                    batch.append(out)
                    size += _size(out)
            if items:
                if batch and not deadline.left():
                    return CopyReport(False, copied)
                stopped = self._flush(batch) if batch else None
                if stopped is not None:
                    return CopyReport(False, copied, **stopped)
                copied += len(batch)
                cursor = items[-1]["sk"]["S"]
                progress(cursor, len(batch))
            if not page.get("LastEvaluatedKey"):
                return CopyReport(True, copied)

    def _flush(self, batch: list[dict[str, Any]]) -> dict[str, str] | None:
        """Write one batch, each item on its own condition; what stopped it, or None if written."""
        try:
            for item in batch:
                if item["sk"]["S"] == INSTALLATION_SK:
                    self._keep_tombstone(item)
            transact = [{"Put": self._put(item)} for item in batch]
            self.destination.transact_write_items(TransactItems=transact)  # type: ignore[arg-type]
        except ClientError as exc:
            code = _code(exc)
            reasons = [r.get("Code") for r in exc.response.get("CancellationReasons", [])]
            if "ConditionalCheckFailed" in reasons:
                return {"conflict": _kind(batch[reasons.index("ConditionalCheckFailed")]["sk"]["S"])}
            if code in UNREACHABLE:
                return {"unreachable": code}
            return {"interrupted": code or "ClientError"}
        except BotoCoreError as exc:  # a connection that failed after botocore's retries
            return {"interrupted": type(exc).__name__}
        return None

    def _keep_tombstone(self, registry: dict[str, Any]) -> None:
        """Carry the destination's "moved" tombstone of this installation (or the one an earlier try of
        this migration already carried) on the registry item about to replace it."""
        found = self.destination.query(
            TableName=self.destination_table,
            KeyConditionExpression="pk = :pk AND sk = :sk",
            ExpressionAttributeValues={":pk": registry["pk"], ":sk": registry["sk"]},
            ConsistentRead=True,
        ).get("Items", [])
        if not found:
            return
        current = found[0]
        if current.get("status", {}).get("S") == "moved":
            registry[REPLACED] = {"M": {k: v for k, v in current.items() if k not in ("pk", "sk")}}
        elif current.get(MARKER, {}).get("S") == self.migration_id and REPLACED in current:
            registry[REPLACED] = current[REPLACED]

    def _put(self, item: dict[str, Any]) -> dict[str, Any]:
        condition = f"attribute_not_exists(pk) OR {MARKER} = :mid"
        values: dict[str, Any] = {":mid": {"S": self.migration_id}}
        names: dict[str, str] = {}
        if item["sk"]["S"] == INSTALLATION_SK:
            # The destination's tombstone of this installation, from an earlier move out of it, gives way.
            condition += " OR #status = :moved"
            values[":moved"] = {"S": "moved"}
            names["#status"] = "status"
        put: dict[str, Any] = {
            "TableName": self.destination_table,
            "Item": item,
            "ConditionExpression": condition,
            "ExpressionAttributeValues": values,
        }
        if names:
            put["ExpressionAttributeNames"] = names
        return put


@dataclass(frozen=True)
class RemovalReport:
    complete: bool
    removed: int = 0
    interrupted: str | None = None


class CopyRemover:
    """The rollback's side: delete exactly the destination items of ``INST#<id>`` this migration wrote."""

    def __init__(self, destination: DynamoDBClient, destination_table: str, migration_id: str) -> None:
        self.destination, self.destination_table = destination, destination_table
        self.migration_id = migration_id

    def remove(self, installation_id: str, *, deadline: Deadline) -> RemovalReport:
        pk = {"S": installation_pk(installation_id)}
        removed = 0
        start: dict[str, Any] | None = None
        while True:
            if not deadline.left():
                return RemovalReport(False, removed)
            query: dict[str, Any] = {
                "TableName": self.destination_table,
                "KeyConditionExpression": "pk = :pk",
                "FilterExpression": f"{MARKER} = :mid",
                "ProjectionExpression": f"pk, sk, {REPLACED}",
                "ExpressionAttributeValues": {":pk": pk, ":mid": {"S": self.migration_id}},
                "ConsistentRead": True,
                "Limit": PAGE_SIZE,
            }
            if start is not None:
                query["ExclusiveStartKey"] = start
            try:
                page = self.destination.query(**query)
                removed += self._delete(page.get("Items", []))
            except (ClientError, BotoCoreError) as exc:
                return RemovalReport(False, removed, interrupted=_code(exc))
            start = page.get("LastEvaluatedKey")
            if not start:
                return RemovalReport(True, removed)

    def _delete(self, items: list[dict[str, Any]]) -> int:
        """Undo ``items`` on condition that each is still this migration's (deleted, or a replaced tombstone
        put back); returns how many went."""
        gone = 0
        for chunk in (items[i : i + MAX_TRANSACTION_ITEMS] for i in range(0, len(items), MAX_TRANSACTION_ITEMS)):
            undo = [self._undo(item) for item in chunk]
            try:
                self.destination.transact_write_items(TransactItems=undo)  # type: ignore[arg-type]
                gone += len(chunk)
            except self.destination.exceptions.TransactionCanceledException:
                # One of them is not ours any more (or a blip): one by one, each on its own condition.
                for item in chunk:
                    try:
                        self._undo_one(item)
                        gone += 1
                    except self.destination.exceptions.ConditionalCheckFailedException:
                        logger.warning("a destination item is no longer this migration's; left in place")
        return gone

    def _ours(self) -> dict[str, Any]:
        return {
            "ConditionExpression": f"{MARKER} = :mid",
            "ExpressionAttributeValues": {":mid": {"S": self.migration_id}},
        }

    def _undo(self, item: dict[str, Any]) -> dict[str, Any]:
        key = {"pk": item["pk"], "sk": item["sk"]}
        if REPLACED in item:  # the realm's tombstone, as it was before this migration wrote over it
            return {
                "Put": {"TableName": self.destination_table, "Item": {**key, **item[REPLACED]["M"]}, **self._ours()}
            }
        return {"Delete": {"TableName": self.destination_table, "Key": key, **self._ours()}}

    def _undo_one(self, item: dict[str, Any]) -> None:
        action = self._undo(item)
        if "Put" in action:
            self.destination.put_item(**action["Put"])
        else:
            self.destination.delete_item(**action["Delete"])
