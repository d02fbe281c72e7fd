"""How this library talks HTTP to anyone: Confluence, Forge's GraphQL gateway, the personal data API.

One policy for every outbound client, so that a fix to one (a cookie that crossed tenants, a token
echoed in an error body, a sleep past the end of the invocation) is a fix to all of them:

- one ``requests.Session`` per container (``shared_session``): connections are reused, and nothing
  else. It keeps no cookies and carries no header of its own: every tenant's and user's calls share it.
- ``send``: the token only in that request's ``Authorization`` header; redirects are never followed
  (a redirect must not carry the token anywhere else).
- ``bounded_timeouts``: connect and read timeouts cut to the time the invocation has left.
- ``retry_after_s`` / ``ratelimit_reset_s`` / ``rate_limit_hint_s``: when a server asks us to come
  back, read leniently; the caller clamps it.
- ``Retries``: for clients that retry idempotent requests, exponential backoff with full jitter, and
  no sleep the invocation cannot afford (``RetryLater`` instead: the job is deferred).
- ``error_message`` / ``redact``: error text a server sends back, stripped of every piece of the
  token (and of any other secret named) *before* it is shortened; never the token in a message.

Which paths, statuses and errors mean what stays with each client. This module imports ``requests``:
only modules that send requests import it, and they do so when a job first needs them (cold start).
"""

from __future__ import annotations

import html
import logging
import math
import random
import re
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import unquote

import requests

from forge_remote.errors import RetryLater

logger = logging.getLogger(__name__)

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})  # the only ones ever retried: a write could apply twice
RATE_LIMITED = frozenset({429, 503})  # these may say when to come back
SERVER_ERRORS = frozenset({500, 502, 504})  # worth another attempt after a backoff
# Worth another attempt too: the request may never have reached the server, or its answer was cut.
TRANSIENT_ERRORS: tuple[type[requests.RequestException], ...] = (
    requests.Timeout,
    requests.ConnectionError,
    requests.exceptions.ChunkedEncodingError,
)
BACKOFF_BASE_S = 1.0
BACKOFF_CAP_S = 30.0
MIN_REQUEST_S = 1.0  # a request with less time than this left is not worth sending
MAX_ERROR_CHARS = 300  # of a server's error text, in exceptions, DLQ reasons and logs
# Redaction reads this much of an error body (a 10 MB HTML page need not be scanned whole): only the
# first MAX_ERROR_CHARS of what is left survive, so nothing past the scan can reach the message.
MAX_ERROR_SCAN_CHARS = 20_000
# Any run of this many characters of the token is removed from error text, wherever it was cut.
REDACT_MIN_RUN = 12
REDACTED = "[redacted]"
_JSON_ESCAPE = re.compile(r"\\u([0-9A-Fa-f]{4})")

_session: requests.Session | None = None


# -- the session and the request ---------------------------------------------------------------------
def shared_session() -> requests.Session:
    """The container's session, created on first use: connections are reused across invocations, and
    nothing else. Every tenant's and user's calls share it (all on api.atlassian.com), so it keeps no
    cookies: one set in answer to installation A's call would go with installation B's. Authorization
    and every other header are given per request, never set on the session."""
    global _session
    if _session is None:
        import http.cookiejar  # requests imports it anyway

        session = requests.Session()
        session.cookies.set_policy(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))
        _session = session
    return _session


def send(
    method: str,
    url: str,
    *,
    token: str,
    timeout: tuple[float, float],
    session: requests.Session | None = None,
    params: Mapping[str, str] | None = None,
    json: Any = None,
) -> requests.Response:
    """One request with ``token`` as its bearer, on ``session`` or the container's; raises what
    requests raises. Redirects are not followed: the token stays on the URL the caller checked."""
    return (session or shared_session()).request(
        method,
        url,
        params=params,
        json=json,
        headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
        timeout=timeout,
        allow_redirects=False,
    )


def bounded_timeouts(
    timeout_s: tuple[float, float], remaining_ms: Callable[[], int], margin_s: float, what: str
) -> tuple[float, float]:
    """Connect and read timeouts cut to the time this invocation has left less ``margin_s`` (a request
    never outlives the Lambda); ``RetryLater`` when less than ``MIN_REQUEST_S`` is left for ``what``."""
    left_s = remaining_ms() / 1000 - margin_s
    if left_s < MIN_REQUEST_S:
        raise RetryLater(f"not enough time left in this invocation for {what}", 0)
    return (min(timeout_s[0], left_s), min(timeout_s[1], left_s))


# -- when to come back -------------------------------------------------------------------------------
def retry_after_s(value: str | None, now: float) -> float | None:
    """``Retry-After`` in seconds (delta-seconds or HTTP-date); None when absent, negative or garbage."""
    if not value or not value.strip():
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value.strip())
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        if when.tzinfo is None:  # HTTP-dates are GMT
            when = when.replace(tzinfo=UTC)
        seconds = when.timestamp() - now
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def ratelimit_reset_s(value: str | None, now: float) -> float | None:
    """Seconds until ``X-RateLimit-Reset``: ISO 8601 (documented), else epoch seconds or milliseconds.

    Lenient: a small number is read as seconds from now. None when absent, garbage or in the past.
    """
    if not value or not value.strip():
        return None
    text = value.strip()
    try:
        number = float(text)
    except ValueError:
        try:
            when = datetime.fromisoformat(text.upper())
        except ValueError:
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = when.timestamp() - now
    else:
        if number > 1e12:
            seconds = number / 1000 - now
        elif number > 1e9:
            seconds = number - now
        else:
            seconds = number
    return seconds if math.isfinite(seconds) and seconds > 0 else None


def rate_limit_hint_s(headers: Mapping[str, str]) -> float | None:
    """What a rate-limited answer asks for: ``Retry-After``, else ``X-RateLimit-Reset``; None if neither."""
    now = time.time()  # wall time: the server's headers are about real time, not the token clock
    hint = retry_after_s(headers.get("Retry-After"), now)
    return hint if hint is not None else ratelimit_reset_s(headers.get("X-RateLimit-Reset"), now)


class Retries:
    """Waits between the attempts of one idempotent request: exponential backoff with full jitter, or
    the server's hint; at most ``max_wait_s``, and never a wait after which the next attempt (a full
    read timeout and ``safety_margin_s``) would not fit in what is left of the invocation."""

    def __init__(
        self,
        *,
        peer: str,
        max_wait_s: float,
        read_timeout_s: float,
        safety_margin_s: float,
        remaining_ms: Callable[[], int] | None,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
        log: logging.Logger = logger,
    ) -> None:
        self.peer = peer  # named in the log line, e.g. "Confluence"
        self.max_wait_s = max_wait_s
        self._read_timeout_s = read_timeout_s
        self._safety_margin_s = safety_margin_s
        self._remaining_ms = remaining_ms
        self._sleep = sleep
        self._rng = rng or random.Random()  # noqa: S311 (jitter, not security)
        self._log = log

    @staticmethod
    def cap(attempt: int) -> float:
        """The exponential ceiling after ``attempt`` (1-based): 1 s, 2 s, 4 s, ... up to ``BACKOFF_CAP_S``."""
        return min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2.0 ** (attempt - 1))

    def backoff(self, attempt: int) -> float:
        """Full jitter: uniform between 0 and the exponential cap."""
        return self._rng.uniform(0, self.cap(attempt))

    def wait(self, delay_s: float, reason: str, attempt: int) -> None:
        """Sleep ``delay_s`` before the next attempt, or raise ``RetryLater`` if that is not sensible."""
        if delay_s > self.max_wait_s:
            raise RetryLater(f"{reason}: asked to wait {delay_s:.0f}s", self.max_wait_s)
        if self._remaining_ms is not None:
            # The next attempt needs the wait, a full read timeout and a margin within this invocation.
            budget_s = self._remaining_ms() / 1000 - self._safety_margin_s - self._read_timeout_s
            if delay_s > budget_s:
                raise RetryLater(f"{reason}: not enough time left in this invocation", delay_s)
        self._log.info("Retrying %s in %.2fs (%s, attempt %d)", self.peer, delay_s, reason, attempt)
        self._sleep(delay_s)


# -- error text, without secrets ---------------------------------------------------------------------
def error_message(response: requests.Response, *secrets: str) -> str:
    """Atlassian's message from a v1, v2, gateway, empty or plain-text error body (at most 300 chars).

    ``secrets`` (the token, and whatever else the text must not carry, such as the account ids a
    request named) are removed from the whole text, every run of ``REDACT_MIN_RUN`` of their
    characters, *before* it is cut: cut first, a secret split at the limit has no whole copy or
    segment left to find, and its head survives. Text that still shows one once decoded
    (percent-encoded, JSON or HTML escapes) is withheld entirely.
    """
    secrets = tuple(s for s in secrets if s)
    message = redact(_error_text(response)[:MAX_ERROR_SCAN_CHARS], *secrets)[:MAX_ERROR_CHARS]
    if secrets and _token_spans(_decoded(message), *secrets):
        return f"{REDACTED} (the error text echoed a secret in an encoded form)"
    return message


def _error_text(response: requests.Response) -> str:
    """The message of an error body, in whichever shape it came: whole, or the first
    ``MAX_ERROR_SCAN_CHARS`` of a plain-text body (not yet cut to ``MAX_ERROR_CHARS``)."""
    try:
        document = response.json()
    except ValueError:
        text = " ".join((response.text or "")[:MAX_ERROR_SCAN_CHARS].split())
        return text or response.reason or f"HTTP {response.status_code}"
    message = None
    if isinstance(document, dict):
        errors = document.get("errors")
        if isinstance(errors, list) and errors and isinstance(errors[0], dict):  # v2
            first = errors[0]
            parts = [str(first[k]) for k in ("title", "detail") if first.get(k)]
            message = ": ".join(parts) or (str(first["code"]) if first.get("code") else None)
        elif document.get("message"):  # v1 {"statusCode", "message", "data"}, gateway {"code", "message"}
            message = str(document["message"])
    return message or response.reason or f"HTTP {response.status_code}"


def _token_spans(text: str, *tokens: str) -> list[tuple[int, int]]:
    """Where ``text`` holds runs of ``REDACT_MIN_RUN`` or more characters of any of ``tokens`` (merged
    spans); a secret shorter than that counts only as a whole copy.

    Pieces count, not only whole copies or JWT segments: a signature cut at a length limit, wrapped
    over lines or interrupted by an escape is still a secret. Many secrets (a batch of account ids)
    cost one pass over the text, not one each.
    """
    found: list[tuple[int, int]] = []
    long = [t for t in tokens if len(t) >= REDACT_MIN_RUN]
    for short in {t for t in tokens if 0 < len(t) < REDACT_MIN_RUN}:
        found.extend((m.start(), m.end()) for m in re.finditer(re.escape(short), text))
    if long:
        grams = {t[i : i + REDACT_MIN_RUN] for t in long for i in range(len(t) - REDACT_MIN_RUN + 1)}
        # Only runs of the secrets' own characters can hold a piece of one: most text is skipped at once.
        runs = re.compile(f"[{re.escape(''.join(sorted(set(''.join(long)))))}]{{{REDACT_MIN_RUN},}}")
        for run in runs.finditer(text):
            for i in range(run.start(), run.end() - REDACT_MIN_RUN + 1):
                if text[i : i + REDACT_MIN_RUN] in grams:
                    found.append((i, i + REDACT_MIN_RUN))
    spans: list[tuple[int, int]] = []
    for begin, end in sorted(found):
        if spans and spans[-1][1] >= begin:
            spans[-1] = (spans[-1][0], max(spans[-1][1], end))
        else:
            spans.append((begin, end))
    return spans


def redact(text: str, *tokens: str) -> str:
    """Replace every piece of the tokens (see ``_token_spans``) in text a server sent back."""
    spans = _token_spans(text, *tokens)
    if not spans:
        return text
    kept, start = [], 0
    for begin, end in spans:
        kept.append(text[start:begin])
        start = end
    kept.append(text[start:])
    return REDACTED.join(kept)


def _decoded(text: str) -> str:
    """``text`` with percent, JSON (``\\uXXXX``, ``\\/``) and HTML escapes undone, a few rounds deep:
    only used to ask whether the token hides in it."""
    for _ in range(3):
        decoded = _JSON_ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), text).replace("\\/", "/")
        decoded = html.unescape(unquote(decoded))
        if decoded == text:
            break
        text = decoded
    return text
