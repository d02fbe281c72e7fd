"""Data residency on this machine: ``make local ARGS="--realms default,EU"`` runs a stack per realm, each
with its own tables in its own region of ONE moto server, each one's ``PeerAppTables`` naming the other's
app table; ``forge_cli`` sends every Forge call to the stack of the site's realm, and ``forge_cli migrate``
moves the site from one to the other as Forge does (the manifest's ``migration:dataResidency`` hooks).

The stacks are real ``python -m local.serve`` processes (the second started by the first, ``--join``), on
ports of the kernel's choice, loopback only. ``forge_cli`` runs in this process. The migration's job hold
settles for the deployed 150 s, and ``migrate --advance 5m`` moves every stack's clock as far as Forge's
polls are apart before each status poll: nothing waits for this machine's clock.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
import requests

from forge_remote import clock
from forge_remote.lifecycle.migration_copy import MARKER, SKIPPED_PREFIXES
from forge_remote.storage.table_keys import INSTALLATION_SK, MIGRATION_SK_PREFIX
from local import forge_cli, realms, serve
from local.cfn_yaml import load_template
from local.dev_control import ControlClient
from local.job_outcomes import OutcomeJournal
from local.moto_server import MotoServer
from local.stack import TEMPLATE
from local.ui_dev import INVOKE_PATH, PAGE_PATH
from tests.serve_process import ServeProcess
from tests.support import ROOT, partition_items

HOME, EU = "default", "EU"
DEPLOYED_SETTLE_S = "150"  # the template's MIGRATION_SETTLE_S: the clock is moved past it, never waited for


@dataclass
class Realms:
    """The running two-realm stack, as its state files describe it."""

    process: ServeProcess
    state_file: Path
    banner: list[str]

    def state(self) -> dict[str, Any]:
        state: dict[str, Any] = json.loads(self.state_file.read_text(encoding="utf-8"))
        return state

    def realm(self, realm: str) -> dict[str, Any]:
        entry: dict[str, Any] = self.state()["realms"][realm]
        return entry

    def site(self) -> dict[str, Any]:
        site: dict[str, Any] = self.state()["site"]
        return site

    def client(self, realm: str) -> Any:
        return boto3.client(
            "dynamodb",
            endpoint_url=self.state()["aws"]["endpointUrl"],
            region_name=self.realm(realm)["region"],
            aws_access_key_id="local",
            aws_secret_access_key="local",
        )

    def partition(self, realm: str, installation_id: str, table: str = "AppTable") -> dict[str, dict[str, Any]]:
        """The installation's items in a realm's table, by sort key."""
        return partition_items(self.client(realm), f"{self.realm(realm)['stackName']}-{table}", installation_id)

    def tokens(self, realm: str, installation_id: str) -> dict[str, dict[str, Any]]:
        return self.partition(realm, installation_id, "TokensTable")

    def journal(self, realm: str) -> OutcomeJournal:
        state_file = self.state_file if realm == HOME else Path(self.realm(realm)["stateFile"])
        return OutcomeJournal(serve.journal_path(state_file))

    def control(self) -> ControlClient:
        control = self.state()["control"]
        return ControlClient(control["url"], control["secret"])


@pytest.fixture(scope="module")
def stacks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Realms]:
    state_file = tmp_path_factory.mktemp("residency") / "state.json"
    process = ServeProcess(
        *("--realms", "default,EU", "--port", "0", "--ui-port", "0", "--state-file", str(state_file)),
        *("--migration-settle", DEPLOYED_SETTLE_S),
        cwd=ROOT,
    )
    try:
        yield Realms(process, state_file, list(process.banner(timeout=180)))
    finally:
        output = process.stop()
    assert process.process.returncode == 0, output
    assert not state_file.exists()
    assert not realms.realm_state_file(state_file, EU).exists()  # the joined stack's went with it
    assert "Traceback" not in output, output


@pytest.fixture(autouse=True)
def stack_clock() -> Iterator[None]:
    """``forge_cli`` sets this process's clock to the stacks' (moved on by ``--advance``): back after each test."""
    yield
    clock.reset()


def cli(stacks: Realms, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    capsys.readouterr()
    try:
        code = forge_cli.main([*args, "--state-file", str(stacks.state_file)])
    except SystemExit as exc:  # a usage error: argparse exits (2), nothing sent
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def fresh_installation(stacks: Realms, capsys: pytest.CaptureFixture[str]) -> str:
    """A new installation of the site, in realm default, with job results: a page snapshot and a digest."""
    site = stacks.site()
    for realm in (HOME, EU):  # wherever the last test left it active
        registry = stacks.partition(realm, site["installationId"]).get(INSTALLATION_SK)
        if registry is not None and registry["status"]["S"] == "active":
            assert cli(stacks, capsys, "uninstall", "--url", stacks.realm(realm)["gatewayUrl"])[0] == 0
    stacks.control().put("/v1/site/realm", {"realm": HOME})
    code, out = cli(stacks, capsys, "install")
    assert code == 0, out
    installation_id = str(stacks.site()["installationId"])
    for command in (("page-created", "--wait"), ("job", "space-digest", "--wait")):
        code, out = cli(stacks, capsys, *command)
        assert code == 0, out
        assert "done:" in out, out
    assert stacks.partition(EU, installation_id) == {}
    return installation_id


def copied_keys(items: dict[str, dict[str, Any]]) -> set[str]:
    """What a migration copies of a partition: all but the source stack's own business."""
    return {sk for sk in items if not sk.startswith(SKIPPED_PREFIXES)}


def status_page_url(lines: list[str]) -> str | None:
    line = next(line for line in lines if line.startswith("Token status page"))
    found = re.search(r"http://127\.0\.0\.1:\d+/status/", line)
    return found.group(0) if found else None


def hooks_called(out: str) -> list[tuple[str, str]]:
    return re.findall(r"^(?:POST|GET) /forge/migration/(\w+)\S* -> HTTP (\d+)$", out, re.MULTILINE)


# -- two regional stacks
def test_each_realm_has_a_stack_in_a_region_of_its_own_and_items_land_in_the_sites(
    stacks: Realms, capsys: pytest.CaptureFixture[str]
) -> None:
    home, eu = stacks.realm(HOME), stacks.realm(EU)
    assert (home["region"], eu["region"]) == ("us-east-1", "eu-central-1")
    assert home["gatewayUrl"] != eu["gatewayUrl"]
    assert all(re.fullmatch(r"http://127\.0\.0\.1:\d+", entry["gatewayUrl"]) for entry in (home, eu))
    assert eu["appTableArn"] == realms.app_table_arn(EU)
    assert stacks.state()["realm"] == HOME
    # The banner: the realm map, and the joined stack's own line naming its peer, the default realm's table.
    assert any(line.startswith("Data residency: a stack per realm") for line in stacks.banner)
    peers = f"PeerAppTables default={realms.app_table_arn(HOME)}"
    assert any(
        line.startswith(f"[EU] realm EU's stack on {eu['gatewayUrl']}") and peers in line for line in stacks.banner
    )
    assert any("migrate --to EU --rollback" in line for line in stacks.banner)

    # One moto server; each stack's tables in its own region of it, and only there.
    tables = {realm: set(stacks.client(realm).list_tables()["TableNames"]) for realm in (HOME, EU)}
    assert f"{home['stackName']}-AppTable" in tables[HOME]
    assert f"{eu['stackName']}-AppTable" in tables[EU]
    assert all(name.startswith("forge-remote-local-eu-") for name in tables[EU])
    assert not any(name.startswith("forge-remote-local-eu-") for name in tables[HOME])

    installation_id = fresh_installation(stacks, capsys)
    assert stacks.site()["realm"] == HOME
    home_items = stacks.partition(HOME, installation_id)
    assert home_items[INSTALLATION_SK]["status"]["S"] == "active"
    assert any(sk.startswith("SNAPSHOT#") for sk in home_items)
    assert any(sk.startswith("DIGEST#") for sk in home_items)
    assert stacks.tokens(HOME, installation_id)
    assert stacks.partition(EU, installation_id) == {}
    assert stacks.tokens(EU, installation_id) == {}

    # The joined stack's state file leads the CLI to the site's stack; both clocks move as one.
    code, out = forge_cli.main(["status", "--state-file", eu["stateFile"]]), capsys.readouterr().out
    assert code == 0, out
    assert f'"installationId": "{installation_id}"' in out
    code, out = cli(stacks, capsys, "clock", "advance", "1m")
    assert code == 0, out
    assert "realm default's stack clock moved 1 min forward" in out
    assert "realm EU's stack clock moved 1 min forward" in out


# -- a realm migration, as Forge drives it
def test_migrate_moves_the_installation_to_eu_and_forge_calls_follow_it(
    stacks: Realms, capsys: pytest.CaptureFixture[str]
) -> None:
    installation_id = fresh_installation(stacks, capsys)
    before = stacks.partition(HOME, installation_id)
    home_gateway, eu_gateway = stacks.realm(HOME)["gatewayUrl"], stacks.realm(EU)["gatewayUrl"]

    code, out = cli(stacks, capsys, "migrate", "--to", "EU", "--advance", "5m")
    assert code == 0, out
    called = hooks_called(out)
    assert called[:2] == [("schedule", "200"), ("start", "200")], out
    assert called[-1] == ("commit", "200"), out
    assert {hook for hook, _ in called[2:-1]} == {"status"}, out
    assert len(called) >= 4  # the copy waits out the 150 s settle: the clock is moved 5 min per poll
    assert '"status": "ready-to-commit"' in out
    assert "the site is in realm EU now" in out

    # Source: nothing of the installation but its "moved" tombstone (it refuses late calls), no token.
    after = stacks.partition(HOME, installation_id)
    assert set(after) == {INSTALLATION_SK}, sorted(after)
    assert after[INSTALLATION_SK]["status"]["S"] == "moved"
    assert after[INSTALLATION_SK]["movedTo"]["S"] == EU
    assert stacks.tokens(HOME, installation_id) == {}
    # Destination: every item the source had (its own business aside), each marked with the migration.
    moved = stacks.partition(EU, installation_id)
    assert set(moved) == copied_keys(before)
    assert len(moved) >= 5  # registry, snapshot, two digests, last runs
    migration_ids = {item[MARKER]["S"] for item in moved.values()}
    assert len(migration_ids) == 1
    assert moved[INSTALLATION_SK]["status"]["S"] == "active"
    for sk, item in moved.items():
        if sk != INSTALLATION_SK:
            assert {k: v for k, v in item.items() if k != MARKER} == before[sk], sk
    assert stacks.tokens(EU, installation_id) == {}  # tokens are not copied: Forge delivers fresh ones
    assert "realm default's app table holds 1 item of the installation: INSTALLATION 1" in out
    assert f"realm EU's app table holds {len(moved)} items of the installation" in out

    # The site is in realm EU: Forge calls go to the EU stack, which gets its first token from them.
    assert stacks.site()["realm"] == EU
    code, out = cli(stacks, capsys, "keepalive")
    assert code == 0, out
    assert "POST /forge/keepalive -> HTTP 204" in out
    assert stacks.tokens(EU, installation_id)
    assert stacks.tokens(HOME, installation_id) == {}
    home_outcomes = len(stacks.journal(HOME).outcomes())
    code, out = cli(stacks, capsys, "job", "space-digest", "--wait")
    assert code == 0, out
    assert "in realm EU's stack" in out
    assert "done:" in out
    request_id = re.search(r"\(request ([0-9a-f]+)\)", out)
    assert request_id is not None
    assert stacks.journal(EU).find(request_id.group(1)) is not None  # the EU stack's worker ran it
    assert len(stacks.journal(HOME).outcomes()) == home_outcomes
    code, out = cli(stacks, capsys, "status")
    assert code == 0, out
    assert '"status": "active"' in out
    code, out = cli(stacks, capsys, "site")
    assert f"realm EU: Forge calls go to {eu_gateway}" in out
    page = status_page_url(stacks.banner)
    if page is not None:  # None: "not served" (no Node.js here); the stacks run without it
        # The status page's UI calls follow the site too: the EU stack answers them.
        answer = requests.post(
            page.removesuffix(PAGE_PATH) + INVOKE_PATH, json={"path": "/api/status", "method": "GET"}, timeout=30
        ).json()
        assert answer["status"] == 200, answer
        assert answer["body"]["installationId"] == installation_id
        assert answer["body"]["installation"]["status"] == "active"

    # The default stack refuses the moved installation's calls (as Forge's stragglers would be).
    code, out = cli(stacks, capsys, "keepalive", "--url", home_gateway)
    assert code == 1
    assert "POST /forge/keepalive -> HTTP 409" in out
    assert '"error": "moved"' in out

    # Usage: the site is in EU already; no stack serves US here. Nothing is sent.
    assert cli(stacks, capsys, "migrate", "--to", "EU")[0] == 2
    code, out = cli(stacks, capsys, "migrate", "--to", "US")
    assert code == 2
    assert "make local ARGS='--realms default,EU,US'" in out


def test_a_rollback_leaves_the_destination_without_the_installation_and_the_source_intact(
    stacks: Realms, capsys: pytest.CaptureFixture[str]
) -> None:
    installation_id = fresh_installation(stacks, capsys)
    before = stacks.partition(HOME, installation_id)

    code, out = cli(stacks, capsys, "migrate", "--to", "EU", "--rollback", "--advance", "5m")
    assert code == 0, out
    called = hooks_called(out)
    assert called[-1] == ("rollback", "200"), out
    assert "commit" not in {hook for hook, _ in called}
    assert '"status": "ready-to-commit"' in out  # it had copied everything before the rollback
    assert re.search(r'"removed": [1-9]', out), out

    assert stacks.partition(EU, installation_id) == {}
    assert "realm EU's app table holds 0 items of the installation: nothing" in out
    after = stacks.partition(HOME, installation_id)
    records = [sk for sk in after if sk.startswith(MIGRATION_SK_PREFIX)]
    assert len(records) == 1
    assert after[records[0]]["state"]["S"] == "rolled-back"
    assert set(after) - set(records) == set(before)
    for sk, item in before.items():
        if sk != INSTALLATION_SK:
            assert after[sk] == item, sk
    registry = after[INSTALLATION_SK]
    assert registry["status"]["S"] == "active"
    assert registry["activePk"]["S"] == "ACTIVE"  # back in the scheduler's sight
    assert not {"migrationId", "holdFrom", "holdUntil"} & set(registry)  # the job hold is released
    assert stacks.tokens(HOME, installation_id)

    # The site stays in realm default, and its jobs run there again.
    assert stacks.site()["realm"] == HOME
    code, out = cli(stacks, capsys, "job", "space-digest", "--wait")
    assert code == 0, out
    assert "in realm default's stack" in out
    assert "done:" in out


def test_a_copy_that_fails_is_rolled_back_and_the_site_stays(
    stacks: Realms, capsys: pytest.CaptureFixture[str]
) -> None:
    installation_id = fresh_installation(stacks, capsys)
    before = stacks.partition(HOME, installation_id)

    code, out = cli(stacks, capsys, "migrate", "--to", "EU", "--fail-copy-after", "1", "--advance", "5m")
    assert code == 1, out
    assert "planted a " in out
    assert '"errorResponseCode": "E0002"' in out
    assert hooks_called(out)[-1] == ("rollback", "200"), out
    assert "removed the item planted in realm EU's app table" in out
    assert out.index("removed the item planted") < out.index("realm EU's app table holds 0 items")
    # The copy is one transaction per batch: none of it was written, so nothing is left in EU.
    assert re.search(r'"removed": 0\b', out), out
    assert stacks.partition(EU, installation_id) == {}
    after = stacks.partition(HOME, installation_id)
    assert {sk for sk in after if not sk.startswith(MIGRATION_SK_PREFIX)} == set(before)
    assert after[INSTALLATION_SK]["status"]["S"] == "active"
    assert stacks.site()["realm"] == HOME


def test_a_rollback_into_a_realm_the_installation_left_keeps_its_tombstone(
    stacks: Realms, capsys: pytest.CaptureFixture[str]
) -> None:
    installation_id = fresh_installation(stacks, capsys)
    assert cli(stacks, capsys, "migrate", "--to", "EU", "--advance", "5m")[0] == 0
    assert stacks.partition(HOME, installation_id)[INSTALLATION_SK]["status"]["S"] == "moved"
    code, out = cli(stacks, capsys, "migrate", "--to", "default", "--rollback", "--advance", "5m")
    assert code == 0, out
    assert stacks.site()["realm"] == EU
    # The default stack must still refuse the installation: its data lives in EU.
    code, out = cli(stacks, capsys, "keepalive", "--url", stacks.realm(HOME)["gatewayUrl"])
    assert "HTTP 409" in out, out
    assert stacks.partition(HOME, installation_id)[INSTALLATION_SK]["status"]["S"] == "moved"


# -- no stack needed
def test_every_realm_of_the_template_has_a_region_of_its_own() -> None:
    parameters = load_template(TEMPLATE)["Parameters"]
    assert set(realms.REGIONS) == set(parameters["DataRealm"]["AllowedValues"])
    assert len(set(realms.REGIONS.values())) == len(realms.REGIONS)
    peers = realms.peer_app_tables(realms.REGIONS, HOME)
    assert peers.count("=arn:aws:dynamodb:") == len(realms.REGIONS) - 1
    # The value local stacks get is one the template accepts (a stack names at most five peers).
    pattern = re.compile(parameters["PeerAppTables"]["AllowedPattern"])
    assert pattern.fullmatch(realms.peer_app_tables(["default", "EU", "US"], HOME))
    assert pattern.fullmatch(realms.peer_app_tables(["default", "EU", "US"], EU))
    assert realms.stack_name(HOME) == "forge-remote-local"  # a single make local's names, as before


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--realms", "default,XX"], "not a realm: 'XX'"),
        (["--realms", "default,EU,eu"], "names a realm twice"),
        (["--realm", "EU"], "--realm is for --join"),
        (["--join", "x.json"], "--join needs --realm"),
        (
            ["--realms", "default,EU", "--jwks", "production", "--app-id", "5c7bd2a4-0f1e-4d3b-9a6c-2e8f1b7d4a90"],
            "need the Forge emulator",
        ),
        (["--migration-settle", "-1"], "0 to 3600 seconds"),
    ],
)
def test_serve_usage_errors_for_realms_are_one_line(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        serve.parse_args(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err
    assert len(err.strip().splitlines()) == 1, err


def test_migrate_refuses_a_realm_that_is_none_before_reading_any_state(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        forge_cli.main(["migrate", "--to", "Mars", "--state-file", str(tmp_path / "none.json")])
    assert exit_info.value.code == 2
    assert "--to: not a realm: 'Mars'" in capsys.readouterr().err


def test_the_local_moto_writes_a_transaction_naming_its_table_by_arn_all_or_nothing() -> None:
    """DynamoDB writes none of a transaction's items when one item's condition fails; moto 5.2 did not roll
    back the items of a table named by its ARN (as the migration's cross-region copy names it), until
    ``local/moto_server.py`` named such tables by name for it."""
    moto = MotoServer(region="eu-central-1")
    try:
        client = boto3.client(
            "dynamodb",
            endpoint_url=moto.start(),
            region_name="eu-central-1",
            aws_access_key_id="local",
            aws_secret_access_key="local",
        )
        arn = client.create_table(
            TableName="atomic",
            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )["TableDescription"]["TableArn"]
        client.put_item(TableName="atomic", Item={"pk": {"S": "b"}, "owner": {"S": "someone else"}})
        puts = [
            {"Put": {"TableName": arn, "Item": {"pk": {"S": key}}, "ConditionExpression": "attribute_not_exists(pk)"}}
            for key in "abc"
        ]
        with pytest.raises(client.exceptions.TransactionCanceledException):
            client.transact_write_items(TransactItems=puts)  # type: ignore[arg-type]
        assert [item["pk"]["S"] for item in client.scan(TableName="atomic")["Items"]] == ["b"]
    finally:
        moto.stop()
