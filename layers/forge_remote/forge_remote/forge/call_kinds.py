"""Which kind of Forge call each route accepts: a verified FIT is necessary, not sufficient.

``invokeRemote`` lets a Custom UI choose the path and the body, so anyone who can open the app's UI
holds FITs that Forge signed for them. Such a FIT must not uninstall the installation or queue jobs:
trigger routes accept only calls with no user in them (no ``principal``, no UI ``context``), and
where the FIT names its module (``app.module.key`` / ``type``) it must be one that the shipped
manifest (``forge-app/manifest.yml``) routes there. Forge's documentation does not pin down whether
a trigger's FIT names the endpoint module or the trigger module, so both keys are accepted; an
absent claim is accepted (lenient), a present and wrong one is refused (strict).

The data residency migration hooks (``/forge/migration/<hook>``) are bound the same way, to the
manifest's ``migration:dataResidency`` module key. That module names no endpoint, and what Forge puts in
a hook call's ``app.module.type`` is not documented [no source]: there ``migration:dataResidency`` is
accepted besides the ``core:`` types.

Which module keys those are is the app's configuration, not the library's: the setting
``FORGE_TRIGGER_MODULES`` (``template.yaml``'s ``Globals``) maps each trigger route to its keys, as
JSON. Renamed a module in your manifest? Update that setting: ``make test`` checks the two agree.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

from forge_remote.errors import ConfigurationError, WrongCallKind
from forge_remote.forge.invocations import Invocation

# The data residency migration hooks: the manifest's ``migration:dataResidency`` ``path`` plus the hook's
# name (``inbound/triggers.py`` serves them, ``lifecycle/migration.py`` does what they ask).
MIGRATION_PATH = "/forge/migration"
MIGRATION_HOOKS = ("schedule", "start", "status", "commit", "rollback")
MIGRATION_ROUTES = tuple(f"{MIGRATION_PATH}/{hook}" for hook in MIGRATION_HOOKS)
MIGRATION_MODULE_TYPE = "migration:dataResidency"
# The routes Forge's triggers call on this backend (the library serves them: ``inbound/triggers.py``).
TRIGGER_ROUTES = ("/forge/lifecycle", "/forge/uninstall", "/forge/events", "/forge/keepalive", *MIGRATION_ROUTES)
UI_ROUTE_PREFIX = "/api/"
TRIGGER_MODULE_TYPE_PREFIX = "core:"  # endpoint, trigger, scheduledTrigger, preUninstall: no UI module


@dataclass(frozen=True)
class TriggerModules:
    """Route path -> the manifest keys that may invoke it: its endpoint and the modules using that endpoint."""

    routes: Mapping[str, frozenset[str]]

    @property
    def keys(self) -> frozenset[str]:
        return frozenset().union(*self.routes.values())

    @classmethod
    def from_json(cls, text: str | None) -> TriggerModules:
        """Parse ``FORGE_TRIGGER_MODULES``: ``{"/forge/lifecycle": ["lifecycle-endpoint", ...], ...}``."""
        if not text or not text.strip():
            raise ConfigurationError("FORGE_TRIGGER_MODULES is required: each trigger route's manifest module keys")
        try:
            document = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigurationError("FORGE_TRIGGER_MODULES is not valid JSON") from exc
        if not isinstance(document, dict) or set(document) != set(TRIGGER_ROUTES):
            raise ConfigurationError(f"FORGE_TRIGGER_MODULES must name exactly the routes {', '.join(TRIGGER_ROUTES)}")
        routes: dict[str, frozenset[str]] = {}
        for path, keys in document.items():
            if not isinstance(keys, list) or not keys or not all(isinstance(k, str) and k for k in keys):
                raise ConfigurationError(f"FORGE_TRIGGER_MODULES[{path!r}] must be a list of module keys")
            routes[path] = frozenset(keys)
        return cls(routes)


def _shown(value: str) -> str:
    return repr(value[:64])  # a claim of a verified FIT, never a secret, but bounded in logs and answers


def check_call_kind(path: str, invocation: Invocation, modules: TriggerModules) -> None:
    """Raise ``WrongCallKind`` if ``invocation`` is not the kind of call Forge makes to ``path``."""
    allowed = modules.routes.get(path)
    if allowed is not None:
        if invocation.principal is not None:
            raise WrongCallKind("a call made by a user is not accepted on a trigger route")
        if invocation.ui_context:
            raise WrongCallKind("a call from a UI module is not accepted on a trigger route")
        key, kind = invocation.module_key, invocation.module_type
        if key is not None and key not in allowed:
            raise WrongCallKind(f"module {_shown(key)} is not routed to {path}")
        migration_hook = path in MIGRATION_ROUTES and kind == MIGRATION_MODULE_TYPE
        if kind is not None and not kind.startswith(TRIGGER_MODULE_TYPE_PREFIX) and not migration_hook:
            raise WrongCallKind(f"module type {_shown(kind)} does not call trigger routes")
    elif path.startswith(UI_ROUTE_PREFIX) and invocation.module_key in modules.keys:
        raise WrongCallKind("a trigger's call is not accepted on a UI route")
