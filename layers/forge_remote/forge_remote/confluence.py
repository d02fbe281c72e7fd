"""The Confluence client: a ``requests`` session per container, base ``<apiBaseUrl>/wiki``.

Every request re-reads the token (``token()`` re-checks expiry and may raise ``TokenUnavailable``),
sends it only to the allowed apiBaseUrl, and never logs it. 429/503 honour ``Retry-After``
(clamped), else ``X-RateLimit-Reset``, else exponential backoff with full jitter; other 5xx and
connection errors back off too; attempts are bounded and no sleep runs past the Lambda's remaining
time: the job is deferred (``RetryLater``) instead. Only GET is retried (idempotent).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote, urlsplit

import requests

from forge_remote.cql import Cql
from forge_remote.errors import ConfluenceError, RetryLater, TokenRejected
from forge_remote.urls import require_allowed_api_base

logger = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
RATE_LIMIT_HEADERS = (
    "X-RateLimit-Limit",
    "X-RateLimit-Remaining",
    "X-RateLimit-Reset",
    "X-RateLimit-NearLimit",
    "RateLimit-Reason",
    "Retry-After",
)
BACKOFF_BASE_S = 1.0
BACKOFF_CAP_S = 30.0
MAX_DEFER_HINT_S = 3600.0  # an absurd Retry-After is clamped to this before deferring
SAFETY_MARGIN_MS = 3000

_session: requests.Session | None = None


def shared_session() -> requests.Session:
    """One session per container: connection reuse across jobs and invocations."""
    global _session
    if _session is None:
        _session = requests.Session()
    return _session


class NotFound(ConfluenceError):
    """404 that a valid token also gets: the content does not exist or is not visible to the app."""


class Forbidden(ConfluenceError):
    """403 that a valid token also gets: the app lacks permission or scope."""


def _seconds(value: str | None, now: float) -> float | None:
    """``Retry-After`` as seconds: delta-seconds or an HTTP-date; None if absent or garbage."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - now
        except (TypeError, ValueError, IndexError):
            return None
    return seconds if seconds >= 0 else None


def _reset_seconds(value: str | None, now: float) -> float | None:
    """``X-RateLimit-Reset``: ISO 8601 (documented), or epoch seconds; lenient."""
    if not value:
        return None
    value = value.strip()
    try:
        number = float(value)
    except ValueError:
        try:
            when = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        return max(0.0, when.timestamp() - now)
    return max(0.0, number - now) if number > 1e9 else max(0.0, number)


def error_message(response: requests.Response) -> str:
    """Atlassian's message from v1, v2, gateway, empty or text error bodies."""
    try:
        document = response.json()
    except ValueError:
        text = (response.text or "").strip()
        return text[:200] or response.reason or f"HTTP {response.status_code}"
    if isinstance(document, dict):
        if isinstance(document.get("message"), str):
            return str(document["message"])[:500]
        errors = document.get("errors")
        if isinstance(errors, list) and errors and isinstance(errors[0], dict):
            first = errors[0]
            return str(first.get("detail") or first.get("title") or first.get("code") or "error")[:500]
    return response.reason or f"HTTP {response.status_code}"


class ConfluenceClient:
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
        parts = urlsplit(self.base_url)
        self._origin = f"{parts.scheme}://{parts.netloc}"
        self._token = token
        self._session = session
        self._remaining_ms = remaining_ms
        self._max_attempts = max(1, max_attempts)
        self._max_retry_after_s = max_retry_after_s
        self._timeout_s = timeout_s
        self._sleep = sleep
        self._rng = rng or random.Random()  # noqa: S311 (jitter, not security)
        self.request_count = 0

    # -- typed helpers for what the jobs call
    def search_content(self, cql: Cql, *, expand: Sequence[str] = (), limit: int = 50) -> Iterator[dict[str, Any]]:
        """v1 CQL content search, streamed across every ``_links.next`` cursor page."""
        if not isinstance(cql, Cql):
            raise TypeError("build CQL with forge_remote.cql, never from strings")
        params = {"cql": str(cql), "limit": str(max(1, min(limit, 250)))}
        if expand:
            params["expand"] = ",".join(expand)
        yield from self._paginate(self.wiki_url + "/rest/api/content/search", params)

    def get_page(self, page_id: int | str, *, body_format: str | None = None) -> dict[str, Any]:
        """v2 ``GET /pages/{id}``."""
        if not str(page_id).isdigit():
            raise ValueError("page id must be numeric")
        params = {"body-format": body_format} if body_format else None
        return self._get(f"{self.wiki_url}/api/v2/pages/{page_id}", params)

    def spaces_by_keys(self, keys: Sequence[str]) -> Iterator[dict[str, Any]]:
        """v2 ``GET /spaces?keys=`` (keys to ids), streamed across cursor pages."""
        if not keys:
            return
        params = {"keys": ",".join(keys), "limit": "250"}
        yield from self._paginate(self.wiki_url + "/api/v2/spaces", params)

    def get_json(self, path: str, params: Mapping[str, str] | None = None) -> dict[str, Any]:
        """Any GET under ``/wiki`` (``path`` starts with ``/``)."""
        if not path.startswith("/") or "//" in path or ".." in path:
            raise ValueError("path must be an absolute path under /wiki")
        return self._get(self.wiki_url + quote(path, safe="/-_.~,:"), params)

    # -- machinery
    def _paginate(self, url: str, params: Mapping[str, str] | None) -> Iterator[dict[str, Any]]:
        while True:
            document = self._get(url, params)
            yield from document.get("results", [])
            link = (document.get("_links") or {}).get("next")
            if not link:
                return
            url, params = self._next_url(link), None

    def _next_url(self, link: str) -> str:
        """v1 ``next`` lacks ``/wiki``; v2's includes it; an absolute link must stay on our host."""
        if link.startswith(("http://", "https://")):
            if not link.startswith(self._origin + "/"):
                raise ConfluenceError(0, "next link points to another host; not followed")
            return link
        if not link.startswith("/"):
            raise ConfluenceError(0, "next link is not a path")
        return (self.base_url if link.startswith("/wiki/") else self.wiki_url) + link

    def _get(self, url: str, params: Mapping[str, str] | None) -> dict[str, Any]:
        attempt = 0
        path = urlsplit(url).path
        while True:
            attempt += 1
            token = self._token()  # re-checks expiry before every request (rule 4)
            try:
                response = self._send(url, params, token)
            except (requests.Timeout, requests.ConnectionError) as exc:
                logger.warning("Confluence GET %s failed: %s", path, type(exc).__name__)
                self._wait_or_defer(attempt, self._backoff(attempt), f"Confluence unreachable ({type(exc).__name__})")
                continue
            status = response.status_code
            if 200 <= status < 300:
                try:
                    body: dict[str, Any] = response.json()
                except ValueError as exc:
                    raise ConfluenceError(status, "response is not JSON", _trace(response)) from exc
                return body
            if status in RETRY_STATUSES:
                self._wait_or_defer(attempt, self._retry_delay(response, attempt), f"Confluence HTTP {status}")
                continue
            raise self._error(response, token)

    def _send(self, url: str, params: Mapping[str, str] | None, token: str) -> requests.Response:
        self.request_count += 1
        session = self._session or shared_session()
        response = session.get(
            url,
            params=params,
            headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
            timeout=self._timeout_s,
            allow_redirects=False,  # a redirect must not carry the token anywhere else
        )
        _log_response(response, urlsplit(url).path)
        return response

    def _error(self, response: requests.Response, token: str) -> Exception:
        status, trace = response.status_code, _trace(response)
        if status == 401:
            return TokenRejected(401, trace)
        message = error_message(response).replace(token, "[redacted]")
        if status in (403, 404):
            # Expired OAuth tokens are sometimes answered 403 (v1) or 404 (v2): ask a question any
            # valid token can answer before blaming the content.
            verdict = self._token_accepted(token)
            if verdict is False:
                return TokenRejected(status, trace)
            if verdict is None:
                return RetryLater(f"Confluence HTTP {status} and the token check was inconclusive", 60)
            return (NotFound if status == 404 else Forbidden)(status, message, trace)
        if 300 <= status < 400:
            return ConfluenceError(status, "unexpected redirect; not followed", trace)
        return ConfluenceError(status, message, trace)

    def _token_accepted(self, token: str) -> bool | None:
        try:
            probe = self._send(self.wiki_url + "/api/v2/spaces", {"limit": "1"}, token)
        except (requests.Timeout, requests.ConnectionError):
            return None
        if probe.status_code in (401, 403, 404):
            return False
        return True if 200 <= probe.status_code < 300 else None

    def _retry_delay(self, response: requests.Response, attempt: int) -> float:
        now = time.time()
        if response.status_code in (429, 503):
            hinted = _seconds(response.headers.get("Retry-After"), now)
            if hinted is None:
                hinted = _reset_seconds(response.headers.get("X-RateLimit-Reset"), now)
            if hinted is not None:
                return min(hinted, MAX_DEFER_HINT_S)
        return self._backoff(attempt)

    def _backoff(self, attempt: int) -> float:
        return self._rng.uniform(0, min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** (attempt - 1)))

    def _wait_or_defer(self, attempt: int, delay_s: float, reason: str) -> None:
        if attempt >= self._max_attempts:
            raise RetryLater(f"{reason} after {attempt} attempts", max(delay_s, BACKOFF_BASE_S))
        if delay_s > self._max_retry_after_s:
            raise RetryLater(f"{reason}: asked to wait {delay_s:.0f}s", delay_s)
        if self._remaining_ms is not None:
            budget_ms = self._remaining_ms() - SAFETY_MARGIN_MS - self._timeout_s[1] * 1000
            if delay_s * 1000 > budget_ms:
                raise RetryLater(f"{reason}: not enough time left in this invocation", delay_s)
        logger.info("retrying Confluence in %.1fs (%s, attempt %d)", delay_s, reason, attempt)
        self._sleep(delay_s)


def _trace(response: requests.Response) -> str | None:
    return response.headers.get("atl-traceid") or response.headers.get("atl-request-id")


def _log_response(response: requests.Response, path: str) -> None:
    limits = {h: response.headers[h] for h in RATE_LIMIT_HEADERS if h in response.headers}
    logger.info(
        "Confluence GET %s -> %d",
        path,
        response.status_code,
        extra={"atl_traceid": _trace(response), "rate_limit": limits or None},
    )
