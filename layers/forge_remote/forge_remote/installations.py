"""The installation registry (app table): who is installed, where, and since when.

Items: ``pk = INST#<installationId>``, ``sk = INSTALLATION``. Active installations also carry
``activePk = "ACTIVE"`` and ``activeSk = <installationId>``, a sparse GSI (``ActiveInstallations``)
that the scheduler pages through without reading any token item. Uninstalled is terminal: an
installation id changes on reinstall, so nothing revives it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from forge_remote import clock
from forge_remote.fit import Invocation

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_dynamodb.type_defs import TransactWriteItemTypeDef

INSTALLATION_SK = "INSTALLATION"
ACTIVE_INDEX = "ActiveInstallations"
ACTIVE = "active"
UNINSTALLED = "uninstalled"
ONCE_SK_PREFIX = "FIT#"  # a FIT that acted on a destructive route (its jti), kept until ONCE_TTL_S
ONCE_TTL_S = 3600  # far beyond a FIT's lifetime (at most 5 min, plus clock leeway)


def installation_pk(installation_id: str) -> str:
    return f"INST#{installation_id}"


@dataclass(frozen=True)
class Installation:
    installation_id: str
    status: str
    api_base_url: str | None = None
    cloud_id: str | None = None
    environment_type: str | None = None
    installed_at: float | None = None
    uninstalled_at: float | None = None

    @property
    def active(self) -> bool:
        return self.status == ACTIVE


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

    def _active_update(self, invocation: Invocation, extra_set: str = "") -> dict[str, Any]:
        """An UpdateItem that marks the installation seen and active unless it was uninstalled."""
        now = {"N": str(int(clock.now()))}
        values: dict[str, Any] = {
            ":id": {"S": invocation.installation_id},
            ":url": {"S": invocation.api_base_url},
            ":now": now,
            ":active": {"S": ACTIVE},
            ":activePk": {"S": "ACTIVE"},
            ":uninstalled": {"S": UNINSTALLED},
        }
        sets = [
            "installationId = :id",
            "apiBaseUrl = :url",
            "updatedAt = :now",
            "firstSeenAt = if_not_exists(firstSeenAt, :now)",
            "#status = :active",
            "activePk = :activePk",
            "activeSk = :id",
        ]
        optional = {
            "cloudId": invocation.cloud_id,
            "siteUrl": invocation.site_url,
            "environmentType": invocation.environment_type,
            "environmentId": invocation.environment_id,
            "appVersion": invocation.app_version,
        }
        for name, value in optional.items():
            if value:
                values[f":{name}"] = {"S": value}
                sets.append(f"{name} = :{name}")
        if extra_set:
            sets.append(extra_set)
        return {
            "TableName": self.table_name,
            "Key": self._key(invocation.installation_id),
            "UpdateExpression": "SET " + ", ".join(sets),
            "ConditionExpression": "attribute_not_exists(#status) OR #status <> :uninstalled",
            "ExpressionAttributeNames": {"#status": "status"},
            "ExpressionAttributeValues": values,
        }

    def active_guard(self, invocation: Invocation) -> TransactWriteItemTypeDef:
        """The transaction item a token write is bundled with: fails if the installation is gone."""
        return {"Update": self._active_update(invocation)}  # type: ignore[typeddict-item]

    def record_lifecycle(self, invocation: Invocation, event_type: str) -> bool:
        """Record installed/upgraded. False if the installation was already uninstalled."""
        field = "upgradedAt" if event_type.endswith(":upgraded:app") else "installedAt"
        update = self._active_update(invocation, f"{field} = :now, lastLifecycleEvent = :event")
        update["ExpressionAttributeValues"][":event"] = {"S": event_type[:100]}
        try:
            self._client.update_item(**update)
        except self._client.exceptions.ConditionalCheckFailedException:
            return False
        return True

    def mark_uninstalled(self, installation_id: str) -> None:
        """Terminal: removes the installation from the active index before its tokens are deleted."""
        self._client.update_item(
            TableName=self.table_name,
            Key=self._key(installation_id),
            UpdateExpression=(
                "SET installationId = :id, #status = :uninstalled, uninstalledAt = :now REMOVE activePk, activeSk"
            ),
            ExpressionAttributeNames={"#status": "status"},
            ExpressionAttributeValues={
                ":id": {"S": installation_id},
                ":uninstalled": {"S": UNINSTALLED},
                ":now": {"N": str(int(clock.now()))},
            },
        )

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
                    "sk": {"S": f"{ONCE_SK_PREFIX}{invocation_id[:200]}"},
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
            Key={"pk": {"S": installation_pk(installation_id)}, "sk": {"S": f"{ONCE_SK_PREFIX}{invocation_id[:200]}"}},
        )

    def get(self, installation_id: str) -> Installation | None:
        item = self._client.get_item(
            TableName=self.table_name, Key=self._key(installation_id), ConsistentRead=True
        ).get("Item")
        if not item:
            return None
        return Installation(
            installation_id=installation_id,
            status=_s(item, "status") or ACTIVE,
            api_base_url=_s(item, "apiBaseUrl"),
            cloud_id=_s(item, "cloudId"),
            environment_type=_s(item, "environmentType"),
            installed_at=_n(item, "installedAt") or _n(item, "firstSeenAt"),
            uninstalled_at=_n(item, "uninstalledAt"),
        )

    def iter_active_ids(self, page_size: int = 500) -> Iterator[list[str]]:
        """Active installation ids, one list per GSI page (never a scan, never a token item)."""
        paginator = self._client.get_paginator("query")
        pages = paginator.paginate(
            TableName=self.table_name,
            IndexName=ACTIVE_INDEX,
            KeyConditionExpression="activePk = :active",
            ExpressionAttributeValues={":active": {"S": "ACTIVE"}},
            ProjectionExpression="activeSk",
            PaginationConfig={"PageSize": page_size},
        )
        for page in pages:
            ids = [s for item in page.get("Items", []) if (s := _s(item, "activeSk"))]
            if ids:
                yield ids
