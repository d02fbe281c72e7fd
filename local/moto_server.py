"""moto in server mode, in this process, on 127.0.0.1: DynamoDB and SQS for the local stack.

Server mode (rather than ``mock_aws``) because the handlers must reach AWS the way they do on Lambda:
over HTTP, through boto3's own ``AWS_ENDPOINT_URL`` (no custom endpoint knob of our own). ``start()``
points this process's environment at the server with fake credentials; ``stop()`` puts it back.

``MotoServer(url=...)`` joins a server another process runs (data residency: every realm's stack in
a region of its own of ONE server, ``local/realms.py``): ``start()`` only points the environment at it,
in this stack's region, and ``stop()`` only puts the environment back; the server is never reset or
stopped from here.

One fix to moto (5.2) is applied whenever this module is loaded (``atomic_transactions_by_arn``): a
``TransactWriteItems`` whose items name their table by its ARN, as a realm migration's cross-region copy
does, was not rolled back by moto when another item's condition failed; DynamoDB writes none of them.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import requests
from moto.dynamodb.models import DynamoDBBackend
from moto.server import ThreadedMotoServer

FAKE_ENVIRONMENT = {
    "AWS_ACCESS_KEY_ID": "local",
    "AWS_SECRET_ACCESS_KEY": "local",  # moto accepts any credentials
}
# Variables that could send boto3 elsewhere or sign with real credentials while the stack runs.
_CLEARED = ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE")


def atomic_transactions_by_arn() -> None:
    """Make moto's ``TransactWriteItems`` all or nothing for tables named by their ARN too.

    moto backs up, before a transaction, the tables its items name, looking them up by name only: an item
    naming its table by ARN (``PartitionCopier`` writes the destination stack's table so) is written and
    never rolled back when another item's condition fails, where DynamoDB writes none. Naming each such
    table by its name first (the table the ARN names, as moto itself resolves it) lets the backup cover
    it; nothing else changes. Idempotent.
    """
    original = DynamoDBBackend.transact_write_items
    if getattr(original, "by_name", False):
        return

    def transact_write_items(self: DynamoDBBackend, transact_items: list[dict[str, Any]]) -> None:
        for item in transact_items:
            for operation in item.values():
                name = operation.get("TableName") if isinstance(operation, dict) else None
                if isinstance(name, str) and name.startswith("arn:") and name not in self.tables:
                    with contextlib.suppress(Exception):  # an unknown ARN: moto's own answer for it
                        operation["TableName"] = self.get_table(name).name
        original(self, transact_items)

    transact_write_items.by_name = True  # type: ignore[attr-defined]
    DynamoDBBackend.transact_write_items = transact_write_items  # type: ignore[method-assign]


atomic_transactions_by_arn()


class MotoServer:
    """One moto server on 127.0.0.1:<port> (0 = any free port), or ``url``: one another process runs."""

    def __init__(self, port: int = 0, region: str = "us-east-1", *, url: str | None = None) -> None:
        self._port = port
        self.region = region
        self._joined_url = url.rstrip("/") if url else None
        self._joined = False
        self._server: ThreadedMotoServer | None = None
        self._saved_env: dict[str, str | None] = {}

    @property
    def joined(self) -> bool:
        """A server another process runs (``url``): neither reset nor stopped from here."""
        return self._joined_url is not None

    @property
    def url(self) -> str:
        if self._joined_url is not None:
            if not self._joined:
                raise RuntimeError("moto server not joined yet")
            return self._joined_url
        if self._server is None:
            raise RuntimeError("moto server not started")
        host, port = self._server.get_host_and_port()
        return f"http://{host}:{port}"

    def start(self) -> str:
        """Start the server (or join it), point boto3 at it (environment), and return its endpoint URL."""
        if self._joined_url is not None:
            if not self._joined:
                self._joined = True
                self._point_environment()
        elif self._server is None:
            self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self._port, verbose=False)
            self._server.start()
            self._point_environment()
        return self.url

    def _point_environment(self) -> None:
        wanted: dict[str, str | None] = {
            **FAKE_ENVIRONMENT,
            "AWS_ENDPOINT_URL": self.url,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_REGION": self.region,
            **dict.fromkeys(_CLEARED),
        }
        for name, value in wanted.items():
            self._saved_env.setdefault(name, os.environ.get(name))
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value

    def reset(self) -> None:
        """Forget every table and queue (moto's own reset endpoint): a clean run. Never a joined server's:
        the other stacks' tables are in it."""
        if self.joined:
            raise RuntimeError("a joined moto server belongs to another process: it is not reset from here")
        requests.post(f"{self.url}/moto-api/reset", timeout=10).raise_for_status()

    def stop(self) -> None:
        """Stop the server and restore the environment as it was before ``start()``."""
        if self._server is not None:
            self._server.stop()
            self._server = None
        self._joined = False
        for name, value in self._saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        self._saved_env.clear()
