"""forge_remote: build a Forge app's remote backend on AWS Lambda.

What a team writes its app with is here (``__all__``); everything else in the sub-packages is
reachable but is the library's own business and may move::

    from forge_remote import JobContext, JobResult, cql, job

    @job("label-audit", parse_args)
    def label_audit(ctx: JobContext, args: LabelArgs) -> JobResult: ...

- Jobs: ``job`` (decorator), ``JobContext``, ``JobResult``, ``request_job`` with its priorities
  ``INTERACTIVE`` (a user is waiting) and ``BULK`` (the default).
- Confluence: ``cql`` (the query builder; every value quoted).
- Failures: ``PermanentFailure`` (never retried: the DLQ, or a 4xx) and ``RetryLater`` (deferred, or
  a 503); ``NotAllowed`` (403) and ``MalformedEvent`` (400) for UI routes.
- UI routes: ``Router``, ``ui_call``, ``accepts`` with ``WholeNumber``, ``OneOf``, ``JsonObject``.
- Handlers, one per function: ``ui_handler``, ``triggers_handler``, ``worker_handler``,
  ``scheduler_handler``, ``wakeup_handler``.
- Product events: ``ForgeEvent``, what a mapping function in ``triggers_handler(events=...)`` receives.
- ``clock``: the time jobs and routes read (the local stack moves it).

Names are loaded on first use, so importing this package costs nothing at cold start.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.2.0"

_FACE = {
    "job": "forge_remote.jobs.contract",
    "JobContext": "forge_remote.jobs.contract",
    "JobResult": "forge_remote.jobs.contract",
    "request_job": "forge_remote.jobs.contract",
    "INTERACTIVE": "forge_remote.jobs.contract",
    "BULK": "forge_remote.jobs.contract",
    "cql": "forge_remote.confluence",
    "clock": "forge_remote",
    "PermanentFailure": "forge_remote.errors",
    "RetryLater": "forge_remote.errors",
    "NotAllowed": "forge_remote.errors",
    "MalformedEvent": "forge_remote.errors",
    "ForgeEvent": "forge_remote.forge.payloads",
    "Router": "aws_lambda_powertools.event_handler.api_gateway",
    "ui_call": "forge_remote.inbound.ui_calls",
    "accepts": "forge_remote.inbound.ui_calls",
    "WholeNumber": "forge_remote.inbound.ui_calls",
    "OneOf": "forge_remote.inbound.ui_calls",
    "JsonObject": "forge_remote.inbound.ui_calls",
    "ui_handler": "forge_remote.inbound.ui",
    "triggers_handler": "forge_remote.inbound.triggers",
    "worker_handler": "forge_remote.jobs.worker",
    "scheduler_handler": "forge_remote.jobs.scheduler",
    "wakeup_handler": "forge_remote.jobs.wakeup",
}

__all__ = [  # the same names as _FACE (a test checks)
    "BULK",
    "INTERACTIVE",
    "ForgeEvent",
    "JobContext",
    "JobResult",
    "JsonObject",
    "MalformedEvent",
    "NotAllowed",
    "OneOf",
    "PermanentFailure",
    "RetryLater",
    "Router",
    "WholeNumber",
    "accepts",
    "clock",
    "cql",
    "job",
    "request_job",
    "scheduler_handler",
    "triggers_handler",
    "ui_call",
    "ui_handler",
    "wakeup_handler",
    "worker_handler",
]

if TYPE_CHECKING:
    from aws_lambda_powertools.event_handler.api_gateway import Router

    from forge_remote import clock
    from forge_remote.confluence import cql
    from forge_remote.errors import MalformedEvent, NotAllowed, PermanentFailure, RetryLater
    from forge_remote.forge.payloads import ForgeEvent
    from forge_remote.inbound.triggers import triggers_handler
    from forge_remote.inbound.ui import ui_handler
    from forge_remote.inbound.ui_calls import JsonObject, OneOf, WholeNumber, accepts, ui_call
    from forge_remote.jobs.contract import BULK, INTERACTIVE, JobContext, JobResult, job, request_job
    from forge_remote.jobs.scheduler import scheduler_handler
    from forge_remote.jobs.wakeup import wakeup_handler
    from forge_remote.jobs.worker import worker_handler


def __getattr__(name: str) -> Any:
    module = _FACE.get(name)
    if module is None:
        raise AttributeError(f"module 'forge_remote' has no attribute {name!r}")
    if name in ("clock", "cql"):  # sub-modules: imported, not read from their package
        return importlib.import_module(f"{module}.{name}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
