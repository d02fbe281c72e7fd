"""``GET /api/status``: the calling installation's token health, in figures a page can put in words.

Can background jobs run now, and until when; when the last token arrived, from what kind of call,
and until when jobs could use it; how many jobs wait for a token; whether jobs wait for Atlassian's
rate limit, why and until when; which jobs went to the dead-letter queue and why; the last run of
each job kind. Everything is read by key or by one query of the installation's own partition (no
scan), and nothing returned is a token.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aws_lambda_powertools.event_handler.api_gateway import Router

from forge_remote import aws, clock
from forge_remote.inbound.ui_calls import ui_call

if TYPE_CHECKING:
    from forge_remote.jobs.activity import JobActivity
    from forge_remote.jobs.parking import ParkingLot

router = Router()


def _iso(epoch_s: float | None) -> str | None:
    return clock.iso(epoch_s) if epoch_s else None


def _job_stores(app_table: str) -> tuple[ParkingLot, JobActivity]:
    # Imported with the first status call, not at cold start: no other route of this function needs them.
    from forge_remote.jobs.activity import JobActivity
    from forge_remote.jobs.parking import ParkingLot

    client = aws.dynamodb()  # the container's one client (aws.py keeps it)
    return ParkingLot(client, app_table), JobActivity(client, app_table)


@router.get("/api/status")  # no @accepts: no query parameter and no body, anything else is a 400
def status() -> dict[str, Any]:
    call = ui_call(router)
    wiring, invocation = call.wiring, call.invocation
    installation_id = invocation.installation_id
    now = clock.now()
    min_validity = wiring.settings.token_min_validity_s
    states = wiring.tokens.states(installation_id, account_id=invocation.principal)
    tokens = [
        {
            "subject": state.subject,
            "expiresAt": _iso(state.expires_at),
            "validForSeconds": max(0, int(state.expires_at - now)),
            "expirySource": state.expiry_source,
            # Background jobs act as the app: only the app token can make them runnable.
            **({"usableByJobs": state.expires_at - now >= min_validity} if state.subject == "system" else {}),
        }
        for state in states
    ]
    app_token = next((s for s in states if s.subject == "system"), None)
    # A job takes a token only while it is valid for the minimum more: that is when jobs stop.
    usable_until = app_token.expires_at - min_validity if app_token else None
    installation = wiring.installations.get(installation_id)
    parking, activity = _job_stores(wiring.settings.app_table)
    quota = wiring.budget.state(installation_id, now)
    return {
        "installationId": installation_id,
        "now": _iso(now),
        "installation": {
            "status": installation.status if installation else "unknown",
            "installedAt": _iso(installation.installed_at) if installation else None,
        },
        "jobs": {
            "canRun": usable_until is not None and usable_until > now,
            "canRunUntil": _iso(usable_until) if usable_until and usable_until > now else None,
            "waitingForToken": parking.waiting(installation_id),
            # Bulk jobs of this site would wait now for points: the share of the hour is spent, or paused.
            "waitingForQuota": {"reason": quota.reason, "until": _iso(quota.until)} if quota else None,
            "deadLettered": [
                {"job": d.job, "reason": d.reason, "at": _iso(d.at), "requestId": d.request_id}
                for d in activity.dead_lettered(installation_id)
            ],
            "lastResults": [
                {"job": r.job, "finishedAt": _iso(r.finished_at), "summary": r.summary}
                for r in activity.last_runs(installation_id)
            ],
        },
        "lastToken": {
            "at": _iso(app_token.received_at) if app_token else None,
            "from": app_token.delivered_by if app_token else None,
            # Until when jobs could take it, past or future: "jobs stopped at ..." when it no longer serves.
            "usableByJobsUntil": _iso(usable_until) if usable_until else None,
        },
        "tokens": tokens,
        "captured": call.captured,
        "tokenMinValiditySeconds": min_validity,
    }
