"""Data residency on this machine: one local stack per Forge realm, each in an AWS region of its own.

Deployed, each realm is a stack of its own in its own region (``template.yaml``'s ``DataRealm`` and
``PeerAppTables``; README, "Deploy for data residency"), and the manifest's ``remotes[].baseUrl`` maps
each realm to its stack's URL. ``make local ARGS="--realms default,EU"`` does the same locally: one
``local.serve`` process per realm (the first is the one started; it starts the others, ``--join``), each
with its own tables and queues in its own region of ONE moto server, which keeps regions apart the way
AWS does. One server, because a realm migration copies the installation's items with a cross-region
DynamoDB write from the source stack's ForgeTriggersFunction into the destination's app table: both
tables must be reachable at the one ``AWS_ENDPOINT_URL`` every function uses.

Names here are fixed by the realm, so each stack can name the others' app tables (its
``PeerAppTables``) before they exist: the stack of realm ``default`` is ``forge-remote-local`` (the name
a single ``make local`` has always used), any other ``forge-remote-local-<realm>``; a table's ARN is
moto's (account ``123456789012``). The regions are only distinct, not advice for a deployment.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

DEFAULT_REALM = "default"
ACCOUNT = "123456789012"  # moto's default account, and LocalStack's
STACK_NAME = "forge-remote-local"
# Every realm template.yaml's DataRealm allows, each in a region of its own.
REGIONS = {
    "default": "us-east-1",
    "EU": "eu-central-1",
    "US": "us-west-2",
    "AU": "ap-southeast-2",
    "DE": "eu-west-3",
    "SG": "ap-southeast-1",
    "CA": "ca-central-1",
    "IN": "ap-south-1",
    "KR": "ap-northeast-2",
    "JP": "ap-northeast-1",
    "GB": "eu-west-2",
    "CH": "eu-central-2",
}
MAX_REALMS = 6  # a stack names at most five peers (PeerAppTables)


def canonical(label: str) -> str:
    """``eu`` -> ``EU``, ``Default`` -> ``default``: the spelling the template and Forge use."""
    text = label.strip()
    return DEFAULT_REALM if text.lower() == DEFAULT_REALM else text.upper()


def realm_label(label: str) -> str:
    """A realm a local stack can serve, canonical; ``ValueError`` with a message fit for the user otherwise."""
    realm = canonical(label)
    if realm not in REGIONS:
        raise ValueError(f"not a realm: {label!r} (one of {', '.join(REGIONS)})")
    return realm


def parse_realms(text: str) -> tuple[str, ...]:
    """``default,EU``: the realms, in order (the first is the stack started); ``ValueError`` otherwise."""
    realms = tuple(realm_label(part) for part in text.split(",") if part.strip())
    if not realms:
        raise ValueError("--realms needs at least one realm, for example default,EU")
    if len(set(realms)) != len(realms):
        raise ValueError(f"--realms names a realm twice: {text!r}")
    if len(realms) > MAX_REALMS:
        raise ValueError(f"--realms names more than {MAX_REALMS} realms (a stack has at most five peers)")
    return realms


def region(realm: str) -> str:
    return REGIONS[realm]


def stack_name(realm: str) -> str:
    return STACK_NAME if realm == DEFAULT_REALM else f"{STACK_NAME}-{realm.lower()}"


def app_table(realm: str) -> str:
    """The realm's app table name (``LocalStack`` names a table ``<stack name>-<logical id>``)."""
    return f"{stack_name(realm)}-AppTable"


def app_table_arn(realm: str) -> str:
    return f"arn:aws:dynamodb:{region(realm)}:{ACCOUNT}:table/{app_table(realm)}"


def peer_app_tables(realms: Iterable[str], own: str) -> str:
    """The ``PeerAppTables`` value of ``own``'s stack: every other realm's app table ARN."""
    return ",".join(f"{realm}={app_table_arn(realm)}" for realm in realms if realm != own)


def realm_parameters(realms: Iterable[str], own: str) -> dict[str, str]:
    """The template parameters that make a stack ``own``'s, with the other realms as its peers."""
    return {"DataRealm": own, "PeerAppTables": peer_app_tables(realms, own)}


def realm_state_file(home_state_file: Path, realm: str) -> Path:
    """Where a joined realm's stack writes its state: next to the first stack's, named by the realm."""
    return home_state_file.with_name(f"{home_state_file.stem}-{realm}.json")
