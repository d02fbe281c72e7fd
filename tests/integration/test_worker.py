"""The Confluence worker end to end: SQS records in (from a real moto queue), the real handler,
the Confluence emulator on loopback. Token rules 4-6: never an expired token, defer don't fail,
invalidate exactly and retry once, poisoned messages isolated."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3

from forge_remote import clock
from forge_remote.jobs.contract import JobRequest
from forge_remote.tokens.store import TokenStore
from tests.support import LocalWorld


def test_page_snapshot_is_stored(local_world: LocalWorld) -> None:
    token = local_world.install()
    local_world.confluence.add_space("ENG", "Engineering")
    page = local_world.confluence.add_page("ENG", "Release notes")
    local_world.enqueue(local_world.snapshot_request(page["id"]))
    _, response = local_world.run_worker()
    assert response["batchItemFailures"] == []
    [record] = local_world.results("SNAPSHOT")
    assert record["pageId"] == str(page["id"])
    assert record["title"] == "Release notes"
    assert record["spaceKey"] == "ENG"
    assert local_world.bearer_tokens_seen() == [token]
    _, path, query, _ = local_world.confluence.requests_seen[0]
    assert path.endswith("/wiki/rest/api/content/search")
    assert query["cql"] == f'space in ("ENG") and type = "page" and id = {page["id"]}'
    assert query["expand"] == "version,space"


def test_expired_token_is_never_sent_and_the_job_is_deferred_not_lost(local_world: LocalWorld) -> None:
    expired = local_world.install(lifetime_s=3600)
    local_world.confluence.add_space("ENG", "Engineering")
    page = local_world.confluence.add_page("ENG", "Plan")
    clock.advance(3600 + 1)  # an hour without Forge traffic
    local_world.enqueue(local_world.snapshot_request(page["id"]))
    event, response = local_world.run_worker()
    assert [f["itemIdentifier"] for f in response["batchItemFailures"]] == [event["Records"][0]["messageId"]]
    assert expired not in local_world.bearer_tokens_seen()
    assert local_world.confluence.requests_seen == []
    assert local_world.queue_count("JobsQueue") == 1  # still there, invisible for the deferral delay
    assert local_world.queue_count("JobsDeadLetterQueue") == 0
    assert local_world.receive()["Records"] == []  # the delay is real: not redelivered at once

    # The hourly keepalive brings a fresh token; the deferred job then succeeds.
    fresh = local_world.forge.app_token(lifetime_s=7200)
    keepalive = local_world.send(
        "POST", "/forge/keepalive", local_world.forge.headers(local_world.site, app_token=fresh)
    )
    assert keepalive["statusCode"] == 204
    local_world.make_visible(event)
    event, response = local_world.run_worker()
    assert event["Records"][0]["attributes"]["ApproximateReceiveCount"] != "1"
    assert response["batchItemFailures"] == []
    assert local_world.bearer_tokens_seen() == [fresh]
    assert len(local_world.results("SNAPSHOT")) == 1
    assert local_world.queue_count("JobsQueue") == 0


def test_token_too_close_to_expiry_is_not_taken(local_world: LocalWorld) -> None:
    local_world.install(lifetime_s=300)  # valid, but less than TOKEN_MIN_VALIDITY_S
    local_world.enqueue(local_world.snapshot_request("1"))
    _, response = local_world.run_worker()
    assert len(response["batchItemFailures"]) == 1
    assert local_world.confluence.requests_seen == []


def test_rejected_token_is_invalidated_and_the_job_retried_once_with_a_newer_one(local_world: LocalWorld) -> None:
    revoked = local_world.install(lifetime_s=3600)
    local_world.confluence.revoke(revoked)
    local_world.confluence.add_space("ENG", "Engineering")
    page = local_world.confluence.add_page("ENG", "Plan")
    newer = local_world.forge.app_token(lifetime_s=7200)
    from forge_remote.confluence.client import ConfluenceClient

    def factory(api_base_url: str, token: Callable[[], str], **kwargs: Any) -> Any:
        # A keepalive lands while the job holds the revoked token.
        TokenStore(boto3.client("dynamodb"), local_world.stack.physical["TokensTable"]).put_if_newer(
            local_world.site.installation_id, newer
        )
        return ConfluenceClient(api_base_url, token, **kwargs)

    local_world.worker.runner.client_factory = factory
    local_world.enqueue(local_world.snapshot_request(page["id"]))
    _, response = local_world.run_worker()
    assert response["batchItemFailures"] == []
    seen = local_world.bearer_tokens_seen()
    assert seen[0] == revoked
    assert seen[-1] == newer
    assert len(local_world.results("SNAPSHOT")) == 1


def test_rejected_token_without_a_newer_one_defers_and_removes_exactly_it(local_world: LocalWorld) -> None:
    revoked = local_world.install()
    local_world.confluence.revoke(revoked)
    local_world.enqueue(local_world.snapshot_request("5"))
    _, response = local_world.run_worker()
    assert len(response["batchItemFailures"]) == 1
    items = boto3.client("dynamodb").scan(TableName=local_world.stack.physical["TokensTable"])["Items"]
    # Only the refusal's record is left: the digest, so a re-delivery wakes nothing; never the token.
    assert [item["sk"]["S"] for item in items] == ["REFUSED#SYSTEM"]
    assert "token" not in items[0]
    assert revoked not in str(items)


def test_rate_limit_storm_defers_instead_of_failing(local_world: LocalWorld) -> None:
    local_world.install()
    local_world.confluence.fail_next(50, status=429, retry_after="999999")  # absurd Retry-After: clamped, then deferred
    local_world.enqueue(local_world.snapshot_request("5"))
    _, response = local_world.run_worker()
    assert len(response["batchItemFailures"]) == 1
    assert len(local_world.confluence.requests_seen) <= 4  # bounded attempts, no sleeping for days
    assert local_world.queue_count("JobsDeadLetterQueue") == 0


def test_poisoned_message_fails_alone_and_goes_to_the_dlq(local_world: LocalWorld) -> None:
    local_world.install()
    first, second, third = local_world.pages(3)
    installation_id = local_world.site.installation_id
    local_world.enqueue(
        first,
        "{this is not json",
        JobRequest(job="no-such-job", installation_id=installation_id),
        JobRequest(job="page-snapshot", installation_id=installation_id, args={"pageId": "12; DROP"}),
        second,
        third,
    )
    _, response = local_world.run_worker()
    assert response["batchItemFailures"] == []  # hopeless ones are dead-lettered, not retried forever
    assert len(local_world.results("SNAPSHOT")) == 3
    dlq = boto3.client("sqs").receive_message(
        QueueUrl=local_world.stack.physical["JobsDeadLetterQueue"],
        MaxNumberOfMessages=10,
        MessageAttributeNames=["All"],
    )["Messages"]
    reasons = sorted(m["MessageAttributes"]["reason"]["StringValue"] for m in dlq)
    assert len(reasons) == 3
    assert any("unknown job" in r for r in reasons)
    assert any("not valid JSON" in r for r in reasons)
    assert any("bad arguments" in r for r in reasons)


def test_jobs_of_an_uninstalled_installation_are_discarded(local_world: LocalWorld) -> None:
    local_world.install()
    local_world.send("POST", "/forge/uninstall", local_world.forge.headers(local_world.site), {})
    local_world.enqueue(local_world.snapshot_request("5"))
    _, response = local_world.run_worker()
    assert response["batchItemFailures"] == []
    assert local_world.confluence.requests_seen == []


def test_space_digest_follows_every_cursor_page(local_world: LocalWorld) -> None:
    local_world.install()
    local_world.confluence.add_space("ENG", "Engineering")
    local_world.confluence.add_space("OPS", "Operations")
    now = datetime.fromtimestamp(clock.now(), UTC)
    for i in range(60):
        local_world.confluence.add_page(
            "ENG" if i % 3 else "OPS", f"Recent {i}", last_modified=now - timedelta(hours=2)
        )
    for i in range(5):
        local_world.confluence.add_page("ENG", f"Old {i}", last_modified=now - timedelta(days=3))
    local_world.enqueue(
        JobRequest(
            job="space-digest", installation_id=local_world.site.installation_id, args={"spaceKeys": ["ENG", "OPS"]}
        )
    )
    _, response = local_world.run_worker()
    assert response["batchItemFailures"] == []
    assert len(local_world.searches()) >= 3  # several cursor pages
    digests = {d["spaceKey"]: d for d in local_world.results("DIGEST")}
    assert digests["ENG"]["count"] == 40
    assert digests["OPS"]["count"] == 20
    assert not any(p["title"].startswith("Old") for p in digests["ENG"]["pages"])
