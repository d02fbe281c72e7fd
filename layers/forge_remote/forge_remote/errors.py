"""Exceptions raised by the library, and what each means for the caller.

Every failure a job can meet is one of two kinds, and the worker handles exactly these two:
- ``PermanentFailure``: retrying cannot help (unknown job, bad arguments, a 4xx from Confluence, a
  next link that leaves the site). The job request goes to the dead-letter queue with the reason.
- ``RetryLater``: the work cannot finish now (no valid token, rate limited, Confluence down, out of
  time). The job request comes back later, after at least ``delay_s``, with a growing delay.
The HTTP functions map the same classes to status codes (400, 401, 403, 409, 503).

Messages never contain a token, a FIT or an Authorization header: they are safe to log and to
return to a caller. Carry identifiers (installation id, status, Atlassian trace id), never secrets.
"""

from __future__ import annotations


class ForgeRemoteError(Exception):
    """Base class of every error this library raises on purpose."""


class PermanentFailure(ForgeRemoteError):
    """Cannot succeed as asked, however often it is retried."""

    @property
    def reason(self) -> str:
        return str(self)


class RetryLater(ForgeRemoteError):
    """Cannot finish now; may succeed after ``delay_s`` seconds or more."""

    def __init__(self, reason: str, delay_s: float = 0.0) -> None:
        super().__init__(reason)
        self.reason = reason
        self.delay_s = delay_s


# -- the Forge call (HTTP functions) ----------------------------------------------------------------
class InvalidInvocation(PermanentFailure):
    """The Forge Invocation Token was missing or failed verification (HTTP 401)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)


class SigningKeysUnavailable(RetryLater):
    """The FIT could not be checked because Forge's signing keys could not be fetched (HTTP 503).

    Our outage, not a bad token: no key set at all, or an unknown ``kid`` whose refetch failed (it may be
    a key Forge started using during the outage). A 401 would tell Forge the token failed validation.
    """


class WrongCallKind(PermanentFailure):
    """A verified FIT of a kind this route does not accept, e.g. a user's UI call on a trigger route (403)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)


class NotAllowed(PermanentFailure):
    """The signed-in user may not do this (HTTP 403); Confluence, asked as the user, said so."""


class InstallationUninstalled(PermanentFailure):
    """The call is for an installation that was uninstalled (HTTP 409): nothing can run for it."""


class InstallationMoved(PermanentFailure):
    """The call is for an installation a realm migration moved to another regional stack (HTTP 409): this
    stack no longer serves it, and Forge calls the new realm's remote from now on."""

    def __init__(self, realm: str | None) -> None:
        self.realm = realm or "unknown"
        super().__init__(f"the installation moved to realm {self.realm}; this deployment no longer serves it")


class UserTokenRequired(PermanentFailure):
    """The route acts as the signed-in user, and the call carried no user token (HTTP 403)."""


class MalformedEvent(PermanentFailure):
    """A request body that cannot be understood (HTTP 400). The message names no secret."""


class DeliveryInProgress(RetryLater):
    """The same Forge delivery is being processed right now: retry later (HTTP 409)."""


class ServiceUnavailable(RetryLater):
    """A dependency still failed after its own retries: the caller should retry later (HTTP 503)."""


# -- configuration and trust ------------------------------------------------------------------------
class ConfigurationError(PermanentFailure):
    """A required setting is missing or malformed."""


class DisallowedApiBaseUrl(PermanentFailure):
    """An apiBaseUrl is not https on an allowed host: no token may be sent there."""


# -- tokens -----------------------------------------------------------------------------------------
class TokenUnavailable(RetryLater):
    """No stored token is valid for long enough. The job must wait for the next Forge call."""

    def __init__(self, installation_id: str, detail: str = "no token valid long enough") -> None:
        super().__init__(f"{detail} for installation {installation_id}")
        self.installation_id = installation_id


class TokenRejected(RetryLater):
    """A server refused the token (Confluence: 401, or a 403/404 that a valid token would not get;
    Forge's GraphQL gateway: 401 to the app token a mint was authenticated with).

    ``token_sha256`` says which token it was (its digest, never the token), so the worker invalidates
    exactly that one, whichever lease handed it out (the app's, or an offline user token's), and retries
    once if a replacement can be had; if this escapes, the job waits like any other ``RetryLater``.
    """

    def __init__(
        self, status: int, trace_id: str | None = None, *, token_sha256: str | None = None, by: str = "Confluence"
    ) -> None:
        super().__init__(f"{by} rejected the token (HTTP {status})")
        self.status = status
        self.trace_id = trace_id
        self.token_sha256 = token_sha256


class OfflineTokenRefused(PermanentFailure):
    """Forge will not mint an offline user token for this account, and asking again will not change it
    (the user does not exist, cannot be impersonated, e.g. a service account, or a scope lacks
    impersonation). The job goes to the DLQ: it never falls back to acting as the app."""


class OfflineTokenUnavailable(RetryLater):
    """No offline user token could be minted now (rate limited, Forge unreachable or failing, an
    answer that could not be read): the job is deferred, never run as the app instead."""


# -- Confluence -------------------------------------------------------------------------------------
class BudgetWait(RetryLater):
    """Background work must wait for points: the fleet's or this installation's share of Atlassian's
    hourly quota is spent, or a 429 paused it. Not a failure and not an attempt: the job comes back at
    ``resume_at`` (epoch seconds on the stack's clock), a slot after the quota's reset."""

    def __init__(self, reason: str, resume_at: float, delay_s: float) -> None:
        super().__init__(reason, delay_s)
        self.resume_at = resume_at


class ConfluenceError(PermanentFailure):
    """Confluence refused the request for a reason a retry will not change (4xx, a malformed answer).

    ``status`` is the HTTP status, 200 for a well-formed exchange whose content is unusable (a
    pagination cycle, no results list), or 0 when nothing was sent (a next link that leaves the site).
    """

    def __init__(self, status: int, message: str, trace_id: str | None = None) -> None:
        super().__init__(f"Confluence HTTP {status}: {message}" if status >= 300 else f"Confluence: {message}")
        self.status = status
        self.message = message
        self.trace_id = trace_id


class NotFound(ConfluenceError):
    """404 that a valid token also gets: the content does not exist or the app cannot see it."""


class Forbidden(ConfluenceError):
    """403 that a valid token also gets: the app lacks a permission or scope."""


class ScopeMissing(ConfluenceError):
    """401 "scope does not match": the token is fine, the app's manifest lacks the operation's scope.
    Invalidating the token would strand every job; no retry helps until the app is redeployed."""


class ConfluenceUnavailable(RetryLater):
    """Confluence still answered 5xx after the client's own retries."""

    def __init__(self, status: int, message: str, trace_id: str | None = None) -> None:
        super().__init__(f"Confluence HTTP {status}: {message}")
        self.status = status
        self.message = message
        self.trace_id = trace_id


# -- jobs -------------------------------------------------------------------------------------------
class BadJobRequest(PermanentFailure):
    """A job request that can never succeed (unknown job, bad arguments): goes to the DLQ, not retried."""


class JobDeferred(RetryLater):
    """Raised to the SQS batch processor for a deferred job: the record is reported failed and stays
    in the queue (with the visibility timeout already set to the deferral delay)."""
