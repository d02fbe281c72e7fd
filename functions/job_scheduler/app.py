"""The job scheduler: on an EventBridge schedule, one job request per active installation.

Pages through the ``ActiveInstallations`` index (never a scan, never a token item) and puts the
requests on the jobs bus ten at a time. The schedule's input names the job and its arguments:
``{"job": "space-digest", "args": {...}}``.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from forge_remote import aws
from forge_remote.config import Settings
from forge_remote.installations import InstallationRegistry
from forge_remote.logs import use_function_logger
from forge_remote.scheduling import schedule_for_all

logger = Logger()
use_function_logger(logger)
metrics = Metrics()
settings = Settings.from_env()
JOBS_BUS = settings.required("jobs_bus")
installations = InstallationRegistry(aws.dynamodb(), settings.app_table)


@logger.inject_lambda_context
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    job = event.get("job") if isinstance(event, dict) else None
    args = event.get("args", {}) if isinstance(event, dict) else {}
    if not isinstance(job, str) or not isinstance(args, dict):
        # A misconfigured schedule: fail loudly (Scheduler retries, then its DLQ/alarms) rather than no-op.
        raise ValueError("schedule input must be {'job': <name>, 'args': {...}}")
    report = schedule_for_all(installations, aws.events(), JOBS_BUS, job, args)
    metrics.add_metric(name="JobsScheduled", unit=MetricUnit.Count, value=report.requested)
    logger.info("jobs scheduled", extra={"job": job, **report.as_dict()})
    return report.as_dict()
