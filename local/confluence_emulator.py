"""A Confluence Cloud emulator on loopback: the endpoints the jobs use, in the documented shapes.

v1 ``GET /wiki/rest/api/content/search`` (a CQL subset, opaque cursors, ``_links.next`` without the
``/wiki`` prefix), v2 ``GET /wiki/api/v2/pages/{id}`` and ``GET /wiki/api/v2/spaces?keys=``
(``_links.next`` with ``/wiki``, plus a ``Link`` header), all under ``/ex/confluence/<cloudId>``
like ``api.atlassian.com``. Shapes follow Atlassian's OpenAPI descriptions (``shared/reference``;
the tests validate against them). Every request's token is checked: missing, revoked or expired
(JWT ``exp`` against ``forge_remote.clock``) is refused with 401, or with 403 on v1 and 404 on v2
paths in ``expired_token_status="v1-403-v2-404"`` mode. Faults are switchable (``fail_next``,
``delay_s``). Used by the tests, the local stack and the benchmarks::

    with ConfluenceEmulator() as confluence:
        confluence.add_space("ENG", "Engineering")
        confluence.add_page("ENG", "Release notes")
        api_base_url = confluence.api_base_url
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

import jwt
from werkzeug.wrappers import Request, Response

from forge_remote import clock
from local.loopback import LoopbackServer

EXPIRED_TOKEN_MODES = ("401", "v1-403-v2-404")
AUTHOR_ID = "557058:0f6d1c5e-emulator"
_PREFIX = re.compile(r"/ex/confluence/(?P<cloud>[^/]+)/wiki(?P<rest>/.*)")


def jwt_not_expired(token: str) -> bool:
    """The default token validator: a JWT whose ``exp`` is still ahead on the stack's clock."""
    try:
        exp = jwt.decode(token, options={"verify_signature": False}).get("exp")
    except jwt.PyJWTError:
        return False
    return isinstance(exp, int | float) and not isinstance(exp, bool) and exp > clock.now()


@dataclass(frozen=True)
class Fault:
    """One queued failure (see ``ConfluenceEmulator.fail_next``)."""

    status: int
    retry_after: str | None = None
    ratelimit_reset: str | None = None


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
    ) -> None:
        if expired_token_status not in EXPIRED_TOKEN_MODES:
            raise ValueError(f"expired_token_status must be one of {EXPIRED_TOKEN_MODES}")
        self.cloud_id = cloud_id or str(uuid.uuid4())
        self.page_size_cap = page_size_cap
        self.expired_token_status = expired_token_status
        self.delay_s = delay_s  # every response waits this long (timeout tests)
        self.spaces: dict[str, dict[str, Any]] = {}
        self.pages: dict[int, dict[str, Any]] = {}
        self.requests_seen: list[tuple[str, str, dict[str, str], str | None]] = []
        self._validate = token_validator or jwt_not_expired
        self._revoked: set[str] = set()
        self._faults: list[Fault] = []
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

    # -- state
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
        self, space_key: str, title: str, body: str = "<p>Hello</p>", last_modified: datetime | None = None
    ) -> dict[str, Any]:
        """A current page at version 1; returns a copy of its record (``id`` is an int)."""
        when = _aware(last_modified) if last_modified else datetime.fromtimestamp(clock.now(), UTC)
        with self._lock:
            if space_key not in self.spaces:
                raise KeyError(f"no space {space_key}")
            page_id = self._new_id()
            page: dict[str, Any] = {
                "id": page_id,
                "spaceKey": space_key,
                "title": title,
                "body": body,
                "version": 1,
                "created": when,
                "lastModified": when,
            }
            self.pages[page_id] = page
            return dict(page)

    def update_page(
        self, page_id: int, *, title: str | None = None, body: str | None = None, last_modified: datetime | None = None
    ) -> dict[str, Any]:
        """A new version of a page (number + 1); returns a copy of its record."""
        with self._lock:
            page = self.pages[int(page_id)]
            page["version"] += 1
            page["title"] = title if title is not None else page["title"]
            page["body"] = body if body is not None else page["body"]
            page["lastModified"] = _aware(last_modified) if last_modified else datetime.fromtimestamp(clock.now(), UTC)
            return dict(page)

    def revoke(self, token: str) -> None:
        """Refuse ``token`` from now on, whatever its ``exp``."""
        with self._lock:
            self._revoked.add(token)

    def fail_next(
        self, n: int, status: int = 429, *, retry_after: str | None = None, ratelimit_reset: str | None = None
    ) -> None:
        """Answer the next ``n`` authenticated requests with ``status`` (429, 503, 500, ...).

        429 carries ``X-RateLimit-Limit``, ``X-RateLimit-Remaining: 0`` and ``RateLimit-Reason``;
        ``Retry-After`` and ``X-RateLimit-Reset`` are sent only when given.
        """
        with self._lock:
            self._faults.extend(Fault(status, retry_after, ratelimit_reset) for _ in range(n))

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
        with self._lock:
            fault = self._faults.pop(0) if self._faults else None
        if fault is not None:
            return _fault(fault)
        if rest is None:
            return _json(404, {"code": 404, "message": "Not Found"})
        if request.method == "GET":
            if rest == "/rest/api/content/search":
                return self._search(request)
            if rest == "/api/v2/spaces":
                return self._spaces(request)
            if (found := re.fullmatch(r"/api/v2/pages/([^/]+)", rest)) is not None:
                return self._page(found.group(1), request)
        if rest.startswith("/api/v2/"):
            return _v2_error(404, "NOT_FOUND", "Not Found")
        return _v1_error(404, f"No resource at {rest} in the emulator")

    def _wiki_base(self, request: Request) -> str:
        return f"{request.host_url.rstrip('/')}/ex/confluence/{self.cloud_id}/wiki"

    # -- v1 content search
    def _search(self, request: Request) -> Response:
        cql = request.args.get("cql", "")
        limit = _int_arg(request.args.get("limit"), 25)
        offset = _decode_cursor(request.args.get("cursor"))
        if limit is None or offset is None:
            return _v1_error(400, "limit or cursor is not valid")
        try:
            query = parse_cql(cql)
        except CqlError as exc:
            return _v1_error(400, f"Could not parse cql : {cql}", {"errors": [{"message": {"key": str(exc)}}]})
        with self._lock:
            found = [dict(p) for p in self.pages.values() if query.matches(p)]
            spaces = {key: dict(space) for key, space in self.spaces.items()}
        field, desc = query.order or ("id", False)
        found.sort(key=lambda p: _field_value(p, field), reverse=desc)
        limit = max(1, min(limit, self.page_size_cap))
        window = found[offset : offset + limit]
        expand = {e.strip() for e in request.args.get("expand", "").split(",") if e.strip()}
        base = self._wiki_base(request)
        links = {"base": base, "context": "/wiki", "self": f"{base}/rest/api/content/search?{urlencode({'cql': cql})}"}
        if offset + limit < len(found):
            query_args = {"cql": cql, "limit": str(limit), "cursor": _encode_cursor(offset + limit)}
            if expand:
                query_args["expand"] = ",".join(sorted(expand))
            links["next"] = f"/rest/api/content/search?{urlencode(query_args)}"  # v1: no /wiki prefix
        results = [_content_v1(p, spaces[p["spaceKey"]], expand, base) for p in window]
        return _json(200, {"results": results, "start": offset, "limit": limit, "size": len(results), "_links": links})

    # -- v2
    def _page(self, raw_id: str, request: Request) -> Response:
        body_format = request.args.get("body-format")
        if not raw_id.isascii() or not raw_id.isdigit():
            return _v2_error(400, "INVALID_REQUEST_PARAMETER", "Invalid page id")
        if body_format is not None and body_format not in _BODY_FORMATS:
            return _v2_error(400, "INVALID_REQUEST_PARAMETER", "Invalid body-format")
        with self._lock:
            page = dict(self.pages.get(int(raw_id)) or {})
            space = dict(self.spaces[page["spaceKey"]]) if page else {}
        if not page:
            return _v2_error(404, "NOT_FOUND", "Not Found")
        return _json(200, _page_v2(page, space, body_format, self._wiki_base(request)))

    def _spaces(self, request: Request) -> Response:
        keys = [k for k in request.args.get("keys", "").split(",") if k]
        limit = _int_arg(request.args.get("limit"), 25)
        offset = _decode_cursor(request.args.get("cursor"))
        if limit is None or not 1 <= limit <= 250 or offset is None or len(keys) > 250:
            return _v2_error(400, "INVALID_REQUEST_PARAMETER", "limit, keys or cursor is not valid")
        with self._lock:
            found = sorted(
                (dict(s) for s in self.spaces.values() if not keys or s["key"] in keys), key=lambda s: s["id"]
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


# -- response shapes (OpenAPI: v1 Content / ContentArray, v2 PageSingle / Space / MultiEntityResult)
_BODY_FORMATS = frozenset({"storage", "atlas_doc_format", "view", "export_view", "anonymous_export_view"})


def _content_v1(page: dict[str, Any], space: dict[str, Any], expand: set[str], base: str) -> dict[str, Any]:
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
            "by": {"type": "known", "accountId": AUTHOR_ID, "accountType": "atlassian", "displayName": "Emulator"},
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
        "parentId": str(space["homepageId"]),
        "parentType": "page",
        "position": None,
        "authorId": AUTHOR_ID,
        "createdAt": _iso(page["created"]),
        "version": {
            "createdAt": _iso(page["lastModified"]),
            "message": "",
            "number": page["version"],
            "minorEdit": False,
            "authorId": AUTHOR_ID,
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


# -- a CQL subset: enough for the jobs' queries, strict about what it does not know
class CqlError(ValueError):
    """CQL the emulator cannot parse or does not support (answered 400, like Confluence)."""


Page = dict[str, Any]
Predicate = Callable[[Page], bool]
_FIELDS = frozenset({"type", "space", "space.key", "id", "title", "lastmodified", "created"})
_CQL_TOKEN = re.compile(
    r'\s*(?:(?P<str>"(?:\\.|[^"\\])*")|(?P<op>!=|>=|<=|!~|=|<|>|~|\(|\)|,)|(?P<word>[A-Za-z0-9_.:-]+))', re.S
)


@dataclass(frozen=True)
class CqlQuery:
    """A parsed query: a predicate over page records, and an optional ``order by``."""

    matches: Predicate
    order: tuple[str, bool] | None


def _cql_tokens(cql: str) -> list[tuple[str, str]]:
    tokens, pos = [], 0
    while cql[pos:].strip():
        found = _CQL_TOKEN.match(cql, pos)
        if found is None:
            raise CqlError(f"could not parse CQL near position {pos}")
        kind = found.lastgroup or ""
        text = found.group(kind)
        if kind == "str":
            text = re.sub(r"\\(.)", r"\1", text[1:-1], flags=re.S)
        tokens.append((kind, text))
        pos = found.end()
    return tokens


def parse_cql(cql: str) -> CqlQuery:
    """Parse ``type = page``, ``space in (...)``, ``id = N``, ``lastmodified >= "..."``, and/or/not, order by."""
    parser = _CqlParser(_cql_tokens(cql))
    matches = parser.expression()
    order = parser.order_by()
    leftover = parser.peek()
    if leftover is not None:
        raise CqlError(f"unexpected {leftover[1]!r}")
    return CqlQuery(matches, order)


class _CqlParser:
    def __init__(self, tokens: list[tuple[str, str]]) -> None:
        self.tokens = tokens
        self.i = 0

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def keyword(self, *words: str) -> str | None:
        token = self.peek()
        if token is not None and token[0] == "word" and token[1].lower() in words:
            self.i += 1
            return token[1].lower()
        return None

    def take(self, expected: str | None = None) -> tuple[str, str]:
        token = self.peek()
        if token is None:
            raise CqlError("unexpected end of CQL")
        if expected is not None and token[1] != expected:
            raise CqlError(f"expected {expected!r}, got {token[1]!r}")
        self.i += 1
        return token

    def expression(self) -> Predicate:
        left = self.term()
        while self.keyword("or"):
            left = _either(left, self.term())
        return left

    def term(self) -> Predicate:
        left = self.factor()
        while self.keyword("and"):
            left = _both(left, self.factor())
        return left

    def factor(self) -> Predicate:
        if self.keyword("not"):
            return _negate(self.factor())
        if self.peek() == ("op", "("):
            self.take("(")
            inner = self.expression()
            self.take(")")
            return inner
        kind, field = self.take()
        if kind != "word" or field.lower() not in _FIELDS:
            raise CqlError(f"unsupported CQL field {field!r}")
        field = "space" if field.lower() == "space.key" else field.lower()
        negate = self.keyword("not") is not None
        if self.keyword("in"):
            values = self.values()
            return lambda page: (str(_field_value(page, field)) in values) != negate
        if negate:
            raise CqlError("expected 'in' after 'not'")
        kind, op = self.take()
        if kind != "op":
            raise CqlError(f"unsupported CQL operator {op!r}")
        kind, value = self.take()
        if kind not in ("str", "word"):
            raise CqlError(f"expected a value, got {value!r}")
        return _compare(field, op, value)

    def values(self) -> set[str]:
        self.take("(")
        values = set()
        while True:
            kind, value = self.take()
            if kind not in ("str", "word"):
                raise CqlError(f"expected a value, got {value!r}")
            values.add(value)
            separator = self.take()[1]
            if separator == ")":
                return values
            if separator != ",":
                raise CqlError(f"expected ',' or ')', got {separator!r}")

    def order_by(self) -> tuple[str, bool] | None:
        if not self.keyword("order"):
            return None
        if not self.keyword("by"):
            raise CqlError("expected 'by' after 'order'")
        kind, field = self.take()
        if kind != "word" or field.lower() not in _FIELDS:
            raise CqlError(f"cannot order by {field!r}")
        direction = self.keyword("asc", "desc")
        return ("space" if field.lower() == "space.key" else field.lower(), direction == "desc")


def _either(a: Predicate, b: Predicate) -> Predicate:
    return lambda page: a(page) or b(page)


def _both(a: Predicate, b: Predicate) -> Predicate:
    return lambda page: a(page) and b(page)


def _negate(a: Predicate) -> Predicate:
    return lambda page: not a(page)


def _field_value(page: Page, field: str) -> Any:
    values = {
        "type": "page",
        "space": page["spaceKey"],
        "id": page["id"],
        "title": page["title"],
        "lastmodified": page["lastModified"],
        "created": page["created"],
    }
    return values[field]


def _compare(field: str, op: str, raw: str) -> Predicate:
    if field in ("lastmodified", "created"):
        when = _cql_date(raw)
        checks: dict[str, Callable[[datetime], bool]] = {
            ">=": lambda d: d >= when,
            ">": lambda d: d > when,
            "<=": lambda d: d <= when,
            "<": lambda d: d < when,
            "=": lambda d: d.replace(second=0, microsecond=0) == when,
        }
        if op not in checks:
            raise CqlError(f"unsupported date operator {op!r}")
        check = checks[op]
        return lambda page: check(_field_value(page, field))
    if op in ("=", "!="):
        return lambda page: (str(_field_value(page, field)) == raw) == (op == "=")
    if op in ("~", "!~") and field == "title":
        return lambda page: (raw.strip("*").lower() in page["title"].lower()) == (op == "~")
    raise CqlError(f"unsupported operator {op!r} for {field}")


def _cql_date(raw: str) -> datetime:
    for layout in ("%Y-%m-%d %H:%M", "%Y/%m/%d %H:%M", "%Y-%m-%d", "%Y/%m/%d"):
        try:
            return datetime.strptime(raw, layout).replace(tzinfo=UTC)
        except ValueError:
            continue
    raise CqlError(f"bad date {raw!r}")


# -- plumbing
def _aware(when: datetime) -> datetime:
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


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


def _v2_error(status: int, code: str, title: str) -> Response:
    return _json(status, {"errors": [{"status": status, "code": code, "title": title, "detail": None}]})


def _fault(fault: Fault) -> Response:
    headers: dict[str, str] = {}
    if fault.retry_after is not None:
        headers["Retry-After"] = fault.retry_after
    if fault.status == 429:
        headers.update({"X-RateLimit-Limit": "65000", "X-RateLimit-Remaining": "0"})
        headers["RateLimit-Reason"] = "confluence-quota-global-based"
    if fault.ratelimit_reset is not None:
        headers["X-RateLimit-Reset"] = fault.ratelimit_reset
    if fault.status == 429:
        return _json(429, {"code": 429, "message": "Rate limit exceeded"}, headers)
    if fault.status >= 500:
        return _json(fault.status, {"code": fault.status, "message": "Service temporarily unavailable"}, headers)
    return _v1_error(fault.status, f"Emulated HTTP {fault.status}")
