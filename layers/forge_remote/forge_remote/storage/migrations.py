"""The record of a data residency realm migration (app table, ``INST#<id>`` / ``MIGRATION#<migrationId>``).

One item per Forge ``migrationId``, under the installation it moves, so it goes with the installation's
other data (and a commit's purge removes it with the rest). Its ``cursor`` is a sort key of the
partition, which may name an account (``USER_DIGEST#<accountId>``): it is removed as soon as the copy
ends (copied, failed, rolled back), so a finished migration's record names nobody. It holds where the
installation goes, the window, the job hold, where the copy got to and what went wrong: everything a
retried, repeated or late hook call needs to give the same answer without redoing work
(``lifecycle/migration.py``).

States::

    scheduled --start--> copying --copy done--> copied --commit--> committing (then the item is purged;
        |                   |                     |                  the installation's tombstone says "moved")
        |                   +--conflict, window--> failed
        +---------- rollback (from any of these) --> rolling-back --> rolled-back
    scheduled --another migration scheduled instead--> superseded

Every state change is conditional on the state read, so two calls racing each other change it once.
Changes that must agree with the installation's registry item (its job hold, its tombstone) are one
transaction with it (``InstallationRegistry.migration_hold``, ``migration_release``, ``migration_commit``).

The copy works under a lease (``leaseUntil``, on the stack's clock): one call copies at a time, and a
rollback or commit waits until no call is copying, so nothing is written to the destination after a
rollback has removed what was there. A lease outlives its holder's invocation by a second at most (the
holder sets it to its own remaining time), so a crashed call holds nothing for long.
"""

from __future__ import annotations

import contextlib
import enum
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from forge_remote import clock
from forge_remote.storage.table_keys import installation_pk, migration_sk

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

    from forge_remote.storage.installations import InstallationRegistry

RECORD_TTL_S = 30 * 86400  # after the window: long enough to answer any late or repeated hook call


class MigrationState(enum.StrEnum):
    SCHEDULED = "scheduled"
    COPYING = "copying"
    COPIED = "copied"
    FAILED = "failed"
    ROLLING_BACK = "rolling-back"
    ROLLED_BACK = "rolled-back"
    COMMITTING = "committing"
    SUPERSEDED = "superseded"


# A rollback may begin from these (there is something to undo, or at least a hold to release).
ROLLBACK_FROM = (
    MigrationState.SCHEDULED,
    MigrationState.COPYING,
    MigrationState.COPIED,
    MigrationState.FAILED,
    MigrationState.ROLLING_BACK,
)


@dataclass(frozen=True)
class MigrationRecord:
    installation_id: str
    migration_id: str
    destination: str
    state: MigrationState
    window_start: float
    window_end: float
    hold_from: float
    hold_until: float
    copy_not_before: float  # the copy begins once the job hold has been in force this long
    cursor: str | None = None  # the last source sort key copied
    copied: int = 0
    error_code: str | None = None
    error_reason: str | None = None
    lease_until: float = 0.0
    removed: int = 0  # destination items a rollback removed

    def leased(self, now: float) -> bool:
        return self.lease_until > now


def _s(item: dict[str, Any], name: str) -> str | None:
    value = item.get(name, {}).get("S")
    return value if isinstance(value, str) else None


def _n(item: dict[str, Any], name: str, default: float = 0.0) -> float:
    value = item.get(name, {}).get("N")
    return float(value) if isinstance(value, str) else default


def _num(value: float) -> dict[str, str]:
    return {"N": str(int(value))}


class StateChanged(Exception):
    """A conditional write found the record (or the installation) not as read: read again and decide."""


class MigrationStore:
    def __init__(self, client: DynamoDBClient, table_name: str, registry: InstallationRegistry) -> None:
        self._client = client
        self.table_name = table_name
        self.registry = registry

    def _key(self, installation_id: str, migration_id: str) -> dict[str, Any]:
        return {"pk": {"S": installation_pk(installation_id)}, "sk": {"S": migration_sk(migration_id)}}

    def get(self, installation_id: str, migration_id: str) -> MigrationRecord | None:
        item = self._client.get_item(
            TableName=self.table_name, Key=self._key(installation_id, migration_id), ConsistentRead=True
        ).get("Item")
        if not item:
            return None
        return MigrationRecord(
            installation_id=installation_id,
            migration_id=migration_id,
            destination=_s(item, "destination") or "",
            state=MigrationState(_s(item, "state") or MigrationState.SCHEDULED),
            window_start=_n(item, "windowStart"),
            window_end=_n(item, "windowEnd"),
            hold_from=_n(item, "holdFrom"),
            hold_until=_n(item, "holdUntil"),
            copy_not_before=_n(item, "copyNotBefore"),
            cursor=_s(item, "cursor"),
            copied=int(_n(item, "copied")),
            error_code=_s(item, "errorCode"),
            error_reason=_s(item, "errorReason"),
            lease_until=_n(item, "leaseUntil"),
            removed=int(_n(item, "removed")),
        )

    # -- schedule and start: the record and the installation's hold, together
    def claim(self, record: MigrationRecord, *, begin: bool) -> None:
        """Write ``record`` (state ``scheduled``, or ``copying`` when ``begin``) with its job hold.

        One transaction: the installation's item (active, held by no other migration) and the record
        (new, or still ``scheduled``: a repeated schedule, or the start of a scheduled one). ``StateChanged``
        if either condition fails.
        """
        now = clock.now()
        item = {
            **self._key(record.installation_id, record.migration_id),
            "migrationId": {"S": record.migration_id},
            "installationId": {"S": record.installation_id},
            "destination": {"S": record.destination},
            "state": {"S": (MigrationState.COPYING if begin else MigrationState.SCHEDULED).value},
            "windowStart": _num(record.window_start),
            "windowEnd": _num(record.window_end),
            "holdFrom": _num(record.hold_from),
            "holdUntil": _num(record.hold_until),
            "copyNotBefore": _num(record.copy_not_before),
            "copied": _num(record.copied),
            "leaseUntil": _num(0),
            "updatedAt": _num(now),
            "ttl": _num(record.window_end + RECORD_TTL_S),
        }
        if record.cursor is not None:
            item["cursor"] = {"S": record.cursor}
        put: dict[str, Any] = {
            "Put": {
                "TableName": self.table_name,
                "Item": item,
                "ConditionExpression": "attribute_not_exists(pk) OR #state = :scheduled",
                "ExpressionAttributeNames": {"#state": "state"},
                "ExpressionAttributeValues": {":scheduled": {"S": MigrationState.SCHEDULED.value}},
            }
        }
        hold = self.registry.migration_hold(
            record.installation_id,
            record.migration_id,
            hold_from=record.hold_from,
            hold_until=record.hold_until,
            begin=begin,
        )
        self._transact([hold, put])

    def supersede(self, record: MigrationRecord) -> None:
        """A migration that was only scheduled (nothing copied) gives way to another one Forge scheduled
        instead: its hold is released with it (``StateChanged`` if it is no longer only scheduled)."""
        update = self._update_item(
            record,
            "SET #state = :superseded, updatedAt = :now",
            allowed=(MigrationState.SCHEDULED,),
            values={":superseded": {"S": MigrationState.SUPERSEDED.value}},
        )
        release = self.registry.migration_release(record.installation_id, record.migration_id)
        self._transact([release, {"Update": update}])

    # -- the copy, under a lease
    def take_lease(self, record: MigrationRecord, until: float) -> str | None:
        """The right to copy until ``until``; None if another call holds it or the state moved on."""
        lease_id = uuid.uuid4().hex
        try:
            self._update(
                record,
                "SET leaseUntil = :until, leaseId = :lease, updatedAt = :now",
                allowed=(MigrationState.COPYING,),
                values={":until": _num(until), ":lease": {"S": lease_id}},
                lease_free=True,
            )
        except StateChanged:
            return None
        return lease_id

    def record_progress(self, record: MigrationRecord, lease_id: str, cursor: str, copied: int) -> None:
        """Where the copy got to, after a batch the destination has written (``StateChanged``: lease lost)."""
        self._update(
            record,
            "SET #cursor = :cursor, updatedAt = :now ADD copied :copied",
            allowed=(MigrationState.COPYING,),
            values={":cursor": {"S": cursor}, ":copied": _num(copied)},
            names={"#cursor": "cursor"},
            lease_id=lease_id,
        )

    def finish_copy(self, record: MigrationRecord, lease_id: str) -> None:
        """Every item is in the destination: ready to commit."""
        self._update(
            record,
            "SET #state = :copied, copiedAt = :now, updatedAt = :now, leaseUntil = :zero REMOVE leaseId, #cursor",
            allowed=(MigrationState.COPYING,),
            values={":copied": {"S": MigrationState.COPIED.value}, ":zero": _num(0)},
            names={"#cursor": "cursor"},
            lease_id=lease_id,
        )

    def release_lease(self, record: MigrationRecord, lease_id: str) -> None:
        with contextlib.suppress(StateChanged):  # taken over after it lapsed: nothing of ours to release
            self._update(
                record,
                "SET leaseUntil = :zero, updatedAt = :now REMOVE leaseId",
                allowed=tuple(MigrationState),
                values={":zero": _num(0)},
                lease_id=lease_id,
            )

    def fail(self, record: MigrationRecord, code: str, reason: str, *, lease_id: str | None = None) -> None:
        """Failed for good (a conflict, the window passed): status answers the code from now on."""
        self._update(
            record,
            "SET #state = :failed, errorCode = :code, errorReason = :reason, failedAt = :now, updatedAt = :now,"
            " leaseUntil = :zero REMOVE leaseId, #cursor",
            allowed=(MigrationState.SCHEDULED, MigrationState.COPYING),
            values={
                ":failed": {"S": MigrationState.FAILED.value},
                ":code": {"S": code},
                ":reason": {"S": reason[:300]},
                ":zero": _num(0),
            },
            names={"#cursor": "cursor"},
            lease_id=lease_id,
            lease_free=lease_id is None,
        )

    # -- rollback and commit
    def begin_rollback(self, record: MigrationRecord) -> None:
        """``rolling-back``, and the installation's hold released in the same transaction (its jobs and
        schedules resume: this stack's data is the installation's again, nothing here was changed).
        Waits for no lease (``StateChanged`` while a call is copying)."""
        update = self._update_item(
            record,
            "SET #state = :rolling, rollbackAt = if_not_exists(rollbackAt, :now), updatedAt = :now REMOVE #cursor",
            allowed=ROLLBACK_FROM,
            values={":rolling": {"S": MigrationState.ROLLING_BACK.value}},
            names={"#cursor": "cursor"},
            lease_free=True,
        )
        release = self.registry.migration_release(record.installation_id, record.migration_id)
        try:
            self._transact([release, {"Update": update}])
        except StateChanged:
            # Not held by this migration any more (its hold lapsed and was released, or it never held
            # it): the record alone.
            self._write(update)

    def finish_rollback(self, record: MigrationRecord, removed: int) -> None:
        self._update(
            record,
            "SET #state = :done, rolledBackAt = :now, updatedAt = :now ADD removed :removed",
            allowed=(MigrationState.ROLLING_BACK,),
            values={":done": {"S": MigrationState.ROLLED_BACK.value}, ":removed": _num(removed)},
        )

    def count_removed(self, record: MigrationRecord, removed: int) -> None:
        """Destination items a rollback that ran out of time removed so far."""
        if removed:
            self._update(
                record,
                "SET updatedAt = :now ADD removed :removed",
                allowed=(MigrationState.ROLLING_BACK,),
                values={":removed": _num(removed)},
            )

    def begin_commit(self, record: MigrationRecord, realm: str) -> None:
        """``committing``, and the installation a ``moved`` tombstone in the same transaction: from here on
        this stack refuses it and its data here is deleted. Only from ``copied``, with no call copying."""
        update = self._update_item(
            record,
            "SET #state = :committing, committedAt = :now, updatedAt = :now",
            allowed=(MigrationState.COPIED,),
            values={":committing": {"S": MigrationState.COMMITTING.value}},
            lease_free=True,
        )
        tombstone = self.registry.migration_commit(record.installation_id, record.migration_id, realm)
        self._transact([tombstone, {"Update": update}])

    # -- the conditional writes underneath
    def _update_item(
        self,
        record: MigrationRecord,
        expression: str,
        *,
        allowed: tuple[MigrationState, ...],
        values: dict[str, Any],
        names: dict[str, str] | None = None,
        lease_id: str | None = None,
        lease_free: bool = False,
    ) -> dict[str, Any]:
        states = {f":st{i}": {"S": state.value} for i, state in enumerate(allowed)}
        conditions = [f"#state IN ({', '.join(states)})"]
        extra: dict[str, Any] = {":now": _num(clock.now())}
        if lease_id is not None:
            conditions.append("leaseId = :mine")
            extra[":mine"] = {"S": lease_id}
        if lease_free:
            conditions.append("leaseUntil <= :now")
        return {
            "TableName": self.table_name,
            "Key": self._key(record.installation_id, record.migration_id),
            "UpdateExpression": expression,
            "ConditionExpression": " AND ".join(conditions),
            "ExpressionAttributeNames": {"#state": "state", **(names or {})},
            "ExpressionAttributeValues": {**states, **extra, **values},
        }

    def _update(self, record: MigrationRecord, expression: str, **options: Any) -> None:
        self._write(self._update_item(record, expression, **options))

    def _write(self, update: dict[str, Any]) -> None:
        try:
            self._client.update_item(**update)
        except self._client.exceptions.ConditionalCheckFailedException as exc:
            raise StateChanged from exc

    def _transact(self, items: list[Any]) -> None:
        try:
            self._client.transact_write_items(TransactItems=items)
        except self._client.exceptions.TransactionCanceledException as exc:
            reasons = [r.get("Code") for r in exc.response.get("CancellationReasons", [])]
            if "ConditionalCheckFailed" in reasons:
                raise StateChanged from exc
            raise
