"""Cutting a job result to the item size budget (``storage/results.py``'s size rule): the biggest value loses
its tail first, the cut is marked, and the record that fits is stored as it is."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from forge_remote.storage.results import MIN_ITEM_BUDGET_BYTES, TRUNCATED, encode, fit, utf8_bytes
from forge_remote.testing import MemoryResults

LIMIT = 1000


def test_a_record_that_fits_is_stored_as_it_is() -> None:
    record = {"b": [1, 2], "a": "é€😀", TRUNCATED: "even this"}
    text, cut = fit(record, LIMIT)
    assert cut == {}
    assert text == encode(record)
    assert json.loads(text) == record


def test_encoding_is_compact_sorted_and_keeps_characters_as_themselves() -> None:
    assert encode({"b": 1, "a": ["é", None]}) == '{"a":["é",null],"b":1}'
    lone = "\ud800"
    assert encode({"x": lone}) == '{"x":"\\ud800"}'  # UTF-8 cannot carry a lone surrogate: kept escaped
    assert json.loads(encode({"x": lone})) == {"x": lone}
    assert utf8_bytes(encode({"x": "😀"})) == len('{"x":""}') + 4


def test_the_biggest_list_keeps_its_first_items() -> None:
    record = {"title": "Weekly digest", "pages": [f"page {i}" for i in range(500)], "tags": ["a", "b"]}
    text, cut = fit(record, LIMIT)
    assert utf8_bytes(text) <= LIMIT
    assert set(cut) == {"/pages"}
    kept = cut["/pages"]["kept"]
    assert cut["/pages"]["total"] == 500
    assert json.loads(text) == {**record, "pages": record["pages"][:kept], TRUNCATED: cut}
    # As many items as fit: one more would not.
    longer = encode(
        {**record, "pages": record["pages"][: kept + 1], TRUNCATED: {"/pages": {"kept": kept + 1, "total": 500}}}
    )
    assert utf8_bytes(longer) > LIMIT


def test_a_string_that_dominates_the_record_keeps_its_first_characters() -> None:
    record = {"body": "x" * 5000, "items": ["short"] * 3}
    text, cut = fit(record, LIMIT)
    assert set(cut) == {"/body"}
    stored = json.loads(text)
    assert stored["body"] == "x" * cut["/body"]["kept"]
    assert stored["items"] == record["items"]
    assert cut["/body"]["total"] == 5000


def test_nested_values_are_named_by_json_pointer() -> None:
    record = {"a/b": {"rows~": [["cell"] * 10 for _ in range(100)]}}
    _, cut = fit(record, LIMIT)
    assert list(cut) == ["/a~1b/rows~0"]


def test_a_cut_record_loses_its_own_truncated_field_first() -> None:
    record = {TRUNCATED: "y" * 50, "rows": list(range(1000))}
    text, cut = fit(record, LIMIT)
    assert cut["/_truncated"] == {"kept": 0, "total": 1}
    assert json.loads(text)[TRUNCATED] == cut


def test_the_last_resort_keeps_only_the_fact_that_the_record_was_there() -> None:
    record = {f"n{i}": i for i in range(500)}  # numbers only: nothing to cut
    text, cut = fit(record, LIMIT)
    assert cut == {"": {"kept": 0, "total": 500}}
    assert json.loads(text) == {TRUNCATED: cut}


def test_cutting_leaves_the_callers_record_alone_and_always_gives_the_same_text() -> None:
    record = {"pages": [{"id": i, "title": "t" * 40} for i in range(200)]}
    before = json.dumps(record)
    assert fit(record, LIMIT) == fit(record, LIMIT)
    assert json.dumps(record) == before


def test_the_memory_store_cuts_with_the_same_budget_as_it_is_given() -> None:
    results = MemoryResults(item_budget_bytes=MIN_ITEM_BUDGET_BYTES)
    stored = results.put("ari:cloud:ecosystem::installation/cut", "DIGEST", "1", {"rows": list(range(1000))})
    assert stored.truncated["/rows"]["total"] == 1000
    assert stored.data_bytes < MIN_ITEM_BUDGET_BYTES
    with pytest.raises(ValueError, match="item budget"):
        MemoryResults(item_budget_bytes=MIN_ITEM_BUDGET_BYTES - 1)
    with pytest.raises(ValueError, match="every result expires"):
        MemoryResults(default_ttl_s=0)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=40),
    lambda children: st.lists(children, max_size=8) | st.dictionaries(st.text(max_size=8), children, max_size=6),
    max_leaves=30,
)


def at(value: Any, pointer: str) -> Any:
    for part in pointer.split("/")[1:]:
        key = part.replace("~1", "/").replace("~0", "~")
        value = value[int(key)] if isinstance(value, list) else value[key]
    return value


@settings(max_examples=60, deadline=None)
@given(record=st.dictionaries(st.text(max_size=8), json_values, max_size=8), limit=st.integers(120, 1500))
def test_whatever_the_record_the_text_fits_and_every_cut_is_a_marked_prefix(record: dict[str, Any], limit: int) -> None:
    text, cut = fit(record, limit)
    assert utf8_bytes(text) <= limit
    stored = json.loads(text)
    if not cut:
        assert stored == record
        return
    assert stored[TRUNCATED] == cut
    for pointer, counts in cut.items():
        assert 0 <= counts["kept"] < counts["total"]
        if pointer in ("", "/_truncated"):
            continue
        original, kept = at(record, pointer), at(stored, pointer)
        assert len(original) == counts["total"]
        assert len(kept) == counts["kept"]
        if isinstance(original, str):
            assert original.startswith(kept)
