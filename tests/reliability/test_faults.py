"""Faults: JWKS outage, DynamoDB throttling and errors, Confluence timeouts, 429 storms and 5xx,
and a worker that dies mid-batch. Nothing crashes, nothing is lost, nothing is done twice."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

import boto3
import pytest
from botocore.awsrequest import AWSResponse
from botocore.exceptions import EndpointConnectionError

from forge_remote.jobs import JobRequest
from local.confluence_emulator import ConfluenceEmulator
from local.forge_emulator import ForgeEmulator, Site
from local.lambda_context import LocalLambdaContext
from local.stack import LocalStack
from tests.conftest import Gateway
from tests.reliability.conftest import Ledger
from tests.test_worker import (
    enqueue,
    install,
    make_visible,
    queue_counts,
    run_worker,
    snapshot_request,
    snapshots,
    sqs_event,
)

pytestmark = pytest.mark.reliability


def account_for(ledger: Ledger, stack: LocalStack, sent: int, done: int) -> None:
    """Every job request is done, still queued, or in the DLQ: anything else is lost."""
    in_flight = queue_counts(stack, "JobsQueue") + queue_counts(stack, "JobsDeadLetterQueue")
    ledger.lost_jobs += max(0, sent - done - in_flight)
    assert done + in_flight >= sent


class _Raw:
    def __init__(self, body: bytes) -> None:
        self._body = body

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self._body


def throttle(client: Any, operation: str) -> list[int]:
    """Make every ``operation`` call answer DynamoDB's throttling error; returns the attempt counter."""
    attempts: list[int] = []

    def respond(request: Any, **_: Any) -> AWSResponse:
        attempts.append(1)
        body = json.dumps(
            {"__type": "com.amazonaws.dynamodb.v20120810#ThrottlingException", "message": "Rate exceeded"}
        )
        return AWSResponse(request.url, 400, {"x-amzn-requestid": "r"}, _Raw(body.encode()))  # type: ignore[arg-type]

    client.meta.events.register(f"before-send.dynamodb.{operation}", respond)
    return attempts


def test_jwks_outage_on_a_cold_container_fails_closed(
    handler: Callable[[str], ModuleType], forge: ForgeEmulator, site: Site, stack: LocalStack, ledger: Ledger
) -> None:
    forge.jwks_available = False
    try:
        triggers = handler("ForgeTriggersFunction")
        gateway = Gateway(triggers, triggers)
        ledger.tried += 1
        response = gateway(
            "POST", "/forge/keepalive", forge.headers(site, system_token=ledger.secret(forge.app_token()))
        )
        assert response["statusCode"] == 401
        assert boto3.client("dynamodb").scan(TableName=stack.physical["TokensTable"])["Items"] == []
        ledger.rejected += 1
    finally:
        forge.jwks_available = True


def test_jwks_outage_on_a_warm_container_keeps_verifying(
    gateway: Gateway, forge: ForgeEmulator, site: Site, ledger: Ledger
) -> None:
    assert gateway("POST", "/forge/keepalive", forge.headers(site))["statusCode"] == 204
    forge.jwks_available = False
    old = forge.keys[0]
    try:
        ledger.tried += 2
        assert gateway("POST", "/forge/keepalive", forge.headers(site))["statusCode"] == 204
        forge.rotate_key()  # a key the container never saw, during the outage: fail closed
        assert gateway("POST", "/forge/keepalive", forge.headers(site))["statusCode"] == 401
        ledger.rejected += 1
    finally:
        forge.jwks_available = True
        forge.keys = [old]


def test_dynamodb_throttling_is_retried_then_answered_503(
    gateway: Gateway, forge: ForgeEmulator, site: Site, ledger: Ledger
) -> None:
    attempts = throttle(gateway.triggers.runtime.tokens._client, "TransactWriteItems")
    ledger.tried += 1
    response = gateway("POST", "/forge/keepalive", forge.headers(site, system_token=ledger.secret(forge.app_token())))
    ledger.seen(response.get("body"))
    assert len(attempts) == 3  # botocore's standard retry mode, bounded
    assert response["statusCode"] == 503
    assert json.loads(response["body"])["error"] == "unavailable"
    assert response["headers"]["Retry-After"]
    ledger.rejected += 1


def test_dynamodb_unreachable_is_503_not_a_crash(
    gateway: Gateway, forge: ForgeEmulator, site: Site, ledger: Ledger
) -> None:
    def unreachable(request: Any, **_: Any) -> None:
        raise EndpointConnectionError(endpoint_url=request.url)

    gateway.calls.runtime.tokens._client.meta.events.register("before-send.dynamodb.*", unreachable)
    ledger.tried += 1
    response = gateway("GET", "/api/status", forge.headers(site))
    assert response["statusCode"] == 503
    ledger.rejected += 1


def test_confluence_timeouts_storms_and_5xx_defer_without_losing_jobs(
    triggers: Gateway,
    worker: ModuleType,
    forge: ForgeEmulator,
    confluence: ConfluenceEmulator,
    confluence_site: Site,
    stack: LocalStack,
    ledger: Ledger,
) -> None:
    ledger.secret(install(triggers, forge, confluence_site))
    confluence.add_space("ENG", "Engineering")
    pages = [confluence.add_page("ENG", f"P{i}") for i in range(6)]
    from forge_remote.confluence import ConfluenceClient

    def fast_failing_client(*args: Any, **kwargs: Any) -> ConfluenceClient:
        return ConfluenceClient(*args, **kwargs, sleep=lambda s: None, timeout_s=(1.0, 0.2))

    worker.runner.client_factory = fast_failing_client
    enqueue(stack, *(snapshot_request(confluence_site, str(p["id"])) for p in pages))
    confluence.fail_next(8, 429)  # a storm with no hints: jittered backoff, bounded attempts
    confluence.fail_next(8, 503, retry_after="2")
    confluence.fail_next(4, 500)
    done = 0
    for _ in range(10):
        event, response = run_worker(worker, stack)
        failed = {f["itemIdentifier"] for f in response["batchItemFailures"]}
        done += len(event["Records"]) - len(failed)
        make_visible(stack, {"Records": [r for r in event["Records"] if r["messageId"] in failed]})
        confluence.delay_s = 0.5 if _ == 0 else 0.0  # the first round also times out
        if not event["Records"]:
            break
    ledger.tried += len(pages)
    account_for(ledger, stack, len(pages), done)
    assert done == len(pages)
    assert len(snapshots(stack, confluence_site.installation_id)) == len(pages)


class Killed(BaseException):
    """The Lambda runtime dying mid-batch: no response is returned, nothing is deleted."""


def test_worker_killed_mid_batch_redelivers_and_does_not_duplicate(
    triggers: Gateway,
    worker: ModuleType,
    forge: ForgeEmulator,
    confluence: ConfluenceEmulator,
    confluence_site: Site,
    stack: LocalStack,
    ledger: Ledger,
) -> None:
    ledger.secret(install(triggers, forge, confluence_site))
    confluence.add_space("ENG", "Engineering")
    pages = [confluence.add_page("ENG", f"P{i}") for i in range(4)]
    enqueue(stack, *(snapshot_request(confluence_site, str(p["id"])) for p in pages))
    real_run = worker.runner.run
    calls: list[int] = []

    def dying_run(*args: Any, **kwargs: Any) -> Any:
        if len(calls) == 2:
            raise Killed
        calls.append(1)
        return real_run(*args, **kwargs)

    worker.runner.run = dying_run
    event = sqs_event(stack)
    with pytest.raises(Killed):
        worker.lambda_handler(event, LocalLambdaContext(function_name="worker", timeout_s=120))
    assert len(snapshots(stack, confluence_site.installation_id)) == 2  # two jobs ran before the crash
    worker.runner.run = real_run
    make_visible(stack, event)  # the visibility timeout passes; nothing was deleted
    _, response = run_worker(worker, stack)
    assert response["batchItemFailures"] == []
    ledger.tried += len(pages)
    account_for(ledger, stack, len(pages), len(pages))
    # Re-running the two finished jobs overwrote their records (keyed by page and version): no duplicates.
    records = snapshots(stack, confluence_site.installation_id)
    assert sorted(r["pageId"] for r in records) == sorted(str(p["id"]) for p in pages)
    assert queue_counts(stack, "JobsQueue") == 0


def test_a_job_that_keeps_finding_no_token_ends_in_the_dlq_not_nowhere(
    triggers: Gateway,
    worker: ModuleType,
    forge: ForgeEmulator,
    confluence_site: Site,
    stack: LocalStack,
    ledger: Ledger,
) -> None:
    ledger.secret(install(triggers, forge, confluence_site, lifetime_s=120))  # never long enough for a job
    enqueue(
        stack, JobRequest(job="page-snapshot", installation_id=confluence_site.installation_id, args={"pageId": "1"})
    )
    receives = 0
    for _ in range(15):
        event, _response = run_worker(worker, stack)
        if not event["Records"]:
            break
        receives += 1
        make_visible(stack, event)
    ledger.tried += 1
    account_for(ledger, stack, 1, 0)
    assert receives == 10  # the template's maxReceiveCount
    assert queue_counts(stack, "JobsQueue") == 0
    assert queue_counts(stack, "JobsDeadLetterQueue") == 1
