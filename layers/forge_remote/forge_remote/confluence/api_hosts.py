"""Where a token may be sent: the apiBaseUrl allow-list (token rule 8)."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Collection
from urllib.parse import SplitResult, urlsplit

from forge_remote.errors import DisallowedApiBaseUrl

_WHITESPACE_OR_CONTROL = re.compile(r"[\s\x00-\x1f\x7f]")
_PLAIN_PATH = re.compile(r"(?:/[A-Za-z0-9_~:@,=+-][A-Za-z0-9._~:@,=+-]*)*/?")  # no ".", "..", "%", "//"


def is_loopback_host(host: str) -> bool:
    """``localhost`` or a loopback IP literal (``127.0.0.0/8``, ``::1``); never a name that merely starts so."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _split(url: str, what: str) -> tuple[SplitResult, str, int | None]:
    """``urlsplit`` plus host and port, with every parsing failure as ``DisallowedApiBaseUrl``.

    ``urlsplit`` raises ``ValueError`` on unbalanced brackets and on characters that NFKC-normalise
    to URL delimiters (fullwidth solidus U+FF0F, at sign U+FF20...); ``.port`` raises on a bad port.
    """
    try:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        port = parts.port
    except ValueError as exc:
        raise DisallowedApiBaseUrl(f"{what} is not a valid URL") from exc
    return parts, host, port


def require_allowed_api_base(url: str, allowed_hosts: Collection[str]) -> str:
    """Return ``url`` without a trailing slash if a token may be sent to it, else raise.

    The URL must be https on a host in ``allowed_hosts`` (entries are ``host`` or ``host:port``,
    compared case-insensitively), with no credentials, query or fragment. Plain http is accepted
    only for a loopback host that is explicitly allowed: that is the local stack, where the
    token never leaves the machine.
    """
    if not isinstance(url, str) or not url:
        raise DisallowedApiBaseUrl("apiBaseUrl is missing")
    # urlsplit silently drops tabs, newlines and leading spaces: refuse them instead of checking a
    # cleaned-up copy and returning the raw string.
    if _WHITESPACE_OR_CONTROL.search(url):
        raise DisallowedApiBaseUrl("apiBaseUrl contains whitespace or control characters")
    if not url.isascii():
        raise DisallowedApiBaseUrl("apiBaseUrl contains non-ASCII characters")
    parts, host, port = _split(url, "apiBaseUrl")
    if not host or "@" in parts.netloc or parts.query or parts.fragment:
        raise DisallowedApiBaseUrl("apiBaseUrl is not a plain base URL")
    if not _PLAIN_PATH.fullmatch(parts.path):
        # requests would normalise "..", and a server may decode "%2e%2e": the token would go elsewhere.
        raise DisallowedApiBaseUrl("apiBaseUrl path has dot segments, escapes or empty segments")
    allowed = {h.strip().lower() for h in allowed_hosts if h.strip()}
    host_port = f"{host}:{port}" if port is not None else host
    if host_port not in allowed and not (port in (None, 443) and host in allowed):
        raise DisallowedApiBaseUrl(f"apiBaseUrl host {host_port!r} is not in ALLOWED_API_HOSTS")
    if parts.scheme == "https" or (parts.scheme == "http" and is_loopback_host(host)):
        return url.rstrip("/")
    raise DisallowedApiBaseUrl("apiBaseUrl must use https")
