"""Deleting many items (``storage/batch_delete.py``): 25 keys a request, unprocessed keys sent again, and what
DynamoDB still refuses is an error, never a silent leftover."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from forge_remote.storage.batch_delete import BATCH_WRITE_KEYS, ROUNDS, delete_keys

TABLE = "app"


def key(n: int) -> dict[str, Any]:
    return {"pk": {"S": "INST#i"}, "sk": {"S": f"K#{n:04d}"}}


@dataclass
class FakeDynamoDB:
    """``batch_write_item`` that leaves the first ``unprocessed`` deletes of each request for later."""

    unprocessed: int = 0
    requests: list[list[Any]] = field(default_factory=list)
    deleted: list[dict[str, Any]] = field(default_factory=list)

    def batch_write_item(self, *, RequestItems: dict[str, list[Any]]) -> dict[str, Any]:  # noqa: N803 (boto3's name)
        batch = RequestItems[TABLE]
        assert len(batch) <= BATCH_WRITE_KEYS
        self.requests.append(batch)
        left, done = batch[: self.unprocessed], batch[self.unprocessed :]
        self.deleted.extend(request["DeleteRequest"]["Key"] for request in done)
        return {"UnprocessedItems": {TABLE: left} if left else {}}


def test_keys_are_deleted_25_a_request() -> None:
    client = FakeDynamoDB()
    keys = [key(n) for n in range(60)]
    assert delete_keys(client, TABLE, keys) == 3  # type: ignore[arg-type]
    assert [len(r) for r in client.requests] == [25, 25, 10]
    assert client.deleted == keys


def test_unprocessed_keys_are_sent_again() -> None:
    client = FakeDynamoDB(unprocessed=10)
    keys = [key(n) for n in range(25)]
    with pytest.raises(RuntimeError, match="could not delete 10 items of app"):
        delete_keys(client, TABLE, keys)  # type: ignore[arg-type]
    assert len(client.requests) == ROUNDS  # tried again, a bounded number of times
    assert client.deleted == keys[10:]


def test_throttling_that_passes_loses_nothing() -> None:
    class Throttled(FakeDynamoDB):
        def batch_write_item(self, *, RequestItems: dict[str, list[Any]]) -> dict[str, Any]:  # noqa: N803
            self.unprocessed = 5 if len(self.requests) < 2 else 0
            return super().batch_write_item(RequestItems=RequestItems)

    client = Throttled()
    keys = [key(n) for n in range(25)]
    assert delete_keys(client, TABLE, keys) == 3  # type: ignore[arg-type]
    assert sorted(k["sk"]["S"] for k in client.deleted) == [k["sk"]["S"] for k in keys]


def test_nothing_to_delete_sends_nothing() -> None:
    client = FakeDynamoDB()
    assert delete_keys(client, TABLE, []) == 0  # type: ignore[arg-type]
    assert client.requests == []
