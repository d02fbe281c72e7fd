"""``space-digest``: pages modified in the last day, per space, across every cursor page,
stored as one digest record per space and day. Requested daily by the job scheduler.

A digest lists at most ``MAX_PAGES_PER_RECORD`` pages (``truncated`` says the list was capped;
``count`` is always the full number). The result store may cut the list further to fit DynamoDB's
item size limit (a few hundred long non-ASCII titles do not fit), keeping its first pages: the stored
record then says so in ``_truncated`` (``{"/pages": {"kept": n, "total": m}}``), and the job's summary
lists the spaces whose stored digest lacks pages it counted, for either reason.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from forge_remote import JobContext, JobResult, clock, cql, job
from forge_remote.jobs.contract import shown

DIGEST = "DIGEST"
MAX_SPACES = 100
MAX_HOURS = 24 * 31
MAX_SPACES_IN_SUMMARY = 20  # the summary is logged: a short list, the store's own warnings name every cut
# Bounds a digest's record; its size in bytes is bounded by the result store, as 500 titles of 255
# characters can take 500 KB in UTF-8 (3 bytes a CJK character, 4 an emoji) with nothing else counted.
MAX_PAGES_PER_RECORD = 500
# Pages per search request: Confluence's default page size. Each request reserves 1 + limit points of
# the fleet's hourly budget before it is sent (Atlassian charges 1 + pages returned), so asking for
# what one page of answers holds keeps the reservation close to the cost.
PAGE_SIZE = 25


@dataclass(frozen=True)
class DigestArgs:
    space_keys: tuple[str, ...]  # empty: every space the app can see
    hours: int


def _default_space_keys() -> list[str]:
    return [k.strip() for k in os.environ.get("DIGEST_SPACE_KEYS", "").split(",") if k.strip()]


def parse_args(args: Mapping[str, Any]) -> DigestArgs:
    keys = args.get("spaceKeys", _default_space_keys())
    if not isinstance(keys, list):
        raise ValueError(f"spaceKeys must be a list of space keys (the spaces to digest), not {shown(keys)}")
    for number, key in enumerate(keys, 1):
        if not isinstance(key, str) or not 0 < len(key) <= 255:
            raise ValueError(
                f"spaceKeys must list space keys (texts of 1 to 255 characters); its item {number} is {shown(key)}"
            )
    if len(keys) > MAX_SPACES:
        raise ValueError(f"spaceKeys lists {len(keys)} spaces, and a digest takes at most {MAX_SPACES}")
    hours = args.get("hours", 24)
    if not isinstance(hours, int) or isinstance(hours, bool) or not 1 <= hours <= MAX_HOURS:
        raise ValueError(
            f"hours must be a whole number from 1 to {MAX_HOURS} (how far back the digest looks), not {shown(hours)}"
        )
    return DigestArgs(space_keys=tuple(keys), hours=hours)


@job("space-digest", parse_args)
def space_digest(ctx: JobContext, args: DigestArgs) -> JobResult:
    now = datetime.fromtimestamp(clock.now(), UTC)
    since = now - timedelta(hours=args.hours)
    clauses: list[cql.Cql] = [cql.field_eq("type", "page"), cql.date_gte("lastmodified", since)]
    if args.space_keys:
        clauses.insert(0, cql.field_in("space", list(args.space_keys)))
    by_space: dict[str, list[dict[str, Any]]] = {key: [] for key in args.space_keys}
    for page in ctx.confluence.search_content(cql.and_(*clauses), expand=["version", "space"], limit=PAGE_SIZE):
        space_key = page.get("space", {}).get("key") or "?"
        by_space.setdefault(space_key, []).append(
            {
                "id": str(page["id"]),
                "title": page.get("title"),
                "version": page.get("version", {}).get("number"),
                "lastModified": page.get("version", {}).get("when"),
            }
        )
    day = now.date().isoformat()
    cut: list[str] = []  # spaces whose stored digest lists fewer pages than it counted
    for space_key, pages in by_space.items():
        capped = len(pages) > MAX_PAGES_PER_RECORD
        record = {
            "spaceKey": space_key,
            "day": day,
            "since": since.isoformat(timespec="minutes"),
            "count": len(pages),
            "pages": pages[:MAX_PAGES_PER_RECORD],
            "truncated": capped,
        }
        stored = ctx.results.put(DIGEST, f"{day}#{space_key}", record)
        if capped or stored.truncated:
            cut.append(space_key)
    return JobResult(
        {
            "spaces": len(by_space),
            "pages": sum(len(p) for p in by_space.values()),
            "truncated": len(cut),
            "truncatedSpaces": sorted(cut)[:MAX_SPACES_IN_SUMMARY],
        }
    )
