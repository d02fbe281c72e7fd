"""Act as Forge against a running ``make local``: ``.venv/bin/python -m local.forge_cli COMMAND``.

Commands send what Forge sends for the emulated site (the state file ``local.serve`` writes:
``.cache/local-stack.json``, or ``.cache/local-stack-<port>.json`` for a stack on another port), with
FITs signed by the serve process's dev key; they print the HTTP status and JSON body, never a token.
``job`` is what no Forge call does directly: it sends a job request for the site's installation to the
stack's jobs queue, as the triggers and the scheduler do, and with ``--wait`` prints the worker's
outcome (from the journal ``local.job_outcomes`` keeps) and the result the job stored.

What only the serve process can do (its clock, a reinstall's new installation id, editing a page,
who administers the site, the app token UI calls hand over) goes through its dev control endpoint
(``local.dev_control``). Every Forge call first reads the stack's clock there, so the tokens minted
here expire when the stack's own would.

Data residency (``make local ARGS="--realms default,EU"``): the site is in a realm, and as Forge calls
the remote the manifest's ``remotes[].baseUrl`` names for the installation's realm, every Forge call
here goes to the gateway of that realm's stack (the state file's realm map); ``job`` sends to that
stack's queue and reads its worker's outcomes. ``migrate --to EU`` moves the site as Forge does (the
five ``migration:dataResidency`` hooks on the site's current stack); ``clock advance`` moves every
realm's stack's clock, so they stay one time.

The help texts below are what ``--help`` shows: plain sentences, no markup.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "functions" / "confluence_worker"
if str(WORKER) not in sys.path:  # `job` reads the worker's confluence_jobs package from its folder, as Lambda does
    sys.path.insert(0, str(WORKER))

import boto3  # noqa: E402
import requests  # noqa: E402
import yaml  # noqa: E402
from botocore.config import Config  # noqa: E402
from botocore.exceptions import BotoCoreError, ClientError  # noqa: E402
from cryptography.hazmat.primitives import serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import rsa  # noqa: E402

from forge_remote import clock  # noqa: E402
from forge_remote.jobs.contract import JobRequest, send_job_requests  # noqa: E402
from forge_remote.storage.results import ResultStore  # noqa: E402
from forge_remote.storage.table_keys import installation_pk  # noqa: E402
from local import realms as residency  # noqa: E402
from local.dev_control import (  # noqa: E402
    ACCOUNT_ID,
    ControlClient,
    ControlRefused,
    ControlUnreachable,
    site_from_json,
)
from local.forge_emulator import DEFAULT_ACCOUNT_ID, Content, ForgeEmulator, SigningKey, Site  # noqa: E402
from local.job_outcomes import JobOutcome, OutcomeJournal  # noqa: E402
from local.seed import EXAMPLE_PAGE_ID  # noqa: E402
from local.ui_dev import METHODS  # noqa: E402

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_sqs import SQSClient

CACHE = ROOT / ".cache"
STATE_FILE = CACHE / "local-stack.json"
MANIFEST = ROOT / "forge-app" / "manifest.yml"
USER_ACCOUNT_ID = DEFAULT_ACCOUNT_ID  # the emulated site's own user, signed in to the app's UI
DEFAULT_WAIT_S = 30.0
EVENT_TYPE = re.compile(r"^avi:[a-z]+:[a-z_]+:[a-z_]+$")
DESCRIPTION = (
    "Act as Forge against a running 'make local' stack. Each command sends what Forge would send for "
    "the stack's emulated Confluence site, signed with the stack's throwaway dev key, and prints the "
    "HTTP status and JSON body (never a token)."
)
EPILOG = (
    "Run from the repository root with the venv's python, for example: "
    ".venv/bin/python -m local.forge_cli install. 'COMMAND --help' shows a command's options. A stack "
    "started on another port than 8787 has its own state file, which its banner's commands name with "
    "--state-file. Exit status: 0 on success; 1 when the stack answers an error, cannot be reached, or "
    "a waited-for job did not run; 2 for bad usage (nothing is sent)."
)
# command -> (its line in the command list, its own --help), in the order --help lists them.
COMMAND_HELP = {
    "install": (
        "installed trigger: stores the installation and a token",
        "Send the lifecycle 'installed' event to POST /forge/lifecycle with a fresh app token, as Forge "
        "does when the app is installed: the stack stores the installation and the token. After an "
        "uninstall this is a reinstall, and as Forge does it gives the site a new installation id, which "
        "every command and the stack's status page use from then on.",
    ),
    "keepalive": (
        "the hourly scheduled trigger, with a fresh app token",
        "Send the hourly scheduled trigger to POST /forge/keepalive with a fresh app token, so that jobs "
        "find a valid token.",
    ),
    "page-created": (
        "page created event: requests a page-snapshot job",
        "Send a page created product event for a page of the emulated site (default: Release notes, the "
        "page the banner names) to POST /forge/events: the stack sends a page-snapshot job request to "
        "its jobs queue. With --wait, print what the worker did and the snapshot it stored.",
    ),
    "page-updated": (
        "edit a page (a new version), send its page updated event",
        "Edit a page of the emulated site (default: Release notes), which makes a new version of it, and "
        "send the page updated product event for that version to POST /forge/events: each run requests a "
        "page-snapshot job that stores a new snapshot version. With --wait, print the job's outcome and "
        "the snapshot it stored.",
    ),
    "event": (
        "any product event type, e.g. avi:confluence:added:label",
        "Send a product event of any type to POST /forge/events, in the shape Atlassian's events "
        "reference gives its kind: page and blog post events carry the page, label events the label "
        "(--label) and, when added or removed, the page; space events the page's space. Map the type to "
        "a job in EVENTS of functions/forge_triggers/app.py to have it request one. It changes nothing on "
        "the emulated site, and each run is a new delivery, not a retry of the last one.",
    ),
    "status": (
        "GET /api/status as a user in the app's UI",
        "Call GET /api/status as the app's UI does (invokeRemote, with the app and user tokens), as the "
        "CLI's default user: it shows until when jobs can use the stored token. The same as: call GET "
        "/api/status.",
    ),
    "call": (
        "call a UI route of yours as a signed-in user (invokeRemote)",
        "Call a route of the remote as the app's Custom UI does with invokeRemote: a FIT for the UI "
        "endpoint with the user as its principal, the app token (see ui-token) and the user's own token. "
        "PATH may carry a query string. --admin makes the account a Confluence administrator of the "
        "emulated site from then on (POST /api/jobs needs one) and --no-admin a plain user; with neither "
        "the account stays as the site has it (the default user is a plain user; site lists who is not).",
    ),
    "job": (
        "send a job request to the jobs queue (--wait: its outcome)",
        "Send a job request for the emulated site's installation to the stack's jobs queue, as the triggers "
        "and the scheduler do. With --wait, print what the worker did (done, deferred and why, "
        "dead-lettered and why) and the result the job stored. Exit status 0 when the job was sent "
        "(without --wait) or done; 1 when it was deferred, dead-lettered or discarded, or no outcome "
        "came in time; 2 for bad JSON or an unknown job (nothing sent).",
    ),
    "clock": (
        "the stack's clock; 'clock advance 90m' moves it forward",
        "Print the stack's clock, which token expiry and the jobs' today are measured by. 'clock advance "
        "DURATION' (for example 90m, 3h, 3600s, 1h30m or 2d) moves it forward: stored tokens come closer "
        "to expiring, or expire, and every deferred job waiting out its delay runs again now. It never "
        "goes back: a restarted stack is on this machine's time again. With a stack per realm (make local "
        "ARGS='--realms default,EU'), every realm's stack's clock, moved together.",
    ),
    "ui-token": (
        "what app token UI calls hand over: a fresh one, or none",
        "Show or set the app token the stack's Forge hands over with each UI call, the status page's and "
        "call's alike: a fresh one valid for DURATION (3h when the stack starts), or none. With none, the "
        "status page and status show what the rest of the stack left, so that clock advance can bring "
        "them to expiring soon or to no token.",
    ),
    "site": (
        "list the emulated site's spaces, pages and users",
        "List what the emulated Confluence site holds: its installation, its spaces, its pages with their "
        "ids, versions, labels and view restrictions, and its users, with who administers the site. The "
        "page ids are what --page-id and job page-snapshot take. With a stack per realm, also the realm the "
        "site is in and each realm's stack.",
    ),
    "migrate": (
        "move the site to another realm's stack, as Forge migrates",
        "Migrate the site's data to another data residency realm's stack, as Forge does (make local "
        "ARGS='--realms default,EU' runs a stack per realm): the migration:dataResidency hooks of the "
        "manifest on the stack of the site's realm, schedule, start, status polled until ready-to-commit "
        "or failed, then commit (or rollback when failed), each answer printed. After the commit the site "
        "is in the new realm: every later command goes to that realm's stack. With --rollback it rolls "
        "back once the copy is ready, to show a rollback. Exit status 0 when committed (with --rollback: "
        "rolled back); 1 when the migration failed, was refused or did not finish in time.",
    ),
    "uninstall": (
        "preUninstall: deletes the installation's tokens",
        "Send preUninstall to POST /forge/uninstall (no token): the stack deletes the installation's "
        "tokens and marks it uninstalled. Run install again to reinstall: the site then gets a new "
        "installation id, as with Forge.",
    ),
}
COMMANDS = tuple(COMMAND_HELP)
PAGE_EVENTS = {"page-created": "avi:confluence:created:page", "page-updated": "avi:confluence:updated:page"}


class CliError(Exception):
    """A failure the user can act on: printed as one line, exit status 1, no traceback."""


# -- durations (clock advance, ui-token)
_DURATION = re.compile(r"(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?")


def parse_duration(text: str) -> float:
    """``90m``, ``3h``, ``3600s``, ``1h30m``, ``2d`` or plain seconds; ``ValueError`` with a message fit for the user."""
    cleaned = text.strip().lower()
    found = _DURATION.fullmatch(cleaned) if not cleaned.isdigit() else None
    if cleaned.isdigit():
        seconds = int(cleaned)
    elif found is not None and any(found.groups()):
        days, hours, minutes, secs = (int(part or 0) for part in found.groups())
        seconds = days * 86400 + hours * 3600 + minutes * 60 + secs
    else:
        raise ValueError(f"not a duration: {text!r} (for example 90m, 3h, 3600s, 1h30m or 2d)")
    if seconds <= 0:
        raise ValueError(f"a duration must be more than 0 seconds, not {text!r}")
    return float(seconds)


def human(seconds: float) -> str:
    """``5400`` -> ``1 h 30 min``."""
    left, parts = round(abs(seconds)), list[str]()
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60), ("s", 1)):
        if left >= size or (unit == "s" and not parts):
            parts.append(f"{left // size} {unit}")
            left %= size
    return " ".join(parts[:2])


# -- the running stack
def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def _read(path: Path) -> dict[str, Any] | None:
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


def load_state(path: Path) -> dict[str, Any]:
    """The state file of the stack that has the site (a joined realm's stack's file leads to it)."""
    if not path.exists():
        hint = ""
        if path.resolve() == STATE_FILE.resolve():  # the default: a stack on another port has its own file
            others = [p for p in sorted(CACHE.glob("local-stack-*.json")) if "home" not in (_read(p) or {})]
            if others:
                hint = "; stacks on other ports: " + ", ".join(f"--state-file {_shown(p)}" for p in others)
        raise CliError(f"{path} not found: start the stack first with `make local` (emulator JWKS mode){hint}")
    state: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    home = state.get("home")
    if isinstance(home, str):  # a joined realm's stack: the site, the dev key and the realm map are the first's
        return load_state(Path(home))
    return state


# -- realms (data residency)
def home_realm(home: dict[str, Any]) -> str:
    return str(home.get("realm") or residency.DEFAULT_REALM)


def realm_map(home: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Realm -> its stack (gateway URL, region, app table, state file); a file from before realms: one."""
    realms = home.get("realms")
    if isinstance(realms, dict) and realms:
        return realms
    return {home_realm(home): {"gatewayUrl": home["gatewayUrl"], "region": home.get("aws", {}).get("region")}}


def realm_state(home: dict[str, Any], realm: str) -> dict[str, Any]:
    """The state of the stack serving ``realm`` (the first stack's own, or a joined one's file)."""
    if realm == home_realm(home):
        return home
    entry = realm_map(home).get(realm)
    if entry is None:
        raise CliError(f"no local stack serves realm {realm} (these do: {', '.join(realm_map(home))})")
    state = _read(Path(entry["stateFile"])) if entry.get("gatewayUrl") and entry.get("stateFile") else None
    if state is None:
        raise CliError(
            f"realm {realm}'s stack is not running (still starting, or it exited: make local's output says which)"
        )
    return state


def realm_controls(home: dict[str, Any]) -> list[tuple[str, ControlClient]]:
    """Every running realm's stack's control endpoint, the first stack's first."""
    controls = []
    for realm, entry in realm_map(home).items():
        if realm == home_realm(home):
            controls.append((realm, control_client(home)))
        elif entry.get("gatewayUrl"):
            controls.append((realm, control_client(realm_state(home, realm))))
    return controls


def emulator_from(state: dict[str, Any]) -> tuple[ForgeEmulator, Site]:
    """A Forge emulator that signs with the running stack's dev key, and the stack's emulated site."""
    forge = ForgeEmulator(state["appId"])
    private_key = serialization.load_pem_private_key(state["privateKeyPem"].encode(), password=None)
    if not isinstance(private_key, rsa.RSAPrivateKey):
        raise CliError("state file holds no RSA key")
    forge.keys = [SigningKey(kid=state["kid"], private_key=private_key)]
    token_pem = state.get("tokenKeyPem")
    if token_pem:  # app tokens the stack's own Forge emulator recognises as its own (GraphQL mints)
        token_key = serialization.load_pem_private_key(token_pem.encode(), password=None)
        if isinstance(token_key, rsa.RSAPrivateKey):
            forge.token_key = token_key
    return forge, site_from(state)


def site_from(state: dict[str, Any]) -> Site:
    return site_of(state["site"])


def site_of(site: dict[str, Any]) -> Site:
    return site_from_json(site)


def control_client(state: dict[str, Any]) -> ControlClient:
    control = state.get("control")
    if not isinstance(control, dict):
        raise CliError("the state file predates the dev control endpoint: restart `make local`")
    return ControlClient(control["url"], control["secret"])


def ask(call: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
    """One control endpoint request, its failures as one line for the user."""
    try:
        return call(*args)
    except ControlUnreachable as exc:
        raise CliError(f"cannot reach the local stack at {exc}: is `make local` still running?") from None
    except ControlRefused as exc:
        raise CliError(f"the local stack refused: {exc.message} (HTTP {exc.status})") from None


@dataclass
class Stack:
    """The running stack as one command sees it: its state file, control endpoint, Forge and site.

    With several realms, ``state``, ``gateway_url``, ``now`` and ``realm_control`` are those of the stack
    serving the site's realm (where Forge calls go, jobs run and outcomes are journaled); ``home`` and
    ``control`` are the first stack's, which has the site, the pages and the dev key.
    """

    state: dict[str, Any]
    control: ControlClient
    forge: ForgeEmulator
    site: Site
    ui_app_token_lifetime_s: float | None
    gateway_url: str
    now: float
    home: dict[str, Any] = field(default_factory=dict)
    realm_control: ControlClient | None = None

    @property
    def realm(self) -> str:
        return self.site.realm


def connect(args: argparse.Namespace) -> Stack:
    """The stack of ``--state-file`` (of the site's realm), with this process's clock set to that stack's
    (``clock.set``): the tokens minted here then expire when the stack's own would, however far its
    clock was moved."""
    home = load_state(args.state_file)
    control = control_client(home)
    facts = ask(control.get, "/v1/stack")
    site = site_of(facts["site"])
    state = realm_state(home, site.realm)
    realm_control = control if state is home else control_client(state)
    now = float(facts["now"] if state is home else ask(realm_control.get, "/v1/stack")["now"])
    if abs(now - clock.now()) > 1:  # moved on (clock advance); within a second it is the same clock
        clock.set(now)
    forge, _ = emulator_from(home)
    gateway = (getattr(args, "url", None) or state["gatewayUrl"]).rstrip("/")
    lifetime = facts.get("uiAppTokenLifetimeSeconds")
    return Stack(state, control, forge, site, lifetime, gateway, now, home=home, realm_control=realm_control)


# -- Forge calls
def content_of(page: dict[str, Any]) -> Content:
    """What a product event says of a page, from the control endpoint's page facts."""
    return Content(
        id=str(page["id"]),
        title=str(page["title"]),
        space_key=str(page["spaceKey"]),
        space_name=str(page["spaceName"]),
        version=int(page["version"]),
        space_id=int(page["spaceId"]),
    )


def request_for(
    command: str, forge: ForgeEmulator, site: Site, content: Content | None = None
) -> tuple[str, str, Any, dict[str, str]]:
    """(method, path, body, headers) of the Forge call ``command`` stands for (``status``: ``ui_request``)."""
    token = forge.app_token()
    if command == "install":
        return (
            "POST",
            "/forge/lifecycle",
            forge.installed_event(site),
            forge.headers(site, app_token=token, module_key="lifecycle-endpoint"),
        )
    if command == "keepalive":
        return "POST", "/forge/keepalive", {}, forge.headers(site, app_token=token, module_key="keepalive-endpoint")
    if command in PAGE_EVENTS:
        if content is None:
            raise ValueError(f"{command} needs the page")
        event = forge.product_event(PAGE_EVENTS[command], content=content)
        return "POST", "/forge/events", event, forge.headers(site, app_token=token, module_key="events-endpoint")
    if command == "status":
        return ui_request(forge, site, "GET", "/api/status")
    if command == "uninstall":
        return "POST", "/forge/uninstall", {}, forge.headers(site, module_key="uninstall-endpoint")
    raise ValueError(f"unknown command {command}")


def ui_request(
    forge: ForgeEmulator,
    site: Site,
    method: str,
    path: str,
    body: Any = None,
    *,
    account_id: str = USER_ACCOUNT_ID,
    app_token_lifetime_s: float | None = 3 * 3600,
) -> tuple[str, str, Any, dict[str, str]]:
    """A UI call as Forge's invokeRemote makes it (``ForgeEmulator.ui_call_headers``, which the status
    page's stand-in for ``@forge/bridge`` uses too)."""
    return method, path, body, forge.ui_call_headers(site, account_id, app_token_lifetime_s=app_token_lifetime_s)


def send(stack: Stack, method: str, path: str, body: Any, headers: dict[str, str]) -> tuple[int, Any]:
    """Send one call to the gateway; print its status and JSON body. Returns (status, parsed body)."""
    try:
        response = requests.request(method, stack.gateway_url + path, headers=headers, json=body, timeout=30)
    except requests.ConnectionError as exc:
        raise CliError(
            f"cannot reach the local gateway at {stack.gateway_url}: is `make local` still running?"
        ) from exc
    print(f"{method} {path} -> HTTP {response.status_code}")
    document: Any = None
    if response.content:
        try:
            document = response.json()
            print(json.dumps(document, indent=2))
        except ValueError:
            print(response.text)
    return response.status_code, document


def finish(args: argparse.Namespace, stack: Stack, status: int, document: Any) -> int:
    """The exit status of a call: 0 for a 2xx answer; with --wait, 0 only if the job it requested is done."""
    if not 200 <= status < 300:
        return 1
    if not getattr(args, "wait", False):
        return 0
    request_id = document.get("requestId") if isinstance(document, dict) else None
    if not isinstance(request_id, str):
        print("no job was requested, so there is nothing to wait for")
        return 1
    return report_outcome(stack.state, request_id, args.timeout, args.result_kind)


def run_install(args: argparse.Namespace) -> int:
    stack = connect(args)
    answer = ask(stack.control.post, "/v1/install", {})
    site = site_of(answer["site"])
    if answer.get("newInstallation"):
        print(
            f"reinstall: {answer['previousInstallationId']} was uninstalled, so as Forge does this install "
            f"gets a new installation id: {site.installation_id}"
        )
    return finish(args, stack, *send(stack, *request_for("install", stack.forge, site)))


def run_simple(args: argparse.Namespace) -> int:
    """keepalive and uninstall: the call alone."""
    stack = connect(args)
    status, document = send(stack, *request_for(args.command, stack.forge, stack.site))
    if args.command == "uninstall" and status == 200:
        print("Run install to reinstall: as with Forge, the site then gets a new installation id.")
    return finish(args, stack, status, document)


def _page_id(args: argparse.Namespace, stack: Stack) -> str:
    return str(args.page_id or stack.home["page"]["id"])


def run_page_event(args: argparse.Namespace) -> int:
    stack = connect(args)
    page_id = _page_id(args, stack)
    if args.command == "page-updated":  # the edit first: the event is about the version it made
        page = ask(stack.control.post, f"/v1/pages/{page_id}/versions", {"by": USER_ACCOUNT_ID})
        print(f"page {page_id} ({page['title']}) edited: now version {page['version']}")
    else:
        page = ask(stack.control.get, f"/v1/pages/{page_id}")
    return finish(args, stack, *send(stack, *request_for(args.command, stack.forge, stack.site, content_of(page))))


def run_event(args: argparse.Namespace) -> int:
    stack = connect(args)
    page = ask(stack.control.get, f"/v1/pages/{_page_id(args, stack)}")
    event = stack.forge.product_event(args.event_type, content=content_of(page), label=args.label)
    headers = stack.forge.headers(stack.site, app_token=stack.forge.app_token(), module_key="events-endpoint")
    return finish(args, stack, *send(stack, "POST", "/forge/events", event, headers))


def run_call(args: argparse.Namespace, body: Any) -> int:
    stack = connect(args)
    if args.admin is not None:
        ask(stack.control.post, "/v1/admins", {"accountId": args.account, "admin": args.admin})
        standing = "a Confluence administrator" if args.admin else "a plain user (no administrator)"
        print(f"{args.account} is now {standing} of the emulated site")
    method, path, _, headers = ui_request(
        stack.forge,
        stack.site,
        args.method,
        args.path,
        account_id=args.account,
        app_token_lifetime_s=stack.ui_app_token_lifetime_s,
    )
    return finish(args, stack, *send(stack, method, path, body, headers))


def _versus_this_machine(now: float) -> str:
    ahead = now - time.time()
    if abs(ahead) < 1:
        return "the same as this machine's clock"
    return f"{human(ahead)} {'ahead of' if ahead > 0 else 'behind'} this machine's clock"


def run_clock(args: argparse.Namespace, seconds: float | None) -> int:
    """The stack's clock; with several realms every realm's stack's, each moved by the same amount."""
    stack = connect(args)
    controls = realm_controls(stack.home)
    several = len(controls) > 1
    if seconds is None:
        for realm, control in controls:
            now = stack.now if not several else float(ask(control.get, "/v1/stack")["now"])
            where = f"realm {realm}'s stack clock" if several else "stack clock"
            print(f"{where}: {_iso(now)} ({_versus_this_machine(now)})")
        return 0
    for realm, released in advance_clocks(controls, seconds, quiet=False):
        jobs = "1 deferred job" if released == 1 else f"{released} deferred jobs"
        where = f" in realm {realm}'s stack" if several else ""
        print(f"{jobs} released{where}: {'they run' if released != 1 else 'it runs'} again on the poller's next round")
    return 0


def advance_clocks(controls: list[tuple[str, ControlClient]], seconds: float, *, quiet: bool) -> list[tuple[str, int]]:
    """Move every realm's stack's clock ``seconds`` forward (they are one time, as deployed); per realm,
    how many deferred jobs that released."""
    released = []
    several = len(controls) > 1
    for realm, control in controls:
        answer = ask(control.post, "/v1/clock/advance", {"seconds": seconds})
        now = float(answer["now"])
        if not quiet:
            where = f"realm {realm}'s stack clock" if several else "stack clock"
            print(f"{where} moved {human(seconds)} forward: now {_iso(now)} ({_versus_this_machine(now)})")
        released.append((realm, int(answer["releasedJobs"])))
    return released


def run_ui_token(args: argparse.Namespace, setting: float | None, given: bool) -> int:
    stack = connect(args)
    lifetime = stack.ui_app_token_lifetime_s
    if given:
        lifetime = ask(stack.control.put, "/v1/ui-token", {"lifetimeSeconds": setting})["uiAppTokenLifetimeSeconds"]
    if lifetime is None:
        print("UI calls hand over no app token: the status page and status show the token the rest of the stack left")
    else:
        print(f"UI calls hand over a fresh app token valid for {human(float(lifetime))} on the stack's clock")
    return 0


def run_site(args: argparse.Namespace) -> int:
    stack = connect(args)
    listing = ask(stack.control.get, "/v1/site")
    site, users = listing["site"], {u["accountId"]: u for u in listing["users"]}

    def names(account_ids: list[str] | None) -> str:
        return ", ".join(users.get(a, {}).get("displayName", a) for a in account_ids or [])

    print(f"site {site['siteUrl']}, installation {site['installationId']}")
    realms = realm_map(stack.home)
    if len(realms) > 1:
        print(f"realm {stack.realm}: Forge calls go to {stack.gateway_url}")
        print("realms served here (a stack each, in its own region):")
        for realm, entry in realms.items():
            here = "  (the site is here)" if realm == stack.realm else ""
            print(f"  {realm:<8} {entry.get('gatewayUrl') or 'not running'}  {entry.get('region')}{here}")
    print("spaces:")
    for space in listing["spaces"]:
        restricted = f"  (only {names(space['restrictedTo'])} and the app)" if space["restrictedTo"] is not None else ""
        print(f"  {space['key']:<6} {space['name']}{restricted}")
    print("pages (id, space, version, title, labels):")
    for page in listing["pages"]:
        labels = ", ".join(page["labels"]) or "-"
        restricted = f"  restricted: only {names(page['restrictedTo'])} and the app" if page["restrictedTo"] else ""
        print(f"  {page['id']:<7} {page['spaceKey']:<6} v{page['version']:<3} {page['title']}  [{labels}]{restricted}")
    print("users:")
    for account_id, user in users.items():
        notes = [note for flag, note in ((user["admin"], "site administrator"),) if flag]
        if account_id == USER_ACCOUNT_ID:
            notes.append("the CLI's default user, signed in to the app's UI")
        extra = f"  ({'; '.join(notes)})" if notes else ""
        print(f"  {account_id:<45} {user['displayName']}{extra}")
    return 0


def _iso(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


# -- data residency: a realm migration, driven as Forge drives it
PLANTED_BY = "forge_cli migrate --fail-copy-after"  # the mark of the conflicting item --fail-copy-after plants
RETRY_WAIT_S = 5.0  # Forge retries a non-2xx answer without an error code twice, 5 s apart


@dataclass(frozen=True)
class MigrationModule:
    """The manifest's ``migration:dataResidency`` module: the key its FITs name, the hooks' path."""

    key: str
    path: str
    max_hours: float


def migration_module(manifest: Path = MANIFEST) -> MigrationModule:
    """What Forge reads of the manifest to migrate the app: no such module, no migration."""
    document = yaml.safe_load(manifest.read_text(encoding="utf-8")) or {}
    modules = (document.get("modules") or {}).get("migration:dataResidency") or []
    if not modules or not isinstance(modules[0], dict) or "key" not in modules[0]:
        raise CliError(f"{_shown(manifest)} has no migration:dataResidency module: Forge would not migrate this app")
    module = modules[0]
    return MigrationModule(
        key=str(module["key"]),
        path="/" + str(module.get("path", "")).strip("/"),
        max_hours=float(module.get("maxMigrationDurationHours", 24)),
    )


def _iso_z(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


class MigrationRun:
    """One realm migration of the site, from the stack of its realm (``stack``) to ``destination``'s:
    each hook call signed as Forge signs it, answered by the source stack, printed as it comes."""

    def __init__(self, stack: Stack, module: MigrationModule, destination: str, window_s: float) -> None:
        from forge_remote.forge.call_kinds import MIGRATION_MODULE_TYPE

        self.stack, self.module, self.destination = stack, module, destination
        self.module_type = MIGRATION_MODULE_TYPE
        self.migration_id = f"local-{uuid.uuid4().hex[:12]}"
        self.window = {
            "startTime": _iso_z(stack.now),
            "endTime": _iso_z(stack.now + window_s),
            "location": destination,
            "migrationId": self.migration_id,
        }

    def hook(self, name: str) -> tuple[int, Any]:
        """One hook call (and Forge's two retries of a non-2xx answer that carries no error code)."""
        method = "GET" if name == "status" else "POST"
        path = f"{self.module.path}/{name}"
        body: Any = None
        if name == "status":
            path += f"?migrationId={self.migration_id}"
        elif name in ("schedule", "start"):
            body = self.window
        else:
            body = {"migrationId": self.migration_id}
        for attempt in range(3):
            headers = self.stack.forge.headers(
                self.stack.site, module_key=self.module.key, module_type=self.module_type
            )
            status, document = send(self.stack, method, path, body, headers)
            coded = isinstance(document, dict) and document.get("errorResponseCode")
            if 200 <= status < 300 or coded or attempt == 2:
                return status, document
            print(f"no error code in a non-2xx answer: Forge retries it {RETRY_WAIT_S:g} s later")
            time.sleep(RETRY_WAIT_S)
        raise AssertionError("unreachable")


def _status_of(document: Any) -> str:
    return str(document.get("status", "")) if isinstance(document, dict) else ""


def _failure(document: Any) -> str:
    """``E0002 (what it means here)``: the code a failed answer carries, with this backend's meaning of it."""
    from forge_remote.forge.migration_hooks import ERROR_MEANINGS, ErrorCode

    code = document.get("errorResponseCode") if isinstance(document, dict) else None
    meaning = ERROR_MEANINGS.get(ErrorCode(code)) if code in set(ErrorCode) else None
    return f"{code} ({meaning})" if meaning else str(code or "no error code")


def _partition_keys(state: dict[str, Any], installation_id: str) -> list[dict[str, Any]]:
    client = dynamodb_client(state)
    keys: list[dict[str, Any]] = []
    for page in client.get_paginator("query").paginate(
        TableName=state["aws"]["appTable"],
        KeyConditionExpression="pk = :pk",
        ExpressionAttributeValues={":pk": {"S": installation_pk(installation_id)}},
        ProjectionExpression="pk, sk",
        ConsistentRead=True,
    ):
        keys.extend(page["Items"])
    return keys


def plant_conflict(stack: Stack, destination: dict[str, Any], after: int) -> dict[str, Any]:
    """Put, in the destination's app table, an item of the installation's that the migration will not have
    written, at the key of the installation's item ``after`` + 1 (in key order, its registry item not
    counted): a destination holding data of its own there, which the copy must not overwrite. Returns
    its key (``remove_planted`` takes it)."""
    from forge_remote.lifecycle.migration_copy import SKIPPED_PREFIXES
    from forge_remote.storage.table_keys import INSTALLATION_SK

    keys = _partition_keys(stack.state, stack.site.installation_id)
    candidates = [k for k in keys if not k["sk"]["S"].startswith(SKIPPED_PREFIXES) and k["sk"]["S"] != INSTALLATION_SK]
    if after >= len(candidates):
        raise CliError(
            f"the installation has {len(candidates)} items besides its registry item: --fail-copy-after must be "
            "below that (a job's --wait stores some)"
        )
    key = {"pk": candidates[after]["pk"], "sk": candidates[after]["sk"]}
    kind = key["sk"]["S"].split("#", 1)[0]
    try:
        dynamodb_client(destination).put_item(
            TableName=destination["aws"]["appTable"],
            Item={**key, "plantedBy": {"S": PLANTED_BY}},
            ConditionExpression="attribute_not_exists(pk)",
        )
    except ClientError as exc:
        raise CliError(
            f"could not plant the conflicting {kind} item in realm {destination.get('realm')}'s table: {exc}"
        ) from None
    print(
        f"planted a {kind} item of the installation's in realm {destination.get('realm')}'s app table (item "
        f"{after + 1} of its {len(candidates)} besides the registry item): the copy must stop there, a conflict"
    )
    return key


def remove_planted(destination: dict[str, Any], key: dict[str, Any]) -> None:
    try:
        dynamodb_client(destination).delete_item(
            TableName=destination["aws"]["appTable"], Key=key, ConditionExpression="attribute_exists(plantedBy)"
        )
    except ClientError:
        return
    print(f"removed the item planted in realm {destination.get('realm')}'s app table")


def run_migrate(args: argparse.Namespace) -> int:
    destination = residency.canonical(args.to)
    stack = connect(args)
    module = migration_module()
    realms = realm_map(stack.home)
    source = stack.realm
    if destination == source:
        others = ", ".join(r for r in realms if r != source) or "none: make local ARGS='--realms default,EU'"
        args.usage_error(f"the site is in realm {source} already: --to another realm (served here: {others})")
    if destination not in realms:
        wanted = ",".join([*realms, destination])
        args.usage_error(f"no local stack serves realm {destination}: make local ARGS='--realms {wanted}' runs one")
    target = realm_state(stack.home, destination)
    window_s = args.window or module.max_hours * 3600
    run = MigrationRun(stack, module, destination, window_s)
    print(
        f"realm migration {run.migration_id} of installation {stack.site.installation_id}: realm {source} "
        f"({stack.gateway_url}) -> realm {destination} ({target['gatewayUrl']}), window "
        f"{run.window['startTime']} .. {run.window['endTime']}"
    )
    planted = [plant_conflict(stack, target, args.fail_copy_after)] if args.fail_copy_after is not None else []

    def unplant() -> None:  # once the migration is over (rolled back): the destination as it was
        while planted:
            remove_planted(target, planted.pop())

    try:
        return _migrate(args, stack, run, target, unplant)
    finally:
        unplant()


def _migrate(
    args: argparse.Namespace, stack: Stack, run: MigrationRun, target: dict[str, Any], unplant: Callable[[], None]
) -> int:
    from forge_remote.forge.migration_hooks import FAILED, READY_TO_COMMIT

    for name in ("schedule", "start"):
        status, document = run.hook(name)
        if not 200 <= status < 300 or _status_of(document) == FAILED:
            print(f"{name} refused: {_failure(document)}; Forge rolls the migration back")
            run.hook("rollback")
            return 1
    document = _poll(args, stack, run)
    state = _status_of(document)
    if state != READY_TO_COMMIT:
        why = f"failed: {_failure(document)}" if state == FAILED else "still not ready when this run gave up"
        print(f"realm migration {why}; Forge rolls it back")
        status, _ = run.hook("rollback")
        print(f"rolled back: the site stays in realm {stack.realm}" if status == 200 else "the rollback was refused")
        unplant()
        print_partitions(stack, target)
        return 1
    if args.rollback:
        status, _ = run.hook("rollback")
        if status != 200:
            return 1
        print(f"rolled back as asked (--rollback): the site stays in realm {stack.realm}, its jobs running there again")
        print_partitions(stack, target)
        return 0
    status, document = run.hook("commit")
    if status != 200:
        print(f"commit refused: {_failure(document)}; Forge rolls the migration back")
        run.hook("rollback")
        return 1
    ask(stack.control.put, "/v1/site/realm", {"realm": run.destination})
    print(
        f"committed: the site is in realm {run.destination} now, and Forge calls for it go to realm "
        f"{run.destination}'s stack ({target['gatewayUrl']}); realm {stack.realm}'s stack refuses them (409 moved). "
        "Tokens are not copied: the next keepalive or event delivers realm "
        f"{run.destination}'s stack its first one."
    )
    print_partitions(stack, target)
    return 0


def print_partitions(stack: Stack, target: dict[str, Any]) -> None:
    """What each realm's app table holds of the installation now, by kind of item (no values)."""
    for state in (stack.state, target):
        kinds: dict[str, int] = {}
        for key in _partition_keys(state, stack.site.installation_id):
            kind = key["sk"]["S"].split("#", 1)[0]
            kinds[kind] = kinds.get(kind, 0) + 1
        listed = ", ".join(f"{kind} {n}" for kind, n in sorted(kinds.items())) or "nothing"
        total = sum(kinds.values())
        items = "1 item" if total == 1 else f"{total} items"
        print(f"realm {state.get('realm')}'s app table holds {items} of the installation: {listed}")


def _poll(args: argparse.Namespace, stack: Stack, run: MigrationRun) -> Any:
    """Status until ready-to-commit or failed, or until this run gives up; the last answer.

    ``--advance``: before each poll every realm's stack's clock moves on (Forge polls every 5 minutes),
    and this run gives up once the window would have passed; otherwise a poll every ``--poll-every``
    seconds of this machine's time, for ``--timeout`` seconds at most.
    """
    from forge_remote.forge.migration_hooks import FAILED, READY_TO_COMMIT

    controls = realm_controls(stack.home) if args.advance else []
    if args.advance:
        polls = math.ceil((parse_iso(run.window["endTime"]) - stack.now) / args.advance) + 1
    else:
        polls = max(1, math.ceil(args.timeout / args.poll_every))
    document: Any = None
    for _ in range(polls):
        if args.advance:
            advance_clocks(controls, args.advance, quiet=True)
            print(f"(every stack's clock moved {human(args.advance)} forward: Forge's next status poll)")
        else:
            time.sleep(args.poll_every)
        _, document = run.hook("status")
        if _status_of(document) in (READY_TO_COMMIT, FAILED):
            break
    return document


def parse_iso(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


# -- jobs
def known_jobs(state_file: Path) -> list[str]:
    """The jobs the running stack's worker has (the stack of the site's realm): what it loaded, reloads
    included (a module that does not import is not among them, whatever is on disk)."""
    home = load_state(state_file)
    state = realm_state(home, site_from(home).realm)
    jobs = ask(control_client(state).get, "/v1/stack").get("jobs")
    if not isinstance(jobs, list):
        raise CliError("the stack does not say which jobs its worker has: restart `make local`")
    return [str(name) for name in jobs]


def parse_job_args(text: str) -> dict[str, Any]:
    """``--args`` as a JSON object; ``ValueError`` with a message fit for the user otherwise."""
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"--args is not valid JSON ({exc.msg} at character {exc.pos}): {text!r}") from None
    if not isinstance(document, dict):
        raise ValueError(f'--args must be a JSON object such as \'{{"pageId": "{EXAMPLE_PAGE_ID}"}}\', not {text!r}')
    return document


def parse_body(text: str) -> Any:
    """``--body`` as JSON; ``ValueError`` with a message fit for the user otherwise."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"--body is not valid JSON ({exc.msg} at character {exc.pos}): {text!r}") from None


@dataclass(frozen=True)
class ResultLookup:
    """Where a job stores its result: a result kind, and which records of that kind this run wrote."""

    kind: str
    written_by: Callable[[dict[str, Any], JobOutcome], bool]


def result_lookup(job: str, kind: str | None) -> ResultLookup | None:
    """The shipped jobs' results (kinds and keys as their modules store them); ``kind`` for any other job."""
    from confluence_jobs.page_snapshot import SNAPSHOT
    from confluence_jobs.space_digest import DIGEST

    if kind:
        return ResultLookup(kind, lambda record, outcome: True)
    if job == "page-snapshot":  # one record per page version, stamped with the request that wrote it
        return ResultLookup(SNAPSHOT, lambda record, outcome: record.get("requestId") == outcome.request_id)
    if job == "space-digest":  # one record per space and day: this run's day
        return ResultLookup(DIGEST, lambda record, outcome: record.get("day") == _utc_day(outcome.at))
    return None


def _utc_day(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, UTC).date().isoformat()


def _aws(state: dict[str, Any]) -> dict[str, Any]:
    """The stack's moto endpoint, with explicit fake credentials: never the user's real AWS ones."""
    try:
        aws: dict[str, Any] = state["aws"]
        return {
            "endpoint_url": aws["endpointUrl"],
            "region_name": aws["region"],
            "aws_access_key_id": "local",
            "aws_secret_access_key": "local",
            # A stack that stopped answering fails the command in seconds instead of botocore's minutes.
            "config": Config(connect_timeout=5, read_timeout=15, retries={"max_attempts": 2}),
        }
    except KeyError:
        raise CliError("the state file predates the job command: restart `make local`") from None


def sqs_client(state: dict[str, Any]) -> SQSClient:
    return boto3.client("sqs", **_aws(state))


def dynamodb_client(state: dict[str, Any]) -> DynamoDBClient:
    return boto3.client("dynamodb", **_aws(state))


def send_job(state: dict[str, Any], request: JobRequest) -> None:
    client = sqs_client(state)
    queue_url = state["aws"].get("jobsQueueUrl")
    if not isinstance(queue_url, str):  # a state file from before job requests went straight to the queue
        raise CliError("the state file names no jobs queue: restart `make local`")
    try:
        send_job_requests(client, queue_url, [request])
    except (BotoCoreError, ClientError) as exc:
        raise CliError(
            f"could not send the job request to the local jobs queue: {exc}; is `make local` still running?"
        ) from exc


def wait_for_outcome(journal: OutcomeJournal, request_id: str, timeout_s: float) -> JobOutcome | None:
    """The worker's first outcome for the request, or None after ``timeout_s`` (bounded: never hangs)."""
    deadline = time.monotonic() + timeout_s
    while True:
        outcome = journal.find(request_id)
        if outcome is not None or time.monotonic() >= deadline:
            return outcome
        time.sleep(0.1)


def describe(outcome: JobOutcome) -> str:
    if outcome.status == "done":
        return f"done: {json.dumps(outcome.summary)}"
    if outcome.status == "deferred":
        again = f"It stays in the queue and runs again in about {outcome.delay_s} s."
        return f"deferred: {outcome.reason}. {again}{_hint(outcome.reason)}"
    if outcome.status == "dead":
        return f"dead-lettered: {outcome.reason}. It is in the DLQ and will not be retried."
    return f"{outcome.status}: {outcome.reason}"


def _hint(reason: str) -> str:
    """What to do locally about the usual deferrals: both mean no usable token has arrived yet."""
    if "installation not seen" in reason:
        return " Run install first."
    if "token" in reason:
        return " Run keepalive to deliver a fresh token."
    return " Or let that time pass now: clock advance."


def print_results(state: dict[str, Any], outcome: JobOutcome, lookup: ResultLookup | None) -> None:
    if lookup is None:
        print(f"stored result: unknown for job {outcome.job} (pass --result-kind KIND to list a kind's records)")
        return
    store = ResultStore(dynamodb_client(state), state["aws"]["appTable"])
    records = [r for r in store.list(outcome.installation_id, lookup.kind) if lookup.written_by(r, outcome)]
    print(f"stored result ({lookup.kind}, {len(records)} record{'' if len(records) == 1 else 's'}):")
    for record in records:
        print(json.dumps(record, indent=2, ensure_ascii=False))


def report_outcome(state: dict[str, Any], request_id: str, timeout_s: float, result_kind: str | None) -> int:
    """Wait for the worker's outcome of a request; print it and what the job stored. 0 when done."""
    outcome = wait_for_outcome(OutcomeJournal(Path(state["jobOutcomes"])), request_id, timeout_s)
    if outcome is None:
        print(f"no outcome within {timeout_s:g} s: the request is still queued (is the stack's poller running?)")
        return 1
    print(describe(outcome))
    if outcome.status != "done":
        return 1
    print_results(state, outcome, result_lookup(outcome.job, result_kind))
    return 0


def run_job(args: argparse.Namespace, job_args: dict[str, Any]) -> int:
    home = load_state(args.state_file)
    site = site_from(home)
    state = realm_state(home, site.realm)  # the worker of the site's realm's stack runs it
    request = JobRequest(job=args.name, installation_id=site.installation_id, args=job_args)
    send_job(state, request)
    where = f" in realm {site.realm}'s stack" if len(realm_map(home)) > 1 else ""
    print(f"job {request.job} requested for {site.installation_id}{where} (request {request.request_id})")
    if not args.wait:
        return 0
    return report_outcome(state, request.request_id, args.timeout, args.result_kind)


# -- the command line
class CommandListFormatter(argparse.HelpFormatter):
    """Keeps every command's description on its name's line.

    argparse measures the command names one indent (2 columns) short of where it prints them, so the
    longest (page-created) would get its description on a line of its own.
    """

    def add_argument(self, action: argparse.Action) -> None:
        super().add_argument(action)
        if isinstance(action, argparse._SubParsersAction):
            self._action_max_length += 2


def _add_common(parser: argparse.ArgumentParser, *, url: bool) -> None:
    if url:
        parser.add_argument("--url", metavar="URL", help="the local gateway (default: the one in the state file)")
    parser.add_argument(
        "--state-file",
        type=Path,
        default=STATE_FILE,
        metavar="PATH",
        help="the running stack's state, written by 'make local' (default: .cache/local-stack.json)",
    )
    parser.set_defaults(usage_error=parser.error)  # the command's own usage line with its errors


def _add_wait(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--wait", action="store_true", help=f"wait for the outcome of the job {what} requests")
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_WAIT_S,
        metavar="SECONDS",
        help=f"how long --wait waits for the outcome (default {DEFAULT_WAIT_S:g})",
    )
    parser.add_argument(
        "--result-kind",
        metavar="KIND",
        help="with --wait, list the stored results of this kind (for your own jobs, for example LABEL_AUDIT)",
    )


def _page_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--page-id",
        metavar="ID",
        help=f"a page of the emulated site (default {EXAMPLE_PAGE_ID}, Release notes; site lists them)",
    )


def build_parser() -> argparse.ArgumentParser:
    # The usage line names the venv's python: a bare `python` has none of the dependencies.
    parser = argparse.ArgumentParser(
        prog=".venv/bin/python -m local.forge_cli",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=CommandListFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", title="commands")
    sub = {
        name: commands.add_parser(name, help=summary, description=description)
        for name, (summary, description) in COMMAND_HELP.items()
    }
    for name in ("page-created", "page-updated"):
        _page_option(sub[name])
        _add_wait(sub[name], "the event")
    event = sub["event"]
    event.add_argument(
        "event_type", metavar="EVENT_TYPE", help="the event type, for example avi:confluence:added:label"
    )
    _page_option(event)
    event.add_argument("--label", metavar="NAME", help="the label of a label event (default audit)")
    _add_wait(event, "the event")
    call = sub["call"]
    call.add_argument("method", metavar="METHOD", help=f"the HTTP method: {', '.join(sorted(METHODS))}")
    call.add_argument(
        "path", metavar="PATH", help="the route's path, with a query string if any: /api/pages/recent?days=7"
    )
    call.add_argument(
        "--body", metavar="JSON", help='the JSON body, for example \'{"job": "space-digest", "args": {}}\''
    )
    call.add_argument(
        "--as",
        dest="account",
        default=USER_ACCOUNT_ID,
        metavar="ACCOUNT_ID",
        help="the signed-in user's account id (default: the CLI's default user)",
    )
    call.add_argument(
        "--admin",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="make the account a Confluence administrator of the emulated site (--no-admin: a plain user)",
    )
    _add_wait(call, "the call")
    job = sub["job"]
    job.add_argument("name", metavar="JOB", help="the job to run, for example page-snapshot or space-digest")
    job.add_argument(
        "--args",
        default="{}",
        metavar="JSON",
        help=f'the job\'s arguments as a JSON object (default {{}}), for example \'{{"pageId": "{EXAMPLE_PAGE_ID}"}}\' '
        "(Release notes, the page the banner names)",
    )
    job.add_argument("--wait", action="store_true", help="wait for the worker's outcome and the stored result")
    job.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_WAIT_S,
        metavar="SECONDS",
        help=f"how long --wait waits for the outcome (default {DEFAULT_WAIT_S:g})",
    )
    job.add_argument(
        "--result-kind",
        metavar="KIND",
        help="with --wait, list the stored results of this kind (for your own jobs, for example LABEL_AUDIT)",
    )
    sub["clock"].add_argument("action", nargs="?", choices=("advance",), metavar="advance", help="move the clock on")
    sub["clock"].add_argument("duration", nargs="?", metavar="DURATION", help="how far: 90m, 3h, 3600s, 1h30m, 2d")
    sub["ui-token"].add_argument(
        "setting", nargs="?", metavar="none|DURATION", help="none, or how long the token is valid: 30m, 3h"
    )
    migrate = sub["migrate"]
    migrate.add_argument("--to", required=True, metavar="REALM", help="the realm to move the site to, for example EU")
    migrate.add_argument(
        "--rollback",
        action="store_true",
        help="roll back once the copy is ready-to-commit instead of committing (to see a rollback)",
    )
    migrate.add_argument(
        "--fail-copy-after",
        type=int,
        metavar="N",
        help="make the copy fail: first put, in the destination's app table, an item of the installation's at "
        "the key of its item N+1 (in key order, its registry item not counted; 0: the first), which the "
        "migration did not write; the copy stops there with a conflict (E0002) and is rolled back (the planted "
        "item is removed afterwards)",
    )
    migrate.add_argument(
        "--advance",
        type=_duration,
        metavar="DURATION",
        help="before each status poll, move every stack's clock this far instead of waiting (Forge polls "
        "every 5 minutes: --advance 5m)",
    )
    migrate.add_argument(
        "--poll-every",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="without --advance, seconds between status polls (default 1; Forge's are 5 minutes apart)",
    )
    migrate.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_WAIT_S,
        metavar="SECONDS",
        help=f"without --advance, how long to poll before giving up and rolling back (default {DEFAULT_WAIT_S:g})",
    )
    migrate.add_argument(
        "--window",
        type=_duration,
        metavar="DURATION",
        help="the migration window, from now (default: the manifest's maxMigrationDurationHours)",
    )
    for name, command in sub.items():
        _add_common(command, url=name not in ("job", "clock", "ui-token", "site", "migrate"))
    return parser


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _cmd_job(args: argparse.Namespace) -> int:
    try:
        job_args = parse_job_args(args.args)
    except ValueError as exc:
        args.usage_error(str(exc))
    jobs = known_jobs(args.state_file)
    if args.name not in jobs:
        args.usage_error(f"unknown job {args.name!r}: the worker has {', '.join(jobs)}")
    return run_job(args, job_args)


def _cmd_call(args: argparse.Namespace) -> int:
    args.method = args.method.upper()
    if args.method not in METHODS:
        args.usage_error(f"METHOD must be one of {', '.join(sorted(METHODS))}, not {args.method!r}")
    if not args.path.startswith("/") or args.path.startswith("//") or any(c.isspace() for c in args.path):
        args.usage_error(f"PATH must be an absolute path such as /api/status, not {args.path!r}")
    if not ACCOUNT_ID.fullmatch(args.account):
        args.usage_error(f"--as must be an Atlassian account id such as {USER_ACCOUNT_ID}")
    body = None
    if args.body is not None:
        if args.method == "GET":
            args.usage_error("a GET sends no body: drop --body, or put the values in the query string")
        try:
            body = parse_body(args.body)
        except ValueError as exc:
            args.usage_error(str(exc))
    return run_call(args, body)


def _cmd_status(args: argparse.Namespace) -> int:
    args.method, args.path, args.account, args.admin = "GET", "/api/status", USER_ACCOUNT_ID, None
    return run_call(args, None)


def _cmd_event(args: argparse.Namespace) -> int:
    if not EVENT_TYPE.fullmatch(args.event_type):
        args.usage_error(
            f"EVENT_TYPE must be a product event type such as avi:confluence:added:label, not {args.event_type!r}"
        )
    return run_event(args)


def _cmd_clock(args: argparse.Namespace) -> int:
    seconds = None
    if args.action == "advance":
        if args.duration is None:
            args.usage_error("clock advance needs a DURATION, for example 90m or 3h")
        try:
            seconds = parse_duration(args.duration)
        except ValueError as exc:
            args.usage_error(str(exc))
    elif args.duration is not None:
        args.usage_error("to move the clock: clock advance DURATION")
    return run_clock(args, seconds)


def _cmd_ui_token(args: argparse.Namespace) -> int:
    setting = None
    if args.setting is not None and args.setting.lower() != "none":
        try:
            setting = parse_duration(args.setting)
        except ValueError as exc:
            args.usage_error(f"{exc}; or none for no app token")
    return run_ui_token(args, setting, args.setting is not None)


def _cmd_migrate(args: argparse.Namespace) -> int:
    try:
        residency.realm_label(args.to)
    except ValueError as exc:
        args.usage_error(f"--to: {exc}")
    if args.fail_copy_after is not None and args.fail_copy_after < 0:
        args.usage_error("--fail-copy-after must be 0 or more")
    if args.fail_copy_after is not None and args.rollback:
        args.usage_error("--fail-copy-after makes the copy fail, so it is rolled back anyway: drop --rollback")
    if args.poll_every <= 0:
        args.usage_error("--poll-every must be a positive number of seconds")
    return run_migrate(args)


RUNNERS: dict[str, Callable[[argparse.Namespace], int]] = {
    "install": run_install,
    "keepalive": run_simple,
    "page-created": run_page_event,
    "page-updated": run_page_event,
    "event": _cmd_event,
    "status": _cmd_status,
    "call": _cmd_call,
    "job": _cmd_job,
    "clock": _cmd_clock,
    "ui-token": _cmd_ui_token,
    "site": run_site,
    "migrate": _cmd_migrate,
    "uninstall": run_simple,
}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # Checked before anything is read or sent: a typo costs nothing and explains itself (exit 2).
    if getattr(args, "timeout", 1) <= 0:
        args.usage_error("--timeout must be a positive number of seconds")
    page_id = getattr(args, "page_id", None)
    if page_id is not None and not (page_id.isascii() and page_id.isdigit() and len(page_id) <= 20):
        args.usage_error(f"--page-id must be a page's numeric id, such as {EXAMPLE_PAGE_ID}, not {page_id!r}")
    try:
        return RUNNERS[args.command](args)
    except CliError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
