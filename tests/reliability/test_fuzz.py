"""Fuzzing the HTTP handlers (hypothesis): random paths, methods, header names and values, bodies
(JSON, text, bytes, Forge-like events flat and wrapped), the base64 flag, and events missing the
fields API Gateway may leave out. No handler ever raises or answers 5xx; every non-2xx answer has a
JSON object body; and without a genuine FIT every answer is 401.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from local.forge_emulator import Site
from tests.reliability.harness import World, event, invoke
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
            system_token=world.forge.app_token(),
            user_token=world.forge.app_token(subject=PRINCIPAL) if ui else None,
            principal=PRINCIPAL if ui else None,
        )
    )


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
