"""A Forge emulator: signs Forge Invocation Tokens with a dev key, serves its JWKS on loopback, and
issues app tokens as JWTs with an ``exp``, the way Forge does (docs/protocol-facts.md, sections 1 and 2).
Every token it mints carries the scopes Forge would grant, as a ``scope`` claim: by default the
``permissions.scopes`` of the repository's ``forge-app/manifest.yml`` (``scopes=`` overrides that for
the emulator, or for one token), which the Confluence emulator checks per operation.

It also serves Forge's GraphQL gateway for offline user impersonation (``POST /graphql``, the
``offlineUserAuthToken`` mutation): authenticated with an app token this emulator issued and that has
not expired on the stack's clock, it mints a user token (a JWT, ``sub`` = the account id, ``exp`` =
now + ``offline_ttl_s``, carrying only the manifest's scopes marked ``allowImpersonation``) and counts it. Failures are settable: an unknown user or one that cannot be
impersonated (``offline_user_errors``), and the next answers' HTTP status (``fail_graphql_next``: 401,
403, 429 with ``Retry-After``, 5xx).

``ui_call_headers`` is the one place a UI call (``invokeRemote``) is signed as Forge signs it: a FIT for
the ``ui-endpoint`` module with the user as principal, the app token and the user's token.
``product_event`` builds any Confluence product event in its documented shape (``page_event`` the page
ones the tests replay); ``reinstalled`` gives a site the new installation id Forge gives a reinstall.

Used by the tests, the local stack (``make demo`` / ``make local``) and the benchmarks, so all three
exercise the same protocol. Nothing here is imported by the deployed functions.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
import uuid
import zlib
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from werkzeug.wrappers import Request, Response

from forge_remote import clock
from forge_remote.config import app_ari
from local.loopback import LoopbackServer
from local.oauth_scopes import SCOPE_CLAIM, manifest_scopes, scope_claim
from local.oauth_scopes import impersonation_scopes as manifest_impersonation_scopes

FIT_ISSUER = "forge/invocation-token"
DEFAULT_APP_ID = "5c7bd2a4-0f1e-4d3b-9a6c-2e8f1b7d4a90"
# The emulated site's own user: who installs the app, causes the default events, and is signed in to the
# app's UI (the status page's stand-in and forge_cli's UI calls act as this account unless told otherwise).
DEFAULT_ACCOUNT_ID = "557058:0a1b2c3d-4e5f-6789-abcd-ef0123456789"
UI_MODULE_KEY = "ui-endpoint"  # the manifest's remote endpoint for invokeRemote (forge-app/manifest.yml)
UI_TOKEN_LIFETIME_S = 3 * 3600  # the app and user tokens Forge hands over with a UI call, fresh by default


def new_installation_id() -> str:
    return f"ari:cloud:ecosystem::installation/{uuid.uuid4()}"


def _rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@dataclass
class SigningKey:
    kid: str
    private_key: rsa.RSAPrivateKey = field(repr=False)

    def jwk(self) -> dict[str, Any]:
        document: dict[str, Any] = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.private_key.public_key()))
        return {**document, "kid": self.kid, "alg": "RS256", "use": "sig"}


@dataclass(frozen=True)
class Content:
    """What a product event says of a page (or blog post): Atlassian's ``Content`` in the event payloads."""

    id: str
    title: str
    space_key: str
    space_name: str
    version: int = 1
    space_id: int | None = None
    type: str = "page"


@dataclass
class Site:
    """One Confluence site with the app installed on it.

    ``realm``: the data residency realm the site's data is in (``default``, ``EU``, ...). Forge calls the
    remote the manifest's ``remotes[].baseUrl`` names for that realm; a realm migration's commit moves it.
    """

    installation_id: str
    cloud_id: str
    api_base_url: str
    site_url: str
    environment_type: str = "DEVELOPMENT"
    environment_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    realm: str = "default"


class ForgeEmulator:
    """Forge's side of the protocol for one app. ``start()`` serves the JWKS and returns its URL."""

    def __init__(
        self,
        app_id: str = DEFAULT_APP_ID,
        *,
        port: int = 0,
        scopes: Iterable[str] | None = None,
        impersonation_scopes: Iterable[str] | None = None,
    ) -> None:
        self.app_ari = app_ari(app_id)
        # What the app's tokens may do: the manifest's scopes, as Forge grants them, unless told otherwise.
        self.scopes = frozenset(manifest_scopes() if scopes is None else scopes)
        # What an offline user token may do: only the scopes the manifest marks allowImpersonation (the
        # strict reading of Atlassian's manifest reference, which says to mark the scopes used so).
        self.impersonation_scopes = frozenset(
            manifest_impersonation_scopes() if impersonation_scopes is None else impersonation_scopes
        )
        self.keys = [SigningKey(kid=f"dev-{uuid.uuid4().hex[:8]}", private_key=_rsa_key())]
        self._token_key = _rsa_key()  # app tokens are signed too, by a key the backend never needs
        self.jwks_available = True
        self.jwks_fetches = 0
        # Offline user impersonation (POST /graphql)
        self.offline_ttl_s = 3600.0
        self.offline_mints: Counter[str] = Counter()  # account id -> user tokens minted
        self.offline_user_errors: dict[str, str] = {}  # account id -> one of OFFLINE_USER_ERRORS
        self.graphql_requests: list[tuple[str | None, dict[str, Any]]] = []  # (bearer, variables) per POST
        self._graphql_faults: list[tuple[int, str | None]] = []
        self._lock = threading.Lock()
        self._server = LoopbackServer(self._wsgi, port)

    # -- JWKS and GraphQL on loopback
    def _wsgi(self, environ: dict[str, Any], start_response: Any) -> Any:
        request = Request(environ)
        if request.path == "/graphql":
            response = self._graphql(request)
        elif request.path != "/.well-known/jwks.json":
            response = Response("not found", status=404)
        elif not self.jwks_available:
            response = Response("unavailable", status=503)
        else:
            self.jwks_fetches += 1
            body = json.dumps({"keys": [k.jwk() for k in self.keys]})
            response = Response(body, content_type="application/json")
        return response(environ, start_response)

    def start(self) -> str:
        return self._server.start() + "/.well-known/jwks.json"

    @property
    def jwks_url(self) -> str:
        return self._server.url + "/.well-known/jwks.json"

    @property
    def graphql_url(self) -> str:
        """Where the offlineUserAuthToken mutation is served (``FORGE_GRAPHQL_URL`` for the local stack)."""
        return self._server.url + "/graphql"

    # -- offline user impersonation
    def fail_graphql_next(self, n: int, status: int = 429, *, retry_after: str | None = None) -> None:
        """Answer the next ``n`` GraphQL POSTs with HTTP ``status`` (401, 403, 429, 503, ...)."""
        with self._lock:
            self._graphql_faults.extend((status, retry_after) for _ in range(n))

    def reset_graphql(self) -> None:
        """Forget mints, requests, per-user failures and pending faults; back to the default ttl and the
        manifest's impersonation scopes."""
        with self._lock:
            self.offline_ttl_s = 3600.0
            self.impersonation_scopes = manifest_impersonation_scopes()
            self.offline_mints.clear()
            self.offline_user_errors.clear()
            self.graphql_requests.clear()
            self._graphql_faults.clear()

    @property
    def offline_mint_count(self) -> int:
        return sum(self.offline_mints.values())

    def _app_token_ok(self, token: str | None) -> bool:
        """An app token this emulator issued (its signature), not a user's, unexpired on the stack clock
        (pyjwt's own time checks read wall time, which the stack's clock may be ahead of)."""
        if not token:
            return False
        try:
            claims = jwt.decode(
                token,
                self._token_key.public_key(),
                algorithms=["RS256"],
                options={"verify_exp": False, "verify_iat": False, "verify_nbf": False},
            )
        except jwt.InvalidTokenError:
            return False
        return claims.get("sub") == "app" and float(claims.get("exp", 0)) > clock.now()

    def _graphql(self, request: Request) -> Response:
        authorization = request.headers.get("Authorization", "")
        scheme, _, credentials = authorization.partition(" ")
        bearer = credentials.strip() if scheme.lower() == "bearer" else None
        try:
            document = json.loads(request.get_data(as_text=True) or "{}")
        except ValueError:
            document = {}
        variables = document.get("variables") if isinstance(document, dict) else None
        variables = variables if isinstance(variables, dict) else {}
        with self._lock:
            self.graphql_requests.append((bearer, variables))
            fault = self._graphql_faults.pop(0) if self._graphql_faults else None
        if request.method != "POST":
            return _graphql_json(405, {"errors": [{"message": "POST only"}]})
        if fault is not None:
            status, retry_after = fault
            headers = {"Retry-After": retry_after} if retry_after else {}
            return _graphql_json(status, {"errors": [{"message": f"emulated HTTP {status}"}]}, headers)
        if not self._app_token_ok(bearer):
            return _graphql_json(401, {"errors": [{"message": "Unauthorized", "extensions": {"statusCode": 401}}]})
        query = document.get("query") if isinstance(document, dict) else None
        payload = variables.get("input")
        if not isinstance(query, str) or "offlineUserAuthToken" not in query or not isinstance(payload, dict):
            return _graphql_json(
                400, {"errors": [{"message": "Validation error: offlineUserAuthToken input expected"}]}
            )
        return self._offline_token(payload)

    def _offline_token(self, payload: dict[str, Any]) -> Response:
        account_id, context_ids = payload.get("userId"), payload.get("contextIds")
        if not isinstance(account_id, str) or not isinstance(context_ids, list) or not context_ids:
            return _graphql_result(False, "userId and contextIds are required")
        failure = self.offline_user_errors.get(account_id)
        if failure == "unknown-user":
            return _graphql_result(False, f"User {account_id} was not found")
        if failure == "not-allowed":
            return _graphql_result(False, "This user cannot be impersonated (service accounts cannot be impersonated)")
        if failure == "forbidden":
            return _graphql_json(403, {"errors": [{"message": "Scope does not allow impersonation"}]})
        if failure == "unauthorized":  # a GraphQL authorisation error about this user, on an accepted app token
            error = {"message": "Not authorized to act for this user", "extensions": {"classification": "UNAUTHORIZED"}}
            return _graphql_json(200, {"errors": [error], "data": None})
        with self._lock:
            self.offline_mints[account_id] += 1
        token = self.app_token(lifetime_s=self.offline_ttl_s, subject=account_id, scopes=self.impersonation_scopes)
        return _graphql_json(
            200,
            {
                "data": {
                    "offlineUserAuthToken": {
                        "success": True,
                        "errors": [],
                        "authToken": {"token": token, "ttl": int(self.offline_ttl_s)},
                    }
                },
                "extensions": {"gateway": {"request_id": str(uuid.uuid4())}},
            },
        )

    def stop(self) -> None:
        self._server.stop()

    def rotate_key(self, *, keep_old: bool = True) -> SigningKey:
        """Publish a new signing key (first in the set) and sign with it from now on."""
        key = SigningKey(kid=f"dev-{uuid.uuid4().hex[:8]}", private_key=_rsa_key())
        self.keys = [key, *self.keys] if keep_old else [key]
        return key

    # -- sites
    def site(self, api_origin: str = "https://api.atlassian.com", *, environment_type: str = "DEVELOPMENT") -> Site:
        cloud_id = str(uuid.uuid4())
        return Site(
            installation_id=new_installation_id(),
            cloud_id=cloud_id,
            api_base_url=f"{api_origin.rstrip('/')}/ex/confluence/{cloud_id}",
            site_url=f"https://site-{cloud_id[:8]}.atlassian.net",
            environment_type=environment_type,
        )

    def reinstalled(self, site: Site) -> Site:
        """The same site after the app was uninstalled and installed again: Forge gives the new
        installation a new id (the old one stays uninstalled); cloud, URLs and environment are the site's."""
        return dataclasses.replace(site, installation_id=new_installation_id())

    # -- tokens
    @property
    def token_key(self) -> rsa.RSAPrivateKey:
        """The key app and user tokens are signed with (shared with ``forge_cli`` by ``make local``)."""
        return self._token_key

    @token_key.setter
    def token_key(self, key: rsa.RSAPrivateKey) -> None:
        self._token_key = key

    def app_token(
        self,
        lifetime_s: float = 3 * 3600,
        *,
        subject: str = "app",
        issued_at: float | None = None,
        scopes: Iterable[str] | None = None,
    ) -> str:
        """An app (or user) token: a JWT whose ``exp`` is its expiry on the stack's clock, carrying
        ``scopes`` (default: the emulator's, i.e. the manifest's) in its ``scope`` claim."""
        now = clock.now() if issued_at is None else issued_at
        claims = {
            "sub": subject,
            "iat": int(now),
            "exp": int(now + lifetime_s),
            "jti": uuid.uuid4().hex,
            SCOPE_CLAIM: scope_claim(self.scopes if scopes is None else scopes),
        }
        return jwt.encode(claims, self._token_key, algorithm="RS256")

    def fit_claims(
        self,
        site: Site,
        *,
        module_key: str | None = None,
        principal: str | None = None,
        lifetime_s: int = 25,
        module_type: str = "core:endpoint",
    ) -> dict[str, Any]:
        """A FIT's claims. ``module_key`` names the invoking module as Forge does; left out, a user's
        call names ``ui-endpoint`` and any other call carries only the module type (``module_type``)."""
        module: dict[str, str] = {"type": module_type}
        if module_key or principal:
            module["key"] = module_key or "ui-endpoint"
        now = int(time.time())  # FITs live on wall time: the backend verifies them with pyjwt
        claims: dict[str, Any] = {
            "iss": FIT_ISSUER,
            "aud": self.app_ari,
            "iat": now,
            "nbf": now,
            "exp": now + lifetime_s,
            "jti": str(uuid.uuid4()),
            "app": {
                "id": self.app_ari,
                "appVersion": "2.0.0",
                "installationId": site.installation_id,
                "apiBaseUrl": site.api_base_url,
                "environment": {"type": site.environment_type, "id": site.environment_id},
                "module": module,
                "installation": {
                    "id": site.installation_id,
                    "contexts": [f"ari:cloud:confluence::site/{site.cloud_id}"],
                },
            },
        }
        if principal:
            claims["principal"] = principal
            claims["context"] = {"cloudId": site.cloud_id, "siteUrl": site.site_url, "moduleKey": module["key"]}
        return claims

    def sign(
        self, claims: Mapping[str, Any], *, key: SigningKey | None = None, headers: Mapping[str, Any] | None = None
    ) -> str:
        signing = key or self.keys[0]
        header = {"kid": signing.kid, **(headers or {})}
        return jwt.encode(dict(claims), signing.private_key, algorithm="RS256", headers=header)

    def headers(
        self,
        site: Site,
        *,
        app_token: str | None = None,
        user_token: str | None = None,
        principal: str | None = None,
        fit: str | None = None,
        module_key: str | None = None,
        module_type: str = "core:endpoint",
    ) -> dict[str, str]:
        """The headers of one Forge call to the remote (lower-cased, as API Gateway delivers them)."""
        fit = fit or self.sign(
            self.fit_claims(site, module_key=module_key, principal=principal, module_type=module_type)
        )
        headers = {
            "authorization": f"Bearer {fit}",
            "content-type": "application/json",
            "x-b3-traceid": uuid.uuid4().hex[:16],
            "x-b3-spanid": uuid.uuid4().hex[:16],
            "user-agent": "Forge-Remote-Emulator/1.0",
        }
        if app_token:
            headers["x-forge-oauth-system"] = app_token
        if user_token:
            headers["x-forge-oauth-user"] = user_token
        return headers

    def ui_call_headers(
        self,
        site: Site,
        account_id: str = DEFAULT_ACCOUNT_ID,
        *,
        app_token_lifetime_s: float | None = UI_TOKEN_LIFETIME_S,
    ) -> dict[str, str]:
        """The headers Forge adds to an ``invokeRemote`` call from the app's UI, signed in as ``account_id``.

        The one place a UI call is signed here (``forge_cli call``/``status``, and the status page's
        stand-in for ``@forge/bridge``): a FIT naming the UI endpoint's module key with the user as its
        ``principal``, the app token (``x-forge-oauth-system``, valid ``app_token_lifetime_s`` from now
        on the stack's clock; ``None`` sends none) and the user's own token (``x-forge-oauth-user``).
        """
        app_token = None if app_token_lifetime_s is None else self.app_token(lifetime_s=app_token_lifetime_s)
        return self.headers(
            site,
            app_token=app_token,
            user_token=self.app_token(lifetime_s=UI_TOKEN_LIFETIME_S, subject=account_id),
            principal=account_id,
            module_key=UI_MODULE_KEY,
        )

    # -- bodies Forge sends
    def installed_event(self, site: Site, event_type: str = "avi:forge:installed:app") -> dict[str, Any]:
        return {
            "eventType": event_type,
            "id": site.installation_id,
            "installerAccountId": DEFAULT_ACCOUNT_ID,
            "context": f"ari:cloud:confluence::site/{site.cloud_id}",
            "app": {"id": self.app_ari, "version": "2.0.0"},
            "environment": {"id": site.environment_id},
        }

    def page_event(
        self,
        page_id: str,
        space_key: str,
        *,
        created: bool = True,
        version: int = 1,
        title: str = "Release notes",
        wrapped: bool = False,
        retry_count: int | None = None,
    ) -> dict[str, Any]:
        event: dict[str, Any] = {
            "eventType": "avi:confluence:created:page" if created else "avi:confluence:updated:page",
            "atlassianId": DEFAULT_ACCOUNT_ID,
            "eventCreatedDate": "2026-11-28T10:00:00.000Z",
            "suppressNotifications": False,
            "content": _content(Content(page_id, title, space_key, f"Space {space_key}", version)),
        }
        if retry_count is not None:
            event["retryContext"] = {"retryCount": retry_count, "retryReason": "FUNCTION_UPSTREAM_ERROR"}
        return {"payload": event} if wrapped else event

    def product_event(
        self,
        event_type: str,
        *,
        content: Content | None = None,
        label: str | None = None,
        account_id: str = DEFAULT_ACCOUNT_ID,
        created_at: float | None = None,
    ) -> dict[str, Any]:
        """Any Confluence product event, in the shape Atlassian's events reference gives its kind (the last
        part of ``avi:confluence:<action>:<kind>``): page and blog post events carry the ``content``; label
        events the ``label`` (``{id, name, prefix, label}``) and, when added to or removed from content,
        that ``content``; space events the ``space`` of the content. Other kinds carry the ``content``
        when given. ``created_at`` (default: now on the stack's clock) is ``eventCreatedDate``, so two
        events sent apart are two deliveries, not one retried.
        """
        action, _, kind = event_type.removeprefix("avi:confluence:").partition(":")
        when = datetime.fromtimestamp(clock.now() if created_at is None else created_at, UTC)
        event: dict[str, Any] = {
            "eventType": event_type,
            "atlassianId": account_id,
            "eventCreatedDate": when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z",
            "suppressNotifications": False,
        }
        if kind == "space" and content is not None:
            event["space"] = _space(content)
        elif kind == "label":
            name = label or "audit"
            event["label"] = {"id": str(zlib.crc32(name.encode())), "name": name, "prefix": "global", "label": name}
            if content is not None and action in ("added", "removed"):
                event["content"] = _content(content)
        elif content is not None:
            event["content"] = _content(
                dataclasses.replace(content, type="blogpost") if kind == "blogpost" else content
            )
        return event


def _space(content: Content) -> dict[str, Any]:
    space: dict[str, Any] = {"key": content.space_key, "name": content.space_name}
    if content.space_id is not None:
        space = {"id": content.space_id, **space, "type": "global", "status": "current"}
    return space


def _content(content: Content) -> dict[str, Any]:
    return {
        "id": content.id,
        "type": content.type,
        "status": "current",
        "title": content.title,
        "space": _space(content),
        "version": {"number": content.version},
    }


OFFLINE_USER_ERRORS = (
    "unknown-user",
    "not-allowed",
    "forbidden",
    "unauthorized",
)  # values of ForgeEmulator.offline_user_errors


def _graphql_json(status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(body), status=status, content_type="application/json", headers=headers or {})


def _graphql_result(success: bool, message: str) -> Response:
    """HTTP 200 with the mutation's own answer (how Forge reports a refusal it understood)."""
    result = {"success": success, "errors": [{"message": message}], "authToken": None}
    return _graphql_json(200, {"data": {"offlineUserAuthToken": result}})
