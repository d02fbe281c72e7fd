"""Deleting many items of one table: DynamoDB's ``BatchWriteItem``, within its limits.

25 keys a request; keys DynamoDB leaves unprocessed (throttling) are sent again, a bounded number of
times, and what is still left is an error rather than a silent leftover. Used by the uninstall's
token deletion and its data cleanup.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

BATCH_WRITE_KEYS = 25  # DynamoDB's BatchWriteItem limit
ROUNDS = 8  # requests per chunk, unprocessed keys included


def delete_keys(client: DynamoDBClient, table_name: str, keys: list[dict[str, Any]]) -> int:
    """Delete the items with these keys; returns how many requests it took. ``RuntimeError`` if
    DynamoDB still leaves some unprocessed after ``ROUNDS`` requests for a chunk."""
    requests = 0
    for start in range(0, len(keys), BATCH_WRITE_KEYS):
        pending: list[Any] = [{"DeleteRequest": {"Key": key}} for key in keys[start : start + BATCH_WRITE_KEYS]]
        for _ in range(ROUNDS):
            requests += 1
            response = client.batch_write_item(RequestItems={table_name: pending})
            pending = list(response.get("UnprocessedItems", {}).get(table_name, []))
            if not pending:
                break
        else:
            raise RuntimeError(f"could not delete {len(pending)} items of {table_name}")
    return requests
