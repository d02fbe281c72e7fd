"""OAuth scopes: the manifest grants what the code calls, and the Confluence emulator refuses what a
token's scopes do not allow, both as Atlassian's OpenAPI descriptions say (``local/oauth_scopes.py``).

The calls are found in the code itself: every string literal (f-strings too, docstrings excepted) of
the library and the functions that names a Confluence REST path (``/rest/api/...``, ``/api/v2/...``,
with or without ``/wiki``) or another api.atlassian.com API (``/app/...``). A new call whose operation
the manifest has no scope for fails here, before it fails in production for every user.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from dataclasses import dataclass

import jwt
import pytest
import requests
import yaml

from local.confluence_emulator import SCOPE_REFUSAL, ConfluenceEmulator, served_operations
from local.forge_emulator import ForgeEmulator
from local.oauth_scopes import (
    MANIFEST,
    OTHER_OPERATIONS,
    Operation,
    ScopeBook,
    manifest_scopes,
    operations_in,
    read_manifest_scopes,
    scope_book,
    token_scopes,
)
from tests.confluence_contract import make_token
from tests.support import ROOT

SOURCES = ("layers/forge_remote/forge_remote", "functions")
CONFLUENCE_PATH = re.compile(r"(?:/wiki)?/(?:rest/api|api/v2)(?:/[^\s?#\"'`]*)?")
OTHER_API_PATH = re.compile(r"/app/[^\s?#\"'`]*")
# What the scan must find at least (it would pass vacuously if it found nothing).
KNOWN_CALLS = {
    ("GET", "/wiki/rest/api/content/search"),
    ("GET", "/wiki/rest/api/user/current"),
    ("GET", "/wiki/api/v2/pages/{id}"),
    ("GET", "/wiki/api/v2/spaces"),
    ("POST", "/app/report-accounts/"),
}


@dataclass(frozen=True)
class Call:
    method: str
    path: str  # from the site root, ``{}`` where the code fills a value in
    where: str  # file:line

    @property
    def name(self) -> str:
        return f"{self.method} {self.path} ({self.where})"


def _trees() -> Iterator[tuple[str, ast.Module]]:
    for source in SOURCES:
        for file in sorted((ROOT / source).rglob("*.py")):
            yield str(file.relative_to(ROOT)), ast.parse(file.read_text(encoding="utf-8"), str(file))


def _docstrings(tree: ast.Module) -> set[int]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                found.add(id(first.value))
    return found


def _texts(tree: ast.Module) -> Iterator[tuple[int, str]]:
    """Every string literal outside docstrings; an f-string as one text, ``{}`` for each value."""
    skip = _docstrings(tree)
    skip |= {id(part) for node in ast.walk(tree) if isinstance(node, ast.JoinedStr) for part in node.values}
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            yield node.lineno, node.value
        elif isinstance(node, ast.JoinedStr):
            parts = (p.value if isinstance(p, ast.Constant) else "{}" for p in node.values)
            yield node.lineno, "".join(str(part) for part in parts)


def code_calls() -> list[Call]:
    """Every call to an Atlassian API the code can make, as found in its string literals."""
    calls: list[Call] = []
    for file, tree in _trees():
        for line, text in _texts(tree):
            for found in CONFLUENCE_PATH.finditer(text):
                path = found.group()
                # The Confluence client sends GET only (test_the_confluence_client_sends_only_get).
                calls.append(Call("GET", path if path.startswith("/wiki/") else "/wiki" + path, f"{file}:{line}"))
            for found in OTHER_API_PATH.finditer(text):
                methods = [method for method, template in OTHER_OPERATIONS if template == found.group()] or ["?"]
                calls.extend(Call(method, found.group(), f"{file}:{line}") for method in methods)
    return calls


CALLS = code_calls()


def test_the_scan_finds_every_call_known_today() -> None:
    found = {(c.method, op.template) for c in CALLS if (op := scope_book().find(c.method, c.path)) is not None}
    assert found >= KNOWN_CALLS, f"the scan missed {sorted(KNOWN_CALLS - found)}"


@pytest.mark.parametrize("call", CALLS, ids=[c.name for c in CALLS])
def test_the_manifest_grants_every_call_the_code_makes(call: Call) -> None:
    operation = scope_book().find(call.method, call.path)
    assert operation is not None, (
        f"{call.name}: no such operation in Atlassian's OpenAPI descriptions (nor in OTHER_OPERATIONS)"
    )
    assert operation.alternatives, f"{call.name}: {operation.describe()}"
    assert operation.allows(read_manifest_scopes(MANIFEST)), (
        f"{call.name}: {operation.describe()}, and forge-app/manifest.yml's permissions.scopes has none of them"
    )


def test_every_get_json_path_is_a_literal_the_scan_can_read() -> None:
    """``ConfluenceClient.get_json(path)`` takes any path: a computed one would hide its operation."""
    computed = [
        f"{file}:{node.lineno}"
        for file, tree in _trees()
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "get_json"
        and not (node.args and isinstance(node.args[0], ast.Constant | ast.JoinedStr))
    ]
    assert computed == [], f"get_json with a computed path (write it as a literal): {computed}"


def test_the_confluence_client_sends_only_get() -> None:
    """The scan reads Confluence paths as GETs: true while the client sends nothing else."""
    methods = {
        (node.args[0].value if isinstance(node.args[0], ast.Constant) else ast.unparse(node.args[0]))
        for file, tree in _trees()
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in ("_request", "_send")
        and node.args
    }
    assert methods == {"GET", "method"}, methods  # ``method``: _request passing its own argument to _send


# -- the OpenAPI reading -------------------------------------------------------------------------------
def test_a_concrete_path_wins_over_a_templated_one() -> None:
    book = scope_book()
    search, content = book.find("GET", "/wiki/rest/api/content/search"), book.find("GET", "/wiki/rest/api/content/9")
    assert search is not None
    assert search.template == "/wiki/rest/api/content/search"
    assert content is not None
    assert content.template == "/wiki/rest/api/content/{id}"
    assert search.alternatives != content.alternatives
    assert book.find("GET", "/wiki/api/v2/pages/") is None  # a parameter is never empty
    assert book.find("PATCH", "/wiki/rest/api/content/search") is None  # matched by method too


def test_both_notations_count_and_any_one_alternative_is_enough() -> None:
    document = {
        "paths": {
            "/things/{id}": {
                "get": {
                    "security": [{"basicAuth": []}, {"oAuthDefinitions": ["read:a"]}],
                    "x-atlassian-oauth2-scopes": [
                        {"scheme": "oAuthDefinitions", "state": "Current", "scopes": ["read:a"]},
                        {"scheme": "oAuthDefinitions", "state": "Beta", "scopes": ["read:b", "read:c"]},
                    ],
                },
                "delete": {"security": [{"basicAuth": []}]},
            }
        }
    }
    book = ScopeBook(operations_in(document, "/wiki/api/v2", "test"))
    get = book.find("GET", "/wiki/api/v2/things/7")
    assert get is not None
    assert get.alternatives == (frozenset({"read:a"}), frozenset({"read:b", "read:c"}))
    assert get.allows({"read:a"})
    assert get.allows({"read:b", "read:c", "other"})
    assert not get.allows({"read:b"})  # half an alternative is none
    delete = book.find("DELETE", "/wiki/api/v2/things/7")
    assert delete is not None
    assert delete.alternatives == ()
    assert not delete.allows({"read:a", "read:b", "read:c"})


def test_the_admin_checks_operation_needs_a_user_scope() -> None:
    operation = scope_book().operation("GET", "/wiki/rest/api/user/current")
    assert operation is not None
    assert set(operation.alternatives) == {
        frozenset({"read:confluence-user"}),
        frozenset({"read:content-details:confluence"}),
    }


def test_the_manifest_is_read_as_written() -> None:
    document = yaml.safe_load(MANIFEST.read_text(encoding="utf-8"))
    assert manifest_scopes() == frozenset(document["permissions"]["scopes"])


# -- the emulators ------------------------------------------------------------------------------------
@pytest.fixture
def confluence() -> Iterator[ConfluenceEmulator]:
    with ConfluenceEmulator() as emulator:
        emulator.add_space("ENG", "Engineering")
        yield emulator


def send(confluence: ConfluenceEmulator, method: str, path: str, token: str) -> requests.Response:
    """``path`` below the apiBaseUrl (``/wiki/...``), or from the host's root (``/app/...``)."""
    base = confluence.api_base_url if path.startswith("/wiki/") else confluence.api_base_url.split("/ex/")[0]
    body = {"accounts": [{"accountId": "557058:x", "updatedAt": "2026-11-01T00:00:00Z"}]} if method == "POST" else None
    return requests.request(method, base + path, json=body, headers={"Authorization": f"Bearer {token}"}, timeout=10)


SERVED = {
    ("GET", "/wiki/rest/api/content/search"): "/wiki/rest/api/content/search?cql=type%20%3D%20page",
    ("GET", "/wiki/rest/api/user/current"): "/wiki/rest/api/user/current?expand=operations",
    ("GET", "/wiki/api/v2/pages/{id}"): "/wiki/api/v2/pages/{page}",
    ("GET", "/wiki/api/v2/spaces"): "/wiki/api/v2/spaces?keys=ENG",
    ("POST", "/app/report-accounts/"): "/app/report-accounts/",
}


def _target(confluence: ConfluenceEmulator, key: tuple[str, str]) -> str:
    page = confluence.add_page("ENG", "Page")
    return SERVED[key].format(page=page["id"])


@pytest.mark.parametrize("key", list(SERVED), ids=[f"{m} {t}" for m, t in SERVED])
def test_a_token_with_the_manifests_scopes_may_call_every_served_operation(
    confluence: ConfluenceEmulator, forge: ForgeEmulator, key: tuple[str, str]
) -> None:
    response = send(confluence, key[0], _target(confluence, key), forge.app_token())
    assert response.status_code in (200, 204), response.text
    assert confluence.scope_refusals == []


@pytest.mark.parametrize("key", list(SERVED), ids=[f"{m} {t}" for m, t in SERVED])
def test_a_token_without_the_operations_scopes_is_refused_as_atlassian_does(
    confluence: ConfluenceEmulator, forge: ForgeEmulator, key: tuple[str, str]
) -> None:
    operation = scope_book().operation(*key)
    assert operation is not None
    lacking = manifest_scopes() - frozenset().union(*operation.alternatives)
    response = send(confluence, key[0], _target(confluence, key), forge.app_token(scopes=lacking))
    assert response.status_code == 401
    assert response.json() == SCOPE_REFUSAL == {"code": 401, "message": "Unauthorized; scope does not match"}
    assert response.headers["X-Failure-Category"] == "FAILURE_CLIENT_SCOPE_CHECK"
    assert confluence.scope_refusals == [key]
    assert confluence.reports_seen == []  # refused before it was served


@pytest.mark.parametrize("scope", ["read:confluence-user", "read:content-details:confluence"])
def test_either_documented_scope_opens_the_admin_check(
    confluence: ConfluenceEmulator, forge: ForgeEmulator, scope: str
) -> None:
    confluence.set_admins({"557058:admin"})
    token = forge.app_token(subject="557058:admin", scopes=[scope])
    response = send(confluence, "GET", "/wiki/rest/api/user/current?expand=operations", token)
    assert response.status_code == 200, response.text
    assert {"operation": "administer", "targetType": "application"} in response.json()["operations"]
    # ...and that scope alone opens nothing else.
    assert send(confluence, "GET", "/wiki/api/v2/spaces", token).status_code == 401


def test_an_operation_described_without_oauth_is_refused_whatever_the_token_has(
    confluence: ConfluenceEmulator, forge: ForgeEmulator
) -> None:
    everything = {scope for op in scope_book() for alternative in op.alternatives for scope in alternative}
    response = send(confluence, "GET", "/wiki/rest/api/user/email?accountId=x", forge.app_token(scopes=everything))
    assert response.status_code == 401
    assert confluence.scope_refusals == [("GET", "/wiki/rest/api/user/email")]


def test_forge_tokens_carry_the_manifests_scopes_unless_told_otherwise() -> None:
    forge = ForgeEmulator()
    assert token_scopes(forge.app_token()) == manifest_scopes()
    assert token_scopes(forge.app_token(subject="557058:user")) == manifest_scopes()  # user tokens alike
    assert token_scopes(forge.app_token(scopes=["read:page:confluence"])) == frozenset({"read:page:confluence"})
    assert token_scopes(forge.app_token(scopes=[])) == frozenset()  # no scopes, not "unknown"
    narrow = ForgeEmulator(scopes=["search:confluence"])
    assert jwt.decode(narrow.app_token(), options={"verify_signature": False})["scope"] == "search:confluence"


def test_a_token_without_a_scope_claim_gets_the_emulators_default_scopes() -> None:
    with ConfluenceEmulator(token_validator=lambda t: t == "opaque-ok") as granted:
        assert send(granted, "GET", "/wiki/rest/api/user/current", "opaque-ok").status_code == 200
    with ConfluenceEmulator(default_scopes=["read:space:confluence"]) as narrow:
        claimless = make_token()  # a JWT minted without a scope claim
        assert token_scopes(claimless) is None
        assert send(narrow, "GET", "/wiki/api/v2/spaces", claimless).status_code == 200
        assert send(narrow, "GET", "/wiki/rest/api/user/current", claimless).status_code == 401


def test_the_emulator_refuses_to_serve_an_operation_without_documented_scopes() -> None:
    book = scope_book()
    described = served_operations(book, [("GET", "/wiki/api/v2/pages/{id}")])
    assert isinstance(described[("GET", "/wiki/api/v2/pages/{id}")], Operation)
    with pytest.raises(LookupError, match="GET /wiki/rest/api/nothing-here"):
        served_operations(book, [("GET", "/wiki/rest/api/nothing-here")])
    with pytest.raises(LookupError, match="GET /wiki/rest/api/user/email"):  # described, but without OAuth
        served_operations(book, [("GET", "/wiki/rest/api/user/email")])


def test_requests_the_descriptions_do_not_describe_are_not_served(
    confluence: ConfluenceEmulator, forge: ForgeEmulator
) -> None:
    for method, path in (("POST", "/wiki/rest/api/content/search"), ("GET", "/wiki/rest/api/nothing-here")):
        assert send(confluence, method, path, forge.app_token()).status_code == 404
    assert confluence.scope_refusals == []


def test_the_scope_check_is_cheap_once_warm() -> None:
    book = scope_book()
    assert book is scope_book()  # parsed once per process
    first = book.find("GET", "/wiki/api/v2/pages/123")
    assert book.find("GET", "/wiki/api/v2/pages/123") is first
    assert book.find.cache_info().hits >= 1
