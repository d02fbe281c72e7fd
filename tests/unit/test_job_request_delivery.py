"""Job requests straight to the SQS jobs queue: ten per SendMessageBatch call, each message in its
installation's group (the fair queue's tenant), delayed by SQS up to 15 minutes for a ``notBefore``,
only the failed entries sent again, and a clear ``ServiceUnavailable`` (with no wait after the last
try) when the queue keeps refusing them. And the two new request fields, ``notBefore`` and
``priority``: written only when not the defaults, read back, and refused when malformed."""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

import pytest

from forge_remote import clock
from forge_remote.errors import BadJobRequest, ServiceUnavailable
from forge_remote.jobs import contract
from forge_remote.jobs.contract import (
    BULK,
    INTERACTIVE,
    SEND_ATTEMPTS,
    JobRequest,
    message_group,
    request_job,
    send_job_requests,
)

INSTALLATION = "ari:cloud:ecosystem::installation/0a0b-queue-unit"
QUEUE = "https://sqs.us-east-1.amazonaws.com/123456789012/jobs"


class Queue:
    """SendMessageBatch that refuses the entries whose request id is in ``refuse`` (``times`` calls each,
    or always)."""

    def __init__(self, refuse: set[str] | None = None, times: int | None = None) -> None:
        self.refuse = refuse or set()
        self.times = times
        self.calls: list[list[dict[str, Any]]] = []
        self.urls: list[str] = []

    def send_message_batch(self, QueueUrl: str, Entries: list[dict[str, Any]]) -> dict[str, Any]:  # noqa: N803 (boto3's names)
        self.urls.append(QueueUrl)
        self.calls.append(Entries)
        still = self.times is None or len(self.calls) <= self.times
        ok, failed = [], []
        for entry in Entries:
            if json.loads(entry["MessageBody"])["requestId"] in self.refuse and still:
                failed.append({"Id": entry["Id"], "SenderFault": False, "Code": "InternalError", "Message": "x"})
            else:
                ok.append({"Id": entry["Id"], "MessageId": "m" + entry["Id"], "MD5OfMessageBody": ""})
        return {"Successful": ok, "Failed": failed} if failed else {"Successful": ok}

    def request_ids(self, call: int) -> list[str]:
        return [json.loads(e["MessageBody"])["requestId"] for e in self.calls[call]]


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    slept: list[float] = []
    monkeypatch.setattr(contract.time, "sleep", slept.append)
    return slept


def requests(n: int, installation_id: str = INSTALLATION, **fields: Any) -> list[JobRequest]:
    return [JobRequest(job="unit-job", installation_id=installation_id, request_id=f"r{i}", **fields) for i in range(n)]


def test_requests_go_ten_per_call_as_compact_bare_requests(sleeps: list[float]) -> None:
    queue = Queue()
    sent = requests(23)
    assert send_job_requests(queue, QUEUE, sent) == 23  # type: ignore[arg-type]
    assert [len(call) for call in queue.calls] == [10, 10, 3]
    assert set(queue.urls) == {QUEUE}
    assert [e["Id"] for e in queue.calls[2]] == ["0", "1", "2"]  # the entry's index in its batch
    first = queue.calls[0][0]
    assert first["MessageBody"] == json.dumps(sent[0].to_detail(), separators=(",", ":"))
    assert JobRequest.from_message_body(first["MessageBody"]) == sent[0]  # what the worker reads back
    assert sleeps == []


def test_each_message_is_in_its_installations_group() -> None:
    queue = Queue()
    ids = [f"ari:cloud:ecosystem::installation/site-{n}" for n in range(3)]
    send_job_requests(queue, QUEUE, [r for i in ids for r in requests(2, i)])  # type: ignore[arg-type]
    groups = [(e["MessageGroupId"], json.loads(e["MessageBody"])["installationId"]) for e in queue.calls[0]]
    assert all(group == installation for group, installation in groups)
    assert sorted({g for g, _ in groups}) == ids


def test_an_installation_id_longer_than_sqs_allows_is_grouped_by_its_digest() -> None:
    short = "ari:cloud:ecosystem::installation/" + "a" * (128 - 34)
    long = "ari:cloud:ecosystem::installation/" + "b" * 150
    assert len(short) == 128
    assert message_group(short) == short
    group = message_group(long)
    assert group == "sha256:" + hashlib.sha256(long.encode()).hexdigest()
    assert len(group) <= 128
    assert message_group(long) == group
    assert message_group(long + "c") != group
    queue = Queue()
    send_job_requests(queue, QUEUE, requests(1, long))  # type: ignore[arg-type]
    assert queue.calls[0][0]["MessageGroupId"] == group


def test_no_delay_without_not_before_or_once_it_has_passed() -> None:
    queue = Queue()
    now = clock.now()
    send_job_requests(queue, QUEUE, [*requests(1), *requests(1, not_before=now - 30)])  # type: ignore[arg-type]
    assert ["DelaySeconds" in e for e in queue.calls[0]] == [False, False]


def test_a_not_before_ahead_is_delayed_by_sqs_up_to_fifteen_minutes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(clock, "now", lambda: 1_000_000.0)
    queue = Queue()
    ahead = [0.2, 1, 299.5, 900, 901, 3600]
    send_job_requests(queue, QUEUE, [requests(1, not_before=1_000_000.0 + s)[0] for s in ahead])  # type: ignore[arg-type]
    assert [e["DelaySeconds"] for e in queue.calls[0]] == [1, 1, 300, 900, 900, 900]
    # The rest of a later slot is the worker's to wait for: the body says when.
    assert json.loads(queue.calls[0][-1]["MessageBody"])["notBefore"] == 1_003_600.0


def test_only_the_refused_entries_are_sent_again(sleeps: list[float]) -> None:
    queue = Queue(refuse={"r3", "r7"}, times=1)
    assert send_job_requests(queue, QUEUE, requests(10)) == 10  # type: ignore[arg-type]
    assert queue.request_ids(1) == ["r3", "r7"]
    assert [e["Id"] for e in queue.calls[1]] == ["0", "1"]  # numbered afresh in the new batch
    assert len(sleeps) == 1


def test_a_queue_that_keeps_refusing_is_a_service_unavailable_without_a_last_wait(sleeps: list[float]) -> None:
    queue = Queue(refuse={"r1"})
    with pytest.raises(ServiceUnavailable, match="1 job requests could not be sent to the jobs queue"):
        send_job_requests(queue, QUEUE, requests(2))  # type: ignore[arg-type]
    assert len(queue.calls) == SEND_ATTEMPTS
    assert [queue.request_ids(i) for i in range(1, SEND_ATTEMPTS)] == [["r1"]] * (SEND_ATTEMPTS - 1)
    assert len(sleeps) == SEND_ATTEMPTS - 1
    assert sleeps == sorted(sleeps)
    assert sleeps[0] < sleeps[-1]


def test_a_batch_stays_inside_the_calls_size_limit() -> None:
    queue = Queue()
    big = [
        JobRequest(job="unit-job", installation_id=INSTALLATION, request_id=f"r{i}", args={"pad": "x" * 60_000})
        for i in range(10)
    ]
    assert send_job_requests(queue, QUEUE, big) == 10  # type: ignore[arg-type]
    assert all(sum(len(e["MessageBody"]) for e in call) <= contract.SEND_BATCH_BYTES for call in queue.calls)
    assert sum(len(call) for call in queue.calls) == 10


def test_request_job_sends_to_the_configured_queue(monkeypatch: pytest.MonkeyPatch) -> None:
    from forge_remote import aws

    queue = Queue()
    monkeypatch.setattr(aws, "sqs", lambda: queue)
    monkeypatch.setenv("FORGE_APP_ID", "5c7bd2a4-0f1e-4d3b-9a6c-2e8f1b7d4a90")
    monkeypatch.setenv("TOKENS_TABLE", "tokens")
    monkeypatch.setenv("APP_TABLE", "app")
    monkeypatch.setenv("JOBS_QUEUE_URL", QUEUE)
    request_id = request_job("unit-job", INSTALLATION, {"n": 1}, priority=INTERACTIVE)
    [entry] = queue.calls[0]
    sent = JobRequest.from_message_body(entry["MessageBody"])
    assert (queue.urls, sent.request_id, sent.priority, sent.args) == ([QUEUE], request_id, INTERACTIVE, {"n": 1})
    assert entry["MessageGroupId"] == INSTALLATION
    request_job("unit-job", INSTALLATION, queue_url="https://sqs.example/other")
    assert queue.urls[-1] == "https://sqs.example/other"
    assert JobRequest.from_message_body(queue.calls[-1][0]["MessageBody"]).priority == BULK


# -- notBefore and priority in the request document ------------------------------------------------------
def test_the_defaults_are_not_written_and_the_others_round_trip() -> None:
    plain = JobRequest(job="unit-job", installation_id=INSTALLATION)
    assert "notBefore" not in plain.to_detail()
    assert "priority" not in plain.to_detail()
    assert (plain.not_before, plain.priority) == (None, BULK)
    marked = JobRequest(job="unit-job", installation_id=INSTALLATION, not_before=1_700_000_123.5, priority=INTERACTIVE)
    detail = marked.to_detail()
    assert (detail["notBefore"], detail["priority"]) == (1_700_000_123.5, "interactive")
    assert JobRequest.from_message_body(json.dumps(detail)) == marked
    assert JobRequest.from_detail({**plain.to_detail(), "priority": "bulk"}) == plain
    whole = JobRequest.from_detail({**plain.to_detail(), "notBefore": 1_700_000_000})
    assert whole.not_before == 1_700_000_000.0
    assert isinstance(whole.not_before, float)


@pytest.mark.parametrize("value", [-1, -0.5, True, False, "1700000000", [1], {"at": 1}, math.inf, -math.inf, math.nan])
def test_a_bad_not_before_is_refused(value: Any) -> None:
    detail = {**JobRequest(job="unit-job", installation_id=INSTALLATION).to_detail(), "notBefore": value}
    with pytest.raises(BadJobRequest, match="invalid notBefore"):
        JobRequest.from_detail(detail)


@pytest.mark.parametrize(
    "body",
    [
        '"notBefore": NaN',
        '"notBefore": Infinity',
        '"notBefore": -1e3',
        '"notBefore": 1e400',
        '"notBefore": ' + "9" * 400,
    ],
)
def test_a_bad_not_before_in_a_message_body_is_refused(body: str) -> None:
    with pytest.raises(BadJobRequest, match="invalid notBefore"):
        JobRequest.from_message_body('{"job": "unit-job", "installationId": "' + INSTALLATION + '", ' + body + "}")


@pytest.mark.parametrize("value", ["urgent", "Interactive", "", None, 1, True, ["bulk"]])
def test_a_bad_priority_is_refused(value: Any) -> None:
    detail = {**JobRequest(job="unit-job", installation_id=INSTALLATION).to_detail(), "priority": value}
    with pytest.raises(BadJobRequest, match="invalid priority"):
        JobRequest.from_detail(detail)


def test_a_request_cannot_be_made_with_bad_values_either() -> None:
    with pytest.raises(BadJobRequest, match="invalid priority"):
        JobRequest(job="unit-job", installation_id=INSTALLATION, priority="urgent")
    with pytest.raises(BadJobRequest, match="invalid notBefore"):
        JobRequest(job="unit-job", installation_id=INSTALLATION, not_before=math.nan)
