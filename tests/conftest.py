"""Shared fixtures: a Forge emulator on loopback, moto-backed AWS built from template.yaml, handlers.

AWS comes from moto (in-process), Forge from ``local/forge_emulator.py``: no network beyond loopback.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

import boto3
import pytest
from moto import mock_aws

from forge_remote import aws, clock
from local.apigw import http_api_event
from local.forge_emulator import ForgeEmulator, Site
from local.handlers import load_handler
from local.lambda_context import LocalLambdaContext
from local.stack import LocalStack

os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("POWERTOOLS_METRICS_NAMESPACE", "ForgeRemoteTests")
os.environ.setdefault("POWERTOOLS_TRACE_DISABLED", "true")

FUNCTIONS = {
    "ForgeCallsFunction": "functions/forge_calls",
    "ForgeTriggersFunction": "functions/forge_triggers",
    "ConfluenceWorkerFunction": "functions/confluence_worker",
    "JobSchedulerFunction": "functions/job_scheduler",
}


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
    """Tables, queues, bus and rule from template.yaml, in moto."""
    forge.jwks_available = True
    with mock_aws():
        aws.reset_clients()
        local = LocalStack.from_template(parameters={"ForgeAppId": forge.app_ari, "ForgeJwksUrl": forge.jwks_url})
        local.create(dynamodb=boto3.client("dynamodb"), sqs=boto3.client("sqs"), events=boto3.client("events"))
        yield local
        aws.reset_clients()


@pytest.fixture
def atomic_dynamodb(monkeypatch: pytest.MonkeyPatch) -> None:
    """Give moto DynamoDB's per-request atomicity under threads.

    DynamoDB evaluates a condition and applies the write atomically; in-process moto checks and then
    writes without a lock, so two racing threads can both pass a condition. Serialising DynamoDB calls
    keeps every interleaving of *requests* possible while restoring the atomicity of each one.
    """
    from botocore.client import BaseClient

    original = BaseClient._make_api_call
    lock = threading.Lock()

    def make_api_call(self: BaseClient, operation_name: str, api_params: dict[str, Any]) -> Any:
        if self.meta.service_model.service_name != "dynamodb":
            return original(self, operation_name, api_params)
        with lock:
            return original(self, operation_name, api_params)

    monkeypatch.setattr(BaseClient, "_make_api_call", make_api_call)


@pytest.fixture
def handler(stack: LocalStack) -> Callable[[str], ModuleType]:
    """Load a function's real module with the environment the template gives it."""

    def load(logical_id: str) -> ModuleType:
        return load_handler(logical_id, FUNCTIONS[logical_id], stack.environment(logical_id))

    return load


class Gateway:
    """Calls the HTTP handlers the way API Gateway would: one v2 event in, a response out."""

    def __init__(self, calls: ModuleType, triggers: ModuleType) -> None:
        self.calls = calls
        self.triggers = triggers

    def __call__(self, method: str, path: str, headers: dict[str, str], body: Any = None) -> dict[str, Any]:
        module = self.calls if path.startswith("/api/") else self.triggers
        event = http_api_event(method, path, headers=headers, body=body)
        response: dict[str, Any] = module.lambda_handler(event, LocalLambdaContext(timeout_s=6))
        return response


@pytest.fixture
def gateway(handler: Callable[[str], ModuleType]) -> Gateway:
    return Gateway(handler("ForgeCallsFunction"), handler("ForgeTriggersFunction"))


def body_of(response: dict[str, Any]) -> Any:
    return json.loads(response["body"]) if response.get("body") else None


def token_items(stack: LocalStack) -> list[dict[str, Any]]:
    client = boto3.client("dynamodb")
    items: list[dict[str, Any]] = client.scan(TableName=stack.physical["TokensTable"])["Items"]
    return items


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
