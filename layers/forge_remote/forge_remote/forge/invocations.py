"""Forge Invocation Token (FIT) verification.

Every call Forge makes to the remote carries ``Authorization: Bearer <FIT>``. ``FitVerifier``
checks it (RS256 only, issuer, audience, times with a small leeway, required claims, apiBaseUrl
allow-list, icLabel) and returns an ``Invocation``: the few facts a handler needs, with the app
tokens attached but hidden from ``repr`` so that logging the object never leaks them.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

import jwt

from forge_remote.confluence.api_hosts import require_allowed_api_base
from forge_remote.errors import DisallowedApiBaseUrl, InvalidInvocation
from forge_remote.forge.signing_keys import JwksCache
from forge_remote.storage.table_keys import ACCOUNT_ID_PATTERN, INSTALLATION_ID_PATTERN

FIT_ISSUER = "forge/invocation-token"
ALGORITHM = "RS256"
REQUIRED_CLAIMS = ("exp", "iat", "iss", "aud", "jti")  # pyjwt refuses a FIT without any of them
LEEWAY_S = 10.0  # clock skew allowed on exp, iat and nbf
MAX_AUTHORIZATION_LENGTH = 16 * 1024
APP_TOKEN_HEADER = "x-forge-oauth-system"  # noqa: S105 (a header name)
USER_TOKEN_HEADER = "x-forge-oauth-user"  # noqa: S105 (a header name)

_IC_LABEL = re.compile(r"^[a-z0-9_-]{1,50}$")
UI_CONTEXT_CLAIMS = ("localId", "moduleKey", "extension")
HEADER_MEMO_SIZE = 16
API_BASE_MEMO_SIZE = 256  # apiBaseUrls that passed the allow-list: one per installation this container serves
MAX_FIT_LIFETIME_S = 300  # Forge's FITs live about 25 s: one valid for longer is not Forge's
_CLOUD_ID_IN_URL = re.compile(r"/ex/confluence/([0-9A-Za-z-]{1,64})(?:/|$)")

_PYJWT_REASONS: tuple[tuple[type[Exception], str], ...] = (
    (jwt.ExpiredSignatureError, "token expired"),
    (jwt.ImmatureSignatureError, "token not yet valid"),
    (jwt.InvalidAudienceError, "wrong audience"),
    (jwt.InvalidIssuerError, "wrong issuer"),
    (jwt.InvalidSignatureError, "bad signature"),
    (jwt.InvalidAlgorithmError, "algorithm not allowed"),
    (jwt.InvalidIssuedAtError, "invalid iat"),
)


@dataclass(frozen=True)
class Invocation:
    """A verified Forge call. Tokens are excluded from ``repr`` and equality."""

    installation_id: str
    api_base_url: str
    invocation_id: str
    app_id: str | None = None
    app_version: str | None = None
    cloud_id: str | None = None
    site_url: str | None = None
    environment_type: str | None = None
    environment_id: str | None = None
    module_type: str | None = None
    module_key: str | None = None
    principal: str | None = None
    ui_context: bool = False  # the FIT carries a UI module's context (localId, moduleKey, extension)
    license_active: bool | None = None
    app_token: str | None = field(default=None, repr=False, compare=False)
    user_token: str | None = field(default=None, repr=False, compare=False)


def _bearer(authorization: str | None) -> str:
    if not authorization:
        raise InvalidInvocation("missing Authorization header")
    if len(authorization) > MAX_AUTHORIZATION_LENGTH:
        raise InvalidInvocation("Authorization header too large")
    scheme, _, credentials = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not credentials.strip():
        raise InvalidInvocation("Authorization is not a Bearer token")
    return credentials.strip()


def _opt_str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _obj(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _token_header(headers: Mapping[str, str], name: str) -> str | None:
    # Token rule 1: a missing or empty header is never stored.
    value = headers.get(name)
    if not isinstance(value, str):
        return None
    value = value.strip()
    return value if 0 < len(value) <= MAX_AUTHORIZATION_LENGTH else None


class FitVerifier:
    """Verifies FITs for one app against one JWKS (chosen by configuration, never by the token)."""

    def __init__(
        self,
        *,
        audience: str,
        jwks: JwksCache,
        allowed_api_hosts: Collection[str],
        leeway_s: float = LEEWAY_S,
    ) -> None:
        self._audience = audience
        self._jwks = jwks
        self._allowed_api_hosts = tuple(allowed_api_hosts)
        self._leeway_s = leeway_s
        self._header_kids: dict[str, str] = {}
        self._api_bases: dict[str, str] = {}
        # pyjwt with the required claims set once: jwt.decode would merge an options dict on every call.
        self._jwt = jwt.PyJWT(options={"require": list(REQUIRED_CLAIMS)})
        self._algorithms = [ALGORITHM]

    def claims(self, authorization: str | None) -> dict[str, Any]:
        """Verify the Authorization header's FIT and return its claims, or raise InvalidInvocation."""
        token = _bearer(authorization)
        key = self._jwks.key(self._kid(token))
        try:
            claims: dict[str, Any] = self._jwt.decode(
                token,
                key.key,
                algorithms=self._algorithms,
                audience=self._audience,
                issuer=FIT_ISSUER,
                leeway=self._leeway_s,
            )
        except jwt.MissingRequiredClaimError as exc:
            raise InvalidInvocation(f"missing claim {exc.claim}") from exc
        except jwt.PyJWTError as exc:
            reason = next((r for t, r in _PYJWT_REASONS if isinstance(exc, t)), "malformed token")
            raise InvalidInvocation(reason) from exc
        # pyjwt has checked that exp and iat are integers, and that iat is not in the future.
        if int(claims["exp"]) - int(claims["iat"]) > MAX_FIT_LIFETIME_S:
            raise InvalidInvocation("token lifetime too long")
        return claims

    def _kid(self, token: str) -> str:
        """The ``kid`` of an RS256 token's header, remembered per header segment.

        Forge signs every FIT with the same header while a key is in use, so parsing it once per
        container (pyjwt checks every base64url byte in Python) saves half of a verification. Only
        headers that passed the checks below are remembered, and at most ``HEADER_MEMO_SIZE`` of them:
        junk cannot grow the memo.
        """
        segment = token.partition(".")[0]
        kid = self._header_kids.get(segment)
        if kid is not None:
            return kid
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise InvalidInvocation("malformed token") from exc
        if header.get("alg") != ALGORITHM:
            raise InvalidInvocation("algorithm not allowed")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise InvalidInvocation("token has no key id")
        if len(self._header_kids) >= HEADER_MEMO_SIZE:
            self._header_kids.clear()
        self._header_kids[segment] = kid
        return kid

    def _api_base(self, raw: str) -> str:
        """``raw`` checked against the allow-list (``require_allowed_api_base``), remembered per string.

        The check depends only on the string and this verifier's hosts, and each installation sends the
        same apiBaseUrl on every call: checking it once per container saves a URL parse per verify.
        Only URLs that passed are remembered, at most ``API_BASE_MEMO_SIZE``: junk cannot grow the memo.
        """
        checked = self._api_bases.get(raw)
        if checked is not None:
            return checked
        try:
            checked = require_allowed_api_base(raw, self._allowed_api_hosts)
        except DisallowedApiBaseUrl as exc:
            raise InvalidInvocation(f"app.apiBaseUrl rejected: {exc}") from exc
        if len(self._api_bases) >= API_BASE_MEMO_SIZE:
            self._api_bases.clear()
        self._api_bases[raw] = checked
        return checked

    def verify(self, headers: Mapping[str, str]) -> Invocation:
        """Verify a request's headers (lower-cased names, as API Gateway v2 gives them)."""
        claims = self.claims(headers.get("authorization"))
        return self._invocation(claims, headers)

    def _invocation(self, claims: Mapping[str, Any], headers: Mapping[str, str]) -> Invocation:
        app = claims.get("app")
        if not isinstance(app, dict):
            raise InvalidInvocation("missing claim app")
        installation_id = app.get("installationId")
        if not isinstance(installation_id, str) or not INSTALLATION_ID_PATTERN.fullmatch(installation_id):
            raise InvalidInvocation("missing or invalid claim app.installationId")
        jti = claims.get("jti")
        if not isinstance(jti, str) or not jti:
            raise InvalidInvocation("invalid claim jti")
        app_id = _opt_str(app.get("id"))
        if app_id is not None and app_id.lower() != self._audience:
            raise InvalidInvocation("app.id does not match the audience")
        api_base_url = self._api_base(_opt_str(app.get("apiBaseUrl")) or "")
        ic_label = claims.get("icLabel")
        if ic_label is not None and not (isinstance(ic_label, str) and _IC_LABEL.fullmatch(ic_label)):
            raise InvalidInvocation("invalid claim icLabel")
        principal = claims.get("principal")
        if principal is not None and not (isinstance(principal, str) and ACCOUNT_ID_PATTERN.fullmatch(principal)):
            raise InvalidInvocation("invalid claim principal")

        context = _obj(claims.get("context"))
        environment = _obj(app.get("environment"))
        module = _obj(app.get("module"))
        license_claim = _obj(app.get("license"))
        cloud_id = _opt_str(context.get("cloudId"))
        if cloud_id is None and (match := _CLOUD_ID_IN_URL.search(api_base_url)):
            cloud_id = match.group(1)
        active = license_claim.get("active")
        return Invocation(
            installation_id=installation_id,
            api_base_url=api_base_url,
            invocation_id=jti,
            app_id=app_id,
            app_version=_opt_str(app.get("appVersion")) or _opt_str(app.get("version")),
            cloud_id=cloud_id,
            site_url=_opt_str(context.get("siteUrl")),
            environment_type=_opt_str(environment.get("type")),
            environment_id=_opt_str(environment.get("id")),
            module_type=_opt_str(module.get("type")),
            module_key=_opt_str(module.get("key")),
            principal=principal,
            ui_context=any(name in context for name in UI_CONTEXT_CLAIMS),
            license_active=active if isinstance(active, bool) else None,
            app_token=_token_header(headers, APP_TOKEN_HEADER),
            user_token=_token_header(headers, USER_TOKEN_HEADER) if principal else None,
        )
