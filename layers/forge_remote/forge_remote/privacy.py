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
  it lists no kinds of item, so items other modules add are covered.
- ``PersonalDataReporter.report``: one request for at most 90 accounts. A malformed or ambiguous answer
  (not JSON, an account that was not asked about, an unknown status, one account twice) raises
  ``MalformedReportAnswer`` and nothing is acted on.
- ``PersonalDataEraser``: ``erase`` (closed) deletes the account's tokens and items keyed by it, and
  rewrites every other item that mentions it: the id becomes ``unknown`` and the person's name, email
  and picture a neutral placeholder, so records keep their shape. ``drop_profiles`` (updated) empties
  the cached profile fields of that account's person objects, keeping the id (the next job run
  fetches them fresh).
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import requests

from forge_remote import clock
from forge_remote.confluence import bounded_timeouts, error_message, retry_after_s, shared_session
from forge_remote.errors import ConfluenceError, ConfluenceUnavailable, PermanentFailure, RetryLater, TokenRejected
from forge_remote.keys import (
    ACCOUNT_ID_PATTERN,
    OFFLINE_TOKEN_SK_PREFIX,
    USER_TOKEN_SK_PREFIX,
    installation_pk,
)
from forge_remote.results import encode
from forge_remote.tokens import token_sha256
from forge_remote.urls import require_allowed_api_base

if TYPE_CHECKING:
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


def _partition(client: DynamoDBClient, table_name: str, installation_id: str) -> Iterator[dict[str, Any]]:
    paginator = client.get_paginator("query")
    for page in paginator.paginate(
        TableName=table_name,
        KeyConditionExpression="pk = :pk",
        ExpressionAttributeValues={":pk": {"S": installation_pk(installation_id)}},
        ConsistentRead=True,
        PaginationConfig={"PageSize": _PAGE_SIZE},
    ):
        yield from page.get("Items", [])


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
        found: set[str] = set()
        for name, value in item.items():
            if name not in ("pk", "sk"):
                _accounts_in_attribute(name, value, found)
        note(found, _item_time(item))
    return [ReportedAccount(account, latest[account]) for account in sorted(latest)]


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
    ) -> None:
        self.url = report_url(api_base_url, allowed_hosts)
        self._token = token
        self._remaining_ms = remaining_ms
        self._session = session
        self._timeout_s = timeout_s
        self.request_count = 0

    def report(self, accounts: list[ReportedAccount]) -> dict[str, str]:
        """Account -> ``closed``/``updated`` for the accounts that need action (empty: none do)."""
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
            response = (self._session or shared_session()).post(
                self.url,
                json={"accounts": [a.as_json() for a in accounts]},
                headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
                timeout=timeouts,
                allow_redirects=False,
            )
        except requests.RequestException as exc:
            raise RetryLater(
                f"personal data report failed ({type(exc).__name__})", DEFAULT_RATE_LIMIT_DELAY_S
            ) from None
        trace = response.headers.get("atl-traceid")
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
        if status in (429, 503):
            hint = retry_after_s(response.headers.get("Retry-After"), time.time())  # the server's wall time
            delay = hint if hint is not None else DEFAULT_RATE_LIMIT_DELAY_S
            raise RetryLater(f"personal data report HTTP {status}; retry after {delay:.0f}s", delay)
        if status == 401:
            raise TokenRejected(401, trace, token_sha256=token_sha256(token))
        if status >= 500:
            raise ConfluenceUnavailable(status, error_message(response, token), trace)
        # 400 (a body it refuses), 403 (no report:personal-data scope), a redirect: never right by retrying.
        raise ConfluenceError(status, f"personal data report refused: {error_message(response, token)}", trace)


# -- erasing and dropping ----------------------------------------------------------------------------
def _scrub_json(value: Any, accounts: Collection[str], *, closed: bool) -> Any:
    """A copy of ``value`` without the accounts' personal data (see ``PersonalDataEraser``)."""
    if isinstance(value, dict):
        person = value.get("accountId") in accounts
        scrubbed: dict[str, Any] = {}
        for key, inner in value.items():
            if person and key in PROFILE_FIELDS:
                if not closed:
                    scrubbed[key] = None
                elif isinstance(inner, str):
                    scrubbed[key] = FORMER_USER if key in NAME_FIELDS else ""
                else:
                    scrubbed[key] = None
            else:
                scrubbed[key] = _scrub_json(inner, accounts, closed=closed)
        return scrubbed
    if isinstance(value, list):
        return [_scrub_json(inner, accounts, closed=closed) for inner in value]
    if closed and isinstance(value, str):
        return _replace_ids(value, accounts)
    return value


def _replace_ids(text: str, accounts: Collection[str]) -> str:
    for account in accounts:
        if account in text:
            text = re.sub(re.escape(account), UNKNOWN_ACCOUNT, text)
    return text


def _scrub_attribute(value: dict[str, Any], accounts: Collection[str], *, closed: bool) -> dict[str, Any]:
    if "S" in value:
        text = value["S"]
        document = _json_document(text)
        if document is not None:
            scrubbed = _scrub_json(document, accounts, closed=closed)
            return value if scrubbed == document else {"S": encode(scrubbed)}
        return {"S": _replace_ids(text, accounts)} if closed else value
    if "M" in value:
        return {"M": {k: _scrub_attribute(v, accounts, closed=closed) for k, v in value["M"].items()}}
    if "L" in value:
        return {"L": [_scrub_attribute(v, accounts, closed=closed) for v in value["L"]]}
    if "SS" in value and closed:
        return {"SS": sorted({_replace_ids(v, accounts) for v in value["SS"]})}
    return value


@dataclass(frozen=True)
class ErasureReport:
    tokens_deleted: int = 0
    items_deleted: int = 0
    items_rewritten: int = 0


class PersonalDataEraser:
    def __init__(self, client: DynamoDBClient, *, tokens_table: str, app_table: str) -> None:
        self._client = client
        self.tokens_table = tokens_table
        self.app_table = app_table

    def erase(self, installation_id: str, accounts: Collection[str]) -> ErasureReport:
        """Closed accounts: their tokens and the items keyed by them deleted, every mention rewritten."""
        accounts = frozenset(a for a in accounts if is_account_id(a))
        if not accounts:
            return ErasureReport()
        pk = {"S": installation_pk(installation_id)}
        tokens_deleted = 0
        for account in sorted(accounts):
            for prefix in (USER_TOKEN_SK_PREFIX, OFFLINE_TOKEN_SK_PREFIX):
                response = self._client.delete_item(
                    TableName=self.tokens_table,
                    Key={"pk": pk, "sk": {"S": f"{prefix}{account}"}},
                    ReturnValues="ALL_OLD",
                )
                tokens_deleted += 1 if response.get("Attributes") else 0
        deleted, rewritten = self._rewrite(installation_id, accounts, closed=True)
        return ErasureReport(tokens_deleted, deleted, rewritten)

    def drop_profiles(self, installation_id: str, accounts: Collection[str]) -> ErasureReport:
        """Updated accounts: the cached profile fields of their person objects emptied (ids kept)."""
        accounts = frozenset(a for a in accounts if is_account_id(a))
        if not accounts:
            return ErasureReport()
        _, rewritten = self._rewrite(installation_id, accounts, closed=False)
        return ErasureReport(items_rewritten=rewritten)

    def _rewrite(self, installation_id: str, accounts: frozenset[str], *, closed: bool) -> tuple[int, int]:
        deleted = rewritten = 0
        for item in _partition(self._client, self.app_table, installation_id):
            key = {"pk": item["pk"], "sk": item["sk"]}
            if closed and any(account in item["sk"]["S"] for account in accounts):
                # Keyed by the person (a per-user record): nothing of it is left without them.
                self._client.delete_item(TableName=self.app_table, Key=key)
                deleted += 1
                continue
            scrubbed = {
                name: value if name in ("pk", "sk") else _scrub_attribute(value, accounts, closed=closed)
                for name, value in item.items()
            }
            if scrubbed != item:
                try:
                    self._client.put_item(
                        TableName=self.app_table, Item=scrubbed, ConditionExpression="attribute_exists(pk)"
                    )
                except self._client.exceptions.ConditionalCheckFailedException:
                    continue  # deleted meanwhile: nothing left to erase
                rewritten += 1
        return deleted, rewritten
