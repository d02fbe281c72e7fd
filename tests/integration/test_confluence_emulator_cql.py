"""The Confluence emulator's CQL and users, end to end over loopback.

CQL: every field and operator the jobs use, each with a query that returns exactly the expected pages
out of a small site where ignoring the operator would return more (or other) pages; AND/OR/NOT
precedence, IN/NOT IN, ORDER BY both ways across cursor pages, the builder's escaping, and the 400
Confluence gives for CQL it cannot run. Users: a restricted space is invisible to other users and
visible to the allowed user and the app; ``user/current`` for an administrator, a user and the app,
validated against Atlassian's OpenAPI description. Queries are built with ``forge_remote.confluence.cql`` and sent
through ``ConfluenceClient`` wherever they can be; raw CQL (syntax the builder cannot express, and
broken CQL) goes through plain ``requests``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime

import pytest
import requests

from forge_remote.confluence.client import ConfluenceClient
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
)
from forge_remote.errors import ConfluenceError, NotFound
from local.confluence_emulator import AUTHOR_ID, ConfluenceEmulator
from local.cql_eval import CqlError, parse_cql
from local.forge_emulator import ForgeEmulator
from tests import confluence_contract as contract

ALICE = "557058:alice-0001"
BOB = "557058:bob-0002"
CAROL = "557058:carol-0003"
TRICKY_TITLE = 'He said "ship it" \\o/ \\'  # a quote, a backslash inside and a backslash at the end
INJECTION = 'x" OR type = page'
INJECTION_CLOSED = 'x" OR type = "page'  # the form that closes a naive template's quote again


# -- the OpenAPI contract (tests/confluence_contract.py)


def check_exchange(response: requests.Response) -> str:
    """Validate the request against Atlassian's spec, and the response too when it is a 200."""
    return contract.check_exchange(contract.load_openapi(), response)


# -- the site: two open spaces and six pages whose fields differ just enough


@dataclass
class Site:
    confluence: ConfluenceEmulator
    forge: ForgeEmulator
    ids: dict[str, int]  # page letter -> id
    homepage: dict[str, int]  # space key -> homepage id

    def token(self, subject: str = "app") -> str:
        return self.forge.app_token(subject=subject)

    def client(self, subject: str = "app") -> ConfluenceClient:
        base = self.confluence.api_base_url
        token = self.token(subject)
        return ConfluenceClient(base, lambda: token, allowed_hosts=[base.split("/")[2]], sleep=lambda _s: None)

    def found(self, cql: Cql, subject: str = "app") -> list[str]:
        """The letters of the pages ``cql`` finds, in the order Confluence returned them."""
        letters = {page_id: letter for letter, page_id in self.ids.items()}
        return [letters[int(r["id"])] for r in self.client(subject).search_content(cql, limit=2)]

    def raw(self, cql: str, subject: str = "app") -> requests.Response:
        """CQL the builder cannot express (or broken CQL), sent as it is."""
        return requests.get(
            self.confluence.api_base_url + "/wiki/rest/api/content/search",
            params={"cql": cql, "limit": "50"},
            headers={"Authorization": f"Bearer {self.token(subject)}", "Accept": "application/json"},
            timeout=10,
        )

    def raw_found(self, cql: str, subject: str = "app") -> list[str]:
        """The letters of the pages raw ``cql`` finds, following v1 ``_links.next`` (no ``/wiki``)."""
        letters = {page_id: letter for letter, page_id in self.ids.items()}
        response, found = self.raw(cql, subject), []
        while True:
            assert response.status_code == 200, response.text
            found += [letters[int(r["id"])] for r in response.json()["results"]]
            link = response.json()["_links"].get("next")
            if link is None:
                return found
            response = requests.get(
                self.confluence.api_base_url + "/wiki" + link,
                headers={"Authorization": f"Bearer {self.token(subject)}"},
                timeout=10,
            )


def at(day: int, month: int = 2, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(2026, month, day, hour, minute, tzinfo=UTC)


@pytest.fixture
def site(forge: ForgeEmulator) -> Iterator[Site]:
    """ENG: A > B > C (a page tree) and D; OPS: E and F. Labels, people and dates overlap on purpose.

    | page | title          | labels        | creator | also edited by | created       | last modified |
    | A    | Architecture   | audit, design | ALICE   | BOB            | 01-10 09:00   | 02-01 10:00   |
    | B    | Storage layer  | design        | BOB     |                | 01-15 12:30   | 02-10 08:00   |
    | C    | Backups        | audit         | ALICE   |                | 01-20 00:00   | 02-20 00:00   |
    | D    | Release notes  |               | CAROL   |                | 02-01 00:00   | 02-01 00:00   |
    | E    | Runbook        | audit, ops    | CAROL   | ALICE          | 01-05 00:00   | 03-01 12:00   |
    | F    | TRICKY_TITLE   |               | BOB     |                | 01-15 09:30   | 01-15 09:30   |
    """
    # Two results per request (and limit=2 from the client): every listing crosses cursor pages.
    with ConfluenceEmulator(page_size_cap=2) as confluence:
        homepage = {
            key: confluence.add_space(key, name)["homepageId"] for key, name in (("ENG", "Eng"), ("OPS", "Ops"))
        }
        add = confluence.add_page
        ids: dict[str, int] = {}
        ids["A"] = add(
            "ENG", "Architecture", "<p>The system <b>design</b> overview</p>", at(1, 2, 10),
            labels=["audit", "Design"], creator=ALICE, contributors=[BOB], created=at(10, 1, 9),
        )["id"]  # fmt: skip
        ids["B"] = add(
            "ENG", "Storage layer", "<p>Buckets &amp; tables</p>", at(10, 2, 8),
            labels=["design"], parent_id=ids["A"], creator=BOB, created=at(15, 1, 12, 30),
        )["id"]  # fmt: skip
        ids["C"] = add(
            "ENG", "Backups", "<p>Nightly backups run at midnight</p>", at(20),
            labels=["audit"], parent_id=ids["B"], creator=ALICE, created=at(20, 1),
        )["id"]  # fmt: skip
        ids["D"] = add("ENG", "Release notes", "<p>release 1.2</p>", at(1), creator=CAROL)["id"]
        ids["E"] = add(
            "OPS", "Runbook", "<p>Restart the service, then page the on-call</p>", at(1, 3, 12),
            labels=["audit", "ops"], creator=CAROL, contributors=[ALICE], created=at(5, 1),
        )["id"]  # fmt: skip
        ids["F"] = add("OPS", TRICKY_TITLE, "<p>shipped</p>", at(15, 1, 9, 30), creator=BOB)["id"]
        yield Site(confluence, forge, ids, homepage)


ALL = ["A", "B", "C", "D", "E", "F"]


# -- each field and operator, through the builder and the client


CASES: dict[str, tuple[Callable[[Site], Cql], list[str]]] = {
    # label (= != IN; labels are lower-cased, matched whatever the case)
    "label =": (lambda s: field_eq("label", "audit"), ["A", "C", "E"]),
    "label = any case": (lambda s: field_eq("label", "DESIGN"), ["A", "B"]),
    "label !=": (lambda s: field_ne("label", "audit"), ["B", "D", "F"]),
    "label IN": (lambda s: field_in("label", ["ops", "design"]), ["A", "B", "E"]),
    "NOT label IN": (lambda s: not_(field_in("label", ["ops", "design"])), ["C", "D", "F"]),
    # ancestor (any level) and parent (direct), quoted ids as the builder sends them
    "ancestor =": (lambda s: field_eq("ancestor", str(s.ids["A"])), ["B", "C"]),
    "ancestor = homepage": (lambda s: field_eq("ancestor", str(s.homepage["ENG"])), ["A", "B", "C", "D"]),
    "ancestor IN": (lambda s: field_in("ancestor", [str(s.ids["B"]), str(s.ids["E"])]), ["C"]),
    "ancestor !=": (lambda s: field_ne("ancestor", str(s.ids["A"])), ["A", "D", "E", "F"]),
    "parent =": (lambda s: field_eq("parent", str(s.ids["A"])), ["B"]),
    "parent !=": (lambda s: field_ne("parent", str(s.homepage["ENG"])), ["B", "C", "E", "F"]),
    "parent IN": (lambda s: field_in("parent", [str(s.ids["A"]), str(s.ids["B"])]), ["B", "C"]),
    # creator and contributor (creator or any editor)
    "creator =": (lambda s: field_eq("creator", ALICE), ["A", "C"]),
    "creator IN": (lambda s: field_in("creator", [BOB, CAROL]), ["B", "D", "E", "F"]),
    "creator !=": (lambda s: field_ne("creator", CAROL), ["A", "B", "C", "F"]),
    "contributor =": (lambda s: field_eq("contributor", ALICE), ["A", "C", "E"]),
    "contributor = an editor": (lambda s: field_eq("contributor", BOB), ["A", "B", "F"]),
    "contributor IN": (lambda s: field_in("contributor", [CAROL]), ["D", "E"]),
    # text ~ (title, body without markup, labels; whole words, wildcards, phrases)
    "text ~ body word": (lambda s: contains("text", "midnight"), ["C"]),
    "text ~ reads labels": (lambda s: contains("text", "design"), ["A", "B"]),
    "text ~ decodes entities": (lambda s: contains("text", "buckets tables"), ["B"]),
    "text ~ wildcard": (lambda s: contains("text", "back*"), ["C"]),
    "text ~ phrase": (lambda s: contains("text", '"restart the service"'), ["E"]),
    "text ~ all words": (lambda s: contains("text", "release notes"), ["D"]),
    # title = != ~ IN
    "title =": (lambda s: field_eq("title", "Runbook"), ["E"]),
    "title = any case": (lambda s: field_eq("title", "storage LAYER"), ["B"]),
    "title !=": (lambda s: field_ne("title", "Runbook"), ["A", "B", "C", "D", "F"]),
    "title ~": (lambda s: contains("title", "notes"), ["D"]),
    "title IN": (lambda s: field_in("title", ["Backups", "Runbook", "No such page"]), ["C", "E"]),
    # lastmodified and created: "yyyy-MM-dd HH:mm" is a minute, "yyyy-MM-dd" a day
    "lastmodified >= minute": (lambda s: date_gte("lastmodified", at(10, 2, 8)), ["B", "C", "E"]),
    "lastmodified >= day": (lambda s: date_gte("lastmodified", date(2026, 2, 10)), ["B", "C", "E"]),
    "lastmodified < day": (lambda s: date_lt("lastmodified", date(2026, 2, 1)), ["F"]),
    "lastmodified < minute": (lambda s: date_lt("lastmodified", at(1, 2, 10)), ["D", "F"]),
    "created >= day": (lambda s: date_gte("created", date(2026, 1, 15)), ["B", "C", "D", "F"]),
    "created < minute": (lambda s: date_lt("created", at(15, 1, 12, 30)), ["A", "E", "F"]),
    # space, space.key, type, id
    "space =": (lambda s: field_eq("space", "OPS"), ["E", "F"]),
    "space.key IN": (lambda s: field_in("space.key", ["OPS", "NOPE"]), ["E", "F"]),
    "space !=": (lambda s: field_ne("space", "OPS"), ["A", "B", "C", "D"]),
    "type = and": (lambda s: and_(field_eq("type", "page"), field_eq("label", "ops")), ["E"]),
    "id =": (lambda s: id_eq(s.ids["C"]), ["C"]),
    "id IN": (lambda s: field_in("id", [str(s.ids["A"]), str(s.ids["E"])]), ["A", "E"]),
    "id !=": (lambda s: field_ne("id", str(s.ids["A"])), ["B", "C", "D", "E", "F"]),
}


@pytest.mark.parametrize("case", CASES)
def test_each_field_and_operator_finds_exactly_its_pages(site: Site, case: str) -> None:
    build, expected = CASES[case]
    found = site.found(build(site))
    assert found == expected
    # Ignoring the operator (matching everything, or nothing) could not pass this.
    assert 0 < len(expected) < len(ALL)


RAW_CASES: dict[str, tuple[str, list[str]]] = {
    # Operators the builder has no function for, bare values, and the date operators it does not emit.
    "label NOT IN": ('label not in ("audit", "ops")', ["B", "D", "F"]),
    "label IN bare and quoted": ('label in (ops, "design")', ["A", "B", "E"]),
    "title !~": ('title !~ "layer"', ["A", "C", "D", "E", "F"]),
    "text !~": ('type = page and text !~ "audit"', ["B", "D", "F"]),
    "lastmodified > minute": ('lastmodified > "2026-02-10 08:00"', ["C", "E"]),
    "lastmodified <= day": ('lastmodified <= "2026-02-01"', ["A", "D", "F"]),
    "lastmodified = day": ('lastmodified = "2026-02-01"', ["A", "D"]),
    "lastmodified = minute": ('lastmodified = "2026-02-01 10:00"', ["A"]),
    "lastModified != day (field names ignore case)": ('lastModified != "2026-02-01"', ["B", "C", "E", "F"]),
    "lastmodified >= slashed day": ('lastmodified >= "2026/02/20"', ["C", "E"]),
    "created = day": ('created = "2026-01-15"', ["B", "F"]),
    "created > minute": ('created > "2026-01-15 09:30"', ["B", "C", "D"]),
    "created <= minute": ('created <= "2026-01-15 09:30"', ["A", "E", "F"]),
    "space NOT IN": ('space not in ("OPS")', ["A", "B", "C", "D"]),
    "type IN": ("type in (page, blogpost) and space = OPS", ["E", "F"]),
    "bare ids": ("ancestor = {A} or id in ({E}, {F})", ["B", "C", "E", "F"]),
    "content is id": ("content = {C}", ["C"]),
    "creator = currentUser()": ("creator = currentUser()", ["A", "C"]),  # as ALICE
    "contributor = currentUser()": ("contributor = currentUser() and space = OPS", ["E"]),
}


@pytest.mark.parametrize("case", RAW_CASES)
def test_raw_cql_the_builder_cannot_express(site: Site, case: str) -> None:
    cql, expected = RAW_CASES[case]
    cql = cql.format(**{letter: site.ids[letter] for letter in ALL})
    assert site.raw_found(cql, subject=ALICE) == expected
    assert 0 < len(expected) < len(ALL)


def test_the_same_cql_as_two_users_reads_current_user(site: Site) -> None:
    assert site.raw_found("creator = currentUser()", subject=BOB) == ["B", "F"]
    assert site.raw_found("creator = currentUser()", subject=CAROL) == ["D", "E"]


# -- AND, OR, NOT and parentheses


def test_and_binds_tighter_than_or(site: Site) -> None:
    loose = f'label = "ops" or label = "design" and creator = "{BOB}"'
    assert site.raw_found(loose) == ["B", "E"]  # ops, or (design and BOB)
    assert site.raw_found(f'(label = "ops" or label = "design") and creator = "{BOB}"') == ["B"]
    # The builder parenthesises compound clauses, so it says what it means either way.
    built = or_(field_eq("label", "ops"), and_(field_eq("label", "design"), field_eq("creator", BOB)))
    assert site.found(built) == ["B", "E"]
    built = and_(or_(field_eq("label", "ops"), field_eq("label", "design")), field_eq("creator", BOB))
    assert site.found(built) == ["B"]


def test_not_binds_tighter_than_and(site: Site) -> None:
    assert site.raw_found('not label = "audit" and space = "ENG"') == ["B", "D"]
    assert site.raw_found('not (label = "audit" and space = "ENG")') == ["B", "D", "E", "F"]
    assert site.found(and_(not_(field_eq("label", "audit")), field_eq("space", "ENG"))) == ["B", "D"]
    assert site.found(not_(and_(field_eq("label", "audit"), field_eq("space", "ENG")))) == ["B", "D", "E", "F"]


def test_keywords_are_case_insensitive_and_nest(site: Site) -> None:
    cql = 'TYPE = page AND NOT (space = OPS OR label IN ("design")) Or title = "Runbook"'
    assert site.raw_found(cql) == ["C", "D", "E"]


# -- ORDER BY


ORDERED = {
    # field: the pages in ascending order of that field (ids ascend in creation order: A..F)
    "lastmodified": ["F", "D", "A", "B", "C", "E"],
    "created": ["E", "A", "F", "B", "C", "D"],
    "title": ["A", "C", "F", "D", "E", "B"],  # case-insensitive: Architecture, Backups, He said, ...
    "id": ["A", "B", "C", "D", "E", "F"],
}


@pytest.mark.parametrize("descending", [False, True], ids=["asc", "desc"])
@pytest.mark.parametrize("field", ORDERED)
def test_order_by_both_ways_across_cursor_pages(site: Site, field: str, descending: bool) -> None:
    expected = ORDERED[field][::-1] if descending else ORDERED[field]
    assert site.found(field_eq("type", "page").order_by(field, desc=descending)) == expected
    direction = "DESC" if descending else "ASC"
    assert site.raw_found(f"type = page ORDER BY {field} {direction}") == expected


def test_order_by_several_keys(site: Site) -> None:
    assert site.raw_found("type = page order by space desc, title") == ["F", "E", "A", "C", "D", "B"]


def test_no_order_by_is_id_order(site: Site) -> None:
    assert site.found(field_in("label", ["audit", "design"])) == ["A", "B", "C", "E"]


# -- the builder's escaping, end to end


def test_a_title_with_quotes_and_backslashes_is_found_by_the_builders_quoting(site: Site) -> None:
    query = field_eq("title", TRICKY_TITLE)
    assert str(query) == r'title = "He said \"ship it\" \\o/ \\"'
    assert site.found(query) == ["F"]
    assert site.found(field_in("title", [TRICKY_TITLE, "Runbook"])) == ["E", "F"]
    assert site.found(contains("title", '"ship it"')) == ["F"]
    assert site.found(field_eq("title", TRICKY_TITLE[:-1])) == []  # the last backslash is part of it


@pytest.mark.parametrize("field", ["title", "label", "space", "creator"])
def test_an_injection_attempt_finds_nothing(site: Site, field: str) -> None:
    assert site.found(field_eq(field, INJECTION)) == []
    assert site.found(and_(field_eq("type", "page"), field_in(field, [INJECTION]))) == []
    # Pasted into a quoted template by hand, the text leaves the template's closing quote dangling (a
    # 400); the variant that closes it again breaks out and matches every page.
    assert site.raw(f'{field} = "{INJECTION}"').status_code == 400
    assert site.raw_found(f'{field} = "{INJECTION_CLOSED}"') == ALL


# -- the 400 for CQL Confluence cannot run


CQL_400_DATA = {"authorized": True, "valid": True, "errors": [], "successful": True}

UNSUPPORTED = {
    "unknown field": 'nosuchfield = "x"',
    "a real field the emulator does not know": f'mention = "{ALICE}"',
    "an operator the field does not take": 'text = "design"',
    "a range on a non-date field": 'label > "a"',
    "an unsupported function": 'created > now("-4w")',
    "currentUser() on a non-user field": "label = currentUser()",
    "an id that is not a number": 'ancestor = "abc"',
    "a date in no documented layout": 'created > "01/02/2026"',
    "ordering by an unorderable field": "type = page order by label",
}
SYNTAX_ERRORS = {
    "dangling and": "type = page and",
    "unterminated string": 'title = "unterminated',
    "missing operator": "type page",
    "unclosed parenthesis": "(type = page",
    "stray parenthesis": "type = page)",
    "IN without a comma": "label in (a b)",
    "NOT without IN": "label not (a)",
    "IN without a list": "label in a",
    "ORDER without BY": "type = page order title",
    "ORDER BY alone": "order by title",
    "a lone bang": "type ! page",
    "a lone backslash-escaped quote": 'title = "a\\"',
}


@pytest.mark.parametrize("cql", list(UNSUPPORTED.values()) + list(SYNTAX_ERRORS.values()))
def test_cql_confluence_cannot_run_is_the_v1_400(site: Site, cql: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="local.confluence_emulator"):
        response = site.raw(cql)
    assert response.status_code == 400
    assert response.json() == {"statusCode": 400, "message": f"Could not parse cql : {cql}", "data": CQL_400_DATA}
    # The body does not say what was wrong (Confluence's does not); the emulator's log does.
    assert any("CQL refused" in r.getMessage() and cql in r.getMessage() for r in caplog.records)
    with pytest.raises(CqlError):
        parse_cql(cql)


def test_the_reasons_name_the_problem() -> None:
    cases = {
        'nosuchfield = "x"': "unknown CQL field 'nosuchfield'",
        'text = "x"': "operator '=' is not supported for the field 'text'",
        'created > now("-4w")': r"unsupported CQL function now\(\)",
        "type page": "expected an operator after 'type'",
        'title = "open': "could not parse CQL at character 8",
    }
    for cql, reason in cases.items():
        with pytest.raises(CqlError, match=reason):
            parse_cql(cql)


def test_a_job_using_an_unknown_field_fails_for_good_with_the_message(site: Site) -> None:
    """What a job sees: a permanent ConfluenceError carrying Confluence's message (not a retry)."""
    with pytest.raises(ConfluenceError) as caught:
        site.found(field_eq("favourite", ALICE))
    assert caught.value.status == 400
    assert caught.value.message == f'Could not parse cql : favourite = "{ALICE}"'


def test_the_400_request_and_a_200_answer_match_the_contract(site: Site) -> None:
    assert check_exchange(site.raw('nosuchfield = "x"')) == "v1"
    response = requests.get(
        site.confluence.api_base_url + "/wiki/rest/api/content/search",
        params={"cql": str(field_eq("label", "design")), "expand": "space,version,body.storage"},
        headers={"Authorization": f"Bearer {site.token()}"},
        timeout=10,
    )
    assert check_exchange(response) == "v1"
    assert [r["version"]["by"]["accountId"] for r in response.json()["results"]] == [BOB, BOB]  # A, B


# -- the page model and its seeding API


def test_defaults_keep_existing_callers_and_shapes(site: Site) -> None:
    confluence = site.confluence
    page = confluence.add_page("ENG", "Plain")
    assert page["labels"] == ()
    assert page["parentId"] == site.homepage["ENG"]
    assert (page["creator"], page["lastModifier"], page["contributors"]) == (AUTHOR_ID, AUTHOR_ID, (AUTHOR_ID,))
    assert page["created"] == page["lastModified"]
    response = requests.get(
        f"{confluence.api_base_url}/wiki/api/v2/pages/{page['id']}",
        headers={"Authorization": f"Bearer {site.token()}"},
        timeout=10,
    )
    check_exchange(response)
    body = response.json()
    assert (body["parentId"], body["authorId"], body["version"]["authorId"]) == (
        str(site.homepage["ENG"]),
        AUTHOR_ID,
        AUTHOR_ID,
    )


def test_edits_make_contributors_and_set_the_version_author(site: Site) -> None:
    confluence = site.confluence
    confluence.add_user(CAROL, "Carol")
    updated = confluence.update_page(site.ids["B"], by=CAROL, labels=["Reviewed"], body="<p>Reviewed</p>")
    assert updated["contributors"] == (BOB, CAROL)
    assert updated["labels"] == ("reviewed",)
    assert site.found(field_eq("contributor", CAROL)) == ["B", "D", "E"]
    assert site.found(field_eq("label", "design")) == ["A"]  # B's labels were replaced
    assert site.found(contains("text", "reviewed")) == ["B"]
    page = site.client().get_page(site.ids["B"])
    assert (page["authorId"], page["version"]["authorId"], page["version"]["number"]) == (BOB, CAROL, 2)
    [result] = site.client().search_content(id_eq(site.ids["B"]), expand=["version"])
    assert result["version"]["by"] == {
        "type": "known",
        "accountId": CAROL,
        "accountType": "atlassian",
        "displayName": "Carol",
    }


def test_seeding_refuses_what_confluence_cannot_hold(site: Site) -> None:
    with pytest.raises(KeyError, match="no page"):
        site.confluence.add_page("OPS", "Orphan", parent_id=site.ids["A"])  # A is in ENG
    with pytest.raises(TypeError, match="labels"):
        site.confluence.add_page("ENG", "One label", labels="audit")
    with pytest.raises(KeyError):
        site.confluence.restrict_space("NOPE", [ALICE])


# -- users: restricted spaces and user/current


@pytest.fixture
def restricted(site: Site) -> Site:
    """OPS (pages E and F) is visible to ALICE only (and to the app); CAROL administers the site."""
    site.confluence.restrict_space("OPS", [ALICE])
    site.confluence.set_admins([CAROL])
    return site


def _get(site: Site, path: str, subject: str, **params: str) -> requests.Response:
    return requests.get(
        site.confluence.api_base_url + path,
        params=params,
        headers={"Authorization": f"Bearer {site.token(subject)}", "Accept": "application/json"},
        timeout=10,
    )


@pytest.mark.parametrize(("subject", "sees_ops"), [(BOB, False), (CAROL, False), (ALICE, True), ("app", True)])
def test_a_restricted_space_is_searched_only_by_who_may_see_it(restricted: Site, subject: str, sees_ops: bool) -> None:
    expected = ALL if sees_ops else ["A", "B", "C", "D"]
    assert restricted.found(field_eq("type", "page"), subject=subject) == expected
    assert restricted.found(id_eq(restricted.ids["E"]), subject=subject) == (["E"] if sees_ops else [])
    assert restricted.found(field_eq("space", "OPS"), subject=subject) == (["E", "F"] if sees_ops else [])


@pytest.mark.parametrize(("subject", "sees_ops"), [(BOB, False), (CAROL, False), (ALICE, True), ("app", True)])
def test_a_restricted_page_read_is_a_404_for_who_may_not_see_it(restricted: Site, subject: str, sees_ops: bool) -> None:
    response = _get(restricted, f"/wiki/api/v2/pages/{restricted.ids['E']}", subject)
    if sees_ops:
        assert response.status_code == 200
        check_exchange(response)
        assert restricted.client(subject).get_page(restricted.ids["E"])["title"] == "Runbook"
    else:
        # The same answer as for a page that does not exist (v2 OpenAPI: 404 for both).
        assert response.status_code == 404
        assert response.json() == {
            "errors": [{"status": 404, "code": "NOT_FOUND", "title": "Not Found", "detail": None}]
        }
        with pytest.raises(NotFound):
            restricted.client(subject).get_page(restricted.ids["E"])
    assert _get(restricted, f"/wiki/api/v2/pages/{restricted.ids['A']}", subject).status_code == 200


@pytest.mark.parametrize(("subject", "sees_ops"), [(BOB, False), (ALICE, True), ("app", True)])
def test_space_listings_leave_out_a_restricted_space(restricted: Site, subject: str, sees_ops: bool) -> None:
    keys = [s["key"] for s in restricted.client(subject).spaces_by_keys(["ENG", "OPS"])]
    assert keys == (["ENG", "OPS"] if sees_ops else ["ENG"])
    response = _get(restricted, "/wiki/api/v2/spaces", subject)
    check_exchange(response)
    assert [s["key"] for s in response.json()["results"]] == keys


def test_lifting_a_restriction_shows_the_space_again(restricted: Site) -> None:
    assert restricted.found(field_eq("space", "OPS"), subject=BOB) == []
    restricted.confluence.restrict_space("OPS", None)
    assert restricted.found(field_eq("space", "OPS"), subject=BOB) == ["E", "F"]
    restricted.confluence.restrict_space("OPS", [])  # nobody but the app
    assert restricted.found(field_eq("space", "OPS"), subject=ALICE) == []
    assert restricted.found(field_eq("space", "OPS")) == ["E", "F"]


USE = {"operation": "use", "targetType": "application"}
CREATE_SPACE = {"operation": "create_space", "targetType": "application"}
ADMINISTER = {"operation": "administer", "targetType": "application"}


@pytest.mark.parametrize(
    ("subject", "account_type", "operations"),
    [
        (CAROL, "atlassian", [ADMINISTER, USE, CREATE_SPACE]),
        (BOB, "atlassian", [USE, CREATE_SPACE]),
        ("app", "app", [USE]),
    ],
    ids=["admin", "user", "app"],
)
def test_current_user_matches_the_contract(
    restricted: Site, subject: str, account_type: str, operations: list[dict[str, str]]
) -> None:
    restricted.confluence.add_user(BOB, "Bob")
    plain = _get(restricted, "/wiki/rest/api/user/current", subject)
    assert check_exchange(plain) == "v1"
    user = plain.json()
    assert (user["type"], user["accountId"], user["accountType"]) == ("known", subject, account_type)
    assert user["displayName"]
    assert "operations" not in user
    assert "operations" in user["_expandable"]
    expanded = _get(restricted, "/wiki/rest/api/user/current", subject, expand="operations")
    assert check_exchange(expanded) == "v1"
    assert expanded.json()["operations"] == operations
    assert "operations" not in expanded.json()["_expandable"]
    assert restricted.client(subject).get_json("/rest/api/user/current", {"expand": "operations"}) == expanded.json()


def test_display_names_come_from_add_user(restricted: Site) -> None:
    restricted.confluence.add_user(BOB, "Bob")
    assert _get(restricted, "/wiki/rest/api/user/current", BOB).json()["displayName"] == "Bob"
    assert _get(restricted, "/wiki/rest/api/user/current", ALICE).json()["displayName"] == f"Emulated user {ALICE}"


def test_user_tokens_keep_the_token_rules(restricted: Site) -> None:
    """Expiry (on the stack clock) and revocation apply to user tokens exactly as to app tokens."""
    expired = restricted.forge.app_token(-60, subject=ALICE)
    assert _get_with(restricted, "/wiki/rest/api/user/current", expired).status_code == 401
    token = restricted.forge.app_token(subject=ALICE)
    assert _get_with(restricted, "/wiki/rest/api/user/current", token).status_code == 200
    restricted.confluence.revoke(token)
    assert _get_with(restricted, "/wiki/rest/api/user/current", token).status_code == 401


def test_an_opaque_token_a_custom_validator_accepts_is_the_app() -> None:
    with ConfluenceEmulator(token_validator=lambda t: t == "opaque-ok") as confluence:
        confluence.add_space("OPS", "Ops")
        confluence.restrict_space("OPS", [ALICE])
        confluence.add_page("OPS", "Runbook")
        response = requests.get(
            confluence.api_base_url + "/wiki/rest/api/user/current",
            headers={"Authorization": "Bearer opaque-ok"},
            timeout=10,
        )
        assert (response.json()["accountId"], response.json()["accountType"]) == ("app", "app")
        search = requests.get(
            confluence.api_base_url + "/wiki/rest/api/content/search",
            params={"cql": "type = page"},
            headers={"Authorization": "Bearer opaque-ok"},
            timeout=10,
        )
        assert len(search.json()["results"]) == 1


def _get_with(site: Site, path: str, token: str) -> requests.Response:
    return requests.get(site.confluence.api_base_url + path, headers={"Authorization": f"Bearer {token}"}, timeout=10)
