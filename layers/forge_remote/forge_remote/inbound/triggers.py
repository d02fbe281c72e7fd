"""Forge's trigger routes: lifecycle, uninstall, product events, keepalive, and the data residency
migration hooks (``/forge/migration/schedule|start|status|commit|rollback``).

Every route verifies the FIT first (and that it is a trigger's call), stores the delivered tokens,
does its one thing and answers well inside Forge's 5 s. Product events become job requests, once per
delivery, as the app's ``events`` mapping says (``jobs/intake.py``).

Uninstall marks the installation uninstalled, deletes its tokens, then removes the rest of its data
as time allows. If that throws, or does not finish in time, the FIT's "acted once" mark is released
and the answer is not a success, so Forge retries with the same FIT and the retry (or the scheduled
sweep) continues where this one stopped.

The migration hooks are bound to the manifest's ``migration:dataResidency`` module like the other
routes to theirs (``FORGE_TRIGGER_MODULES``). They store no token (the destination stack gets fresh
ones from Forge; this one deletes its own at the commit) and do what ``lifecycle/migration.py`` says,
which is loaded with the first hook call, off the cold start of the keepalives and events. Why here and
not in a function of their own: they are Forge calls of the same kind (a FIT, no user, answered in
seconds), and a sixth function would bring its own alarms, logs and runbook for five rare calls; what a
function of its own would have kept apart is the role's grant on the peer tables, which is granted only
when ``PeerAppTables`` names some, on exactly those ARNs.

A call for an installation that a realm migration moved to another stack is refused (409 ``moved``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from forge_remote import aws
from forge_remote.errors import InstallationMoved
from forge_remote.forge.call_kinds import MIGRATION_PATH
from forge_remote.forge.payloads import LIFECYCLE_EVENTS, decode_body, json_object, parse_event
from forge_remote.handler import LambdaHandler
from forge_remote.inbound.api import invocation, register_error_handlers, require_fit
from forge_remote.inbound.wiring import HttpWiring
from forge_remote.jobs.intake import EventIntake, EventJob
from forge_remote.lifecycle.realms import Residency
from forge_remote.lifecycle.retention import retention_days_setting
from forge_remote.storage.installations import InstallationStatus
from forge_remote.telemetry.logs import invocation_logging, publishing_recorded_metrics, use_function_logger

if TYPE_CHECKING:
    from aws_lambda_powertools import Logger
    from aws_lambda_powertools.event_handler import Response
    from aws_lambda_powertools.utilities.typing import LambdaContext

    from forge_remote.forge.invocations import Invocation
    from forge_remote.lifecycle.cleanup import InstallationCleanup
    from forge_remote.lifecycle.migration import HookAnswer, RealmMigration

# What each trigger route's call is, as the status page names where the last token came from.
_DELIVERED_BY = {"/forge/lifecycle": "lifecycle", "/forge/keepalive": "keepalive", "/forge/events": "event"}


class TriggersHandler(LambdaHandler):
    """The trigger function's Lambda handler: ``lambda_handler = triggers_handler(events={...})``."""

    def __init__(
        self,
        wiring: HttpWiring,
        intake: EventIntake,
        cleanup: Callable[[], InstallationCleanup],
        logger: Logger | None = None,
        *,
        residency: Residency | None = None,
    ) -> None:
        """``cleanup`` makes the uninstall's cleanup when the first uninstall comes: its modules stay off
        the cold start of the calls this function mostly answers (keepalives, events). ``residency`` is
        this stack's realm and its peers (none: every migration out of it is refused, E0001)."""
        from aws_lambda_powertools import Logger, Metrics
        from aws_lambda_powertools.event_handler import APIGatewayHttpResolver

        self.wiring, self.intake, self._make_cleanup = wiring, intake, cleanup
        self._cleanup: InstallationCleanup | None = None
        self.residency = residency or Residency()
        self._migration: RealmMigration | None = None
        self.logger = logger or Logger()
        use_function_logger(self.logger)
        self.metrics = Metrics()
        self.app = APIGatewayHttpResolver()
        self.app.use([require_fit(wiring.verifier, wiring.trigger_modules)])
        register_error_handlers(self.app)
        self.app.post("/forge/lifecycle")(self.lifecycle)
        self.app.post("/forge/uninstall")(self.uninstall)
        self.app.post("/forge/keepalive")(self.keepalive)
        self.app.post("/forge/events")(self.product_event)
        self.app.post(f"{MIGRATION_PATH}/schedule")(self.migration_schedule)
        self.app.post(f"{MIGRATION_PATH}/start")(self.migration_start)
        self.app.get(f"{MIGRATION_PATH}/status")(self.migration_status)
        self.app.post(f"{MIGRATION_PATH}/commit")(self.migration_commit)
        self.app.post(f"{MIGRATION_PATH}/rollback")(self.migration_rollback)

        @invocation_logging(self.logger, correlation_id_path='headers."x-b3-traceid"')
        def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
            with publishing_recorded_metrics(self.metrics):  # a rejected call records nothing
                return self.app.resolve(event, context)

        super().__init__(lambda_handler)

    @property
    def cleanup(self) -> InstallationCleanup:
        if self._cleanup is None:
            self._cleanup = self._make_cleanup()
        return self._cleanup

    @property
    def migration(self) -> RealmMigration:
        """The realm migration's hooks, made when the first hook call comes."""
        if self._migration is None:
            from forge_remote.lifecycle.migration import RealmMigration
            from forge_remote.storage.migrations import MigrationStore

            wiring = self.wiring
            self._migration = RealmMigration(
                source=wiring.dynamodb,
                app_table=wiring.settings.app_table,
                registry=wiring.installations,
                store=MigrationStore(wiring.dynamodb, wiring.settings.app_table, wiring.installations),
                cleanup=lambda: self.cleanup,
                residency=self.residency,
                destination_client=aws.dynamodb_in,
                record=self._add_metric,
            )
        return self._migration

    def _event_body(self) -> dict[str, Any]:
        event = self.app.current_event
        return json_object(decode_body(event.body, bool(event.is_base64_encoded)))

    def _capture(self, call: Invocation) -> dict[str, str]:
        outcomes = self.wiring.capture_tokens(call, delivered_by=_DELIVERED_BY.get(self.app.current_event.path))
        if outcomes.get("system") == "stored":
            self._count("TokensStored")
        return outcomes

    def _count(self, name: str) -> None:
        self._add_metric(name, 1)

    def _add_metric(self, name: str, value: int) -> None:
        from aws_lambda_powertools.metrics import MetricUnit

        self.metrics.add_metric(name=name, unit=MetricUnit.Count, value=value)

    def lifecycle(self) -> dict[str, Any]:
        call = invocation(self.app)
        event = parse_event(self._event_body())
        if event.event_type not in LIFECYCLE_EVENTS:
            self.logger.warning(
                "ignoring non-lifecycle event on /forge/lifecycle", extra={"event_type": event.event_type}
            )
            return {"ignored": event.event_type, "tokens": self._capture(call)}
        if not self.wiring.record_lifecycle(call, event.event_type):
            self.wiring.refuse_if_moved(call.installation_id)
            self.logger.warning("lifecycle event for an uninstalled installation ignored")
            return {"installation": "uninstalled", "ignored": event.event_type}
        self.logger.info("installation recorded", extra={"event_type": event.event_type})
        return {"installation": "active", "event": event.event_type, "tokens": self._capture(call)}

    def uninstall(self) -> tuple[dict[str, Any], int]:
        call = invocation(self.app)
        installations = self.wiring.installations
        self.wiring.refuse_if_moved(call.installation_id)  # its data here is the migration's purge's
        if not installations.act_once(call.installation_id, call.invocation_id):
            self.logger.warning("uninstall FIT replayed; nothing done")
            return {"installation": "unchanged", "replayed": True}, 200
        try:
            # Mark first, then delete: a token write racing us either lands before the mark (and is deleted
            # below) or fails its "still installed" condition. Then the rest of the data, as time allows.
            report = self.cleanup.uninstall(
                call.installation_id, remaining_ms=self.app.lambda_context.get_remaining_time_in_millis
            )
        except Exception:
            with contextlib.suppress(Exception):  # best effort: the error below is what Forge must see
                installations.release_once(call.installation_id, call.invocation_id)
            raise
        self.logger.info("installation uninstalled", extra=report.as_dict())
        self._count("Uninstalls")
        if not report.complete:
            # Tokens are gone and nothing runs for the installation any more; the rest of its data is
            # still being removed. Not a success, so Forge retries (this FIT may act again).
            with contextlib.suppress(Exception):
                installations.release_once(call.installation_id, call.invocation_id)
            return {"installation": "uninstalled", **report.as_dict()}, 503
        return {"installation": "uninstalled", **report.as_dict()}, 200

    def keepalive(self) -> Response[str]:
        from aws_lambda_powertools.event_handler import Response

        outcomes = self._capture(invocation(self.app))
        self.logger.info("keepalive", extra={"tokens": outcomes})
        return Response(status_code=204)

    def product_event(self) -> tuple[dict[str, Any], int]:
        call = invocation(self.app)
        event = parse_event(self._event_body())
        installation = self.wiring.installations.get(call.installation_id)
        if installation is not None and installation.status == InstallationStatus.MOVED:
            raise InstallationMoved(installation.moved_to)
        if installation is not None and not installation.active:
            # Acknowledged, so Forge stops retrying, but no job: nothing may run for an uninstalled site.
            self.logger.info(
                "product event for an uninstalled installation ignored", extra={"event_type": event.event_type}
            )
            return {"event": event.event_type, "jobs": 0, "ignored": "installation uninstalled"}, 200
        outcomes = self._capture(call)
        result = self.intake.accept(call, event, self.app.lambda_context)
        self.logger.info(
            "product event",
            extra={"event_type": event.event_type, "retry": event.retry_count, "jobs": result, "tokens": outcomes},
        )
        return {"event": event.event_type, **result}, 202

    # -- the data residency migration hooks (lifecycle/migration.py)
    def _hook(self, hook: str, answer: HookAnswer) -> Response[Any]:
        from aws_lambda_powertools.event_handler import Response, content_types

        self.logger.info(
            "realm migration hook",
            extra={"hook": hook, "status": answer.status, "state": answer.body.get("state")},
        )
        headers = {"Retry-After": str(answer.retry_after_s)} if answer.retry_after_s else {}
        return Response(answer.status, content_types.APPLICATION_JSON, answer.body, headers)

    def _remaining_ms(self) -> int:
        return int(self.app.lambda_context.get_remaining_time_in_millis())

    def migration_schedule(self) -> Response[Any]:
        from forge_remote.forge.migration_hooks import migration_window

        call, window = invocation(self.app), migration_window(self._event_body())
        return self._hook("schedule", self.migration.schedule(call.installation_id, window))

    def migration_start(self) -> Response[Any]:
        from forge_remote.forge.migration_hooks import migration_window

        call, window = invocation(self.app), migration_window(self._event_body())
        return self._hook("start", self.migration.start(call.installation_id, window, self._remaining_ms))

    def migration_status(self) -> Response[Any]:
        from forge_remote.forge.migration_hooks import migration_id

        call = invocation(self.app)
        wanted = migration_id(self.app.current_event.get_query_string_value("migrationId"))
        return self._hook("status", self.migration.status(call.installation_id, wanted, self._remaining_ms))

    def migration_commit(self) -> Response[Any]:
        from forge_remote.forge.migration_hooks import migration_id

        call, wanted = invocation(self.app), migration_id(self._event_body().get("migrationId"))
        return self._hook("commit", self.migration.commit(call.installation_id, wanted, self._remaining_ms))

    def migration_rollback(self) -> Response[Any]:
        from forge_remote.forge.migration_hooks import migration_id

        call, wanted = invocation(self.app), migration_id(self._event_body().get("migrationId"))
        return self._hook("rollback", self.migration.rollback(call.installation_id, wanted, self._remaining_ms))


def triggers_handler(*, events: Mapping[str, EventJob]) -> TriggersHandler:
    """The trigger function's Lambda handler, built once per container from the environment.

    ``events`` is the app's product event -> job mapping: an event type to the job it requests, either
    a job name (its arguments are the page the event is about, for page events; none otherwise) or a
    function ``(ForgeEvent) -> (job, args) | None`` (None: acknowledged, no job). Events not in the
    mapping are acknowledged and request nothing.
    """
    from aws_lambda_powertools import Logger

    logger = Logger()
    use_function_logger(logger)  # before the first boto3 client: its log records go through it
    wiring = HttpWiring.from_env()
    intake = EventIntake(
        app_table=wiring.settings.app_table, jobs_queue_url=wiring.settings.required("jobs_queue_url"), events=events
    )
    retention_days = retention_days_setting()  # read now: a bad setting fails the cold start, not an uninstall
    residency = Residency.from_env()  # DATA_REALM, PEER_APP_TABLES: likewise

    def cleanup() -> InstallationCleanup:
        from forge_remote.lifecycle.cleanup import InstallationCleanup

        return InstallationCleanup(
            aws.dynamodb(), tokens=wiring.tokens, installations=wiring.installations, retention_days=retention_days
        )

    return TriggersHandler(wiring, intake, cleanup, logger, residency=residency)
