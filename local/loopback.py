"""Serve a WSGI app on 127.0.0.1 in a daemon thread (the emulators' transport). Loopback only."""

from __future__ import annotations

import threading
from typing import Any

from werkzeug.serving import BaseWSGIServer, make_server


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
        return f"http://127.0.0.1:{self._server.server_port}"

    def start(self) -> str:
        if self._server is None:
            self._server = make_server("127.0.0.1", self._port, self._app, threaded=True)
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
