"""Which kind of Forge call each route accepts: a verified FIT is necessary, not sufficient.

``invokeRemote`` lets a Custom UI choose the path and the body, so anyone who can open the app's UI
holds FITs that Forge signed for them. Such a FIT must not uninstall the installation or queue jobs:
trigger routes accept only calls with no user in them (no ``principal``, no UI ``context``), and
where the FIT names its module (``app.module.key`` / ``type``) it must be one that the shipped
manifest (``forge-app/manifest.yml``) routes there. Forge's documentation does not pin down whether
a trigger's FIT names the endpoint module or the trigger module, so both keys are accepted; an
absent claim is accepted (lenient), a present and wrong one is refused (strict).

Renamed a module in your manifest? Change ``TRIGGER_ROUTE_MODULES``: ``make test`` checks that the
two agree.
"""

from __future__ import annotations

from collections.abc import Mapping

from forge_remote.errors import WrongCallKind
from forge_remote.forge.invocations import Invocation

# route path -> the manifest keys that may invoke it: its endpoint and the modules that use that endpoint
TRIGGER_ROUTE_MODULES: Mapping[str, frozenset[str]] = {
    "/forge/lifecycle": frozenset({"lifecycle-endpoint", "app-lifecycle"}),
    "/forge/uninstall": frozenset({"uninstall-endpoint", "pre-uninstall"}),
    "/forge/events": frozenset({"events-endpoint", "page-events"}),
    "/forge/keepalive": frozenset({"keepalive-endpoint", "token-keepalive"}),
}
TRIGGER_MODULE_KEYS = frozenset().union(*TRIGGER_ROUTE_MODULES.values())
UI_ROUTE_PREFIX = "/api/"
TRIGGER_MODULE_TYPE_PREFIX = "core:"  # endpoint, trigger, scheduledTrigger, preUninstall: no UI module


def _shown(value: str) -> str:
    return repr(value[:64])  # a claim of a verified FIT, never a secret, but bounded in logs and answers


def check_call_kind(path: str, invocation: Invocation) -> None:
    """Raise ``WrongCallKind`` if ``invocation`` is not the kind of call Forge makes to ``path``."""
    allowed = TRIGGER_ROUTE_MODULES.get(path)
    if allowed is not None:
        if invocation.principal is not None:
            raise WrongCallKind("a call made by a user is not accepted on a trigger route")
        if invocation.ui_context:
            raise WrongCallKind("a call from a UI module is not accepted on a trigger route")
        key, kind = invocation.module_key, invocation.module_type
        if key is not None and key not in allowed:
            raise WrongCallKind(f"module {_shown(key)} is not routed to {path}")
        if kind is not None and not kind.startswith(TRIGGER_MODULE_TYPE_PREFIX):
            raise WrongCallKind(f"module type {_shown(kind)} does not call trigger routes")
    elif path.startswith(UI_ROUTE_PREFIX) and invocation.module_key in TRIGGER_MODULE_KEYS:
        raise WrongCallKind("a trigger's call is not accepted on a UI route")
