"""The further realms' stacks of ``make local ARGS="--realms default,EU"``: one ``local.serve --join``
process each, started and stopped by the first stack's process (``local/serve.py``).

Why a process per realm rather than a second ``LocalRuntime`` in the same one: each stack's functions
read their settings from ``os.environ`` (the region, the tables, ``DATA_REALM``), the library caches
its boto3 clients per process (``forge_remote/aws.py``), the handler modules and the job registry are
per process too, and so is the stack's clock. Two stacks in one process would share all of these; in
two processes each is what it is on Lambda, and they share only what realms share deployed: Forge
(the first process's emulator signs every FIT; every stack verifies them with its JWKS), the
Confluence site, and AWS (the one moto server, each stack in its own region of it).

A joined stack's output comes through the first one's, each line prefixed with its realm (``[EU] ...``).
It is ready once its state file is written; it stops with the first stack (SIGINT, then a kill if it
does not), and by itself if the first one's process is gone.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parents[1]
READY_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 30.0


class RealmStackFailed(Exception):
    """A joined realm's stack exited, or did not get ready in time: its last lines say why."""

    def __init__(self, realm: str, message: str, lines: Sequence[str]) -> None:
        tail = "\n".join(f"  [{realm}] {line}" for line in lines)
        super().__init__(f"realm {realm}'s stack {message}" + (f":\n{tail}" if tail else ""))
        self.realm = realm


class RealmProcess:
    """One ``python -m local.serve --join`` process, its output forwarded with its realm as prefix."""

    def __init__(self, realm: str, argv: Sequence[str], state_file: Path, *, out: IO[str] | None = None) -> None:
        self.realm = realm
        self.argv = list(argv)
        self.state_file = state_file
        self._out = out
        self._tail: deque[str] = deque(maxlen=20)
        self._lock = threading.Lock()
        self.process: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(  # noqa: S603 (our own interpreter and module, no shell)
            self.argv,
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self._reader = threading.Thread(target=self._forward, name=f"realm-{self.realm}-output", daemon=True)
        self._reader.start()

    def _forward(self) -> None:
        assert self.process is not None
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            line = raw.rstrip("\n")
            with self._lock:
                self._tail.append(line)
            out = self._out or sys.stdout
            with contextlib.suppress(Exception):  # a closed stdout must not stop the draining
                print(f"[{self.realm}] {line}", file=out, flush=True)

    def tail(self) -> list[str]:
        with self._lock:
            return list(self._tail)

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S, *, stop: threading.Event | None = None) -> dict[str, Any]:
        """The state file it wrote (its own: the pid says so), once it is there; ``RealmStackFailed`` if the
        process exits first, ``timeout_s`` passes or ``stop`` is set (Ctrl-C while it starts)."""
        assert self.process is not None
        deadline = time.monotonic() + timeout_s
        while True:
            state = self._state()
            if state is not None:
                return state
            if stop is not None and stop.is_set():
                raise RealmStackFailed(self.realm, "was stopped before it was ready", [])
            code = self.process.poll()
            if code is not None:
                if self._reader is not None:
                    self._reader.join(timeout=5)  # its last words
                raise RealmStackFailed(self.realm, f"exited with status {code} before it was ready", self.tail())
            if time.monotonic() > deadline:
                raise RealmStackFailed(self.realm, f"was not ready within {timeout_s:g} s", self.tail())
            time.sleep(0.05)

    def _state(self) -> dict[str, Any] | None:
        assert self.process is not None
        try:
            state = json.loads(self.state_file.read_text(encoding="utf-8"))
        except (FileNotFoundError, ValueError):
            return None
        if not isinstance(state, dict) or state.get("pid") != self.process.pid:
            return None  # one an earlier run left behind
        return state

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int | None:
        """SIGINT (as Ctrl-C), then a kill if it has not ended within ``timeout_s``; its exit status."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=timeout_s)
        if self._reader is not None:
            self._reader.join(timeout=5)
        return self.process.returncode
