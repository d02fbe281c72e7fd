"""A job's token lease on the in-memory token store: the job minimum at the start, the request margin before
every request, a newer token picked up, and every token it handed out remembered (token rule 4)."""

from __future__ import annotations

import pytest

from forge_remote import clock
from forge_remote.errors import TokenUnavailable
from forge_remote.storage.table_keys import APP_TOKEN_SK, offline_token_sk
from forge_remote.testing import MemoryTokenStore, app_token
from forge_remote.tokens.lease import REQUEST_MARGIN_S, TokenLease
from forge_remote.tokens.store import token_sha256

INSTALLATION = "ari:cloud:ecosystem::installation/1a2b3c4d-lease"
ACCOUNT = "5b10ac8d82e05b22cc7d4ef5"
MIN_VALIDITY_S = 600

pytestmark = pytest.mark.usefixtures("frozen_clock")


@pytest.fixture
def store() -> MemoryTokenStore:
    return MemoryTokenStore()


def lease(store: MemoryTokenStore, *, request_margin_s: float = REQUEST_MARGIN_S, sk: str = APP_TOKEN_SK) -> TokenLease:
    return TokenLease(store, INSTALLATION, MIN_VALIDITY_S, request_margin_s=request_margin_s, sk=sk)


@pytest.mark.parametrize(("valid_for_s", "acquired"), [(MIN_VALIDITY_S - 1, False), (MIN_VALIDITY_S, True)])
def test_acquire_demands_the_job_minimum(store: MemoryTokenStore, valid_for_s: float, acquired: bool) -> None:
    token = app_token(valid_for_s)
    store.put_if_newer(INSTALLATION, token)
    held = lease(store)
    if acquired:
        assert held.acquire().token == token
        assert held.current is not None
    else:
        with pytest.raises(TokenUnavailable):
            held.acquire()
        assert held.current is None


def test_the_held_token_is_used_while_it_has_the_request_margin(store: MemoryTokenStore) -> None:
    token = app_token(MIN_VALIDITY_S)
    store.put_if_newer(INSTALLATION, token)
    held = lease(store)
    held.acquire()
    clock.advance(MIN_VALIDITY_S - REQUEST_MARGIN_S)  # exactly the margin left
    assert held.token() == token


def test_a_token_about_to_expire_is_replaced_by_a_newer_one(store: MemoryTokenStore) -> None:
    first, second = app_token(MIN_VALIDITY_S), app_token(3600)
    store.put_if_newer(INSTALLATION, first)
    held = lease(store)
    held.acquire()
    clock.advance(MIN_VALIDITY_S - REQUEST_MARGIN_S + 1)
    store.put_if_newer(INSTALLATION, second)
    assert held.token() == second
    assert held.current is not None
    assert held.current.token == second


def test_without_a_newer_token_the_lease_stops_instead_of_sending_a_stale_one(store: MemoryTokenStore) -> None:
    store.put_if_newer(INSTALLATION, app_token(MIN_VALIDITY_S))
    held = lease(store)
    held.acquire()
    clock.advance(MIN_VALIDITY_S - REQUEST_MARGIN_S + 1)
    with pytest.raises(TokenUnavailable):
        held.token()
    assert held.current is None


def test_a_refresh_needs_only_the_request_margin_not_the_job_minimum(store: MemoryTokenStore) -> None:
    first, short = app_token(MIN_VALIDITY_S), app_token(MIN_VALIDITY_S + 100)
    store.put_if_newer(INSTALLATION, first)
    held = lease(store)
    held.acquire()
    clock.advance(MIN_VALIDITY_S - REQUEST_MARGIN_S + 1)
    store.put_if_newer(INSTALLATION, short)  # valid ~160 s more: under the job minimum, over the margin
    assert held.token() == short


def test_the_request_margin_is_an_option(store: MemoryTokenStore) -> None:
    store.put_if_newer(INSTALLATION, app_token(MIN_VALIDITY_S))
    held = lease(store, request_margin_s=300.0)
    held.acquire()
    clock.advance(MIN_VALIDITY_S - 299)
    with pytest.raises(TokenUnavailable):
        held.token()


def test_the_lease_remembers_every_token_it_handed_out(store: MemoryTokenStore) -> None:
    first, second = app_token(MIN_VALIDITY_S), app_token(3600)
    store.put_if_newer(INSTALLATION, first)
    held = lease(store)
    held.acquire()
    clock.advance(MIN_VALIDITY_S - REQUEST_MARGIN_S + 1)
    store.put_if_newer(INSTALLATION, second)
    held.token()
    for token in (first, second):
        issued = held.issued(token_sha256(token))
        assert issued is not None
        assert issued.token == token
    assert held.issued(token_sha256(app_token(3600))) is None  # never handed out by this lease
    assert held.issued(None) is None


def test_a_replacement_is_available_only_if_another_valid_token_is_stored(store: MemoryTokenStore) -> None:
    rejected = app_token(3600)
    store.put_if_newer(INSTALLATION, rejected)
    held = lease(store)
    held.acquire()
    store.invalidate(INSTALLATION, rejected)
    assert held.replacement_available() is False
    store.put_if_newer(INSTALLATION, app_token(MIN_VALIDITY_S - 1))  # too short for a job
    assert held.replacement_available() is False
    store.put_if_newer(INSTALLATION, app_token(3600))
    assert held.replacement_available() is True


def test_a_lease_reads_only_its_own_key(store: MemoryTokenStore) -> None:
    sk = offline_token_sk(ACCOUNT)
    app, offline = app_token(3600), app_token(3600)
    store.put_if_newer(INSTALLATION, app)
    user = lease(store, sk=sk)
    with pytest.raises(TokenUnavailable):
        user.acquire()  # the app's token is never a user's
    store.put_if_newer(INSTALLATION, offline, account_id=ACCOUNT, sk=sk)
    assert user.acquire().token == offline
    assert user.sk == sk
    assert lease(store).acquire().token == app
