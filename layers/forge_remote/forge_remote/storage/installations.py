"""The installation registry (app table): who is installed, where, and since when.

Items (keys from ``storage/table_keys.py``): ``pk = INST#<installationId>``, ``sk = INSTALLATION``. Active
installations also carry ``activePk = "ACTIVE"`` and ``activeSk = <installationId>``, a sparse GSI
(``ActiveInstallations``) that the scheduler pages through without reading any token item.
Uninstalled is terminal: an installation id changes on reinstall, so nothing revives it. A FIT that
acted on a destructive route is recorded under ``sk = FIT#<jti>`` until ``ONCE_TTL_S`` has passed.

Every registry item carries a DynamoDB ``ttl``: an active one ``ACTIVE_TTL_S`` ahead, pushed forward by
every token delivery (Forge calls at least hourly), so an installation whose uninstall never reached
us still ages out; an uninstalled one until its data's retention ends plus ``TOMBSTONE_GRACE_S`` (the
tombstone refuses late token writes). While its cleanup (``lifecycle/cleanup.py``) is pending, an uninstalled
item sits in the same sparse GSI under ``activePk = "CLEANUP"``, where the scheduled sweep finds it.

A data residency realm migration (``lifecycle/migration.py``) adds three things here. While it runs,
the item holds the migration (``migrationId``) and a job hold (``holdFrom``..``holdUntil``: the worker
defers the installation's jobs in that span), and from its start it sits under ``activePk = MIGRATING``,
out of the scheduler's ``ACTIVE`` partition; a token delivery leaves that partition alone
(``if_not_exists``). Once committed the installation is ``moved`` (terminal here, like uninstalled): the
item becomes a tombstone naming the realm it moved to (``movedTo``), which refuses every later write,
until ``MOVED_TOMBSTONE_S`` has passed.

The registry takes plain values (``InstallationFacts``), not a verified ``Invocation``: storage knows
nothing of FITs, and the caller (``inbound/wiring.py``) says which facts of a call are recorded.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from forge_remote import clock
from forge_remote.storage.table_keys import (
    ACTIVE_PK,
    CLEANUP_PK,
    INSTALLATION_SK,
    MIGRATING_PK,
    installation_pk,
    once_sk,
)

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_dynamodb.type_defs import TransactWriteItemTypeDef

ACTIVE_INDEX = "ActiveInstallations"


class InstallationStatus(enum.StrEnum):
    ACTIVE = "active"
    UNINSTALLED = "uninstalled"  # terminal: an installation id changes on reinstall, so nothing revives it
    MOVED = "moved"  # terminal here: a realm migration committed it to another regional stack


ONCE_TTL_S = 3600  # far beyond a FIT's lifetime (at most 5 min, plus clock leeway)
ACTIVE_TTL_S = 90 * 86400  # refreshed by every token delivery: only a silently vanished installation ages out
# An uninstalled item outlives its data by this much: a token write racing the uninstall (a FIT lives
# 5 min, a Forge retry a few more) must still find it and fail its "still installed" condition.
TOMBSTONE_GRACE_S = 86400
# A moved installation's tombstone: long after any call Forge still had in flight or would retry to this
# stack, so every straggler is refused (409 "moved") instead of recreating the installation here.
MOVED_TOMBSTONE_S = 30 * 86400
# What a moved installation's tombstone keeps: ids, the realm, times. Nothing about the site.
_MOVED_DROPS = "apiBaseUrl, siteUrl, cloudId, environmentType, environmentId, appVersion, holdFrom, holdUntil"


@dataclass(frozen=True)
class UninstallMark:
    """What ``mark_uninstalled`` recorded: when, until when the data is kept, where the cleanup stopped."""

    uninstalled_at: int
    retain_until: int
    cursor: str | None = None
    moved: bool = False  # a realm migration committed: the data lives elsewhere, none is retained here


@dataclass(frozen=True)
class InstallationFacts:
    """What a verified call tells the registry about its installation (the optional ones when known)."""

    installation_id: str
    api_base_url: str
    cloud_id: str | None = None
    site_url: str | None = None
    environment_type: str | None = None
    environment_id: str | None = None
    app_version: str | None = None


@dataclass(frozen=True)
class Installation:
    installation_id: str
    status: InstallationStatus
    api_base_url: str | None = None
    cloud_id: str | None = None
    environment_type: str | None = None
    installed_at: float | None = None
    uninstalled_at: float | None = None
    moved_to: str | None = None  # the realm a committed migration moved it to
    migration_id: str | None = None  # the realm migration holding it, if any
    hold_from: float | None = None  # ...whose job hold spans holdFrom..holdUntil (epoch seconds)
    hold_until: float | None = None

    @property
    def active(self) -> bool:
        return self.status == InstallationStatus.ACTIVE

    def held(self, now: float) -> bool:
        """Are its jobs held for a realm migration at ``now``? (They are deferred, not failed.)"""
        return self.hold_from is not None and self.hold_until is not None and self.hold_from <= now < self.hold_until


def _s(item: dict[str, Any], name: str) -> str | None:
    value = item.get(name, {}).get("S")
    return value if isinstance(value, str) else None


def _n(item: dict[str, Any], name: str) -> float | None:
    value = item.get(name, {}).get("N")
    return float(value) if isinstance(value, str) else None


_GONE = (InstallationStatus.UNINSTALLED.value, InstallationStatus.MOVED.value)


class InstallationRegistry:
    def __init__(self, client: DynamoDBClient, table_name: str) -> None:
        self._client = client
        self.table_name = table_name

    def _key(self, installation_id: str) -> dict[str, Any]:
        return {"pk": {"S": installation_pk(installation_id)}, "sk": {"S": INSTALLATION_SK}}

    def _active_update(self, facts: InstallationFacts, extra_set: str = "") -> dict[str, Any]:
        """An UpdateItem that marks the installation seen and active unless it was uninstalled."""
        now = {"N": str(int(clock.now()))}
        values: dict[str, Any] = {
            ":id": {"S": facts.installation_id},
            ":url": {"S": facts.api_base_url},
            ":now": now,
            ":active": {"S": InstallationStatus.ACTIVE.value},
            ":activePk": {"S": ACTIVE_PK},
            ":ttl": {"N": str(int(clock.now()) + ACTIVE_TTL_S)},
        }
        sets = [
            "installationId = :id",
            "apiBaseUrl = :url",
            "updatedAt = :now",
            "firstSeenAt = if_not_exists(firstSeenAt, :now)",
            "#status = :active",
            # Kept if set: an installation held by a realm migration stays out of the scheduler's ACTIVE
            # partition while Forge keeps delivering tokens (active items always hold one).
            "activePk = if_not_exists(activePk, :activePk)",
            "activeSk = :id",
            "#ttl = :ttl",
        ]
        optional = {
            "cloudId": facts.cloud_id,
            "siteUrl": facts.site_url,
            "environmentType": facts.environment_type,
            "environmentId": facts.environment_id,
            "appVersion": facts.app_version,
        }
        for name, value in optional.items():
            if value:
                values[f":{name}"] = {"S": value}
                sets.append(f"{name} = :{name}")
        if extra_set:
            sets.append(extra_set)
        return {
            "TableName": self.table_name,
            "Key": self._key(facts.installation_id),
            "UpdateExpression": "SET " + ", ".join(sets),
            # Neither uninstalled nor moved to another realm: both are terminal here.
            "ConditionExpression": "attribute_not_exists(#status) OR #status = :active",
            "ExpressionAttributeNames": {"#status": "status", "#ttl": "ttl"},
            "ExpressionAttributeValues": values,
        }

    def active_guard(self, facts: InstallationFacts) -> TransactWriteItemTypeDef:
        """The transaction item a token write is bundled with: fails if the installation is gone."""
        return {"Update": self._active_update(facts)}  # type: ignore[typeddict-item]

    def still_installed(self, installation_id: str) -> TransactWriteItemTypeDef:
        """A transaction item that fails unless the installation is active, changing nothing: for token
        writes that must not outlive an uninstall but have no call's facts to record (offline mints)."""
        check: dict[str, Any] = {
            "ConditionCheck": {
                "TableName": self.table_name,
                "Key": self._key(installation_id),
                "ConditionExpression": "#status = :active",
                "ExpressionAttributeNames": {"#status": "status"},
                "ExpressionAttributeValues": {":active": {"S": InstallationStatus.ACTIVE.value}},
            }
        }
        return check  # type: ignore[return-value]

    def record_lifecycle(self, facts: InstallationFacts, event_type: str) -> bool:
        """Record installed/upgraded. False if the installation was already uninstalled."""
        field = "upgradedAt" if event_type.endswith(":upgraded:app") else "installedAt"
        update = self._active_update(facts, f"{field} = :now, lastLifecycleEvent = :event")
        update["ExpressionAttributeValues"][":event"] = {"S": event_type[:100]}
        try:
            self._client.update_item(**update)
        except self._client.exceptions.ConditionalCheckFailedException:
            return False
        return True

    def mark_uninstalled(self, installation_id: str, *, retention_s: int = 0) -> UninstallMark:
        """Terminal: out of the active index (before its tokens are deleted), into the cleanup one.

        Idempotent: a retry keeps the first ``uninstalledAt`` and retention deadline, and returns the
        cursor where an interrupted cleanup stopped. The item expires ``TOMBSTONE_GRACE_S`` after the
        data it stands for.
        """
        now = int(clock.now())
        attributes = self._client.update_item(
            TableName=self.table_name,
            Key=self._key(installation_id),
            UpdateExpression=(
                "SET installationId = :id, #status = :uninstalled, uninstalledAt = if_not_exists(uninstalledAt, :now),"
                " retainUntil = if_not_exists(retainUntil, :retain), activePk = :cleanup, activeSk = :id"
            ),
            ExpressionAttributeNames={"#status": "status"},
            ExpressionAttributeValues={
                ":id": {"S": installation_id},
                ":uninstalled": {"S": InstallationStatus.UNINSTALLED.value},
                ":now": {"N": str(now)},
                ":retain": {"N": str(now + max(0, retention_s))},
                ":cleanup": {"S": CLEANUP_PK},
            },
            ReturnValues="ALL_NEW",
        )["Attributes"]
        mark = UninstallMark(
            uninstalled_at=int(_n(attributes, "uninstalledAt") or now),
            retain_until=int(_n(attributes, "retainUntil") or now),
            cursor=_s(attributes, "cleanupCursor"),
        )
        self._client.update_item(
            TableName=self.table_name,
            Key=self._key(installation_id),
            UpdateExpression="SET #ttl = :ttl",
            ExpressionAttributeNames={"#ttl": "ttl"},
            ExpressionAttributeValues={":ttl": {"N": str(mark.retain_until + TOMBSTONE_GRACE_S)}},
        )
        return mark

    def cleanup_state(self, installation_id: str) -> UninstallMark | None:
        """The uninstall (or move) record of an installation whose cleanup is still pending, else None."""
        item = self._client.get_item(
            TableName=self.table_name, Key=self._key(installation_id), ConsistentRead=True
        ).get("Item")
        status = _s(item, "status") if item else None
        if not item or status not in _GONE or _s(item, "activePk") != CLEANUP_PK:
            return None
        now = int(clock.now())
        if status == InstallationStatus.MOVED:
            moved_at = int(_n(item, "movedAt") or now)
            return UninstallMark(moved_at, moved_at, cursor=_s(item, "cleanupCursor"), moved=True)
        return UninstallMark(
            uninstalled_at=int(_n(item, "uninstalledAt") or now),
            retain_until=int(_n(item, "retainUntil") or now),
            cursor=_s(item, "cleanupCursor"),
        )

    def record_cleanup_cursor(self, installation_id: str, cursor: str) -> None:
        """Where the cleanup walk got to (the last sort key handled): a retry continues after it."""
        self._client.update_item(
            TableName=self.table_name,
            Key=self._key(installation_id),
            UpdateExpression="SET cleanupCursor = :cursor",
            ConditionExpression="#status IN (:uninstalled, :moved)",
            ExpressionAttributeNames={"#status": "status"},
            ExpressionAttributeValues={
                ":cursor": {"S": cursor},
                ":uninstalled": {"S": InstallationStatus.UNINSTALLED.value},
                ":moved": {"S": InstallationStatus.MOVED.value},
            },
        )

    def finish_cleanup(self, installation_id: str, *, strip_site: bool) -> None:
        """The cleanup walked the whole partition: out of the cleanup index. ``strip_site`` (no retention)
        also drops the site URL, leaving a tombstone of ids and times only."""
        removed = "activePk, activeSk, cleanupCursor" + (", siteUrl" if strip_site else "")
        self._client.update_item(
            TableName=self.table_name,
            Key=self._key(installation_id),
            UpdateExpression=f"SET cleanedAt = :now REMOVE {removed}",
            ConditionExpression="#status IN (:uninstalled, :moved)",
            ExpressionAttributeNames={"#status": "status"},
            ExpressionAttributeValues={
                ":now": {"N": str(int(clock.now()))},
                ":uninstalled": {"S": InstallationStatus.UNINSTALLED.value},
                ":moved": {"S": InstallationStatus.MOVED.value},
            },
        )

    def iter_cleanup_pending_ids(self, page_size: int = 100) -> Iterator[list[str]]:
        """Uninstalled (or moved) installations whose cleanup has not finished, one list per GSI page."""
        yield from self._iter_index(CLEANUP_PK, page_size)

    # -- realm migrations (the MIGRATION# records themselves are storage/migrations.py's)
    def migration_hold(
        self, installation_id: str, migration_id: str, *, hold_from: float, hold_until: float, begin: bool
    ) -> TransactWriteItemTypeDef:
        """The transaction item that makes ``migration_id`` the installation's migration, with its job hold.

        Fails unless the installation is active and held by no other migration. ``begin`` (the migration's
        start) also moves it to the ``MIGRATING`` partition, out of the scheduler's sight. The caller
        chooses the span (``lifecycle/migration.py``: never starting before the hold is written).
        """
        sets = "migrationId = :mid, holdFrom = :from, holdUntil = :until"
        values: dict[str, Any] = {
            ":mid": {"S": migration_id},
            ":from": {"N": str(int(hold_from))},
            ":until": {"N": str(int(hold_until))},
            ":active": {"S": InstallationStatus.ACTIVE.value},
        }
        if begin:
            sets += ", activePk = :migrating, activeSk = :id"
            values[":migrating"] = {"S": MIGRATING_PK}
            values[":id"] = {"S": installation_id}
        update: dict[str, Any] = {
            "Update": {
                "TableName": self.table_name,
                "Key": self._key(installation_id),
                "UpdateExpression": f"SET {sets}",
                "ConditionExpression": (
                    "#status = :active AND (attribute_not_exists(migrationId) OR migrationId = :mid)"
                ),
                "ExpressionAttributeNames": {"#status": "status"},
                "ExpressionAttributeValues": values,
            }
        }
        return update  # type: ignore[return-value]

    def migration_release(self, installation_id: str, migration_id: str) -> TransactWriteItemTypeDef:
        """The transaction item that ends ``migration_id``'s hold (a rollback): jobs and schedules resume.

        Fails if another migration, or none, holds the installation: the caller reads why.
        """
        update: dict[str, Any] = {
            "Update": {
                "TableName": self.table_name,
                "Key": self._key(installation_id),
                "UpdateExpression": "SET activePk = :activePk, activeSk = :id REMOVE migrationId, holdFrom, holdUntil",
                "ConditionExpression": "#status = :active AND migrationId = :mid",
                "ExpressionAttributeNames": {"#status": "status"},
                "ExpressionAttributeValues": {
                    ":mid": {"S": migration_id},
                    ":activePk": {"S": ACTIVE_PK},
                    ":id": {"S": installation_id},
                    ":active": {"S": InstallationStatus.ACTIVE.value},
                },
            }
        }
        return update  # type: ignore[return-value]

    def migration_commit(self, installation_id: str, migration_id: str, realm: str) -> TransactWriteItemTypeDef:
        """The transaction item that makes the installation a ``moved`` tombstone: terminal here.

        Only while ``migration_id`` holds it and its hold has not lapsed (after ``holdUntil`` jobs run
        again here, so the destination's copy may no longer be complete). It leaves the site's details
        behind, goes into the ``CLEANUP`` partition (the rest of its data here is deleted by the same walk
        as an uninstall's, resumed by the sweep) and expires after ``MOVED_TOMBSTONE_S``.
        """
        now = int(clock.now())
        update: dict[str, Any] = {
            "Update": {
                "TableName": self.table_name,
                "Key": self._key(installation_id),
                "UpdateExpression": (
                    "SET #status = :moved, movedTo = :realm, movedAt = :now, activePk = :cleanup, activeSk = :id,"
                    f" #ttl = :ttl REMOVE {_MOVED_DROPS}"
                ),
                "ConditionExpression": "#status = :active AND migrationId = :mid AND holdUntil > :now",
                "ExpressionAttributeNames": {"#status": "status", "#ttl": "ttl"},
                "ExpressionAttributeValues": {
                    ":moved": {"S": InstallationStatus.MOVED.value},
                    ":realm": {"S": realm},
                    ":now": {"N": str(now)},
                    ":cleanup": {"S": CLEANUP_PK},
                    ":id": {"S": installation_id},
                    ":ttl": {"N": str(now + MOVED_TOMBSTONE_S)},
                    ":mid": {"S": migration_id},
                    ":active": {"S": InstallationStatus.ACTIVE.value},
                },
            }
        }
        return update  # type: ignore[return-value]

    def iter_held_ids(self, page_size: int = 100) -> Iterator[list[str]]:
        """Installations held by a realm migration (the ``MIGRATING`` partition), one list per GSI page."""
        yield from self._iter_index(MIGRATING_PK, page_size)

    def release_lapsed_hold(self, installation_id: str) -> bool:
        """Back to the scheduler if its migration's hold has lapsed (no commit or rollback came before
        ``holdUntil``): True if released. The migration's record is left as it is; without the hold it can
        no longer be committed (``migration_commit``)."""
        try:
            self._client.update_item(
                TableName=self.table_name,
                Key=self._key(installation_id),
                UpdateExpression="SET activePk = :activePk REMOVE migrationId, holdFrom, holdUntil",
                ConditionExpression="#status = :active AND activePk = :migrating AND holdUntil <= :now",
                ExpressionAttributeNames={"#status": "status"},
                ExpressionAttributeValues={
                    ":activePk": {"S": ACTIVE_PK},
                    ":migrating": {"S": MIGRATING_PK},
                    ":active": {"S": InstallationStatus.ACTIVE.value},
                    ":now": {"N": str(int(clock.now()))},
                },
            )
        except self._client.exceptions.ConditionalCheckFailedException:
            return False
        return True

    def act_once(self, installation_id: str, invocation_id: str, *, ttl_s: int = ONCE_TTL_S) -> bool:
        """Record that the call with this FIT ``jti`` acted; False if it already did (a replay).

        For destructive routes: a FIT captured in transit must not act twice. The record expires
        (DynamoDB TTL) well after the FIT itself has, so replays are refused for as long as they
        could verify at all.
        """
        now = int(clock.now())
        try:
            self._client.put_item(
                TableName=self.table_name,
                Item={
                    "pk": {"S": installation_pk(installation_id)},
                    "sk": {"S": once_sk(invocation_id)},
                    "createdAt": {"N": str(now)},
                    "ttl": {"N": str(now + ttl_s)},
                },
                ConditionExpression="attribute_not_exists(pk)",
            )
        except self._client.exceptions.ConditionalCheckFailedException:
            return False
        return True

    def release_once(self, installation_id: str, invocation_id: str) -> None:
        """Undo ``act_once`` after the action failed, so that Forge's retry of the same call can act."""
        self._client.delete_item(
            TableName=self.table_name,
            Key={"pk": {"S": installation_pk(installation_id)}, "sk": {"S": once_sk(invocation_id)}},
        )

    def get(self, installation_id: str) -> Installation | None:
        item = self._client.get_item(
            TableName=self.table_name, Key=self._key(installation_id), ConsistentRead=True
        ).get("Item")
        if not item:
            return None
        return Installation(
            installation_id=installation_id,
            status=InstallationStatus(_s(item, "status") or InstallationStatus.ACTIVE),
            api_base_url=_s(item, "apiBaseUrl"),
            cloud_id=_s(item, "cloudId"),
            environment_type=_s(item, "environmentType"),
            installed_at=_n(item, "installedAt") or _n(item, "firstSeenAt"),
            uninstalled_at=_n(item, "uninstalledAt"),
            moved_to=_s(item, "movedTo"),
            migration_id=_s(item, "migrationId"),
            hold_from=_n(item, "holdFrom"),
            hold_until=_n(item, "holdUntil"),
        )

    def iter_active_ids(self, page_size: int = 500) -> Iterator[list[str]]:
        """Active installation ids, one list per GSI page (never a scan, never a token item)."""
        yield from self._iter_index(ACTIVE_PK, page_size)

    def _iter_index(self, partition: str, page_size: int) -> Iterator[list[str]]:
        paginator = self._client.get_paginator("query")
        pages = paginator.paginate(
            TableName=self.table_name,
            IndexName=ACTIVE_INDEX,
            KeyConditionExpression="activePk = :partition",
            ExpressionAttributeValues={":partition": {"S": partition}},
            ProjectionExpression="activeSk",
            PaginationConfig={"PageSize": page_size},
        )
        for page in pages:
            ids = [s for item in page.get("Items", []) if (s := _s(item, "activeSk"))]
            if ids:
                yield ids
