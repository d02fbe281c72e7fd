"""A Forge emulator: signs Forge Invocation Tokens with a dev key, serves its JWKS on loopback, and
issues app tokens as JWTs with an ``exp``, the way Forge does (docs/protocol-facts.md, sections 1 and 2).

Used by the tests, the local stack (``make demo`` / ``make local``) and the benchmarks, so all three
exercise the same protocol. Nothing here is imported by the deployed functions.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from werkzeug.wrappers import Request, Response

from forge_remote import clock
from forge_remote.config import app_ari
from local.loopback import LoopbackServer

FIT_ISSUER = "forge/invocation-token"
DEFAULT_APP_ID = "5c7bd2a4-0f1e-4d3b-9a6c-2e8f1b7d4a90"


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


@dataclass
class Site:
    """One Confluence site with the app installed on it."""

    installation_id: str
    cloud_id: str
    api_base_url: str
    site_url: str
    environment_type: str = "DEVELOPMENT"
    environment_id: str = field(default_factory=lambda: str(uuid.uuid4()))


class ForgeEmulator:
    """Forge's side of the protocol for one app. ``start()`` serves the JWKS and returns its URL."""

    def __init__(self, app_id: str = DEFAULT_APP_ID, *, port: int = 0) -> None:
        self.app_ari = app_ari(app_id)
        self.keys = [SigningKey(kid=f"dev-{uuid.uuid4().hex[:8]}", private_key=_rsa_key())]
        self._token_key = _rsa_key()  # app tokens are signed too, by a key the backend never needs
        self.jwks_available = True
        self.jwks_fetches = 0
        self._server = LoopbackServer(self._wsgi, port)

    # -- JWKS on loopback
    def _wsgi(self, environ: dict[str, Any], start_response: Any) -> Any:
        request = Request(environ)
        if request.path != "/.well-known/jwks.json":
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

    # -- tokens
    def app_token(self, lifetime_s: float = 3 * 3600, *, subject: str = "app", issued_at: float | None = None) -> str:
        """An app (or user) token: a JWT whose ``exp`` is its expiry on the stack's clock."""
        now = clock.now() if issued_at is None else issued_at
        claims = {"sub": subject, "iat": int(now), "exp": int(now + lifetime_s), "jti": uuid.uuid4().hex}
        return jwt.encode(claims, self._token_key, algorithm="RS256")

    def fit_claims(
        self,
        site: Site,
        *,
        module_key: str | None = None,
        principal: str | None = None,
        lifetime_s: int = 25,
    ) -> dict[str, Any]:
        """A FIT's claims. ``module_key`` names the invoking module as Forge does; left out, a user's
        call names ``ui-endpoint`` and any other call carries only the module type."""
        module: dict[str, str] = {"type": "core:endpoint"}
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
        system_token: str | None = None,
        user_token: str | None = None,
        principal: str | None = None,
        fit: str | None = None,
        module_key: str | None = None,
    ) -> dict[str, str]:
        """The headers of one Forge call to the remote (lower-cased, as API Gateway delivers them)."""
        fit = fit or self.sign(self.fit_claims(site, module_key=module_key, principal=principal))
        headers = {
            "authorization": f"Bearer {fit}",
            "content-type": "application/json",
            "x-b3-traceid": uuid.uuid4().hex[:16],
            "x-b3-spanid": uuid.uuid4().hex[:16],
            "user-agent": "Forge-Remote-Emulator/1.0",
        }
        if system_token:
            headers["x-forge-oauth-system"] = system_token
        if user_token:
            headers["x-forge-oauth-user"] = user_token
        return headers

    # -- bodies Forge sends
    def installed_event(self, site: Site, event_type: str = "avi:forge:installed:app") -> dict[str, Any]:
        return {
            "eventType": event_type,
            "id": site.installation_id,
            "installerAccountId": "557058:0a1b2c3d-4e5f-6789-abcd-ef0123456789",
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
            "atlassianId": "557058:0a1b2c3d-4e5f-6789-abcd-ef0123456789",
            "eventCreatedDate": "2026-11-28T10:00:00.000Z",
            "suppressNotifications": False,
            "content": {
                "id": page_id,
                "type": "page",
                "status": "current",
                "title": title,
                "space": {"key": space_key, "name": f"Space {space_key}"},
                "version": {"number": version},
            },
        }
        if retry_count is not None:
            event["retryContext"] = {"retryCount": retry_count, "retryReason": "FUNCTION_UPSTREAM_ERROR"}
        return {"payload": event} if wrapped else event
