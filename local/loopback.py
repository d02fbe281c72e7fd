"""Serve a WSGI app on 127.0.0.1 in a daemon thread (the emulators' transport). Loopback only."""

from __future__ import annotations

import errno
import socket
import threading
from typing import Any

from werkzeug.serving import BaseWSGIServer, make_server


class PortInUse(OSError):
    """The port asked for is held by another program (werkzeug would exit the process instead)."""

    def __init__(self, port: int) -> None:
        super().__init__(errno.EADDRINUSE, f"port {port} on 127.0.0.1 is in use by another program")
        self.port = port


class LoopbackServer:
    """A threaded WSGI server on 127.0.0.1:<port> (0 = any free port)."""

    def __init__(self, app: Any, port: int = 0) -> None:
        self._app = app
        self._port = port
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("server not started")
        return f"http://127.0.0.1:{self._server.socket.getsockname()[1]}"

    def start(self) -> str:
        if self._server is None:
            # Bound here, not by werkzeug: on a taken port it prints a hint and exits the process.
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
                listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as werkzeug sets it
                try:
                    listener.bind(("127.0.0.1", self._port))
                except OSError as exc:
                    if exc.errno == errno.EADDRINUSE:
                        raise PortInUse(self._port) from exc
                    raise
                listener.listen(128)
                # werkzeug takes a duplicate of the descriptor: ours closes with this block.
                self._server = make_server("127.0.0.1", self._port, self._app, threaded=True, fd=listener.fileno())
            # A short poll interval keeps stop() quick: tests start and stop servers all the time.
            self._thread = threading.Thread(
                target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="loopback", daemon=True
            )
            self._thread.start()
        return self.url

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
