"""The token store: every Forge app token with its expiry, newest wins, never an expired one out.

Items (tokens table, keys from ``storage/table_keys.py``): ``pk = INST#<installationId>``, ``sk = SYSTEM``,
``USER#<accountId>`` or ``OFFLINE#<accountId>`` (an offline user token, ``tokens/offline.py``), with
``token``, ``tokenSha256``, ``expiresAt`` (epoch s, from the token's own ``exp``), and ``ttl``
(expiry + grace) for DynamoDB's lazy TTL deletion. Reads check ``expiresAt`` themselves.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from forge_remote import clock
from forge_remote.errors import TokenUnavailable
from forge_remote.storage.batch_delete import delete_keys
from forge_remote.storage.table_keys import APP_TOKEN_SK, REFUSED_TOKEN_SK, installation_pk, token_sk

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_dynamodb.type_defs import TransactWriteItemTypeDef

logger = logging.getLogger(__name__)

MAX_TOKEN_LIFETIME_S = 4 * 3600  # Forge's documented maximum
FALLBACK_LIFETIME_S = 3600  # for a token whose exp cannot be read: well under the ~2 h Forge guarantees
TTL_GRACE_S = 3600
MAX_PAYLOAD_CHARS = 16 * 1024  # a token's payload segment; Forge's are a few hundred characters
BATCH_GET_KEYS = 100  # DynamoDB's BatchGetItem limit
SANE_EXP_RANGE = (1.0e9, 4.1e9)  # 2001 to 2099: anything else is not an expiry Forge would send


class PutOutcome(enum.Enum):
    STORED = "stored"
    NOT_NEWER = "not_newer"  # the store already holds a token expiring no earlier
    ALREADY_STORED = "already_stored"  # the store holds this exact token: no write
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
    received_at: float | None = None
    delivered_by: str | None = None  # the kind of Forge call that brought it: keepalive, event, lifecycle, ui


def token_sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _no_constants(name: str) -> None:
    raise ValueError(f"{name} is not a number")  # NaN and Infinity are not JSON numbers


def _unverified_exp(token: str) -> float | None:
    """The ``exp`` claim of a JWT read without verification, or None if it is not a sane epoch time.

    Anything odd (not three segments, bad base64, not a JSON object, NaN, 10**400, a string, a
    boolean, a time before 2001 or past 2100) is None: the caller falls back, it never raises.
    """
    segments = token.split(".")
    if len(segments) != 3 or len(segments[1]) > MAX_PAYLOAD_CHARS:
        return None
    try:
        payload = json.loads(
            base64.urlsafe_b64decode(segments[1] + "=" * (-len(segments[1]) % 4)), parse_constant=_no_constants
        )
        exp = payload.get("exp") if isinstance(payload, dict) else None
        if isinstance(exp, bool) or not isinstance(exp, int | float):
            return None
        value = float(exp)  # OverflowError for huge ints
    except (ValueError, TypeError, OverflowError, RecursionError, binascii.Error):
        return None
    return value if math.isfinite(value) and SANE_EXP_RANGE[0] <= value <= SANE_EXP_RANGE[1] else None


def token_expiry(token: str, received_at: float, *, not_after: float | None = None) -> tuple[float, str]:
    """Expiry from the token's own ``exp`` (read unverified: we are not its audience), else a fallback.

    Clamped to Forge's 4 h maximum so a malformed claim can never make a token live forever; a claim
    that is not a sane number gets the conservative fallback lifetime, never an exception.
    ``not_after`` is a bound the issuer told us separately (an offline token's ``ttl``): the earlier
    of the two wins, and it stands in for a missing ``exp`` (still within the 4 h cap).
    """
    exp = _unverified_exp(token)
    cap = received_at + MAX_TOKEN_LIFETIME_S
    if not_after is not None and math.isfinite(not_after) and (exp is None or not_after < exp):
        return min(not_after, cap), "ttl"
    if exp is None:
        return received_at + FALLBACK_LIFETIME_S, "fallback"
    return min(exp, cap), "exp"


class TokenStore:
    """DynamoDB-backed tokens. One instance per container; safe to share across threads.

    The store itself is the only memory of which token is held: a delivery is compared with what the
    table holds now (one small consistent read), so a token that was invalidated or deleted in any
    container is stored again when Forge delivers it again, and a re-delivered token costs no write.
    """

    def __init__(self, client: DynamoDBClient, table_name: str) -> None:
        self._client = client
        self.table_name = table_name
        self.write_count = 0  # DynamoDB write requests made, for benchmarks and tests
        self.read_count = 0  # DynamoDB read requests made by put_if_newer, for benchmarks and tests

    def _key(self, installation_id: str, sk: str) -> dict[str, Any]:
        return {"pk": {"S": installation_pk(installation_id)}, "sk": {"S": sk}}

    def _held(self, installation_id: str, sk: str) -> tuple[str | None, float | None]:
        """Digest and expiry of the token stored now, if any (never the token itself)."""
        self.read_count += 1
        item = self._client.get_item(
            TableName=self.table_name,
            Key=self._key(installation_id, sk),
            ProjectionExpression="tokenSha256, expiresAt",
            ConsistentRead=True,
        ).get("Item")
        if not item:
            return None, None
        return item.get("tokenSha256", {}).get("S"), float(item.get("expiresAt", {}).get("N", "0"))

    def put_if_newer(
        self,
        installation_id: str,
        token: str,
        *,
        account_id: str | None = None,
        guard: TransactWriteItemTypeDef | None = None,
        sk: str | None = None,
        not_after: float | None = None,
        delivered_by: str | None = None,
    ) -> PutOutcome:
        """Store ``token`` unless the stored one expires no earlier (rules 1-3).

        ``guard`` is a transaction item written atomically with the token (the installation
        registry's "still installed" update, or a check of it), so a token can never be stored after
        uninstall. ``sk`` overrides the key ``account_id`` implies (offline user tokens live under
        ``OFFLINE#<accountId>``); ``not_after`` bounds the expiry (see ``token_expiry``); ``delivered_by``
        names the kind of call that brought the token, for status pages.
        """
        sk = sk or token_sk(account_id)
        digest = token_sha256(token)
        now = clock.now()
        expires_at, source = token_expiry(token, now, not_after=not_after)
        if expires_at <= now:
            logger.warning("received an already-expired %s token; not stored", "user" if account_id else "app")
            return PutOutcome.EXPIRED
        held_digest, held_expiry = self._held(installation_id, sk)
        if held_digest == digest:
            return PutOutcome.ALREADY_STORED
        if held_expiry is not None and held_expiry >= expires_at:
            return PutOutcome.NOT_NEWER
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
        if delivered_by:
            item["deliveredBy"] = {"S": delivered_by}
        put: dict[str, Any] = {
            "TableName": self.table_name,
            "Item": item,
            # The read above saves writes; this condition is what makes "newest wins" hold under races.
            "ConditionExpression": "attribute_not_exists(pk) OR expiresAt < :exp",
            "ExpressionAttributeValues": {":exp": item["expiresAt"]},
        }
        return self._write(put, guard)

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

    def get_valid(
        self, installation_id: str, min_validity_s: float, *, account_id: str | None = None, sk: str | None = None
    ) -> StoredToken:
        """A token valid for at least ``min_validity_s`` more seconds, or ``TokenUnavailable`` (rule 4)."""
        item = self._client.get_item(
            TableName=self.table_name,
            Key=self._key(installation_id, sk or token_sk(account_id)),
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

    def usable(self, installation_id: str, min_validity_s: float) -> bool:
        """Is an app token valid for ``min_validity_s`` more seconds stored? Reads its expiry only."""
        item = self._client.get_item(
            TableName=self.table_name,
            Key=self._key(installation_id, APP_TOKEN_SK),
            ProjectionExpression="expiresAt",
            ConsistentRead=True,
        ).get("Item")
        if not item:
            return False
        return float(item["expiresAt"]["N"]) - clock.now() >= min_validity_s

    def count_usable(self, installation_ids: Sequence[str], min_validity_s: float) -> int:
        """How many of these installations hold an app token valid ``min_validity_s`` more seconds:
        ``usable`` for many at once, 100 keys a request, reading each token's expiry only."""
        now = clock.now()
        count = 0
        for start in range(0, len(installation_ids), BATCH_GET_KEYS):
            keys = [self._key(i, APP_TOKEN_SK) for i in installation_ids[start : start + BATCH_GET_KEYS]]
            items = self._batch_get(keys, "expiresAt", "token expiries")
            count += sum(float(item["expiresAt"]["N"]) - now >= min_validity_s for item in items)
        return count

    def _batch_get(self, keys: list[dict[str, Any]], projection: str, what: str) -> list[dict[str, Any]]:
        """Up to 100 items by key, read consistently; unprocessed keys are asked again (8 rounds at most)."""
        request: dict[str, Any] = {
            self.table_name: {"Keys": keys, "ProjectionExpression": projection, "ConsistentRead": True}
        }
        items: list[dict[str, Any]] = []
        for _ in range(8):
            response = self._client.batch_get_item(RequestItems=request)
            items += response.get("Responses", {}).get(self.table_name, [])
            request = dict(response.get("UnprocessedKeys") or {})
            if not request:
                return items
        raise RuntimeError(f"could not read {len(request[self.table_name]['Keys'])} {what}")

    def invalidate(
        self, installation_id: str, token: str, *, account_id: str | None = None, sk: str | None = None
    ) -> bool:
        """Remove exactly this token (rule 5). False if the store already holds another one."""
        sk = sk or token_sk(account_id)
        digest = token_sha256(token)
        delete: dict[str, Any] = {
            "TableName": self.table_name,
            "Key": self._key(installation_id, sk),
            "ConditionExpression": "tokenSha256 = :digest",
            "ExpressionAttributeValues": {":digest": {"S": digest}},
        }
        self.write_count += 1
        if sk != APP_TOKEN_SK:
            try:
                self._client.delete_item(**delete)
            except self._client.exceptions.ConditionalCheckFailedException:
                return False
            return True
        # The app token: its digest is kept with the removal (one transaction), so that a re-delivery of
        # this very token is stored again but wakes no parked job (``wakes_jobs``).
        now = clock.now()
        expires_at, _ = token_expiry(token, now)
        refusal = {
            **self._key(installation_id, REFUSED_TOKEN_SK),
            "tokenSha256": {"S": digest},
            "refusedAt": {"N": f"{now:.3f}"},
            "ttl": {"N": str(int(max(expires_at, now)) + TTL_GRACE_S)},
        }
        try:
            self._client.transact_write_items(
                TransactItems=[
                    {"Delete": delete},  # type: ignore[typeddict-item]
                    {"Put": {"TableName": self.table_name, "Item": refusal}},
                ]
            )
        except self._client.exceptions.TransactionCanceledException as exc:
            reasons = [r.get("Code") for r in exc.response.get("CancellationReasons", [])]
            if reasons and reasons[0] == "ConditionalCheckFailed":
                return False
            raise
        # If Forge delivers this token again (it may have been refused only while the app user was being
        # provisioned), put_if_newer finds the store without it and stores it again.
        return True

    def wakes_jobs(self, installation_id: str, min_validity_s: float) -> bool:
        """Should the app token stored now wake this installation's parked jobs? Only if jobs can use it
        (``usable``) and it is not the token a server last refused, delivered again: jobs waited for a
        token, not for another try of the one refused (they retry it when their delay ends)."""
        keys = [self._key(installation_id, APP_TOKEN_SK), self._key(installation_id, REFUSED_TOKEN_SK)]
        items = self._batch_get(keys, "sk, tokenSha256, expiresAt", "app token states")
        by_sk = {item["sk"]["S"]: item for item in items}
        held, refused = by_sk.get(APP_TOKEN_SK), by_sk.get(REFUSED_TOKEN_SK)
        if held is None or float(held["expiresAt"]["N"]) - clock.now() < min_validity_s:
            return False
        return refused is None or refused["tokenSha256"]["S"] != held["tokenSha256"]["S"]

    def states(self, installation_id: str, *, account_id: str | None = None) -> list[TokenState]:
        """Expiry of the app token and, if given, this user's token: for status pages, never the token."""
        states = []
        for sk in [APP_TOKEN_SK] + ([token_sk(account_id)] if account_id else []):
            item = self._client.get_item(
                TableName=self.table_name,
                Key=self._key(installation_id, sk),
                ProjectionExpression="subject, expiresAt, expirySource, receivedAt, deliveredBy",
                ConsistentRead=True,
            ).get("Item")
            if item:
                states.append(
                    TokenState(
                        subject="system" if sk == APP_TOKEN_SK else "user",
                        expires_at=float(item["expiresAt"]["N"]),
                        expiry_source=item.get("expirySource", {}).get("S", "exp"),
                        received_at=float(item["receivedAt"]["N"]) if "receivedAt" in item else None,
                        delivered_by=item.get("deliveredBy", {}).get("S"),
                    )
                )
        return states

    def delete_installation(self, installation_id: str) -> int:
        """Delete every token of an installation (uninstall): every item under its partition, so the
        app token, UI user tokens and cached offline user tokens alike. Returns how many were deleted."""
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
        self.write_count += delete_keys(self._client, self.table_name, keys)
        return len(keys)
