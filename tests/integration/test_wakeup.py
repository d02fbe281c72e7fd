"""Parking and wake-up: a job deferred for lack of a token runs as soon as a token is stored for its
installation, whichever kind of Forge call brings it; the deferral delay stays the safety net.

The worker and the token wake-up are the real handlers; the tokens table's stream comes from moto
(``LocalWorld.deliver_token_stream``), filtered by the template's criteria as Lambda would.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any
from unittest.mock import patch

import boto3
import pytest
from botocore.client import BaseClient
from botocore.exceptions import ClientError

from forge_remote import clock
from forge_remote.jobs.contract import JobRequest
from forge_remote.jobs.parking import ParkingLot
from forge_remote.storage.table_keys import PARKED_SK_PREFIX, installation_pk
from local.forge_emulator import Site
from tests.support import LocalWorld, body_of


def _parked(world: LocalWorld, site: Site | None = None) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = boto3.client("dynamodb").query(
        TableName=world.stack.physical["AppTable"],
        KeyConditionExpression="pk = :pk AND begins_with(sk, :parked)",
        ExpressionAttributeValues={
            ":pk": {"S": installation_pk((site or world.site).installation_id)},
            ":parked": {"S": PARKED_SK_PREFIX},
        },
        ConsistentRead=True,
    )["Items"]
    return items


def _waiting(world: LocalWorld, site: Site | None = None) -> int:
    return ParkingLot(boto3.client("dynamodb"), world.stack.physical["AppTable"]).waiting(
        (site or world.site).installation_id
    )


def _park_one(world: LocalWorld) -> tuple[str, dict[str, Any]]:
    """Install with a token that expires, let it expire, and have one snapshot job deferred and parked.
    Returns the page id and the worker's event (its record's receipt handle is the parked one)."""
    world.install(lifetime_s=3600)
    world.confluence.add_space("ENG", "Engineering")
    page = world.confluence.add_page("ENG", "Plan")
    clock.advance(3600 + 1)  # a quiet hour: the stored token expired
    world.enqueue(world.snapshot_request(page["id"]))
    event, response = world.run_worker()
    assert len(response["batchItemFailures"]) == 1
    return str(page["id"]), event


def _keepalive(world: LocalWorld, token: str, site: Site | None = None) -> None:
    response = world.send(
        "POST",
        "/forge/keepalive",
        world.forge.headers(site or world.site, app_token=token, module_key="keepalive-endpoint"),
    )
    assert response["statusCode"] == 204


# -- each kind of Forge call that brings a token wakes the job
def _by_keepalive(world: LocalWorld, token: str) -> None:
    _keepalive(world, token)


def _by_lifecycle(world: LocalWorld, token: str) -> None:
    event = world.forge.installed_event(world.site, "avi:forge:upgraded:app")
    headers = world.forge.headers(world.site, app_token=token, module_key="lifecycle-endpoint")
    assert world.send("POST", "/forge/lifecycle", headers, event)["statusCode"] == 200


def _by_product_event(world: LocalWorld, token: str) -> None:
    page = world.confluence.add_page("ENG", "Another")
    headers = world.forge.headers(world.site, app_token=token, module_key="events-endpoint")
    response = world.send("POST", "/forge/events", headers, world.forge.page_event(str(page["id"]), "ENG"))
    assert response["statusCode"] == 202


def _by_ui_call(world: LocalWorld, token: str) -> None:
    # Any UI route stores the tokens the call brings, not only the status page.
    user_token = world.forge.app_token(subject="user")
    headers = world.forge.headers(
        world.site, app_token=token, user_token=user_token, principal="557058:someone", module_key="ui"
    )
    assert world.send("GET", "/api/pages/recent", headers)["statusCode"] == 200


@pytest.mark.parametrize(
    "deliver",
    [_by_keepalive, _by_lifecycle, _by_product_event, _by_ui_call],
    ids=["keepalive", "lifecycle", "product event", "UI call"],
)
def test_a_parked_job_runs_on_the_next_token_delivery(
    local_world: LocalWorld, deliver: Callable[[LocalWorld, str], None]
) -> None:
    page_id, event = _park_one(local_world)
    [item] = _parked(local_world)
    assert item["receiptHandle"]["S"] == event["Records"][0]["receiptHandle"]
    assert float(item["retryAt"]["N"]) > clock.now() + 50  # the first delay: about a minute
    assert int(item["ttl"]["N"]) > float(item["retryAt"]["N"])
    assert local_world.receive()["Records"] == []  # hidden for its delay

    fresh = local_world.forge.app_token(lifetime_s=7200)
    deliver(local_world, fresh)
    assert local_world.deliver_token_stream() >= 1
    _, response = local_world.run_worker()  # visible at once: no make_visible, no delay passing
    assert response["batchItemFailures"] == []
    assert page_id in {r["pageId"] for r in local_world.results("SNAPSHOT")}
    snapshot_calls = [
        token
        for _, path, query, token in local_world.confluence.requests_seen
        if path.endswith("/content/search") and f"id = {page_id}" in query.get("cql", "")
    ]
    assert snapshot_calls == [fresh]
    assert _parked(local_world) == []
    assert local_world.queue_count("JobsQueue") in (0, 1)  # a product event may have queued a job of its own
    assert local_world.queue_count("JobsDeadLetterQueue") == 0


def test_without_the_wake_up_the_job_waits_for_its_delay(local_world: LocalWorld) -> None:
    """The control: the same token, but no stream delivered: the job stays hidden."""
    _, event = _park_one(local_world)
    _keepalive(local_world, local_world.forge.app_token(lifetime_s=7200))
    assert local_world.receive()["Records"] == []
    assert _waiting(local_world) == 1
    local_world.make_visible(event)  # the delay passes
    _, response = local_world.run_worker()
    assert response["batchItemFailures"] == []
    assert _waiting(local_world) == 0  # run again by its delay: no longer parked


def test_a_token_for_another_installation_wakes_nothing(local_world: LocalWorld) -> None:
    _park_one(local_world)
    other = Site(
        installation_id="ari:cloud:ecosystem::installation/other-site",
        cloud_id=local_world.site.cloud_id,
        api_base_url=local_world.site.api_base_url,
        site_url="https://other.atlassian.net",
    )
    local_world.install(other, lifetime_s=7200)
    _keepalive(local_world, local_world.forge.app_token(lifetime_s=7200), other)
    assert local_world.deliver_token_stream() >= 1
    assert local_world.receive()["Records"] == []
    assert _waiting(local_world) == 1


def test_a_token_too_short_for_jobs_leaves_the_job_parked(local_world: LocalWorld) -> None:
    _park_one(local_world)
    _keepalive(local_world, local_world.forge.app_token(lifetime_s=300))  # under the 600 s minimum
    assert local_world.deliver_token_stream() >= 1
    assert local_world.receive()["Records"] == []  # waking it would only defer it again
    assert _waiting(local_world) == 1


def test_removed_tokens_and_user_tokens_wake_nothing(local_world: LocalWorld) -> None:
    """The stream's filter keeps only stored app tokens: a user token stored by a UI call, or the app
    token removed on uninstall, reach no wake-up."""
    _park_one(local_world)
    local_world.deliver_token_stream()  # what is in the stream so far
    calls: list[Any] = []
    original = local_world.wakeup.lambda_handler
    local_world.wakeup.lambda_handler = lambda event, context: calls.append(event) or original(event, context)
    store_user = local_world.forge.headers(
        local_world.site, user_token=local_world.forge.app_token(subject="user"), principal="557058:someone"
    )
    assert local_world.send("GET", "/api/status", store_user)["statusCode"] == 200
    assert local_world.deliver_token_stream() == 0
    assert calls == []


def test_the_stream_carries_keys_only_never_a_token(local_world: LocalWorld) -> None:
    token = local_world.install()
    seen: list[Any] = []
    original = local_world.wakeup.lambda_handler
    local_world.wakeup.lambda_handler = lambda event, context: seen.append(event) or original(event, context)
    assert local_world.deliver_token_stream() == 1
    [record] = seen[0]["Records"]
    assert set(record["dynamodb"]) <= {
        "Keys",
        "SequenceNumber",
        "SizeBytes",
        "StreamViewType",
        "ApproximateCreationDateTime",
    }
    assert token not in repr(seen)


def test_a_token_stored_while_the_job_parks_wakes_it(local_world: LocalWorld, monkeypatch: pytest.MonkeyPatch) -> None:
    """The gap between the worker's token check and its parking: a token stored (and its stream record
    handled) right then finds nothing parked. The worker looks again once parked, and wakes itself."""
    local_world.install(lifetime_s=3600)
    local_world.confluence.add_space("ENG", "Engineering")
    page = local_world.confluence.add_page("ENG", "Plan")
    clock.advance(3600 + 1)
    local_world.enqueue(local_world.snapshot_request(page["id"]))
    fresh = local_world.forge.app_token(lifetime_s=7200)
    parking = local_world.worker.parking
    real_park = parking.park

    def park_after_a_token_arrived(*args: Any, **kwargs: Any) -> None:
        _keepalive(local_world, fresh)
        local_world.deliver_token_stream()  # the wake-up ran before the job was parked: nothing to wake
        real_park(*args, **kwargs)

    monkeypatch.setattr(parking, "park", park_after_a_token_arrived)
    _, response = local_world.run_worker()
    assert len(response["batchItemFailures"]) == 1  # this delivery was deferred...
    monkeypatch.undo()
    _, response = local_world.run_worker()  # ...and is visible again at once
    assert response["batchItemFailures"] == []
    assert local_world.bearer_tokens_seen() == [fresh]
    assert _waiting(local_world) == 0


def test_a_wake_up_racing_the_delay_runs_the_job_once(local_world: LocalWorld) -> None:
    """The delay ends and a worker takes the job; meanwhile a token arrives and the wake-up makes the
    old delivery visible again (SQS may honour a stale receipt handle; moto does), so a second worker
    takes it while the first is still running. The job runs once; the twin is deferred, then
    acknowledged as already done."""
    page_id, event = _park_one(local_world)
    local_world.make_visible(event)  # the delay ends...
    first = local_world.receive()  # ...and a worker takes the job (it has not run it yet)
    fresh = local_world.forge.app_token(lifetime_s=7200)
    _keepalive(local_world, fresh)
    assert local_world.deliver_token_stream() >= 1  # wakes the parked, now stale, delivery
    second = local_world.receive()
    assert [r["body"] for r in second["Records"]] == [r["body"] for r in first["Records"]]

    local_world.confluence.delay_s = 0.5  # the first run is slow: the twin arrives while it is running
    results: dict[str, Any] = {}
    other_container = local_world.load("ConfluenceWorkerFunction")  # a concurrent invocation is another container

    def run(name: str, worker: Any, worker_event: dict[str, Any]) -> None:
        results[name] = worker.lambda_handler(worker_event, _context())

    first_run = threading.Thread(target=run, args=("first", local_world.worker, first))
    first_run.start()
    while not local_world.confluence.requests_seen:  # the first run is calling Confluence now
        threading.Event().wait(0.01)
    run("second", other_container, second)
    first_run.join()
    local_world.confluence.delay_s = 0.0
    assert results["first"]["batchItemFailures"] == []
    assert len(results["second"]["batchItemFailures"]) == 1  # "running in another invocation": later

    local_world.make_visible(second)
    again = local_world.receive()
    assert len(again["Records"]) == 1
    assert local_world.worker.lambda_handler(again, _context())["batchItemFailures"] == []  # already done
    snapshots = [r for r in local_world.results("SNAPSHOT") if r["pageId"] == page_id]
    assert len(snapshots) == 1
    content_calls = [s for s in local_world.confluence.requests_seen if s[1].endswith("/content/search")]
    assert len(content_calls) == 1  # Confluence was asked once


def test_a_parked_job_reaches_the_dlq_with_its_reason_when_no_token_comes(local_world: LocalWorld) -> None:
    _, event = _park_one(local_world)
    max_receives = int(local_world.stack.environment("ConfluenceWorkerFunction")["JOB_MAX_RECEIVES"])
    for _ in range(max_receives - 1):
        assert _waiting(local_world) == 1
        local_world.make_visible(event)
        clock.advance(1800)  # the delay passes; no Forge call comes
        event, _ = local_world.run_worker()
        assert len(event["Records"]) == 1
    assert local_world.queue_count("JobsQueue") == 0
    assert local_world.queue_count("JobsDeadLetterQueue") == 1
    [dead] = (
        boto3.client("sqs")
        .receive_message(QueueUrl=local_world.stack.physical["JobsDeadLetterQueue"], MessageAttributeNames=["All"])
        .get("Messages", [])
    )
    assert f"gave up after {max_receives} attempts" in dead["MessageAttributes"]["reason"]["StringValue"]
    assert _waiting(local_world) == 0  # nothing left parked for a job that is in the DLQ
    # A token arriving afterwards wakes nothing and breaks nothing.
    _keepalive(local_world, local_world.forge.app_token(lifetime_s=7200))
    local_world.deliver_token_stream()
    assert local_world.receive()["Records"] == []


def test_the_status_page_shows_jobs_waiting_dead_and_done(local_world: LocalWorld) -> None:
    _park_one(local_world)
    user = local_world.forge.headers(local_world.site, principal="557058:admin", module_key="ui")
    status = body_of(local_world.send("GET", "/api/status", user))
    assert status["jobs"]["waitingForToken"] == 1
    assert status["jobs"]["canRun"] is False
    assert status["jobs"]["canRunUntil"] is None
    assert status["lastToken"]["from"] == "lifecycle"

    fresh = local_world.forge.app_token(lifetime_s=7200)
    _keepalive(local_world, fresh)
    local_world.deliver_token_stream()
    local_world.run_worker()
    local_world.enqueue(JobRequest(job="no-such-job", installation_id=local_world.site.installation_id))
    local_world.run_worker()

    status = body_of(local_world.send("GET", "/api/status", user))
    jobs = status["jobs"]
    assert jobs["waitingForToken"] == 0
    assert jobs["canRun"] is True
    min_validity = status["tokenMinValiditySeconds"]
    assert jobs["canRunUntil"] is not None
    assert status["lastToken"]["from"] == "keepalive"
    [dead] = jobs["deadLettered"]
    assert dead["job"] == "no-such-job"
    assert "no-such-job" in dead["reason"]
    [last] = jobs["lastResults"]
    assert last["job"] == "page-snapshot"
    assert last["finishedAt"]
    assert min_validity == 600
    assert fresh not in repr(status)


def _context() -> Any:
    from local.lambda_context import LocalLambdaContext

    return LocalLambdaContext(function_name="worker", timeout_s=120)


def test_a_wake_up_that_sqs_refuses_leaves_the_job_parked_and_fails_the_record(local_world: LocalWorld) -> None:
    """SQS unwell: the claimed job is put back for the next delivery (its delay still holds), and the
    stream record is reported failed, so Lambda retries it."""
    _park_one(local_world)
    [before] = _parked(local_world)
    _keepalive(local_world, local_world.forge.app_token(lifetime_s=7200))
    real_call = BaseClient._make_api_call

    def sqs_unwell(client: BaseClient, operation: str, params: dict[str, Any]) -> Any:
        if operation == "ChangeMessageVisibility":
            raise ClientError({"Error": {"Code": "ServiceUnavailable", "Message": "later"}}, operation)
        return real_call(client, operation, params)

    answers: list[Any] = []
    original = local_world.wakeup.lambda_handler
    local_world.wakeup.lambda_handler = lambda event, context: answers.append(original(event, context)) or answers[-1]
    with patch.object(BaseClient, "_make_api_call", sqs_unwell):
        local_world.deliver_token_stream()
    assert any(answer["batchItemFailures"] for answer in answers)
    [after] = _parked(local_world)
    assert after["receiptHandle"] == before["receiptHandle"]
    assert local_world.receive()["Records"] == []  # still waiting for its delay...
    # Lambda retries the failed record; SQS answers now.
    retried = local_world.wakeup.lambda_handler({"Records": [_stream_record_for(local_world)]}, _context())
    assert retried["batchItemFailures"] == []
    assert len(local_world.receive()["Records"]) == 1  # woken


def _stream_record_for(world: LocalWorld) -> dict[str, Any]:
    return {
        "eventID": "retry",
        "eventName": "MODIFY",
        "eventSource": "aws:dynamodb",
        "dynamodb": {
            "Keys": {"pk": {"S": installation_pk(world.site.installation_id)}, "sk": {"S": "SYSTEM"}},
            "SequenceNumber": "2",
            "StreamViewType": "KEYS_ONLY",
        },
    }


def test_a_parked_item_whose_delay_ended_long_ago_is_not_counted_as_waiting(local_world: LocalWorld) -> None:
    """Its message is back in the queue's hands (received again, or moved by SQS's redrive after a
    crash): the status page must not count it as a job waiting for a token."""
    _park_one(local_world)
    assert _waiting(local_world) == 1
    [item] = _parked(local_world)
    clock.advance(float(item["retryAt"]["N"]) - clock.now() + 60)  # a minute past its delay: still counted
    assert _waiting(local_world) == 1
    clock.advance(3600)
    assert _waiting(local_world) == 0
    assert len(_parked(local_world)) == 1  # left to its ttl, not deleted by a reader
