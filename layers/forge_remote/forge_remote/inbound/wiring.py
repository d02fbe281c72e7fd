"""The HTTP functions' wiring: the shared one (``forge_remote/wiring.py``) plus the FIT verifier and
the trigger module keys, built once per container.

It is also where a verified ``Invocation`` meets the stores, which take plain values and know nothing
of FITs (``installation_facts``). Nothing is fetched until the first request needs it (JWKS, tables).
"""

from __future__ import annotations

from functools import cached_property

from forge_remote.errors import InstallationMoved
from forge_remote.forge.call_kinds import TriggerModules
from forge_remote.forge.invocations import FitVerifier, Invocation
from forge_remote.forge.signing_keys import JwksCache
from forge_remote.storage.installations import InstallationFacts, InstallationStatus
from forge_remote.wiring import Wiring


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


class HttpWiring(Wiring):
    @cached_property
    def verifier(self) -> FitVerifier:
        settings = self.settings
        return FitVerifier(
            audience=settings.app_ari, jwks=JwksCache(settings.jwks_url), allowed_api_hosts=settings.allowed_api_hosts
        )

    @cached_property
    def trigger_modules(self) -> TriggerModules:
        """``FORGE_TRIGGER_MODULES``, parsed: read when the routes are wired, so a bad value fails the cold start."""
        return TriggerModules.from_json(self.settings.forge_trigger_modules)

    def capture_tokens(self, invocation: Invocation, *, delivered_by: str | None = None) -> dict[str, str]:
        """Token rule 1: store what this verified call delivered (app token, and user token if any).

        Each write is bundled with the installation's "still installed" update, so a call that
        races an uninstall can never leave a token behind. ``delivered_by`` (keepalive, event,
        lifecycle, ui) is recorded with a stored token for status pages. Returns outcome names.
        ``InstallationMoved`` if the installation was refused because a realm migration moved it away.
        """
        outcomes: dict[str, str] = {}
        facts = installation_facts(invocation)
        if invocation.app_token:
            outcome = self.tokens.put_if_newer(
                invocation.installation_id,
                invocation.app_token,
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
        from forge_remote.tokens.store import PutOutcome  # loaded by put_if_newer already

        if PutOutcome.INSTALLATION_GONE.value in outcomes.values():
            self.refuse_if_moved(invocation.installation_id)  # the rare case: one more read says why
        return outcomes

    def refuse_if_moved(self, installation_id: str) -> None:
        """``InstallationMoved`` if a realm migration moved this installation to another stack."""
        installation = self.installations.get(installation_id)
        if installation is not None and installation.status == InstallationStatus.MOVED:
            raise InstallationMoved(installation.moved_to)

    def record_lifecycle(self, invocation: Invocation, event_type: str) -> bool:
        """Record an installed/upgraded event for this verified call; False if already uninstalled."""
        return self.installations.record_lifecycle(installation_facts(invocation), event_type)
