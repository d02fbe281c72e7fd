"""Job results in the app table: ``pk = INST#<installationId>``, ``sk = <KIND>#<key>`` (keys: ``table_keys``).

Records are JSON documents (``data``) so a job can store what it likes without a schema change;
``put`` is an upsert, which makes a re-run of the same job idempotent.

Size rule. DynamoDB refuses an item over 400 KB (attribute names and values counted in UTF-8 bytes),
and a refused put would fail the job on every redelivery until it reached the DLQ. So ``put`` bounds
what it stores, whatever the record's shape, and never refuses a record for its size:

1. The record is encoded compactly: sorted keys, no spaces, non-ASCII characters as themselves (1-4
   UTF-8 bytes each, not the 6 or 12 of ``\\uXXXX`` escapes). Lone surrogates, which UTF-8 cannot
   carry, stay escaped, so every record round-trips exactly as before.
2. The whole item must fit ``ITEM_BUDGET_BYTES`` (380,000 bytes, see below): ``data`` gets what the
   key attributes, the other attributes and every attribute name leave of it.
3. A record that does not fit is cut, biggest value first. Every non-empty list and string in the
   record is ranked by its encoded size (ties: by path); the biggest loses its tail: a list keeps its
   first items, a string its first characters, as many as let the record fit. If none do, it is
   emptied and the next biggest is cut, and so on. A list is always bigger than anything in it, so
   strings are cut only when one dominates the record (a huge text outside any list).
4. A cut record says so in a top-level ``"_truncated"`` field: ``{<JSON Pointer>: {"kept": n,
   "total": m}}`` per cut value (items of a list, characters of a string), paths as in the record
   given. That name is reserved: a cut record's own ``_truncated`` field is dropped first, and listed
   as ``"/_truncated": {"kept": 0, "total": 1}``. A record that fits is stored unchanged, no marker.
5. Last resort, when cutting every list and string is not enough (a huge object of numbers, say):
   the record is stored as ``{"_truncated": {"": {"kept": 0, "total": <its number of keys>}}}``.

The same record always gives the same stored document.

Budget: the limit is 400 KB = 409,600 bytes; moto refuses above 405,000. 380,000 keeps 20 KB below
even a decimal reading of "400 KB", for attributes other writers may add to an item later (a global
table's replication attributes, an UpdateItem) and for DynamoDB's approximate size of numbers.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from json.encoder import encode_basestring
from typing import TYPE_CHECKING, Any

from forge_remote import clock
from forge_remote.storage.table_keys import installation_pk, result_sk, result_sk_prefix

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

logger = logging.getLogger(__name__)

MAX_ITEM_BYTES = 400 * 1024  # DynamoDB's item size limit
# Every result expires (DynamoDB TTL): a job that wants its records longer or shorter says so with
# ``ttl_s``; an uninstall shortens it to the retention period (``lifecycle/cleanup.py``).
DEFAULT_RESULT_TTL_S = 90 * 86400
ITEM_BUDGET_BYTES = 380_000  # what put() lets a whole item reach (see the module docstring)
MIN_ITEM_BUDGET_BYTES = 1024  # room for the keys and a last-resort marker
NUMBER_BYTES = 21  # DynamoDB stores a number in at most 21 bytes
TRUNCATED = "_truncated"

_LONE_SURROGATE = re.compile("[\ud800-\udfff]")  # a str holds astral characters whole: any surrogate is lone
_LOGGED_CUTS = 10  # a warning names at most this many cut paths

Pointer = tuple[str | int, ...]
Marker = dict[str, dict[str, int]]


@dataclass(frozen=True)
class StoredResult:
    """What ``put`` stored: the size of ``data`` and what was cut (the record's marker, empty if nothing)."""

    data_bytes: int
    truncated: Marker = field(default_factory=dict)


# -- encoding and sizes ------------------------------------------------------------------------------
def _escape_lone_surrogates(text: str) -> str:
    # ensure_ascii=False leaves a lone surrogate raw, which no UTF-8 encoder (botocore's included)
    # accepts; its \\udXXX escape is what ensure_ascii=True wrote, and json.loads reads it back the same.
    return _LONE_SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def encode(record: Any) -> str:
    """The stored text of a record: compact, sorted keys, UTF-8-safe (lone surrogates escaped)."""
    return _escape_lone_surrogates(
        json.dumps(record, sort_keys=True, default=str, ensure_ascii=False, separators=(",", ":"))
    )


def utf8_bytes(text: str) -> int:
    return len(text.encode("utf-8"))


def _str_bytes(text: str) -> int:
    """Encoded size of a JSON string as ``encode`` writes it (without a json.dumps call per string)."""
    quoted = encode_basestring(text)  # what json.dumps(ensure_ascii=False) writes for a str
    try:
        return len(quoted.encode("utf-8"))
    except UnicodeEncodeError:  # a lone surrogate: written escaped
        return utf8_bytes(_escape_lone_surrogates(quoted))


def _scalar_bytes(value: Any) -> int:
    """Encoded size of a JSON scalar; the common types without json.dumps, which dominates otherwise."""
    if isinstance(value, str):
        return _str_bytes(value)
    if value is None or value is True:
        return 4
    if value is False:
        return 5
    if type(value) is int:
        return len(int.__repr__(value))
    return utf8_bytes(encode(value))  # floats: repr, NaN, Infinity


def _attribute_bytes(name: str, value: dict[str, str]) -> int:
    """DynamoDB's size of one scalar attribute: its name plus its value, in UTF-8 bytes."""
    if "N" in value:
        return utf8_bytes(name) + NUMBER_BYTES  # numbers are sized approximately: take the maximum
    return utf8_bytes(name) + sum(utf8_bytes(v) for v in value.values())


def _pointer(path: Pointer) -> str:
    """RFC 6901 JSON Pointer: unambiguous whatever the keys contain ("" is the whole record)."""
    return "".join("/" + str(part).replace("~", "~0").replace("/", "~1") for part in path)


# -- fitting a record into a byte budget -------------------------------------------------------------
@dataclass(frozen=True)
class _Candidate:
    """A non-empty list or string that could be cut, with its encoded size (and its items')."""

    path: Pointer
    size: int
    item_sizes: tuple[int, ...] | None  # None for a string

    @property
    def rank(self) -> tuple[int, str]:
        return (-self.size, _pointer(self.path))  # biggest first; the path makes ties deterministic


def _measure(value: Any, path: Pointer, found: list[_Candidate]) -> int:
    """Encoded size of a plain-JSON value (as ``encode`` writes it), collecting what could be cut."""
    if isinstance(value, dict):
        sizes = [_str_bytes(k) + 1 + _measure(v, (*path, k), found) for k, v in value.items()]
        return 2 + sum(sizes) + max(len(sizes) - 1, 0)
    if isinstance(value, list):
        items = tuple(_measure(v, (*path, i), found) for i, v in enumerate(value))
        size = 2 + sum(items) + max(len(items) - 1, 0)
        if items:
            found.append(_Candidate(path, size, items))
        return size
    size = _scalar_bytes(value)
    if isinstance(value, str) and value:
        found.append(_Candidate(path, size, None))
    return size


def _entry_bytes(pointer: str, kept: int, total: int) -> int:
    """Bytes one marker entry adds to the marker object (its separating comma included)."""
    return _str_bytes(pointer) + 1 + len(encode({"kept": kept, "total": total})) + 1


def _locate(root: Any, path: Pointer) -> tuple[Any, str | int]:
    parent = root
    for part in path[:-1]:
        parent = parent[part]
    return parent, path[-1]


def _largest_fitting(low: int, high: int, fits: Callable[[int], bool]) -> int | None:
    """The largest n in [low, high] with fits(n), fits being monotone (true up to some n); None if none."""
    if not fits(low):
        return None
    while low < high:
        mid = (low + high + 1) // 2
        if fits(mid):
            low = mid
        else:
            high = mid - 1
    return low


class _Fitter:
    """Cuts a plain-JSON copy of a record, biggest value first, until it fits ``limit`` bytes.

    Sizes are kept piecewise (the record without its marker, plus the marker's entries) so that trying
    a cut costs no re-encoding of the whole record; ``fit`` checks the result exactly.
    """

    def __init__(self, working: dict[str, Any], limit: int) -> None:
        self.working = working
        self.limit = limit
        self.marker: Marker = {}
        self.entries = 0  # bytes of the marker's entries, one comma each
        if TRUNCATED in working:  # the marker's place: a record's own value there is dropped, and says so
            del working[TRUNCATED]
            self._note(_pointer((TRUNCATED,)), 0, 1)
        # '"_truncated":{' '}' and the comma before it (the record keeps all its keys, so this is fixed)
        self.overhead = _str_bytes(TRUNCATED) + 1 + 2 + (1 if working else 0)
        self.candidates: list[_Candidate] = []
        self.content = _measure(working, (), self.candidates)  # bytes of the record without the marker

    def size(self, content: int, entries: int) -> int:
        """Bytes of the record with a marker of ``entries`` bytes (no marker when there are none)."""
        return content + self.overhead + entries - 1 if entries else content

    def fits(self) -> bool:
        return self.size(self.content, self.entries) <= self.limit

    def run(self) -> bool:
        """Cut candidates biggest first until the record fits; False if cutting everything is not enough."""
        emptied: set[Pointer] = set()
        for candidate in sorted(self.candidates, key=lambda c: c.rank):
            if self.fits():
                return True
            # An emptied value took everything in it along. (A value is always smaller than what holds
            # it, so what holds it was ranked first: no size computed here was changed by a cut.)
            if any(candidate.path[:depth] in emptied for depth in range(len(candidate.path))):
                continue
            if not self._cut(candidate):
                emptied.add(candidate.path)
        return self.fits()

    def _cut(self, candidate: _Candidate) -> bool:
        """Keep as much of the candidate as lets the record fit, or empty it. True if the record now fits."""
        parent, key = _locate(self.working, candidate.path)
        value = parent[key]
        pointer = _pointer(candidate.path)

        def size_if_kept(n: int) -> int:
            if candidate.item_sizes is not None:
                return 2 + sum(candidate.item_sizes[:n]) + max(n - 1, 0)
            return utf8_bytes(encode(value[:n]))

        def fits_with(n: int) -> bool:
            content = self.content - candidate.size + size_if_kept(n)
            return self.size(content, self.entries + _entry_bytes(pointer, n, len(value))) <= self.limit

        kept = _largest_fitting(0, len(value) - 1, fits_with)  # keeping everything is what does not fit
        self.content += size_if_kept(kept or 0) - candidate.size
        self._note(pointer, kept or 0, len(value))
        parent[key] = value[: kept or 0]
        return kept is not None

    def _note(self, pointer: str, kept: int, total: int) -> None:
        self.marker[pointer] = {"kept": kept, "total": total}
        self.entries += _entry_bytes(pointer, kept, total)


def fit(record: dict[str, Any], limit: int) -> tuple[str, Marker]:
    """The text to store for ``record`` within ``limit`` UTF-8 bytes, and what was cut (see the module docstring)."""
    text = encode(record)
    if utf8_bytes(text) <= limit:
        return text, {}
    working: dict[str, Any] = json.loads(text)  # a plain-JSON copy: the caller's record is never touched
    fitter = _Fitter(working, limit)
    if fitter.run():
        text = encode({**fitter.working, TRUNCATED: fitter.marker})
        if utf8_bytes(text) <= limit:  # exact check of the sizes computed piecewise above
            return text, fitter.marker
    # Last resort: nothing of the record, only the fact that it was there.
    marker = {"": {"kept": 0, "total": len(record)}}
    return encode({TRUNCATED: marker}), marker


# -- the store ---------------------------------------------------------------------------------------
class ResultStore:
    def __init__(
        self,
        client: DynamoDBClient,
        table_name: str,
        *,
        item_budget_bytes: int = ITEM_BUDGET_BYTES,
        default_ttl_s: int = DEFAULT_RESULT_TTL_S,
    ) -> None:
        if not MIN_ITEM_BUDGET_BYTES <= item_budget_bytes <= MAX_ITEM_BYTES:
            raise ValueError(f"item budget must be between {MIN_ITEM_BUDGET_BYTES} and {MAX_ITEM_BYTES} bytes")
        if default_ttl_s <= 0:
            raise ValueError("default_ttl_s must be positive: every result expires")
        self._client = client
        self.table_name = table_name
        self.item_budget_bytes = item_budget_bytes
        self.default_ttl_s = default_ttl_s

    def put(
        self, installation_id: str, kind: str, key: str, record: dict[str, Any], *, ttl_s: int | None = None
    ) -> StoredResult:
        """Store (upsert) a record, bounded in size: never refused for being large.

        The record is encoded compactly (UTF-8, not ``\\uXXXX``). If the item would exceed
        ``item_budget_bytes`` (keys, other attributes and attribute names counted), the biggest lists
        and strings are cut, keeping their first items or characters, and the stored record gets a
        ``"_truncated": {<JSON Pointer>: {"kept": n, "total": m}}`` field; as a last resort only that
        marker is stored. The module docstring has the exact rule. Returns what was stored and cut,
        and logs a warning when something was. The item expires after ``ttl_s`` seconds
        (``default_ttl_s`` if not given).
        """
        now = clock.now()
        item: dict[str, Any] = {
            "pk": {"S": installation_pk(installation_id)},
            "sk": {"S": result_sk(kind, key)},
            "updatedAt": {"N": str(int(now))},
            "ttl": {"N": str(int(now + (self.default_ttl_s if ttl_s is None else ttl_s)))},
        }
        others = sum(_attribute_bytes(name, value) for name, value in item.items())
        text, cut = fit(record, self.item_budget_bytes - others - utf8_bytes("data"))
        item["data"] = {"S": text}
        self._client.put_item(TableName=self.table_name, Item=item)
        stored = StoredResult(utf8_bytes(text), cut)
        if cut:
            logger.warning(
                "job result cut to fit the item size budget",
                extra={
                    "kind": kind,
                    "key": key,
                    "stored_bytes": stored.data_bytes,
                    "budget_bytes": self.item_budget_bytes,
                    "cuts": len(cut),
                    "truncated": dict(sorted(cut.items())[:_LOGGED_CUTS]),
                },
            )
        return stored

    def get(self, installation_id: str, kind: str, key: str) -> dict[str, Any] | None:
        item = self._client.get_item(
            TableName=self.table_name,
            Key={"pk": {"S": installation_pk(installation_id)}, "sk": {"S": result_sk(kind, key)}},
            ConsistentRead=True,
        ).get("Item")
        if not item:
            return None
        record: dict[str, Any] = json.loads(item["data"]["S"])
        return record

    def list(self, installation_id: str, kind: str) -> list[dict[str, Any]]:
        paginator = self._client.get_paginator("query")
        records: list[dict[str, Any]] = []
        for page in paginator.paginate(
            TableName=self.table_name,
            KeyConditionExpression="pk = :pk AND begins_with(sk, :prefix)",
            ExpressionAttributeValues={
                ":pk": {"S": installation_pk(installation_id)},
                ":prefix": {"S": result_sk_prefix(kind)},
            },
            ConsistentRead=True,
        ):
            records.extend(json.loads(i["data"]["S"]) for i in page.get("Items", []))
        return records
