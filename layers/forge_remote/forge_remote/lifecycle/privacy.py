"""Personal data: which Atlassian accounts an installation's items hold, reporting them, and erasing them.

Atlassian's user privacy guide for app developers (see docs/data-lifecycle.md): an app that stores
personal data reports the account ids it holds, with the time it last updated each one, to
``POST https://api.atlassian.com/app/report-accounts/`` (``{"accounts": [{"accountId", "updatedAt"}]}``,
at most 90 a request, authenticated with the app's token; Forge's scope ``report:personal-data``). The
answer is 204 when nothing is to be done, or 200 with ``{"accounts": [{"accountId", "status"}]}`` where
``status`` is ``closed`` (erase that account's personal data) or ``updated`` (refresh or drop cached
profile data); 429 carries ``Retry-After``.

- ``held_accounts``: every account id in the installation's partition of both tables (token sort keys
  ``USER#``/``OFFLINE#``, and any attribute or JSON document field that names an account:
  ``accountId``, ``requestedBy``, ...), with the latest time an item holding it was written. Generic:
  it lists no kinds of item, so items other modules add are covered. ``accounts_in_item`` is the
  same test for one item (the uninstall uses it).
- ``in_cycle_order`` / ``cycle_key``: the order a report cycle sends accounts in, by a digest of the
  id, so the cycle's resume point is a key that names nobody and that erasing accounts cannot shift.
- ``PersonalDataReporter.report``: one request for at most 90 accounts. A malformed or ambiguous answer
  (not JSON, an account that was not asked about, an unknown status, one account twice) raises
  ``MalformedReportAnswer`` and nothing is acted on. Error text the API sends back is stripped of the
  token and of every account id the job handled before it becomes a reason (DLQ, status page, logs).
- ``PersonalDataEraser``: ``erase`` (closed) deletes the account's tokens and items keyed by it, and
  rewrites every other item that mentions it: the id becomes ``unknown`` and the person's name, email
  and picture a neutral placeholder, so records keep their shape. ``drop_profiles`` (updated) empties
  the cached profile fields of that account's person objects, keeping the id (the next job run
  fetches them fresh). A rewrite updates only the attributes it changes, on condition that they
  still hold what was read (a newer write, or a ``ttl`` set meanwhile, is never overwritten: the item
  is read again and the rewrite retried, a bounded number of times). The walk stops when the time
  budget runs low and says where it got to, so the caller resumes it later.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

from forge_remote import clock
from forge_remote.confluence.api_hosts import require_allowed_api_base
from forge_remote.errors import ConfluenceError, ConfluenceUnavailable, PermanentFailure, RetryLater, TokenRejected
from forge_remote.storage.results import encode
from forge_remote.storage.table_keys import (
    ACCOUNT_ID_PATTERN,
    OFFLINE_TOKEN_SK_PREFIX,
    PRIVACY_REPORT_SK,
    USER_TOKEN_SK_PREFIX,
    installation_pk,
)
from forge_remote.tokens.store import token_sha256

if TYPE_CHECKING:
    import requests
    from mypy_boto3_dynamodb import DynamoDBClient

logger = logging.getLogger(__name__)

REPORT_PATH = "/app/report-accounts/"
MAX_ACCOUNTS_PER_REPORT = 90
DEFAULT_RATE_LIMIT_DELAY_S = 60.0  # a 429 without a usable Retry-After
UNKNOWN_ACCOUNT = "unknown"  # Atlassian's own id for an unknown or deleted user: never reported
FORMER_USER = "Former user"  # what Atlassian shows in place of a deleted account's name
# Fields that name an account, in items and in the JSON documents they hold.
ACCOUNT_FIELDS = frozenset(
    {"accountId", "requestedBy", "authorId", "ownerId", "lastOwnerId", "creatorId", "principal", "userAccountId"}
)
# Cached profile data of a person object (a JSON object whose ``accountId`` is the account).
PROFILE_FIELDS = frozenset({"displayName", "publicName", "email", "profilePicture", "username", "userKey", "timeZone"})
NAME_FIELDS = frozenset({"displayName", "publicName"})
_TIME_ATTRIBUTES = ("updatedAt", "receivedAt", "createdAt")
_PAGE_SIZE = 100
# Characters an account id is made of: a mention is a whole run of them, never part of a longer id.
_ID_CHARS = "A-Za-z0-9:_-"
MAX_WRITE_ATTEMPTS = 4  # read, rewrite, lose a race to a newer write: at most this many times per item
MIN_ERASE_MS = 2_000  # the eraser does not start an item with less time than this left
_TRACE_ID = re.compile(r"[0-9A-Za-z-]{1,64}")


class MalformedReportAnswer(PermanentFailure):
    """The reporting API answered something this code cannot act on safely: nothing is erased."""


@dataclass(frozen=True)
class ReportedAccount:
    account_id: str
    updated_at: float  # epoch seconds

    def as_json(self) -> dict[str, str]:
        when = datetime.fromtimestamp(self.updated_at, UTC).isoformat(timespec="milliseconds")
        return {"accountId": self.account_id, "updatedAt": when.replace("+00:00", "Z")}


# -- which accounts an installation's items hold ---------------------------------------------------
def is_account_id(value: object) -> bool:
    return isinstance(value, str) and value != UNKNOWN_ACCOUNT and bool(ACCOUNT_ID_PATTERN.fullmatch(value))


def _json_document(text: str) -> Any:
    """The JSON object or array a string attribute holds, else None."""
    if not text or text[0] not in "{[":
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None


def _accounts_in_json(value: Any, found: set[str]) -> None:
    if isinstance(value, dict):
        for key, inner in value.items():
            if key in ACCOUNT_FIELDS and is_account_id(inner):
                found.add(inner)
            else:
                _accounts_in_json(inner, found)
    elif isinstance(value, list):
        for inner in value:
            _accounts_in_json(inner, found)


def _accounts_in_attribute(name: str, value: dict[str, Any], found: set[str]) -> None:
    if "S" in value:
        text = value["S"]
        if name in ACCOUNT_FIELDS and is_account_id(text):
            found.add(text)
        elif (document := _json_document(text)) is not None:
            _accounts_in_json(document, found)
    elif "M" in value:
        for key, inner in value["M"].items():
            _accounts_in_attribute(key, inner, found)
    elif "L" in value:
        for inner in value["L"]:
            _accounts_in_attribute(name, inner, found)
    elif "SS" in value and name in ACCOUNT_FIELDS:
        found.update(v for v in value["SS"] if is_account_id(v))


def _item_time(item: dict[str, Any]) -> float | None:
    for name in _TIME_ATTRIBUTES:
        number = item.get(name, {}).get("N")
        if isinstance(number, str):
            return float(number)
    return None


def _account_in_sort_key(sk: str) -> str | None:
    for prefix in (USER_TOKEN_SK_PREFIX, OFFLINE_TOKEN_SK_PREFIX):
        if sk.startswith(prefix) and is_account_id(sk[len(prefix) :]):
            return sk[len(prefix) :]
    return None


def _partition(
    client: DynamoDBClient, table_name: str, installation_id: str, start_after: str | None = None
) -> Iterator[dict[str, Any]]:
    """Every item of the installation's partition in sort-key order, after ``start_after`` if given."""
    pk = {"S": installation_pk(installation_id)}
    query: dict[str, Any] = {
        "TableName": table_name,
        "KeyConditionExpression": "pk = :pk",
        "ExpressionAttributeValues": {":pk": pk},
        "ConsistentRead": True,
        "Limit": _PAGE_SIZE,
    }
    if start_after is not None:
        query["ExclusiveStartKey"] = {"pk": pk, "sk": {"S": start_after}}
    while True:
        page = client.query(**query)
        yield from page.get("Items", [])
        if not page.get("LastEvaluatedKey"):
            return
        query["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def held_accounts(
    client: DynamoDBClient, *, tokens_table: str, app_table: str, installation_id: str
) -> list[ReportedAccount]:
    """Every account id the installation's items hold, with the latest time one of them was written,
    sorted by account id. The tokens table is read for sort keys and times only: no token is kept."""
    latest: dict[str, float] = {}
    now = clock.now()

    def note(accounts: Iterable[str], when: float | None) -> None:
        for account in accounts:
            latest[account] = max(latest.get(account, 0.0), when if when is not None else now)

    for item in _partition(client, tokens_table, installation_id):
        account = _account_in_sort_key(item["sk"]["S"])
        if account is not None:
            note([account], _item_time(item))
    for item in _partition(client, app_table, installation_id):
        note(accounts_in_item(item), _item_time(item))
    return [ReportedAccount(account, latest[account]) for account in sorted(latest)]


def accounts_in_item(item: dict[str, Any]) -> set[str]:
    """The account ids one app-table item names (attributes and JSON fields; not its keys)."""
    found: set[str] = set()
    for name, value in item.items():
        if name not in ("pk", "sk"):
            _accounts_in_attribute(name, value, found)
    return found


def cycle_key(account_id: str) -> str:
    """Where an account comes in a report cycle: a digest, so the stored resume point names nobody,
    and a total order that no id's shape (prefixes, ``557058:``, ``qm:``) can make ambiguous."""
    return hashlib.sha256(account_id.encode()).hexdigest()


def in_cycle_order(accounts: Iterable[ReportedAccount]) -> list[ReportedAccount]:
    return sorted(accounts, key=lambda a: cycle_key(a.account_id))


def batches(accounts: list[ReportedAccount], size: int = MAX_ACCOUNTS_PER_REPORT) -> list[list[ReportedAccount]]:
    if not 1 <= size <= MAX_ACCOUNTS_PER_REPORT:
        raise ValueError(f"a report carries 1 to {MAX_ACCOUNTS_PER_REPORT} accounts")
    return [accounts[i : i + size] for i in range(0, len(accounts), size)]


# -- the reporting API -------------------------------------------------------------------------------
def report_url(api_base_url: str, allowed_hosts: Collection[str]) -> str:
    """The reporting endpoint on the installation's API host: ``https://api.atlassian.com/app/report-accounts/``
    for ``https://api.atlassian.com/ex/confluence/<cloudId>`` (the apiBaseUrl is checked first)."""
    base = urlsplit(require_allowed_api_base(api_base_url, allowed_hosts))
    return f"{base.scheme}://{base.netloc}{REPORT_PATH}"


def parse_answer(document: Any, asked: Collection[str]) -> dict[str, str]:
    """``{"accounts": [{"accountId", "status"}]}`` as account -> ``closed``/``updated``; anything else,
    or an account not asked about or named twice, raises ``MalformedReportAnswer``."""
    if not isinstance(document, dict) or not isinstance(document.get("accounts"), list):
        raise MalformedReportAnswer("personal data report answer has no accounts list; nothing erased")
    statuses: dict[str, str] = {}
    for entry in document["accounts"]:
        if not isinstance(entry, dict):
            raise MalformedReportAnswer("personal data report answer lists a non-object; nothing erased")
        account, status = entry.get("accountId"), entry.get("status")
        if not isinstance(account, str) or account not in asked:
            raise MalformedReportAnswer("personal data report answer names an account not reported; nothing erased")
        if status not in ("closed", "updated"):
            raise MalformedReportAnswer("personal data report answer has an unknown status; nothing erased")
        if account in statuses:
            raise MalformedReportAnswer("personal data report answer names an account twice; nothing erased")
        statuses[account] = status
    return statuses


class PersonalDataReporter:
    """One ``POST /app/report-accounts/`` per call, with the installation's app token.

    The token is read from ``token()`` (the job's lease: valid long enough, re-checked) and sent only
    to the apiBaseUrl's host, without following redirects. A request is not retried here: a rate
    limit or an outage defers the job (``RetryLater`` with the server's ``Retry-After``), and the
    worker's deferral runs it again later; a refused token is ``TokenRejected`` (the worker
    invalidates exactly that token).

    ``redact_accounts``: every account id the job handles (the batch's are added per request). An
    API that quotes what it was sent in an error body would otherwise put other people's ids into
    the job's reason, which reaches the DLQ, the status page other users of the site read, and logs.
    """

    def __init__(
        self,
        api_base_url: str,
        token: Callable[[], str],
        *,
        allowed_hosts: Collection[str],
        remaining_ms: Callable[[], int] | None = None,
        session: requests.Session | None = None,
        timeout_s: tuple[float, float] = (3.05, 20.0),
        redact_accounts: Collection[str] = (),
    ) -> None:
        self.url = report_url(api_base_url, allowed_hosts)
        self._token = token
        self._remaining_ms = remaining_ms
        self._session = session
        self._timeout_s = timeout_s
        self._redact = frozenset(redact_accounts)
        self.request_count = 0

    def report(self, accounts: list[ReportedAccount]) -> dict[str, str]:
        """Account -> ``closed``/``updated`` for the accounts that need action (empty: none do)."""
        # Imported here: requests (and outbound, which imports it) stay off the cold start of the
        # modules that only erase (the uninstall imports this one for its eraser).
        import requests

        from forge_remote.outbound import RATE_LIMITED, bounded_timeouts, error_message, redact, retry_after_s, send

        if not 1 <= len(accounts) <= MAX_ACCOUNTS_PER_REPORT:
            raise ValueError(f"a report carries 1 to {MAX_ACCOUNTS_PER_REPORT} accounts")
        token = self._token()
        timeouts = (
            self._timeout_s
            if self._remaining_ms is None
            else bounded_timeouts(self._timeout_s, self._remaining_ms, 2.0, "a personal data report")
        )
        self.request_count += 1
        try:
            body = {"accounts": [a.as_json() for a in accounts]}
            response = send("POST", self.url, token=token, timeout=timeouts, session=self._session, json=body)
        except requests.RequestException as exc:
            raise RetryLater(
                f"personal data report failed ({type(exc).__name__})", DEFAULT_RATE_LIMIT_DELAY_S
            ) from None
        secrets = sorted(self._redact | {a.account_id for a in accounts})
        trace = response.headers.get("atl-traceid")
        if trace is not None and (not _TRACE_ID.fullmatch(trace) or redact(trace, *secrets) != trace):
            trace = None  # logged and kept with the error: it could quote anything, an account id too
        status = response.status_code
        logger.info("personal data report -> %d", status, extra={"accounts": len(accounts), "trace": trace})
        if status == 204:
            return {}
        if status == 200:
            try:
                document = response.json()
            except ValueError:
                raise MalformedReportAnswer("personal data report answer is not JSON; nothing erased") from None
            return parse_answer(document, {a.account_id for a in accounts})
        if status in RATE_LIMITED:
            hint = retry_after_s(response.headers.get("Retry-After"), time.time())  # the server's wall time
            delay = hint if hint is not None else DEFAULT_RATE_LIMIT_DELAY_S
            raise RetryLater(f"personal data report HTTP {status}; retry after {delay:.0f}s", delay)
        if status == 401:
            raise TokenRejected(401, trace, token_sha256=token_sha256(token))
        if status >= 500:
            raise ConfluenceUnavailable(status, error_message(response, token, *secrets), trace)
        # 400 (a body it refuses), 403 (no report:personal-data scope), a redirect: never right by retrying.
        raise ConfluenceError(
            status, f"personal data report refused: {error_message(response, token, *secrets)}", trace
        )


# -- erasing and dropping ----------------------------------------------------------------------------
ItemOutcome = Literal["deleted", "rewritten", "unchanged", "gone", "contended"]


def keyed_by(sk: str, accounts: Collection[str]) -> bool:
    """A per-person record (``USER_DIGEST#<accountId>``): one of the key's ``#`` parts is one of the ids."""
    return any(part in accounts for part in sk.split("#"))


class _Scrub:
    """What one rewrite removes: ``closed`` accounts entirely (ids, names, email, picture), or the
    cached profile fields of ``updated`` ones (ids kept)."""

    def __init__(self, accounts: Collection[str], *, closed: bool) -> None:
        self.accounts = frozenset(accounts)
        self.closed = closed
        alternatives = "|".join(re.escape(a) for a in sorted(self.accounts, key=len, reverse=True))
        # A whole id only: ``557058:a`` closed must not turn ``557058:ab`` into ``unknownb``.
        self._mention = re.compile(f"(?<![{_ID_CHARS}])(?:{alternatives})(?![{_ID_CHARS}])")

    def keyed_by(self, sk: str) -> bool:
        return self.closed and keyed_by(sk, self.accounts)

    def text(self, text: str) -> str:
        return self._mention.sub(UNKNOWN_ACCOUNT, text) if self.closed else text

    def json(self, value: Any) -> Any:
        if isinstance(value, dict):
            person = value.get("accountId") in self.accounts
            scrubbed: dict[str, Any] = {}
            for key, inner in value.items():
                if person and key in PROFILE_FIELDS:
                    if not self.closed:
                        scrubbed[key] = None
                    elif isinstance(inner, str):
                        scrubbed[key] = FORMER_USER if key in NAME_FIELDS else ""
                    else:
                        scrubbed[key] = None
                else:
                    scrubbed[key] = self.json(inner)
            return scrubbed
        if isinstance(value, list):
            return [self.json(inner) for inner in value]
        if isinstance(value, str):
            return self.text(value)
        return value

    def attribute(self, value: dict[str, Any]) -> dict[str, Any]:
        if "S" in value:
            text = value["S"]
            document = _json_document(text)
            if document is not None:
                scrubbed = self.json(document)
                return value if scrubbed == document else {"S": encode(scrubbed)}
            return {"S": self.text(text)}
        if "M" in value:
            return {"M": {k: self.attribute(v) for k, v in value["M"].items()}}
        if "L" in value:
            return {"L": [self.attribute(v) for v in value["L"]]}
        if "SS" in value and self.closed:
            return {"SS": sorted({self.text(v) for v in value["SS"]})}
        return value

    def item(self, item: dict[str, Any]) -> dict[str, Any]:
        return {name: value if name in ("pk", "sk") else self.attribute(value) for name, value in item.items()}


@dataclass(frozen=True)
class ErasureReport:
    tokens_deleted: int = 0
    items_deleted: int = 0
    items_rewritten: int = 0
    complete: bool = True
    # Not complete: the sort key of the last item settled (None: none yet), to pass as ``start_after``.
    cursor: str | None = None
    contended: bool = False  # stopped at an item that kept changing under it, not for lack of time


class PersonalDataEraser:
    def __init__(
        self,
        client: DynamoDBClient,
        *,
        tokens_table: str,
        app_table: str,
        remaining_ms: Callable[[], int] | None = None,
        min_remaining_ms: int = MIN_ERASE_MS,
    ) -> None:
        self._client = client
        self.tokens_table = tokens_table
        self.app_table = app_table
        self._remaining_ms = remaining_ms
        self._min_remaining_ms = min_remaining_ms

    def erase(
        self, installation_id: str, accounts: Collection[str], *, start_after: str | None = None
    ) -> ErasureReport:
        """Closed accounts: their tokens and the items keyed by them deleted, every mention rewritten."""
        return self.apply(installation_id, closed=accounts, start_after=start_after)

    def drop_profiles(
        self, installation_id: str, accounts: Collection[str], *, start_after: str | None = None
    ) -> ErasureReport:
        """Updated accounts: the cached profile fields of their person objects emptied (ids kept)."""
        return self.apply(installation_id, updated=accounts, start_after=start_after)

    def apply(
        self,
        installation_id: str,
        *,
        closed: Collection[str] = (),
        updated: Collection[str] = (),
        start_after: str | None = None,
    ) -> ErasureReport:
        """One walk of the app-table partition for both kinds of answer, from ``start_after`` on.

        The walk stops before an item when less than ``min_remaining_ms`` is left, or at an item that
        kept changing under it; the report then says where to resume. The report's own progress
        item is not touched: it holds the work list of this very erasure.
        """
        gone = frozenset(a for a in closed if is_account_id(a))
        changed = frozenset(a for a in updated if is_account_id(a) and a not in gone)
        if not gone and not changed:
            return ErasureReport()
        scrubs = [_Scrub(accounts, closed=kind) for accounts, kind in ((gone, True), (changed, False)) if accounts]
        tokens_deleted = self._delete_tokens(installation_id, gone)
        deleted = rewritten = 0
        cursor = start_after
        for item in _partition(self._client, self.app_table, installation_id, start_after):
            sk = item["sk"]["S"]
            if sk == PRIVACY_REPORT_SK:
                cursor = sk
                continue
            if self._remaining_ms is not None and self._remaining_ms() < self._min_remaining_ms:
                return ErasureReport(tokens_deleted, deleted, rewritten, complete=False, cursor=cursor)
            outcome = self._settle(item, scrubs)
            if outcome == "contended":
                return ErasureReport(tokens_deleted, deleted, rewritten, complete=False, cursor=cursor, contended=True)
            deleted += outcome == "deleted"
            rewritten += outcome == "rewritten"
            cursor = sk
        return ErasureReport(tokens_deleted, deleted, rewritten)

    def erase_item(self, item: dict[str, Any], accounts: Collection[str]) -> ItemOutcome:
        """One item, read by the caller, without these accounts (deleted if keyed by one of them)."""
        ids = frozenset(a for a in accounts if is_account_id(a))
        return self._settle(item, [_Scrub(ids, closed=True)]) if ids else "unchanged"

    def _delete_tokens(self, installation_id: str, accounts: Collection[str]) -> int:
        pk = {"S": installation_pk(installation_id)}
        deleted = 0
        for account in sorted(accounts):
            for prefix in (USER_TOKEN_SK_PREFIX, OFFLINE_TOKEN_SK_PREFIX):
                response = self._client.delete_item(
                    TableName=self.tokens_table,
                    Key={"pk": pk, "sk": {"S": f"{prefix}{account}"}},
                    ReturnValues="ALL_OLD",
                )
                deleted += 1 if response.get("Attributes") else 0
        return deleted

    def _settle(self, item: dict[str, Any], scrubs: list[_Scrub]) -> ItemOutcome:
        """Delete or rewrite one item; a write that finds the item changed since it was read reads it
        again and starts over, at most ``MAX_WRITE_ATTEMPTS`` times."""
        key = {"pk": item["pk"], "sk": item["sk"]}
        current: dict[str, Any] | None = item
        for _ in range(MAX_WRITE_ATTEMPTS):
            if current is None:
                return "gone"
            if any(scrub.keyed_by(current["sk"]["S"]) for scrub in scrubs):
                # Keyed by the person (a per-user record): nothing of it is left without them.
                self._client.delete_item(TableName=self.app_table, Key=key)
                return "deleted"
            scrubbed = current
            for scrub in scrubs:
                scrubbed = scrub.item(scrubbed)
            changes = {name: value for name, value in scrubbed.items() if current.get(name) != value}
            if not changes:
                return "unchanged"
            if self._rewrite(key, current, changes):
                return "rewritten"
            current = self._client.get_item(TableName=self.app_table, Key=key, ConsistentRead=True).get("Item")
        return "contended"

    def _rewrite(self, key: dict[str, Any], read: dict[str, Any], changes: dict[str, Any]) -> bool:
        """SET only the changed attributes, on condition that each still holds what was read: a newer
        write of them fails the condition (False), and attributes this does not change (a ``ttl`` the
        uninstall set, a field another writer added) are never written at all."""
        names: dict[str, str] = {}
        values: dict[str, Any] = {}
        sets: list[str] = []
        checks = ["attribute_exists(pk)"]
        for i, (name, value) in enumerate(sorted(changes.items())):
            names[f"#a{i}"] = name
            values[f":new{i}"] = value
            values[f":old{i}"] = read[name]
            sets.append(f"#a{i} = :new{i}")
            checks.append(f"#a{i} = :old{i}")
        try:
            self._client.update_item(
                TableName=self.app_table,
                Key=key,
                UpdateExpression="SET " + ", ".join(sets),
                ConditionExpression=" AND ".join(checks),
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=values,
            )
        except self._client.exceptions.ConditionalCheckFailedException:
            return False
        return True
