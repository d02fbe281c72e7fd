"""What every function of one container shares: its settings and its stores, each built once.

Building it reads the environment and creates one DynamoDB client; a store is made the first time a
function asks for it, and nothing is fetched until a request needs it. The HTTP functions add the FIT
verifier and token capture (``inbound/wiring.py``); the others never load FIT code.
"""

from __future__ import annotations

from functools import cached_property
from typing import TYPE_CHECKING, Any, Self

from forge_remote import aws
from forge_remote.config import Settings

if TYPE_CHECKING:
    from forge_remote.budget.meter import FleetBudget
    from forge_remote.jobs.activity import JobActivity
    from forge_remote.jobs.parking import ParkingLot
    from forge_remote.storage.installations import InstallationRegistry
    from forge_remote.storage.results import ResultStore
    from forge_remote.tokens.store import TokenStore


class Wiring:
    def __init__(self, settings: Settings, dynamodb: Any) -> None:
        self.settings = settings
        self.dynamodb = dynamodb

    @classmethod
    def from_env(cls, settings: Settings | None = None) -> Self:
        return cls(settings or Settings.from_env(), aws.dynamodb())

    @cached_property
    def tokens(self) -> TokenStore:
        from forge_remote.tokens.store import TokenStore

        return TokenStore(self.dynamodb, self.settings.tokens_table)

    @cached_property
    def installations(self) -> InstallationRegistry:
        from forge_remote.storage.installations import InstallationRegistry

        return InstallationRegistry(self.dynamodb, self.settings.app_table)

    @cached_property
    def results(self) -> ResultStore:
        from forge_remote.storage.results import ResultStore

        return ResultStore(self.dynamodb, self.settings.app_table)

    @cached_property
    def parking(self) -> ParkingLot:
        from forge_remote.jobs.parking import ParkingLot

        return ParkingLot(self.dynamodb, self.settings.app_table)

    @cached_property
    def budget(self) -> FleetBudget:
        """The fleet's points budget: the policy from the environment, the ledger in the app table."""
        import os

        from forge_remote.budget.ledger import DynamoLedger
        from forge_remote.budget.meter import FleetBudget
        from forge_remote.budget.policy import BudgetPolicy

        return FleetBudget(BudgetPolicy.from_env(os.environ), DynamoLedger(self.dynamodb, self.settings.app_table))

    @cached_property
    def activity(self) -> JobActivity:
        from forge_remote.jobs.activity import JobActivity

        return JobActivity(self.dynamodb, self.settings.app_table)
