"""``GET /api/pages/recent?days=7&limit=50``: pages the signed-in user can see that changed lately.

Acts as the user (the request's own user token), so Confluence answers with exactly what this user
may see. Answers within Forge's 25 s even when Confluence is slow: the search stops at the deadline
(or at ``limit``) and the answer says it is partial, and why.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from aws_lambda_powertools.event_handler.api_gateway import Router

from forge_remote import clock
from forge_remote.errors import RetryLater
from forge_remote.inbound.ui_calls import WholeNumber, accepts, ui_call

router = Router()

MAX_DAYS = 90
MAX_LIMIT = 200
PAGE_SIZE = 50
DAYS = WholeNumber("days", default=7, low=1, high=MAX_DAYS)
LIMIT = WholeNumber("limit", default=50, low=1, high=MAX_LIMIT)


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _page(item: dict[str, Any]) -> dict[str, Any]:
    """What the UI shows of a search result (v1 content with ``space,version`` expanded)."""
    space, version, links = (_object(item.get(name)) for name in ("space", "version", "_links"))
    return {
        "id": item.get("id"),
        "title": item.get("title"),
        "spaceKey": space.get("key"),
        "lastModified": version.get("when"),
        "webui": links.get("webui"),
    }


@router.get("/api/pages/recent")
@accepts(query=(DAYS, LIMIT))
def recent_pages() -> dict[str, Any]:
    call = ui_call(router)
    days, limit = call.inputs[DAYS], call.inputs[LIMIT]
    confluence = call.confluence_as_user()  # 403 JSON if the call carried no user token
    from forge_remote.confluence.cql import and_, date_gte, field_eq  # off the cold start of the other routes

    since = datetime.fromtimestamp(clock.now(), UTC) - timedelta(days=days)
    cql = and_(field_eq("type", "page"), date_gte("lastmodified", since)).order_by("lastmodified", desc=True)
    pages: list[dict[str, Any]] = []
    partial_reason = None
    try:
        for item in confluence.search_content(cql, expand=("space", "version"), limit=min(limit, PAGE_SIZE)):
            pages.append(_page(item))
            if len(pages) >= limit:
                partial_reason = f"stopped at limit={limit}"
                break
    except RetryLater as exc:  # the deadline, or Confluence asking us to wait longer than we have
        partial_reason = exc.reason
    answer: dict[str, Any] = {"days": days, "pages": pages, "partial": partial_reason is not None}
    if partial_reason:
        answer["partialReason"] = partial_reason
    return answer
