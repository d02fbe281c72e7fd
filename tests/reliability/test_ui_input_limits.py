"""Regression tests for the second review's defect 4, "malformed UI input is a 500", with variants.

Any UI user could crash forge_calls: ``days=²`` (``str.isdigit`` is true, ``int`` refuses it), a
5,000-digit ``limit`` (past ``int``'s 4,300-digit limit) and ``{"job": []}`` (a list tested for
membership in a set). Others were quietly misread: a fullwidth seven read as 7, an unknown parameter
or body field ignored, a duplicate JSON key resolved to the last, ``NaN`` passed on to the jobs queue,
a UTF-16 body guessed. Every UI route now validates its query and body against its ``@accepts``
before it runs (a route that declares nothing takes nothing), with a 400 JSON answer that names the
field and never echoes a token. Every case is a genuine UI call (a FIT Forge signed, the user's
token), so validation is what refuses it; each is compared with the state before it (nothing
written, nothing queued) and with what Confluence was asked (nothing, for a refused request).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from aws_lambda_powertools.event_handler.api_gateway import Router

from local.confluence_emulator import ConfluenceEmulator
from local.forge_emulator import ForgeEmulator
from tests.reliability.harness import UiSite, World, b64, event, invoke, ui_world
from tests.reliability.ledger import Ledger
from tests.support import body_of

pytestmark = pytest.mark.reliability

ADMIN = "557058:dddddddd-0000-4000-8000-000000000004"
DAYS_MESSAGE = "days must be a whole number from 1 to 90"
LIMIT_MESSAGE = "limit must be a whole number from 1 to 200"
JOB_MESSAGE = "job must be one of: page-snapshot, space-digest"


@pytest.fixture(scope="module")
def confluence() -> Iterator[ConfluenceEmulator]:
    with ConfluenceEmulator() as emulator:
        emulator.set_admins({ADMIN})
        emulator.add_space("ENG", "Engineering")
        emulator.add_page("ENG", "Roadmap")
        yield emulator


@pytest.fixture(scope="module")
def world(forge: ForgeEmulator, confluence: ConfluenceEmulator) -> Iterator[World]:
    with ui_world(forge, confluence) as opened:
        yield opened


@pytest.fixture(scope="module")
def admin(world: World, confluence: ConfluenceEmulator) -> UiSite:
    """A site administrator: a valid job request gets past validation and the admin check."""
    return UiSite.open(world, confluence, ADMIN)


def ui(
    admin: UiSite, method: str, path: str, *, query: str = "", body: Any = None, base64_body: bool = False
) -> dict[str, Any]:
    """One genuine UI call. ``body`` is sent as it is if a str, else as JSON."""
    raw = body if isinstance(body, str) or body is None else json.dumps(body)
    if raw is not None and base64_body:
        raw = b64(raw)
    return invoke(
        admin.world.calls, event(method, path, admin.headers(), raw=raw, base64_body=base64_body, query=query)
    )


def refused(
    admin: UiSite,
    confluence: ConfluenceEmulator,
    ledger: Ledger,
    method: str,
    path: str,
    *,
    query: str = "",
    body: Any = None,
    base64_body: bool = False,
    raw_event: dict[str, Any] | None = None,
) -> str:
    """Send, expect a 400 JSON answer with nothing written and Confluence not asked; its message."""
    before, asked = admin.world.state, len(confluence.requests_seen)
    if raw_event is None:
        response = ui(admin, method, path, query=query, body=body, base64_body=base64_body)
    else:
        response = invoke(admin.world.calls, raw_event)
    assert response["statusCode"] == 400, response
    answer = body_of(response)
    assert answer["error"] == "bad_request", answer
    assert isinstance(answer["message"], str), answer
    assert answer["message"], answer
    assert admin.world.state == before
    assert len(confluence.requests_seen) == asked
    ledger.refused()
    return str(answer["message"])


# -- the three examples ---------------------------------------------------------------------------------
def test_a_superscript_digit_is_a_400(admin: UiSite, confluence: ConfluenceEmulator, ledger: Ledger) -> None:
    message = refused(admin, confluence, ledger, "GET", "/api/pages/recent", query="days=%C2%B2")  # "²"
    assert message == DAYS_MESSAGE


def test_a_limit_of_5000_digits_is_a_400(admin: UiSite, confluence: ConfluenceEmulator, ledger: Ledger) -> None:
    message = refused(admin, confluence, ledger, "GET", "/api/pages/recent", query="limit=" + "9" * 5000)
    assert message == "query string longer than 2048 characters"
    # The same digits where no query-length bound applies (an event without rawQueryString).
    api_event = event("GET", "/api/pages/recent", admin.headers())
    api_event["queryStringParameters"] = {"limit": "9" * 1000}
    assert refused(admin, confluence, ledger, "GET", "", raw_event=api_event) == LIMIT_MESSAGE


def test_a_list_as_the_job_is_a_400_before_the_admin_check(
    admin: UiSite, confluence: ConfluenceEmulator, ledger: Ledger
) -> None:
    assert refused(admin, confluence, ledger, "POST", "/api/jobs", body={"job": []}) == JOB_MESSAGE


# -- query integers -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("days=%C2%B9", DAYS_MESSAGE),  # superscript one
        ("limit=%E2%81%B5", LIMIT_MESSAGE),  # superscript five
        ("days=%EF%BC%97", DAYS_MESSAGE),  # fullwidth seven: int() would read it as 7
        ("days=%D9%A3", DAYS_MESSAGE),  # Arabic-Indic three: the same
        ("limit=-1", LIMIT_MESSAGE),
        ("limit=%2B5", LIMIT_MESSAGE),  # "+5"
        ("limit=1e3", LIMIT_MESSAGE),
        ("limit=7.0", LIMIT_MESSAGE),
        ("days=0x10", DAYS_MESSAGE),
        ("days=%207", DAYS_MESSAGE),  # " 7"
        ("days=+7", DAYS_MESSAGE),  # "+" is a space in a query
        ("days=7%20", DAYS_MESSAGE),
        ("days=7%0A", DAYS_MESSAGE),  # a trailing newline
        ("days=1_0", DAYS_MESSAGE),  # int() reads it as 10
        ("days=true", DAYS_MESSAGE),  # a bool where an int is expected
        ("limit=false", LIMIT_MESSAGE),
        ("days=", DAYS_MESSAGE),  # empty: refused, not the default
        ("days", DAYS_MESSAGE),
        ("days=0", DAYS_MESSAGE),
        ("days=91", DAYS_MESSAGE),
        ("limit=201", LIMIT_MESSAGE),
        ("days=0000000007", DAYS_MESSAGE),  # ten digits: past the length bound, whatever their value
        ("limit=99999999999999999999", LIMIT_MESSAGE),
        ("days=%FF", "query string is not valid UTF-8 once percent-decoded"),
    ],
)
def test_query_integers_are_ascii_digits_in_range(
    admin: UiSite, confluence: ConfluenceEmulator, ledger: Ledger, query: str, message: str
) -> None:
    assert refused(admin, confluence, ledger, "GET", "/api/pages/recent", query=query) == message


def test_valid_integers_still_answer(admin: UiSite) -> None:
    for query in ("", "days=7", "days=90&limit=200", "limit=1&days=1", "days=007"):
        response = ui(admin, "GET", "/api/pages/recent", query=query)
        assert response["statusCode"] == 200, (query, response)
    assert body_of(ui(admin, "GET", "/api/pages/recent", query="days=007"))["days"] == 7


# -- query names: unknown, repeated -----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("path", "query", "message"),
    [
        ("/api/pages/recent", "days=7&days=7", "query parameter 'days' is given more than once"),
        ("/api/pages/recent", "limit=5&days=7&limit=6", "query parameter 'limit' is given more than once"),
        ("/api/pages/recent", "dayz=7", "unknown query parameter 'dayz' (this route takes: days, limit)"),
        ("/api/pages/recent", "Days=7", "unknown query parameter 'Days' (this route takes: days, limit)"),
        (
            "/api/pages/recent",
            "days=7&=1",
            "unknown query parameter (a name not shown) (this route takes: days, limit)",
        ),
        ("/api/status", "x=1", "unknown query parameter 'x' (this route takes: none)"),
        ("/api/status", "installationId=other", "unknown query parameter 'installationId' (this route takes: none)"),
        ("/api/pages/recent", "&".join(f"p{n}=1" for n in range(40)), "query string has more than 32 parameters"),
    ],
)
def test_unknown_and_repeated_query_parameters_are_a_400(
    admin: UiSite, confluence: ConfluenceEmulator, ledger: Ledger, path: str, query: str, message: str
) -> None:
    assert refused(admin, confluence, ledger, "GET", path, query=query) == message


def test_a_query_on_the_job_route_is_a_400(admin: UiSite, confluence: ConfluenceEmulator, ledger: Ledger) -> None:
    # The installation comes from the FIT, never the request: a query cannot say otherwise.
    message = refused(
        admin, confluence, ledger, "POST", "/api/jobs", query="job=page-snapshot", body={"job": "space-digest"}
    )
    assert message == "unknown query parameter 'job' (this route takes: none)"


def test_the_gateways_parsed_parameters_are_checked_when_the_raw_query_is_absent(
    admin: UiSite, confluence: ConfluenceEmulator, ledger: Ledger
) -> None:
    """sam local and hand-made events may carry only ``queryStringParameters``."""
    for parameters, message in (
        ({"days": "²"}, DAYS_MESSAGE),
        ({"days": "7,8"}, DAYS_MESSAGE),  # how API Gateway passes a repeated parameter
        ({"days": 7}, "query string is malformed"),  # not a string: not what API Gateway sends
        ({"other": "1"}, "unknown query parameter 'other' (this route takes: days, limit)"),
        ({"days": "7" * 3000}, "query string longer than 2048 characters"),
    ):
        api_event = event("GET", "/api/pages/recent", admin.headers())
        api_event.pop("rawQueryString")
        api_event["queryStringParameters"] = parameters
        assert refused(admin, confluence, ledger, "GET", "", raw_event=api_event) == message


def test_a_long_unknown_name_is_not_quoted_back(admin: UiSite, confluence: ConfluenceEmulator, ledger: Ledger) -> None:
    """Whatever a name holds (here the user's own token), the answer does not repeat it."""
    message = refused(admin, confluence, ledger, "GET", "/api/status", query=f"{admin.user_token}=1")
    assert message == "unknown query parameter (a name not shown) (this route takes: none)"
    query = f"{admin.user_token}=1&{admin.user_token}=2"
    message = refused(admin, confluence, ledger, "GET", "/api/status", query=query)
    assert message == "query parameter (a name not shown) is given more than once"
    message = refused(admin, confluence, ledger, "GET", "/api/status", query=f"token={admin.user_token}")
    assert message == "unknown query parameter 'token' (this route takes: none)"  # the name only


# -- bodies ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("[]", "body is not a JSON object"),
        ('"space-digest"', "body is not a JSON object"),
        ("42", "body is not a JSON object"),
        ("null", "body is not a JSON object"),
        ("true", "body is not a JSON object"),
        ("", "body is empty"),
        ("{", "body is not valid JSON"),
        ("{'job': 'space-digest'}", "body is not valid JSON"),
        ({"job": {}}, JOB_MESSAGE),
        ({"job": {"space-digest": True}}, JOB_MESSAGE),
        ({"job": ["space-digest"]}, JOB_MESSAGE),
        ({"job": 1}, JOB_MESSAGE),
        ({"job": True}, JOB_MESSAGE),
        ({"job": None}, JOB_MESSAGE),
        ({"job": "Space-Digest"}, JOB_MESSAGE),
        ({"job": "space-digest "}, JOB_MESSAGE),
        ({"job": "x" * 4000}, JOB_MESSAGE),
        ({"job": "x" * 5000}, "body larger than 4096 bytes"),
        ({}, "job is required: one of page-snapshot, space-digest"),
        ({"args": {}}, "job is required: one of page-snapshot, space-digest"),
        ({"job": "space-digest", "args": None}, "args must be a JSON object"),
        ({"job": "space-digest", "args": []}, "args must be a JSON object"),
        ({"job": "space-digest", "args": "{}"}, "args must be a JSON object"),
        ({"job": "space-digest", "extra": 1}, "unknown body field 'extra' (this route takes: job, args)"),
        (
            {"job": "space-digest", "installationId": "x"},
            "unknown body field 'installationId' (this route takes: job, args)",
        ),
        (
            {"job": "space-digest", "requestedBy": ADMIN},
            "unknown body field 'requestedBy' (this route takes: job, args)",
        ),
        ({"job": "space-digest", "": 1}, "unknown body field (a name not shown) (this route takes: job, args)"),
        ('{"job": "space-digest", "job": "page-snapshot"}', "body has a key more than once"),
        ('{"job": "space-digest", "args": {"a": 1, "a": 2}}', "body has a key more than once"),
        ('{"job": "space-digest", "args": {"n": NaN}}', "body has NaN, which is not JSON"),
        ('{"job": "space-digest", "args": {"n": -Infinity}}', "body has -Infinity, which is not JSON"),
        ('{"job": "space-digest", "args": {"n": 1e400}}', "body has a number too large for a float"),
        ('{"job": "space-digest", "args": {"n": ' + "7" * 100 + "}}", "body has a number longer than 64 digits"),
        ('{"job": "space-digest", "args": ' + "[" * 70 + "]" * 70 + "}", "body is nested more than 64 levels deep"),
        ('\ufeff{"job": "space-digest"}', "body is not valid JSON"),  # a byte order mark
    ],
)
def test_a_malformed_job_request_is_a_400_before_the_admin_check(
    admin: UiSite, confluence: ConfluenceEmulator, ledger: Ledger, body: Any, message: str
) -> None:
    assert refused(admin, confluence, ledger, "POST", "/api/jobs", body=body) == message


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ('{"job": "space-digest"}'.encode("utf-16"), "body is not valid JSON"),  # json.loads would guess UTF-16
        ('{"job": "space-digest"}'.encode("utf-32-le"), "body is not valid JSON"),
        (b'{"job": "space-digest", "args": {"n": "\xff"}}', "body is not valid JSON"),  # not UTF-8
        (b'{"job": "space-digest", "args": {"n": "\xed\xa0\x80"}}', "body is not valid JSON"),  # a UTF-8 surrogate
    ],
)
def test_a_job_request_that_is_not_utf8_is_a_400(
    admin: UiSite, confluence: ConfluenceEmulator, ledger: Ledger, raw: bytes, message: str
) -> None:
    api_event = event("POST", "/api/jobs", admin.headers(), raw=b64(raw), base64_body=True)
    assert refused(admin, confluence, ledger, "POST", "", raw_event=api_event) == message


def test_a_body_with_a_lone_surrogate_is_a_400(admin: UiSite, confluence: ConfluenceEmulator, ledger: Ledger) -> None:
    """A Lambda event is JSON: ``"\\ud800"`` in it is a str that cannot be encoded."""
    api_event = event("POST", "/api/jobs", admin.headers(), raw='{"job": "space-digest", "args": {"n": "\ud800"}}')
    assert refused(admin, confluence, ledger, "POST", "", raw_event=api_event) == "body is not valid UTF-8"
    api_event = event("POST", "/api/jobs", admin.headers())
    api_event["body"] = {"job": "space-digest"}  # not a string: not what API Gateway sends
    assert refused(admin, confluence, ledger, "POST", "", raw_event=api_event) == "body is not text"


def test_a_job_value_is_never_quoted_back(admin: UiSite, confluence: ConfluenceEmulator, ledger: Ledger) -> None:
    message = refused(admin, confluence, ledger, "POST", "/api/jobs", body={"job": admin.user_token})
    assert message == JOB_MESSAGE
    message = refused(admin, confluence, ledger, "POST", "/api/jobs", body={"job": "space-digest", admin.user_token: 1})
    assert message == "unknown body field (a name not shown) (this route takes: job, args)"


@pytest.mark.parametrize("path", ["/api/status", "/api/pages/recent"])
@pytest.mark.parametrize("body", ["{}", '{"days": 7}', "[]", "x", "null"])
def test_a_body_on_a_route_that_takes_none_is_a_400(
    admin: UiSite, confluence: ConfluenceEmulator, ledger: Ledger, path: str, body: str
) -> None:
    assert refused(admin, confluence, ledger, "GET", path, body=body) == "this route takes no request body"


def test_valid_requests_still_answer(admin: UiSite, world: World) -> None:
    for body in (
        {"job": "space-digest"},
        {"job": "page-snapshot", "args": {"pageId": "1"}},
        ' {"job": "space-digest"} ',
    ):
        response = ui(admin, "POST", "/api/jobs", body=body)
        assert response["statusCode"] == 202, (body, response)
        assert body_of(response)["requestedBy"] == ADMIN
    for body in (None, "", " \n"):  # no body, however the gateway spells it
        assert ui(admin, "GET", "/api/status", body=body)["statusCode"] == 200
    assert ui(admin, "POST", "/api/jobs", body=b64('{"job": "space-digest"}'), base64_body=False)["statusCode"] == 400
    assert ui(admin, "POST", "/api/jobs", body='{"job": "space-digest"}', base64_body=True)["statusCode"] == 202


# -- the class, not the examples: a route that declares nothing takes nothing ------------------------------
def test_a_new_route_without_accepts_takes_no_query_and_no_body(
    admin: UiSite, confluence: ConfluenceEmulator, ledger: Ledger
) -> None:
    extra = Router()
    ran: list[str] = []

    @extra.get("/api/review2/undeclared")
    def undeclared() -> dict[str, Any]:
        ran.append("ran")
        return {"ok": True}

    admin.world.calls.app.include_router(extra)  # what ui_routes/__init__.py does for every module
    for query, body in (("x=1", None), ("", "{}"), ("days=7", None)):
        refused(admin, confluence, ledger, "GET", "/api/review2/undeclared", query=query, body=body)
    assert ran == []
    assert ui(admin, "GET", "/api/review2/undeclared")["statusCode"] == 200
    assert ran == ["ran"]


@pytest.mark.parametrize(("method", "path"), [("GET", "/api/nope"), ("DELETE", "/api/status"), ("GET", "/api/jobs")])
def test_an_unknown_route_stays_a_404_whatever_its_input(admin: UiSite, ledger: Ledger, method: str, path: str) -> None:
    """Powertools routes its 404 through the middlewares too: input checks must not turn it into a 400."""
    before = admin.world.state
    response = ui(admin, method, path, query="x=1", body="[]")
    assert response["statusCode"] in (404, 405), response
    assert body_of(response)["error"] == "not_found"
    assert admin.world.state == before
    ledger.refused()


def test_declarations_are_checked_when_the_route_is_defined() -> None:
    from forge_remote.inbound.ui_calls import OneOf, WholeNumber, accepts

    with pytest.raises(ValueError, match="days: need 0 <= low <= default <= high"):
        WholeNumber("days", default=0, low=1, high=90)
    with pytest.raises(ValueError, match="n: need"):
        WholeNumber("n", default=1, low=1, high=10**12)  # past the digits a value may have
    with pytest.raises(ValueError, match="declared twice"):
        accepts(query=(WholeNumber("days", 7, 1, 90), WholeNumber("days", 1, 1, 2)))
    with pytest.raises(ValueError, match="declared twice"):
        accepts(body=(OneOf("job", frozenset({"a"})), OneOf("job", frozenset({"b"}))))


# -- the same parser on the trigger routes ------------------------------------------------------------
def test_a_trigger_body_with_a_huge_integer_or_a_lone_surrogate_is_a_400(
    world: World, admin: UiSite, ledger: Ledger
) -> None:
    """``payloads.json_object`` is shared: a 5,000-digit integer made ``json.loads`` raise ValueError there."""
    headers = world.forge.headers(admin.site, app_token=admin.app_token)
    for raw in (
        '{"eventType": "avi:confluence:created:page", "n": ' + "1" * 5000 + "}",
        '{"eventType": "avi:confluence:created:page", "n": "\ud800"}',
    ):
        before = world.state
        response = world.send("POST", "/forge/events", headers, raw=raw)
        assert response["statusCode"] == 400, response
        assert body_of(response)["error"] == "bad_request"
        assert world.state == before
        ledger.refused()
