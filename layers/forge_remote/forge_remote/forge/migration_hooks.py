"""Forge's data residency realm migration hooks: what each call carries and the answers Forge reads.

Forge calls five hooks under the ``migration:dataResidency`` module's ``path`` (``/forge/migration``
here, ``forge/call_kinds.py``), each with a FIT naming the installation (Atlassian, "Support data
residency realm migrations for Forge Remote"):

- ``POST /schedule`` and ``POST /start`` with ``{startTime, endTime, location, migrationId}``:
  ``location`` is the destination realm (``EU``, ``US``, ...); the times bound the migration window,
  in which the site is read-only.
- ``GET /status?migrationId=...``, polled every 5 minutes: ``{"status": "ready-to-commit"}``, or
  ``{"status": "failed", "errorResponseCode": "E0001".."E0004" | "E9999"}``, or any other status,
  which Forge reads as still in progress.
- ``POST /commit`` and ``POST /rollback`` with ``{migrationId}``.

A non-2xx answer without an error code is retried twice, 5 s apart. How the times are written is not
documented [no source]: ISO 8601 text (with ``Z`` or an offset; UTC if it has none) and epoch seconds
or milliseconds are all read. Parsing is strict about what the code depends on (an id usable in a key,
a realm label, a window that ends after it starts) and ignores anything else: a body it cannot use is a
``MalformedEvent`` (400, JSON), never a 500.

The error codes' meanings are OURS. Atlassian's pages consulted name the codes E0001-E0004 and E9999
but not what each means [no source]; this backend uses them as ``ERROR_MEANINGS`` says.
"""

from __future__ import annotations

import enum
import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from forge_remote.errors import MalformedEvent
from forge_remote.storage.table_keys import MIGRATION_ID_PATTERN

READY_TO_COMMIT = "ready-to-commit"
FAILED = "failed"
IN_PROGRESS = "in-progress"  # any status but the two above is "still working" to Forge

# A realm label: the manifest's baseUrl keys are default, EU, US, AU, DE, SG, CA, IN, KR, JP, GB, CH
# (@forge/manifest 13.7.0's schema). Any label of letters is read, so a realm Forge adds later is refused
# with E0001 (not served here) rather than as a malformed body.
_REALM = re.compile(r"^[A-Za-z]{2,16}$")
DEFAULT_REALM = "default"
MAX_WINDOW_S = 48 * 3600  # maxMigrationDurationHours is at most 24: a longer window is not Forge's
_EPOCH_MS_FROM = 1e11  # a number above this is epoch milliseconds (1e11 s is the year 5138)
_EARLIEST, _LATEST = 946684800.0, 7258118400.0  # 2000-01-01 .. 2200-01-01: anything else is a mistake


class ErrorCode(enum.StrEnum):
    """The ``errorResponseCode`` of a failed migration, as THIS backend uses them (``ERROR_MEANINGS``)."""

    DESTINATION_NOT_SERVED = "E0001"
    DESTINATION_CONFLICT = "E0002"
    COPY_UNFINISHED = "E0003"
    INSTALLATION_UNKNOWN = "E0004"
    OTHER = "E9999"


# Our meanings [no source for Atlassian's]: what the code means when it answers each code.
ERROR_MEANINGS: dict[ErrorCode, str] = {
    ErrorCode.DESTINATION_NOT_SERVED: "the destination realm is not served by this deployment (not in PeerAppTables, "
    "this stack's own realm, or its table cannot be reached)",
    ErrorCode.DESTINATION_CONFLICT: "the destination already holds data for this installation that this migration "
    "did not write",
    ErrorCode.COPY_UNFINISHED: "the copy did not finish within the migration window",
    ErrorCode.INSTALLATION_UNKNOWN: "the installation is unknown here, uninstalled, or already moved by another "
    "migration",
    ErrorCode.OTHER: "anything else (an unknown migration id, one rolled back or superseded, an unexpected failure)",
}


@dataclass(frozen=True)
class MigrationWindow:
    """What ``/schedule`` and ``/start`` carry: the migration, where to, and its window (epoch seconds)."""

    migration_id: str
    location: str
    start_time: float
    end_time: float


def migration_id(value: object) -> str:
    """A ``migrationId`` usable in a key (``MIGRATION#<id>``), else ``MalformedEvent``."""
    if not isinstance(value, str) or not MIGRATION_ID_PATTERN.fullmatch(value):
        raise MalformedEvent("migrationId must be 1-128 letters, digits and : . _ -")
    return value


def realm_label(value: object) -> str:
    """A realm label in its canonical spelling (``default``, else upper case), else ``MalformedEvent``.

    What ``location`` says for the realm the manifest calls ``default`` is not documented [no source]:
    ``default`` and ``global`` (Atlassian's name for that realm) both read as ``default``.
    """
    if not isinstance(value, str) or not _REALM.fullmatch(value):
        raise MalformedEvent("location must be a realm label such as EU or US")
    return DEFAULT_REALM if value.lower() in (DEFAULT_REALM, "global") else value.upper()


def epoch_seconds(value: object, name: str) -> float:
    """``startTime`` / ``endTime`` as epoch seconds: ISO 8601 text or an epoch number (s or ms)."""
    seconds: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        seconds = float(value) / 1000 if value > _EPOCH_MS_FROM else float(value)
    elif isinstance(value, str) and 0 < len(value) <= 64:
        try:
            parsed = datetime.fromisoformat(value.strip())
        except ValueError:
            parsed = None
        if parsed is not None:
            seconds = (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()
    if seconds is None or not _EARLIEST <= seconds <= _LATEST:
        raise MalformedEvent(f"{name} must be an ISO 8601 time or epoch seconds")
    return seconds


def migration_window(document: dict[str, Any]) -> MigrationWindow:
    """The body of ``/schedule`` or ``/start``."""
    window = MigrationWindow(
        migration_id=migration_id(document.get("migrationId")),
        location=realm_label(document.get("location")),
        start_time=epoch_seconds(document.get("startTime"), "startTime"),
        end_time=epoch_seconds(document.get("endTime"), "endTime"),
    )
    if window.end_time <= window.start_time:
        raise MalformedEvent("endTime must be after startTime")
    if window.end_time - window.start_time > MAX_WINDOW_S:
        raise MalformedEvent("the migration window is longer than 48 hours")
    return window


def failed(code: ErrorCode, **detail: Any) -> dict[str, Any]:
    """A failed migration's status answer."""
    return {"status": FAILED, "errorResponseCode": code.value, **detail}
