"""CQL for the Confluence emulator: a lexer, a parser and an evaluator for the fields the jobs use.

Fields, operators and keywords follow Atlassian's CQL pages (developer.atlassian.com/cloud/confluence/
``cql-fields``, ``cql-operators``, ``cql-keywords``, ``cql-functions``)::

    query   := expr [ORDER BY key ("," key)*]          key := field [ASC | DESC]
    expr    := term (OR term)*                         NOT binds tighter than AND, AND than OR
    term    := factor (AND factor)*
    factor  := NOT factor | "(" expr ")" | clause
    clause  := field op value | field [NOT] IN "(" value ("," value)* ")"
    value   := "quoted" | 'quoted' | bare-word | currentUser()

Quoted values take a backslash escape for any character, which is what ``forge_remote.confluence.cql.quote``
emits (``\\\\`` for ``\\``, ``\\"`` for ``"``) and what the operators page shows
(``title = "\\"Advanced Searching\\""``). Keywords and field names are case-insensitive.

Anything outside this subset (another field, an operator a field does not take, a function other than
``currentUser()``, a malformed query) raises ``CqlError``: the emulator answers it with Confluence's
400, so a job that would fail against Confluence fails locally too, instead of matching everything.
Dates compare in UTC (Confluence uses the caller's time zone); text search (``~``) is a case-insensitive
match of whole words (``*`` and ``?`` wildcards, ``"quoted phrases"``) without Confluence's stemming.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import Enum


class CqlError(ValueError):
    """CQL the emulator cannot parse or does not support (answered 400, like Confluence)."""


@dataclass(frozen=True)
class Document:
    """What CQL can see of one piece of content (the emulator builds one per page record)."""

    id: int
    space_key: str
    title: str
    text: str  # the body as plain text
    labels: frozenset[str]  # lower-case, as Confluence stores labels
    ancestors: tuple[int, ...]  # the space's homepage first, the parent last
    creator: str
    contributors: frozenset[str]  # everyone who created or edited it
    created: datetime
    last_modified: datetime
    type: str = "page"

    @property
    def parent(self) -> int | None:
        return self.ancestors[-1] if self.ancestors else None


Predicate = Callable[[Document, str], bool]  # (content, the caller's accountId for currentUser())


@dataclass(frozen=True)
class OrderKey:
    field: str
    descending: bool


@dataclass(frozen=True)
class CqlQuery:
    """A parsed query: a predicate over documents and the ``ORDER BY`` keys (possibly none)."""

    predicate: Predicate
    order_keys: tuple[OrderKey, ...]

    @property
    def order(self) -> tuple[str, bool] | None:
        """The first ``ORDER BY`` key as ``(field, descending)``, or None."""
        return (self.order_keys[0].field, self.order_keys[0].descending) if self.order_keys else None

    def matches(self, document: Document, current_user: str) -> bool:
        return self.predicate(document, current_user)

    def sorted(self, documents: Iterable[Document]) -> list[Document]:
        """``documents`` in ``ORDER BY`` order; ties (and no ORDER BY) fall back to ascending id."""
        ordered = sorted(documents, key=lambda d: d.id)
        for key in reversed(self.order_keys):  # stable sorts, least significant key first
            ordered.sort(key=_sort_key(key.field), reverse=key.descending)
        return ordered


# -- fields


class Kind(Enum):
    """How a field's values are read and compared."""

    CONTENT = "content"  # content ids: integers
    KEYWORD = "keyword"  # exact strings (space keys, types, labels)
    USER = "user"  # accountIds; currentUser() allowed
    TEXT = "text"  # words: ~ and !~ (title also takes = != IN, exact but case-insensitive)
    DATE = "date"


_EQUALITY = frozenset({"=", "!=", "in", "not in"})
_CONTAINS = frozenset({"~", "!~"})
_RANGE = frozenset({"=", "!=", ">", ">=", "<", "<="})


@dataclass(frozen=True)
class Field:
    kind: Kind
    operators: frozenset[str]
    read: Callable[[Document], object]
    ignore_case: bool = False  # titles, labels and types match whatever their case
    many: bool = False  # ``read`` gives a collection (labels, ancestors, contributors)


FIELDS: dict[str, Field] = {
    "id": Field(Kind.CONTENT, _EQUALITY, lambda d: d.id),
    "ancestor": Field(Kind.CONTENT, _EQUALITY, lambda d: d.ancestors, many=True),
    "parent": Field(Kind.CONTENT, _EQUALITY, lambda d: d.parent),
    "type": Field(Kind.KEYWORD, _EQUALITY, lambda d: d.type, ignore_case=True),
    "space": Field(Kind.KEYWORD, _EQUALITY, lambda d: d.space_key),
    "label": Field(Kind.KEYWORD, _EQUALITY, lambda d: d.labels, ignore_case=True, many=True),
    "creator": Field(Kind.USER, _EQUALITY, lambda d: d.creator),
    "contributor": Field(Kind.USER, _EQUALITY, lambda d: d.contributors, many=True),
    "text": Field(Kind.TEXT, _CONTAINS, lambda d: " ".join([d.title, d.text, *sorted(d.labels)])),
    "title": Field(Kind.TEXT, _EQUALITY | _CONTAINS, lambda d: d.title, ignore_case=True),
    "created": Field(Kind.DATE, _RANGE, lambda d: d.created),
    "lastmodified": Field(Kind.DATE, _RANGE, lambda d: d.last_modified),
}
ALIASES = {"space.key": "space", "content": "id"}  # "content" is documented as an alias of id
ORDERABLE = frozenset({"id", "title", "created", "lastmodified", "space", "type"})
_KEYWORDS = frozenset({"and", "or", "not", "in", "order", "by", "asc", "desc"})


def field_name(raw: str) -> str | None:
    """The canonical name of a field the emulator knows (``lastModified`` -> ``lastmodified``)."""
    name = raw.lower()
    name = ALIASES.get(name, name)
    return name if name in FIELDS else None


def _sort_key(field: str) -> Callable[[Document], str | int | datetime]:
    keys: dict[str, Callable[[Document], str | int | datetime]] = {
        "id": lambda d: d.id,
        "title": lambda d: d.title.casefold(),
        "created": lambda d: d.created,
        "lastmodified": lambda d: d.last_modified,
        "space": lambda d: d.space_key,
        "type": lambda d: d.type,
    }
    return keys[field]


# -- lexer


@dataclass(frozen=True)
class Token:
    kind: str  # "str" (quoted, unescaped), "op", or "word"
    text: str
    pos: int


_TOKEN = re.compile(
    r"""\s*(?:
        (?P<str>"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*')
      | (?P<op>!=|>=|<=|!~|=|<|>|~|\(|\)|,)
      | (?P<word>[^\s"'=!<>~(),]+)
    )""",
    re.VERBOSE | re.DOTALL,
)
_ESCAPE = re.compile(r"\\(.)", re.DOTALL)


def tokenize(cql: str) -> list[Token]:
    """The tokens of ``cql``; quoted strings come back without quotes and with escapes resolved."""
    tokens: list[Token] = []
    pos = 0
    while cql[pos:].strip():
        found = _TOKEN.match(cql, pos)
        if found is None:
            pos += len(cql[pos:]) - len(cql[pos:].lstrip())
            raise CqlError(f"could not parse CQL at character {pos}: {cql[pos : pos + 20]!r}")
        kind = found.lastgroup or ""
        text = found.group(kind)
        if kind == "str":
            text = _ESCAPE.sub(r"\1", text[1:-1])
        tokens.append(Token(kind, text, found.start(kind)))
        pos = found.end()
    return tokens


# -- parser


@dataclass(frozen=True)
class _CurrentUser:
    """The ``currentUser()`` function as a value: resolved to the caller when evaluated."""


CURRENT_USER = _CurrentUser()
Operand = str | _CurrentUser


def parse_cql(cql: str) -> CqlQuery:
    """Parse ``cql`` into a ``CqlQuery``; raise ``CqlError`` for anything outside the subset."""
    parser = _Parser(tokenize(cql))
    if parser.peek() is None:
        raise CqlError("empty CQL")
    predicate = parser.expression()
    order_keys = parser.order_by()
    leftover = parser.peek()
    if leftover is not None:
        raise CqlError(f"unexpected {leftover.text!r} at character {leftover.pos}")
    return CqlQuery(predicate, order_keys)


class _Parser:
    """Recursive descent over the token list (see the grammar in the module docstring)."""

    def __init__(self, tokens: list[Token]) -> None:
        self.tokens = tokens
        self.i = 0

    def peek(self) -> Token | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def keyword(self, *words: str) -> str | None:
        """Consume the next token if it is one of the (unquoted) ``words``; return it lower-cased."""
        token = self.peek()
        if token is not None and token.kind == "word" and token.text.lower() in words:
            self.i += 1
            return token.text.lower()
        return None

    def take(self, op: str | None = None) -> Token:
        token = self.peek()
        if token is None:
            raise CqlError("unexpected end of CQL")
        if op is not None and (token.kind != "op" or token.text != op):
            raise CqlError(f"expected {op!r}, got {token.text!r} at character {token.pos}")
        self.i += 1
        return token

    def expression(self) -> Predicate:
        parts = [self.term()]
        while self.keyword("or"):
            parts.append(self.term())
        return parts[0] if len(parts) == 1 else _any_of(parts)

    def term(self) -> Predicate:
        parts = [self.factor()]
        while self.keyword("and"):
            parts.append(self.factor())
        return parts[0] if len(parts) == 1 else _all_of(parts)

    def factor(self) -> Predicate:
        if self.keyword("not"):
            return _negate(self.factor())
        token = self.peek()
        if token is not None and token.kind == "op" and token.text == "(":
            self.take("(")
            inner = self.expression()
            self.take(")")
            return inner
        return self.clause()

    def clause(self) -> Predicate:
        token = self.take()
        name = field_name(token.text) if token.kind == "word" else None
        if name is None:
            raise CqlError(f"unknown CQL field {token.text!r} at character {token.pos}")
        if self.keyword("not"):
            if not self.keyword("in"):
                raise CqlError(f"expected 'in' after '{name} not'")
            return compile_clause(name, "not in", self.value_list())
        if self.keyword("in"):
            return compile_clause(name, "in", self.value_list())
        op = self.take()
        if op.kind != "op" or op.text in ("(", ")", ","):
            raise CqlError(f"expected an operator after {name!r}, got {op.text!r} at character {op.pos}")
        return compile_clause(name, op.text, [self.value()])

    def value(self) -> Operand:
        token = self.take()
        if token.kind == "str":
            return token.text
        if token.kind != "word" or token.text.lower() in _KEYWORDS:
            raise CqlError(f"expected a value, got {token.text!r} at character {token.pos}")
        following = self.peek()
        if following is not None and following.kind == "op" and following.text == "(":
            return self.function(token)
        return token.text

    def function(self, name: Token) -> Operand:
        self.take("(")
        while (token := self.take()).kind != "op" or token.text != ")":
            pass  # arguments: only currentUser() is supported, and it takes none
        if name.text.lower() != "currentuser":
            raise CqlError(f"unsupported CQL function {name.text}() at character {name.pos}")
        return CURRENT_USER

    def value_list(self) -> list[Operand]:
        self.take("(")
        values = [self.value()]
        while True:
            separator = self.take()
            if separator.kind == "op" and separator.text == ")":
                return values
            if separator.kind != "op" or separator.text != ",":
                raise CqlError(f"expected ',' or ')', got {separator.text!r} at character {separator.pos}")
            values.append(self.value())

    def order_by(self) -> tuple[OrderKey, ...]:
        if not self.keyword("order"):
            return ()
        if not self.keyword("by"):
            raise CqlError("expected 'by' after 'order'")
        keys = [self.order_key()]
        while (token := self.peek()) is not None and token.kind == "op" and token.text == ",":
            self.take(",")
            keys.append(self.order_key())
        return tuple(keys)

    def order_key(self) -> OrderKey:
        token = self.take()
        name = field_name(token.text) if token.kind == "word" else None
        if name is None or name not in ORDERABLE:
            raise CqlError(f"cannot order by {token.text!r}")
        return OrderKey(name, self.keyword("asc", "desc") == "desc")


def _any_of(parts: Sequence[Predicate]) -> Predicate:
    return lambda doc, user: any(p(doc, user) for p in parts)


def _all_of(parts: Sequence[Predicate]) -> Predicate:
    return lambda doc, user: all(p(doc, user) for p in parts)


def _negate(inner: Predicate) -> Predicate:
    return lambda doc, user: not inner(doc, user)


# -- clauses: each field kind reads its values once, at parse time


def compile_clause(name: str, op: str, operands: Sequence[Operand]) -> Predicate:
    """The predicate for ``name op operands``; values are checked (ids, dates) before any search."""
    field = FIELDS[name]
    if op not in field.operators:
        raise CqlError(f"operator {op!r} is not supported for the field {name!r}")
    if field.kind is not Kind.USER and CURRENT_USER in operands:
        raise CqlError(f"currentUser() cannot be used with the field {name!r}")
    if op in ("~", "!~"):
        positive = _contains_clause(field, _text(operands[0]))
    elif field.kind is Kind.DATE:
        positive = _date_clause(field, op, _text(operands[0]))
    else:
        positive = _membership_clause(field, operands)
    return _negate(positive) if op in ("!=", "not in", "!~") else positive


def _text(operand: Operand) -> str:
    if not isinstance(operand, str):
        raise CqlError("currentUser() is not a text or date value")
    return operand


def _membership_clause(field: Field, operands: Sequence[Operand]) -> Predicate:
    """``=`` and ``IN`` (their negations are negated by the caller): the field holds any of the values.

    Multi-valued fields (labels, ancestors, contributors) match when any of their values is listed,
    so ``label != "x"`` means "has no label x", as in Confluence.
    """
    if field.kind is Kind.CONTENT:
        return _holds_any(field, frozenset(_content_id(o) for o in operands))
    if field.kind is Kind.USER and CURRENT_USER in operands:
        listed = _holds_any(field, frozenset(o for o in operands if isinstance(o, str)))
        read = field.read
        if field.many:
            return lambda doc, user: listed(doc, user) or user in _collection(read(doc))
        return lambda doc, user: listed(doc, user) or read(doc) == user
    if field.ignore_case:
        folded = frozenset(_text(o).casefold() for o in operands)
        read = field.read
        if field.many:
            return lambda doc, _user: any(str(v).casefold() in folded for v in _collection(read(doc)))
        return lambda doc, _user: str(read(doc)).casefold() in folded
    return _holds_any(field, frozenset(_text(o) for o in operands))  # space keys and accountIds as given


def _holds_any(field: Field, wanted: frozenset[object]) -> Predicate:
    read = field.read
    if field.many:
        return lambda doc, _user: not wanted.isdisjoint(_collection(read(doc)))
    return lambda doc, _user: read(doc) in wanted


def _collection(value: object) -> Iterable[object]:
    if not isinstance(value, tuple | frozenset):
        raise TypeError("a many-valued field reads a tuple or a frozenset")
    return value


def _content_id(operand: Operand) -> int:
    text = _text(operand)
    if not (text.isascii() and text.isdigit()):
        raise CqlError(f"{text!r} is not a content id")
    return int(text)


def _contains_clause(field: Field, query: str) -> Predicate:
    match = text_matcher(query)
    read = field.read
    return lambda doc, _user: match(str(read(doc)))


def _date_clause(field: Field, op: str, raw: str) -> Predicate:
    """A date names a whole minute or day: ``>`` is after it, ``>=`` from its start, ``<`` before it,
    ``<=`` up to its end, ``=`` within it (so ``created = "2026-01-15"`` is that whole day)."""
    start, span = cql_date(raw)
    end = start + span
    checks: dict[str, Callable[[datetime], bool]] = {
        ">=": lambda d: d >= start,
        ">": lambda d: d >= end,
        "<=": lambda d: d < end,
        "<": lambda d: d < start,
        "=": lambda d: start <= d < end,
        "!=": lambda d: start <= d < end,  # negated by the caller
    }
    check = checks[op]
    read = field.read
    return lambda doc, _user: check(_utc(read(doc)))


_DATE_LAYOUTS = (
    ("%Y-%m-%d %H:%M", timedelta(minutes=1)),
    ("%Y/%m/%d %H:%M", timedelta(minutes=1)),
    ("%Y-%m-%d", timedelta(days=1)),
    ("%Y/%m/%d", timedelta(days=1)),
)


def cql_date(raw: str) -> tuple[datetime, timedelta]:
    """A CQL date (``yyyy-MM-dd[ HH:mm]`` or ``yyyy/MM/dd[ HH:mm]``, the four layouts the field
    reference lists) as its start in UTC and its precision (a minute or a day)."""
    for layout, span in _DATE_LAYOUTS:
        try:
            return datetime.strptime(raw.strip(), layout).replace(tzinfo=UTC), span
        except ValueError:
            continue
    raise CqlError(f"{raw!r} is not a CQL date (yyyy-MM-dd or yyyy-MM-dd HH:mm)")


def _utc(value: object) -> datetime:
    if not isinstance(value, datetime):
        raise TypeError("date fields hold datetimes")
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


# -- text search

_WORD = re.compile(r"\w+")
_TERM = re.compile(r"[\w*?]+")
_PHRASE = re.compile(r'"([^"]*)"')


def words(text: str) -> list[str]:
    """The case-folded words of ``text`` (what ``~`` compares)."""
    return _WORD.findall(text.casefold())


def text_matcher(query: str) -> Callable[[str], bool]:
    """Whether a text holds every term of ``query`` as a whole word (``*``/``?`` wildcards) and every
    ``"quoted phrase"`` as consecutive words. A query with no words matches nothing."""
    phrases = [_TERM.findall(p.casefold()) for p in _PHRASE.findall(query)]
    loose = [[term] for term in _TERM.findall(_PHRASE.sub(" ", query).casefold())]
    wanted = [p for p in phrases + loose if p]

    def match(text: str) -> bool:
        have = words(text)
        return bool(wanted) and all(_has_phrase(have, phrase) for phrase in wanted)

    return match


def _has_phrase(have: list[str], phrase: list[str]) -> bool:
    width = len(phrase)
    return any(
        all(fnmatch.fnmatchcase(word, term) for word, term in zip(have[i : i + width], phrase, strict=True))
        for i in range(len(have) - width + 1)
    )
