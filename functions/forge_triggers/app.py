"""Forge trigger routes: lifecycle, uninstall, product events, keepalive.

Thin: verify the FIT (first, always), store the delivered tokens, do the route's one thing, answer
well inside Forge's 5 s. Product events become job requests on the jobs bus, once per delivery.
"""

from __future__ import annotations

import contextlib
from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from forge_remote import aws
from forge_remote.forge.invocations import Invocation
from forge_remote.forge.payloads import LIFECYCLE_EVENTS, decode_body, json_object, parse_event
from forge_remote.inbound.api import invocation, register_error_handlers, require_fit
from forge_remote.inbound.wiring import HttpWiring
from forge_remote.jobs.intake import EventIntake
from forge_remote.lifecycle.cleanup import InstallationCleanup, retention_days_setting
from forge_remote.telemetry.logs import publishing_recorded_metrics, use_function_logger

logger = Logger()
use_function_logger(logger)
metrics = Metrics()
wiring = HttpWiring.from_env()
intake = EventIntake(app_table=wiring.settings.app_table, jobs_bus=wiring.settings.required("jobs_bus"))
cleanup = InstallationCleanup(
    aws.dynamodb(), tokens=wiring.tokens, installations=wiring.installations, retention_days=retention_days_setting()
)
app = APIGatewayHttpResolver()
app.use([require_fit(wiring.verifier)])
register_error_handlers(app)


def _event_body() -> dict[str, Any]:
    event = app.current_event
    return json_object(decode_body(event.body, bool(event.is_base64_encoded)))


# What each trigger route's call is, as the status page names where the last token came from.
_DELIVERED_BY = {"/forge/lifecycle": "lifecycle", "/forge/keepalive": "keepalive", "/forge/events": "event"}


def _capture(call: Invocation) -> dict[str, str]:
    outcomes = wiring.capture_tokens(call, delivered_by=_DELIVERED_BY.get(app.current_event.path))
    if outcomes.get("system") == "stored":
        metrics.add_metric(name="TokensStored", unit=MetricUnit.Count, value=1)
    return outcomes


@app.post("/forge/lifecycle")
def lifecycle() -> dict[str, Any]:
    call = invocation(app)
    event = parse_event(_event_body())
    if event.event_type not in LIFECYCLE_EVENTS:
        logger.warning("ignoring non-lifecycle event on /forge/lifecycle", extra={"event_type": event.event_type})
        return {"ignored": event.event_type, "tokens": _capture(call)}
    if not wiring.record_lifecycle(call, event.event_type):
        logger.warning("lifecycle event for an uninstalled installation ignored")
        return {"installation": "uninstalled", "ignored": event.event_type}
    logger.info("installation recorded", extra={"event_type": event.event_type})
    return {"installation": "active", "event": event.event_type, "tokens": _capture(call)}


@app.post("/forge/uninstall")
def uninstall() -> tuple[dict[str, Any], int]:
    call = invocation(app)
    if not wiring.installations.act_once(call.installation_id, call.invocation_id):
        logger.warning("uninstall FIT replayed; nothing done")
        return {"installation": "unchanged", "replayed": True}, 200
    try:
        # Mark first, then delete: a token write racing us either lands before the mark (and is deleted
        # below) or fails its "still installed" condition. Then the rest of the data, as time allows.
        report = cleanup.uninstall(call.installation_id, remaining_ms=app.lambda_context.get_remaining_time_in_millis)
    except Exception:
        with contextlib.suppress(Exception):  # best effort: the error below is what Forge must see
            wiring.installations.release_once(call.installation_id, call.invocation_id)
        raise
    logger.info("installation uninstalled", extra=report.as_dict())
    metrics.add_metric(name="Uninstalls", unit=MetricUnit.Count, value=1)
    if not report.complete:
        # Tokens are gone and nothing runs for the installation any more; the rest of its data is
        # still being removed. Not a success, so Forge retries (this FIT may act again); the retry,
        # or the scheduled sweep, continues where this one stopped.
        with contextlib.suppress(Exception):
            wiring.installations.release_once(call.installation_id, call.invocation_id)
        return {"installation": "uninstalled", **report.as_dict()}, 503
    return {"installation": "uninstalled", **report.as_dict()}, 200


@app.post("/forge/keepalive")
def keepalive() -> Response[str]:
    outcomes = _capture(invocation(app))
    logger.info("keepalive", extra={"tokens": outcomes})
    return Response(status_code=204)


@app.post("/forge/events")
def product_event() -> tuple[dict[str, Any], int]:
    call = invocation(app)
    event = parse_event(_event_body())
    installation = wiring.installations.get(call.installation_id)
    if installation is not None and not installation.active:
        # Acknowledged, so Forge stops retrying, but no job: nothing may run for an uninstalled site.
        logger.info("product event for an uninstalled installation ignored", extra={"event_type": event.event_type})
        return {"event": event.event_type, "jobs": 0, "ignored": "installation uninstalled"}, 200
    outcomes = _capture(call)
    result = intake.accept(call, event, app.lambda_context)
    logger.info(
        "product event",
        extra={"event_type": event.event_type, "retry": event.retry_count, "jobs": result, "tokens": outcomes},
    )
    return {"event": event.event_type, **result}, 202


@logger.inject_lambda_context(correlation_id_path='headers."x-b3-traceid"')
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    with publishing_recorded_metrics(metrics):  # a rejected call records nothing
        return app.resolve(event, context)
