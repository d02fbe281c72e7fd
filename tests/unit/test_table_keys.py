"""Every table key (``storage/table_keys.py``): one partition per installation, sort keys that never collide."""

from __future__ import annotations

import pytest

import forge_remote.storage.table_keys as keys


def test_an_installation_owns_one_partition_in_both_tables() -> None:
    assert keys.installation_pk("ari:cloud:ecosystem::installation/1") == "INST#ari:cloud:ecosystem::installation/1"


def test_token_keys_keep_the_app_user_and_offline_tokens_apart() -> None:
    account = "5b10ac8d82e05b22cc7d4ef5"
    app, user, offline = keys.token_sk(None), keys.token_sk(account), keys.offline_token_sk(account)
    assert app == keys.APP_TOKEN_SK
    assert len({app, user, offline, keys.REFUSED_TOKEN_SK}) == 4
    assert user.endswith(account)
    assert offline.endswith(account)
    assert keys.token_sk("") == app  # no account: the app's


@pytest.mark.parametrize("account", ["", "a#b", "has space", "x" * 129])
def test_an_offline_token_key_needs_an_account_id(account: str) -> None:
    with pytest.raises(ValueError, match="account id"):
        keys.offline_token_sk(account)


def test_result_kinds_cannot_overlap() -> None:
    assert keys.result_sk("SNAPSHOT", "42#v3") == "SNAPSHOT#42#v3"
    assert keys.result_sk("SNAPSHOT", "1").startswith(keys.result_sk_prefix("SNAPSHOT"))
    assert not keys.result_sk("SNAPSHOT_OLD", "1").startswith(keys.result_sk_prefix("SNAPSHOT"))
    for kind in ("snapshot", "A#B", "", "SNAP SHOT"):
        with pytest.raises(ValueError, match="UPPER_CASE"):
            keys.result_sk(kind, "1")


def test_a_jti_is_cut_so_the_key_stays_small() -> None:
    long = "j" * 1000
    assert keys.once_sk(long) == keys.ONCE_SK_PREFIX + "j" * keys.MAX_JTI_CHARS
    assert keys.once_sk("abc") == "FIT#abc"


def test_the_status_page_keys_sort_as_it_reads_them() -> None:
    older = keys.dead_sk("2026-01-01T00:00:00+00:00", "r1")
    newer = keys.dead_sk("2026-01-02T00:00:00+00:00", "r0")
    assert older < newer  # the time leads the key: a query in reverse gives the newest first
    assert older.startswith(keys.DEAD_SK_PREFIX)
    assert keys.last_run_sk("page-snapshot") == keys.LAST_RUN_SK_PREFIX + "page-snapshot"
    assert keys.parked_sk("r1").startswith(keys.PARKED_SK_PREFIX)


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("ari:cloud:ecosystem::installation/uuid-1", True),
        ("a#b", False),
        ("a b", False),
        ("", False),
        ("x" * 201, False),
    ],
)
def test_installation_ids_cannot_break_out_of_a_key(value: str, ok: bool) -> None:
    assert bool(keys.INSTALLATION_ID_PATTERN.fullmatch(value)) is ok
