"""Atlassian's OpenAPI descriptions of Confluence (``tests/reference``) as a contract:
every request a client sends and every 200 an emulator answers is validated against them.

The specs' servers: v1 ``//your-domain.atlassian.net`` with paths ``/wiki/rest/api/...``; v2
``https://{your-domain}/wiki/api/v2`` with paths ``/pages/{id}``. The emulator serves
``/ex/confluence/<cloudId>/wiki/...`` like api.atlassian.com, so the prefix up to ``/wiki`` is dropped and
the URL rebuilt on the spec's server before validation. Used by ``test_confluence_emulator.py`` and
``test_confluence_client.py``.
"""

from __future__ import annotations

import functools
import json
import uuid
from urllib.parse import parse_qsl, urlsplit

import jwt
import pytest
import requests
from openapi_core import Config, OpenAPI
from openapi_core.testing import MockRequest, MockResponse

from forge_remote import clock
from tests.support import ROOT

REFERENCE = ROOT / "tests" / "reference"
SPEC_HOSTS = {"v1": "//your-domain.atlassian.net", "v2": "https://your-domain.atlassian.net"}


@functools.cache
def load_openapi() -> dict[str, OpenAPI]:
    """Both descriptions, parsed once per test session (about half a second each)."""
    files = {v: REFERENCE / f"confluence-openapi-{v}.json" for v in ("v1", "v2")}
    missing = [str(f) for f in files.values() if not f.is_file()]
    if missing:
        pytest.fail(f"Atlassian's OpenAPI descriptions are missing: {missing} (see tests/reference/README.md)")
    # The v1 file fails strict spec validation (an array default checked against an item enum);
    # its request and response schemas, which are what we check, are sound.
    config = Config(spec_validator_cls=None)
    return {v: OpenAPI.from_dict(json.loads(f.read_text()), config=config) for v, f in files.items()}


def spec_request(method: str, url: str, headers: dict[str, str] | None = None) -> tuple[str, MockRequest]:
    """An emulator (or api.atlassian.com) URL as a request on the spec's own server."""
    parts = urlsplit(url)
    prefix, sep, wiki_rest = parts.path.partition("/wiki/")
    assert sep, f"not a Confluence API path: {parts.path}"
    assert prefix.startswith("/ex/confluence/"), f"not under /ex/confluence/<cloudId>: {parts.path}"
    path = "/wiki/" + wiki_rest
    version = "v2" if path.startswith("/wiki/api/v2/") else "v1"
    args = dict(parse_qsl(parts.query, keep_blank_values=True))
    return version, MockRequest(SPEC_HOSTS[version], method.lower(), path, args=args, headers=headers or {})


def check_exchange(openapi: dict[str, OpenAPI], response: requests.Response) -> str:
    """Validate a request against the spec, and its response too when it is a 200; returns the version."""
    request = response.request
    assert request.url is not None
    assert request.method is not None
    version, mock = spec_request(request.method, request.url, {"Accept": "application/json"})
    openapi[version].validate_request(mock)
    if response.status_code == 200:
        openapi[version].validate_response(
            mock, MockResponse(response.content, 200, dict(response.headers), "application/json")
        )
    return version


def make_token(lifetime_s: float = 3600) -> str:
    """An app token the way Forge issues them: a JWT whose ``exp`` is its expiry (unique per call)."""
    now = clock.now()
    claims = {"iat": int(now), "exp": int(now + lifetime_s), "sub": "app-system-user", "jti": uuid.uuid4().hex}
    return jwt.encode(claims, "emulator-tests-signing-key-of-32-bytes!", algorithm="HS256")
