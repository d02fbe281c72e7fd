"""Fan a job out to every active installation, page by page, ten requests per PutEvents call."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from forge_remote.jobs.contract import JobRequest, put_job_requests
from forge_remote.storage.installations import InstallationRegistry

if TYPE_CHECKING:
    from mypy_boto3_events import EventBridgeClient


@dataclass(frozen=True)
class ScheduleReport:
    installations: int
    requested: int
    pages: int
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def schedule_for_all(
    installations: InstallationRegistry,
    events: EventBridgeClient,
    bus: str,
    job: str,
    args: dict[str, Any],
    *,
    page_size: int = 500,
    workers: int = 8,
) -> ScheduleReport:
    """One ``job`` request per active installation. PutEvents calls run ``workers`` at a time
    (boto3 clients are thread-safe); a batch that still fails after retries fails the run, so the
    schedule's own retry policy runs it again rather than losing installations."""
    started = time.monotonic()
    total = requested = pages = 0
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for ids in installations.iter_active_ids(page_size=page_size):
            pages += 1
            total += len(ids)
            batches = [ids[i : i + 10] for i in range(0, len(ids), 10)]
            futures = [
                pool.submit(
                    put_job_requests, events, bus, [JobRequest(job=job, installation_id=i, args=args) for i in batch]
                )
                for batch in batches
            ]
            requested += sum(f.result() for f in futures)
    return ScheduleReport(installations=total, requested=requested, pages=pages, seconds=time.monotonic() - started)
