"""forge-app/manifest.yml: valid for Forge, and wired to routes template.yaml really serves.

The schema and validators come from Atlassian's ``@forge/manifest`` npm package (what the Forge CLI
runs on ``forge lint`` / ``forge deploy``), installed at test time into ``.cache/`` and never copied
into the repo. No npm or a failed install is a test failure, not a skip: an unchecked manifest is
exactly what this file exists to prevent.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import pytest
import yaml

from local.cfn_yaml import http_routes, load_template, path_matches
from tests.support import ROOT

FORGE_MANIFEST_VERSION = "13.7.0"
# @forge/manifest's code requires tslib but does not declare it (the Forge CLI brings it); pinned here
# so the package's own validators can run.
TSLIB_VERSION = "2.9.1"

REPO = ROOT
APP_DIR = REPO / "forge-app"
MANIFEST = APP_DIR / "manifest.yml"
UI_SCRIPT = APP_DIR / "src" / "status" / "api.js"  # the page's calls (built into static/status/status.js)
TEMPLATE = REPO / "template.yaml"
# Versioned directory: bumping the pin installs afresh instead of trusting an old cache.
CACHE = REPO / ".cache" / f"forge-manifest-{FORGE_MANIFEST_VERSION}"

# Which SAM function must serve which kind of Forge call (docs/architecture.md, "Shape").
TRIGGERS_FUNCTION = "ForgeTriggersFunction"
UI_FUNCTION = "ForgeCallsFunction"
TRIGGER_MODULE_TYPES = ("trigger", "scheduledTrigger", "preUninstall")

# What the Forge CLI checks on lint/deploy: the "full" processor (schema, module cross-references,
# resources on disk, token rules, scopes), then the product-trigger scope check on the same parsed manifest
# (its own processor would compile the 2 MB schema again, ~3 s). Prints {check: {success, errors}} as JSON.
_NODE_VALIDATE = """
const path = require('path');
const [pkg, manifest] = process.argv.slice(1);
const forge = require(pkg);
const eventScopes = require(path.join(pkg, 'out', 'mapping', 'product-event-to-scope-mapping.json'));
(async () => {
  const full = await forge.ProcessorBuilder.instance().withValidation(forge.ValidationTypes.FULL).build().process(manifest);
  const triggers = full.manifestObject && full.manifestObject.typedContent
    ? await new forge.ProductTriggerScopesValidator(eventScopes).validate(full.manifestObject)
    : { success: false, errors: [{ level: 'error', message: 'not checked: the manifest did not parse' }] };
  const out = {};
  for (const [name, result] of Object.entries({ full, 'product-trigger': triggers })) {
    out[name] = { success: result.success, errors: result.errors || [] };
  }
  process.stdout.write(JSON.stringify(out));
})().catch((error) => { console.error(error); process.exit(2); });
"""

# -- installing @forge/manifest


def _package_dir(prefix: Path) -> Path:
    return prefix / "node_modules" / "@forge" / "manifest"


def _installed(prefix: Path) -> bool:
    package_json = _package_dir(prefix) / "package.json"
    if not package_json.is_file() or not (prefix / "node_modules" / "tslib" / "package.json").is_file():
        return False
    return bool(json.loads(package_json.read_text(encoding="utf-8")).get("version") == FORGE_MANIFEST_VERSION)


def _install() -> None:
    npm = shutil.which("npm")
    if npm is None:
        pytest.fail(
            "npm is not on PATH: install Node.js 20+ with npm; the manifest is validated with Atlassian's "
            f"@forge/manifest@{FORGE_MANIFEST_VERSION} from the npm registry",
            pytrace=False,
        )
    if _installed(CACHE):  # another xdist worker finished first
        return
    if CACHE.exists():
        # Incomplete (left half-deleted by hand, say), so no test is using it: move it aside, then delete.
        stale = CACHE.with_name(f"{CACHE.name}.stale-{os.getpid()}")
        CACHE.rename(stale)
        shutil.rmtree(stale, ignore_errors=True)
    CACHE.parent.mkdir(parents=True, exist_ok=True)
    # Install beside the cache, then rename: parallel workers (xdist) never see half an install.
    staging = Path(tempfile.mkdtemp(prefix=f"{CACHE.name}.", dir=CACHE.parent))
    command = [
        npm, "install", "--no-save", "--prefix", str(staging),
        "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error",
        f"@forge/manifest@{FORGE_MANIFEST_VERSION}", f"tslib@{TSLIB_VERSION}",
    ]  # fmt: skip
    try:
        try:
            # Fixed argv, no shell: npm from PATH, pinned package specs.
            result = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)  # noqa: S603
        except subprocess.TimeoutExpired:
            pytest.fail(f"`{' '.join(command[1:])}` took over 300 s (is the npm registry reachable?)", pytrace=False)
        if result.returncode != 0 or not _installed(staging):
            output = (result.stderr or result.stdout).strip()[-2000:]
            pytest.fail(
                f"could not install @forge/manifest@{FORGE_MANIFEST_VERSION} with npm "
                f"(exit {result.returncode}); npm said:\n{output}",
                pytrace=False,
            )
        try:
            staging.rename(CACHE)
        except OSError:
            if not _installed(CACHE):  # not a worker that finished first: a real problem
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@pytest.fixture(scope="session")
def forge_manifest_package() -> Path:
    """``node_modules/@forge/manifest`` in the cache, installed by npm if it is not there yet."""
    if not _installed(CACHE):
        _install()
    return _package_dir(CACHE)


@pytest.fixture(scope="session")
def forge_schema(forge_manifest_package: Path) -> dict[str, Any]:
    package = json.loads((forge_manifest_package / "package.json").read_text(encoding="utf-8"))
    # The package exports its schema as "@forge/manifest/schema.json" (out/schema/manifest-schema.json in 13.7.0).
    exported = package.get("exports", {}).get("./schema.json")
    assert exported, "@forge/manifest no longer exports ./schema.json: find the schema file and update this test"
    schema: dict[str, Any] = json.loads((forge_manifest_package / exported).read_text(encoding="utf-8"))
    return schema


# -- the files under test


@pytest.fixture(scope="module")
def manifest() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(MANIFEST.read_text(encoding="utf-8"))
    return document


@pytest.fixture(scope="module")
def routes() -> list[tuple[str, str, str]]:
    assert TEMPLATE.is_file(), f"{TEMPLATE} is missing"
    found = http_routes(load_template(TEMPLATE))
    assert found, "template.yaml declares no HttpApi routes"
    return found


def _modules(manifest: dict[str, Any], module_type: str) -> list[dict[str, Any]]:
    modules: list[dict[str, Any]] = manifest.get("modules", {}).get(module_type, [])
    return modules


def _endpoints(manifest: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {endpoint["key"]: endpoint for endpoint in _modules(manifest, "endpoint")}


def _ui_endpoint_keys(manifest: dict[str, Any]) -> set[str]:
    """Endpoints named by a UI module's ``resolver`` (a user is in session on these calls)."""
    return {
        module["resolver"]["endpoint"]
        for modules in manifest.get("modules", {}).values()
        for module in modules
        if isinstance(module, dict) and "endpoint" in (module.get("resolver") or {})
    }


def _trigger_endpoint_keys(manifest: dict[str, Any]) -> set[str]:
    """Endpoints Forge calls with no user in session: product/lifecycle triggers, schedules, preUninstall."""
    return {module["endpoint"] for kind in TRIGGER_MODULE_TYPES for module in _modules(manifest, kind)}


def _enabled(endpoint: dict[str, Any], token: str) -> bool:
    return bool((endpoint.get("auth") or {}).get(token, {}).get("enabled"))


def _serving(routes: list[tuple[str, str, str]], method: str, path: str) -> set[str]:
    """Logical ids of the functions whose routes accept ``method path`` (ANY accepts every method)."""
    return {fn for verb, route, fn in routes if verb in (method.upper(), "ANY") and path_matches(route, path)}


# -- validity for Forge


def test_manifest_is_valid_against_the_forge_schema(forge_schema: dict[str, Any], manifest: dict[str, Any]) -> None:
    validator_class = jsonschema.validators.validator_for(forge_schema, default=None)
    assert validator_class is not None, f"unknown $schema {forge_schema.get('$schema')!r}"
    validator = validator_class(forge_schema, format_checker=validator_class.FORMAT_CHECKER)
    errors = sorted(validator.iter_errors(manifest), key=lambda error: list(error.absolute_path))
    assert not errors, "manifest.yml breaks the @forge/manifest schema:\n" + "\n".join(
        f"  {'/'.join(map(str, error.absolute_path)) or '<root>'}: {error.message[:300]}" for error in errors
    )


@pytest.mark.parametrize(
    ("description", "breaks"),
    [
        (
            "interval outside fiveMinute|hour|day|week",
            lambda m: m["modules"]["scheduledTrigger"][0].update(interval="hourly"),
        ),
        ("remote key over 23 characters", lambda m: m["remotes"][0].update(key="aws-backend-with-a-long-name")),
        ("no app.runtime", lambda m: m["app"].pop("runtime")),
        ("unknown remote operation", lambda m: m["remotes"][0].update(operations=["compute", "invoke"])),
        ("a realm map without default", lambda m: m["remotes"][0]["baseUrl"].pop("default")),
        ("a realm the schema does not know", lambda m: m["remotes"][0]["baseUrl"].update(FR="https://fr.example")),
        ("storage without inScopeEUD", lambda m: m["remotes"][0].update(storage={})),
        (
            "a migration longer than 24 hours",
            lambda m: m["modules"]["migration:dataResidency"][0].update(maxMigrationDurationHours=25),
        ),
        ("a migration without a remote", lambda m: m["modules"]["migration:dataResidency"][0].pop("remote")),
    ],
)
def test_the_schema_check_catches_a_broken_manifest(
    forge_schema: dict[str, Any], manifest: dict[str, Any], description: str, breaks: Any
) -> None:
    """The schema check above is not vacuous: each of these mistakes is caught."""
    broken = copy.deepcopy(manifest)
    breaks(broken)
    validator = jsonschema.validators.validator_for(forge_schema)(forge_schema)
    assert not validator.is_valid(broken), f"schema accepted a manifest with {description}"


def test_manifest_passes_the_forge_cli_validators(forge_manifest_package: Path) -> None:
    """Beyond the schema: module cross-references, resources on disk, token rules, scopes per trigger event."""
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not on PATH: install Node.js 20+ to run @forge/manifest's validators", pytrace=False)
    result = subprocess.run(  # noqa: S603 - fixed argv, no shell
        [node, "-e", _NODE_VALIDATE, str(forge_manifest_package), str(MANIFEST)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=APP_DIR,
    )
    assert result.returncode == 0, f"@forge/manifest validators crashed:\n{result.stderr[-2000:]}"
    outcomes: dict[str, dict[str, Any]] = json.loads(result.stdout)
    assert set(outcomes) == {"full", "product-trigger"}
    problems = [
        f"  [{kind}] {error.get('level')}: {error.get('message')} (line {error.get('line')})"
        for kind, outcome in outcomes.items()
        for error in outcome["errors"]
    ]
    assert not problems, "Forge validation reported:\n" + "\n".join(problems)
    # A check can fail without an error entry (e.g. a manifest that did not parse): never pass on silence.
    assert all(outcome["success"] for outcome in outcomes.values()), f"Forge validation failed: {outcomes}"


def test_scopes_are_known_and_not_deprecated(forge_manifest_package: Path, manifest: dict[str, Any]) -> None:
    scopes_dir = forge_manifest_package / "out" / "scopes"
    known = set(json.loads((scopes_dir / "shipyard-scopes.json").read_text(encoding="utf-8")))
    deprecated = set(json.loads((scopes_dir / "deprecated-shipyard-scopes.json").read_text(encoding="utf-8")))
    declared = list(manifest["permissions"]["scopes"])  # a map: a name cannot repeat
    assert not set(declared) - known, f"not Forge scopes: {sorted(set(declared) - known)}"
    assert not set(declared) & deprecated, f"deprecated scopes: {sorted(set(declared) & deprecated)}"
    # Without these Forge sends no token headers at all (docs/protocol-facts.md, section 2).
    assert {"read:app-system-token", "read:app-user-token"} <= set(declared)


# -- wiring to template.yaml


def test_every_endpoint_is_used_by_a_trigger_or_a_ui_module(manifest: dict[str, Any]) -> None:
    endpoints = set(_endpoints(manifest))
    used = _ui_endpoint_keys(manifest) | _trigger_endpoint_keys(manifest)
    assert not endpoints - used, f"endpoints nothing calls: {sorted(endpoints - used)}"
    assert not used - endpoints, f"modules name undefined endpoints: {sorted(used - endpoints)}"
    assert not _ui_endpoint_keys(manifest) & _trigger_endpoint_keys(manifest), "one endpoint serves UI and triggers"
    assert all(endpoint.get("remote") == manifest["remotes"][0]["key"] for endpoint in _modules(manifest, "endpoint"))


def test_trigger_routes_are_served_by_the_triggers_function(
    manifest: dict[str, Any], routes: list[tuple[str, str, str]]
) -> None:
    endpoints = _endpoints(manifest)
    for key in sorted(_trigger_endpoint_keys(manifest)):
        path = (endpoints[key].get("route") or {}).get("path")
        assert path, f"trigger endpoint {key} has no route.path (Forge needs one to call it)"
        # Triggers, schedules and preUninstall are POSTs (docs/protocol-facts.md, section 3).
        assert _serving(routes, "POST", path) == {TRIGGERS_FUNCTION}, (
            f"POST {path} (endpoint {key}) is served by {sorted(_serving(routes, 'POST', path))} in template.yaml"
        )


def test_ui_paths_are_served_by_the_calls_function(
    manifest: dict[str, Any], routes: list[tuple[str, str, str]]
) -> None:
    """UI endpoints take their path from the front end's invokeRemote call, so check the calls themselves."""
    calls = re.findall(
        r"invokeRemote\(\{\s*path:\s*'([^']+)',\s*method:\s*'([A-Z]+)'", UI_SCRIPT.read_text(encoding="utf-8")
    )
    assert calls, f"no invokeRemote({{path, method}}) call found in {UI_SCRIPT.relative_to(REPO)}"
    for path, method in calls:
        assert path.startswith("/api/"), f"UI path {path} is outside /api/ (the UI function's prefix)"
        assert _serving(routes, method, path) == {UI_FUNCTION}, (
            f"{method} {path} is served by {sorted(_serving(routes, method, path))} in template.yaml"
        )
    for key in _ui_endpoint_keys(manifest):
        # Forge ignores a route on UI endpoints; one here would wrongly suggest a path prefix.
        assert "route" not in _endpoints(manifest)[key], f"UI endpoint {key} has a route"


def test_the_expected_forge_routes_are_all_wired(manifest: dict[str, Any]) -> None:
    """The routes docs/architecture.md names, each reached by the module that should reach it."""
    endpoints = _endpoints(manifest)

    def path_of(key: str) -> str:
        return str(endpoints[key]["route"]["path"])

    triggers = {tuple(trigger["events"]): path_of(trigger["endpoint"]) for trigger in _modules(manifest, "trigger")}
    assert triggers == {
        ("avi:forge:installed:app", "avi:forge:upgraded:app"): "/forge/lifecycle",
        ("avi:confluence:created:page", "avi:confluence:updated:page"): "/forge/events",
    }
    assert [path_of(m["endpoint"]) for m in _modules(manifest, "preUninstall")] == ["/forge/uninstall"]
    assert [path_of(m["endpoint"]) for m in _modules(manifest, "scheduledTrigger")] == ["/forge/keepalive"]


def test_keepalive_runs_hourly_with_an_app_token(manifest: dict[str, Any]) -> None:
    """Token rule 7: an hourly run delivers a token valid >= 2 h, so one is always stored."""
    (keepalive,) = [m for m in _modules(manifest, "scheduledTrigger") if m["key"] == "token-keepalive"]
    assert keepalive["interval"] == "hour"
    endpoint = _endpoints(manifest)[keepalive["endpoint"]]
    assert endpoint["route"]["path"] == "/forge/keepalive"
    assert _enabled(endpoint, "appSystemToken"), "a keepalive that receives no token keeps nothing alive"


def test_user_tokens_only_where_a_user_is_in_session(manifest: dict[str, Any]) -> None:
    endpoints = _endpoints(manifest)
    ui_keys = _ui_endpoint_keys(manifest)
    assert ui_keys, "no UI module calls the backend"
    for key in ui_keys:
        assert _enabled(endpoints[key], "appUserToken"), f"UI endpoint {key} should receive the user's token"
        assert _enabled(endpoints[key], "appSystemToken"), f"UI endpoint {key} should receive the app token"
    for key in _trigger_endpoint_keys(manifest):
        assert not _enabled(endpoints[key], "appUserToken"), f"trigger endpoint {key} asks for a user token"
    # Lifecycle and product events are where background jobs get their tokens from.
    for module_type in ("trigger", "scheduledTrigger"):
        for module in _modules(manifest, module_type):
            assert _enabled(endpoints[module["endpoint"]], "appSystemToken"), f"{module['key']} delivers no token"


def test_remote_base_url_is_an_https_origin_per_realm_like_the_stack_output(manifest: dict[str, Any]) -> None:
    """Absolute paths resolve against the origin only, so every realm's baseUrl (and RemoteBaseUrl) must
    carry no path; Forge calls the installation's realm's URL, ``default`` for the others."""
    (remote,) = manifest["remotes"]
    assert "compute" in remote["operations"], "invokeRemote needs the compute operation"
    urls = remote["baseUrl"]
    assert isinstance(urls, dict), "one stack per realm: baseUrl maps each realm to its stack's URL"
    assert "default" in urls
    for realm, url in urls.items():
        base = urlsplit(url)
        assert base.scheme == "https", realm
        assert base.path in ("", "/"), realm
    assert len(set(urls.values())) == len(urls), "two realms on one stack: a migration between them moves nothing"
    output = load_template(TEMPLATE)["Outputs"]["RemoteBaseUrl"]["Value"]
    sub = output["Fn::Sub"] if isinstance(output, dict) else output
    stack_url = urlsplit(sub if isinstance(sub, str) else sub[0])
    assert stack_url.scheme == "https"
    assert stack_url.path in ("", "/"), "RemoteBaseUrl has a path: paste would silently drop it"


def test_the_remote_declares_the_end_user_data_it_stores(manifest: dict[str, Any]) -> None:
    """In-scope end-user data is what pins a remote to the installation's realm and makes it part of a
    realm migration (Atlassian, "Set up remotes for data residency realm pinning")."""
    (remote,) = manifest["remotes"]
    assert "storage" in remote["operations"]
    assert remote["storage"] == {"inScopeEUD": True}


def test_every_realm_of_the_map_has_a_stack_to_deploy_and_the_template_accepts_it(manifest: dict[str, Any]) -> None:
    """samconfig.toml has an environment per realm besides ``default``, deploying DataRealm=<realm>, and
    the template's DataRealm allows each realm the map names."""
    import tomllib

    config = tomllib.loads((REPO / "samconfig.toml").read_text(encoding="utf-8"))
    realms = set(manifest["remotes"][0]["baseUrl"])
    allowed = set(load_template(TEMPLATE)["Parameters"]["DataRealm"]["AllowedValues"])
    assert realms <= allowed
    for realm in sorted(realms - {"default"}):
        environment = config.get(realm.lower(), {})
        overrides = environment.get("deploy", {}).get("parameters", {}).get("parameter_overrides", "")
        assert f'DataRealm="{realm}"' in overrides, f"samconfig.toml has no [{realm.lower()}] environment for {realm}"
        assert "PeerAppTables=" in overrides
        assert environment["deploy"]["parameters"].get("region"), realm


def test_the_migration_module_is_served_by_the_triggers_function(
    manifest: dict[str, Any], routes: list[tuple[str, str, str]]
) -> None:
    """The migration:dataResidency module's hooks (its path plus /schedule, /start, /status, /commit,
    /rollback) are the template's routes of the triggers function, each with Forge's method."""
    from forge_remote.forge.call_kinds import MIGRATION_HOOKS, MIGRATION_PATH

    (module,) = _modules(manifest, "migration:dataResidency")
    assert module["remote"] == manifest["remotes"][0]["key"]
    assert module["path"] == MIGRATION_PATH
    assert 0.5 <= module["maxMigrationDurationHours"] <= 24
    for hook in MIGRATION_HOOKS:
        method = "GET" if hook == "status" else "POST"
        path = f"{module['path']}/{hook}"
        assert _serving(routes, method, path) == {TRIGGERS_FUNCTION}, f"{method} {path}"
        other = "POST" if method == "GET" else "GET"
        assert _serving(routes, other, path) == set(), f"{other} {path} is routed too"


# -- the call-kind binding (forge_remote.forge.call_kinds) agrees with the manifest
def _modules_calling(manifest: dict[str, Any]) -> dict[str, set[str]]:
    """Route path -> the keys of the endpoint serving it and of every module that invokes that endpoint."""
    endpoints = _endpoints(manifest)
    found: dict[str, set[str]] = {}
    for key, endpoint in endpoints.items():
        path = endpoint.get("route", {}).get("path")
        if path:
            found.setdefault(path, set()).add(key)
    for module_type in ("trigger", "scheduledTrigger", "preUninstall"):
        for module in _modules(manifest, module_type):
            path = endpoints[module["endpoint"]].get("route", {}).get("path")
            if path:
                found.setdefault(path, set()).add(module["key"])
    # The migration module names no endpoint: Forge calls its hooks under its own path.
    from forge_remote.forge.call_kinds import MIGRATION_HOOKS

    for module in _modules(manifest, "migration:dataResidency"):
        for hook in MIGRATION_HOOKS:
            found.setdefault(f"{module['path']}/{hook}", set()).add(module["key"])
    return found


def test_trigger_routes_accept_exactly_the_modules_the_manifest_routes_there(manifest: dict[str, Any]) -> None:
    """The template's FORGE_TRIGGER_MODULES (what the functions check FITs against) is the manifest's."""
    from forge_remote.forge.call_kinds import UI_ROUTE_PREFIX, TriggerModules

    variables = load_template(TEMPLATE)["Globals"]["Function"]["Environment"]["Variables"]
    configured = TriggerModules.from_json(variables["FORGE_TRIGGER_MODULES"])
    expected = _modules_calling(manifest)
    assert {path: set(keys) for path, keys in configured.routes.items()} == expected
    assert not any(path.startswith(UI_ROUTE_PREFIX) for path in expected)
    ui_keys = _ui_endpoint_keys(manifest)
    assert ui_keys
    assert not ui_keys & configured.keys
