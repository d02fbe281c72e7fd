"""Forge's signing keys, cached per container (``forge/signing_keys.py``): fetched once, refetched for an unknown
``kid`` at most once per interval, kept through a failed fetch, and only RSA keys of 2048 bits or more. A key set
that could not be had is an outage (``SigningKeysUnavailable``), an unknown ``kid`` in a current one a bad FIT
(``InvalidInvocation``); and one ``key()`` call spends at most its time budget on fetches (the clock is the test's:
a fake fetch moves it by the time the fetch took)."""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from forge_remote.errors import InvalidInvocation, SigningKeysUnavailable
from forge_remote.forge.signing_keys import (
    KEY_TIME_BUDGET_S,
    KEYS_RETRY_AFTER_S,
    MIN_FETCH_TIME_S,
    NO_KEYS_RETRY_S,
    UNKNOWN_KID_INTERVAL_S,
    JwksCache,
)

URL = "https://forge.example/.well-known/jwks.json"


@functools.cache
def jwk(kid: str, bits: int = 2048) -> dict[str, Any]:
    public = rsa.generate_private_key(public_exponent=65537, key_size=bits).public_key()
    return {**json.loads(RSAAlgorithm.to_jwk(public)), "kid": kid, "use": "sig", "alg": "RS256"}


@dataclass
class FakeJwks:
    """The JWKS endpoint: its key set now, or a failure; and the time, which a test moves.

    ``hanging``: every fetch takes all the time it is given, then times out. ``takes_s``: how long each
    fetch takes otherwise. ``calls`` records (when it started, the timeout it was given) per fetch.
    """

    keys: list[dict[str, Any]] = field(default_factory=list)
    failing: bool = False
    hanging: bool = False
    takes_s: float = 0.0
    now: float = 1000.0
    fetched: int = 0
    calls: list[tuple[float, float]] = field(default_factory=list)

    def fetch(self, url: str, timeout_s: float) -> dict[str, Any]:
        assert url == URL
        self.fetched += 1
        self.calls.append((self.now, timeout_s))
        if self.hanging:
            self.now += timeout_s
            raise TimeoutError("timed out")
        self.now += min(self.takes_s, timeout_s)
        if self.failing:
            raise OSError("connection refused")
        return {"keys": self.keys}

    @property
    def timeouts(self) -> list[float]:
        return [timeout for _, timeout in self.calls]

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
    with pytest.raises(SigningKeysUnavailable, match="could not be fetched"):
        cache.key("k1")
    endpoint.failing = False
    endpoint.now += NO_KEYS_RETRY_S - 1
    with pytest.raises(SigningKeysUnavailable):
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


# -- an outage is not a bad FIT ---------------------------------------------------------------------------
def test_no_keys_at_all_is_an_outage_with_forges_retry_spacing() -> None:
    endpoint = FakeJwks([jwk("k1")], failing=True)
    with pytest.raises(SigningKeysUnavailable) as caught:
        endpoint.cache().key("k1")
    assert not isinstance(caught.value, InvalidInvocation)  # never a 401
    assert caught.value.delay_s == KEYS_RETRY_AFTER_S == 60.0
    assert caught.value.reason == "signing keys could not be fetched"


def test_an_unknown_kid_whose_refetch_failed_is_an_outage_until_a_fetch_succeeds() -> None:
    endpoint = FakeJwks([jwk("k1")])
    cache = endpoint.cache()
    cache.key("k1")
    endpoint.failing = True
    endpoint.keys.append(jwk("k-rotated"))  # published while this container cannot fetch
    with pytest.raises(SigningKeysUnavailable, match="unknown signing key and the JWKS could not be refetched"):
        cache.key("k-rotated")
    assert endpoint.fetched == 2
    assert cache.key("k1").key_id == "k1"  # known keys still verify through the outage
    with pytest.raises(SigningKeysUnavailable):
        cache.key("k-rotated")  # rate limited, and the last fetch failed: still not known to be bad
    assert endpoint.fetched == 2
    endpoint.failing = False
    endpoint.now += UNKNOWN_KID_INTERVAL_S
    assert cache.key("k-rotated").key_id == "k-rotated"
    with pytest.raises(InvalidInvocation, match="unknown signing key"):
        cache.key("junk")  # rate limited, but the key set was just fetched: this kid is not Forge's


def test_an_unknown_kid_whose_refetch_succeeded_is_a_bad_fit() -> None:
    endpoint = FakeJwks([jwk("k1")])
    cache = endpoint.cache()
    cache.key("k1")
    with pytest.raises(InvalidInvocation, match="unknown signing key"):
        cache.key("junk")
    assert endpoint.fetched == 2


def test_a_key_set_without_usable_keys_is_an_outage_not_a_bad_fit() -> None:
    endpoint = FakeJwks([jwk("k-small", 1024)])
    with pytest.raises(SigningKeysUnavailable):
        endpoint.cache().key("k-small")


def test_an_unknown_kid_right_after_the_first_fetch_is_not_fetched_twice() -> None:
    endpoint = FakeJwks([jwk("k1")])
    cache = endpoint.cache()
    with pytest.raises(InvalidInvocation, match="unknown signing key"):
        cache.key("junk")  # on a cold container: the key set fetched a moment ago is current
    assert endpoint.fetched == 1
    with pytest.raises(InvalidInvocation):
        cache.key("junk-2")  # and that fetch counts as the interval's refetch
    assert endpoint.fetched == 1


# -- the time one call spends on keys ---------------------------------------------------------------------
def test_a_hanging_jwks_on_a_cold_container_costs_one_budget_for_both_fetches() -> None:
    endpoint = FakeJwks([jwk("k1")], hanging=True)
    cache = endpoint.cache(timeout_s=2.0)  # the default budget: 2.5 s
    started = endpoint.now
    with pytest.raises(SigningKeysUnavailable):
        cache.key("k1")
    # The first fetch and the unknown-kid refetch share the budget: 2.0 s, then what is left of 2.5 s.
    assert endpoint.timeouts == [2.0, pytest.approx(KEY_TIME_BUDGET_S - 2.0)]
    assert endpoint.now - started == pytest.approx(KEY_TIME_BUDGET_S)


def test_no_second_fetch_is_started_with_too_little_time_left() -> None:
    endpoint = FakeJwks([jwk("k1")], hanging=True)
    cache = endpoint.cache(timeout_s=KEY_TIME_BUDGET_S - MIN_FETCH_TIME_S / 2)
    with pytest.raises(SigningKeysUnavailable):
        cache.key("k1")
    assert endpoint.fetched == 1
    endpoint.hanging = False
    endpoint.now += NO_KEYS_RETRY_S
    assert cache.key("k1").key_id == "k1"  # the next call out of the cooldown fetches again


@pytest.mark.parametrize("takes_s", [0.0, 0.3, 1.0, 1.9, 2.0])
@pytest.mark.parametrize(("timeout_s", "budget_s"), [(2.0, 2.5), (2.0, 1.0), (0.5, 2.5), (3.0, 2.5)])
def test_every_fetch_ends_by_the_calls_deadline(takes_s: float, timeout_s: float, budget_s: float) -> None:
    endpoint = FakeJwks([jwk("k1")], failing=True, takes_s=takes_s)
    cache = endpoint.cache(timeout_s=timeout_s, key_time_budget_s=budget_s)
    started = endpoint.now
    with pytest.raises(SigningKeysUnavailable):
        cache.key("k1")
    assert 1 <= endpoint.fetched <= 2
    for began, timeout in endpoint.calls:
        assert MIN_FETCH_TIME_S <= timeout <= timeout_s
        assert began + timeout <= started + budget_s + 1e-9
    assert endpoint.now - started <= budget_s + 1e-9


def test_a_warm_container_refreshing_stale_keys_stays_inside_the_budget() -> None:
    endpoint = FakeJwks([jwk("k1")])
    cache = endpoint.cache(timeout_s=2.0)
    cache.key("k1")
    endpoint.hanging = True
    endpoint.now += 3600  # stale: the refresh hangs, the cached key still answers
    started = endpoint.now
    assert cache.key("k1").key_id == "k1"
    with pytest.raises(SigningKeysUnavailable):
        cache.key("k-rotated")  # the refresh just failed: one refetch in what is left of this call's budget
    assert endpoint.timeouts[1:] == [2.0, 2.0]  # each call has its own budget
    assert endpoint.now - started == pytest.approx(4.0)
