"""Job results in the app table: ``pk = INST#<installationId>``, ``sk = <kind>#<key>``.

Records are JSON documents (``data``) so a job can store what it likes without a schema change;
``put`` is an upsert, which makes a re-run of the same job idempotent.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from forge_remote import clock
from forge_remote.installations import installation_pk

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

_KIND_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ_")


class ResultStore:
    def __init__(self, client: DynamoDBClient, table_name: str) -> None:
        self._client = client
        self.table_name = table_name

    @staticmethod
    def _sk(kind: str, key: str) -> str:
        if not kind or not set(kind) <= _KIND_CHARS:
            raise ValueError("result kind must be UPPER_CASE letters and underscores")
        return f"{kind}#{key}"

    def put(
        self, installation_id: str, kind: str, key: str, record: dict[str, Any], *, ttl_s: int | None = None
    ) -> None:
        now = clock.now()
        item: dict[str, Any] = {
            "pk": {"S": installation_pk(installation_id)},
            "sk": {"S": self._sk(kind, key)},
            "data": {"S": json.dumps(record, sort_keys=True, default=str)},
            "updatedAt": {"N": str(int(now))},
        }
        if ttl_s is not None:
            item["ttl"] = {"N": str(int(now + ttl_s))}
        self._client.put_item(TableName=self.table_name, Item=item)

    def get(self, installation_id: str, kind: str, key: str) -> dict[str, Any] | None:
        item = self._client.get_item(
            TableName=self.table_name,
            Key={"pk": {"S": installation_pk(installation_id)}, "sk": {"S": self._sk(kind, key)}},
            ConsistentRead=True,
        ).get("Item")
        if not item:
            return None
        record: dict[str, Any] = json.loads(item["data"]["S"])
        return record

    def list(self, installation_id: str, kind: str) -> list[dict[str, Any]]:
        paginator = self._client.get_paginator("query")
        records: list[dict[str, Any]] = []
        for page in paginator.paginate(
            TableName=self.table_name,
            KeyConditionExpression="pk = :pk AND begins_with(sk, :prefix)",
            ExpressionAttributeValues={
                ":pk": {"S": installation_pk(installation_id)},
                ":prefix": {"S": self._sk(kind, "")},
            },
            ConsistentRead=True,
        ):
            records.extend(json.loads(i["data"]["S"]) for i in page.get("Items", []))
        return records
