"""Where a token may be sent: the apiBaseUrl allow-list (token rule 8)."""

from __future__ import annotations

import ipaddress
from collections.abc import Collection
from urllib.parse import urlsplit

from forge_remote.errors import DisallowedApiBaseUrl


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


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
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in url):
        raise DisallowedApiBaseUrl("apiBaseUrl contains whitespace or control characters")
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    try:
        port = parts.port
    except ValueError as exc:
        raise DisallowedApiBaseUrl("apiBaseUrl has an invalid port") from exc
    if not host or "@" in parts.netloc or parts.query or parts.fragment:
        raise DisallowedApiBaseUrl("apiBaseUrl is not a plain base URL")
    allowed = {h.strip().lower() for h in allowed_hosts if h.strip()}
    host_port = f"{host}:{port}" if port is not None else host
    if host_port not in allowed and not (port in (None, 443) and host in allowed):
        raise DisallowedApiBaseUrl(f"apiBaseUrl host {host_port!r} is not in ALLOWED_API_HOSTS")
    if parts.scheme == "https" or (parts.scheme == "http" and _is_loopback(host)):
        return url.rstrip("/")
    raise DisallowedApiBaseUrl("apiBaseUrl must use https")
