"""Fanning a job out to every active installation (``jobs/scheduling.py``): one request per installation,
ten per SendMessageBatch call, each in its installation's message group; a batch the queue keeps
refusing fails the run instead of losing installations; and a spread schedule gives each installation
a stable slot of the window (``notBefore``), so the fleet's work is spread over it, not stacked at its
start. The scheduler's ``spreadMinutes`` input is checked as loudly as its other inputs."""

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
from forge_remote.jobs.scheduler import ScheduledTasks, spread_minutes
from forge_remote.jobs.scheduling import schedule_for_all, slot_jitter_s

QUEUE = "https://sqs.us-east-1.amazonaws.com/123456789012/jobs"


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
class FakeSqs:
    """``send_message_batch`` that accepts everything, except entries for installations in ``refuse``."""

    refuse: set[str] = field(default_factory=set)
    calls: list[list[dict[str, Any]]] = field(default_factory=list)
    urls: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)  # the calls run on a thread pool

    def send_message_batch(self, *, QueueUrl: str, Entries: list[dict[str, Any]]) -> dict[str, Any]:  # noqa: N803 (boto3's names)
        with self.lock:
            self.calls.append(Entries)
            self.urls.add(QueueUrl)
        failed = [
            {"Id": e["Id"], "SenderFault": False, "Code": "InternalError", "Message": "try again"}
            for e in Entries
            if json.loads(e["MessageBody"])["installationId"] in self.refuse
        ]
        refused = {f["Id"] for f in failed}
        return {"Successful": [{"Id": e["Id"]} for e in Entries if e["Id"] not in refused], "Failed": failed}

    def entries(self) -> list[dict[str, Any]]:
        return [entry for call in self.calls for entry in call]

    def requests(self) -> list[dict[str, Any]]:
        return [json.loads(e["MessageBody"]) for e in self.entries()]


def installation(n: int) -> str:
    return f"ari:cloud:ecosystem::installation/{n:04d}"


def test_every_active_installation_gets_one_request_in_its_group() -> None:
    registry, sqs = ActiveInstallations([installation(n) for n in range(45)]), FakeSqs()
    report = schedule_for_all(registry, sqs, QUEUE, "space-digest", {"days": 7}, page_size=20, workers=2)  # type: ignore[arg-type]
    assert (report.installations, report.requested, report.pages) == (45, 45, 3)
    assert registry.asked_page_size == [20]
    assert all(len(call) <= 10 for call in sqs.calls)
    assert sqs.urls == {QUEUE}
    details = sqs.requests()
    assert sorted(d["installationId"] for d in details) == registry.ids
    assert all(e["MessageGroupId"] == json.loads(e["MessageBody"])["installationId"] for e in sqs.entries())
    assert {(d["job"], json.dumps(d["args"])) for d in details} == {("space-digest", '{"days": 7}')}
    assert len({d["requestId"] for d in details}) == 45
    # Unspread: no slot, no delay, and the request is bulk work (nobody waits for it).
    assert not any("notBefore" in d or "priority" in d for d in details)
    assert not any("DelaySeconds" in e for e in sqs.entries())
    assert report.as_dict()["requested"] == 45
    assert report.as_dict()["spreadSeconds"] == 0


def test_no_active_installation_asks_for_nothing() -> None:
    sqs = FakeSqs()
    report = schedule_for_all(ActiveInstallations([]), sqs, QUEUE, "space-digest", {})  # type: ignore[arg-type]
    assert (report.installations, report.requested, report.pages, sqs.calls) == (0, 0, 0, [])


def test_a_batch_the_queue_keeps_refusing_fails_the_run(monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []
    monkeypatch.setattr(job_contract, "time", SimpleNamespace(sleep=slept.append))  # the backoff, without waiting
    registry = ActiveInstallations([installation(n) for n in range(12)])
    sqs = FakeSqs(refuse={installation(3)})
    with pytest.raises(ServiceUnavailable, match="1 job requests could not be sent"):
        schedule_for_all(registry, sqs, QUEUE, "space-digest", {}, workers=1)  # type: ignore[arg-type]
    assert [len(call) for call in sqs.calls[:4]] == [10, 1, 1, 1]  # only the refused entry is sent again
    assert len(slept) >= 3
    assert all(a < b for a, b in itertools.pairwise(slept))  # a growing backoff between the attempts


# -- the spread ---------------------------------------------------------------------------------------
NOW = 1_767_250_800.0  # 2026-01-01T07:00:00Z


def spread_run(count: int, spread_s: float, job: str = "space-digest", now: float = NOW) -> dict[str, float]:
    """installation id -> its request's notBefore, for one scheduled run of ``count`` installations."""
    sqs = FakeSqs()
    registry = ActiveInstallations([installation(n) for n in range(count)])
    report = schedule_for_all(registry, sqs, QUEUE, job, {}, spread_s=spread_s, now=now)  # type: ignore[arg-type]
    assert report.requested == count
    assert report.as_dict()["spreadSeconds"] == spread_s
    return {d["installationId"]: d["notBefore"] for d in sqs.requests()}


def test_a_spread_puts_every_request_inside_the_window() -> None:
    slots = spread_run(1000, 3600.0)
    assert len(slots) == 1000
    assert all(NOW <= at <= NOW + 3600 for at in slots.values())


def test_a_spread_fills_the_window_evenly() -> None:
    """1,000 installations over an hour: every 10-minute bucket holds between 12% and 22% of them."""
    offsets = [at - NOW for at in spread_run(1000, 3600.0).values()]
    buckets = [0] * 6
    for offset in offsets:
        buckets[min(int(offset // 600), 5)] += 1
    assert all(120 <= n <= 220 for n in buckets), buckets
    assert max(offsets) - min(offsets) > 3000  # the whole window is used, not a corner of it


def test_each_installation_keeps_its_slot_from_one_run_to_the_next() -> None:
    """The same installation is at the same place of the window every day, give or take the jitter."""
    jitter = slot_jitter_s(3600.0)
    assert jitter == 36.0
    today, tomorrow = spread_run(300, 3600.0), spread_run(300, 3600.0, now=NOW + 86400)
    assert today.keys() == tomorrow.keys()
    assert all(abs((tomorrow[i] - 86400) - today[i]) <= 2 * jitter for i in today)
    # Not all at one place: the slots differ between installations far more than the jitter moves them.
    assert max(today.values()) - min(today.values()) > 10 * jitter


def test_the_slot_depends_on_the_job_too() -> None:
    digest, report = spread_run(200, 7200.0), spread_run(200, 7200.0, job="personal-data-report")
    moved = sum(abs(digest[i] - report[i]) > 2 * slot_jitter_s(7200.0) for i in digest)
    assert moved > 150  # another job's requests for the same site are not stacked on the digest's


def test_the_jitter_is_a_hundredth_of_the_window_and_at_most_a_minute() -> None:
    assert [slot_jitter_s(s) for s in (0.0, 600.0, 6000.0, 43200.0)] == [0.0, 6.0, 60.0, 60.0]


def test_a_spread_request_ahead_is_delayed_by_sqs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(job_contract.clock, "now", lambda: NOW)
    sqs = FakeSqs()
    registry = ActiveInstallations([installation(n) for n in range(50)])
    schedule_for_all(registry, sqs, QUEUE, "space-digest", {}, spread_s=3600.0, now=NOW)  # type: ignore[arg-type]
    for entry in sqs.entries():
        ahead = json.loads(entry["MessageBody"])["notBefore"] - NOW
        assert entry.get("DelaySeconds", 0) == min(900, -(-ahead // 1))


@pytest.mark.parametrize("spread_s", [-1.0, float("nan"), float("inf")])
def test_a_spread_that_is_no_window_is_refused(spread_s: float) -> None:
    with pytest.raises(ValueError, match="spread_s"):
        schedule_for_all(
            ActiveInstallations([installation(1)]), FakeSqs(), QUEUE, "space-digest", {}, spread_s=spread_s
        )  # type: ignore[arg-type]


# -- the scheduler's spreadMinutes input ----------------------------------------------------------------
@pytest.mark.parametrize(("value", "minutes"), [(None, 0.0), (0, 0.0), (60, 60.0), (7.5, 7.5), (720, 720.0)])
def test_spread_minutes_takes_a_number_of_minutes(value: object, minutes: float) -> None:
    assert spread_minutes(value) == minutes


@pytest.mark.parametrize(
    "value", [-1, 721, 1e9, 10**400, "60", True, False, [60], {"m": 60}, float("nan"), float("inf"), -float("inf")]
)
def test_spread_minutes_refuses_anything_else(value: object) -> None:
    with pytest.raises(ValueError, match="spreadMinutes must be a number of minutes from 0 to 720"):
        spread_minutes(value)


class Gauges:
    def __init__(self) -> None:
        self.added: list[tuple[str, float]] = []

    def add_metric(self, *, name: str, unit: Any, value: float) -> None:
        self.added.append((name, value))


def scheduled_tasks(monkeypatch: pytest.MonkeyPatch, sqs: FakeSqs, ids: list[str]) -> tuple[ScheduledTasks, Gauges]:
    from forge_remote import aws

    monkeypatch.setattr(aws, "sqs", lambda: sqs)
    gauges = Gauges()
    tasks = ScheduledTasks(
        installations=ActiveInstallations(ids),  # type: ignore[arg-type]
        tokens=None,  # type: ignore[arg-type]
        cleanup=None,  # type: ignore[arg-type]
        jobs_queue_url=QUEUE,
        token_min_validity_s=600,
        logger=SimpleNamespace(info=lambda *a, **k: None),  # type: ignore[arg-type]
        metrics=gauges,  # type: ignore[arg-type]
    )
    return tasks, gauges


def test_the_schedule_input_spreads_the_requests_over_its_minutes(monkeypatch: pytest.MonkeyPatch) -> None:
    sqs = FakeSqs()
    tasks, gauges = scheduled_tasks(monkeypatch, sqs, [installation(n) for n in range(30)])
    before = job_contract.clock.now()
    report = tasks.run({"job": "space-digest", "spreadMinutes": 30}, None)  # type: ignore[arg-type]
    assert (report["requested"], report["spreadSeconds"]) == (30, 1800.0)
    slots = [d["notBefore"] for d in sqs.requests()]
    assert all(before <= at <= job_contract.clock.now() + 1800 for at in slots)
    assert sqs.urls == {QUEUE}
    assert ("JobsScheduled", 30) in gauges.added
    assert tasks.run({"job": "space-digest", "args": {}}, None)["spreadSeconds"] == 0  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [-5, 721, "60", True, [60]])
def test_a_bad_spread_in_the_schedule_input_fails_the_invocation_loudly(
    monkeypatch: pytest.MonkeyPatch, value: object
) -> None:
    sqs = FakeSqs()
    tasks, gauges = scheduled_tasks(monkeypatch, sqs, [installation(1)])
    with pytest.raises(ValueError, match="spreadMinutes"):
        tasks.run({"job": "space-digest", "spreadMinutes": value}, None)  # type: ignore[arg-type]
    assert sqs.calls == []  # nothing requested on a misconfigured schedule
    assert gauges.added == [("ScheduleInputsRefused", 1)]
