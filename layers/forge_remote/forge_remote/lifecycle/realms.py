"""Which data residency realm this stack serves, and where the other realms' stacks keep their data.

One stack per region, one region per Forge realm: the manifest's ``remotes[].baseUrl`` maps each realm
to its stack's URL, and Forge calls the installation's realm. Each stack knows:

- ``DATA_REALM`` (template parameter ``DataRealm``): its own realm label (``default``, ``EU``, ``US``, ...);
- ``PEER_APP_TABLES`` (``PeerAppTables``): the other stacks' app tables, ``REALM=<table ARN>`` comma
  separated. A realm migration out of this stack writes the installation's items straight into the
  destination's app table (cross-region DynamoDB calls, granted on exactly these ARNs). Empty: this
  stack refuses every migration out of it (E0001).
- ``MIGRATION_SETTLE_S``: how long a migration's job hold must have been in force before the copy
  begins, so that no job that started before the hold can still write (the worker's timeout plus a margin).

Read at cold start: a malformed value fails the cold start, naming the setting, not a migration.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

from forge_remote.errors import ConfigurationError
from forge_remote.forge.migration_hooks import DEFAULT_REALM

# arn:<partition>:dynamodb:<region>:<account>:table/<name>
_TABLE_ARN = re.compile(r"^arn:aws[a-z-]*:dynamodb:([a-z0-9-]+):[0-9]{12}:table/[A-Za-z0-9_.-]{3,255}$")
_REALM = re.compile(r"^(default|[A-Z]{2,16})$")
MAX_PEERS = 5  # template.yaml grants on five PeerAppTables slots (its AllowedPattern says so too)
DEFAULT_SETTLE_S = 150  # ConfluenceWorkerFunction's 120 s timeout, and 30 s for the last write to land


@dataclass(frozen=True)
class PeerTable:
    """Another regional stack's app table: the realm it serves, its ARN, and the region in the ARN."""

    realm: str
    arn: str
    region: str


@dataclass(frozen=True)
class Residency:
    """This stack's realm and its peers (``from_env``)."""

    realm: str = DEFAULT_REALM
    peers: Mapping[str, PeerTable] | None = None
    settle_s: int = DEFAULT_SETTLE_S

    def peer(self, realm: str) -> PeerTable | None:
        """The app table of the stack serving ``realm``, if this stack may migrate installations there."""
        return (self.peers or {}).get(realm)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Residency:
        source = os.environ if env is None else env
        realm = _realm(source.get("DATA_REALM", "").strip() or DEFAULT_REALM, "DATA_REALM")
        peers = parse_peer_tables(source.get("PEER_APP_TABLES", ""))
        if realm in peers:
            raise ConfigurationError(f"PEER_APP_TABLES names this stack's own realm {realm}")
        raw = source.get("MIGRATION_SETTLE_S", "").strip()
        try:
            settle = int(raw) if raw else DEFAULT_SETTLE_S
        except ValueError as exc:
            raise ConfigurationError("MIGRATION_SETTLE_S must be a whole number of seconds") from exc
        if not 0 <= settle <= 3600:
            raise ConfigurationError("MIGRATION_SETTLE_S must be between 0 and 3600")
        return cls(realm=realm, peers=peers, settle_s=settle)


def _realm(value: str, setting: str) -> str:
    canonical = DEFAULT_REALM if value.lower() == DEFAULT_REALM else value.upper()
    if not _REALM.fullmatch(canonical):
        raise ConfigurationError(f"{setting}: {value[:20]!r} is not a realm label (default, EU, US, ...)")
    return canonical


def parse_peer_tables(text: str) -> dict[str, PeerTable]:
    """``EU=arn:aws:dynamodb:eu-central-1:123456789012:table/x,US=...`` as realm -> ``PeerTable``."""
    peers: dict[str, PeerTable] = {}
    for entry in (e.strip() for e in text.split(",")):
        if not entry:
            continue
        realm, sep, arn = entry.partition("=")
        match = _TABLE_ARN.fullmatch(arn.strip())
        if not sep or match is None:
            raise ConfigurationError("PEER_APP_TABLES entries must be REALM=<DynamoDB table ARN>")
        label = _realm(realm.strip(), "PEER_APP_TABLES")
        if label in peers:
            raise ConfigurationError(f"PEER_APP_TABLES names realm {label} twice")
        peers[label] = PeerTable(label, arn.strip(), match.group(1))
    if len(peers) > MAX_PEERS:
        raise ConfigurationError(f"PEER_APP_TABLES names more than {MAX_PEERS} realms (the template grants five)")
    return peers
