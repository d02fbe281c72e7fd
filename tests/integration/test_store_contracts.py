"""The in-memory stores of ``forge_remote.testing`` keep the DynamoDB stores' contracts.

Every test here runs twice, with the same assertions: once on the fakes, once on the real stores over the
template's tables in moto. The last tests run one script of calls on both at once and compare every answer,
so a fake that drifts from its store fails here, not in some team's green unit test.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import boto3
import pytest
from moto import mock_aws

from forge_remote import clock
from forge_remote.errors import TokenUnavailable
from forge_remote.jobs.parking import STALE_AFTER_S, ParkingLot
from forge_remote.storage.installations import InstallationFacts, InstallationRegistry, InstallationStatus
from forge_remote.storage.interfaces import ParkedJobs, Results, Tokens
from forge_remote.storage.results import MIN_ITEM_BUDGET_BYTES, TRUNCATED, ResultStore
from forge_remote.storage.table_keys import offline_token_sk
from forge_remote.testing import MemoryInstallations, MemoryParkingLot, MemoryResults, MemoryTokenStore, app_token
from forge_remote.tokens.store import PutOutcome, TokenStore
from local.stack import LocalStack

FROZEN_AT = 1_767_225_600.0  # 2026-01-01T00:00:00Z: clock.advance moves it, the wall clock does not
INSTALLATION = "ari:cloud:ecosystem::installation/0b7c3f7e-contract"
OTHER = "ari:cloud:ecosystem::installation/5d1e9a2c-contract"
ACCOUNT = "5b10ac8d82e05b22cc7d4ef5"
API_BASE = "https://api.atlassian.com/ex/confluence/cloud-1"
SMALL_BUDGET = 2 * MIN_ITEM_BUDGET_BYTES


@dataclass
class Stores:
    tokens: Tokens
    installations: MemoryInstallations | InstallationRegistry
    results: Results
    small_results: Results  # a budget a test record can exceed (on DynamoDB, the same table as results)
    parking: ParkedJobs


def memory_stores() -> Stores:
    installations = MemoryInstallations()
    return Stores(
        tokens=MemoryTokenStore(installations),
        installations=installations,
        results=MemoryResults(),
        small_results=MemoryResults(item_budget_bytes=SMALL_BUDGET),
        parking=MemoryParkingLot(),
    )


def dynamodb_stores() -> Stores:
    client = boto3.client("dynamodb")
    tables = LocalStack.from_template().create(dynamodb=client).physical
    return Stores(
        tokens=TokenStore(client, tables["TokensTable"]),
        installations=InstallationRegistry(client, tables["AppTable"]),
        results=ResultStore(client, tables["AppTable"]),
        small_results=ResultStore(client, tables["AppTable"], item_budget_bytes=SMALL_BUDGET),
        parking=ParkingLot(client, tables["AppTable"]),
    )


@pytest.fixture(autouse=True)
def frozen_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(clock, "time", SimpleNamespace(time=lambda: FROZEN_AT))


@pytest.fixture(params=["memory", "dynamodb"])
def stores(request: pytest.FixtureRequest) -> Iterator[Stores]:
    if request.param == "memory":
        yield memory_stores()
        return
    with mock_aws():
        yield dynamodb_stores()


def install(stores: Stores, installation_id: str = INSTALLATION, **facts: Any) -> None:
    assert stores.installations.record_lifecycle(InstallationFacts(installation_id, API_BASE, **facts), "installed")


# -- tokens ------------------------------------------------------------------------------------------
def test_the_newest_token_wins(stores: Stores) -> None:
    first, older, newer = app_token(3600), app_token(1800), app_token(7200)
    assert stores.tokens.put_if_newer(INSTALLATION, first) is PutOutcome.STORED
    assert stores.tokens.put_if_newer(INSTALLATION, older) is PutOutcome.NOT_NEWER
    assert stores.tokens.get_valid(INSTALLATION, 0).token == first
    assert stores.tokens.put_if_newer(INSTALLATION, newer) is PutOutcome.STORED
    stored = stores.tokens.get_valid(INSTALLATION, 0)
    assert (stored.token, stored.subject, stored.expires_at) == (newer, "system", FROZEN_AT + 7200)


def test_a_redelivered_token_is_already_stored(stores: Stores) -> None:
    token = app_token(3600)
    stores.tokens.put_if_newer(INSTALLATION, token)
    assert stores.tokens.put_if_newer(INSTALLATION, token) is PutOutcome.ALREADY_STORED


def test_an_expired_token_is_never_stored(stores: Stores) -> None:
    assert stores.tokens.put_if_newer(INSTALLATION, app_token(-1)) is PutOutcome.EXPIRED
    with pytest.raises(TokenUnavailable, match="no token stored"):
        stores.tokens.get_valid(INSTALLATION, 0)


def test_a_token_is_handed_out_only_while_valid_for_the_minimum(stores: Stores) -> None:
    token = app_token(900)
    stores.tokens.put_if_newer(INSTALLATION, token)
    assert stores.tokens.get_valid(INSTALLATION, 900).token == token  # exactly the minimum left: still valid
    clock.advance(301)
    with pytest.raises(TokenUnavailable, match="valid for less than 600s"):
        stores.tokens.get_valid(INSTALLATION, 600)
    assert stores.tokens.get_valid(INSTALLATION, 599).token == token
    clock.advance(600)  # past its expiry: the item may still be there (TTL is lazy), it is never handed out
    with pytest.raises(TokenUnavailable):
        stores.tokens.get_valid(INSTALLATION, 0)


def test_not_after_bounds_the_expiry(stores: Stores) -> None:
    stores.tokens.put_if_newer(INSTALLATION, app_token(3600), not_after=FROZEN_AT + 600)
    assert stores.tokens.get_valid(INSTALLATION, 0).expires_at == FROZEN_AT + 600


def test_invalidate_removes_exactly_the_given_token(stores: Stores) -> None:
    token = app_token(3600)
    stores.tokens.put_if_newer(INSTALLATION, token)
    assert stores.tokens.invalidate(INSTALLATION, app_token(3600)) is False  # not the one held: it stays
    assert stores.tokens.get_valid(INSTALLATION, 0).token == token
    assert stores.tokens.invalidate(INSTALLATION, token) is True
    with pytest.raises(TokenUnavailable, match="no token stored"):
        stores.tokens.get_valid(INSTALLATION, 0)
    assert stores.tokens.invalidate(INSTALLATION, token) is False


def test_invalidating_a_replaced_token_keeps_its_replacement(stores: Stores) -> None:
    rejected, newer = app_token(1800), app_token(3600)
    stores.tokens.put_if_newer(INSTALLATION, rejected)
    stores.tokens.put_if_newer(INSTALLATION, newer)
    assert stores.tokens.invalidate(INSTALLATION, rejected) is False
    assert stores.tokens.get_valid(INSTALLATION, 0).token == newer


def test_keys_and_installations_are_apart(stores: Stores) -> None:
    app, user, offline, other = app_token(3600), app_token(3600), app_token(3600), app_token(3600)
    stores.tokens.put_if_newer(INSTALLATION, app)
    stores.tokens.put_if_newer(INSTALLATION, user, account_id=ACCOUNT)
    stores.tokens.put_if_newer(INSTALLATION, offline, account_id=ACCOUNT, sk=offline_token_sk(ACCOUNT))
    stores.tokens.put_if_newer(OTHER, other)
    assert stores.tokens.invalidate(INSTALLATION, user, account_id=ACCOUNT) is True
    assert stores.tokens.get_valid(INSTALLATION, 0).token == app
    assert stores.tokens.get_valid(OTHER, 0).token == other
    held = stores.tokens.get_valid(INSTALLATION, 0, sk=offline_token_sk(ACCOUNT))
    assert (held.token, held.subject) == (offline, ACCOUNT)
    with pytest.raises(TokenUnavailable):
        stores.tokens.get_valid(INSTALLATION, 0, account_id=ACCOUNT)


def test_only_a_usable_token_that_was_not_refused_wakes_jobs(stores: Stores) -> None:
    assert stores.tokens.wakes_jobs(INSTALLATION, 600) is False
    refused = app_token(3600)
    stores.tokens.put_if_newer(INSTALLATION, refused)
    assert stores.tokens.wakes_jobs(INSTALLATION, 600) is True
    assert stores.tokens.wakes_jobs(INSTALLATION, 3601) is False
    stores.tokens.invalidate(INSTALLATION, refused)
    assert stores.tokens.put_if_newer(INSTALLATION, refused) is PutOutcome.STORED  # Forge delivered it again
    assert stores.tokens.wakes_jobs(INSTALLATION, 600) is False  # ...but jobs wait for another one
    stores.tokens.put_if_newer(INSTALLATION, app_token(7200))
    assert stores.tokens.wakes_jobs(INSTALLATION, 600) is True


def test_a_guarded_write_fails_once_the_installation_is_uninstalled(stores: Stores) -> None:
    sk = offline_token_sk(ACCOUNT)
    first = app_token(1800)
    install(stores)
    guard = stores.installations.still_installed(INSTALLATION)
    assert stores.tokens.put_if_newer(INSTALLATION, first, account_id=ACCOUNT, sk=sk, guard=guard) is PutOutcome.STORED
    stores.installations.mark_uninstalled(INSTALLATION)
    guard = stores.installations.still_installed(INSTALLATION)
    late = stores.tokens.put_if_newer(INSTALLATION, app_token(3600), account_id=ACCOUNT, sk=sk, guard=guard)
    assert late is PutOutcome.INSTALLATION_GONE
    assert stores.tokens.get_valid(INSTALLATION, 0, sk=sk).token == first
    never_seen = stores.installations.still_installed(OTHER)
    assert stores.tokens.put_if_newer(OTHER, app_token(3600), guard=never_seen) is PutOutcome.INSTALLATION_GONE


# -- installations -----------------------------------------------------------------------------------
def test_an_installation_is_recorded_and_keeps_its_facts(stores: Stores) -> None:
    assert stores.installations.get(INSTALLATION) is None
    install(stores, cloud_id="cloud-1", environment_type="PRODUCTION")
    clock.advance(60)
    install(stores)  # a later call that carries fewer facts
    installation = stores.installations.get(INSTALLATION)
    assert installation is not None
    assert installation.active
    assert (installation.api_base_url, installation.cloud_id, installation.environment_type) == (
        API_BASE,
        "cloud-1",
        "PRODUCTION",
    )
    assert installation.installed_at == FROZEN_AT + 60
    assert installation.uninstalled_at is None


def test_uninstalled_is_terminal_and_marked_once(stores: Stores) -> None:
    install(stores, cloud_id="cloud-1")
    first = stores.installations.mark_uninstalled(INSTALLATION, retention_s=3600)
    assert (first.uninstalled_at, first.retain_until) == (FROZEN_AT, FROZEN_AT + 3600)
    clock.advance(120)
    assert stores.installations.mark_uninstalled(INSTALLATION, retention_s=60) == first
    assert stores.installations.record_lifecycle(InstallationFacts(INSTALLATION, API_BASE), "installed") is False
    installation = stores.installations.get(INSTALLATION)
    assert installation is not None
    assert (installation.status, installation.active) == (InstallationStatus.UNINSTALLED, False)
    assert (installation.uninstalled_at, installation.cloud_id) == (FROZEN_AT, "cloud-1")


def test_an_uninstall_nobody_saw_installed_is_recorded_too(stores: Stores) -> None:
    stores.installations.mark_uninstalled(OTHER)
    installation = stores.installations.get(OTHER)
    assert installation is not None
    assert (installation.status, installation.api_base_url) == (InstallationStatus.UNINSTALLED, None)


# -- results -----------------------------------------------------------------------------------------
def test_results_are_upserts_by_kind_and_key(stores: Stores) -> None:
    assert stores.results.get(INSTALLATION, "SNAPSHOT", "1") is None
    stores.results.put(INSTALLATION, "SNAPSHOT", "1", {"title": "first"})
    stored = stores.results.put(INSTALLATION, "SNAPSHOT", "1", {"title": "again", "n": 2})
    assert stored.truncated == {}
    assert stores.results.get(INSTALLATION, "SNAPSHOT", "1") == {"title": "again", "n": 2}


def test_results_list_one_kind_of_one_installation_in_key_order(stores: Stores) -> None:
    for key in ("b", "a", "c"):
        stores.results.put(INSTALLATION, "SNAPSHOT", key, {"key": key})
    stores.results.put(INSTALLATION, "DIGEST", "a", {"key": "digest"})
    stores.results.put(OTHER, "SNAPSHOT", "z", {"key": "other"})
    assert stores.results.list(INSTALLATION, "SNAPSHOT") == [{"key": "a"}, {"key": "b"}, {"key": "c"}]
    assert stores.results.list(INSTALLATION, "NOTHING") == []


def test_a_result_kind_must_be_upper_case(stores: Stores) -> None:
    with pytest.raises(ValueError, match="UPPER_CASE"):
        stores.results.put(INSTALLATION, "snapshot", "1", {})
    with pytest.raises(ValueError, match="UPPER_CASE"):
        stores.results.list(INSTALLATION, "A#B")


def test_a_result_too_big_for_the_item_is_cut_and_says_so(stores: Stores) -> None:
    record = {"title": "big", "pages": [f"page {i}" for i in range(1000)]}
    stored = stores.small_results.put(INSTALLATION, "DIGEST", "1", record)
    assert stored.data_bytes < SMALL_BUDGET
    assert set(stored.truncated) == {"/pages"}
    kept = stored.truncated["/pages"]["kept"]
    assert 0 < kept < stored.truncated["/pages"]["total"] == 1000
    read = stores.small_results.get(INSTALLATION, "DIGEST", "1")
    assert read == {"title": "big", "pages": record["pages"][:kept], TRUNCATED: stored.truncated}


# -- parked jobs -------------------------------------------------------------------------------------
def test_a_parked_job_is_claimed_once(stores: Stores) -> None:
    stores.parking.park(INSTALLATION, "r1", job="page-snapshot", receipt_handle="h1", retry_at=FROZEN_AT + 120.0004)
    assert stores.parking.waiting(INSTALLATION) == 1
    (claimed,) = stores.parking.claim(INSTALLATION)
    assert (claimed.installation_id, claimed.request_id, claimed.job, claimed.receipt_handle) == (
        INSTALLATION,
        "r1",
        "page-snapshot",
        "h1",
    )
    assert (claimed.parked_at, claimed.retry_at) == (FROZEN_AT, FROZEN_AT + 120)  # kept to the millisecond
    assert list(stores.parking.claim(INSTALLATION)) == []
    assert stores.parking.waiting(INSTALLATION) == 0


def test_the_newest_delivery_of_a_request_is_the_one_parked(stores: Stores) -> None:
    stores.parking.park(INSTALLATION, "r1", job="j", receipt_handle="old", retry_at=FROZEN_AT + 60)
    stores.parking.park(INSTALLATION, "r1", job="j", receipt_handle="new", retry_at=FROZEN_AT + 120)
    assert stores.parking.waiting(INSTALLATION) == 1
    assert [p.receipt_handle for p in stores.parking.claim(INSTALLATION)] == ["new"]


def test_claiming_one_request_leaves_the_others(stores: Stores) -> None:
    for request_id in ("r2", "r1", "r3"):
        stores.parking.park(INSTALLATION, request_id, job="j", receipt_handle=request_id, retry_at=FROZEN_AT + 60)
    stores.parking.park(OTHER, "r9", job="j", receipt_handle="r9", retry_at=FROZEN_AT + 60)
    assert [p.request_id for p in stores.parking.claim(INSTALLATION, "r2")] == ["r2"]
    assert list(stores.parking.claim(INSTALLATION, "r2")) == []
    stores.parking.unpark(INSTALLATION, "r3")
    stores.parking.unpark(INSTALLATION, "never-parked")
    assert [p.request_id for p in stores.parking.claim(INSTALLATION)] == ["r1"]
    assert stores.parking.waiting(OTHER) == 1


def test_a_job_whose_delay_ended_long_ago_is_not_waiting(stores: Stores) -> None:
    stores.parking.park(INSTALLATION, "r1", job="j", receipt_handle="h", retry_at=FROZEN_AT + 60)
    clock.advance(60 + STALE_AFTER_S - 1)
    assert stores.parking.waiting(INSTALLATION) == 1
    clock.advance(2)
    assert stores.parking.waiting(INSTALLATION) == 0
    assert [p.request_id for p in stores.parking.claim(INSTALLATION)] == ["r1"]  # still there, left to its ttl


def test_a_restored_job_is_parked_again_from_now(stores: Stores) -> None:
    stores.parking.park(INSTALLATION, "r1", job="j", receipt_handle="h", retry_at=FROZEN_AT + 600)
    (claimed,) = stores.parking.claim(INSTALLATION)
    clock.advance(5)
    stores.parking.restore(claimed)
    (again,) = stores.parking.claim(INSTALLATION)
    assert (again.receipt_handle, again.retry_at, again.parked_at) == ("h", FROZEN_AT + 600, FROZEN_AT + 5)


# -- the fakes answer as the stores do, call for call ------------------------------------------------
def script(stores: Stores) -> list[Any]:
    """One run of calls on every store, with every answer (errors as their type and message)."""
    answers: list[Any] = []

    def answer(call: Any, *args: Any, **kwargs: Any) -> None:
        try:
            result = call(*args, **kwargs)
            answers.append(list(result) if hasattr(result, "__next__") else result)
        except Exception as exc:
            answers.append((type(exc).__name__, str(exc)))

    tokens = [app_token(lifetime) for lifetime in (1800, 900, 3600, -5, 7200)]
    install(stores, cloud_id="cloud-1")
    for token in tokens:
        answer(stores.tokens.put_if_newer, INSTALLATION, token)
        answer(stores.tokens.get_valid, INSTALLATION, 1000)
        clock.advance(7)
    answer(stores.tokens.invalidate, INSTALLATION, tokens[2])
    answer(stores.tokens.wakes_jobs, INSTALLATION, 600)
    answer(stores.tokens.invalidate, INSTALLATION, tokens[4])
    answer(stores.tokens.put_if_newer, INSTALLATION, tokens[4])
    answer(stores.tokens.wakes_jobs, INSTALLATION, 600)
    answer(stores.tokens.get_valid, INSTALLATION, 7500)
    answer(stores.installations.get, INSTALLATION)
    answer(stores.installations.mark_uninstalled, INSTALLATION, retention_s=10)
    answer(stores.installations.get, INSTALLATION)
    guard = stores.installations.still_installed(INSTALLATION)
    answer(stores.tokens.put_if_newer, INSTALLATION, app_token(9000), account_id=ACCOUNT, guard=guard)
    text = "é€😀" * 300  # multi-byte characters: sizes are UTF-8 bytes
    for budget_record in ({"a": 1}, {"text": text}, {"rows": [[i, text[:20]] for i in range(200)], "n": 5}):
        answer(stores.small_results.put, INSTALLATION, "DIGEST", "k", budget_record, ttl_s=60)
        answer(stores.small_results.get, INSTALLATION, "DIGEST", "k")
    answer(stores.small_results.list, INSTALLATION, "DIGEST")
    for n, request_id in enumerate(("b", "a", "c")):
        stores.parking.park(INSTALLATION, request_id, job="j", receipt_handle=f"h{n}", retry_at=clock.now() + n / 7)
    answer(stores.parking.waiting, INSTALLATION)
    answer(stores.parking.claim, INSTALLATION, "c")
    answer(stores.parking.claim, INSTALLATION)
    return answers


def test_the_fakes_answer_every_call_as_the_stores_do() -> None:
    memory = script(memory_stores())
    clock.reset()  # FROZEN_AT again (the offset only)
    with mock_aws():
        real = script(dynamodb_stores())
    assert len(memory) == len(real) == 30
    assert [i for i, (m, r) in enumerate(zip(memory, real, strict=True)) if m != r] == []
