"""Job results over DynamoDB's 400 KB item limit (outside review): a space digest of a few hundred pages
with long non-ASCII titles no longer crashes the job.

Checked against moto's DynamoDB (tables from template.yaml), with item sizes computed here the way
DynamoDB counts them (UTF-8 bytes of attribute names and values), independently of ``storage/results.py``:
- digests of 300-600 pages with 255-character titles (CJK, emoji, Arabic, mixed) are stored, read
  back, stay under the budget, and carry a ``_truncated`` marker exactly when pages were cut, and then
  the most pages that fit;
- a record that fits is stored unchanged, compactly (UTF-8, not ``\\uXXXX``), byte for byte;
- a record dominated by one huge string, and one that only the last resort can store;
- properties (hypothesis) over arbitrary nested JSON records: ``put`` never raises, the item fits,
  every marker entry describes exactly what was kept, the same record is always stored the same way;
- end to end: a space digest over hundreds of long non-ASCII titles is done, not dead-lettered.
"""

from __future__ import annotations

import json
import logging
import random
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from forge_remote import aws, clock
from forge_remote.jobs.contract import JobRequest
from forge_remote.storage.results import ResultStore
from forge_remote.storage.table_keys import installation_pk, result_sk
from local.stack import LocalStack
from tests.reliability.harness import account_jobs, queue_messages
from tests.reliability.ledger import Ledger
from tests.support import LocalWorld

pytestmark = pytest.mark.reliability

ITEM_LIMIT = 400 * 1024  # DynamoDB's
BUDGET = 380_000  # what storage/results.py promises a whole item stays within
NUMBER_BYTES = 21  # DynamoDB's upper bound for a number attribute
INSTALLATION = "0b1d9c3e-1111-4c2a-9e55-6a1f3d2b7c10"
TITLE_CHARS = 255  # Confluence's limit for a page title
PROPERTY = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)

# Alphabets for titles: BMP CJK (3 UTF-8 bytes, 6 escaped), astral emoji (4 bytes, 12 escaped as a
# surrogate pair), Arabic (2 bytes, 6 escaped), and a mix with ASCII and combining marks.
CJK = [chr(c) for c in range(0x4E00, 0x9FFF)]
EMOJI = [chr(c) for c in range(0x1F600, 0x1F64F)] + [chr(c) for c in range(0x1F300, 0x1F5FF)]
ARABIC = [chr(c) for c in range(0x0621, 0x064A)]
MIXED = [*CJK[:500], *EMOJI, *ARABIC, *"abc XYZ-_0123", "\u0301", "\u200d", "é", "ß", "Ω", '"', "\\", "\n"]
ALPHABETS = {"cjk": CJK, "emoji": EMOJI, "arabic": ARABIC, "mixed": MIXED}


# -- helpers -----------------------------------------------------------------------------------------
def compact(record: Any) -> str:
    """The promised encoding: compact, sorted keys, UTF-8 characters as themselves, lone surrogates escaped."""
    text = json.dumps(record, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return re.sub("[\ud800-\udfff]", lambda m: f"\\u{ord(m.group()):04x}", text)


def utf8(text: str) -> int:
    return len(text.encode("utf-8"))


def item_bytes(item: dict[str, Any]) -> int:
    """DynamoDB's size of an item of scalar attributes: names and values in UTF-8 bytes."""
    total = 0
    for name, value in item.items():
        [(kind, raw)] = value.items()
        total += utf8(name) + (NUMBER_BYTES if kind == "N" else utf8(raw))
    return total


def store(stack: LocalStack, **options: Any) -> ResultStore:
    # The functions' own client: like them, it keeps botocore's wire logs (whole items, at DEBUG) off.
    return ResultStore(aws.dynamodb(), stack.physical["AppTable"], **options)


def raw_item(stack: LocalStack, kind: str, key: str) -> dict[str, Any]:
    item: dict[str, Any] = aws.dynamodb().get_item(
        TableName=stack.physical["AppTable"],
        Key={"pk": {"S": installation_pk(INSTALLATION)}, "sk": {"S": result_sk(kind, key)}},
        ConsistentRead=True,
    )["Item"]
    return item


def data_budget(item: dict[str, Any], budget: int) -> int:
    """What the ``data`` attribute of this item may take: the budget less everything else in it."""
    return budget - (item_bytes(item) - utf8(item["data"]["S"]))


def resolve(document: Any, pointer: str) -> Any:
    """RFC 6901."""
    for escaped in pointer.split("/")[1:] if pointer else []:
        token = escaped.replace("~1", "/").replace("~0", "~")
        document = document[int(token)] if isinstance(document, list) else document[token]
    return document


def titles(alphabet: list[str], count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice(alphabet) for _ in range(TITLE_CHARS)) for _ in range(count)]


def digest_record(alphabet: list[str], count: int, seed: int = 7) -> dict[str, Any]:
    """The shape space_digest stores (without its 500-page cap: the store must cope either way)."""
    pages = [
        {"id": str(10_000 + i), "title": t, "version": 1 + i % 7, "lastModified": "2026-03-01T08:15:00.000Z"}
        for i, t in enumerate(titles(alphabet, count, seed))
    ]
    return {
        "spaceKey": "INTL",
        "day": "2026-03-01",
        "since": "2026-02-28T08:00",
        "count": count,
        "pages": pages,
        "truncated": False,
    }


def check_marker(original: dict[str, Any], stored: dict[str, Any]) -> dict[str, dict[str, int]]:
    """Every marker entry says exactly what is left at its path: the first ``kept`` of ``total``."""
    normal = json.loads(compact(original))  # what the record is as JSON (tuples as lists, and so on)
    marker: dict[str, dict[str, int]] = stored.get("_truncated", {})
    if "" in marker:  # last resort: nothing but the marker
        assert stored == {"_truncated": {"": {"kept": 0, "total": len(normal)}}}
        return marker
    for pointer, entry in marker.items():
        assert set(entry) == {"kept", "total"}
        assert 0 <= entry["kept"] < entry["total"]
        if pointer == "/_truncated":  # the record's own field of that name was dropped
            assert entry == {"kept": 0, "total": 1}
            continue
        before = resolve(normal, pointer)
        assert isinstance(before, list | str)
        assert len(before) == entry["total"]
        assert resolve(stored, pointer) == before[: entry["kept"]]
    # Nothing else changed: putting back what was cut gives the record.
    rebuilt = json.loads(compact({k: v for k, v in stored.items() if k != "_truncated"}))
    for pointer in sorted(marker, key=lambda p: p.count("/")):
        if pointer != "/_truncated":
            parent, _, last = pointer.rpartition("/")
            holder = resolve(rebuilt, parent)
            index = int(last) if isinstance(holder, list) else last.replace("~1", "/").replace("~0", "~")
            holder[index] = resolve(normal, pointer)
    expected = {k: v for k, v in normal.items() if not (k == "_truncated" and "/_truncated" in marker)}
    assert rebuilt == expected
    return marker


# -- digests with long non-ASCII titles --------------------------------------------------------------
@pytest.mark.parametrize("count", [300, 450, 600])
@pytest.mark.parametrize("alphabet", sorted(ALPHABETS))
def test_a_digest_of_long_non_ascii_titles_is_stored_within_the_limit(
    stack: LocalStack, ledger: Ledger, alphabet: str, count: int
) -> None:
    ledger.tried += 1
    record = digest_record(ALPHABETS[alphabet], count)
    results = store(stack)
    outcome = results.put(INSTALLATION, "DIGEST", f"2026-03-01#{alphabet}", record)

    item = raw_item(stack, "DIGEST", f"2026-03-01#{alphabet}")
    assert item_bytes(item) <= BUDGET < ITEM_LIMIT
    stored = results.get(INSTALLATION, "DIGEST", f"2026-03-01#{alphabet}")
    assert stored is not None
    room = data_budget(item, BUDGET)
    fits_whole = utf8(compact(record)) <= room
    if fits_whole:  # present exactly when something was cut
        assert "_truncated" not in stored
        assert stored == record
        assert item["data"]["S"] == compact(record)
        assert outcome.truncated == {}
        return
    marker = check_marker(record, stored)
    assert set(marker) == {"/pages"}  # the biggest value, and the only one cut
    kept = marker["/pages"]["kept"]
    assert marker["/pages"]["total"] == count
    assert 0 < kept < count
    assert stored["pages"] == record["pages"][:kept]
    assert {k: v for k, v in stored.items() if k not in ("pages", "_truncated")} == {
        k: v for k, v in record.items() if k != "pages"
    }
    assert outcome.truncated == marker
    # As many pages as fit: one more (with its marker) would not.
    one_more = {
        **record,
        "pages": record["pages"][: kept + 1],
        "_truncated": {"/pages": {"kept": kept + 1, "total": count}},
    }
    assert utf8(compact(one_more)) > room


def test_the_cut_is_logged_and_deterministic(
    stack: LocalStack, ledger: Ledger, caplog: pytest.LogCaptureFixture
) -> None:
    ledger.tried += 2
    record = digest_record(EMOJI, 500)
    results = store(stack)
    with caplog.at_level(logging.WARNING, logger="forge_remote.storage.results"):
        first = results.put(INSTALLATION, "DIGEST", "a", record)
        data = raw_item(stack, "DIGEST", "a")["data"]["S"]
        second = results.put(INSTALLATION, "DIGEST", "a", record)
    assert first == second
    assert raw_item(stack, "DIGEST", "a")["data"]["S"] == data
    assert record == digest_record(EMOJI, 500)  # the caller's record is untouched
    kept = len(json.loads(data)["pages"])
    assert first.truncated == {"/pages": {"kept": kept, "total": 500}}
    warnings = [r for r in caplog.records if r.name == "forge_remote.storage.results"]
    assert len(warnings) == 2  # one per cut put
    for warning in warnings:
        assert warning.levelno == logging.WARNING
        assert warning.__dict__["truncated"] == first.truncated
        assert warning.__dict__["kind"] == "DIGEST"


# -- what fits is stored unchanged -------------------------------------------------------------------
SMALL_RECORDS = [
    {"pageId": "42", "title": "Release notes", "version": 3, "capturedAt": 1767225600.5},
    {"title": "".join(titles(CJK, 1, 1)), "emoji": "".join(titles(EMOJI, 1, 2)), "ar": "".join(titles(ARABIC, 1, 3))},
    {"nested": {"list": [1, 2.5, None, True, "x", {"é": ["ß", []]}], "empty": {}}, "quote": '"\\/\n\t\u0000'},
    {"_truncated": "a job's own field of that name, kept while the record fits", "n": -0.0},
    {"pages": [{"id": str(i), "title": "タイトル" * 60} for i in range(300)]},  # 230 KB compact, 440 KB escaped
]


@pytest.mark.parametrize("record", SMALL_RECORDS, ids=["snapshot", "non-ascii", "nested", "own-marker", "300-titles"])
def test_a_record_that_fits_is_stored_unchanged_and_compact(
    stack: LocalStack, ledger: Ledger, record: dict[str, Any]
) -> None:
    ledger.tried += 1
    results = store(stack)
    outcome = results.put(INSTALLATION, "SNAPSHOT", "small", record, ttl_s=3600)
    item = raw_item(stack, "SNAPSHOT", "small")
    assert item["data"]["S"] == compact(record)  # byte for byte: UTF-8, no spaces, sorted keys
    assert results.get(INSTALLATION, "SNAPSHOT", "small") == record
    assert outcome.truncated == {}
    assert outcome.data_bytes == utf8(compact(record))
    assert item_bytes(item) <= BUDGET


def test_lone_surrogates_stay_escaped_and_round_trip(stack: LocalStack, ledger: Ledger) -> None:
    """A str from JSON can hold a lone surrogate; UTF-8 cannot carry it raw (guard for ensure_ascii=False)."""
    ledger.tried += 1
    record = {"title": "broken \ud800 pair \udfff end", "ok": "😀"}
    results = store(stack)
    results.put(INSTALLATION, "SNAPSHOT", "surrogate", record)
    data = raw_item(stack, "SNAPSHOT", "surrogate")["data"]["S"]
    assert "\\ud800" in data
    assert "😀" in data
    assert results.get(INSTALLATION, "SNAPSHOT", "surrogate") == record


# -- other shapes that do not fit --------------------------------------------------------------------
def test_a_record_dominated_by_one_huge_string_keeps_its_first_characters(stack: LocalStack, ledger: Ledger) -> None:
    ledger.tried += 1
    body = "".join(titles(CJK, 1, 5)) * 700  # 178,500 characters: 535 KB in UTF-8, 1 MB escaped
    record = {"pageId": "7", "labels": ["a", "b"], "body": body}
    results = store(stack)
    outcome = results.put(INSTALLATION, "SNAPSHOT", "body", record)
    item = raw_item(stack, "SNAPSHOT", "body")
    assert item_bytes(item) <= BUDGET
    stored = results.get(INSTALLATION, "SNAPSHOT", "body")
    assert stored is not None
    marker = check_marker(record, stored)
    assert set(marker) == {"/body"}  # the small list is left alone
    assert stored["labels"] == ["a", "b"]
    assert stored["body"] == body[: marker["/body"]["kept"]]
    assert marker["/body"]["total"] == len(body)
    assert data_budget(item, BUDGET) - utf8(item["data"]["S"]) < 3 + 40  # cut to within a character or so
    assert outcome.truncated == marker


def test_a_record_only_the_last_resort_can_store(stack: LocalStack, ledger: Ledger) -> None:
    ledger.tried += 1
    record = {f"k{i:06d}": i for i in range(60_000)}  # numbers only: nothing to cut
    results = store(stack)
    outcome = results.put(INSTALLATION, "SNAPSHOT", "numbers", record)
    assert item_bytes(raw_item(stack, "SNAPSHOT", "numbers")) <= BUDGET
    assert results.get(INSTALLATION, "SNAPSHOT", "numbers") == {"_truncated": {"": {"kept": 0, "total": 60_000}}}
    assert outcome.truncated == {"": {"kept": 0, "total": 60_000}}


# -- properties --------------------------------------------------------------------------------------
def _text(max_size: int) -> st.SearchStrategy[str]:
    # Any code point, lone surrogates often: a str parsed from JSON can hold one.
    return st.text(st.characters() | st.characters(categories=["Cs"]), max_size=max_size)


def _repeated(seed: st.SearchStrategy[Any], times: st.SearchStrategy[int]) -> st.SearchStrategy[Any]:
    """``seed * n``: sizes hypothesis would rarely reach by itself, at the cost of building one value."""
    return st.tuples(seed, times).map(lambda t: t[0] * t[1])


# Records of up to some tens of KB against a 1.5 KB budget: most must be cut, some in several places.
texts = _text(30) | _repeated(_text(6).filter(bool), st.integers(1, 300))
json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | texts
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=8) | st.dictionaries(_text(8), children, max_size=5),
    max_leaves=60,
)
records = st.dictionaries(_text(10), json_values, max_size=6)

# Records of up to a few MB against the real budget: small JSON with one to three values blown up.
big_values = _repeated(_text(4).filter(bool), st.integers(60_000, 150_000)) | _repeated(
    st.lists(json_values, min_size=1, max_size=3), st.integers(50, 600)
)
big_records = st.tuples(
    st.dictionaries(_text(10), json_values, max_size=3), st.dictionaries(_text(10), big_values, min_size=1, max_size=3)
).map(lambda t: {**t[0], **t[1]})


def check_put(stack: LocalStack, results: ResultStore, budget: int, key: str, record: dict[str, Any]) -> None:
    outcome = results.put(INSTALLATION, "PROP", key, record)
    item = raw_item(stack, "PROP", key)
    assert item_bytes(item) <= budget
    stored = results.get(INSTALLATION, "PROP", key)
    assert stored is not None
    if outcome.truncated:
        assert stored["_truncated"] == outcome.truncated
        check_marker(record, stored)
        assert utf8(compact(record)) > data_budget(item, budget)  # cut only when it did not fit
    else:
        assert stored == json.loads(compact(record))
    results.put(INSTALLATION, "PROP", key, record)
    assert raw_item(stack, "PROP", key)["data"] == item["data"]  # the same record, the same document


@PROPERTY
@given(record=records)
def test_property_any_record_fits_a_small_budget(stack: LocalStack, ledger: Ledger, record: dict[str, Any]) -> None:
    """A 1.5 KB budget makes most generated records too big: every cutting path gets exercised."""
    ledger.tried += 1
    check_put(stack, store(stack, item_budget_bytes=1500), 1500, "small-budget", record)


@settings(PROPERTY, max_examples=20)
@given(record=big_records)
def test_property_any_big_record_fits_the_real_limit(stack: LocalStack, ledger: Ledger, record: dict[str, Any]) -> None:
    ledger.tried += 1
    check_put(stack, store(stack), BUDGET, "real-budget", record)


# -- end to end: the worker --------------------------------------------------------------------------
@pytest.fixture
def job_summaries() -> Iterator[list[dict[str, Any]]]:
    """The summary of every "job done" the worker logs (its Powertools logger does not propagate)."""
    seen: list[dict[str, Any]] = []

    class Tap(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            if record.getMessage() == "job done":
                seen.append(record.__dict__["summary"])
            return True

    tap, service = Tap(), logging.getLogger("confluence-worker")
    service.addFilter(tap)
    yield seen
    service.removeFilter(tap)


def test_a_space_digest_over_hundreds_of_long_non_ascii_titles_is_done(
    local_world: LocalWorld, ledger: Ledger, job_summaries: list[dict[str, Any]]
) -> None:
    confluence, stack = local_world.confluence, local_world.stack
    ledger.secret(local_world.install())
    confluence.add_space("INTL", "国際 🌏 دولي")
    confluence.add_space("ENG", "Engineering")
    recent = datetime.fromtimestamp(clock.now(), UTC) - timedelta(hours=2)
    long_titles = titles(MIXED, 240, 11) + titles(CJK, 120, 12) + titles(EMOJI, 120, 13)
    for title in long_titles:
        confluence.add_page("INTL", title, last_modified=recent)
    for i in range(30):
        confluence.add_page("ENG", f"Runbook {i}", last_modified=recent)
    installation_id = local_world.site.installation_id
    request = JobRequest(job="space-digest", installation_id=installation_id, args={"spaceKeys": ["INTL", "ENG"]})
    local_world.enqueue(request)
    ledger.tried += 1

    _, response = local_world.run_worker()

    assert response["batchItemFailures"] == []
    assert queue_messages(stack, "JobsQueue") == []
    assert queue_messages(stack, "JobsDeadLetterQueue") == []
    results = store(stack)
    digests = {d["spaceKey"]: d for d in results.list(installation_id, "DIGEST")}
    done = {request.request_id} if set(digests) == {"INTL", "ENG"} else set()
    assert account_jobs(stack, [request], done, ledger)["done"] == [request.request_id]
    intl, eng = digests["INTL"], digests["ENG"]
    assert intl["count"] == len(long_titles)
    assert intl["truncated"] is False  # under the 500-page cap: the size budget did the cutting
    kept = intl["_truncated"]["/pages"]["kept"]
    assert intl["_truncated"] == {"/pages": {"kept": kept, "total": len(long_titles)}}
    assert 0 < kept == len(intl["pages"]) < len(long_titles)
    assert {p["title"] for p in intl["pages"]} <= set(long_titles)
    assert "_truncated" not in eng
    assert eng["count"] == len(eng["pages"]) == 30
    [summary] = job_summaries
    assert summary["truncated"] == 1
    assert summary["truncatedSpaces"] == ["INTL"]
    assert summary["pages"] == len(long_titles) + 30
