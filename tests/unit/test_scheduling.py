"""Fanning a job out to every active installation (``jobs/scheduling.py``): one request per installation,
ten per PutEvents call, and a batch the bus keeps refusing fails the run instead of losing installations."""

from __future__ import annotations

import itertools
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest

import forge_remote.jobs.contract as job_contract
from forge_remote.errors import ServiceUnavailable
from forge_remote.jobs.contract import JOB_SOURCE
from forge_remote.jobs.scheduling import schedule_for_all


@dataclass
class ActiveInstallations:
    """``InstallationRegistry.iter_active_ids``: the active ids, one list per page."""

    ids: list[str]
    asked_page_size: list[int] = field(default_factory=list)

    def iter_active_ids(self, page_size: int = 500) -> Iterator[list[str]]:
        self.asked_page_size.append(page_size)
        for start in range(0, len(self.ids), page_size):
            yield self.ids[start : start + page_size]


@dataclass
class FakeEvents:
    """``put_events`` that accepts everything, except entries for installations in ``refuse``."""

    refuse: set[str] = field(default_factory=set)
    calls: list[list[dict[str, Any]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)  # PutEvents calls run on a thread pool

    def put_events(self, *, Entries: list[dict[str, Any]]) -> dict[str, Any]:  # noqa: N803 (boto3's name)
        with self.lock:
            self.calls.append(Entries)
        results = [
            {"ErrorCode": "ThrottlingException"} if json.loads(e["Detail"])["installationId"] in self.refuse else {}
            for e in Entries
        ]
        return {"FailedEntryCount": sum(1 for r in results if r), "Entries": results}


def installation(n: int) -> str:
    return f"ari:cloud:ecosystem::installation/{n:04d}"


def test_every_active_installation_gets_one_request() -> None:
    registry, events = ActiveInstallations([installation(n) for n in range(45)]), FakeEvents()
    report = schedule_for_all(registry, events, "jobs-bus", "space-digest", {"days": 7}, page_size=20, workers=2)  # type: ignore[arg-type]
    assert (report.installations, report.requested, report.pages) == (45, 45, 3)
    assert registry.asked_page_size == [20]
    entries = [entry for call in events.calls for entry in call]
    assert all(len(call) <= 10 for call in events.calls)
    assert {(e["EventBusName"], e["Source"]) for e in entries} == {("jobs-bus", JOB_SOURCE)}
    details = [json.loads(e["Detail"]) for e in entries]
    assert sorted(d["installationId"] for d in details) == registry.ids
    assert {(d["job"], json.dumps(d["args"])) for d in details} == {("space-digest", '{"days": 7}')}
    assert len({d["requestId"] for d in details}) == 45
    assert report.as_dict()["requested"] == 45


def test_no_active_installation_asks_for_nothing() -> None:
    events = FakeEvents()
    report = schedule_for_all(ActiveInstallations([]), events, "jobs-bus", "space-digest", {})  # type: ignore[arg-type]
    assert (report.installations, report.requested, report.pages, events.calls) == (0, 0, 0, [])


def test_a_batch_the_bus_keeps_refusing_fails_the_run(monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []
    monkeypatch.setattr(job_contract, "time", SimpleNamespace(sleep=slept.append))  # the backoff, without waiting
    registry = ActiveInstallations([installation(n) for n in range(12)])
    events = FakeEvents(refuse={installation(3)})
    with pytest.raises(ServiceUnavailable, match="1 job requests could not be put"):
        schedule_for_all(registry, events, "jobs-bus", "space-digest", {}, workers=1)  # type: ignore[arg-type]
    assert [len(call) for call in events.calls[:4]] == [10, 1, 1, 1]  # only the refused entry is sent again
    assert len(slept) >= 3
    assert all(a < b for a, b in itertools.pairwise(slept))  # a growing backoff between the attempts
