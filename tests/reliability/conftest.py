"""The reliability suite's ledger: cases tried, rejected as expected, lost jobs, and every secret the
suite handed out, checked against everything that was logged or answered. Summary line at the end."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from tests.test_worker import (  # noqa: F401 - the worker tests' fixtures, shared with this suite
    allow_emulator,
    confluence,
    confluence_site,
    triggers,
    worker,
)


@dataclass
class Ledger:
    tried: int = 0
    rejected: int = 0
    lost_jobs: int = 0
    secrets: set[str] = field(default_factory=set)
    texts: list[str] = field(default_factory=list)

    def secret(self, value: str) -> str:
        """Remember a token or FIT: none of its distinctive parts may ever be seen in output."""
        parts = value.split(".")
        self.secrets.update(p for p in (parts[1:] if len(parts) == 3 else [value]) if len(p) >= 16)
        return value

    def seen(self, text: str | None) -> None:
        if text:
            self.texts.append(text)

    def leaks(self) -> list[str]:
        corpus = "\n".join(self.texts)
        return [s[:12] + "..." for s in self.secrets if s in corpus]


LEDGER = Ledger()


class _Collector(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        LEDGER.seen(f"{record.getMessage()} {record.__dict__!r}")
        if record.exc_info and record.exc_info[1] is not None:
            LEDGER.seen(repr(record.exc_info[1]))


@pytest.fixture
def ledger() -> Ledger:
    return LEDGER


# Powertools loggers are named after the service and do not propagate: collect from them directly.
_LOGGERS = ("", "forge-calls", "forge-triggers", "confluence-worker", "job-scheduler")


@pytest.fixture(autouse=True)
def _capture_everything() -> Iterator[None]:
    from aws_lambda_powertools import Logger

    for service in _LOGGERS[1:]:
        # Let Powertools configure its logger first: it treats the first handler as its own.
        Logger(service=service)
    handler = _Collector(level=logging.DEBUG)
    loggers = [logging.getLogger(name) for name in _LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
    logging.getLogger().setLevel(logging.DEBUG)
    yield
    for logger, level in zip(loggers, levels, strict=True):
        logger.removeHandler(handler)
        logger.setLevel(level)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if LEDGER.tried:
        terminalreporter.write_line(
            f"reliability: {LEDGER.tried} cases tried, {LEDGER.rejected} rejected as expected, "
            f"{LEDGER.lost_jobs} lost jobs, {len(LEDGER.leaks())} secrets seen in output"
        )
