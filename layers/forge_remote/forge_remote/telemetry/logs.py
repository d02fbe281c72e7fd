"""The library's log lines, written the way the functions' own are: JSON with the correlation id.

Library modules log with ``logging.getLogger(__name__)`` (no Powertools import at module level, so
they stay usable anywhere). Each function calls ``use_function_logger(logger)`` once, after creating
its Powertools ``Logger``: the ``forge_remote`` logger then writes through that Logger's handler and
formatter, so a line such as ``Forge invocation rejected: ...`` carries the service, the Lambda
request id, the correlation id (Forge's ``x-b3-traceid``) and its ``extra`` fields, and can be found
in CloudWatch by the same queries as the handler's lines. Powertools' own recipe
(``copy_config_to_registered_loggers``); it also stops the records reaching the Lambda runtime's
root handler, which would print them a second time as plain text.

The AWS SDK's and urllib3's loggers get the same handler, at WARNING: under Lambda's runtime the root
handler prints every INFO record as plain text (``[INFO] ... Found credentials in environment
variables.`` at each cold start), which is not a structured line and says nothing an operator needs;
their warnings and errors still arrive, as JSON with the correlation id.

``publishing_recorded_metrics(metrics)`` wraps a handler's work: the metrics it recorded (embedded
metric format, log lines too) are published at the end, even if it raised; an invocation that
recorded none publishes nothing. Powertools' ``log_metrics`` would warn, with a site-packages path,
for every such invocation (a refused call, a stream record that woke nobody).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from aws_lambda_powertools import Logger
from aws_lambda_powertools.logging.utils import copy_config_to_registered_loggers

if TYPE_CHECKING:
    from aws_lambda_powertools import Metrics

LIBRARY_LOGGER = "forge_remote"
SDK_LOGGERS = frozenset({"boto3", "botocore", "s3transfer", "urllib3"})


def use_function_logger(logger: Logger) -> None:
    """Send every ``forge_remote.*`` record through ``logger``'s handler, at ``logger``'s level, and the
    SDK's records through it at WARNING (module docstring)."""
    for name in (LIBRARY_LOGGER, *SDK_LOGGERS):
        logging.getLogger(name)  # registered even before anything has logged on it
    copy_config_to_registered_loggers(source_logger=logger, include={LIBRARY_LOGGER})
    copy_config_to_registered_loggers(source_logger=logger, include=set(SDK_LOGGERS), log_level=logging.WARNING)


@contextmanager
def publishing_recorded_metrics(metrics: Metrics) -> Iterator[None]:
    """Publish what ``metrics`` recorded inside the block (if anything), however the block ends."""
    try:
        yield
    finally:
        if metrics.metric_set:
            metrics.flush_metrics()
