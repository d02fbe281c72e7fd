"""Where in a window one installation's work goes: a stable slot, so the fleet is spread, not stacked.

Atlassian's advice for its hourly quotas is to spread requests over the hour and to add jitter to
scheduled jobs rather than start them all at 00:00. A slot derived from the installation id (and the
job) is the same every day, so one site's digest comes at the same time each morning and the fleet's
requests are spread evenly across the window; a little random jitter keeps two runs from lining up
exactly. Nothing here does I/O.
"""

from __future__ import annotations

import hashlib
import random


def stable_fraction(key: str) -> float:
    """A number in [0, 1) that depends only on ``key``: evenly spread over many keys."""
    digest = hashlib.sha256(key.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def slot_offset_s(key: str, window_s: float, *, jitter_s: float = 0.0, rng: random.Random | None = None) -> float:
    """Seconds into a window of ``window_s`` at which ``key``'s work goes: its stable slot, moved by up to
    ``jitter_s`` either way, and kept inside the window."""
    if window_s <= 0:
        return 0.0
    offset = stable_fraction(key) * window_s
    if jitter_s > 0:
        offset += (rng or random).uniform(-jitter_s, jitter_s)
    return min(max(offset, 0.0), window_s)
