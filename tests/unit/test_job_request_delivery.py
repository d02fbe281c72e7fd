"""Job requests onto the bus: ten per PutEvents call, only the failed entries sent again, and a clear
``ServiceUnavailable`` (with no wait after the last try) when the bus keeps refusing them."""

from __future__ import annotations

import json
from typing import Any

import pytest

from forge_remote.errors import ServiceUnavailable
from forge_remote.jobs import contract
from forge_remote.jobs.contract import PUT_ATTEMPTS, JobRequest, put_job_requests

INSTALLATION = "ari:cloud:ecosystem::installation/0a0b-bus-unit"


class Bus:
    """PutEvents that refuses the entries whose request id is in ``refuse`` (``times`` calls each, or always)."""

    def __init__(self, refuse: set[str] | None = None, times: int | None = None) -> None:
        self.refuse = refuse or set()
        self.times = times
        self.calls: list[list[str]] = []

    def put_events(self, Entries: list[dict[str, Any]]) -> dict[str, Any]:  # noqa: N803 (boto3's name)
        ids = [json.loads(entry["Detail"])["requestId"] for entry in Entries]
        self.calls.append(ids)
        still = self.times is None or len(self.calls) <= self.times
        results = [{"ErrorCode": "ThrottlingException"} if i in self.refuse and still else {"EventId": i} for i in ids]
        return {"FailedEntryCount": sum("ErrorCode" in r for r in results), "Entries": results}


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    slept: list[float] = []
    monkeypatch.setattr(contract.time, "sleep", slept.append)
    return slept


def requests(n: int) -> list[JobRequest]:
    return [JobRequest(job="unit-job", installation_id=INSTALLATION, request_id=f"r{i}") for i in range(n)]


def test_requests_go_ten_per_call(sleeps: list[float]) -> None:
    bus = Bus()
    assert put_job_requests(bus, "jobs", requests(23)) == 23  # type: ignore[arg-type]
    assert [len(call) for call in bus.calls] == [10, 10, 3]
    assert sleeps == []


def test_only_the_refused_entries_are_sent_again(sleeps: list[float]) -> None:
    bus = Bus(refuse={"r3", "r7"}, times=1)
    assert put_job_requests(bus, "jobs", requests(10)) == 10  # type: ignore[arg-type]
    assert bus.calls[1] == ["r3", "r7"]
    assert len(sleeps) == 1


def test_a_bus_that_keeps_refusing_is_a_service_unavailable_without_a_last_wait(sleeps: list[float]) -> None:
    bus = Bus(refuse={"r1"})
    with pytest.raises(ServiceUnavailable, match="1 job requests could not be put on the bus"):
        put_job_requests(bus, "jobs", requests(2))  # type: ignore[arg-type]
    assert len(bus.calls) == PUT_ATTEMPTS
    assert len(sleeps) == PUT_ATTEMPTS - 1
