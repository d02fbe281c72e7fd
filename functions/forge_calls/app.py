"""UI routes (``/api/...``), called by the Forge app's UI through ``invokeRemote``.

Answers in-request (Forge gives UI calls 25 s and no retries). Every route verifies the FIT first
and stores the tokens the call delivered; the installation comes only from the verified FIT.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.event_handler import APIGatewayHttpResolver
from aws_lambda_powertools.utilities.typing import LambdaContext

from forge_remote import clock
from forge_remote.http_api import invocation, register_error_handlers, require_fit
from forge_remote.http_wiring import HttpWiring
from forge_remote.logs import use_function_logger

logger = Logger()
use_function_logger(logger)
wiring = HttpWiring.from_env()
app = APIGatewayHttpResolver()
app.use([require_fit(wiring.verifier)])
register_error_handlers(app, retry_after_s=5)  # a person is waiting: retry soon


def _iso(epoch_s: float | None) -> str | None:
    return datetime.fromtimestamp(epoch_s, UTC).isoformat(timespec="seconds") if epoch_s else None


@app.get("/api/status")
def status() -> dict[str, Any]:
    """The calling installation's token state: until when a job can run. Never the token itself."""
    call = invocation(app)
    captured = wiring.capture_tokens(call)
    now = clock.now()
    min_validity = wiring.settings.token_min_validity_s
    tokens = [
        {
            "subject": state.subject,
            "expiresAt": _iso(state.expires_at),
            "validForSeconds": max(0, int(state.expires_at - now)),
            "expirySource": state.expiry_source,
            # Background jobs act as the app: only the app token can make them runnable.
            **({"usableByJobs": state.expires_at - now >= min_validity} if state.subject == "system" else {}),
        }
        for state in wiring.tokens.states(call.installation_id, account_id=call.principal)
    ]
    installation = wiring.installations.get(call.installation_id)
    return {
        "installationId": call.installation_id,
        "installation": {
            "status": installation.status if installation else "unknown",
            "installedAt": _iso(installation.installed_at) if installation else None,
        },
        "tokens": tokens,
        "captured": captured,
        "tokenMinValiditySeconds": min_validity,
    }


@logger.inject_lambda_context(correlation_id_path='headers."x-b3-traceid"')
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return app.resolve(event, context)
