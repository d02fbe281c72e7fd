"""``personal-data-report``: report the account ids an installation holds, erase or drop what the answer says.

Scheduled weekly for every active installation (Atlassian's default cycle period is 7 days; reports
should not come more often). Per installation: every account id its items hold, with the time it was
last written (``privacy.held_accounts``), reported 90 at a time; for each batch's answer, ``closed``
accounts are erased everywhere and ``updated`` accounts' cached profile data is dropped, before the next
batch is sent.

Failures: a rate limit (429 ``Retry-After``) or an outage defers the job, and the worker runs it again
after at least that delay; batches already answered are not sent again (progress is kept per request
id in the ``PRIVACY#REPORT`` item). A malformed or ambiguous answer erases nothing and sends the job to
the DLQ (it alarms); the next weekly run reports everything again, so a failed report is retried then.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from confluence_jobs import registry
from forge_remote import aws, clock
from forge_remote.config import Settings
from forge_remote.errors import ConfigurationError, RetryLater
from forge_remote.jobs import JobContext, JobResult
from forge_remote.keys import PRIVACY_REPORT_SK as PROGRESS_SK
from forge_remote.keys import installation_pk

PROGRESS_TTL_S = 30 * 86400  # a week's run is long done by then
MIN_BATCH_MS = 10_000  # a report, its erasures and the progress write, with room to spare


def parse_args(args: Mapping[str, Any]) -> None:
    if args:
        raise ValueError("personal-data-report takes no arguments")


def _settings() -> Settings:
    """Read per run (no I/O): the environment is the function's, whichever container runs the job."""
    return Settings.from_env()


def _progress_key(installation_id: str) -> dict[str, Any]:
    return {"pk": {"S": installation_pk(installation_id)}, "sk": {"S": PROGRESS_SK}}


def _batches_done(installation_id: str, request_id: str) -> int:
    """Batches this very request already had answered (a deferred run comes back with the same id)."""
    item = (
        aws.dynamodb()
        .get_item(TableName=_settings().app_table, Key=_progress_key(installation_id), ConsistentRead=True)
        .get("Item", {})
    )
    if item.get("requestId", {}).get("S") != request_id:
        return 0
    return int(item.get("batchesDone", {}).get("N", "0"))


def _record_progress(installation_id: str, request_id: str, done: int) -> None:
    now = int(clock.now())
    aws.dynamodb().put_item(
        TableName=_settings().app_table,
        Item={
            **_progress_key(installation_id),
            "requestId": {"S": request_id},
            "batchesDone": {"N": str(done)},
            "updatedAt": {"N": str(now)},
            "ttl": {"N": str(now + PROGRESS_TTL_S)},
        },
    )


@registry.job("personal-data-report", parse_args)
def personal_data_report(ctx: JobContext, _: None) -> JobResult:
    # Imported here: it loads requests, which the worker's cold start leaves to the first job that needs it.
    from forge_remote.privacy import PersonalDataEraser, PersonalDataReporter, batches, held_accounts

    settings = _settings()
    client = aws.dynamodb()
    accounts = held_accounts(
        client, tokens_table=settings.tokens_table, app_table=settings.app_table, installation_id=ctx.installation_id
    )
    groups = batches(accounts)
    done = _batches_done(ctx.installation_id, ctx.request.request_id)
    if ctx.app_token is None:
        raise ConfigurationError("this context has no app token source")
    # The app token of the job's lease (valid long enough, re-checked per request): the same token, and
    # the same lease, as ctx.confluence's, so a refusal is matched and invalidated by the worker.
    reporter = PersonalDataReporter(
        ctx.api_base_url,
        ctx.app_token,
        allowed_hosts=settings.allowed_api_hosts,
        remaining_ms=ctx.remaining_ms,
    )
    eraser = PersonalDataEraser(client, tokens_table=settings.tokens_table, app_table=settings.app_table)
    closed = updated = erased_items = 0
    for index in range(done, len(groups)):
        if ctx.remaining_ms() < MIN_BATCH_MS:
            raise RetryLater("personal data report: out of time; the rest continues later", 0)
        answer = reporter.report(groups[index])
        gone = [account for account, status in answer.items() if status == "closed"]
        changed = [account for account, status in answer.items() if status == "updated"]
        erased = eraser.erase(ctx.installation_id, gone)
        eraser.drop_profiles(ctx.installation_id, changed)
        closed, updated = closed + len(gone), updated + len(changed)
        erased_items += erased.items_deleted + erased.items_rewritten + erased.tokens_deleted
        _record_progress(ctx.installation_id, ctx.request.request_id, index + 1)
    # Counts only: account ids are personal data and stay out of logs.
    return JobResult(
        {
            "accounts": len(accounts),
            "reports": reporter.request_count,
            "closed": closed,
            "updated": updated,
            "erasedItems": erased_items,
        }
    )
