"""UI routes (``/api/...``), called by the Forge app's UI through ``invokeRemote``.

Answers in-request (Forge gives UI calls 25 s and no retries). Every route verifies the FIT first
and stores the tokens the call delivered; the installation comes only from the verified FIT.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response
from aws_lambda_powertools.utilities.typing import LambdaContext
from botocore.exceptions import BotoCoreError, ClientError

from forge_remote import clock
from forge_remote.fit import Invocation
from forge_remote.http_api import verify_then_route
from forge_remote.runtime import Runtime

logger = Logger()
app = APIGatewayHttpResolver()
runtime = Runtime.from_env()


def _json(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> Response[str]:
    return Response(status_code=status, content_type="application/json", body=json.dumps(body), headers=headers)


def _iso(epoch_s: float | None) -> str | None:
    return datetime.fromtimestamp(epoch_s, UTC).isoformat(timespec="seconds") if epoch_s else None


@app.get("/api/status")
def status() -> Response[str]:
    """The calling installation's token state: until when a job can run. Never the token itself."""
    invocation: Invocation = app.context["invocation"]
    captured = runtime.capture_tokens(invocation)
    now = clock.now()
    min_validity = runtime.settings.token_min_validity_s
    tokens = [
        {
            "subject": state.subject,
            "expiresAt": _iso(state.expires_at),
            "validForSeconds": max(0, int(state.expires_at - now)),
            "usableByJobs": state.expires_at - now >= min_validity,
            "expirySource": state.expiry_source,
        }
        for state in runtime.tokens.states(invocation.installation_id, account_id=invocation.principal)
    ]
    installation = runtime.installations.get(invocation.installation_id)
    return _json(
        200,
        {
            "installationId": invocation.installation_id,
            "installation": {
                "status": installation.status if installation else "unknown",
                "installedAt": _iso(installation.installed_at) if installation else None,
            },
            "tokens": tokens,
            "captured": captured,
            "tokenMinValiditySeconds": min_validity,
        },
    )


@app.exception_handler([BotoCoreError, ClientError])
def aws_unavailable(exc: Exception) -> Response[str]:
    logger.error("AWS dependency failed", extra={"error": type(exc).__name__})
    body = {"error": "unavailable", "message": "storage temporarily unavailable; retry later"}
    return _json(503, body, {"Retry-After": "5"})


@app.not_found
def not_found(_: Exception) -> Response[str]:
    return _json(404, {"error": "not_found", "message": "no such route"})


@logger.inject_lambda_context(correlation_id_path='headers."x-b3-traceid"')
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return verify_then_route(event, context, runtime.verifier, app)
