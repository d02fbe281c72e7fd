"""Personal data reports and retention: resumes, erasure and uninstall, each failure class with variants.

1. A report resumed after a 429, an outage or the time budget sends every account held when the cycle
   started exactly once, however many accounts earlier batches erased (progress is a key, not a
   position), whatever the ids look like (``557058:``, ``qm:``, legacy hex, one id a prefix of
   another); an account stored mid-cycle is reported at most once in it, and in the next cycle; the
   cycle is marked done only at its end, and two runs of one cycle cannot both move it.
2. An error body that quotes the account ids it was sent leaves none of them in what leaves the job:
   DLQ reason, ``DEAD#`` item, the status page other users read, log lines. The session's leak scan
   (``ledger.py``) knows every account id created here as another user's.
3. An uninstall with a retention period keeps no personal data: items keyed by an account go at
   once, items that name one are rewritten without it, the rest is kept until the retention ends.
4. The eraser never overwrites a newer write (or a ``ttl`` set meanwhile): it rewrites only what it
   changes, on condition, re-reading when it lost a race; it stops when its time runs low, and the
   report resumes the erasure, not the report.
Every case is counted in the reliability summary (``ledger.tried`` / ``ledger.refused``).
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import quote

import pytest

from forge_remote import aws
from forge_remote.jobs.contract import JobRequest
from forge_remote.jobs.runner import JobStatus, Outcome
from forge_remote.lifecycle.privacy import PersonalDataEraser
from forge_remote.storage.results import ResultStore
from forge_remote.storage.table_keys import PRIVACY_REPORT_SK, installation_pk, offline_token_sk, user_token_sk
from forge_remote.tokens.store import TokenStore
from local.apigw import http_api_event
from local.lambda_context import LocalLambdaContext
from tests.reliability.harness import dump_outputs, queue_messages
from tests.reliability.ledger import Ledger, account_label
from tests.support import Gateway, LocalWorld, body_of

pytestmark = pytest.mark.reliability

REPORT_JOB = "personal-data-report"
ADMIN = "557058:9f0e1d2c-admin-0000-4000-8000-000000000a11"  # reads the status page: not a person reported
FULL_MS = 100_000
_ID = "A-Za-z0-9:_-"


# -- people ------------------------------------------------------------------------------------------
def person(i: int, *, salt: int = 0) -> str:
    """The ``i``-th made-up account: every shape Atlassian uses, and ids that are prefixes of others."""
    u, v = (uuid.UUID(bytes=hashlib.sha256(f"{salt}/{i}/{part}".encode()).digest()[:16]) for part in "uv")
    match i % 6:
        case 0:
            return f"557058:{u}"
        case 1:
            return f"qm:{u}:{v}"
        case 2:
            return u.hex[:24]  # a legacy id
        case 3:
            return f"557058:{u.hex[:10]}"
        case 4:
            return f"{person(i - 1, salt=salt)}-{v.hex[:4]}"  # the id before it is a prefix of this one
        case _:
            return f"557058:Z_{u.hex[:6].upper()}-{v.hex[:3]}"  # upper case and "_": they sort apart


def people(ledger: Ledger, count: int, *, salt: int = 0) -> list[str]:
    found = [ledger.account(person(i, salt=salt)) for i in range(count)]
    assert len(set(found)) == count
    return found


def names(text: str, account: str) -> bool:
    """Does ``text`` mention this account as a whole id (not as the start of a longer one)?"""
    return re.search(f"(?<![{_ID}]){re.escape(account)}(?![{_ID}])", text) is not None


def app_items(world: LocalWorld) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    query: dict[str, Any] = {
        "TableName": world.stack.physical["AppTable"],
        "KeyConditionExpression": "pk = :pk",
        "ExpressionAttributeValues": {":pk": {"S": installation_pk(world.site.installation_id)}},
        "ConsistentRead": True,
    }
    while True:
        page = aws.dynamodb().query(**query)
        items.extend(page["Items"])
        if "LastEvaluatedKey" not in page:
            return items
        query["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def token_sks(world: LocalWorld) -> set[str]:
    items = aws.dynamodb().query(
        TableName=world.stack.physical["TokensTable"],
        KeyConditionExpression="pk = :pk",
        ExpressionAttributeValues={":pk": {"S": installation_pk(world.site.installation_id)}},
        ConsistentRead=True,
    )["Items"]
    return {i["sk"]["S"] for i in items}


def progress_item(world: LocalWorld) -> dict[str, Any]:
    item: dict[str, Any] = (
        aws.dynamodb()
        .get_item(
            TableName=world.stack.physical["AppTable"],
            Key={"pk": {"S": installation_pk(world.site.installation_id)}, "sk": {"S": PRIVACY_REPORT_SK}},
            ConsistentRead=True,
        )
        .get("Item", {})
    )
    return item


def results(world: LocalWorld) -> ResultStore:
    # The functions' own client: like them, it keeps botocore's wire logs (whole items) off.
    return ResultStore(aws.dynamodb(), world.stack.physical["AppTable"])


def seed(world: LocalWorld, ledger: Ledger, accounts: Iterable[str], *, tokens_every: int = 4) -> None:
    """Each account named by a snapshot; every ``tokens_every``-th also holds a UI user token."""
    store = results(world)
    tokens = TokenStore(aws.dynamodb(), world.stack.physical["TokensTable"])
    for n, account in enumerate(accounts):
        key = hashlib.sha256(account.encode()).hexdigest()[:16]  # unique, and naming nobody
        store.put(world.site.installation_id, "SNAPSHOT", f"{key}#v1", {"requestedBy": account})
        if n % tokens_every == 0:
            token = ledger.secret(world.forge.app_token(subject=account))
            tokens.put_if_newer(world.site.installation_id, token, account_id=account)


def install(world: LocalWorld, ledger: Ledger) -> None:
    ledger.secret(world.install())


def report_request(world: LocalWorld) -> JobRequest:
    return JobRequest(job=REPORT_JOB, installation_id=world.site.installation_id)


def run_report(world: LocalWorld, request: JobRequest, remaining_ms: Callable[[], int] = lambda: FULL_MS) -> Outcome:
    """One run of the job through the worker's own runner (token lease, deferral and all)."""
    outcome: Outcome = world.worker.runner.run(request, receive_count=1, remaining_ms=remaining_ms)
    return outcome


class Budget:
    """The job's remaining time: plenty until ``after_reports`` reports were answered, then plenty for
    ``grace`` more looks, then ``low`` (the eraser looks once per item)."""

    def __init__(self, world: LocalWorld, *, after_reports: int, grace: int = 0, low: int = 1_500) -> None:
        self._statuses, self._after, self.grace, self._low = world.confluence.report_statuses, after_reports, grace, low

    def __call__(self) -> int:
        if len(self._statuses) < self._after:
            return FULL_MS
        self.grace -= 1
        return FULL_MS if self.grace >= 0 else self._low


def answered(world: LocalWorld, since: int = 0) -> list[str]:
    """Every account of every report the API answered (200 or 204), in order, from report ``since``."""
    confluence = world.confluence
    return [
        account["accountId"]
        for report, status in list(zip(confluence.reports_seen, confluence.report_statuses, strict=True))[since:]
        if status in (200, 204)
        for account in report
    ]


def assert_erased(world: LocalWorld, accounts: Iterable[str]) -> None:
    """No token of these accounts is left, and no app-table item names one of them."""
    text = json.dumps(app_items(world))
    sks = token_sks(world)
    for account in accounts:
        assert user_token_sk(account) not in sks, account_label(account)
        assert not names(text, account), account_label(account)


# -- 1. every account exactly once per cycle ---------------------------------------------------------
@dataclass
class Cycle:
    """How a cycle's first run is interrupted, and what Atlassian says about whom."""

    interrupt: str  # "429", "503", "500" (an outage), "time" (the job's time budget)
    at_report: int = 1  # the report (from 0) the interruption hits
    close_in_first: int = 10  # accounts of the first report that Atlassian says are closed
    held: int = 180


INTERRUPTIONS = [
    pytest.param(Cycle("429"), id="429-after-10-closed"),
    pytest.param(Cycle("503"), id="503-after-10-closed"),
    pytest.param(Cycle("500"), id="outage-after-10-closed"),
    pytest.param(Cycle("time"), id="time-budget-after-10-closed"),
    pytest.param(Cycle("429", close_in_first=90), id="429-after-a-whole-batch-closed"),
    pytest.param(Cycle("time", close_in_first=1), id="time-budget-after-1-closed"),
    pytest.param(Cycle("503", at_report=2, close_in_first=45, held=250), id="503-at-the-third-report"),
    pytest.param(Cycle("time", at_report=2, close_in_first=89, held=250), id="time-budget-at-the-third-report"),
]


def play(
    world: LocalWorld,
    cycle: Cycle,
    request: JobRequest,
    *,
    closed_up_front: Iterable[str] = (),
    between: Callable[[], None] = lambda: None,
) -> None:
    """The cycle's first run, interrupted as ``cycle`` says, then runs of the same request until done."""
    confluence = world.confluence
    for account in closed_up_front:
        confluence.close_account(account)
    interrupted: list[int] = []

    def hook(number: int, accounts: list[str]) -> None:
        if number == 0:
            for account in accounts[: cycle.close_in_first]:
                confluence.close_account(account)
        if number == cycle.at_report and cycle.interrupt in ("429", "503", "500") and not interrupted:
            interrupted.append(number)
            body = {"code": int(cycle.interrupt), "message": "try later"}
            confluence.script_report(int(cycle.interrupt), body, retry_after="30")

    confluence.before_report = hook

    def first_budget() -> int:
        # The time variant: plenty until the interrupted report is due, then too little for another.
        return 5_000 if cycle.interrupt == "time" and len(confluence.report_statuses) >= cycle.at_report else FULL_MS

    first = run_report(world, request, first_budget)
    assert first.status == JobStatus.DEFERRED, first
    assert cycle_state(world) != "done"  # never done with accounts left
    between()
    for _ in range(4):
        outcome = run_report(world, request)
        if outcome.status == JobStatus.DONE:
            break
        assert outcome.status == JobStatus.DEFERRED, outcome
    assert outcome.status == JobStatus.DONE, outcome


def cycle_state(world: LocalWorld) -> str | None:
    state: str | None = progress_item(world).get("state", {}).get("S")
    return state


@pytest.mark.parametrize("cycle", INTERRUPTIONS)
def test_a_resumed_report_sends_every_account_held_at_its_start_exactly_once(
    local_world: LocalWorld, ledger: Ledger, cycle: Cycle
) -> None:
    """The incident: 180 accounts, closed ones erased by the first batch, then a resume."""
    ledger.tried += 1
    install(local_world, ledger)
    held = people(ledger, cycle.held)
    seed(local_world, ledger, held)
    closed_up_front = set(held[::11])  # closed at Atlassian whichever batch they fall in
    play(local_world, cycle, report_request(local_world), closed_up_front=closed_up_front)

    counts = Counter(answered(local_world))
    assert set(counts) == set(held)  # nobody skipped ...
    assert [a for a, n in counts.items() if n > 1] == []  # ... and nobody reported twice
    closed = set(local_world.confluence.account_statuses)
    assert closed >= closed_up_front
    assert_erased(local_world, closed)  # every closed account's token and mentions are gone
    text = json.dumps(app_items(local_world))
    for account in set(held) - closed:  # and nobody else was touched
        assert names(text, account), account_label(account)
    assert cycle_state(local_world) == "done"  # marked done at the end, and only then


def test_accounts_stored_mid_cycle_are_reported_at_most_once_in_it_and_in_the_next_cycle(
    local_world: LocalWorld, ledger: Ledger
) -> None:
    ledger.tried += 2
    install(local_world, ledger)
    held = people(ledger, 150)
    seed(local_world, ledger, held)
    late = people(ledger, 60, salt=1)
    play(
        local_world,
        Cycle("429", close_in_first=20),
        report_request(local_world),
        between=lambda: seed(local_world, ledger, late, tokens_every=1000),
    )
    this_cycle = Counter(answered(local_world))
    closed = set(local_world.confluence.account_statuses)
    assert {a for a in held if this_cycle[a] != 1} == set()
    assert {a for a in late if this_cycle[a] > 1} == set()  # in this cycle if after the resume point, else next
    # The next cycle (next week's request) reports everyone still held, exactly once each.
    since = len(local_world.confluence.reports_seen)
    next_request = report_request(local_world)
    assert run_report(local_world, next_request).status == JobStatus.DONE
    assert Counter(answered(local_world, since)) == Counter((set(held) | set(late)) - closed)


def test_closing_an_id_never_touches_an_id_it_is_the_prefix_of(local_world: LocalWorld, ledger: Ledger) -> None:
    """``557058:x`` closed: ``557058:x-1``'s digest, token and mentions stay; a legacy id and a ``qm:``
    id closed beside them are erased like the rest."""
    install(local_world, ledger)
    held = people(ledger, 12)  # ids 3 and 4, 9 and 10 are prefix pairs
    prefix_pairs = [(held[3], held[4]), (held[9], held[10])]
    ledger.refused(len(prefix_pairs))
    assert all(longer.startswith(shorter) for shorter, longer in prefix_pairs)
    seed(local_world, ledger, held, tokens_every=1)
    store = results(local_world)
    for account in held:
        store.put(local_world.site.installation_id, "USER_DIGEST", account, {"accountId": account, "pages": []})
    store.put(
        local_world.site.installation_id,
        "SNAPSHOT",
        "mentions#v1",
        {"note": " ".join(f"by {a};" for a in held), "people": [{"accountId": a, "displayName": a} for a in held]},
    )
    shorter = {s for s, _ in prefix_pairs}
    for account in shorter | {held[0], held[1], held[2]}:
        local_world.confluence.close_account(account)
    assert run_report(local_world, report_request(local_world)).status == JobStatus.DONE
    closed = set(local_world.confluence.account_statuses)
    assert_erased(local_world, closed)
    digests = {r["accountId"] for r in local_world.results("USER_DIGEST")}
    assert digests == set(held) - closed
    mentions = store.get(local_world.site.installation_id, "SNAPSHOT", "mentions#v1")
    assert mentions is not None
    for account in set(held) - closed:
        assert names(mentions["note"], account)
        assert {"accountId": account, "displayName": account} in mentions["people"]
        assert user_token_sk(account) in token_sks(local_world)
    assert Counter(answered(local_world)) == Counter(held)


def test_two_runs_of_one_cycle_cannot_both_move_its_progress(local_world: LocalWorld, ledger: Ledger) -> None:
    """Another run of the same request moves the progress between this run's read and its write: this
    run stops (deferred) instead of overwriting it, and the cycle still reports everyone once."""
    ledger.refused()
    install(local_world, ledger)
    held = people(ledger, 200, salt=2)
    seed(local_world, ledger, held)
    request = report_request(local_world)
    table = local_world.stack.physical["AppTable"]
    key = {"pk": {"S": installation_pk(local_world.site.installation_id)}, "sk": {"S": PRIVACY_REPORT_SK}}

    def other_run(number: int, _: list[str]) -> None:
        if number == 1:  # the progress of report 0 is stored: another run bumps its version
            aws.dynamodb().update_item(
                TableName=table,
                Key=key,
                UpdateExpression="SET version = if_not_exists(version, :zero) + :one",
                ExpressionAttributeValues={":zero": {"N": "0"}, ":one": {"N": "1"}},
            )

    local_world.confluence.before_report = other_run
    first = run_report(local_world, request)
    assert first.status == JobStatus.DEFERRED, first
    assert "another run" in first.reason
    local_world.confluence.before_report = None
    assert run_report(local_world, request).status == JobStatus.DONE
    counts = Counter(answered(local_world))
    assert set(counts) == set(held)
    # Only the batch whose answer could not be recorded is sent again; it erased nothing.
    assert sorted(n for n in counts.values() if n > 1) == [2] * 90
    assert len(counts) == 200


# -- 2. account ids echoed into reasons ---------------------------------------------------------------
def _echo_json(ids: list[str]) -> str:
    return json.dumps({"code": 400, "message": f"unknown accountIds: {', '.join(ids)}"})


def _echo_v2(ids: list[str]) -> str:
    detail = "; ".join(f"accountId {a} is not a user of this site" for a in ids)
    return json.dumps({"errors": [{"status": 403, "code": "FORBIDDEN", "title": "Forbidden", "detail": detail}]})


def _echo_html(ids: list[str]) -> str:
    return "<html><body><h1>400 Bad Request</h1><p>" + "<br>".join(ids) + "</p></body></html>"


def _echo_encoded(ids: list[str]) -> str:
    """Plain text (not JSON, so nothing decodes it first): percent-encoded and HTML-escaped ids."""
    return "bad: " + " ".join(quote(a, safe="") for a in ids) + " | " + " ".join(html_escaped(a) for a in ids)


def html_escaped(account: str) -> str:
    return account.replace(":", "&#58;")


def _echo_at_the_cut(ids: list[str]) -> str:
    return json.dumps({"code": 400, "message": "x" * 287 + " " + " ".join(ids)})  # an id across the 300 cut


def _echo_everyone(ids: list[str], everyone: list[str]) -> str:
    return json.dumps({"code": 400, "message": "known: " + " ".join(everyone)})  # ids of other batches too


ECHOES: list[Any] = [
    pytest.param(400, _echo_json, id="400-json-message"),
    pytest.param(403, _echo_v2, id="403-v2-errors"),
    pytest.param(400, _echo_html, id="400-html"),
    pytest.param(400, _echo_encoded, id="400-percent-and-html-escaped"),
    pytest.param(400, _echo_at_the_cut, id="400-id-across-the-length-cut"),
    pytest.param(400, _echo_everyone, id="400-ids-of-every-batch"),
]


def status_page(world: LocalWorld, ledger: Ledger) -> dict[str, Any]:
    """``GET /api/status`` as another user of the site (an admin who is none of the people reported)."""
    forge = world.forge
    user_token = ledger.secret(forge.app_token(subject=ADMIN))
    response = world.send("GET", "/api/status", forge.headers(world.site, user_token=user_token, principal=ADMIN))
    assert response["statusCode"] == 200, response
    body: dict[str, Any] = body_of(response)
    return body


@pytest.mark.parametrize(("status", "echo"), ECHOES)
def test_account_ids_an_error_quotes_never_leave_the_job(
    local_world: LocalWorld, ledger: Ledger, status: int, echo: Callable[..., str]
) -> None:
    ledger.refused()
    install(local_world, ledger)
    held = people(ledger, 120, salt=3)
    seed(local_world, ledger, held)

    def hook(number: int, ids: list[str]) -> None:
        body = echo(ids, held) if echo is _echo_everyone else echo(ids)
        local_world.confluence.script_report(status, body)

    local_world.confluence.before_report = hook
    mark = ledger.mark()
    local_world.enqueue(report_request(local_world))
    local_world.run_worker()  # through the worker's record handler: DLQ, DEAD# item, logs

    [dead] = queue_messages(local_world.stack, "JobsDeadLetterQueue")
    reason = dead["attributes"]["reason"]["StringValue"]
    assert "personal data report refused" in reason, reason
    assert "redacted" in reason, reason
    [dead_item] = [i for i in app_items(local_world) if i["sk"]["S"].startswith("DEAD#")]
    page = json.dumps(status_page(local_world, ledger))
    assert "personal data report refused" in page
    for account in held:
        for text in (reason, json.dumps(dead_item), page):
            assert not names(text, account), account_label(account)
            for form in (quote(account, safe=""), html_escaped(account), account.partition(":")[2]):
                assert not form or form not in text, account_label(account)
    dump_outputs(local_world.stack)  # the DLQ and the app table as people read them, for the scan
    assert ledger.account_leaks(since=mark) == []


def test_an_outage_quoting_account_ids_defers_with_a_reason_and_log_lines_that_name_none(
    local_world: LocalWorld, ledger: Ledger
) -> None:
    ledger.refused()
    install(local_world, ledger)
    held = people(ledger, 40, salt=4)
    seed(local_world, ledger, held)
    local_world.confluence.script_report(502, {"code": 502, "message": "upstream failed for {accounts}"})
    mark = ledger.mark()
    local_world.enqueue(report_request(local_world))
    _, response = local_world.run_worker()
    assert len(response["batchItemFailures"]) == 1  # deferred, kept in the queue
    assert ledger.account_leaks(since=mark) == []
    logged = [text for where, text in ledger.outputs_since(mark) if where.endswith("(log)")]
    deferred = [text for text in logged if "job deferred" in text and "Confluence HTTP 502" in text]
    assert deferred
    assert all("[redacted]" in text for text in deferred)


def test_the_leak_scan_finds_another_users_id_where_it_must_not_be_and_nowhere_else() -> None:
    probe = Ledger()
    alice = probe.account("557058:0f6d1c5e-aaaa-4c2a-9e55-6a1f3d2b7c10")
    bob = probe.account("qm:8b2e7c41-bbbb-4d3b-9a6c-2e8f1b7d4a90:1c2d3e4f-5a6b-4c7d-8e9f-0a1b2c3d4e5f")
    carol = probe.account("5b10a2844c20165700ede21g")
    dave = probe.account("557058:dave01")
    # Legitimate: storage, job requests, the DLQ's body, a user's own id in their own answer, longer ids.
    probe.seen(json.dumps({"sk": {"S": f"USER_DIGEST#{alice}"}, "data": {"S": alice}}), "app table")
    probe.seen(json.dumps({"body": json.dumps({"requestedBy": bob}), "attributes": {}}), "JobsQueue")
    probe.seen(
        json.dumps({"body": json.dumps({"requestedBy": carol}), "attributes": {"reason": "x"}}), "JobsDeadLetterQueue"
    )
    probe.seen(json.dumps({"tokens": [{"subject": alice}]}), "response body", viewer=alice)
    probe.seen(f"{dave}9 and {dave}-2 are other people", "log")
    assert probe.leaks() == []
    # Leaks: a log line (even by the id's tail, or percent-encoded), a DLQ reason, a DEAD# item, a
    # response to someone else.
    probe.seen(f"reported {bob.partition(':')[2]}", "log")
    probe.seen(json.dumps({"body": "{}", "attributes": {"reason": f"refused {quote(carol)}"}}), "JobsDeadLetterQueue")
    probe.seen(json.dumps({"sk": {"S": "DEAD#2026#r"}, "reason": {"S": f"for {quote(dave, safe='')}"}}), "app table")
    probe.seen(json.dumps({"tokens": [{"subject": alice}]}), "response body", viewer=bob)
    assert {leak.secret_prefix for leak in probe.leaks()} == {account_label(a) for a in (alice, bob, carol, dave)}
    assert probe.account_leaks(since=probe.mark()) == []


# -- 3. retained personal data -------------------------------------------------------------------------
def triggers_with_retention(world: LocalWorld, days: int) -> Gateway:
    world.stack.parameters["DataRetentionDays"] = str(days)
    module = world.load("ForgeTriggersFunction")
    return Gateway(module, module)


def seed_everything_that_names_people(world: LocalWorld, ledger: Ledger, held: list[str]) -> None:
    """Every kind of item the jobs, the worker and the routes write that can name an account."""
    installation, table = world.site.installation_id, world.stack.physical["AppTable"]
    client, pk = aws.dynamodb(), {"S": installation_pk(world.site.installation_id)}
    tokens = TokenStore(client, world.stack.physical["TokensTable"])
    store = results(world)
    for n, account in enumerate(held):
        tokens.put_if_newer(installation, ledger.secret(world.forge.app_token(subject=account)), account_id=account)
        tokens.put_if_newer(
            installation,
            ledger.secret(world.forge.app_token(subject=account)),
            sk=offline_token_sk(account),
            delivered_by="test",
        )
        store.put(installation, "USER_DIGEST", account, {"accountId": account, "count": 1, "pages": [{"id": "1"}]})
        store.put(
            installation,
            "SNAPSHOT",
            f"{n}#v1",
            {"pageId": str(n), "by": {"accountId": account, "displayName": f"Person {n}", "email": f"p{n}@x.io"}},
        )
        client.put_item(
            TableName=table,
            Item={"pk": pk, "sk": {"S": f"PARKED#req-{n}"}, "job": {"S": "user-digest"}, "requestedBy": {"S": account}},
        )
    client.put_item(
        TableName=table,
        Item={"pk": pk, "sk": {"S": "LASTRUN#user-digest"}, "summary": {"S": json.dumps({"requestedBy": held[0]})}},
    )
    for n in range(30):  # data that names nobody: kept for the retention period
        store.put(installation, "DIGEST", f"2026-03-{n:02d}#ENG", {"spaceKey": "ENG", "count": n})


class RunningOut(LocalLambdaContext):
    """An uninstall call with time for ``pages`` pages of the walk, then none."""

    def __init__(self, pages: int) -> None:
        super().__init__(timeout_s=6)
        self.pages = pages

    def get_remaining_time_in_millis(self) -> int:
        self.pages -= 1
        return 5000 if self.pages >= 0 else 900


@pytest.mark.parametrize("cut", [None, 3], ids=["in-one-call", "cut-short-then-swept"])
def test_an_uninstall_with_retention_keeps_no_account_and_keeps_the_rest(
    local_world: LocalWorld, ledger: Ledger, cut: int | None
) -> None:
    ledger.tried += 1
    install(local_world, ledger)
    held = people(ledger, 24, salt=5)
    seed_everything_that_names_people(local_world, ledger, held)
    # What a report cut short mid-erasure leaves: its work list (account ids) in its progress item.
    aws.dynamodb().put_item(
        TableName=local_world.stack.physical["AppTable"],
        Item={
            "pk": {"S": installation_pk(local_world.site.installation_id)},
            "sk": {"S": PRIVACY_REPORT_SK},
            "requestId": {"S": "r-1"},
            "version": {"N": "3"},
            "state": {"S": "running"},
            "pendingClosed": {"SS": held[:2]},
        },
    )
    before = {i["sk"]["S"]: i for i in app_items(local_world)}
    gateway = triggers_with_retention(local_world, 30)
    headers = local_world.forge.headers(local_world.site)
    if cut is None:
        response = gateway("POST", "/forge/uninstall", headers, {})
        assert response["statusCode"] == 200, response
    else:
        event = http_api_event("POST", "/forge/uninstall", headers=ledger.headers(headers), body={})
        first = gateway.triggers.lambda_handler(event, RunningOut(pages=cut))
        assert first["statusCode"] == 503, first
        scheduler = local_world.load("JobSchedulerFunction")
        swept = scheduler.lambda_handler({"task": "cleanup-sweep"}, LocalLambdaContext(timeout_s=300))
        assert swept["finished"] == 1, swept
    assert token_sks(local_world) == set()
    left = {i["sk"]["S"]: i for i in app_items(local_world)}
    text = json.dumps(left)
    for account in held:
        assert not names(text, account), account_label(account)
    assert not any(sk.startswith("USER_DIGEST#") for sk in left)
    assert PRIVACY_REPORT_SK not in left
    retain_until = float(left["INSTALLATION"]["retainUntil"]["N"])
    kept = [sk for sk in before if sk.startswith(("DIGEST#", "SNAPSHOT#", "PARKED#", "LASTRUN#"))]
    for sk in kept:  # everything else is kept, for the retention period
        assert float(left[sk]["ttl"]["N"]) <= retain_until, sk
    for sk in (s for s in kept if s.startswith("DIGEST#")):  # naming nobody: kept as it was, but its ttl
        assert left[sk] == {**before[sk], "ttl": left["INSTALLATION"]["retainUntil"]}, sk
    snapshot = json.loads(left["SNAPSHOT#1#v1"]["data"]["S"])
    assert snapshot["by"] == {"accountId": "unknown", "displayName": "Former user", "email": ""}


# -- 4. the eraser: optimistic concurrency and a time budget -------------------------------------------
class RacingClient:
    """The eraser's DynamoDB client, with a concurrent writer that acts just before each of its writes
    to one item (``times`` of them): the interleaving a read-scrub-put has no defence against."""

    def __init__(self, real: Any, sk: str, write: Callable[[], None], times: int = 1) -> None:
        self._real, self._sk, self._write, self.left = real, sk, write, times

    def _race(self, key: dict[str, Any]) -> None:
        if key["sk"]["S"] == self._sk and self.left > 0:
            self.left -= 1
            self._write()

    def put_item(self, **kwargs: Any) -> Any:
        self._race(kwargs["Item"])
        return self._real.put_item(**kwargs)

    def update_item(self, **kwargs: Any) -> Any:
        self._race(kwargs["Key"])
        return self._real.update_item(**kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


def _summary_item(world: LocalWorld, summary: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "pk": {"S": installation_pk(world.site.installation_id)},
        "sk": {"S": "LASTRUN#user-digest"},
        "summary": {"S": json.dumps(summary, sort_keys=True)},
        **extra,
    }


RACES = [
    pytest.param("ttl", id="retention-ttl-set-meanwhile"),
    pytest.param("newer-naming", id="newer-write-naming-them-again"),
    pytest.param("newer-clean", id="newer-write-without-them"),
]


@pytest.mark.parametrize("race", RACES)
def test_the_eraser_never_overwrites_a_write_made_between_its_read_and_its_write(
    local_world: LocalWorld, ledger: Ledger, race: str
) -> None:
    ledger.refused()
    install(local_world, ledger)
    gone, other = people(ledger, 2, salt=6)
    table = local_world.stack.physical["AppTable"]
    client = aws.dynamodb()
    client.put_item(TableName=table, Item=_summary_item(local_world, {"pages": 1, "requestedBy": gone}))
    client.put_item(  # a second item, deleted meanwhile: never brought back
        TableName=table,
        Item={**_summary_item(local_world, {"requestedBy": gone}), "sk": {"S": "LASTRUN#space-digest"}},
    )
    key = {"pk": {"S": installation_pk(local_world.site.installation_id)}, "sk": {"S": "LASTRUN#user-digest"}}
    newer = {
        "ttl": _summary_item(local_world, {"pages": 1, "requestedBy": gone}, ttl={"N": "1800000000"}),
        "newer-naming": _summary_item(local_world, {"pages": 5, "requestedBy": gone, "also": other}),
        "newer-clean": _summary_item(local_world, {"pages": 9, "requestedBy": other}),
    }[race]

    def concurrent() -> None:
        if race == "ttl":  # what the uninstall's retention walk does
            client.update_item(
                TableName=table,
                Key=key,
                UpdateExpression="SET #t = :t",
                ExpressionAttributeNames={"#t": "ttl"},
                ExpressionAttributeValues={":t": {"N": "1800000000"}},
            )
        else:
            client.put_item(TableName=table, Item=newer)
        client.delete_item(TableName=table, Key={**key, "sk": {"S": "LASTRUN#space-digest"}})

    racing = RacingClient(client, "LASTRUN#user-digest", concurrent)
    eraser = PersonalDataEraser(
        cast(Any, racing), tokens_table=local_world.stack.physical["TokensTable"], app_table=table
    )
    eraser.erase(local_world.site.installation_id, [gone])
    assert racing.left == 0  # the race happened
    item = client.get_item(TableName=table, Key=key, ConsistentRead=True)["Item"]
    summary = json.loads(item["summary"]["S"])
    assert not names(item["summary"]["S"], gone)
    if race == "ttl":
        assert item["ttl"] == {"N": "1800000000"}  # the retention's ttl survived the rewrite
        assert summary == {"pages": 1, "requestedBy": "unknown"}
    elif race == "newer-naming":
        assert summary == {"pages": 5, "requestedBy": "unknown", "also": other}  # the newer write, scrubbed
    else:
        assert item == newer  # nothing of it named the account: left exactly as written
    gone_key = {**key, "sk": {"S": "LASTRUN#space-digest"}}
    assert "Item" not in client.get_item(TableName=table, Key=gone_key, ConsistentRead=True)


def test_an_item_that_keeps_changing_defers_the_erasure_not_the_report(
    local_world: LocalWorld, ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A writer that beats every attempt: the eraser gives up after a bounded number of tries, the job
    is deferred with its answer recorded, and the next run finishes the erasure without reporting again."""
    ledger.refused()
    install(local_world, ledger)
    [gone] = people(ledger, 1, salt=7)
    table = local_world.stack.physical["AppTable"]
    client = aws.dynamodb()
    client.put_item(TableName=table, Item=_summary_item(local_world, {"n": 0, "requestedBy": gone}))
    local_world.confluence.close_account(gone)
    writes = iter(range(1, 100))

    def rewrite() -> None:
        client.put_item(TableName=table, Item=_summary_item(local_world, {"n": next(writes), "requestedBy": gone}))

    racing = RacingClient(client, "LASTRUN#user-digest", rewrite, times=50)
    monkeypatch.setattr(aws, "dynamodb", lambda: racing)  # the job's client: the worker runs it in-process
    request = report_request(local_world)
    outcome = run_report(local_world, request)
    monkeypatch.undo()
    assert outcome.status == JobStatus.DEFERRED, outcome
    assert "kept changing" in outcome.reason
    assert 1 <= 50 - racing.left <= 8  # bounded retries, not a loop
    progress = progress_item(local_world)
    assert progress["state"]["S"] == "running"
    assert progress["pendingClosed"]["SS"] == [gone]
    reports = len(local_world.confluence.reports_seen)
    outcome = run_report(local_world, request)
    assert outcome.status == JobStatus.DONE, outcome
    assert len(local_world.confluence.reports_seen) == reports  # the erasure resumed, not the report
    assert_erased(local_world, [gone])
    assert "pendingClosed" not in progress_item(local_world)


def test_an_erasure_out_of_time_resumes_where_it_stopped_before_any_further_report(
    local_world: LocalWorld, ledger: Ledger
) -> None:
    ledger.tried += 1
    install(local_world, ledger)
    held = people(ledger, 150, salt=8)
    seed(local_world, ledger, held)
    store = results(local_world)
    for n in range(60):  # a partition worth walking: every item mentions everyone
        store.put(local_world.site.installation_id, "DIGEST", f"d{n:03d}", {"who": [{"accountId": a} for a in held]})

    def close_some(number: int, ids: list[str]) -> None:
        if number == 0:
            for account in ids[:5]:
                local_world.confluence.close_account(account)

    local_world.confluence.before_report = close_some
    request = report_request(local_world)
    first = run_report(local_world, request, Budget(local_world, after_reports=1, grace=40))
    assert first.status == JobStatus.DEFERRED, first
    assert "erasure stopped (out of time)" in first.reason
    progress = progress_item(local_world)
    assert progress["state"]["S"] == "running"
    assert "eraseCursor" in progress
    assert len(local_world.confluence.reports_seen) == 1
    assert run_report(local_world, request).status == JobStatus.DONE
    assert Counter(answered(local_world)) == Counter(held)  # the first batch was not sent again
    assert_erased(local_world, local_world.confluence.account_statuses)
