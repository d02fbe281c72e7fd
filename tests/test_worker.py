"""The Confluence worker end to end: SQS records in (from a real moto queue), the real handler,
the Confluence emulator on loopback. Token rules 4-6: never an expired token, defer don't fail,
invalidate exactly and retry once, poisoned messages isolated."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from types import ModuleType
from typing import Any

import boto3
import pytest

from forge_remote import clock
from forge_remote.jobs import JobRequest
from forge_remote.keys import installation_pk, result_sk_prefix
from forge_remote.tokens import TokenStore
from local.confluence_emulator import ConfluenceEmulator
from local.forge_emulator import ForgeEmulator, Site, new_installation_id
from local.lambda_context import LocalLambdaContext
from local.poller import sqs_record
from local.stack import LocalStack
from tests.conftest import Gateway


@pytest.fixture
def confluence() -> Iterator[ConfluenceEmulator]:
    emulator = ConfluenceEmulator()
    emulator.start()
    yield emulator
    emulator.stop()


@pytest.fixture
def confluence_site(confluence: ConfluenceEmulator) -> Site:
    api_base_url = confluence.start()
    return Site(
        installation_id=new_installation_id(),
        cloud_id=api_base_url.rsplit("/", 1)[1],
        api_base_url=api_base_url,
        site_url="https://example.atlassian.net",
    )


@pytest.fixture
def allow_emulator(stack: LocalStack, confluence: ConfluenceEmulator) -> None:
    host = confluence.start().split("/")[2]  # 127.0.0.1:<port>, http on an allowed loopback host
    stack.parameters["AllowedApiHosts"] = host


@pytest.fixture
def triggers(allow_emulator: None, handler: Callable[[str], ModuleType]) -> Gateway:
    module = handler("ForgeTriggersFunction")
    return Gateway(module, module)


@pytest.fixture
def worker(allow_emulator: None, handler: Callable[[str], ModuleType]) -> ModuleType:
    return handler("ConfluenceWorkerFunction")


def install(triggers: Gateway, forge: ForgeEmulator, site: Site, lifetime_s: float = 3 * 3600) -> str:
    token = forge.app_token(lifetime_s=lifetime_s)
    response = triggers(
        "POST", "/forge/lifecycle", forge.headers(site, system_token=token), forge.installed_event(site)
    )
    assert response["statusCode"] == 200
    return token


def enqueue(stack: LocalStack, *requests: JobRequest | str) -> None:
    sqs = boto3.client("sqs")
    for request in requests:
        body = (
            request
            if isinstance(request, str)
            else json.dumps({"source": "forge-remote.jobs", "detail": request.to_detail()})
        )
        sqs.send_message(QueueUrl=stack.physical["JobsQueue"], MessageBody=body)


def sqs_event(stack: LocalStack) -> dict[str, Any]:
    """Receive what is visible and shape it as Lambda's SQS event source mapping does."""
    messages = (
        boto3.client("sqs")
        .receive_message(
            QueueUrl=stack.physical["JobsQueue"], MaxNumberOfMessages=10, AttributeNames=["All"], WaitTimeSeconds=0
        )
        .get("Messages", [])
    )
    return {"Records": [sqs_record(m, stack.arns["JobsQueue"], stack.region) for m in messages]}


def run_worker(worker: ModuleType, stack: LocalStack) -> tuple[dict[str, Any], dict[str, Any]]:
    event = sqs_event(stack)
    if not event["Records"]:  # Lambda never invokes with an empty batch
        return event, {"batchItemFailures": []}
    response = worker.lambda_handler(event, LocalLambdaContext(function_name="worker", timeout_s=120))
    failed = {f["itemIdentifier"] for f in response["batchItemFailures"]}
    sqs = boto3.client("sqs")
    for record in event["Records"]:  # what the event source mapping does with successes
        if record["messageId"] not in failed:
            sqs.delete_message(QueueUrl=stack.physical["JobsQueue"], ReceiptHandle=record["receiptHandle"])
    return event, response


def make_visible(stack: LocalStack, event: dict[str, Any]) -> None:
    """Stands in for the deferral delay passing (the worker set a real visibility timeout)."""
    sqs = boto3.client("sqs")
    for record in event["Records"]:
        sqs.change_message_visibility(
            QueueUrl=stack.physical["JobsQueue"], ReceiptHandle=record["receiptHandle"], VisibilityTimeout=0
        )


def queue_counts(stack: LocalStack, name: str) -> int:
    attributes = boto3.client("sqs").get_queue_attributes(
        QueueUrl=stack.physical[name],
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return int(attributes["ApproximateNumberOfMessages"]) + int(attributes["ApproximateNumberOfMessagesNotVisible"])


def snapshots(stack: LocalStack, installation_id: str) -> list[dict[str, Any]]:
    items = boto3.client("dynamodb").query(
        TableName=stack.physical["AppTable"],
        KeyConditionExpression="pk = :pk AND begins_with(sk, :s)",
        ExpressionAttributeValues={
            ":pk": {"S": installation_pk(installation_id)},
            ":s": {"S": result_sk_prefix("SNAPSHOT")},
        },
    )["Items"]
    return [json.loads(i["data"]["S"]) for i in items]


def bearer_tokens_seen(confluence: ConfluenceEmulator) -> list[str]:
    return [seen[3] for seen in confluence.requests_seen]


def snapshot_request(site: Site, page_id: str, space_key: str = "ENG") -> JobRequest:
    return JobRequest(
        job="page-snapshot", installation_id=site.installation_id, args={"pageId": page_id, "spaceKey": space_key}
    )


def test_page_snapshot_is_stored(
    triggers: Gateway,
    worker: ModuleType,
    forge: ForgeEmulator,
    confluence: ConfluenceEmulator,
    confluence_site: Site,
    stack: LocalStack,
) -> None:
    token = install(triggers, forge, confluence_site)
    confluence.add_space("ENG", "Engineering")
    page = confluence.add_page("ENG", "Release notes")
    enqueue(stack, snapshot_request(confluence_site, str(page["id"])))
    _, response = run_worker(worker, stack)
    assert response["batchItemFailures"] == []
    [record] = snapshots(stack, confluence_site.installation_id)
    assert record["pageId"] == str(page["id"])
    assert record["title"] == "Release notes"
    assert record["spaceKey"] == "ENG"
    assert bearer_tokens_seen(confluence) == [token]
    _, path, query, _ = confluence.requests_seen[0]
    assert path.endswith("/wiki/rest/api/content/search")
    assert query["cql"] == f'space in ("ENG") and type = "page" and id = {page["id"]}'
    assert query["expand"] == "version,space"


def test_expired_token_is_never_sent_and_the_job_is_deferred_not_lost(
    triggers: Gateway,
    worker: ModuleType,
    forge: ForgeEmulator,
    confluence: ConfluenceEmulator,
    confluence_site: Site,
    stack: LocalStack,
) -> None:
    expired = install(triggers, forge, confluence_site, lifetime_s=3600)
    confluence.add_space("ENG", "Engineering")
    page = confluence.add_page("ENG", "Plan")
    clock.advance(3600 + 1)  # an hour without Forge traffic
    enqueue(stack, snapshot_request(confluence_site, str(page["id"])))
    event, response = run_worker(worker, stack)
    assert [f["itemIdentifier"] for f in response["batchItemFailures"]] == [event["Records"][0]["messageId"]]
    assert expired not in bearer_tokens_seen(confluence)
    assert confluence.requests_seen == []
    assert queue_counts(stack, "JobsQueue") == 1  # still there, invisible for the deferral delay
    assert queue_counts(stack, "JobsDeadLetterQueue") == 0
    assert sqs_event(stack)["Records"] == []  # the delay is real: not redelivered at once

    # The hourly keepalive brings a fresh token; the deferred job then succeeds.
    fresh = forge.app_token(lifetime_s=7200)
    assert triggers("POST", "/forge/keepalive", forge.headers(confluence_site, system_token=fresh))["statusCode"] == 204
    make_visible(stack, event)
    event, response = run_worker(worker, stack)
    assert event["Records"][0]["attributes"]["ApproximateReceiveCount"] != "1"
    assert response["batchItemFailures"] == []
    assert bearer_tokens_seen(confluence) == [fresh]
    assert len(snapshots(stack, confluence_site.installation_id)) == 1
    assert queue_counts(stack, "JobsQueue") == 0


def test_token_too_close_to_expiry_is_not_taken(
    triggers: Gateway,
    worker: ModuleType,
    forge: ForgeEmulator,
    confluence: ConfluenceEmulator,
    confluence_site: Site,
    stack: LocalStack,
) -> None:
    install(triggers, forge, confluence_site, lifetime_s=300)  # valid, but less than TOKEN_MIN_VALIDITY_S
    enqueue(stack, snapshot_request(confluence_site, "1"))
    _, response = run_worker(worker, stack)
    assert len(response["batchItemFailures"]) == 1
    assert confluence.requests_seen == []


def test_rejected_token_is_invalidated_and_the_job_retried_once_with_a_newer_one(
    triggers: Gateway,
    worker: ModuleType,
    forge: ForgeEmulator,
    confluence: ConfluenceEmulator,
    confluence_site: Site,
    stack: LocalStack,
) -> None:
    revoked = install(triggers, forge, confluence_site, lifetime_s=3600)
    confluence.revoke(revoked)
    confluence.add_space("ENG", "Engineering")
    page = confluence.add_page("ENG", "Plan")
    newer = forge.app_token(lifetime_s=7200)
    from forge_remote.confluence import ConfluenceClient

    def factory(api_base_url: str, token: Callable[[], str], **kwargs: Any) -> Any:
        # A keepalive lands while the job holds the revoked token.
        TokenStore(boto3.client("dynamodb"), stack.physical["TokensTable"]).put_if_newer(
            confluence_site.installation_id, newer
        )
        return ConfluenceClient(api_base_url, token, **kwargs)

    worker.runner.client_factory = factory
    enqueue(stack, snapshot_request(confluence_site, str(page["id"])))
    _, response = run_worker(worker, stack)
    assert response["batchItemFailures"] == []
    seen = bearer_tokens_seen(confluence)
    assert seen[0] == revoked
    assert seen[-1] == newer
    assert len(snapshots(stack, confluence_site.installation_id)) == 1


def test_rejected_token_without_a_newer_one_defers_and_removes_exactly_it(
    triggers: Gateway,
    worker: ModuleType,
    forge: ForgeEmulator,
    confluence: ConfluenceEmulator,
    confluence_site: Site,
    stack: LocalStack,
) -> None:
    revoked = install(triggers, forge, confluence_site)
    confluence.revoke(revoked)
    enqueue(stack, snapshot_request(confluence_site, "5"))
    _, response = run_worker(worker, stack)
    assert len(response["batchItemFailures"]) == 1
    assert boto3.client("dynamodb").scan(TableName=stack.physical["TokensTable"])["Items"] == []


def test_rate_limit_storm_defers_instead_of_failing(
    triggers: Gateway,
    worker: ModuleType,
    forge: ForgeEmulator,
    confluence: ConfluenceEmulator,
    confluence_site: Site,
    stack: LocalStack,
) -> None:
    install(triggers, forge, confluence_site)
    confluence.fail_next(50, status=429, retry_after="999999")  # absurd Retry-After: clamped, then deferred
    enqueue(stack, snapshot_request(confluence_site, "5"))
    _, response = run_worker(worker, stack)
    assert len(response["batchItemFailures"]) == 1
    assert len(confluence.requests_seen) <= 4  # bounded attempts, no sleeping for days
    assert queue_counts(stack, "JobsDeadLetterQueue") == 0


def test_poisoned_message_fails_alone_and_goes_to_the_dlq(
    triggers: Gateway,
    worker: ModuleType,
    forge: ForgeEmulator,
    confluence: ConfluenceEmulator,
    confluence_site: Site,
    stack: LocalStack,
) -> None:
    install(triggers, forge, confluence_site)
    confluence.add_space("ENG", "Engineering")
    pages = [confluence.add_page("ENG", f"Page {i}") for i in range(3)]
    enqueue(
        stack,
        snapshot_request(confluence_site, str(pages[0]["id"])),
        "{this is not json",
        JobRequest(job="no-such-job", installation_id=confluence_site.installation_id),
        JobRequest(job="page-snapshot", installation_id=confluence_site.installation_id, args={"pageId": "12; DROP"}),
        snapshot_request(confluence_site, str(pages[1]["id"])),
        snapshot_request(confluence_site, str(pages[2]["id"])),
    )
    _, response = run_worker(worker, stack)
    assert response["batchItemFailures"] == []  # hopeless ones are dead-lettered, not retried forever
    assert len(snapshots(stack, confluence_site.installation_id)) == 3
    dlq = boto3.client("sqs").receive_message(
        QueueUrl=stack.physical["JobsDeadLetterQueue"], MaxNumberOfMessages=10, MessageAttributeNames=["All"]
    )["Messages"]
    reasons = sorted(m["MessageAttributes"]["reason"]["StringValue"] for m in dlq)
    assert len(reasons) == 3
    assert any("unknown job" in r for r in reasons)
    assert any("not valid JSON" in r for r in reasons)
    assert any("bad arguments" in r for r in reasons)


def test_jobs_of_an_uninstalled_installation_are_discarded(
    triggers: Gateway,
    worker: ModuleType,
    forge: ForgeEmulator,
    confluence: ConfluenceEmulator,
    confluence_site: Site,
    stack: LocalStack,
) -> None:
    install(triggers, forge, confluence_site)
    triggers("POST", "/forge/uninstall", forge.headers(confluence_site), {})
    enqueue(stack, snapshot_request(confluence_site, "5"))
    _, response = run_worker(worker, stack)
    assert response["batchItemFailures"] == []
    assert confluence.requests_seen == []


def test_space_digest_follows_every_cursor_page(
    triggers: Gateway,
    worker: ModuleType,
    forge: ForgeEmulator,
    confluence: ConfluenceEmulator,
    confluence_site: Site,
    stack: LocalStack,
) -> None:
    install(triggers, forge, confluence_site)
    confluence.add_space("ENG", "Engineering")
    confluence.add_space("OPS", "Operations")
    now = datetime.fromtimestamp(clock.now(), UTC)
    for i in range(60):
        confluence.add_page("ENG" if i % 3 else "OPS", f"Recent {i}", last_modified=now - timedelta(hours=2))
    for i in range(5):
        confluence.add_page("ENG", f"Old {i}", last_modified=now - timedelta(days=3))
    enqueue(
        stack,
        JobRequest(
            job="space-digest", installation_id=confluence_site.installation_id, args={"spaceKeys": ["ENG", "OPS"]}
        ),
    )
    _, response = run_worker(worker, stack)
    assert response["batchItemFailures"] == []
    searches = [s for s in confluence.requests_seen if s[1].endswith("/content/search")]
    assert len(searches) >= 3  # several cursor pages
    items = boto3.client("dynamodb").query(
        TableName=stack.physical["AppTable"],
        KeyConditionExpression="pk = :pk AND begins_with(sk, :s)",
        ExpressionAttributeValues={
            ":pk": {"S": installation_pk(confluence_site.installation_id)},
            ":s": {"S": result_sk_prefix("DIGEST")},
        },
    )["Items"]
    digests = {d["spaceKey"]: d for d in (json.loads(i["data"]["S"]) for i in items)}
    assert digests["ENG"]["count"] == 40
    assert digests["OPS"]["count"] == 20
    assert not any(p["title"].startswith("Old") for p in digests["ENG"]["pages"])
