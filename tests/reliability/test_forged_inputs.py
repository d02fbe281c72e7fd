"""A corpus of forged and malformed Forge calls, through the real handlers (forge_triggers and
forge_calls) as API Gateway v2 events. Each is refused (401 for the FIT, 400 for the body) and
changes nothing: the tokens table, the app table, the job queue and the DLQ are compared before
and after every case. The target is a victim installation that holds an app token and a user token,
and every forged request carries a newer token: had a forgery been accepted, it would have stored
the token, uninstalled the victim, recorded a lifecycle event or queued a job. Controls show that a
genuine call on the same route does change the state, so the comparison can fail.
"""

from __future__ import annotations

import copy
import itertools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from forge_remote.storage.table_keys import APP_TOKEN_SK, user_token_sk
from local.forge_emulator import ForgeEmulator, SigningKey, Site, _rsa_key
from local.loopback import LoopbackServer
from tests.reliability import jwt_forge
from tests.reliability.harness import World, b64, installation_items
from tests.reliability.ledger import Ledger
from tests.support import body_of

pytestmark = pytest.mark.reliability

PRINCIPAL = "557058:0a1b2c3d-4e5f-6789-abcd-ef0123456789"
OTHER_APP = "ari:cloud:ecosystem::app/11111111-2222-4333-8444-555555555555"
STRANGER = SigningKey(kid="stranger", private_key=_rsa_key())
EC_KEY = ec.generate_private_key(ec.SECP256R1())
DELETE = object()
COUNTER = itertools.count()
NEWER = itertools.count(1)


# -- routes: every one of them verifies the FIT before anything else ---------------------------------
@dataclass(frozen=True)
class Route:
    name: str
    method: str
    path: str
    ui: bool = False  # a UI call: a principal in the FIT and a user token

    def body(self, forge: ForgeEmulator, site: Site, n: int) -> Any:
        if self.path == "/forge/lifecycle":
            return forge.installed_event(site, "avi:forge:upgraded:app")
        if self.path == "/forge/events":
            return forge.page_event(str(700000 + n), "ENG")  # a new page each time: it would queue a job
        return None if self.method == "GET" else {}


ROUTES = [
    Route("keepalive", "POST", "/forge/keepalive"),
    Route("lifecycle", "POST", "/forge/lifecycle"),
    Route("uninstall", "POST", "/forge/uninstall"),
    Route("events", "POST", "/forge/events"),
    Route("status", "GET", "/api/status", ui=True),
]
UNROUTED = [
    Route("unknown trigger path", "POST", "/forge/nope"),
    Route("keepalive by GET", "GET", "/forge/keepalive"),
    Route("unknown UI path", "GET", "/api/nope", ui=True),
    Route("status by DELETE", "DELETE", "/api/status", ui=True),
]


# -- forgeries: a function of (forge, genuine claims) -> Authorization header value, or None ---------
Forge = Callable[[ForgeEmulator, dict[str, Any]], str | None]


@dataclass(frozen=True)
class Forgery:
    name: str
    authorization: Forge


def header(forge: ForgeEmulator, **changes: Any) -> dict[str, Any]:
    found = {"alg": "RS256", "typ": "JWT", "kid": forge.keys[0].kid}
    for name, value in changes.items():
        if value is DELETE:
            found.pop(name, None)
        else:
            found[name] = value
    return found


def signed(forge: ForgeEmulator, claims: Any, **header_changes: Any) -> str:
    """An RS256 signature by Forge's real key over any header and claims (pyjwt refuses many of them)."""
    return "Bearer " + jwt_forge.rs256(header(forge, **header_changes), claims, forge.keys[0].private_key)


def claims_changed(**changes: Any) -> Forge:
    """Genuine claims with ``changes`` (``a__b`` is ``claims["a"]["b"]``; DELETE removes), properly signed."""

    def build(forge: ForgeEmulator, genuine: dict[str, Any]) -> str:
        claims = copy.deepcopy(genuine)
        for path, value in changes.items():
            *parents, last = path.split("__")
            target = claims
            for name in parents:
                target = target[name]
            if value is DELETE:
                target.pop(last, None)
            else:
                target[last] = value(genuine) if callable(value) else value
        return signed(forge, claims)

    return build


def literal(value: str | None) -> Forge:
    return lambda forge, genuine: value


def _alg_none(alg: str, signature: str = "") -> Forge:
    def build(forge: ForgeEmulator, genuine: dict[str, Any]) -> str:
        return f"Bearer {jwt_forge.signing_input(header(forge, alg=alg), genuine)}.{signature}"

    return build


def _hs256_with_public_key(forge: ForgeEmulator, genuine: dict[str, Any]) -> str:
    secret = jwt_forge.public_pem(forge.keys[0].private_key)
    return "Bearer " + jwt_forge.hs256(header(forge, alg="HS256"), genuine, secret)


def _rs512(forge: ForgeEmulator, genuine: dict[str, Any]) -> str:
    key = forge.keys[0].private_key
    return "Bearer " + jwt_forge.rs256(header(forge, alg="RS512"), genuine, key, digest=hashes.SHA512())


def _rs256_header_sha512_signature(forge: ForgeEmulator, genuine: dict[str, Any]) -> str:
    key = forge.keys[0].private_key
    return "Bearer " + jwt_forge.rs256(header(forge), genuine, key, digest=hashes.SHA512())


def _ps256(forge: ForgeEmulator, genuine: dict[str, Any]) -> str:
    return "Bearer " + jwt_forge.ps256(header(forge, alg="PS256"), genuine, forge.keys[0].private_key)


def _es256(forge: ForgeEmulator, genuine: dict[str, Any]) -> str:
    return "Bearer " + jwt_forge.es256(header(forge, alg="ES256"), genuine, EC_KEY)


def _stranger(kid: Callable[[ForgeEmulator], str], **extra: Any) -> Forge:
    def build(forge: ForgeEmulator, genuine: dict[str, Any]) -> str:
        head = header(forge, kid=kid(forge), **extra)
        return "Bearer " + jwt_forge.rs256(head, genuine, STRANGER.private_key)

    return build


def _embedded_jwk(forge: ForgeEmulator, genuine: dict[str, Any]) -> str:
    head = header(forge, kid=STRANGER.kid, jwk=STRANGER.jwk())
    return "Bearer " + jwt_forge.rs256(head, genuine, STRANGER.private_key)


def _payload_swapped(forge: ForgeEmulator, genuine: dict[str, Any]) -> str:
    other = copy.deepcopy(genuine)
    other["app"]["installationId"] = "ari:cloud:ecosystem::installation/00000000-0000-4000-8000-000000000000"
    head, _, signature = signed(forge, other).removeprefix("Bearer ").split(".")
    return f"Bearer {head}.{jwt_forge.segment(genuine)}.{signature}"


def _truncated_signature(forge: ForgeEmulator, genuine: dict[str, Any]) -> str:
    return signed(forge, genuine)[:-12]


def _flipped_signature(forge: ForgeEmulator, genuine: dict[str, Any]) -> str:
    token = signed(forge, genuine)
    return token[:-6] + ("AAAAAA" if not token.endswith("AAAAAA") else "BBBBBB")


def _segments(make: Callable[[ForgeEmulator, dict[str, Any]], tuple[str, str, str]]) -> Forge:
    return lambda forge, genuine: "Bearer " + ".".join(make(forge, genuine))


def _genuine_with(suffix: str = "", prefix: str = "Bearer ") -> Forge:
    return lambda forge, genuine: prefix + signed(forge, genuine).removeprefix("Bearer ") + suffix


NOW = int(time.time())
FORGERIES = [
    # -- no usable Authorization
    Forgery("no Authorization header", literal(None)),
    Forgery("empty Authorization", literal("")),
    Forgery("Bearer without a token", literal("Bearer")),
    Forgery("Bearer and spaces", literal("Bearer    ")),
    Forgery("Basic credentials", literal("Basic dXNlcjpwYXNzd29yZA==")),
    Forgery("genuine FIT under another scheme", _genuine_with(prefix="Token ")),
    Forgery("genuine FIT with no scheme", _genuine_with(prefix="")),
    Forgery("genuine FIT followed by junk", _genuine_with(" junk")),
    Forgery("two bearer tokens", _genuine_with(", Bearer x.y.z")),
    Forgery("not a JWT", literal("Bearer hello-world")),
    Forgery("two segments", literal("Bearer eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiJmb3JnZSJ9")),
    Forgery("four segments", _genuine_with(".AAAA")),
    Forgery("huge Authorization header (40 KB)", literal("Bearer " + "eyJh" * 10_000)),
    Forgery("Authorization just over 16 KB", _genuine_with("A" * 16 * 1024)),
    # -- algorithm confusion and keys
    Forgery("alg none, no signature", _alg_none("none")),
    Forgery("alg None, no signature", _alg_none("None")),
    Forgery("alg nOnE with a junk signature", _alg_none("nOnE", "c2lnbmF0dXJl")),
    Forgery("HS256 keyed with the public key", _hs256_with_public_key),
    Forgery("RS512 signed by the real key", _rs512),
    Forgery("RS256 header, SHA-512 signature", _rs256_header_sha512_signature),
    Forgery("PS256 signed by the real key", _ps256),
    Forgery("ES256 under a published kid", _es256),
    Forgery("no alg", lambda f, g: signed(f, g, alg=DELETE)),
    Forgery("alg as a list", lambda f, g: signed(f, g, alg=["RS256"])),
    Forgery("lower-case rs256", lambda f, g: signed(f, g, alg="rs256")),
    Forgery("no kid", lambda f, g: signed(f, g, kid=DELETE)),
    Forgery("empty kid", lambda f, g: signed(f, g, kid="")),
    Forgery("kid a number", lambda f, g: signed(f, g, kid=7)),
    Forgery("kid null", lambda f, g: signed(f, g, kid=None)),
    Forgery("unknown kid, stranger's key", _stranger(lambda f: STRANGER.kid)),
    Forgery("published kid, stranger's key", _stranger(lambda f: f.keys[0].kid)),
    Forgery("kid with path traversal", _stranger(lambda f: "../../../../etc/passwd")),
    Forgery("kid of 10 KB", _stranger(lambda f: "k" * 10_000)),
    Forgery("stranger's key embedded as jwk", _embedded_jwk),
    Forgery("crit header the verifier cannot honour", lambda f, g: signed(f, g, crit=["exp"], exp=1)),
    Forgery(
        "header segment not JSON", _segments(lambda f, g: (jwt_forge.b64url(b"{nope"), jwt_forge.segment(g), "AA"))
    ),
    Forgery(
        "header segment a JSON array", _segments(lambda f, g: (jwt_forge.segment([1]), jwt_forge.segment(g), "AA"))
    ),
    Forgery("header segment not base64", _segments(lambda f, g: ("%%%%", jwt_forge.segment(g), "AA"))),
    Forgery("payload not base64", lambda f, g: signed(f, g).replace(".", ".%%", 1)),
    # -- signatures
    Forgery("payload swapped under a valid signature", _payload_swapped),
    Forgery("truncated signature", _truncated_signature),
    Forgery("altered signature", _flipped_signature),
    Forgery("signature stripped", lambda f, g: signed(f, g).rsplit(".", 1)[0] + "."),
    # -- claims: times
    Forgery("expired five minutes ago", claims_changed(exp=NOW - 300, iat=NOW - 330, nbf=NOW - 330)),
    Forgery("not yet valid (nbf in an hour)", claims_changed(nbf=NOW + 3600)),
    Forgery("issued in an hour", claims_changed(iat=NOW + 3600)),
    Forgery("no exp", claims_changed(exp=DELETE)),
    Forgery("exp a string", claims_changed(exp="tomorrow")),
    Forgery("exp null", claims_changed(exp=None)),
    Forgery("exp true", claims_changed(exp=True)),
    Forgery("no iat", claims_changed(iat=DELETE)),
    Forgery("iat a string", claims_changed(iat="now")),
    Forgery("nbf a string", claims_changed(nbf="now")),
    # -- claims: issuer, audience, id
    Forgery("no iss", claims_changed(iss=DELETE)),
    Forgery("wrong iss", claims_changed(iss="forge/someone-else")),
    Forgery("iss a list", claims_changed(iss=["forge/invocation-token"])),
    Forgery("no aud", claims_changed(aud=DELETE)),
    Forgery("genuine FIT of another app (aud)", claims_changed(aud=OTHER_APP, app__id=OTHER_APP)),
    Forgery("aud a number", claims_changed(aud=7)),
    Forgery("aud a list without this app", claims_changed(aud=[OTHER_APP])),
    Forgery("app.id of another app", claims_changed(app__id=OTHER_APP)),
    Forgery("no jti", claims_changed(jti=DELETE)),
    Forgery("empty jti", claims_changed(jti="")),
    Forgery("jti a number", claims_changed(jti=12345)),
    # -- claims: app and installation
    Forgery("no app claim", claims_changed(app=DELETE)),
    Forgery("app claim a string", claims_changed(app="app")),
    Forgery("app claim a list", claims_changed(app=[1])),
    Forgery("no installationId", claims_changed(app__installationId=DELETE)),
    Forgery("empty installationId", claims_changed(app__installationId="")),
    Forgery("installationId a number", claims_changed(app__installationId=42)),
    Forgery("installationId a list", claims_changed(app__installationId=["a"])),
    Forgery("installationId of 201 characters", claims_changed(app__installationId="i" * 201)),
    Forgery("installationId with key characters", claims_changed(app__installationId="x#SYSTEM y")),
    Forgery(
        "installationId with a trailing newline",
        claims_changed(app__installationId=lambda g: g["app"]["installationId"] + "\n"),
    ),
    # -- claims: apiBaseUrl (where tokens would be sent)
    Forgery("no apiBaseUrl", claims_changed(app__apiBaseUrl=DELETE)),
    Forgery("apiBaseUrl a number", claims_changed(app__apiBaseUrl=443)),
    Forgery("apiBaseUrl over http", claims_changed(app__apiBaseUrl="http://api.atlassian.com/ex/confluence/c")),
    Forgery(
        "apiBaseUrl off the allow-list", claims_changed(app__apiBaseUrl="https://attacker.example/ex/confluence/c")
    ),
    Forgery("apiBaseUrl suffix trick", claims_changed(app__apiBaseUrl="https://api.atlassian.com.attacker.example/ex")),
    Forgery(
        "apiBaseUrl with userinfo", claims_changed(app__apiBaseUrl="https://api.atlassian.com@attacker.example/ex")
    ),
    Forgery(
        "apiBaseUrl on another port", claims_changed(app__apiBaseUrl="https://api.atlassian.com:8443/ex/confluence/c")
    ),
    Forgery("apiBaseUrl with a query", claims_changed(app__apiBaseUrl="https://api.atlassian.com/ex/confluence/c?x=1")),
    Forgery("apiBaseUrl on loopback", claims_changed(app__apiBaseUrl="http://127.0.0.1:8080/ex/confluence/c")),
    Forgery(
        "apiBaseUrl the staging gateway",
        claims_changed(app__apiBaseUrl="https://api.stg.atlassian.com/ex/confluence/c"),
    ),
    # -- claims: icLabel and principal
    Forgery("icLabel upper case", claims_changed(icLabel="NOT-VALID")),
    Forgery("icLabel with a space", claims_changed(icLabel="a b")),
    Forgery("icLabel of 51 characters", claims_changed(icLabel="a" * 51)),
    Forgery("icLabel empty", claims_changed(icLabel="")),
    Forgery("icLabel a number", claims_changed(icLabel=5)),
    Forgery("icLabel with a trailing newline", claims_changed(icLabel="ic-label\n")),
    Forgery("principal a number", claims_changed(principal=42)),
    Forgery("principal with a space", claims_changed(principal="557058:a b")),
    Forgery("principal with a trailing newline", claims_changed(principal=PRINCIPAL + "\n")),
    # -- claims: not an object at all
    Forgery("claims a JSON array", lambda f, g: signed(f, [g])),
    Forgery("claims a JSON string", lambda f, g: signed(f, "forge/invocation-token")),
]


def genuine_claims(forge: ForgeEmulator, site: Site, route: Route) -> dict[str, Any]:
    return forge.fit_claims(site, principal=PRINCIPAL if route.ui else None)


def request_headers(world: World, site: Site, route: Route, authorization: str | None) -> dict[str, str]:
    """A Forge call's headers with a newer app token (and user token on UI routes) than any stored yet."""
    lifetime_s = 3 * 3600 + next(NEWER)  # strictly later expiries: an accepted forgery would be stored
    headers = world.forge.headers(
        site,
        app_token=world.forge.app_token(lifetime_s=lifetime_s),
        user_token=world.forge.app_token(lifetime_s=lifetime_s, subject=PRINCIPAL) if route.ui else None,
        principal=PRINCIPAL if route.ui else None,
    )
    headers.pop("authorization")
    if authorization is not None:
        headers["authorization"] = authorization
    return headers


@pytest.fixture(scope="module")
def victim(world: World) -> Site:
    site = world.forge.site()
    world.install(site, principal=PRINCIPAL)
    assert set(installation_items_sk(world, site)) == {APP_TOKEN_SK, user_token_sk(PRINCIPAL)}
    return site


def installation_items_sk(world: World, site: Site) -> list[str]:
    return [i["sk"]["S"] for i in installation_items(world.stack, "TokensTable", site.installation_id)]


def assert_refused(response: dict[str, Any], status: int, error: str) -> None:
    assert response["statusCode"] == status, response
    assert response["headers"]["Content-Type"] == "application/json"
    body = body_of(response)
    assert isinstance(body, dict)
    assert body["error"] == error


def refused_without_a_trace(
    world: World,
    ledger: Ledger,
    route: Route,
    headers: dict[str, str],
    body: Any = None,
    *,
    status: int = 401,
    error: str = "unauthorized",
    **options: Any,
) -> None:
    """One call to ``route``: refused with ``status`` and ``error``, nothing written or sent; counted."""
    before = world.state
    ledger.tried += 1
    response = world.send(route.method, route.path, headers, body, **options)
    assert_refused(response, status, error)
    assert world.state == before
    ledger.rejected += 1


# Every forgery against one route of each function; a cross-section of them against the other routes
# (the verifier is the same code, the point there is that each route verifies before acting).
CROSS_SECTION = {
    "no Authorization header",
    "genuine FIT followed by junk",
    "alg none, no signature",
    "HS256 keyed with the public key",
    "PS256 signed by the real key",
    "published kid, stranger's key",
    "stranger's key embedded as jwk",
    "payload swapped under a valid signature",
    "expired five minutes ago",
    "genuine FIT of another app (aud)",
    "app.id of another app",
    "installationId a list",
    "installationId with a trailing newline",
    "apiBaseUrl off the allow-list",
    "icLabel upper case",
    "icLabel with a trailing newline",
}
CASES = [
    (forgery, route)
    for forgery in FORGERIES
    for route in ROUTES
    if route.name in ("keepalive", "status") or forgery.name in CROSS_SECTION
]


def test_the_corpus_is_big_enough() -> None:
    assert len(FORGERIES) + len(BODY_CASES) >= 30
    assert len({f.name for f in FORGERIES}) == len(FORGERIES)
    assert {f.name for f in FORGERIES} >= CROSS_SECTION


@pytest.mark.parametrize(("forgery", "route"), CASES, ids=[f"{f.name}-{r.name}" for f, r in CASES])
def test_forged_fit_is_refused_and_changes_nothing(
    world: World, victim: Site, forgery: Forgery, route: Route, ledger: Ledger
) -> None:
    authorization = forgery.authorization(world.forge, genuine_claims(world.forge, victim, route))
    headers = request_headers(world, victim, route, authorization)
    refused_without_a_trace(world, ledger, route, headers, route.body(world.forge, victim, next(COUNTER)))


@pytest.mark.parametrize("route", UNROUTED, ids=[r.name for r in UNROUTED])
@pytest.mark.parametrize("forgery", FORGERIES[::9], ids=[f.name for f in FORGERIES[::9]])
def test_forged_fit_on_an_unknown_route_is_401_not_404(
    world: World, victim: Site, forgery: Forgery, route: Route, ledger: Ledger
) -> None:
    authorization = forgery.authorization(world.forge, genuine_claims(world.forge, victim, route))
    refused_without_a_trace(world, ledger, route, request_headers(world, victim, route, authorization), {})


@pytest.mark.parametrize("route", UNROUTED, ids=[r.name for r in UNROUTED])
def test_control_a_genuine_call_on_an_unknown_route_is_404(world: World, victim: Site, route: Route) -> None:
    """So the 401s above come from the FIT check, which runs before routing."""
    genuine = world.forge.sign(genuine_claims(world.forge, victim, route))
    response = world.send(route.method, route.path, request_headers(world, victim, route, f"Bearer {genuine}"), {})
    assert response["statusCode"] in (404, 405), response
    assert isinstance(body_of(response), dict)


# -- malformed bodies under a genuine FIT: 400, and not even the delivered token is stored -----------
BODY_ROUTES = [r for r in ROUTES if r.name in ("lifecycle", "events")]
BIG = {"eventType": "avi:confluence:created:page", "content": {"id": "1"}, "pad": "x" * 600_000}
BODY_CASES: list[tuple[str, dict[str, Any]]] = [
    ("not JSON", {"raw": "{not json"}),
    ("truncated JSON", {"raw": '{"eventType": "avi:forge:installed:app"'}),
    ("a JSON array", {"raw": '[{"eventType": "avi:forge:installed:app"}]'}),
    ("a JSON string", {"raw": '"avi:forge:installed:app"'}),
    ("JSON null", {"raw": "null"}),
    ("empty", {"raw": ""}),
    ("only whitespace", {"raw": " \n\t "}),
    ("absent", {"body": None}),
    ("flat, without eventType", {"body": {"id": "x", "context": "ari:cloud:confluence::site/x"}}),
    ("wrapped, without eventType", {"body": {"payload": {"id": "x"}}}),
    ("wrapped in a string payload", {"body": {"payload": "avi:forge:installed:app"}}),
    ("flat, eventType a number", {"body": {"eventType": 42}}),
    ("wrapped, eventType an object", {"body": {"payload": {"eventType": {"x": 1}}}}),
    ("flat, eventType empty", {"body": {"eventType": ""}}),
    ("wrapped, eventType of 201 characters", {"body": {"payload": {"eventType": "a" * 201}}}),
    ("eventType NaN", {"raw": '{"eventType": NaN}'}),
    ("flagged base64 but not base64", {"raw": "%%%not-base64%%%", "base64_body": True}),
    ("base64 of text that is not JSON", {"raw": b64("hello"), "base64_body": True}),
    ("base64 of invalid UTF-8", {"raw": b64(b'\xff\xfe{"eventType": 1}'), "base64_body": True}),
    ("over 512 KB", {"body": BIG}),
    ("over 512 KB once base64-decoded", {"raw": b64(json.dumps(BIG)), "base64_body": True}),
    ("arrays nested 100,000 deep", {"raw": "[" * 100_000 + "]" * 100_000}),
    ("objects nested 50,000 deep", {"raw": '{"a":' * 50_000 + "1" + "}" * 50_000}),
]


@pytest.mark.parametrize("route", BODY_ROUTES, ids=[r.name for r in BODY_ROUTES])
@pytest.mark.parametrize(("name", "body"), BODY_CASES, ids=[c[0] for c in BODY_CASES])
def test_malformed_body_is_400_and_stores_nothing(
    world: World, victim: Site, route: Route, name: str, body: dict[str, Any], ledger: Ledger
) -> None:
    genuine = world.forge.sign(genuine_claims(world.forge, victim, route))
    headers = request_headers(world, victim, route, f"Bearer {genuine}")
    options = {k: v for k, v in body.items() if k != "body"}
    refused_without_a_trace(world, ledger, route, headers, body.get("body"), status=400, error="bad_request", **options)


# -- controls: the same requests, genuine, do change the state ---------------------------------------
@pytest.mark.parametrize("route", ROUTES, ids=[r.name for r in ROUTES])
def test_control_a_genuine_call_on_each_route_changes_the_state(world: World, route: Route, ledger: Ledger) -> None:
    site = world.forge.site()
    world.install(site, principal=PRINCIPAL)
    genuine = world.forge.sign(genuine_claims(world.forge, site, route))
    before = world.state
    ledger.tried += 1
    response = world.send(
        route.method,
        route.path,
        request_headers(world, site, route, f"Bearer {genuine}"),
        route.body(world.forge, site, next(COUNTER)),
    )
    assert 200 <= response["statusCode"] < 300, response
    assert world.state != before


# -- isolation: a genuine caller naming another installation changes nothing of it -------------------
FOREIGN_FIELDS = ("installationId", "installation_id", "id")


def foreign_body(route: Route, world: World, mine: Site, theirs: Site) -> Any:
    body = route.body(world.forge, mine, next(COUNTER)) or {}
    for name in FOREIGN_FIELDS:
        body[name] = theirs.installation_id
    body["app"] = {"installationId": theirs.installation_id, "apiBaseUrl": theirs.api_base_url}
    body["context"] = f"ari:cloud:confluence::site/{theirs.cloud_id}"
    return {"payload": body} if route.name == "events" else body


@pytest.mark.parametrize("route", ROUTES, ids=[r.name for r in ROUTES])
def test_foreign_installation_named_in_body_or_query_is_untouched(world: World, route: Route, ledger: Ledger) -> None:
    mine, theirs = world.forge.site(), world.forge.site()
    world.install(mine, principal=PRINCIPAL)
    world.install(theirs, principal=PRINCIPAL)
    before = {t: installation_items(world.stack, t, theirs.installation_id) for t in ("TokensTable", "AppTable")}
    genuine = world.forge.sign(genuine_claims(world.forge, mine, route))
    headers = request_headers(world, mine, route, f"Bearer {genuine}")
    headers["x-forge-installation-id"] = theirs.installation_id
    ledger.tried += 1
    response = world.send(
        route.method,
        route.path,
        headers,
        None if route.method == "GET" else foreign_body(route, world, mine, theirs),
        query=f"installationId={theirs.installation_id}",
    )
    if route.ui:  # a UI route refuses a query parameter it does not declare, and says which
        assert response["statusCode"] == 400, response
        assert "'installationId'" in body_of(response)["message"]
    else:
        assert 200 <= response["statusCode"] < 300, response
    assert theirs.installation_id not in (response.get("body") or "")
    after = {t: installation_items(world.stack, t, theirs.installation_id) for t in ("TokensTable", "AppTable")}
    assert after == before
    ledger.rejected += 1


# -- tokens that must not be stored, under a genuine FIT -----------------------------------------------
TOKEN_HEADER_CASES = [
    ("app token of 20 KB", {"x-forge-oauth-system": "t" * 20_000}),
    ("empty app token", {"x-forge-oauth-system": ""}),
    ("app token of spaces", {"x-forge-oauth-system": "   "}),
    ("user token without a principal in the FIT", {"x-forge-oauth-user": "user-token-without-principal"}),
]


@pytest.mark.parametrize(("name", "extra"), TOKEN_HEADER_CASES, ids=[c[0] for c in TOKEN_HEADER_CASES])
def test_unusable_token_headers_are_not_stored(
    world: World, victim: Site, name: str, extra: dict[str, str], ledger: Ledger
) -> None:
    headers = world.forge.headers(victim)
    headers.update(extra)
    before = world.state
    ledger.tried += 1
    response = world.send("POST", "/forge/keepalive", headers, {})
    assert response["statusCode"] == 204
    assert world.state == before
    ledger.rejected += 1


def test_jku_and_x5u_headers_are_never_fetched(world: World, victim: Site, ledger: Ledger) -> None:
    """A token naming its own key set (jku/x5u) must not make the verifier fetch it."""
    hits: list[str] = []

    def attacker(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        hits.append(environ.get("PATH_INFO", ""))
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps({"keys": [STRANGER.jwk()]}).encode()]

    server = LoopbackServer(attacker)
    url = server.start()
    try:
        route = ROUTES[0]
        genuine = genuine_claims(world.forge, victim, route)
        for extra in ({"jku": f"{url}/jwks.json"}, {"x5u": f"{url}/cert.pem"}):
            head = header(world.forge, kid=STRANGER.kid, **extra)
            token = "Bearer " + jwt_forge.rs256(head, genuine, STRANGER.private_key)
            refused_without_a_trace(world, ledger, route, request_headers(world, victim, route, token), {})
    finally:
        server.stop()
    assert hits == []
