"""The HTTP kit shared by the HTTP functions (Powertools' ``APIGatewayHttpResolver``, payload v2).

- ``require_fit(verifier)``: a global middleware (``app.use([require_fit(...)])``). The FIT is
  verified before any route runs, and the call must be the kind Forge makes to that route
  (``call_kinds``); a bad FIT is a 401, a call of the wrong kind a 403, both with a JSON body and
  nothing stored. A FIT that cannot be checked because Forge's signing keys cannot be fetched is our
  outage, not a bad token: 503 with ``Retry-After``, so Forge retries a trigger instead of reading it as
  "the token failed validation"; nothing is stored either. A route reads the verified call with
  ``invocation(app)``.
- ``register_error_handlers(app)``: one JSON error shape (``{"error": code, "message": text}``) for
  400, 401, 403, 404, 409, 502 and 503, the same in every function. A call for an installation that a
  realm migration moved elsewhere is a 409 ``moved``, counted as ``MovedInstallationCalls`` by realm.
Responses and logs name the reason, never the token. Every refused FIT is counted as ``FitRejections``
with its reason as a dimension (the reason's fixed part: no claim values, no token); a signing key
outage is counted apart, as ``SigningKeysUnavailable``, so it cannot pass for forged calls.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response, content_types
from aws_lambda_powertools.event_handler.middlewares import NextMiddleware
from botocore.exceptions import BotoCoreError, ClientError

from forge_remote.errors import (
    ConfluenceError,
    DeliveryInProgress,
    InstallationMoved,
    InstallationUninstalled,
    InvalidInvocation,
    MalformedEvent,
    NotAllowed,
    RetryLater,
    ServiceUnavailable,
    SigningKeysUnavailable,
    UserTokenRequired,
    WrongCallKind,
)
from forge_remote.forge.call_kinds import TriggerModules, check_call_kind
from forge_remote.forge.invocations import FitVerifier, Invocation

logger = logging.getLogger(__name__)

Middleware = Callable[[APIGatewayHttpResolver, NextMiddleware], Response[Any]]
STORAGE_RETRY_AFTER_S = 30


def lower_headers(event: Mapping[str, Any]) -> dict[str, str]:
    """Header names lower-cased (HTTP API v2 already does; sam local and tests may not)."""
    headers = event.get("headers")
    if not isinstance(headers, dict):
        return {}
    return {str(k).lower(): v for k, v in headers.items() if isinstance(v, str)}


def error_response(status: int, code: str, message: str, headers: Mapping[str, str] | None = None) -> Response[Any]:
    """The one error shape every route and handler answers with."""
    return Response(
        status_code=status,
        content_type=content_types.APPLICATION_JSON,
        body={"error": code, "message": message},
        headers=dict(headers or {}),
    )


def count_rejection(reason: str) -> None:
    """One ``FitRejections`` datapoint; the dimension is the reason up to its first colon (what follows
    may quote the request: ``app.apiBaseUrl rejected: <why>``)."""
    from forge_remote.telemetry import counts  # only refused calls pay for it (cold start)

    counts.count("FitRejections", "reason", reason.split(":", 1)[0])


def keys_unavailable(exc: SigningKeysUnavailable, path: str | None = None) -> Response[Any]:
    """503 for a FIT that could not be checked: retryable, and not a ``FitRejections`` datapoint."""
    from forge_remote.telemetry import counts  # only an outage pays for it (cold start)

    logger.warning("Forge invocation not verified: %s", exc.reason, extra={"reason": exc.reason, "path": path})
    counts.count("SigningKeysUnavailable", "reason", exc.reason)
    message = f"service temporarily unavailable ({exc.reason}); retry later"
    return error_response(503, "unavailable", message, {"Retry-After": str(max(1, int(exc.delay_s)))})


def require_fit(verifier: FitVerifier, modules: TriggerModules) -> Middleware:
    """Verify the FIT and the kind of call before the route runs; put the ``Invocation`` in ``app.context``."""

    def verify_fit(app: APIGatewayHttpResolver, next_middleware: NextMiddleware) -> Response[Any]:
        path = app.current_event.path
        try:
            found = verifier.verify(lower_headers(app.current_event.raw_event))
        except InvalidInvocation as exc:
            logger.warning("Forge invocation rejected: %s", exc.reason, extra={"reason": exc.reason, "path": path})
            count_rejection(exc.reason)
            return error_response(401, "unauthorized", f"Forge invocation token rejected: {exc.reason}")
        except SigningKeysUnavailable as exc:
            return keys_unavailable(exc, path)
        try:
            check_call_kind(path, found, modules)
        except WrongCallKind as exc:
            count_rejection("wrong call kind for this route")
            logger.warning(
                "Forge invocation refused on this route: %s",
                exc.reason,
                extra={
                    "reason": exc.reason,
                    "path": path,
                    "module_key": found.module_key,
                    "user_call": bool(found.principal),
                },
            )
            return error_response(403, "wrong_call_kind", f"this route does not accept this call: {exc.reason}")
        app.append_context(invocation=found)
        return next_middleware(app)

    return verify_fit


def invocation(app: APIGatewayHttpResolver) -> Invocation:
    """The verified call of the request being handled (set by ``require_fit``)."""
    found: Invocation = app.context["invocation"]
    return found


def register_error_handlers(app: APIGatewayHttpResolver, *, retry_after_s: int = STORAGE_RETRY_AFTER_S) -> None:
    """400, 401, 403, 404, 409, 502 and 503 as JSON, for every route of ``app``."""

    @app.exception_handler(SigningKeysUnavailable)
    def signing_keys_unavailable(exc: SigningKeysUnavailable) -> Response[Any]:
        return keys_unavailable(exc)

    @app.exception_handler(MalformedEvent)
    def bad_request(exc: MalformedEvent) -> Response[Any]:
        logger.warning("malformed request body", extra={"reason": str(exc)})
        return error_response(400, "bad_request", str(exc))

    @app.exception_handler(InvalidInvocation)
    def unauthorized(exc: InvalidInvocation) -> Response[Any]:
        logger.warning("request refused: %s", exc.reason, extra={"reason": exc.reason})
        count_rejection(exc.reason)
        return error_response(401, "unauthorized", exc.reason)

    @app.exception_handler(DeliveryInProgress)
    def in_progress(exc: DeliveryInProgress) -> Response[Any]:
        # Forge retries non-2xx deliveries: the retry finds the first one finished and answers its result.
        logger.info("duplicate delivery while the first is in progress")
        return error_response(409, "in_progress", str(exc), {"Retry-After": "60"})

    @app.exception_handler(NotAllowed)
    def not_allowed(exc: NotAllowed) -> Response[Any]:
        logger.warning("request not allowed for this user", extra={"reason": exc.reason})
        return error_response(403, "forbidden", exc.reason)

    @app.exception_handler(InstallationUninstalled)
    def uninstalled(exc: InstallationUninstalled) -> Response[Any]:
        logger.info("request for an uninstalled installation refused")
        return error_response(409, "uninstalled", exc.reason)

    @app.exception_handler(InstallationMoved)
    def moved(exc: InstallationMoved) -> Response[Any]:
        from forge_remote.telemetry import counts  # only such stragglers pay for it

        logger.warning("request for an installation moved to another realm refused", extra={"realm": exc.realm})
        counts.count("MovedInstallationCalls", "realm", exc.realm)
        return error_response(409, "moved", exc.reason)

    @app.exception_handler(UserTokenRequired)
    def user_token_required(exc: UserTokenRequired) -> Response[Any]:
        logger.warning("route needs the user's token; the call carried none")
        return error_response(403, "user_token_required", exc.reason)

    @app.exception_handler(ConfluenceError)
    def confluence_refused(exc: ConfluenceError) -> Response[Any]:
        logger.warning("Confluence refused a request", extra={"status": exc.status, "trace_id": exc.trace_id})
        return error_response(502, "confluence_error", exc.reason)

    @app.exception_handler(RetryLater)
    def not_now(exc: RetryLater) -> Response[Any]:
        # No token valid long enough, rate limited, Confluence down: reasons name no secret.
        logger.warning("request cannot be answered now", extra={"reason": exc.reason})
        retry_after = str(max(1, min(int(exc.delay_s) or retry_after_s, 300)))
        return error_response(503, "unavailable", exc.reason, {"Retry-After": retry_after})

    @app.exception_handler([BotoCoreError, ClientError, ServiceUnavailable])
    def unavailable(exc: Exception) -> Response[Any]:
        # After botocore's own retries: tell the caller to retry later instead of crashing with a 500.
        logger.error("AWS dependency failed", extra={"error": type(exc).__name__})
        message = "storage temporarily unavailable; retry later"
        return error_response(503, "unavailable", message, {"Retry-After": str(retry_after_s)})

    @app.not_found
    def not_found(_: Exception) -> Response[Any]:
        return error_response(404, "not_found", "no such route")
