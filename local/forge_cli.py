"""Act as Forge against a running ``make local``: ``python -m local.forge_cli <command> [--url URL]``.

Commands send what Forge sends for the emulated site (``.cache/local-stack.json``, written by
``local.serve``): ``install`` (lifecycle installed + app token), ``keepalive`` (scheduled trigger +
app token), ``page-created`` / ``page-updated`` (product event + app token), ``status`` (UI call
with app and user tokens), ``uninstall`` (preUninstall, no token). FITs are signed with the serve
process's dev key. Prints the HTTP status and JSON body; never a token.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
LAYER = ROOT / "layers" / "forge_remote"
if str(LAYER) not in sys.path:
    sys.path.insert(0, str(LAYER))  # `python -m local.forge_cli` has no pytest pythonpath: Lambda's layer path

import requests  # noqa: E402
from cryptography.hazmat.primitives import serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import rsa  # noqa: E402

from local.forge_emulator import ForgeEmulator, SigningKey, Site  # noqa: E402

STATE_FILE = ROOT / ".cache" / "local-stack.json"
USER_ACCOUNT_ID = "557058:0a1b2c3d-4e5f-6789-abcd-ef0123456789"
COMMANDS = ("install", "keepalive", "page-created", "page-updated", "status", "uninstall")


def load_state(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise SystemExit(f"{path} not found: start the stack first with `make local` (emulator JWKS mode)")
    state: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return state


def emulator_from(state: dict[str, Any]) -> tuple[ForgeEmulator, Site]:
    """A Forge emulator that signs with the running stack's dev key, and the stack's emulated site."""
    forge = ForgeEmulator(state["appId"])
    private_key = serialization.load_pem_private_key(state["privateKeyPem"].encode(), password=None)
    if not isinstance(private_key, rsa.RSAPrivateKey):
        raise SystemExit("state file holds no RSA key")
    forge.keys = [SigningKey(kid=state["kid"], private_key=private_key)]
    site = state["site"]
    return forge, Site(
        installation_id=site["installationId"],
        cloud_id=site["cloudId"],
        api_base_url=site["apiBaseUrl"],
        site_url=site["siteUrl"],
    )


def request_for(
    command: str, forge: ForgeEmulator, site: Site, state: dict[str, Any]
) -> tuple[str, str, Any, dict[str, str]]:
    """(method, path, body, headers) of the Forge call ``command`` stands for."""
    token = forge.app_token()
    page = state["page"]
    if command == "install":
        return (
            "POST",
            "/forge/lifecycle",
            forge.installed_event(site),
            forge.headers(site, system_token=token, module_key="lifecycle-endpoint"),
        )
    if command == "keepalive":
        return "POST", "/forge/keepalive", {}, forge.headers(site, system_token=token, module_key="keepalive-endpoint")
    if command in ("page-created", "page-updated"):
        event = forge.page_event(page["id"], page["spaceKey"], created=command == "page-created", title=page["title"])
        return "POST", "/forge/events", event, forge.headers(site, system_token=token, module_key="events-endpoint")
    if command == "status":
        headers = forge.headers(
            site,
            system_token=token,
            user_token=forge.app_token(subject=USER_ACCOUNT_ID),
            principal=USER_ACCOUNT_ID,
            module_key="ui-endpoint",
        )
        return "GET", "/api/status", None, headers
    if command == "uninstall":
        return "POST", "/forge/uninstall", {}, forge.headers(site, module_key="uninstall-endpoint")
    raise ValueError(f"unknown command {command}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m local.forge_cli", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=COMMANDS)
    parser.add_argument("--url", help="the local gateway (default: the one in the state file)")
    parser.add_argument("--state-file", type=Path, default=STATE_FILE)
    args = parser.parse_args(argv)
    state = load_state(args.state_file)
    forge, site = emulator_from(state)
    method, path, body, headers = request_for(args.command, forge, site, state)
    url = (args.url or state["gatewayUrl"]).rstrip("/") + path
    response = requests.request(method, url, headers=headers, json=body, timeout=30)
    print(f"{method} {path} -> HTTP {response.status_code}")
    if response.content:
        try:
            print(json.dumps(response.json(), indent=2))
        except ValueError:
            print(response.text)
    return 0 if response.ok else 1


if __name__ == "__main__":
    sys.exit(main())
