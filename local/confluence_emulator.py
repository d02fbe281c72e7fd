"""A Confluence Cloud emulator on loopback: the endpoints the jobs use, in the documented shapes.

v1 ``GET /wiki/rest/api/content/search`` (a CQL subset, opaque cursors, ``_links.next`` without the
``/wiki`` prefix), v2 ``GET /wiki/api/v2/pages/{id}`` and ``GET /wiki/api/v2/spaces?keys=``
(``_links.next`` with ``/wiki``, plus a ``Link`` header). Shapes follow Atlassian's OpenAPI
descriptions (``shared/reference``; tests validate against them). Tokens are checked on every
request: missing, unknown, revoked or expired (JWT ``exp`` against the stack's clock) is refused.
Faults are switchable: ``fail_next(n, 429 | 503 | 500, retry_after=..., ratelimit_reset=...)``.
"""

from __future__ import annotations

import base64
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

_PREFIX = re.compile(r"^/ex/confluence/(?P<cloud>[^/]+)/wiki(?P<rest>/.*)$")


def jwt_not_expired(token: str) -> bool:
    """The default validator: a JWT whose ``exp`` is still ahead on the stack's clock."""
    try:
        exp = jwt.decode(token, options={"verify_signature": False}).get("exp")
    except jwt.PyJWTError:
        return False
    return isinstance(exp, int | float) and exp > clock.now()


@dataclass
class Fault:
    status: int
    retry_after: str | None = None
    ratelimit_reset: str | None = None


class CqlError(ValueError):
    pass


# -- a small CQL evaluator: enough for the jobs' queries, strict about what it does not know
_TOKEN = re.compile(
    r'\s*(?:(?P<str>"(?:\\.|[^"\\])*")|(?P<num>\d+)|(?P<op>!=|>=|<=|=|<|>|~|\(|\)|,)|(?P<word>[A-Za-z_][\w.]*))'
)


def _tokens(cql: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    while pos < len(cql):
        if cql[pos:].strip() == "":
            break
        match = _TOKEN.match(cql, pos)
        if not match:
            raise CqlError(f"could not parse CQL near position {pos}")
        kind = match.lastgroup or ""
        value = match.group(kind)
        if kind == "str":
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        out.append((kind, value))
        pos = match.end()
    return out


class _Parser:
    def __init__(self, cql: str) -> None:
        self.tokens = _tokens(cql)
        self.i = 0
        self.order: tuple[str, bool] | None = None

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def take(self) -> tuple[str, str]:
        token = self.peek()
        if token is None:
            raise CqlError("unexpected end of CQL")
        self.i += 1
        return token

    def parse(self) -> Callable[[dict[str, Any]], bool]:
        expr = self.expr()
        token = self.peek()
        if token and token[1].lower() == "order":
            self.take()
            if self.take()[1].lower() != "by":
                raise CqlError("expected 'by'")
            field = self.take()[1].lower()
            desc = bool(self.peek() and self.peek()[1].lower() == "desc")  # type: ignore[index]
            if self.peek() and self.peek()[1].lower() in ("asc", "desc"):  # type: ignore[index]
                self.take()
            self.order = (field, desc)
        if self.peek() is not None:
            raise CqlError("unexpected trailing CQL")
        return expr

    def expr(self) -> Callable[[dict[str, Any]], bool]:
        left = self.term()
        while (t := self.peek()) and t[1].lower() == "or":
            self.take()
            left = _either(left, self.term())
        return left

    def term(self) -> Callable[[dict[str, Any]], bool]:
        left = self.factor()
        while (t := self.peek()) and t[1].lower() == "and":
            self.take()
            left = _both(left, self.factor())
        return left

    def factor(self) -> Callable[[dict[str, Any]], bool]:
        token = self.take()
        if token[1] == "(":
            inner = self.expr()
            if self.take()[1] != ")":
                raise CqlError("expected ')'")
            return inner
        if token[1].lower() == "not":
            inner = self.factor()
            return lambda p: not inner(p)
        if token[0] != "word":
            raise CqlError(f"expected a field, got {token[1]!r}")
        field = token[1].lower()
        if field not in _FIELDS:
            raise CqlError(f"unsupported CQL field {field!r}")
        op = self.take()[1].lower()
        if op == "in":
            if self.take()[1] != "(":
                raise CqlError("expected '(' after in")
            values = []
            while True:
                values.append(self.take()[1])
                sep = self.take()[1]
                if sep == ")":
                    break
                if sep != ",":
                    raise CqlError("expected ',' or ')'")
            return lambda p: _field_value(p, field) in values
        value = self.take()
        if value[0] not in ("str", "num", "word"):
            raise CqlError("expected a value")
        return _compare(field, op, value[1])


Predicate = Callable[[dict[str, Any]], bool]
_FIELDS = frozenset({"type", "space", "id", "title", "lastmodified", "created"})


def _either(a: Predicate, b: Predicate) -> Predicate:
    return lambda p: a(p) or b(p)


def _both(a: Predicate, b: Predicate) -> Predicate:
    return lambda p: a(p) and b(p)


def _field_value(page: dict[str, Any], field: str) -> Any:
    if field == "type":
        return "page"
    if field == "space":
        return page["spaceKey"]
    if field == "id":
        return str(page["id"])
    if field == "title":
        return page["title"]
    if field in ("lastmodified", "created"):
        return page["lastModified"]
    raise CqlError(f"unsupported CQL field {field!r}")


def _compare(field: str, op: str, raw: str) -> Callable[[dict[str, Any]], bool]:
    if field in ("lastmodified", "created"):
        try:
            when = datetime.strptime(raw, "%Y-%m-%d %H:%M").replace(tzinfo=UTC)
        except ValueError:
            try:
                when = datetime.strptime(raw, "%Y-%m-%d").replace(tzinfo=UTC)
            except ValueError as exc:
                raise CqlError(f"bad date {raw!r}") from exc
        ops: dict[str, Callable[[datetime], bool]] = {
            ">=": lambda d: d >= when,
            ">": lambda d: d > when,
            "<": lambda d: d < when,
            "<=": lambda d: d <= when,
        }
        if op not in ops:
            raise CqlError(f"unsupported date operator {op!r}")
        check = ops[op]
        return lambda p: check(_field_value(p, field))
    if op == "=":
        return lambda p: _field_value(p, field) == raw
    if op == "!=":
        return lambda p: _field_value(p, field) != raw
    if op == "~":
        return lambda p: raw.lower() in str(_field_value(p, field)).lower()
    raise CqlError(f"unsupported operator {op!r} for {field}")


class ConfluenceEmulator:
    """One Confluence site. ``start()`` serves it on 127.0.0.1 and returns the apiBaseUrl."""

    def __init__(
        self,
        token_validator: Callable[[str], bool] | None = None,
        *,
        cloud_id: str | None = None,
        page_size_cap: int = 25,
        expired_token_status: str = "401",
        port: int = 0,
    ) -> None:
        self.cloud_id = cloud_id or str(uuid.uuid4())
        self._validate = token_validator or jwt_not_expired
        self.page_size_cap = page_size_cap
        self.expired_token_status = expired_token_status  # "401" or "v1-403-v2-404"
        self.delay_s = 0.0
        self.spaces: dict[str, dict[str, Any]] = {}
        self.pages: dict[int, dict[str, Any]] = {}
        self.requests_seen: list[tuple[str, str, dict[str, str], str | None]] = []
        self._revoked: set[str] = set()
        self._faults: list[Fault] = []
        self._next_id = 100000
        self._lock = threading.Lock()
        self._server = LoopbackServer(self._wsgi, port)

    # -- lifecycle
    def start(self) -> str:
        return f"{self._server.start()}/ex/confluence/{self.cloud_id}"

    def stop(self) -> None:
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
        space = {"id": self._new_id(), "key": key, "name": name}
        self.spaces[key] = space
        return space

    def add_page(
        self, space_key: str, title: str, body: str = "<p>Hello</p>", last_modified: datetime | None = None
    ) -> dict[str, Any]:
        if space_key not in self.spaces:
            raise KeyError(f"no space {space_key}")
        when = last_modified or datetime.fromtimestamp(clock.now(), UTC)
        page: dict[str, Any] = {
            "id": self._new_id(),
            "spaceKey": space_key,
            "title": title,
            "body": body,
            "version": 1,
            "created": when,
            "lastModified": when,
        }
        self.pages[page["id"]] = page
        return page

    def update_page(self, page_id: int, *, title: str | None = None, body: str | None = None) -> dict[str, Any]:
        page = self.pages[page_id]
        page["version"] += 1
        page["title"] = title or page["title"]
        page["body"] = body or page["body"]
        page["lastModified"] = datetime.fromtimestamp(clock.now(), UTC)
        return page

    def revoke(self, token: str) -> None:
        self._revoked.add(token)

    def fail_next(
        self, n: int, status: int = 429, *, retry_after: str | None = None, ratelimit_reset: str | None = None
    ) -> None:
        self._faults.extend(Fault(status, retry_after, ratelimit_reset) for _ in range(n))

    # -- HTTP
    def _wsgi(self, environ: dict[str, Any], start_response: Any) -> Any:
        request = Request(environ)
        response = self._handle(request)
        response.headers["atl-traceid"] = uuid.uuid4().hex[:16]
        return response(environ, start_response)

    def _handle(self, request: Request) -> Response:
        authorization = request.headers.get("Authorization", "")
        token = authorization[7:] if authorization.startswith("Bearer ") else None
        self.requests_seen.append((request.method, request.path, dict(request.args), token))
        if self.delay_s:
            time.sleep(self.delay_s)
        match = _PREFIX.match(request.path)
        if not match or match.group("cloud") != self.cloud_id:
            return _json(404, {"code": 404, "message": "Not Found"})
        rest = match.group("rest")
        if token is None or token in self._revoked or not self._validate(token):
            if self.expired_token_status == "v1-403-v2-404" and token is not None:
                if rest.startswith("/api/v2/"):
                    return _v2_error(404, "NOT_FOUND", "Not Found")
                return _json(403, {"statusCode": 403, "message": "Current user not permitted to use Confluence"})
            return _json(401, {"code": 401, "message": "Unauthorized"})
        if self._faults:
            return _fault(self._faults.pop(0))
        if request.method != "GET":
            return _json(405, {"statusCode": 405, "message": "Method not allowed"})
        if rest == "/rest/api/content/search":
            return self._search(request)
        if rest == "/api/v2/spaces":
            return self._spaces(request)
        if (page := re.fullmatch(r"/api/v2/pages/(\d+)", rest)) is not None:
            return self._page_v2(int(page.group(1)))
        return _json(404, {"statusCode": 404, "message": "No such endpoint in the emulator"})

    def _base(self, request: Request) -> str:
        return f"{request.host_url.rstrip('/')}/ex/confluence/{self.cloud_id}/wiki"

    def _search(self, request: Request) -> Response:
        cql = request.args.get("cql", "")
        try:
            parser = _Parser(cql)
            matches = parser.parse()
            found = [p for p in self.pages.values() if matches(p)]
        except CqlError as exc:
            return _json(
                400, {"statusCode": 400, "message": f"Could not parse cql : {cql}", "data": {"errors": [str(exc)]}}
            )
        if parser.order:
            field, desc = parser.order
            found.sort(key=lambda p: _field_value(p, field), reverse=desc)
        else:
            found.sort(key=lambda p: p["id"])
        limit = max(1, min(_int(request.args.get("limit"), 25), self.page_size_cap))
        offset = _decode_cursor(request.args.get("cursor"))
        window = found[offset : offset + limit]
        expand = {e.strip() for e in request.args.get("expand", "").split(",") if e.strip()}
        links: dict[str, Any] = {
            "base": f"{request.host_url.rstrip('/')}/ex/confluence/{self.cloud_id}/wiki",
            "context": "/wiki",
            "self": f"{self._base(request)}/rest/api/content/search?{urlencode({'cql': cql})}",
        }
        if offset + limit < len(found):
            query = {"cql": cql, "limit": str(limit), "cursor": _encode_cursor(offset + limit)}
            if expand:
                query["expand"] = ",".join(sorted(expand))
            links["next"] = f"/rest/api/content/search?{urlencode(query)}"  # v1: no /wiki prefix
        body = {
            "results": [self._content_v1(p, expand) for p in window],
            "start": offset,
            "limit": limit,
            "size": len(window),
            "_links": links,
        }
        return _json(200, body)

    def _content_v1(self, page: dict[str, Any], expand: set[str]) -> dict[str, Any]:
        space = self.spaces[page["spaceKey"]]
        content: dict[str, Any] = {
            "id": str(page["id"]),
            "type": "page",
            "status": "current",
            "title": page["title"],
            "_links": {
                "webui": f"/spaces/{space['key']}/pages/{page['id']}",
                "self": f"/rest/api/content/{page['id']}",
                "tinyui": f"/x/{page['id']}",
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
                "_links": {"webui": f"/spaces/{space['key']}", "self": f"/rest/api/space/{space['key']}"},
                "_expandable": {},
            }
        else:
            content["_expandable"]["space"] = f"/rest/api/space/{space['key']}"
        if "version" in expand:
            content["version"] = {
                "number": page["version"],
                "when": _iso(page["lastModified"]),
                "minorEdit": False,
                "message": "",
                "by": {"type": "known", "accountId": "557058:emulator", "displayName": "Emulator"},
                "_links": {},
                "_expandable": {},
            }
        else:
            content["_expandable"]["version"] = ""
        return content

    def _page_v2(self, page_id: int) -> Response:
        page = self.pages.get(page_id)
        if page is None:
            return _v2_error(404, "NOT_FOUND", "Not Found")
        space = self.spaces[page["spaceKey"]]
        return _json(
            200,
            {
                "id": str(page["id"]),
                "status": "current",
                "title": page["title"],
                "spaceId": str(space["id"]),
                "authorId": "557058:emulator",
                "createdAt": _iso(page["created"]),
                "version": {
                    "createdAt": _iso(page["lastModified"]),
                    "message": "",
                    "number": page["version"],
                    "minorEdit": False,
                    "authorId": "557058:emulator",
                },
                "body": {},
                "_links": {"webui": f"/spaces/{space['key']}/pages/{page['id']}", "tinyui": f"/x/{page['id']}"},
            },
        )

    def _spaces(self, request: Request) -> Response:
        keys = [k for k in request.args.get("keys", "").split(",") if k] or sorted(self.spaces)
        found = [self.spaces[k] for k in keys if k in self.spaces]
        limit = max(1, min(_int(request.args.get("limit"), 25), 250, self.page_size_cap))
        offset = _decode_cursor(request.args.get("cursor"))
        window = found[offset : offset + limit]
        links: dict[str, Any] = {"base": f"{request.host_url.rstrip('/')}/ex/confluence/{self.cloud_id}/wiki"}
        headers = {}
        if offset + limit < len(found):
            query = {"keys": ",".join(keys), "limit": str(limit), "cursor": _encode_cursor(offset + limit)}
            links["next"] = f"/wiki/api/v2/spaces?{urlencode(query)}"  # v2: with /wiki
            headers["Link"] = f'<{links["next"]}>; rel="next"'
        results = [
            {
                "id": str(s["id"]),
                "key": s["key"],
                "name": s["name"],
                "type": "global",
                "status": "current",
                "authorId": "557058:emulator",
                "createdAt": "2026-01-01T00:00:00.000Z",
                "homepageId": str(s["id"] + 1),
                "_links": {"webui": f"/spaces/{s['key']}"},
            }
            for s in window
        ]
        return _json(200, {"results": results, "_links": links}, headers)


def _int(value: str | None, default: int) -> int:
    try:
        return int(value) if value is not None else default
    except ValueError:
        return default


def _encode_cursor(offset: int) -> str:
    return base64.urlsafe_b64encode(f"offset:{offset}".encode()).decode()


def _decode_cursor(cursor: str | None) -> int:
    if not cursor:
        return 0
    try:
        return int(base64.urlsafe_b64decode(cursor.encode()).decode().split(":", 1)[1])
    except (ValueError, IndexError):
        return 0


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _json(status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(body), status=status, content_type="application/json", headers=headers)


def _v2_error(status: int, code: str, title: str) -> Response:
    return _json(status, {"errors": [{"status": status, "code": code, "title": title, "detail": None}]})


def _fault(fault: Fault) -> Response:
    headers = {"X-RateLimit-Limit": "65000", "X-RateLimit-Remaining": "0"}
    if fault.retry_after is not None:
        headers["Retry-After"] = fault.retry_after
    if fault.ratelimit_reset is not None:
        headers["X-RateLimit-Reset"] = fault.ratelimit_reset
    if fault.status == 429:
        headers["RateLimit-Reason"] = "confluence-quota-app-based"
        return _json(429, {"code": 429, "message": "Rate limit exceeded"}, headers)
    return _json(fault.status, {"statusCode": fault.status, "message": "Service unavailable"}, headers)
