"""The scheduler function: what each EventBridge Scheduler schedule's input asks for.

- ``{"job": "space-digest", "args": {...}, "spreadMinutes": 60}``: one job request per active
  installation, paged through the ``ActiveInstallations`` index (never a scan, never a token item),
  sent straight to the jobs queue ten per SendMessageBatch call (``jobs/contract.py``: each message's
  group is its installation). ``args`` is optional (``{}``); so is ``spreadMinutes`` (0 to 720,
  default 0): the requests are spread over that many minutes from now, each installation at a stable
  slot of the window with a little jitter (``jobs/scheduling.py``), so that the fleet's work does not
  all start at once against Atlassian's hourly quotas.
- ``{"task": "cleanup-sweep"}``: finish the data cleanup of uninstalled installations that an
  uninstall call could not finish in its own time (``lifecycle/cleanup.py``), and of installations a
  realm migration moved to another stack, while time allows; what is left waits for the next sweep.
  It also gives the scheduler back installations whose realm migration's hold lapsed with neither a
  commit nor a rollback (``holdsReleased``, in the answer when there were any).
- ``{"task": "token-census"}``: count the active installations and those holding an app token a job
  could take now (its expiry is all that is read): the ``ActiveInstallations`` and
  ``InstallationsWithUsableToken`` gauges behind the dashboard and the keepalive alarm.

Any other input fails the invocation loudly (a misconfigured schedule), so Scheduler's retries and
alarms see it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from forge_remote import aws
from forge_remote.handler import LambdaHandler
from forge_remote.jobs.scheduling import schedule_for_all

if TYPE_CHECKING:
    from aws_lambda_powertools import Logger, Metrics
    from aws_lambda_powertools.utilities.typing import LambdaContext

    from forge_remote.lifecycle.cleanup import InstallationCleanup
    from forge_remote.storage.installations import InstallationRegistry
    from forge_remote.tokens.store import TokenStore

CLEANUP_SWEEP = "cleanup-sweep"
TOKEN_CENSUS = "token-census"  # noqa: S105 (a task name)
SWEEP_MARGIN_MS = 10_000  # left of the invocation when the sweep stops starting installations
MAX_SPREAD_MINUTES = 720  # a schedule's requests are spread over at most 12 hours


def spread_minutes(value: object) -> float:
    """A schedule input's ``spreadMinutes``: absent is 0; else a number from 0 to 720 (``ValueError``)."""
    if value is None:
        return 0.0
    # The range check also refuses NaN and infinities (and integers too long for a float).
    if not isinstance(value, int | float) or isinstance(value, bool) or not 0 <= value <= MAX_SPREAD_MINUTES:
        raise ValueError(f"schedule input's spreadMinutes must be a number of minutes from 0 to {MAX_SPREAD_MINUTES}")
    return float(value)


@dataclass
class ScheduledTasks:
    installations: InstallationRegistry
    tokens: TokenStore
    cleanup: InstallationCleanup
    jobs_queue_url: str
    token_min_validity_s: float
    logger: Logger
    metrics: Metrics

    def run(self, event: object, context: LambdaContext) -> dict[str, Any]:
        """Do what the schedule's input asks (module docstring); raise ``ValueError`` for any other input."""
        task = event.get("task") if isinstance(event, dict) else None
        tasks: dict[str, Callable[[LambdaContext], dict[str, Any]]] = {
            CLEANUP_SWEEP: self.sweep,
            TOKEN_CENSUS: self.token_census,
        }
        if isinstance(task, str) and task in tasks:
            return tasks[task](context)
        job = event.get("job") if isinstance(event, dict) else None
        args = event.get("args", {}) if isinstance(event, dict) else {}
        if task is not None or not isinstance(job, str) or not isinstance(args, dict):
            # A misconfigured schedule: fail loudly (Scheduler retries, then its DLQ/alarms) rather than no-op.
            self._gauge("ScheduleInputsRefused", 1)
            named = " | ".join(map(repr, tasks))
            wanted = "{'job': <name>, 'args': {...}, 'spreadMinutes': 0-720}"
            raise ValueError(f"schedule input must be {wanted} or {{'task': {named}}}")
        try:
            spread_s = 60 * spread_minutes(event.get("spreadMinutes") if isinstance(event, dict) else None)
        except ValueError:
            self._gauge("ScheduleInputsRefused", 1)
            raise
        report = schedule_for_all(self.installations, aws.sqs(), self.jobs_queue_url, job, args, spread_s=spread_s)
        self._gauge("JobsScheduled", report.requested)
        self.logger.info("jobs scheduled", extra={"job": job, **report.as_dict()})
        return report.as_dict()

    def sweep(self, context: LambdaContext) -> dict[str, Any]:
        """Continue every pending cleanup, one installation after the other, while time allows."""
        finished = pending = 0
        for ids in self.installations.iter_cleanup_pending_ids():
            for installation_id in ids:
                if context.get_remaining_time_in_millis() < SWEEP_MARGIN_MS:
                    pending += 1
                    continue
                report = self.cleanup.resume(installation_id, remaining_ms=context.get_remaining_time_in_millis)
                if report.complete:
                    finished += 1
                else:
                    pending += 1
        result: dict[str, Any] = {"task": CLEANUP_SWEEP, "finished": finished, "pending": pending}
        released = self._release_lapsed_holds()
        if released:
            result["holdsReleased"] = released
        self._gauge("CleanupsFinished", finished)
        self.logger.info("cleanup sweep", extra=result)
        return result

    def _release_lapsed_holds(self) -> int:
        """Installations still out of the scheduler's sight for a migration whose hold has ended."""
        released = 0
        for ids in self.installations.iter_held_ids():
            released += sum(self.installations.release_lapsed_hold(installation_id) for installation_id in ids)
        return released

    def token_census(self, _context: LambdaContext | None = None) -> dict[str, Any]:
        """Active installations, and how many of them hold an app token valid long enough for a job."""
        active = holding = 0
        for ids in self.installations.iter_active_ids():
            active += len(ids)
            holding += self.tokens.count_usable(ids, self.token_min_validity_s)
        census = {"task": TOKEN_CENSUS, "activeInstallations": active, "installationsWithUsableToken": holding}
        self._gauge("ActiveInstallations", active)
        self._gauge("InstallationsWithUsableToken", holding)
        self.logger.info("token census", extra=census)
        return census

    def _gauge(self, name: str, value: int) -> None:
        from aws_lambda_powertools.metrics import MetricUnit

        self.metrics.add_metric(name=name, unit=MetricUnit.Count, value=value)


class SchedulerHandler(LambdaHandler):
    """The scheduler function's Lambda handler: ``lambda_handler = scheduler_handler()``."""

    def __init__(self, tasks: ScheduledTasks) -> None:
        from forge_remote.telemetry.logs import invocation_logging

        self.tasks = tasks

        @invocation_logging(tasks.logger)
        @tasks.metrics.log_metrics
        def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
            return tasks.run(event, context)

        super().__init__(lambda_handler)

    @property
    def cleanup(self) -> InstallationCleanup:
        return self.tasks.cleanup


def scheduler_handler() -> SchedulerHandler:
    """The scheduler's Lambda handler, built once per container from the environment."""
    from aws_lambda_powertools import Logger, Metrics

    from forge_remote.lifecycle.cleanup import InstallationCleanup
    from forge_remote.lifecycle.retention import retention_days_setting
    from forge_remote.telemetry.logs import use_function_logger
    from forge_remote.wiring import Wiring

    logger = Logger()
    use_function_logger(logger)
    wiring = Wiring.from_env()
    settings, installations, tokens = wiring.settings, wiring.installations, wiring.tokens
    cleanup = InstallationCleanup(
        wiring.dynamodb, tokens=tokens, installations=installations, retention_days=retention_days_setting()
    )
    return SchedulerHandler(
        ScheduledTasks(
            installations=installations,
            tokens=tokens,
            cleanup=cleanup,
            jobs_queue_url=settings.required("jobs_queue_url"),
            token_min_validity_s=settings.token_min_validity_s,
            logger=logger,
            metrics=Metrics(),
        )
    )
