"""A Confluence Cloud emulator on loopback: the endpoints the jobs use, in the documented shapes.

v1 ``GET /wiki/rest/api/content/search`` (CQL as ``local/cql_eval.py`` reads it, opaque cursors,
``_links.next`` without the ``/wiki`` prefix), v1 ``GET /wiki/rest/api/user/current``, v2
``GET /wiki/api/v2/pages/{id}`` and ``GET /wiki/api/v2/spaces?keys=`` (``_links.next`` with ``/wiki``,
plus a ``Link`` header), all under ``/ex/confluence/<cloudId>`` like ``api.atlassian.com``. Shapes follow
Atlassian's OpenAPI descriptions (``tests/reference``; the tests validate against them). Every
request's token is checked: missing, revoked or expired (JWT ``exp`` against ``forge_remote.clock``) is
refused with 401, or with 403 on v1 and 404 on v2 paths in ``expired_token_status="v1-403-v2-404"``
mode. Faults are switchable (``fail_next``, ``delay_s``). Used by the tests, the local stack and the
benchmarks::

    with ConfluenceEmulator() as confluence:
        confluence.add_space("ENG", "Engineering")
        confluence.add_page("ENG", "Release notes", labels=["audit"])
        api_base_url = confluence.api_base_url

Scopes are checked on every request, as Atlassian's gateway does: the request's operation (method and
path template) is looked up in Atlassian's OpenAPI descriptions (``local/oauth_scopes.py``), and a
token none of whose scope sets is wholly granted is refused with 401 ``{"code": 401, "message":
"Unauthorized; scope does not match"}``. A token's scopes are its ``scope`` claim (what
``ForgeEmulator`` mints: the manifest's ``permissions.scopes`` unless told otherwise); a token without
one (opaque, or minted elsewhere) gets ``default_scopes``, the manifest's unless given. Every operation
the emulator serves must be one the descriptions give scopes for: it refuses to start otherwise.

Who is calling is the token's ``sub`` claim, read without verifying the signature (the token
validator decides whether the token is good; this only says whose it is): ``app`` (what
``ForgeEmulator.app_token()`` mints), or no readable ``sub`` at all, is the app; anything else is a
user's accountId (``ForgeEmulator.app_token(subject=accountId)``). ``restrict_space`` makes a space's
pages visible only to some users (and the app), ``restrict_page`` one page and the pages under it (a
page view restriction, inherited by its descendants as in Confluence); searches, page reads and space
listings answer as Confluence does for content the caller cannot view: left out, or a 404.
``set_admins`` names the Confluence administrators ``user/current?expand=operations`` reports
(``set_admin`` adds or removes one).

The personal data reporting API is served on the same host, as on ``api.atlassian.com``:
``POST /app/report-accounts/`` with ``{"accounts": [{"accountId", "updatedAt"}]}`` (1 to 90, each
``updatedAt`` an ISO 8601 time) answers 200 ``{"accounts": [{"accountId", "status"}]}`` for the
accounts ``close_account`` / ``update_account`` named, or 204 when none of the reported accounts
needs action; a bad body is a 400. ``script_report`` queues answers for the next reports (a 429 with
``Retry-After``, a malformed body, an error that quotes the account ids it was sent: ``{accounts}``
in a scripted body); ``reports_seen`` keeps every body received, ``report_statuses`` the status each
got.

Requests are charged Atlassian's rate-limit points (``local/rate_limits.py``): each one with a good
token that passes the scope check, the report POST included, is first admitted by the emulator's
``PointsPools`` (``pools``; by default its own Global Pool of 65,000 points an hour, so several sites
share an app's quota only when given the same instance). A spent quota or a burst limit answers 429
``{"code": 429, "message": "Rate limit exceeded"}`` with ``Retry-After``, ``RateLimit-Reason`` and the
quota headers, and costs nothing; an admitted request is served, charged ``response_points`` (1, plus 1
per page or space and 2 per user it returns; a write or an error 1) and answered with ``X-RateLimit-*``,
``RateLimit-Policy`` and, past 80% used, ``RateLimit``. ``points_seen`` keeps ``(method, path template,
points)`` of each charge. Faults from ``fail_next`` come before admission: they cost nothing and carry
only their own headers; so does a scripted report 429 (charged 0, headers as scripted).
"""

from __future__ import annotations

import base64
import binascii
import html
import json
import logging
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlencode

import jwt
from werkzeug.wrappers import Request, Response

from forge_remote import clock
from local.cql_eval import CqlError, CqlQuery, Document, parse_cql
from local.loopback import LoopbackServer
from local.oauth_scopes import Operation, ScopeBook, manifest_scopes, scope_book, token_scopes
from local.rate_limits import PointsPools, response_points, search_operation

__all__ = [
    "AUTHOR_ID",
    "RATE_LIMITED",
    "SCOPE_REFUSAL",
    "ConfluenceEmulator",
    "CqlError",
    "CqlQuery",
    "Fault",
    "PointsPools",
    "Viewer",
    "parse_cql",
    "served_operations",
]

logger = logging.getLogger(__name__)

EXPIRED_TOKEN_MODES = ("401", "v1-403-v2-404")
AUTHOR_ID = "557058:0f6d1c5e-emulator"
APP_SUBJECT = "app"  # the ``sub`` of ForgeEmulator.app_token() without a subject
APP_DISPLAY_NAME = "Forge app (emulated)"
_PREFIX = re.compile(r"/ex/confluence/(?P<cloud>[^/]+)/wiki(?P<rest>/.*)")
REPORT_PATHS = ("/app/report-accounts", "/app/report-accounts/")
REPORT_OPERATION = ("POST", "/app/report-accounts/")  # both REPORT_PATHS are this one operation
MAX_REPORTED_ACCOUNTS = 90
ECHOED_ACCOUNTS = "{accounts}"  # in a scripted report body: the ids that report carried, comma-separated
# Atlassian's answer to a token lacking the operation's scope: a 401, not a 403. Its reference pages give
# no body; this one was observed through api.atlassian.com on GET /wiki/rest/api/user/current
# (sooperset/mcp-atlassian#1323) and on v1 content reads, with the header below (kovetskiy/mark#917);
# v2 page reads without their scope are 401s too (sooperset/mcp-atlassian#766).
SCOPE_REFUSAL = {"code": 401, "message": "Unauthorized; scope does not match"}
SCOPE_FAILURE_HEADERS = {"X-Failure-Category": "FAILURE_CLIENT_SCOPE_CHECK"}
RATE_LIMITED = {"code": 429, "message": "Rate limit exceeded"}  # the body of every 429 (faults' too)


def jwt_not_expired(token: str) -> bool:
    """The default token validator: a JWT whose ``exp`` is still ahead on the stack's clock."""
    try:
        exp = jwt.decode(token, options={"verify_signature": False}).get("exp")
    except jwt.PyJWTError:
        return False
    return isinstance(exp, int | float) and not isinstance(exp, bool) and exp > clock.now()


def served_operations(book: ScopeBook, served: Iterable[tuple[str, str]]) -> dict[tuple[str, str], Operation]:
    """The described operation of each ``(method, path template)`` served; ``LookupError`` names any
    the OpenAPI descriptions do not describe, or describe without a scope a token could hold: serving
    one would skip its scope check."""
    found: dict[tuple[str, str], Operation] = {}
    for method, template in served:
        operation = book.operation(method, template)
        if operation is None or not operation.alternatives:
            raise LookupError(
                f"the emulator serves {method} {template}, which no OpenAPI description (nor "
                "oauth_scopes.OTHER_OPERATIONS) gives scopes for: add it there, with its documented scopes"
            )
        found[(method, template)] = operation
    return found


def token_subject(token: str) -> str | None:
    """The ``sub`` claim of a JWT, unverified (whose token it is, not whether it is good)."""
    try:
        subject = jwt.decode(token, options={"verify_signature": False}).get("sub")
    except jwt.PyJWTError:
        return None
    return subject if isinstance(subject, str) and subject else None


@dataclass(frozen=True)
class Fault:
    """One queued failure (see ``ConfluenceEmulator.fail_next``)."""

    status: int
    retry_after: str | None = None
    ratelimit_reset: str | None = None
    reason: str | None = None  # a 429's RateLimit-Reason


@dataclass(frozen=True)
class ScriptedReport:
    """One queued answer of the reporting API (see ``ConfluenceEmulator.script_report``)."""

    status: int
    body: Any = None  # JSON-encoded unless a str (sent as it is)
    retry_after: str | None = None


@dataclass(frozen=True)
class Viewer:
    """Who a request acts as: the app, or a user by accountId."""

    account_id: str
    is_app: bool


class ConfluenceEmulator:
    """One Confluence site. ``start()`` serves it on 127.0.0.1 and returns the apiBaseUrl."""

    def __init__(
        self,
        token_validator: Callable[[str], bool] | None = None,
        *,
        cloud_id: str | None = None,
        page_size_cap: int = 25,
        expired_token_status: str = "401",
        delay_s: float = 0.0,
        port: int = 0,
        app_subjects: Iterable[str] = (APP_SUBJECT,),
        default_scopes: Iterable[str] | None = None,
        pools: PointsPools | None = None,
    ) -> None:
        if expired_token_status not in EXPIRED_TOKEN_MODES:
            raise ValueError(f"expired_token_status must be one of {EXPIRED_TOKEN_MODES}")
        self.cloud_id = cloud_id or str(uuid.uuid4())
        self.page_size_cap = page_size_cap
        self.expired_token_status = expired_token_status
        self.delay_s = delay_s  # every response waits this long (timeout tests)
        self.spaces: dict[str, dict[str, Any]] = {}
        self.pages: dict[int, dict[str, Any]] = {}
        self.users: dict[str, str] = {AUTHOR_ID: "Emulator"}  # accountId -> displayName
        self.requests_seen: list[tuple[str, str, dict[str, str], str | None]] = []
        self._app_subjects = frozenset(app_subjects)
        self._space_viewers: dict[str, frozenset[str]] = {}  # restricted space key -> who may see it
        self._page_viewers: dict[int, frozenset[str]] = {}  # restricted page id -> who may see it and its children
        self._admins: frozenset[str] = frozenset()
        self._documents: dict[int, tuple[int, Document]] = {}  # page id -> (version, Document)
        self._validate = token_validator or jwt_not_expired
        # For tokens without a scope claim: what Forge grants this app (the manifest), unless told otherwise.
        self.default_scopes = frozenset(manifest_scopes() if default_scopes is None else default_scopes)
        self.scope_refusals: list[tuple[str, str]] = []  # (method, path template) of each request refused
        # The app's rate-limit quota; pass one PointsPools to several emulators for sites sharing it.
        self.pools = pools if pools is not None else PointsPools()
        self.points_seen: list[tuple[str, str, int]] = []  # (method, path template, points) of each charge
        self._book = scope_book()
        handlers: dict[tuple[str, str], Callable[[Request, str, Viewer], Response]] = {
            ("GET", "/wiki/rest/api/content/search"): lambda request, rest, viewer: self._search(request, viewer),
            ("GET", "/wiki/rest/api/user/current"): lambda request, rest, viewer: self._current_user(request, viewer),
            ("GET", "/wiki/api/v2/spaces"): lambda request, rest, viewer: self._spaces(request, viewer),
            ("GET", "/wiki/api/v2/pages/{id}"): lambda request, rest, viewer: self._page(
                rest.rsplit("/", 1)[1], request, viewer
            ),
        }
        served_operations(self._book, [*handlers, REPORT_OPERATION])  # refuse to serve what has no scope check
        self._handlers = handlers
        self._revoked: set[str] = set()
        self._faults: list[Fault] = []
        self.account_statuses: dict[str, str] = {}  # accountId -> "closed" | "updated"
        self.reports_seen: list[list[dict[str, Any]]] = []
        self.report_statuses: list[int] = []  # the status each of reports_seen was answered with
        # A test's hook, given each report's number (from 0) and account ids before its answer is
        # chosen: it may close accounts or script this very answer.
        self.before_report: Callable[[int, list[str]], None] | None = None
        self._scripted_reports: list[ScriptedReport] = []
        self._next_id = 98300
        self._lock = threading.RLock()
        self._server = LoopbackServer(self._wsgi, port)

    # -- lifecycle
    @property
    def api_base_url(self) -> str:
        """``http://127.0.0.1:<port>/ex/confluence/<cloudId>`` (the FIT's ``app.apiBaseUrl``)."""
        return f"{self._server.url}/ex/confluence/{self.cloud_id}"

    def start(self) -> str:
        """Serve on loopback (idempotent) and return the apiBaseUrl."""
        self._server.start()
        return self.api_base_url

    def stop(self) -> None:
        """Stop serving (idempotent)."""
        self._server.stop()

    def __enter__(self) -> ConfluenceEmulator:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- content
    def _new_id(self) -> int:
        with self._lock:
            self._next_id += 1
            return self._next_id

    def add_space(self, key: str, name: str) -> dict[str, Any]:
        """A global space; returns ``{"id": int, "key", "name", "homepageId": int}``."""
        with self._lock:
            if key in self.spaces:
                raise ValueError(f"space {key} exists")
            space = {"id": self._new_id(), "key": key, "name": name, "homepageId": self._new_id()}
            self.spaces[key] = space
            return dict(space)

    def add_page(
        self,
        space_key: str,
        title: str,
        body: str = "<p>Hello</p>",
        last_modified: datetime | None = None,
        *,
        labels: Iterable[str] = (),
        parent_id: int | None = None,
        creator: str = AUTHOR_ID,
        contributors: Iterable[str] = (),
        created: datetime | None = None,
    ) -> dict[str, Any]:
        """A current page at version 1; returns a copy of its record (``id`` is an int).

        ``parent_id`` is another page of the space (default: the space's homepage, as for a page
        created at the top of the space tree). ``contributors`` are editors besides ``creator``; the
        last one is the page's last modifier. ``created`` defaults to ``last_modified``, which
        defaults to now on the stack's clock.
        """
        when = _aware(last_modified) if last_modified else datetime.fromtimestamp(clock.now(), UTC)
        editors = _unique([creator, *contributors])
        with self._lock:
            if space_key not in self.spaces:
                raise KeyError(f"no space {space_key}")
            parent = self._parent_in(space_key, parent_id)
            page_id = self._new_id()
            page: dict[str, Any] = {
                "id": page_id,
                "spaceKey": space_key,
                "title": title,
                "body": body,
                "version": 1,
                "created": _aware(created) if created else when,
                "lastModified": when,
                "labels": _labels(labels),
                "parentId": parent,
                "creator": creator,
                "contributors": editors,
                "lastModifier": editors[-1],
            }
            self.pages[page_id] = page
            return dict(page)

    def update_page(
        self,
        page_id: int,
        *,
        title: str | None = None,
        body: str | None = None,
        last_modified: datetime | None = None,
        by: str | None = None,
        labels: Iterable[str] | None = None,
    ) -> dict[str, Any]:
        """A new version of a page (number + 1), edited ``by`` an accountId (default: the last
        modifier), who becomes a contributor; ``labels`` replaces the labels. Returns a copy."""
        with self._lock:
            page = self.pages[int(page_id)]
            page["version"] += 1
            page["title"] = title if title is not None else page["title"]
            page["body"] = body if body is not None else page["body"]
            page["lastModified"] = _aware(last_modified) if last_modified else datetime.fromtimestamp(clock.now(), UTC)
            page["lastModifier"] = by or page["lastModifier"]
            page["contributors"] = _unique([*page["contributors"], page["lastModifier"]])
            if labels is not None:
                page["labels"] = _labels(labels)
            return dict(page)

    def _parent_in(self, space_key: str, parent_id: int | None) -> int:
        """The parent a new page gets: the space's homepage, or ``parent_id`` if it is in the space."""
        homepage = int(self.spaces[space_key]["homepageId"])
        if parent_id is None or parent_id == homepage:
            return homepage
        parent = self.pages.get(parent_id)
        if parent is None or parent["spaceKey"] != space_key:
            raise KeyError(f"no page {parent_id} in space {space_key}")
        return parent_id

    def _ancestors(self, page: dict[str, Any]) -> tuple[int, ...]:
        """The page's ancestors, the homepage first and its parent last (parents exist before
        their children and pages never move, so the walk ends at the homepage)."""
        chain = [int(page["parentId"])]
        while chain[-1] in self.pages:
            chain.append(int(self.pages[chain[-1]]["parentId"]))
        return tuple(reversed(chain))

    def _document(self, page: dict[str, Any]) -> Document:
        """What CQL sees of a page record. Searches read every page, so it is rebuilt only for a new
        version: ``add_page``/``update_page`` are how records change (a version each time)."""
        cached = self._documents.get(page["id"])
        if cached is not None and cached[0] == page["version"]:
            return cached[1]
        document = Document(
            id=page["id"],
            space_key=page["spaceKey"],
            title=page["title"],
            text=_plain_text(page["body"]),
            labels=frozenset(page["labels"]),
            ancestors=self._ancestors(page),
            creator=page["creator"],
            contributors=frozenset(page["contributors"]),
            created=page["created"],
            last_modified=page["lastModified"],
        )
        self._documents[page["id"]] = (page["version"], document)
        return document

    # -- users and what they may see
    def add_user(self, account_id: str, display_name: str) -> None:
        """Name a user (``displayName`` in ``user/current`` and in versions they made)."""
        with self._lock:
            self.users[account_id] = display_name

    def restrict_space(self, space_key: str, account_ids: Iterable[str] | None) -> None:
        """Only ``account_ids`` (and the app) may see ``space_key`` and its pages from now on;
        ``None`` lifts the restriction. Replaces any earlier list."""
        with self._lock:
            if space_key not in self.spaces:
                raise KeyError(f"no space {space_key}")
            if account_ids is None:
                self._space_viewers.pop(space_key, None)
            else:
                self._space_viewers[space_key] = frozenset(account_ids)

    def restrict_page(self, page_id: int, account_ids: Iterable[str] | None) -> None:
        """Only ``account_ids`` (and the app) may view the page ``page_id`` and every page under it from
        now on (a view restriction, which Confluence applies to descendants too); ``None`` lifts it."""
        with self._lock:
            if int(page_id) not in self.pages:
                raise KeyError(f"no page {page_id}")
            if account_ids is None:
                self._page_viewers.pop(int(page_id), None)
            else:
                self._page_viewers[int(page_id)] = frozenset(account_ids)

    def page_viewers(self, page_id: int) -> frozenset[str] | None:
        """Who the page's own view restriction lets see it (None: the page sets none)."""
        with self._lock:
            return self._page_viewers.get(int(page_id))

    def space_viewers(self, space_key: str) -> frozenset[str] | None:
        """Who may see a restricted space (None: the space is not restricted)."""
        with self._lock:
            return self._space_viewers.get(space_key)

    def _page_visible(self, viewer: Viewer, page: dict[str, Any]) -> bool:
        """No view restriction on the page or on a page above it keeps ``viewer`` out (the app is never kept out)."""
        if viewer.is_app or not self._page_viewers:
            return True
        with self._lock:
            for page_id in (int(page["id"]), *self._ancestors(page)):
                allowed = self._page_viewers.get(page_id)
                if allowed is not None and viewer.account_id not in allowed:
                    return False
        return True

    def set_admins(self, account_ids: Iterable[str]) -> None:
        """These users (and no others) are Confluence administrators. Administration is reported by
        ``user/current``; it does not open restricted spaces (Confluence Cloud administrators
        recover space permissions explicitly rather than seeing everything)."""
        with self._lock:
            self._admins = frozenset(account_ids)

    def set_admin(self, account_id: str, admin: bool) -> None:
        """Make one user a Confluence administrator (``admin``) or a plain user, leaving the others as they are."""
        with self._lock:
            self._admins = (self._admins | {account_id}) if admin else (self._admins - {account_id})

    @property
    def admins(self) -> frozenset[str]:
        """The Confluence administrators of the site."""
        with self._lock:
            return self._admins

    def viewer(self, token: str) -> Viewer:
        """Who ``token`` acts as (see the module docstring)."""
        subject = token_subject(token)
        if subject is None or subject in self._app_subjects:
            return Viewer(subject or APP_SUBJECT, is_app=True)
        return Viewer(subject, is_app=False)

    def may_see(self, viewer: Viewer, space_key: str) -> bool:
        """Whether ``viewer`` may see the space ``space_key`` and its pages."""
        with self._lock:
            allowed = self._space_viewers.get(space_key)
        return viewer.is_app or allowed is None or viewer.account_id in allowed

    def _display_name(self, account_id: str) -> str:
        if account_id in self._app_subjects:
            return self.users.get(account_id, APP_DISPLAY_NAME)
        return self.users.get(account_id, f"Emulated user {account_id}")

    def _account_type(self, account_id: str) -> str:
        return "app" if account_id in self._app_subjects else "atlassian"

    # -- tokens and faults
    def revoke(self, token: str) -> None:
        """Refuse ``token`` from now on, whatever its ``exp``."""
        with self._lock:
            self._revoked.add(token)

    def fail_next(
        self,
        n: int,
        status: int = 429,
        *,
        retry_after: str | None = None,
        ratelimit_reset: str | None = None,
        reason: str | None = None,
    ) -> None:
        """Answer the next ``n`` authenticated requests with ``status`` (429, 503, 500, ...).

        429 carries ``X-RateLimit-Limit`` and ``X-RateLimit-Remaining: 0``; ``Retry-After``,
        ``X-RateLimit-Reset`` and ``RateLimit-Reason`` (e.g. ``confluence-burst-based``) only when given:
        a scripted 429 names no pool unless told to (the pools' own 429s always do).
        """
        with self._lock:
            self._faults.extend(Fault(status, retry_after, ratelimit_reset, reason) for _ in range(n))

    # -- personal data reporting
    def close_account(self, account_id: str) -> None:
        """Reports of ``account_id`` answer ``closed`` from now on."""
        with self._lock:
            self.account_statuses[account_id] = "closed"

    def update_account(self, account_id: str) -> None:
        """Reports of ``account_id`` answer ``updated`` from now on."""
        with self._lock:
            self.account_statuses[account_id] = "updated"

    def script_report(self, status: int, body: Any = None, *, retry_after: str | None = None) -> None:
        """Answer the next report (after those already scripted) with this, whatever it carries; an
        ``ECHOED_ACCOUNTS`` in the body becomes the account ids that report carried."""
        with self._lock:
            self._scripted_reports.append(ScriptedReport(status, body, retry_after))

    def _report_accounts(self, request: Request) -> Response:
        try:
            document = json.loads(request.get_data(as_text=True) or "null")
        except ValueError:
            return _json(400, {"code": 400, "message": "body is not JSON"})
        accounts = document.get("accounts") if isinstance(document, dict) else None
        if (
            not isinstance(accounts, list)
            or not 1 <= len(accounts) <= MAX_REPORTED_ACCOUNTS
            or not all(_reported_account(a) for a in accounts)
        ):
            return _json(400, {"code": 400, "message": "accounts must list 1 to 90 {accountId, updatedAt}"})
        if self.before_report is not None:
            self.before_report(len(self.reports_seen), [a["accountId"] for a in accounts])
        with self._lock:
            self.reports_seen.append(accounts)
            scripted = self._scripted_reports.pop(0) if self._scripted_reports else None
            answer = [
                {"accountId": a["accountId"], "status": self.account_statuses[a["accountId"]]}
                for a in accounts
                if a["accountId"] in self.account_statuses
            ]
            self.report_statuses.append(scripted.status if scripted is not None else 200 if answer else 204)
        if scripted is not None:
            headers = {"Retry-After": scripted.retry_after} if scripted.retry_after is not None else None
            text = scripted.body if isinstance(scripted.body, str) else json.dumps(scripted.body)
            text = text.replace(ECHOED_ACCOUNTS, ", ".join(a["accountId"] for a in accounts))
            return Response(text, status=scripted.status, content_type="application/json", headers=headers)
        if not answer:
            return Response(status=204)
        return _json(200, {"accounts": answer})

    # -- HTTP
    def _wsgi(self, environ: dict[str, Any], start_response: Any) -> Any:
        request = Request(environ)
        response = self._handle(request)
        response.headers["atl-traceid"] = uuid.uuid4().hex[:16]
        response.headers["atl-request-id"] = str(uuid.uuid4())
        return response(environ, start_response)

    def _handle(self, request: Request) -> Response:
        authorization = request.headers.get("Authorization", "")
        scheme, _, credentials = authorization.partition(" ")
        token = credentials.strip() if scheme.lower() == "bearer" and credentials.strip() else None
        with self._lock:
            self.requests_seen.append((request.method, request.path, dict(request.args), token))
            revoked = token in self._revoked
        if self.delay_s:
            time.sleep(self.delay_s)
        match = _PREFIX.fullmatch(request.path)
        rest = match.group("rest") if match and match.group("cloud") == self.cloud_id else None
        if token is None:
            return _json(401, {"code": 401, "message": "Unauthorized"})
        if revoked or not self._validate(token):
            if self.expired_token_status == "v1-403-v2-404" and rest is not None:
                if rest.startswith("/api/v2/"):
                    return _v2_error(404, "NOT_FOUND", "Not Found")
                return _v1_error(403, "Current user not permitted to use Confluence")
            return _json(401, {"code": 401, "message": "Unauthorized"})
        report = request.method == "POST" and request.path in REPORT_PATHS
        operation = self._operation(request.method, rest, report=report)
        if operation is not None and not operation.allows(self.granted_scopes(token)):
            return self._refuse_scope(operation, token)
        if not report:  # scripted faults are not the reporting API's (script_report is)
            with self._lock:
                fault = self._faults.pop(0) if self._faults else None
            if fault is not None:
                return _fault(fault)
        template = operation.template if operation is not None else request.path
        refusal = self.pools.admit(self.cloud_id, search=search_operation(template))
        if refusal is not None:
            return _json(429, RATE_LIMITED, refusal.headers)
        if report:
            response = self._report_accounts(request)
        elif rest is None:
            response = _json(404, {"code": 404, "message": "Not Found"})
        else:
            response = self._route(request, operation, rest, self.viewer(token))
        return self._charge(request.method, template, response)

    def _charge(self, method: str, template: str, response: Response) -> Response:
        """Charge an admitted request's answer to the pool and give it the quota headers. A scripted
        429 (``script_report``) costs nothing and keeps only the headers it was scripted with."""
        body: object = None
        if method == "GET" and response.status_code < 400 and response.mimetype == "application/json":
            try:
                body = json.loads(response.get_data(as_text=True) or "null")
            except ValueError:
                body = None
        points = response_points(method, template, body, status=response.status_code)
        headers = self.pools.charge(self.cloud_id, points)
        with self._lock:
            self.points_seen.append((method, template, points))
        if response.status_code != 429:
            response.headers.update(headers)
        return response

    # -- scopes
    def granted_scopes(self, token: str) -> frozenset[str]:
        """The scopes ``token`` carries: its ``scope`` claim, else ``default_scopes``."""
        carried = token_scopes(token)
        return self.default_scopes if carried is None else carried

    def _operation(self, method: str, rest: str | None, *, report: bool) -> Operation | None:
        """The described operation a request is, if any. One nobody describes is never served (only
        described operations have handlers), so it gets the emulator's 404 and needs no scope."""
        if report:
            return self._book.operation(*REPORT_OPERATION)
        return None if rest is None else self._book.find(method, "/wiki" + rest)

    def _refuse_scope(self, operation: Operation, token: str) -> Response:
        with self._lock:
            self.scope_refusals.append((operation.method, operation.template))
        # Scope names are not secrets; the log says what the token lacked (Atlassian's answer does not).
        logger.warning(
            "Confluence emulator: scope does not match: %s; the token has %s",
            operation.describe(),
            " ".join(sorted(self.granted_scopes(token))) or "no scopes",
        )
        return _json(401, SCOPE_REFUSAL, SCOPE_FAILURE_HEADERS)

    def _route(self, request: Request, operation: Operation | None, rest: str, viewer: Viewer) -> Response:
        """An authenticated, scope-checked request's answer, by its operation."""
        handler = self._handlers.get((operation.method, operation.template)) if operation is not None else None
        if handler is not None:
            return handler(request, rest, viewer)
        if rest.startswith("/api/v2/"):
            return _v2_error(404, "NOT_FOUND", "Not Found")
        return _v1_error(404, f"No resource at {rest} in the emulator")

    def _wiki_base(self, request: Request) -> str:
        return f"{request.host_url.rstrip('/')}/ex/confluence/{self.cloud_id}/wiki"

    # -- v1 content search
    def _search(self, request: Request, viewer: Viewer) -> Response:
        cql = request.args.get("cql", "")
        limit = _int_arg(request.args.get("limit"), 25)
        offset = _decode_cursor(request.args.get("cursor"))
        if limit is None or offset is None:
            return _v1_error(400, "limit or cursor is not valid")
        try:
            query = parse_cql(cql)
        except CqlError as exc:
            # Confluence's body does not say what was wrong; the emulator's log does.
            logger.warning("Confluence emulator: CQL refused (%s): %s", exc, cql)
            return _cql_error(cql)
        limit = max(1, min(limit, self.page_size_cap))
        with self._lock:
            seen_spaces = {key for key in self.spaces if self.may_see(viewer, key)}
            documents = (
                self._document(p)
                for p in self.pages.values()
                if p["spaceKey"] in seen_spaces and self._page_visible(viewer, p)
            )
            found = query.sorted(d for d in documents if query.matches(d, viewer.account_id))
            window = [dict(self.pages[d.id]) for d in found[offset : offset + limit]]
            spaces = {key: dict(space) for key, space in self.spaces.items()}
            names = {p["id"]: self._display_name(p["lastModifier"]) for p in window}
        expand = _expand(request)
        base = self._wiki_base(request)
        links = {"base": base, "context": "/wiki", "self": f"{base}/rest/api/content/search?{urlencode({'cql': cql})}"}
        if offset + limit < len(found):
            query_args = {"cql": cql, "limit": str(limit), "cursor": _encode_cursor(offset + limit)}
            if expand:
                query_args["expand"] = ",".join(sorted(expand))
            links["next"] = f"/rest/api/content/search?{urlencode(query_args)}"  # v1: no /wiki prefix
        results = [
            _content_v1(p, spaces[p["spaceKey"]], expand, base, _by(p, names[p["id"]], self._account_type))
            for p in window
        ]
        return _json(200, {"results": results, "start": offset, "limit": limit, "size": len(results), "_links": links})

    # -- v1 user
    def _current_user(self, request: Request, viewer: Viewer) -> Response:
        with self._lock:
            name = self._display_name(viewer.account_id)
            admin = not viewer.is_app and viewer.account_id in self._admins
        operations = _operations(viewer, admin=admin) if "operations" in _expand(request) else None
        return _json(200, _user_v1(viewer, name, operations, self._wiki_base(request)))

    # -- v2
    def _page(self, raw_id: str, request: Request, viewer: Viewer) -> Response:
        body_format = request.args.get("body-format")
        if not raw_id.isascii() or not raw_id.isdigit():
            return _v2_error(400, "INVALID_REQUEST_PARAMETER", "Invalid page id")
        if body_format is not None and body_format not in _BODY_FORMATS:
            return _v2_error(400, "INVALID_REQUEST_PARAMETER", "Invalid body-format")
        with self._lock:
            page = dict(self.pages.get(int(raw_id)) or {})
            space = dict(self.spaces[page["spaceKey"]]) if page else {}
        # A page the caller may not view is a 404, the same answer as no page (v2 OpenAPI, 404).
        if not page or not self.may_see(viewer, page["spaceKey"]) or not self._page_visible(viewer, page):
            return _v2_error(404, "NOT_FOUND", "Not Found")
        return _json(200, _page_v2(page, space, body_format, self._wiki_base(request)))

    def _spaces(self, request: Request, viewer: Viewer) -> Response:
        keys = [k for k in request.args.get("keys", "").split(",") if k]
        limit = _int_arg(request.args.get("limit"), 25)
        offset = _decode_cursor(request.args.get("cursor"))
        if limit is None or not 1 <= limit <= 250 or offset is None or len(keys) > 250:
            return _v2_error(400, "INVALID_REQUEST_PARAMETER", "limit, keys or cursor is not valid")
        with self._lock:
            found = sorted(
                (
                    dict(s)
                    for s in self.spaces.values()
                    if (not keys or s["key"] in keys) and self.may_see(viewer, s["key"])
                ),
                key=lambda s: s["id"],
            )
        limit = min(limit, self.page_size_cap)
        window = found[offset : offset + limit]
        base = self._wiki_base(request)
        links: dict[str, str] = {"base": base}
        headers: dict[str, str] = {}
        if offset + limit < len(found):
            query_args = {"limit": str(limit), "cursor": _encode_cursor(offset + limit)}
            if keys:
                query_args = {"keys": ",".join(keys), **query_args}
            links["next"] = f"/wiki/api/v2/spaces?{urlencode(query_args)}"  # v2: with /wiki
            headers["Link"] = f'<{links["next"]}>; rel="next", <{base}>; rel="base"'
        return _json(200, {"results": [_space_v2(s) for s in window], "_links": links}, headers)


# -- response shapes (OpenAPI: v1 Content / ContentArray / User, v2 PageSingle / Space / MultiEntityResult)
_BODY_FORMATS = frozenset({"storage", "atlas_doc_format", "view", "export_view", "anonymous_export_view"})


def _content_v1(
    page: dict[str, Any], space: dict[str, Any], expand: set[str], base: str, by: dict[str, str]
) -> dict[str, Any]:
    content: dict[str, Any] = {
        "id": str(page["id"]),
        "type": "page",
        "status": "current",
        "title": page["title"],
        "_links": {
            "webui": f"/spaces/{space['key']}/pages/{page['id']}",
            "edit": f"/pages/resumedraft.action?draftId={page['id']}",
            "tinyui": f"/x/{page['id']}",
            "self": f"{base}/rest/api/content/{page['id']}",
        },
        "_expandable": {},
    }
    if "space" in expand:
        content["space"] = {
            "id": space["id"],
            "key": space["key"],
            "name": space["name"],
            "type": "global",
            "status": "current",
            "_links": {"webui": f"/spaces/{space['key']}", "self": f"{base}/rest/api/space/{space['key']}"},
            "_expandable": {"homepage": f"/rest/api/content/{space['homepageId']}"},
        }
    else:
        content["_expandable"]["space"] = f"/rest/api/space/{space['key']}"
    if "version" in expand:
        content["version"] = {
            "by": by,
            "when": _iso(page["lastModified"]),
            "message": "",
            "number": page["version"],
            "minorEdit": False,
            "_links": {"self": f"{base}/rest/api/content/{page['id']}/version/{page['version']}"},
            "_expandable": {"content": f"/rest/api/content/{page['id']}"},
        }
    else:
        content["_expandable"]["version"] = ""
    if "body.storage" in expand:
        content["body"] = {
            "storage": {"value": page["body"], "representation": "storage", "embeddedContent": [], "_expandable": {}},
            "_expandable": {"view": "", "export_view": "", "atlas_doc_format": ""},
        }
    else:
        content["_expandable"]["body"] = ""
    return content


def _page_v2(page: dict[str, Any], space: dict[str, Any], body_format: str | None, base: str) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if body_format == "atlas_doc_format":
        document = {"type": "doc", "version": 1, "content": [{"type": "paragraph", "content": []}]}
        body["atlas_doc_format"] = {"representation": "atlas_doc_format", "value": json.dumps(document)}
    elif body_format is not None:
        body[body_format] = {"representation": body_format, "value": page["body"]}
    return {
        "id": str(page["id"]),
        "status": "current",
        "title": page["title"],
        "spaceId": str(space["id"]),
        "parentId": str(page["parentId"]),
        "parentType": "page",
        "position": None,
        "authorId": page["creator"],
        "createdAt": _iso(page["created"]),
        "version": {
            "createdAt": _iso(page["lastModified"]),
            "message": "",
            "number": page["version"],
            "minorEdit": False,
            "authorId": page["lastModifier"],
        },
        "body": body,
        "_links": {
            "webui": f"/spaces/{space['key']}/pages/{page['id']}",
            "editui": f"/pages/resumedraft.action?draftId={page['id']}",
            "tinyui": f"/x/{page['id']}",
            "base": base,
        },
    }


def _space_v2(space: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": str(space["id"]),
        "key": space["key"],
        "name": space["name"],
        "type": "global",
        "status": "current",
        "authorId": AUTHOR_ID,
        "createdAt": "2026-01-05T09:00:00.000Z",
        "homepageId": str(space["homepageId"]),
        "_links": {"webui": f"/spaces/{space['key']}"},
    }


def _by(page: dict[str, Any], display_name: str, account_type: Callable[[str], str]) -> dict[str, str]:
    """v1 ``version.by``: the page's last modifier as a known user."""
    modifier = str(page["lastModifier"])
    return {"type": "known", "accountId": modifier, "accountType": account_type(modifier), "displayName": display_name}


def _user_v1(viewer: Viewer, display_name: str, operations: list[dict[str, str]] | None, base: str) -> dict[str, Any]:
    """v1 ``User`` as ``GET /rest/api/user/current`` answers it; ``operations`` only when expanded."""
    user: dict[str, Any] = {
        "type": "known",
        "accountId": viewer.account_id,
        "accountType": "app" if viewer.is_app else "atlassian",
        "email": "",
        "publicName": display_name,
        "profilePicture": {"path": "/wiki/aa-avatar/default.png", "width": 48, "height": 48, "isDefault": True},
        "displayName": display_name,
        "isExternalCollaborator": False,
        "_expandable": {"operations": "", "personalSpace": ""},
        "_links": {
            "base": base,
            "context": "/wiki",
            "self": f"{base}/rest/api/user?accountId={quote(viewer.account_id, safe='')}",
        },
    }
    if operations is not None:
        user["operations"] = operations
        del user["_expandable"]["operations"]
    return user


def _operations(viewer: Viewer, *, admin: bool) -> list[dict[str, str]]:
    """Site-level operations (``OperationCheckResult``): every user may use Confluence and create
    spaces; administrators may also administer it; the app may only use it."""
    if viewer.is_app:
        return [{"operation": "use", "targetType": "application"}]
    granted = ["administer"] if admin else []
    return [{"operation": op, "targetType": "application"} for op in [*granted, "use", "create_space"]]


def _reported_account(entry: Any) -> bool:
    """``{"accountId": <id>, "updatedAt": <ISO 8601>}``, as the reporting API takes it."""
    if not isinstance(entry, dict) or not isinstance(entry.get("accountId"), str) or not entry["accountId"]:
        return False
    updated_at = entry.get("updatedAt")
    if not isinstance(updated_at, str):
        return False
    try:
        datetime.fromisoformat(updated_at.replace("Z", "+00:00"))
    except ValueError:
        return False
    return True


# -- plumbing
def _aware(when: datetime) -> datetime:
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def _unique(values: Iterable[str]) -> tuple[str, ...]:
    """``values`` without repeats, in first-seen order."""
    return tuple(dict.fromkeys(values))


def _labels(labels: Iterable[str]) -> tuple[str, ...]:
    """Labels as Confluence keeps them: lower-case, no blanks, no repeats."""
    if isinstance(labels, str):
        raise TypeError("labels is a list of labels, not one string")
    return _unique(label.strip().lower() for label in labels if label.strip())


_TAG = re.compile(r"<[^>]*>")


def _plain_text(storage: str) -> str:
    """The words of a storage-format body (tags dropped, entities decoded) for ``text ~``."""
    return html.unescape(_TAG.sub(" ", storage))


def _expand(request: Request) -> set[str]:
    return {e.strip() for e in request.args.get("expand", "").split(",") if e.strip()}


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _int_arg(value: str | None, default: int) -> int | None:
    if value is None:
        return default
    return int(value) if value.isascii() and value.isdigit() else None


def _encode_cursor(offset: int) -> str:
    return base64.urlsafe_b64encode(json.dumps({"offset": offset}).encode()).decode().rstrip("=")


def _decode_cursor(cursor: str | None) -> int | None:
    """The offset in an opaque cursor; 0 for none, None for a cursor this emulator never issued."""
    if not cursor:
        return 0
    try:
        offset = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))["offset"]
    except (binascii.Error, ValueError, KeyError, TypeError):
        return None
    return offset if isinstance(offset, int) and offset >= 0 else None


def _json(status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(body), status=status, content_type="application/json", headers=headers)


def _v1_error(status: int, message: str, data: dict[str, Any] | None = None) -> Response:
    details = {"authorized": status != 403, "valid": status != 400, "errors": [], "successful": False}
    return _json(status, {"statusCode": status, "message": message, "data": {**details, **(data or {})}})


def _cql_error(cql: str) -> Response:
    """The 400 for CQL Confluence cannot run. The message is Confluence's ("Could not parse cql : "
    and the query, atlassian-python-api#104); the ``data`` flags are as observed on Confluence Cloud
    400s raised by its API service layer. Confluence does not say which part was wrong."""
    data = {"authorized": True, "valid": True, "errors": [], "successful": True}
    return _json(400, {"statusCode": 400, "message": f"Could not parse cql : {cql}", "data": data})


def _v2_error(status: int, code: str, title: str) -> Response:
    return _json(status, {"errors": [{"status": status, "code": code, "title": title, "detail": None}]})


def _fault(fault: Fault) -> Response:
    headers: dict[str, str] = {}
    if fault.retry_after is not None:
        headers["Retry-After"] = fault.retry_after
    if fault.status == 429:
        headers.update({"X-RateLimit-Limit": "65000", "X-RateLimit-Remaining": "0"})
        if fault.reason is not None:
            headers["RateLimit-Reason"] = fault.reason
    if fault.ratelimit_reset is not None:
        headers["X-RateLimit-Reset"] = fault.ratelimit_reset
    if fault.status == 429:
        return _json(429, RATE_LIMITED, headers)
    if fault.status >= 500:
        return _json(fault.status, {"code": fault.status, "message": "Service temporarily unavailable"}, headers)
    return _v1_error(fault.status, f"Emulated HTTP {fault.status}")
