"""How long an uninstalled installation's data is kept (``lifecycle/cleanup.py``): ``DATA_RETENTION_DAYS``,
whole days from 0 (removed promptly) to 365, and what a cleanup run reports."""

from __future__ import annotations

import pytest

from forge_remote.errors import ConfigurationError
from forge_remote.lifecycle.cleanup import CleanupReport
from forge_remote.lifecycle.retention import MAX_RETENTION_DAYS, retention_days_setting


@pytest.mark.parametrize(("raw", "days"), [("", 0), ("  ", 0), ("0", 0), (" 30 ", 30), (str(MAX_RETENTION_DAYS), 365)])
def test_retention_is_whole_days(raw: str, days: int) -> None:
    assert retention_days_setting({"DATA_RETENTION_DAYS": raw}) == days


def test_retention_defaults_to_prompt_removal() -> None:
    assert retention_days_setting({}) == 0


@pytest.mark.parametrize("raw", ["-1", "366", "1.5", "a month"])
def test_anything_else_fails_at_cold_start(raw: str) -> None:
    with pytest.raises(ConfigurationError, match="DATA_RETENTION_DAYS"):
        retention_days_setting({"DATA_RETENTION_DAYS": raw})


def test_a_cleanup_report_says_whether_it_finished() -> None:
    report = CleanupReport(complete=False, tokens_deleted=2, deleted=5, expiring=1, pages=3, scrubbed=4)
    assert report.as_dict() == {
        "cleanup": "incomplete",
        "tokensDeleted": 2,
        "itemsDeleted": 5,
        "itemsScrubbed": 4,
        "itemsExpiring": 1,
    }
    assert CleanupReport(complete=True).as_dict()["cleanup"] == "complete"
