"""Regression tests for the outside review's trust-boundary and token-guarantee defects, with variants.

- Routes accept only the kind of call Forge makes to them (a UI user's FIT cannot uninstall or queue
  jobs); the uninstall route acts once per FIT.
- A token the store no longer holds is stored again when Forge re-delivers it, in any container.
- A token whose ``exp`` is not a sane number gets the fallback lifetime, never a 500.
- ``apiBaseUrl`` values that make ``urllib.parse`` raise are a 401, not a 500.
- A body nested too deeply is a 400 on every route that reads one, and a dead job in the worker.
- Hardening: bounded FIT lifetime, ``iat`` in the future, product events after uninstall.
Every refused case is compared with the state before it: nothing written, nothing queued.
"""

from __future__ import annotations

import base64
import json
import logging
import math
from collections.abc import Iterator
from typing import Any

import boto3
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from forge_remote import clock
from forge_remote.config import Settings
from forge_remote.errors import ConfigurationError, InvalidInvocation
from forge_remote.forge.invocations import FitVerifier
from forge_remote.forge.signing_keys import JwksCache
from forge_remote.jobs.contract import JobRequest
from forge_remote.storage.table_keys import APP_TOKEN_SK, ONCE_SK_PREFIX, installation_pk, user_token_sk
from forge_remote.tokens.store import FALLBACK_LIFETIME_S, TokenStore
from local.forge_emulator import ForgeEmulator, Site
from tests.reliability import jwt_forge
from tests.reliability.harness import (
    World,
    container,
    event,
    installation_items,
    invoke,
    queue_messages,
    stored_tokens,
)
from tests.reliability.ledger import LEDGER, Ledger
from tests.support import body_of

pytestmark = pytest.mark.reliability

APP_ID = "5c7bd2a4-0f1e-4d3b-9a6c-2e8f1b7d4a90"
STRANGER = rsa.generate_private_key(public_exponent=65537, key_size=2048)
USER = "557058:0a1b2c3d-4e5f-6789-abcd-ef0123456789"
TRIGGER_ROUTES = {
    "/forge/keepalive": ("keepalive-endpoint", "token-keepalive"),
    "/forge/lifecycle": ("lifecycle-endpoint", "app-lifecycle"),
    "/forge/uninstall": ("uninstall-endpoint", "pre-uninstall"),
    "/forge/events": ("events-endpoint", "page-events"),
}


@pytest.fixture
def installed(world: World) -> Iterator[Site]:
    site = world.forge.site()
    world.install(site, principal=USER)
    return site


def body_for(world: World, path: str, n: int = 0) -> Any:
    if path == "/forge/lifecycle":
        return world.forge.installed_event(world.forge.site(), "avi:forge:upgraded:app")
    if path == "/forge/events":
        return world.forge.page_event(str(910000 + n), "ENG")
    return {}


def fit_headers(world: World, site: Site, claims: dict[str, Any], *, newer_token: bool = True) -> dict[str, str]:
    """Headers of a call whose FIT Forge really signed (``claims``), carrying a newer app token."""
    headers = world.forge.headers(site, fit=world.forge.sign(claims))
    if newer_token:
        headers["x-forge-oauth-system"] = LEDGER.secret(world.forge.app_token(lifetime_s=3.9 * 3600))
    return headers


def assert_refused(world: World, response: dict[str, Any], before: dict[str, list[str]], status: int) -> None:
    assert response["statusCode"] == status, response
    assert body_of(response)["error"]
    assert world.state == before


# -- defect 1: each route accepts only the kind of call Forge makes to it -------------------------------
def wrong_kind_claims(forge: ForgeEmulator, site: Site, path: str) -> list[tuple[str, dict[str, Any]]]:
    right_key = TRIGGER_ROUTES[path][0]
    other_route_key = next(keys[0] for p, keys in TRIGGER_ROUTES.items() if p != path)
    cases: list[tuple[str, dict[str, Any]]] = []
    # What anyone who can open the app's UI holds: a FIT Forge signed for their invokeRemote call.
    cases.append(("UI call with a user", forge.fit_claims(site, principal=USER, module_key="ui-endpoint")))
    cases.append(("user call naming this route's module", forge.fit_claims(site, principal=USER, module_key=right_key)))
    no_user_ui = forge.fit_claims(site, module_key="ui-endpoint")
    no_user_ui["context"] = {"cloudId": site.cloud_id, "localId": "abc-123", "moduleKey": "token-status"}
    cases.append(("UI context without a principal", no_user_ui))
    extension_only = forge.fit_claims(site, module_key=right_key)
    extension_only["context"] = {"extension": {"type": "confluence:globalSettings"}}
    cases.append(("UI extension context", extension_only))
    cases.append(("another route's module", forge.fit_claims(site, module_key=other_route_key)))
    cases.append(("the UI module, no user", forge.fit_claims(site, module_key="ui-endpoint")))
    cases.append(("a module the manifest does not have", forge.fit_claims(site, module_key="evil-module")))
    ui_type = forge.fit_claims(site, module_key=right_key)
    ui_type["app"]["module"]["type"] = "confluence:globalSettings"
    cases.append(("a UI module type", ui_type))
    return cases


@pytest.mark.parametrize("path", sorted(TRIGGER_ROUTES))
def test_trigger_routes_refuse_calls_of_another_kind(world: World, installed: Site, path: str, ledger: Ledger) -> None:
    for n, (name, claims) in enumerate(wrong_kind_claims(world.forge, installed, path)):
        before = world.state
        response = world.send("POST", path, fit_headers(world, installed, claims), body_for(world, path, n))
        assert_refused(world, response, before, 403)
        assert body_of(response)["error"] == "wrong_call_kind", name
        ledger.refused()
    # The installation is untouched: still active, still holding its token.
    assert APP_TOKEN_SK in stored_tokens(world.stack, installed.installation_id)


@pytest.mark.parametrize("path", sorted(TRIGGER_ROUTES))
def test_trigger_routes_accept_every_module_the_manifest_routes_there(world: World, path: str) -> None:
    """Controls: the endpoint's key, the trigger's key, and no module key at all (lenient) all pass."""
    for key in (*TRIGGER_ROUTES[path], None):
        site = world.forge.site()
        world.install(site)
        before = world.state
        claims = world.forge.fit_claims(site, module_key=key)
        if key is None:
            claims["app"].pop("module")
        response = world.send("POST", path, fit_headers(world, site, claims), body_for(world, path))
        assert 200 <= response["statusCode"] < 300, (key, response)
        assert world.state != before  # it did act: the comparison above can fail


def test_ui_routes_refuse_a_trigger_modules_call(world: World, installed: Site, ledger: Ledger) -> None:
    for key in sorted({k for keys in TRIGGER_ROUTES.values() for k in keys}):
        before = world.state
        claims = world.forge.fit_claims(installed, module_key=key)
        response = world.send("GET", "/api/status", fit_headers(world, installed, claims))
        assert_refused(world, response, before, 403)
        ledger.refused()


def test_a_user_fit_cannot_uninstall_and_the_site_keeps_working(world: World, installed: Site) -> None:
    claims = world.forge.fit_claims(installed, principal=USER, module_key="ui-endpoint")
    assert world.send("POST", "/forge/uninstall", fit_headers(world, installed, claims), {})["statusCode"] == 403
    keepalive = world.forge.headers(installed, module_key="token-keepalive")
    keepalive["x-forge-oauth-system"] = token = LEDGER.secret(world.forge.app_token(lifetime_s=3.95 * 3600))
    assert world.send("POST", "/forge/keepalive", keepalive, {})["statusCode"] == 204
    assert stored_tokens(world.stack, installed.installation_id)[APP_TOKEN_SK] == token


def test_the_same_uninstall_fit_acts_at_most_once(world: World, installed: Site, ledger: Ledger) -> None:
    headers = world.forge.headers(installed, module_key="pre-uninstall")
    first = world.send("POST", "/forge/uninstall", headers, {})
    assert body_of(first)["installation"] == "uninstalled"
    writes = world.triggers.wiring.tokens.write_count
    before = world.state
    for _ in range(3):
        replay = world.send("POST", "/forge/uninstall", headers, {})
        assert replay["statusCode"] == 200
        assert body_of(replay)["replayed"] is True
        ledger.refused()
    assert world.state == before
    assert world.triggers.wiring.tokens.write_count == writes
    # The record of the FIT expires with DynamoDB's TTL: it does not accumulate.
    once = [
        i
        for i in installation_items(world.stack, "AppTable", installed.installation_id)
        if i["sk"]["S"].startswith(ONCE_SK_PREFIX)
    ]
    assert len(once) == 1
    assert int(once[0]["ttl"]["N"]) > clock.now()


# -- defect 2: a re-delivered token the store no longer holds is stored again ---------------------------
def keepalive(world: World, module: Any, site: Site, token: str) -> dict[str, Any]:
    headers = world.forge.headers(site, app_token=token, module_key="token-keepalive")
    LEDGER.headers(headers)
    return invoke(module, event("POST", "/forge/keepalive", headers, {}))


def test_a_token_invalidated_by_the_worker_is_stored_again_on_redelivery(world: World) -> None:
    site = world.forge.site()
    world.install(site)
    token = LEDGER.secret(world.forge.app_token(lifetime_s=3.5 * 3600))
    warm_a, warm_b = world.triggers, container(world.stack, "ForgeTriggersFunction")
    for module in (warm_a, warm_b):  # both containers have seen this token
        assert keepalive(world, module, site, token)["statusCode"] == 204
    worker_store = TokenStore(boto3.client("dynamodb"), world.stack.physical["TokensTable"])
    for module in (warm_a, warm_b, warm_a):
        # Confluence answered 401 (as it does for minutes after install): the worker invalidates it...
        assert worker_store.invalidate(site.installation_id, token)
        assert stored_tokens(world.stack, site.installation_id) == {}
        # ...and Forge delivers the same token again, to whichever container.
        assert keepalive(world, module, site, token)["statusCode"] == 204
        assert stored_tokens(world.stack, site.installation_id) == {APP_TOKEN_SK: token}


def test_a_token_removed_by_ttl_or_by_hand_is_stored_again(world: World) -> None:
    site = world.forge.site()
    world.install(site)
    token = LEDGER.secret(world.forge.app_token(lifetime_s=3.5 * 3600))
    assert keepalive(world, world.triggers, site, token)["statusCode"] == 204
    boto3.client("dynamodb").delete_item(
        TableName=world.stack.physical["TokensTable"],
        Key={"pk": {"S": installation_pk(site.installation_id)}, "sk": {"S": APP_TOKEN_SK}},
    )
    assert keepalive(world, world.triggers, site, token)["statusCode"] == 204
    assert stored_tokens(world.stack, site.installation_id) == {APP_TOKEN_SK: token}


def test_a_user_token_invalidated_is_stored_again_on_the_next_ui_call(world: World) -> None:
    site = world.forge.site()
    world.install(site)
    user_token = LEDGER.secret(world.forge.app_token(lifetime_s=3 * 3600, subject=USER))
    headers = world.forge.headers(site, user_token=user_token, principal=USER)
    assert world.send("GET", "/api/status", headers)["statusCode"] == 200
    worker_store = TokenStore(boto3.client("dynamodb"), world.stack.physical["TokensTable"])
    assert worker_store.invalidate(site.installation_id, user_token, account_id=USER)
    headers = world.forge.headers(site, user_token=user_token, principal=USER)
    assert world.send("GET", "/api/status", headers)["statusCode"] == 200
    assert stored_tokens(world.stack, site.installation_id)[user_token_sk(USER)] == user_token


# -- defect 6: an exp that is not a sane number --------------------------------------------------------
def token_with_exp(exp_json: str) -> str:
    head = jwt_forge.segment({"alg": "RS256", "typ": "JWT", "kid": "forge-token"})
    payload = jwt_forge.b64url(('{"sub":"app","iat":1,"exp":' + exp_json + ',"jti":"x"}').encode())
    return f"{head}.{payload}.{jwt_forge.b64url(bytes(range(256)))}"


ODD_EXPS = [
    "1" + "0" * 400,  # 10**400: float() overflows
    "-" + "1" + "0" * 400,
    "NaN",
    "Infinity",
    "-Infinity",
    "1e400",
    "1e308",
    "-1e308",
    '"1800000000"',
    '"soon"',
    "true",
    "null",
    "[1800000000]",
    '{"at": 1800000000}',
    "0",
    "-1",
    "1.5",
    "99999999999999999999",
]


@pytest.mark.parametrize("route", ["/forge/keepalive", "/api/status"])
def test_a_token_whose_exp_is_not_a_sane_number_gets_the_fallback_lifetime(
    world: World, route: str, ledger: Ledger
) -> None:
    for exp in ODD_EXPS:
        site = world.forge.site()
        world.install(site, lifetime_s=600)  # shorter than the fallback lifetime: the odd token is newer
        token = LEDGER.secret(token_with_exp(exp))
        principal = USER if route.startswith("/api/") else None
        headers = world.forge.headers(site, principal=principal)
        headers["x-forge-oauth-system"] = token
        now = clock.now()
        response = world.send("GET" if principal else "POST", route, headers, None if principal else {})
        assert response["statusCode"] in (200, 204), (exp, response)
        item = next(i for i in installation_items(world.stack, "TokensTable", site.installation_id))
        assert item["token"]["S"] == token, exp
        assert item["expirySource"]["S"] == "fallback", exp
        expires_at = float(item["expiresAt"]["N"])
        assert math.isfinite(expires_at), exp
        assert abs(expires_at - (now + FALLBACK_LIFETIME_S)) < 60, exp
        ledger.tried += 1


# -- defect 9: apiBaseUrl values that make urllib.parse raise, or that requests would rewrite -----------------------------------------
ODD_API_BASES = [
    "https://[api.atlassian.com/ex/confluence/x",
    "https://api.atlassian.com]/ex/confluence/x",
    "https://[::1/ex/confluence/x",
    "https://api.atlassian.com\uff0fex/confluence/x",  # fullwidth solidus
    "https://api.atlassian.com\uff20evil.example/ex",  # fullwidth commercial at
    "https://api.atlassian.com\uff1a443/ex",  # fullwidth colon
    "https://api.atlassian.com\u2100/ex",  # a/c: NFKC gives a slash
    "https://\u0430pi.atlassian.com/ex/confluence/x",  # Cyrillic a
    "https://api.atlassian.com:99999/ex/confluence/x",
    "https://api.atlassian.com:-1/ex/confluence/x",
    "https://api.atlassian.com:4 43/ex",
    "https://api.atlassian.com:0x1bb/ex",
    "https://[v1.fe80::a+en1]/ex",
    # parse fine, but requests would normalise the path (or a server decode it) to another site or API
    "https://api.atlassian.com/ex/confluence/x/../../jira/x",
    "https://api.atlassian.com/ex/confluence/%2e%2e/y",
    "https://api.atlassian.com//ex/confluence/x",
]


@pytest.mark.parametrize("path", ["/forge/keepalive", "/forge/lifecycle", "/forge/events", "/api/status"])
def test_an_api_base_url_that_breaks_the_url_parser_is_a_401(
    world: World, installed: Site, path: str, ledger: Ledger
) -> None:
    for n, value in enumerate(ODD_API_BASES):
        claims = world.forge.fit_claims(installed, principal=USER if path.startswith("/api/") else None)
        claims["app"]["apiBaseUrl"] = value
        before = world.state
        method = "GET" if path.startswith("/api/") else "POST"
        response = world.send(method, path, fit_headers(world, installed, claims), body_for(world, path, n))
        assert_refused(world, response, before, 401)
        assert "apiBaseUrl" in body_of(response)["message"], value
        ledger.refused()


# -- defect 11: nesting deep enough to pass json.loads but not a later json.dumps ----------------------
def nested(depth: int, *, lists: bool) -> str:
    return ("[" * depth + "1" + "]" * depth) if lists else ('{"a":' * depth + "1" + "}" * depth)


# Around the interpreter's recursion limit (1000) is the band that passed json.loads and broke json.dumps.
DEPTHS = [65, 300, 900, 970, 985, 992, 996, 999, 1003, 1500, 5000]


@pytest.mark.parametrize("lists", [False, True], ids=["objects", "arrays"])
@pytest.mark.parametrize("where", ["flat", "payload", "retryContext"])
def test_deep_nesting_is_a_400_never_a_500(
    world: World, installed: Site, lists: bool, where: str, ledger: Ledger
) -> None:
    for depth in DEPTHS:
        inner = nested(depth, lists=lists)
        page = json.dumps(world.forge.page_event("4242", "ENG"))[:-1]
        if where == "flat":
            raw = page + ',"deep":' + inner + "}"
        elif where == "payload":
            raw = '{"payload":' + page + ',"deep":' + inner + "}}"
        else:
            raw = page + ',"retryContext":{"retryCount":1,"deep":' + inner + "}}"
        before = world.state
        for path, encoded in (("/forge/events", False), ("/forge/events", True), ("/forge/lifecycle", False)):
            headers = world.forge.headers(installed, app_token=None)
            body = base64.b64encode(raw.encode()).decode() if encoded else raw
            response = world.send("POST", path, headers, raw=body, base64_body=encoded)
            assert response["statusCode"] == 400, (depth, response)
            assert "nested" in body_of(response)["message"]
            ledger.refused()
        assert world.state == before


def test_a_page_event_nested_within_the_cap_is_still_accepted(world: World, installed: Site) -> None:
    raw = json.dumps(world.forge.page_event("4343", "ENG"))[:-1] + ',"deep":' + nested(60, lists=False) + "}"
    response = world.send("POST", "/forge/events", world.forge.headers(installed), raw=raw)
    assert response["statusCode"] == 202, response


def test_a_deeply_nested_job_request_is_dead_not_a_crash(ledger: Ledger) -> None:
    from forge_remote.errors import BadJobRequest

    for depth in (65, 500, 990, 5000):
        body = json.dumps({"job": "page-snapshot", "installationId": "ari:x/1", "args": {}})[:-1]
        body += ',"extra":' + nested(depth, lists=False) + "}"
        with pytest.raises(BadJobRequest, match=r"nested|JSON"):
            JobRequest.from_message_body(body)
        ledger.refused()


# -- hardening: FIT lifetime and iat, product events after uninstall ----------------------------------
@pytest.mark.parametrize(
    ("iat_shift", "lifetime", "accepted"),
    [
        (0, 25, True),
        (0, 300, True),
        (0, 301, False),
        (0, 3600, False),
        (0, 10 * 365 * 86400, False),
        (-200, 3600, False),  # issued 200 s ago, still "valid" for an hour
        (5, 25, True),  # within the clock leeway
        (120, 25, False),  # issued two minutes in the future
        (3600, 25, False),
    ],
)
def test_fit_lifetime_and_issue_time_are_bounded(
    world: World, installed: Site, iat_shift: int, lifetime: int, accepted: bool, ledger: Ledger
) -> None:
    claims = world.forge.fit_claims(installed, module_key="token-keepalive")
    claims["iat"] = claims["iat"] + iat_shift
    claims["nbf"] = min(claims["nbf"], claims["iat"])
    claims["exp"] = claims["iat"] + lifetime
    before = world.state
    response = world.send("POST", "/forge/keepalive", fit_headers(world, installed, claims), {})
    if accepted:
        assert response["statusCode"] == 204, response
    else:
        assert_refused(world, response, before, 401)
        ledger.refused()


def test_a_product_event_after_uninstall_is_acknowledged_without_a_job(world: World, ledger: Ledger) -> None:
    site = world.forge.site()
    world.install(site)
    assert world.send("POST", "/forge/uninstall", world.forge.headers(site), {})["statusCode"] == 200
    queued = len(queue_messages(world.stack, "JobsQueue"))
    for n, token in enumerate((None, LEDGER.secret(world.forge.app_token()))):
        headers = world.forge.headers(site, app_token=token, module_key="page-events")
        response = world.send("POST", "/forge/events", headers, world.forge.page_event(str(5000 + n), "ENG"))
        assert response["statusCode"] == 200, response
        assert body_of(response)["jobs"] == 0
        ledger.refused()
    assert len(queue_messages(world.stack, "JobsQueue")) == queued
    assert stored_tokens(world.stack, site.installation_id) == {}


# -- defect 7: junk kids cannot lock out a key rotation; hardening: weak or foreign keys are ignored ----
def jwks_verifier(forge: ForgeEmulator, now: list[float], **options: Any) -> tuple[FitVerifier, JwksCache]:
    cache = JwksCache(forge.jwks_url, monotonic=lambda: now[0], **options)
    return FitVerifier(audience=forge.app_ari, jwks=cache, allowed_api_hosts=["api.atlassian.com"]), cache


def junk_kid_fit(forge: ForgeEmulator, site: Site, n: int) -> dict[str, str]:
    # Needs no valid signature: the kid alone sends the verifier to the JWKS.
    head = {"alg": "RS256", "typ": "JWT", "kid": f"junk-{n}"}
    return {"authorization": "Bearer " + jwt_forge.rs256(head, forge.fit_claims(site), STRANGER)}


@pytest.mark.parametrize("junk_every_s", [0.05, 1.0, 14.0])
def test_a_new_signing_key_is_accepted_within_a_minute_whatever_junk_came_first(
    forge: ForgeEmulator, junk_every_s: float, ledger: Ledger
) -> None:
    site, now = forge.site(), [1000.0]
    verifier, _cache = jwks_verifier(forge, now)
    verifier.verify(forge.headers(site))
    old = forge.keys
    try:
        n = 0
        start = now[0]
        while now[0] < start + 5:  # junk first, then the rotation while junk keeps coming
            with pytest.raises(InvalidInvocation):
                verifier.verify(junk_kid_fit(forge, site, n))
            n, now[0] = n + 1, now[0] + junk_every_s
        forge.rotate_key()
        rotated_at, accepted_at = now[0], None
        while now[0] < rotated_at + 120:
            with pytest.raises(InvalidInvocation):
                verifier.verify(junk_kid_fit(forge, site, n))
            try:
                verifier.verify(forge.headers(site))  # Forge's call, signed with the new key
                accepted_at = now[0]
                break
            except InvalidInvocation:
                pass
            n, now[0] = n + 1, now[0] + junk_every_s
        assert accepted_at is not None
        assert accepted_at - rotated_at <= 60
        ledger.refused(n)
    finally:
        forge.keys = old


def test_junk_kids_cannot_make_a_container_fetch_more_than_a_few_times_a_minute(forge: ForgeEmulator) -> None:
    site, now = forge.site(), [1000.0]
    verifier, cache = jwks_verifier(forge, now)
    verifier.verify(forge.headers(site))
    for n in range(1200):  # 20 a second for a minute
        with pytest.raises(InvalidInvocation):
            verifier.verify(junk_kid_fit(forge, site, n))
        now[0] += 0.05
    assert cache.fetch_count <= 1 + 5


def test_small_rsa_and_non_rsa_keys_in_the_jwks_are_ignored_and_logged_once(
    forge: ForgeEmulator, caplog: pytest.LogCaptureFixture, ledger: Ledger
) -> None:
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505 (the point)
    curve = ec.generate_private_key(ec.SECP256R1())
    weak_jwk = {**json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(weak.public_key())), "kid": "weak", "use": "sig"}
    ec_jwk = {**json.loads(jwt.algorithms.ECAlgorithm.to_jwk(curve.public_key())), "kid": "curve", "use": "sig"}
    document = {"keys": [forge.keys[0].jwk(), weak_jwk, ec_jwk]}
    now = [1000.0]
    cache = JwksCache("https://jwks.invalid/", fetch=lambda url, timeout: document, monotonic=lambda: now[0])
    verifier = FitVerifier(audience=forge.app_ari, jwks=cache, allowed_api_hosts=["api.atlassian.com"])
    site = forge.site()
    caplog.set_level(logging.WARNING, logger="forge_remote.forge.signing_keys")
    assert verifier.verify(forge.headers(site)).installation_id == site.installation_id
    for _ in range(3):
        now[0] += 3600  # periodic refreshes see the same unusable keys again
        weak_fit = jwt_forge.rs256({"alg": "RS256", "kid": "weak"}, forge.fit_claims(site), weak)
        with pytest.raises(InvalidInvocation):
            verifier.verify({"authorization": f"Bearer {weak_fit}"})
        ec_fit = jwt_forge.es256({"alg": "RS256", "kid": "curve"}, forge.fit_claims(site), curve)
        with pytest.raises(InvalidInvocation):
            verifier.verify({"authorization": f"Bearer {ec_fit}"})
        ledger.refused(2)
    ignored = [r.getMessage() for r in caplog.records if "ignored" in r.getMessage()]
    assert len(ignored) == 2, ignored
    assert any("1024" in m for m in ignored), ignored


# -- defect 8: FORGE_JWKS_URL is parsed, not prefix-matched ----------------------------------------------
@pytest.mark.parametrize(
    "url",
    [
        "http://localhost@attacker.example/.well-known/jwks.json",
        "http://localhost.attacker.example/.well-known/jwks.json",
        "http://127.0.0.1.attacker.example/.well-known/jwks.json",
        "http://127.0.0.1@attacker.example/jwks.json",
        "http://localhost:80@attacker.example/jwks.json",
        "http://user:pass@127.0.0.1/jwks.json",
        "https://user@forge.cdn.prod.atlassian-dev.net/.well-known/jwks.json",
        "http://10.0.0.1/jwks.json",
        "http://forge.cdn.prod.atlassian-dev.net/.well-known/jwks.json",
        "http://[::1/jwks.json",
        "http://127.0.0.1:99999/jwks.json",
        "http://l\uff4fcalhost/jwks.json",
        "ftp://localhost/jwks.json",
        "file:///etc/jwks.json",
        "//localhost/jwks.json",
        "localhost/jwks.json",
    ],
)
def test_a_jwks_url_that_only_looks_local_is_refused(url: str, ledger: Ledger) -> None:
    env = {"FORGE_APP_ID": APP_ID, "TOKENS_TABLE": "t", "APP_TABLE": "a", "FORGE_JWKS_URL": url}
    with pytest.raises(ConfigurationError, match="FORGE_JWKS_URL"):
        Settings.from_env(env)
    ledger.refused()


@pytest.mark.parametrize(
    "url",
    [
        "https://forge.cdn.prod.atlassian-dev.net/.well-known/jwks.json",
        "http://127.0.0.1:8765/.well-known/jwks.json",
        "http://127.5.6.7/.well-known/jwks.json",
        "http://localhost:8080/.well-known/jwks.json",
        "http://[::1]:8080/.well-known/jwks.json",
    ],
)
def test_https_and_real_loopback_jwks_urls_are_accepted(url: str) -> None:
    env = {"FORGE_APP_ID": APP_ID, "TOKENS_TABLE": "t", "APP_TABLE": "a", "FORGE_JWKS_URL": url}
    assert Settings.from_env(env).jwks_url == url
