"""Which OAuth scopes an operation on api.atlassian.com needs, and which scopes the app's tokens carry.

Needed: read from Atlassian's OpenAPI descriptions of Confluence (``tests/reference``, the same files
the contract tests use). Each operation says it two ways, and both count: ``security`` (OpenAPI
requirement objects: any one object satisfied is enough, and within one every scope is needed) and
``x-atlassian-oauth2-scopes`` (entries ``{scheme, state, scopes}``: the classic scopes as
``Current`` and, on v1, the granular ones as ``Beta``; again any one entry is enough). The v2 file's
paths are relative to its server, ``/wiki/api/v2``; they are stored here with that prefix so every
template reads from ``/wiki``. An operation the descriptions list without any OAuth requirement (a
few v1 ones) has no alternative at all: no token may call it. Operations outside Confluence's API
(the User privacy API) are in ``OTHER_OPERATIONS`` with the scopes their own documentation names.

Carried: Forge grants a token the scopes of the app's manifest (``permissions.scopes`` of
``forge-app/manifest.yml``), so that is what the emulators put in the tokens they mint, as a
space-separated ``scope`` claim (the OAuth 2 convention, RFC 9068). Reading the real manifest is the
point: a scope missing there fails locally, as it would in production.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import yaml

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = ROOT / "forge-app" / "manifest.yml"
OPENAPI_FILES = {
    "v1": ROOT / "tests" / "reference" / "confluence-openapi-v1.json",
    "v2": ROOT / "tests" / "reference" / "confluence-openapi-v2.json",
}
# Where each description's paths start, below the site: v1 paths are absolute, v2 ones are below its server.
PATH_PREFIXES = {"v1": "", "v2": "/wiki/api/v2"}
OAUTH_SCHEME = "oAuthDefinitions"  # the descriptions' name for Atlassian's OAuth 2.0 security scheme
SCOPE_CLAIM = "scope"
METHODS = frozenset({"get", "put", "post", "delete", "patch", "head", "options"})

# Not Confluence's API, so not in its OpenAPI descriptions. (method, path template) -> alternatives.
# The User privacy API's reporting endpoint: Forge's scope list gives `report:personal-data` for it
# ("Enables the User privacy API").
OTHER_OPERATIONS: Mapping[tuple[str, str], tuple[frozenset[str], ...]] = {
    ("POST", "/app/report-accounts/"): (frozenset({"report:personal-data"}),),
}


@dataclass(frozen=True)
class Operation:
    """One operation (method, path template from the site root) and the scope sets that allow it."""

    method: str
    template: str
    alternatives: tuple[frozenset[str], ...]  # any one, wholly granted, is enough; none: nobody may call it
    source: str  # where the requirement comes from, for messages

    def allows(self, granted: Collection[str]) -> bool:
        return any(alternative.issubset(granted) for alternative in self.alternatives)

    def describe(self) -> str:
        options = " or ".join("+".join(sorted(a)) or "(any token)" for a in self.alternatives)
        return f"{self.method} {self.template} needs {options or 'a scope no token can have'} ({self.source})"


def _alternatives(operation: Mapping[str, Any]) -> tuple[frozenset[str], ...]:
    found: dict[frozenset[str], None] = {}  # ordered and without repeats: the two notations overlap
    for requirement in operation.get("security") or ():
        # A requirement naming another scheme too (basic auth besides OAuth) cannot be met by a token.
        if isinstance(requirement, dict) and set(requirement) == {OAUTH_SCHEME}:
            found[frozenset(requirement[OAUTH_SCHEME])] = None
    for entry in operation.get("x-atlassian-oauth2-scopes") or ():
        if isinstance(entry, dict) and entry.get("scheme") == OAUTH_SCHEME:
            found[frozenset(entry.get("scopes") or ())] = None
    return tuple(found)


def operations_in(document: Mapping[str, Any], prefix: str, source: str) -> Iterator[Operation]:
    """Every operation of one OpenAPI description, its path templates prefixed to read from ``/wiki``."""
    for path, item in document.get("paths", {}).items():
        for method, operation in item.items():
            if method in METHODS and isinstance(operation, dict):
                yield Operation(method.upper(), prefix + path, _alternatives(operation), source)


_PARAMETER = re.compile(r"\{[^{}/]+\}")


def _segments(path: str) -> tuple[str, ...]:
    # Exact, trailing slash included: the emulator serves no path a template does not spell out.
    return tuple(path.split("/"))


class ScopeBook:
    """Operations by method and path template; ``find`` matches a concrete path, cached per path."""

    def __init__(self, operations: Iterable[Operation]) -> None:
        self._exact: dict[tuple[str, tuple[str, ...]], Operation] = {}
        candidates: dict[tuple[str, int], list[tuple[tuple[bool, ...], tuple[str, ...], Operation]]] = {}
        for op in operations:
            segments = _segments(op.template)
            if (op.method, segments) in self._exact:
                raise ValueError(f"{op.method} {op.template} is described twice")
            self._exact[(op.method, segments)] = op
            literal = tuple(not _PARAMETER.fullmatch(s) for s in segments)
            candidates.setdefault((op.method, len(segments)), []).append((literal, segments, op))
        # OpenAPI: a concrete path wins over a templated one (``content/search`` is not ``content/{id}``),
        # so the candidate with literal segments furthest to the left is tried first.
        for entries in candidates.values():
            entries.sort(key=lambda entry: entry[0], reverse=True)
        self._candidates = candidates
        self.find = functools.lru_cache(maxsize=4096)(self._find)

    def operation(self, method: str, template: str) -> Operation | None:
        """The operation with exactly this template (``{id}``-style parameters), or None."""
        return self._exact.get((method.upper(), _segments(template)))

    def _find(self, method: str, path: str) -> Operation | None:
        """The operation a request for ``path`` (from the site root, e.g. ``/wiki/api/v2/pages/123``) is."""
        segments = _segments(path)
        for literal, template, op in self._candidates.get((method.upper(), len(segments)), ()):
            if all(
                s == t if is_literal else bool(s) for s, t, is_literal in zip(segments, template, literal, strict=True)
            ):
                return op
        return None

    def __iter__(self) -> Iterator[Operation]:
        return iter(self._exact.values())


@functools.cache
def scope_book() -> ScopeBook:
    """Both OpenAPI descriptions and ``OTHER_OPERATIONS``, parsed once per process."""
    operations: list[Operation] = []
    for version, file in OPENAPI_FILES.items():
        document = json.loads(file.read_text(encoding="utf-8"))
        operations.extend(operations_in(document, PATH_PREFIXES[version], f"Confluence OpenAPI {version}"))
    for (method, template), alternatives in OTHER_OPERATIONS.items():
        operations.append(Operation(method, template, alternatives, "OTHER_OPERATIONS (not Confluence's API)"))
    return ScopeBook(operations)


def _declared_scopes(path: Path) -> dict[str, bool]:
    """``permissions.scopes`` of a Forge manifest: scope name -> whether it allows impersonation.

    Both forms Forge reads: a list of names, or a map of name -> ``{allowImpersonation: bool}``.
    """
    document = yaml.safe_load(path.read_text(encoding="utf-8"))
    scopes = (document.get("permissions") or {}).get("scopes") if isinstance(document, dict) else None
    if isinstance(scopes, list) and all(isinstance(s, str) for s in scopes):
        return dict.fromkeys(scopes, False)
    if isinstance(scopes, dict) and all(isinstance(v, dict | None) for v in scopes.values()):
        return {str(name): bool((options or {}).get("allowImpersonation", False)) for name, options in scopes.items()}
    raise ValueError(f"{path}: permissions.scopes is neither a list of scope names nor a map of them")


def read_manifest_scopes(path: Path = MANIFEST) -> frozenset[str]:
    """Every scope ``permissions.scopes`` of a Forge manifest declares."""
    return frozenset(_declared_scopes(path))


def read_impersonation_scopes(path: Path = MANIFEST) -> frozenset[str]:
    """The declared scopes marked ``allowImpersonation: true``: what an offline user token may use."""
    return frozenset(name for name, allowed in _declared_scopes(path).items() if allowed)


@functools.cache
def manifest_scopes() -> frozenset[str]:
    """What Forge grants this app's tokens: the repository's manifest's scopes (read once per process)."""
    return read_manifest_scopes(MANIFEST)


@functools.cache
def impersonation_scopes() -> frozenset[str]:
    """What an offline user token Forge mints for this app carries (read once per process)."""
    return read_impersonation_scopes(MANIFEST)


def scope_claim(scopes: Iterable[str]) -> str:
    """The ``scope`` claim for these scopes: space-separated, in a stable order."""
    names = sorted(set(scopes))
    if any(not name or " " in name for name in names):
        raise ValueError("a scope name is empty or has a space")
    return " ".join(names)


def token_scopes(token: str) -> frozenset[str] | None:
    """The scopes a token carries (its ``scope`` claim, unverified), or None if it has no readable claim
    (an opaque token, or a JWT minted without one)."""
    try:
        claim = jwt.decode(token, options={"verify_signature": False}).get(SCOPE_CLAIM)
    except jwt.PyJWTError:
        return None
    if isinstance(claim, str):
        return frozenset(claim.split())
    if isinstance(claim, list) and all(isinstance(s, str) for s in claim):
        return frozenset(claim)
    return None
