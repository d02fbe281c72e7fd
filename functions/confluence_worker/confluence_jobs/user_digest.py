"""``user-digest``: the pages one user can see that changed in the last N days, asked *as that user*.

The account is the one that requested the job from the UI (``requestedBy``) or ``args.accountId``.
Confluence is asked through ``ctx.confluence_as(account)``, an offline user token Forge mints for that
account, so restricted spaces the user cannot open stay out of their digest, which the app's own
token would not do. If Forge will not impersonate the account the job goes to the DLQ; it never
falls back to the app. Stored as one ``USER_DIGEST`` record per account (an upsert: reruns replace it).

Account ids are personal data: the record is keyed by one, and kept until the job runs again or the
installation's results are removed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from forge_remote import JobContext, JobResult, PermanentFailure, clock, cql, job
from forge_remote.jobs.contract import kind_of, shown
from forge_remote.storage.table_keys import ACCOUNT_ID_PATTERN

USER_DIGEST = "USER_DIGEST"
MAX_DAYS = 31
MAX_PAGES_PER_RECORD = 500  # the result store bounds the bytes too (``_truncated``)
PAGE_SIZE = 25  # as space-digest's: a request reserves 1 + limit points, about what it costs


@dataclass(frozen=True)
class UserDigestArgs:
    account_id: str | None  # None: the account that requested the job
    days: int


def parse_args(args: Mapping[str, Any]) -> UserDigestArgs:
    account_id = args.get("accountId")
    if account_id is not None and not (isinstance(account_id, str) and ACCOUNT_ID_PATTERN.fullmatch(account_id)):
        # Never quoted, not even in part: whatever it is, it may be somebody's account id.
        given = "a text that is not one" if isinstance(account_id, str) else kind_of(account_id)
        raise ValueError(f"accountId must be the Atlassian account id of the user the digest is for; it is {given}")
    days = args.get("days", 7)
    if not isinstance(days, int) or isinstance(days, bool) or not 1 <= days <= MAX_DAYS:
        raise ValueError(
            f"days must be a whole number from 1 to {MAX_DAYS} (how far back the digest looks), not {shown(days)}"
        )
    return UserDigestArgs(account_id=account_id, days=days)


@job("user-digest", parse_args)
def user_digest(ctx: JobContext, args: UserDigestArgs) -> JobResult:
    account_id = args.account_id or ctx.request.requested_by
    if not account_id:
        # Nobody to act as: acting as the app instead would show pages the user may not see.
        raise PermanentFailure("user-digest needs requestedBy or args.accountId")
    confluence = ctx.confluence_as(account_id)
    now = datetime.fromtimestamp(clock.now(), UTC)
    since = now - timedelta(days=args.days)
    query = cql.and_(cql.field_eq("type", "page"), cql.date_gte("lastmodified", since))
    pages: list[dict[str, Any]] = []
    count = 0
    for page in confluence.search_content(query, expand=["version", "space"], limit=PAGE_SIZE):
        count += 1
        if len(pages) < MAX_PAGES_PER_RECORD:
            pages.append(
                {
                    "id": str(page["id"]),
                    "title": page.get("title"),
                    "spaceKey": page.get("space", {}).get("key"),
                    "lastModified": page.get("version", {}).get("when"),
                }
            )
    record = {
        "accountId": account_id,
        "since": since.isoformat(timespec="minutes"),
        "count": count,
        "pages": pages,
        "truncated": count > len(pages),
        "requestId": ctx.request.request_id,
    }
    stored = ctx.results.put(USER_DIGEST, account_id, record)
    # The summary is logged: counts only, no account id.
    return JobResult({"pages": count, "truncated": count > len(pages) or stored.truncated})
