"""``make demo``: the expired-token story, played on the embedded local stack in a few seconds.

The motivating failure: a background job uses "the last token Forge sent", which expired while no
Forge call came in, and Confluence answers 401. Here the same story runs through the real handlers
(HTTP gateway, moto, SQS poller, Forge and Confluence emulators) and ends differently: the job
waits for a valid token instead. Time is moved, never waited for (``LocalRuntime.advance``), and the
functions' log lines are stamped with the moved clock, as the stack's token expiries are.

Narration goes to stdout, one line per step (``Story.steps``, counted from that list). The functions'
own log lines (WARNING and up) are kept apart from it: the one the story expects, the worker's
warning when it defers the job for want of a valid token (a real warning, which on AWS says jobs are
waiting), is told in words at its step; any other is printed to stderr after the table, as the
function wrote it.
"""

from __future__ import annotations

import io
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import boto3
import requests

from forge_remote import clock  # installed in the venv from layers/forge_remote (see the Makefile)
from local.forge_emulator import Site
from local.runtime import LocalRuntime

TOKEN_LIFETIME_S = 3 * 3600
SILENCE_S = 4 * 3600  # no Forge call for four hours: longer than any token lives


@dataclass
class Step:
    title: str
    expected: str
    observed: str = "skipped"
    ok: bool = False


def _when(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, UTC).strftime("%H:%M UTC")


def _n(count: int | None, thing: str) -> str:
    """``1 token``, ``2 tokens``, ``0 tokens``: every count the story prints reads as English."""
    return f"{count} {thing if count == 1 else thing + 's'}"


def _versions(snapshots: list[int]) -> str:
    return f"{'snapshot' if len(snapshots) == 1 else 'snapshots'} stored: {', '.join(f'v{v}' for v in snapshots) or 'none'}"


@dataclass
class FunctionLogs:
    """The functions' log lines (JSON, one a line), kept apart from the narration: a step takes the
    lines it tells in words (``take``); ``untold`` are the others, printed after the table."""

    stream: io.StringIO = field(default_factory=io.StringIO)
    _read: int = 0
    _lines: list[str] = field(default_factory=list)

    def _collect(self) -> None:
        text = self.stream.getvalue()
        self._lines.extend(line for line in text[self._read :].splitlines() if line.strip())
        self._read = len(text)

    def take(self, service: str, message: str) -> list[dict[str, Any]]:
        """The lines ``service`` logged with ``message`` so far, removed from the untold ones."""
        self._collect()
        taken, kept = [], []
        for line in self._lines:
            record = _json_object(line)
            if record is not None and (record.get("service"), record.get("message")) == (service, message):
                taken.append(record)
            else:
                kept.append(line)
        self._lines = kept
        return taken

    def untold(self) -> list[str]:
        self._collect()
        return list(self._lines)


def _json_object(line: str) -> dict[str, Any] | None:
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def _logged_at(record: dict[str, Any]) -> float | None:
    """When a Powertools line says it was written (its ``timestamp``, offset included)."""
    try:
        return datetime.strptime(str(record.get("timestamp")), "%Y-%m-%d %H:%M:%S,%f%z").timestamp()
    except ValueError:
        return None


def _stored_expiry(rt: LocalRuntime, site: Site) -> float | None:
    items = rt.token_items(site.installation_id)
    return float(items[0]["expiresAt"]["N"]) if items else None


class Story:
    """The story's steps (``self.steps``, in order), each checking what it claims. State shared between
    steps lives here."""

    def __init__(self, rt: LocalRuntime, logs: FunctionLogs | None = None) -> None:
        self.rt = rt
        self.logs = logs or FunctionLogs()
        self.site = rt.site()
        self.first_token = ""
        self.page_id = ""
        self.deferral_delay_s = 0.0
        self.steps: list[tuple[Step, Callable[[], tuple[bool, str]]]] = [
            (Step("install", "app token stored with its expiry"), self.install),
            (Step("page created", "job runs, snapshot v1 stored"), self.page_created),
            (Step("4 h pass", "stored token expired"), self.time_passes),
            (Step("page updated", "job deferred and parked: not sent, not lost"), self.page_updated),
            (Step("keepalive", "fresh token wakes the parked job: done at once"), self.keepalive),
            (Step("as a user", "2 jobs as Alice: 1 token minted, only her pages"), self.as_a_user),
            (Step("account gone", "Alice's account closed: her token and data erased"), self.account_closed),
            (Step("uninstall", "no token left for the installation"), self.uninstall),
        ]

    def _headers(self, module_key: str, token: str | None = None) -> dict[str, str]:
        return self.rt.forge.headers(self.site, app_token=token, module_key=module_key)

    def install(self) -> tuple[bool, str]:
        self.first_token = self.rt.forge.app_token(lifetime_s=TOKEN_LIFETIME_S)
        response = self.rt.call(
            "POST",
            "/forge/lifecycle",
            self._headers("lifecycle-endpoint", self.first_token),
            self.rt.forge.installed_event(self.site),
        )
        items = self.rt.token_items(self.site.installation_id)
        expires = _stored_expiry(self.rt, self.site)
        ok = response.status_code == 200 and len(items) == 1 and items[0]["token"]["S"] == self.first_token
        left = (expires or 0) - clock.now()
        observed = f"lifecycle installed -> HTTP {response.status_code}; token stored, expires {_when(expires or 0)}"
        return ok, f"{observed} (in {left / 3600:.1f} h)"

    def page_created(self) -> tuple[bool, str]:
        self.rt.confluence.add_space("ENG", "Engineering")
        page = self.rt.confluence.add_page("ENG", "Release notes", body="<p>first draft</p>")
        self.page_id = str(page["id"])
        event = self.rt.forge.page_event(self.page_id, "ENG", created=True, version=1, title="Release notes")
        # Forge re-delivers the token it cached: the store notices and writes nothing.
        response = self.rt.call("POST", "/forge/events", self._headers("events-endpoint", self.first_token), event)
        report = self.rt.poller.drain()
        versions = sorted(s["version"] for s in self.rt.results(self.site.installation_id, "SNAPSHOT"))
        ok = response.status_code == 202 and report.succeeded == 1 and versions == [1]
        return (
            ok,
            f"event -> HTTP {response.status_code}; worker ran {_n(report.succeeded, 'job')}; {_versions(versions)}",
        )

    def time_passes(self) -> tuple[bool, str]:
        self.rt.advance(SILENCE_S)
        expires = _stored_expiry(self.rt, self.site) or 0
        ago = clock.now() - expires
        return ago > 0, f"clock +{SILENCE_S // 3600} h, no Forge call; stored token expired {ago / 3600:.1f} h ago"

    def page_updated(self) -> tuple[bool, str]:
        self.rt.confluence.update_page(int(self.page_id), body="<p>second draft</p>")
        seen_before = len(self.rt.confluence.requests_seen)
        event = self.rt.forge.page_event(self.page_id, "ENG", created=False, version=2, title="Release notes")
        # This delivery carries no app token (a trigger may come without one): the job has only the stored one.
        response = self.rt.call("POST", "/forge/events", self._headers("events-endpoint"), event)
        report = self.rt.poller.drain()
        sent = self.rt.confluence.requests_seen[seen_before:]
        expired_sent = sum(1 for seen in sent if seen[3] == self.first_token)
        depths = self.rt.queue_depths()
        in_queue, in_dlq = sum(depths["queue"]), sum(depths["dlq"])
        parked = self._parked_retry_at()
        self.deferral_delay_s = max(parked) - clock.now() if parked else 0.0
        ok = (
            response.status_code == 202
            and report.failed == 1
            and not sent
            and in_queue == 1
            and in_dlq == 0
            and len(parked) == 1
        )
        return ok, (
            f"{_n(len(parked), 'job')} deferred and parked; requests sent with the expired token: {expired_sent}; "
            f"queue {in_queue}, DLQ {in_dlq}"
        )

    def deferral_logged(self) -> str:
        """The worker's WARNING for the deferral, told in words (its JSON line stays out of the story)."""
        warnings = self.logs.take("confluence-worker", "job deferred")
        if not warnings:
            return "the worker logged no warning for it"
        reason = str(warnings[-1].get("reason", "no reason given"))
        reason = reason.replace(f" for installation {self.site.installation_id}", "")
        logged_at = _logged_at(warnings[-1])
        at = f" at {_when(logged_at)} on the stack's clock" if logged_at is not None else ""
        return f"the worker logged it as a WARNING{at}: job deferred, {reason}"

    def naive_contrast(self) -> str:
        """What "the last token seen" would have done: send the expired token. Once, directly."""
        response = requests.get(
            f"{self.site.api_base_url}/wiki/rest/api/content/{self.page_id}",
            headers={"Authorization": f"Bearer {self.first_token}", "Accept": "application/json"},
            timeout=10,
        )
        return (
            "a naive 'last token seen' store would have sent the expired token: "
            f"Confluence answered {response.status_code}"
        )

    def keepalive(self) -> tuple[bool, str]:
        """The next keepalive stores a fresh token, and its stream record wakes the parked job: it runs
        now, with no time passing, where the deferral delay alone would have kept it waiting."""
        fresh = self.rt.forge.app_token(lifetime_s=TOKEN_LIFETIME_S)
        parked = self._waiting_for_token()
        response = self.rt.call("POST", "/forge/keepalive", self._headers("keepalive-endpoint", fresh))
        seen_before = len(self.rt.confluence.requests_seen)
        started = time.monotonic()
        report = self.rt.settle()  # the stream reaches the wake-up, the woken job reaches the worker
        waited = time.monotonic() - started  # real time only: the demo's clock is not moved here
        tokens_sent = {seen[3] for seen in self.rt.confluence.requests_seen[seen_before:]}
        versions = sorted(s["version"] for s in self.rt.results(self.site.installation_id, "SNAPSHOT"))
        depths = self.rt.queue_depths()
        ok = (
            response.status_code == 204
            and parked == 1
            and report.succeeded == 1
            and waited < 10
            and tokens_sent == {fresh}
            and versions == [1, 2]
            and self._waiting_for_token() == 0
            and sum(depths["queue"]) + sum(depths["dlq"]) == 0
        )
        expires = _stored_expiry(self.rt, self.site) or 0
        return ok, (
            f"keepalive -> HTTP {response.status_code}, token until {_when(expires)}; "
            f"{_n(report.succeeded, 'parked job')} woken and done {waited * 1000:.0f} ms later, with "
            f"{self.deferral_delay_s:.0f} s of its deferral delay still to run; {_versions(versions)}"
        )

    def _parked_retry_at(self) -> list[float]:
        """When the deferral delay of each parked job of the site would bring it back by itself."""
        from forge_remote.storage.table_keys import PARKED_SK_PREFIX, installation_pk

        items = boto3.client("dynamodb").query(
            TableName=self.rt.stack.physical["AppTable"],
            KeyConditionExpression="pk = :pk AND begins_with(sk, :parked)",
            ExpressionAttributeValues={
                ":pk": {"S": installation_pk(self.site.installation_id)},
                ":parked": {"S": PARKED_SK_PREFIX},
            },
        )["Items"]
        return [float(item["retryAt"]["N"]) for item in items]

    def _waiting_for_token(self) -> int:
        from forge_remote.jobs.parking import ParkingLot

        return ParkingLot(boto3.client("dynamodb"), self.rt.stack.physical["AppTable"]).waiting(
            self.site.installation_id
        )

    def as_a_user(self) -> tuple[bool, str]:
        """Offline user impersonation: a job acts as Alice (a token minted through the Forge emulator's
        GraphQL gateway), so a space only Bob may open stays out of her digest; the next job reuses it."""
        import boto3

        from forge_remote.jobs.contract import JobRequest, send_job_requests

        alice, bob = "557058:demo-alice", "557058:demo-bob"
        self.rt.confluence.add_space("SEC", "Security")
        self.rt.confluence.add_page("SEC", "Incident review")
        self.rt.confluence.restrict_space("SEC", [bob])
        seen_before = len(self.rt.confluence.requests_seen)
        requests_ = [
            JobRequest(job="user-digest", installation_id=self.site.installation_id, requested_by=alice)
            for _ in range(2)
        ]
        for request in requests_:  # one after the other: the second finds the first one's token cached
            send_job_requests(boto3.client("sqs"), self.rt.stack.physical["JobsQueue"], [request])
            self.rt.poller.drain()
        sent = {seen[3] for seen in self.rt.confluence.requests_seen[seen_before:]}
        app_tokens = {
            i["token"]["S"] for i in self.rt.token_items(self.site.installation_id) if i["sk"]["S"] == "SYSTEM"
        }
        (digest,) = self.rt.results(self.site.installation_id, "USER_DIGEST") or [{}]
        spaces = sorted({p["spaceKey"] for p in digest.get("pages", [])})
        minted = self.rt.forge.offline_mints[alice]
        ok = minted == 1 and len(sent) == 1 and not sent & app_tokens and spaces == ["ENG"]
        return ok, (
            f"{_n(len(requests_), 'user-digest job')} as Alice: {_n(minted, 'user token')} minted, "
            f"{_n(len(sent), 'token')} sent to Confluence (the app's: {len(sent & app_tokens)}); "
            f"her digest lists {_n(len(spaces), 'space')}: {', '.join(spaces) or 'none'} (SEC is Bob's)"
        )

    def account_closed(self) -> tuple[bool, str]:
        """Personal data reporting: Alice closes her Atlassian account; the weekly report learns it and
        everything the backend kept of her goes (her cached user token, her digest)."""
        import boto3

        from forge_remote.jobs.contract import JobRequest, send_job_requests

        alice = "557058:demo-alice"
        self.rt.confluence.close_account(alice)
        reports_before = len(self.rt.confluence.reports_seen)
        request = JobRequest(job="personal-data-report", installation_id=self.site.installation_id)
        send_job_requests(boto3.client("sqs"), self.rt.stack.physical["JobsQueue"], [request])
        self.rt.poller.drain()
        reported = [a["accountId"] for r in self.rt.confluence.reports_seen[reports_before:] for a in r]
        tokens_left = [i["sk"]["S"] for i in self.rt.token_items(self.site.installation_id) if alice in i["sk"]["S"]]
        digests = self.rt.results(self.site.installation_id, "USER_DIGEST")
        ok = alice in reported and not tokens_left and not digests
        return ok, (
            f"report of {_n(len(reported), 'account')} -> Alice closed; left of hers: "
            f"{_n(len(tokens_left), 'token')}, {_n(len(digests), 'digest')}"
        )

    def uninstall(self) -> tuple[bool, str]:
        response = self.rt.call("POST", "/forge/uninstall", self._headers("uninstall-endpoint"), {})
        left = self.rt.token_items(self.site.installation_id)
        deleted = response.json().get("tokensDeleted") if response.status_code == 200 else None
        return response.status_code == 200 and not left, (
            f"preUninstall -> HTTP {response.status_code}; {_n(deleted, 'token')} deleted (the app's; "
            f"Alice's went with her account), {len(left)} left"
        )

    def play(self) -> list[Step]:
        failed = False
        for number, (step, run) in enumerate(self.steps, 1):
            if failed:
                break  # later steps build on earlier ones: report them as skipped
            try:
                step.ok, step.observed = run()
            except Exception as exc:
                step.ok, step.observed = False, f"error: {type(exc).__name__}: {exc}"
            failed = not step.ok
            print(f"[{number}/{len(self.steps)}] {step.title:<13} {'ok ' if step.ok else 'BAD'}  {step.observed}")
            if step.title == "page updated" and step.ok:
                print(f"      {'':<13}      {self.deferral_logged()}")
                print(f"      {'':<13}      {self.naive_contrast()}")
        return [step for step, _ in self.steps]


def table(steps: list[Step]) -> str:
    rows = [("step", "expected", "observed", "ok")] + [
        (s.title, s.expected, s.observed, "yes" if s.ok else "NO") for s in steps
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = [f"{r[0]:<{widths[0]}} | {r[1]:<{widths[1]}} | {r[2]:<{widths[2]}} | {r[3]}" for r in rows]
    lines.insert(1, "-+-".join("-" * w for w in widths) + "-+---")
    return "\n".join(lines)


def main() -> int:
    started = time.monotonic()
    print("Forge remote on AWS, on this machine: a background job, an expired token, and no 401.")
    logs = FunctionLogs()
    with LocalRuntime(log_level="WARNING", function_logs=logs.stream) as rt:
        print(f"      stack: gateway {rt.gateway_url}, moto {rt.moto.url}, Confluence {rt.confluence.start()}")
        story = Story(rt, logs)
        print(f"      {_n(len(story.steps), 'step')}, each checked; the stack's clock is moved, never waited for:")
        steps = story.play()
    print()
    print(table(steps))
    ok = all(s.ok for s in steps)
    behaved = sum(s.ok for s in steps)
    verdict = "All steps behaved" if ok else f"{behaved} of {_n(len(steps), 'step')} behaved"
    print(f"\n{verdict} ({time.monotonic() - started:.1f} s).")
    untold = logs.untold()
    if untold:  # not part of the story: shown as the functions wrote them, apart from it
        print(f"\n{_n(len(untold), 'function log line')} the story did not expect:", file=sys.stderr)
        for line in untold:
            print(line, file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
