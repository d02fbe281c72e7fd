"""Offline user impersonation: a job acts as a given account without that user being present.

Forge mints such a token through its GraphQL gateway: the mutation ``offlineUserAuthToken(input:
{contextIds, userId})``, authenticated with the installation's app token as ``Authorization: Bearer``,
answers ``{success, errors {message}, authToken {token, ttl}}``. The feature is new and partly preview,
so the gateway URL (``FORGE_GRAPHQL_URL``) and the context id (``OFFLINE_TOKEN_CONTEXT_ID``, a template
with ``{cloudId}``) are settings, and the answer is read leniently.

The token rules hold as for app tokens (docs/token-rules.md): a minted token is cached per
(installation, account) in the tokens table under ``OFFLINE#<accountId>`` with its expiry (the earlier
of ``ttl`` and the token's own ``exp``, capped at 4 h) and a DynamoDB TTL; a cached token is handed out
only while it has ``TOKEN_MIN_VALIDITY_S`` left, else a new one is minted; the write is bundled with a
check that the installation is still installed, and uninstall deletes the whole partition. A token a
server rejects is invalidated exactly (``TokenRejected.token_sha256``, handled by the worker).

Failures never fall back to the app's token: a user who does not exist or cannot be impersonated
(service accounts, Atlassian ID-9158), or a 403 (a scope without impersonation), is an
``OfflineTokenRefused`` (the job goes to the DLQ); a 401 is the *app* token being refused
(``TokenRejected`` with its digest: the worker invalidates exactly it); rate limits, 5xx, timeouts and
answers that cannot be read are ``OfflineTokenUnavailable`` (deferred). Reasons name no token and no
account id.

It talks HTTP as every client of this library does (``forge_remote.outbound``: the container's
session, no redirects, timeouts within the invocation, ``Retry-After``, redacted messages). This module
imports ``requests``; the worker imports it only when a job first asks for a user client.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

import requests

from forge_remote import clock
from forge_remote.confluence.api_hosts import require_allowed_api_base
from forge_remote.errors import (
    ConfigurationError,
    DisallowedApiBaseUrl,
    OfflineTokenRefused,
    OfflineTokenUnavailable,
    RetryLater,
    TokenRejected,
    TokenUnavailable,
)
from forge_remote.outbound import RATE_LIMITED, bounded_timeouts, redact, retry_after_s, send
from forge_remote.storage.installations import InstallationRegistry
from forge_remote.storage.table_keys import offline_token_sk
from forge_remote.tokens.lease import REQUEST_MARGIN_S, TokenLease
from forge_remote.tokens.store import MAX_PAYLOAD_CHARS, PutOutcome, StoredToken, TokenStore, token_expiry, token_sha256

logger = logging.getLogger(__name__)

MUTATION = (
    "mutation forge_remote_offlineUserAuthToken($input: OfflineUserAuthTokenInput!) {"
    " offlineUserAuthToken(input: $input) { success errors { message } authToken { token ttl } } }"
)
TIMEOUT_S = (3.05, 10.0)  # connect, read: a mint is one small POST
SAFETY_MARGIN_S = 3.0  # left in the invocation to record a deferral after a mint gives up
MAX_TOKEN_CHARS = 3 * MAX_PAYLOAD_CHARS  # a JWT with a payload segment we would still read
MAX_REASON_CHARS = 200  # of Forge's own message, in DLQ reasons and logs
RATE_LIMIT_DELAY_S = 60.0  # a 429 without Retry-After
MAX_DELAY_S = 1800.0
# Forge's words for "this account can never be impersonated" (lenient: the messages are not a contract).
_PERMANENT_MESSAGE = re.compile(
    r"not\s+found|does\s*n[o']t\s+exist|no\s+such\s+user|unknown\s+user|invalid\s+user|"
    r"can(?:not|'t|\s+not)\s+be\s+impersonated|not\s+(?:be\s+)?(?:allowed|permitted)\s+to\s+impersonate|"
    r"impersonation\s+(?:is\s+)?not\s+(?:allowed|permitted|supported|enabled)|service\s+account|"
    r"deactivated|closed\s+account|account\s+(?:is\s+)?(?:closed|inactive|deleted)",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class MintedToken:
    token: str = field(repr=False)
    ttl_s: float | None  # what Forge said, if it said a usable number


def graphql_url_allowed(url: str, allowed_hosts: Collection[str]) -> str:
    """``FORGE_GRAPHQL_URL`` if the app token may be sent there: https on an allowed host (plain http
    only on an allowed loopback host, the local stack), no credentials, query or fragment (rule 8)."""
    try:
        return require_allowed_api_base(url, allowed_hosts)
    except DisallowedApiBaseUrl as exc:
        # The check speaks of an apiBaseUrl; here it is the GraphQL gateway the app token would go to.
        raise ConfigurationError(f"FORGE_GRAPHQL_URL refused: {exc.reason.replace('apiBaseUrl', 'the URL')}") from None


def _forge_message(messages: list[str], secrets: Collection[str]) -> str:
    """Forge's first message, with the app token and the account id taken out, short."""
    first = " ".join((messages[0] if messages else "no message").split())
    for secret in secrets:  # every piece of the token, as the Confluence client redacts its errors
        first = redact(first[:2000], secret)
    return first[:MAX_REASON_CHARS]


def _messages(errors: object) -> list[str]:
    if not isinstance(errors, list):
        return []
    return [str(e.get("message")) for e in errors if isinstance(e, dict) and e.get("message")]


def _error_codes(errors: object) -> set[str]:
    """What GraphQL errors' ``extensions`` say (``statusCode``, ``errorType``, ``classification``), upper-cased."""
    codes: set[str] = set()
    for error in errors if isinstance(errors, list) else []:
        extensions = error.get("extensions") if isinstance(error, dict) else None
        if isinstance(extensions, dict):
            codes.update(
                str(extensions[k]).upper() for k in ("statusCode", "errorType", "classification") if k in extensions
            )
    return codes


def _ttl(value: object) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        ttl = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        return None
    return ttl if math.isfinite(ttl) and ttl > 0 else None


class OfflineTokenMinter:
    """Sends the mutation: one POST per call, never retried here (a mint is not idempotent; the job
    is retried as a whole, later). ``mint_count`` counts the POSTs, for benchmarks and tests."""

    def __init__(
        self,
        graphql_url: str,
        context_id_template: str,
        allowed_hosts: Collection[str],
        *,
        session: requests.Session | None = None,
        timeout_s: tuple[float, float] = TIMEOUT_S,
    ) -> None:
        self.graphql_url = graphql_url_allowed(graphql_url, allowed_hosts)
        self._context_id_template = context_id_template
        self._session = session
        self._timeout_s = timeout_s
        self.mint_count = 0

    def context_id(self, cloud_id: str) -> str:
        return self._context_id_template.replace("{cloudId}", cloud_id)

    def mint(self, *, account_id: str, cloud_id: str, app_token: str, remaining_ms: Callable[[], int]) -> MintedToken:
        """A token acting as ``account_id``, or raise (see the module docstring for which error)."""
        timeouts = bounded_timeouts(self._timeout_s, remaining_ms, SAFETY_MARGIN_S, "minting a user token")
        variables = {"input": {"contextIds": [self.context_id(cloud_id)], "userId": account_id}}
        body = {"query": MUTATION, "variables": variables}
        self.mint_count += 1
        try:
            # send() follows no redirect: a redirect must not carry the app token anywhere else.
            response = send(
                "POST", self.graphql_url, token=app_token, timeout=timeouts, session=self._session, json=body
            )
        except requests.RequestException as exc:
            logger.warning("offline token mint failed: %s", type(exc).__name__)
            raise OfflineTokenUnavailable(f"Forge GraphQL unreachable ({type(exc).__name__})") from None
        logger.info("offline token mint -> HTTP %d", response.status_code)
        return self._read(response, (app_token, account_id))

    def _read(self, response: requests.Response, secrets: tuple[str, str]) -> MintedToken:
        status = response.status_code
        if status != 200:
            raise self._http_error(response, secrets)
        try:
            document = response.json()
        except ValueError:
            raise OfflineTokenUnavailable("Forge GraphQL answered 200 without JSON") from None
        data = document.get("data") if isinstance(document, dict) else None
        result = data.get("offlineUserAuthToken") if isinstance(data, dict) else None
        if not isinstance(result, dict):
            errors = document.get("errors") if isinstance(document, dict) else None
            raise self._graphql_error(errors, secrets)
        auth = result.get("authToken")
        token = auth.get("token") if isinstance(auth, dict) else None
        if result.get("success") is False or not isinstance(token, str) or not token.strip():
            messages = _messages(result.get("errors"))
            reason = _forge_message(messages, secrets)
            if any(_PERMANENT_MESSAGE.search(m) for m in messages):
                raise OfflineTokenRefused(f"Forge will not mint a token for this user: {reason}")
            raise OfflineTokenUnavailable(f"Forge did not mint a user token: {reason}")
        token = token.strip()
        if len(token) > MAX_TOKEN_CHARS or any(c.isspace() for c in token):
            raise OfflineTokenUnavailable("Forge answered with a user token that is not one")
        return MintedToken(token=token, ttl_s=_ttl(auth.get("ttl") if isinstance(auth, dict) else None))

    def _http_error(self, response: requests.Response, secrets: tuple[str, str]) -> Exception:
        status = response.status_code
        if status == 401:
            # The app token was refused (expired, revoked): invalidate exactly it, never act as the app instead.
            return TokenRejected(401, token_sha256=token_sha256(secrets[0]), by="Forge GraphQL")
        if status == 403:
            return OfflineTokenRefused(
                "Forge GraphQL refused offline impersonation (HTTP 403: a scope without impersonation?)"
            )
        if status in RATE_LIMITED:
            hint = retry_after_s(response.headers.get("Retry-After"), time.time())
            delay = min(hint if hint is not None else RATE_LIMIT_DELAY_S, MAX_DELAY_S)
            return OfflineTokenUnavailable(f"Forge GraphQL HTTP {status}", delay)
        if status >= 500:
            return OfflineTokenUnavailable(f"Forge GraphQL HTTP {status}")
        if 300 <= status < 400:
            return ConfigurationError(
                f"Forge GraphQL answered HTTP {status}: redirect not followed (check FORGE_GRAPHQL_URL)"
            )
        return OfflineTokenRefused(f"Forge GraphQL answered HTTP {status} (check FORGE_GRAPHQL_URL)")

    def _graphql_error(self, errors: object, secrets: tuple[str, str]) -> Exception:
        """A GraphQL error answer (HTTP 200 with ``errors`` and no result): classified by its
        ``extensions`` where Forge gives them, else by its message, else deferred."""
        codes, messages = _error_codes(errors), _messages(errors)
        reason = _forge_message(messages, secrets)
        # Only authentication errors say the app token is bad. UNAUTHORIZED is authorisation: it may be
        # about this one user, and removing the app token for it would strand every other job.
        if codes & {"401", "UNAUTHENTICATED"}:
            return TokenRejected(401, token_sha256=token_sha256(secrets[0]), by="Forge GraphQL")
        if codes & {"403", "FORBIDDEN", "UNAUTHORIZED"} or any(_PERMANENT_MESSAGE.search(m) for m in messages):
            return OfflineTokenRefused(f"Forge GraphQL refused the mint: {reason}")
        if codes & {"429", "RATE_LIMITED", "TOO_MANY_REQUESTS"}:
            return OfflineTokenUnavailable(f"Forge GraphQL rate limited: {reason}", RATE_LIMIT_DELAY_S)
        return OfflineTokenUnavailable(f"Forge GraphQL error: {reason}")


class OfflineTokenLease(TokenLease):
    """A job's hold on one account's offline token: the cached one while it has the job's minimum
    left, else a fresh mint (cached for the next job, in any container)."""

    def __init__(
        self,
        store: TokenStore,
        installation_id: str,
        account_id: str,
        min_validity_s: float,
        *,
        minter: OfflineTokenMinter,
        cloud_id: str,
        app_token: Callable[[], str],
        installations: InstallationRegistry,
        remaining_ms: Callable[[], int],
        request_margin_s: float = REQUEST_MARGIN_S,
    ) -> None:
        super().__init__(
            store, installation_id, min_validity_s, request_margin_s=request_margin_s, sk=offline_token_sk(account_id)
        )
        self.account_id = account_id
        self._minter = minter
        self._cloud_id = cloud_id
        self._app_token = app_token
        self._installations = installations
        self._remaining_ms = remaining_ms

    def _fetch(self, min_validity_s: float) -> StoredToken:
        # Always the job's minimum, even for a refresh mid-job: a token near its end is re-minted, not used.
        try:
            return self._store.get_valid(self.installation_id, self._min_validity_s, sk=self.sk)
        except TokenUnavailable:
            return self._mint()

    def _mint(self) -> StoredToken:
        minted = self._minter.mint(
            account_id=self.account_id,
            cloud_id=self._cloud_id,
            app_token=self._app_token(),  # the app lease's valid token: its digest names it if refused
            remaining_ms=self._remaining_ms,
        )
        received = clock.now()
        not_after = received + minted.ttl_s if minted.ttl_s is not None else None
        outcome = self._store.put_if_newer(
            self.installation_id,
            minted.token,
            account_id=self.account_id,
            sk=self.sk,
            not_after=not_after,
            guard=self._installations.still_installed(self.installation_id),
        )
        if outcome is PutOutcome.INSTALLATION_GONE:
            raise RetryLater("the installation was uninstalled while a user token was minted")  # next run discards it
        expires_at, _ = token_expiry(minted.token, received, not_after=not_after)
        stored = StoredToken(self.installation_id, self.account_id, expires_at, minted.token)
        # A fresh token shorter-lived than the job minimum is still used: minting again cannot give a
        # longer one, and every request re-checks it (re-minting when it nears its end).
        if stored.valid_for() < self._margin_s:
            raise OfflineTokenUnavailable(f"Forge minted a user token valid for only {max(0, stored.valid_for()):.0f}s")
        return stored

    def replacement_available(self) -> bool:
        """After this lease's token was rejected and invalidated, the retry mints a fresh one."""
        return True


@dataclass
class OfflineTokens:
    """The container's way to user clients: one minter, the token store, the registry for the guard."""

    store: TokenStore
    minter: OfflineTokenMinter
    installations: InstallationRegistry
    min_validity_s: float

    def lease(
        self,
        installation_id: str,
        account_id: str,
        *,
        cloud_id: str,
        app_token: Callable[[], str],
        remaining_ms: Callable[[], int],
    ) -> OfflineTokenLease:
        return OfflineTokenLease(
            self.store,
            installation_id,
            account_id,
            self.min_validity_s,
            minter=self.minter,
            cloud_id=cloud_id,
            app_token=app_token,
            installations=self.installations,
            remaining_ms=remaining_ms,
        )
