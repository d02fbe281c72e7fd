"""Fan a job out to every active installation, page by page, ten requests per SendMessageBatch call,
each installation's request at its own stable slot of a window when the work is spread."""

from __future__ import annotations

import contextvars
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from forge_remote import clock
from forge_remote.budget.slots import slot_offset_s
from forge_remote.jobs.contract import JobRequest, send_job_requests
from forge_remote.storage.installations import InstallationRegistry

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient

MAX_JITTER_S = 60.0  # a slot moves by at most this either way from one run to the next


@dataclass(frozen=True)
class ScheduleReport:
    installations: int
    requested: int
    pages: int
    seconds: float
    spread_seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "installations": self.installations,
            "requested": self.requested,
            "pages": self.pages,
            "seconds": self.seconds,
            "spreadSeconds": self.spread_seconds,
        }


def slot_jitter_s(spread_s: float) -> float:
    """How far a slot may move from run to run: 1% of the window, at most a minute."""
    return min(MAX_JITTER_S, spread_s / 100)


def schedule_for_all(
    installations: InstallationRegistry,
    sqs: SQSClient,
    queue_url: str,
    job: str,
    args: dict[str, Any],
    *,
    spread_s: float = 0.0,
    now: float | None = None,
    page_size: int = 500,
    workers: int = 8,
) -> ScheduleReport:
    """One ``job`` request per active installation, sent to the jobs queue. SendMessageBatch calls run
    ``workers`` at a time (boto3 clients are thread-safe); a batch that still fails after retries fails
    the run, so the schedule's own retry policy runs it again rather than losing installations.

    ``spread_s`` > 0 spreads the requests over that many seconds from ``now`` (the stack's clock by
    default): each installation's ``not_before`` is its stable slot for this job
    (``budget.slots.slot_offset_s``, the same every day) moved by a little jitter, so the fleet's work
    is spread evenly over the window instead of all starting at once.
    """
    if not math.isfinite(spread_s) or spread_s < 0:
        raise ValueError("spread_s must be a finite number of seconds, 0 or more")
    started = time.monotonic()
    start_at = clock.now() if now is None else now
    jitter_s = slot_jitter_s(spread_s)

    def request(installation_id: str) -> JobRequest:
        not_before = (
            start_at + slot_offset_s(f"{job}:{installation_id}", spread_s, jitter_s=jitter_s) if spread_s > 0 else None
        )
        return JobRequest(job=job, installation_id=installation_id, args=args, not_before=not_before)

    total = requested = pages = 0
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for ids in installations.iter_active_ids(page_size=page_size):
            pages += 1
            total += len(ids)
            batches = [ids[i : i + 10] for i in range(0, len(ids), 10)]
            # Each in a copy of this context: the sender threads' log lines stay this invocation's.
            futures = [
                pool.submit(
                    contextvars.copy_context().run, send_job_requests, sqs, queue_url, [request(i) for i in batch]
                )
                for batch in batches
            ]
            requested += sum(f.result() for f in futures)
    return ScheduleReport(
        installations=total,
        requested=requested,
        pages=pages,
        seconds=time.monotonic() - started,
        spread_seconds=spread_s,
    )
