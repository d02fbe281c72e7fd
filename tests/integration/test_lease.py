"""A job's token lease: re-checked before every request, refreshed from the store, never stale."""

from __future__ import annotations

import boto3
import pytest

from forge_remote import clock
from forge_remote.errors import TokenUnavailable
from forge_remote.tokens.lease import REQUEST_MARGIN_S, TokenLease
from forge_remote.tokens.store import TokenStore
from local.forge_emulator import ForgeEmulator, new_installation_id
from local.stack import LocalStack


@pytest.fixture
def store(stack: LocalStack) -> TokenStore:
    return TokenStore(boto3.client("dynamodb"), stack.physical["TokensTable"])


def test_a_long_job_switches_to_a_newer_token_before_the_first_expires(forge: ForgeEmulator, store: TokenStore) -> None:
    installation = new_installation_id()
    first = forge.app_token(lifetime_s=900)
    store.put_if_newer(installation, first)
    lease = TokenLease(store, installation, min_validity_s=600)
    lease.acquire()
    assert lease.token() == first
    clock.advance(900 - REQUEST_MARGIN_S + 1)  # the job ran long: the first token is nearly gone
    second = forge.app_token(lifetime_s=7200)
    store.put_if_newer(installation, second)  # a keepalive arrived meanwhile
    assert lease.token() == second


def test_a_long_job_without_a_newer_token_stops_instead_of_sending_a_stale_one(
    forge: ForgeEmulator, store: TokenStore
) -> None:
    installation = new_installation_id()
    store.put_if_newer(installation, forge.app_token(lifetime_s=900))
    lease = TokenLease(store, installation, min_validity_s=600)
    lease.acquire()
    clock.advance(900 - REQUEST_MARGIN_S + 1)
    with pytest.raises(TokenUnavailable):
        lease.token()
    assert lease.current is None


def test_acquire_demands_the_job_minimum(forge: ForgeEmulator, store: TokenStore) -> None:
    installation = new_installation_id()
    store.put_if_newer(installation, forge.app_token(lifetime_s=300))
    with pytest.raises(TokenUnavailable):
        TokenLease(store, installation, min_validity_s=600).acquire()
