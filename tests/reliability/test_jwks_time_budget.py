"""A JWKS endpoint that hangs or trickles its answer, for real, on loopback: a fetch ends when its timeout
says, whatever the server does (``fetch_json`` bounds the whole GET, not each socket operation as urlopen's
timeout does), and one ``JwksCache.key()`` call, first fetch and unknown-kid refetch together, stays inside
its key time budget and answers an outage (``SigningKeysUnavailable``, a 503), never a bad FIT.

No assertion reads the wall clock: a trickling server would deliver a complete, valid key set if the client
kept reading, so a fetch that was not bounded would succeed, and the test would fail. The deadline
arithmetic itself is checked with an injected clock in ``tests/unit/test_signing_keys.py``.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from forge_remote.errors import InvalidInvocation, SigningKeysUnavailable
from forge_remote.forge.signing_keys import JwksCache, fetch_json
from local.forge_emulator import ForgeEmulator

pytestmark = pytest.mark.reliability

# One byte per interval: no socket read waits long enough to time out, and a whole answer takes 6 s or more.
TRICKLE_EVERY_S = 0.02
STAGES = ("hang", "headers", "body")


class SlowJwks:
    """A loopback HTTP server (port 0) answering every GET with ``document``, slowly.

    ``hang``: reads the request and answers nothing. ``headers``: trickles the status line and headers,
    then sends the body at once. ``body``: sends the headers at once and trickles the body. ``complete``
    counts the answers sent whole (a client that stopped reading early never gets one).
    """

    def __init__(self, stage: str, document: dict[str, Any], every_s: float = TRICKLE_EVERY_S) -> None:
        body = json.dumps(document).encode()
        head = (
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
            f"X-Padding: {'p' * 200}\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        self._stage = stage
        self._every_s = every_s
        self._head, self._body = head, body
        self._stop = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.05)
        self.complete = 0
        self.answered = threading.Event()  # set once an answer was sent whole
        self.requests = 0
        self._thread = threading.Thread(target=self._serve, name="slow-jwks", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._listener.getsockname()[1]}/.well-known/jwks.json"

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                connection, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._answer, args=(connection,), daemon=True).start()

    def _trickle(self, connection: socket.socket, data: bytes) -> bool:
        for index in range(len(data)):
            if self._stop.wait(self._every_s):
                return False
            connection.sendall(data[index : index + 1])
        return True

    def _answer(self, connection: socket.socket) -> None:
        with connection:
            try:
                connection.recv(65536)
                self.requests += 1
                if self._stage == "hang":
                    self._stop.wait()
                    return
                if self._stage == "headers":
                    sent = self._trickle(connection, self._head)
                    if sent:
                        connection.sendall(self._body)
                else:
                    connection.sendall(self._head)
                    sent = self._trickle(connection, self._body)
                if sent:
                    self.complete += 1
                    self.answered.set()
            except OSError:  # the client gave up and closed: what a bounded fetch does
                return

    def close(self) -> None:
        self._stop.set()
        self._listener.close()
        self._thread.join(timeout=5)


@pytest.fixture
def document(forge: ForgeEmulator) -> dict[str, Any]:
    return {"keys": [key.jwk() for key in forge.keys]}


@pytest.fixture(params=STAGES)
def slow(request: pytest.FixtureRequest, document: dict[str, Any]) -> Iterator[SlowJwks]:
    server = SlowJwks(request.param, document)
    yield server
    server.close()


def test_the_trickled_answer_is_a_valid_key_set_when_read_to_the_end(document: dict[str, Any]) -> None:
    """The control: read to the end, each trickling server delivers the key set (faster here, to keep it short)."""
    for stage in ("headers", "body"):
        server = SlowJwks(stage, document, every_s=0.001)
        try:
            assert fetch_json(server.url, timeout_s=60.0) == document
            # The client may hold the last byte before the server's thread counts the answer sent.
            assert server.answered.wait(timeout=10)
            assert server.complete == 1
        finally:
            server.close()


def test_a_fetch_ends_at_its_timeout_whatever_the_server_does(slow: SlowJwks) -> None:
    # Every socket read gets a byte well inside 0.3 s, so urlopen's own timeout never fires on a trickle.
    with pytest.raises(TimeoutError):
        fetch_json(slow.url, timeout_s=0.3)
    assert slow.requests == 1
    assert slow.complete == 0  # the client stopped before the answer was whole


def test_one_key_call_shares_its_budget_between_the_fetch_and_the_refetch(slow: SlowJwks, forge: ForgeEmulator) -> None:
    timeouts: list[tuple[float, float]] = []  # (when the fetch started, its timeout)

    def recorded_fetch(url: str, timeout_s: float) -> dict[str, Any]:
        timeouts.append((time.monotonic(), timeout_s))
        return fetch_json(url, timeout_s)

    budget_s = 1.0
    cache = JwksCache(slow.url, timeout_s=0.4, key_time_budget_s=budget_s, fetch=recorded_fetch)
    called_at = time.monotonic()
    with pytest.raises(SigningKeysUnavailable) as caught:
        cache.key(forge.keys[0].kid)  # a cold container: no keys, then the unknown-kid refetch
    assert not isinstance(caught.value, InvalidInvocation)  # an outage: 503, never 401
    assert 1 <= len(timeouts) <= 2
    for started, timeout_s in timeouts:
        assert 0 < timeout_s <= 0.4
        assert started + timeout_s <= called_at + budget_s  # no fetch may end after the call's deadline
    assert slow.complete == 0
