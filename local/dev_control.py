"""``make local``'s development control endpoint: what ``forge_cli`` asks of the running stack itself.

Some CLI commands act on the serve process, not through Forge calls: move the stack's clock, give a
reinstall its new installation id (and make the serve process use it too: its status page signs FITs
for that site), make an account a Confluence administrator, edit a page in the Confluence emulator,
choose the app token the stack's Forge hands over with UI calls. This endpoint is how: a small JSON API
on 127.0.0.1 only (a port of the kernel's choice), kept apart from the API Gateway emulation
(``local/gateway.py``) so the gateway stays what API Gateway is.

Every request carries ``X-Dev-Control-Secret``: a random secret made for this run, written with the URL
to the stack's state file (owner-only, like the dev signing key next to it) and compared in constant
time. Answers are JSON: 401 without the right secret (before anything else is looked at), 404 for an
unknown path or page, 405 for a known path with another method, 415 for a body that is not JSON,
413 past 16 KB, 400 naming the field for a bad value. No answer carries a token, a FIT or a key: installation ids,
account ids, page facts and times only.

``GET  /v1/stack``                 the stack's clock, the emulated site, the UI calls' app token setting,
                                   the jobs the running worker has
``POST /v1/clock/advance``         ``{"seconds": N}``: ``LocalRuntime.advance`` (token expiry moves on,
                                   deferred jobs are released)
``POST /v1/install``               the site the next ``installed`` event is for: a new installation id
                                   when the current one was uninstalled (as Forge gives on reinstall)
``POST /v1/admins``                ``{"accountId", "admin": bool}``: a Confluence administrator or a plain user
``GET  /v1/pages/<id>``            a page's facts (title, space, version, labels, restriction)
``POST /v1/pages/<id>/versions``   ``{"by"?: accountId}``: edit the page (a new version), its facts
``PUT  /v1/ui-token``              ``{"lifetimeSeconds": N | null}``: the app token UI calls hand over
``GET  /v1/site``                  the emulated site: spaces, pages, users, administrators
``PUT  /v1/site/realm``            ``{"realm": "EU"}``: the site's data residency realm (a realm migration's
                                   commit moved it): Forge calls go to that realm's stack from then on

With several realms (``make local ARGS="--realms default,EU"``, ``local/realms.py``) the first stack's
endpoint is the site's: it alone answers for the site, the pages and the users. A joined realm's stack
has an endpoint of its own for its own clock and jobs (``GET /v1/stack``, ``POST /v1/clock/advance``);
its other routes answer 409 naming the first stack.

``ControlClient`` is the CLI's side of it.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
import secrets
import threading
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import boto3
import requests
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.wrappers import Request, Response

from forge_remote import clock
from forge_remote.storage.installations import InstallationRegistry
from local.confluence_emulator import AUTHOR_ID
from local.forge_emulator import DEFAULT_ACCOUNT_ID, UI_TOKEN_LIFETIME_S, Site
from local.loopback import LoopbackServer

if TYPE_CHECKING:
    from local.runtime import LocalRuntime

logger = logging.getLogger(__name__)

SECRET_HEADER = "X-Dev-Control-Secret"
MAX_BODY_BYTES = 16 * 1024
MAX_ADVANCE_S = 366 * 86400  # a year and a day: any token, retention or schedule is past by then
MAX_UI_TOKEN_LIFETIME_S = 7 * 86400
ACCOUNT_ID = re.compile(r"^[A-Za-z0-9:_.-]{1,128}$")
_PAGE_ID = r"(?P<page_id>[0-9]{1,20})"
# (method, path pattern, handler name); a path matched with another method is a 405.
ROUTES = (
    ("GET", r"/v1/stack", "stack"),
    ("POST", r"/v1/clock/advance", "advance"),
    ("POST", r"/v1/install", "install"),
    ("POST", r"/v1/admins", "admins"),
    ("GET", rf"/v1/pages/{_PAGE_ID}", "page"),
    ("POST", rf"/v1/pages/{_PAGE_ID}/versions", "new_version"),
    ("PUT", r"/v1/ui-token", "ui_token"),
    ("GET", r"/v1/site", "site"),
    ("PUT", r"/v1/site/realm", "site_realm"),
)
# What a joined realm's stack answers itself (its clock, its jobs); the rest is the site's stack's.
OWN_ROUTES = frozenset({"stack", "advance"})
_COMPILED = tuple((method, re.compile(pattern), name) for method, pattern, name in ROUTES)


class ControlError(Exception):
    """An answer other than 200: its status, a short error code, and a sentence for the user."""

    def __init__(self, status: int, error: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.error = error
        self.message = message


def _bad(message: str) -> ControlError:
    return ControlError(400, "bad_request", message)


def site_json(site: Site) -> dict[str, str]:
    return {
        "installationId": site.installation_id,
        "cloudId": site.cloud_id,
        "apiBaseUrl": site.api_base_url,
        "siteUrl": site.site_url,
        "realm": site.realm,
    }


def site_from_json(document: Mapping[str, Any]) -> Site:
    """``site_json``'s inverse (a state file's ``site``); a file from before realms is in realm ``default``."""
    return Site(
        installation_id=str(document["installationId"]),
        cloud_id=str(document["cloudId"]),
        api_base_url=str(document["apiBaseUrl"]),
        site_url=str(document["siteUrl"]),
        realm=str(document.get("realm") or "default"),
    )


def _iso(when: datetime | float) -> str:
    moment = when if isinstance(when, datetime) else datetime.fromtimestamp(when, UTC)
    return moment.astimezone(UTC).isoformat(timespec="seconds")


class DevControl:
    """The control endpoint of one running stack, acting on its ``LocalRuntime`` and emulated site.

    ``site`` and ``ui_app_token_lifetime_s`` are the serve process's current ones; ``on_change`` is
    called (under the endpoint's lock) whenever either changes, so the serve process can rewrite its
    state file and tell its status page.

    ``realm``: the realm this stack serves. ``realm_tables``: realm -> (region, app table) of every realm
    served locally (default: this stack's alone), where a reinstall looks the site's installation up (in
    the realm the site is in) and the realms the site may be moved to. ``serves_site``: False for a
    joined realm's stack, whose endpoint answers for its own clock and jobs only (``OWN_ROUTES``);
    ``site_owner`` names the stack that answers for the site then.
    """

    def __init__(
        self,
        rt: LocalRuntime,
        site: Site,
        *,
        on_change: Callable[[], None] | None = None,
        port: int = 0,
        realm: str = "default",
        realm_tables: Mapping[str, tuple[str, str]] | None = None,
        serves_site: bool = True,
        site_owner: str = "the first stack",
    ) -> None:
        self.rt = rt
        self.secret = secrets.token_urlsafe(32)
        self.site = site
        self.realm = realm
        self.ui_app_token_lifetime_s: float | None = UI_TOKEN_LIFETIME_S
        self.on_change = on_change
        self.serves_site = serves_site
        self.site_owner = site_owner
        self._lock = threading.RLock()
        self._realm_tables = dict(realm_tables or {realm: (rt.moto.region, rt.stack.physical["AppTable"])})
        self._registries: dict[str, InstallationRegistry] = {}
        self._server = LoopbackServer(self._wsgi, port)

    # -- serving
    def start(self) -> str:
        return self._server.start()

    def stop(self) -> None:
        self._server.stop()

    @property
    def url(self) -> str:
        return self._server.url

    @property
    def realms(self) -> tuple[str, ...]:
        """The realms served locally, the site may be in."""
        return tuple(self._realm_tables)

    def installations(self, realm: str) -> InstallationRegistry:
        """The installation registry of a realm's stack (its app table, in its region of the one moto)."""
        with self._lock:
            registry = self._registries.get(realm)
            if registry is None:
                region, table = self._realm_tables[realm]
                # Its own session: boto3's default one is not thread-safe.
                session = boto3.session.Session(region_name=region)
                registry = self._registries[realm] = InstallationRegistry(session.client("dynamodb"), table)
            return registry

    def _wsgi(self, environ: dict[str, Any], start_response: Any) -> Any:
        request = Request(environ)
        request.max_content_length = MAX_BODY_BYTES
        status, body = self.respond(request)
        response = Response(json.dumps(body), status=status, content_type="application/json")
        response.headers["Cache-Control"] = "no-store"
        return response(environ, start_response)

    def respond(self, request: Request) -> tuple[int, dict[str, Any]]:
        """``(status, JSON body)`` for one request: the secret first, then the route, then the body."""
        supplied = request.headers.get(SECRET_HEADER, "")
        if not hmac.compare_digest(supplied.encode("utf-8", "replace"), self.secret.encode()):
            return 401, {"error": "unauthorized", "message": f"missing or wrong {SECRET_HEADER} header"}
        try:
            name, params = self._route(request.method, request.path)
            if not self.serves_site and name not in OWN_ROUTES:
                raise ControlError(
                    409,
                    "not_the_site",
                    f"this is realm {self.realm}'s stack: the emulated site is {self.site_owner}'s, ask it",
                )
            body = self._body(request)
            answer: dict[str, Any] = getattr(self, f"_do_{name}")(body, **params)
        except ControlError as exc:
            return exc.status, {"error": exc.error, "message": exc.message}
        return 200, answer

    @staticmethod
    def _route(method: str, path: str) -> tuple[str, dict[str, str]]:
        allowed = []
        for route_method, pattern, name in _COMPILED:
            found = pattern.fullmatch(path)
            if found is None:
                continue
            if route_method == method:
                return name, found.groupdict()
            allowed.append(route_method)
        if allowed:
            raise ControlError(405, "method_not_allowed", f"{path} answers {', '.join(allowed)} only")
        raise ControlError(404, "not_found", f"no control action at {path}")

    @staticmethod
    def _body(request: Request) -> dict[str, Any]:
        if request.method == "GET":
            return {}
        if request.mimetype != "application/json":  # a browser's cross-site form cannot send this type
            raise ControlError(415, "unsupported_media_type", "send the body as application/json")
        try:
            raw = request.get_data(cache=False)
        except RequestEntityTooLarge:
            raise ControlError(413, "too_large", f"the body is larger than {MAX_BODY_BYTES} bytes") from None
        if not raw.strip():
            return {}
        try:
            document = json.loads(raw)
        except ValueError:
            raise _bad("the body is not JSON") from None
        if not isinstance(document, dict):
            raise _bad("the body must be a JSON object")
        return document

    # -- actions (each takes the parsed body and the path's parameters, returns the answer)
    def stack(self) -> dict[str, Any]:
        """The stack's clock, site and UI token setting (what every CLI command starts from)."""
        now = clock.now()
        with self._lock:
            site, lifetime = self.site, self.ui_app_token_lifetime_s
        return {
            "now": now,
            "nowIso": _iso(now),
            "realm": self.realm,
            "region": self.rt.moto.region,
            "site": site_json(site),
            "uiAppTokenLifetimeSeconds": lifetime,
            "jobs": self.jobs(),
        }

    @staticmethod
    def jobs() -> list[str]:
        """The jobs the running worker has registered: after a reload, its new ones (not what is on disk)."""
        from forge_remote.jobs.contract import JOBS

        return JOBS.names()

    def _do_stack(self, body: dict[str, Any]) -> dict[str, Any]:
        return self.stack()

    def _do_advance(self, body: dict[str, Any]) -> dict[str, Any]:
        seconds = body.get("seconds")
        if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not 0 < seconds <= MAX_ADVANCE_S:
            raise _bad(f"seconds must be a number of seconds above 0 and at most {MAX_ADVANCE_S}")
        released = self.rt.advance(float(seconds))
        now = clock.now()
        logger.info("dev control: the stack clock moved %.0f s; %d deferred jobs released", seconds, released)
        return {"advancedSeconds": seconds, "now": now, "nowIso": _iso(now), "releasedJobs": released}

    def _do_install(self, body: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            current = self.site
            installation = self.installations(current.realm).get(current.installation_id)
            if installation is None or installation.active:
                return {"site": site_json(current), "newInstallation": False}
            self.site = self.rt.forge.reinstalled(current)
            self._changed()
            logger.info("dev control: reinstall as %s (was %s)", self.site.installation_id, current.installation_id)
            return {
                "site": site_json(self.site),
                "newInstallation": True,
                "previousInstallationId": current.installation_id,
            }

    def _do_admins(self, body: dict[str, Any]) -> dict[str, Any]:
        account_id, admin = _account(body.get("accountId"), "accountId"), body.get("admin")
        if not isinstance(admin, bool):
            raise _bad("admin must be true or false")
        self.rt.confluence.set_admin(account_id, admin)
        return {"accountId": account_id, "admin": admin, "admins": sorted(self.rt.confluence.admins)}

    def _do_page(self, body: dict[str, Any], page_id: str) -> dict[str, Any]:
        return self.page_facts(int(page_id))

    def _do_new_version(self, body: dict[str, Any], page_id: str) -> dict[str, Any]:
        by = _account(body.get("by", DEFAULT_ACCOUNT_ID), "by")
        before = self.page_facts(int(page_id))  # a 404 for no such page
        edited = f"<p>Edited on the local stack at {_iso(clock.now())} (version {before['version'] + 1}).</p>"
        body_now = str(self.rt.confluence.pages[int(page_id)]["body"])
        self.rt.confluence.update_page(int(page_id), body=body_now + edited, by=by)
        return self.page_facts(int(page_id))

    def _do_ui_token(self, body: dict[str, Any]) -> dict[str, Any]:
        if "lifetimeSeconds" not in body:
            raise _bad("lifetimeSeconds is required: a number of seconds, or null for no app token")
        lifetime = body["lifetimeSeconds"]
        if lifetime is not None and (
            isinstance(lifetime, bool)
            or not isinstance(lifetime, int | float)
            or not 0 < lifetime <= MAX_UI_TOKEN_LIFETIME_S
        ):
            raise _bad(f"lifetimeSeconds must be null or above 0 and at most {MAX_UI_TOKEN_LIFETIME_S}")
        with self._lock:
            self.ui_app_token_lifetime_s = None if lifetime is None else float(lifetime)
            self._changed()
        return {"uiAppTokenLifetimeSeconds": self.ui_app_token_lifetime_s}

    def _do_site(self, body: dict[str, Any]) -> dict[str, Any]:
        confluence = self.rt.confluence
        admins = confluence.admins
        spaces = [
            {
                "id": space["id"],
                "key": key,
                "name": space["name"],
                "restrictedTo": _sorted(confluence.space_viewers(key)),
            }
            for key, space in sorted(dict(confluence.spaces).items(), key=lambda item: item[1]["id"])
        ]
        pages = [self.page_facts(page_id) for page_id in sorted(dict(confluence.pages))]
        users = [
            {"accountId": account_id, "displayName": name, "admin": account_id in admins}
            for account_id, name in dict(confluence.users).items()
            if account_id != AUTHOR_ID  # the emulator's stand-in author, for pages added without a creator
        ]
        with self._lock:
            site = self.site
        return {"site": site_json(site), "spaces": spaces, "pages": pages, "users": users, "admins": sorted(admins)}

    def _do_site_realm(self, body: dict[str, Any]) -> dict[str, Any]:
        realm = body.get("realm")
        if not isinstance(realm, str) or realm not in self._realm_tables:
            raise _bad(f"realm must be one of the realms served here: {', '.join(self._realm_tables)}")
        with self._lock:
            previous = self.site.realm
            if realm != previous:
                self.site = replace(self.site, realm=realm)
                self._changed()
                logger.info("dev control: the site moved from realm %s to realm %s", previous, realm)
            return {"site": site_json(self.site), "previousRealm": previous}

    # -- helpers
    def page_facts(self, page_id: int) -> dict[str, Any]:
        """What the CLI needs of a page: what a product event says of it, and what the site listing shows."""
        confluence = self.rt.confluence
        record = confluence.pages.get(page_id)
        if record is None:
            raise ControlError(404, "not_found", f"no page {page_id} on the emulated site (forge_cli site lists them)")
        page = dict(record)
        space = dict(confluence.spaces[page["spaceKey"]])
        return {
            "id": str(page["id"]),
            "title": page["title"],
            "spaceKey": page["spaceKey"],
            "spaceName": space["name"],
            "spaceId": space["id"],
            "version": page["version"],
            "labels": list(page["labels"]),
            "lastModified": _iso(page["lastModified"]),
            "lastModifier": page["lastModifier"],
            "parentId": str(page["parentId"]),
            "restrictedTo": _sorted(confluence.page_viewers(page_id)),
        }

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()


def _account(value: Any, name: str) -> str:
    if not isinstance(value, str) or not ACCOUNT_ID.fullmatch(value):
        raise _bad(f"{name} must be an Atlassian account id such as {DEFAULT_ACCOUNT_ID}")
    return value


def _sorted(values: frozenset[str] | None) -> list[str] | None:
    return None if values is None else sorted(values)


# -- the CLI's side
class ControlUnreachable(Exception):
    """Nothing answers at the endpoint's URL: the stack is gone."""


class ControlRefused(Exception):
    """The endpoint answered with an error: its status and message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class ControlClient:
    """Calls one stack's control endpoint with its secret (both from the stack's state file)."""

    def __init__(self, url: str, secret: str, *, timeout_s: float = 30) -> None:
        self.url = url.rstrip("/")
        self._secret = secret
        self._timeout_s = timeout_s

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        headers = {SECRET_HEADER: self._secret}
        try:
            response = requests.request(
                method, self.url + path, headers=headers, json=body, timeout=self._timeout_s, allow_redirects=False
            )
        except requests.RequestException as exc:
            raise ControlUnreachable(self.url) from exc
        try:
            document = response.json()
        except ValueError:
            document = None
        if not isinstance(document, dict):
            raise ControlRefused(response.status_code, f"HTTP {response.status_code} without a JSON answer")
        if response.status_code != 200:
            raise ControlRefused(response.status_code, str(document.get("message") or document.get("error")))
        return document

    def get(self, path: str) -> dict[str, Any]:
        return self.request("GET", path)

    def post(self, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        return self.request("POST", path, body or {})

    def put(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return self.request("PUT", path, body)
