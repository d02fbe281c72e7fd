"""Every table key, and the id patterns they are built from, in one place.

Both tables are keyed by two strings, ``pk`` and ``sk``. Everything kept about one installation
shares the partition ``pk = INST#<installationId>``, so that one query finds all of it:

- tokens table, ``sk = SYSTEM``: the app token; ``sk = USER#<accountId>``: a user's token delivered
  with a UI call (``tokens.py``); ``sk = OFFLINE#<accountId>``: an offline user token a job minted
  (``offline_tokens.py``), kept apart from the UI's because its scopes differ;
- app table, ``sk = INSTALLATION``: the registry item; ``sk = FIT#<jti>``: a FIT that acted on a
  destructive route (``installations.py``); ``sk = <KIND>#<key>``: a job result, e.g.
  ``SNAPSHOT#<pageId>#v<version>`` (``results.py``).

Active registry items also carry the sparse GSI keys ``activePk = ACTIVE``, ``activeSk = <installationId>``.
One partition belongs to no installation: ``pk = IDEMPOTENCY#forge-events``, where Powertools keeps one
item per product-event delivery (``events_intake.py``; Powertools chooses its ``sk``).

Nothing here touches DynamoDB or imports another module of this package: the stores, the FIT
verifier and the job contract all stand on it.
"""

from __future__ import annotations

import re

# -- ids -------------------------------------------------------------------------------------------
# What a FIT's ``app.installationId`` and a job request's ``installationId`` may be: an ARI, bounded,
# with nothing that could break out of a key (no ``#``, no whitespace).
INSTALLATION_ID_PATTERN = re.compile(r"^[A-Za-z0-9:/._-]{1,200}$")
# What a FIT's ``principal`` (an Atlassian account id) may be, so ``USER#<accountId>`` stays one key.
ACCOUNT_ID_PATTERN = re.compile(r"^[A-Za-z0-9:_-]{1,128}$")
# A result kind names a kind of record (SNAPSHOT, DIGEST): no ``#``, so that kind prefixes never overlap.
RESULT_KIND_PATTERN = re.compile(r"^[A-Z_]+$")

# -- partitions ------------------------------------------------------------------------------------
INSTALLATION_PK_PREFIX = "INST#"
EVENTS_IDEMPOTENCY_PK = "IDEMPOTENCY#forge-events"  # Powertools' static pk: one partition for all deliveries


def installation_pk(installation_id: str) -> str:
    """The partition of everything kept about one installation, in either table."""
    return f"{INSTALLATION_PK_PREFIX}{installation_id}"


# -- tokens table ----------------------------------------------------------------------------------
SYSTEM_TOKEN_SK = "SYSTEM"  # noqa: S105 (a sort key)
USER_TOKEN_SK_PREFIX = "USER#"  # noqa: S105 (a sort-key prefix)


def user_token_sk(account_id: str) -> str:
    return f"{USER_TOKEN_SK_PREFIX}{account_id}"


# Offline user tokens (minted through Forge's offlineUserAuthToken) act as the same account as a UI
# user token but carry the impersonation scopes, not the UI call's: one never stands in for the other.
OFFLINE_TOKEN_SK_PREFIX = "OFFLINE#"  # noqa: S105 (a sort-key prefix)


def offline_token_sk(account_id: str) -> str:
    """An offline user token minted for ``account_id``; ``ValueError`` if it is not an account id."""
    if not ACCOUNT_ID_PATTERN.fullmatch(account_id):
        raise ValueError("not an Atlassian account id")
    return f"{OFFLINE_TOKEN_SK_PREFIX}{account_id}"


def token_sk(account_id: str | None) -> str:
    """The user's token if an account id is given, else the app (system) token."""
    return user_token_sk(account_id) if account_id else SYSTEM_TOKEN_SK


# -- app table -------------------------------------------------------------------------------------
INSTALLATION_SK = "INSTALLATION"
ONCE_SK_PREFIX = "FIT#"
MAX_JTI_CHARS = 200  # a jti is Forge's UUID; anything longer is cut, keeping the key well under 1 KB
ACTIVE_PK = "ACTIVE"  # the one partition of the ActiveInstallations GSI (attribute ``activePk``)


def once_sk(jti: str) -> str:
    """The record that the call with this FIT ``jti`` acted (``InstallationRegistry.act_once``)."""
    return f"{ONCE_SK_PREFIX}{jti[:MAX_JTI_CHARS]}"


def result_sk_prefix(kind: str) -> str:
    """What every result of this kind's sort key starts with (for ``begins_with``); ``ValueError`` if not a kind."""
    if not RESULT_KIND_PATTERN.fullmatch(kind):
        raise ValueError("result kind must be UPPER_CASE letters and underscores")
    return f"{kind}#"


def result_sk(kind: str, key: str) -> str:
    """A job result: ``<KIND>#<key>``; ``ValueError`` if ``kind`` is not UPPER_CASE letters and underscores."""
    return f"{result_sk_prefix(kind)}{key}"
