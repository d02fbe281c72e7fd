"""A thin local API Gateway (HTTP API, payload format 2.0) on 127.0.0.1.

Routes come from ``template.yaml`` (``http_routes``). A request becomes the v2 event the real
gateway builds (``local/apigw.py``), the function's real handler gets it, and its result becomes the
HTTP response. What API Gateway itself answers is copied: 404 ``{"message":"Not Found"}`` when no
route matches (method included: HTTP APIs have no 405), 413 past the 10 MB payload limit, 500
``{"message":"Internal Server Error"}`` when the function fails or returns something malformed.
"""

from __future__ import annotations

import base64
import json
import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from werkzeug.wrappers import Request, Response

from local.apigw import http_api_event
from local.cfn_yaml import path_matches
from local.loopback import LoopbackServer

logger = logging.getLogger(__name__)

MAX_PAYLOAD_BYTES = 10 * 1024 * 1024  # API Gateway's request payload limit
_TEXT_TYPES = re.compile(r"^(text/|application/([\w.+-]*\+)?(json|xml|javascript|x-www-form-urlencoded))", re.I)

# (function logical id, v2 event) -> the handler's raw result
Invoke = Callable[[str, dict[str, Any]], Any]


@dataclass(frozen=True)
class Route:
    """One template route, e.g. ``ANY /api/{proxy+}`` -> ``ForgeCallsFunction``."""

    method: str
    path: str
    function: str

    @property
    def route_key(self) -> str:
        return "$default" if self.path == "$default" else f"{self.method} {self.path}"

    @property
    def greedy(self) -> bool:
        return self.path.endswith("+}")

    def path_parameters(self, path: str) -> dict[str, str] | None:
        """The ``{name}`` / ``{name+}`` values if ``path`` matches this route's path, else None."""
        if not path_matches(self.path, path):
            return None
        params: dict[str, str] = {}
        parts = path.strip("/").split("/")
        for index, segment in enumerate(self.path.strip("/").split("/")):
            if segment.endswith("+}"):
                params[segment[1:-2]] = "/".join(parts[index:])
            elif segment.startswith("{"):
                params[segment[1:-1]] = parts[index]
        return params


def match_route(routes: Iterable[Route], method: str, path: str) -> tuple[Route, dict[str, str]] | None:
    """API Gateway's choice: exact paths, then variables, then greedy ones, then ``$default``;
    for the same path a named method before ``ANY``."""

    def rank(route: Route) -> tuple[int, int, int, int]:
        return (int(route.path == "$default"), int(route.greedy), route.path.count("{"), int(route.method == "ANY"))

    for route in sorted(routes, key=rank):
        if route.method not in (method.upper(), "ANY"):
            continue
        params = route.path_parameters(path)
        if params is not None:
            return route, params
    return None


def _gateway_error(status: int, message: str) -> Response:
    return Response(json.dumps({"message": message}), status=status, content_type="application/json")


def _is_text(content_type: str | None, raw: bytes) -> bool:
    if not raw:
        return True
    if content_type and not _TEXT_TYPES.match(content_type):
        return False
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def to_event(request: Request, route: Route, params: dict[str, str], raw: bytes) -> dict[str, Any]:
    """The v2 event API Gateway builds for ``request`` on ``route``."""
    headers: dict[str, str] = {}
    for name, value in request.headers.items():
        key = name.lower()
        # v2 joins repeated headers with commas; cookies travel in their own field.
        if key != "cookie":
            headers[key] = f"{headers[key]},{value}" if key in headers else value
    binary = not _is_text(request.content_type, raw)
    event = http_api_event(
        request.method,
        request.path,
        headers=headers,
        body=raw if raw else None,
        query=request.query_string.decode("latin-1"),
        route_key=route.route_key,
        binary=binary,
    )
    if params:
        event["pathParameters"] = params
    cookies = [c.strip() for c in request.headers.get("cookie", "").split(";") if c.strip()]
    if cookies:
        event["cookies"] = cookies
    return event


def to_response(result: Any) -> Response:
    """The HTTP response for a handler's result, inferred the way payload format 2.0 does."""
    if not isinstance(result, dict) or "statusCode" not in result:
        # v2 infers a 200 JSON response from anything that is not a response object.
        return Response(json.dumps(result), status=200, content_type="application/json")
    status = result["statusCode"]
    if not isinstance(status, int) or not 100 <= status <= 599:
        return _gateway_error(500, "Internal Server Error")
    body = result.get("body") or ""
    if not isinstance(body, str):
        return _gateway_error(500, "Internal Server Error")
    data = base64.b64decode(body) if result.get("isBase64Encoded") else body.encode()
    response = Response(data, status=status)
    response.headers.remove("Content-Type")  # only what the function set
    for name, value in (result.get("headers") or {}).items():
        response.headers[str(name)] = str(value)
    for cookie in result.get("cookies") or []:
        response.headers.add("Set-Cookie", str(cookie))
    return response


class LocalGateway:
    """Serves ``routes`` on 127.0.0.1:<port>, each request handed to ``invoke(function, event)``."""

    def __init__(self, routes: Iterable[Route], invoke: Invoke, *, port: int = 0) -> None:
        self.routes = list(routes)
        self._invoke = invoke
        self._server = LoopbackServer(self.wsgi, port)

    @classmethod
    def from_template_routes(
        cls, routes: Iterable[tuple[str, str, str]], invoke: Invoke, *, port: int = 0
    ) -> LocalGateway:
        """From ``http_routes(template)``: (method, path, function logical id)."""
        return cls([Route(m, p, f) for m, p, f in routes], invoke, port=port)

    def start(self) -> str:
        return self._server.start()

    @property
    def url(self) -> str:
        return self._server.url

    def stop(self) -> None:
        self._server.stop()

    def handle(self, request: Request) -> Response:
        matched = match_route(self.routes, request.method, request.path)
        if matched is None:
            return _gateway_error(404, "Not Found")
        if (request.content_length or 0) > MAX_PAYLOAD_BYTES:
            return _gateway_error(413, "Request Entity Too Large")
        raw = request.get_data(cache=False)
        if len(raw) > MAX_PAYLOAD_BYTES:  # chunked bodies carry no Content-Length
            return _gateway_error(413, "Request Entity Too Large")
        route, params = matched
        event = to_event(request, route, params, raw)
        try:
            result = self._invoke(route.function, event)
        except Exception:
            # A function error is a 500 to the caller, as on AWS; the traceback is for the developer.
            logger.exception("%s failed on %s", route.function, route.route_key)
            return _gateway_error(500, "Internal Server Error")
        return to_response(result)

    def wsgi(self, environ: dict[str, Any], start_response: Any) -> Any:
        request = Request(environ)
        response = self.handle(request)
        # The access log API Gateway would write: no headers, no query (they carry FITs and tokens).
        logger.info("%s %s -> %d", request.method, request.path, response.status_code)
        return response(environ, start_response)
