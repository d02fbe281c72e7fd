"""``DATA_RETENTION_DAYS``, read at cold start by every function that may remove an installation's data.

Apart from the cleanup itself so that reading the setting (and failing fast on a bad one) does not load
the cleanup's modules at the cold start of a function that seldom uninstalls anything.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from forge_remote.errors import ConfigurationError

MAX_RETENTION_DAYS = 365


def retention_days_setting(env: Mapping[str, str] | None = None) -> int:
    """``DATA_RETENTION_DAYS``: whole days between 0 (the default: removed promptly) and 365."""
    raw = (os.environ if env is None else env).get("DATA_RETENTION_DAYS", "").strip()
    try:
        days = int(raw) if raw else 0
    except ValueError as exc:
        raise ConfigurationError("DATA_RETENTION_DAYS must be a whole number of days") from exc
    if not 0 <= days <= MAX_RETENTION_DAYS:
        raise ConfigurationError(f"DATA_RETENTION_DAYS must be between 0 and {MAX_RETENTION_DAYS}")
    return days
