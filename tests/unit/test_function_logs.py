"""The library's log lines go through the Powertools logger of the function whose invocation emitted them
(``telemetry/logs.py``), stamped with the stack's clock, and a handler's metrics are published only when
it recorded some."""

from __future__ import annotations

import io
import json
import logging
import threading
from collections.abc import Callable
from datetime import datetime
from typing import Any

import pytest
from aws_lambda_powertools import Logger

from forge_remote import clock
from forge_remote.telemetry.logs import (
    LIBRARY_LOGGER,
    SDK_LOGGERS,
    invocation_logging,
    publishing_recorded_metrics,
    use_function_logger,
)
from local.lambda_context import LocalLambdaContext


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


def json_lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


class Function:
    """A function as the handler factories build one: its own Powertools logger, set up for the library
    (``use_function_logger``), and a handler wrapped in ``invocation_logging`` that runs ``body``."""

    def __init__(self, service: str, body: Callable[[str], None]) -> None:
        self.stream = io.StringIO()
        self.logger = Logger(service=service, logger_handler=logging.StreamHandler(self.stream))
        use_function_logger(self.logger)
        self.context = LocalLambdaContext(function_name=f"unit-{service}")

        @invocation_logging(self.logger, correlation_id_path="headers.trace")
        def handler(event: dict[str, Any], _context: Any) -> None:
            body(event["headers"]["trace"])

        self.handler = handler

    def invoke(self, trace: str) -> None:
        self.handler({"headers": {"trace": trace}}, self.context)

    def lines(self) -> list[dict[str, Any]]:
        return json_lines(self.stream)


def library_says(message: str) -> None:
    logging.getLogger(f"{LIBRARY_LOGGER}.jobs.runner").warning(message)


def test_library_records_carry_the_service_and_correlation_id_of_the_invocation_emitting_them() -> None:
    """Two functions in one process (the local stack): each one's records are its own, whichever
    function was set up last, each written once."""
    calls = Function("unit-calls", lambda trace: library_says(f"calls saw {trace}"))
    worker = Function("unit-worker", lambda trace: library_says(f"worker saw {trace}"))  # set up last
    calls.invoke("trace-c1")
    worker.invoke("trace-w1")
    calls.invoke("trace-c2")
    library_says("between invocations")  # no invocation running: the function set up last, as on Lambda
    assert [(r["message"], r["service"], r["correlation_id"], r["function_name"]) for r in calls.lines()] == [
        ("calls saw trace-c1", "unit-calls", "trace-c1", "unit-unit-calls"),
        ("calls saw trace-c2", "unit-calls", "trace-c2", "unit-unit-calls"),
    ]
    assert [(r["message"], r["service"], r["correlation_id"]) for r in worker.lines()] == [
        ("worker saw trace-w1", "unit-worker", "trace-w1"),
        ("between invocations", "unit-worker", "trace-w1"),
    ]
    assert {r["name"] for r in calls.lines() + worker.lines()} == {f"{LIBRARY_LOGGER}.jobs.runner"}


def test_invocations_running_at_once_in_two_threads_keep_their_own_records() -> None:
    """The gateway and the queue poller call functions from their own threads: the worker entering its
    invocation while the UI call is still in its own does not take the UI call's records."""
    worker_inside, calls_may_go_on = threading.Event(), threading.Event()

    def calls_body(trace: str) -> None:
        library_says(f"calls before {trace}")
        assert calls_may_go_on.wait(10)
        library_says(f"calls after {trace}")

    def worker_body(trace: str) -> None:
        library_says(f"worker {trace}")
        worker_inside.set()
        assert calls_may_go_on.wait(10)

    calls, worker = Function("unit-calls-t", calls_body), Function("unit-worker-t", worker_body)
    threads = [
        threading.Thread(target=calls.invoke, args=("trace-c",)),
        threading.Thread(target=worker.invoke, args=("trace-w",)),
    ]
    threads[0].start()
    threads[1].start()
    assert worker_inside.wait(10)
    calls_may_go_on.set()
    for thread in threads:
        thread.join(10)
    assert [(r["message"], r["service"], r["correlation_id"]) for r in calls.lines()] == [
        ("calls before trace-c", "unit-calls-t", "trace-c"),
        ("calls after trace-c", "unit-calls-t", "trace-c"),
    ]
    assert [(r["message"], r["service"]) for r in worker.lines()] == [("worker trace-w", "unit-worker-t")]


def test_an_invocation_that_raises_gives_the_library_back_to_the_function_set_up_last() -> None:
    def fails(_trace: str) -> None:
        raise RuntimeError("the handler failed")

    failing = Function("unit-failing", fails)
    last = Function("unit-last", lambda trace: None)
    with pytest.raises(RuntimeError):
        failing.invoke("trace-f")
    library_says("after the failure")
    assert failing.lines() == []
    assert [r["message"] for r in last.lines()] == ["after the failure"]


def stamped_at(line: dict[str, Any]) -> float:
    """The epoch time a Powertools line's ``timestamp`` says, whatever this machine's time zone."""
    return datetime.strptime(line["timestamp"], "%Y-%m-%d %H:%M:%S,%f%z").timestamp()


@pytest.mark.parametrize("moved_s", [0.0, 4 * 3600.0, 1.5])
def test_lines_are_stamped_with_the_stack_clock(moved_s: float) -> None:
    """The local stack moves ``forge_remote.clock`` hours ahead: log lines (the library's and the
    function's own) tell that time, not the machine's; unmoved, a record keeps its own time."""
    service = f"unit-clock-{moved_s:g}"  # a Powertools logger per service: one each
    function = Function(service, lambda trace: None)
    clock.advance(moved_s)
    created = 1_767_225_600.25  # 2026-01-01T00:00:00.250Z
    for logger in (logging.getLogger(f"{LIBRARY_LOGGER}.tokens.store"), logging.getLogger(service)):
        fields = {"name": logger.name, "msg": "stamped", "levelno": logging.WARNING, "created": created, "msecs": 250.0}
        logger.handle(logging.makeLogRecord(fields))
    library_line, function_line = function.lines()
    assert stamped_at(library_line) == pytest.approx(created + moved_s, abs=0.001)
    assert stamped_at(function_line) == pytest.approx(created + moved_s, abs=0.001)


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
