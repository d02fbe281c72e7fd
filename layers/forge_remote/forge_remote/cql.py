"""A CQL builder in which a value can never change the query's structure.

Every value is quoted and escaped (backslash first, then the double quote, then wrapped in double
quotes: FORGE-FACTS section 4); ids are validated integers; field names must be identifiers. No
function takes a raw CQL fragment, so user input cannot be interpolated::

    and_(field_in("space", ["ENG", "OPS"]), field_eq("type", "page"), id_eq(12345))
    # space in ("ENG", "OPS") and type = "page" and id = 12345
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime

_FIELD = re.compile(r"^[A-Za-z][A-Za-z0-9_.]{0,63}$")
_MAX_VALUE = 1000


@dataclass(frozen=True)
class Cql:
    """A built query (or clause). ``str()`` gives the CQL text; build it only with this module."""

    text: str
    compound: bool = False  # needs parentheses inside another and/or
    ordered: bool = False  # has "order by": complete, cannot be combined further

    def __str__(self) -> str:
        return self.text


def quote(value: str) -> str:
    """A CQL string literal for ``value``: backslash escaped first, then the double quote."""
    if not isinstance(value, str):
        raise TypeError("CQL values must be strings")
    if len(value) > _MAX_VALUE:
        raise ValueError("CQL value too long")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _field(name: str) -> str:
    if not isinstance(name, str) or not _FIELD.match(name):
        raise ValueError(f"invalid CQL field name {name!r}")
    return name


def field_eq(field: str, value: str) -> Cql:
    return Cql(f"{_field(field)} = {quote(value)}")


def field_ne(field: str, value: str) -> Cql:
    return Cql(f"{_field(field)} != {quote(value)}")


def field_in(field: str, values: Iterable[str]) -> Cql:
    quoted = [quote(v) for v in values]
    if not quoted:
        raise ValueError("an 'in' clause needs at least one value")
    return Cql(f"{_field(field)} in ({', '.join(quoted)})")


def contains(field: str, text: str) -> Cql:
    """``field ~ "text"`` (CQL's text search)."""
    return Cql(f"{_field(field)} ~ {quote(text)}")


def id_eq(content_id: int | str) -> Cql:
    """``id = N``: content ids are numbers, validated, so they are emitted bare."""
    if isinstance(content_id, bool):
        raise ValueError("content id must be a non-negative integer")
    if isinstance(content_id, str):
        if not content_id.isdigit() or not content_id.isascii():
            raise ValueError("content id must be a non-negative integer")
        content_id = int(content_id)
    if not isinstance(content_id, int) or content_id < 0:
        raise ValueError("content id must be a non-negative integer")
    return Cql(f"id = {content_id}")


def _cql_date(when: date | datetime) -> str:
    if isinstance(when, datetime):
        if when.tzinfo is not None:
            when = when.astimezone(UTC)
        return quote(when.strftime("%Y-%m-%d %H:%M"))
    return quote(when.strftime("%Y-%m-%d"))


def date_gte(field: str, when: date | datetime) -> Cql:
    """``field >= "yyyy-MM-dd HH:mm"`` (aware datetimes are converted to UTC)."""
    return Cql(f"{_field(field)} >= {_cql_date(when)}")


def date_lt(field: str, when: date | datetime) -> Cql:
    return Cql(f"{_field(field)} < {_cql_date(when)}")


def _join(operator: str, clauses: tuple[Cql, ...]) -> Cql:
    if not clauses:
        raise ValueError(f"'{operator}' needs at least one clause")
    if not all(isinstance(c, Cql) for c in clauses):
        raise TypeError("clauses must be built with the CQL builder")
    if any(c.ordered for c in clauses):
        raise ValueError("order_by applies to a whole query, not to a clause")
    if len(clauses) == 1:
        return clauses[0]
    parts = [f"({c.text})" if c.compound else c.text for c in clauses]
    return Cql(f" {operator} ".join(parts), compound=True)


def and_(*clauses: Cql) -> Cql:
    return _join("and", clauses)


def or_(*clauses: Cql) -> Cql:
    return _join("or", clauses)


def not_(clause: Cql) -> Cql:
    if not isinstance(clause, Cql) or clause.ordered:
        raise TypeError("clauses must be built with the CQL builder, without order_by")
    return Cql(f"not ({clause.text})")


def order_by(query: Cql, field: str, *, desc: bool = False) -> Cql:
    if query.ordered:
        raise ValueError("query is already ordered")
    return Cql(f"{query.text} order by {_field(field)}{' desc' if desc else ''}", ordered=True)
