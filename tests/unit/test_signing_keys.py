"""Forge's signing keys, cached per container (``forge/signing_keys.py``): fetched once, refetched for an unknown
``kid`` at most once per interval, kept through a failed fetch, and only RSA keys of 2048 bits or more."""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from forge_remote.errors import InvalidInvocation
from forge_remote.forge.signing_keys import NO_KEYS_RETRY_S, UNKNOWN_KID_INTERVAL_S, JwksCache

URL = "https://forge.example/.well-known/jwks.json"


@functools.cache
def jwk(kid: str, bits: int = 2048) -> dict[str, Any]:
    public = rsa.generate_private_key(public_exponent=65537, key_size=bits).public_key()
    return {**json.loads(RSAAlgorithm.to_jwk(public)), "kid": kid, "use": "sig", "alg": "RS256"}


@dataclass
class FakeJwks:
    """The JWKS endpoint: its key set now, or a failure; and the time, which a test moves."""

    keys: list[dict[str, Any]] = field(default_factory=list)
    failing: bool = False
    now: float = 1000.0
    fetched: int = 0

    def fetch(self, url: str, timeout_s: float) -> dict[str, Any]:
        assert url == URL
        self.fetched += 1
        if self.failing:
            raise OSError("connection refused")
        return {"keys": self.keys}

    def cache(self, **options: float) -> JwksCache:
        return JwksCache(URL, fetch=self.fetch, monotonic=lambda: self.now, **options)


def test_keys_are_fetched_once_and_reused() -> None:
    endpoint = FakeJwks([jwk("k1"), jwk("k2")])
    cache = endpoint.cache()
    assert cache.key("k1").key_id == "k1"
    assert cache.key("k2").key_id == "k2"
    endpoint.now += 3599
    cache.key("k1")
    assert endpoint.fetched == 1
    endpoint.now += 1  # max age reached: a refresh picks up rotations
    cache.key("k1")
    assert endpoint.fetched == 2


def test_unknown_kids_refetch_at_most_once_per_interval() -> None:
    endpoint = FakeJwks([jwk("k1")])
    cache = endpoint.cache()
    cache.key("k1")
    for _ in range(5):
        with pytest.raises(InvalidInvocation, match="unknown signing key"):
            cache.key("junk")
    assert endpoint.fetched == 2  # the first fetch, and one for the unknown kid
    endpoint.keys.append(jwk("k-new"))  # Forge starts signing with a new key
    endpoint.now += UNKNOWN_KID_INTERVAL_S
    assert cache.key("k-new").key_id == "k-new"
    assert endpoint.fetched == 3


def test_a_failed_refresh_keeps_the_keys_already_known() -> None:
    endpoint = FakeJwks([jwk("k1")])
    cache = endpoint.cache()
    cache.key("k1")
    endpoint.failing = True
    endpoint.now += 2 * 3600
    assert cache.key("k1").key_id == "k1"
    assert endpoint.fetched == 2


def test_with_no_keys_at_all_the_fetch_is_retried_sooner() -> None:
    endpoint = FakeJwks([jwk("k1")], failing=True)
    cache = endpoint.cache(cooldown_s=300.0, unknown_kid_interval_s=3600.0)
    with pytest.raises(InvalidInvocation, match="could not be fetched"):
        cache.key("k1")
    endpoint.failing = False
    endpoint.now += NO_KEYS_RETRY_S - 1
    with pytest.raises(InvalidInvocation):
        cache.key("k1")  # still cooling down
    endpoint.now += 1
    assert cache.key("k1").key_id == "k1"  # far sooner than the 300 s cooldown


def test_only_rsa_signing_keys_of_2048_bits_or_more_are_kept() -> None:
    encryption = {**jwk("k-enc"), "use": "enc"}
    endpoint = FakeJwks([jwk("k-small", 1024), encryption, jwk("k1")])
    cache = endpoint.cache()
    assert cache.key("k1").key_id == "k1"
    for kid in ("k-small", "k-enc"):
        with pytest.raises(InvalidInvocation, match="unknown signing key"):
            cache.key(kid)


def test_a_key_set_with_nothing_usable_replaces_nothing() -> None:
    endpoint = FakeJwks([jwk("k1")])
    cache = endpoint.cache()
    cache.key("k1")
    endpoint.keys = [jwk("k-small", 1024)]
    endpoint.now += 3600
    assert cache.key("k1").key_id == "k1"
