"""The unit suite's fixtures: a stopped clock, so no test's arithmetic depends on the wall clock."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from forge_remote import clock

FROZEN_AT = 1_767_225_600.0  # 2026-01-01T00:00:00Z


@pytest.fixture
def frozen_clock(monkeypatch: pytest.MonkeyPatch) -> float:
    """``forge_remote.clock`` stopped at ``FROZEN_AT`` (returned): only ``clock.advance`` moves it now."""
    monkeypatch.setattr(clock, "time", SimpleNamespace(time=lambda: FROZEN_AT))
    return FROZEN_AT
