"""Forge event bodies, parsed leniently.

Forge sends trigger bodies either flat or wrapped as ``{"payload": {..., "retryContext": {...}}}``
(docs/protocol-facts.md, section 4); both are accepted. Unknown fields are kept; only what the backend acts on
is typed. Errors name the problem, never the body's values.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any

from forge_remote.errors import MalformedEvent

MAX_JSON_DEPTH = 64  # Forge's bodies nest a few levels; deeper ones would break json.dumps later
MAX_INT_DIGITS = 64  # strict bodies: far past any id or count, far short of int()'s limit
MAX_BODY_BYTES = 512 * 1024  # Forge caps UI requests at 500 KB; events are far smaller
PAGE_EVENTS = frozenset({"avi:confluence:created:page", "avi:confluence:updated:page"})
LIFECYCLE_EVENTS = frozenset({"avi:forge:installed:app", "avi:forge:upgraded:app"})


@dataclass(frozen=True)
class ForgeEvent:
    event_type: str
    body: dict[str, Any]  # the event itself, unwrapped, without retryContext
    retry_count: int

    @property
    def dedup_key(self) -> str:
        """Identifies one delivery across Forge's retries (which differ only in retryContext)."""
        canonical = json.dumps({"eventType": self.event_type, "body": self.body}, sort_keys=True, default=str)
        return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class PageRef:
    page_id: str
    space_key: str | None
    version: int | None


def decode_body(body: object, is_base64: bool = False) -> bytes:
    """The raw bytes of an API Gateway body, size-checked."""
    if body is None:
        return b""
    if not isinstance(body, str):  # API Gateway sends a string; anything else is a broken event
        raise MalformedEvent("body is not text")
    if is_base64:
        try:
            raw = base64.b64decode(body, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise MalformedEvent("body is not valid base64") from exc
    else:
        try:
            raw = body.encode()
        except UnicodeEncodeError as exc:  # a lone surrogate, from a "\ud800" escape in the event's JSON
            raise MalformedEvent("body is not valid UTF-8") from exc
    if len(raw) > MAX_BODY_BYTES:
        raise MalformedEvent("body too large")
    return raw


def json_depth(value: Any) -> int:
    """How deeply containers nest in a parsed JSON value (a scalar is 0), without recursion."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            depth += 1
            deepest = max(deepest, depth)
            stack.extend((child, depth) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


class _StrictJsonError(ValueError):
    """What ``strict`` parsing refuses; the message names the problem, never a value."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found = dict(pairs)
    if len(found) != len(pairs):  # json.loads would silently keep the last: which one was meant?
        raise _StrictJsonError("body has a key more than once")
    return found


def _no_constant(name: str) -> Any:
    raise _StrictJsonError(f"body has {name}, which is not JSON")


def _short_int(text: str) -> int:
    if len(text) > MAX_INT_DIGITS:  # int() refuses past 4300 digits; no field of ours needs this many
        raise _StrictJsonError(f"body has a number longer than {MAX_INT_DIGITS} digits")
    return int(text)


def _finite_float(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):  # 1e400: json.dumps would later write it as Infinity, not JSON
        raise _StrictJsonError("body has a number too large for a float")
    return number


def json_object(raw: bytes, *, required: bool = True, strict: bool = False) -> dict[str, Any]:
    """A JSON object from bytes; an empty body is ``{}`` unless ``required``.

    ``strict`` (what people's requests get) also refuses what ``json.loads`` lets through: bytes that
    are not UTF-8 (it would guess UTF-16 or UTF-32), a key given twice, ``NaN`` and ``Infinity``,
    numbers that overflow a float, and integers longer than ``MAX_INT_DIGITS``.
    """
    if not raw.strip():
        if required:
            raise MalformedEvent("body is empty")
        return {}
    try:
        if strict:
            value = json.loads(
                raw.decode("utf-8"),
                object_pairs_hook=_unique_keys,
                parse_constant=_no_constant,
                parse_float=_finite_float,
                parse_int=_short_int,
            )
        else:
            value = json.loads(raw)
    except RecursionError as exc:
        raise MalformedEvent(f"body is nested more than {MAX_JSON_DEPTH} levels deep") from exc
    except _StrictJsonError as exc:
        raise MalformedEvent(str(exc)) from exc
    except ValueError as exc:  # bad JSON, bad UTF-8, and an integer past int()'s 4300-digit limit
        raise MalformedEvent("body is not valid JSON") from exc
    if json_depth(value) > MAX_JSON_DEPTH:
        raise MalformedEvent(f"body is nested more than {MAX_JSON_DEPTH} levels deep")
    if not isinstance(value, dict):
        raise MalformedEvent("body is not a JSON object")
    return value


def parse_event(document: dict[str, Any]) -> ForgeEvent:
    """A Forge trigger body (flat or wrapped) as a ``ForgeEvent``."""
    payload = document.get("payload")
    event: dict[str, Any] = payload if isinstance(payload, dict) else document
    retry = event.get("retryContext", document.get("retryContext"))
    retry_count = retry.get("retryCount", 0) if isinstance(retry, dict) else 0
    event_type = event.get("eventType")
    if not isinstance(event_type, str) or not event_type or len(event_type) > 200:
        raise MalformedEvent("event has no eventType")
    body = {k: v for k, v in event.items() if k != "retryContext"}
    return ForgeEvent(
        event_type=event_type,
        body=body,
        retry_count=retry_count if isinstance(retry_count, int) and not isinstance(retry_count, bool) else 0,
    )


def page_ref(event: ForgeEvent) -> PageRef | None:
    """The page a Confluence page event is about, or None if it is not one (or lacks an id)."""
    if event.event_type not in PAGE_EVENTS:
        return None
    content = event.body.get("content")
    if not isinstance(content, dict):
        return None
    page_id = content.get("id")
    if isinstance(page_id, int) and not isinstance(page_id, bool):
        page_id = str(page_id)
    if not isinstance(page_id, str) or not page_id.isdigit() or len(page_id) > 20:
        return None
    space = content.get("space")
    space_key = space.get("key") if isinstance(space, dict) else None
    version = content.get("version")
    number = version.get("number") if isinstance(version, dict) else None
    return PageRef(
        page_id=page_id,
        space_key=space_key if isinstance(space_key, str) and space_key else None,
        version=number if isinstance(number, int) and not isinstance(number, bool) else None,
    )
