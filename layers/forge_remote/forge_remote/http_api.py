"""API Gateway HTTP API (payload v2) glue shared by the HTTP handlers: FIT first, JSON errors.

Every route verifies the FIT before anything else runs; a bad or missing FIT is a 401 with a JSON
body and nothing is stored. Responses and logs name the reason, never the token.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from forge_remote.errors import InvalidInvocation
from forge_remote.fit import FitVerifier, Invocation

logger = logging.getLogger(__name__)

Resolve = Callable[[Invocation], dict[str, Any]]


class Resolver(Protocol):
    """What we use of Powertools' ``APIGatewayHttpResolver`` (kept out of the layer's imports)."""

    def append_context(self, **kwargs: Any) -> None: ...
    def clear_context(self) -> None: ...
    def resolve(self, event: dict[str, Any], context: Any) -> dict[str, Any]: ...


def lower_headers(event: Mapping[str, Any]) -> dict[str, str]:
    """Header names lower-cased (HTTP API v2 already does; sam local and tests may not)."""
    headers = event.get("headers")
    if not isinstance(headers, dict):
        return {}
    return {str(k).lower(): v for k, v in headers.items() if isinstance(v, str)}


def json_response(status: int, body: Any = None, headers: Mapping[str, str] | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {
        "statusCode": status,
        "headers": {"Content-Type": "application/json", **(headers or {})},
    }
    if body is not None:
        response["body"] = json.dumps(body, separators=(",", ":"), default=str)
    return response


def error_response(status: int, code: str, message: str, headers: Mapping[str, str] | None = None) -> dict[str, Any]:
    return json_response(status, {"error": code, "message": message}, headers)


def verify_then(event: Mapping[str, Any], verifier: FitVerifier, resolve: Resolve) -> dict[str, Any]:
    """Verify the request's FIT, then ``resolve`` it; 401 JSON (and no side effect) if the FIT fails."""
    try:
        invocation = verifier.verify(lower_headers(event))
    except InvalidInvocation as exc:
        logger.warning("Forge invocation rejected: %s", exc.reason)
        return error_response(401, "unauthorized", f"Forge invocation token rejected: {exc.reason}")
    return resolve(invocation)


def verify_then_route(event: dict[str, Any], context: Any, verifier: FitVerifier, resolver: Resolver) -> dict[str, Any]:
    """Verify the FIT, then route the request with the ``Invocation`` in ``resolver.context``."""

    def route(invocation: Invocation) -> dict[str, Any]:
        resolver.append_context(invocation=invocation, lambda_context=context)
        try:
            return resolver.resolve(event, context)
        finally:
            resolver.clear_context()

    return verify_then(event, verifier, route)
