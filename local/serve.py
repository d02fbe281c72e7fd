"""``make local`` (``python -m local.serve``): the embedded stack left running on 127.0.0.1.

The same ``LocalRuntime`` as the demo and the tests, plus a poller thread that drains the jobs queue
every second (deferred jobs come back after their real delay here: nothing advances time).

Two ways to call it:
- The Forge emulator: ``python -m local.forge_cli install|keepalive|page-created|status|uninstall``
  signs FITs with this process's dev key, read from ``.cache/local-stack.json`` (0600; a throwaway
  key made for this run, trusted by nothing but this stack; the file is removed on exit).
- A real Forge app: expose the gateway through a tunnel, point the manifest's ``remotes[].baseUrl``
  at the tunnel, and run ``--jwks production --app-id <your app uuid> --allowed-api-hosts
  api.atlassian.com``: FITs are then verified against Atlassian's production JWKS and tokens are sent
  only to the real Confluence API, exactly as deployed.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
LAYER = ROOT / "layers" / "forge_remote"
if str(LAYER) not in sys.path:
    sys.path.insert(0, str(LAYER))  # `python -m local.serve` has no pytest pythonpath: Lambda's layer path

from cryptography.hazmat.primitives import serialization  # noqa: E402

from forge_remote.config import PRODUCTION_JWKS_URL  # noqa: E402
from local.forge_emulator import DEFAULT_APP_ID, Site  # noqa: E402
from local.runtime import LocalRuntime  # noqa: E402

STATE_FILE = ROOT / ".cache" / "local-stack.json"
DEFAULT_PORT = 8787


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m local.serve", description=__doc__.split("\n\n")[0])
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
    parser.add_argument("--poll-interval", type=float, default=1.0, help="seconds between queue drains")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    parser.add_argument("--state-file", type=Path, default=STATE_FILE)
    args = parser.parse_args(argv)
    if args.jwks == "production" and not args.app_id:
        parser.error("--jwks production needs --app-id (the FIT audience is your real app)")
    if args.jwks == "production" and not args.allowed_api_hosts:
        args.allowed_api_hosts = "api.atlassian.com"
    return args


def write_state(path: Path, rt: LocalRuntime, site: Site, page: dict[str, Any]) -> None:
    """What ``forge_cli`` needs to act as Forge for this run. Owner-only: it holds the dev signing key."""
    key = rt.forge.keys[0]
    pem = key.private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    state = {
        "note": "dev-only signing key of a running `make local`; trusted by nothing else; deleted on exit",
        "gatewayUrl": rt.gateway_url,
        "appId": rt.forge.app_ari,
        "kid": key.kid,
        "privateKeyPem": pem,
        "site": {
            "installationId": site.installation_id,
            "cloudId": site.cloud_id,
            "apiBaseUrl": site.api_base_url,
            "siteUrl": site.site_url,
        },
        "page": {"id": str(page["id"]), "spaceKey": "ENG", "title": page.get("title", "")},
    }
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(descriptor, 0o600)  # also when the file already existed with wider permissions
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        json.dump(state, handle, indent=2)


def banner(rt: LocalRuntime, args: argparse.Namespace) -> str:
    production = args.jwks == "production"
    cli = f"python -m local.forge_cli {{}} --url {rt.gateway_url}"
    lines = [
        f"Local stack on {rt.gateway_url}  (Ctrl-C stops it)",
        f"  gateway (API Gateway HTTP API) {rt.gateway_url}",
        f"  FIT keys (JWKS)                {PRODUCTION_JWKS_URL if production else rt.forge.jwks_url}",
        f"  Confluence emulator apiBaseUrl {rt.confluence.start()}",
        f"  tokens may be sent to          {args.allowed_api_hosts or 'the Confluence emulator only'}",
        f"  moto (DynamoDB, SQS, EventBridge) {rt.moto.url}",
        "",
    ]
    if production:
        lines += [
            "Production JWKS: only FITs signed by Atlassian for app " + rt.forge.app_ari + " are accepted.",
            "Point a tunnel at this port and set the manifest's remotes[].baseUrl to the tunnel's https URL.",
            "The Forge emulator CLI cannot call this mode (its dev key is not Atlassian's).",
        ]
    else:
        lines += ["Act as Forge (state: " + str(args.state_file) + "):"]
        lines += [f"  {cli.format(c)}" for c in ("install", "page-created", "status", "keepalive", "uninstall")]
        lines += ["Or by hand: curl -i -X POST " + rt.gateway_url + "/forge/keepalive   (401: no FIT)"]
    return "\n".join(lines)


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
    with runtime as rt:
        rt.confluence.add_space("ENG", "Engineering")
        page = rt.confluence.add_page("ENG", "Release notes", body="<p>hello from the emulator</p>")
        site = rt.site()
        wrote_state = args.jwks == "emulator"  # production FITs are Atlassian's: no dev key to share
        if wrote_state:
            write_state(args.state_file, rt, site, page)
        rt.poller.start(args.poll_interval)
        print(banner(rt, args), flush=True)
        try:
            stop.wait()
        except KeyboardInterrupt:
            pass
        finally:
            print("\nstopping the local stack", flush=True)
            if wrote_state:
                args.state_file.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
