"""The per-container wiring the HTTP handlers share: settings, verifier and stores, built once.

Building it reads the environment and creates one DynamoDB client; nothing is fetched until the
first request needs it (JWKS, tables). It is also where a verified ``Invocation`` meets the stores,
which take plain values and know nothing of FITs (``installation_facts``).
"""

from __future__ import annotations

from dataclasses import dataclass

from forge_remote import aws
from forge_remote.config import Settings
from forge_remote.forge.invocations import FitVerifier, Invocation
from forge_remote.forge.signing_keys import JwksCache
from forge_remote.storage.installations import InstallationFacts, InstallationRegistry
from forge_remote.tokens.store import TokenStore


def installation_facts(invocation: Invocation) -> InstallationFacts:
    """What the registry records of a verified call: where the installation lives, never its tokens."""
    return InstallationFacts(
        installation_id=invocation.installation_id,
        api_base_url=invocation.api_base_url,
        cloud_id=invocation.cloud_id,
        site_url=invocation.site_url,
        environment_type=invocation.environment_type,
        environment_id=invocation.environment_id,
        app_version=invocation.app_version,
    )


@dataclass
class HttpWiring:
    settings: Settings
    verifier: FitVerifier
    tokens: TokenStore
    installations: InstallationRegistry

    @classmethod
    def from_env(cls, settings: Settings | None = None) -> HttpWiring:
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

    def capture_tokens(self, invocation: Invocation, *, delivered_by: str | None = None) -> dict[str, str]:
        """Token rule 1: store what this verified call delivered (app token, and user token if any).

        Each write is bundled with the installation's "still installed" update, so a call that
        races an uninstall can never leave a token behind. ``delivered_by`` (keepalive, event,
        lifecycle, ui) is recorded with a stored token for status pages. Returns outcome names.
        """
        outcomes: dict[str, str] = {}
        facts = installation_facts(invocation)
        if invocation.system_token:
            outcome = self.tokens.put_if_newer(
                invocation.installation_id,
                invocation.system_token,
                guard=self.installations.active_guard(facts),
                delivered_by=delivered_by,
            )
            outcomes["system"] = outcome.value
        if invocation.user_token and invocation.principal:
            outcome = self.tokens.put_if_newer(
                invocation.installation_id,
                invocation.user_token,
                account_id=invocation.principal,
                guard=self.installations.active_guard(facts),
                delivered_by=delivered_by,
            )
            outcomes["user"] = outcome.value
        return outcomes

    def record_lifecycle(self, invocation: Invocation, event_type: str) -> bool:
        """Record an installed/upgraded event for this verified call; False if already uninstalled."""
        return self.installations.record_lifecycle(installation_facts(invocation), event_type)
