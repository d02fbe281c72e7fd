"""An exception the library does not know (a bug in a job, an AWS error nobody caught) has one outcome:
deferred on the ordinary schedule with a reason naming its type, then the DLQ with that reason.
Never the queue's silent redrive, and never its message, which may quote a secret."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from forge_remote import clock
from forge_remote.jobs.contract import JOBS, JobContext, JobRequest
from tests.reliability.harness import queue_messages
from tests.reliability.ledger import Ledger
from tests.support import LocalWorld

JOB = "raises-unexpectedly"
SECRET_IN_MESSAGE = "token=not-to-be-kept"


def dead_letter_reasons(world: LocalWorld) -> dict[str, str]:
    found = {}
    for message in queue_messages(world.stack, "JobsDeadLetterQueue"):
        request = JobRequest.from_message_body(message["body"])
        found[request.request_id] = message["attributes"]["reason"]["StringValue"]
    return found


@pytest.fixture
def raising_job() -> Any:
    """A registered job that raises KeyError with a message that must not be kept; unregistered after."""
    raised: list[int] = []

    def run(ctx: JobContext, _args: Mapping[str, Any]) -> None:
        raised.append(1)
        raise KeyError(SECRET_IN_MESSAGE)

    JOBS.job(JOB, lambda args: args)(run)
    yield raised
    JOBS._jobs.pop(JOB, None)


def test_an_unknown_exception_is_deferred_then_dead_lettered_with_its_type(
    local_world: LocalWorld, ledger: Ledger, raising_job: list[int]
) -> None:
    ledger.secret(local_world.install())
    request = JobRequest(job=JOB, installation_id=local_world.site.installation_id)
    local_world.enqueue(request)
    tries = int(local_world.stack.environment("ConfluenceWorkerFunction")["JOB_MAX_RECEIVES"])

    event, response = local_world.run_worker()
    assert len(response["batchItemFailures"]) == 1  # deferred: kept, not acknowledged
    assert local_world.receive()["Records"] == []  # with the deferral's delay, not at once
    assert local_world.queue_count("JobsDeadLetterQueue") == 0
    local_world.make_visible(event)

    for _ in range(tries + 5):
        clock.advance(1800)  # each deferral's delay passes (the longest one)
        fresh = ledger.secret(local_world.forge.app_token(lifetime_s=7200))  # the hourly keepalive: only the job fails
        headers = local_world.forge.headers(local_world.site, app_token=fresh)
        assert local_world.send("POST", "/forge/keepalive", headers)["statusCode"] == 204
        done, failed = local_world.run_round()
        if not done and not failed:
            break
    ledger.tried += 1
    reasons = dead_letter_reasons(local_world)
    assert len(raising_job) == tries, reasons  # every attempt ran the job: the ordinary schedule, then no more
    reason = dead_letter_reasons(local_world)[request.request_id]
    assert f"job {JOB} raised KeyError at test_unexpected_exceptions.py:" in reason
    assert f"(gave up after {tries} attempts)" in reason
    assert SECRET_IN_MESSAGE not in reason
    assert local_world.queue_count("JobsQueue") == 0
