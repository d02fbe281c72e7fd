"""The CQL builder: every value stays exactly one literal, whatever it contains (hypothesis), field
names and ids cannot inject, and raw CQL has no way in."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta, timezone

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from forge_remote.confluence.cql import (
    Cql,
    and_,
    contains,
    date_gte,
    date_lt,
    field_eq,
    field_in,
    field_ne,
    id_eq,
    not_,
    or_,
    order_by,
    quote,
)

# Confluence's lexer as far as structure goes: a double-quoted string runs to the first unescaped ",
# a backslash escapes the next character; everything else is operators, numbers and words.
_TOKEN = re.compile(
    r'\s*(?:(?P<str>"(?:\\.|[^"\\])*")|(?P<num>\d+)|(?P<op>!=|>=|<=|=|<|>|~|\(|\)|,)|(?P<word>[A-Za-z_][\w.]*))',
    re.S,
)
INJECTION = 'x" OR type = page'


def tokenize(cql: str) -> list[tuple[str, str]]:
    """Tokens of ``cql``; string literals come back unescaped."""
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


def structure(cql: Cql) -> list[tuple[str, str]]:
    """Everything but the literals' contents."""
    return [(kind, "<str>" if kind == "str" else text) for kind, text in tokenize(str(cql))]


def literals(cql: Cql) -> list[str]:
    return [text for kind, text in tokenize(str(cql)) if kind == "str"]


def test_the_motivating_query_is_one_line() -> None:
    cql = and_(field_in("space", ["A", "B"]), field_eq("type", "page"), id_eq(123))
    assert str(cql) == 'space in ("A", "B") and type = "page" and id = 123'


def test_the_tokenizer_sees_a_naive_interpolation_break_out() -> None:
    """The check below means something: pasting the value into a string does change the structure."""
    attack = (
        'x" OR type = "page'  # the injection docs/protocol-facts.md describes, closed so the naive query still parses
    )
    naive = tokenize(f'space = "{attack}"')
    assert ("word", "OR") in naive
    assert [t for t in naive if t[0] == "str"] == [("str", "x"), ("str", "page")]
    assert tokenize(str(field_eq("space", attack))) == [("word", "space"), ("op", "="), ("str", attack)]


def test_the_injection_from_forge_facts_stays_a_literal() -> None:
    cql = and_(field_eq("space", INJECTION), field_eq("type", "blogpost"))
    assert str(cql) == 'space = "x\\" OR type = page" and type = "blogpost"'
    assert tokenize(str(cql)) == [
        ("word", "space"),
        ("op", "="),
        ("str", INJECTION),
        ("word", "and"),
        ("word", "type"),
        ("op", "="),
        ("str", "blogpost"),
    ]


def test_escaping_is_backslash_first_then_quote() -> None:
    assert quote("plain") == '"plain"'
    assert quote('say "hi"') == '"say \\"hi\\""'
    assert quote("C:\\path\\") == '"C:\\\\path\\\\"'
    # Quote first would turn \" into \\" and let the quote escape: backslash must go first.
    assert quote('\\"') == '"\\\\\\""'
    assert tokenize(quote('\\"')) == [("str", '\\"')]


@given(st.text(max_size=200))
@example("\\")
@example('"')
@example('\\"')
@example('" or "" = "')
@example(INJECTION)
@example("\n) or (type = page")
def test_any_value_round_trips_as_exactly_one_literal(value: str) -> None:
    for builder, op in ((field_eq, "="), (field_ne, "!="), (contains, "~")):
        cql = builder("title", value)
        assert tokenize(str(cql)) == [("word", "title"), ("op", op), ("str", value)]


@given(st.lists(st.text(max_size=40), min_size=1, max_size=8), st.text(max_size=40), st.text(max_size=40))
def test_values_never_change_a_compound_query(values: list[str], title: str, label: str) -> None:
    cql = or_(and_(field_in("space", values), contains("title", title)), not_(field_eq("label", label)))
    assert literals(cql) == [*values, title, label]
    skeleton = [("op", "("), ("word", "space"), ("word", "in"), ("op", "(")]
    skeleton += [("str", "<str>"), ("op", ",")] * (len(values) - 1) + [("str", "<str>")]
    skeleton += [("op", ")"), ("word", "and"), ("word", "title"), ("op", "~"), ("str", "<str>"), ("op", ")")]
    skeleton += [("word", "or"), ("word", "not"), ("op", "("), ("word", "label"), ("op", "="), ("str", "<str>")]
    skeleton += [("op", ")")]
    assert structure(cql) == skeleton


@given(st.text(max_size=30))
@example("space = x")
@example('x" or "1')
@example("and")
@example("ORDER")
def test_a_field_name_is_one_word_or_refused(name: str) -> None:
    try:
        cql = field_eq(name, "v")
    except ValueError:
        return
    assert tokenize(str(cql)) == [("word", name), ("op", "="), ("str", "v")]
    assert name.lower() not in {"and", "or", "not", "in", "order", "by", "asc", "desc"}


@pytest.mark.parametrize(
    "bad", ["space = x", "space or", "1abc", "", "a b", 'x"', "x;y", "a(b)", "a" * 65, "and", "OR", "not", "order"]
)
def test_field_names_that_could_inject_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="field name"):
        field_eq(bad, "v")
    with pytest.raises(ValueError, match="field name"):
        field_eq("type", "page").order_by(bad)


@given(st.integers(min_value=0, max_value=2**63 - 1))
def test_ids_are_emitted_bare(content_id: int) -> None:
    assert tokenize(str(id_eq(content_id))) == [("word", "id"), ("op", "="), ("num", str(content_id))]
    assert str(id_eq(str(content_id))) == f"id = {content_id}"


@given(st.text(max_size=20))
def test_id_text_is_digits_or_refused(text: str) -> None:
    try:
        cql = id_eq(text)
    except ValueError:
        return
    assert text.isascii()
    assert text.isdigit()
    assert str(cql) == f"id = {int(text)}"


@pytest.mark.parametrize("bad", ["12 or 1=1", "-1", "1.5", "", "\uff11\uff12", "١٢", True, -3, 2**63, "0x10", 1.0])
def test_ids_must_be_non_negative_integers(bad: object) -> None:
    with pytest.raises(ValueError, match="content id"):
        id_eq(bad)  # type: ignore[arg-type]


def test_dates_are_quoted_minutes_in_utc() -> None:
    when = datetime(2026, 11, 28, 10, 30, 59, tzinfo=timezone(timedelta(hours=2)))
    assert str(date_gte("lastmodified", when)) == 'lastmodified >= "2026-11-28 08:30"'
    assert str(date_gte("lastmodified", datetime(2026, 1, 1, tzinfo=UTC))) == 'lastmodified >= "2026-01-01 00:00"'
    assert str(date_lt("created", date(2026, 1, 2))) == 'created < "2026-01-02"'
    with pytest.raises(TypeError):
        date_gte("created", "2026-01-01")  # type: ignore[arg-type]


def test_raw_cql_has_no_way_in() -> None:
    with pytest.raises(TypeError):
        Cql('space = "X" or type = page')
    with pytest.raises(TypeError):
        and_(field_eq("type", "page"), 'space = "X"')  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        not_("type = page")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        quote(5)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        field_in("space", "ENG")  # one string would become one value per character
    clause = field_eq("type", "page")
    with pytest.raises(AttributeError):
        clause._text = "type = page or 1 = 1"
    assert str(clause) == 'type = "page"'


def test_and_or_parenthesise_compound_parts() -> None:
    a, b, c = field_eq("space", "A"), field_eq("space", "B"), field_eq("type", "page")
    assert str(and_(or_(a, b), c)) == '(space = "A" or space = "B") and type = "page"'
    assert str(or_(and_(a, c), b)) == '(space = "A" and type = "page") or space = "B"'
    assert str(and_(not_(or_(a, b)), c)) == 'not (space = "A" or space = "B") and type = "page"'
    assert and_(a) == a
    with pytest.raises(ValueError, match="at least one"):
        and_()


def test_order_by_only_on_a_whole_query() -> None:
    query = and_(field_eq("type", "page"), field_eq("space", "A")).order_by("lastmodified", desc=True)
    assert str(query) == 'type = "page" and space = "A" order by lastmodified desc'
    assert order_by(field_eq("type", "page"), "title") == field_eq("type", "page").order_by("title")
    with pytest.raises(ValueError, match="whole query"):
        and_(query, field_eq("x", "y"))
    with pytest.raises(ValueError, match="already ordered"):
        query.order_by("title")


def test_in_lists_need_a_value_and_values_a_sane_length() -> None:
    with pytest.raises(ValueError, match="at least one"):
        field_in("space", [])
    with pytest.raises(ValueError, match="longer than"):
        field_eq("title", "x" * 1001)
    assert str(field_in("space", iter(["A"]))) == 'space in ("A")'
