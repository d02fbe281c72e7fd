"""The token store: every Forge app token with its expiry, newest wins, never an expired one out.

Items (tokens table): ``pk = INST#<installationId>``, ``sk = SYSTEM`` or ``USER#<accountId>``,
with ``token``, ``tokenSha256``, ``expiresAt`` (epoch s, from the token's own ``exp``), and
``ttl`` (expiry + grace) for DynamoDB's lazy TTL deletion. Reads check ``expiresAt`` themselves.
"""

from __future__ import annotations

import enum
import hashlib
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import jwt

from forge_remote import clock
from forge_remote.errors import TokenUnavailable
from forge_remote.installations import installation_pk

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_dynamodb.type_defs import TransactWriteItemTypeDef

logger = logging.getLogger(__name__)

MAX_TOKEN_LIFETIME_S = 4 * 3600  # Forge's documented maximum
FALLBACK_LIFETIME_S = 3600  # for a token whose exp cannot be read: well under the ~2 h Forge guarantees
TTL_GRACE_S = 3600
SYSTEM_SK = "SYSTEM"


class PutOutcome(enum.Enum):
    STORED = "stored"
    NOT_NEWER = "not_newer"  # the store already holds a token expiring no earlier
    ALREADY_SEEN = "already_seen"  # this container saw this exact token: no write
    EXPIRED = "expired"  # arrived already expired: never stored
    INSTALLATION_GONE = "installation_gone"  # uninstalled: tokens are not kept


@dataclass(frozen=True)
class StoredToken:
    installation_id: str
    subject: str  # "system" or the user's account id
    expires_at: float
    token: str = field(repr=False, compare=False)

    def valid_for(self, now: float | None = None) -> float:
        return self.expires_at - (clock.now() if now is None else now)


@dataclass(frozen=True)
class TokenState:
    """What ``/api/status`` may show: never the token."""

    subject: str
    expires_at: float
    expiry_source: str


def token_sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def token_expiry(token: str, received_at: float) -> tuple[float, str]:
    """Expiry from the token's own ``exp`` (read unverified: we are not its audience), else a fallback.

    Clamped to Forge's 4 h maximum so a malformed claim can never make a token live forever.
    """
    try:
        exp = jwt.decode(token, options={"verify_signature": False}).get("exp")
    except jwt.PyJWTError:
        exp = None
    latest = received_at + MAX_TOKEN_LIFETIME_S
    if isinstance(exp, int | float) and not isinstance(exp, bool):
        return min(float(exp), latest), "exp"
    return received_at + FALLBACK_LIFETIME_S, "fallback"


def _sort_key(account_id: str | None) -> str:
    return f"USER#{account_id}" if account_id else SYSTEM_SK


class TokenStore:
    """DynamoDB-backed tokens. One instance per container; safe to share across threads."""

    def __init__(self, client: DynamoDBClient, table_name: str, *, seen_cache_size: int = 4096) -> None:
        self._client = client
        self.table_name = table_name
        self._seen: OrderedDict[tuple[str, str, str], None] = OrderedDict()
        self._seen_size = seen_cache_size
        self._lock = threading.Lock()
        self.write_count = 0  # DynamoDB write requests made, for benchmarks and tests

    # -- per-container memory of delivered tokens (rule 2: a re-delivered token costs no write)
    def _was_seen(self, key: tuple[str, str, str]) -> bool:
        with self._lock:
            if key in self._seen:
                self._seen.move_to_end(key)
                return True
            return False

    def _remember(self, key: tuple[str, str, str]) -> None:
        with self._lock:
            self._seen[key] = None
            self._seen.move_to_end(key)
            while len(self._seen) > self._seen_size:
                self._seen.popitem(last=False)

    def _forget(self, installation_id: str, sk: str | None = None) -> None:
        with self._lock:
            for key in [k for k in self._seen if k[0] == installation_id and (sk is None or k[1] == sk)]:
                del self._seen[key]

    def _key(self, installation_id: str, sk: str) -> dict[str, Any]:
        return {"pk": {"S": installation_pk(installation_id)}, "sk": {"S": sk}}

    def put_if_newer(
        self,
        installation_id: str,
        token: str,
        *,
        account_id: str | None = None,
        guard: TransactWriteItemTypeDef | None = None,
    ) -> PutOutcome:
        """Store ``token`` unless the stored one expires no earlier (rules 1-3).

        ``guard`` is a transaction item written atomically with the token (the installation
        registry's "still installed" update), so a token can never be stored after uninstall.
        """
        sk = _sort_key(account_id)
        digest = token_sha256(token)
        seen_key = (installation_id, sk, digest)
        if self._was_seen(seen_key):
            return PutOutcome.ALREADY_SEEN
        now = clock.now()
        expires_at, source = token_expiry(token, now)
        if expires_at <= now:
            logger.warning("received an already-expired %s token; not stored", "user" if account_id else "app")
            self._remember(seen_key)
            return PutOutcome.EXPIRED
        item: dict[str, Any] = {
            **self._key(installation_id, sk),
            "installationId": {"S": installation_id},
            "subject": {"S": account_id or "system"},
            "token": {"S": token},
            "tokenSha256": {"S": digest},
            "expiresAt": {"N": f"{expires_at:.3f}"},
            "expirySource": {"S": source},
            "receivedAt": {"N": f"{now:.3f}"},
            "ttl": {"N": str(int(expires_at) + TTL_GRACE_S)},
        }
        put: dict[str, Any] = {
            "TableName": self.table_name,
            "Item": item,
            "ConditionExpression": "attribute_not_exists(pk) OR expiresAt < :exp",
            "ExpressionAttributeValues": {":exp": item["expiresAt"]},
        }
        outcome = self._write(put, guard)
        self._remember(seen_key)
        return outcome

    def _write(self, put: dict[str, Any], guard: TransactWriteItemTypeDef | None) -> PutOutcome:
        self.write_count += 1
        if guard is None:
            try:
                self._client.put_item(**put)
            except self._client.exceptions.ConditionalCheckFailedException:
                return PutOutcome.NOT_NEWER
            return PutOutcome.STORED
        try:
            self._client.transact_write_items(TransactItems=[guard, {"Put": put}])  # type: ignore[typeddict-item]
        except self._client.exceptions.TransactionCanceledException as exc:
            reasons = [r.get("Code") for r in exc.response.get("CancellationReasons", [])]
            if reasons and reasons[0] == "ConditionalCheckFailed":
                return PutOutcome.INSTALLATION_GONE
            if len(reasons) > 1 and reasons[1] == "ConditionalCheckFailed":
                return PutOutcome.NOT_NEWER
            raise
        return PutOutcome.STORED

    def get_valid(self, installation_id: str, min_validity_s: float, *, account_id: str | None = None) -> StoredToken:
        """A token valid for at least ``min_validity_s`` more seconds, or ``TokenUnavailable`` (rule 4)."""
        item = self._client.get_item(
            TableName=self.table_name,
            Key=self._key(installation_id, _sort_key(account_id)),
            ConsistentRead=True,
        ).get("Item")
        if not item:
            raise TokenUnavailable(installation_id, "no token stored")
        stored = StoredToken(
            installation_id=installation_id,
            subject=item["subject"]["S"],
            expires_at=float(item["expiresAt"]["N"]),
            token=item["token"]["S"],
        )
        # TTL deletion is lazy (rule 3): an expired item may still be here.
        if stored.valid_for() < min_validity_s:
            raise TokenUnavailable(installation_id, f"stored token is valid for less than {min_validity_s:.0f}s")
        return stored

    def invalidate(self, installation_id: str, token: str, *, account_id: str | None = None) -> bool:
        """Remove exactly this token (rule 5). False if the store already holds another one."""
        sk = _sort_key(account_id)
        self.write_count += 1
        try:
            self._client.delete_item(
                TableName=self.table_name,
                Key=self._key(installation_id, sk),
                ConditionExpression="tokenSha256 = :digest",
                ExpressionAttributeValues={":digest": {"S": token_sha256(token)}},
            )
        except self._client.exceptions.ConditionalCheckFailedException:
            return False
        finally:
            # If Forge delivers this token again (it may have been refused only while the app user was
            # being provisioned), it may be stored again.
            self._forget(installation_id, sk)
        return True

    def states(self, installation_id: str, *, account_id: str | None = None) -> list[TokenState]:
        """Expiry of the app token and, if given, this user's token: for status pages, never the token."""
        states = []
        for sk in [SYSTEM_SK] + ([_sort_key(account_id)] if account_id else []):
            item = self._client.get_item(
                TableName=self.table_name,
                Key=self._key(installation_id, sk),
                ProjectionExpression="subject, expiresAt, expirySource",
                ConsistentRead=True,
            ).get("Item")
            if item:
                states.append(
                    TokenState(
                        subject="system" if sk == SYSTEM_SK else "user",
                        expires_at=float(item["expiresAt"]["N"]),
                        expiry_source=item.get("expirySource", {}).get("S", "exp"),
                    )
                )
        return states

    def delete_installation(self, installation_id: str) -> int:
        """Delete every token of an installation (uninstall). Returns how many items were deleted."""
        self._forget(installation_id)
        keys: list[dict[str, Any]] = []
        paginator = self._client.get_paginator("query")
        for page in paginator.paginate(
            TableName=self.table_name,
            KeyConditionExpression="pk = :pk",
            ExpressionAttributeValues={":pk": {"S": installation_pk(installation_id)}},
            ProjectionExpression="pk, sk",
            ConsistentRead=True,
        ):
            keys.extend({"pk": i["pk"], "sk": i["sk"]} for i in page.get("Items", []))
        for start in range(0, len(keys), 25):
            pending: list[Any] = [{"DeleteRequest": {"Key": k}} for k in keys[start : start + 25]]
            for _ in range(8):
                self.write_count += 1
                response = self._client.batch_write_item(RequestItems={self.table_name: pending})
                pending = list(response.get("UnprocessedItems", {}).get(self.table_name, []))
                if not pending:
                    break
            else:
                raise RuntimeError(f"could not delete {len(pending)} token items of {installation_id}")
        return len(keys)
