"""Fuzzing the HTTP handlers (hypothesis): random paths, methods, header names and values, bodies
(JSON, text, bytes, Forge-like events flat and wrapped), the base64 flag, and events missing the
fields API Gateway may leave out. No handler ever raises or answers 5xx; every non-2xx answer has a
JSON object body; and without a genuine FIT every answer is 401.

Every UI route's query and body are fuzzed too, as a genuine UI call (a FIT Forge signed, the user's
token), so what answers is the route's input validation: the answer is the route's success exactly
when an independent model of its inputs says they are valid, else a 400 JSON answer; a refused
request writes nothing and asks Confluence nothing.
"""

from __future__ import annotations

import base64
import json
import math
import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import event as label
from hypothesis import strategies as st

from local.confluence_emulator import ConfluenceEmulator
from local.forge_emulator import ForgeEmulator, Site
from tests.reliability.harness import UiSite, World, b64, event, invoke, ui_world
from tests.reliability.ledger import LEDGER
from tests.support import body_of

pytestmark = pytest.mark.reliability

PRINCIPAL = "557058:fuzz-user-0001"
FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
ROUTES = ["/forge/lifecycle", "/forge/uninstall", "/forge/events", "/forge/keepalive", "/api/status"]
KNOWN_HEADERS = [
    "authorization",
    "x-forge-oauth-system",
    "x-forge-oauth-user",
    "content-type",
    "content-length",
    "x-b3-traceid",
    "x-b3-spanid",
    "user-agent",
    "host",
]
# Fields of an HTTP API v2 event that API Gateway may leave out (no body, no cookies, no query...).
OPTIONAL_FIELDS = ["body", "isBase64Encoded", "cookies", "queryStringParameters", "rawQueryString", "headers"]

printable = st.characters(min_codepoint=32, max_codepoint=126)
latin1 = st.characters(min_codepoint=32, max_codepoint=255)
unicode_text = st.text(st.characters(exclude_categories=("Cs",)), max_size=80)  # str from a JSON event
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | unicode_text,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(unicode_text, children, max_size=4),
    max_leaves=25,
)
event_types = st.sampled_from(
    [
        "avi:forge:installed:app",
        "avi:forge:upgraded:app",
        "avi:confluence:created:page",
        "avi:confluence:updated:page",
        "avi:confluence:deleted:page",
        "",
    ]
) | st.text(printable, max_size=30)
content = st.fixed_dictionaries(
    {},
    optional={
        "id": st.one_of(st.integers(), st.from_regex(r"\A[0-9]{1,25}\Z"), json_values),
        "space": st.one_of(st.fixed_dictionaries({"key": json_values}), json_values),
        "version": st.one_of(st.fixed_dictionaries({"number": json_values}), json_values),
        "title": json_values,
    },
)
forge_event = st.fixed_dictionaries(
    {"eventType": st.one_of(event_types, json_values)},
    optional={"content": st.one_of(content, json_values), "retryContext": json_values, "id": json_values},
)
forge_bodies = st.one_of(forge_event, forge_event.map(lambda e: {"payload": e}))
bodies = st.one_of(
    forge_bodies.map(json.dumps),
    json_values.map(json.dumps),
    unicode_text,
    st.binary(max_size=300).map(lambda b: b.decode("latin-1")),
)


def genuine_headers(world: World, site: Site, *, ui: bool) -> dict[str, str]:
    """A genuine FIT and tokens, registered as secrets. (Random junk is not registered: hypothesis reuses
    drawn strings elsewhere, e.g. as an eventType that is rightly logged, which would look like a leak.)"""
    return LEDGER.headers(
        world.forge.headers(
            site,
            app_token=world.forge.app_token(),
            user_token=world.forge.app_token(subject=PRINCIPAL) if ui else None,
            principal=PRINCIPAL if ui else None,
        )
    )


@pytest.fixture(scope="module")
def confluence() -> Iterator[ConfluenceEmulator]:
    with ConfluenceEmulator() as emulator:
        emulator.set_admins({PRINCIPAL})  # a valid job request gets past the admin check too
        emulator.add_space("ENG", "Engineering")
        emulator.add_page("ENG", "Roadmap")
        yield emulator


@pytest.fixture(scope="module")
def world(forge: ForgeEmulator, confluence: ConfluenceEmulator) -> Iterator[World]:
    """The reliability world, its functions also allowed to reach ``confluence`` on loopback."""
    with ui_world(forge, confluence) as opened:
        yield opened


@pytest.fixture(scope="module")
def fuzz_site(world: World) -> Site:
    site = world.forge.site()
    world.install(site, principal=PRINCIPAL)
    return site


def check(world: World, api_event: dict[str, Any], *, genuine: bool) -> dict[str, Any]:
    """Send, and hold the handler to the contract whatever came in."""
    path = api_event.get("rawPath", "")
    LEDGER.tried += 1
    response = invoke(world.calls if path.startswith("/api/") else world.triggers, api_event)  # must not raise
    status = response["statusCode"]
    assert status < 500, response
    if not 200 <= status < 300:
        assert isinstance(body_of(response), dict), response
        LEDGER.rejected += 1
    if not genuine:
        assert status == 401, response  # nothing gets past the FIT check without a genuine FIT
    return response


@FUZZ
@given(
    path=st.sampled_from([*ROUTES, "/api/x/../../forge/uninstall", "/forge/lifecycle/", "/", "/api"])
    | st.text(printable, max_size=40).map(lambda t: "/" + t),
    method=st.sampled_from(["route's own", "route's own", "POST", "GET", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"]),
    body=st.none() | bodies,
    base64_body=st.booleans(),
    authorization=st.sampled_from(["genuine", "none", "random"]),
    random_authorization=st.text(latin1, max_size=300),
    headers=st.dictionaries(
        st.sampled_from(KNOWN_HEADERS) | st.from_regex(r"\A[a-z0-9!#$%&'*+.^_`|~-]{1,40}\Z"),
        st.text(latin1, max_size=200),
        max_size=6,
    ),
    query=st.text(printable, max_size=60),
)
def test_fuzzed_requests_never_crash_a_handler(
    world: World,
    fuzz_site: Site,
    path: str,
    method: str,
    body: str | None,
    base64_body: bool,
    authorization: str,
    random_authorization: str,
    headers: dict[str, str],
    query: str,
) -> None:
    if method == "route's own":
        method = "GET" if path.startswith("/api/") else "POST"
    request_headers = dict(headers)
    if authorization == "genuine":
        request_headers.update(genuine_headers(world, fuzz_site, ui=path.startswith("/api/")))
    elif authorization == "random":
        request_headers["authorization"] = random_authorization
    else:
        request_headers.pop("authorization", None)
    raw = None
    if body is not None:
        raw = base64.b64encode(body.encode()).decode() if base64_body else body
    api_event = event(method, path, request_headers, raw=raw, base64_body=base64_body, query=query)
    check(world, api_event, genuine=authorization == "genuine")


@pytest.mark.parametrize("path", ROUTES)
@settings(FUZZ, max_examples=30)  # per route: 150 in all
@given(
    body=forge_bodies,
    base64_body=st.booleans(),
    flag=st.sampled_from(["kept", "flipped", "missing"]),
    missing=st.sets(st.sampled_from(OPTIONAL_FIELDS), max_size=3),
    nulls=st.sets(st.sampled_from(["body", "cookies", "queryStringParameters", "pathParameters", "stageVariables"])),
    dropped_headers=st.sets(st.sampled_from(KNOWN_HEADERS), max_size=2),
)
def test_events_missing_fields_never_crash_a_handler(
    path: str,
    world: World,
    fuzz_site: Site,
    body: dict[str, Any],
    base64_body: bool,
    flag: str,
    missing: set[str],
    nulls: set[str],
    dropped_headers: set[str],
) -> None:
    """A genuine call whose event lost fields API Gateway may omit, or carries them as null."""
    ui = path.startswith("/api/")
    headers = {k: v for k, v in genuine_headers(world, fuzz_site, ui=ui).items() if k not in dropped_headers}
    api_event = event("GET" if ui else "POST", path, headers, body, base64_body=base64_body)
    if flag == "flipped":
        api_event["isBase64Encoded"] = not base64_body
    elif flag == "missing":
        api_event.pop("isBase64Encoded")
    for name in nulls:
        api_event[name] = None
    for name in missing:
        api_event.pop(name, None)
    genuine = "authorization" not in dropped_headers and "headers" not in missing
    check(world, api_event, genuine=genuine)


# -- every UI route's query and body, as a genuine UI call ---------------------------------------------
# An independent model of what each route takes (method, query parameter -> inclusive range, body).
UI_ROUTES: dict[str, tuple[str, dict[str, tuple[int, int]], bool]] = {
    "/api/status": ("GET", {}, False),
    "/api/pages/recent": ("GET", {"days": (1, 90), "limit": (1, 200)}, False),
    "/api/jobs": ("POST", {}, True),
}
UI_JOBS = ("space-digest", "page-snapshot")
MAX_JOB_BODY_BYTES = 4096
UI_FUZZ = settings(FUZZ, derandomize=True, database=None)  # the same cases on every run

query_names = st.sampled_from(["days", "limit", "job", "args", "Days", "days ", ""]) | st.text(printable, max_size=12)
query_values = st.one_of(
    st.integers(-5, 300).map(str),
    st.from_regex(r"\A[0-9]{1,12}\Z"),
    st.text(st.characters(categories=("Nd", "No")), min_size=1, max_size=4),  # digits int() may misread
    st.integers(4000, 6000).map(lambda n: "9" * n),  # past int()'s 4,300-digit limit
    st.sampled_from(["", " 7", "7 ", "+7", "1e3", "7.0", "0x10", "true", "null", "1_0", "\uff17", "\u00b2"]),
    unicode_text,
)
RAW_VALUES = ["%FF", "%C0%AF", "%ED%A0%80", "%", "%G1", "%00"]  # sent as they are: none decodes to digits
# (name, value, sent as it is): a value is percent-encoded unless it is one of RAW_VALUES.
query_pairs = st.lists(
    st.tuples(query_names, query_values, st.just(False))
    | st.tuples(query_names, st.sampled_from(RAW_VALUES), st.just(True)),
    max_size=4,
) | st.lists(  # what the pages route takes: valid there, unknown names elsewhere
    st.tuples(st.sampled_from(["days", "limit"]), st.integers(1, 90).map(str), st.just(False)),
    max_size=2,
    unique_by=lambda pair: pair[0],
)
ascii_number = re.compile(r"[0-9]{1,9}")  # [0-9] in a str pattern is ASCII only
job_values = st.sampled_from(UI_JOBS) | json_values
valid_jobs = st.fixed_dictionaries(
    {"job": st.sampled_from(UI_JOBS)}, optional={"args": st.dictionaries(unicode_text, json_values, max_size=4)}
)
job_documents = st.builds(
    lambda extra, fixed: {**extra, **fixed},
    st.dictionaries(
        st.sampled_from(["extra", "installationId", "requestedBy", ""]) | unicode_text, json_values, max_size=2
    )
    | st.just({}),
    st.fixed_dictionaries(
        {}, optional={"job": job_values, "args": st.dictionaries(unicode_text, json_values, max_size=4) | json_values}
    ),
)
RAW_JOB_BODIES = [
    '{"job": "space-digest", "job": "page-snapshot"}',
    '{"job": "space-digest", "args": {"n": NaN}}',
    '{"job": "space-digest", "args": {"n": 1e400}}',
    '{"job": "space-digest", "args": {"n": ' + "7" * 5000 + "}}",
    '\ufeff{"job": "space-digest"}',
    '{"job": "space-digest", "args": ' + "[" * 80 + "]" * 80 + "}",
    '{"job": "space-digest"',
]


def query_string(pairs: list[tuple[str, str, bool]]) -> str:
    return "&".join(f"{quote(name, safe='')}={value if raw else quote(value, safe='')}" for name, value, raw in pairs)


def query_is_valid(path: str, pairs: list[tuple[str, str, bool]]) -> bool:
    declared = UI_ROUTES[path][1]
    names = [name for name, _, _ in pairs]
    if len(names) != len(set(names)):
        return False
    for name, value, raw in pairs:
        if raw or name not in declared or not ascii_number.fullmatch(value):
            return False
        low, high = declared[name]
        if not low <= int(value) <= high:
            return False
    return True


def plain_json(value: Any, depth: int = 0) -> bool:
    """Finite numbers, short integers, at most 64 levels: JSON a strict parser takes as it is."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return True
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, int):
        return len(str(abs(value))) <= 64
    if depth >= 64:
        return False
    children = value.values() if isinstance(value, dict) else value
    return all(plain_json(child, depth + 1) for child in children)


def job_is_valid(document: Any) -> bool:
    return (
        isinstance(document, dict)
        and set(document) <= {"job", "args"}
        and isinstance(document.get("job"), str)
        and document["job"] in UI_JOBS
        and isinstance(document.get("args", {}), dict)
        and plain_json(document)
        and len(json.dumps(document).encode()) <= MAX_JOB_BODY_BYTES
    )


@pytest.fixture(scope="module")
def ui_site(world: World, confluence: ConfluenceEmulator) -> UiSite:
    return UiSite.open(world, confluence, PRINCIPAL)


def check_ui(
    ui_site: UiSite, confluence: ConfluenceEmulator, api_event: dict[str, Any], *, valid: bool | None
) -> dict[str, Any]:
    """Send a genuine UI call; ``valid`` is the model's verdict (None: no verdict, either is fine).
    A success must be one the model allows, a refusal a 400 JSON answer that wrote and asked nothing."""
    world = ui_site.world
    before, asked = world.state, len(confluence.requests_seen)
    response = check(world, api_event, genuine=True)
    status, answer = response["statusCode"], body_of(response)
    label(f"answered {status}")  # --hypothesis-show-statistics: both kinds of answer are reached
    success = 202 if api_event["rawPath"] == "/api/jobs" else 200
    assert status in (success, 400), response  # a genuine call: never 401/403, so validation answered
    if valid is not None:
        assert (status == success) == valid, response
    after = world.state
    if status == 400:
        assert answer["error"] == "bad_request", response
        assert isinstance(answer["message"], str), response
        assert after == before
        assert len(confluence.requests_seen) == asked
    elif status == 202:  # one job request queued, nothing else written but the points it cost
        assert len(after["JobsQueue"]) == len(before["JobsQueue"]) + 1
        assert {k: v for k, v in unbudgeted(after).items() if k != "JobsQueue"} == {
            k: v for k, v in unbudgeted(before).items() if k != "JobsQueue"
        }
    else:
        assert unbudgeted(after) == unbudgeted(before)
    return response


def unbudgeted(state: dict[str, list[str]]) -> dict[str, list[str]]:
    """``state`` without the points ledger's items (``BUDGET#<hour>``): a UI call that asked Confluence
    anything counts its points there, by design; nothing else may change."""
    return {name: [item for item in items if '"BUDGET#' not in item] for name, items in state.items()}


@pytest.mark.parametrize("path", sorted(UI_ROUTES))
@settings(UI_FUZZ, max_examples=60)  # per route: 180 in all
@given(pairs=query_pairs)
def test_fuzzed_ui_queries_are_validated(
    path: str, ui_site: UiSite, confluence: ConfluenceEmulator, pairs: list[tuple[str, str, bool]]
) -> None:
    method, _, takes_body = UI_ROUTES[path]
    body = json.dumps({"job": "space-digest"}) if takes_body else None
    api_event = event(method, path, ui_site.headers(), raw=body, query=query_string(pairs))
    check_ui(ui_site, confluence, api_event, valid=query_is_valid(path, pairs))


@settings(UI_FUZZ, max_examples=120)
@given(document=st.one_of(valid_jobs, job_documents, json_values), base64_body=st.booleans())
def test_fuzzed_job_bodies_are_validated(
    ui_site: UiSite, confluence: ConfluenceEmulator, document: Any, base64_body: bool
) -> None:
    text = json.dumps(document)
    api_event = event(
        "POST", "/api/jobs", ui_site.headers(), raw=b64(text) if base64_body else text, base64_body=base64_body
    )
    check_ui(ui_site, confluence, api_event, valid=job_is_valid(document))


@settings(UI_FUZZ, max_examples=60)
@given(
    raw=st.sampled_from(RAW_JOB_BODIES) | unicode_text | st.binary(max_size=80).map(lambda b: b.decode("latin-1")),
    base64_body=st.booleans(),
)
def test_fuzzed_raw_job_bodies_are_validated(
    ui_site: UiSite, confluence: ConfluenceEmulator, raw: str, base64_body: bool
) -> None:
    """Text that is mostly not JSON: no model verdict, but a success must still be a valid job."""
    api_event = event(
        "POST", "/api/jobs", ui_site.headers(), raw=b64(raw) if base64_body else raw, base64_body=base64_body
    )
    if check_ui(ui_site, confluence, api_event, valid=None)["statusCode"] == 202:
        assert job_is_valid(json.loads(raw)), raw


@pytest.mark.parametrize("path", ["/api/pages/recent", "/api/status"])
@settings(UI_FUZZ, max_examples=40)  # per route: 80 in all
@given(
    body=st.sampled_from(["", " ", "\r\n\t "]) | json_values.map(json.dumps) | unicode_text,
    base64_body=st.booleans(),
)
def test_fuzzed_bodies_on_routes_that_take_none_are_refused(
    path: str, ui_site: UiSite, confluence: ConfluenceEmulator, body: str, base64_body: bool
) -> None:
    api_event = event("GET", path, ui_site.headers(), raw=b64(body) if base64_body else body, base64_body=base64_body)
    check_ui(ui_site, confluence, api_event, valid=not body.encode().strip())
