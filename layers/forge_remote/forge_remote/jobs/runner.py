"""Running one job request: token rules 4-6 in one place.

``JobRunner.run`` takes a validated request and returns an ``Outcome``: done; deferred (no valid
token, rate limited, out of time: the message comes back later with a growing delay); or dead
(can never succeed: straight to the DLQ). A token a server rejects is invalidated exactly (the app's,
or the offline user token of the account the job acted as), and the job is retried once if another
token can be had (a newer stored app token; a fresh mint for a user).
"""

from __future__ import annotations

import enum
import logging
import random
import traceback
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from forge_remote import clock
from forge_remote.config import DEFAULT_FORGE_GRAPHQL_URL, DEFAULT_OFFLINE_TOKEN_CONTEXT_ID
from forge_remote.errors import (
    BadJobRequest,
    BudgetWait,
    PermanentFailure,
    RetryLater,
    TokenRejected,
    TokenUnavailable,
)
from forge_remote.jobs.contract import INTERACTIVE, Job, JobContext, JobRegistry, JobRequest, JobResults
from forge_remote.storage.installations import Installation
from forge_remote.storage.interfaces import Installations, Results, Tokens
from forge_remote.tokens.lease import TokenLease

if TYPE_CHECKING:
    from forge_remote.budget.meter import FleetBudget, PointsMeter
    from forge_remote.confluence.client import ConfluenceClient
    from forge_remote.storage.installations import InstallationRegistry
    from forge_remote.tokens.offline import OfflineTokens
    from forge_remote.tokens.store import TokenStore

logger = logging.getLogger(__name__)

BASE_DEFER_S = 60
MAX_DEFER_S = 1800
MAX_VISIBILITY_S = 43200  # SQS caps a message's visibility timeout at 12 h
# A job held by a realm migration looks again this often (or at the hold's end, if sooner): a rollback
# lets it run within 90 minutes, and its third receive, when SQS stops counting it in the queue's age
# (JobsQueueAgeAlarm), comes 3 h in, before the alarm's 4 h; a 24 h window is 17 receives, well inside
# the queue's maxReceiveCount (JobQueueMaxReceives, 30).
HOLD_RECHECK_S = 5400


JITTER = 0.1


def _scheduled_delay(receive_count: int) -> float:
    exponent = max(0, min(receive_count - 1, 16))
    return float(min(BASE_DEFER_S * 2**exponent, MAX_DEFER_S))


def deferral_delay(receive_count: int, *, at_least: float = 0, rng: random.Random | None = None) -> int:
    """Seconds until the next attempt: doubling from a minute, capped at 30 minutes, jittered ±10%."""
    delay = max(_scheduled_delay(receive_count), min(at_least, MAX_DEFER_S))
    jitter = (rng or random).uniform(1 - JITTER, 1 + JITTER)
    return int(min(delay * jitter, MAX_VISIBILITY_S))


def deferral_schedule_s(max_attempts: int) -> float:
    """The shortest time the deferral schedule takes to reach ``max_attempts`` attempts (every delay at
    its lowest jitter): a job is never given up on sooner, however often it was received."""
    return sum(_scheduled_delay(n) for n in range(1, max_attempts)) * (1 - JITTER)


def gives_up(
    *, receive_count: int, waited_s: float | None, max_attempts: int, queue_max_receives: int, attempted: bool
) -> bool:
    """Should a deferred job go to the DLQ now, with its reason?

    After ``max_attempts`` receives, and only once the deferral schedule's time has passed since its
    first receive (``waited_s``; None if unknown: the count alone decides): receives that came sooner
    than the schedule (wake-ups, restarts) do not shorten it. A receive that ran nothing (``attempted``
    False: too little invocation time, the same request busy elsewhere) never gives up, except at
    the queue's own limit, where SQS would move the message on the next receive without a word.
    """
    if receive_count >= queue_max_receives:
        return True
    if not attempted or receive_count < max_attempts:
        return False
    return waited_s is None or waited_s >= deferral_schedule_s(max_attempts)


def unexpected_failure(job: str, exc: BaseException) -> str:
    """The reason recorded for an exception that is neither ``PermanentFailure`` nor ``RetryLater``.

    Such an exception (a bug in the job, an AWS error nobody caught) may be passing: it is deferred on
    the ordinary schedule, so a throttled table gets its retries, and after ``JOB_MAX_RECEIVES``
    attempts the job goes to the DLQ with this reason. Its message is never kept (it may quote a
    token or a person); its type and where it was raised are enough to find it.
    """
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" at {Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else ""
    logger.warning("job %s raised %s%s", job, type(exc).__name__, where)
    return f"job {job} raised {type(exc).__name__}{where}"


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
    # Deferred because no usable app token is stored: the next token delivery can wake it (jobs/parking.py).
    waiting_for_token: bool = False
    repeated: bool = False  # done before: a repeated delivery, acknowledged without running (jobs/run_once.py)
    # False: nothing was tried (too little invocation time, the request busy elsewhere, its slot not
    # come yet, waiting for points): not an attempt that counts towards giving up.
    attempted: bool = True
    # Deferred because the points budget is spent or paused: back after the quota's reset (budget/).
    waiting_for_budget: bool = False


def _waiting(reason: str, delay_s: float, *, for_budget: bool = False) -> Outcome:
    """Deferred without an attempt: the job's time has not come (its slot, or the quota's reset)."""
    delay = int(min(max(1, -(-delay_s // 1)), MAX_VISIBILITY_S))
    return Outcome(JobStatus.DEFERRED, reason, delay, attempted=False, waiting_for_budget=for_budget)


def _not_served(installation: Installation | None, now: float) -> Outcome | None:
    """Nothing runs for an uninstalled or moved installation, nor while a realm migration holds it."""
    if installation is not None and not installation.active:
        if installation.moved_to:  # its realm's stack serves it now; the scheduler there requests its jobs
            return Outcome(JobStatus.DISCARDED, f"installation moved to realm {installation.moved_to}")
        return Outcome(JobStatus.DISCARDED, "installation is uninstalled")
    if installation is not None and installation.held(now) and installation.hold_until is not None:
        # A realm migration is copying its data: nothing may change it until the hold ends (the migration
        # commits, rolls back, or its window passes). Deferred, not an attempt: it never gives up for this.
        wait = min(installation.hold_until - now, HOLD_RECHECK_S)
        return _waiting("installation is held by a data residency migration", wait)
    return None


@dataclass
class JobRunner:
    registry: JobRegistry
    tokens: Tokens
    installations: Installations
    results: Results
    allowed_api_hosts: Collection[str]
    min_validity_s: float
    # None: forge_remote.confluence.client (and requests) is imported by the first job that calls Confluence,
    # keeping it off the worker's cold start; invocations whose jobs are all deferred never load it.
    client_factory: Callable[..., ConfluenceClient] | None = None
    # Offline user impersonation (``ctx.confluence_as``): where Forge mints user tokens. The minter is
    # built by the first job that asks for a user client, so other jobs never load it.
    graphql_url: str = DEFAULT_FORGE_GRAPHQL_URL
    offline_token_context_id: str = DEFAULT_OFFLINE_TOKEN_CONTEXT_ID
    offline_tokens: OfflineTokens | None = None
    # The fleet's points budget (budget/): None spends without accounting (tests, one-off tools).
    budget: FleetBudget | None = None

    def run(self, request: JobRequest, *, receive_count: int, remaining_ms: Callable[[], int]) -> Outcome:
        try:
            job = self.registry.get(request.job)
        except BadJobRequest as exc:
            return Outcome(JobStatus.DEAD, exc.reason)
        now = clock.now()
        if request.not_before is not None and request.not_before - now > MAX_VISIBILITY_S:
            # Kept back 12 h at a time it would outlive the queue's retention and vanish: say so instead.
            return Outcome(JobStatus.DEAD, "notBefore is more than 12 h ahead: no schedule spreads that far")
        if request.not_before is not None and request.not_before > now + 1:
            # A spread schedule's slot: SQS delays a message 15 minutes at most, the rest waits here.
            return _waiting("waiting for its scheduled slot", request.not_before - now)
        installation = self.installations.get(request.installation_id)
        not_now = _not_served(installation, now)
        if not_now is not None:
            return not_now
        if installation is None or not installation.api_base_url:
            # Tokens and the installation record are written together: no record means no token yet.
            return self._defer(receive_count, "installation not seen yet", waiting_for_token=True)
        return self._run_with_token(job, request, installation, receive_count, remaining_ms)

    def _run_with_token(
        self,
        job: Job[Any],
        request: JobRequest,
        installation: Installation,
        receive_count: int,
        remaining_ms: Callable[[], int],
    ) -> Outcome:
        """Rules 4-6: a valid token, the rejected one invalidated exactly, one retry with another one.

        Every lease of the attempt (the app's, and one per account the job acts as) is kept, so a
        ``TokenRejected`` is matched by its digest to the lease that handed the token out: an offline
        user token refused by Confluence is removed, never the app token, and vice versa.
        """
        app_lease = TokenLease(self.tokens, request.installation_id, self.min_validity_s)
        for attempt in (1, 2):
            leases: list[TokenLease] = [app_lease]
            try:
                return self._execute(
                    job,
                    request=request,
                    installation=installation,
                    lease=app_lease,
                    leases=leases,
                    remaining_ms=remaining_ms,
                )
            except TokenRejected as exc:
                lease = self._invalidate_rejected(request.installation_id, exc, leases)
                logger.warning("%s; invalidated it", exc.reason)
                if attempt == 1 and lease is not None and lease.replacement_available():
                    continue
                reason = f"{exc.reason} and no other token to retry with"
                return self._defer(receive_count, reason, waiting_for_token=lease is app_lease)
            except TokenUnavailable as exc:
                # Only the app token comes from Forge's deliveries; a user's offline token is minted.
                return self._defer(receive_count, exc.reason, at_least=exc.delay_s, waiting_for_token=True)
            except Exception as exc:  # every exception has an outcome
                return self._failed(job, exc, receive_count)
        raise AssertionError("unreachable")  # pragma: no cover

    def _failed(self, job: Job[Any], exc: Exception, receive_count: int) -> Outcome:
        """The outcome of a job that raised anything but a token refusal or want."""
        if isinstance(exc, PermanentFailure):
            return Outcome(JobStatus.DEAD, exc.reason)
        if isinstance(exc, BudgetWait):
            return _waiting(exc.reason, exc.delay_s, for_budget=True)
        if isinstance(exc, RetryLater):
            return self._defer(receive_count, exc.reason, at_least=exc.delay_s)
        return self._defer(receive_count, unexpected_failure(job.name, exc))  # see unexpected_failure()

    def _invalidate_rejected(
        self, installation_id: str, exc: TokenRejected, leases: list[TokenLease]
    ) -> TokenLease | None:
        """Remove exactly the rejected token, under the key of the lease that handed it out."""
        for lease in leases:
            rejected = lease.issued(exc.token_sha256)
            if rejected is not None:
                self.tokens.invalidate(installation_id, rejected.token, sk=lease.sk)
                return lease
        if exc.token_sha256 is None and len(leases) == 1 and leases[0].current is not None:
            # A client that does not say which token (a custom client_factory): only the app's was in use.
            self.tokens.invalidate(installation_id, leases[0].current.token, sk=leases[0].sk)
            return leases[0]
        return None  # not a token this job holds: nothing is removed

    def _client(
        self,
        api_base_url: str,
        token: Callable[[], str],
        remaining_ms: Callable[[], int],
        meter: PointsMeter | None,
    ) -> ConfluenceClient:
        if self.client_factory is None:
            from forge_remote.confluence.client import ConfluenceClient

            self.client_factory = ConfluenceClient
        options: dict[str, Any] = {"allowed_hosts": self.allowed_api_hosts, "remaining_ms": remaining_ms}
        if meter is not None:  # a custom client_factory without budget support still works without one
            options["meter"] = meter
        return self.client_factory(api_base_url, token, **options)

    def _execute(
        self,
        job: Job[Any],
        *,
        request: JobRequest,
        installation: Installation,
        lease: TokenLease,
        leases: list[TokenLease],
        remaining_ms: Callable[[], int],
    ) -> Outcome:
        lease.acquire()
        api_base_url = installation.api_base_url or ""
        user_clients: dict[str, ConfluenceClient] = {}
        # One meter for every client of the job (as the app, as users): its cost is one number.
        meter = (
            None
            if self.budget is None
            else self.budget.meter(request.installation_id, interactive=request.priority == INTERACTIVE)
        )

        def confluence_as(account_id: str) -> ConfluenceClient:
            """A client acting as ``account_id`` with its own offline token: never the app's."""
            if account_id not in user_clients:
                user_lease = self._offline_lease(installation, account_id, lease, remaining_ms)
                leases.append(user_lease)  # before acquiring: a refusal of the mint's app token is matched too
                user_lease.acquire()
                user_clients[account_id] = self._client(api_base_url, user_lease.token, remaining_ms, meter)
            return user_clients[account_id]

        context = JobContext(
            request=request,
            api_base_url=api_base_url,
            confluence=self._client(api_base_url, lease.token, remaining_ms, meter),
            # JobResults still names ResultStore; it calls only what the Results Protocol has.
            results=JobResults(self.results, request.installation_id),
            remaining_ms=remaining_ms,
            user_client_factory=confluence_as,
            app_token=lease.token,
        )
        result = job(context)
        summary = dict(result.summary) if result else {}
        # What the run cost under Atlassian's points-based rate limits, every client of the job together.
        clients = [c for c in [context.confluence, *user_clients.values()] if getattr(c, "request_count", 0)]
        if clients:  # the job called Confluence (a custom client_factory's client may not count)
            summary.setdefault("points", sum(getattr(c, "points_spent", 0) for c in clients))
        return Outcome(JobStatus.DONE, summary=summary)

    def _offline_lease(
        self, installation: Installation, account_id: str, app_lease: TokenLease, remaining_ms: Callable[[], int]
    ) -> TokenLease:
        if not installation.cloud_id:
            # Recorded from the verified FIT (context or apiBaseUrl); the next Forge call records it.
            raise RetryLater("the installation's cloud id is not recorded yet: cannot name it to Forge")
        if self.offline_tokens is None:
            from forge_remote.tokens.offline import OfflineTokenMinter, OfflineTokens

            minter = OfflineTokenMinter(self.graphql_url, self.offline_token_context_id, self.allowed_api_hosts)
            # OfflineTokens still names the DynamoDB stores; it calls only what the Protocols have.
            tokens, installations = cast("TokenStore", self.tokens), cast("InstallationRegistry", self.installations)
            self.offline_tokens = OfflineTokens(tokens, minter, installations, self.min_validity_s)
        return self.offline_tokens.lease(
            installation.installation_id,
            account_id,
            cloud_id=installation.cloud_id,
            app_token=app_lease.token,
            remaining_ms=remaining_ms,
        )

    def token_wakes_jobs(self, installation_id: str) -> bool:
        """Is an app token stored now that should wake a job parked a moment ago (it may have missed the
        delivery that stored it)? Valid for the job minimum, and not the token last refused."""
        return self.tokens.wakes_jobs(installation_id, self.min_validity_s)

    @staticmethod
    def _defer(receive_count: int, reason: str, *, at_least: float = 0, waiting_for_token: bool = False) -> Outcome:
        delay = deferral_delay(receive_count, at_least=at_least)
        return Outcome(JobStatus.DEFERRED, reason, delay, waiting_for_token=waiting_for_token)
