"""Forge trigger routes: lifecycle, uninstall, product events, keepalive.

Thin: verify the FIT (first, always), store the delivered tokens, do the route's one thing, answer
well inside Forge's 5 s. Product events become job requests on the jobs bus, once per delivery.
"""

from __future__ import annotations

import json
from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext
from botocore.exceptions import BotoCoreError, ClientError

from forge_remote.errors import DeliveryInProgress, MalformedEvent, ServiceUnavailable
from forge_remote.events_intake import EventIntake
from forge_remote.fit import Invocation
from forge_remote.http_api import verify_then_route
from forge_remote.payloads import LIFECYCLE_EVENTS, decode_body, json_object, parse_event
from forge_remote.runtime import Runtime

logger = Logger()
metrics = Metrics()
app = APIGatewayHttpResolver()
runtime = Runtime.from_env()
intake = EventIntake(runtime.settings)


def _invocation() -> Invocation:
    invocation: Invocation = app.context["invocation"]
    return invocation


def _event_body() -> dict[str, Any]:
    event = app.current_event
    return json_object(decode_body(event.body, bool(event.is_base64_encoded)))


def _capture(invocation: Invocation) -> dict[str, str]:
    outcomes = runtime.capture_tokens(invocation)
    if outcomes.get("system") == "stored":
        metrics.add_metric(name="TokensStored", unit=MetricUnit.Count, value=1)
    return outcomes


def _json(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> Response[str]:
    return Response(status_code=status, content_type="application/json", body=json.dumps(body), headers=headers)


@app.post("/forge/lifecycle")
def lifecycle() -> Response[str]:
    invocation = _invocation()
    event = parse_event(_event_body())
    if event.event_type not in LIFECYCLE_EVENTS:
        logger.warning("ignoring non-lifecycle event on /forge/lifecycle", extra={"event_type": event.event_type})
        return _json(200, {"ignored": event.event_type, "tokens": _capture(invocation)})
    recorded = runtime.installations.record_lifecycle(invocation, event.event_type)
    if not recorded:
        logger.warning("lifecycle event for an uninstalled installation ignored")
        return _json(200, {"installation": "uninstalled", "ignored": event.event_type})
    logger.info("installation recorded", extra={"event_type": event.event_type})
    return _json(200, {"installation": "active", "event": event.event_type, "tokens": _capture(invocation)})


@app.post("/forge/uninstall")
def uninstall() -> Response[str]:
    invocation = _invocation()
    # Mark first, then delete: a token write racing us either lands before the mark (and is deleted
    # below) or fails its "still installed" condition.
    runtime.installations.mark_uninstalled(invocation.installation_id)
    deleted = runtime.tokens.delete_installation(invocation.installation_id)
    logger.info("installation uninstalled", extra={"tokens_deleted": deleted})
    metrics.add_metric(name="Uninstalls", unit=MetricUnit.Count, value=1)
    return _json(200, {"installation": "uninstalled", "tokensDeleted": deleted})


@app.post("/forge/keepalive")
def keepalive() -> Response[str]:
    outcomes = _capture(_invocation())
    logger.info("keepalive", extra={"tokens": outcomes})
    return Response(status_code=204)


@app.post("/forge/events")
def product_event() -> Response[str]:
    invocation = _invocation()
    event = parse_event(_event_body())
    outcomes = _capture(invocation)
    result = intake.accept(invocation, event, app.context.get("lambda_context"))
    logger.info(
        "product event",
        extra={"event_type": event.event_type, "retry": event.retry_count, "jobs": result, "tokens": outcomes},
    )
    return _json(202, {"event": event.event_type, **result})


@app.exception_handler(MalformedEvent)
def malformed(exc: MalformedEvent) -> Response[str]:
    logger.warning("malformed request body", extra={"reason": str(exc)})
    return _json(400, {"error": "bad_request", "message": str(exc)})


@app.exception_handler(DeliveryInProgress)
def in_progress(exc: DeliveryInProgress) -> Response[str]:
    # Forge retries non-2xx deliveries: the retry finds the first one finished and answers its result.
    logger.info("duplicate delivery while the first is in progress")
    return _json(409, {"error": "in_progress", "message": str(exc)}, {"Retry-After": "60"})


@app.exception_handler([BotoCoreError, ClientError, ServiceUnavailable])
def aws_unavailable(exc: Exception) -> Response[str]:
    # After botocore's own retries: tell Forge to retry later instead of crashing with a 500.
    logger.error("AWS dependency failed", extra={"error": type(exc).__name__})
    body = {"error": "unavailable", "message": "storage temporarily unavailable; retry later"}
    return _json(503, body, {"Retry-After": "30"})


@logger.inject_lambda_context(correlation_id_path='headers."x-b3-traceid"')
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return verify_then_route(event, context, runtime.verifier, app)
