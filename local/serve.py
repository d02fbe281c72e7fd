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
from pathlib import Path
from typing import Any, NoReturn

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from forge_remote.config import PRODUCTION_JWKS_URL, app_ari  # installed in the venv from layers/forge_remote
from forge_remote.errors import ConfigurationError
from local.dev_control import DevControl
from local.forge_emulator import DEFAULT_APP_ID, Site
from local.job_outcomes import OutcomeJournal, journal_worker_outcomes
from local.loopback import PortInUse
from local.runtime import LocalRuntime
from local.seed import SeededSite, seed_site
from local.ui_dev import DEFAULT_UI_PORT, StatusPageServer, UiBuildError, start_status_page

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache"
STATE_FILE = CACHE / "local-stack.json"
DEFAULT_PORT = 8787
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
    args = parser.parse_args(argv)
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
) -> None:
    """What ``forge_cli`` needs to act as Forge for this run. Owner-only: it holds the dev signing key.

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
    }
    if control is not None:  # what the CLI asks of this process itself (local.dev_control)
        state["control"] = {"url": control.url, "secret": control.secret}
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
    ) -> None:
        self.rt = rt
        self.state_file = state_file
        self.seeded = seeded
        self.journal = OutcomeJournal(journal_path(state_file))
        self.status_page: StatusPageServer | None = None
        self.published = False
        self._lock = lock
        self._owns_lock = lock is None
        self.control = DevControl(rt, site, on_change=self.apply)
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
        write_state(self.state_file, self.rt, self.site, self.seeded.banner_page, self.journal, control=self.control)

    def apply(self) -> None:
        """The control endpoint changed the site or the UI token setting: the file and the page follow."""
        if self.published:
            self.write()
        self._update_page()

    def _update_page(self) -> None:
        if self.status_page is not None:
            self.status_page.site = self.control.site
            self.status_page.app_token_lifetime_s = self.control.ui_app_token_lifetime_s

    def remove(self) -> None:
        self.control.stop()
        if self.published:
            self.state_file.unlink(missing_ok=True)  # the dev key does not outlive the run
            self.journal.remove()
        if self._lock is not None and self._owns_lock:
            self._lock.release()


def prepare_forge_cli(rt: LocalRuntime, state_file: Path, *, lock: StateLock | None = None) -> Shared:
    """Emulator mode, before anything is written: seed the emulated site and bind the control endpoint."""
    seeded = seed_site(rt.confluence)
    return Shared(rt, state_file, seeded, rt.site(), lock=lock)


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


def run(rt: LocalRuntime, args: argparse.Namespace, lock: StateLock | None, stop: threading.Event) -> None:
    """The started stack until ``stop``: emulated site, status page, pollers, state file, banner.

    ``lock``: the state file's, when it was named (taken before the stack started); else the state
    file follows the gateway's port and its lock is taken, and released, here.
    """
    own_lock: StateLock | None = None
    shared: Shared | None = None
    page: StatusPageServer | None = None
    try:
        if args.jwks == "emulator":
            # Production FITs are Atlassian's: no dev key to share, so no state file and no emulated site.
            if args.state_file is None:
                args.state_file = default_state_file(args.port or _gateway_port(rt))
                lock = own_lock = StateLock.acquire(args.state_file)
            shared = prepare_forge_cli(rt, args.state_file, lock=lock)
        page, page_note = serve_status_page(rt, shared, args.ui_port)
        rt.start_polling(args.poll_interval)
        rt.start_watching(notify=lambda line: print(line, flush=True))  # edits to functions/ and the library
        if shared is not None:
            shared.publish()  # every port is bound: only now is anything written
        print(banner(rt, args, shared.page_id if shared else "", page_note), flush=True)
        try:
            # Wake up now and then: the kernel may deliver SIGINT to one of the server threads, and
            # Python runs handlers only in the main thread, which an untimed wait never wakes.
            while not stop.wait(timeout=0.2):
                pass
        except KeyboardInterrupt:
            pass
        print("\nstopping the local stack", flush=True)
    finally:
        if page is not None:
            page.stop()
        if shared is not None:
            shared.remove()
        if own_lock is not None:
            own_lock.release()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stop = threading.Event()
    # Handle Ctrl-C explicitly: a process started in the background inherits SIGINT as ignored, and
    # Python then installs no KeyboardInterrupt handler, so the stack would never stop.
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    lock: StateLock | None = None
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
    finally:
        if lock is not None:
            lock.release()
    return 0


if __name__ == "__main__":
    sys.exit(main())
