"""Exceptions raised by the library.

Messages never contain a token, a FIT or an Authorization header: they are safe to log and to
return to a caller. Carry identifiers (installation id, status, Atlassian trace id), never secrets.
"""

from __future__ import annotations


class ForgeRemoteError(Exception):
    """Base class of every error this library raises on purpose."""


class InvalidInvocation(ForgeRemoteError):
    """The Forge Invocation Token was missing or failed verification (HTTP 401)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class WrongCallKind(ForgeRemoteError):
    """A verified FIT of a kind this route does not accept, e.g. a user's UI call on a trigger route (403)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ConfigurationError(ForgeRemoteError):
    """A required setting is missing or malformed."""


class DisallowedApiBaseUrl(ForgeRemoteError):
    """An apiBaseUrl is not https on an allowed host: no token may be sent there."""


class TokenUnavailable(ForgeRemoteError):
    """No stored token is valid for long enough. The job must wait for the next Forge call."""

    def __init__(self, installation_id: str, detail: str = "no token valid long enough") -> None:
        super().__init__(f"{detail} for installation {installation_id}")
        self.installation_id = installation_id


class TokenRejected(ForgeRemoteError):
    """Confluence refused the token (401, or a 403/404 that a valid token would not get)."""

    def __init__(self, status: int, trace_id: str | None = None) -> None:
        super().__init__(f"Confluence rejected the token (HTTP {status})")
        self.status = status
        self.trace_id = trace_id


class ConfluenceError(ForgeRemoteError):
    """Confluence answered with an error that is not about the token."""

    def __init__(self, status: int, message: str, trace_id: str | None = None) -> None:
        super().__init__(f"Confluence HTTP {status}: {message}")
        self.status = status
        self.message = message
        self.trace_id = trace_id


class RetryLater(ForgeRemoteError):
    """The work cannot finish now (rate limit, outage, time budget): defer it by ``delay_s``."""

    def __init__(self, reason: str, delay_s: float) -> None:
        super().__init__(f"{reason}; retry in {delay_s:.0f}s")
        self.reason = reason
        self.delay_s = delay_s


class MalformedEvent(ForgeRemoteError):
    """A request body that cannot be understood (HTTP 400). The message names no secret."""


class BadJobRequest(ForgeRemoteError):
    """A job request that can never succeed (unknown job, bad arguments): goes to the DLQ, not retried."""


class ServiceUnavailable(ForgeRemoteError):
    """A dependency still failed after its own retries: the caller should retry later (HTTP 503)."""


class DeliveryInProgress(ForgeRemoteError):
    """The same Forge delivery is being processed right now: retry later (HTTP 409)."""
