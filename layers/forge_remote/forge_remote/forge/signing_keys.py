"""A per-container cache of Forge's FIT signing keys.

Why not ``jwt.PyJWKClient``: its cache forgets the key set when a refresh fails, and Forge must
keep verifying through a JWKS outage. Rules here: keys are fetched once and reused; an unknown
``kid`` triggers at most one refetch per ``unknown_kid_interval_s`` (15 s: a key Forge starts
using is accepted within seconds whatever junk ``kid``s arrived before it, and junk cannot make a
container fetch more than four times a minute); a periodic refresh (``max_age_s``) picks up
rotations; a failed fetch keeps the keys already known and is retried after ``cooldown_s``.
Only RSA signing keys of at least 2048 bits are kept. Parsing is pyjwt's.

A missing key is one of two things, and the caller must tell Forge which: ``InvalidInvocation`` (401)
when the key set is known to be current (the last fetch succeeded) and the ``kid`` is not in it;
``SigningKeysUnavailable`` (503) when it is not (no keys were ever fetched, or the last fetch failed:
an unknown ``kid`` may be a key Forge started using during the outage). One ``key()`` call spends at
most ``key_time_budget_s`` on fetches, however many it makes (a cold container may make two).
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
import urllib.request
from collections.abc import Callable
from typing import Any

import jwt

from forge_remote.errors import InvalidInvocation, SigningKeysUnavailable

logger = logging.getLogger(__name__)

Fetch = Callable[[str, float], dict[str, Any]]  # (url, timeout_s): the whole fetch within timeout_s
NO_KEYS_RETRY_S = 10.0
UNKNOWN_KID_INTERVAL_S = 15.0
MIN_RSA_BITS = 2048
# Forge gives a trigger 5 s and the trigger function has 6 s, DynamoDB writes included: keys get half.
KEY_TIME_BUDGET_S = 2.5
MIN_FETCH_TIME_S = 0.25  # a fetch with less time than this left is not started
# Forge's retry spacing; longer than NO_KEYS_RETRY_S and UNKNOWN_KID_INTERVAL_S, so a retry this late
# always finds the container fetching again.
KEYS_RETRY_AFTER_S = 60.0
MAX_JWKS_BYTES = 256 * 1024
READ_CHUNK_BYTES = 16 * 1024


def _read_json(url: str, timeout_s: float, deadline: float) -> dict[str, Any]:
    request = urllib.request.Request(url, headers={"Accept": "application/json"})  # noqa: S310 (URL from config)
    body = bytearray()
    with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310
        # read1: at most one socket read per chunk, so a trickling server meets the deadline check.
        while chunk := response.read1(READ_CHUNK_BYTES):
            body += chunk
            if len(body) > MAX_JWKS_BYTES:
                raise ValueError("JWKS document too large")
            if time.monotonic() >= deadline:
                raise TimeoutError("JWKS fetch ran out of time")
    document = json.loads(body)
    if not isinstance(document, dict):
        raise ValueError("JWKS document is not a JSON object")
    return document


def fetch_json(url: str, timeout_s: float) -> dict[str, Any]:
    """GET a JSON document with the standard library (keeps ``requests`` off the cold path), all of it
    within ``timeout_s`` or ``TimeoutError``.

    urlopen's timeout bounds each socket operation, not the whole: a slow name lookup, or a server
    sending its headers a byte at a time, takes as long as it likes. So the GET runs in a daemon thread
    and the caller waits for it at most ``timeout_s``; the thread checks the deadline between reads of
    the body and stops soon after on its own.
    """
    deadline = time.monotonic() + timeout_s
    outcome: queue.SimpleQueue[dict[str, Any] | BaseException] = queue.SimpleQueue()

    def fetch() -> None:
        try:
            outcome.put(_read_json(url, timeout_s, deadline))
        except BaseException as exc:  # handed to the caller, raised there
            outcome.put(exc)

    threading.Thread(target=fetch, name="jwks-fetch", daemon=True).start()
    try:
        result = outcome.get(timeout=max(0.0, deadline - time.monotonic()))
    except queue.Empty:
        raise TimeoutError(f"JWKS fetch took longer than {timeout_s:.2f}s") from None
    if isinstance(result, BaseException):
        raise result
    return result


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
        key_time_budget_s: float = KEY_TIME_BUDGET_S,
        fetch: Fetch = fetch_json,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self._max_age_s = max_age_s
        self._cooldown_s = cooldown_s
        self._unknown_kid_interval_s = unknown_kid_interval_s
        self._timeout_s = timeout_s
        self._key_time_budget_s = key_time_budget_s
        self._fetch = fetch
        self._monotonic = monotonic
        self._keys: dict[str, jwt.PyJWK] = {}  # replaced whole, never changed in place
        self._fetched_at: float | None = None  # last successful fetch
        self._attempted_at: float | None = None  # last attempt, successful or not
        self._last_fetch_ok = False  # whether the last attempt gave a usable key set
        self._unknown_kid_at: float | None = None  # last refetch caused by an unknown kid
        self._ignored: set[str] = set()  # kids of unusable keys, logged once each
        self._lock = threading.Lock()
        self.fetch_count = 0  # attempts, for benchmarks and tests

    def key(self, kid: str) -> jwt.PyJWK:
        """The key for ``kid``, refetching only when stale or unknown (and out of cooldown).

        Raises ``InvalidInvocation`` when the key set is current and lacks ``kid``, and
        ``SigningKeysUnavailable`` when no current key set could be had (module docstring).
        """
        deadline = self._monotonic() + self._key_time_budget_s
        # Lambda serves one request at a time; elsewhere, waiting for another call's fetch counts too.
        if not self._lock.acquire(timeout=self._key_time_budget_s):
            found = self._keys.get(kid)
            if found is None:
                raise SigningKeysUnavailable("signing keys are being fetched", KEYS_RETRY_AFTER_S)
            return found
        try:
            return self._key_locked(kid, deadline)
        finally:
            self._lock.release()

    def _key_locked(self, kid: str, deadline: float) -> jwt.PyJWK:
        now = self._monotonic()
        fetched = False
        stale = self._fetched_at is None or now - self._fetched_at >= self._max_age_s
        # With no keys at all (the first fetch failed) every call is refused: retry sooner, so a
        # container that started during an outage recovers by Forge's next retry (60 s apart).
        cooldown = self._cooldown_s if self._keys else min(self._cooldown_s, NO_KEYS_RETRY_S)
        if stale and _out_of(self._attempted_at, now, cooldown) and (timeout_s := self._time_left(deadline)):
            fetched = self._refresh(now, timeout_s)
        # A rotated key may appear at any time. An unknown kid needs no valid signature, so the
        # refetch is rate-limited, but by a short interval: a long one would let a single junk kid
        # lock out a real new key for longer than Forge keeps retrying (4 times, 60 s apart).
        if kid not in self._keys and _out_of(self._unknown_kid_at, now, self._unknown_kid_interval_s):
            if fetched:  # a key set fetched a moment ago is the answer a refetch would give
                self._unknown_kid_at = now
            elif timeout_s := self._time_left(deadline):
                self._unknown_kid_at = now
                self._refresh(now, timeout_s)
        found = self._keys.get(kid)
        if found is not None:
            return found
        if self._last_fetch_ok:  # the key set is current: this kid is not Forge's
            raise InvalidInvocation("unknown signing key")
        if self._keys:  # perhaps a key Forge started using while the JWKS cannot be fetched
            raise SigningKeysUnavailable("unknown signing key and the JWKS could not be refetched", KEYS_RETRY_AFTER_S)
        raise SigningKeysUnavailable("signing keys could not be fetched", KEYS_RETRY_AFTER_S)

    def _time_left(self, deadline: float) -> float:
        """The timeout for a fetch now: the per-fetch timeout or what is left of the budget (0: no fetch)."""
        left = deadline - self._monotonic()
        if left < MIN_FETCH_TIME_S:
            logger.warning("JWKS fetch skipped: %.2fs left of this call's key time budget", max(left, 0.0))
            return 0.0
        return min(self._timeout_s, left)

    def _refresh(self, now: float, timeout_s: float) -> bool:
        """One fetch; True if it gave a usable key set (the keys are replaced only then)."""
        self._attempted_at = now
        self.fetch_count += 1
        self._last_fetch_ok = False
        try:
            document = self._fetch(self.url, timeout_s)
            keys = {k.key_id: k for k in jwt.PyJWKSet.from_dict(document).keys if k.key_id and self._usable(k)}
        except Exception as exc:  # any failure (network, JSON, key parsing) keeps the keys we have
            error = type(exc).__name__
            logger.warning("JWKS fetch failed (%s); keeping %d cached keys", error, len(self._keys))
            return False
        if not keys:
            logger.warning("JWKS document had no usable RS256 keys; keeping %d cached keys", len(self._keys))
            return False
        self._keys = keys
        self._fetched_at = now
        self._last_fetch_ok = True
        return True

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
