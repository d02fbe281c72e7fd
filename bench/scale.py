"""Part 5, scale: scheduling 10,000 installations, and the worker's throughput.

Scheduling: ``forge_remote.jobs.scheduling.schedule_for_all`` pages the installations from the app table's
``ActiveInstallations`` GSI, really, in moto, which runs as its own ``moto_server`` process on 127.0.0.1
so that this process's time and memory are the scheduler's alone. Job requests go to a recording SQS
stand-in (SendMessageBatch calls and entries counted, each entry's MessageGroupId and DelaySeconds
checked), spread over the template's default digest window (60 minutes) as the daily digest is, so
that computing each installation's slot is part of what is measured; the window's 10-minute buckets
are counted to show the spread. A smaller run, unspread (a delayed message would sit out its real
delay), goes end to end into moto's SQS jobs queue. Memory is tracemalloc's peak during one run, at
10,000 and at 1,000 installations (same page size).

Worker throughput (``bench/worker_throughput.py``): page-snapshot and space-digest jobs from a moto
SQS queue through the real confluence_worker handler, against the Confluence emulator.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
import tracemalloc
import uuid
from dataclasses import dataclass, field
from typing import Any

from bench.common import Row, Section, median, ratio

LARGE = 10_000
SMALL = 1_000
END_TO_END = 200
SPREAD_S = 3600.0  # the template's DigestSpreadMinutes default
BUCKET_S = 600.0


@dataclass
class RecordingSqs:
    """The SQS client as ``send_job_requests`` uses it: records entries, accepts them all."""

    keep_ids: bool = True  # off when measuring memory: the stand-in's lists are not the scheduler's
    calls: int = 0
    count: int = 0
    entries: list[str] = field(default_factory=list)  # installation ids, in the order sent
    not_before: list[float] = field(default_factory=list)
    groups_match: bool = True  # every entry's MessageGroupId is its installation
    delays_valid: bool = True  # every DelaySeconds within SQS's 0..900
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def send_message_batch(self, **kwargs: Any) -> dict[str, Any]:
        entries = kwargs["Entries"]
        with self._lock:
            self.calls += 1
            self.count += len(entries)
            if self.keep_ids:
                for entry in entries:
                    body = json.loads(entry["MessageBody"])
                    self.entries.append(body["installationId"])
                    self.not_before.append(body.get("notBefore", 0.0))
                    self.groups_match &= entry["MessageGroupId"] == body["installationId"]
                    self.delays_valid &= 0 < entry.get("DelaySeconds", 1) <= 900
        return {"Successful": [{"Id": e["Id"], "MessageId": e["Id"], "MD5OfMessageBody": ""} for e in entries]}


class MotoProcess:
    """``moto_server`` in a child process on a free loopback port (stopped by its own pid)."""

    def __init__(self) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> MotoProcess:
        argv = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)]
        self._process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("moto_server did not start")

    def __exit__(self, *_: object) -> None:
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()


def register(client: Any, table: str, count: int) -> list[str]:
    """Active installation items, as the registry writes them (the GSI keys), in batches of 25."""
    from forge_remote.storage.table_keys import ACTIVE_PK, INSTALLATION_SK, installation_pk

    ids = [f"ari:cloud:ecosystem::installation/{uuid.uuid4()}" for _ in range(count)]
    for start in range(0, count, 25):
        pending: list[Any] = [
            {
                "PutRequest": {
                    "Item": {
                        "pk": {"S": installation_pk(i)},
                        "sk": {"S": INSTALLATION_SK},
                        "installationId": {"S": i},
                        "status": {"S": "active"},
                        "apiBaseUrl": {"S": "https://api.atlassian.com/ex/confluence/bench"},
                        "activePk": {"S": ACTIVE_PK},
                        "activeSk": {"S": i},
                    }
                }
            }
            for i in ids[start : start + 25]
        ]
        while pending:
            response = client.batch_write_item(RequestItems={table: pending})
            pending = response.get("UnprocessedItems", {}).get(table, [])
    return ids


def copy_table(client: Any, source: str, name: str) -> None:
    description = client.describe_table(TableName=source)["Table"]
    client.create_table(
        TableName=name,
        AttributeDefinitions=description["AttributeDefinitions"],
        KeySchema=description["KeySchema"],
        BillingMode="PAY_PER_REQUEST",
        GlobalSecondaryIndexes=[
            {"IndexName": g["IndexName"], "KeySchema": g["KeySchema"], "Projection": g["Projection"]}
            for g in description["GlobalSecondaryIndexes"]
        ],
    )


@dataclass
class Scheduling:
    """The measured side of the scheduling run."""

    wall_s: list[float] = field(default_factory=list)
    cpu_s: list[float] = field(default_factory=list)
    recorder: RecordingSqs = field(default_factory=RecordingSqs)
    pages: int = 0
    exactly_once: bool = False
    started_at: float = 0.0  # the run's ``now``: the window is [started_at, started_at + SPREAD_S]
    bucket_shares: list[float] = field(default_factory=list)  # per 10-minute bucket of the window
    in_window: bool = False
    peak_mib: float = 0.0
    peak_small_mib: float = 0.0
    e2e_s: float = 0.0
    e2e_requested: int = 0
    e2e_queued: int = 0
    e2e_complete: bool = False


def run_scheduling(quick: bool, section: Section) -> None:
    import boto3

    from forge_remote import clock
    from forge_remote.jobs.scheduling import schedule_for_all
    from forge_remote.storage.installations import InstallationRegistry
    from local.forge_emulator import DEFAULT_APP_ID
    from local.stack import LocalStack

    result = Scheduling()
    with MotoProcess() as moto:
        dynamodb = boto3.client("dynamodb", endpoint_url=moto.url)
        sqs = boto3.client("sqs", endpoint_url=moto.url)
        stack = LocalStack.from_template(parameters={"ForgeAppId": DEFAULT_APP_ID})
        stack.create(dynamodb=dynamodb, sqs=sqs)
        app_table, queue_url = stack.physical["AppTable"], stack.physical["JobsQueue"]
        small_table, e2e_table = app_table + "-small", app_table + "-e2e"
        copy_table(dynamodb, app_table, small_table)
        copy_table(dynamodb, app_table, e2e_table)
        started = time.perf_counter()
        large_ids = set(register(dynamodb, app_table, LARGE))
        register(dynamodb, small_table, SMALL)
        e2e_ids = set(register(dynamodb, e2e_table, END_TO_END))
        print(
            f"  moto_server in its own process; {LARGE:,} + {SMALL:,} + {END_TO_END} installations "
            f"registered in {time.perf_counter() - started:.1f} s"
        )

        def schedule(table: str, client: Any, spread_s: float = SPREAD_S, now: float | None = None) -> Any:
            registry = InstallationRegistry(dynamodb, table)
            return schedule_for_all(registry, client, queue_url, "space-digest", {}, spread_s=spread_s, now=now)

        for _ in range(1 if quick else 2):
            result.recorder = RecordingSqs()
            result.started_at = clock.now()
            wall, cpu = time.perf_counter(), time.process_time()
            result.pages = schedule(app_table, result.recorder, now=result.started_at).pages
            result.wall_s.append(time.perf_counter() - wall)
            result.cpu_s.append(time.process_time() - cpu)
        entries = result.recorder.entries
        result.exactly_once = len(entries) == len(set(entries)) and set(entries) == large_ids
        offsets = [t - result.started_at for t in result.recorder.not_before]
        result.in_window = bool(offsets) and all(0 <= o <= SPREAD_S for o in offsets)
        buckets = int(SPREAD_S // BUCKET_S)
        counts = [0] * buckets
        for offset in offsets:
            counts[min(int(offset // BUCKET_S), buckets - 1)] += 1
        result.bucket_shares = [c / max(1, len(offsets)) for c in counts]

        def peak_mib(table: str) -> float:
            tracemalloc.start()
            schedule(table, RecordingSqs(keep_ids=False))
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            return peak / 2**20

        result.peak_mib, result.peak_small_mib = peak_mib(app_table), peak_mib(small_table)

        # End to end into moto's SQS jobs queue, unspread: a delayed message would sit out its real delay.
        wall = time.perf_counter()
        result.e2e_requested = schedule(e2e_table, sqs, spread_s=0.0).requested
        result.e2e_s = time.perf_counter() - wall
        queued = drain(sqs, stack.physical["JobsQueue"], END_TO_END)
        result.e2e_queued, result.e2e_complete = len(queued), queued == e2e_ids
    report_scheduling(section, result)


def drain(sqs: Any, queue_url: str, expected: int) -> set[str]:
    """Installation ids of the job requests on the queue whose message group is that installation."""
    queued: set[str] = set()
    deadline = time.monotonic() + 30
    while len(queued) < expected and time.monotonic() < deadline:
        messages = sqs.receive_message(
            QueueUrl=queue_url, MaxNumberOfMessages=10, AttributeNames=["MessageGroupId"]
        ).get("Messages", [])
        for message in messages:
            installation_id = json.loads(message["Body"])["installationId"]
            if message.get("Attributes", {}).get("MessageGroupId") == installation_id:
                queued.add(installation_id)
            sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])
        if not messages:
            time.sleep(0.1)
    return queued


def report_scheduling(section: Section, r: Scheduling) -> None:
    wall, cpu = median(r.wall_s), median(r.cpu_s)
    calls, entries = r.recorder.calls, len(r.recorder.entries)
    section.figures["scheduling"] = {
        "installations": LARGE,
        "wall_s": r.wall_s,
        "cpu_s": r.cpu_s,
        "send_message_batch_calls": calls,
        "entries": entries,
        "each_installation_exactly_once": r.exactly_once,
        "message_group_is_installation": r.recorder.groups_match,
        "delay_seconds_valid": r.recorder.delays_valid,
        "spread_seconds": SPREAD_S,
        "slots_inside_window": r.in_window,
        "ten_minute_bucket_shares": r.bucket_shares,
        "gsi_pages": r.pages,
        "peak_tracemalloc_mib": r.peak_mib,
        "peak_tracemalloc_mib_small": r.peak_small_mib,
        "moto_end_to_end": {
            "installations": END_TO_END,
            "seconds": r.e2e_s,
            "requested": r.e2e_requested,
            "queued": r.e2e_queued,
        },
    }

    def line(label: str, value: str) -> None:
        print(f"    {label:<34} {value}")

    print(
        f"  schedule_for_all, {LARGE:,} installations paged from the GSI, spread over {SPREAD_S / 60:.0f} min, "
        "recording SQS stand-in:"
    )
    line("wall time (median)", f"{wall:.2f} s  (mostly moto_server: its GSI query reads the whole table per page)")
    line("CPU time of this process", f"{cpu:.2f} s  (the scheduler's own work)")
    line("SendMessageBatch calls / entries", f"{calls:,} / {entries:,}  in {r.pages} GSI pages")
    line("each installation exactly once", "yes" if r.exactly_once else "NO")
    line("MessageGroupId = installation", "yes" if r.recorder.groups_match else "NO")
    shares = ", ".join(f"{100 * s:.1f}%" for s in r.bucket_shares)
    line("10-minute buckets of the window", f"{shares}  (inside the window: {'yes' if r.in_window else 'NO'})")
    line("peak memory (tracemalloc)", f"{r.peak_mib:.2f} MiB  ({r.peak_small_mib:.2f} MiB at {SMALL:,} installations)")
    print(
        f"  end to end into moto's SQS jobs queue, {END_TO_END} installations: {r.e2e_s:.2f} s, "
        f"{r.e2e_requested} requested, {r.e2e_queued} distinct on the jobs queue"
    )
    calls_target = -(-LARGE // 10)
    section.rows += [
        Row(f"schedule {LARGE:,} installations, wall", f"{wall:.2f} s", "-", None, "< 300 s (Timeout)", wall < 300),
        Row(f"schedule {LARGE:,} installations, CPU", f"{cpu:.2f} s", "-", None),
        Row(
            f"SendMessageBatch calls, {LARGE:,} installations",
            f"{calls:,} ({entries:,} entries)",
            "-",
            None,
            f"{calls_target:,}, each once",
            calls == calls_target and r.exactly_once and r.recorder.groups_match and r.recorder.delays_valid,
        ),
        Row(
            f"digest spread, {SPREAD_S / 60:.0f} min: 10-min buckets",
            f"{100 * min(r.bucket_shares, default=0):.1f}%-{100 * max(r.bucket_shares, default=0):.1f}%",
            "-",
            None,
            "12%-22% each",
            r.in_window and all(0.12 <= s <= 0.22 for s in r.bucket_shares),
        ),
        Row(
            f"scheduler peak memory, {LARGE:,} vs {SMALL:,}",
            f"{r.peak_mib:.2f} MiB",
            f"{r.peak_small_mib:.2f} MiB at {SMALL:,}",
            ratio(r.peak_mib, r.peak_small_mib),
        ),
        Row(
            f"schedule {END_TO_END} into moto SQS",
            f"{r.e2e_s:.2f} s",
            "-",
            None,
            f"all {END_TO_END} queued",
            r.e2e_complete,
        ),
    ]


def run(quick: bool = False) -> Section:
    from bench import worker_throughput

    section = Section("scale")
    run_scheduling(quick, section)
    print()
    try:
        worker_throughput.run_into(section, quick)
    except Exception as exc:  # reported, not hidden: the scheduling figures above still stand
        print(f"  confluence_worker throughput: FAILED: {type(exc).__name__}: {exc}")
        section.notes.append(f"worker throughput failed: {type(exc).__name__}: {exc}")
        section.rows.append(Row("worker throughput", "failed", "-", None, "runs", False))
    return section
