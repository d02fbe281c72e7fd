"""Product events to job requests, exactly once per Forge delivery.

Forge retries an event up to 4 times (60 s apart) and may deliver duplicates; retries differ only
in ``retryContext``. Powertools idempotency, keyed by the installation and the event without its
``retryContext``, makes each delivery put its job requests on the bus once. It is imported on the
first page event only, keeping it off the cold start of every other route.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from forge_remote import aws
from forge_remote.errors import DeliveryInProgress, ServiceUnavailable
from forge_remote.forge.invocations import Invocation
from forge_remote.forge.payloads import ForgeEvent, page_ref
from forge_remote.storage.table_keys import EVENTS_IDEMPOTENCY_PK

PAGE_SNAPSHOT_JOB = "page-snapshot"
DEDUP_WINDOW_S = 3600  # Forge retries for ~4 minutes and events lag up to 3: an hour is ample


class EventIntake:
    def __init__(self, *, app_table: str, jobs_bus: str) -> None:
        self._app_table = app_table
        self._jobs_bus = jobs_bus
        self._enqueue: Callable[..., dict[str, Any]] | None = None
        self._config: Any = None

    def accept(self, invocation: Invocation, event: ForgeEvent, lambda_context: Any = None) -> dict[str, Any]:
        """Job requests for this event (page created/updated -> ``page-snapshot``); others are acknowledged."""
        page = page_ref(event)
        if page is None:
            return {"jobs": 0}
        enqueue = self._enqueue_once()
        if lambda_context is not None:
            self._config.register_lambda_context(lambda_context)
        delivery = {
            "installationId": invocation.installation_id,
            "dedupKey": event.dedup_key,
            "args": {"pageId": page.page_id, "spaceKey": page.space_key, "version": page.version},
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

    def _enqueue_once(self) -> Callable[..., dict[str, Any]]:
        if self._enqueue is not None:
            return self._enqueue
        bus = self._jobs_bus
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
            from forge_remote.jobs.contract import JobRequest, put_job_requests  # off the cold start of other routes

            request = JobRequest(job=PAGE_SNAPSHOT_JOB, installation_id=installation_id, args=delivery["args"])
            put_job_requests(aws.events(), bus, [request])
            return {"jobs": 1, "requestId": request.request_id}

        self._enqueue = enqueue
        return self._enqueue
