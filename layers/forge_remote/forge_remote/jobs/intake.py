"""Product events to job requests, exactly once per Forge delivery.

Which event requests which job is the app's configuration (``events``, given to ``triggers_handler``):
an event type maps to a job name, whose arguments are then the page the event is about
(``{"pageId", "spaceKey", "version"}``) for a page event and ``{}`` for any other, or to a function
``(ForgeEvent) -> (job, args) | None``.

Forge retries an event up to 4 times (60 s apart) and may deliver duplicates; retries differ only
in ``retryContext``. Powertools idempotency, keyed by the installation and the event without its
``retryContext``, makes each delivery send its job request to the jobs queue once. It is imported on the
first page event only, keeping it off the cold start of every other route.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeAlias

from forge_remote import aws
from forge_remote.errors import DeliveryInProgress, ServiceUnavailable
from forge_remote.forge.invocations import Invocation
from forge_remote.forge.payloads import PAGE_EVENTS, ForgeEvent, page_ref
from forge_remote.storage.table_keys import EVENTS_IDEMPOTENCY_PK

EventJob: TypeAlias = "str | Callable[[ForgeEvent], tuple[str, dict[str, Any]] | None]"
DEDUP_WINDOW_S = 3600  # Forge retries for ~4 minutes and events lag up to 3: an hour is ample


class EventIntake:
    def __init__(self, *, app_table: str, jobs_queue_url: str, events: Mapping[str, EventJob]) -> None:
        self._app_table = app_table
        self._jobs_queue_url = jobs_queue_url
        self._events = dict(events)
        self._enqueue: Callable[..., dict[str, Any]] | None = None
        self._config: Any = None

    def accept(self, invocation: Invocation, event: ForgeEvent, lambda_context: Any = None) -> dict[str, Any]:
        """The job request this event maps to, sent to the jobs queue once per delivery; others are acknowledged."""
        wanted = self.job_for(event)
        if wanted is None:
            return {"jobs": 0}
        job, args = wanted
        enqueue = self._enqueue_once()
        if lambda_context is not None:
            self._config.register_lambda_context(lambda_context)
        delivery = {
            "installationId": invocation.installation_id,
            "dedupKey": event.dedup_key,
            "job": job,
            "args": args,
            "eventType": event.event_type,
        }
        from aws_lambda_powertools.utilities.idempotency.exceptions import (
            IdempotencyAlreadyInProgressError,
            IdempotencyPersistenceLayerError,
        )

        try:
            return enqueue(delivery=delivery)
        except IdempotencyAlreadyInProgressError as exc:
            raise DeliveryInProgress("this delivery is being processed; retry later") from exc
        except IdempotencyPersistenceLayerError as exc:
            raise ServiceUnavailable("idempotency store unavailable") from exc

    def job_for(self, event: ForgeEvent) -> tuple[str, dict[str, Any]] | None:
        """The job and arguments ``event`` requests, or None (not mapped, or the mapping said none)."""
        wanted = self._events.get(event.event_type)
        if wanted is None:
            return None
        if callable(wanted):
            return wanted(event)
        page = page_ref(event)
        if page is None:
            # A page event that names no page cannot be about one; any other event takes no arguments.
            return None if event.event_type in PAGE_EVENTS else (wanted, {})
        return wanted, {"pageId": page.page_id, "spaceKey": page.space_key, "version": page.version}

    def _enqueue_once(self) -> Callable[..., dict[str, Any]]:
        if self._enqueue is not None:
            return self._enqueue
        queue_url = self._jobs_queue_url
        from aws_lambda_powertools.utilities.idempotency import (
            IdempotencyConfig,
            idempotent_function,
        )

        from forge_remote.storage.idempotency import app_table_store

        store = app_table_store(self._app_table, EVENTS_IDEMPOTENCY_PK)
        self._config = IdempotencyConfig(
            event_key_jmespath="[installationId, dedupKey]", expires_after_seconds=DEDUP_WINDOW_S
        )

        @idempotent_function(data_keyword_argument="delivery", persistence_store=store, config=self._config)  # type: ignore[untyped-decorator]
        def enqueue(delivery: dict[str, Any]) -> dict[str, Any]:
            installation_id = delivery["installationId"]
            from forge_remote.jobs.contract import JobRequest, send_job_requests  # off the cold start of other routes

            request = JobRequest(job=delivery["job"], installation_id=installation_id, args=delivery["args"])
            send_job_requests(aws.sqs(), queue_url, [request])
            return {"jobs": 1, "requestId": request.request_id}

        self._enqueue = enqueue
        return self._enqueue
