"""A per-container cache of Forge's FIT signing keys.

Why not ``jwt.PyJWKClient``: its cache forgets the key set when a refresh fails, and Forge must
keep verifying through a JWKS outage. Rules here: keys are fetched once and reused; an unknown
``kid`` triggers at most one refetch per ``unknown_kid_interval_s`` (15 s: a key Forge starts
using is accepted within seconds whatever junk ``kid``s arrived before it, and junk cannot make a
container fetch more than four times a minute); a periodic refresh (``max_age_s``) picks up
rotations; a failed fetch keeps the keys already known and is retried after ``cooldown_s``.
Only RSA signing keys of at least 2048 bits are kept. Parsing is pyjwt's.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.request
from collections.abc import Callable
from typing import Any

import jwt

from forge_remote.errors import InvalidInvocation

logger = logging.getLogger(__name__)

Fetch = Callable[[str, float], dict[str, Any]]
NO_KEYS_RETRY_S = 10.0
UNKNOWN_KID_INTERVAL_S = 15.0
MIN_RSA_BITS = 2048


def fetch_json(url: str, timeout_s: float) -> dict[str, Any]:
    """GET a JSON document with the standard library (keeps ``requests`` off the cold path)."""
    request = urllib.request.Request(url, headers={"Accept": "application/json"})  # noqa: S310 (URL from config)
    with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310
        body: dict[str, Any] = json.loads(response.read(256 * 1024))
        return body


def _out_of(last: float | None, now: float, cooldown_s: float) -> bool:
    return last is None or now - last >= cooldown_s


class JwksCache:
    """Signing keys by ``kid``, fetched from ``url`` (never from token contents)."""

    def __init__(
        self,
        url: str,
        *,
        max_age_s: float = 3600.0,
        cooldown_s: float = 300.0,
        unknown_kid_interval_s: float = UNKNOWN_KID_INTERVAL_S,
        timeout_s: float = 2.0,
        fetch: Fetch = fetch_json,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self._max_age_s = max_age_s
        self._cooldown_s = cooldown_s
        self._unknown_kid_interval_s = unknown_kid_interval_s
        self._timeout_s = timeout_s
        self._fetch = fetch
        self._monotonic = monotonic
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at: float | None = None  # last successful fetch
        self._attempted_at: float | None = None  # last attempt, successful or not
        self._unknown_kid_at: float | None = None  # last refetch caused by an unknown kid
        self._ignored: set[str] = set()  # kids of unusable keys, logged once each
        self._lock = threading.Lock()
        self.fetch_count = 0  # attempts, for benchmarks and tests

    def key(self, kid: str) -> jwt.PyJWK:
        """The key for ``kid``, refetching only when stale or unknown (and out of cooldown)."""
        with self._lock:
            now = self._monotonic()
            stale = self._fetched_at is None or now - self._fetched_at >= self._max_age_s
            # With no keys at all (the first fetch failed) every call is refused: retry sooner, so a
            # container that started during an outage recovers by Forge's next retry (60 s apart).
            cooldown = self._cooldown_s if self._keys else min(self._cooldown_s, NO_KEYS_RETRY_S)
            if stale and _out_of(self._attempted_at, now, cooldown):
                self._refresh(now)
            # A rotated key may appear at any time. An unknown kid needs no valid signature, so the
            # refetch is rate-limited, but by a short interval: a long one would let a single junk kid
            # lock out a real new key for longer than Forge keeps retrying (4 times, 60 s apart).
            if kid not in self._keys and _out_of(self._unknown_kid_at, now, self._unknown_kid_interval_s):
                self._unknown_kid_at = now
                self._refresh(now)
            found = self._keys.get(kid)
            have_keys = bool(self._keys)
        if found is None:
            raise InvalidInvocation("unknown signing key" if have_keys else "signing keys could not be fetched")
        return found

    def _refresh(self, now: float) -> None:
        self._attempted_at = now
        self.fetch_count += 1
        try:
            document = self._fetch(self.url, self._timeout_s)
            keys = {k.key_id: k for k in jwt.PyJWKSet.from_dict(document).keys if k.key_id and self._usable(k)}
        except Exception as exc:  # any failure (network, JSON, key parsing) keeps the keys we have
            error = type(exc).__name__
            logger.warning("JWKS fetch failed (%s); keeping %d cached keys", error, len(self._keys))
            return
        if not keys:
            logger.warning("JWKS document had no usable RS256 keys; keeping %d cached keys", len(self._keys))
            return
        self._keys = keys
        self._fetched_at = now

    def _usable(self, key: jwt.PyJWK) -> bool:
        """An RS256 signing key of at least 2048 bits; anything else is ignored (and logged once)."""
        if not key.key_id or key.public_key_use not in (None, "sig"):
            return False
        if key.key_type == "RSA" and getattr(key.key, "key_size", 0) >= MIN_RSA_BITS:
            return True
        if key.key_id not in self._ignored:
            self._ignored.add(key.key_id)
            size = getattr(key.key, "key_size", None)
            logger.warning(
                "JWKS key %s ignored: %s%s is not an RSA key of >= %d bits",
                key.key_id[:64],
                key.key_type,
                f" {size}-bit" if size else "",
                MIN_RSA_BITS,
            )
        return False
