"""The library's log lines go through the function's own Powertools logger (``telemetry/logs.py``), and a
handler's metrics are published only when it recorded some."""

from __future__ import annotations

import io
import json
import logging
from typing import Any

from aws_lambda_powertools import Logger

from forge_remote.telemetry.logs import LIBRARY_LOGGER, SDK_LOGGERS, publishing_recorded_metrics, use_function_logger


def test_library_records_are_written_by_the_function_logger_once() -> None:
    stream = io.StringIO()
    function_logger = Logger(service="unit-logs", logger_handler=logging.StreamHandler(stream))
    use_function_logger(function_logger)
    library = logging.getLogger(f"{LIBRARY_LOGGER}.jobs.runner")
    library.warning("job %s deferred", "page-snapshot", extra={"receive_count": 3})
    (line,) = stream.getvalue().splitlines()
    record = json.loads(line)
    assert (record["message"], record["service"], record["receive_count"]) == (
        "job page-snapshot deferred",
        "unit-logs",
        3,
    )
    assert logging.getLogger(LIBRARY_LOGGER).propagate is False  # not printed a second time by the root handler


def test_sdk_records_are_json_warnings_only_and_never_reach_the_root_handler() -> None:
    """Lambda's runtime prints every record that reaches the root logger as plain text, INFO included
    (botocore's "Found credentials in environment variables." at each cold start)."""
    stream, root_stream = io.StringIO(), io.StringIO()
    root_handler = logging.StreamHandler(root_stream)
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(root_handler)
    root.setLevel(logging.INFO)
    try:
        use_function_logger(Logger(service="unit-sdk-logs", logger_handler=logging.StreamHandler(stream)))
        logging.getLogger("botocore.credentials").info("Found credentials in environment variables.")
        logging.getLogger("urllib3.connectionpool").warning("Retrying after connection broken")
    finally:
        root.removeHandler(root_handler)
        root.setLevel(old_level)
    (line,) = stream.getvalue().splitlines()
    record = json.loads(line)
    assert (record["level"], record["message"], record["service"]) == (
        "WARNING",
        "Retrying after connection broken",
        "unit-sdk-logs",
    )
    assert root_stream.getvalue() == ""
    assert {"botocore", "boto3", "urllib3"} <= SDK_LOGGERS


class RecordedMetrics:
    """What ``publishing_recorded_metrics`` reads of Powertools' ``Metrics``."""

    def __init__(self, recorded: dict[str, Any]) -> None:
        self.metric_set = recorded
        self.flushed = 0

    def flush_metrics(self) -> None:
        self.flushed += 1


def test_metrics_are_published_however_the_block_ends_but_only_if_recorded() -> None:
    recorded, empty = RecordedMetrics({"TokensStored": [1]}), RecordedMetrics({})
    with publishing_recorded_metrics(recorded):  # type: ignore[arg-type]
        pass
    try:
        with publishing_recorded_metrics(recorded):  # type: ignore[arg-type]
            raise RuntimeError("the handler failed")
    except RuntimeError:
        pass
    with publishing_recorded_metrics(empty):  # type: ignore[arg-type]
        pass
    assert (recorded.flushed, empty.flushed) == (2, 0)
