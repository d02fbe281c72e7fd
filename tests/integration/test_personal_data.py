"""Personal data reporting end to end: the ``personal-data-report`` job in the real worker's runner
(moto tables, the Confluence emulator serving ``POST /app/report-accounts/``).

What is proved: every account id the installation holds is found (token sort keys, item attributes,
JSON records) and reported 90 at a time, in cycle order, with an ISO ``updatedAt``; 200 and 204 answers are both
handled; a ``closed`` account is erased everywhere (its tokens, records keyed by it, every mention in
other records, with the records keeping their shape) and other accounts are untouched; an ``updated``
account keeps its id but loses its cached profile; a 429 defers the job by at least its
``Retry-After`` and erases nothing; a malformed or ambiguous answer erases nothing and dead-letters the
job; a deferred run does not report answered batches again; no token is logged.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import boto3
import pytest

from forge_remote import clock
from forge_remote.jobs.contract import JobRequest
from forge_remote.jobs.runner import JobStatus, Outcome
from forge_remote.lifecycle.privacy import (
    FORMER_USER,
    UNKNOWN_ACCOUNT,
    MalformedReportAnswer,
    PersonalDataReporter,
    ReportedAccount,
    in_cycle_order,
    parse_answer,
)
from forge_remote.storage.results import ResultStore
from forge_remote.storage.table_keys import installation_pk, offline_token_sk, user_token_sk
from forge_remote.tokens.store import TokenStore
from tests.support import LocalWorld

ALICE = "557058:alice-0f6d1c5e"
BOB = "557058:bob-7a2e9c41"
REPORT_JOB = "personal-data-report"


def numbered(i: int) -> str:
    return f"557058:acct-{i:04d}"


def app_items(world: LocalWorld) -> list[dict[str, Any]]:
    return boto3.client("dynamodb").query(
        TableName=world.stack.physical["AppTable"],
        KeyConditionExpression="pk = :pk",
        ExpressionAttributeValues={":pk": {"S": installation_pk(world.site.installation_id)}},
        ConsistentRead=True,
    )["Items"]


def token_sks(world: LocalWorld) -> set[str]:
    items = boto3.client("dynamodb").query(
        TableName=world.stack.physical["TokensTable"],
        KeyConditionExpression="pk = :pk",
        ExpressionAttributeValues={":pk": {"S": installation_pk(world.site.installation_id)}},
    )["Items"]
    return {i["sk"]["S"] for i in items}


def results(world: LocalWorld) -> ResultStore:
    return ResultStore(boto3.client("dynamodb"), world.stack.physical["AppTable"])


def seed_people(world: LocalWorld) -> str:
    """Alice and Bob, in every place the backend keeps account ids. Returns the app token."""
    token = world.install()
    client = boto3.client("dynamodb")
    tokens = TokenStore(client, world.stack.physical["TokensTable"])
    installation = world.site.installation_id
    for person in (ALICE, BOB):
        tokens.put_if_newer(installation, world.forge.app_token(subject=person), account_id=person)
        tokens.put_if_newer(
            installation, world.forge.app_token(subject=person), sk=offline_token_sk(person), delivered_by="test"
        )
    store = results(world)
    for person, name in ((ALICE, "Alice Example"), (BOB, "Bob Example")):
        store.put(installation, "USER_DIGEST", person, {"accountId": person, "count": 1, "pages": [{"id": "1"}]})
        store.put(
            installation,
            "SNAPSHOT",
            f"{person[-4:]}#v1",
            {
                "pageId": "7",
                "title": "Release notes",
                "by": {
                    "type": "known",
                    "accountId": person,
                    "displayName": name,
                    "publicName": name,
                    "email": f"{name.split()[0].lower()}@example.com",
                    "profilePicture": {"path": "/wiki/aa-avatar/1.png", "width": 48},
                },
                "note": f"last edited by {person}",
            },
        )
    # Items other modules write under the partition (a parked job and a job's last summary): found
    # and erased without this code knowing their kinds.
    now = str(int(clock.now()))
    ttl = str(int(clock.now()) + 86400)
    client.put_item(
        TableName=world.stack.physical["AppTable"],
        Item={
            "pk": {"S": installation_pk(installation)},
            "sk": {"S": "PARKED#req-1"},
            "job": {"S": "user-digest"},
            "requestedBy": {"S": ALICE},
            "createdAt": {"N": now},
            "ttl": {"N": ttl},
        },
    )
    client.put_item(
        TableName=world.stack.physical["AppTable"],
        Item={
            "pk": {"S": installation_pk(installation)},
            "sk": {"S": "LASTRUN#user-digest"},
            "summary": {"S": json.dumps({"pages": 3, "requestedBy": ALICE})},
            "updatedAt": {"N": now},
            "ttl": {"N": ttl},
        },
    )
    return token


def run_report(world: LocalWorld, request: JobRequest | None = None) -> Outcome:
    """One run of the job through the worker's own runner (token lease, deferral and all)."""
    request = request or JobRequest(job=REPORT_JOB, installation_id=world.site.installation_id)
    outcome: Outcome = world.worker.runner.run(request, receive_count=1, remaining_ms=lambda: 100_000)
    return outcome


def test_held_accounts_are_reported_with_their_update_time(local_world: LocalWorld) -> None:
    seed_people(local_world)
    outcome = run_report(local_world)
    assert outcome.status == JobStatus.DONE, outcome
    (reported,) = local_world.confluence.reports_seen
    assert sorted(a["accountId"] for a in reported) == [ALICE, BOB]
    for account in reported:
        assert account["updatedAt"].endswith("Z")
        assert abs(clock.now() - _epoch(account["updatedAt"])) < 120
    assert outcome.summary == {"accounts": 2, "reports": 1, "closed": 0, "updated": 0, "erasedItems": 0}


def _epoch(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def test_a_closed_account_is_erased_everywhere_and_nobody_else_is_touched(local_world: LocalWorld) -> None:
    seed_people(local_world)
    before = {i["sk"]["S"]: i for i in app_items(local_world)}
    local_world.confluence.close_account(ALICE)
    outcome = run_report(local_world)
    assert outcome.status == JobStatus.DONE, outcome
    assert outcome.summary["closed"] == 1

    # Her tokens are gone, Bob's are not.
    sks = token_sks(local_world)
    assert user_token_sk(ALICE) not in sks
    assert offline_token_sk(ALICE) not in sks
    assert {user_token_sk(BOB), offline_token_sk(BOB), "SYSTEM"} <= sks
    # Nothing stored mentions her any more, in any attribute.
    items = app_items(local_world)
    assert ALICE not in json.dumps(items)
    assert "Alice" not in json.dumps(items)
    assert "alice@" not in json.dumps(items)
    # Her per-user record is gone; Bob's is still there.
    store = results(local_world)
    assert store.get(local_world.site.installation_id, "USER_DIGEST", ALICE) is None
    assert store.get(local_world.site.installation_id, "USER_DIGEST", BOB) is not None
    # Records mentioning her keep their shape, with neutral placeholders.
    snapshot = store.get(local_world.site.installation_id, "SNAPSHOT", f"{ALICE[-4:]}#v1")
    assert snapshot is not None
    assert snapshot["by"] == {
        "type": "known",
        "accountId": UNKNOWN_ACCOUNT,
        "displayName": FORMER_USER,
        "publicName": FORMER_USER,
        "email": "",
        "profilePicture": None,
    }
    assert snapshot["note"] == f"last edited by {UNKNOWN_ACCOUNT}"
    assert snapshot["title"] == "Release notes"
    after = {i["sk"]["S"]: i for i in app_items(local_world)}
    assert after["PARKED#req-1"]["requestedBy"]["S"] == UNKNOWN_ACCOUNT
    assert json.loads(after["LASTRUN#user-digest"]["summary"]["S"]) == {"pages": 3, "requestedBy": UNKNOWN_ACCOUNT}
    # Bob's items are byte for byte what they were.
    for sk, item in before.items():
        if ALICE not in json.dumps(item) and sk != "PRIVACY#REPORT":
            assert after[sk] == item, sk
    # The next report no longer names her.
    local_world.confluence.reports_seen.clear()
    run_report(local_world)
    assert [a["accountId"] for a in local_world.confluence.reports_seen[0]] == [BOB]


def test_an_updated_account_keeps_its_id_and_loses_its_cached_profile(local_world: LocalWorld) -> None:
    seed_people(local_world)
    local_world.confluence.update_account(BOB)
    outcome = run_report(local_world)
    assert outcome.status == JobStatus.DONE, outcome
    assert outcome.summary["updated"] == 1
    snapshot = results(local_world).get(local_world.site.installation_id, "SNAPSHOT", f"{BOB[-4:]}#v1")
    assert snapshot is not None
    assert snapshot["by"]["accountId"] == BOB
    assert {k: snapshot["by"][k] for k in ("displayName", "publicName", "email", "profilePicture")} == dict.fromkeys(
        ("displayName", "publicName", "email", "profilePicture")
    )
    assert user_token_sk(BOB) in token_sks(local_world)  # nothing else is erased for an update
    alice = results(local_world).get(local_world.site.installation_id, "SNAPSHOT", f"{ALICE[-4:]}#v1")
    assert alice is not None
    assert alice["by"]["displayName"] == "Alice Example"


def seed_many(world: LocalWorld, count: int) -> None:
    world.install()
    store = results(world)
    for i in range(count):
        store.put(world.site.installation_id, "SNAPSHOT", f"{i}#v1", {"pageId": str(i), "requestedBy": numbered(i)})


def cycle_positions(count: int) -> list[int]:
    """``numbered`` indexes in the order a report cycle sends them (by the digest of the id)."""
    order = in_cycle_order(ReportedAccount(numbered(i), 0) for i in range(count))
    return [int(a.account_id.rsplit("-", 1)[1]) for a in order]


def test_accounts_are_reported_ninety_at_a_time_with_200_and_204_answers(local_world: LocalWorld) -> None:
    seed_many(local_world, 200)
    order = cycle_positions(200)
    closed, updated, untouched = order[5], order[185], order[6]
    local_world.confluence.close_account(numbered(closed))  # in the first batch: 200
    local_world.confluence.update_account(numbered(updated))  # in the third: 200; the second has nothing: 204
    outcome = run_report(local_world)
    assert outcome.status == JobStatus.DONE, outcome
    sizes = [len(report) for report in local_world.confluence.reports_seen]
    assert sizes == [90, 90, 20]
    assert local_world.confluence.report_statuses == [200, 204, 200]
    reported = [a["accountId"] for report in local_world.confluence.reports_seen for a in report]
    assert reported == [numbered(i) for i in order]  # each once, in cycle order
    assert outcome.summary == {"accounts": 200, "reports": 3, "closed": 1, "updated": 1, "erasedItems": 1}
    store = results(local_world)
    assert store.get(local_world.site.installation_id, "SNAPSHOT", f"{closed}#v1") == {
        "pageId": str(closed),
        "requestedBy": "unknown",
    }
    assert store.get(local_world.site.installation_id, "SNAPSHOT", f"{untouched}#v1") == {
        "pageId": str(untouched),
        "requestedBy": numbered(untouched),
    }


def test_rate_limited_report_defers_by_retry_after_erases_nothing_and_resumes_after_answered_batches(
    local_world: LocalWorld,
) -> None:
    seed_many(local_world, 100)
    order = cycle_positions(100)
    first, second = order[1], order[95]  # in the first batch (answered 204 by script), in the second
    local_world.confluence.close_account(numbered(first))
    local_world.confluence.close_account(numbered(second))
    local_world.confluence.script_report(204)  # batch 1 answered (nothing to do)
    local_world.confluence.script_report(429, {"code": 429, "message": "Rate limit exceeded"}, retry_after="600")
    request = JobRequest(job=REPORT_JOB, installation_id=local_world.site.installation_id)
    before = app_items(local_world)
    outcome = run_report(local_world, request)
    assert outcome.status == JobStatus.DEFERRED, outcome
    assert "429" in outcome.reason
    assert 540 <= outcome.delay_s <= 660  # Retry-After 600, jittered ±10%: not the first minute's back-off
    after = [i for i in app_items(local_world) if i["sk"]["S"] != "PRIVACY#REPORT"]
    assert after == [i for i in before if i["sk"]["S"] != "PRIVACY#REPORT"]  # nothing erased
    # The deferred message comes back with the same request: batch 1 is not reported again.
    local_world.confluence.reports_seen.clear()
    outcome = run_report(local_world, request)
    assert outcome.status == JobStatus.DONE, outcome
    assert [[a["accountId"] for a in r] for r in local_world.confluence.reports_seen] == [
        [numbered(i) for i in order[90:]]
    ]
    store = results(local_world)
    assert store.get(local_world.site.installation_id, "SNAPSHOT", f"{second}#v1") == {
        "pageId": str(second),
        "requestedBy": "unknown",
    }
    # The account in the batch answered 204 by script: it waits for the next weekly run.
    assert store.get(local_world.site.installation_id, "SNAPSHOT", f"{first}#v1") == {
        "pageId": str(first),
        "requestedBy": numbered(first),
    }


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (200, "not json"),
        (200, {"accounts": "closed"}),
        (200, {"accounts": [{"accountId": ALICE, "status": "deleted"}]}),
        (200, {"accounts": [{"accountId": "557058:somebody-else", "status": "closed"}]}),
        (200, {"accounts": [{"accountId": ALICE, "status": "closed"}, {"accountId": ALICE, "status": "updated"}]}),
        (200, {"results": []}),
    ],
    ids=["not JSON", "accounts not a list", "unknown status", "account not reported", "account twice", "no accounts"],
)
def test_nothing_is_erased_on_a_malformed_or_ambiguous_answer(local_world: LocalWorld, status: int, body: Any) -> None:
    seed_people(local_world)
    before_items, before_tokens = app_items(local_world), token_sks(local_world)
    local_world.confluence.script_report(status, body)
    outcome = run_report(local_world)
    assert outcome.status == JobStatus.DEAD, outcome
    assert "nothing erased" in outcome.reason
    assert app_items(local_world) == before_items
    assert token_sks(local_world) == before_tokens


def test_report_requests_carry_the_app_token_only_to_the_api_host_and_no_token_is_logged(
    local_world: LocalWorld, all_logs: Callable[[], str]
) -> None:
    app_token = seed_people(local_world)
    local_world.confluence.close_account(ALICE)
    assert run_report(local_world).status == JobStatus.DONE
    (seen,) = [s for s in local_world.confluence.requests_seen if s[1].startswith("/app/report-accounts")]
    assert seen[0] == "POST"
    assert seen[1] == "/app/report-accounts/"
    assert seen[3] == app_token
    logs = all_logs()
    assert app_token not in logs
    assert app_token.split(".")[2][:20] not in logs


def test_parse_answer_and_the_reporter_refuse_what_they_cannot_act_on() -> None:
    assert parse_answer({"accounts": []}, {ALICE}) == {}
    assert parse_answer({"accounts": [{"accountId": ALICE, "status": "closed"}]}, {ALICE}) == {ALICE: "closed"}
    with pytest.raises(MalformedReportAnswer):
        parse_answer([], {ALICE})
    reporter = PersonalDataReporter(
        "https://api.atlassian.com/ex/confluence/abc", lambda: "t", allowed_hosts=["api.atlassian.com"]
    )
    assert reporter.url == "https://api.atlassian.com/app/report-accounts/"
    with pytest.raises(ValueError, match="90"):
        reporter.report([ReportedAccount(numbered(i), 0) for i in range(91)])
    assert reporter.request_count == 0
