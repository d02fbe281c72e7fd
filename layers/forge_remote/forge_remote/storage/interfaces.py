"""What the job logic needs of its stores, as Protocols: the DynamoDB stores satisfy them, and so do the
in-memory fakes of ``forge_remote.testing``, so a job and the runner can be tested with no AWS at all.

Each Protocol has only what its consumers call: ``Tokens`` what ``TokenLease``, ``JobRunner`` and the
offline-token cache (``tokens/offline.py``) use of ``TokenStore``; ``Installations`` what the runner uses
of ``InstallationRegistry`` (``still_installed`` guards an offline token's write); ``Results`` is
``ResultStore``; ``ParkedJobs`` is ``ParkingLot``, as the worker and ``wake_parked`` use it. The
semantics are the DynamoDB stores' own, in their docstrings; ``tests/integration/test_store_contracts.py``
holds the fakes to them. Nothing here is imported at run time but ``typing``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from mypy_boto3_dynamodb.type_defs import TransactWriteItemTypeDef

    from forge_remote.jobs.parking import ParkedJob
    from forge_remote.storage.installations import Installation
    from forge_remote.storage.results import StoredResult
    from forge_remote.tokens.store import PutOutcome, StoredToken


class Tokens(Protocol):
    """Tokens by installation and key: newest wins, an expired one is never handed out (``TokenStore``)."""

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
    ) -> PutOutcome: ...

    def get_valid(
        self, installation_id: str, min_validity_s: float, *, account_id: str | None = None, sk: str | None = None
    ) -> StoredToken: ...

    def invalidate(
        self, installation_id: str, token: str, *, account_id: str | None = None, sk: str | None = None
    ) -> bool: ...

    def wakes_jobs(self, installation_id: str, min_validity_s: float) -> bool: ...


class Installations(Protocol):
    """The installation registry, as the runner reads it (``InstallationRegistry``)."""

    def get(self, installation_id: str) -> Installation | None: ...

    def still_installed(self, installation_id: str) -> TransactWriteItemTypeDef: ...


class Results(Protocol):
    """Job results: upserts keyed by kind and key, cut to the item size budget (``ResultStore``)."""

    def put(
        self, installation_id: str, kind: str, key: str, record: dict[str, Any], *, ttl_s: int | None = None
    ) -> StoredResult: ...

    def get(self, installation_id: str, kind: str, key: str) -> dict[str, Any] | None: ...

    def list(self, installation_id: str, kind: str) -> list[dict[str, Any]]: ...


class ParkedJobs(Protocol):
    """Jobs waiting for a token, each claimed by exactly one caller (``ParkingLot``)."""

    def park(
        self, installation_id: str, request_id: str, *, job: str, receipt_handle: str, retry_at: float
    ) -> None: ...

    def unpark(self, installation_id: str, request_id: str) -> None: ...

    def waiting(self, installation_id: str) -> int: ...

    def claim(self, installation_id: str, request_id: str | None = None) -> Iterator[ParkedJob]: ...

    def restore(self, parked: ParkedJob) -> None: ...
