"""The CQL builder: every value stays one literal, whatever it contains (hypothesis)."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from forge_remote.cql import Cql, and_, contains, date_gte, field_eq, field_in, id_eq, not_, or_, order_by, quote

_TOKEN = re.compile(
    r'\s*(?:(?P<str>"(?:\\.|[^"\\])*")|(?P<num>\d+)|(?P<op>!=|>=|=|~|\(|\)|,)|(?P<word>[A-Za-z_][\w.]*))', re.S
)


def tokenize(cql: str) -> list[tuple[str, str]]:
    """A CQL tokenizer as Confluence reads the language: quoted strings with backslash escapes."""
    tokens, pos = [], 0
    while pos < len(cql):
        match = _TOKEN.match(cql, pos)
        assert match is not None, f"untokenizable CQL at {pos}: {cql!r}"
        kind = match.lastgroup or ""
        text = match.group(kind)
        if kind == "str":
            text = re.sub(r"\\(.)", r"\1", text[1:-1], flags=re.S)
        tokens.append((kind, text))
        pos = match.end()
    return tokens


def test_the_motivating_query() -> None:
    cql = and_(field_in("space", ["A", "B"]), field_eq("type", "page"), id_eq(123))
    assert str(cql) == 'space in ("A", "B") and type = "page" and id = 123'


def test_escaping_order_backslash_then_quote() -> None:
    assert quote('a\\"b') == '"a\\\\\\"b"'
    assert quote("plain") == '"plain"'


def test_the_injection_from_forge_facts_stays_a_literal() -> None:
    attack = 'x" OR type = page'
    cql = and_(field_eq("space", attack), field_eq("type", "blogpost"))
    tokens = tokenize(str(cql))
    assert tokens == [
        ("word", "space"),
        ("op", "="),
        ("str", attack),
        ("word", "and"),
        ("word", "type"),
        ("op", "="),
        ("str", "blogpost"),
    ]


@given(st.text(max_size=200))
def test_any_value_round_trips_as_exactly_one_literal(value: str) -> None:
    tokens = tokenize(str(field_eq("title", value)))
    assert tokens == [("word", "title"), ("op", "="), ("str", value)]


@given(st.lists(st.text(max_size=50), min_size=1, max_size=8), st.text(max_size=50))
def test_in_lists_and_combinations_keep_their_structure(values: list[str], other: str) -> None:
    cql = or_(and_(field_in("space", values), contains("title", other)), field_eq("label", other))
    tokens = tokenize(str(cql))
    structure = [t for t in tokens if t[0] != "str"]
    literals = [t[1] for t in tokens if t[0] == "str"]
    assert literals == [*values, other, other]
    expected = [("op", "("), ("word", "space"), ("word", "in"), ("op", "(")]
    expected += [("op", ",")] * (len(values) - 1)
    expected += [
        ("op", ")"),
        ("word", "and"),
        ("word", "title"),
        ("op", "~"),
        ("op", ")"),
        ("word", "or"),
        ("word", "label"),
        ("op", "="),
    ]
    assert structure == expected


@pytest.mark.parametrize("bad", ["space = x", "space or", "1abc", "", "a b", 'x"', "x;y", "a" * 100])
def test_field_names_cannot_inject(bad: str) -> None:
    with pytest.raises(ValueError, match="field name"):
        field_eq(bad, "v")


@pytest.mark.parametrize("bad", ["12 or 1=1", "-1", "1.5", "", "\uff11\uff12", True, -3, "0x10"])
def test_ids_must_be_non_negative_integers(bad: object) -> None:
    with pytest.raises(ValueError, match="content id"):
        id_eq(bad)  # type: ignore[arg-type]


def test_ids_are_emitted_bare() -> None:
    assert str(id_eq("0042")) == "id = 42"
    assert str(id_eq(7)) == "id = 7"


def test_dates_are_quoted_in_utc_minutes() -> None:
    when = datetime(2026, 11, 28, 10, 30, tzinfo=timezone(timedelta(hours=2)))
    assert str(date_gte("lastmodified", when)) == 'lastmodified >= "2026-11-28 08:30"'
    assert str(date_gte("created", date(2026, 1, 2))) == 'created >= "2026-01-02"'
    assert str(date_gte("lastmodified", datetime(2026, 1, 1, tzinfo=UTC))) == 'lastmodified >= "2026-01-01 00:00"'


def test_raw_strings_are_refused_as_clauses() -> None:
    with pytest.raises(TypeError):
        and_(field_eq("type", "page"), 'space = "X"')  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        quote(5)  # type: ignore[arg-type]


def test_order_by_only_on_a_whole_query() -> None:
    query = order_by(and_(field_eq("type", "page"), field_eq("space", "A")), "lastmodified", desc=True)
    assert str(query) == 'type = "page" and space = "A" order by lastmodified desc'
    with pytest.raises(ValueError, match="whole query"):
        and_(query, field_eq("x", "y"))


def test_not_and_nesting_parenthesise() -> None:
    cql = and_(not_(field_eq("label", "draft")), or_(field_eq("space", "A"), field_eq("space", "B")))
    assert str(cql) == 'not (label = "draft") and (space = "A" or space = "B")'
    assert isinstance(cql, Cql)


def test_empty_in_list_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one"):
        field_in("space", [])
