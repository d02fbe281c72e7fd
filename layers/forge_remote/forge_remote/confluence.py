"""The Confluence client: a ``requests`` session per container, base ``<apiBaseUrl>/wiki``.

Every request re-reads the token (``token()`` re-checks expiry and may raise ``TokenUnavailable``),
sends it only to the allowed apiBaseUrl (redirects and foreign ``next`` links are not followed) and
never logs it. Only idempotent requests are retried: 429/503 honour ``Retry-After`` (clamped), else
``X-RateLimit-Reset``, else exponential backoff with full jitter; other 5xx and connection errors
back off too. Attempts are bounded and no sleep runs past the Lambda's remaining time: the job is
deferred (``RetryLater``) instead.
"""

from __future__ import annotations

import logging
import math
import random
import re
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

import requests

from forge_remote.cql import Cql
from forge_remote.errors import ConfluenceError, RetryLater, TokenRejected
from forge_remote.urls import require_allowed_api_base

logger = logging.getLogger(__name__)

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
RATE_LIMITED = frozenset({429, 503})  # these may say when to come back
SERVER_ERRORS = frozenset({500, 502, 504})
LOGGED_HEADERS = (
    "Retry-After",
    "X-RateLimit-Limit",
    "X-RateLimit-Remaining",
    "X-RateLimit-Reset",
    "X-RateLimit-NearLimit",
    "RateLimit-Reason",
)
BACKOFF_BASE_S = 1.0
BACKOFF_CAP_S = 30.0
SAFETY_MARGIN_S = 3.0  # left for the caller to record the deferral after we give up
INCONCLUSIVE_PROBE_DELAY_S = 60.0
V2_BODY_FORMATS = frozenset({"storage", "atlas_doc_format", "view", "export_view", "anonymous_export_view"})
MAX_KEYS_PER_REQUEST = 250  # v2 /spaces ``keys`` maxItems
_WIKI_PATH = re.compile(r"(?:/[A-Za-z0-9_~:@,=+-][A-Za-z0-9._~:@,=+-]*)+/?")  # no "." or ".." segments

_session: requests.Session | None = None


def shared_session() -> requests.Session:
    """The container's session, created on first use: connections are reused across invocations."""
    global _session
    if _session is None:
        _session = requests.Session()
    return _session


class NotFound(ConfluenceError):
    """404 that a valid token also gets: the content does not exist or the app cannot see it."""


class Forbidden(ConfluenceError):
    """403 that a valid token also gets: the app lacks a permission or scope."""


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


def error_message(response: requests.Response) -> str:
    """Atlassian's message from a v1, v2, gateway, empty or plain-text error body (at most 300 chars)."""
    try:
        document = response.json()
    except ValueError:
        text = " ".join((response.text or "").split())
        return text[:300] or response.reason or f"HTTP {response.status_code}"
    message = None
    if isinstance(document, dict):
        errors = document.get("errors")
        if isinstance(errors, list) and errors and isinstance(errors[0], dict):  # v2
            first = errors[0]
            parts = [str(first[k]) for k in ("title", "detail") if first.get(k)]
            message = ": ".join(parts) or (str(first["code"]) if first.get("code") else None)
        elif document.get("message"):  # v1 {"statusCode", "message", "data"}, gateway {"code", "message"}
            message = str(document["message"])
    return (message or response.reason or f"HTTP {response.status_code}")[:300]


class ConfluenceClient:
    """Typed GETs against one site's Confluence, streaming across cursor pages."""

    def __init__(
        self,
        api_base_url: str,
        token: Callable[[], str],
        *,
        allowed_hosts: Collection[str] = ("api.atlassian.com",),
        session: requests.Session | None = None,
        remaining_ms: Callable[[], int] | None = None,
        max_attempts: int = 4,
        max_retry_after_s: float = 120.0,
        timeout_s: tuple[float, float] = (3.05, 10.0),
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ) -> None:
        # Token rule 8: checked before any token can be sent anywhere.
        self.base_url = require_allowed_api_base(api_base_url, allowed_hosts)
        self.wiki_url = self.base_url + "/wiki"
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self._token = token
        self._session = session
        self._remaining_ms = remaining_ms
        self._max_attempts = max_attempts
        self._max_retry_after_s = max_retry_after_s
        self._timeout_s = timeout_s
        self._sleep = sleep
        self._rng = rng or random.Random()  # noqa: S311 (jitter, not security)
        self.request_count = 0

    # -- what the jobs call
    def search_content(self, cql: Cql, *, expand: Sequence[str] = (), limit: int = 50) -> Iterator[dict[str, Any]]:
        """v1 CQL content search (``GET /rest/api/content/search``), streamed across ``_links.next``."""
        if not isinstance(cql, Cql):
            raise TypeError("build CQL with forge_remote.cql, never from strings")
        if limit < 1:
            raise ValueError("limit must be at least 1")
        params = {"cql": str(cql), "limit": str(limit)}
        if expand:
            params["expand"] = ",".join(expand)
        yield from self._paginate(self.wiki_url + "/rest/api/content/search", params)

    def get_page(self, page_id: int | str, *, body_format: str | None = None) -> dict[str, Any]:
        """v2 ``GET /api/v2/pages/{id}``, optionally with the body in ``body_format`` (e.g. ``storage``)."""
        text = str(page_id)
        if isinstance(page_id, bool) or not (text.isascii() and text.isdigit()):
            raise ValueError("page id must be a non-negative integer")
        if body_format is not None and body_format not in V2_BODY_FORMATS:
            raise ValueError(f"body_format must be one of {sorted(V2_BODY_FORMATS)}")
        params = {"body-format": body_format} if body_format else None
        return self._get(f"{self.wiki_url}/api/v2/pages/{int(text)}", params)

    def spaces_by_keys(self, keys: Sequence[str]) -> Iterator[dict[str, Any]]:
        """v2 ``GET /api/v2/spaces?keys=`` (space keys to ids), streamed across ``_links.next``."""
        if isinstance(keys, str):
            raise TypeError("spaces_by_keys takes a list of keys, not one string")
        if not all(isinstance(k, str) and k and "," not in k for k in keys):
            raise ValueError("space keys must be non-empty strings without commas")
        for i in range(0, len(keys), MAX_KEYS_PER_REQUEST):
            chunk = keys[i : i + MAX_KEYS_PER_REQUEST]
            params = {"keys": ",".join(chunk), "limit": str(MAX_KEYS_PER_REQUEST)}
            yield from self._paginate(self.wiki_url + "/api/v2/spaces", params)

    def get_json(self, path: str, params: Mapping[str, str] | None = None) -> dict[str, Any]:
        """Any GET under ``/wiki``: ``path`` is relative to it, e.g. ``/api/v2/pages/123/labels``."""
        if not isinstance(path, str) or not _WIKI_PATH.fullmatch(path):
            raise ValueError("path must be a plain absolute path under /wiki (no '.', '..', '//', '?', '%')")
        return self._get(self.wiki_url + path, params)

    # -- machinery
    def _paginate(self, url: str, params: Mapping[str, str] | None) -> Iterator[dict[str, Any]]:
        while True:
            document = self._get(url, params)
            results = document.get("results")
            if not isinstance(results, list):
                raise ConfluenceError(200, "response has no results list")
            yield from results
            links = document.get("_links")
            link = links.get("next") if isinstance(links, dict) else None
            if not link:
                return
            next_url = self._next_url(link)
            if next_url == url:
                raise ConfluenceError(200, "next link repeats the current page")
            url, params = next_url, None

    def _next_url(self, link: object) -> str:
        """The URL of a ``_links.next``: v1's lacks ``/wiki``, v2's includes it; never another host."""
        if not isinstance(link, str):
            raise ConfluenceError(0, "next link is not a string")
        parts = urlsplit(link)
        if parts.scheme or parts.netloc:
            # An absolute link must stay under this installation's apiBaseUrl: the token goes with it.
            if not link.startswith(self.base_url + "/"):
                raise ConfluenceError(0, "next link points to another host or site; not followed")
            return link
        if not link.startswith("/"):
            raise ConfluenceError(0, "next link is not an absolute path")
        return (self.base_url if link.startswith("/wiki/") else self.wiki_url) + link

    def _get(self, url: str, params: Mapping[str, str] | None) -> dict[str, Any]:
        response = self._request("GET", url, params)
        try:
            document = response.json()
        except ValueError:
            document = None
        if not isinstance(document, dict):
            raise ConfluenceError(response.status_code, "response is not a JSON object", _trace_id(response))
        return document

    def _request(self, method: str, url: str, params: Mapping[str, str] | None) -> requests.Response:
        """Send with retries and return a 2xx response, or raise."""
        if method not in IDEMPOTENT_METHODS:
            # Retrying a write could apply it twice.
            raise ValueError(f"{method} is not idempotent; this client only sends idempotent requests")
        for attempt in range(1, self._max_attempts + 1):
            token = self._token()  # re-checks expiry before every request (token rule 4)
            last = attempt == self._max_attempts
            try:
                response = self._send(method, url, params, token)
            except (requests.Timeout, requests.ConnectionError, requests.exceptions.ChunkedEncodingError) as exc:
                reason = f"Confluence unreachable ({type(exc).__name__})"
                if last:
                    raise RetryLater(f"{reason} after {attempt} attempts", self._backoff_cap(attempt)) from None
                self._wait(self._backoff(attempt), reason, attempt)
                continue
            except requests.RequestException as exc:
                raise ConfluenceError(0, f"request failed ({type(exc).__name__})") from None
            status = response.status_code
            if 200 <= status < 300:
                return response
            if status in RATE_LIMITED:
                hint = self._hint_s(response)
                reason = f"Confluence HTTP {status}"
                if last:
                    delay = min(hint, self._max_retry_after_s) if hint is not None else self._backoff_cap(attempt)
                    raise RetryLater(f"{reason} after {attempt} attempts", delay)
                self._wait(self._backoff(attempt) if hint is None else hint, reason, attempt)
            elif status in SERVER_ERRORS:
                if last:
                    message = _redact(error_message(response), token)
                    raise ConfluenceError(status, f"{message} (after {attempt} attempts)", _trace_id(response))
                self._wait(self._backoff(attempt), f"Confluence HTTP {status}", attempt)
            else:
                raise self._error(response, token)
        raise AssertionError("unreachable")  # pragma: no cover

    def _send(self, method: str, url: str, params: Mapping[str, str] | None, token: str) -> requests.Response:
        self.request_count += 1
        session = self._session or shared_session()
        path = urlsplit(url).path
        try:
            response = session.request(
                method,
                url,
                params=params,
                headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
                timeout=self._timeout_s,
                allow_redirects=False,  # a redirect must not carry the token anywhere else
            )
        except requests.RequestException as exc:
            logger.warning("Confluence %s %s failed: %s", method, path, type(exc).__name__)
            raise
        _log_exchange(method, path, response)
        return response

    def _error(self, response: requests.Response, token: str) -> Exception:
        status, trace = response.status_code, _trace_id(response)
        if status == 401:
            return TokenRejected(401, trace)
        message = _redact(error_message(response), token)
        if status in (403, 404):
            # Expired OAuth tokens are sometimes answered 403 (v1) or 404 (v2): ask a question any
            # valid token can answer before blaming the content.
            accepted = self._token_accepted(token)
            if accepted is False:
                return TokenRejected(status, trace)
            if accepted is None:
                return RetryLater(
                    f"Confluence HTTP {status} and the token check was inconclusive", INCONCLUSIVE_PROBE_DELAY_S
                )
            return (NotFound if status == 404 else Forbidden)(status, message, trace)
        if 300 <= status < 400:
            return ConfluenceError(status, "redirect not followed (the token stays on the apiBaseUrl)", trace)
        return ConfluenceError(status, message, trace)

    def _token_accepted(self, token: str) -> bool | None:
        """Probe ``GET /api/v2/spaces?limit=1`` with the same token: None when it cannot tell."""
        try:
            probe = self._send("GET", self.wiki_url + "/api/v2/spaces", {"limit": "1"}, token)
        except requests.RequestException:
            return None
        if probe.status_code in (401, 403, 404):
            return False
        return True if 200 <= probe.status_code < 300 else None

    def _hint_s(self, response: requests.Response) -> float | None:
        now = time.time()  # wall time: the server's headers are about real time, not the token clock
        hint = retry_after_s(response.headers.get("Retry-After"), now)
        return hint if hint is not None else ratelimit_reset_s(response.headers.get("X-RateLimit-Reset"), now)

    @staticmethod
    def _backoff_cap(attempt: int) -> float:
        return min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2.0 ** (attempt - 1))

    def _backoff(self, attempt: int) -> float:
        """Full jitter: uniform between 0 and the exponential cap."""
        return self._rng.uniform(0, self._backoff_cap(attempt))

    def _wait(self, delay_s: float, reason: str, attempt: int) -> None:
        """Sleep ``delay_s`` before the next attempt, or raise ``RetryLater`` if that is not sensible."""
        if delay_s > self._max_retry_after_s:
            raise RetryLater(f"{reason}: asked to wait {delay_s:.0f}s", self._max_retry_after_s)
        if self._remaining_ms is not None:
            # The next attempt needs the wait, a full read timeout and a margin within this invocation.
            budget_s = self._remaining_ms() / 1000 - SAFETY_MARGIN_S - self._timeout_s[1]
            if delay_s > budget_s:
                raise RetryLater(f"{reason}: not enough time left in this invocation", delay_s)
        logger.info("Retrying Confluence in %.2fs (%s, attempt %d)", delay_s, reason, attempt)
        self._sleep(delay_s)


def _trace_id(response: requests.Response) -> str | None:
    return response.headers.get("atl-traceid") or response.headers.get("atl-request-id")


def _redact(text: str, token: str) -> str:
    """Remove the token, and any long piece of it, from text a server sent back."""
    if token:
        text = text.replace(token, "[redacted]")
    for piece in token.split("."):
        if len(piece) >= 16:  # a JWT's payload or signature alone is still a secret
            text = text.replace(piece, "[redacted]")
    return text


def _log_exchange(method: str, path: str, response: requests.Response) -> None:
    """One line per exchange: method, path (no query), status, trace ids, rate-limit headers."""
    headers = response.headers
    fields: dict[str, Any] = {"method": method, "path": path, "status": response.status_code}
    for name in ("atl-traceid", "atl-request-id"):
        if name in headers:
            fields[name] = headers[name]
    limits = {name: headers[name] for name in LOGGED_HEADERS if name in headers}
    if limits:
        fields["rate_limit"] = limits
    level = logging.WARNING if response.status_code >= 400 else logging.INFO
    logger.log(
        level,
        "Confluence %s %s -> %d (trace %s)",
        method,
        path,
        response.status_code,
        fields.get("atl-traceid") or fields.get("atl-request-id") or "-",
        extra={"confluence": fields},
    )
