"""Regressions for the second outside review's finding on wake-ups, and the receive budget around it.

2. While Confluence refuses a token that Forge keeps re-delivering (the minutes after install, while
   the app user is provisioned), every re-delivery woke the parked job, which failed again and spent
   one SQS receive with no delay: ten re-deliveries in 90 s put the job in the DLQ instead of after
   the ~2.5 h the deferral schedule promises. Now a wake-up is only for a token the job has not been
   refused (``TokenStore.wakes_jobs``), and however the receives come (wake-ups by new tokens that are
   refused too, restarts for invocation time), a job is given up on only after ``JobMaxReceives`` tries
   AND the schedule's time (``worker.gives_up``); the queue's own limit is a hard cap above that.

The worker and the token wake-up are the real handlers on a moto stack; the tokens table's stream is
delivered as Lambda's event source mapping would (``LocalWorld.deliver_token_stream``).
"""

from __future__ import annotations

from typing import Any

import boto3
import pytest

from forge_remote import clock
from forge_remote.jobs.runner import deferral_schedule_s
from tests.reliability.ledger import Ledger
from tests.support import LocalWorld

pytestmark = pytest.mark.reliability

REDELIVERIES = 10
SECONDS_BETWEEN = 9  # ten re-deliveries in 90 s, as seen after an install


def _settings(world: LocalWorld) -> tuple[int, int]:
    """(tries before the DLQ, the queue's maxReceiveCount)."""
    tries = int(world.stack.environment("ConfluenceWorkerFunction")["JOB_MAX_RECEIVES"])
    redrive = world.stack.resolve(world.stack.resources["JobsQueue"]["Properties"]["RedrivePolicy"])
    return tries, int(redrive["maxReceiveCount"])


def _keepalive(world: LocalWorld, token: str) -> None:
    headers = world.forge.headers(world.site, app_token=token, module_key="keepalive-endpoint")
    assert world.send("POST", "/forge/keepalive", headers)["statusCode"] == 204


def _hidden(world: LocalWorld) -> int:
    """Job messages in flight or waiting out a delay (not visible)."""
    attributes = boto3.client("sqs").get_queue_attributes(
        QueueUrl=world.stack.physical["JobsQueue"], AttributeNames=["ApproximateNumberOfMessagesNotVisible"]
    )
    return int(attributes["Attributes"]["ApproximateNumberOfMessagesNotVisible"])


def _dead_letters(world: LocalWorld) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = (
        boto3.client("sqs")
        .receive_message(
            QueueUrl=world.stack.physical["JobsDeadLetterQueue"], MessageAttributeNames=["All"], MaxNumberOfMessages=10
        )
        .get("Messages", [])
    )
    return messages


def _refused_job(world: LocalWorld, ledger: Ledger) -> str:
    """Installed with a token Confluence refuses; one snapshot job tried once, refused, deferred, parked."""
    token = ledger.secret(world.install())
    world.confluence.revoke(token)
    world.confluence.add_space("ENG", "Engineering")
    page = world.confluence.add_page("ENG", "Plan")
    world.enqueue(world.snapshot_request(page["id"]))
    event, response = world.run_worker()
    assert len(event["Records"]) == 1
    assert len(response["batchItemFailures"]) == 1  # deferred, not dead
    world.deliver_token_stream()  # the invalidation itself wakes nothing
    return token


def test_re_deliveries_of_a_refused_token_wake_nothing_and_spend_no_receive(
    local_world: LocalWorld, ledger: Ledger
) -> None:
    token = _refused_job(local_world, ledger)
    confluence_calls = len(local_world.confluence.requests_seen)
    for _ in range(REDELIVERIES):
        _keepalive(local_world, token)  # Forge hands the same token again: it is stored again
        local_world.deliver_token_stream()
        event, _ = local_world.run_worker()
        assert event["Records"] == [], "a re-delivery of the refused token woke the job"
        clock.advance(SECONDS_BETWEEN)
        ledger.refused()
    assert len(local_world.confluence.requests_seen) == confluence_calls  # nothing was tried again
    assert _dead_letters(local_world) == []
    assert _hidden(local_world) == 1  # still waiting out its delay


def test_a_refused_token_reaches_the_dlq_no_sooner_than_the_schedule(local_world: LocalWorld, ledger: Ledger) -> None:
    """The token stays refused and is re-delivered all along; the job is tried when each delay ends."""
    max_attempts, _ = _settings(local_world)
    token = _refused_job(local_world, ledger)
    started = clock.now()
    attempts = 1
    while local_world.queue_count("JobsDeadLetterQueue") == 0:
        assert attempts <= max_attempts, "tried more often than JobMaxReceives"
        for _ in range(3):  # re-deliveries during the delay: none of them may bring the job back early
            _keepalive(local_world, token)
            local_world.deliver_token_stream()
            assert local_world.run_worker()[0]["Records"] == []
        clock.advance(1800)  # the longest delay passes, and with it the job's own
        assert _release(local_world) == 1
        local_world.run_worker()
        attempts += 1
    assert attempts == max_attempts
    assert clock.now() - started >= deferral_schedule_s(max_attempts)
    [dead] = _dead_letters(local_world)
    assert f"gave up after {max_attempts} attempts" in dead["MessageAttributes"]["reason"]["StringValue"]
    ledger.refused()


def _release(world: LocalWorld) -> int:
    """The deferral delay ends: the hidden job message becomes visible (its receipt is the parked one)."""
    items = boto3.client("dynamodb").scan(TableName=world.stack.physical["AppTable"])["Items"]
    parked = [item for item in items if item["sk"]["S"].startswith("PARKED#")]
    sqs = boto3.client("sqs")
    for item in parked:
        sqs.change_message_visibility(
            QueueUrl=world.stack.physical["JobsQueue"], ReceiptHandle=item["receiptHandle"]["S"], VisibilityTimeout=0
        )
    return len(parked)


def test_wake_ups_by_new_tokens_that_are_refused_too_do_not_shorten_the_schedule(
    local_world: LocalWorld, ledger: Ledger
) -> None:
    """Each delivery is a new token (each wakes the job, as it should) and Confluence refuses each: the
    receives come every 9 s, yet the job is not given up on before the schedule's time has passed."""
    max_attempts, queue_max = _settings(local_world)
    _refused_job(local_world, ledger)
    for _ in range(max_attempts + 2):
        fresh = local_world.forge.app_token(lifetime_s=3 * 3600)
        ledger.secret(fresh)
        local_world.confluence.revoke(fresh)
        _keepalive(local_world, fresh)
        local_world.deliver_token_stream()
        event, response = local_world.run_worker()
        assert len(event["Records"]) == 1  # woken: a token it had not been refused
        assert len(response["batchItemFailures"]) == 1  # refused again: deferred, kept
        clock.advance(SECONDS_BETWEEN)
        ledger.refused()
    assert _dead_letters(local_world) == []
    assert local_world.queue_count("JobsQueue") == 1
    assert max_attempts + 3 < queue_max  # the hard cap was not what kept it

    # Once the schedule's time has passed, the next try that fails gives up, with the reason.
    clock.advance(deferral_schedule_s(max_attempts))
    fresh = local_world.forge.app_token(lifetime_s=3 * 3600)
    ledger.secret(fresh)
    local_world.confluence.revoke(fresh)
    _keepalive(local_world, fresh)
    local_world.deliver_token_stream()
    local_world.run_worker()
    [dead] = _dead_letters(local_world)
    assert "(gave up after" in dead["MessageAttributes"]["reason"]["StringValue"]


def test_restarts_for_invocation_time_are_not_tries(local_world: LocalWorld, ledger: Ledger) -> None:
    """A job that keeps landing late in invocations (too little time left to start it) is restarted,
    never dead-lettered for it; given the time, it runs."""
    max_attempts, _ = _settings(local_world)
    local_world.install()
    [request] = local_world.pages(1)
    local_world.enqueue(request)
    for _ in range(max_attempts + 2):
        event, response = local_world.run_worker(timeout_s=10)  # under the worker's 15 s minimum
        assert len(response["batchItemFailures"]) == 1
        local_world.make_visible(event)
        ledger.refused()
    assert _dead_letters(local_world) == []
    _, response = local_world.run_worker()
    assert response["batchItemFailures"] == []
    assert len(local_world.results("SNAPSHOT")) == 1


def test_the_queues_own_limit_is_reached_with_a_reason_never_silently(local_world: LocalWorld, ledger: Ledger) -> None:
    """Restarts are not tries, but SQS still counts them: on the queue's last receive the worker says why."""
    _, queue_max = _settings(local_world)
    local_world.install()
    [request] = local_world.pages(1)
    local_world.enqueue(request)
    for receive in range(1, queue_max + 1):
        event, response = local_world.run_worker(timeout_s=10)
        assert len(event["Records"]) == 1, f"receive {receive}: the message is gone"
        if receive < queue_max:
            assert len(response["batchItemFailures"]) == 1
            local_world.make_visible(event)
    [dead] = _dead_letters(local_world)
    reason = dead["MessageAttributes"]["reason"]["StringValue"]
    assert reason == f"too little time left in this invocation (gave up after {queue_max} attempts)"
    assert local_world.queue_count("JobsQueue") == 0
    ledger.refused()
