"""In-memory stores for unit tests of jobs and of the job logic: no DynamoDB, no moto, no network.

Each fake implements a Protocol of ``forge_remote.storage.interfaces`` with its DynamoDB store's semantics
(newest token wins, an expired one is never handed out, invalidation removes exactly the given token;
results are upserts keyed by kind and key, cut to size by the store's own ``fit``; parked jobs are claimed
once). Times come from ``forge_remote.clock``, which a test moves with ``clock.advance``. A real
``JobRunner`` runs on them, with a ``client_factory`` that returns a fake Confluence client::

    installations = MemoryInstallations()
    installations.record_lifecycle(InstallationFacts(installation_id, api_base_url))
    tokens = MemoryTokenStore(installations)
    tokens.put_if_newer(installation_id, app_token(3600))
    runner = JobRunner(registry, tokens, installations, MemoryResults(), [host], 600, client_factory=FakeClient)

Not for production: nothing here is durable, and nothing is shared between processes.
"""

from forge_remote.testing.memory import (
    MemoryInstallations,
    MemoryLedger,
    MemoryParkingLot,
    MemoryResults,
    MemoryTokenStore,
    app_token,
)

__all__ = ["MemoryInstallations", "MemoryLedger", "MemoryParkingLot", "MemoryResults", "MemoryTokenStore", "app_token"]
