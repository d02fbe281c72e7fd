"""``page-snapshot``: on page created/updated, fetch the page and store a snapshot record.

The query is the one from the motivating thread (``space in (...) and type = page and id = N``,
with version and space expanded), built through the CQL builder so no value can change it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from forge_remote import JobContext, JobResult, clock, cql, job
from forge_remote.jobs.contract import required, shown

SNAPSHOT = "SNAPSHOT"


@dataclass(frozen=True)
class SnapshotArgs:
    page_id: int
    space_key: str | None
    version: int | None


def parse_args(args: Mapping[str, Any]) -> SnapshotArgs:
    given = required(args, "pageId", "the id of the page to snapshot")
    # Digits as a text or a whole number (Forge's events carry ids both ways); ASCII digits only: "²" is
    # a digit to str.isdigit and no number to int.
    page_id = str(given) if isinstance(given, int) and not isinstance(given, bool) else given
    if not isinstance(page_id, str) or not (page_id.isascii() and page_id.isdigit()) or len(page_id) > 20:
        raise ValueError(f"pageId must be a page id (digits, at most 20), not {shown(given)}")
    space_key = args.get("spaceKey")
    if space_key is not None and (not isinstance(space_key, str) or not 0 < len(space_key) <= 255):
        raise ValueError(f"spaceKey must be a space key (a text of 1 to 255 characters), not {shown(space_key)}")
    version = args.get("version")
    if version is not None and (not isinstance(version, int) or isinstance(version, bool)):
        raise ValueError(f"version must be the page's version number (a whole number), not {shown(version)}")
    return SnapshotArgs(page_id=int(page_id), space_key=space_key, version=version)


@job("page-snapshot", parse_args)
def page_snapshot(ctx: JobContext, args: SnapshotArgs) -> JobResult:
    clauses = [cql.field_eq("type", "page"), cql.id_eq(args.page_id)]
    if args.space_key:
        clauses.insert(0, cql.field_in("space", [args.space_key]))
    pages = list(ctx.confluence.search_content(cql.and_(*clauses), expand=["version", "space"], limit=1))
    if not pages:
        # Deleted, moved out of the space, or not visible to the app: nothing to snapshot.
        return JobResult({"pageId": args.page_id, "found": False})
    page = pages[0]
    version = page.get("version", {}).get("number")
    record = {
        "pageId": str(page["id"]),
        "title": page.get("title"),
        "spaceKey": page.get("space", {}).get("key"),
        "version": version,
        "lastModified": page.get("version", {}).get("when"),
        "capturedAt": clock.now(),
        "requestId": ctx.request.request_id,
    }
    # Keyed by page and version: a redelivered job overwrites its own record, never adds a second.
    ctx.results.put(SNAPSHOT, f"{page['id']}#v{version}", record)
    return JobResult({"pageId": args.page_id, "found": True, "version": version})
