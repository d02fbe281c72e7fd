"""What the suites share besides their fixtures (those are in the conftest files, built from this).

- ``ROOT``, ``FUNCTIONS``: the repository, and the template's functions by logical id.
- ``moto_stack``, ``load_function``: the template's tables and queues in moto; a function's module
  loaded as one Lambda container.
- ``Gateway``, ``body_of``: the HTTP functions called the way API Gateway calls them.
- ``token_items``, ``stored_item``, ``result_records``: what the functions left in the tables.
- ``LocalWorld``: one test's whole local world (stack, Forge and Confluence emulators, the functions),
  with the worker driven the way the SQS event source mapping drives it. The ``local_world`` fixture.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import boto3
from moto import mock_aws

from forge_remote import aws
from forge_remote.jobs.contract import JobRequest, send_job_requests
from forge_remote.storage.table_keys import installation_pk, result_sk_prefix
from local.apigw import http_api_event
from local.confluence_emulator import ConfluenceEmulator
from local.forge_emulator import ForgeEmulator, Site
from local.handlers import load_handler
from local.lambda_context import LocalLambdaContext
from local.poller import StreamPoller, sqs_record, stream_pollers
from local.stack import LocalStack

ROOT = Path(__file__).resolve().parents[1]
FUNCTIONS = LocalStack.from_template().functions()  # logical id -> code folder, as the template says
WORKER_TIMEOUT_S = 120  # the template's worker timeout


# -- the stack and the functions ---------------------------------------------------------------------
@contextmanager
def moto_stack(forge: ForgeEmulator, **parameters: str) -> Iterator[LocalStack]:
    """Tables and queues from template.yaml, in moto, for functions that trust ``forge``."""
    forge.jwks_available = True
    with mock_aws():
        aws.reset_clients()
        stack = LocalStack.from_template(
            parameters={"ForgeAppId": forge.app_ari, "ForgeJwksUrl": forge.jwks_url, **parameters}
        )
        stack.create(dynamodb=boto3.client("dynamodb"), sqs=boto3.client("sqs"))
        try:
            yield stack
        finally:
            aws.reset_clients()


def load_function(stack: LocalStack, logical_id: str) -> Any:
    """A fresh copy of a function's module, with the environment the template gives it: what one Lambda
    container runs (its own clients and caches)."""
    return load_handler(logical_id, FUNCTIONS[logical_id], stack.environment(logical_id))


class Gateway:
    """Calls the HTTP handlers the way API Gateway would: one v2 event in, a response out."""

    def __init__(self, calls: Any, triggers: Any) -> None:
        self.calls = calls
        self.triggers = triggers

    def __call__(self, method: str, path: str, headers: dict[str, str], body: Any = None) -> dict[str, Any]:
        module = self.calls if path.startswith("/api/") else self.triggers
        event = http_api_event(method, path, headers=headers, body=body)
        response: dict[str, Any] = module.lambda_handler(event, LocalLambdaContext(timeout_s=6))
        return response


def body_of(response: dict[str, Any]) -> Any:
    return json.loads(response["body"]) if response.get("body") else None


# -- what the functions left in the tables -------------------------------------------------------------
def token_items(stack: LocalStack) -> list[dict[str, Any]]:
    client = boto3.client("dynamodb")
    items: list[dict[str, Any]] = client.scan(TableName=stack.physical["TokensTable"])["Items"]
    return items


def stored_item(stack: LocalStack, logical_id: str, installation_id: str, sk: str) -> dict[str, Any] | None:
    """One item of a table (``TokensTable``, ``AppTable``) by installation and sort key, as stored."""
    item: dict[str, Any] | None = (
        boto3.client("dynamodb")
        .get_item(
            TableName=stack.physical[logical_id], Key={"pk": {"S": installation_pk(installation_id)}, "sk": {"S": sk}}
        )
        .get("Item")
    )
    return item


def result_records(stack: LocalStack, installation_id: str, kind: str) -> list[dict[str, Any]]:
    """Every job result of one kind (``SNAPSHOT``, ``DIGEST``) stored for an installation, as stored."""
    items = boto3.client("dynamodb").query(
        TableName=stack.physical["AppTable"],
        KeyConditionExpression="pk = :pk AND begins_with(sk, :s)",
        ExpressionAttributeValues={":pk": {"S": installation_pk(installation_id)}, ":s": {"S": result_sk_prefix(kind)}},
        ConsistentRead=True,
    )["Items"]
    return [json.loads(i["data"]["S"]) for i in items]


def partition_items(client: Any, table: str, installation_id: str) -> dict[str, dict[str, Any]]:
    """Every item of an installation's partition of ``table`` (a name or an ARN), by sort key, as stored."""
    items: dict[str, dict[str, Any]] = {}
    for page in client.get_paginator("query").paginate(
        TableName=table,
        KeyConditionExpression="pk = :pk",
        ExpressionAttributeValues={":pk": {"S": installation_pk(installation_id)}},
        ConsistentRead=True,
    ):
        items.update({item["sk"]["S"]: item for item in page["Items"]})
    return items


# -- the whole local world -----------------------------------------------------------------------------
@dataclass
class LocalWorld:
    """One test's local world: the moto stack, the Forge emulator, the Confluence emulator with ``site``
    on it (an installation nobody has installed yet), and one container of each function the test uses.

    The HTTP functions are called through ``Gateway`` (``send``), the worker as the SQS event source
    mapping calls it: ``enqueue`` job requests, ``run_worker`` takes what is visible (and deletes what
    succeeded), ``make_visible`` lets a deferral delay pass, ``drain`` does both until the queue is empty.
    """

    stack: LocalStack
    forge: ForgeEmulator
    confluence: ConfluenceEmulator
    site: Site
    triggers: Any
    worker: Any
    load: Callable[[str], Any] = field(repr=False)  # logical id -> the function's module

    @cached_property
    def calls(self) -> Any:
        """forge_calls, loaded when a test first sends it something."""
        return self.load("ForgeCallsFunction")

    @cached_property
    def wakeup(self) -> Any:
        """token_wakeup, loaded when a test first delivers the tokens table's stream."""
        return self.load("TokenWakeupFunction")

    @cached_property
    def _token_stream(self) -> StreamPoller:
        def invoke(_: str, event: Any) -> Any:
            return self.wakeup.lambda_handler(event, LocalLambdaContext(function_name="token-wakeup", timeout_s=30))

        (poller,) = stream_pollers(self.stack, invoke, position="TRIM_HORIZON")
        return poller

    def deliver_token_stream(self) -> int:
        """What Lambda's stream event source mapping does: the tokens table's records since the last call,
        filtered by the template's criteria, to the token wake-up. Returns how many records it got."""
        return self._token_stream.poll_once()

    # -- HTTP, as API Gateway calls the functions
    def send(self, method: str, path: str, headers: dict[str, str], body: Any = None) -> dict[str, Any]:
        """One request to the function API Gateway routes ``path`` to."""
        calls = self.calls if path.startswith("/api/") else self.triggers
        return Gateway(calls, self.triggers)(method, path, headers, body)

    def install(self, site: Site | None = None, *, lifetime_s: float = 3 * 3600) -> str:
        """Forge's install lifecycle event for ``site`` (this world's by default); returns its app token."""
        site = site or self.site
        token = self.forge.app_token(lifetime_s=lifetime_s)
        headers = self.forge.headers(site, app_token=token)
        response = self.send("POST", "/forge/lifecycle", headers, self.forge.installed_event(site))
        assert response["statusCode"] == 200, response
        return token

    # -- Confluence content and job requests
    def snapshot_request(self, page_id: str | int, site: Site | None = None, space_key: str = "ENG") -> JobRequest:
        site = site or self.site
        return JobRequest(
            job="page-snapshot",
            installation_id=site.installation_id,
            args={"pageId": str(page_id), "spaceKey": space_key},
        )

    def pages(self, count: int) -> list[JobRequest]:
        """A space ``ENG`` with ``count`` pages on the emulator; a page-snapshot request (for ``site``) for each."""
        self.confluence.add_space("ENG", "Engineering")
        pages = [self.confluence.add_page("ENG", f"Page {i}") for i in range(count)]
        return [self.snapshot_request(page["id"]) for page in pages]

    # -- the worker, as the SQS event source mapping drives it
    def enqueue(self, *requests: JobRequest | str) -> None:
        """Job requests on the jobs queue as the functions send them (``send_job_requests``: the bare
        request, in its installation's message group); a str goes as it is."""
        sqs = boto3.client("sqs")
        for request in requests:
            if isinstance(request, str):
                sqs.send_message(QueueUrl=self.stack.physical["JobsQueue"], MessageBody=request)
            else:
                send_job_requests(sqs, self.stack.physical["JobsQueue"], [request])

    def receive(self) -> dict[str, Any]:
        """Receive what is visible and shape it as Lambda's SQS event source mapping does."""
        messages = (
            boto3.client("sqs")
            .receive_message(
                QueueUrl=self.stack.physical["JobsQueue"],
                MaxNumberOfMessages=10,
                AttributeNames=["All"],
                WaitTimeSeconds=0,
            )
            .get("Messages", [])
        )
        return {"Records": [sqs_record(m, self.stack.arns["JobsQueue"], self.stack.region) for m in messages]}

    def run_worker(self, *, timeout_s: float = WORKER_TIMEOUT_S) -> tuple[dict[str, Any], dict[str, Any]]:
        """One invocation with what is visible: (the event, the worker's response). Successes are deleted."""
        event = self.receive()
        if not event["Records"]:  # Lambda never invokes with an empty batch
            return event, {"batchItemFailures": []}
        response = self.worker.lambda_handler(event, LocalLambdaContext(function_name="worker", timeout_s=timeout_s))
        failed = {f["itemIdentifier"] for f in response["batchItemFailures"]}
        sqs = boto3.client("sqs")
        for record in event["Records"]:  # what the event source mapping does with successes
            if record["messageId"] not in failed:
                sqs.delete_message(QueueUrl=self.stack.physical["JobsQueue"], ReceiptHandle=record["receiptHandle"])
        return event, response

    def make_visible(self, event: dict[str, Any]) -> None:
        """Stands in for the deferral delay passing (the worker set a real visibility timeout)."""
        sqs = boto3.client("sqs")
        for record in event["Records"]:
            sqs.change_message_visibility(
                QueueUrl=self.stack.physical["JobsQueue"], ReceiptHandle=record["receiptHandle"], VisibilityTimeout=0
            )

    def run_round(self, *, timeout_s: float = WORKER_TIMEOUT_S) -> tuple[list[str], list[str]]:
        """One invocation, then the deferral delay passes: (succeeded, failed) message ids, failed sorted."""
        event, response = self.run_worker(timeout_s=timeout_s)
        failed = {f["itemIdentifier"] for f in response["batchItemFailures"]}
        self.make_visible({"Records": [r for r in event["Records"] if r["messageId"] in failed]})
        return [r["messageId"] for r in event["Records"] if r["messageId"] not in failed], sorted(failed)

    def drain(self, rounds: int = 12) -> int:
        """Rounds until nothing is left to receive (at most ``rounds``); returns how many invocations ran."""
        for invocations in range(rounds):
            done, failed = self.run_round()
            if not done and not failed:
                return invocations
        return rounds

    # -- what is left
    def queue_count(self, logical_id: str = "JobsQueue") -> int:
        """Messages in a queue, visible or not."""
        attributes = boto3.client("sqs").get_queue_attributes(
            QueueUrl=self.stack.physical[logical_id],
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        return int(attributes["ApproximateNumberOfMessages"]) + int(attributes["ApproximateNumberOfMessagesNotVisible"])

    def results(self, kind: str = "SNAPSHOT", site: Site | None = None) -> list[dict[str, Any]]:
        return result_records(self.stack, (site or self.site).installation_id, kind)

    def snapshot_request_ids(self, site: Site | None = None) -> list[str]:
        """The request id of every page snapshot record (one per page and version)."""
        return [record["requestId"] for record in self.results("SNAPSHOT", site)]

    def bearer_tokens_seen(self) -> list[str]:
        """The token of every request the Confluence emulator received, in order."""
        return [seen[3] for seen in self.confluence.requests_seen]

    def searches(self) -> list[tuple[Any, ...]]:
        """The content searches the Confluence emulator received."""
        return [seen for seen in self.confluence.requests_seen if seen[1].endswith("/rest/api/content/search")]
