"""The token store against moto: newest wins, no write for re-deliveries, expiry from the token,
TTL, exact invalidation, uninstall, isolation (docs/token-rules.md, rules 1-5 and 8)."""

from __future__ import annotations

import random
import threading
from typing import Any

import boto3
import jwt
import pytest

from forge_remote import clock
from forge_remote.errors import TokenUnavailable
from forge_remote.storage.table_keys import APP_TOKEN_SK
from forge_remote.tokens.store import FALLBACK_LIFETIME_S, MAX_TOKEN_LIFETIME_S, TTL_GRACE_S, PutOutcome, TokenStore
from local.forge_emulator import ForgeEmulator, new_installation_id
from local.stack import LocalStack
from tests.support import stored_item


@pytest.fixture
def store(stack: LocalStack) -> TokenStore:
    return TokenStore(boto3.client("dynamodb"), stack.physical["TokensTable"])


def raw_item(stack: LocalStack, installation_id: str, sk: str = APP_TOKEN_SK) -> dict | None:
    return stored_item(stack, "TokensTable", installation_id, sk)


def test_expiry_is_read_from_the_token_and_ttl_is_set(
    forge: ForgeEmulator, store: TokenStore, stack: LocalStack
) -> None:
    installation = new_installation_id()
    token = forge.app_token(lifetime_s=7200)
    exp = jwt.decode(token, options={"verify_signature": False})["exp"]
    assert store.put_if_newer(installation, token) is PutOutcome.STORED
    item = raw_item(stack, installation)
    assert item is not None
    assert float(item["expiresAt"]["N"]) == exp
    assert item["expirySource"]["S"] == "exp"
    assert int(item["ttl"]["N"]) == exp + TTL_GRACE_S
    assert store.get_valid(installation, 600).token == token


def test_opaque_token_gets_the_conservative_fallback(store: TokenStore, stack: LocalStack) -> None:
    installation = new_installation_id()
    before = clock.now()
    store.put_if_newer(installation, "opaque-token-value-not-a-jwt")
    item = raw_item(stack, installation)
    assert item is not None
    assert item["expirySource"]["S"] == "fallback"
    assert float(item["expiresAt"]["N"]) == pytest.approx(before + FALLBACK_LIFETIME_S, abs=2)


def test_absurd_exp_is_clamped_to_the_forge_maximum(forge: ForgeEmulator, store: TokenStore) -> None:
    installation = new_installation_id()
    store.put_if_newer(installation, forge.app_token(lifetime_s=365 * 86400))
    assert store.get_valid(installation, 0).valid_for() <= MAX_TOKEN_LIFETIME_S + 1


def test_already_expired_token_is_never_stored(forge: ForgeEmulator, store: TokenStore, stack: LocalStack) -> None:
    installation = new_installation_id()
    token = forge.app_token(lifetime_s=-10)
    assert store.put_if_newer(installation, token) is PutOutcome.EXPIRED
    assert raw_item(stack, installation) is None


def test_older_token_never_replaces_a_newer_one(forge: ForgeEmulator, store: TokenStore) -> None:
    installation = new_installation_id()
    newer, older = forge.app_token(lifetime_s=3 * 3600), forge.app_token(lifetime_s=3600)
    assert store.put_if_newer(installation, newer) is PutOutcome.STORED
    other_container = TokenStore(boto3.client("dynamodb"), store.table_name)
    assert other_container.put_if_newer(installation, older) is PutOutcome.NOT_NEWER
    assert store.get_valid(installation, 0).token == newer


def test_redelivered_token_costs_no_write(forge: ForgeEmulator, store: TokenStore) -> None:
    installation = new_installation_id()
    token = forge.app_token()
    outcomes = [store.put_if_newer(installation, token) for _ in range(50)]
    assert outcomes[0] is PutOutcome.STORED
    assert set(outcomes[1:]) == {PutOutcome.ALREADY_STORED}
    assert store.write_count == 1
    assert store.read_count == 50  # one small read per delivery is what keeps the answer true


def test_older_redelivered_token_costs_no_write(forge: ForgeEmulator, store: TokenStore) -> None:
    installation = new_installation_id()
    older, newer = forge.app_token(lifetime_s=3600), forge.app_token(lifetime_s=3 * 3600)
    store.put_if_newer(installation, older)
    store.put_if_newer(installation, newer)
    writes = store.write_count
    assert [store.put_if_newer(installation, older) for _ in range(5)] == [PutOutcome.NOT_NEWER] * 5
    assert store.write_count == writes


@pytest.mark.usefixtures("atomic_dynamodb")
def test_newest_token_wins_under_concurrent_writers(forge: ForgeEmulator, stack: LocalStack) -> None:
    installation = new_installation_id()
    lifetimes = [600 + 60 * i for i in range(40)]
    random.Random(7).shuffle(lifetimes)
    tokens = [forge.app_token(lifetime_s=s) for s in lifetimes]
    newest = tokens[lifetimes.index(max(lifetimes))]
    barrier = threading.Barrier(8)
    client = boto3.client("dynamodb")

    def writer(chunk: list[str]) -> None:
        store = TokenStore(client, stack.physical["TokensTable"])  # one "container" per thread
        barrier.wait()
        for token in chunk:
            store.put_if_newer(installation, token)

    threads = [threading.Thread(target=writer, args=(tokens[i::8],)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert TokenStore(client, stack.physical["TokensTable"]).get_valid(installation, 0).token == newest


def test_get_valid_demands_the_minimum_validity(forge: ForgeEmulator, store: TokenStore) -> None:
    installation = new_installation_id()
    store.put_if_newer(installation, forge.app_token(lifetime_s=900))
    assert store.get_valid(installation, 600).valid_for() > 600
    with pytest.raises(TokenUnavailable):
        store.get_valid(installation, 1200)


def test_expired_item_still_in_the_table_is_not_handed_out(forge: ForgeEmulator, store: TokenStore) -> None:
    # moto, like DynamoDB's lazy TTL, keeps the item: the read must check expiresAt itself.
    installation = new_installation_id()
    store.put_if_newer(installation, forge.app_token(lifetime_s=3600))
    clock.advance(3601)
    with pytest.raises(TokenUnavailable):
        store.get_valid(installation, 0)


def test_no_token_at_all_is_token_unavailable(store: TokenStore) -> None:
    with pytest.raises(TokenUnavailable, match="no token stored"):
        store.get_valid(new_installation_id(), 0)


def test_invalidate_removes_exactly_that_token(forge: ForgeEmulator, store: TokenStore) -> None:
    installation = new_installation_id()
    first, second = forge.app_token(lifetime_s=3600), forge.app_token(lifetime_s=7200)
    store.put_if_newer(installation, first)
    store.put_if_newer(installation, second)
    assert store.invalidate(installation, first) is False  # not the stored one: nothing removed
    assert store.get_valid(installation, 0).token == second
    assert store.invalidate(installation, second) is True
    with pytest.raises(TokenUnavailable):
        store.get_valid(installation, 0)


def test_invalidated_token_may_be_stored_again_when_redelivered(forge: ForgeEmulator, store: TokenStore) -> None:
    installation = new_installation_id()
    token = forge.app_token()
    store.put_if_newer(installation, token)
    store.invalidate(installation, token)
    assert store.put_if_newer(installation, token) is PutOutcome.STORED


def test_user_tokens_are_keyed_by_account(forge: ForgeEmulator, store: TokenStore) -> None:
    installation = new_installation_id()
    app, alice, bob = forge.app_token(), forge.app_token(subject="alice"), forge.app_token(subject="bob")
    store.put_if_newer(installation, app)
    store.put_if_newer(installation, alice, account_id="alice-account")
    store.put_if_newer(installation, bob, account_id="bob-account")
    assert store.get_valid(installation, 0).token == app
    assert store.get_valid(installation, 0, account_id="alice-account").token == alice
    assert store.get_valid(installation, 0, account_id="bob-account").token == bob


def test_delete_installation_removes_all_its_tokens_and_only_its_own(forge: ForgeEmulator, store: TokenStore) -> None:
    gone, kept = new_installation_id(), new_installation_id()
    store.put_if_newer(gone, forge.app_token())
    for i in range(30):  # more than one BatchWriteItem's worth
        store.put_if_newer(gone, forge.app_token(), account_id=f"user-{i}")
    store.put_if_newer(kept, forge.app_token())
    assert store.delete_installation(gone) == 31
    with pytest.raises(TokenUnavailable):
        store.get_valid(gone, 0)
    with pytest.raises(TokenUnavailable):
        store.get_valid(gone, 0, account_id="user-3")
    assert store.get_valid(kept, 0).token


def test_states_show_expiry_never_the_token(forge: ForgeEmulator, store: TokenStore) -> None:
    installation = new_installation_id()
    token = forge.app_token(lifetime_s=5000)
    store.put_if_newer(installation, token)
    states = store.states(installation)
    assert [s.subject for s in states] == ["system"]
    assert token not in repr(states)
    assert states[0].expires_at == pytest.approx(clock.now() + 5000, abs=5)


def test_count_usable_reads_many_installations_in_batches_and_retries_unprocessed_keys(
    store: TokenStore, forge: ForgeEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    usable = [new_installation_id() for _ in range(130)]
    short = [new_installation_id() for _ in range(80)]  # stored, but under the minimum a job needs
    missing = [new_installation_id() for _ in range(15)]  # never got a token
    for installation_id in usable:
        store.put_if_newer(installation_id, forge.app_token(lifetime_s=3 * 3600))
    for installation_id in short:
        store.put_if_newer(installation_id, forge.app_token(lifetime_s=300))
    requests: list[int] = []
    real = store._client.batch_get_item

    def one_key_unprocessed(**kwargs: Any) -> Any:
        """DynamoDB may leave keys unprocessed (throttling, 16 MB): the first answer leaves one."""
        keys = kwargs["RequestItems"][store.table_name]["Keys"]
        requests.append(len(keys))
        if len(requests) == 1:
            answer = real(
                RequestItems={store.table_name: {**kwargs["RequestItems"][store.table_name], "Keys": keys[1:]}}
            )
            answer["UnprocessedKeys"] = {
                store.table_name: {**kwargs["RequestItems"][store.table_name], "Keys": keys[:1]}
            }
            return answer
        return real(**kwargs)

    monkeypatch.setattr(store._client, "batch_get_item", one_key_unprocessed)
    everyone = usable + short + missing
    random.Random(7).shuffle(everyone)
    assert store.count_usable(everyone, 600) == 130
    assert requests == [100, 1, 100, 25]  # 100 keys a request; the unprocessed key asked again
