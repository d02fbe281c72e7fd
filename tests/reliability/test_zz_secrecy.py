"""Runs last in the suite: nothing it produced (logs, response bodies, errors) holds a secret."""

from __future__ import annotations

import logging

import pytest

from tests.reliability.conftest import Ledger

pytestmark = pytest.mark.reliability


def test_the_leak_check_can_see_a_leak() -> None:
    probe = Ledger()
    probe.secret("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ0ZXN0LXNlY3JldC1wYXlsb2FkIn0.c2lnbmF0dXJlLXRoYXQtaXMtbG9uZy1lbm91Z2g")
    probe.seen("a log line with eyJzdWIiOiJ0ZXN0LXNlY3JldC1wYXlsb2FkIn0 in it")
    assert probe.leaks()


def test_no_secret_was_logged_returned_or_raised(ledger: Ledger) -> None:
    logging.getLogger("forge_remote").info("secrecy check")  # proves the collector is attached
    assert ledger.secrets, "the suite registered no secrets: run the whole reliability suite"
    assert any("secrecy check" in text for text in ledger.texts)
    assert ledger.leaks() == []
