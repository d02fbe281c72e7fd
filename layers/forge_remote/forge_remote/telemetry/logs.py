"""The library's log lines, written the way the functions' own are: JSON with the correlation id.

Library modules log with ``logging.getLogger(__name__)`` (no Powertools import at module level, so
they stay usable anywhere). Each function calls ``use_function_logger(logger)`` once, after creating
its Powertools ``Logger``, and wraps its handler in ``invocation_logging(logger)``, which is
Powertools' ``inject_lambda_context`` plus one thing: for the length of the invocation, ``logger`` is
the function the library's records belong to. The ``forge_remote`` logger's one handler
(``_ThroughFunctionLogger``) writes each record through the handler and formatter of the function
whose invocation emitted it, so a line such as ``Forge invocation rejected: ...`` carries that
function's service, Lambda request id, correlation id (Forge's ``x-b3-traceid``) and its ``extra``
fields, and can be found in CloudWatch by the same queries as the handler's lines. On Lambda a
process runs one function, so that is the function it set up; the local stack runs the five in one
process and each line still names its own. A record emitted outside any invocation (a cold start's,
another thread's) goes through the function set up last, as on Lambda. Records do not reach the
Lambda runtime's root handler, which would print them a second time as plain text. What this adds to
a line is a context variable read and a loop over the function's handlers (about 1 us of the 20-odd
a Powertools JSON line takes).

The AWS SDK's and urllib3's loggers get the same handler, at WARNING: under Lambda's runtime the root
handler prints every INFO record as plain text (``[INFO] ... Found credentials in environment
variables.`` at each cold start), which is not a structured line and says nothing an operator needs;
their warnings and errors still arrive, as JSON with the correlation id.

Timestamps follow the stack's clock (``forge_remote.clock``): on Lambda it is wall time and nothing
changes; when the local stack or a test moves the clock hours ahead, every line (the function's own
and the library's) is stamped with that moved time, so logs and token expiries tell the same time.

``publishing_recorded_metrics(metrics)`` wraps a handler's work: the metrics it recorded (embedded
metric format, log lines too) are published at the end, even if it raised; an invocation that
recorded none publishes nothing. Powertools' ``log_metrics`` would warn, with a site-packages path,
for every such invocation (a refused call, a stream record that woke nobody).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, TypeVar

from forge_remote import clock

if TYPE_CHECKING:
    from aws_lambda_powertools import Logger, Metrics

LIBRARY_LOGGER = "forge_remote"
SDK_LOGGERS = frozenset({"boto3", "botocore", "s3transfer", "urllib3"})

R = TypeVar("R")

# The function whose invocation is running in this thread (``invocation_logging``); None outside one.
_invoking: ContextVar[Logger | None] = ContextVar("forge_remote_invoking_function", default=None)


class _ThroughFunctionLogger(logging.Handler):
    """The one handler of the library's and the SDK's loggers: each record goes out through the handlers
    of the function whose invocation emitted it, else through those of the function set up last.

    It formats nothing itself (the function's handler does); ``formatter`` is that function's, for code
    that asks the library logger how its lines look.
    """

    def __init__(self) -> None:
        super().__init__()
        self.latest: Logger | None = None  # the function ``use_function_logger`` set up last

    def function(self) -> Logger | None:
        invoking = _invoking.get()
        return self.latest if invoking is None else invoking

    def handle(self, record: logging.LogRecord) -> bool:
        """As ``Logger.callHandlers`` would with the function's handlers: no lock or filter of its own."""
        function = self.function()
        if function is None:
            return False
        for handler in function.handlers:
            if record.levelno >= handler.level:
                handler.handle(record)
        return True

    def emit(self, record: logging.LogRecord) -> None:
        self.handle(record)

    @property
    def formatter(self) -> logging.Formatter | None:
        function = self.function()
        return function.registered_handler.formatter if function is not None else None

    @formatter.setter
    def formatter(self, _value: logging.Formatter | None) -> None:
        """Ignored: lines are formatted by the function's own handler."""


_THROUGH_FUNCTION = _ThroughFunctionLogger()


def _on_stack_clock(record: logging.LogRecord) -> bool:
    """A handler filter that stamps the record with the stack's clock: nothing to do on wall time
    (Lambda), else its creation time is moved as far as the clock is. It lets every record through."""
    offset_s = clock.offset_s()
    if offset_s:
        record.created += offset_s
        record.msecs = float(int(record.created % 1 * 1000))
    return True


def use_function_logger(logger: Logger) -> None:
    """Send every ``forge_remote.*`` record through ``logger``'s handler, at ``logger``'s level, and the
    SDK's records through it at WARNING, when no other function's invocation is running (module
    docstring); ``logger``'s lines are stamped with the stack's clock."""
    _THROUGH_FUNCTION.latest = logger
    logger.append_keys(name="%(name)s")  # each line names the module that logged it
    handler = logger.registered_handler
    if _on_stack_clock not in handler.filters:
        handler.addFilter(_on_stack_clock)
    for name, level in ((LIBRARY_LOGGER, logger.log_level), *((sdk, logging.WARNING) for sdk in SDK_LOGGERS)):
        configured = logging.getLogger(name)
        configured.setLevel(level)
        configured.handlers = [_THROUGH_FUNCTION]
        configured.propagate = False  # the Lambda runtime's root handler would print it again, as plain text


@contextmanager
def logging_as(logger: Logger) -> Iterator[None]:
    """Inside the block, the library's records (this thread's) are ``logger``'s function's lines."""
    token = _invoking.set(logger)
    try:
        yield
    finally:
        _invoking.reset(token)


def invocation_logging(
    logger: Logger, *, correlation_id_path: str | None = None
) -> Callable[[Callable[[Any, Any], R]], Callable[[Any, Any], R]]:
    """Decorate a Lambda handler: ``logger.inject_lambda_context`` (the Lambda context's keys, the
    correlation id at ``correlation_id_path``), with the invocation's library records written as
    ``logger``'s (``logging_as``)."""

    def decorate(handler: Callable[[Any, Any], R]) -> Callable[[Any, Any], R]:
        injected: Callable[[Any, Any], R] = logger.inject_lambda_context(
            handler, correlation_id_path=correlation_id_path
        )

        @functools.wraps(handler)
        def invocation(event: Any, context: Any) -> R:
            with logging_as(logger):
                return injected(event, context)

        return invocation

    return decorate


@contextmanager
def publishing_recorded_metrics(metrics: Metrics) -> Iterator[None]:
    """Publish what ``metrics`` recorded inside the block (if anything), however the block ends."""
    try:
        yield
    finally:
        if metrics.metric_set:
            metrics.flush_metrics()
