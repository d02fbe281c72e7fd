"""``python -m local.serve`` as a developer runs it, in a subprocess: its output read line by line in the
background, so a test can wait for a given line (the banner, a reload) without blocking or sleeping."""

from __future__ import annotations

import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

# The banner's last line: the curl hint (emulator mode), or the production note.
BANNER_END = ("Or by hand:", "The Forge emulator CLI cannot call this mode")


class ServeProcess:
    """A running ``local.serve``; ``stop()`` it in a ``finally`` (it is killed if SIGINT does not end it)."""

    def __init__(self, *args: str, cwd: Path, python: Sequence[str] = (sys.executable,)) -> None:
        self.process = subprocess.Popen(  # noqa: S603
            [*python, "-m", "local.serve", "--log-level", "WARNING", *args],
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))

    def wait_for(self, wanted: str | Callable[[str], bool], timeout: float = 60) -> str:
        """The next line ``wanted`` accepts (a predicate) or that contains it (a string); every line read
        is kept in ``seen``. Fails if the process exits first or nothing comes within ``timeout``."""
        matches = wanted if callable(wanted) else (lambda line: wanted in line)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.5)
            except queue.Empty:
                assert self.process.poll() is None, "the stack exited:\n" + "\n".join(self.seen)
                continue
            self.seen.append(line)
            if matches(line):
                return line
        raise AssertionError(f"no line {wanted!r} within {timeout} s:\n" + "\n".join(self.seen[-40:]))

    def banner(self, timeout: float = 60) -> list[str]:
        """Lines up to the banner's last line."""
        self.wait_for(lambda line: line.startswith(BANNER_END), timeout)
        return self.seen

    def banner_or_exit(self) -> list[str]:
        """Everything printed by a process that has exited."""
        assert self.process.poll() is not None
        self._reader.join(timeout=30)  # to the end of its output
        while not self.lines.empty():
            self.seen.append(self.lines.get())
        return self.seen

    def stop(self) -> str:
        """SIGINT (Ctrl-C), then everything it printed."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()  # never leave a stack running behind a failed test
            raise
        rest = []
        while not self.lines.empty():
            rest.append(self.lines.get())
        return "\n".join(self.seen + rest)
