"""The Confluence client: idempotent GETs under ``<apiBaseUrl>/wiki``, streamed across cursor pages.

How it talks HTTP (the container's session, the token per request and no redirects, timeouts within
the Lambda's remaining time, backoff and server hints, redacted error text) is ``forge_remote.outbound``,
shared with every other client. What is Confluence's stays here: which paths may be sent (a ``next``
link is followed only if the path requests will send stays under ``<apiBaseUrl>/wiki/``), cursors (a
listing that repeats a page, or runs past ``MAX_PAGES_PER_LISTING`` pages, fails for good instead of
looping), and what each status means in the library's errors. Every request re-reads the token
(``token()`` re-checks expiry and may raise ``TokenUnavailable``). Only idempotent requests are
retried: 429/503 honour ``Retry-After`` (clamped), else ``X-RateLimit-Reset``, else exponential backoff
with full jitter; other 5xx and connection errors back off too. Attempts are bounded and no sleep runs
past the Lambda's remaining time: the job is deferred (``RetryLater``) instead.

Points: every answer's cost under Atlassian's points-based rate limits (``confluence/points.py``) is
added to ``points_spent``, so a job's cost is a number. With a ``meter`` (``budget/meter.py``) each
request first reserves its estimated points from the fleet's budget (raising ``BudgetWait`` when the
share is spent) and the answer settles it; a quota 429 then pauses the pool it names for the fleet.
"""

from __future__ import annotations

import logging
import random
import re
import string
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import requests

from forge_remote import clock
from forge_remote.confluence.api_hosts import require_allowed_api_base
from forge_remote.confluence.cql import Cql
from forge_remote.confluence.points import request_estimate, response_points
from forge_remote.confluence.rate_limits import RateLimitReport
from forge_remote.errors import (
    ConfluenceError,
    ConfluenceUnavailable,
    Forbidden,
    NotFound,
    RetryLater,
    ScopeMissing,
    TokenRejected,
)
from forge_remote.outbound import (
    IDEMPOTENT_METHODS,
    RATE_LIMITED,
    SERVER_ERRORS,
    TRANSIENT_ERRORS,
    Retries,
    bounded_timeouts,
    error_message,
    rate_limit_hint_s,
    send,
)
from forge_remote.tokens.store import token_sha256

if TYPE_CHECKING:
    from forge_remote.budget.meter import PointsMeter

logger = logging.getLogger(__name__)

# Counted per response as ``ConfluenceRefusals`` by status: token refused, not allowed, rate limited.
COUNTED_STATUSES = frozenset({401, 403, 429})
LOGGED_HEADERS = (
    "Retry-After",
    "X-RateLimit-Limit",
    "X-RateLimit-Remaining",
    "X-RateLimit-Reset",
    "X-RateLimit-NearLimit",
    "RateLimit-Reason",
    "RateLimit",
    "RateLimit-Policy",
    "Beta-RateLimit",
    "Beta-RateLimit-Policy",
)
SAFETY_MARGIN_S = 3.0  # left for the caller to record the deferral after we give up
INCONCLUSIVE_PROBE_DELAY_S = 60.0
V2_BODY_FORMATS = frozenset({"storage", "atlas_doc_format", "view", "export_view", "anonymous_export_view"})
MAX_KEYS_PER_REQUEST = 250  # v2 /spaces ``keys`` maxItems
_WIKI_PATH = re.compile(r"(?:/[A-Za-z0-9_~:@,=+-][A-Za-z0-9._~:@,=+-]*)+/?")  # no "." or ".." segments
# A cursor loop the visited set cannot see (a fresh cursor every time) ends here: at 250 results a
# page that is 2.5 million results, far beyond any listing a job should stream in one invocation.
MAX_PAGES_PER_LISTING = 10_000
_UNRESERVED = frozenset(string.ascii_letters + string.digits + "-._~")
_PERCENT_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")


def _scope_refusal(response: requests.Response, message: str) -> bool:
    """Atlassian's 401 for a token without the operation's scope: the token itself is not refused."""
    category = response.headers.get("X-Failure-Category", "")
    return category == "FAILURE_CLIENT_SCOPE_CHECK" or "scope does not match" in message.lower()


def _next_link_refused(why: str) -> ConfluenceError:
    """Permanent (the job goes to the DLQ); names no part of the link, which may carry anything."""
    return ConfluenceError(0, f"next link leaves the site ({why}); not followed")


def _remove_dot_segments(path: str) -> str:
    """RFC 3986 section 5.2.4 on an absolute path: what urllib3 does to it before sending."""
    segments = path.split("/")[1:]
    output: list[str] = []
    for segment in segments:
        if segment == "..":
            if output:
                output.pop()
        elif segment != ".":
            output.append(segment)
    if segments and segments[-1] in (".", ".."):
        output.append("")  # "/a/b/.." is "/a/", not "/a"
    return "/" + "/".join(output)


def _normalise_path(path: str) -> str:
    """The path as the server will read it: unreserved escapes decoded (requests does that, turning
    ``%2e%2e`` into ``..``), then dot segments removed. Other escapes (``%2f``, ``%5c``, ``%25``) stay."""

    def decode(match: re.Match[str]) -> str:
        char = chr(int(match.group(1), 16))
        return char if char in _UNRESERVED else match.group(0)

    return _remove_dot_segments(_PERCENT_ESCAPE.sub(decode, path))


def resolve_next_link(link: str, base_url: str) -> str:
    """The URL requests will send for a ``_links.next`` of the site at ``base_url`` (an apiBaseUrl).

    v1 links lack ``/wiki``, v2 links include it; absolute links must be on the base's scheme, host
    and port. The check runs on the normalised path, not on the text: a link with dot segments
    (literal or percent-encoded) that reads as "under the base" would otherwise take the token to
    another cloud id or another API on the same host. Raises ``ConfluenceError`` when refused.
    """
    # urlsplit drops tabs and newlines, WHATWG parsers read "\" as "/", and non-ASCII may normalise
    # to a delimiter: refuse them rather than check a cleaned-up copy. Atlassian's links are encoded.
    if "\\" in link or "#" in link or not all("!" <= c <= "~" for c in link):
        raise _next_link_refused("a backslash, fragment, space, control or non-ASCII character")
    base = urlsplit(base_url)
    try:
        parts = urlsplit(link)
    except ValueError:  # e.g. an unbalanced "[" in the authority
        raise _next_link_refused("not a valid URL") from None
    if parts.scheme or parts.netloc:
        if (parts.scheme.lower(), parts.netloc.lower()) != (base.scheme.lower(), base.netloc.lower()):
            raise _next_link_refused("another scheme, host, port or user")
        path = parts.path
    elif parts.path.startswith("/"):
        path = base.path + ("" if parts.path.startswith("/wiki/") else "/wiki") + parts.path
    else:
        raise _next_link_refused("not an absolute path")
    path = _normalise_path(path)
    if "%" in path:
        raise _next_link_refused("an encoded slash, backslash or other escape in its path")
    if not (path.startswith(base.path + "/wiki/") and _WIKI_PATH.fullmatch(path)):
        raise _next_link_refused("its path is not under the apiBaseUrl's /wiki/")
    url = urlunsplit((base.scheme, base.netloc, path, parts.query, ""))
    # Belt and braces: let requests prepare it, and send only what it would put on the wire if that
    # is still exactly the path checked above.
    prepared = requests.PreparedRequest()
    try:
        prepared.prepare_url(url, None)
        sent = urlsplit(prepared.url or "")
    except ValueError:  # requests' InvalidURL, urllib3's LocationParseError
        raise _next_link_refused("not a valid URL") from None
    if (sent.scheme, sent.netloc.lower(), sent.path) != (base.scheme.lower(), base.netloc.lower(), path):
        raise _next_link_refused("requests would send another path")
    return str(prepared.url)


def _prepared_url(url: str, params: Mapping[str, str] | None) -> str:
    """``url`` with ``params`` as requests encodes them: one spelling per page for the visited set."""
    prepared = requests.PreparedRequest()
    prepared.prepare_url(url, dict(params) if params else None)
    return str(prepared.url)


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
        safety_margin_s: float = SAFETY_MARGIN_S,
        timeout_s: tuple[float, float] = (3.05, 10.0),
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
        max_pages_per_listing: int = MAX_PAGES_PER_LISTING,
        meter: PointsMeter | None = None,
    ) -> None:
        # Token rule 8: checked before any token can be sent anywhere.
        self.base_url = require_allowed_api_base(api_base_url, allowed_hosts)
        self.wiki_url = self.base_url + "/wiki"
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if max_pages_per_listing < 1:
            raise ValueError("max_pages_per_listing must be at least 1")
        self._token = token
        self._session = session
        self._remaining_ms = remaining_ms
        self._max_attempts = max_attempts
        self._safety_margin_s = safety_margin_s
        self._timeout_s = timeout_s
        self._retries = Retries(
            peer="Confluence",
            max_wait_s=max_retry_after_s,
            read_timeout_s=timeout_s[1],
            safety_margin_s=safety_margin_s,
            remaining_ms=remaining_ms,
            sleep=sleep,
            rng=rng,
            log=logger,
        )
        self._max_pages = max_pages_per_listing
        self._meter = meter
        self.request_count = 0
        self.points_spent = 0  # what Atlassian charges for every answer this client received

    # -- what the jobs call
    def search_content(self, cql: Cql, *, expand: Sequence[str] = (), limit: int = 50) -> Iterator[dict[str, Any]]:
        """v1 CQL content search (``GET /rest/api/content/search``), streamed across ``_links.next``."""
        if not isinstance(cql, Cql):
            raise TypeError("build CQL with forge_remote.confluence.cql, never from strings")
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
        """Every result of a listing, page after page. A cursor cycle (A -> B -> A) would otherwise run
        until the Lambda times out and the whole batch comes back: a page seen before, or more than
        ``max_pages_per_listing`` pages, fails the listing for good."""
        visited = {_prepared_url(url, params)}
        pages = 0
        while True:
            document = self._get(url, params)
            pages += 1
            results = document.get("results")
            if not isinstance(results, list):
                raise ConfluenceError(200, "response has no results list")
            yield from results
            links = document.get("_links")
            link = links.get("next") if isinstance(links, dict) else None
            if not link:
                return
            next_url = self._next_url(link)
            if next_url in visited:
                raise ConfluenceError(200, f"pagination cycle: page {pages + 1} repeats an earlier page; stopped")
            if pages >= self._max_pages:
                raise ConfluenceError(200, f"listing has more than {self._max_pages} pages; stopped (a cursor loop?)")
            visited.add(next_url)
            url, params = next_url, None

    def _next_url(self, link: object) -> str:
        """The URL of a ``_links.next`` (see ``resolve_next_link``); never another site."""
        if not isinstance(link, str):
            raise ConfluenceError(0, "next link is not a string")
        return resolve_next_link(link, self.base_url)

    def _get(self, url: str, params: Mapping[str, str] | None) -> dict[str, Any]:
        response, document = self._request("GET", url, params)
        if not isinstance(document, dict):
            raise ConfluenceError(response.status_code, "response is not a JSON object", _trace_id(response))
        return document

    def _request(self, method: str, url: str, params: Mapping[str, str] | None) -> tuple[requests.Response, Any]:
        """Send with retries and return a 2xx response and its JSON document (None if not JSON), or raise."""
        if method not in IDEMPOTENT_METHODS:
            raise ValueError(f"{method} is not idempotent; this client only sends idempotent requests")
        retries = self._retries
        for attempt in range(1, self._max_attempts + 1):
            token = self._token()  # re-checks expiry before every request (token rule 4)
            last = attempt == self._max_attempts
            try:
                response, document = self._send(method, url, params, token)
            except TRANSIENT_ERRORS as exc:
                reason = f"Confluence unreachable ({type(exc).__name__})"
                if last:
                    raise RetryLater(f"{reason} after {attempt} attempts", retries.cap(attempt)) from None
                retries.wait(retries.backoff(attempt), reason, attempt)
                continue
            except requests.RequestException as exc:
                raise ConfluenceError(0, f"request failed ({type(exc).__name__})") from None
            status = response.status_code
            if 200 <= status < 300:
                return response, document
            if status in RATE_LIMITED:
                hint = rate_limit_hint_s(response.headers)
                reason = f"Confluence HTTP {status}"
                if last:
                    delay = min(hint, retries.max_wait_s) if hint is not None else retries.cap(attempt)
                    raise RetryLater(f"{reason} after {attempt} attempts", delay)
                retries.wait(retries.backoff(attempt) if hint is None else hint, reason, attempt)
            elif status in SERVER_ERRORS:
                if last:
                    message = error_message(response, token)
                    raise ConfluenceUnavailable(status, f"{message} (after {attempt} attempts)", _trace_id(response))
                retries.wait(retries.backoff(attempt), f"Confluence HTTP {status}", attempt)
            else:
                raise self._error(response, token)
        raise AssertionError("unreachable")  # pragma: no cover

    def _send(
        self, method: str, url: str, params: Mapping[str, str] | None, token: str
    ) -> tuple[requests.Response, Any]:
        """One exchange: reserve its points (with a meter), send, parse, settle. Returns the response and
        its JSON document for a 2xx (None otherwise, or if not JSON)."""
        timeouts = (
            self._timeout_s
            if self._remaining_ms is None
            else bounded_timeouts(self._timeout_s, self._remaining_ms, self._safety_margin_s, "another request")
        )
        parts = urlsplit(url)
        path = parts.path
        ticket = None
        if self._meter is not None:  # may raise BudgetWait: nothing is sent
            ticket = self._meter.before(
                request_estimate(method, path, {**dict(parse_qsl(parts.query)), **(params or {})})
            )
        self.request_count += 1
        try:
            response = send(method, url, token=token, timeout=timeouts, session=self._session, params=params)
        except requests.RequestException as exc:
            # The reservation stands: Atlassian may have charged a request whose answer never came.
            logger.warning("Confluence %s %s failed: %s", method, path, type(exc).__name__)
            raise
        document = None
        if 200 <= response.status_code < 300:
            try:
                document = response.json()
            except ValueError:
                document = None
        points = response_points(method, path, response.status_code, document)
        self.points_spent += points
        _log_exchange(method, path, response, points)
        if response.status_code in COUNTED_STATUSES:
            from forge_remote.telemetry import counts  # only refusals pay for it (cold start)

            counts.count("ConfluenceRefusals", "status", str(response.status_code))
        if self._meter is not None and ticket is not None:
            report = RateLimitReport.from_headers(response.headers, clock.now())
            self._meter.after(ticket, points, report, response.status_code)  # a quota 429: BudgetWait
        return response, document

    def _error(self, response: requests.Response, token: str) -> Exception:
        status, trace = response.status_code, _trace_id(response)
        message = error_message(response, token)
        if status == 401 and _scope_refusal(response, message):
            return ScopeMissing(401, f"{message} (the manifest's permissions.scopes lack this call's scope)", trace)
        if status == 401:
            # Which token (its digest, never the token): the worker invalidates exactly that one.
            return TokenRejected(401, trace, token_sha256=token_sha256(token))
        if status in (403, 404):
            return self._forbidden_or_expired(status, message, token, trace)
        if 300 <= status < 400:
            return ConfluenceError(status, "redirect not followed (the token stays on the apiBaseUrl)", trace)
        if status >= 500:
            return ConfluenceUnavailable(status, message, trace)
        return ConfluenceError(status, message, trace)

    def _forbidden_or_expired(self, status: int, message: str, token: str, trace: str | None) -> Exception:
        """Expired OAuth tokens are sometimes answered 403 (v1) or 404 (v2): ask a question any valid
        token can answer before blaming the content."""
        accepted = self._token_accepted(token)
        if accepted is False:
            return TokenRejected(status, trace, token_sha256=token_sha256(token))
        if accepted is None:
            reason = f"Confluence HTTP {status} and the token check was inconclusive"
            return RetryLater(reason, INCONCLUSIVE_PROBE_DELAY_S)
        return (NotFound if status == 404 else Forbidden)(status, message, trace)

    def _token_accepted(self, token: str) -> bool | None:
        """Probe ``GET /api/v2/spaces?limit=1`` with the same token: None when it cannot tell."""
        try:
            probe, _ = self._send("GET", self.wiki_url + "/api/v2/spaces", {"limit": "1"}, token)
        except requests.RequestException:
            return None
        if probe.status_code in (401, 403, 404):
            return False
        return True if 200 <= probe.status_code < 300 else None


def _trace_id(response: requests.Response) -> str | None:
    return response.headers.get("atl-traceid") or response.headers.get("atl-request-id")


def _log_exchange(method: str, path: str, response: requests.Response, points: int) -> None:
    """One line per exchange: method, path (no query), status, points, trace ids, rate-limit headers."""
    headers = response.headers
    fields: dict[str, Any] = {"method": method, "path": path, "status": response.status_code, "points": points}
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
