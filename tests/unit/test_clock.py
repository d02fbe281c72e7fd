"""The library's one clock (``forge_remote/clock.py``): wall time plus what the local stack and tests add."""

from __future__ import annotations

import pytest

from forge_remote import clock
from forge_remote.testing import MemoryTokenStore, app_token

INSTALLATION = "ari:cloud:ecosystem::installation/clock"


def test_advance_moves_the_clock_and_reset_takes_it_back(frozen_clock: float) -> None:
    assert clock.now() == frozen_clock
    clock.advance(90)
    clock.advance(0.5)
    assert clock.now() == frozen_clock + 90.5
    clock.reset()
    assert clock.now() == frozen_clock


def test_every_reader_sees_the_same_advance(frozen_clock: float) -> None:
    store = MemoryTokenStore()
    store.put_if_newer(INSTALLATION, app_token(100))
    clock.advance(101)  # the store reads the same clock: the token has expired for it too
    held = store.held(INSTALLATION)
    assert held is not None
    assert held.valid_for() == pytest.approx(-1)


@pytest.mark.parametrize(
    ("epoch_s", "text"),
    [
        (0, "1970-01-01T00:00:00+00:00"),
        (1_767_225_600.9, "2026-01-01T00:00:00+00:00"),
        (86399, "1970-01-01T23:59:59+00:00"),
    ],
)
def test_iso_is_utc_to_the_second(epoch_s: float, text: str) -> None:
    assert clock.iso(epoch_s) == text
