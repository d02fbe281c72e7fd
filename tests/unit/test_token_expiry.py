"""A token's expiry (``tokens/store.py``): read from its own ``exp`` without verification, bounded by Forge's
maximum lifetime, and a conservative fallback for anything that is not a sane time, never an exception."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from forge_remote.testing import app_token
from forge_remote.tokens.store import FALLBACK_LIFETIME_S, MAX_TOKEN_LIFETIME_S, token_expiry, token_sha256

NOW = 1_767_225_600.0


def jwt_with(payload: object) -> str:
    encoded = base64.urlsafe_b64encode(json.dumps(payload).encode()).rstrip(b"=").decode()
    return f"eyJhbGciOiJub25lIn0.{encoded}.sig"


def test_the_expiry_is_the_token_s_own_exp() -> None:
    assert token_expiry(jwt_with({"exp": NOW + 3600}), NOW) == (NOW + 3600, "exp")


def test_an_exp_beyond_forge_s_maximum_is_cut_to_it() -> None:
    assert token_expiry(jwt_with({"exp": NOW + 30 * 86400}), NOW) == (NOW + MAX_TOKEN_LIFETIME_S, "exp")


@pytest.mark.parametrize(
    "token",
    [
        "opaque",
        "a.b",
        "a.!!!.c",
        jwt_with([1]),
        jwt_with({"exp": "soon"}),
        jwt_with({"exp": True}),
        jwt_with({"exp": 10**400}),
        jwt_with({"exp": 5}),  # 1970: not an expiry Forge would send
        jwt_with({}),
        "a." + "A" * 20_000 + ".c",
        "a." + base64.urlsafe_b64encode(b'{"exp": NaN}').decode() + ".c",
    ],
)
def test_anything_else_gets_the_conservative_fallback(token: str) -> None:
    assert token_expiry(token, NOW) == (NOW + FALLBACK_LIFETIME_S, "fallback")


def test_a_bound_told_separately_wins_when_it_is_earlier() -> None:
    token = jwt_with({"exp": NOW + 3600})
    assert token_expiry(token, NOW, not_after=NOW + 600) == (NOW + 600, "ttl")
    assert token_expiry(token, NOW, not_after=NOW + 7200) == (NOW + 3600, "exp")
    assert token_expiry("opaque", NOW, not_after=NOW + 30 * 86400) == (NOW + MAX_TOKEN_LIFETIME_S, "ttl")
    assert token_expiry(token, NOW, not_after=float("nan")) == (NOW + 3600, "exp")


@given(st.text(max_size=300))
def test_no_text_makes_the_expiry_raise_or_outlive_the_maximum(token: str) -> None:
    expires_at, _ = token_expiry(token, NOW)
    assert expires_at <= NOW + MAX_TOKEN_LIFETIME_S


def test_the_fake_tokens_carry_the_expiry_they_were_made_with(frozen_clock: float) -> None:
    first, second = app_token(900), app_token(900)
    assert token_expiry(first, frozen_clock) == (frozen_clock + 900, "exp")
    assert first != second  # the same expiry, still two tokens
    assert token_sha256(first) != token_sha256(second)
