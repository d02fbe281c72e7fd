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

The registry takes plain values (``InstallationFacts``), not a verified ``Invocation``: storage knows
nothing of FITs, and the caller (``inbound/wiring.py``) says which facts of a call are recorded.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from forge_remote import clock
from forge_remote.storage.table_keys import ACTIVE_PK, CLEANUP_PK, INSTALLATION_SK, installation_pk, once_sk

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_dynamodb.type_defs import TransactWriteItemTypeDef

ACTIVE_INDEX = "ActiveInstallations"


class InstallationStatus(enum.StrEnum):
    ACTIVE = "active"
    UNINSTALLED = "uninstalled"  # terminal: an installation id changes on reinstall, so nothing revives it


ONCE_TTL_S = 3600  # far beyond a FIT's lifetime (at most 5 min, plus clock leeway)
ACTIVE_TTL_S = 90 * 86400  # refreshed by every token delivery: only a silently vanished installation ages out
# An uninstalled item outlives its data by this much: a token write racing the uninstall (a FIT lives
# 5 min, a Forge retry a few more) must still find it and fail its "still installed" condition.
TOMBSTONE_GRACE_S = 86400


@dataclass(frozen=True)
class UninstallMark:
    """What ``mark_uninstalled`` recorded: when, until when the data is kept, where the cleanup stopped."""

    uninstalled_at: int
    retain_until: int
    cursor: str | None = None


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

    @property
    def active(self) -> bool:
        return self.status == InstallationStatus.ACTIVE


def _s(item: dict[str, Any], name: str) -> str | None:
    value = item.get(name, {}).get("S")
    return value if isinstance(value, str) else None


def _n(item: dict[str, Any], name: str) -> float | None:
    value = item.get(name, {}).get("N")
    return float(value) if isinstance(value, str) else None


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
            ":uninstalled": {"S": InstallationStatus.UNINSTALLED.value},
            ":ttl": {"N": str(int(clock.now()) + ACTIVE_TTL_S)},
        }
        sets = [
            "installationId = :id",
            "apiBaseUrl = :url",
            "updatedAt = :now",
            "firstSeenAt = if_not_exists(firstSeenAt, :now)",
            "#status = :active",
            "activePk = :activePk",
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
            "ConditionExpression": "attribute_not_exists(#status) OR #status <> :uninstalled",
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
        """The uninstall record of an installation whose cleanup is still pending, else None."""
        item = self._client.get_item(
            TableName=self.table_name, Key=self._key(installation_id), ConsistentRead=True
        ).get("Item")
        if not item or _s(item, "status") != InstallationStatus.UNINSTALLED or _s(item, "activePk") != CLEANUP_PK:
            return None
        now = int(clock.now())
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
            ConditionExpression="#status = :uninstalled",
            ExpressionAttributeNames={"#status": "status"},
            ExpressionAttributeValues={
                ":cursor": {"S": cursor},
                ":uninstalled": {"S": InstallationStatus.UNINSTALLED.value},
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
            ConditionExpression="#status = :uninstalled",
            ExpressionAttributeNames={"#status": "status"},
            ExpressionAttributeValues={
                ":now": {"N": str(int(clock.now()))},
                ":uninstalled": {"S": InstallationStatus.UNINSTALLED.value},
            },
        )

    def iter_cleanup_pending_ids(self, page_size: int = 100) -> Iterator[list[str]]:
        """Uninstalled installations whose cleanup has not finished, one list per GSI page."""
        yield from self._iter_index(CLEANUP_PK, page_size)

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
