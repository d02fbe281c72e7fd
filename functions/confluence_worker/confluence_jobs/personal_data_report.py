"""``personal-data-report``: report the account ids an installation holds, erase or drop what the answer says.

Scheduled weekly for every active installation (Atlassian's default cycle period is 7 days; reports
should not come more often). One job request is one cycle. Per installation: every account id its
items hold, with the time it was last written (``privacy.held_accounts``), in cycle order (a digest of
the id, ``privacy.in_cycle_order``), reported 90 at a time; for each batch's answer, ``closed``
accounts are erased everywhere and ``updated`` accounts' cached profile data is dropped, before the
next batch is sent.

Progress (the ``PRIVACY#REPORT`` item, per request id) is a key, not a position: the cycle key of the
last account answered. A deferred run (a 429 ``Retry-After``, an outage, the time budget) comes back
with the same request and sends the accounts whose key comes after it, so erasing accounts (which
shrinks the list) can never make it skip one: every account held when the cycle started is reported
exactly once. An account first stored during the cycle is reported in it if its key comes after the
resume point, else in the next cycle. An answer is recorded (with the accounts it asks to erase or
drop) before anything is erased; an erasure cut short by the time budget continues on the next run
from where it stopped, before any further report is sent. Every write of the item is conditional on
the version read, so two runs of one request cannot both move it; the cycle is marked done only
with nothing pending and no account left after the resume point.

Failures: a malformed or ambiguous answer erases nothing and sends the job to the DLQ (it alarms); the
next weekly run reports everything again, so a failed report is retried then. Reasons name no account.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from forge_remote import JobContext, JobResult, aws, clock, job
from forge_remote.config import Settings
from forge_remote.errors import ConfigurationError, RetryLater
from forge_remote.jobs.contract import argument_names
from forge_remote.storage.table_keys import PRIVACY_REPORT_SK as PROGRESS_SK
from forge_remote.storage.table_keys import installation_pk

if TYPE_CHECKING:
    from forge_remote.lifecycle.privacy import PersonalDataEraser

PROGRESS_TTL_S = 30 * 86400  # a week's run is long done by then
MIN_BATCH_MS = 10_000  # a report, its erasures and the progress write, with room to spare
CONTENDED_DELAY_S = 30.0  # another run holds the progress item, or an item kept changing: soon again


def parse_args(args: Mapping[str, Any]) -> None:
    if args:
        raise ValueError(f"the job takes no arguments, and the request gave {len(args)} ({argument_names(args)})")


def _settings() -> Settings:
    """Read per run (no I/O): the environment is the function's, whichever container runs the job."""
    return Settings.from_env()


def _progress_key(installation_id: str) -> dict[str, Any]:
    return {"pk": {"S": installation_pk(installation_id)}, "sk": {"S": PROGRESS_SK}}


@dataclass(frozen=True)
class Progress:
    """One cycle's state, and the version of it that is stored (``stored`` False: none for this request)."""

    request_id: str
    stored: bool = False
    version: int = 0  # 0 with ``stored``: an item of this request from before versions were kept
    after: str | None = None  # cycle key of the last account answered
    pending_closed: tuple[str, ...] = ()  # answered, not yet erased
    pending_updated: tuple[str, ...] = ()
    erase_cursor: str | None = None  # where the pending erasure's walk stopped
    done: bool = False
    reported: int = 0
    reports: int = 0
    closed: int = 0
    updated: int = 0
    erased: int = 0

    @property
    def pending(self) -> bool:
        return bool(self.pending_closed or self.pending_updated)

    def summary(self) -> dict[str, int]:
        # Counts only: account ids are personal data and stay out of logs and the status page.
        return {
            "accounts": self.reported,
            "reports": self.reports,
            "closed": self.closed,
            "updated": self.updated,
            "erasedItems": self.erased,
        }


def _number(item: dict[str, Any], name: str) -> int:
    return int(item.get(name, {}).get("N", "0"))


def load_progress(installation_id: str, request_id: str) -> Progress:
    """This request's progress; a fresh one if the item belongs to another request (an earlier cycle)."""
    item = (
        aws.dynamodb()
        .get_item(TableName=_settings().app_table, Key=_progress_key(installation_id), ConsistentRead=True)
        .get("Item", {})
    )
    if item.get("requestId", {}).get("S") != request_id:
        return Progress(request_id)
    return Progress(
        request_id=request_id,
        stored=True,
        version=_number(item, "version"),
        after=item.get("after", {}).get("S"),
        pending_closed=tuple(sorted(item.get("pendingClosed", {}).get("SS", []))),
        pending_updated=tuple(sorted(item.get("pendingUpdated", {}).get("SS", []))),
        erase_cursor=item.get("eraseCursor", {}).get("S"),
        done=item.get("state", {}).get("S") == "done",
        reported=_number(item, "reported"),
        reports=_number(item, "reports"),
        closed=_number(item, "closed"),
        updated=_number(item, "updated"),
        erased=_number(item, "erased"),
    )


def save_progress(installation_id: str, progress: Progress) -> Progress:
    """Write ``progress`` as the next version, if the stored one is still the version it was read at."""
    if progress.done and progress.pending:
        raise ValueError("a cycle with an erasure pending is not done")
    client = aws.dynamodb()
    now = int(clock.now())
    item: dict[str, Any] = {
        **_progress_key(installation_id),
        "requestId": {"S": progress.request_id},
        "version": {"N": str(progress.version + 1)},
        "state": {"S": "done" if progress.done else "running"},
        "updatedAt": {"N": str(now)},
        "ttl": {"N": str(now + PROGRESS_TTL_S)},
        **{
            name: {"N": str(value)}
            for name, value in (
                ("reported", progress.reported),
                ("reports", progress.reports),
                ("closed", progress.closed),
                ("updated", progress.updated),
                ("erased", progress.erased),
            )
        },
    }
    if progress.after is not None:
        item["after"] = {"S": progress.after}
    if progress.pending_closed:
        item["pendingClosed"] = {"SS": list(progress.pending_closed)}
    if progress.pending_updated:
        item["pendingUpdated"] = {"SS": list(progress.pending_updated)}
    if progress.erase_cursor is not None:
        item["eraseCursor"] = {"S": progress.erase_cursor}
    values: dict[str, Any] = {":rid": {"S": progress.request_id}}
    if not progress.stored:  # the cycle's first write: replaces an earlier cycle's item, never this one's
        condition = "attribute_not_exists(requestId) OR requestId <> :rid"
    elif progress.version == 0:
        condition = "requestId = :rid AND attribute_not_exists(version)"
    else:
        condition = "requestId = :rid AND version = :v"
        values[":v"] = {"N": str(progress.version)}
    try:
        client.put_item(
            TableName=_settings().app_table,
            Item=item,
            ConditionExpression=condition,
            ExpressionAttributeValues=values,
        )
    except client.exceptions.ConditionalCheckFailedException:
        raise RetryLater(
            "personal data report: another run of this cycle moved its progress; continuing later",
            CONTENDED_DELAY_S,
        ) from None
    return replace(progress, stored=True, version=progress.version + 1)


def _finish_erasure(eraser: PersonalDataEraser, installation_id: str, progress: Progress) -> Progress:
    """The answered batch's erasures, from where an earlier run stopped; deferred if cut short."""
    report = eraser.apply(
        installation_id,
        closed=progress.pending_closed,
        updated=progress.pending_updated,
        start_after=progress.erase_cursor,
    )
    progress = replace(
        progress, erased=progress.erased + report.items_deleted + report.items_rewritten + report.tokens_deleted
    )
    if not report.complete:
        save_progress(installation_id, replace(progress, erase_cursor=report.cursor))
        why = "an item kept changing" if report.contended else "out of time"
        raise RetryLater(
            f"personal data report: erasure stopped ({why}); it continues later",
            CONTENDED_DELAY_S if report.contended else 0,
        )
    return save_progress(installation_id, replace(progress, pending_closed=(), pending_updated=(), erase_cursor=None))


@job("personal-data-report", parse_args)
def personal_data_report(ctx: JobContext, _: None) -> JobResult:
    # Imported here: the reporter loads requests, which the worker's cold start leaves to the first job
    # that needs it.
    from forge_remote.lifecycle.privacy import (
        PersonalDataEraser,
        PersonalDataReporter,
        batches,
        cycle_key,
        held_accounts,
        in_cycle_order,
    )

    settings = _settings()
    client = aws.dynamodb()
    installation_id = ctx.installation_id
    progress = load_progress(installation_id, ctx.request.request_id)
    if progress.done:
        return JobResult(progress.summary())  # a repeated delivery of a finished cycle sends nothing
    if ctx.app_token is None:
        raise ConfigurationError("this context has no app token source")
    accounts = in_cycle_order(
        held_accounts(
            client, tokens_table=settings.tokens_table, app_table=settings.app_table, installation_id=installation_id
        )
    )
    # The app token of the job's lease (valid long enough, re-checked per request): the same token, and
    # the same lease, as ctx.confluence's, so a refusal is matched and invalidated by the worker.
    reporter = PersonalDataReporter(
        ctx.api_base_url,
        ctx.app_token,
        allowed_hosts=settings.allowed_api_hosts,
        remaining_ms=ctx.remaining_ms,
        redact_accounts={a.account_id for a in accounts} | {*progress.pending_closed, *progress.pending_updated},
    )
    eraser = PersonalDataEraser(
        client, tokens_table=settings.tokens_table, app_table=settings.app_table, remaining_ms=ctx.remaining_ms
    )
    if progress.pending:
        progress = _finish_erasure(eraser, installation_id, progress)
    after = progress.after
    left = [a for a in accounts if after is None or cycle_key(a.account_id) > after]
    for batch in batches(left):
        if ctx.remaining_ms() < MIN_BATCH_MS:
            raise RetryLater("personal data report: out of time; the rest continues later", 0)
        answer = reporter.report(batch)
        gone = tuple(sorted(account for account, status in answer.items() if status == "closed"))
        changed = tuple(sorted(account for account, status in answer.items() if status == "updated"))
        # Recorded before anything is erased: a run cut short after this resumes the erasure and
        # never sends this batch again.
        progress = save_progress(
            installation_id,
            replace(
                progress,
                after=cycle_key(batch[-1].account_id),
                pending_closed=gone,
                pending_updated=changed,
                erase_cursor=None,
                reported=progress.reported + len(batch),
                reports=progress.reports + 1,
                closed=progress.closed + len(gone),
                updated=progress.updated + len(changed),
            ),
        )
        if progress.pending:
            progress = _finish_erasure(eraser, installation_id, progress)
    # Done only with every account of this run's list at or before the resume point (and, by
    # save_progress, nothing pending): a cycle cannot be marked done while accounts remain.
    if progress.after is not None and any(cycle_key(a.account_id) > progress.after for a in accounts):
        raise RetryLater("personal data report: accounts left after the resume point; continuing later", 0)
    return JobResult(save_progress(installation_id, replace(progress, done=True)).summary())
