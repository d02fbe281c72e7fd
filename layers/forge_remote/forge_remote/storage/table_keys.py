"""Every table key, and the id patterns they are built from, in one place.

Both tables are keyed by two strings, ``pk`` and ``sk``. Everything kept about one installation
shares the partition ``pk = INST#<installationId>``, so that one query finds all of it:

- tokens table, ``sk = SYSTEM``: the app token; ``sk = USER#<accountId>``: a user's token delivered
  with a UI call (``tokens/store.py``); ``sk = OFFLINE#<accountId>``: an offline user token a job minted
  (``tokens/offline.py``), kept apart from the UI's because its scopes differ; ``sk = REFUSED#SYSTEM``:
  the digest of the last app token Confluence refused, so its re-delivery wakes no parked job;
- app table, ``sk = INSTALLATION``: the registry item; ``sk = FIT#<jti>``: a FIT that acted on a
  destructive route (``storage/installations.py``); ``sk = <KIND>#<key>``: a job result, e.g.
  ``SNAPSHOT#<pageId>#v<version>`` (``storage/results.py``); ``sk = PARKED#<requestId>``: a job waiting for a
  token (``jobs/parking.py``); ``sk = DEAD#<time>#<requestId>``: a job sent to the dead-letter queue, and
  ``sk = LASTRUN#<job>``: the last run of each job kind (``jobs/activity.py``); ``sk = PRIVACY#REPORT``:
  the personal data report's progress (the ``personal-data-report`` job); ``sk = MIGRATION#<migrationId>``:
  a data residency realm migration of the installation to another regional stack (``storage/migrations.py``).

Active registry items also carry the sparse GSI keys ``activePk = ACTIVE``, ``activeSk = <installationId>``;
uninstalled ones whose data cleanup is not finished carry ``activePk = CLEANUP`` (``lifecycle/cleanup.py``),
as do installations moved to another realm whose data here is still being deleted; installations held by
a realm migration in progress carry ``activePk = MIGRATING``, so the scheduler, which reads ``ACTIVE``, skips them.
Two partitions belong to no installation: ``pk = IDEMPOTENCY#forge-events``, where Powertools keeps one
item per product-event delivery (``jobs/intake.py``), and ``pk = IDEMPOTENCY#jobs``, one item per job
request that ran to the end (the worker; Powertools chooses the ``sk`` of both).

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
JOBS_IDEMPOTENCY_PK = "IDEMPOTENCY#jobs"  # one item per job request done, so a redelivery never runs it again


def installation_pk(installation_id: str) -> str:
    """The partition of everything kept about one installation, in either table."""
    return f"{INSTALLATION_PK_PREFIX}{installation_id}"


# -- tokens table ----------------------------------------------------------------------------------
APP_TOKEN_SK = "SYSTEM"  # noqa: S105 (a sort key)
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


# The digest (never the token) of the last app token a server refused (``TokenStore.invalidate``).
REFUSED_TOKEN_SK = f"REFUSED#{APP_TOKEN_SK}"


def token_sk(account_id: str | None) -> str:
    """The user's token if an account id is given, else the app (system) token."""
    return user_token_sk(account_id) if account_id else APP_TOKEN_SK


# -- app table -------------------------------------------------------------------------------------
INSTALLATION_SK = "INSTALLATION"
ONCE_SK_PREFIX = "FIT#"
MAX_JTI_CHARS = 200  # a jti is Forge's UUID; anything longer is cut, keeping the key well under 1 KB
ACTIVE_PK = "ACTIVE"  # the ActiveInstallations GSI's partition of active installations (attribute ``activePk``)
CLEANUP_PK = "CLEANUP"  # ...and of uninstalled (or moved) ones whose data cleanup is not finished
MIGRATING_PK = "MIGRATING"  # ...and of active ones held by a realm migration in progress (no scheduled jobs)


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


# Jobs waiting for a token, parked under their installation so the next token delivery finds them.
PARKED_SK_PREFIX = "PARKED#"


def parked_sk(request_id: str) -> str:
    return f"{PARKED_SK_PREFIX}{request_id}"


# What an admin's status page shows of the jobs: the dead-lettered ones (newest first, so the time
# leads the key) and the last run of each job kind.
DEAD_SK_PREFIX = "DEAD#"
LAST_RUN_SK_PREFIX = "LASTRUN#"


def dead_sk(at_iso: str, request_id: str) -> str:
    return f"{DEAD_SK_PREFIX}{at_iso}#{request_id}"


def last_run_sk(job: str) -> str:
    return f"{LAST_RUN_SK_PREFIX}{job}"


# The personal data report's progress for an installation (which cycle, the digest of the last account
# answered: a key, never a position; an answer whose erasure is pending).
PRIVACY_REPORT_SK = "PRIVACY#REPORT"


# A data residency realm migration of the installation (``storage/migrations.py``), one item per Forge
# ``migrationId``. The id becomes part of a key, so it may hold no ``#`` and no whitespace.
MIGRATION_SK_PREFIX = "MIGRATION#"
MIGRATION_ID_PATTERN = re.compile(r"^[A-Za-z0-9:._-]{1,128}$")


def migration_sk(migration_id: str) -> str:
    """The record of the migration ``migration_id``; ``ValueError`` if it is not a usable id."""
    if not MIGRATION_ID_PATTERN.fullmatch(migration_id):
        raise ValueError("not a migration id: 1-128 letters, digits and : . _ -")
    return f"{MIGRATION_SK_PREFIX}{migration_id}"
