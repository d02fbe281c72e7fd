"""What an uninstall does to the installation's data: tokens now, the rest removed or set to expire.

``InstallationCleanup.uninstall`` marks the installation uninstalled (terminal; a retry keeps the first
time and deadline), deletes every item of its partition in the tokens table, then walks its partition
in the app table page by page:

- retention 0 (``DATA_RETENTION_DAYS``, the default): every item is deleted;
- retention N days: personal data goes at once, the rest is kept. An item that names an account
  (``privacy.accounts_in_item``: ``accountId``, ``requestedBy``, ... in attributes and JSON fields) is
  deleted if it is keyed by that account (``USER_DIGEST#<accountId>``) and otherwise rewritten
  without it (the id becomes ``unknown``, names ``Former user``), as for a closed account: once
  uninstalled, the installation is never in a personal data report again, and its app token is gone,
  so a closed account could not be erased during the retention. The report's progress item (its
  pending erasures name accounts) is deleted. Every item left gets ``ttl = uninstalledAt + N days``
  (an earlier ``ttl`` is kept), so DynamoDB removes it then. Readers never see an uninstalled
  installation's data anyway: its jobs are discarded and its routes refuse it.

Generic on purpose: the walk does not list kinds of item, so whatever a job or a later version stores
under ``INST#<installationId>`` goes too. Two kinds are left to their own (short) ``ttl``: the
registry item itself (the tombstone that refuses late token writes) and the ``FIT#`` once-records.

The same walk deletes what a realm migration left here once it committed (``lifecycle/migration.py``):
the installation is ``moved`` then, its data lives in another region's stack, and none of it is retained
here, whatever ``DATA_RETENTION_DAYS`` says (``UninstallMark.moved``).

Resumable and idempotent: after each page the walk records where it got to (``cleanupCursor`` on the
registry item); it stops when ``remaining_ms`` runs low (or at an item a concurrent writer kept
changing) and reports itself incomplete, and the next call (Forge's retry of preUninstall, or the
scheduled sweep over the registry's ``CLEANUP`` index) continues from there. Doing a page twice
changes nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from forge_remote.lifecycle.privacy import PersonalDataEraser, accounts_in_item, keyed_by
from forge_remote.storage.batch_delete import delete_keys
from forge_remote.storage.installations import InstallationRegistry, UninstallMark
from forge_remote.storage.table_keys import INSTALLATION_SK, ONCE_SK_PREFIX, PRIVACY_REPORT_SK, installation_pk
from forge_remote.tokens.store import TokenStore

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

logger = logging.getLogger(__name__)

DAY_S = 86400
PAGE_SIZE = 25  # one BatchWriteItem per page
MIN_PAGE_MS = 1500  # a page is not started with less time than this left (a query and a batch write)


@dataclass(frozen=True)
class CleanupReport:
    complete: bool
    tokens_deleted: int = 0
    deleted: int = 0  # app-table items deleted (all with retention 0; those keyed by an account otherwise)
    expiring: int = 0  # app-table items given the retention ``ttl``
    pages: int = 0
    scrubbed: int = 0  # app-table items rewritten without the accounts they named (retention only)

    def as_dict(self) -> dict[str, Any]:
        return {
            "cleanup": "complete" if self.complete else "incomplete",
            "tokensDeleted": self.tokens_deleted,
            "itemsDeleted": self.deleted,
            "itemsScrubbed": self.scrubbed,
            "itemsExpiring": self.expiring,
        }


def _deleted_at_once(item: dict[str, Any]) -> bool:
    """With a retention period, what goes at the uninstall itself: items keyed by an account they name
    (``USER_DIGEST#<accountId>``), and the report's progress (its pending erasures name accounts)."""
    sk = item["sk"]["S"]
    return sk == PRIVACY_REPORT_SK or keyed_by(sk, accounts_in_item(item))


def _kept_by_walk(sk: str) -> bool:
    """Items the walk leaves to their own ``ttl``: the tombstone and the FIT once-records."""
    return sk == INSTALLATION_SK or sk.startswith(ONCE_SK_PREFIX)


class InstallationCleanup:
    def __init__(
        self,
        client: DynamoDBClient,
        *,
        tokens: TokenStore,
        installations: InstallationRegistry,
        retention_days: int = 0,
        page_size: int = PAGE_SIZE,
    ) -> None:
        self._client = client
        self.tokens = tokens
        self.installations = installations
        self.table_name = installations.table_name
        self.retention_s = retention_days * DAY_S
        self.page_size = page_size
        self._eraser = PersonalDataEraser(client, tokens_table=tokens.table_name, app_table=self.table_name)

    def uninstall(self, installation_id: str, *, remaining_ms: Callable[[], int]) -> CleanupReport:
        """preUninstall: mark, delete the tokens, then as much of the walk as ``remaining_ms`` allows."""
        mark = self.installations.mark_uninstalled(installation_id, retention_s=self.retention_s)
        tokens_deleted = self.tokens.delete_installation(installation_id)
        report = self._walk(installation_id, mark, remaining_ms)
        return replace(report, tokens_deleted=tokens_deleted)

    def resume(self, installation_id: str, *, remaining_ms: Callable[[], int]) -> CleanupReport:
        """The scheduled sweep (and a migration's commit): continue a pending cleanup, tokens first (again:
        a late write may have landed)."""
        mark = self.installations.cleanup_state(installation_id)
        if mark is None:
            return CleanupReport(complete=True)
        tokens_deleted = self.tokens.delete_installation(installation_id)
        report = self._walk(installation_id, mark, remaining_ms)
        return replace(report, tokens_deleted=tokens_deleted)

    def _walk(self, installation_id: str, mark: UninstallMark, remaining_ms: Callable[[], int]) -> CleanupReport:
        pk = {"S": installation_pk(installation_id)}
        cursor = mark.cursor
        retaining = self.retention_s > 0 and not mark.moved  # moved: the data lives elsewhere now
        deleted = expiring = scrubbed = pages = 0

        def report(complete: bool) -> CleanupReport:
            return CleanupReport(complete, deleted=deleted, expiring=expiring, pages=pages, scrubbed=scrubbed)

        while True:
            if remaining_ms() < MIN_PAGE_MS:
                logger.warning(
                    "cleanup stopped for lack of time; it continues on the next call", extra={"pages": pages}
                )
                return report(False)
            query: dict[str, Any] = {
                "TableName": self.table_name,
                "KeyConditionExpression": "pk = :pk",
                "ExpressionAttributeValues": {":pk": pk},
                "ConsistentRead": True,
                "Limit": self.page_size,
            }
            if not retaining:  # keys are all a deletion needs; a retention reads what items name
                query["ExpressionAttributeNames"] = {"#ttl": "ttl"}
                query["ProjectionExpression"] = "pk, sk, #ttl"
            if cursor is not None:
                query["ExclusiveStartKey"] = {"pk": pk, "sk": {"S": cursor}}
            page = self._client.query(**query)
            items = [i for i in page.get("Items", []) if not _kept_by_walk(i["sk"]["S"])]
            # Deletions are batched (BatchWriteItem, which the uninstall and the sweep are granted).
            gone_now = [i for i in items if not retaining or _deleted_at_once(i)]
            delete_keys(self._client, self.table_name, [{"pk": i["pk"], "sk": i["sk"]} for i in gone_now])
            deleted += len(gone_now)
            if retaining:
                for item in (i for i in items if not _deleted_at_once(i)):
                    accounts = accounts_in_item(item)
                    outcome = self._eraser.erase_item(item, accounts) if accounts else "unchanged"
                    if outcome == "contended":
                        logger.warning("cleanup stopped at an item that kept changing; it continues on the next call")
                        return report(False)
                    scrubbed += outcome == "rewritten"
                    if outcome != "gone":
                        expiring += self._expire(item, mark.retain_until)
            pages += 1
            last = page.get("LastEvaluatedKey")
            if not last:
                self.installations.finish_cleanup(installation_id, strip_site=not retaining)
                return report(True)
            cursor = last["sk"]["S"]
            self.installations.record_cleanup_cursor(installation_id, cursor)

    def _expire(self, item: dict[str, Any], retain_until: int) -> bool:
        """Give one item the retention ``ttl`` unless it already expires sooner; True if it was changed."""
        current = item.get("ttl", {}).get("N")
        if current is not None and float(current) <= retain_until:
            return False
        try:
            self._client.update_item(
                TableName=self.table_name,
                Key={"pk": item["pk"], "sk": item["sk"]},
                UpdateExpression="SET #ttl = :ttl",
                # Never resurrect an item deleted meanwhile, never lengthen a shorter life.
                ConditionExpression="attribute_exists(pk) AND (attribute_not_exists(#ttl) OR #ttl > :ttl)",
                ExpressionAttributeNames={"#ttl": "ttl"},
                ExpressionAttributeValues={":ttl": {"N": str(retain_until)}},
            )
        except self._client.exceptions.ConditionalCheckFailedException:
            return False
        return True
