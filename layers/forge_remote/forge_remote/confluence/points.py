"""What a Confluence request costs in rate-limit points: estimated before it is sent, counted after.

As Atlassian's "Rate limiting" page for Confluence Cloud documents it (enforced since early 2026):
every request costs 1 point, plus ``CORE`` (1) per core object returned (pages, blog posts, spaces,
attachments, comments, labels, search results...: a search returning 25 pages costs 26) and
``IDENTITY`` (2) per identity object (users, groups, permissions and restrictions: a user lookup costs
3). Writes (POST, PUT, PATCH, DELETE) cost 1 flat; a refused request (429) costs nothing.

- ``request_estimate``: an upper bound of the cost, known before the request is sent, for a budget
  reservation: a listing is reserved at its ``limit`` (else ``DEFAULT_PAGE_SIZE``, at most
  ``MAX_LIMIT``) objects, a path not known to return one object is reserved as a listing.
- ``response_points``: what the answer was charged, from its status and JSON document.
- ``object_points``: ``CORE`` or ``IDENTITY``, for what a path returns.

A path may be relative to ``/wiki`` (``/api/v2/pages``), under it (``/wiki/rest/api/user``) or a full
URL: only the part from ``/wiki`` (else from the first ``/rest`` or ``/api``) is read. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from urllib.parse import parse_qsl, urlsplit

CORE, IDENTITY = 1, 2  # points per object returned
REQUEST = 1  # points per request, whatever it returns
DEFAULT_PAGE_SIZE = 25  # Confluence's default ``limit`` of a listing
# A larger ``limit`` is reserved as this many objects: Confluence caps its pages far lower (250 in v2),
# and a reservation of millions of points for one request would starve every other job of the budget.
MAX_LIMIT = 1000
REFUSED = 429  # a request refused by the rate limiter is not charged

# v2 collections whose ``/<collection>/{id}`` is one object (``/pages/{id}/children`` is a listing).
_V2_SINGLE_COLLECTIONS = frozenset(
    {
        "pages",
        "blogposts",
        "spaces",
        "attachments",
        "footer-comments",
        "inline-comments",
        "custom-content",
        "whiteboards",
        "databases",
        "folders",
        "embeds",
        "tasks",
    }
)
_V2_SINGLE_CHILDREN = frozenset({"versions", "properties"})  # ``/pages/{id}/versions/{n}``: one object
# A path with one of these segments returns users or groups (/rest/api/user/..., /rest/api/search/user,
# /api/v2/pages/{id}/likes/users): the same reading as the Confluence emulator's (local/rate_limits.py).
_IDENTITY_SEGMENTS = frozenset({"user", "users", "group", "groups", "member", "members", "memberships"})
_V1_SINGLE_USER = frozenset({"current", "anonymous", "email"})  # ``/rest/api/user/current``
_V1_SINGLE_GROUP = frozenset({"by-id", "by-name"})  # ``/rest/api/group/by-id?id=``


def object_points(path: str) -> int:
    """``IDENTITY`` for a path that returns users, groups, permissions or restrictions, else ``CORE``."""
    segments = _segments(path)
    # /rest/api/space/{key}/permission, /rest/api/content/{id}/restriction, v2 .../permissions, /space-permissions
    if any("permission" in segment or "restriction" in segment for segment in segments):
        return IDENTITY
    if not _IDENTITY_SEGMENTS.isdisjoint(segments):  # /rest/api/search/user, .../likes/users, .../members
        return IDENTITY
    match segments:
        case ["rest", "api", group, *_] if group.startswith("group"):  # /group, /group/member, /group/{id}/...
            return IDENTITY
        case ["api", "v2", users, *_] if users.startswith("user"):  # /users, /users-bulk, /user/access/...
            return IDENTITY
        case _:
            return CORE


def request_estimate(method: str, path: str, params: Mapping[str, str] | None) -> int:
    """An upper bound of what the request will cost, known before it is sent, for a budget reservation.

    Not a GET: 1. A GET of one object (``/api/v2/pages/{id}``, ``/rest/api/content/{id}``,
    ``/rest/api/user``, ``/rest/api/user/current``, ``/rest/api/space/{key}``...): 1 plus its points.
    Any other GET, listings and unknown paths alike: 1 plus ``limit`` objects' points, ``limit`` from
    ``params`` or the path's query (the larger if both), else ``DEFAULT_PAGE_SIZE``; at most ``MAX_LIMIT``.
    """
    if method.strip().upper() != "GET":
        return REQUEST
    points = object_points(path)
    if _single_object(_segments(path)):
        return REQUEST + points
    return REQUEST + _limit(path, params) * points


def response_points(method: str, path: str, status: int, document: object) -> int:
    """What Atlassian charges for the answer: 0 for a 429 (refused, whatever the method); 1 for any
    other answer to a request that is not a GET, and for a GET's non-2xx answer; for a GET's 2xx
    answer 1 plus its objects' points: a ``results`` list counts its length (a top-level JSON list too),
    any other JSON object counts as one object, no body (or a bare value) as none."""
    if status == REFUSED:
        return 0
    if method.strip().upper() != "GET" or not 200 <= status < 300:
        return REQUEST
    return REQUEST + _objects(document) * object_points(path)


# -- reading paths ---------------------------------------------------------------------------------------
def _api_path(path: str) -> str:
    """The path part of ``path`` (a path or a full URL) from ``/wiki`` on, without ``/wiki``; else from
    the first ``/rest`` or ``/api`` segment; else all of it."""
    try:
        only = urlsplit(path).path if "://" in path else path.split("?", 1)[0].split("#", 1)[0]
    except ValueError:  # e.g. an unbalanced "[" in a URL's authority
        only = path.split("?", 1)[0]
    # Case as sent: Confluence's paths are case-sensitive, and a space key ("USER") is not a segment name.
    wiki = _segment_index(only, "/wiki")
    if wiki is not None:
        return only[wiki + len("/wiki") :]
    starts = [i for i in (_segment_index(only, "/rest"), _segment_index(only, "/api")) if i is not None]
    return only[min(starts) :] if starts else only


def _segment_index(path: str, prefix: str) -> int | None:
    """Where ``prefix`` starts as whole segments of ``path`` (``/wiki`` but not ``/wikis``), or None."""
    start = path.find(prefix)
    while start >= 0:
        end = start + len(prefix)
        if end == len(path) or path[end] == "/":
            return start
        start = path.find(prefix, start + 1)
    return None


def _segments(path: str) -> list[str]:
    return [segment for segment in _api_path(path).split("/") if segment]


def _single_object(segments: Sequence[str]) -> bool:
    """Whether a GET of this path returns one object rather than a listing (unknown: a listing)."""
    match segments:
        case ["api", "v2", collection, _]:
            single = collection in _V2_SINGLE_COLLECTIONS
        case ["api", "v2", collection, _, child, _]:
            single = collection in _V2_SINGLE_COLLECTIONS and child in _V2_SINGLE_CHILDREN
        case ["rest", "api", "content", content_id]:
            single = content_id.isascii() and content_id.isdigit()  # not /content/search or /content/scan
        case ["rest", "api", "user"] | ["rest", "api", "space", _]:  # /user?accountId=..., /space/{key}
            single = True
        case ["rest", "api", "user", which]:
            single = which in _V1_SINGLE_USER
        case ["rest", "api", "group", which]:
            single = which in _V1_SINGLE_GROUP
        case _:
            single = False
    return single


def _limit(path: str, params: Mapping[str, str] | None) -> int:
    """The listing's page size as requested: the largest valid ``limit`` in ``params`` and in the
    path's query; ``DEFAULT_PAGE_SIZE`` when none is a positive integer; at most ``MAX_LIMIT``."""
    candidates: list[object] = []
    if params:
        candidates.append(params.get("limit"))
    if "?" in path:
        query = path.split("?", 1)[1].split("#", 1)[0]
        candidates += [value for key, value in parse_qsl(query, keep_blank_values=True) if key == "limit"]
    limits = [number for value in candidates if (number := _positive(value)) is not None]
    return min(max(limits), MAX_LIMIT) if limits else DEFAULT_PAGE_SIZE


def _positive(value: object) -> int | None:
    """A positive integer given as ASCII digits (or as an int), else None; a huge one as ``MAX_LIMIT``."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value > 0 else None
    if not isinstance(value, str):
        return None
    # Strict: a limit the server may not read as its number (" 5", "+5") may be read as its default.
    if not (value.isascii() and value.isdigit()):
        return None
    text = value.lstrip("0")
    if not text:
        return None
    return MAX_LIMIT if len(text) > len(str(MAX_LIMIT)) else int(text)  # the caller caps it anyway


def _objects(document: object) -> int:
    """How many objects a GET's JSON answer returned."""
    if isinstance(document, dict):
        results = document.get("results")
        return len(results) if isinstance(results, list) else 1
    if isinstance(document, list):
        return len(document)
    return 0
