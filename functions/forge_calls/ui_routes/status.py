"""``GET /api/status``: the calling installation's token state, in words a page can show. Never a token."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from aws_lambda_powertools.event_handler.api_gateway import Router

from forge_remote import clock
from forge_remote.ui_calls import ui_call

router = Router()


def _iso(epoch_s: float | None) -> str | None:
    return datetime.fromtimestamp(epoch_s, UTC).isoformat(timespec="seconds") if epoch_s else None


@router.get("/api/status")
def status() -> dict[str, Any]:
    call = ui_call(router)
    wiring, invocation = call.wiring, call.invocation
    captured = wiring.capture_tokens(invocation)
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
        for state in wiring.tokens.states(invocation.installation_id, account_id=invocation.principal)
    ]
    installation = wiring.installations.get(invocation.installation_id)
    return {
        "installationId": invocation.installation_id,
        "installation": {
            "status": installation.status if installation else "unknown",
            "installedAt": _iso(installation.installed_at) if installation else None,
        },
        "tokens": tokens,
        "captured": captured,
        "tokenMinValiditySeconds": min_validity,
    }
