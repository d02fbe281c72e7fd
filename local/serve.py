"""``make local`` (``python -m local.serve``): the embedded stack left running on 127.0.0.1.

The same ``LocalRuntime`` as the demo and the tests, plus poller threads that drain the jobs queue
every second and hand the tokens table's stream to the token wake-up (deferred jobs come back after
their real delay, as soon as a token is stored, or when ``forge_cli clock advance`` moves the clock).

Two ways to call it:
- The Forge emulator: ``.venv/bin/python -m local.forge_cli COMMAND`` (the banner prints each one)
  signs FITs with this process's dev key, read from the state file (0600; a throwaway key made for
  this run, trusted by nothing but this stack; the file is removed on exit): ``.cache/local-stack.json``
  on the default port, ``.cache/local-stack-<port>.json`` on any other, so two stacks never share one.
  Its ``job`` command sends a job request to this stack's jobs queue and reads the worker's outcome back
  from a journal next to that file (``local.job_outcomes``). What the CLI asks of this process itself
  (the clock, a reinstall's new installation id, a page edit, who administers the site) goes to the
  loopback dev control endpoint (``local.dev_control``), whose URL and per-run secret are in the file.
- A real Forge app: expose the gateway through a tunnel, point the manifest's ``remotes[].baseUrl``
  at the tunnel, and run ``--jwks production --app-id <your app uuid> --allowed-api-hosts
  api.atlassian.com``: FITs are then verified against Atlassian's production JWKS and tokens are sent
  only to the real Confluence API, exactly as deployed. No state file is written then (there is no
  dev key to share) and the Confluence emulator plays no part.

Start-up binds every port first (gateway, control endpoint, status page) and only then writes: a
stack that cannot start, or whose state file belongs to another live stack (an advisory lock on
``<state file>.lock``, released by the kernel when that stack's process ends), leaves every file alone.

Data residency (``--realms default,EU``, ``local/realms.py``): this process serves the first realm,
with the moto server, the Forge emulator and the Confluence site, and starts a ``--join`` process for
each further realm (``local/realm_stacks.py``): its own tables and queues in its own region of this
process's moto server, its own gateway, worker and clock, ``DataRealm`` its realm and ``PeerAppTables``
the others' app tables. The state file maps each realm to its stack (``realms``: gateway URL, region,
app table, the joined stack's own state file) and says which realm the site is in (``site.realm``):
``forge_cli`` sends each Forge call to that realm's gateway, and ``forge_cli migrate`` moves the site.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import fcntl
import json
import os
import shlex
import signal
import sys
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, NoReturn

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from forge_remote.config import PRODUCTION_JWKS_URL, app_ari  # installed in the venv from layers/forge_remote
from forge_remote.errors import ConfigurationError
from local import realms as residency
from local.dev_control import DevControl, site_from_json
from local.forge_emulator import DEFAULT_APP_ID, Site
from local.job_outcomes import OutcomeJournal, journal_worker_outcomes
from local.loopback import PortInUse
from local.realm_stacks import RealmProcess, RealmStackFailed
from local.runtime import LocalRuntime
from local.seed import SeededSite, seed_site
from local.ui_dev import DEFAULT_UI_PORT, StatusPageServer, UiBuildError, start_status_page

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache"
STATE_FILE = CACHE / "local-stack.json"
DEFAULT_PORT = 8787
# The deployed stack's MIGRATION_SETTLE_S is the worker's timeout and a margin (150 s): locally a few
# seconds, so that `forge_cli migrate` shows the copy waiting for the job hold to settle, briefly.
LOCAL_MIGRATION_SETTLE_S = 3
# What a joined realm's stack takes from the first one's parameters: the one Forge and Confluence site.
JOIN_PARAMETERS = ("ForgeAppId", "ForgeJwksUrl", "AllowedApiHosts", "ForgeGraphqlUrl", "TokenMinValiditySeconds")
DESCRIPTION = (
    "The whole function set left running on 127.0.0.1, for the Forge emulator CLI or a real Forge app "
    "through a tunnel. 'make local' runs it, with options given as ARGS: make local ARGS=--port=9000"
)


def default_state_file(port: int) -> Path:
    """Where a stack on ``port`` writes its state unless told: one file per port, so two stacks never share one."""
    return STATE_FILE if port == DEFAULT_PORT else CACHE / f"local-stack-{port}.json"


class OneLineErrors(argparse.ArgumentParser):
    """Usage errors in one line naming the option (the full usage is what --help is for)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (--help lists the options)\n")


def _realms(text: str) -> tuple[str, ...]:
    try:
        return residency.parse_realms(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _realm(text: str) -> str:
    try:
        return residency.realm_label(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _settle(text: str) -> int:
    try:
        seconds = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number of seconds: {text!r}") from None
    if not 0 <= seconds <= 3600:
        raise argparse.ArgumentTypeError(f"0 to 3600 seconds, not {seconds}")
    return seconds


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 0 to 65535 (0: any free one), not {port}")
    return port


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = OneLineErrors(prog=".venv/bin/python -m local.serve", description=DESCRIPTION)
    parser.add_argument(
        "--port", type=_port, default=DEFAULT_PORT, help="gateway port on 127.0.0.1 (default 8787; 0: any free port)"
    )
    parser.add_argument(
        "--jwks",
        choices=["emulator", "production"],
        default="emulator",
        help="verify FITs with the Forge emulator's dev key (default) or Atlassian's production JWKS",
    )
    parser.add_argument("--app-id", help="Forge app id (uuid or ARI); required with --jwks production")
    parser.add_argument(
        "--allowed-api-hosts",
        help="hosts tokens may be sent to (default: the Confluence emulator; api.atlassian.com with --jwks production)",
    )
    parser.add_argument(
        "--poll-interval", type=float, default=1.0, metavar="SECONDS", help="seconds between queue drains"
    )
    parser.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="the functions' log level"
    )
    parser.add_argument(
        "--ui-port",
        type=_port,
        default=DEFAULT_UI_PORT,
        help="port of the token status page on 127.0.0.1 (default 8788; any free port if taken)",
    )
    parser.add_argument(
        "--state-file",
        type=Path,
        default=None,
        metavar="PATH",
        help="where the Forge emulator CLI finds this stack (default: .cache/local-stack.json on port 8787, "
        ".cache/local-stack-PORT.json on any other)",
    )
    realms = parser.add_argument_group("data residency (one stack per realm, each in its own AWS region)")
    realms.add_argument(
        "--realms",
        type=_realms,
        metavar="LIST",
        help="a stack per realm, for example default,EU: this one serves the first (the site starts there) and "
        "starts one more process per other realm; all in one moto server, each in its own region, each one's "
        "PeerAppTables naming the others' app tables (default: one stack, realm default)",
    )
    realms.add_argument(
        "--migration-settle",
        type=_settle,
        default=LOCAL_MIGRATION_SETTLE_S,
        metavar="SECONDS",
        help="how long a realm migration's job hold settles before the copy begins: the functions' "
        f"MIGRATION_SETTLE_S (deployed 150; default {LOCAL_MIGRATION_SETTLE_S} here)",
    )
    realms.add_argument(
        "--join",
        type=Path,
        metavar="STATE_FILE",
        help="what --realms starts for each further realm: serve --realm beside the stack of STATE_FILE, in its "
        "moto server, trusting its Forge emulator",
    )
    realms.add_argument("--realm", type=_realm, metavar="REALM", help="with --join: the realm this stack serves")
    args = parser.parse_args(argv)
    if args.join is not None and args.realm is None:
        parser.error("--join needs --realm, the realm this stack serves")
    if args.realm is not None and args.join is None:
        parser.error("--realm is for --join; to run stacks for realms, use --realms, for example --realms default,EU")
    if args.join is not None and args.realms is not None:
        parser.error("--join serves one realm beside another stack: it takes --realm, not --realms")
    if (args.realms or args.join) and args.jwks == "production":
        parser.error("--realms and --join need the Forge emulator (--jwks emulator): it signs every realm's FITs")
    if args.app_id is not None:
        try:  # the library's own rule (forge_remote.config.app_ari), named as the flag, not as FORGE_APP_ID
            app_ari(args.app_id)
        except ConfigurationError:
            parser.error(
                f"--app-id must be your app's uuid or ari:cloud:ecosystem::app/<uuid> (as forge register "
                f"printed it), not {args.app_id[:80]!r}"
            )
    if args.jwks == "production" and not args.app_id:
        parser.error("--jwks production needs --app-id (the FIT audience is your real app)")
    if args.jwks == "production" and not args.allowed_api_hosts:
        args.allowed_api_hosts = "api.atlassian.com"
    return args


def journal_path(state_file: Path) -> Path:
    """The job outcomes journal of the stack that writes ``state_file`` (next to it, so tests can move both)."""
    return state_file.with_name(f"{state_file.stem}-jobs.jsonl")


def lock_path(state_file: Path) -> Path:
    return state_file.with_name(state_file.name + ".lock")


# -- one live stack per state file
class StackRunning(Exception):
    """The state file belongs to another stack that is still running: nothing of it may be touched."""

    def __init__(self, state_file: Path, holder: str) -> None:
        super().__init__(f"{state_file} belongs to another local stack that is still running ({holder})")
        self.state_file = state_file
        self.holder = holder


class StateLock:
    """An exclusive advisory lock on ``<state file>.lock``, held for as long as the stack runs.

    The kernel releases it when the process ends, however it ends: a state file left behind by a
    stack that was killed never blocks the next one, and a live stack's is never overwritten.
    """

    def __init__(self, path: Path, descriptor: int) -> None:
        self.path = path
        self._descriptor: int | None = descriptor

    @classmethod
    def acquire(cls, state_file: Path) -> StateLock:
        path = lock_path(state_file)
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        while True:
            descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                holder = _read_holder(descriptor)
                os.close(descriptor)
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise StackRunning(state_file, holder) from None
                raise
            try:  # the file we locked is still the one at the path (a stopping stack unlinks it)
                same = os.stat(path).st_ino == os.fstat(descriptor).st_ino
            except FileNotFoundError:
                same = False
            if same:
                return cls(path, descriptor)
            os.close(descriptor)

    def note(self, text: str) -> None:
        """Who holds the lock, for the message a second stack prints (pid, gateway URL)."""
        if self._descriptor is not None:
            os.ftruncate(self._descriptor, 0)
            os.pwrite(self._descriptor, text.encode(), 0)

    def release(self) -> None:
        if self._descriptor is not None:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()  # while still holding it: see acquire()
            os.close(self._descriptor)
            self._descriptor = None


def _read_holder(descriptor: int) -> str:
    try:
        text = os.pread(descriptor, 512, 0).decode("utf-8", "replace").strip()
    except OSError:
        text = ""
    return text or "still starting"


# -- what forge_cli needs
def _pem(private_key: rsa.RSAPrivateKey) -> str:
    encoding, private_format = serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8
    return private_key.private_bytes(encoding, private_format, serialization.NoEncryption()).decode()


def write_state(
    path: Path,
    rt: LocalRuntime,
    site: Site,
    page: dict[str, Any],
    journal: OutcomeJournal,
    *,
    control: DevControl | None = None,
    realm: str = residency.DEFAULT_REALM,
    realms: dict[str, dict[str, Any]] | None = None,
) -> None:
    """What ``forge_cli`` needs to act as Forge for this run. Owner-only: it holds the dev signing key.

    ``realm``: the realm this stack serves; ``realms``: every realm's stack (default: this one alone),
    realm -> ``realm_entry``: where ``forge_cli`` sends the calls for a site in that realm.

    Written whole and then renamed into place: a CLI reading it while the stack rewrites it (a reinstall's
    new installation id) sees the old file or the new one, never half of one.
    """
    key = rt.forge.keys[0]
    state: dict[str, Any] = {
        "note": "dev-only signing key of a running `make local`; trusted by nothing else; deleted on exit",
        "pid": os.getpid(),
        "gatewayUrl": rt.gateway_url,
        "appId": rt.forge.app_ari,
        "kid": key.kid,
        "privateKeyPem": _pem(key.private_key),
        # App tokens the CLI delivers must be ones this stack's Forge emulator issued: its GraphQL
        # (offline user tokens) accepts only those, as Forge accepts only its own.
        "tokenKeyPem": _pem(rt.forge.token_key),
        "site": {
            "installationId": site.installation_id,
            "cloudId": site.cloud_id,
            "apiBaseUrl": site.api_base_url,
            "siteUrl": site.site_url,
            "realm": site.realm,
        },
        "page": {"id": str(page["id"]), "spaceKey": page["spaceKey"], "title": page.get("title", "")},
        # `forge_cli job` sends requests to the jobs queue itself (as the triggers function does) and reads
        # results from the app table: moto takes any credentials, so only where to find them is shared.
        "aws": {
            "endpointUrl": rt.moto.url,
            "region": rt.moto.region,
            "jobsQueueUrl": rt.stack.physical["JobsQueue"],
            "appTable": rt.stack.physical["AppTable"],
        },
        "jobOutcomes": str(journal.path),
        # Data residency: this stack's realm, every realm's stack, and what a joined realm's stack takes
        # from this one's template parameters (the one Forge emulator and Confluence site).
        "realm": realm,
        "realms": realms or {realm: realm_entry(rt, path)},
        "joinParameters": {name: rt.stack.parameters[name] for name in JOIN_PARAMETERS if name in rt.stack.parameters},
    }
    if control is not None:  # what the CLI asks of this process itself (local.dev_control)
        state["control"] = {"url": control.url, "secret": control.secret}
    _write_private(path, state)


def realm_entry(rt: LocalRuntime, state_file: Path) -> dict[str, Any]:
    """A running stack's line in the realm map: its gateway, region, app table and state file."""
    return {
        "gatewayUrl": rt.gateway_url,
        "region": rt.moto.region,
        "stackName": rt.stack.stack_name,
        "appTable": rt.stack.physical["AppTable"],
        "appTableArn": rt.stack.arns["AppTable"],
        "stateFile": str(state_file.resolve()),
    }


def expected_realm_entry(realm: str, state_file: Path) -> dict[str, Any]:
    """A realm's line before its stack is up: everything but the gateway (``local/realms.py`` fixes the rest)."""
    return {
        "gatewayUrl": None,
        "region": residency.region(realm),
        "stackName": residency.stack_name(realm),
        "appTable": residency.app_table(realm),
        "appTableArn": residency.app_table_arn(realm),
        "stateFile": str(state_file.resolve()),
    }


def write_realm_state(
    path: Path, rt: LocalRuntime, realm: str, *, home: Path, journal: OutcomeJournal, control: DevControl
) -> None:
    """A joined realm's stack's state: where its gateway, queue, table, outcomes and control endpoint are,
    and the first stack's state file (``home``), which has the site, the dev key and the realm map."""
    state: dict[str, Any] = {
        "note": "a joined realm's stack of a running `make local --realms`; deleted on exit",
        "pid": os.getpid(),
        "realm": realm,
        "home": str(home.resolve()),
        "gatewayUrl": rt.gateway_url,
        "aws": {
            "endpointUrl": rt.moto.url,
            "region": rt.moto.region,
            "jobsQueueUrl": rt.stack.physical["JobsQueue"],
            "appTable": rt.stack.physical["AppTable"],
            "appTableArn": rt.stack.arns["AppTable"],
        },
        "jobOutcomes": str(journal.path),
        "control": {"url": control.url, "secret": control.secret},
    }
    _write_private(path, state)


def _write_private(path: Path, state: dict[str, Any]) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    descriptor, staging = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # 0600 from the start
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            json.dump(state, handle, indent=2)
        Path(staging).replace(path)
    finally:
        Path(staging).unlink(missing_ok=True)


class Shared:
    """What emulator mode shares with ``forge_cli`` for one run: the state file, the jobs journal, the
    control endpoint, and the emulated site they all act for; ``remove()`` on exit.

    The site is the control endpoint's: a reinstall gives it a new installation id, and ``apply()``
    rewrites the state file and points the status page at it.
    """

    def __init__(
        self,
        rt: LocalRuntime,
        state_file: Path,
        seeded: SeededSite,
        site: Site,
        *,
        lock: StateLock | None = None,
        realms: Sequence[str] = (residency.DEFAULT_REALM,),
    ) -> None:
        self.rt = rt
        self.state_file = state_file
        self.seeded = seeded
        self.journal = OutcomeJournal(journal_path(state_file))
        self.status_page: StatusPageServer | None = None
        self.published = False
        self._lock = lock
        self._owns_lock = lock is None
        self.realm = realms[0]  # this stack's; the others' are joined processes (local/realm_stacks.py)
        self.realm_stacks: dict[str, dict[str, Any]] = {
            realm: realm_entry(rt, state_file)
            if realm == self.realm
            else expected_realm_entry(realm, residency.realm_state_file(state_file, realm))
            for realm in realms
        }
        tables = {realm: (entry["region"], entry["appTable"]) for realm, entry in self.realm_stacks.items()}
        self.control = DevControl(rt, site, on_change=self.apply, realm=self.realm, realm_tables=tables)
        self.control.start()

    @property
    def page_id(self) -> str:
        """The seeded page the banner's commands use (``local.seed.EXAMPLE_PAGE_ID``)."""
        return str(self.seeded.banner_page["id"])

    @property
    def site(self) -> Site:
        """The emulated site the CLI acts for, as it is now (the status page shows it too)."""
        return self.control.site

    def attach(self, page: StatusPageServer) -> None:
        self.status_page = page
        self._update_page()

    def publish(self) -> None:
        """Take the state file (``StackRunning`` if a live stack has it), start the journal, write the file.

        The state file comes last: its appearance tells the CLI (and the tests) that the stack is ready.
        """
        if self._lock is None:
            self._lock = StateLock.acquire(self.state_file)
        self._lock.note(f"pid {os.getpid()}, gateway {self.rt.gateway_url}")
        self.journal.create()
        # Again after every reload of the worker (hot reload), or --wait would never see an outcome.
        self.rt.on_load(self.rt.poller.source.function, lambda worker: journal_worker_outcomes(worker, self.journal))
        self.published = True
        self.write()

    def write(self) -> None:
        write_state(
            self.state_file,
            self.rt,
            self.site,
            self.seeded.banner_page,
            self.journal,
            control=self.control,
            realm=self.realm,
            realms=self.realm_stacks,
        )

    def realm_ready(self, realm: str, state: dict[str, Any]) -> None:
        """A joined realm's stack is up (its state file): its gateway goes into the realm map."""
        self.realm_stacks[realm] = {**self.realm_stacks[realm], "gatewayUrl": state["gatewayUrl"]}
        self.apply()

    def realm_gone(self, realm: str) -> None:
        """A joined realm's stack exited: no gateway for that realm any more (the CLI says so)."""
        self.realm_stacks[realm] = {**self.realm_stacks[realm], "gatewayUrl": None}
        self.apply()

    def gateway_of(self, realm: str) -> str:
        """The gateway of a realm's stack (this stack's if that one is not up)."""
        return str(self.realm_stacks.get(realm, {}).get("gatewayUrl") or self.rt.gateway_url)

    def apply(self) -> None:
        """The control endpoint changed the site or the UI token setting: the file and the page follow."""
        if self.published:
            self.write()
        self._update_page()

    def _update_page(self) -> None:
        if self.status_page is not None:
            self.status_page.site = self.control.site
            self.status_page.app_token_lifetime_s = self.control.ui_app_token_lifetime_s
            # Forge calls the remote of the site's realm: after a realm migration, the page's stack is that one.
            self.status_page.gateway_url = self.gateway_of(self.control.site.realm).rstrip("/")

    def remove(self) -> None:
        self.control.stop()
        if self.published:
            self.state_file.unlink(missing_ok=True)  # the dev key does not outlive the run
            self.journal.remove()
        if self._lock is not None and self._owns_lock:
            self._lock.release()


def prepare_forge_cli(
    rt: LocalRuntime,
    state_file: Path,
    *,
    lock: StateLock | None = None,
    realms: Sequence[str] = (residency.DEFAULT_REALM,),
) -> Shared:
    """Emulator mode, before anything is written: seed the emulated site and bind the control endpoint.
    The site starts in the first of ``realms`` (this stack's)."""
    seeded = seed_site(rt.confluence)
    return Shared(rt, state_file, seeded, replace(rt.site(), realm=realms[0]), lock=lock, realms=realms)


def share_with_forge_cli(rt: LocalRuntime, state_file: Path) -> Shared:
    """Emulator mode in one go (the tests' way): seed, bind the control endpoint, then write the state file."""
    shared = prepare_forge_cli(rt, state_file)
    try:
        shared.publish()
    except BaseException:
        shared.remove()
        raise
    return shared


def shown_path(path: Path) -> str:
    """``path`` as printed in a command run from the repository root: relative when inside it.

    Not resolved: a venv's ``bin/python`` is a symlink to the base interpreter, which lacks the venv's packages.
    """
    absolute = path if path.is_absolute() else Path.cwd() / path
    try:
        return str(absolute.relative_to(ROOT))
    except ValueError:
        return str(absolute)


def cli_command(args: argparse.Namespace, *words: str) -> str:
    """A ``forge_cli`` command line that works as printed, from the repository root.

    It names this process's interpreter (the venv ``make local`` runs), never a bare ``python``: the
    system one has none of the dependencies (``No module named 'jwt'``).
    """
    argv = [shown_path(Path(sys.executable)), "-m", "local.forge_cli", *words]
    if args.state_file.resolve() != STATE_FILE.resolve() and "--help" not in words:
        argv += ["--state-file", shown_path(args.state_file)]
    return shlex.join(argv)


def forge_cli_commands(args: argparse.Namespace, page_id: str) -> list[str]:
    """The emulator commands the banner offers, in an order that tells the story when run top to bottom."""
    realms: tuple[str, ...] = getattr(args, "realms", None) or ()
    if len(realms) > 1:  # data residency: the site's migration to the second realm, and back
        there, back = realms[1], realms[0]
        return [
            cli_command(args, "install"),
            cli_command(args, "page-created", "--wait"),
            cli_command(args, "migrate", "--to", there, "--rollback"),
            cli_command(args, "migrate", "--to", there),
            cli_command(args, "keepalive"),
            cli_command(args, "job", "space-digest", "--wait"),
            cli_command(args, "migrate", "--to", back),
            cli_command(args, "site"),
        ]
    return [
        cli_command(args, "install"),
        cli_command(args, "page-created"),
        cli_command(args, "page-updated", "--wait"),
        cli_command(args, "status"),
        cli_command(args, "call", "POST", "/api/jobs", "--body", '{"job": "space-digest", "args": {}}', "--admin"),
        cli_command(args, "keepalive"),
        cli_command(args, "job", "page-snapshot", "--args", json.dumps({"pageId": page_id}), "--wait"),
        cli_command(args, "job", "space-digest", "--wait"),
        cli_command(args, "clock", "advance", "90m"),
        cli_command(args, "site"),
        cli_command(args, "uninstall"),
    ]


def banner(rt: LocalRuntime, args: argparse.Namespace, page_id: str = "", status_page: str = "") -> str:
    """``status_page``: the page's URL, or why it is not served (emulator mode only)."""
    production = args.jwks == "production"
    parts = [
        ("gateway (API Gateway HTTP API)", rt.gateway_url),
        ("FIT keys (JWKS)", PRODUCTION_JWKS_URL if production else rt.forge.jwks_url),
        # Production mode sends tokens to the real Confluence only: the emulator is not part of it.
        *([] if production else [("Confluence emulator apiBaseUrl", rt.confluence.start())]),
        ("tokens may be sent to", args.allowed_api_hosts or "the Confluence emulator and the Forge emulator's GraphQL"),
        ("moto (DynamoDB, SQS)", rt.moto.url),
    ]
    width = max(len(label) for label, _ in parts)
    lines = [f"Local stack on {rt.gateway_url}  (Ctrl-C stops it)"]
    lines += [f"  {label:<{width}} {value}" for label, value in parts]
    lines.append("")
    if production:
        lines += [
            "Production JWKS: only FITs signed by Atlassian for app " + rt.forge.app_ari + " are accepted.",
            "Point a tunnel at this port and set the manifest's remotes[].baseUrl to the tunnel's https URL.",
            "The Forge emulator CLI cannot call this mode (its dev key is not Atlassian's).",
        ]
    else:
        lines += [f"Token status page, in a browser on this machine: {status_page}", ""]
        if page_id:
            lines += [
                f"Emulated site: 3 spaces, 10 pages (page {page_id} is Release notes, the one the commands below "
                "use), 4 users: the site command lists them all.",
                "",
            ]
        lines += realm_lines(shared_realms(args))
        lines += ["Act as Forge from another terminal, in the repository root (state: " + str(args.state_file) + "):"]
        lines += [f"  {command}" for command in forge_cli_commands(args, page_id)]
        lines += [f"  {cli_command(args, '--help')}   # every command"]  # a comment: still runs as printed
        lines += ["Or by hand: curl -i -X POST " + rt.gateway_url + "/forge/keepalive   (401: no FIT)"]
    lines += [
        "",
        "Saved edits to functions/ and layers/forge_remote/ are loaded at once (a 'reloaded ...' line says so);",
        "a change to template.yaml (a new function, an environment variable) needs a restart.",
    ]
    return "\n".join(lines)


def shared_realms(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """The realm map the banner shows (``run`` puts it on ``args`` once every realm's stack is up)."""
    realms: dict[str, dict[str, Any]] = getattr(args, "realm_stacks", None) or {}
    return realms


def realm_lines(realms: dict[str, dict[str, Any]]) -> list[str]:
    """The banner's realm map: one stack per realm, each in its own region of the one moto server."""
    if len(realms) < 2:
        return []
    width = max(len(realm) for realm in realms)
    lines = [
        "Data residency: a stack per realm, each in its own region of this moto server (the site starts in "
        f"realm {next(iter(realms))}; Forge calls go to its realm's stack):"
    ]
    for realm, entry in realms.items():
        lines.append(
            f"  {realm:<{width}}  {entry['gatewayUrl'] or 'not running'}  {entry['region']:<14} "
            f"tables {entry['stackName']}-*"
        )
    return [*lines, ""]


def serve_status_page(rt: LocalRuntime, shared: Shared | None, port: int) -> tuple[StatusPageServer | None, str]:
    """The status page for the emulated site, and its URL; or None and why (the stack runs without it).

    A taken port falls back to a free one; no other trouble with the page stops the stack either.
    """
    if shared is None:
        return None, ""
    try:
        page = start_status_page(rt.forge, shared.site, rt.gateway_url, port=port)
    except UiBuildError as exc:
        return None, f"not served: {exc}".splitlines()[0]
    except OSError as exc:  # PortInUse is handled inside (any free port); anything else costs only the page
        return None, f"not served: {exc}"
    shared.attach(page)
    return page, page.page_url


def _gateway_port(rt: LocalRuntime) -> int:
    return int(rt.gateway_url.rsplit(":", 1)[1])


def _refused(exc: StackRunning) -> None:
    print(
        f"cannot start the local stack: {exc}. Its CLI commands use that file: stop that stack first, or "
        "start this one on another port, which gets its own state file: make local ARGS='--port 8797'",
        file=sys.stderr,
    )


def realm_argv(args: argparse.Namespace, realm: str, state_file: Path) -> list[str]:
    """The command line of a further realm's stack, joined to this one (``--join``)."""
    return [
        sys.executable,
        "-m",
        "local.serve",
        "--join",
        str(args.state_file.resolve()),
        "--realm",
        realm,
        "--port",
        "0",
        "--state-file",
        str(state_file),
        "--log-level",
        args.log_level,
        "--poll-interval",
        str(args.poll_interval),
        "--migration-settle",
        str(args.migration_settle),
    ]


def start_realm_stacks(
    args: argparse.Namespace, shared: Shared, children: list[RealmProcess], stop: threading.Event | None = None
) -> None:
    """A joined process for each realm but this stack's, all started (into ``children``, which the caller
    stops whatever happens), then each waited for: ready, its gateway in the realm map
    (``RealmStackFailed`` if one is not)."""
    for realm, entry in shared.realm_stacks.items():
        if realm != shared.realm:
            state_file = Path(entry["stateFile"])
            child = RealmProcess(realm, realm_argv(args, realm, state_file), state_file)
            children.append(child)
            child.start()
    for child in children:
        shared.realm_ready(child.realm, child.wait_ready(stop=stop))


def run(rt: LocalRuntime, args: argparse.Namespace, lock: StateLock | None, stop: threading.Event) -> None:
    """The started stack until ``stop``: emulated site, status page, pollers, state file, the further
    realms' stacks (``--realms``), banner.

    ``lock``: the state file's, when it was named (taken before the stack started); else the state
    file follows the gateway's port and its lock is taken, and released, here.
    """
    own_lock: StateLock | None = None
    shared: Shared | None = None
    page: StatusPageServer | None = None
    children: list[RealmProcess] = []
    try:
        if args.jwks == "emulator":
            # Production FITs are Atlassian's: no dev key to share, so no state file and no emulated site.
            if args.state_file is None:
                args.state_file = default_state_file(args.port or _gateway_port(rt))
                lock = own_lock = StateLock.acquire(args.state_file)
            shared = prepare_forge_cli(rt, args.state_file, lock=lock, realms=args.realms or (residency.DEFAULT_REALM,))
        page, page_note = serve_status_page(rt, shared, args.ui_port)
        rt.start_polling(args.poll_interval)
        rt.start_watching(notify=lambda line: print(line, flush=True))  # edits to functions/ and the library
        if shared is not None:
            shared.publish()  # every port is bound: only now is anything written
            if len(shared.realm_stacks) > 1:  # they join this stack through its state file
                start_realm_stacks(args, shared, children, stop)
                args.realm_stacks = shared.realm_stacks
        print(banner(rt, args, shared.page_id if shared else "", page_note), flush=True)
        try:
            # Wake up now and then: the kernel may deliver SIGINT to one of the server threads, and
            # Python runs handlers only in the main thread, which an untimed wait never wakes.
            while not stop.wait(timeout=0.2):
                for child in children:
                    if shared is not None and not child.running() and shared.realm_stacks[child.realm]["gatewayUrl"]:
                        print(
                            f"realm {child.realm}'s stack exited (status {child.stop()}): no stack serves realm "
                            f"{child.realm} now; restart make local to have it back",
                            flush=True,
                        )
                        shared.realm_gone(child.realm)
        except KeyboardInterrupt:
            pass
        print("\nstopping the local stack", flush=True)
    finally:
        stop_realm_stacks(children, shared)
        if page is not None:
            page.stop()
        if shared is not None:
            shared.remove()
        if own_lock is not None:
            own_lock.release()


def stop_realm_stacks(children: list[RealmProcess], shared: Shared | None) -> None:
    """The joined realms' stacks stop first: they use this process's moto server and Forge emulator."""
    if children:
        print(f"stopping realm {', '.join(child.realm for child in children)}'s stack", flush=True)
    for child in children:
        child.stop()
        if shared is not None:
            Path(shared.realm_stacks[child.realm]["stateFile"]).unlink(missing_ok=True)  # if it was killed


# -- a joined realm's stack (--join STATE_FILE --realm REALM)
def run_joined(
    rt: LocalRuntime, args: argparse.Namespace, home_file: Path, home: dict[str, Any], stop: threading.Event
) -> None:
    """One more realm's stack beside the first one, until ``stop`` (or until the first one's process is
    gone): its pollers, its control endpoint (its clock, its jobs), its outcomes journal, its state file."""
    parent = os.getppid()
    expected = residency.app_table_arn(args.realm)
    if rt.stack.arns["AppTable"] != expected:  # what the other realms' PeerAppTables name
        raise ConfigurationError(f"realm {args.realm}'s app table is {rt.stack.arns['AppTable']}, not {expected}")
    control = DevControl(
        rt,
        site_from_json(home["site"]),
        realm=args.realm,
        serves_site=False,
        site_owner=f"the stack of {shown_path(home_file)}",
    )
    control.start()
    journal = OutcomeJournal(journal_path(args.state_file))
    published = False
    try:
        rt.start_polling(args.poll_interval)
        rt.start_watching(notify=lambda line: print(line, flush=True))
        journal.create()
        rt.on_load(rt.poller.source.function, lambda worker: journal_worker_outcomes(worker, journal))
        write_realm_state(args.state_file, rt, args.realm, home=home_file, journal=journal, control=control)
        published = True
        peers = rt.stack.parameters.get("PeerAppTables") or "none"
        print(
            f"realm {args.realm}'s stack on {rt.gateway_url}: region {rt.moto.region} of the moto server at "
            f"{rt.moto.url}, tables {rt.stack.stack_name}-*, PeerAppTables {peers}",
            flush=True,
        )
        while not stop.wait(timeout=0.2):
            if os.getppid() != parent:
                print("the first stack's process is gone: stopping", flush=True)
                break
    finally:
        control.stop()
        if published:
            args.state_file.unlink(missing_ok=True)
            journal.remove()


def main_joined(args: argparse.Namespace, stop: threading.Event) -> int:
    """``--join STATE_FILE --realm REALM``: serve one more realm beside the stack of that state file."""
    home_file: Path = args.join
    try:
        home: dict[str, Any] = json.loads(home_file.read_text(encoding="utf-8"))
        realm_map: dict[str, Any] = home["realms"]
        moto_url = str(home["aws"]["endpointUrl"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        print(f"cannot join the stack of {home_file}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    if args.realm not in realm_map:
        print(
            f"cannot join the stack of {home_file}: it serves the realms {', '.join(realm_map)} (its --realms), "
            f"not {args.realm}",
            file=sys.stderr,
        )
        return 2
    args.state_file = args.state_file or residency.realm_state_file(home_file, args.realm)
    lock = None
    try:
        lock = StateLock.acquire(args.state_file)
        runtime = LocalRuntime(
            gateway_port=args.port,
            app_id=str(home["appId"]),
            log_level=args.log_level,
            function_logs=sys.stdout,
            region=residency.region(args.realm),
            stack_name=residency.stack_name(args.realm),
            moto_url=moto_url,
            parameters={**home.get("joinParameters", {}), **residency.realm_parameters(realm_map, args.realm)},
            function_env={"MIGRATION_SETTLE_S": str(args.migration_settle)},
        )
        with runtime as rt:
            lock.note(f"pid {os.getpid()}, realm {args.realm}, gateway {rt.gateway_url}")
            run_joined(rt, args, home_file, home, stop)
    except StackRunning as exc:
        _refused(exc)
        return 2
    except (PortInUse, ConfigurationError) as exc:
        print(f"cannot start realm {args.realm}'s stack: {exc}", file=sys.stderr)
        return 2
    finally:
        if lock is not None:
            lock.release()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stop = threading.Event()
    # Handle Ctrl-C explicitly: a process started in the background inherits SIGINT as ignored, and
    # Python then installs no KeyboardInterrupt handler, so the stack would never stop.
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    if args.join is not None:
        return main_joined(args, stop)
    lock: StateLock | None = None
    realm = (args.realms or (residency.DEFAULT_REALM,))[0]
    try:
        if args.jwks == "emulator" and args.state_file is not None:  # known now: refuse before starting anything
            lock = StateLock.acquire(args.state_file)
        runtime = LocalRuntime(
            gateway_port=args.port,
            app_id=args.app_id or DEFAULT_APP_ID,
            production_jwks=args.jwks == "production",
            allowed_api_hosts=args.allowed_api_hosts,
            log_level=args.log_level,
            function_logs=sys.stdout,
            region=residency.region(realm),
            stack_name=residency.stack_name(realm),
            parameters=residency.realm_parameters(args.realms or (realm,), realm),
            function_env={"MIGRATION_SETTLE_S": str(args.migration_settle)},
        )
        with runtime as rt:
            run(rt, args, lock, stop)
    except PortInUse as exc:  # the gateway's port: the stack cannot start (the UI page falls back by itself)
        print(
            f"cannot start the local stack: {exc}, another `make local` perhaps. Stop it, or pick another "
            "port: make local ARGS='--port 8797'",
            file=sys.stderr,
        )
        return 2
    except StackRunning as exc:
        _refused(exc)
        return 2
    except (RealmStackFailed, ConfigurationError) as exc:
        print(f"cannot start the local stack: {exc}", file=sys.stderr)
        return 2
    finally:
        if lock is not None:
            lock.release()
    return 0


if __name__ == "__main__":
    sys.exit(main())
