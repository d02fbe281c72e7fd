"""The job scheduler: every active installation gets one request, sent straight to the jobs queue in
batches of ten, page by page, each in its installation's message group; a spread schedule's requests
wait in SQS for their slot."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import boto3
import pytest
from botocore.stub import ANY

from forge_remote import aws
from forge_remote.errors import ServiceUnavailable
from forge_remote.jobs.contract import JobRequest, send_job_requests
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


class RecordingSqs:
    """Stands in for the SQS client: records every SendMessageBatch call (delivery is tested below)."""

    def __init__(self) -> None:
        self.calls: list[list[dict[str, Any]]] = []
        self.urls: set[str] = set()

    def send_message_batch(self, **kwargs: Any) -> Any:
        self.calls.append(kwargs["Entries"])
        self.urls.add(kwargs["QueueUrl"])
        return {
            "Successful": [{"Id": e["Id"], "MessageId": e["Id"], "MD5OfMessageBody": ""} for e in kwargs["Entries"]]
        }


def test_one_request_per_active_installation_in_batches_of_ten(stack: LocalStack) -> None:
    registry = InstallationRegistry(boto3.client("dynamodb"), stack.physical["AppTable"])
    ids = register_fast(stack, 1000)
    for gone in ids[:7]:
        registry.mark_uninstalled(gone)
    sqs = RecordingSqs()
    report = schedule_for_all(registry, sqs, "jobs-queue", "space-digest", {"hours": 24}, page_size=300)  # type: ignore[arg-type]
    assert report.installations == report.requested == 993
    assert report.pages == 4  # paged through the index, not one scan
    assert max(len(c) for c in sqs.calls) == 10
    assert len(sqs.calls) == sum((n + 9) // 10 for n in (300, 300, 300, 93))
    requested = [json.loads(e["MessageBody"])["installationId"] for call in sqs.calls for e in call]
    assert sorted(requested) == sorted(ids[7:])  # each active installation exactly once, none uninstalled
    assert sqs.urls == {"jobs-queue"}
    assert [e["MessageGroupId"] for call in sqs.calls for e in call] == requested


def test_scheduled_requests_arrive_on_the_queue(stack: LocalStack, handler: Callable) -> None:
    registry = InstallationRegistry(boto3.client("dynamodb"), stack.physical["AppTable"])
    ids = set(register(registry, 12))
    scheduler = handler("JobSchedulerFunction")
    result = scheduler.lambda_handler({"job": "space-digest", "args": {}}, LocalLambdaContext())
    assert result["requested"] == 12
    sqs = boto3.client("sqs")
    seen: set[str] = set()
    for _ in range(5):
        for message in sqs.receive_message(
            QueueUrl=stack.physical["JobsQueue"], MaxNumberOfMessages=10, AttributeNames=["All"]
        ).get("Messages", []):
            assert "detail" not in json.loads(message["Body"])  # a bare request: no EventBridge envelope
            request = JobRequest.from_message_body(message["Body"])
            assert request.job == "space-digest"
            assert (request.not_before, request.priority) == (None, "bulk")
            assert message["Attributes"]["MessageGroupId"] == request.installation_id  # the fair queue's tenant
            seen.add(request.installation_id)
    assert seen == ids


def test_a_spread_schedule_leaves_its_requests_delayed_on_the_queue(stack: LocalStack, handler: Callable) -> None:
    registry = InstallationRegistry(boto3.client("dynamodb"), stack.physical["AppTable"])
    ids = set(register(registry, 8))
    scheduler = handler("JobSchedulerFunction")
    result = scheduler.lambda_handler({"job": "space-digest", "spreadMinutes": 60}, LocalLambdaContext())
    assert (result["requested"], result["spreadSeconds"]) == (8, 3600)
    queue = stack.physical["JobsQueue"]
    counts = sqs_counts(queue)
    # Each at its slot of the hour: SQS holds back what falls in its first 15 minutes, the worker the rest.
    assert counts["ApproximateNumberOfMessagesDelayed"] + counts["ApproximateNumberOfMessages"] == 8
    assert counts["ApproximateNumberOfMessagesDelayed"] >= 1
    visible = boto3.client("sqs").receive_message(QueueUrl=queue, MaxNumberOfMessages=10).get("Messages", [])
    requests = [JobRequest.from_message_body(m["Body"]) for m in visible]
    assert all(r.not_before is not None and r.installation_id in ids for r in requests)


def sqs_counts(queue_url: str) -> dict[str, int]:
    names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesDelayed"]
    attributes = boto3.client("sqs").get_queue_attributes(QueueUrl=queue_url, AttributeNames=names)["Attributes"]  # type: ignore[arg-type]
    return {name: int(attributes[name]) for name in names}


@pytest.mark.parametrize("value", [-1, 721, "60", True])
def test_a_bad_spread_fails_the_schedule_loudly(stack: LocalStack, handler: Callable, value: object) -> None:
    scheduler = handler("JobSchedulerFunction")
    with pytest.raises(ValueError, match="spreadMinutes"):
        scheduler.lambda_handler({"job": "space-digest", "spreadMinutes": value}, LocalLambdaContext())


def test_bad_schedule_input_fails_loudly(stack: LocalStack, handler: Callable) -> None:
    scheduler = handler("JobSchedulerFunction")
    with pytest.raises(ValueError, match="schedule input"):
        scheduler.lambda_handler({"args": {}}, LocalLambdaContext())


def test_failed_send_entries_are_retried_then_raise() -> None:
    client = boto3.client("sqs")
    from botocore.stub import Stubber

    queue = "https://sqs.us-east-1.amazonaws.com/123456789012/jobs"
    requests = [JobRequest(job="space-digest", installation_id=new_installation_id()) for _ in range(3)]
    failed = {"Id": "1", "SenderFault": False, "Code": "InternalError", "Message": "try again"}
    ok = {"MessageId": "m", "MD5OfMessageBody": "x"}
    with Stubber(client) as stub:
        stub.add_response(
            "send_message_batch",
            {"Successful": [{"Id": "0", **ok}, {"Id": "2", **ok}], "Failed": [failed]},
            {"QueueUrl": queue, "Entries": ANY},
        )
        stub.add_response(
            "send_message_batch", {"Successful": [{"Id": "0", **ok}], "Failed": []}, {"QueueUrl": queue, "Entries": ANY}
        )
        assert send_job_requests(client, queue, requests) == 3
        for _ in range(4):
            stub.add_response(
                "send_message_batch",
                {"Successful": [], "Failed": [{**failed, "Id": "0"}]},
                {"QueueUrl": queue, "Entries": ANY},
            )
        with pytest.raises(ServiceUnavailable, match="could not be sent"):
            send_job_requests(client, queue, requests[:1])
    aws.reset_clients()
