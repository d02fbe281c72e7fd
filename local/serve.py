"""``make local`` (``python -m local.serve``): the embedded stack left running on 127.0.0.1.

The same ``LocalRuntime`` as the demo and the tests, plus poller threads that drain the jobs queue
every second and hand the tokens table's stream to the token wake-up (deferred jobs come back after
their real delay, or as soon as a token is stored: nothing advances time).

Two ways to call it:
- The Forge emulator: ``.venv/bin/python -m local.forge_cli COMMAND`` (the banner prints each one)
  signs FITs with this process's dev key, read from ``.cache/local-stack.json`` (0600; a throwaway
  key made for this run, trusted by nothing but this stack; the file is removed on exit). Its ``job``
  command sends a job request to this stack's jobs queue and reads the worker's outcome back from a journal
  next to that file (``local.job_outcomes``).
- A real Forge app: expose the gateway through a tunnel, point the manifest's ``remotes[].baseUrl``
  at the tunnel, and run ``--jwks production --app-id <your app uuid> --allowed-api-hosts
  api.atlassian.com``: FITs are then verified against Atlassian's production JWKS and tokens are sent
  only to the real Confluence API, exactly as deployed. No state file is written then (there is no
  dev key to share) and the Confluence emulator plays no part.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from forge_remote.config import PRODUCTION_JWKS_URL  # installed in the venv from layers/forge_remote
from local.forge_emulator import DEFAULT_APP_ID, Site
from local.job_outcomes import OutcomeJournal, journal_worker_outcomes
from local.loopback import PortInUse
from local.runtime import LocalRuntime
from local.ui_dev import DEFAULT_UI_PORT, StatusPageServer, UiBuildError, start_status_page

ROOT = Path(__file__).resolve().parents[1]
STATE_FILE = ROOT / ".cache" / "local-stack.json"
DEFAULT_PORT = 8787
SEED_SPACE = "ENG"
DESCRIPTION = (
    "The whole function set left running on 127.0.0.1, for the Forge emulator CLI or a real Forge app "
    "through a tunnel. 'make local' runs it, with options given as ARGS: make local ARGS=--port=9000"
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=".venv/bin/python -m local.serve", description=DESCRIPTION)
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="gateway port on 127.0.0.1 (default 8787)")
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
        type=int,
        default=DEFAULT_UI_PORT,
        help="port of the token status page on 127.0.0.1 (default 8788; any free port if taken)",
    )
    parser.add_argument(
        "--state-file",
        type=Path,
        default=STATE_FILE,
        metavar="PATH",
        help="where the Forge emulator CLI finds this stack",
    )
    args = parser.parse_args(argv)
    if args.jwks == "production" and not args.app_id:
        parser.error("--jwks production needs --app-id (the FIT audience is your real app)")
    if args.jwks == "production" and not args.allowed_api_hosts:
        args.allowed_api_hosts = "api.atlassian.com"
    return args


def journal_path(state_file: Path) -> Path:
    """The job outcomes journal of the stack that writes ``state_file`` (next to it, so tests can move both)."""
    return state_file.with_name(f"{state_file.stem}-jobs.jsonl")


def write_state(path: Path, rt: LocalRuntime, site: Site, page: dict[str, Any], journal: OutcomeJournal) -> None:
    """What ``forge_cli`` needs to act as Forge for this run. Owner-only: it holds the dev signing key."""
    key = rt.forge.keys[0]

    def pem_of(private_key: rsa.RSAPrivateKey) -> str:
        encoding, private_format = serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8
        return private_key.private_bytes(encoding, private_format, serialization.NoEncryption()).decode()

    pem = pem_of(key.private_key)
    state = {
        "note": "dev-only signing key of a running `make local`; trusted by nothing else; deleted on exit",
        "gatewayUrl": rt.gateway_url,
        "appId": rt.forge.app_ari,
        "kid": key.kid,
        "privateKeyPem": pem,
        # App tokens the CLI delivers must be ones this stack's Forge emulator issued: its GraphQL
        # (offline user tokens) accepts only those, as Forge accepts only its own.
        "tokenKeyPem": pem_of(rt.forge.token_key),
        "site": {
            "installationId": site.installation_id,
            "cloudId": site.cloud_id,
            "apiBaseUrl": site.api_base_url,
            "siteUrl": site.site_url,
        },
        "page": {"id": str(page["id"]), "spaceKey": SEED_SPACE, "title": page.get("title", "")},
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
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(descriptor, 0o600)  # also when the file already existed with wider permissions
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        json.dump(state, handle, indent=2)


@dataclass(frozen=True)
class Shared:
    """What emulator mode shares with ``forge_cli`` for one run; ``remove()`` on exit."""

    state_file: Path
    journal: OutcomeJournal
    page_id: str  # the seeded page, so the banner's page-snapshot command finds something
    site: Site  # the emulated site the CLI acts for (the status page shows it too)

    def remove(self) -> None:
        self.state_file.unlink(missing_ok=True)  # the dev key does not outlive the run
        self.journal.remove()


def share_with_forge_cli(rt: LocalRuntime, state_file: Path) -> Shared:
    """Emulator mode: seed the emulated site, journal the worker's outcomes, then write the state file.

    The state file comes last: its appearance tells the CLI (and the tests) that the stack is ready.
    """
    rt.confluence.add_space(SEED_SPACE, "Engineering")
    page = rt.confluence.add_page(SEED_SPACE, "Release notes", body="<p>hello from the emulator</p>")
    journal = OutcomeJournal(journal_path(state_file))
    journal.create()
    journal_worker_outcomes(rt.functions[rt.poller.source.function].module, journal)
    site = rt.site()
    write_state(state_file, rt, site, page, journal)
    return Shared(state_file=state_file, journal=journal, page_id=str(page["id"]), site=site)


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
        cli_command(args, "status"),
        cli_command(args, "keepalive"),
        cli_command(args, "job", "page-snapshot", "--args", json.dumps({"pageId": page_id}), "--wait"),
        cli_command(args, "job", "space-digest", "--wait"),
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
        lines += ["Act as Forge from another terminal, in the repository root (state: " + str(args.state_file) + "):"]
        lines += [f"  {command}" for command in forge_cli_commands(args, page_id)]
        lines += [f"  {cli_command(args, '--help')}   # every command"]  # a comment: still runs as printed
        lines += ["Or by hand: curl -i -X POST " + rt.gateway_url + "/forge/keepalive   (401: no FIT)"]
    return "\n".join(lines)


def serve_status_page(rt: LocalRuntime, shared: Shared | None, port: int) -> tuple[StatusPageServer | None, str]:
    """The status page for the emulated site, and its URL; or None and why (the stack runs without it)."""
    if shared is None:
        return None, ""
    try:
        page = start_status_page(rt.forge, shared.site, rt.gateway_url, port=port)
    except UiBuildError as exc:
        return None, f"not served: {exc}".splitlines()[0]
    return page, page.page_url


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stop = threading.Event()
    # Handle Ctrl-C explicitly: a process started in the background inherits SIGINT as ignored, and
    # Python then installs no KeyboardInterrupt handler, so the stack would never stop.
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    runtime = LocalRuntime(
        gateway_port=args.port,
        app_id=args.app_id or DEFAULT_APP_ID,
        production_jwks=args.jwks == "production",
        allowed_api_hosts=args.allowed_api_hosts,
        log_level=args.log_level,
        function_logs=sys.stdout,
    )
    try:
        with runtime as rt:
            # Production FITs are Atlassian's: no dev key to share, so no state file and no emulated site.
            shared = share_with_forge_cli(rt, args.state_file) if args.jwks == "emulator" else None
            rt.start_polling(args.poll_interval)
            page, page_note = serve_status_page(rt, shared, args.ui_port)
            print(banner(rt, args, shared.page_id if shared else "", page_note), flush=True)
            try:
                # Wake up now and then: the kernel may deliver SIGINT to one of the server threads, and
                # Python runs handlers only in the main thread, which an untimed wait never wakes.
                while not stop.wait(timeout=0.2):
                    pass
            except KeyboardInterrupt:
                pass
            finally:
                print("\nstopping the local stack", flush=True)
                if page is not None:
                    page.stop()
                if shared is not None:
                    shared.remove()
    except PortInUse as exc:  # the gateway's port: the stack cannot start (the UI page falls back by itself)
        print(
            f"cannot start the local stack: {exc}, another `make local` perhaps. Stop it, or pick another "
            "port: make local ARGS='--port 8797'",
            file=sys.stderr,
        )
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
