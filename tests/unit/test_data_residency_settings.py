"""A realm migration's inputs, alone: the hooks' bodies (``forge/migration_hooks.py``) and this stack's realm
and peers (``lifecycle/realms.py``, read at cold start)."""

from __future__ import annotations

from typing import Any

import pytest

from forge_remote.errors import ConfigurationError, MalformedEvent
from forge_remote.forge.migration_hooks import ERROR_MEANINGS, ErrorCode, epoch_seconds, migration_window, realm_label
from forge_remote.lifecycle.realms import DEFAULT_SETTLE_S, MAX_PEERS, Residency, parse_peer_tables

EU_ARN = "arn:aws:dynamodb:eu-central-1:123456789012:table/forge-remote-eu-AppTable-1A2B3C"
US_ARN = "arn:aws:dynamodb:us-east-2:123456789012:table/forge-remote-us-AppTable-4D5E6F"


def body(**changes: Any) -> dict[str, Any]:
    return {
        "migrationId": "7c9e6679-7425-40de-944b-e07fc1f90ae7",
        "location": "EU",
        "startTime": "2026-03-01T10:00:00Z",
        "endTime": "2026-03-01T16:00:00.000+00:00",
        **changes,
    }


def test_a_window_is_read_from_iso_times_and_the_realm_spelled_canonically() -> None:
    window = migration_window(body(location="eu", extra="ignored"))
    assert (window.location, window.end_time - window.start_time) == ("EU", 6 * 3600)
    assert window.start_time == epoch_seconds(1772359200, "t") == epoch_seconds(1772359200000, "t")
    assert epoch_seconds("2026-03-01T10:00:00", "t") == window.start_time  # no zone: UTC
    assert realm_label("DEFAULT") == realm_label("Global") == "default"


@pytest.mark.parametrize(
    ("changes", "says"),
    [
        ({"migrationId": ""}, "migrationId"),
        ({"migrationId": "x" * 129}, "migrationId"),
        ({"migrationId": "has space"}, "migrationId"),
        ({"location": 3}, "location"),
        ({"location": "E1"}, "location"),
        ({"startTime": True}, "startTime"),
        ({"startTime": float("nan")}, "startTime"),
        ({"startTime": "1900-01-01T00:00:00Z"}, "startTime"),
        ({"endTime": None}, "endTime"),
        ({"endTime": "2026-03-01T10:00:00Z"}, "after startTime"),
        ({"endTime": "2026-03-04T10:00:00Z"}, "48 hours"),
    ],
)
def test_a_body_the_code_cannot_use_is_malformed(changes: dict[str, Any], says: str) -> None:
    with pytest.raises(MalformedEvent, match=says):
        migration_window(body(**changes))


def test_every_error_code_has_a_meaning_of_ours() -> None:
    assert set(ERROR_MEANINGS) == set(ErrorCode)
    assert [code.value for code in ErrorCode] == ["E0001", "E0002", "E0003", "E0004", "E9999"]


def test_the_realm_and_its_peers_are_read_from_the_environment() -> None:
    residency = Residency.from_env(
        {"DATA_REALM": "default", "PEER_APP_TABLES": f" EU={EU_ARN} , us={US_ARN} ", "MIGRATION_SETTLE_S": "90"}
    )
    assert residency.realm == "default"
    assert residency.settle_s == 90
    eu = residency.peer("EU")
    assert eu is not None
    assert (eu.arn, eu.region) == (EU_ARN, "eu-central-1")
    assert residency.peer("US") is not None
    assert residency.peer("AU") is None
    assert Residency.from_env({}) == Residency(realm="default", peers={}, settle_s=DEFAULT_SETTLE_S)


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"DATA_REALM": "Europe 1"}, "DATA_REALM"),
        ({"PEER_APP_TABLES": "EU"}, "REALM=<DynamoDB table ARN>"),
        ({"PEER_APP_TABLES": "EU=arn:aws:s3:::bucket"}, "REALM=<DynamoDB table ARN>"),
        ({"PEER_APP_TABLES": f"EU={EU_ARN},EU={US_ARN}"}, "twice"),
        ({"DATA_REALM": "EU", "PEER_APP_TABLES": f"EU={EU_ARN}"}, "own realm"),
        ({"MIGRATION_SETTLE_S": "soon"}, "MIGRATION_SETTLE_S"),
        ({"MIGRATION_SETTLE_S": "-1"}, "MIGRATION_SETTLE_S"),
    ],
)
def test_a_malformed_setting_fails_the_cold_start_naming_it(env: dict[str, str], says: str) -> None:
    with pytest.raises(ConfigurationError, match=says):
        Residency.from_env(env)


def test_no_more_peers_than_the_template_grants() -> None:
    realms = ["EU", "US", "AU", "DE", "JP", "GB"]
    entries = [f"{r}={EU_ARN[:-1]}{i}" for i, r in enumerate(realms)]
    assert len(parse_peer_tables(",".join(entries[:MAX_PEERS]))) == MAX_PEERS
    with pytest.raises(ConfigurationError, match="more than 5"):
        parse_peer_tables(",".join(entries))


def test_the_settle_time_outlasts_a_job_run() -> None:
    """A job that started just before the hold must be done before the copy reads: the worker's timeout."""
    from local.cfn_yaml import load_template
    from local.stack import TEMPLATE

    resources = load_template(TEMPLATE)["Resources"]
    settle = int(resources["ForgeTriggersFunction"]["Properties"]["Environment"]["Variables"]["MIGRATION_SETTLE_S"])
    assert settle >= resources["ConfluenceWorkerFunction"]["Properties"]["Timeout"] + 10
    assert settle == DEFAULT_SETTLE_S
