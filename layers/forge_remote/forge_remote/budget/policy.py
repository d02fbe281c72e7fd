"""How much of Atlassian's hourly points quota background work may spend, and when it may go on.

Confluence Cloud charges every request points (1, plus 1 per page or space returned, plus 2 per user
or group) against a quota that resets at the top of each UTC hour. In the Global Pool (Tier 1, every
app's default) one quota of 65,000 points is shared by all of the app's installations, and once it is
spent every call is refused, UI calls made as the user included, for every tenant, until the reset.
In a Per-Tenant Pool (Tier 2, after Atlassian's review) each site has its own quota, sized by edition
and users (65,000 to 500,000).

The policy, in numbers (each a template parameter, read from the environment):

- ``background_share`` (``BACKGROUND_SHARE``, default 0.6): the fraction of the quota background jobs
  may spend in an hour; the rest is headroom for UI calls made in-request, which this library never
  refuses. In the tenant pool the share applies to each site's own quota.
- ``interactive_reserve`` (0.1): the last tenth of the background share is spent only by interactive
  jobs (requested from the UI: a user waits for them), so bulk work never uses up a user's job.
- ``installation_share`` (``INSTALLATION_SHARE``, default 0.1): in the Global Pool, the fraction of the
  background share one installation may spend in an hour, so one big tenant cannot spend the fleet's.
- ``total_ceiling``: background work also stops when everything known to be spent this hour (jobs, UI
  calls, and what Atlassian's headers report) reaches 90% of the quota, whoever spent it.

Waiting jobs come back after the reset, each installation at a stable slot spread over the first 15
minutes of the hour (``resume_at``), so the new hour does not start with a stampede.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass

from forge_remote.budget.slots import slot_offset_s
from forge_remote.errors import ConfigurationError

HOUR_S = 3600
GLOBAL_POOL_QUOTA = 65_000  # Tier 1's one quota for the whole app, and Tier 2's smallest (Free)
# Waiting jobs come back over the first 15 minutes of the next hour: spread enough that the hour does
# not start with a stampede, short enough that a backlog bigger than one hour's share has the rest of
# the hour to spend it (the budget's reservations pace the spending itself; make bench, part 8).
RESUME_SPREAD_S = 900.0
RESUME_JITTER_S = 60.0
TOTAL_CEILING = 0.9  # background stops when this much of the quota is known to be spent, by anyone


_FRACTIONS = {  # each fraction of the policy, and what sets it
    "background_share": "BACKGROUND_SHARE",
    "installation_share": "INSTALLATION_SHARE",
    "interactive_reserve": "the interactive reserve",
}


class Pool(enum.StrEnum):
    GLOBAL = "global"  # Tier 1: one quota for every installation of the app
    TENANT = "tenant"  # Tier 2: each site its own quota


def hour_of(now: float) -> int:
    """The UTC hour ``now`` falls in, as hours since the epoch (Atlassian's quota window)."""
    return int(now // HOUR_S)


def reset_at(now: float) -> float:
    """When the quota window ``now`` falls in resets: the top of the next UTC hour."""
    return float((hour_of(now) + 1) * HOUR_S)


def resume_at(installation_id: str, after: float) -> float:
    """When an installation's waiting jobs come back once the wait ends at ``after``: its stable slot in
    the ``RESUME_SPREAD_S`` that follow, with a minute of jitter."""
    return after + slot_offset_s(f"resume:{installation_id}", RESUME_SPREAD_S, jitter_s=RESUME_JITTER_S)


@dataclass(frozen=True)
class BudgetPolicy:
    pool: Pool = Pool.GLOBAL
    quota: int = GLOBAL_POOL_QUOTA  # the Global Pool's; in the tenant pool, a site's until its headers say
    background_share: float = 0.6
    installation_share: float = 0.1
    interactive_reserve: float = 0.1

    def __post_init__(self) -> None:
        if self.quota < 1:
            raise ConfigurationError("RATE_LIMIT_QUOTA must be at least 1 point")
        for name, variable in _FRACTIONS.items():
            value = getattr(self, name)
            if not (isinstance(value, float | int) and math.isfinite(value) and 0 < value <= 1):
                raise ConfigurationError(f"{variable} must be a fraction above 0 and at most 1")

    def background_points(self, quota: int) -> int:
        """What background jobs may spend in an hour out of ``quota``."""
        return math.floor(quota * self.background_share)

    def job_ceiling(self, quota: int, *, interactive: bool) -> int:
        """Background points a job of this kind may take the hour's spending to."""
        share = self.background_points(quota)
        return share if interactive else math.floor(share * (1 - self.interactive_reserve))

    def installation_ceiling(self, quota: int) -> int:
        """What one installation's jobs may spend in an hour out of the fleet's ``quota`` (Global Pool)."""
        return max(1, math.floor(self.background_points(quota) * self.installation_share))

    @staticmethod
    def total_ceiling(quota: int) -> int:
        """Everything known spent this hour past which background work stops."""
        return math.floor(quota * TOTAL_CEILING)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> BudgetPolicy:
        """``RATE_LIMIT_POOL`` (global | tenant), ``RATE_LIMIT_QUOTA``, ``BACKGROUND_SHARE``,
        ``INSTALLATION_SHARE``; unset ones take the defaults, bad ones raise ``ConfigurationError``."""
        raw_pool = env.get("RATE_LIMIT_POOL", "").strip().lower() or Pool.GLOBAL.value
        try:
            pool = Pool(raw_pool)
        except ValueError:
            raise ConfigurationError("RATE_LIMIT_POOL must be 'global' or 'tenant'") from None
        return cls(
            pool=pool,
            quota=int(_number(env, "RATE_LIMIT_QUOTA", GLOBAL_POOL_QUOTA, whole=True)),
            background_share=_number(env, "BACKGROUND_SHARE", cls.background_share),
            installation_share=_number(env, "INSTALLATION_SHARE", cls.installation_share),
        )


def _number(env: Mapping[str, str], name: str, default: float, *, whole: bool = False) -> int | float:
    raw = env.get(name, "").strip()
    if not raw:
        return int(default) if whole else default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigurationError(f"{name} must be a number") from None
    if whole:
        if not value.is_integer():
            raise ConfigurationError(f"{name} must be a whole number")
        return int(value)
    return value
