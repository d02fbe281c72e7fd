"""Faults: the JWKS endpoint down, DynamoDB throttling and errors, the SQS jobs queue refusing job requests,
and a worker that dies mid-batch. Nothing crashes (a failed dependency is a 503 with a JSON body),
botocore's retries are bounded (counted per attempt), nothing is half-written, no job is lost and
no job is done twice. (Confluence faults: ``test_confluence_faults.py``.)
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from unittest.mock import patch

import boto3
import pytest
from botocore.awsrequest import AWSResponse
from botocore.exceptions import EndpointConnectionError
from botocore.retries.standard import ExponentialBackoff
from moto.core.botocore_stubber import BotocoreStubber

from forge_remote import aws, clock
from forge_remote.jobs.contract import JobRequest
from forge_remote.storage.table_keys import APP_TOKEN_SK
from local.forge_emulator import ForgeEmulator, SigningKey, Site
from local.lambda_context import LocalLambdaContext
from local.stack import LocalStack
from tests.reliability.harness import (
    account_jobs,
    event,
    installed_pages,
    invoke,
    queue_messages,
    settle,
    state,
    stored_tokens,
)
from tests.reliability.ledger import Ledger
from tests.support import Gateway, LocalWorld, body_of

pytestmark = pytest.mark.reliability

PRINCIPAL = "557058:fault-user-0001"


@pytest.fixture
def backoffs(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """botocore's standard-mode retries, without their sleeps (the attempts still happen): delays asked."""
    asked: list[float] = []
    original = ExponentialBackoff.delay_amount

    def no_wait(self: ExponentialBackoff, context: Any) -> float:
        asked.append(original(self, context))
        return 0.0

    monkeypatch.setattr(ExponentialBackoff, "delay_amount", no_wait)
    return asked


class _Body:
    def __init__(self, body: bytes) -> None:
        self._body = body

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self._body


FAULT_HEADER = "x-reliability-fault"
_moto_call = BotocoreStubber.__call__


def _moto_skipping_faults(self: BotocoreStubber, event_name: str, request: Any, **kwargs: Any) -> Any:
    # botocore calls every before-send handler and uses the first response: without this, moto would
    # still carry out the request our fault answered (a "throttled" write would have been written).
    if request.headers.get(FAULT_HEADER):
        return None
    return _moto_call(self, event_name, request, **kwargs)


@dataclass
class Fault:
    """Every attempt of ``operation`` on the given clients answers ``status`` with ``body`` (or raises).

    Injected per attempt (``before-send``), below botocore's retry loop, so attempts can be counted.
    """

    service: str
    operation: str
    status: int = 400
    body: dict[str, Any] | None = None
    raise_connection_error: bool = False

    @contextmanager
    def active(self, *clients: Any) -> Iterator[list[str]]:
        """While active, on each of ``clients``; yields the list of attempts seen."""
        attempts: list[str] = []

        def respond(request: Any, **_: Any) -> AWSResponse:
            attempts.append(self.operation)
            request.headers[FAULT_HEADER] = "1"
            if self.raise_connection_error:
                raise EndpointConnectionError(endpoint_url=request.url)
            raw = json.dumps(self.body or {}).encode()
            return AWSResponse(request.url, self.status, {"x-amzn-requestid": "fault"}, _Body(raw))  # type: ignore[arg-type]

        name = f"before-send.{self.service}.{self.operation}"
        unique = {id(c): c for c in clients}.values()
        for client in unique:
            client.meta.events.register_first(name, respond)
        try:
            with patch.object(BotocoreStubber, "__call__", _moto_skipping_faults):
                yield attempts
        finally:
            for client in unique:
                client.meta.events.unregister(name, respond)


def dynamodb_error(operation: str, code: str, status: int = 400) -> Fault:
    return Fault("dynamodb", operation, status, {"__type": f"com.amazonaws.dynamodb.v20120810#{code}", "message": code})


def send(
    gateway: Gateway, ledger: Ledger, method: str, path: str, headers: dict[str, str], body: Any = None
) -> dict[str, Any]:
    ledger.headers(headers)
    module = gateway.calls if path.startswith("/api/") else gateway.triggers
    return invoke(module, event(method, path, headers, body))


def genuine(forge: ForgeEmulator, site: Site, *, ui: bool = False, lifetime_s: float = 3 * 3600) -> dict[str, str]:
    return forge.headers(
        site,
        app_token=forge.app_token(lifetime_s=lifetime_s),
        user_token=forge.app_token(lifetime_s=lifetime_s, subject=PRINCIPAL) if ui else None,
        principal=PRINCIPAL if ui else None,
    )


def assert_unavailable(response: dict[str, Any]) -> None:
    assert response["statusCode"] == 503, response
    assert response["headers"]["Content-Type"] == "application/json"
    assert body_of(response)["error"] == "unavailable"
    assert int(response["headers"]["Retry-After"]) > 0


# -- JWKS outage ----------------------------------------------------------------------------------------
class FakeMonotonic:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("function", "method", "path", "ui"),
    [("ForgeTriggersFunction", "POST", "/forge/keepalive", False), ("ForgeCallsFunction", "GET", "/api/status", True)],
    ids=["trigger", "ui"],
)
def test_jwks_outage_on_a_cold_container_is_a_503_then_recovers_after_the_cooldown(
    handler: Callable[[str], Any],
    forge: ForgeEmulator,
    site: Site,
    stack: LocalStack,
    ledger: Ledger,
    function: str,
    method: str,
    path: str,
    ui: bool,
) -> None:
    forge.jwks_available = False
    module = handler(function)
    clock = FakeMonotonic()
    jwks = module.wiring.verifier._jwks
    jwks._monotonic = clock
    gateway = Gateway(module, module)
    before = state(stack)
    ledger.tried += 1
    response = send(gateway, ledger, method, path, genuine(forge, site, ui=ui))
    # Our outage, not a bad FIT: retryable, JSON, and nothing verified so nothing stored.
    assert_unavailable(response)
    assert response["headers"]["Retry-After"] == "60"
    assert "temporarily unavailable" in body_of(response)["message"]
    assert state(stack) == before
    ledger.rejected += 1

    forge.jwks_available = True
    fetches = jwks.fetch_count
    clock.now += 11  # past the 10 s retry of a container without keys: the key set is fetched again
    assert send(gateway, ledger, method, path, genuine(forge, site, ui=ui))["statusCode"] in (200, 204)
    assert jwks.fetch_count > fetches
    assert APP_TOKEN_SK in stored_tokens(stack, site.installation_id)


def test_jwks_outage_on_a_warm_container_keeps_verifying_known_keys_and_a_new_key_is_a_503(
    handler: Callable[[str], Any], forge: ForgeEmulator, stack: LocalStack, ledger: Ledger
) -> None:
    triggers = handler("ForgeTriggersFunction")
    clock = FakeMonotonic()
    jwks = triggers.wiring.verifier._jwks
    jwks._monotonic = clock
    gateway = Gateway(triggers, triggers)
    site = forge.site()
    assert send(gateway, ledger, "POST", "/forge/keepalive", genuine(forge, site))["statusCode"] == 204
    old_keys = list(forge.keys)
    forge.jwks_available = False
    try:
        clock.now += 2 * 3600  # even past the key set's max age: a failed refresh keeps the cached keys
        other = forge.site()
        ledger.tried += 2
        assert send(gateway, ledger, "POST", "/forge/keepalive", genuine(forge, other))["statusCode"] == 204
        assert APP_TOKEN_SK in stored_tokens(stack, other.installation_id)

        forge.rotate_key()  # a key this container never saw, published while the JWKS is down
        rotated = forge.site()
        before = state(stack)
        response = send(gateway, ledger, "POST", "/forge/keepalive", genuine(forge, rotated))
        # The refetch for the new kid failed: it may well be Forge's, so Forge is told to retry, not that
        # the token failed validation (a 401 here would lose the delivery after Forge's retries).
        assert_unavailable(response)
        assert state(stack) == before
        ledger.rejected += 1

        forge.jwks_available = True  # back, but inside the unknown-kid interval: no refetch, still unknown
        fetches = jwks.fetch_count
        assert_unavailable(send(gateway, ledger, "POST", "/forge/keepalive", genuine(forge, rotated)))
        assert jwks.fetch_count == fetches
        clock.now += 301
        assert send(gateway, ledger, "POST", "/forge/keepalive", genuine(forge, rotated))["statusCode"] == 204
        # The key set is current again: a kid that is not in it is a bad FIT (401), not an outage.
        stranger = SigningKey(kid="not-forges", private_key=forge.keys[0].private_key)
        clock.now += 60
        ledger.tried += 1
        forged = {
            **genuine(forge, rotated),
            "authorization": "Bearer " + forge.sign(forge.fit_claims(rotated), key=stranger),
        }
        response = send(gateway, ledger, "POST", "/forge/keepalive", forged)
        assert response["statusCode"] == 401
        assert body_of(response)["error"] == "unauthorized"
        ledger.rejected += 1
    finally:
        forge.jwks_available = True
        forge.keys = old_keys


# -- DynamoDB and SQS faults on the HTTP routes ---------------------------------------------------------
@dataclass(frozen=True)
class StorageFault:
    name: str
    method: str
    path: str
    fault: Fault
    attempts: int = 3  # botocore standard mode, total_max_attempts=3

    @property
    def ui(self) -> bool:
        return self.path.startswith("/api/")


THROTTLED = "ThrottlingException"
# A SendMessageBatch answer that takes the call but not its one entry.
ENTRY_FAILED = {
    "Successful": [],
    "Failed": [{"Id": "0", "SenderFault": False, "Code": "InternalError", "Message": "try again"}],
}
STORAGE_FAULTS = [
    StorageFault(
        "keepalive, token write throttled", "POST", "/forge/keepalive", dynamodb_error("TransactWriteItems", THROTTLED)
    ),
    StorageFault(
        "keepalive, throughput exceeded",
        "POST",
        "/forge/keepalive",
        dynamodb_error("TransactWriteItems", "ProvisionedThroughputExceededException"),
    ),
    StorageFault(
        "keepalive, DynamoDB 500",
        "POST",
        "/forge/keepalive",
        dynamodb_error("TransactWriteItems", "InternalServerError", 500),
    ),
    StorageFault(
        "keepalive, DynamoDB unreachable",
        "POST",
        "/forge/keepalive",
        Fault("dynamodb", "TransactWriteItems", raise_connection_error=True),
    ),
    StorageFault(
        "keepalive, validation error (not retried)",
        "POST",
        "/forge/keepalive",
        dynamodb_error("TransactWriteItems", "ValidationException"),
        attempts=1,
    ),
    StorageFault(
        "lifecycle, registry write throttled", "POST", "/forge/lifecycle", dynamodb_error("UpdateItem", THROTTLED)
    ),
    StorageFault(
        "uninstall, registry write throttled", "POST", "/forge/uninstall", dynamodb_error("UpdateItem", THROTTLED)
    ),
    StorageFault("uninstall, token query throttled", "POST", "/forge/uninstall", dynamodb_error("Query", THROTTLED)),
    StorageFault(
        "uninstall, token delete throttled", "POST", "/forge/uninstall", dynamodb_error("BatchWriteItem", THROTTLED)
    ),
    StorageFault(
        "events, job request refused by the jobs queue",
        "POST",
        "/forge/events",
        Fault("sqs", "SendMessageBatch", 400, {"__type": THROTTLED, "message": "Rate exceeded"}),
    ),
    StorageFault(
        "events, the jobs queue accepts none of the entries",
        "POST",
        "/forge/events",
        Fault("sqs", "SendMessageBatch", 200, ENTRY_FAILED),
        attempts=4,  # forge_remote.jobs.contract retries failed entries itself
    ),
    StorageFault(
        "events, idempotency record write throttled", "POST", "/forge/events", dynamodb_error("PutItem", THROTTLED)
    ),
    StorageFault("status, token read throttled", "GET", "/api/status", dynamodb_error("GetItem", THROTTLED)),
    StorageFault(
        "status, token write throttled", "GET", "/api/status", dynamodb_error("TransactWriteItems", THROTTLED)
    ),
]


def route_body(forge: ForgeEmulator, site: Site, path: str, page_id: str = "4242") -> Any:
    if path == "/forge/lifecycle":
        return forge.installed_event(site)
    if path == "/forge/events":
        return forge.page_event(page_id, "ENG")
    return None if path.startswith("/api/") else {}


@pytest.mark.parametrize("case", STORAGE_FAULTS, ids=[c.name for c in STORAGE_FAULTS])
def test_storage_fault_is_retried_a_bounded_number_of_times_then_answered_503(
    case: StorageFault,
    gateway: Gateway,
    forge: ForgeEmulator,
    stack: LocalStack,
    backoffs: list[float],
    ledger: Ledger,
) -> None:
    site = forge.site()
    assert (
        send(gateway, ledger, "POST", "/forge/lifecycle", genuine(forge, site), forge.installed_event(site))[
            "statusCode"
        ]
        == 200
    )
    module = gateway.calls if case.ui else gateway.triggers
    clients = [module.wiring.tokens._client, aws.dynamodb()] if case.fault.service == "dynamodb" else [aws.sqs()]
    headers = genuine(forge, site, ui=case.ui, lifetime_s=3.5 * 3600)
    body = route_body(forge, site, case.path)
    ledger.tried += 1
    with case.fault.active(*clients) as attempts:
        response = send(gateway, ledger, case.method, case.path, headers, body)
    assert len(attempts) == case.attempts
    assert_unavailable(response)
    ledger.rejected += 1
    if case.fault.operation == "TransactWriteItems":
        # The token write failed as a whole: the stored token is still the installed one.
        assert stored_tokens(stack, site.installation_id)[APP_TOKEN_SK] != headers["x-forge-oauth-system"]
    # Nothing was left half-done in a way that blocks Forge's retry: once the fault clears, it succeeds.
    retried = send(gateway, ledger, case.method, case.path, headers, body)
    assert 200 <= retried["statusCode"] < 300, retried
    if case.path == "/forge/uninstall":
        assert stored_tokens(stack, site.installation_id) == {}


@pytest.mark.parametrize(
    "fault",
    [
        Fault("sqs", "SendMessageBatch", 400, {"__type": THROTTLED, "message": "Rate exceeded"}),
        Fault("sqs", "SendMessageBatch", 200, ENTRY_FAILED),
        dynamodb_error("PutItem", THROTTLED),
    ],
    ids=["SendMessageBatch throttled", "SendMessageBatch entry failed", "idempotency store throttled"],
)
def test_product_event_whose_job_request_failed_is_queued_once_when_forge_retries(
    fault: Fault,
    handler: Callable[[str], Any],
    forge: ForgeEmulator,
    site: Site,
    stack: LocalStack,
    backoffs: list[float],
    ledger: Ledger,
) -> None:
    """Forge retries a failed event delivery (the body then carries retryContext): one job results."""
    triggers = handler("ForgeTriggersFunction")
    clients = [triggers.wiring.tokens._client, aws.dynamodb()] if fault.service == "dynamodb" else [aws.sqs()]
    ledger.tried += 1
    with fault.active(*clients) as attempts:
        try:
            failed = invoke(
                triggers,
                event("POST", "/forge/events", ledger.headers(forge.headers(site)), forge.page_event("5150", "ENG")),
            )
            status = failed["statusCode"]
        except Exception as exc:
            ledger.seen(repr(exc), "exception")
            status = 502
    assert attempts
    assert status >= 500
    assert queue_messages(stack, "JobsQueue") == []
    retried = forge.page_event("5150", "ENG", retry_count=1)
    response = invoke(triggers, event("POST", "/forge/events", ledger.headers(forge.headers(site)), retried))
    assert response["statusCode"] == 202
    messages = queue_messages(stack, "JobsQueue")
    assert len(messages) == 1
    request = JobRequest.from_message_body(messages[0]["body"])
    assert account_jobs(stack, [request], set())["queued"] == [request.request_id]
    ledger.rejected += 1


# -- the worker dying or failing mid-batch -------------------------------------------------------------
class Killed(BaseException):
    """The Lambda runtime dying mid-batch (timeout, out of memory): no response, nothing deleted."""


def failed_records(batch: dict[str, Any], response: dict[str, Any]) -> dict[str, Any]:
    failed = {f["itemIdentifier"] for f in response["batchItemFailures"]}
    return {"Records": [r for r in batch["Records"] if r["messageId"] in failed]}


def test_worker_killed_mid_batch_loses_nothing_and_duplicates_nothing(local_world: LocalWorld, ledger: Ledger) -> None:
    worker = local_world.worker
    requests = installed_pages(local_world, 5, ledger)
    local_world.enqueue(*requests)
    real_run = worker.runner.run
    ran: list[str] = []

    def dying_run(request: JobRequest, **kwargs: Any) -> Any:
        if len(ran) == 3:
            raise Killed
        ran.append(request.request_id)
        return real_run(request, **kwargs)

    worker.runner.run = dying_run
    batch = local_world.receive()
    assert len(batch["Records"]) == 5
    with pytest.raises(Killed):
        worker.lambda_handler(batch, LocalLambdaContext(function_name="worker", timeout_s=120))
    assert set(local_world.snapshot_request_ids()) == set(ran)  # three jobs finished before the crash
    assert len(queue_messages(local_world.stack, "JobsQueue")) == 5  # nothing was deleted: no response, no deletes
    worker.runner.run = real_run
    local_world.make_visible(batch)  # the visibility timeout passes
    _, response = local_world.run_worker()
    assert response["batchItemFailures"] == []
    result = settle(local_world, requests, ledger)
    assert sorted(result["done"]) == sorted(r.request_id for r in requests)
    # Three jobs ran twice; their records were overwritten (keyed by page and version), not added.
    assert sorted(local_world.snapshot_request_ids()) == sorted(r.request_id for r in requests)
    assert queue_messages(local_world.stack, "JobsQueue") == []


def test_a_job_that_raises_fails_alone_and_is_redelivered(local_world: LocalWorld, ledger: Ledger) -> None:
    worker = local_world.worker
    requests = installed_pages(local_world, 4, ledger)
    local_world.enqueue(*requests)
    unlucky = requests[1].request_id
    real_put = worker.runner.results.put
    failures: list[str] = []

    def flaky_put(installation_id: str, kind: str, key: str, record: dict[str, Any], **kwargs: Any) -> Any:
        if record.get("requestId") == unlucky and not failures:
            failures.append(unlucky)
            raise RuntimeError("an unexpected bug in a job")
        return real_put(installation_id, kind, key, record, **kwargs)

    worker.runner.results.put = flaky_put
    batch, response = local_world.run_worker()
    failed = [f["itemIdentifier"] for f in response["batchItemFailures"]]
    assert len(failed) == 1
    assert set(local_world.snapshot_request_ids()) == {r.request_id for r in requests} - {unlucky}
    local_world.make_visible(failed_records(batch, response))
    local_world.drain()
    result = settle(local_world, requests, ledger)
    assert len(result["done"]) == len(requests)


def test_dynamodb_throttling_in_the_worker_keeps_the_job(
    local_world: LocalWorld, backoffs: list[float], ledger: Ledger
) -> None:
    requests = installed_pages(local_world, 3, ledger)
    local_world.enqueue(*requests)
    with dynamodb_error("GetItem", THROTTLED).active(local_world.worker.runner.tokens._client) as attempts:
        batch, response = local_world.run_worker()
    assert attempts  # every job had to read the registry or a token
    assert len(response["batchItemFailures"]) == len(requests)
    assert len(queue_messages(local_world.stack, "JobsQueue")) == len(requests)
    local_world.make_visible(failed_records(batch, response))
    local_world.drain()
    result = settle(local_world, requests, ledger)
    assert len(result["done"]) == len(requests)


def test_the_same_message_delivered_twice_stores_one_snapshot(local_world: LocalWorld, ledger: Ledger) -> None:
    """SQS delivers at least once: the same job twice (in one batch, and again later) is one record."""
    [request] = installed_pages(local_world, 1, ledger)
    local_world.enqueue(request, request)
    local_world.drain()
    local_world.enqueue(request)
    local_world.drain()
    ledger.tried += 3
    assert local_world.snapshot_request_ids() == [request.request_id]
    assert account_jobs(local_world.stack, [request], set(local_world.snapshot_request_ids()))["lost"] == []


def test_a_job_that_never_finds_a_token_ends_in_the_dlq_not_nowhere(local_world: LocalWorld, ledger: Ledger) -> None:
    ledger.secret(local_world.install(lifetime_s=120))  # never valid long enough
    request = local_world.snapshot_request("1")
    local_world.enqueue(request)
    tries = int(local_world.stack.environment("ConfluenceWorkerFunction")["JOB_MAX_RECEIVES"])
    receives = 0
    for _ in range(tries + 5):
        done, failed = local_world.run_round()
        if not done and not failed:
            break
        receives += 1
        clock.advance(1800)  # each deferral's delay passes (the longest one), as it would on AWS
    ledger.tried += 1
    assert receives == tries  # JobMaxReceives tries, then the worker's own DLQ message
    result = account_jobs(local_world.stack, [request], set(local_world.snapshot_request_ids()))
    assert result == {"done": [], "queued": [], "dead": [request.request_id], "lost": []}


def test_control_a_message_deleted_without_its_job_done_counts_as_lost(local_world: LocalWorld) -> None:
    """The accounting can fail: a job request that is neither done, queued nor dead-lettered is lost."""
    kept, dropped = local_world.snapshot_request("1"), local_world.snapshot_request("2")
    local_world.enqueue(kept, dropped)
    for record in local_world.receive()["Records"]:
        if JobRequest.from_message_body(record["body"]).request_id == dropped.request_id:
            boto3.client("sqs").delete_message(
                QueueUrl=local_world.stack.physical["JobsQueue"], ReceiptHandle=record["receiptHandle"]
            )
    private = Ledger()
    result = account_jobs(local_world.stack, [kept, dropped], set(), private)
    assert result == {"done": [], "queued": [kept.request_id], "dead": [], "lost": [dropped.request_id]}
    assert private.lost_jobs == 1
