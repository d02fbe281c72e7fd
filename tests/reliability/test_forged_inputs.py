"""A corpus of forged and malformed Forge calls through the real handlers: each is refused (401/400)
and none writes anything. Plus a fuzz test: no input makes a handler answer 500 or raise."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import boto3
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from local.apigw import http_api_event
from local.forge_emulator import ForgeEmulator, SigningKey, Site, _rsa_key
from local.lambda_context import LocalLambdaContext
from local.stack import LocalStack
from tests.conftest import Gateway
from tests.reliability.conftest import Ledger

pytestmark = pytest.mark.reliability


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[ForgeEmulator, Site], tuple[str, str, dict[str, str], Any]]
    status: int


def _claims(**changes: Any) -> Callable[[ForgeEmulator, Site], dict[str, Any]]:
    def make(forge: ForgeEmulator, site: Site) -> dict[str, Any]:
        claims = forge.fit_claims(site)
        for path, value in changes.items():
            *parents, last = path.split("__")
            target = claims
            for name in parents:
                target = target[name]
            if value is _DELETE:
                del target[last]
            else:
                target[last] = value
        return claims

    return make


_DELETE = object()


def keepalive_with(
    authorization: Callable[[ForgeEmulator, Site], str | None],
) -> Callable[[ForgeEmulator, Site], tuple[str, str, dict[str, str], Any]]:
    def build(forge: ForgeEmulator, site: Site) -> tuple[str, str, dict[str, str], Any]:
        headers = {"x-forge-oauth-system": forge.app_token(), "content-type": "application/json"}
        value = authorization(forge, site)
        if value is not None:
            headers["authorization"] = value
        return "POST", "/forge/keepalive", headers, {}

    return build


def signed(
    claims: Callable[[ForgeEmulator, Site], dict[str, Any]], **sign: Any
) -> Callable[[ForgeEmulator, Site], str]:
    return lambda forge, site: "Bearer " + forge.sign(claims(forge, site), **sign)


def _alg_none(forge: ForgeEmulator, site: Site) -> str:
    header = _b64(json.dumps({"alg": "none", "kid": forge.keys[0].kid}).encode())
    return f"Bearer {header}.{_b64(json.dumps(forge.fit_claims(site)).encode())}."


def _hs256_public_key(forge: ForgeEmulator, site: Site) -> str:
    pem = (
        forge.keys[0]
        .private_key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    head = _b64(json.dumps({"alg": "HS256", "kid": forge.keys[0].kid}).encode())
    body = _b64(json.dumps(forge.fit_claims(site)).encode())
    return f"Bearer {head}.{body}.{_b64(hmac.new(pem, f'{head}.{body}'.encode(), hashlib.sha256).digest())}"


def _rs512(forge: ForgeEmulator, site: Site) -> str:
    key = forge.keys[0]
    return "Bearer " + jwt.encode(forge.fit_claims(site), key.private_key, algorithm="RS512", headers={"kid": key.kid})


def _es256(forge: ForgeEmulator, site: Site) -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    return "Bearer " + jwt.encode(forge.fit_claims(site), key, algorithm="ES256", headers={"kid": forge.keys[0].kid})


def _tampered(forge: ForgeEmulator, site: Site) -> str:
    head, _, sig = forge.sign(forge.fit_claims(site)).split(".")
    other = forge.fit_claims(forge.site())
    return f"Bearer {head}.{_b64(json.dumps(other).encode())}.{sig}"


def _truncated(forge: ForgeEmulator, site: Site) -> str:
    return "Bearer " + forge.sign(forge.fit_claims(site))[:-20]


def _body_case(
    path: str, body: Any, *, binary: bool = False
) -> Callable[[ForgeEmulator, Site], tuple[str, str, dict[str, str], Any]]:
    def build(forge: ForgeEmulator, site: Site) -> tuple[str, str, dict[str, str], Any]:
        headers = forge.headers(site, system_token=forge.app_token())
        if binary:
            headers["x-binary"] = "1"
        return "POST", path, headers, body

    return build


NOW = int(time.time())
STRANGER = SigningKey(kid="stranger", private_key=_rsa_key())
CORPUS: list[Case] = [
    Case("no Authorization", keepalive_with(lambda f, s: None), 401),
    Case("empty Bearer", keepalive_with(lambda f, s: "Bearer "), 401),
    Case("Basic credentials", keepalive_with(lambda f, s: "Basic dXNlcjpwYXNzd29yZA=="), 401),
    Case("not a JWT", keepalive_with(lambda f, s: "Bearer hello-world"), 401),
    Case("four segments", keepalive_with(lambda f, s: "Bearer a.b.c.d"), 401),
    Case("huge Authorization header", keepalive_with(lambda f, s: "Bearer " + "A" * 40000), 401),
    Case("alg none", keepalive_with(_alg_none), 401),
    Case("HS256 keyed with the public key", keepalive_with(_hs256_public_key), 401),
    Case("RS512 instead of RS256", keepalive_with(_rs512), 401),
    Case("ES256 with a published kid", keepalive_with(_es256), 401),
    Case("unknown kid", keepalive_with(signed(_claims(), key=STRANGER)), 401),
    Case(
        "known kid, wrong key",
        keepalive_with(
            lambda f, s: "Bearer " + f.sign(f.fit_claims(s), key=SigningKey(f.keys[0].kid, STRANGER.private_key))
        ),
        401,
    ),
    Case("payload swapped under a valid signature", keepalive_with(_tampered), 401),
    Case("truncated signature", keepalive_with(_truncated), 401),
    Case("expired", keepalive_with(signed(_claims(exp=NOW - 300))), 401),
    Case("not yet valid", keepalive_with(signed(_claims(nbf=NOW + 3600))), 401),
    Case("no iat", keepalive_with(signed(_claims(iat=_DELETE))), 401),
    Case("exp of the wrong type", keepalive_with(signed(_claims(exp="tomorrow"))), 401),
    Case(
        "audience of another app",
        keepalive_with(signed(_claims(aud="ari:cloud:ecosystem::app/11111111-1111-1111-1111-111111111111"))),
        401,
    ),
    Case("no audience", keepalive_with(signed(_claims(aud=_DELETE))), 401),
    Case("wrong issuer", keepalive_with(signed(_claims(iss="forge/someone-else"))), 401),
    Case("no jti", keepalive_with(signed(_claims(jti=_DELETE))), 401),
    Case("jti of the wrong type", keepalive_with(signed(_claims(jti=12345))), 401),
    Case("no app claim", keepalive_with(signed(_claims(app=_DELETE))), 401),
    Case("app claim a string", keepalive_with(signed(_claims(app="app"))), 401),
    Case("no installationId", keepalive_with(signed(_claims(app__installationId=_DELETE))), 401),
    Case(
        "installationId with path characters",
        keepalive_with(signed(_claims(app__installationId="../../INST#x y"))),
        401,
    ),
    Case("installationId of the wrong type", keepalive_with(signed(_claims(app__installationId=["a"]))), 401),
    Case(
        "apiBaseUrl over http",
        keepalive_with(signed(_claims(app__apiBaseUrl="http://api.atlassian.com/ex/confluence/x"))),
        401,
    ),
    Case(
        "apiBaseUrl off the allow-list",
        keepalive_with(signed(_claims(app__apiBaseUrl="https://attacker.example/ex/confluence/x"))),
        401,
    ),
    Case("apiBaseUrl missing", keepalive_with(signed(_claims(app__apiBaseUrl=_DELETE))), 401),
    Case("invalid icLabel", keepalive_with(signed(_claims(icLabel="NOT VALID!"))), 401),
    Case("icLabel too long", keepalive_with(signed(_claims(icLabel="a" * 51))), 401),
    Case("principal of the wrong type", keepalive_with(signed(_claims(principal=42))), 401),
    Case("lifecycle body not JSON", _body_case("/forge/lifecycle", "{not json"), 400),
    Case("lifecycle body a JSON array", _body_case("/forge/lifecycle", "[1,2,3]"), 400),
    Case("lifecycle body empty", _body_case("/forge/lifecycle", ""), 400),
    Case("lifecycle body without eventType", _body_case("/forge/lifecycle", {"payload": {"id": "x"}}), 400),
    Case("event body flagged base64 but not", _body_case("/forge/events", "%%%not-base64%%%", binary=True), 400),
    Case(
        "event body over 500 KB",
        _body_case("/forge/events", {"eventType": "avi:confluence:created:page", "pad": "x" * 600_000}),
        400,
    ),
    Case("event body nested 100k deep", _body_case("/forge/events", "[" * 100_000 + "]" * 100_000), 400),
    Case("event with a non-string eventType", _body_case("/forge/events", {"payload": {"eventType": {"x": 1}}}), 400),
]


def table_items(stack: LocalStack, name: str) -> list[dict[str, Any]]:
    return boto3.client("dynamodb").scan(TableName=stack.physical[name])["Items"]


def queued(stack: LocalStack) -> int:
    attributes = boto3.client("sqs").get_queue_attributes(
        QueueUrl=stack.physical["JobsQueue"], AttributeNames=["ApproximateNumberOfMessages"]
    )
    return int(attributes["Attributes"]["ApproximateNumberOfMessages"])


def send(gateway: Gateway, method: str, path: str, headers: dict[str, str], body: Any) -> dict[str, Any]:
    binary = headers.pop("x-binary", None) is not None
    event = http_api_event(method, path, headers=headers, body=body if not binary else None)
    if binary:
        event["body"], event["isBase64Encoded"] = body, True
    module = gateway.calls if path.startswith("/api/") else gateway.triggers
    response: dict[str, Any] = module.lambda_handler(event, LocalLambdaContext(timeout_s=6))
    return response


def test_the_corpus_is_big_enough() -> None:
    assert len(CORPUS) >= 30


@pytest.mark.parametrize("case", CORPUS, ids=[c.name for c in CORPUS])
def test_forged_or_malformed_call_is_refused_and_writes_nothing(
    case: Case, gateway: Gateway, forge: ForgeEmulator, site: Site, stack: LocalStack, ledger: Ledger
) -> None:
    method, path, headers, body = case.build(forge, site)
    for name, value in headers.items():
        if name in ("authorization", "x-forge-oauth-system"):
            ledger.secret(value.removeprefix("Bearer "))
    ledger.tried += 1
    response = send(gateway, method, path, headers, body)
    ledger.seen(response.get("body"))
    assert response["statusCode"] == case.status
    assert response["headers"]["Content-Type"] == "application/json"
    assert json.loads(response["body"])["error"] in ("unauthorized", "bad_request")
    assert table_items(stack, "TokensTable") == []
    assert table_items(stack, "AppTable") == []
    assert queued(stack) == 0
    ledger.rejected += 1


def test_foreign_installation_in_the_body_is_ignored(
    gateway: Gateway, forge: ForgeEmulator, stack: LocalStack, ledger: Ledger
) -> None:
    mine, theirs = forge.site(), forge.site()
    ledger.tried += 1
    body = {"installationId": theirs.installation_id, "payload": {"app": {"installationId": theirs.installation_id}}}
    response = send(gateway, "POST", "/forge/keepalive", forge.headers(mine), body)
    assert response["statusCode"] == 204
    assert table_items(stack, "TokensTable") == []  # no token header: nothing to store, for anyone
    assert all(theirs.installation_id not in json.dumps(i) for i in table_items(stack, "AppTable"))
    ledger.rejected += 1


def test_oversized_token_header_is_not_stored(
    gateway: Gateway, forge: ForgeEmulator, site: Site, stack: LocalStack, ledger: Ledger
) -> None:
    ledger.tried += 1
    headers = forge.headers(site)
    headers["x-forge-oauth-system"] = "t" * 20000
    response = send(gateway, "POST", "/forge/keepalive", headers, {})
    assert response["statusCode"] == 204
    assert table_items(stack, "TokensTable") == []
    ledger.rejected += 1


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)
bodies = st.one_of(
    json_values.map(json.dumps),
    st.binary(max_size=200).map(lambda b: b.decode("latin-1")),
    st.fixed_dictionaries(
        {"eventType": st.sampled_from(["avi:forge:installed:app", "avi:confluence:created:page", "x"])},
        optional={"content": json_values, "payload": json_values, "retryContext": json_values},
    ).map(json.dumps),
)
header_values = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=60)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(
    path=st.sampled_from(
        [
            "/forge/lifecycle",
            "/forge/uninstall",
            "/forge/events",
            "/forge/keepalive",
            "/api/status",
            "/api/x/../../forge",
            "/forge/lifecycle/",
        ]
    ),
    method=st.sampled_from(["POST", "GET", "PUT", "DELETE"]),
    body=bodies,
    binary=st.booleans(),
    valid_fit=st.booleans(),
    extra=st.dictionaries(
        st.sampled_from(
            [
                "authorization",
                "x-forge-oauth-system",
                "x-forge-oauth-user",
                "content-type",
                "x-b3-traceid",
                "x-anything",
            ]
        ),
        header_values,
        max_size=3,
    ),
)
def test_fuzzed_requests_never_crash_a_handler(
    gateway: Gateway,
    forge: ForgeEmulator,
    site: Site,
    ledger: Ledger,
    path: str,
    method: str,
    body: str,
    binary: bool,
    valid_fit: bool,
    extra: dict[str, str],
) -> None:
    headers = forge.headers(site, system_token=forge.app_token()) if valid_fit else {}
    for value in headers.values():
        ledger.secret(value.removeprefix("Bearer "))
    if not valid_fit or "authorization" not in extra:
        headers.update(extra)
    event = http_api_event(method, path, headers=headers, body=None)
    event["body"] = base64.b64encode(body.encode("utf-8", "surrogatepass")).decode() if binary else body
    event["isBase64Encoded"] = binary
    module = gateway.calls if path.startswith("/api/") else gateway.triggers
    ledger.tried += 1
    response = module.lambda_handler(event, LocalLambdaContext(timeout_s=6))
    ledger.seen(response.get("body"))
    assert response["statusCode"] < 500
    if response["statusCode"] >= 400:
        assert isinstance(json.loads(response["body"]), dict)
        ledger.rejected += 1
