"""Each job request runs to the end at most once, however often SQS delivers it.

SQS delivers at least once, and a parked job woken by a token (``jobs/parking.py``) can race the
redelivery its own delay brings. Powertools idempotency, keyed by the request id, makes the second
delivery find either a run in progress (it is deferred briefly: that run may still fail) or a run
done (it is acknowledged without running). Only a finished run is remembered: a deferred job must
run again, and a dead-lettered one must run again if an operator redrives the DLQ.

Powertools is imported by the first job, keeping it off the worker's cold start.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from forge_remote.jobs.runner import JobStatus, Outcome
from forge_remote.storage.table_keys import JOBS_IDEMPOTENCY_PK

# A finished run is remembered as long as SQS may still deliver its message (the queue's retention).
DONE_WINDOW_S = 4 * 24 * 3600
IN_PROGRESS_RETRY_S = 60  # a twin delivery looks again after this; the run in progress may defer


class _NotDone(Exception):
    """Carries an outcome that must not be remembered out of the idempotent call."""

    def __init__(self, outcome: Outcome) -> None:
        super().__init__(outcome.status.value)
        self.outcome = outcome


class RunOnce:
    def __init__(self, app_table: str, *, done_window_s: int = DONE_WINDOW_S) -> None:
        self._app_table = app_table
        self._done_window_s = done_window_s
        self._guarded: Callable[..., dict[str, Any]] | None = None
        self._config: Any = None

    def run(self, request_id: str, attempt: Callable[[], Outcome], lambda_context: Any = None) -> Outcome:
        """``attempt()`` unless this request already ran to the end (or is running elsewhere right now)."""
        guarded = self._build()
        if lambda_context is not None:
            self._config.register_lambda_context(lambda_context)  # an in-progress mark expires with the invocation
        from aws_lambda_powertools.utilities.idempotency.exceptions import (
            IdempotencyAlreadyInProgressError,
            IdempotencyPersistenceLayerError,
        )

        ran: list[Outcome] = []

        def attempt_here() -> Outcome:
            ran.append(attempt())
            return ran[0]

        try:
            guarded(job_request={"requestId": request_id}, attempt=attempt_here)
        except _NotDone as not_done:
            return not_done.outcome
        except IdempotencyAlreadyInProgressError:
            return Outcome(
                JobStatus.DEFERRED,
                "the same request is running in another invocation",
                IN_PROGRESS_RETRY_S,
                attempted=False,
            )
        except IdempotencyPersistenceLayerError:
            return Outcome(
                JobStatus.DEFERRED, "the run-once store is unavailable", IN_PROGRESS_RETRY_S, attempted=False
            )
        if ran:
            return ran[0]
        return Outcome(JobStatus.DONE, "already done: a repeated delivery", repeated=True)

    def _build(self) -> Callable[..., dict[str, Any]]:
        if self._guarded is not None:
            return self._guarded
        from aws_lambda_powertools.utilities.idempotency import (
            IdempotencyConfig,
            idempotent_function,
        )

        from forge_remote.storage.idempotency import app_table_store

        store = app_table_store(self._app_table, JOBS_IDEMPOTENCY_PK)
        self._config = IdempotencyConfig(
            event_key_jmespath="requestId",
            raise_on_no_idempotency_key=True,
            expires_after_seconds=self._done_window_s,
        )

        @idempotent_function(data_keyword_argument="job_request", persistence_store=store, config=self._config)  # type: ignore[untyped-decorator]
        def guarded(job_request: dict[str, Any], attempt: Callable[[], Outcome]) -> dict[str, Any]:
            outcome = attempt()
            if outcome.status is not JobStatus.DONE:
                raise _NotDone(outcome)
            # Nothing personal is remembered here (a summary may name people): only that it ran.
            return {"done": True}

        self._guarded = guarded
        return self._guarded
