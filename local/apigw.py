"""API Gateway HTTP API (payload format 2.0) events, as the real gateway builds them."""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl


def http_api_event(
    method: str,
    path: str,
    *,
    headers: Mapping[str, str] | None = None,
    body: Any = None,
    query: str = "",
    route_key: str | None = None,
    binary: bool = False,
) -> dict[str, Any]:
    """An HTTP API v2 proxy event. ``body`` may be bytes, str, or JSON-able (then serialised)."""
    if body is None:
        raw: bytes | None = None
    elif isinstance(body, bytes):
        raw = body
    elif isinstance(body, str):
        raw = body.encode()
    else:
        raw = json.dumps(body).encode()
    now = time.time()
    lowered = {k.lower(): v for k, v in (headers or {}).items()}
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": route_key or f"{method.upper()} {path}",
        "rawPath": path,
        "rawQueryString": query,
        "headers": lowered,
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "local",
            "domainName": "127.0.0.1",
            "domainPrefix": "local",
            "http": {
                "method": method.upper(),
                "path": path,
                "protocol": "HTTP/1.1",
                "sourceIp": "127.0.0.1",
                "userAgent": lowered.get("user-agent", ""),
            },
            "requestId": uuid.uuid4().hex,
            "routeKey": route_key or f"{method.upper()} {path}",
            "stage": "$default",
            "time": time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(now)),
            "timeEpoch": int(now * 1000),
        },
        "isBase64Encoded": binary,
    }
    if query:
        # API Gateway joins a repeated key's values with commas (payload format 2.0).
        grouped: dict[str, list[str]] = {}
        for key, value in parse_qsl(query, keep_blank_values=True):
            grouped.setdefault(key, []).append(value)
        event["queryStringParameters"] = {key: ",".join(values) for key, values in grouped.items()}
    if raw is not None:
        event["body"] = base64.b64encode(raw).decode() if binary else raw.decode(errors="replace")
    return event
