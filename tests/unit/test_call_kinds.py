"""Which kind of Forge call a route accepts (``forge/call_kinds.py``), lightly: the routes' module keys are
configuration, so these tests build their own."""

from __future__ import annotations

import pytest

from forge_remote.errors import WrongCallKind
from forge_remote.forge.call_kinds import MIGRATION_MODULE_TYPE, MIGRATION_ROUTES, TriggerModules, check_call_kind
from forge_remote.forge.invocations import Invocation

MODULES = TriggerModules({"/forge/events": frozenset({"events-endpoint", "page-events"})})


def invocation(**claims: object) -> Invocation:
    return Invocation(
        installation_id="ari:cloud:ecosystem::installation/3d5f7b9c-kinds",
        api_base_url="https://api.atlassian.com/ex/confluence/cloud-1",
        invocation_id="jti-1",
        **claims,  # type: ignore[arg-type]
    )


def test_a_trigger_call_is_accepted_on_its_route() -> None:
    check_call_kind("/forge/events", invocation(module_key="page-events", module_type="core:trigger"), MODULES)
    check_call_kind("/forge/events", invocation(), MODULES)  # a FIT that names no module: lenient


@pytest.mark.parametrize(
    "claims",
    [
        {"principal": "5b10ac8d82e05b22cc7d4ef5"},
        {"ui_context": True},
        {"module_key": "my-macro"},
        {"module_type": "confluence:contentBylineItem"},
    ],
)
def test_a_user_or_ui_call_is_refused_on_a_trigger_route(claims: dict[str, object]) -> None:
    with pytest.raises(WrongCallKind):
        check_call_kind("/forge/events", invocation(**claims), MODULES)


def test_a_trigger_s_call_is_refused_on_a_ui_route_and_a_ui_call_accepted() -> None:
    with pytest.raises(WrongCallKind, match="UI route"):
        check_call_kind("/api/status", invocation(module_key="events-endpoint"), MODULES)
    check_call_kind("/api/status", invocation(module_key="my-macro", principal="5b10ac8d82e05b22cc7d4ef5"), MODULES)


# -- the data residency migration hooks ---------------------------------------------------------------
MIGRATION = TriggerModules(
    {
        "/forge/events": frozenset({"events-endpoint", "page-events"}),
        **{route: frozenset({"data-residency"}) for route in MIGRATION_ROUTES},
    }
)


@pytest.mark.parametrize("route", MIGRATION_ROUTES)
def test_a_migration_hook_takes_the_migration_modules_call(route: str) -> None:
    for module_type in (MIGRATION_MODULE_TYPE, "core:endpoint", None):
        check_call_kind(route, invocation(module_key="data-residency", module_type=module_type), MIGRATION)
    check_call_kind(route, invocation(), MIGRATION)  # names no module: lenient, as on every trigger route


@pytest.mark.parametrize("route", MIGRATION_ROUTES)
@pytest.mark.parametrize(
    "claims",
    [
        {"principal": "5b10ac8d82e05b22cc7d4ef5", "module_key": "data-residency"},
        {"ui_context": True},
        {"module_key": "page-events"},  # another module's call
        {"module_key": "data-residency", "module_type": "confluence:globalSettings"},
    ],
)
def test_a_migration_hook_refuses_every_other_kind_of_call(route: str, claims: dict[str, object]) -> None:
    with pytest.raises(WrongCallKind):
        check_call_kind(route, invocation(**claims), MIGRATION)


def test_the_migration_modules_type_is_accepted_on_its_hooks_only() -> None:
    with pytest.raises(WrongCallKind, match="module type"):
        check_call_kind("/forge/events", invocation(module_type=MIGRATION_MODULE_TYPE), MIGRATION)
    with pytest.raises(WrongCallKind, match="UI route"):
        check_call_kind("/api/status", invocation(module_key="data-residency"), MIGRATION)
