"""A CQL builder in which no value can change the query's structure.

Every value is quoted (backslash escaped first, then the double quote, then wrapped in double quotes:
docs/protocol-facts.md, section 5); content ids are validated integers emitted bare; field names must be plain
identifiers and not CQL keywords. No function takes a raw CQL fragment, and ``Cql`` cannot be
constructed from a string, so user input can never be interpolated::

    and_(field_in("space", ["A", "B"]), field_eq("type", "page"), id_eq(123))
    # space in ("A", "B") and type = "page" and id = 123
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import UTC, date, datetime
from typing import Literal, NoReturn

_FIELD = re.compile(r"[A-Za-z][A-Za-z0-9_.]{0,63}")
_KEYWORDS = frozenset({"and", "or", "not", "in", "order", "by", "asc", "desc", "empty", "null"})
_MAX_VALUE_CHARS = 1000
_MAX_ID = 2**63 - 1  # Confluence content ids are int64

_Kind = Literal["clause", "compound", "ordered"]


class Cql:
    """An immutable CQL query or clause; ``str()`` gives the query text.

    Made only by this module's functions: ``Cql("...")`` raises, so there is no way in for raw CQL.
    """

    __slots__ = ("_kind", "_text")
    _text: str
    _kind: _Kind  # "compound" needs parentheses inside another and/or; "ordered" is a finished query

    def __init__(self, *_: object, **__: object) -> None:
        raise TypeError("build CQL with field_eq(), field_in(), id_eq(), and_(), ...; raw CQL is not accepted")

    @classmethod
    def _make(cls, text: str, kind: _Kind = "clause") -> Cql:
        cql = object.__new__(cls)
        object.__setattr__(cql, "_text", text)
        object.__setattr__(cql, "_kind", kind)
        return cql

    def __setattr__(self, name: str, value: object) -> NoReturn:
        raise AttributeError("Cql is immutable")

    def __str__(self) -> str:
        return self._text

    def __repr__(self) -> str:
        return f"<Cql {self._text!r}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Cql) and (self._text, self._kind) == (other._text, other._kind)

    def __hash__(self) -> int:
        return hash((self._text, self._kind))

    def order_by(self, field: str, *, desc: bool = False) -> Cql:
        """This query ordered by ``field``; the result is complete and cannot be combined further."""
        if self._kind == "ordered":
            raise ValueError("query is already ordered")
        return Cql._make(f"{self._text} order by {_field(field)}{' desc' if desc else ''}", "ordered")


def quote(value: str) -> str:
    """A CQL string literal for ``value``: ``\\`` becomes ``\\\\`` first, then ``"`` becomes ``\\"``."""
    if not isinstance(value, str):
        raise TypeError("CQL values must be strings")
    if len(value) > _MAX_VALUE_CHARS:
        raise ValueError(f"CQL value longer than {_MAX_VALUE_CHARS} characters")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _field(name: str) -> str:
    if not isinstance(name, str) or not _FIELD.fullmatch(name) or name.lower() in _KEYWORDS:
        raise ValueError(f"invalid CQL field name {name!r}")
    return name


def field_eq(field: str, value: str) -> Cql:
    """``field = "value"``."""
    return Cql._make(f"{_field(field)} = {quote(value)}")


def field_ne(field: str, value: str) -> Cql:
    """``field != "value"``."""
    return Cql._make(f"{_field(field)} != {quote(value)}")


def field_in(field: str, values: Iterable[str]) -> Cql:
    """``field in ("a", "b")``; at least one value."""
    if isinstance(values, str | bytes):
        raise TypeError("field_in takes a list of values, not one string")
    quoted = [quote(v) for v in values]
    if not quoted:
        raise ValueError("an 'in' clause needs at least one value")
    return Cql._make(f"{_field(field)} in ({', '.join(quoted)})")


def contains(field: str, text: str) -> Cql:
    """``field ~ "text"`` (CQL text search)."""
    return Cql._make(f"{_field(field)} ~ {quote(text)}")


def id_eq(content_id: int | str) -> Cql:
    """``id = N``: the id is validated as a non-negative integer, so it is emitted bare."""
    if isinstance(content_id, str) and content_id.isascii() and content_id.isdigit():
        content_id = int(content_id)
    if isinstance(content_id, bool) or not isinstance(content_id, int) or not 0 <= content_id <= _MAX_ID:
        raise ValueError("content id must be a non-negative integer")
    return Cql._make(f"id = {content_id}")


def _cql_date(when: date | datetime) -> str:
    if isinstance(when, datetime):
        # Aware datetimes are sent in UTC; naive ones are taken as they are.
        if when.tzinfo is not None:
            when = when.astimezone(UTC)
        return quote(when.strftime("%Y-%m-%d %H:%M"))
    if isinstance(when, date):
        return quote(when.strftime("%Y-%m-%d"))
    raise TypeError("CQL dates must be date or datetime objects")


def date_gte(field: str, when: date | datetime) -> Cql:
    """``field >= "yyyy-MM-dd HH:mm"`` (a ``date`` gives ``"yyyy-MM-dd"``)."""
    return Cql._make(f"{_field(field)} >= {_cql_date(when)}")


def date_lt(field: str, when: date | datetime) -> Cql:
    """``field < "yyyy-MM-dd HH:mm"``."""
    return Cql._make(f"{_field(field)} < {_cql_date(when)}")


def _join(operator: str, clauses: tuple[Cql, ...]) -> Cql:
    if not clauses:
        raise ValueError(f"'{operator}' needs at least one clause")
    if not all(isinstance(c, Cql) for c in clauses):
        raise TypeError("clauses must be built with the CQL builder")
    if any(c._kind == "ordered" for c in clauses):
        raise ValueError("order_by applies to a whole query, not to a clause")
    if len(clauses) == 1:
        return clauses[0]
    parts = [f"({c._text})" if c._kind == "compound" else c._text for c in clauses]
    return Cql._make(f" {operator} ".join(parts), "compound")


def and_(*clauses: Cql) -> Cql:
    """All of ``clauses``; compound sub-expressions are parenthesised."""
    return _join("and", clauses)


def or_(*clauses: Cql) -> Cql:
    """Any of ``clauses``; compound sub-expressions are parenthesised."""
    return _join("or", clauses)


def not_(clause: Cql) -> Cql:
    """``not (clause)``."""
    if not isinstance(clause, Cql):
        raise TypeError("clauses must be built with the CQL builder")
    if clause._kind == "ordered":
        raise ValueError("order_by applies to a whole query, not to a clause")
    return Cql._make(f"not ({clause._text})")


def order_by(query: Cql, field: str, *, desc: bool = False) -> Cql:
    """``query order by field [desc]`` (same as ``query.order_by(field, desc=...)``)."""
    if not isinstance(query, Cql):
        raise TypeError("queries must be built with the CQL builder")
    return query.order_by(field, desc=desc)
