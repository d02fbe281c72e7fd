"""What every handler factory returns: the function's Lambda handler, with its parts as attributes.

``lambda_handler = worker_handler(jobs="my_jobs")`` is all a function's ``app.py`` needs: Lambda calls
the object as it would a function, and tests and the local stack reach its parts (``.runner``,
``.app``, ``.wiring``) without a module-level global for each.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from aws_lambda_powertools import Logger, Metrics
    from aws_lambda_powertools.utilities.batch import BatchProcessor

Handler = Callable[[dict[str, Any], Any], dict[str, Any]]


def import_modules(package: str) -> tuple[ModuleType, ...]:
    """Every module of the app's ``package`` (its jobs, its routes), imported in name order, so what they
    register is the same on every cold start, and adding a module needs no list edited."""
    root = importlib.import_module(package)
    names = sorted(info.name for info in pkgutil.iter_modules(getattr(root, "__path__", [])))
    return tuple(importlib.import_module(f"{package}.{name}") for name in names)


def batch_handler(
    logger: Logger, metrics: Metrics, processor: BatchProcessor, record_handler: Callable[..., None]
) -> Handler:
    """A Lambda handler for a batch event source (SQS, a DynamoDB stream) with partial batch failures:
    each record through ``record_handler``; metrics published only if some were recorded."""
    from aws_lambda_powertools.utilities.batch import process_partial_response

    from forge_remote.telemetry.logs import invocation_logging, publishing_recorded_metrics

    @invocation_logging(logger)
    def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        with publishing_recorded_metrics(metrics):
            response = process_partial_response(
                event=event, record_handler=record_handler, processor=processor, context=context
            )
        return dict(response)

    return lambda_handler


class LambdaHandler:
    def __init__(self, handler: Handler) -> None:
        self._handler = handler

    def __call__(self, event: dict[str, Any], context: Any) -> dict[str, Any]:
        return self._handler(event, context)

    def lambda_handler(self, event: dict[str, Any], context: Any) -> dict[str, Any]:
        """The same call, by the name Lambda's ``Handler: app.lambda_handler`` gives it."""
        return self._handler(event, context)
