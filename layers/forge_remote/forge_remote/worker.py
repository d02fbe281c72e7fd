"""Running one job request: token rules 4-6 in one place.

``JobRunner.run`` takes a validated request and returns an ``Outcome``: done; deferred (no valid
token, rate limited, out of time: the message comes back later with a growing delay); or dead
(can never succeed: straight to the DLQ). A token Confluence rejects is invalidated exactly, and
the job is retried once if a newer token is stored.
"""

from __future__ import annotations

import enum
import logging
import random
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from forge_remote.errors import BadJobRequest, PermanentFailure, RetryLater, TokenRejected, TokenUnavailable
from forge_remote.installations import InstallationRegistry
from forge_remote.jobs import Job, JobContext, JobRegistry, JobRequest
from forge_remote.lease import TokenLease
from forge_remote.results import ResultStore
from forge_remote.tokens import TokenStore

if TYPE_CHECKING:
    from forge_remote.confluence import ConfluenceClient

logger = logging.getLogger(__name__)

BASE_DEFER_S = 60
MAX_DEFER_S = 1800


def deferral_delay(receive_count: int, *, at_least: float = 0, rng: random.Random | None = None) -> int:
    """Seconds until the next attempt: doubling from a minute, capped at 30 minutes, jittered ±10%."""
    exponent = max(0, min(receive_count - 1, 16))
    delay = max(float(min(BASE_DEFER_S * 2**exponent, MAX_DEFER_S)), min(at_least, MAX_DEFER_S))
    jitter = (rng or random).uniform(0.9, 1.1)
    return int(min(delay * jitter, 43200))  # SQS caps visibility timeouts at 12 h


class JobStatus(enum.StrEnum):
    DONE = "done"
    DEFERRED = "deferred"  # comes back later: no valid token, rate limited, out of time
    DEAD = "dead"  # can never succeed: straight to the DLQ with the reason
    DISCARDED = "discarded"  # nothing to do any more: the installation is gone


@dataclass(frozen=True)
class Outcome:
    status: JobStatus
    reason: str = ""
    delay_s: int = 0
    summary: dict[str, Any] = field(default_factory=dict)


@dataclass
class JobRunner:
    registry: JobRegistry
    tokens: TokenStore
    installations: InstallationRegistry
    results: ResultStore
    allowed_api_hosts: Collection[str]
    min_validity_s: float
    # None: forge_remote.confluence (and requests) is imported by the first job that calls Confluence,
    # keeping it off the worker's cold start; invocations whose jobs are all deferred never load it.
    client_factory: Callable[..., ConfluenceClient] | None = None

    def run(self, request: JobRequest, *, receive_count: int, remaining_ms: Callable[[], int]) -> Outcome:
        try:
            job = self.registry.get(request.job)
        except BadJobRequest as exc:
            return Outcome(JobStatus.DEAD, exc.reason)
        installation = self.installations.get(request.installation_id)
        if installation is not None and not installation.active:
            return Outcome(JobStatus.DISCARDED, "installation is uninstalled")
        if installation is None or not installation.api_base_url:
            # Tokens and the installation record are written together: no record means no token yet.
            return self._defer(receive_count, "installation not seen yet")
        return self._run_with_token(job, request, installation.api_base_url, receive_count, remaining_ms)

    def _run_with_token(
        self, job: Job[Any], request: JobRequest, api_base_url: str, receive_count: int, remaining_ms: Callable[[], int]
    ) -> Outcome:
        """Rules 4-6: a valid token, the rejected one invalidated exactly, one retry with a newer one."""
        lease = TokenLease(self.tokens, request.installation_id, self.min_validity_s)
        for attempt in (1, 2):
            try:
                return self._execute(job, request, api_base_url, lease, remaining_ms)
            except TokenRejected as exc:
                rejected = lease.current
                if rejected is not None:
                    self.tokens.invalidate(request.installation_id, rejected.token)
                logger.warning("Confluence rejected the token (HTTP %s); invalidated it", exc.status)
                if attempt == 1 and self._newer_token_stored(request.installation_id):
                    continue
                return self._defer(receive_count, f"token rejected (HTTP {exc.status}) and no newer token")
            except PermanentFailure as exc:
                return Outcome(JobStatus.DEAD, exc.reason)
            except RetryLater as exc:
                return self._defer(receive_count, exc.reason, at_least=exc.delay_s)
        raise AssertionError("unreachable")  # pragma: no cover

    def _execute(
        self, job: Job[Any], request: JobRequest, api_base_url: str, lease: TokenLease, remaining_ms: Callable[[], int]
    ) -> Outcome:
        lease.acquire()
        if self.client_factory is None:
            from forge_remote.confluence import ConfluenceClient

            self.client_factory = ConfluenceClient
        client = self.client_factory(
            api_base_url, lease.token, allowed_hosts=self.allowed_api_hosts, remaining_ms=remaining_ms
        )
        context = JobContext(
            request=request,
            api_base_url=api_base_url,
            confluence=client,
            results=self.results,
            remaining_ms=remaining_ms,
        )
        result = job(context)
        return Outcome(JobStatus.DONE, summary=result.summary if result else {})

    def _newer_token_stored(self, installation_id: str) -> bool:
        try:
            self.tokens.get_valid(installation_id, self.min_validity_s)
        except TokenUnavailable:
            return False
        return True  # the rejected token was deleted, so whatever is stored now is another one

    @staticmethod
    def _defer(receive_count: int, reason: str, *, at_least: float = 0) -> Outcome:
        return Outcome(JobStatus.DEFERRED, reason, deferral_delay(receive_count, at_least=at_least))
