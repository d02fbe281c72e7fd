"""The one clock the library reads for token expiry.

Production reads wall time. The local stack and tests move it forward (``advance``) to make tokens
expire without waiting, or place it at a given moment (``set``: the top of an hour, for quotas);
FIT verification deliberately keeps real time (pyjwt checks it).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

_offset_s = 0.0


def now() -> float:
    """Seconds since the epoch, as the token rules see it."""
    return time.time() + _offset_s


def offset_s() -> float:
    """How far the clock is from wall time (0 in production): what log timestamps are moved by."""
    return _offset_s


def advance(seconds: float) -> None:
    """Move the clock forward (local stack and tests only)."""
    global _offset_s
    _offset_s += seconds


def set(epoch_s: float) -> None:
    """Put the clock at ``epoch_s`` from now on (local stack and tests only); it goes on ticking."""
    global _offset_s
    _offset_s = epoch_s - time.time()


def reset() -> None:
    """Back to wall time."""
    global _offset_s
    _offset_s = 0.0


def iso(epoch_s: float) -> str:
    """An epoch time as ISO 8601 UTC to the second, as status answers and records show it."""
    return datetime.fromtimestamp(epoch_s, UTC).isoformat(timespec="seconds")
