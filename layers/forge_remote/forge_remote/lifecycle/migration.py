"""A data residency realm migration out of this stack: what each of Forge's five hooks does.

Forge moves an installation from one realm to another with five calls to the remote of the realm it
is in (``forge/migration_hooks.py``). Here each realm is a stack of its own (``lifecycle/realms.py``),
and the installation's data moves from this stack's app table to the destination stack's
(``lifecycle/migration_copy.py``):

- ``schedule`` records the intent and the window (``MIGRATION#<id>``, ``storage/migrations.py``) and the
  job hold on the installation's registry item: from ``holdFrom`` (the window's start less
  ``MIGRATION_SETTLE_S``, never before now) to ``holdUntil`` (the window's end plus ``HOLD_GRACE_S``) the
  worker defers its jobs (``jobs/runner.py``), not failing them.
- ``start`` begins: the installation leaves the scheduler's sight (``MIGRATING``) and the copy starts, as
  far as the call's time allows, once the hold has been in force ``MIGRATION_SETTLE_S`` (so no job that
  started before the hold can still write). A start without a schedule schedules first: it carries the
  same facts, and refusing would fail a migration whose only fault is a lost call.
- ``status`` (every 5 minutes) continues the copy within its own time, then answers ``in-progress``,
  ``ready-to-commit`` (every item copied), or ``failed`` with a code (``ErrorCode``: a conflict in the
  destination E0002, the window passed with the copy unfinished E0003, ...).
- ``commit`` makes the installation a ``moved`` tombstone (``storage/installations.py``): every later call
  for it here is refused (409 "moved", the ``MovedInstallationCalls`` metric). Then its tokens are deleted
  (the destination gets fresh ones with Forge's next call there) and the rest of its partition is deleted
  by the uninstall's own walk (``lifecycle/cleanup.py``), as far as time allows; the hourly cleanup sweep
  finishes what is left. Answered 200 once the tombstone is written: the decision is durable then.
- ``rollback`` releases the hold (this stack's data was never changed, so its jobs simply resume) and
  deletes exactly the destination items this migration wrote. Out of time it answers 503: Forge retries
  (twice, 5 s apart), and whatever is still left is removed before the installation's next migration copies.

Every hook is idempotent per ``migrationId`` (the same call twice gives the same answer and copies
nothing twice), and any order is answered sensibly: commit twice is the same commit; commit before the
copy is ready, or after the hold lapsed, is refused (409); rollback after commit is refused (409: nothing
to undo, the data lives in the destination now); status after commit says ``ready-to-commit``. No hook
deletes anything in either region that the other side does not hold.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from forge_remote import clock
from forge_remote.forge.migration_hooks import (
    IN_PROGRESS,
    READY_TO_COMMIT,
    ErrorCode,
    MigrationWindow,
    failed,
)
from forge_remote.lifecycle.migration_copy import CopyRemover, CopyReport, Deadline, PartitionCopier
from forge_remote.storage.installations import Installation, InstallationStatus
from forge_remote.storage.migrations import ROLLBACK_FROM, MigrationRecord, MigrationState, StateChanged
from forge_remote.storage.table_keys import MIGRATION_SK_PREFIX, installation_pk

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

    from forge_remote.lifecycle.cleanup import InstallationCleanup
    from forge_remote.lifecycle.realms import Residency
    from forge_remote.storage.installations import InstallationRegistry
    from forge_remote.storage.migrations import MigrationStore

logger = logging.getLogger(__name__)

HOLD_GRACE_S = 900  # jobs stay held this long past the window's end: a commit Forge sends late still finds it
RESERVE_MS = 2500  # no copy or removal batch is started with less of the invocation left (Forge waits ~5 s)
RETRY_AFTER_S = 5  # Forge retries a non-2xx answer twice, 5 s apart


@dataclass(frozen=True)
class HookAnswer:
    """What a hook route answers: a status code, a JSON body, and ``Retry-After`` for a 503."""

    status: int
    body: dict[str, Any]
    retry_after_s: int | None = None


def _refused(status: int, code: ErrorCode, error: str, message: str, **detail: Any) -> HookAnswer:
    """A refusal Forge must not retry: it carries the migration's error code."""
    return HookAnswer(status, failed(code, error=error, message=message, **detail))


def _not_now(error: str, message: str, **detail: Any) -> HookAnswer:
    """Cannot be done at this moment (another call is copying, out of time): Forge's retry will."""
    return HookAnswer(503, {"error": error, "message": message, **detail}, retry_after_s=RETRY_AFTER_S)


class RealmMigration:
    def __init__(
        self,
        *,
        source: DynamoDBClient,
        app_table: str,
        registry: InstallationRegistry,
        store: MigrationStore,
        cleanup: Callable[[], InstallationCleanup],
        residency: Residency,
        destination_client: Callable[[str], DynamoDBClient],
        record: Callable[[str, int], None] = lambda name, value: None,
        reserve_ms: int = RESERVE_MS,
    ) -> None:
        self.source, self.app_table = source, app_table
        self.registry, self.store = registry, store
        self._cleanup = cleanup
        self.residency = residency
        self._destination_client = destination_client
        self._record = record
        self.reserve_ms = reserve_ms

    # -- the hooks
    def schedule(self, installation_id: str, window: MigrationWindow) -> HookAnswer:
        installation = self.registry.get(installation_id)
        refusal = self._refusal(installation, window)
        if refusal is not None:
            return refusal
        record = self.store.get(installation_id, window.migration_id)
        if record is not None and record.state != MigrationState.SCHEDULED:
            return self._describe(record, status=200)
        assert installation is not None  # _refusal refused a missing one
        blocked = self._held_by_another(installation, window.migration_id)
        if blocked is not None:
            return blocked
        wanted = self._scheduled(installation_id, window)
        if record is not None and (record.destination, record.window_start, record.window_end) == (
            wanted.destination,
            wanted.window_start,
            wanted.window_end,
        ):
            return self._describe(record, status=200)  # the same schedule again: nothing to change
        try:
            self.store.claim(wanted, begin=False)
        except StateChanged:
            return _not_now("busy", "the installation changed while this schedule was recorded; retry")
        self._record("MigrationsScheduled", 1)
        logger.info(
            "realm migration scheduled",
            extra={"migration_id": window.migration_id, "destination": window.location},
        )
        return self._describe(wanted, status=200)

    def start(self, installation_id: str, window: MigrationWindow, remaining_ms: Callable[[], int]) -> HookAnswer:
        installation = self.registry.get(installation_id)
        refusal = self._refusal(installation, window)
        if refusal is not None:
            return refusal
        assert installation is not None  # _refusal refused a missing one
        record = self.store.get(installation_id, window.migration_id)
        if record is not None and record.state != MigrationState.SCHEDULED:
            if record.state == MigrationState.COPYING:
                record = self._progress(record, remaining_ms)  # a repeated start: carry on
            return self._describe(record, status=200)
        blocked = self._held_by_another(installation, window.migration_id)
        if blocked is not None:
            return blocked
        now = clock.now()
        if record is None:
            logger.warning("realm migration started without a schedule; scheduling it now")
            record = self._scheduled(installation_id, window)
        if now >= window.end_time:
            return _refused(422, ErrorCode.COPY_UNFINISHED, "window_passed", "the migration window has already ended")
        if record.hold_from > now:
            # Scheduled for later than it started: the hold begins now, and the copy after it settles.
            record = replace(record, hold_from=now, copy_not_before=now + self.residency.settle_s)
        begun = replace(
            record,
            state=MigrationState.COPYING,
            window_start=window.start_time,
            window_end=window.end_time,
            hold_until=window.end_time + HOLD_GRACE_S,
        )
        try:
            self.store.claim(begun, begin=True)
        except StateChanged:
            return _not_now("busy", "the installation changed while this start was recorded; retry")
        self._record("MigrationsStarted", 1)
        logger.info(
            "realm migration started",
            extra={"migration_id": window.migration_id, "destination": window.location},
        )
        return self._describe(self._progress(begun, remaining_ms), status=200)

    def status(self, installation_id: str, migration_id: str, remaining_ms: Callable[[], int]) -> HookAnswer:
        installation = self.registry.get(installation_id)
        if self._committed(installation, migration_id):
            return HookAnswer(200, self._committed_body(installation, migration_id))
        record = self.store.get(installation_id, migration_id)
        if record is None:
            if installation is None or not installation.active:
                return HookAnswer(200, failed(ErrorCode.INSTALLATION_UNKNOWN, message="installation not served here"))
            return HookAnswer(200, failed(ErrorCode.OTHER, message="no such migration here"))
        if record.state in (MigrationState.SCHEDULED, MigrationState.COPYING):
            if installation is None or not installation.active:  # uninstalled meanwhile: nothing to move
                record = self._fail(record, ErrorCode.INSTALLATION_UNKNOWN, "the installation was uninstalled")
            elif record.state == MigrationState.SCHEDULED and clock.now() >= record.window_end:
                record = self._fail(record, ErrorCode.COPY_UNFINISHED, "the window ended before the migration started")
            elif record.state == MigrationState.COPYING:
                record = self._progress(record, remaining_ms)
        return self._describe(record, status=200)

    def commit(self, installation_id: str, migration_id: str, remaining_ms: Callable[[], int]) -> HookAnswer:
        installation = self.registry.get(installation_id)
        if self._committed(installation, migration_id):
            return self._purge(installation_id, migration_id, remaining_ms)  # commit again: finish the purge
        if installation is None or not installation.active:
            return _refused(422, ErrorCode.INSTALLATION_UNKNOWN, "unknown_installation", "installation not served here")
        record = self.store.get(installation_id, migration_id)
        if record is None:
            return _refused(409, ErrorCode.OTHER, "unknown_migration", "no such migration here: nothing to commit")
        refusal = self._not_committable(installation, record)
        if refusal is not None:
            return refusal
        try:
            self.store.begin_commit(record, record.destination)
        except StateChanged:
            return _not_now("busy", "the migration changed while it was committed; retry")
        self._record("MigrationsCommitted", 1)
        logger.info(
            "realm migration committed: the installation is served by its new realm",
            extra={"migration_id": migration_id, "destination": record.destination},
        )
        return self._purge(installation_id, migration_id, remaining_ms)

    def _not_committable(self, installation: Installation, record: MigrationRecord) -> HookAnswer | None:
        """Why ``record`` cannot be committed now, or None: not copied yet (or failed), the hold lapsed, or a
        call is still working on it."""
        if record.state != MigrationState.COPIED:
            return self._describe(record, status=409, error="not_ready")
        now = clock.now()
        if installation.hold_until is None or installation.hold_until <= now:
            return _refused(
                409,
                ErrorCode.COPY_UNFINISHED,
                "hold_lapsed",
                "the migration's hold ended before the commit: jobs ran here since the copy",
            )
        if record.leased(now):
            return _not_now("busy", "a call is still working on this migration; retry")
        return None

    def rollback(self, installation_id: str, migration_id: str, remaining_ms: Callable[[], int]) -> HookAnswer:
        installation = self.registry.get(installation_id)
        record = None if self._committed(installation, migration_id) else self.store.get(installation_id, migration_id)
        if self._committed(installation, migration_id) or (record and record.state == MigrationState.COMMITTING):
            realm = installation.moved_to if installation else None
            message = (
                f"the migration was committed: the installation's data lives in realm {realm} now,"
                " and nothing is left here to undo"
            )
            return HookAnswer(409, {"error": "committed", "message": message, "migrationId": migration_id})
        if record is None:
            body = {"migrationId": migration_id, "state": MigrationState.ROLLED_BACK.value, "removed": 0}
            return HookAnswer(200, {**body, "message": "no such migration here: nothing to undo"})
        if record.state not in ROLLBACK_FROM:  # rolled back before, or superseded: the same answer again
            again = {"migrationId": migration_id, "state": record.state.value, "removed": record.removed}
            return HookAnswer(200, again)
        if record.leased(clock.now()):
            return _not_now("busy", "a call is still copying for this migration; retry")
        if record.state != MigrationState.ROLLING_BACK:
            try:
                self.store.begin_rollback(record)
            except StateChanged:
                return _not_now("busy", "the migration changed while it was rolled back; retry")
            record = replace(record, state=MigrationState.ROLLING_BACK)
        return self._remove_copy(record, remaining_ms)

    # -- the work
    def _progress(self, record: MigrationRecord, remaining_ms: Callable[[], int]) -> MigrationRecord:
        """Copy as far as this call's time allows; the record as it is afterwards."""
        now = clock.now()
        if now >= record.window_end:
            return self._fail(record, ErrorCode.COPY_UNFINISHED, "the window ended before the copy finished")
        if now < record.copy_not_before:
            return record  # the job hold has not settled yet: the next call copies
        peer = self.residency.peer(record.destination)
        if peer is None:  # PeerAppTables changed since the schedule
            return self._fail(record, ErrorCode.DESTINATION_NOT_SERVED, "the destination is no longer configured")
        deadline = Deadline(remaining_ms, self.reserve_ms)
        destination = self._destination_client(peer.region)
        if record.cursor is None and not self._earlier_rollbacks_finished(record, destination, peer.arn, deadline):
            return record  # an earlier migration's copy is still being removed from the destination first
        taken = self.store.take_lease(record, until=now + remaining_ms() / 1000 + 1)
        if taken is None:
            return self.store.get(record.installation_id, record.migration_id) or record  # another call copies
        lease: str = taken
        copier = PartitionCopier(self.source, self.app_table, destination, peer.arn, record.migration_id)
        try:
            report = copier.copy(
                record.installation_id,
                cursor=record.cursor,
                deadline=deadline,
                progress=lambda cursor, n: self.store.record_progress(record, lease, cursor, n),
            )
        except StateChanged:
            logger.warning("realm migration copy lost its lease; the next call resumes it")
        except Exception:
            self.store.release_lease(record, lease)  # an AWS error of the source: the answer says so
            raise
        else:
            self._settle(record, lease, report)
        return self.store.get(record.installation_id, record.migration_id) or record

    def _settle(self, record: MigrationRecord, lease: str, report: CopyReport) -> None:
        """Record what one call's copy came to, and give up its lease."""
        self._record("MigrationItemsCopied", report.copied)
        if report.complete:
            self.store.finish_copy(record, lease)
            self._record("MigrationsReady", 1)
        elif report.conflict is not None:
            reason = f"the destination holds a {report.conflict} item this migration did not write"
            self._fail(record, ErrorCode.DESTINATION_CONFLICT, reason, lease_id=lease)
        elif report.unreachable is not None:
            reason = f"the destination table cannot be used ({report.unreachable})"
            self._fail(record, ErrorCode.DESTINATION_NOT_SERVED, reason, lease_id=lease)
        else:
            if report.interrupted:
                logger.warning(
                    "realm migration copy interrupted; the next call resumes it",
                    extra={"migration_id": record.migration_id, "error": report.interrupted},
                )
            self.store.release_lease(record, lease)

    def _earlier_rollbacks_finished(
        self, record: MigrationRecord, destination: DynamoDBClient, arn: str, deadline: Deadline
    ) -> bool:
        """Finish removing what an earlier migration of this installation, rolled back out of time, left in
        the destination: its items would otherwise be a conflict (E0002) for this copy."""
        page = self.source.query(
            TableName=self.app_table,
            KeyConditionExpression="pk = :pk AND begins_with(sk, :migration)",
            ExpressionAttributeValues={
                ":pk": {"S": installation_pk(record.installation_id)},
                ":migration": {"S": MIGRATION_SK_PREFIX},
            },
            ConsistentRead=True,
        )
        for item in page.get("Items", []):
            other_id = item.get("migrationId", {}).get("S")
            if not other_id or other_id == record.migration_id:
                continue
            if item.get("state", {}).get("S") != MigrationState.ROLLING_BACK.value:
                continue
            other = self.store.get(record.installation_id, other_id)
            if other is None or other.destination != record.destination:
                continue
            report = CopyRemover(destination, arn, other_id).remove(record.installation_id, deadline=deadline)
            if not report.complete:
                return False
            self.store.finish_rollback(other, report.removed)
        return True

    def _remove_copy(self, record: MigrationRecord, remaining_ms: Callable[[], int]) -> HookAnswer:
        peer = self.residency.peer(record.destination)
        removed, complete = 0, True
        if peer is not None:
            remover = CopyRemover(self._destination_client(peer.region), peer.arn, record.migration_id)
            report = remover.remove(record.installation_id, deadline=Deadline(remaining_ms, self.reserve_ms))
            removed, complete = report.removed, report.complete
        if not complete:
            self.store.count_removed(record, removed)
            logger.warning("realm migration rollback not finished in time", extra={"removed": removed})
            self._record("MigrationRollbacksIncomplete", 1)
            return _not_now(
                "rollback_incomplete",
                "the destination's copy is still being removed; retry",
                migrationId=record.migration_id,
                removed=record.removed + removed,
            )
        self.store.finish_rollback(record, removed)
        self._record("MigrationsRolledBack", 1)
        logger.info("realm migration rolled back", extra={"migration_id": record.migration_id, "removed": removed})
        body = {"migrationId": record.migration_id, "state": MigrationState.ROLLED_BACK.value}
        return HookAnswer(200, {**body, "removed": record.removed + removed})

    def _purge(self, installation_id: str, migration_id: str, remaining_ms: Callable[[], int]) -> HookAnswer:
        """The source's copy goes: tokens at once, the partition as far as time allows (the sweep finishes)."""
        report = self._cleanup().resume(installation_id, remaining_ms=remaining_ms)
        installation = self.registry.get(installation_id)
        body = self._committed_body(installation, migration_id)
        body.update(tokensDeleted=report.tokens_deleted, itemsDeleted=report.deleted)
        body["sourceCleanup"] = "complete" if report.complete else "pending"
        return HookAnswer(200, body)

    def _fail(
        self, record: MigrationRecord, code: ErrorCode, reason: str, *, lease_id: str | None = None
    ) -> MigrationRecord:
        try:
            self.store.fail(record, code.value, reason, lease_id=lease_id)
            self._record("MigrationsFailed", 1)
            extra = {"migration_id": record.migration_id, "code": code.value, "reason": reason}
            logger.warning("realm migration failed", extra=extra)
        except StateChanged:
            pass  # another call moved it on (or holds the lease): read what it did
        return self.store.get(record.installation_id, record.migration_id) or record

    # -- what is allowed, and the answers
    def _refusal(self, installation: Installation | None, window: MigrationWindow) -> HookAnswer | None:
        """Why this stack cannot take on ``window``'s migration at all, or None."""
        if self._committed(installation, window.migration_id):
            assert installation is not None  # committed means a tombstone
            return HookAnswer(200, self._committed_body(installation, window.migration_id))
        if installation is None or not installation.active:
            return _refused(422, ErrorCode.INSTALLATION_UNKNOWN, "unknown_installation", "installation not served here")
        if window.location == self.residency.realm:
            message = f"the installation is in realm {self.residency.realm} already"
            return _refused(422, ErrorCode.DESTINATION_NOT_SERVED, "destination_not_served", message)
        if self.residency.peer(window.location) is None:
            message = f"this deployment does not serve realm {window.location} (PeerAppTables)"
            return _refused(422, ErrorCode.DESTINATION_NOT_SERVED, "destination_not_served", message)
        return None

    def _held_by_another(self, installation: Installation, migration_id: str) -> HookAnswer | None:
        """Another migration holds the installation: one only scheduled gives way, else this one is refused."""
        other_id = installation.migration_id
        if other_id is None or other_id == migration_id:
            return None
        other = self.store.get(installation.installation_id, other_id)
        if other is not None and other.state == MigrationState.SCHEDULED:
            try:
                self.store.supersede(other)
            except StateChanged:
                return _not_now("busy", "another migration of this installation changed; retry")
            return None
        message = f"another migration ({other_id}) of this installation is in progress"
        return _refused(409, ErrorCode.OTHER, "migration_in_progress", message)

    def _scheduled(self, installation_id: str, window: MigrationWindow) -> MigrationRecord:
        """A new record for ``window``: the hold never starts before it is written (now)."""
        hold_from = max(clock.now(), window.start_time - self.residency.settle_s)
        return MigrationRecord(
            installation_id=installation_id,
            migration_id=window.migration_id,
            destination=window.location,
            state=MigrationState.SCHEDULED,
            window_start=window.start_time,
            window_end=window.end_time,
            hold_from=int(hold_from),
            hold_until=int(window.end_time + HOLD_GRACE_S),
            copy_not_before=int(hold_from) + self.residency.settle_s,
        )

    @staticmethod
    def _committed(installation: Installation | None, migration_id: str) -> bool:
        return (
            installation is not None
            and installation.status == InstallationStatus.MOVED
            and installation.migration_id == migration_id
        )

    @staticmethod
    def _committed_body(installation: Installation | None, migration_id: str) -> dict[str, Any]:
        return {
            "migrationId": migration_id,
            "status": READY_TO_COMMIT,
            "state": "committed",
            "movedTo": installation.moved_to if installation else None,
        }

    def _describe(self, record: MigrationRecord, *, status: int, error: str | None = None) -> HookAnswer:
        """The answer for ``record`` as it stands: what ``status`` says, and what the other hooks echo.

        ``error`` (commit before ready): the answer names why it is refused. A failed migration always
        carries its code, so Forge does not retry what cannot succeed.
        """
        body: dict[str, Any] = {
            "migrationId": record.migration_id,
            "state": record.state.value,
            "destination": record.destination,
            "copied": record.copied,
        }
        if record.state in (MigrationState.COPIED, MigrationState.COMMITTING):
            body["status"] = READY_TO_COMMIT
        elif record.state == MigrationState.FAILED:
            code = ErrorCode(record.error_code) if record.error_code in set(ErrorCode) else ErrorCode.OTHER
            return HookAnswer(status, {**body, **failed(code, message=record.error_reason or "the migration failed")})
        elif record.state in (MigrationState.ROLLING_BACK, MigrationState.ROLLED_BACK, MigrationState.SUPERSEDED):
            return HookAnswer(status, {**body, **failed(ErrorCode.OTHER, message=f"the migration was {record.state}")})
        else:
            body["status"] = IN_PROGRESS
            if record.state == MigrationState.COPYING and clock.now() < record.copy_not_before:
                body["copyBegins"] = clock.iso(record.copy_not_before)  # the job hold is settling
        if error is not None:
            body.update(error=error, message=f"the migration is {record.state}, not ready to commit")
        return HookAnswer(status, body)
