"""The token status page on 127.0.0.1, with a development stand-in for ``@forge/bridge``.

What the browser gets is the real page (``forge-app/static/status``: its HTML and CSS, under a content
security policy as strict as Custom UI's) with one difference: its script is the *dev bundle*, built
from the same sources with ``@forge/bridge`` aliased to ``forge-app/src/dev/bridge.js``. That shim's
``invokeRemote`` posts ``{path, method, headers, body}`` to ``/__dev/invoke-remote`` here, and this
module does what Forge does for a UI call: it signs a FIT for the chosen site with the local Forge
emulator's dev key, adds the app and user tokens Forge would add, sends the call to the local gateway
and hands back ``{status, headers, body}``. The browser never holds the FIT or a token, as with Forge.

The dev bundle is built with the pinned esbuild from ``forge-app/node_modules`` (``npm ci`` first when
the lockfile changed): node and npm are needed, the npm registry only for that first install.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import mimetypes
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests
from werkzeug.wrappers import Request, Response

from local.forge_emulator import DEFAULT_ACCOUNT_ID, ForgeEmulator, Site
from local.loopback import LoopbackServer, PortInUse

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
APP_DIR = ROOT / "forge-app"
STATIC_DIR = APP_DIR / "static" / "status"
DEV_BUNDLE = ROOT / ".cache" / "ui-dev" / "status.js"
NPM_LOCK = ROOT / ".cache" / "forge-app-npm.lock"
# Written into node_modules after a complete `npm ci`: the lockfile's digest it was installed from.
INSTALLED_STAMP = "node_modules/.installed-lock-sha256"
NPM_TIMEOUT_S = 300
BUILD_TIMEOUT_S = 60

PAGE_PATH = "/status/"
INVOKE_PATH = "/__dev/invoke-remote"
DEFAULT_UI_PORT = 8788
# The user "signed in" to the page: the account forge_cli's UI calls act as, so both see one user.
DEV_ACCOUNT_ID = DEFAULT_ACCOUNT_ID  # the signed-in user, as forge_cli signs for by default
# What Forge's own bridge allows (@forge/bridge's InvokeEndpointInput).
METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE"})
# Headers the page may not set: Forge adds these itself (or the HTTP client does).
RESERVED_HEADERS = frozenset({"authorization", "host", "content-length", "cookie", "connection", "transfer-encoding"})
# As strict as Custom UI's default policy: what breaks there (an inline script or style) breaks here too.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)


class UiBuildError(RuntimeError):
    """npm or node missing, or the install or the build failed: the message says which and why."""


# -- building the dev bundle
def _lock_digest(app_dir: Path) -> str:
    return hashlib.sha256((app_dir / "package-lock.json").read_bytes()).hexdigest()


def _run(argv: list[str], cwd: Path, timeout_s: float, what: str) -> None:
    try:
        result = subprocess.run(  # noqa: S603 - fixed argv from PATH, no shell
            argv, cwd=cwd, capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except subprocess.TimeoutExpired:
        raise UiBuildError(f"{what} took over {timeout_s:.0f} s") from None
    if result.returncode != 0:
        output = (result.stderr or result.stdout).strip()[-2000:]
        raise UiBuildError(f"{what} failed (exit {result.returncode}):\n{output}")


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise UiBuildError(f"{name} is not on PATH: install Node.js 20+ with npm to build the status page")
    return path


@contextlib.contextmanager
def _npm_lock() -> Iterator[None]:
    """One install or build at a time across processes (make local, test workers) on this checkout."""
    NPM_LOCK.parent.mkdir(parents=True, exist_ok=True)
    with NPM_LOCK.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _install(app_dir: Path) -> None:
    """``npm ci`` in ``app_dir`` unless node_modules already holds what package-lock.json pins."""
    stamp = app_dir / INSTALLED_STAMP
    digest = _lock_digest(app_dir)
    if stamp.is_file() and stamp.read_text(encoding="utf-8").strip() == digest:
        return
    # No install scripts: esbuild finds its platform binary without its postinstall check.
    argv = [_tool("npm"), "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"]
    # Once per package-lock.json: without a word the stack would seem stuck for these seconds.
    print(
        "installing the status page's build tools into forge-app/node_modules (npm ci, about 15 s, once)",
        file=sys.stderr,
        flush=True,
    )
    _run(argv, app_dir, NPM_TIMEOUT_S, "`npm ci` in forge-app/ (is the npm registry reachable?)")
    stamp.write_text(digest + "\n", encoding="utf-8")


def build_dev_bundle(outfile: Path = DEV_BUNDLE, app_dir: Path = APP_DIR) -> Path:
    """The page's script with the dev bridge, written to ``outfile`` (atomically: a server may be reading it)."""
    node = _tool("node")
    outfile.parent.mkdir(parents=True, exist_ok=True)
    with _npm_lock():
        _install(app_dir)
        descriptor, staging = tempfile.mkstemp(prefix=f".{outfile.name}.", dir=outfile.parent)
        os.close(descriptor)
        try:
            _run([node, "src/build.mjs", "--dev", staging], app_dir, BUILD_TIMEOUT_S, "the dev bundle's esbuild build")
            Path(staging).replace(outfile)
        finally:
            Path(staging).unlink(missing_ok=True)
    return outfile


def check_committed_bundle(app_dir: Path = APP_DIR) -> None:
    """Rebuild the deployed bundle in memory; ``UiBuildError`` if the committed one differs from it."""
    node = _tool("node")
    with _npm_lock():
        _install(app_dir)
        _run([node, "src/build.mjs", "--check"], app_dir, BUILD_TIMEOUT_S, "the bundle check")


# -- the page server
class StatusPageServer:
    """The status page and the dev bridge's endpoint on 127.0.0.1:<port> (0: any free port).

    ``app_token_lifetime_s``: the app token each UI call hands over, as Forge's does (a fresh one by
    default); ``None`` hands over none, so the page shows the state the rest of the stack left.
    """

    def __init__(
        self,
        forge: ForgeEmulator,
        site: Site,
        gateway_url: str,
        *,
        bundle: Path = DEV_BUNDLE,
        port: int = 0,
        account_id: str = DEV_ACCOUNT_ID,
    ) -> None:
        self.forge = forge
        self.site = site
        self.gateway_url = gateway_url.rstrip("/")
        self.bundle = bundle
        self.account_id = account_id
        self.app_token_lifetime_s: float | None = 3 * 3600
        self._server = LoopbackServer(self.wsgi, port)
        self._http = requests.Session()

    def start(self) -> str:
        """Serve; returns the page's URL."""
        self._server.start()
        return self.page_url

    def stop(self) -> None:
        self._server.stop()
        self._http.close()

    @property
    def url(self) -> str:
        return self._server.url

    @property
    def page_url(self) -> str:
        return self._server.url + PAGE_PATH

    # -- HTTP
    def wsgi(self, environ: dict[str, Any], start_response: Any) -> Any:
        request = Request(environ)
        response = self.handle(request)
        response.headers["Cache-Control"] = "no-store"
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response(environ, start_response)

    def handle(self, request: Request) -> Response:
        if request.path == INVOKE_PATH:
            return self._invoke(request) if request.method == "POST" else _text(405, "POST only")
        if request.method not in ("GET", "HEAD"):
            return _text(405, "GET only")
        if request.path == "/favicon.ico":
            return Response(status=204)  # the page has none; a 404 would be noise in the browser's console
        if request.path in ("/", PAGE_PATH.rstrip("/")):
            return Response(status=302, headers={"Location": PAGE_PATH})
        if request.path == PAGE_PATH:
            return self._file(STATIC_DIR / "index.html")
        name = request.path.removeprefix(PAGE_PATH)
        if request.path.startswith(PAGE_PATH) and name == "status.js":
            return self._file(self.bundle)  # the dev bundle in place of the deployed one
        # Only the page's own files, by exact name: nothing else on disk is reachable.
        if request.path.startswith(PAGE_PATH) and name in {p.name for p in STATIC_DIR.iterdir() if p.is_file()}:
            return self._file(STATIC_DIR / name)
        return _text(404, "not found")

    def _file(self, path: Path) -> Response:
        if not path.is_file():
            return _text(404, f"{path.name} is not built")
        content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        if content_type.startswith("text/") or content_type.endswith("javascript"):
            content_type += "; charset=utf-8"
        response = Response(path.read_bytes(), content_type=content_type)
        response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
        return response

    def _same_origin(self, request: Request) -> bool:
        """Only the page itself may use the bridge: another site open in the developer's browser may not."""
        origin = request.headers.get("Origin")
        own = {self.url, self.url.replace("127.0.0.1", "localhost")}  # the page opened either way
        if origin is not None and origin not in own:
            return False
        return request.headers.get("Sec-Fetch-Site", "same-origin") == "same-origin"

    def _invoke(self, request: Request) -> Response:
        if not self._same_origin(request):
            return _text(403, "the dev bridge answers its own page only")
        if request.mimetype != "application/json":  # a cross-site form post cannot send this type
            return _text(415, "application/json only")
        try:
            call = json.loads(request.get_data(as_text=True) or "null")
        except ValueError:
            return _text(400, "the body is not JSON")
        problem = _invalid_call(call)
        if problem:
            return _text(400, problem)
        try:
            answer = self.forward(call["method"], call["path"], call.get("headers") or {}, call.get("body"))
        except requests.RequestException as exc:
            return _text(502, f"the local gateway at {self.gateway_url} did not answer ({type(exc).__name__})")
        return Response(json.dumps(answer), content_type="application/json")

    def forward(self, method: str, path: str, headers: dict[str, str], body: Any) -> dict[str, Any]:
        """The call as Forge makes it for a UI resolver: ``{status, headers, body}`` of the remote's answer."""
        forge_headers = self.forge.ui_call_headers(
            self.site, self.account_id, app_token_lifetime_s=self.app_token_lifetime_s
        )
        page_headers = {
            name: value
            for name, value in headers.items()
            if name.lower() not in RESERVED_HEADERS and not name.lower().startswith("x-forge-")
        }
        response = self._http.request(
            method,
            self.gateway_url + path,
            headers={**page_headers, **forge_headers},
            data=None if body is None else json.dumps(body),
            timeout=25,  # Forge's limit for a UI call
            allow_redirects=False,
        )
        try:
            parsed: Any = response.json() if response.content else None
        except ValueError:
            parsed = None  # Forge hands the page JSON bodies only
        logger.info("dev bridge: %s %s -> %d", method, urlsplit(path).path, response.status_code)
        return {
            "status": response.status_code,
            "headers": {name.lower(): value for name, value in response.headers.items()},
            "body": parsed,
        }


def _invalid_call(call: Any) -> str | None:
    """Why ``call`` is not an ``invokeRemote`` input, or None."""
    if not isinstance(call, dict):
        return "expected {path, method, headers?, body?}"
    path, method, headers = call.get("path"), call.get("method"), call.get("headers")
    if not isinstance(path, str) or not path.startswith("/") or path.startswith("//"):
        return "path must be an absolute path such as /api/status"
    if method not in METHODS:
        return f"method must be one of {', '.join(sorted(METHODS))}"
    if headers is not None and (not isinstance(headers, dict) or not all(isinstance(v, str) for v in headers.values())):
        return "headers must map names to strings"
    return None


def _text(status: int, message: str) -> Response:
    return Response(message, status=status, content_type="text/plain; charset=utf-8")


def start_status_page(
    forge: ForgeEmulator, site: Site, gateway_url: str, *, port: int = DEFAULT_UI_PORT
) -> StatusPageServer:
    """Build the dev bundle and serve the page (on a free port if ``port`` is taken). ``UiBuildError``
    if the bundle cannot be built."""
    bundle = build_dev_bundle()
    server = StatusPageServer(forge, site, gateway_url, bundle=bundle, port=port)
    try:
        server.start()
    except PortInUse:  # the port is taken, by another make local say: any free one will do
        server = StatusPageServer(forge, site, gateway_url, bundle=bundle, port=0)
        server.start()
    return server
