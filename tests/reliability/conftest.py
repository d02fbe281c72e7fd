"""The reliability suite's wiring: the session ledger, output capture, the final secrecy check and
the one-line summary (``reliability: N cases tried, M rejected as expected, L lost jobs``).
The check covers tokens and FITs, and the account ids tests register as other users' (``ledger.py``
says where those may and may not appear; responses are recorded with the account they went to).

Capture, for every test under this folder:
- every log record of every logger, taken where ``logging.Logger.handle`` receives it (the Powertools
  service loggers and the ``forge_remote`` logger they configure do not propagate to the root), kept
  as Powertools would print it, with its extra fields and traceback;
- stdout/stderr and pytest's log capture of every phase (what Powertools and the metrics print);
- failure reports (exception text);
- after each test, what the functions left in the app table, the job queue and the DLQ.
Response bodies are recorded by the call helpers in ``harness.py``.

The check runs in ``test_zz_secrecy.py`` (moved to the end of the session) and again when the session
finishes: a leak, or a lost job, fails the session even if that test was deselected.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from local.stack import LocalStack
from tests.reliability.harness import World, dump_outputs, open_world
from tests.reliability.ledger import LEDGER, Ledger, caller_of
from tests.support import Gateway

HERE = Path(__file__).resolve().parent
SERVICE_LOGGERS = ("forge-calls", "forge-triggers", "confluence-worker", "job-scheduler", "forge_remote")
QUIET_LOGGERS = ("moto",)  # the fake AWS, not the code under test: its DEBUG chatter is just cost
FINAL_CHECK = "test_zz_secrecy.py::test_no_secret_was_logged_returned_or_raised"
_STATE: dict[str, Any] = {"ran": False, "leaks": None}


def _ours(item: pytest.Item) -> bool:
    return HERE in Path(str(item.path)).resolve().parents


def _collect(record: logging.LogRecord) -> None:
    """Keep a record as text: message, Powertools' JSON line, extra fields, traceback."""
    parts = [record.getMessage(), repr(record.__dict__)]
    service = logging.getLogger(record.name.split(".")[0])
    powertools = getattr(service, "powertools_handler", None)
    if powertools is not None and powertools.formatter is not None:
        parts.append(powertools.formatter.format(record))
    if record.exc_info and record.exc_info[1] is not None:
        parts.append("".join(traceback.format_exception(*record.exc_info)))
    LEDGER.seen("\n".join(parts), "log")


def _handle_and_collect(original: Any) -> Any:
    """``Logger.handle`` that keeps every record first (whatever the logger's handlers and propagation)."""

    def handle(self: logging.Logger, record: logging.LogRecord) -> Any:
        try:
            _collect(record)
        except Exception:  # never let the collector break the code under test
            traceback.print_exc()
        return original(self, record)

    return handle


@pytest.fixture
def ledger() -> Ledger:
    return LEDGER


@pytest.fixture
def stack(stack: LocalStack) -> LocalStack:
    """The root fixture's stack, with every function configured to log at DEBUG (more to leak)."""
    stack.parameters["LogLevel"] = "DEBUG"
    return stack


@pytest.fixture(scope="module")
def world(forge: Any) -> Iterator[World]:
    """One moto stack and one container per HTTP function for a whole module (see ``harness.World``)."""
    with open_world(forge) as opened:
        yield opened


@pytest.fixture(scope="module", autouse=True)
def _capture_logs() -> Iterator[None]:
    """For a whole module (its module-scoped fixtures too): every record, at DEBUG."""
    original = logging.Logger.handle
    loggers = [logging.getLogger(name) for name in ("", *SERVICE_LOGGERS, *QUIET_LOGGERS)]
    levels = {lg: lg.level for lg in loggers}
    logging.Logger.handle = _handle_and_collect(original)  # type: ignore[method-assign]
    for lg in loggers[: 1 + len(SERVICE_LOGGERS)]:
        lg.setLevel(logging.DEBUG)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        yield
    finally:
        logging.Logger.handle = original  # type: ignore[method-assign]
        for lg, level in levels.items():
            lg.setLevel(level)


@pytest.fixture(autouse=True)
def _debug_everything(request: pytest.FixtureRequest) -> None:
    """Per test (a test may have changed levels): the code under test logs at DEBUG."""
    LEDGER.where = request.node.nodeid
    _STATE["ran"] = True
    for name in ("", *SERVICE_LOGGERS):
        logging.getLogger(name).setLevel(logging.DEBUG)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


@pytest.fixture(autouse=True)
def _record_gateway_calls(monkeypatch: pytest.MonkeyPatch) -> None:
    """Calls made through tests/support.py's Gateway (``LocalWorld.send`` uses it) are recorded too."""
    original = Gateway.__call__

    def call(self: Gateway, method: str, path: str, headers: dict[str, str], body: Any = None) -> dict[str, Any]:
        LEDGER.headers(headers)
        response = original(self, method, path, headers, body)
        # Who the answer went to: their own account id may be in it, nobody else's (ledger.py).
        LEDGER.seen(response.get("body"), "response body", viewer=caller_of(headers))
        return response

    monkeypatch.setattr(Gateway, "__call__", call)


# -- hooks -------------------------------------------------------------------------------------------
@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, Any, Any]:
    try:
        return (yield)
    finally:
        if _ours(item):
            for value in getattr(item, "funcargs", {}).values():
                if isinstance(value, World | LocalStack):  # a LocalWorld's stack is among them too
                    dump_outputs(value.stack if isinstance(value, World) else value)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Generator[None, Any, Any]:
    report: pytest.TestReport = yield
    if _ours(item):
        LEDGER.where = item.nodeid
        for name, text in report.sections:  # captured stdout, stderr and log of this phase
            LEDGER.seen(text, name)
        if report.failed:
            LEDGER.seen(report.longreprtext, f"failure in {report.when}")
    return report


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The secrecy check runs after everything else, wherever pytest collected it."""
    final = [i for i in items if i.nodeid.endswith(FINAL_CHECK)]
    items[:] = [i for i in items if i not in final] + final


def _leaks() -> list[Any]:
    if _STATE["leaks"] is None:
        _STATE["leaks"] = LEDGER.leaks()
    return list(_STATE["leaks"])


def pytest_sessionfinish(session: pytest.Session) -> None:
    if _STATE["ran"] and (_leaks() or LEDGER.lost_jobs):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _STATE["ran"]:
        return
    terminalreporter.write_line(LEDGER.summary())
    leaks = _leaks()
    if leaks:
        terminalreporter.write_line(f"reliability: {len(leaks)} secrets seen in output, first in {leaks[0].where}")
