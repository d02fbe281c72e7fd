"""The job scheduler: every active installation gets one request, in batched puts, page by page."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import boto3
import pytest
from botocore.stub import ANY

from forge_remote import aws
from forge_remote.errors import ServiceUnavailable
from forge_remote.jobs.contract import JOB_DETAIL_TYPE, JOB_SOURCE, JobRequest, put_job_requests
from forge_remote.jobs.scheduling import schedule_for_all
from forge_remote.storage.installations import InstallationFacts, InstallationRegistry
from forge_remote.storage.table_keys import ACTIVE_PK, INSTALLATION_SK, installation_pk
from local.forge_emulator import new_installation_id
from local.lambda_context import LocalLambdaContext
from local.stack import LocalStack


def register(registry: InstallationRegistry, count: int) -> list[str]:
    ids = []
    for _ in range(count):
        installation_id = new_installation_id()
        registry.record_lifecycle(
            InstallationFacts(
                installation_id=installation_id, api_base_url="https://api.atlassian.com/ex/confluence/c"
            ),
            "avi:forge:installed:app",
        )
        ids.append(installation_id)
    return ids


def register_fast(stack: LocalStack, count: int) -> list[str]:
    """Active installation items written in batches (what record_lifecycle writes, minus the extras)."""
    ids = [new_installation_id() for _ in range(count)]
    client = boto3.client("dynamodb")
    for start in range(0, count, 25):
        client.batch_write_item(
            RequestItems={
                stack.physical["AppTable"]: [
                    {
                        "PutRequest": {
                            "Item": {
                                "pk": {"S": installation_pk(i)},
                                "sk": {"S": INSTALLATION_SK},
                                "status": {"S": "active"},
                                "activePk": {"S": ACTIVE_PK},
                                "activeSk": {"S": i},
                            }
                        }
                    }
                    for i in ids[start : start + 25]
                ]
            }
        )
    return ids


class RecordingEvents:
    """Stands in for the EventBridge client: records every PutEvents call (delivery is tested below)."""

    def __init__(self) -> None:
        self.calls: list[list[dict[str, Any]]] = []

    def put_events(self, **kwargs: Any) -> Any:
        self.calls.append(kwargs["Entries"])
        return {"FailedEntryCount": 0, "Entries": [{"EventId": str(i)} for i in range(len(kwargs["Entries"]))]}


def test_one_request_per_active_installation_in_batches_of_ten(stack: LocalStack) -> None:
    registry = InstallationRegistry(boto3.client("dynamodb"), stack.physical["AppTable"])
    ids = register_fast(stack, 1000)
    for gone in ids[:7]:
        registry.mark_uninstalled(gone)
    events = RecordingEvents()
    report = schedule_for_all(registry, events, "jobs-bus", "space-digest", {"hours": 24}, page_size=300)  # type: ignore[arg-type]
    assert report.installations == report.requested == 993
    assert report.pages == 4  # paged through the index, not one scan
    assert max(len(c) for c in events.calls) == 10
    assert len(events.calls) == sum((n + 9) // 10 for n in (300, 300, 300, 93))
    requested = [json.loads(e["Detail"])["installationId"] for call in events.calls for e in call]
    assert sorted(requested) == sorted(ids[7:])  # each active installation exactly once, none uninstalled
    assert {e["EventBusName"] for call in events.calls for e in call} == {"jobs-bus"}


def test_scheduled_requests_arrive_on_the_queue(stack: LocalStack, handler: Callable) -> None:
    registry = InstallationRegistry(boto3.client("dynamodb"), stack.physical["AppTable"])
    ids = set(register(registry, 12))
    scheduler = handler("JobSchedulerFunction")
    result = scheduler.lambda_handler({"job": "space-digest", "args": {}}, LocalLambdaContext())
    assert result["requested"] == 12
    sqs = boto3.client("sqs")
    seen: set[str] = set()
    for _ in range(5):
        for message in sqs.receive_message(QueueUrl=stack.physical["JobsQueue"], MaxNumberOfMessages=10).get(
            "Messages", []
        ):
            envelope = json.loads(message["Body"])
            assert envelope["source"] == JOB_SOURCE
            assert envelope["detail-type"] == JOB_DETAIL_TYPE
            request = JobRequest.from_message_body(message["Body"])
            assert request.job == "space-digest"
            seen.add(request.installation_id)
    assert seen == ids


def test_bad_schedule_input_fails_loudly(stack: LocalStack, handler: Callable) -> None:
    scheduler = handler("JobSchedulerFunction")
    with pytest.raises(ValueError, match="schedule input"):
        scheduler.lambda_handler({"args": {}}, LocalLambdaContext())


def test_failed_put_entries_are_retried_then_raise() -> None:
    client = boto3.client("events")
    from botocore.stub import Stubber

    requests = [JobRequest(job="space-digest", installation_id=new_installation_id()) for _ in range(3)]
    with Stubber(client) as stub:
        stub.add_response(
            "put_events",
            {
                "FailedEntryCount": 1,
                "Entries": [{"EventId": "a"}, {"ErrorCode": "ThrottlingException"}, {"EventId": "c"}],
            },
            {"Entries": ANY},
        )
        stub.add_response("put_events", {"FailedEntryCount": 0, "Entries": [{"EventId": "b"}]}, {"Entries": ANY})
        assert put_job_requests(client, "bus", requests) == 3
        for _ in range(4):
            stub.add_response(
                "put_events", {"FailedEntryCount": 1, "Entries": [{"ErrorCode": "InternalFailure"}]}, {"Entries": ANY}
            )
        with pytest.raises(ServiceUnavailable, match="could not be put"):
            put_job_requests(client, "bus", requests[:1])
    aws.reset_clients()
