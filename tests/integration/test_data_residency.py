"""A data residency realm migration, end to end: Forge's five hooks on this stack (the ``default`` realm,
us-east-1) move an installation's data into the EU stack's app table (eu-central-1), both stacks' tables
made from ``template.yaml`` in one moto (a table's region is its client's, and the ARN says which).

Every hook is called as API Gateway calls ``ForgeTriggersFunction``, with a FIT the Forge emulator signs
naming the manifest's ``data-residency`` module. Time is the stack's clock (``clock.advance``) and the
Lambda's remaining time a fixed or counted number: nothing depends on how fast this machine is.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from unittest.mock import patch

import boto3
import pytest
from botocore.client import BaseClient
from botocore.exceptions import ClientError

from forge_remote import clock
from forge_remote.forge.call_kinds import MIGRATION_MODULE_TYPE, MIGRATION_ROUTES
from forge_remote.lifecycle.migration_copy import MARKER
from forge_remote.storage.installations import MOVED_TOMBSTONE_S
from forge_remote.storage.results import ResultStore
from forge_remote.storage.table_keys import installation_pk
from local.apigw import http_api_event
from local.forge_emulator import ForgeEmulator, Site
from local.handlers import load_handler
from local.lambda_context import LocalLambdaContext
from local.stack import LocalStack
from tests.support import FUNCTIONS, LocalWorld, body_of, moto_stack, partition_items

EU_REGION = "eu-central-1"
MODULE_KEY = "data-residency"
ACCOUNT = "557058:residency-user"
SEEDED_RESULTS = 230  # three copy batches of 100 with the registry item and the rest


@dataclass
class Regions:
    home: LocalStack  # realm "default", where the installation is
    eu: LocalStack  # realm "EU", where it goes


@pytest.fixture
def regions(forge: ForgeEmulator) -> Iterator[Regions]:
    with moto_stack(forge) as home:
        eu = LocalStack.from_template(
            stack_name="forge-remote-eu",
            region=EU_REGION,
            parameters={"ForgeAppId": forge.app_ari, "ForgeJwksUrl": forge.jwks_url, "DataRealm": "EU"},
        )
        eu.create(
            dynamodb=boto3.client("dynamodb", region_name=EU_REGION), sqs=boto3.client("sqs", region_name=EU_REGION)
        )
        home.parameters.update(DataRealm="default", PeerAppTables=f"EU={eu.arns['AppTable']}")
        yield Regions(home, eu)


@pytest.fixture
def stack(regions: Regions) -> LocalStack:
    """This module's stack (what ``local_world`` and the function fixtures load): the home realm's."""
    return regions.home


class FixedContext(LocalLambdaContext):
    """A Lambda context whose remaining time never runs down (a call's budget is never what stops it)."""

    def __init__(self, remaining_ms: int = 5000) -> None:
        super().__init__(function_name="forge-triggers", timeout_s=6)
        self.remaining_ms = remaining_ms

    def get_remaining_time_in_millis(self) -> int:
        return self.remaining_ms


class RunningOut(LocalLambdaContext):
    """Plenty of time for the first ``looks`` looks at the clock, then too little for another batch."""

    def __init__(self, looks: int) -> None:
        super().__init__(function_name="forge-triggers", timeout_s=6)
        self.looks = looks

    def get_remaining_time_in_millis(self) -> int:
        self.looks -= 1
        return 5000 if self.looks >= 0 else 1000


# -- calling the hooks ------------------------------------------------------------------------------
def window(migration_id: str, *, starts_in_s: float = 3600, hours: float = 4, location: str = "EU") -> dict[str, Any]:
    start = clock.now() + starts_in_s
    return {
        "migrationId": migration_id,
        "location": location,
        "startTime": clock.iso(start).replace("+00:00", "Z"),
        "endTime": clock.iso(start + hours * 3600).replace("+00:00", "Z"),
    }


def hook(
    world: LocalWorld,
    name: str,
    body: Any = None,
    *,
    site: Site | None = None,
    headers: dict[str, str] | None = None,
    context: LocalLambdaContext | None = None,
    migration_id: str | None = None,
) -> dict[str, Any]:
    """One hook call as Forge makes it: GET status?migrationId=..., POST the others with their body."""
    headers = headers or world.forge.headers(site or world.site, module_key=MODULE_KEY)
    method = "GET" if name == "status" else "POST"
    query = f"migrationId={migration_id}" if name == "status" and migration_id is not None else ""
    event = http_api_event(method, f"/forge/migration/{name}", headers=headers, body=body, query=query)
    response: dict[str, Any] = world.triggers.lambda_handler(event, context or FixedContext())
    return response


def answer(response: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    return response["statusCode"], body_of(response)


def migrate_until_ready(world: LocalWorld, migration_id: str, **window_options: Any) -> dict[str, Any]:
    """schedule, the window opens, start and status: the copy is complete (one call is enough here)."""
    body = window(migration_id, **window_options)
    assert hook(world, "schedule", body)["statusCode"] == 200
    clock.advance(3600)
    status, started = answer(hook(world, "start", body))
    assert status == 200, started
    status, polled = answer(hook(world, "status", migration_id=migration_id))
    assert (status, polled["status"]) == (200, "ready-to-commit"), polled
    return body


# -- the data ---------------------------------------------------------------------------------------
def home_items(world: LocalWorld, logical_id: str = "AppTable") -> dict[str, dict[str, Any]]:
    return partition_items(boto3.client("dynamodb"), world.stack.physical[logical_id], world.site.installation_id)


def eu_items(world: LocalWorld, regions: Regions) -> dict[str, dict[str, Any]]:
    eu = boto3.client("dynamodb", region_name=EU_REGION)
    return partition_items(eu, regions.eu.physical["AppTable"], world.site.installation_id)


def seed(world: LocalWorld, results: int = SEEDED_RESULTS) -> set[str]:
    """An installed site with job results, a user's digest, a last run, a parked job and a FIT record;
    returns the sort keys a migration copies (everything but the parked job, the FIT record and itself)."""
    world.install()
    store = ResultStore(boto3.client("dynamodb"), world.stack.physical["AppTable"])
    for i in range(results):
        store.put(world.site.installation_id, "SNAPSHOT", f"{i:04d}#v1", {"pageId": str(i), "title": f"Page {i}"})
    store.put(world.site.installation_id, "USER_DIGEST", ACCOUNT, {"accountId": ACCOUNT, "pages": 3})
    pk = {"S": installation_pk(world.site.installation_id)}
    for sk in ("LASTRUN#space-digest", "PARKED#request-1", "FIT#jti-1"):
        boto3.client("dynamodb").put_item(
            TableName=world.stack.physical["AppTable"],
            Item={"pk": pk, "sk": {"S": sk}, "ttl": {"N": str(int(clock.now()) + 86400)}},
        )
    return {sk for sk in home_items(world) if not sk.startswith(("PARKED#", "FIT#"))}


def table_state(world: LocalWorld, regions: Regions) -> dict[str, Any]:
    """Both regions' tables, whole: for checks that a refused call wrote nothing anywhere."""
    state: dict[str, Any] = {}
    for name, stack in (("home", regions.home), ("eu", regions.eu)):
        client = boto3.client("dynamodb", region_name=stack.region)
        for logical_id in ("AppTable", "TokensTable"):
            items = client.scan(TableName=stack.physical[logical_id], ConsistentRead=True)["Items"]
            state[f"{name}/{logical_id}"] = sorted(json.dumps(i, sort_keys=True) for i in items)
    return state


@contextmanager
def eu_calls(fail: Callable[[str, int], bool] = lambda operation, n: False) -> Iterator[list[tuple[str, int]]]:
    """Every DynamoDB call made to the EU region: (operation, items in it); ``fail(operation, n)`` (n: the
    how-manieth call of that operation) makes a call fail as DynamoDB's 500 would, before it lands."""
    seen: list[tuple[str, int]] = []
    original = BaseClient._make_api_call

    def spy(client: BaseClient, operation: str, params: dict[str, Any]) -> Any:
        if client.meta.region_name == EU_REGION and client.meta.service_model.service_name == "dynamodb":
            nth = sum(1 for op, _ in seen if op == operation) + 1
            seen.append((operation, len(params.get("TransactItems", []))))
            if fail(operation, nth):
                raise ClientError({"Error": {"Code": "InternalServerError", "Message": "injected"}}, operation)
        return original(client, operation, params)

    with patch.object(BaseClient, "_make_api_call", spy):
        yield seen


def puts(seen: list[tuple[str, int]]) -> int:
    return sum(n for operation, n in seen if operation == "TransactWriteItems")


# -- the whole migration ----------------------------------------------------------------------------
def test_a_migration_moves_every_item_and_leaves_nothing_of_it_behind(
    local_world: LocalWorld, regions: Regions, capsys: pytest.CaptureFixture[str]
) -> None:
    world = local_world
    copied = seed(world)
    assert len(copied) == SEEDED_RESULTS + 3  # the registry item, the results, the digest, the last run
    assert "SYSTEM" in home_items(world, "TokensTable")
    with eu_calls() as seen:
        migrate_until_ready(world, "mig-1")
    in_eu = eu_items(world, regions)
    assert set(in_eu) == copied  # every item, once (the parked job, the FIT record, the migration stay)
    assert puts(seen) == len(copied)  # each written once: no batch twice
    assert {item[MARKER]["S"] for item in in_eu.values()} == {"mig-1"}
    registry = in_eu["INSTALLATION"]
    assert "activePk" not in registry
    assert "holdUntil" not in registry
    assert registry["status"]["S"] == "active"
    assert home_items(world)["INSTALLATION"]["activePk"]["S"] == "MIGRATING"  # held, out of the scheduler

    status, committed = answer(hook(world, "commit", {"migrationId": "mig-1"}))
    assert status == 200, committed
    assert committed | {"tokensDeleted": 1, "sourceCleanup": "complete"} == committed
    assert (committed["state"], committed["movedTo"], committed["status"]) == ("committed", "EU", "ready-to-commit")
    # The source keeps a tombstone of ids and times only; no token, no result, no record of the migration.
    left = home_items(world)
    assert set(left) == {"INSTALLATION", "FIT#jti-1"}  # the FIT once-record (ids, no data) expires within the hour
    tombstone = left["INSTALLATION"]
    assert tombstone["status"]["S"] == "moved"
    assert tombstone["movedTo"]["S"] == "EU"
    assert not {"apiBaseUrl", "siteUrl", "cloudId", "activePk", "holdFrom"} & set(tombstone)
    assert int(tombstone["ttl"]["N"]) - int(tombstone["movedAt"]["N"]) == MOVED_TOMBSTONE_S
    assert home_items(world, "TokensTable") == {}
    assert set(eu_items(world, regions)) == copied  # the destination still holds every item

    # Forge calls the EU stack from now on; a straggler here is refused, counted, and writes nothing.
    before = table_state(world, regions)
    refused = world.send("POST", "/forge/keepalive", world.forge.headers(world.site, app_token=world.forge.app_token()))
    assert (refused["statusCode"], body_of(refused)["error"]) == (409, "moved")
    assert "realm EU" in body_of(refused)["message"]
    assert table_state(world, regions) == before
    lines = capsys.readouterr().out.splitlines()
    emf = [json.loads(line) for line in lines if line.startswith("{") and '"_aws"' in line]
    assert [m["realm"] for m in emf if "MovedInstallationCalls" in m] == ["EU"]


def test_the_destination_takes_the_installation_over_on_forges_first_call_there(
    local_world: LocalWorld, regions: Regions, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The EU stack's own trigger function, with its own environment: its first keepalive stores a fresh
    token and puts the copied registry item back in its scheduler's sight."""
    world = local_world
    seed(world, results=3)
    migrate_until_ready(world, "mig-eu")
    assert hook(world, "commit", {"migrationId": "mig-eu"})["statusCode"] == 200
    regions.eu.parameters["AllowedApiHosts"] = regions.home.parameters["AllowedApiHosts"]  # the emulator's
    monkeypatch.setenv("AWS_DEFAULT_REGION", EU_REGION)
    from forge_remote import aws

    try:
        eu_triggers = load_handler(
            "ForgeTriggersFunction", FUNCTIONS["ForgeTriggersFunction"], regions.eu.environment("ForgeTriggersFunction")
        )
        headers = world.forge.headers(world.site, app_token=world.forge.app_token())
        response = eu_triggers(http_api_event("POST", "/forge/keepalive", headers=headers), FixedContext())
    finally:
        monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        aws.reset_clients()
    assert response["statusCode"] == 204
    registry = eu_items(world, regions)["INSTALLATION"]
    assert (registry["activePk"]["S"], registry["status"]["S"]) == ("ACTIVE", "active")
    eu_tokens = partition_items(
        boto3.client("dynamodb", region_name=EU_REGION), regions.eu.physical["TokensTable"], world.site.installation_id
    )
    assert set(eu_tokens) == {"SYSTEM"}


# -- repeated and out-of-order calls ----------------------------------------------------------------
def test_each_hook_called_twice_answers_the_same_and_copies_nothing_twice(
    local_world: LocalWorld, regions: Regions
) -> None:
    world = local_world
    copied = seed(world, results=120)
    body = window("mig-twice")
    first, again = answer(hook(world, "schedule", body)), answer(hook(world, "schedule", body))
    assert first == again
    assert first[0] == 200
    assert first[1]["state"] == "scheduled"
    clock.advance(3600)
    with eu_calls() as seen:
        started = answer(hook(world, "start", body))
        restarted = answer(hook(world, "start", body))
        statuses = [answer(hook(world, "status", migration_id="mig-twice")) for _ in range(2)]
    assert started[0] == restarted[0] == 200
    assert started[1]["status"] == restarted[1]["status"] == "ready-to-commit"
    assert statuses[0] == statuses[1]
    assert statuses[0][1]["status"] == "ready-to-commit"
    assert puts(seen) == len(copied)  # the repeated start and the polls wrote nothing again
    committed = answer(hook(world, "commit", {"migrationId": "mig-twice"}))
    recommitted = answer(hook(world, "commit", {"migrationId": "mig-twice"}))
    assert committed[0] == recommitted[0] == 200
    assert recommitted[1]["state"] == "committed"
    assert recommitted[1]["tokensDeleted"] == 0
    after = answer(hook(world, "status", migration_id="mig-twice"))
    assert after == (
        200,
        {"migrationId": "mig-twice", "status": "ready-to-commit", "state": "committed", "movedTo": "EU"},
    )
    status, undo = answer(hook(world, "rollback", {"migrationId": "mig-twice"}))
    assert (status, undo["error"]) == (409, "committed")
    assert "nothing is left here to undo" in undo["message"]
    assert set(eu_items(world, regions)) == copied  # a refused rollback removed nothing from the destination
    assert answer(hook(world, "start", body))[1]["state"] == "committed"  # a late start: the same answer


def test_calls_out_of_order_are_answered_sensibly(local_world: LocalWorld, regions: Regions) -> None:
    world = local_world
    copied = seed(world, results=10)
    # Nothing scheduled yet: no such migration to report, commit or undo.
    status, unknown = answer(hook(world, "status", migration_id="mig-x"))
    assert (status, unknown["status"], unknown["errorResponseCode"]) == (200, "failed", "E9999")
    assert answer(hook(world, "commit", {"migrationId": "mig-x"}))[0] == 409
    status, undo = answer(hook(world, "rollback", {"migrationId": "mig-x"}))
    assert (status, undo["removed"]) == (200, 0)
    # Start without a schedule: it schedules itself; the hold begins now, so the copy waits for it to settle.
    body = window("mig-x", starts_in_s=0)
    status, started = answer(hook(world, "start", body))
    assert (status, started["status"], started["copied"]) == (200, "in-progress", 0)
    assert "copyBegins" in started
    assert eu_items(world, regions) == {}
    status, early = answer(hook(world, "commit", {"migrationId": "mig-x"}))
    assert (status, early["error"]) == (409, "not_ready")  # no error code: Forge retries, nothing changed
    assert "errorResponseCode" not in early
    clock.advance(151)  # MIGRATION_SETTLE_S: no job that started before the hold can still be writing
    assert answer(hook(world, "status", migration_id="mig-x"))[1]["status"] == "ready-to-commit"
    assert set(eu_items(world, regions)) == copied
    assert answer(hook(world, "schedule", window("mig-x")))[1]["state"] == "copied"  # a late schedule: no change
    # Another migration while this one holds the installation: refused, with a code.
    status, other = answer(hook(world, "schedule", window("mig-y")))
    assert (status, other["errorResponseCode"], other["error"]) == (409, "E9999", "migration_in_progress")
    # Rollback twice: the same answer; the destination is empty, the source whole, the hold released.
    first, second = (
        answer(hook(world, "rollback", {"migrationId": "mig-x"})),
        answer(hook(world, "rollback", {"migrationId": "mig-x"})),
    )
    assert first == second == (200, {"migrationId": "mig-x", "state": "rolled-back", "removed": len(copied)})
    assert eu_items(world, regions) == {}
    assert copied <= set(home_items(world))
    assert home_items(world)["INSTALLATION"]["activePk"]["S"] == "ACTIVE"
    assert answer(hook(world, "commit", {"migrationId": "mig-x"}))[1]["errorResponseCode"] == "E9999"
    status, rolled = answer(hook(world, "status", migration_id="mig-x"))
    assert (status, rolled["status"], rolled["state"]) == (200, "failed", "rolled-back")
    # ... and a new migration may now be scheduled.
    assert answer(hook(world, "schedule", window("mig-y")))[0] == 200


def test_a_scheduled_migration_gives_way_to_one_scheduled_instead(local_world: LocalWorld, regions: Regions) -> None:
    world = local_world
    seed(world, results=2)
    assert hook(world, "schedule", window("mig-old"))["statusCode"] == 200
    assert hook(world, "schedule", window("mig-new", starts_in_s=7200))["statusCode"] == 200
    assert answer(hook(world, "status", migration_id="mig-old"))[1]["state"] == "superseded"
    assert home_items(world)["INSTALLATION"]["migrationId"]["S"] == "mig-new"


# -- faults, time and conflicts ---------------------------------------------------------------------
def test_a_destination_fault_in_the_middle_of_the_copy_is_resumed_with_nothing_lost_or_doubled(
    local_world: LocalWorld, regions: Regions
) -> None:
    world = local_world
    copied = seed(world)
    body = window("mig-fault")
    assert hook(world, "schedule", body)["statusCode"] == 200
    clock.advance(3600)
    with eu_calls(fail=lambda operation, n: operation == "TransactWriteItems" and n == 2) as seen:
        status, started = answer(hook(world, "start", body))
    assert (status, started["status"]) == (200, "in-progress")  # the second batch failed: the call stopped
    first_batch = started["copied"]
    assert 0 < first_batch < len(copied)
    assert len(eu_items(world, regions)) == first_batch
    with eu_calls() as resumed:
        assert answer(hook(world, "status", migration_id="mig-fault"))[1]["status"] == "ready-to-commit"
    assert set(eu_items(world, regions)) == copied  # nothing lost ...
    assert puts(resumed) == len(copied) - first_batch  # ... nothing written twice: it resumed after the batch
    assert puts(seen) > first_batch  # (the failed batch was tried, and wrote nothing)


def test_a_copy_cut_short_by_the_time_budget_resumes_from_its_cursor(local_world: LocalWorld, regions: Regions) -> None:
    world = local_world
    copied = seed(world)
    body = window("mig-time")
    assert hook(world, "schedule", body)["statusCode"] == 200
    clock.advance(3600)
    progress = []
    _, started = answer(hook(world, "start", body, context=RunningOut(looks=3)))
    progress.append(started["copied"])
    for _ in range(10):
        status, polled = answer(hook(world, "status", migration_id="mig-time", context=RunningOut(looks=3)))
        assert status == 200
        progress.append(polled["copied"])
        if polled["status"] == "ready-to-commit":
            break
    assert progress[-1] == len(copied)
    assert progress == sorted(progress)
    assert len(progress) > 2
    assert 0 < progress[0] < len(copied)  # the first call copied some, not all
    assert set(eu_items(world, regions)) == copied


def test_a_rollback_after_a_partial_copy_removes_exactly_this_migrations_items(
    local_world: LocalWorld, regions: Regions
) -> None:
    world = local_world
    copied = seed(world)
    source_before = home_items(world)
    # An item of the same installation in the destination, written by something else: never touched.
    eu = boto3.client("dynamodb", region_name=EU_REGION)
    foreign = {"pk": {"S": installation_pk(world.site.installation_id)}, "sk": {"S": "SNAPSHOT#zzzz#v1"}}
    eu.put_item(TableName=regions.eu.physical["AppTable"], Item={**foreign, MARKER: {"S": "another-migration"}})
    body = window("mig-partial")
    assert hook(world, "schedule", body)["statusCode"] == 200
    clock.advance(3600)
    with eu_calls(fail=lambda operation, n: operation == "TransactWriteItems" and n == 2):
        partial = answer(hook(world, "start", body))[1]["copied"]
    assert 0 < partial < len(copied)
    assert len(eu_items(world, regions)) == partial + 1
    status, undone = answer(hook(world, "rollback", {"migrationId": "mig-partial"}))
    assert (status, undone["state"], undone["removed"]) == (200, "rolled-back", partial)
    assert set(eu_items(world, regions)) == {"SNAPSHOT#zzzz#v1"}
    source_after = home_items(world)
    assert set(source_after) == set(source_before) | {"MIGRATION#mig-partial"}
    assert {sk: source_after[sk] for sk in copied if sk != "INSTALLATION"} == {
        sk: source_before[sk] for sk in copied if sk != "INSTALLATION"
    }
    registry = source_after["INSTALLATION"]
    assert registry["activePk"]["S"] == "ACTIVE"
    assert "holdUntil" not in registry
    assert "migrationId" not in registry


def test_a_rollback_puts_back_the_tombstone_the_copy_wrote_over(local_world: LocalWorld, regions: Regions) -> None:
    # The installation once left the EU realm: EU keeps a "moved" tombstone of it. A migration back there that
    # is rolled back must leave that tombstone, or a straggler call to EU would make it active in two realms.
    world = local_world
    seed(world)
    eu = boto3.client("dynamodb", region_name=EU_REGION)
    tombstone = {
        "pk": {"S": installation_pk(world.site.installation_id)},
        "sk": {"S": "INSTALLATION"},
        "status": {"S": "moved"},
        "movedTo": {"S": "default"},
    }
    eu.put_item(TableName=regions.eu.physical["AppTable"], Item=tombstone)
    body = window("mig-back")
    assert hook(world, "schedule", body)["statusCode"] == 200
    clock.advance(3600)
    assert answer(hook(world, "start", body))[1]["status"] == "ready-to-commit"
    assert eu_items(world, regions)["INSTALLATION"]["status"]["S"] != "moved"  # the copy's registry item
    status, undone = answer(hook(world, "rollback", {"migrationId": "mig-back"}))
    assert (status, undone["state"]) == (200, "rolled-back")
    assert eu_items(world, regions) == {"INSTALLATION": tombstone}  # exactly as it was, nothing else left


def test_a_destination_item_the_migration_did_not_write_fails_it_with_e0002_and_is_kept(
    local_world: LocalWorld, regions: Regions
) -> None:
    world = local_world
    seed(world)
    eu = boto3.client("dynamodb", region_name=EU_REGION)
    theirs = {"pk": {"S": installation_pk(world.site.installation_id)}, "sk": {"S": "SNAPSHOT#0150#v1"}}
    eu.put_item(TableName=regions.eu.physical["AppTable"], Item={**theirs, "data": {"S": "not ours"}})
    body = window("mig-conflict")
    assert hook(world, "schedule", body)["statusCode"] == 200
    clock.advance(3600)
    hook(world, "start", body)
    status, polled = answer(hook(world, "status", migration_id="mig-conflict"))
    assert (status, polled["status"], polled["errorResponseCode"]) == (200, "failed", "E0002")
    assert "SNAPSHOT item" in polled["message"]
    assert eu_items(world, regions)["SNAPSHOT#0150#v1"]["data"]["S"] == "not ours"
    assert answer(hook(world, "commit", {"migrationId": "mig-conflict"}))[1]["errorResponseCode"] == "E0002"
    status, _undone = answer(hook(world, "rollback", {"migrationId": "mig-conflict"}))
    assert status == 200
    assert set(eu_items(world, regions)) == {"SNAPSHOT#0150#v1"}


def test_a_copy_the_window_closes_on_fails_with_e0003_and_commit_is_refused(
    local_world: LocalWorld, regions: Regions
) -> None:
    world = local_world
    seed(world, results=5)
    body = window("mig-late", starts_in_s=0, hours=1)
    hook(world, "start", body)  # the hold settles only in 150 s: nothing copied yet
    clock.advance(2 * 3600)
    status, polled = answer(hook(world, "status", migration_id="mig-late"))
    assert (status, polled["status"], polled["errorResponseCode"]) == (200, "failed", "E0003")
    assert answer(hook(world, "commit", {"migrationId": "mig-late"}))[0] == 409
    assert hook(world, "rollback", {"migrationId": "mig-late"})["statusCode"] == 200


def test_a_commit_after_the_hold_lapsed_is_refused_with_e0003(local_world: LocalWorld, regions: Regions) -> None:
    world = local_world
    seed(world, results=5)
    migrate_until_ready(world, "mig-lapsed", hours=1)
    clock.advance(2 * 3600)  # past the window and its grace: jobs ran here again since the copy
    status, refused = answer(hook(world, "commit", {"migrationId": "mig-lapsed"}))
    assert (status, refused["errorResponseCode"], refused["error"]) == (409, "E0003", "hold_lapsed")
    assert home_items(world)["INSTALLATION"]["status"]["S"] == "active"


# -- refusals ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("location", "code"),
    [("AU", "E0001"), ("default", "E0001"), ("eu", None)],
    ids=["realm not served", "its own realm", "a label in lower case"],
)
def test_a_destination_this_stack_does_not_serve_is_refused_with_e0001(
    local_world: LocalWorld, regions: Regions, location: str, code: str | None
) -> None:
    world = local_world
    seed(world, results=1)
    before = table_state(world, regions)
    status, refused = answer(hook(world, "schedule", window("mig-where", location=location)))
    if code is None:  # "eu" is EU's label
        assert status == 200
        return
    assert (status, refused["status"], refused["errorResponseCode"]) == (422, "failed", code)
    assert table_state(world, regions) == before


def test_an_installation_not_served_here_is_refused_with_e0004(local_world: LocalWorld, regions: Regions) -> None:
    world = local_world
    mine = world.site
    stranger = Site(
        world.forge.site().installation_id, mine.cloud_id, mine.api_base_url, mine.site_url
    )  # not installed
    status, refused = answer(hook(world, "schedule", window("mig-who"), site=stranger))
    assert (status, refused["errorResponseCode"]) == (422, "E0004")
    seed(world, results=1)
    assert world.send("POST", "/forge/uninstall", world.forge.headers(world.site))["statusCode"] == 200
    status, refused = answer(hook(world, "start", window("mig-who")))
    assert (status, refused["errorResponseCode"]) == (422, "E0004")
    assert answer(hook(world, "status", migration_id="mig-who"))[1]["errorResponseCode"] == "E0004"


def _claims(forge: ForgeEmulator, site: Site, **changes: Any) -> dict[str, Any]:
    claims = forge.fit_claims(site, module_key=MODULE_KEY)
    for key, value in changes.items():
        claims["app"]["module"][key] = value
    return claims


@pytest.mark.parametrize("route", MIGRATION_ROUTES)
def test_a_bad_fit_or_another_kind_of_call_is_refused_on_every_hook_and_writes_nothing(
    local_world: LocalWorld, regions: Regions, route: str
) -> None:
    world, forge = local_world, local_world.forge
    seed(world, results=1)
    name = route.rsplit("/", 1)[1]
    body = window("mig-kind") if name in ("schedule", "start") else {"migrationId": "mig-kind"}
    before = table_state(world, regions)
    strangers = forge.headers(world.site)
    strangers["authorization"] = "Bearer not-a-fit"
    user = forge.headers(world.site, principal=ACCOUNT, module_key="ui-endpoint")
    keepalive = forge.headers(world.site, module_key="token-keepalive")
    ui_type = forge.headers(world.site, fit=forge.sign(_claims(forge, world.site, type="confluence:globalSettings")))
    for headers, expected in ((strangers, 401), (user, 403), (keepalive, 403), (ui_type, 403)):
        status, refused = answer(hook(world, name, body, headers=headers, migration_id="mig-kind"))
        assert status == expected, (headers.get("authorization", "")[:20], refused)
        assert refused["error"] in ("unauthorized", "wrong_call_kind")
    assert table_state(world, regions) == before
    # Controls: the module's own key, with the migration module's type or none, is accepted.
    own_type = forge.headers(world.site, fit=forge.sign(_claims(forge, world.site, type=MIGRATION_MODULE_TYPE)))
    assert hook(world, name, body, headers=own_type, migration_id="mig-kind")["statusCode"] < 500


@pytest.mark.parametrize(
    ("name", "body", "says"),
    [
        ("schedule", None, "body is empty"),
        ("schedule", "{not json", "not valid JSON"),
        ("schedule", [1, 2], "not a JSON object"),
        (
            "schedule",
            {"location": "EU", "startTime": "2026-01-01T00:00:00Z", "endTime": "2026-01-01T04:00:00Z"},
            "migrationId",
        ),
        ("start", {"migrationId": "a#b", "location": "EU", "startTime": 1, "endTime": 2}, "migrationId"),
        (
            "start",
            {"migrationId": "m", "location": "E U", "startTime": "2026-01-01T00:00:00Z", "endTime": "x"},
            "location",
        ),
        (
            "start",
            {"migrationId": "m", "location": "EU", "startTime": "yesterday", "endTime": "2026-01-01T04:00:00Z"},
            "startTime",
        ),
        (
            "start",
            {
                "migrationId": "m",
                "location": "EU",
                "startTime": "2026-01-01T04:00:00Z",
                "endTime": "2026-01-01T00:00:00Z",
            },
            "after startTime",
        ),
        (
            "schedule",
            {"migrationId": "m", "location": "EU", "startTime": 1767225600, "endTime": 1767225600 + 3 * 86400},
            "48 hours",
        ),
        ("commit", {}, "migrationId"),
        ("rollback", {"migrationId": ["m"]}, "migrationId"),
        ("status", None, "migrationId"),
    ],
)
def test_a_malformed_hook_call_is_a_400_json_never_a_500(
    local_world: LocalWorld, regions: Regions, name: str, body: Any, says: str
) -> None:
    world = local_world
    seed(world, results=1)
    before = table_state(world, regions)
    status, refused = answer(hook(world, name, body, migration_id=None if name == "status" else "m"))
    assert (status, refused["error"]) == (400, "bad_request")
    assert says in refused["message"]
    assert table_state(world, regions) == before


def test_times_as_epoch_seconds_and_milliseconds_are_read_too(local_world: LocalWorld, regions: Regions) -> None:
    world = local_world
    seed(world, results=1)
    start = int(clock.now()) + 3600
    seconds = {"migrationId": "mig-s", "location": "EU", "startTime": start, "endTime": start + 3600}
    assert answer(hook(world, "schedule", seconds))[0] == 200
    ms = {**seconds, "migrationId": "mig-ms", "startTime": start * 1000, "endTime": (start + 3600) * 1000}
    assert answer(hook(world, "schedule", ms))[0] == 200  # gives way to mig-s's schedule: the same window


# -- jobs and the scheduler during the window -------------------------------------------------------
def scheduler_of(world: LocalWorld) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """JobSchedulerFunction's handler, invoked with an event as EventBridge Scheduler would."""
    scheduler = world.load("JobSchedulerFunction")
    context = LocalLambdaContext("scheduler", timeout_s=300)
    return lambda event: scheduler.lambda_handler(event, context)


def test_jobs_are_held_during_the_window_and_the_scheduler_skips_the_installation(
    local_world: LocalWorld, regions: Regions
) -> None:
    world = local_world
    seed(world, results=0)
    scheduler = scheduler_of(world)

    def census() -> int:
        return int(scheduler({"task": "token-census"})["activeInstallations"])

    assert census() == 1
    body = window("mig-hold")
    assert hook(world, "schedule", body)["statusCode"] == 200
    clock.advance(3600 - 100)  # inside the hold (the window less MIGRATION_SETTLE_S), before the start
    (request,) = world.pages(1)
    world.enqueue(request)
    event, response = world.run_worker()
    assert len(response["batchItemFailures"]) == 1  # deferred: back on the queue, not failed, not dead
    assert world.queue_count("JobsDeadLetterQueue") == 0
    assert world.snapshot_request_ids() == []
    clock.advance(100)
    assert hook(world, "start", body)["statusCode"] == 200
    assert census() == 0  # out of the scheduler's sight while the migration runs
    assert scheduler({"job": "space-digest"})["requested"] == 0
    world.make_visible(event)
    assert len(world.run_worker()[1]["batchItemFailures"]) == 1  # still held
    assert hook(world, "rollback", {"migrationId": "mig-hold"})["statusCode"] == 200
    assert census() == 1  # rolled back: scheduled again
    world.make_visible(event)  # (its delay, 90 minutes at most: SQS would bring it back then)
    assert world.run_worker()[1]["batchItemFailures"] == []
    assert world.snapshot_request_ids() == [request.request_id]  # and it ran, here


def test_a_hold_that_lapses_without_commit_or_rollback_is_released_by_the_sweep(
    local_world: LocalWorld, regions: Regions
) -> None:
    world = local_world
    seed(world, results=0)
    scheduler = scheduler_of(world)
    migrate_until_ready(world, "mig-forgotten", hours=1)
    assert "holdsReleased" not in scheduler({"task": "cleanup-sweep"})
    clock.advance(2 * 3600)  # the window and its grace are over; Forge never committed nor rolled back
    swept = scheduler({"task": "cleanup-sweep"})
    assert swept["holdsReleased"] == 1
    assert (
        world.send("POST", "/forge/keepalive", world.forge.headers(world.site, app_token=world.forge.app_token()))[
            "statusCode"
        ]
        == 204
    )
    assert scheduler({"task": "token-census"})["activeInstallations"] == 1
    registry = home_items(world)["INSTALLATION"]
    assert registry["activePk"]["S"] == "ACTIVE"
    assert "holdUntil" not in registry
    (request,) = world.pages(1)
    world.enqueue(request)
    assert world.run_worker()[1]["batchItemFailures"] == []
    assert world.snapshot_request_ids() == [request.request_id]
    assert answer(hook(world, "commit", {"migrationId": "mig-forgotten"}))[1]["error"] == "hold_lapsed"


def test_a_moved_installation_is_refused_on_every_route_and_its_queued_jobs_are_dropped(
    local_world: LocalWorld, regions: Regions
) -> None:
    world, forge = local_world, local_world.forge
    seed(world, results=1)
    world.enqueue(world.snapshot_request("7"))
    migrate_until_ready(world, "mig-gone")
    assert hook(world, "commit", {"migrationId": "mig-gone"})["statusCode"] == 200
    before = table_state(world, regions)
    token = forge.app_token()
    calls = [
        ("POST", "/forge/lifecycle", forge.headers(world.site, app_token=token), forge.installed_event(world.site)),
        ("POST", "/forge/events", forge.headers(world.site, app_token=token), forge.page_event("7", "ENG")),
        ("POST", "/forge/uninstall", forge.headers(world.site), {}),
        ("GET", "/api/status", forge.ui_call_headers(world.site), None),
    ]
    for method, path, headers, body in calls:
        response = world.send(method, path, headers, body)
        assert (response["statusCode"], body_of(response)["error"]) == (409, "moved"), path
    assert table_state(world, regions) == before
    clock.advance(3 * 3600)  # past the hold: the job queued before the migration comes back
    _, response = world.run_worker()
    assert response["batchItemFailures"] == []  # discarded: the EU stack runs its jobs now
    assert world.queue_count() == 0
