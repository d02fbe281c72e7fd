"""What happens to an installation's data: every item carries a TTL, and an uninstall removes it
(``DataRetentionDays`` 0) or sets it to expire (a retention period), resumably; with a retention, what
names an account goes at once (deleted if keyed by it, else rewritten without it).

A realistic workload runs through the real functions (lifecycle, a UI call with a user token, page
events through the idempotent intake, the worker's jobs, an offline user token); moto never expires
TTL items, so the tests check the ``ttl`` values and the deletions themselves. An uninstall whose
cleanup is cut short (a storage fault, the Lambda's time running out) answers an error, and Forge's
retry, or the scheduled sweep, finishes it from where it stopped.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from forge_remote import clock
from forge_remote.lifecycle.cleanup import DAY_S, PAGE_SIZE
from forge_remote.storage.installations import TOMBSTONE_GRACE_S
from forge_remote.storage.results import ResultStore
from forge_remote.storage.table_keys import installation_pk, offline_token_sk
from forge_remote.tokens.store import TokenStore
from local.apigw import http_api_event
from local.lambda_context import LocalLambdaContext
from tests.support import Gateway, LocalWorld, body_of

USER = "557058:lifecycle-user"


def table_items(world: LocalWorld, logical_id: str) -> list[dict[str, Any]]:
    client = boto3.client("dynamodb")
    return [
        item
        for page in client.get_paginator("scan").paginate(
            TableName=world.stack.physical[logical_id], ConsistentRead=True
        )
        for item in page["Items"]
    ]


def partition(world: LocalWorld, logical_id: str) -> dict[str, dict[str, Any]]:
    pk = installation_pk(world.site.installation_id)
    return {i["sk"]["S"]: i for i in table_items(world, logical_id) if i["pk"]["S"] == pk}


def without_ttl(world: LocalWorld) -> list[str]:
    return [
        f"{logical_id}: {item['pk']['S']} / {item['sk']['S']}"
        for logical_id in ("TokensTable", "AppTable")
        for item in table_items(world, logical_id)
        if "N" not in item.get("ttl", {})
    ]


def workload(world: LocalWorld) -> str:
    """What a week of use leaves behind. Returns the last app token delivered."""
    token = world.install()
    forge, site = world.forge, world.site
    status = world.send(
        "GET", "/api/status", forge.headers(site, user_token=forge.app_token(subject=USER), principal=USER)
    )
    assert status["statusCode"] == 200, status
    world.confluence.add_space("ENG", "Engineering")
    for i in range(3):
        page = world.confluence.add_page("ENG", f"Page {i}")
        event = forge.page_event(str(page["id"]), "ENG", version=1, title=f"Page {i}")
        assert world.send("POST", "/forge/events", forge.headers(site), event)["statusCode"] == 202
    world.drain()
    assert len(world.results("SNAPSHOT")) == 3
    TokenStore(boto3.client("dynamodb"), world.stack.physical["TokensTable"]).put_if_newer(
        site.installation_id, forge.app_token(subject=USER), sk=offline_token_sk(USER), delivered_by="test"
    )
    ResultStore(boto3.client("dynamodb"), world.stack.physical["AppTable"]).put(
        site.installation_id, "USER_DIGEST", USER, {"accountId": USER, "pages": []}
    )
    return token


def uninstall(
    world: LocalWorld, gateway: Gateway | None = None, headers: dict[str, str] | None = None
) -> dict[str, Any]:
    """Forge's preUninstall call (through ``gateway``, a triggers container with other settings, if given)."""
    headers = headers or world.forge.headers(world.site)
    if gateway is not None:
        return gateway("POST", "/forge/uninstall", headers, {})
    return world.send("POST", "/forge/uninstall", headers, {})


def triggers_with_retention(world: LocalWorld, days: int) -> Gateway:
    world.stack.parameters["DataRetentionDays"] = str(days)
    module = world.load("ForgeTriggersFunction")
    return Gateway(module, module)


def test_every_item_carries_a_ttl_while_installed_and_after_uninstall(local_world: LocalWorld) -> None:
    workload(local_world)
    assert without_ttl(local_world) == []
    registry = partition(local_world, "AppTable")["INSTALLATION"]
    # Active: far ahead, pushed forward by every token delivery.
    assert float(registry["ttl"]["N"]) > clock.now() + 80 * DAY_S
    response = uninstall(local_world)
    assert response["statusCode"] == 200, response
    assert without_ttl(local_world) == []


def test_uninstall_with_no_retention_removes_the_installations_data(local_world: LocalWorld) -> None:
    workload(local_world)
    other = local_world.forge.site(local_world.confluence.api_base_url.split("/ex/")[0])
    local_world.install(other)  # another installation: untouched
    others_before = [
        i for i in table_items(local_world, "AppTable") if i["pk"]["S"] == installation_pk(other.installation_id)
    ]
    held = partition(local_world, "AppTable")
    assert len(held) > 5  # registry, results, records of the jobs ...
    response = uninstall(local_world)
    assert response["statusCode"] == 200, response
    body = body_of(response)
    assert body["cleanup"] == "complete"
    assert body["tokensDeleted"] == 3  # the app's, the UI user's, the offline user token
    assert body["itemsDeleted"] == len([sk for sk in held if sk != "INSTALLATION" and not sk.startswith("FIT#")])

    assert partition(local_world, "TokensTable") == {}
    left = partition(local_world, "AppTable")
    assert {sk for sk in left if not sk.startswith("FIT#")} == {"INSTALLATION"}
    tombstone = left["INSTALLATION"]
    assert tombstone["status"]["S"] == "uninstalled"
    assert "siteUrl" not in tombstone
    assert "activePk" not in tombstone
    assert "cleanupCursor" not in tombstone
    assert float(tombstone["ttl"]["N"]) <= clock.now() + TOMBSTONE_GRACE_S + 5
    assert USER not in json.dumps(left)
    for sk, item in left.items():
        if sk.startswith("FIT#"):
            assert float(item["ttl"]["N"]) <= clock.now() + 3600 + 5
    # Idempotency records (static partitions, keyed by hashes) are not attributable: they go by expiry,
    # within the queue's four-day retention at most.
    idempotency = [i for i in table_items(local_world, "AppTable") if i["pk"]["S"].startswith("IDEMPOTENCY#")]
    assert idempotency  # the page events' and the jobs' records
    for item in idempotency:
        assert float(item["ttl"]["N"]) <= clock.now() + 4 * DAY_S + 60
    others_after = [
        i for i in table_items(local_world, "AppTable") if i["pk"]["S"] == installation_pk(other.installation_id)
    ]
    assert others_after == others_before


def seed_named_items(world: LocalWorld) -> None:
    """Items that name ``USER`` without being keyed by it, as jobs and the worker write them."""
    client = boto3.client("dynamodb")
    table, pk = world.stack.physical["AppTable"], installation_pk(world.site.installation_id)
    ttl = {"N": str(int(clock.now()) + 90 * DAY_S)}
    ResultStore(client, table).put(
        world.site.installation_id,
        "SNAPSHOT",
        "77#v1",
        {"pageId": "77", "title": "Runbook", "by": {"accountId": USER, "displayName": "Lee Cycle", "email": "l@x.io"}},
    )
    client.put_item(
        TableName=table,
        Item={"pk": {"S": pk}, "sk": {"S": "PARKED#req-9"}, "job": {"S": "user-digest"}, "requestedBy": {"S": USER}}
        | {"ttl": ttl},
    )
    client.put_item(
        TableName=table,
        Item={
            "pk": {"S": pk},
            "sk": {"S": "LASTRUN#user-digest"},
            "summary": {"S": json.dumps({"pages": 2, "requestedBy": USER})},
            "ttl": ttl,
        },
    )


def test_uninstall_with_a_retention_period_keeps_the_data_until_it_expires_but_no_account_in_it(
    local_world: LocalWorld,
) -> None:
    workload(local_world)
    seed_named_items(local_world)
    gateway = triggers_with_retention(local_world, 30)
    held = partition(local_world, "AppTable")
    assert USER in json.dumps(held)
    response = uninstall(local_world, gateway)
    assert response["statusCode"] == 200, response
    body = body_of(response)
    assert body["cleanup"] == "complete"
    assert body["itemsDeleted"] == 1  # the user's digest: keyed by the account, nothing of it is kept
    assert body["itemsScrubbed"] == 3  # the snapshot, the parked job and the job summary that named them
    assert partition(local_world, "TokensTable") == {}  # tokens go at once, whatever the retention
    left = partition(local_world, "AppTable")
    assert set(left) >= set(held) - {"USER_DIGEST#" + USER}  # (and the uninstall's own FIT record)
    assert "USER_DIGEST#" + USER not in left
    # Personal data goes at once: no retained item names the account (it would never be reported again).
    assert USER not in json.dumps(left)
    assert "Lee Cycle" not in json.dumps(left)
    assert left["PARKED#req-9"]["requestedBy"]["S"] == "unknown"
    assert json.loads(left["LASTRUN#user-digest"]["summary"]["S"]) == {"pages": 2, "requestedBy": "unknown"}
    tombstone = left["INSTALLATION"]
    retain_until = float(tombstone["retainUntil"]["N"])
    assert retain_until == pytest.approx(float(tombstone["uninstalledAt"]["N"]) + 30 * DAY_S)
    assert float(tombstone["ttl"]["N"]) == retain_until + TOMBSTONE_GRACE_S
    for sk, item in left.items():
        if sk != "INSTALLATION":
            assert float(item["ttl"]["N"]) <= retain_until, sk  # never later; a FIT record's hour stays shorter
    assert float(left["PARKED#req-9"]["ttl"]["N"]) == retain_until  # scrubbed items are kept like the rest
    # The rest is still readable (support, restore) while it is kept, the scrubbed records in their shape.
    snapshots = {r["pageId"]: r for r in local_world.results("SNAPSHOT")}
    assert len(snapshots) == 4
    assert snapshots["77"]["by"] == {"accountId": "unknown", "displayName": "Former user", "email": ""}
    assert snapshots["77"]["title"] == "Runbook"


class FailingBatchWrites:
    """A DynamoDB client whose ``after``-th and later BatchWriteItem calls fail (a fault mid-walk)."""

    def __init__(self, client: Any, after: int) -> None:
        self._client, self._left = client, after

    def batch_write_item(self, **kwargs: Any) -> Any:
        self._left -= 1
        if self._left < 0:
            raise ClientError(
                {"Error": {"Code": "ProvisionedThroughputExceededException", "Message": "injected"}}, "BatchWriteItem"
            )
        return self._client.batch_write_item(**kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


def seed_results(world: LocalWorld, count: int) -> None:
    store = ResultStore(boto3.client("dynamodb"), world.stack.physical["AppTable"])
    for i in range(count):
        store.put(world.site.installation_id, "SNAPSHOT", f"{i:04d}#v1", {"pageId": str(i), "title": f"Page {i}"})


def results_left(world: LocalWorld) -> int:
    return sum(1 for sk in partition(world, "AppTable") if sk.startswith("SNAPSHOT#"))


@contextmanager
def faulty_walk(module: Any, after: int) -> Iterator[None]:
    original = module.cleanup._client
    module.cleanup._client = FailingBatchWrites(original, after)
    try:
        yield
    finally:
        module.cleanup._client = original


def test_a_cleanup_cut_short_by_a_fault_is_finished_by_forges_retry(local_world: LocalWorld) -> None:
    local_world.install()
    seed_results(local_world, 4 * PAGE_SIZE + 3)
    headers = local_world.forge.headers(local_world.site)
    with faulty_walk(local_world.triggers, after=2):
        failed = uninstall(local_world, headers=headers)
    assert failed["statusCode"] >= 500
    assert partition(local_world, "TokensTable") == {}  # the tokens went first
    left = results_left(local_world)
    assert 0 < left < 4 * PAGE_SIZE + 3  # some pages were done, not all
    registry = partition(local_world, "AppTable")["INSTALLATION"]
    assert registry["status"]["S"] == "uninstalled"
    assert registry["activePk"]["S"] == "CLEANUP"
    assert "cleanupCursor" in registry
    # Forge retries the same call: the FIT may act again, and the walk goes on from its cursor.
    retried = uninstall(local_world, headers=headers)
    assert retried["statusCode"] == 200, retried
    assert body_of(retried)["cleanup"] == "complete"
    assert body_of(retried)["itemsDeleted"] == left
    assert results_left(local_world) == 0
    assert "activePk" not in partition(local_world, "AppTable")["INSTALLATION"]


class RunningOutContext(LocalLambdaContext):
    """A Lambda context with plenty of time for the first ``calls`` looks, then almost none."""

    def __init__(self, calls: int) -> None:
        super().__init__(timeout_s=6)
        self.calls = calls

    def get_remaining_time_in_millis(self) -> int:
        self.calls -= 1
        return 5000 if self.calls >= 0 else 900


def call_uninstall(module: Any, headers: dict[str, str], context: LocalLambdaContext) -> dict[str, Any]:
    response: dict[str, Any] = module.lambda_handler(
        http_api_event("POST", "/forge/uninstall", headers=headers, body={}), context
    )
    return response


def test_a_cleanup_out_of_time_answers_503_and_resumes_on_retry_or_in_the_sweep(local_world: LocalWorld) -> None:
    local_world.install()
    seed_results(local_world, 3 * PAGE_SIZE)
    headers = local_world.forge.headers(local_world.site)
    first = call_uninstall(local_world.triggers, headers, RunningOutContext(calls=1))
    assert first["statusCode"] == 503, first
    assert body_of(first)["cleanup"] == "incomplete"
    after_first = results_left(local_world)
    assert 2 * PAGE_SIZE - 2 <= after_first < 3 * PAGE_SIZE  # one page done (it held the registry and FIT items too)
    second = call_uninstall(local_world.triggers, headers, RunningOutContext(calls=1))
    assert second["statusCode"] == 503  # Forge's retry: one more page, from where the first one stopped
    assert results_left(local_world) == after_first - PAGE_SIZE
    # Forge gave up: the hourly sweep finishes it.
    scheduler = local_world.load("JobSchedulerFunction")
    swept = scheduler.lambda_handler({"task": "cleanup-sweep"}, LocalLambdaContext(timeout_s=300))
    assert swept == {"task": "cleanup-sweep", "finished": 1, "pending": 0}
    assert results_left(local_world) == 0
    assert "activePk" not in partition(local_world, "AppTable")["INSTALLATION"]
    again = scheduler.lambda_handler({"task": "cleanup-sweep"}, LocalLambdaContext(timeout_s=300))
    assert again == {"task": "cleanup-sweep", "finished": 0, "pending": 0}


def test_cleanup_is_idempotent_and_keeps_the_first_uninstall_time(local_world: LocalWorld) -> None:
    workload(local_world)
    gateway = triggers_with_retention(local_world, 30)
    assert uninstall(local_world, gateway)["statusCode"] == 200
    first = partition(local_world, "AppTable")
    clock.advance(3600)
    try:
        again = uninstall(local_world, gateway)  # a later preUninstall (another FIT) for the same installation
    finally:
        clock.reset()
    assert again["statusCode"] == 200
    assert body_of(again)["itemsExpiring"] == 0  # every item already expires by then
    second = partition(local_world, "AppTable")
    assert second["INSTALLATION"]["uninstalledAt"] == first["INSTALLATION"]["uninstalledAt"]
    assert {sk: i.get("ttl") for sk, i in second.items() if not sk.startswith("FIT#")} == {
        sk: i.get("ttl") for sk, i in first.items() if not sk.startswith("FIT#")
    }


def test_no_token_reaches_a_log_or_an_answer_of_the_lifecycle(
    local_world: LocalWorld, all_logs: Callable[[], str]
) -> None:
    token = workload(local_world)
    response = uninstall(local_world)
    logs = all_logs()
    for secret in (token, token.split(".")[2]):
        assert secret not in logs
        assert secret not in json.dumps(response)
