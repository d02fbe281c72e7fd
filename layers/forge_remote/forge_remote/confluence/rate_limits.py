"""What Confluence's rate-limit headers say about the app's quotas: one ``RateLimitReport`` per response.

Confluence Cloud charges each request points against hourly quotas (``forge_remote.confluence.points``
counts them). The headers read here, and why:

- ``X-RateLimit-Limit``, ``X-RateLimit-Remaining`` (integers), ``X-RateLimit-Reset`` (ISO 8601, the
  top of the next UTC hour) and ``X-RateLimit-NearLimit: true`` (under 20% left): the pool the
  response was counted against, how much of it is left and when it refills. Source: Atlassian's
  "Rate limiting" page for Confluence Cloud (developer.atlassian.com/cloud/confluence/rate-limiting/).
  Read to slow down before a 429, not after.
- ``RateLimit-Reason`` on a 429: which pool refused, ``confluence-quota-global-based`` (the app's one
  pool across every installation) or ``confluence-quota-tenant-based`` (this site's pool), same page;
  ``confluence-burst-based`` (a seconds-long window) has no Atlassian source, but code in the wild
  sees it. Read because the answer differs: a global refusal holds every site's jobs, a tenant one
  this site's, a burst one only asks for a short pause.
- ``Retry-After`` on a 429 (seconds, or an HTTP-date: RFC 9110 section 10.2.3): when to come back.
- ``RateLimit-Policy: "global-app-quota";q=65000;w=3600`` (or ``"tenant-app-quota"``) and
  ``RateLimit: "global-app-quota";r=11000;t=600``: the quota ``q`` of each pool over its window ``w``
  (seconds), and its remaining ``r`` (sent only past about 80% used) with ``t`` seconds to its reset.
  Source: the same Atlassian page, in the form of the IETF httpapi draft "RateLimit header fields for
  HTTP" (draft-ietf-httpapi-ratelimit-headers): lists of Structured Fields (RFC 8941/9651), one entry
  per policy, any number in any order, each a name (a quoted string; a bare token is accepted too)
  with parameters. Read because they name each pool, where the ``X-RateLimit-*`` headers describe
  only the one the response counted against. Unknown parameters (the draft's ``qu``, ``pk``) are
  ignored; ``q``, ``w``, ``r`` must be non-negative integers and ``t`` a non-negative number.
- ``Beta-RateLimit``, ``Beta-RateLimit-Policy``, ``Beta-Retry-After``: the same headers as sent before
  enforcement began (early 2026). Both spellings are read; the unprefixed one wins when both are there.

Parsing never raises: whatever is malformed is dropped (a parameter, an entry, a header) and the rest
kept. Hostile headers are bounded: a value longer than ``MAX_HEADER_CHARS`` is ignored, at most
``MAX_POLICIES`` entries are kept, and parsing is one linear scan (no regular expression at all).
This module sends nothing; the two time readers it borrows come from ``forge_remote.outbound``.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from forge_remote.outbound import ratelimit_reset_s, retry_after_s

MAX_HEADER_CHARS = 4096  # a longer value is ignored whole
MAX_POLICIES = 16  # entries kept per header, and policies per report
MAX_INTEGER_DIGITS = 15  # Structured Fields integers have at most 15 digits
MAX_DECIMAL_CHARS = 20  # "t": Structured Fields decimals have at most 12 + 1 + 3 characters; a little slack

# The lower-case names of every header read here.
X_LIMIT = "x-ratelimit-limit"
X_REMAINING = "x-ratelimit-remaining"
X_RESET = "x-ratelimit-reset"
X_NEAR_LIMIT = "x-ratelimit-nearlimit"
REASON = "ratelimit-reason"
RATELIMIT = "ratelimit"
POLICY = "ratelimit-policy"
RETRY_AFTER = "retry-after"
BETA_PREFIX = "beta-"
RATE_LIMIT_HEADERS = frozenset(
    {X_LIMIT, X_REMAINING, X_RESET, X_NEAR_LIMIT, REASON, RATELIMIT, POLICY, RETRY_AFTER}
    | {BETA_PREFIX + name for name in (RATELIMIT, POLICY, RETRY_AFTER)}
)

_TOKEN_FIRST = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz*")
_TOKEN_CHARS = _TOKEN_FIRST | frozenset("0123456789!#$%&'+-.^_`|~:/")
_DIGITS = frozenset("0123456789")


class LimitKind(enum.StrEnum):
    """Which pool a quota or a refusal is about."""

    GLOBAL = "global"  # the app's one pool across every installation (reason ...-global-based, policy global-app-quota)
    TENANT = "tenant"  # this site's pool (Tier 2)
    BURST = "burst"  # a seconds-long window: slow down


_REASONS = {
    "confluence-quota-global-based": LimitKind.GLOBAL,
    "confluence-quota-tenant-based": LimitKind.TENANT,
    "confluence-burst-based": LimitKind.BURST,
}
_POLICY_KINDS = {"global-app-quota": LimitKind.GLOBAL, "tenant-app-quota": LimitKind.TENANT}


@dataclass(frozen=True)
class QuotaPolicy:
    """One entry of ``RateLimit-Policy`` joined with the ``RateLimit`` entry of the same name.

    ``quota`` and ``window_s`` come from ``RateLimit-Policy``, ``remaining`` and ``reset_in_s`` from
    ``RateLimit``; a name in only one of them has None for the other's fields.
    """

    name: str
    quota: int | None
    window_s: int | None
    remaining: int | None
    reset_in_s: float | None

    @property
    def kind(self) -> LimitKind | None:
        """``global-app-quota`` GLOBAL, ``tenant-app-quota`` TENANT, a name containing "burst" BURST."""
        name = self.name.lower()
        if name in _POLICY_KINDS:
            return _POLICY_KINDS[name]
        return LimitKind.BURST if "burst" in name else None


@dataclass(frozen=True)
class RateLimitReport:
    """What one response's headers say about the quotas; every field None (or empty) when not said."""

    reason: LimitKind | None  # from RateLimit-Reason (429s); None when absent or unknown
    limit: int | None  # X-RateLimit-Limit
    remaining: int | None  # X-RateLimit-Remaining
    reset_in_s: float | None  # seconds until X-RateLimit-Reset
    retry_after_s: float | None  # Retry-After / Beta-Retry-After
    near_limit: bool  # X-RateLimit-NearLimit: true (case-insensitive)
    policies: tuple[QuotaPolicy, ...]
    # The lower-case names of the rate-limit headers the response carried, well-formed or not.
    present: frozenset[str] = field(default=frozenset())

    @classmethod
    def from_headers(cls, headers: Mapping[str, str], now: float) -> RateLimitReport:
        """Read ``headers`` (any case of names: a dict or requests' ``CaseInsensitiveDict``) at epoch
        time ``now``. Never raises: a malformed part is ignored and the rest kept."""
        found = _rate_limit_headers(headers)

        def value(name: str) -> str | None:
            text = found.get(name)
            return text if text is not None and len(text) <= MAX_HEADER_CHARS else None

        def either(name: str) -> str | None:  # the unprefixed header wins when both are there
            return value(name) if name in found else value(BETA_PREFIX + name)

        policies = _join(_entries(either(POLICY)), _entries(either(RATELIMIT)))
        reason = value(REASON)
        near = value(X_NEAR_LIMIT)
        return cls(
            reason=_REASONS.get(reason.strip().lower()) if reason is not None else None,
            limit=_integer(value(X_LIMIT)),
            remaining=_integer(value(X_REMAINING)),
            reset_in_s=_seconds(ratelimit_reset_s, value(X_RESET), now),
            retry_after_s=_seconds(retry_after_s, either(RETRY_AFTER), now),
            near_limit=near is not None and near.strip().lower() == "true",
            policies=policies,
            present=frozenset(found),
        )

    def policy(self, kind: LimitKind) -> QuotaPolicy | None:
        """The first policy of ``kind``, if the headers name one."""
        return next((p for p in self.policies if p.kind is kind), None)

    def quota_remaining(self, kind: LimitKind) -> int | None:
        """What is left of the ``kind`` pool: its structured ``r``, else ``X-RateLimit-Remaining`` if that
        pool is the one the ``X-RateLimit-*`` headers describe (the only policy named, the pool the
        reason names, or the one policy whose quota is ``X-RateLimit-Limit``). None when no policy names
        ``kind``: which pool ``X-RateLimit-Remaining`` counts is not guessed."""
        policy = self.policy(kind)
        if policy is None:
            return None
        if policy.remaining is not None:
            return policy.remaining
        return self.remaining if self.remaining is not None and self._counted_pool() is policy else None

    def kind_refused(self) -> LimitKind | None:
        """For a 429: which pool refused. The reason if given, else the kind whose pool has nothing left
        (``quota_remaining`` 0; GLOBAL first, then TENANT, then BURST), else None."""
        if self.reason is not None:
            return self.reason
        return next((kind for kind in LimitKind if self.quota_remaining(kind) == 0), None)

    @property
    def seen(self) -> bool:
        """Whether the response carried any rate-limit header at all (even a malformed one)."""
        return bool(self.present)

    def _counted_pool(self) -> QuotaPolicy | None:
        """The policy the ``X-RateLimit-*`` headers describe, when the headers say which; else None."""
        if len(self.policies) == 1:
            return self.policies[0]
        if self.reason is not None and (named := self.policy(self.reason)) is not None:
            return named
        if self.limit is not None:
            matching = [p for p in self.policies if p.quota == self.limit]
            if len(matching) == 1:
                return matching[0]
        return None


# -- reading -------------------------------------------------------------------------------------------
def _rate_limit_headers(headers: Mapping[str, str]) -> dict[str, str | None]:
    """The rate-limit headers by lower-case name; None for a value that is not text."""
    found: dict[str, str | None] = {}
    for name, text in headers.items():
        if isinstance(name, str) and (key := name.strip().lower()) in RATE_LIMIT_HEADERS:
            found[key] = text if isinstance(text, str) else None
    return found


def _seconds(read: Callable[[str | None, float], float | None], text: str | None, now: float) -> float | None:
    """``read(text, now)`` (``retry_after_s`` or ``ratelimit_reset_s``); None if it fails on odd input.
    Both forms are ASCII: other text is refused here (``float`` reads fullwidth digits as numbers)."""
    if text is None or not text.isascii():
        return None
    try:
        seconds = read(text, now)
    except (ValueError, TypeError, OverflowError, IndexError):
        return None
    return seconds if seconds is not None and math.isfinite(seconds) and seconds >= 0 else None


def _integer(text: str | None) -> int | None:
    """A non-negative integer (ASCII digits only, at most ``MAX_INTEGER_DIGITS``), else None."""
    if text is None:
        return None
    text = text.strip()
    if not text or len(text) > MAX_INTEGER_DIGITS or not _DIGITS.issuperset(text):
        return None
    return int(text)


def _decimal(text: str) -> float | None:
    """A non-negative integer or decimal (``600``, ``0.5``; no sign, no exponent), else None."""
    text = text.strip()
    whole, dot, fraction = text.partition(".")
    if len(text) > MAX_DECIMAL_CHARS or not whole or not _DIGITS.issuperset(whole):
        return None
    if dot and (not fraction or not _DIGITS.issuperset(fraction)):
        return None
    return float(text)


def _split(text: str, separator: str) -> list[str]:
    """``text`` cut at each ``separator`` outside a double-quoted string (``\\`` escapes inside one).
    An unterminated string runs to the end, so the part it starts in fails to parse on its own."""
    parts: list[str] = []
    start, quoted, escaped = 0, False, False
    for index, char in enumerate(text):
        if escaped:
            escaped = False
        elif quoted:
            if char == "\\":
                escaped = True
            elif char == '"':
                quoted = False
        elif char == '"':
            quoted = True
        elif char == separator:
            parts.append(text[start:index])
            start = index + 1
    parts.append(text[start:])
    return parts


def _name(text: str) -> str | None:
    """An entry's name: a Structured Fields string (printable ASCII, ``\\"`` and ``\\\\`` escapes) or a
    bare token; None for anything else (an unterminated string, an inner list, a number, non-ASCII)."""
    text = text.strip()
    if not text:
        return None
    if text[0] != '"':
        ok = text[0] in _TOKEN_FIRST and _TOKEN_CHARS.issuperset(text)
        return text if ok else None
    chars: list[str] = []
    escaped = False
    for index in range(1, len(text)):
        char = text[index]
        if not " " <= char <= "~":
            return None
        if escaped:
            if char not in '"\\':
                return None
            chars.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == '"':
            # the closing quote must end the name; an empty name names nothing
            return "".join(chars) if index == len(text) - 1 and chars else None
        else:
            chars.append(char)
    return None  # unterminated


@dataclass
class _Entry:
    name: str
    numbers: dict[str, int | float] = field(default_factory=dict)


def _entries(text: str | None) -> list[_Entry]:
    """The entries of a ``RateLimit`` or ``RateLimit-Policy`` value: the first ``MAX_POLICIES`` that
    have a valid name (the first of each name), each with its valid ``q``, ``w``, ``r`` and ``t``."""
    if text is None:
        return []
    entries: dict[str, _Entry] = {}
    for member in _split(text, ","):
        if len(entries) >= MAX_POLICIES:
            break
        name_text, *parameters = _split(member, ";")
        name = _name(name_text)
        if name is None or name in entries:
            continue
        entry = entries[name] = _Entry(name)
        for parameter in parameters:
            key, _, raw = parameter.partition("=")
            key = key.strip().lower()
            number = _integer(raw) if key in ("q", "w", "r") else _decimal(raw) if key == "t" else None
            if number is not None:  # a later valid value wins (Structured Fields: the last one)
                entry.numbers[key] = number
    return list(entries.values())


def _join(policies: list[_Entry], limits: list[_Entry]) -> tuple[QuotaPolicy, ...]:
    """``RateLimit-Policy`` entries in their order, each with the ``RateLimit`` entry of its name; then
    the ``RateLimit`` entries no policy names. At most ``MAX_POLICIES``."""
    declared = {entry.name: entry for entry in policies}
    by_name = {entry.name: entry for entry in limits}
    names = [*declared, *(name for name in by_name if name not in declared)]
    joined: list[QuotaPolicy] = []
    for name in names[:MAX_POLICIES]:
        policy = declared[name].numbers if name in declared else {}
        limit = by_name[name].numbers if name in by_name else {}
        joined.append(
            QuotaPolicy(
                name=name,
                quota=_as_int(policy.get("q")),
                window_s=_as_int(policy.get("w")),
                remaining=_as_int(limit.get("r")),
                reset_in_s=float(limit["t"]) if "t" in limit else None,
            )
        )
    return tuple(joined)


def _as_int(number: int | float | None) -> int | None:
    return number if isinstance(number, int) else None
