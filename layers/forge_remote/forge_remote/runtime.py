"""The per-container wiring the HTTP handlers share: settings, verifier and stores, built once.

Building it reads the environment and creates one DynamoDB client; nothing is fetched until the
first request needs it (JWKS, tables).
"""

from __future__ import annotations

from dataclasses import dataclass

from forge_remote import aws
from forge_remote.config import Settings
from forge_remote.fit import FitVerifier, Invocation
from forge_remote.installations import InstallationRegistry
from forge_remote.jwks import JwksCache
from forge_remote.tokens import TokenStore


@dataclass
class Runtime:
    settings: Settings
    verifier: FitVerifier
    tokens: TokenStore
    installations: InstallationRegistry

    @classmethod
    def from_env(cls, settings: Settings | None = None) -> Runtime:
        settings = settings or Settings.from_env()
        client = aws.dynamodb()
        return cls(
            settings=settings,
            verifier=FitVerifier(
                audience=settings.app_ari,
                jwks=JwksCache(settings.jwks_url),
                allowed_api_hosts=settings.allowed_api_hosts,
            ),
            tokens=TokenStore(client, settings.tokens_table),
            installations=InstallationRegistry(client, settings.app_table),
        )

    def capture_tokens(self, invocation: Invocation) -> dict[str, str]:
        """Token rule 1: store what this verified call delivered (app token, and user token if any).

        Each write is bundled with the installation's "still installed" update, so a call that
        races an uninstall can never leave a token behind. Returns outcome names for the response.
        """
        outcomes: dict[str, str] = {}
        if invocation.system_token:
            outcome = self.tokens.put_if_newer(
                invocation.installation_id,
                invocation.system_token,
                guard=self.installations.active_guard(invocation),
            )
            outcomes["system"] = outcome.value
        if invocation.user_token and invocation.principal:
            outcome = self.tokens.put_if_newer(
                invocation.installation_id,
                invocation.user_token,
                account_id=invocation.principal,
                guard=self.installations.active_guard(invocation),
            )
            outcomes["user"] = outcome.value
        return outcomes
