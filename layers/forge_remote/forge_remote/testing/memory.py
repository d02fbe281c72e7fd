"""In-memory stand-ins for the DynamoDB stores, with their documented semantics (see the package docstring).

Where a store's rule lives in a pure function (token expiry, result cutting, keys) the fake calls that
same function; what it re-states is small, and ``tests/integration/test_store_contracts.py`` runs the
same assertions against each fake and its DynamoDB store (moto), so the two cannot drift apart quietly.
Times are stored as the tables store them (epoch seconds to the millisecond), so values read back compare
equal to the real store's.
"""

from __future__ import annotations

import base64
import itertools
import json
from collections.abc import Iterator
from dataclasses import replace
from typing import TYPE_CHECKING, Any, cast

from forge_remote import clock
from forge_remote.budget.ledger import Ceilings, HourUsage, Refusal
from forge_remote.errors import TokenUnavailable
from forge_remote.jobs.parking import STALE_AFTER_S, ParkedJob
from forge_remote.storage.installations import (
    Installation,
    InstallationFacts,
    InstallationStatus,
    UninstallMark,
)
from forge_remote.storage.results import (
    DEFAULT_RESULT_TTL_S,
    ITEM_BUDGET_BYTES,
    MAX_ITEM_BYTES,
    MIN_ITEM_BUDGET_BYTES,
    StoredResult,
    _attribute_bytes,
    fit,
    utf8_bytes,
)
from forge_remote.storage.table_keys import (
    APP_TOKEN_SK,
    INSTALLATION_PK_PREFIX,
    INSTALLATION_SK,
    installation_pk,
    result_sk,
    result_sk_prefix,
    token_sk,
)
from forge_remote.tokens.store import PutOutcome, StoredToken, token_expiry, token_sha256

if TYPE_CHECKING:
    from mypy_boto3_dynamodb.type_defs import TransactWriteItemTypeDef

    from forge_remote.storage.interfaces import Installations, ParkedJobs, Results, Tokens


def _as_stored(epoch_s: float) -> float:
    """A time as the tables keep it (``f"{t:.3f}"``), so that it reads back equal."""
    return float(f"{epoch_s:.3f}")


_serial = itertools.count(1)


def app_token(valid_for_s: float, *, subject: str = "app") -> str:
    """A token shaped like Forge's (a JWT whose ``exp`` is ``valid_for_s`` from ``clock.now()``), for fakes.

    Unsigned: only the stores read it, and they read ``exp`` without verification, as they do Forge's.
    Every call gives a different token (a serial number in ``jti``), even for the same expiry.
    """

    def segment(claims: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()

    claims = {"sub": subject, "exp": round(clock.now() + valid_for_s, 3), "jti": f"fake-{next(_serial)}"}
    return f"{segment({'alg': 'none', 'typ': 'JWT'})}.{segment(claims)}.unsigned"


class MemoryInstallations:
    """``InstallationRegistry``'s records: installed or upgraded unless uninstalled, uninstalled for good."""

    def __init__(self) -> None:
        self._records: dict[str, Installation] = {}
        self._marks: dict[str, UninstallMark] = {}

    def record_lifecycle(self, facts: InstallationFacts, event_type: str = "avi:forge:installed:app") -> bool:
        """Record installed/upgraded. False if the installation was already uninstalled."""
        known = self._records.get(facts.installation_id)
        if known is not None and not known.active:
            return False
        now = float(int(clock.now()))  # the registry keeps whole seconds
        upgraded = event_type.endswith(":upgraded:app")
        self._records[facts.installation_id] = Installation(
            installation_id=facts.installation_id,
            status=InstallationStatus.ACTIVE,
            api_base_url=facts.api_base_url,
            # An optional fact a call does not carry keeps what an earlier call recorded.
            cloud_id=facts.cloud_id or (known.cloud_id if known else None),
            environment_type=facts.environment_type or (known.environment_type if known else None),
            installed_at=(known.installed_at if known and upgraded else None) or now,
        )
        return True

    def mark_uninstalled(self, installation_id: str, *, retention_s: int = 0) -> UninstallMark:
        """Terminal and idempotent: a retry keeps the first time and retention deadline."""
        now = int(clock.now())
        mark = self._marks.setdefault(installation_id, UninstallMark(now, now + max(0, retention_s)))
        known = self._records.get(installation_id) or Installation(installation_id, InstallationStatus.UNINSTALLED)
        self._records[installation_id] = replace(
            known, status=InstallationStatus.UNINSTALLED, uninstalled_at=float(mark.uninstalled_at)
        )
        return mark

    def get(self, installation_id: str) -> Installation | None:
        return self._records.get(installation_id)

    def still_installed(self, installation_id: str) -> TransactWriteItemTypeDef:
        """The same condition item as the registry's; ``MemoryTokenStore`` evaluates it against this registry."""
        check: dict[str, Any] = {
            "ConditionCheck": {
                "TableName": "memory",
                "Key": {"pk": {"S": installation_pk(installation_id)}, "sk": {"S": INSTALLATION_SK}},
                "ConditionExpression": "#status = :active",
                "ExpressionAttributeNames": {"#status": "status"},
                "ExpressionAttributeValues": {":active": {"S": InstallationStatus.ACTIVE.value}},
            }
        }
        return cast("TransactWriteItemTypeDef", check)

    def guard_holds(self, guard: TransactWriteItemTypeDef) -> bool:
        """Would DynamoDB let a write bundled with ``guard`` (from ``still_installed``) through now?"""
        check = cast("dict[str, Any]", guard).get("ConditionCheck")
        if not isinstance(check, dict) or check.get("ConditionExpression") != "#status = :active":
            raise ValueError("MemoryInstallations evaluates only its own still_installed() guards")
        installation_id = check["Key"]["pk"]["S"].removeprefix(INSTALLATION_PK_PREFIX)
        record = self._records.get(installation_id)
        return record is not None and record.active


class MemoryTokenStore:
    """``TokenStore``'s rules: newest wins, an expired token is never handed out, invalidation is exact.

    ``installations`` evaluates the guards that token writes carry (an offline token's ``still_installed``):
    without it, a guarded write raises ``ValueError`` rather than pretending the guard held.
    """

    def __init__(self, installations: MemoryInstallations | None = None) -> None:
        self._installations = installations
        self._tokens: dict[tuple[str, str], StoredToken] = {}
        self._refused: dict[str, str] = {}  # installation -> digest of the app token last invalidated

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
        key = (installation_id, sk or token_sk(account_id))
        now = clock.now()
        expires_at, _ = token_expiry(token, now, not_after=not_after)
        if expires_at <= now:
            return PutOutcome.EXPIRED
        held = self._tokens.get(key)
        if held is not None and token_sha256(held.token) == token_sha256(token):
            return PutOutcome.ALREADY_STORED
        if held is not None and held.expires_at >= _as_stored(expires_at):
            return PutOutcome.NOT_NEWER
        if guard is not None:
            if self._installations is None:
                raise ValueError("a guarded token write needs MemoryTokenStore(installations=...)")
            if not self._installations.guard_holds(guard):
                return PutOutcome.INSTALLATION_GONE
        self._tokens[key] = StoredToken(installation_id, account_id or "system", _as_stored(expires_at), token)
        return PutOutcome.STORED

    def get_valid(
        self, installation_id: str, min_validity_s: float, *, account_id: str | None = None, sk: str | None = None
    ) -> StoredToken:
        held = self._tokens.get((installation_id, sk or token_sk(account_id)))
        if held is None:
            raise TokenUnavailable(installation_id, "no token stored")
        if held.valid_for() < min_validity_s:
            raise TokenUnavailable(installation_id, f"stored token is valid for less than {min_validity_s:.0f}s")
        return held

    def invalidate(
        self, installation_id: str, token: str, *, account_id: str | None = None, sk: str | None = None
    ) -> bool:
        key = (installation_id, sk or token_sk(account_id))
        held = self._tokens.get(key)
        if held is None or token_sha256(held.token) != token_sha256(token):
            return False  # the store holds another token (or none): it stays
        del self._tokens[key]
        if key[1] == APP_TOKEN_SK:
            self._refused[installation_id] = token_sha256(token)
        return True

    def wakes_jobs(self, installation_id: str, min_validity_s: float) -> bool:
        held = self._tokens.get((installation_id, APP_TOKEN_SK))
        if held is None or held.valid_for() < min_validity_s:
            return False
        return self._refused.get(installation_id) != token_sha256(held.token)

    def held(self, installation_id: str, *, sk: str = APP_TOKEN_SK) -> StoredToken | None:
        """What is stored under this key now, expired or not (for a test's assertions; no store has it)."""
        return self._tokens.get((installation_id, sk))


class MemoryResults:
    """``ResultStore``: upserts keyed by installation, kind and key, cut to the same budget by ``fit``."""

    def __init__(
        self, *, item_budget_bytes: int = ITEM_BUDGET_BYTES, default_ttl_s: int = DEFAULT_RESULT_TTL_S
    ) -> None:
        if not MIN_ITEM_BUDGET_BYTES <= item_budget_bytes <= MAX_ITEM_BYTES:
            raise ValueError(f"item budget must be between {MIN_ITEM_BUDGET_BYTES} and {MAX_ITEM_BYTES} bytes")
        if default_ttl_s <= 0:
            raise ValueError("default_ttl_s must be positive: every result expires")
        self.item_budget_bytes = item_budget_bytes
        self.default_ttl_s = default_ttl_s
        self._items: dict[tuple[str, str], str] = {}  # (installation, sort key) -> the stored text
        self.expires_at: dict[tuple[str, str], int] = {}  # the same keys -> their ttl (epoch s)

    def put(
        self, installation_id: str, kind: str, key: str, record: dict[str, Any], *, ttl_s: int | None = None
    ) -> StoredResult:
        now = clock.now()
        sk = result_sk(kind, key)
        ttl = int(now + (self.default_ttl_s if ttl_s is None else ttl_s))
        # The item ResultStore.put writes besides ``data``: what it leaves of the budget is sized the same way.
        item = {
            "pk": {"S": installation_pk(installation_id)},
            "sk": {"S": sk},
            "updatedAt": {"N": str(int(now))},
            "ttl": {"N": str(ttl)},
        }
        others = sum(_attribute_bytes(name, value) for name, value in item.items())
        text, cut = fit(record, self.item_budget_bytes - others - utf8_bytes("data"))
        self._items[(installation_id, sk)] = text
        self.expires_at[(installation_id, sk)] = ttl
        return StoredResult(utf8_bytes(text), cut)

    def get(self, installation_id: str, kind: str, key: str) -> dict[str, Any] | None:
        text = self._items.get((installation_id, result_sk(kind, key)))
        return None if text is None else cast("dict[str, Any]", json.loads(text))

    def list(self, installation_id: str, kind: str) -> list[dict[str, Any]]:
        prefix = result_sk_prefix(kind)
        # A query returns a partition's items in sort-key order.
        keys = sorted(sk for inst, sk in self._items if inst == installation_id and sk.startswith(prefix))
        return [json.loads(self._items[(installation_id, sk)]) for sk in keys]


class MemoryParkingLot:
    """``ParkingLot``: one parked delivery per request (the newest), each claimed by exactly one caller."""

    def __init__(self) -> None:
        self._parked: dict[tuple[str, str], ParkedJob] = {}

    def park(self, installation_id: str, request_id: str, *, job: str, receipt_handle: str, retry_at: float) -> None:
        self._parked[(installation_id, request_id)] = ParkedJob(
            installation_id=installation_id,
            request_id=request_id,
            job=job,
            parked_at=_as_stored(clock.now()),
            retry_at=_as_stored(retry_at),
            receipt_handle=receipt_handle,
        )

    def unpark(self, installation_id: str, request_id: str) -> None:
        self._parked.pop((installation_id, request_id), None)

    def waiting(self, installation_id: str) -> int:
        stale = _as_stored(clock.now() - STALE_AFTER_S)  # a delay that ended long ago: not waiting any more
        return sum(1 for (inst, _), p in self._parked.items() if inst == installation_id and p.retry_at > stale)

    def claim(self, installation_id: str, request_id: str | None = None) -> Iterator[ParkedJob]:
        if request_id is not None:
            keys = [(installation_id, request_id)]
        else:  # in sort-key order, as a query reads them; each is taken only if still there
            keys = sorted(key for key in self._parked if key[0] == installation_id)
        for key in keys:
            claimed = self._parked.pop(key, None)
            if claimed is not None:
                yield claimed

    def restore(self, parked: ParkedJob) -> None:
        self.park(
            parked.installation_id,
            parked.request_id,
            job=parked.job,
            receipt_handle=parked.receipt_handle,
            retry_at=parked.retry_at,
        )


if TYPE_CHECKING:  # mypy checks that each fake is what it stands in for
    _fakes: tuple[Tokens, Installations, Results, ParkedJobs] = (
        MemoryTokenStore(),
        MemoryInstallations(),
        MemoryResults(),
        MemoryParkingLot(),
    )


class MemoryLedger:
    """The points ledger (``budget.ledger.Ledger``) in memory: the same conditional arithmetic as
    ``DynamoLedger``'s transaction, under a lock, so threads standing in for containers can race it."""

    def __init__(self) -> None:
        import threading

        self._lock = threading.Lock()
        self._hours: dict[tuple[int, str | None], dict[str, float]] = {}
        self._reasons: dict[tuple[int, str | None], str] = {}

    def _side(self, hour: int, installation_id: str | None) -> dict[str, float]:
        return self._hours.setdefault((hour, installation_id), {"background": 0, "ui": 0, "total": 0})

    @staticmethod
    def _allows(side: dict[str, float], points: int, background: int | None, total: int | None, now: float) -> bool:
        paused = side.get("pausedUntil")
        if paused is not None and paused > now:
            return False
        return all(
            ceiling is None or side[name] <= ceiling - points
            for name, ceiling in (("background", background), ("total", total))
        )

    def reserve(self, hour: int, installation_id: str, points: int, ceilings: Ceilings, now: float) -> Refusal | None:
        with self._lock:
            fleet, mine = self._side(hour, None), self._side(hour, installation_id)
            if not self._allows(fleet, points, ceilings.fleet_background, ceilings.fleet_total, now):
                paused = fleet.get("pausedUntil", 0) > now
                return Refusal.FLEET_PAUSED if paused else Refusal.FLEET_SPENT
            if not self._allows(mine, points, ceilings.installation_background, ceilings.installation_total, now):
                paused = mine.get("pausedUntil", 0) > now
                return Refusal.INSTALLATION_PAUSED if paused else Refusal.INSTALLATION_SPENT
            for side in (fleet, mine):
                side["background"] += points
                side["total"] += points
            return None

    def _add(self, hour: int, installation_id: str, name: str, delta: int) -> int:
        with self._lock:
            for side in (self._side(hour, None), self._side(hour, installation_id)):
                side[name] += delta
                side["total"] += delta
            return int(self._side(hour, None)["total"])

    def settle(self, hour: int, installation_id: str, delta: int) -> int | None:
        return self._add(hour, installation_id, "background", delta) if delta else None

    def record_ui(self, hour: int, installation_id: str, points: int) -> int | None:
        return self._add(hour, installation_id, "ui", points) if points > 0 else None

    def raise_total(self, hour: int, installation_id: str | None, at_least: int) -> None:
        with self._lock:
            side = self._side(hour, installation_id)
            side["total"] = max(side["total"], at_least)

    def pause(self, hour: int, installation_id: str | None, until: float, reason: str) -> None:
        with self._lock:
            side = self._side(hour, installation_id)
            if side.get("pausedUntil", 0) < until:
                side["pausedUntil"] = until
                self._reasons[(hour, installation_id)] = reason[:200]

    def usage(self, hour: int, installation_id: str | None) -> HourUsage:
        with self._lock:
            side = dict(self._side(hour, installation_id))
            reason = self._reasons.get((hour, installation_id))
        return HourUsage(
            background=int(side["background"]),
            ui=int(side["ui"]),
            total=int(side["total"]),
            paused_until=side.get("pausedUntil"),
            pause_reason=reason,
        )
