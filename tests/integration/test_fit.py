"""FIT verification: every rejection reason, key rotation, JWKS outage (docs/token-rules.md, rules 1 and 8).
A bad FIT raises ``InvalidInvocation`` (401); a FIT that cannot be checked for want of keys raises
``SigningKeysUnavailable`` (503), whatever the token."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from forge_remote.config import app_ari
from forge_remote.errors import InvalidInvocation, SigningKeysUnavailable
from forge_remote.forge.invocations import FitVerifier
from forge_remote.forge.signing_keys import JwksCache
from local.forge_emulator import ForgeEmulator, SigningKey, Site, _rsa_key


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@pytest.fixture
def verifier(forge: ForgeEmulator) -> FitVerifier:
    forge.jwks_available = True
    return FitVerifier(audience=forge.app_ari, jwks=JwksCache(forge.jwks_url), allowed_api_hosts=["api.atlassian.com"])


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def test_valid_fit_gives_the_invocation(forge: ForgeEmulator, verifier: FitVerifier, site: Site) -> None:
    system, user = forge.app_token(), forge.app_token(subject="user")
    headers = forge.headers(site, app_token=system, user_token=user, principal="557058:abc-123")
    invocation = verifier.verify(headers)
    assert invocation.installation_id == site.installation_id
    assert invocation.api_base_url == site.api_base_url
    assert invocation.cloud_id == site.cloud_id
    assert invocation.principal == "557058:abc-123"
    assert invocation.environment_type == "DEVELOPMENT"
    assert invocation.module_type == "core:endpoint"
    assert invocation.app_token == system
    assert invocation.user_token == user
    assert system not in repr(invocation)
    assert user not in repr(invocation)


def test_app_id_may_be_configured_bare_or_as_ari(forge: ForgeEmulator, site: Site) -> None:
    bare = forge.app_ari.rsplit("/", 1)[1]
    assert app_ari(bare) == app_ari(forge.app_ari) == forge.app_ari
    verifier = FitVerifier(
        audience=app_ari(bare), jwks=JwksCache(forge.jwks_url), allowed_api_hosts=["api.atlassian.com"]
    )
    assert verifier.verify(forge.headers(site)).installation_id == site.installation_id


def test_user_token_without_principal_is_ignored(forge: ForgeEmulator, verifier: FitVerifier, site: Site) -> None:
    # User tokens never arrive on triggers; one without a principal has no account to be stored under.
    invocation = verifier.verify(forge.headers(site, user_token=forge.app_token()))
    assert invocation.user_token is None


def test_empty_token_headers_are_not_tokens(forge: ForgeEmulator, verifier: FitVerifier, site: Site) -> None:
    headers = forge.headers(site)
    headers["x-forge-oauth-system"] = "   "
    assert verifier.verify(headers).app_token is None


def _mutated(forge: ForgeEmulator, site: Site, mutate: Callable[[dict[str, Any]], None]) -> str:
    claims = forge.fit_claims(site)
    mutate(claims)
    return forge.sign(claims)


def _without(path: str) -> Callable[[dict[str, Any]], None]:
    def mutate(claims: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target = claims
        for name in parents:
            target = target[name]
        del target[last]

    return mutate


def _setting(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(claims: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target = claims
        for name in parents:
            target = target[name]
        target[last] = value

    return mutate


CLAIM_CASES: list[tuple[str, Callable[[dict[str, Any]], None], str]] = [
    (
        "wrong audience",
        _setting("aud", "ari:cloud:ecosystem::app/00000000-0000-0000-0000-000000000001"),
        "wrong audience",
    ),
    ("wrong issuer", _setting("iss", "someone-else"), "wrong issuer"),
    ("expired", _setting("exp", int(time.time()) - 120), "token expired"),
    ("not yet valid", _setting("nbf", int(time.time()) + 600), "token not yet valid"),
    ("no exp", _without("exp"), "missing claim exp"),
    ("no iat", _without("iat"), "missing claim iat"),
    ("no jti", _without("jti"), "missing claim jti"),
    ("no app", _without("app"), "missing claim app"),
    ("no installation id", _without("app.installationId"), "app.installationId"),
    ("installation id not a string", _setting("app.installationId", 42), "app.installationId"),
    ("no apiBaseUrl", _without("app.apiBaseUrl"), "app.apiBaseUrl rejected"),
    ("apiBaseUrl on another host", _setting("app.apiBaseUrl", "https://evil.example.com/ex/confluence/x"), "not in"),
    ("apiBaseUrl over http", _setting("app.apiBaseUrl", "http://api.atlassian.com/ex/confluence/x"), "https"),
    (
        "apiBaseUrl with credentials",
        _setting("app.apiBaseUrl", "https://u:p@api.atlassian.com/ex/confluence/x"),
        "plain",
    ),
    ("apiBaseUrl lookalike host", _setting("app.apiBaseUrl", "https://api.atlassian.com.evil.io/ex"), "not in"),
    ("invalid icLabel", _setting("icLabel", "Bad Label!"), "icLabel"),
    (
        "app.id of another app",
        _setting("app.id", "ari:cloud:ecosystem::app/00000000-0000-0000-0000-000000000002"),
        "app.id",
    ),
    ("principal of the wrong type", _setting("principal", {"id": "x"}), "principal"),
]


@pytest.mark.parametrize(("name", "mutate", "reason"), CLAIM_CASES, ids=[c[0] for c in CLAIM_CASES])
def test_claim_rejections(
    forge: ForgeEmulator,
    verifier: FitVerifier,
    site: Site,
    name: str,
    mutate: Callable[[dict[str, Any]], None],
    reason: str,
) -> None:
    with pytest.raises(InvalidInvocation) as caught:
        verifier.verify(bearer(_mutated(forge, site, mutate)))
    assert reason in caught.value.reason


def test_valid_ic_label_is_accepted(forge: ForgeEmulator, verifier: FitVerifier, site: Site) -> None:
    token = _mutated(forge, site, _setting("icLabel", "isolated_cloud-1"))
    assert verifier.verify(bearer(token)).installation_id == site.installation_id


def test_small_clock_skew_is_tolerated(forge: ForgeEmulator, verifier: FitVerifier, site: Site) -> None:
    token = _mutated(forge, site, _setting("exp", int(time.time()) - 3))
    assert verifier.verify(bearer(token)).installation_id == site.installation_id


def test_alg_none_is_rejected(forge: ForgeEmulator, verifier: FitVerifier, site: Site) -> None:
    header = _b64(json.dumps({"alg": "none", "typ": "JWT", "kid": forge.keys[0].kid}).encode())
    payload = _b64(json.dumps(forge.fit_claims(site)).encode())
    with pytest.raises(InvalidInvocation, match="algorithm not allowed"):
        verifier.verify(bearer(f"{header}.{payload}."))


def test_hs256_signed_with_the_public_key_is_rejected(forge: ForgeEmulator, verifier: FitVerifier, site: Site) -> None:
    # The classic algorithm-confusion attack: HMAC keyed with the (public) RSA key.
    public_pem = (
        forge.keys[0]
        .private_key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": forge.keys[0].kid}).encode())
    payload = _b64(json.dumps(forge.fit_claims(site)).encode())
    signature = _b64(hmac.new(public_pem, f"{header}.{payload}".encode(), hashlib.sha256).digest())
    with pytest.raises(InvalidInvocation, match="algorithm not allowed"):
        verifier.verify(bearer(f"{header}.{payload}.{signature}"))


def test_tampered_payload_is_a_bad_signature(forge: ForgeEmulator, verifier: FitVerifier, site: Site) -> None:
    token = forge.sign(forge.fit_claims(site))
    header, _, signature = token.split(".")
    forged_payload = _b64(json.dumps({**forge.fit_claims(site), "aud": forge.app_ari, "app": {}}).encode())
    with pytest.raises(InvalidInvocation, match="bad signature"):
        verifier.verify(bearer(f"{header}.{forged_payload}.{signature}"))


def test_unknown_kid_is_rejected(forge: ForgeEmulator, verifier: FitVerifier, site: Site) -> None:
    stranger = SigningKey(kid="not-published", private_key=_rsa_key())
    with pytest.raises(InvalidInvocation, match="unknown signing key"):
        verifier.verify(bearer(forge.sign(forge.fit_claims(site), key=stranger)))


def test_known_kid_but_wrong_key_is_a_bad_signature(forge: ForgeEmulator, verifier: FitVerifier, site: Site) -> None:
    impostor = SigningKey(kid=forge.keys[0].kid, private_key=_rsa_key())
    with pytest.raises(InvalidInvocation, match="bad signature"):
        verifier.verify(bearer(forge.sign(forge.fit_claims(site), key=impostor)))


def test_missing_kid_is_rejected(forge: ForgeEmulator, verifier: FitVerifier, site: Site) -> None:
    token = jwt.encode(forge.fit_claims(site), forge.keys[0].private_key, algorithm="RS256")
    with pytest.raises(InvalidInvocation, match="no key id"):
        verifier.verify(bearer(token))


@pytest.mark.parametrize(
    "authorization",
    [None, "", "Bearer", "Bearer ", "Basic dXNlcjpwYXNz", "Bearer not-a-jwt", "Bearer a.b.c", "x" * 20000],
)
def test_malformed_authorization_is_rejected(verifier: FitVerifier, authorization: str | None) -> None:
    headers = {} if authorization is None else {"authorization": authorization}
    with pytest.raises(InvalidInvocation):
        verifier.verify(headers)


def test_keys_are_cached_not_refetched_per_request(forge: ForgeEmulator, site: Site) -> None:
    cache = JwksCache(forge.jwks_url)
    verifier = FitVerifier(audience=forge.app_ari, jwks=cache, allowed_api_hosts=["api.atlassian.com"])
    for _ in range(20):
        verifier.verify(forge.headers(site))
    assert cache.fetch_count == 1


def test_key_rotation_is_picked_up_once(forge: ForgeEmulator, site: Site) -> None:
    cache = JwksCache(forge.jwks_url)
    verifier = FitVerifier(audience=forge.app_ari, jwks=cache, allowed_api_hosts=["api.atlassian.com"])
    verifier.verify(forge.headers(site))
    old = forge.keys[0]
    forge.rotate_key()
    try:
        for _ in range(5):
            verifier.verify(forge.headers(site))  # signed with the new key
        assert cache.fetch_count == 2
        assert verifier.verify(bearer(forge.sign(forge.fit_claims(site), key=old))).installation_id
    finally:
        forge.keys = [old]


def test_unknown_kids_cannot_hammer_the_jwks_endpoint(forge: ForgeEmulator, site: Site) -> None:
    cache = JwksCache(forge.jwks_url, cooldown_s=300)
    verifier = FitVerifier(audience=forge.app_ari, jwks=cache, allowed_api_hosts=["api.atlassian.com"])
    verifier.verify(forge.headers(site))
    for i in range(10):
        stranger = SigningKey(kid=f"forged-{i}", private_key=forge.keys[0].private_key)
        with pytest.raises(InvalidInvocation):
            verifier.verify(bearer(forge.sign(forge.fit_claims(site), key=stranger)))
    assert cache.fetch_count == 2  # the first fetch, then one refetch for all unknown kids in the cooldown


def test_jwks_outage_keeps_cached_keys_and_an_unknown_kid_is_an_outage(forge: ForgeEmulator, site: Site) -> None:
    now = [1000.0]
    cache = JwksCache(forge.jwks_url, max_age_s=60, cooldown_s=30, monotonic=lambda: now[0])
    verifier = FitVerifier(audience=forge.app_ari, jwks=cache, allowed_api_hosts=["api.atlassian.com"])
    verifier.verify(forge.headers(site))
    forge.jwks_available = False
    try:
        now[0] += 3600  # keys are stale and the refresh fails: the old keys still verify
        assert verifier.verify(forge.headers(site)).installation_id == site.installation_id
        assert cache.fetch_count == 2
        stranger = SigningKey(kid="rotated-during-outage", private_key=_rsa_key())
        # Fails closed (nothing verified), but as an outage: the kid may be a key Forge rotated to meanwhile.
        with pytest.raises(SigningKeysUnavailable, match="unknown signing key and the JWKS could not be refetched"):
            verifier.verify(bearer(forge.sign(forge.fit_claims(site), key=stranger)))
        assert cache.fetch_count == 3
    finally:
        forge.jwks_available = True


_STRANGER = SigningKey(kid="stranger", private_key=_rsa_key())


def test_no_keys_at_all_fails_closed_as_an_outage(site: Site, forge: ForgeEmulator) -> None:
    forge.jwks_available = False
    try:
        cache = JwksCache(forge.jwks_url, timeout_s=0.5)
        verifier = FitVerifier(audience=forge.app_ari, jwks=cache, allowed_api_hosts=["api.atlassian.com"])
        for headers in (forge.headers(site), bearer(forge.sign(forge.fit_claims(site), key=_STRANGER))):
            with pytest.raises(SigningKeysUnavailable, match="signing keys could not be fetched"):
                verifier.verify(headers)  # genuine or not, it cannot be told: neither is called a bad FIT
    finally:
        forge.jwks_available = True


@pytest.mark.parametrize(
    ("name", "mutate", "reason"),
    [c for c in CLAIM_CASES if c[0] in ("wrong audience", "expired")],
    ids=["wrong audience", "expired"],
)
def test_a_bad_fit_stays_a_rejection_while_keys_are_available(
    forge: ForgeEmulator,
    verifier: FitVerifier,
    site: Site,
    name: str,
    mutate: Callable[[dict[str, Any]], None],
    reason: str,
) -> None:
    verifier.verify(forge.headers(site))  # keys fetched
    forge.jwks_available = False  # and the JWKS gone since: cached keys still decide
    try:
        with pytest.raises(InvalidInvocation, match=reason):
            verifier.verify(bearer(_mutated(forge, site, mutate)))
        impostor = SigningKey(kid=forge.keys[0].kid, private_key=_rsa_key())
        with pytest.raises(InvalidInvocation, match="bad signature"):
            verifier.verify(bearer(forge.sign(forge.fit_claims(site), key=impostor)))
    finally:
        forge.jwks_available = True


def test_rejection_reasons_never_contain_the_token(forge: ForgeEmulator, verifier: FitVerifier, site: Site) -> None:
    for _, mutate, _ in CLAIM_CASES:
        token = _mutated(forge, site, mutate)
        with pytest.raises(InvalidInvocation) as caught:
            verifier.verify(bearer(token))
        for part in token.split("."):
            assert part not in str(caught.value)


def test_a_container_that_started_during_an_outage_recovers_quickly(forge: ForgeEmulator, site: Site) -> None:
    now = [1000.0]
    cache = JwksCache(forge.jwks_url, cooldown_s=300, monotonic=lambda: now[0])
    verifier = FitVerifier(audience=forge.app_ari, jwks=cache, allowed_api_hosts=["api.atlassian.com"])
    forge.jwks_available = False
    try:
        for _ in range(5):
            with pytest.raises(SigningKeysUnavailable, match="signing keys could not be fetched"):
                verifier.verify(forge.headers(site))
        assert cache.fetch_count == 2  # the first fetch and one unknown-kid refetch, not one per call
    finally:
        forge.jwks_available = True
    now[0] += 11  # well before the 300 s cooldown: with no keys at all it retries sooner
    assert verifier.verify(forge.headers(site)).installation_id == site.installation_id
