"""The fleet's points ledger: what every container spent in each UTC hour, in DynamoDB.

Why DynamoDB atomic counters: the quota is one number for the whole fleet (Global Pool) and every
Lambda container spends from it at once. A conditional ``ADD`` is atomic across containers, so a
reservation that would take the hour past its ceiling is refused by DynamoDB itself, not by a
container that read a stale total. Nothing to run or pay for between jobs; an hour's items expire by
TTL two days later. A reservation is one ``TransactWriteItems`` of two conditional updates (the
fleet's hour and the installation's hour, both must allow it); the correction after the answer is
one or two plain ``ADD`` updates.

Items, in the app table (they belong to no installation's partition and hold no personal data):
``pk = BUDGET#<yyyy-mm-ddThh>`` (the UTC hour) with ``sk = FLEET`` and ``sk = INST#<installationId>``:
``background`` (points reserved and settled by jobs), ``ui`` (points of UI calls), ``total`` (all
points known spent: background + ui, raised to what Atlassian's headers report), ``pausedUntil`` and
``pauseReason`` (a 429 said the quota is spent), ``ttl``.
"""

from __future__ import annotations

import contextlib
import enum
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from forge_remote.budget.policy import HOUR_S

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

BUDGET_PK_PREFIX = "BUDGET#"
FLEET_SK = "FLEET"
INSTALLATION_SK_PREFIX = "INST#"
KEEP_S = 2 * 86400  # an hour's items stay this long after it (dashboards, the status page, debugging)


class Refusal(enum.StrEnum):
    """Why a reservation was refused: what the job is waiting for."""

    FLEET_PAUSED = "fleet-paused"  # a 429: the app's quota is spent for every installation
    INSTALLATION_PAUSED = "installation-paused"  # a 429: this site's own quota is spent (Tier 2)
    FLEET_SPENT = "fleet-share-spent"  # background work spent its share of the quota this hour
    INSTALLATION_SPENT = "installation-share-spent"  # this installation spent its share this hour


@dataclass(frozen=True)
class Ceilings:
    """Reservation limits for one request (None: no limit of that kind)."""

    fleet_background: int | None = None
    fleet_total: int | None = None
    installation_background: int | None = None
    installation_total: int | None = None


@dataclass(frozen=True)
class HourUsage:
    background: int = 0
    ui: int = 0
    total: int = 0
    paused_until: float | None = None
    pause_reason: str | None = None


class Ledger(Protocol):
    """What the budget needs of its store; ``DynamoLedger`` and ``testing.MemoryLedger`` have it."""

    def reserve(self, hour: int, installation_id: str, points: int, ceilings: Ceilings, now: float) -> Refusal | None:
        """Add ``points`` to both hours' background and total if every ceiling allows it and neither is
        paused; else change nothing and say why."""

    def settle(self, hour: int, installation_id: str, delta: int) -> int | None:
        """Correct a reservation by ``delta`` (the answer's points less the estimate); the fleet hour's
        total after it, or None when nothing was written (no correction)."""

    def record_ui(self, hour: int, installation_id: str, points: int) -> int | None:
        """Count points a UI call spent (never refused: the headroom is theirs); the fleet's total after."""

    def raise_total(self, hour: int, installation_id: str | None, at_least: int) -> None:
        """Atlassian says at least this much is spent: the fleet's (None) or the installation's hour."""

    def pause(self, hour: int, installation_id: str | None, until: float, reason: str) -> None:
        """No reservation for the fleet (None) or the installation before ``until``."""

    def usage(self, hour: int, installation_id: str | None) -> HourUsage:
        """The fleet's (None) or an installation's hour, as stored."""


def hour_label(hour: int) -> str:
    return datetime.fromtimestamp(hour * HOUR_S, UTC).strftime("%Y-%m-%dT%H")


def budget_key(hour: int, installation_id: str | None) -> dict[str, Any]:
    sk = FLEET_SK if installation_id is None else f"{INSTALLATION_SK_PREFIX}{installation_id}"
    return {"pk": {"S": f"{BUDGET_PK_PREFIX}{hour_label(hour)}"}, "sk": {"S": sk}}


def _not_paused() -> str:
    return "(attribute_not_exists(pausedUntil) OR pausedUntil <= :now)"


def _update(table: str, key: dict[str, Any], points: int, background: int | None, total: int | None) -> dict[str, Any]:
    """One side of a reservation: ADD the points if its ceilings allow them and it is not paused."""
    conditions = [_not_paused()]
    values: dict[str, Any] = {":p": {"N": str(points)}}
    for attribute, name, ceiling in (("background", "background", background), ("total", "#total", total)):
        if ceiling is not None:  # "total" is a reserved word in expressions: it goes by #total
            conditions.append(f"(attribute_not_exists({name}) OR {name} <= :{attribute}_left)")
            values[f":{attribute}_left"] = {"N": str(ceiling - points)}
    return {
        "TableName": table,
        "Key": key,
        "UpdateExpression": "ADD background :p, #total :p SET #ttl = if_not_exists(#ttl, :ttl)",
        "ConditionExpression": " AND ".join(conditions),
        "ExpressionAttributeNames": {"#total": "total", "#ttl": "ttl"},
        "ExpressionAttributeValues": values,
    }


class DynamoLedger:
    def __init__(self, client: DynamoDBClient, table_name: str) -> None:
        self._client = client
        self._table = table_name

    def _ttl(self, hour: int) -> dict[str, str]:
        return {"N": str((hour + 1) * HOUR_S + KEEP_S)}

    def reserve(self, hour: int, installation_id: str, points: int, ceilings: Ceilings, now: float) -> Refusal | None:
        fleet = _update(self._table, budget_key(hour, None), points, ceilings.fleet_background, ceilings.fleet_total)
        installation = _update(
            self._table,
            budget_key(hour, installation_id),
            points,
            ceilings.installation_background,
            ceilings.installation_total,
        )
        for update in (fleet, installation):
            update["ExpressionAttributeValues"].update({":now": {"N": repr(now)}, ":ttl": self._ttl(hour)})
        try:
            self._client.transact_write_items(TransactItems=[{"Update": fleet}, {"Update": installation}])  # type: ignore[typeddict-item]
        except self._client.exceptions.TransactionCanceledException as exc:
            reasons = [r.get("Code") for r in exc.response.get("CancellationReasons", [])]
            if any(code not in (None, "None", "ConditionalCheckFailed") for code in reasons):
                raise  # a conflict or throttle: the caller's error, not a budget answer
            fleet_failed = bool(reasons) and reasons[0] == "ConditionalCheckFailed"
            return self._why(hour, None if fleet_failed else installation_id, now)
        return None

    def _why(self, hour: int, installation_id: str | None, now: float) -> Refusal:
        """Which limit refused (read back: the transaction only says which item)."""
        usage = self.usage(hour, installation_id)
        paused = usage.paused_until is not None and usage.paused_until > now
        if installation_id is None:
            return Refusal.FLEET_PAUSED if paused else Refusal.FLEET_SPENT
        return Refusal.INSTALLATION_PAUSED if paused else Refusal.INSTALLATION_SPENT

    def settle(self, hour: int, installation_id: str, delta: int) -> int | None:
        if delta == 0:
            return None
        return self._add(hour, installation_id, "background", delta)

    def record_ui(self, hour: int, installation_id: str, points: int) -> int | None:
        if points <= 0:
            return None
        return self._add(hour, installation_id, "ui", points)

    def _add(self, hour: int, installation_id: str, attribute: str, delta: int) -> int:
        """ADD ``delta`` to ``attribute`` and the total of both hours; the fleet's total after it."""
        totals = []
        for key in (budget_key(hour, None), budget_key(hour, installation_id)):
            answer = self._client.update_item(
                TableName=self._table,
                Key=key,
                UpdateExpression=f"ADD {attribute} :d, #total :d SET #ttl = if_not_exists(#ttl, :ttl)",
                ExpressionAttributeNames={"#total": "total", "#ttl": "ttl"},
                ExpressionAttributeValues={":d": {"N": str(delta)}, ":ttl": self._ttl(hour)},
                ReturnValues="UPDATED_NEW",
            )
            totals.append(int(float(answer.get("Attributes", {}).get("total", {}).get("N", "0"))))
        return totals[0]

    def raise_total(self, hour: int, installation_id: str | None, at_least: int) -> None:
        self._conditional_set(
            budget_key(hour, installation_id),
            "SET #total = :v, #ttl = if_not_exists(#ttl, :ttl)",
            "attribute_not_exists(#total) OR #total < :v",
            {":v": {"N": str(at_least)}, ":ttl": self._ttl(hour)},
            {"#total": "total", "#ttl": "ttl"},
        )

    def pause(self, hour: int, installation_id: str | None, until: float, reason: str) -> None:
        self._conditional_set(
            budget_key(hour, installation_id),
            "SET pausedUntil = :u, pauseReason = :r, #ttl = if_not_exists(#ttl, :ttl)",
            "attribute_not_exists(pausedUntil) OR pausedUntil < :u",
            {":u": {"N": repr(until)}, ":r": {"S": reason[:200]}, ":ttl": self._ttl(hour)},
            {"#ttl": "ttl"},
        )

    def _conditional_set(
        self, key: dict[str, Any], expression: str, condition: str, values: dict[str, Any], names: dict[str, str]
    ) -> None:
        # Already as high (or paused as long): nothing to change.
        with contextlib.suppress(self._client.exceptions.ConditionalCheckFailedException):
            self._client.update_item(
                TableName=self._table,
                Key=key,
                UpdateExpression=expression,
                ConditionExpression=condition,
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=values,
            )

    def usage(self, hour: int, installation_id: str | None) -> HourUsage:
        item = self._client.get_item(TableName=self._table, Key=budget_key(hour, installation_id)).get("Item") or {}

        def number(name: str) -> float | None:
            value = item.get(name, {}).get("N")
            return float(value) if value is not None else None

        reason = item.get("pauseReason", {}).get("S")
        return HourUsage(
            background=int(number("background") or 0),
            ui=int(number("ui") or 0),
            total=int(number("total") or 0),
            paused_until=number("pausedUntil"),
            pause_reason=reason,
        )
