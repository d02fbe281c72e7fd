"""The job scheduler: on an EventBridge schedule, one job request per active installation.

Pages through the ``ActiveInstallations`` index (never a scan, never a token item) and puts the
requests on the jobs bus ten at a time. The schedule's input names the job and its arguments:
``{"job": "space-digest", "args": {...}}``.

``{"task": "cleanup-sweep"}`` instead finishes the data cleanup of uninstalled installations that an
uninstall call could not finish in its own time (the index's ``CLEANUP`` partition, see ``lifecycle/cleanup.py``),
as long as this invocation's time allows; what is left waits for the next sweep.

``{"task": "token-census"}`` counts the active installations and those holding an app token a job could
take now (its expiry is all that is read), as the ``ActiveInstallations`` and
``InstallationsWithUsableToken`` gauges: the dashboard's token health, and the alarm when keepalives stop.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from forge_remote import aws
from forge_remote.config import Settings
from forge_remote.jobs.scheduling import schedule_for_all
from forge_remote.lifecycle.cleanup import InstallationCleanup, retention_days_setting
from forge_remote.storage.installations import InstallationRegistry
from forge_remote.telemetry.logs import use_function_logger
from forge_remote.tokens.store import TokenStore

logger = Logger()
use_function_logger(logger)
metrics = Metrics()
settings = Settings.from_env()
JOBS_BUS = settings.required("jobs_bus")
_dynamodb = aws.dynamodb()
installations = InstallationRegistry(_dynamodb, settings.app_table)
tokens = TokenStore(_dynamodb, settings.tokens_table)
cleanup = InstallationCleanup(
    _dynamodb, tokens=tokens, installations=installations, retention_days=retention_days_setting()
)
CLEANUP_SWEEP = "cleanup-sweep"
TOKEN_CENSUS = "token-census"  # noqa: S105 (a task name)
SWEEP_MARGIN_MS = 10_000  # left of the invocation when the sweep stops starting installations


def sweep(context: LambdaContext) -> dict[str, Any]:
    """Continue every pending cleanup, one installation after the other, while time allows."""
    finished = pending = 0
    for ids in installations.iter_cleanup_pending_ids():
        for installation_id in ids:
            if context.get_remaining_time_in_millis() < SWEEP_MARGIN_MS:
                pending += 1
                continue
            report = cleanup.resume(installation_id, remaining_ms=context.get_remaining_time_in_millis)
            if report.complete:
                finished += 1
            else:
                pending += 1
    return {"task": CLEANUP_SWEEP, "finished": finished, "pending": pending}


def token_census() -> dict[str, Any]:
    """Active installations, and how many of them hold an app token valid long enough for a job."""
    active = holding = 0
    for ids in installations.iter_active_ids():
        active += len(ids)
        holding += tokens.count_usable(ids, settings.token_min_validity_s)
    return {"task": TOKEN_CENSUS, "activeInstallations": active, "installationsWithUsableToken": holding}


@logger.inject_lambda_context
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    if isinstance(event, dict) and event.get("task") == CLEANUP_SWEEP:
        result = sweep(context)
        metrics.add_metric(name="CleanupsFinished", unit=MetricUnit.Count, value=result["finished"])
        logger.info("cleanup sweep", extra=result)
        return result
    if isinstance(event, dict) and event.get("task") == TOKEN_CENSUS:
        census = token_census()
        metrics.add_metric(name="ActiveInstallations", unit=MetricUnit.Count, value=census["activeInstallations"])
        metrics.add_metric(
            name="InstallationsWithUsableToken", unit=MetricUnit.Count, value=census["installationsWithUsableToken"]
        )
        logger.info("token census", extra=census)
        return census
    job = event.get("job") if isinstance(event, dict) else None
    args = event.get("args", {}) if isinstance(event, dict) else {}
    if not isinstance(job, str) or not isinstance(args, dict):
        # A misconfigured schedule: fail loudly (Scheduler retries, then its DLQ/alarms) rather than no-op.
        metrics.add_metric(name="ScheduleInputsRefused", unit=MetricUnit.Count, value=1)
        raise ValueError(
            "schedule input must be {'job': <name>, 'args': {...}} or {'task': 'cleanup-sweep' | 'token-census'}"
        )
    report = schedule_for_all(installations, aws.events(), JOBS_BUS, job, args)
    metrics.add_metric(name="JobsScheduled", unit=MetricUnit.Count, value=report.requested)
    logger.info("jobs scheduled", extra={"job": job, **report.as_dict()})
    return report.as_dict()
