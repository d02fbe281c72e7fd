"""Regressions for three defects an outside review found in the Confluence client.

3. A ``_links.next`` with dot segments (``..``, ``%2e%2e``, ``%2E.``...) passed the "stays under the
   apiBaseUrl" check as text; requests/urllib3 then normalised the path and the token went to another
   cloud id or another API on the same host. Checked on the wire: a loopback server records each
   request target exactly as it arrived, so "nothing else was sent" and "what was sent is what was
   validated" are observed, not inferred.
4. A cursor cycle (A -> B -> A) was followed until the Lambda timed out and the whole batch came back.
10. Error text was cut to 300 characters before the token was redacted, so the tail of a real-size
   token survived into exceptions, DLQ reasons and logs.

Every token here is the Forge emulator's RS256 app token (about 500 characters), registered with the
ledger, so the suite's final secrecy scan covers whatever these tests made the code say.
"""

from __future__ import annotations

import html
import inspect
import json
import logging
import re
import uuid
from collections.abc import Callable, Iterator
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

import pytest
import requests
from requests.adapters import BaseAdapter

from forge_remote.confluence import client as confluence_module
from forge_remote.confluence.client import ConfluenceClient
from forge_remote.confluence.cql import field_eq
from forge_remote.errors import ConfluenceError, ConfluenceUnavailable, ForgeRemoteError, TokenRejected
from forge_remote.jobs.contract import JobRequest
from local.forge_emulator import ForgeEmulator, Site, new_installation_id
from local.loopback import LoopbackServer
from local.stack import LocalStack
from tests.reliability.harness import account_jobs, queue_messages
from tests.reliability.ledger import Ledger
from tests.support import LocalWorld

pytestmark = pytest.mark.reliability

CLOUD = str(uuid.uuid4())  # the installation's cloud id on the wire server
OTHER = str(uuid.uuid4())  # another cloud id on the same host: the token must never go there
GUARD = 60  # the wire ends a runaway listing after this many requests (so today's code terminates)


# -- the wire: a loopback server that records request targets as they arrived ------------------------
class Wire:
    """Answers from ``answer(target)``; keeps every raw request target (path and query, undecoded)
    and the bearer token that came with it."""

    def __init__(self) -> None:
        self.targets: list[str] = []
        self.tokens: list[str] = []
        self.answer: Callable[[str], tuple[int, str, str]] = lambda target: (200, "application/json", "{}")
        self.session = requests.Session()
        self._server = LoopbackServer(self._wsgi)

    def _wsgi(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        target = environ["RAW_URI"]
        self.targets.append(target)
        self.tokens.append(environ.get("HTTP_AUTHORIZATION", "").removeprefix("Bearer "))
        status, content_type, body = self.answer(target)
        start_response(f"{status} {HTTPStatus(status).phrase}", [("Content-Type", content_type)])
        return [body.encode()]

    def start(self) -> None:
        self._server.start()

    def stop(self) -> None:
        self.session.close()
        self._server.stop()

    def reset(self, answer: Callable[[str], tuple[int, str, str]]) -> None:
        self.targets.clear()
        self.tokens.clear()
        self.answer = answer

    @property
    def origin(self) -> str:
        return self._server.url

    @property
    def base(self) -> str:
        return f"{self.origin}/ex/confluence/{CLOUD}"

    def client(self, token: str, **kwargs: Any) -> ConfluenceClient:
        kwargs.setdefault("sleep", lambda s: None)
        return ConfluenceClient(
            self.base, lambda: token, allowed_hosts=[self.origin.split("/")[2]], session=self.session, **kwargs
        )


@pytest.fixture(scope="module")
def wire() -> Iterator[Wire]:
    server = Wire()
    server.start()
    yield server
    server.stop()


def json_answer(document: Any, status: int = 200) -> tuple[int, str, str]:
    return status, "application/json", json.dumps(document)


@pytest.fixture
def token(forge: ForgeEmulator, ledger: Ledger) -> str:
    """A Forge app token of real size (RS256), registered for the suite's secrecy scan."""
    token = ledger.secret(forge.app_token())
    assert len(token) > 450, "the secrecy checks need real-size tokens"
    return token


def decoded_views(text: str) -> list[str]:
    """``text`` and what it reads as once percent, JSON and HTML escapes are undone."""
    views = [text]
    unescaped = re.sub(r"\\u([0-9A-Fa-f]{4})", lambda m: chr(int(m.group(1), 16)), text).replace("\\/", "/")
    views.append(unescaped)
    views.append(unquote(unescaped))
    views.append(html.unescape(views[-1]))
    return views


def leaked(text: str, token: str) -> bool:
    """The ledger's own definition (any 39-character run of the token's payload or signature), also
    applied to the decoded views of ``text``."""
    probe = Ledger()
    probe.secret(token)
    for view in decoded_views(text):
        probe.seen(view)
    return bool(probe.leaks())


def said(error: BaseException) -> str:
    """Everything an exception could show: str, repr, attributes, and its chain."""
    chain = [error, error.__cause__, error.__context__]
    return "\n".join(f"{e!s} {e!r} {vars(e)!r}" for e in chain if e is not None)


# == 3. next links that normalise off the site ======================================================
# {base}: the apiBaseUrl; {origin}: its scheme and host; {host}: host:port; {cloud}: its cloud id;
# {other}: another cloud id.
OFF_SITE = {
    "v1 relative ..": "/rest/api/../../../../{other}/wiki/rest/api/content/search?cursor=x",
    "v1 relative .. to jira": "/rest/api/../../../../../../ex/jira/{other}/rest/api/3/search?cursor=x",
    "v1 relative %2e%2e": "/rest/api/%2e%2e/%2e%2e/%2e%2e/%2e%2e/{other}/wiki/rest/api/content/search",
    "v1 relative %2E%2e": "/rest/api/%2E%2e/%2e%2E/%2E%2E/%2e%2e/{other}/wiki/rest/api/content/search",
    "v1 relative %2e. and .%2E": "/rest/api/%2e./.%2E/%2E./.%2e/{other}/wiki/rest/api/content/search",
    "v1 relative ./ then ..": "/rest/./api/./../../../../{other}/wiki/rest/api/content/search",
    "v1 relative .. ending the path": "/rest/../../../..?cursor=x",
    "v2 relative ..": "/wiki/../../{other}/wiki/api/v2/spaces?cursor=x",
    "v2 relative .. to jira": "/wiki/../../../../ex/jira/{other}/rest/api/3/search",
    "v2 relative %2E%2E": "/wiki/%2E%2E/%2E%2E/{other}/wiki/api/v2/pages?cursor=x",
    "v2 relative mixed %2e.": "/wiki/%2e./.%2e/{other}/wiki/api/v2/pages",
    "absolute same host ..": "{base}/wiki/../../{other}/wiki/api/v2/spaces?cursor=x",
    "absolute same host %2e%2e": "{base}/wiki/%2e%2e/%2e%2e/{other}/wiki/api/v2/spaces",
    "absolute same host %2E. to jira": "{base}/wiki/%2E./%2E./%2E./%2E./ex/jira/{other}/rest/api/3/search",
    "absolute same host, upper-case scheme ..": "HTTP://{host}/ex/confluence/{cloud}/wiki/../../{other}/wiki/x",
    "encoded slash %2f": "/rest/api/..%2f..%2f..%2f..%2f{other}%2fwiki%2fx",
    "encoded slash %2F absolute": "{base}/wiki/..%2F..%2F{other}/wiki/x",
    "backslash": "/rest/api/..\\..\\..\\..\\{other}\\wiki\\x",
    "encoded backslash %5c": "/rest/api/..%5c..%5c..%5c..%5c{other}%5cwiki%5cx",
    "double-encoded %252e%252e": "/rest/api/%252e%252e/%252e%252e/%252e%252e/%252e%252e/{other}/wiki/x",
    "fullwidth solidus in the path": "/wiki/api\uff0f..\uff0f..\uff0f{other}/x",
    "tab inside a dot segment": "/rest/api/.\t./.\t./.\t./.\t./{other}/wiki/x",
    "urlsplit ValueError: unbalanced [": "//[{host}/ex/confluence/{other}/wiki/x",
    "urlsplit ValueError: http://[::1": "http://[::1/ex/confluence/{other}/wiki/x",
    "urlsplit ValueError: fullwidth @": "http://{host}\uff20evil.example/ex/confluence/{other}/wiki/x",
    "urlsplit ValueError: fullwidth /": "//evil.example\uff0f..\uff0f{other}/wiki/x",
}
# Refused today already (kept as controls: the fix must not open them).
STILL_REFUSED = {
    "different host": "https://evil.example/ex/confluence/{cloud}/wiki/rest/api/content/search",
    "scheme-relative //evil/..": "//evil.example/../ex/confluence/{cloud}/wiki/x",
    "scheme-relative same host ..": "//{host}/ex/confluence/{cloud}/wiki/../../{other}/wiki/x",
    "userinfo on the same host": "http://user:pw@{host}/ex/confluence/{cloud}/wiki/api/v2/spaces",
    "userinfo pointing elsewhere": "http://{host}@evil.example/ex/confluence/{cloud}/wiki/x",
    "https instead of http": "https://{host}/ex/confluence/{cloud}/wiki/api/v2/spaces",
    "another port": "http://127.0.0.1:1/ex/confluence/{cloud}/wiki/api/v2/spaces",
    "query only": "?cursor=x&next=/../../{other}",
    "relative without /": "rest/api/content/search?cursor=x",
    "dot relative": "../{other}/wiki/x",
}
# Followed, and the wire sees exactly the validated target. {path}: the apiBaseUrl's path.
ON_SITE = {
    "v1 relative": ("/rest/api/content/search?cursor=2", "{path}/wiki/rest/api/content/search?cursor=2"),
    "v2 relative": ("/wiki/api/v2/spaces?cursor=2", "{path}/wiki/api/v2/spaces?cursor=2"),
    "absolute": ("{base}/wiki/api/v2/spaces?cursor=2", "{path}/wiki/api/v2/spaces?cursor=2"),
    "absolute, upper-case scheme": (
        "HTTP://{host}/ex/confluence/{cloud}/wiki/api/v2/spaces?cursor=2",
        "{path}/wiki/api/v2/spaces?cursor=2",
    ),
    "dot segments that stay inside": (
        "/rest/api/content/./../content/search?cursor=2",
        "{path}/wiki/rest/api/content/search?cursor=2",
    ),
    "%2e%2e that stays inside": ("/wiki/api/v2/x/%2E%2e/spaces?cursor=2", "{path}/wiki/api/v2/spaces?cursor=2"),
    "an unreserved escape": ("/rest/api/%63ontent/search?cursor=2", "{path}/wiki/rest/api/content/search?cursor=2"),
    "dot segments and %2f in the query only": (
        "/wiki/api/v2/spaces?cursor=a%2Fb&next=/../../x/%2e%2e",
        "{path}/wiki/api/v2/spaces?cursor=a%2Fb&next=/../../x/..",  # requests decodes %2e; a query has no segments
    ),
}


def fill(template: str, wire: Wire) -> str:
    return template.format(
        base=wire.base,
        origin=wire.origin,
        host=wire.origin.split("/")[2],
        cloud=CLOUD,
        other=OTHER,
        path=f"/ex/confluence/{CLOUD}",
    )


def first_page_then(wire: Wire, link: str) -> None:
    """The listing's first page links to ``link``; anything requested after it answers one result."""

    def answer(target: str) -> tuple[int, str, str]:
        if len(wire.targets) == 1:
            return json_answer({"results": [{"id": "1"}], "_links": {"next": link}})
        return json_answer({"results": [{"id": "followed"}], "_links": {}})

    wire.reset(answer)


def refused_link(wire: Wire, token: str, link: str, match: str, ledger: Ledger) -> ConfluenceError:
    """A listing whose first page links to ``link``: the client must refuse to follow it (``match``)."""
    first_page_then(wire, fill(link, wire))
    stream = wire.client(token).search_content(field_eq("type", "page"))
    assert next(stream) == {"id": "1"}
    with pytest.raises(ConfluenceError, match=match) as caught:
        next(stream)
    ledger.seen(said(caught.value), "exception")
    return caught.value


@pytest.mark.parametrize("name", list(OFF_SITE))
def test_a_next_link_that_normalises_off_the_site_is_refused_before_any_request(
    name: str, wire: Wire, token: str, ledger: Ledger
) -> None:
    refused = refused_link(wire, token, OFF_SITE[name], "next link leaves the site", ledger)
    assert refused.status < 500  # permanent: the worker dead-letters it with this reason
    assert len(wire.targets) == 1, f"a request followed the link: {wire.targets[1:]}"
    assert not any(OTHER in t or "/jira/" in t for t in wire.targets)
    assert not leaked(said(refused), token)
    ledger.refused(1)


@pytest.mark.parametrize("name", list(STILL_REFUSED))
def test_next_links_refused_before_the_fix_stay_refused(name: str, wire: Wire, token: str, ledger: Ledger) -> None:
    refused_link(wire, token, STILL_REFUSED[name], "next link", ledger)
    assert len(wire.targets) == 1
    ledger.refused(1)


@pytest.mark.parametrize("name", list(ON_SITE))
def test_a_next_link_on_the_site_is_followed_exactly_as_validated(
    name: str, wire: Wire, token: str, ledger: Ledger
) -> None:
    link, expected = (fill(t, wire) for t in ON_SITE[name])
    first_page_then(wire, link)
    client = wire.client(token)
    assert [r["id"] for r in client.search_content(field_eq("type", "page"))] == ["1", "followed"]
    assert wire.targets[1] == expected  # as it arrived on the wire: no dot segment, no escape left to read
    assert wire.tokens == [token, token]
    # The URL the client validated is the one requests sent (nothing normalised it further).
    validated = urlsplit(confluence_module.resolve_next_link(link, wire.base))
    assert f"{validated.path}?{validated.query}" == expected
    ledger.tried += 1


# == 4. cursor cycles and endless listings =========================================================
def cursor_of(target: str) -> str | None:
    values = parse_qs(urlsplit(target).query).get("cursor")
    return values[0] if values else None


def scripted_listing(wire: Wire, links: dict[str | None, str]) -> None:
    """Each page's next link by its cursor (None: the first page). Past GUARD requests the listing ends,
    so a client that does not notice a cycle terminates (and the test sees how far it went)."""

    def answer(target: str) -> tuple[int, str, str]:
        link = links.get(cursor_of(target)) if len(wire.targets) < GUARD else None
        return json_answer({"results": [{"id": str(len(wire.targets))}], "_links": {"next": link} if link else {}})

    wire.reset(answer)


FIRST_PAGE_V1 = "/rest/api/content/search?cql=type+%3D+%22page%22&limit=50"  # what requests makes of the first
CYCLES: dict[str, tuple[dict[str | None, str], int]] = {
    # links by cursor, and how many distinct pages there are before the cycle closes
    "A -> B -> A (v1 relative)": (
        {
            None: "/rest/api/content/search?cursor=A",
            "A": "/rest/api/content/search?cursor=B",
            "B": "/rest/api/content/search?cursor=A",
        },
        3,
    ),
    "A -> B -> C -> B (v2 relative)": (
        {
            None: "/wiki/api/v2/spaces?cursor=A",
            "A": "/wiki/api/v2/spaces?cursor=B",
            "B": "/wiki/api/v2/spaces?cursor=C",
            "C": "/wiki/api/v2/spaces?cursor=B",
        },
        4,
    ),
    "back to the first page": ({None: "/rest/api/content/search?cursor=A", "A": FIRST_PAGE_V1}, 2),
    "absolute links, A -> B -> A": (
        {
            None: "{base}/wiki/rest/api/content/search?cursor=A",
            "A": "{base}/wiki/rest/api/content/search?cursor=B",
            "B": "{base}/wiki/rest/api/content/search?cursor=A",
        },
        3,
    ),
    "A -> B -> A spelled %41 and via ..": (
        {
            None: "/rest/api/content/search?cursor=A",
            "A": "/rest/api/content/search?cursor=B",
            "B": "/rest/api/x/../content/search?cursor=%41",
        },
        3,
    ),
    "relative and absolute spellings of one page": (
        {
            None: "/rest/api/content/search?cursor=A",
            "A": "/wiki/rest/api/content/search?cursor=B",
            "B": "{base}/wiki/rest/api/content/search?cursor=A",
        },
        3,
    ),
}


@pytest.mark.parametrize("name", list(CYCLES))
def test_a_cursor_cycle_fails_the_listing_with_a_clear_reason(
    name: str, wire: Wire, token: str, ledger: Ledger
) -> None:
    links, distinct = CYCLES[name]
    scripted_listing(wire, {cursor: fill(link, wire) for cursor, link in links.items()})
    with pytest.raises(ConfluenceError, match="pagination cycle") as caught:
        list(wire.client(token).search_content(field_eq("type", "page")))
    assert caught.value.status < 500  # permanent: dead-lettered, not redelivered with the batch
    assert len(wire.targets) == distinct, f"{len(wire.targets)} requests for {distinct} distinct pages"
    ledger.seen(said(caught.value), "exception")
    ledger.refused(1)


def test_an_endless_listing_stops_at_the_page_cap(wire: Wire, token: str, ledger: Ledger) -> None:

    def answer(target: str) -> tuple[int, str, str]:
        fresh = len(wire.targets)  # a new cursor every time: the visited set never sees a repeat
        link = f"/wiki/api/v2/spaces?cursor=c{fresh}" if fresh < GUARD else None
        return json_answer({"results": [{"id": str(fresh)}], "_links": {"next": link} if link else {}})

    wire.reset(answer)
    client = wire.client(token, max_pages_per_listing=7)
    with pytest.raises(ConfluenceError, match="more than 7 pages") as caught:
        list(client.spaces_by_keys(["ENG"]))
    assert caught.value.status < 500
    assert len(wire.targets) == 7
    # A listing of exactly the cap is fine; the default cap is 10,000 pages.
    wire.reset(lambda target: json_answer({"results": [{"id": "x"}], "_links": {}}))
    assert len(list(wire.client(token, max_pages_per_listing=1).spaces_by_keys(["ENG"]))) == 1
    assert confluence_module.MAX_PAGES_PER_LISTING == 10_000
    default = inspect.signature(ConfluenceClient).parameters["max_pages_per_listing"].default
    assert default == confluence_module.MAX_PAGES_PER_LISTING
    with pytest.raises(ValueError, match="max_pages_per_listing"):
        wire.client(token, max_pages_per_listing=0)
    ledger.refused(2)
    ledger.tried += 1


# -- through the worker: a batch where some listings misbehave ---------------------------------------
class Scripted(BaseAdapter):
    """A transport double for one site's prefix: ``answer(prepared request)`` -> (status, JSON body).
    Everything above it (session, preparation of the URL, the client) is the real code."""

    def __init__(self, answer: Callable[[requests.PreparedRequest, Scripted], tuple[int, Any]]) -> None:
        super().__init__()
        self.answer = answer
        self.urls: list[str] = []

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> requests.Response:
        self.urls.append(str(request.url))
        status, body = self.answer(request, self)
        response = requests.Response()
        response.status_code, response.reason = status, HTTPStatus(status).phrase
        response._content = (body if isinstance(body, str) else json.dumps(body)).encode()
        response.headers["Content-Type"] = "application/json" if not isinstance(body, str) else "text/plain"
        response.url, response.request, response.encoding = str(request.url), request, "utf-8"
        return response

    def close(self) -> None:
        pass


def other_site(world: LocalWorld, ledger: Ledger) -> tuple[Site, str]:
    """An installation on the emulator's host but another cloud id (its requests are scripted), installed:
    the site and its app token (registered as a secret)."""
    cloud_id = str(uuid.uuid4())
    site = Site(
        installation_id=new_installation_id(),
        cloud_id=cloud_id,
        api_base_url=f"{world.confluence.api_base_url.rsplit('/', 3)[0]}/ex/confluence/{cloud_id}",
        site_url=f"https://site-{cloud_id[:8]}.atlassian.net",
    )
    return site, ledger.secret(world.install(site))


def dead_letters(stack: LocalStack) -> dict[str, str]:
    """Request id -> DLQ reason."""
    found = {}
    for message in queue_messages(stack, "JobsDeadLetterQueue"):
        request = JobRequest.from_message_body(message["body"])
        found[request.request_id] = message["attributes"]["reason"]["StringValue"]
    return found


def script_sites(world: LocalWorld, *adapters: tuple[Site, Scripted], **options: Any) -> None:
    """The worker's clients share one session in which each site's requests go to its adapter."""
    session = requests.Session()
    for site, adapter in adapters:
        session.mount(site.api_base_url + "/", adapter)

    def factory(api_base_url: str, token: Callable[[], str], **kwargs: Any) -> ConfluenceClient:
        return ConfluenceClient(api_base_url, token, session=session, sleep=lambda s: None, **kwargs, **options)

    world.worker.runner.client_factory = factory


def cycling(request: requests.PreparedRequest, adapter: Scripted) -> tuple[int, Any]:
    cursor = cursor_of(str(request.url))
    following = {None: "A", "A": "B", "B": "A"}[cursor] if len(adapter.urls) < GUARD else None
    links = {"next": f"/rest/api/content/search?cursor={following}"} if following else {}
    return 200, {"results": [], "_links": links}


def test_a_batch_with_a_cycling_and_an_off_site_listing_dead_letters_only_those(
    local_world: LocalWorld, ledger: Ledger
) -> None:
    good_token = ledger.secret(local_world.install())
    good = local_world.pages(3)
    (cycle_site, _), (off_site, off_site_token) = other_site(local_world, ledger), other_site(local_world, ledger)
    # The off-site listing's next link climbs out of its own cloud id into the emulator's (another
    # installation's data, same host): today's code sent the token there.
    escape = f"/wiki/../../{local_world.site.cloud_id}/wiki/rest/api/content/search?cql=type+%3D+page"
    cycle, leaving = Scripted(cycling), Scripted(lambda r, a: (200, {"results": [], "_links": {"next": escape}}))
    script_sites(local_world, (cycle_site, cycle), (off_site, leaving))
    bad = [local_world.snapshot_request("7", cycle_site), local_world.snapshot_request("8", off_site)]
    local_world.enqueue(good[0], bad[0], good[1], bad[1], good[2])

    event, response = local_world.run_worker()
    assert len(event["Records"]) == 5
    assert response["batchItemFailures"] == []  # nothing comes back with the batch
    assert sorted(local_world.snapshot_request_ids()) == sorted(r.request_id for r in good)
    reasons = dead_letters(local_world.stack)
    assert set(reasons) == {r.request_id for r in bad}
    assert "pagination cycle" in reasons[bad[0].request_id]
    assert "next link leaves the site" in reasons[bad[1].request_id]
    assert len(cycle.urls) == 3  # first page, A, B: then B's link back to A is refused
    assert len(leaving.urls) == 1
    assert off_site_token not in local_world.bearer_tokens_seen()
    assert set(local_world.bearer_tokens_seen()) == {good_token}
    assert queue_messages(local_world.stack, "JobsQueue") == []
    for reason in reasons.values():
        assert not leaked(reason, off_site_token)
    result = account_jobs(local_world.stack, good + bad, set(local_world.snapshot_request_ids()))
    assert (len(result["done"]), len(result["dead"]), result["lost"]) == (3, 2, [])
    ledger.refused(len(bad))
    ledger.tried += len(good)


def test_a_batch_with_an_endless_listing_dead_letters_it_at_the_page_cap(
    local_world: LocalWorld, ledger: Ledger
) -> None:
    ledger.secret(local_world.install())
    good = local_world.pages(2)
    endless_site, _ = other_site(local_world, ledger)

    def endless(request: requests.PreparedRequest, adapter: Scripted) -> tuple[int, Any]:
        fresh = len(adapter.urls)
        links = {"next": f"/rest/api/content/search?cursor=c{fresh}"} if fresh < GUARD else {}
        return 200, {"results": [], "_links": links}

    adapter = Scripted(endless)
    script_sites(local_world, (endless_site, adapter), max_pages_per_listing=25)
    bad = local_world.snapshot_request("9", endless_site)
    local_world.enqueue(good[0], bad, good[1])

    _, response = local_world.run_worker()
    assert response["batchItemFailures"] == []
    assert len(adapter.urls) == 25
    assert "more than 25 pages" in dead_letters(local_world.stack)[bad.request_id]
    result = account_jobs(local_world.stack, [*good, bad], set(local_world.snapshot_request_ids()))
    assert (len(result["done"]), result["dead"], result["lost"]) == (2, [bad.request_id], [])
    ledger.refused(1)
    ledger.tried += len(good)


# == 10. error text echoing a real-size token =======================================================
def echo_shapes(token: str, offset: int, status: int) -> dict[str, tuple[str, str]]:
    """Error bodies echoing ``token`` after ``offset`` characters of other text: (content type, body)."""
    prefix = ("Could not parse cql : space = ENG and " * 200)[:offset]
    text = prefix + token
    escaped = "".join(f"\\u{ord(c):04x}" if i % 25 == 0 else c for i, c in enumerate(token))
    wrapped = "\n".join(token[i : i + 64] for i in range(0, len(token), 64))
    return {
        "v1 message": ("application/json", json.dumps({"statusCode": status, "message": text, "data": {}})),
        "v2 title": ("application/json", json.dumps({"errors": [{"status": status, "code": "X", "title": text}]})),
        "v2 detail": (
            "application/json",
            json.dumps({"errors": [{"status": status, "code": "X", "title": "Bad request", "detail": text}]}),
        ),
        "gateway": ("application/json", json.dumps({"code": status, "message": text})),
        "plain text": ("text/plain", text),
        "html": ("text/html", f"<html><body><p>{text}</p></body></html>"),
        "wrapped over lines": ("text/plain", prefix + wrapped),
        "JSON escapes inside the string": (
            "application/json",
            '{"message": "%s%s"}' % (prefix, escaped),  # noqa: UP031 (the escapes are the point)
        ),
        "JSON escapes in plain text": ("text/plain", prefix + escaped),
        "percent-encoded": ("text/plain", prefix + quote(token, safe="")),
        "percent-encoded every character": ("text/plain", prefix + "".join(f"%{ord(c):02X}" for c in token)),
        "v2 code only": (
            "application/json",
            json.dumps({"errors": [{"status": status, "code": text}]}),
        ),
    }


OFFSETS = (0, 150, 262, 299, 320, 5000)  # start, middle, straddling the 300-character cut, past it
STATUSES = (400, 401, 403, 404, 500)


def test_error_bodies_echoing_a_real_size_token_leave_no_piece_of_it(wire: Wire, token: str, ledger: Ledger) -> None:
    failures, cases = [], 0
    for status in STATUSES:
        for offset in OFFSETS:
            for shape, (content_type, body) in echo_shapes(token, offset, status).items():

                def answer(
                    target: str, status: int = status, content_type: str = content_type, body: str = body
                ) -> tuple[int, str, str]:
                    if "/api/v2/spaces" in target:  # the 403/404 probe: the token is fine
                        return json_answer({"results": []})
                    return status, content_type, body

                wire.reset(answer)
                with pytest.raises(ForgeRemoteError) as caught:
                    wire.client(token, max_attempts=2).get_page(1)
                text = said(caught.value)
                ledger.seen(text, "exception")
                cases += 1
                expected = {401: TokenRejected, 500: ConfluenceUnavailable}.get(status, ConfluenceError)
                if not isinstance(caught.value, expected) or leaked(text, token):
                    failures.append(f"HTTP {status}, {shape}, token at {offset}: {type(caught.value).__name__}")
    assert failures == [], f"{len(failures)} of {cases} cases leaked a piece of the token:\n" + "\n".join(failures)
    ledger.refused(cases)


def test_a_message_is_redacted_then_cut_and_keeps_its_text(wire: Wire, token: str, ledger: Ledger) -> None:
    body = {"statusCode": 400, "message": "Could not parse cql : " + token + " near " + "x" * 400, "data": {}}
    wire.reset(lambda target: json_answer(body, 400))
    with pytest.raises(ConfluenceError) as caught:
        wire.client(token).get_page(1)
    message = caught.value.message
    assert message.startswith("Could not parse cql : [redacted] near xxx")
    assert len(message) == 300  # cut after redaction: the rest of the text survives, the token does not
    ledger.seen(said(caught.value), "exception")
    ledger.refused(1)


def echoing(request: requests.PreparedRequest, adapter: Scripted) -> tuple[int, Any]:
    """Echo the request's own token in an error body chosen by the page id in the CQL."""
    token = str(request.headers["Authorization"]).removeprefix("Bearer ")
    if urlsplit(str(request.url)).path.endswith("/api/v2/spaces"):
        return 200, {"results": []}  # the 403/404 probe: the token is fine
    cql = parse_qs(urlsplit(str(request.url)).query)["cql"][0]
    page_id = int(cql.rsplit("=", 1)[1])
    status, shape, offset = ECHO_JOBS[page_id]
    _, body = echo_shapes(token, offset, status)[shape]
    return status, json.loads(body) if body.startswith("{") else body


ECHO_JOBS = {  # page id -> (status, shape, offset)
    1: (400, "v1 message", 0),
    2: (400, "v2 detail", 150),
    3: (403, "v1 message", 262),
    4: (404, "v2 title", 0),
    5: (400, "gateway", 262),
    6: (400, "plain text", 100),
    7: (400, "percent-encoded every character", 0),
    8: (500, "gateway", 0),  # deferred after retries: the reason is logged, the message stays queued
}


class Tap(logging.Filter):
    """Keeps the records of a Powertools service logger (which does not propagate to caplog)."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def filter(self, record: logging.LogRecord) -> bool:
        self.records.append(record)
        return True


@pytest.fixture
def worker_logs(caplog: pytest.LogCaptureFixture) -> Iterator[Callable[[], str]]:
    """Everything logged during the test, the client's records and the worker's, as one text."""
    caplog.set_level(logging.DEBUG)
    tap, service = Tap(), logging.getLogger("confluence-worker")
    service.addFilter(tap)
    try:
        yield lambda: "\n".join(f"{r.getMessage()} {vars(r)!r}" for r in [*caplog.records, *tap.records])
    finally:
        service.removeFilter(tap)


def test_dlq_reasons_and_logs_of_echoing_errors_hold_no_piece_of_the_token(
    local_world: LocalWorld, ledger: Ledger, worker_logs: Callable[[], str]
) -> None:
    site, token = other_site(local_world, ledger)
    assert len(token) > 450
    script_sites(local_world, (site, Scripted(echoing)))
    jobs = {page_id: local_world.snapshot_request(page_id, site) for page_id in ECHO_JOBS}
    local_world.enqueue(*jobs.values())

    _, response = local_world.run_worker()
    assert len(response["batchItemFailures"]) == 1  # the 500: deferred
    reasons = dead_letters(local_world.stack)
    assert set(reasons) == {jobs[i].request_id for i, (status, _, _) in ECHO_JOBS.items() if status < 500}
    for page_id, (status, shape, offset) in ECHO_JOBS.items():
        reason = reasons.get(jobs[page_id].request_id, "")
        assert not leaked(reason, token), f"HTTP {status}, {shape}, token at {offset}: leaked into the DLQ reason"
    assert "[redacted]" in reasons[jobs[1].request_id]
    logged = worker_logs()
    assert "job deferred" in logged
    assert "job request sent to the DLQ" in logged
    assert "Confluence GET" in logged
    assert not leaked(logged, token)
    result = account_jobs(local_world.stack, list(jobs.values()), set())
    assert (len(result["dead"]), len(result["queued"]), result["lost"]) == (7, 1, [])
    ledger.refused(len(ECHO_JOBS))
