"""Fixtures for every suite: a Forge emulator on loopback, moto-backed AWS built from template.yaml, the
functions' modules, the Confluence emulator, and ``local_world``, all of it at once for one test.

AWS comes from moto (in-process), Forge and Confluence from ``local/``: no network beyond loopback. The
helpers these are built from are in ``tests/support.py``.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import pytest

from forge_remote import clock
from local.confluence_emulator import ConfluenceEmulator
from local.forge_emulator import ForgeEmulator, Site, new_installation_id
from local.moto_server import atomic_transactions_by_arn
from local.stack import LocalStack
from tests.support import Gateway, LocalWorld, body_of, load_function, moto_stack, token_items

__all__ = ["Gateway", "body_of", "token_items"]  # where tests first imported them from: now tests.support

# moto's TransactWriteItems all or nothing for tables named by ARN (the realm migration's copy), in every
# test, mock_aws ones included, whatever ran first.
atomic_transactions_by_arn()

os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("POWERTOOLS_METRICS_NAMESPACE", "ForgeRemoteTests")
os.environ.setdefault("POWERTOOLS_TRACE_DISABLED", "true")


@pytest.fixture(scope="session")
def forge() -> Iterator[ForgeEmulator]:
    emulator = ForgeEmulator()
    emulator.start()
    yield emulator
    emulator.stop()


@pytest.fixture(autouse=True)
def _wall_clock() -> Iterator[None]:
    clock.reset()
    yield
    clock.reset()


@pytest.fixture(autouse=True)
def _library_logger_as_imported() -> Iterator[None]:
    """Each loaded function points the ``forge_remote`` logger at its own Powertools handler (one
    function per process in Lambda, several here): give every test the library logger as imported."""
    yield
    library = logging.getLogger("forge_remote")
    library.handlers.clear()
    library.propagate = True
    library.setLevel(logging.NOTSET)


@pytest.fixture
def site(forge: ForgeEmulator) -> Site:
    return forge.site()


@pytest.fixture
def stack(forge: ForgeEmulator) -> Iterator[LocalStack]:
    """Tables and queues from template.yaml, in moto."""
    with moto_stack(forge) as local:
        yield local


@pytest.fixture
def atomic_dynamodb(monkeypatch: pytest.MonkeyPatch) -> None:
    """Give moto DynamoDB's per-request atomicity under threads.

    DynamoDB evaluates a condition and applies the write atomically; moto checks and then writes
    without a lock, so two racing threads can both pass a condition, and a failed transaction restores
    a copy of the table taken when it began, losing a write made meanwhile. Serialising DynamoDB
    requests keeps every interleaving of *requests* possible while restoring the atomicity of each
    one. The lock is taken around each client call and, as well, around each operation of moto's
    DynamoDB backend, which any other path (a moto server thread) reaches too. It is re-entrant: a
    transaction calls the backend's own put and update.
    """
    from botocore.client import BaseClient
    from moto.dynamodb.models import DynamoDBBackend

    original = BaseClient._make_api_call
    lock = threading.RLock()

    def make_api_call(self: BaseClient, operation_name: str, api_params: dict[str, Any]) -> Any:
        if self.meta.service_model.service_name != "dynamodb":
            return original(self, operation_name, api_params)
        with lock:
            return original(self, operation_name, api_params)

    monkeypatch.setattr(BaseClient, "_make_api_call", make_api_call)
    for name in _BACKEND_OPERATIONS:
        operation = getattr(DynamoDBBackend, name)

        def locked(self: Any, *args: Any, _operation: Any = operation, **kwargs: Any) -> Any:
            with lock:
                return _operation(self, *args, **kwargs)

        monkeypatch.setattr(DynamoDBBackend, name, locked)


_BACKEND_OPERATIONS = (
    "get_item",
    "put_item",
    "update_item",
    "delete_item",
    "query",
    "scan",
    "batch_get_item",
    "batch_write_item",
    "transact_get_items",
    "transact_write_items",
)


@pytest.fixture
def handler(stack: LocalStack) -> Callable[[str], Any]:
    """Load a function's real module with the environment the template gives it."""
    return partial(load_function, stack)


@pytest.fixture
def gateway(handler: Callable[[str], Any]) -> Gateway:
    return Gateway(handler("ForgeCallsFunction"), handler("ForgeTriggersFunction"))


@pytest.fixture
def all_logs(caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]) -> Callable[[], str]:
    """Everything logged (stdlib records and Powertools' JSON lines on stdout) so far, as one text."""
    caplog.set_level(logging.DEBUG)
    streams: list[str] = []

    def text() -> str:
        captured = capsys.readouterr()  # consumes: keep what was read for later calls
        streams.extend([captured.out, captured.err])
        records = "\n".join(f"{r.getMessage()} {json.dumps(r.__dict__, default=str)}" for r in caplog.records)
        return "\n".join([records, *streams])

    return text


# -- the Confluence side and the worker ------------------------------------------------------------------
@pytest.fixture
def confluence() -> Iterator[ConfluenceEmulator]:
    with ConfluenceEmulator() as emulator:
        yield emulator


@pytest.fixture
def confluence_site(confluence: ConfluenceEmulator) -> Site:
    """An installation whose site is the Confluence emulator (nobody has installed it yet)."""
    api_base_url = confluence.api_base_url
    return Site(
        installation_id=new_installation_id(),
        cloud_id=api_base_url.rsplit("/", 1)[1],
        api_base_url=api_base_url,
        site_url="https://example.atlassian.net",
    )


@pytest.fixture
def allow_emulator(stack: LocalStack, confluence: ConfluenceEmulator) -> None:
    """Functions loaded after this may send tokens to the emulator (http on an allowed loopback host)."""
    host = confluence.api_base_url.split("/")[2]  # 127.0.0.1:<port>
    stack.parameters["AllowedApiHosts"] = host


@pytest.fixture
def triggers(allow_emulator: None, handler: Callable[[str], Any]) -> Gateway:
    """forge_triggers (every path goes to it), allowed to reach the Confluence emulator."""
    module = handler("ForgeTriggersFunction")
    return Gateway(module, module)


@pytest.fixture
def worker(allow_emulator: None, handler: Callable[[str], Any]) -> Any:
    """The Confluence worker, allowed to reach the Confluence emulator."""
    return handler("ConfluenceWorkerFunction")


@pytest.fixture
def local_world(
    stack: LocalStack,
    forge: ForgeEmulator,
    confluence: ConfluenceEmulator,
    confluence_site: Site,
    triggers: Gateway,
    worker: Any,
    handler: Callable[[str], Any],
) -> LocalWorld:
    """All of the above for one test (see ``tests.support.LocalWorld``): the same stack, emulators and
    function modules a test would get from the separate fixtures."""
    return LocalWorld(
        stack=stack,
        forge=forge,
        confluence=confluence,
        site=confluence_site,
        triggers=triggers.triggers,
        worker=worker,
        load=handler,
    )
