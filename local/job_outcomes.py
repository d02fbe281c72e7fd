"""What the worker of a running ``make local`` did with each job request, for ``forge_cli job --wait``.

The outcome of a job (done, deferred and why, dead-lettered and why) exists only inside the worker:
on AWS it is read from the function's logs. Locally the CLI is another process, so ``make local``
records each outcome as one JSON line in a journal file next to its state file (owner-only, removed
on exit), and the CLI reads it back by request id. Summaries and reasons are secret-free by contract
(``JobResult``; errors never carry a token), so the journal holds no token either.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from forge_remote import clock
from forge_remote.jobs.contract import JobRequest
from forge_remote.jobs.runner import Outcome
from forge_remote.jobs.worker import WorkerHandler

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobOutcome:
    """One run of one job request, as the worker's ``JobRunner`` decided it."""

    request_id: str
    job: str
    installation_id: str
    status: str  # "done" | "deferred" | "dead" | "discarded", as in forge_remote.jobs.runner.Outcome
    reason: str = ""
    delay_s: int = 0
    summary: dict[str, Any] = field(default_factory=dict)
    at: float = 0.0  # the stack's clock when the run ended (what a job uses for "today")

    @classmethod
    def of(cls, request: JobRequest, outcome: Outcome) -> JobOutcome:
        return cls(
            request_id=request.request_id,
            job=request.job,
            installation_id=request.installation_id,
            status=str(outcome.status),  # a str enum's value: the journal is plain JSON
            reason=outcome.reason,
            delay_s=outcome.delay_s,
            summary=dict(outcome.summary),
            at=clock.now(),
        )

    @classmethod
    def from_dict(cls, document: dict[str, Any]) -> JobOutcome:
        return cls(**{name: document[name] for name in cls.__dataclass_fields__ if name in document})


class OutcomeJournal:
    """An append-only JSON-lines file of ``JobOutcome``; ``record`` in the stack, ``find`` in the CLI."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def create(self) -> None:
        """Start an empty journal (a previous run's outcomes name requests this stack never saw)."""
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        descriptor = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(descriptor, 0o600)
        os.close(descriptor)

    def record(self, outcome: JobOutcome) -> None:
        line = json.dumps(asdict(outcome), default=str, separators=(",", ":")) + "\n"
        # One write per line, under a lock: a reader never sees two lines interleaved, at most a partial last one.
        with self._lock, self.path.open("a", encoding="utf-8") as handle:
            handle.write(line)

    def outcomes(self) -> list[JobOutcome]:
        if not self.path.exists():
            return []
        found = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                found.append(JobOutcome.from_dict(json.loads(line)))
            except (ValueError, TypeError, KeyError):
                continue  # a line still being written
        return found

    def find(self, request_id: str) -> JobOutcome | None:
        """The first outcome of a request (a deferred request runs again later and adds another)."""
        return next((o for o in self.outcomes() if o.request_id == request_id), None)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def journal_worker_outcomes(worker: WorkerHandler, journal: OutcomeJournal) -> None:
    """Record every outcome the worker's runner decides in ``journal``, as one of the worker's observers.

    A journal that cannot be written is logged and ignored: it must never change what the worker does.
    """

    def record(request: JobRequest, outcome: Outcome) -> None:
        try:
            journal.record(JobOutcome.of(request, outcome))
        except OSError:
            logger.warning("could not record a job outcome in %s", journal.path, exc_info=True)

    worker.worker.observers.append(record)
