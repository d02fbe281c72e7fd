"""moto in server mode, in this process, on 127.0.0.1: DynamoDB and SQS for the local stack.

Server mode (rather than ``mock_aws``) because the handlers must reach AWS the way they do on Lambda:
over HTTP, through boto3's own ``AWS_ENDPOINT_URL`` (no custom endpoint knob of our own). ``start()``
points this process's environment at the server with fake credentials; ``stop()`` puts it back.
"""

from __future__ import annotations

import os

import requests
from moto.server import ThreadedMotoServer

FAKE_ENVIRONMENT = {
    "AWS_ACCESS_KEY_ID": "local",
    "AWS_SECRET_ACCESS_KEY": "local",  # moto accepts any credentials
}
# Variables that could send boto3 elsewhere or sign with real credentials while the stack runs.
_CLEARED = ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE")


class MotoServer:
    """One moto server on 127.0.0.1:<port> (0 = any free port)."""

    def __init__(self, port: int = 0, region: str = "us-east-1") -> None:
        self._port = port
        self.region = region
        self._server: ThreadedMotoServer | None = None
        self._saved_env: dict[str, str | None] = {}

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("moto server not started")
        host, port = self._server.get_host_and_port()
        return f"http://{host}:{port}"

    def start(self) -> str:
        """Start the server, point boto3 at it (environment), and return its endpoint URL."""
        if self._server is None:
            self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self._port, verbose=False)
            self._server.start()
            self._point_environment()
        return self.url

    def _point_environment(self) -> None:
        wanted: dict[str, str | None] = {
            **FAKE_ENVIRONMENT,
            "AWS_ENDPOINT_URL": self.url,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_REGION": self.region,
            **dict.fromkeys(_CLEARED),
        }
        for name, value in wanted.items():
            self._saved_env.setdefault(name, os.environ.get(name))
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value

    def reset(self) -> None:
        """Forget every table and queue (moto's own reset endpoint): a clean run."""
        requests.post(f"{self.url}/moto-api/reset", timeout=10).raise_for_status()

    def stop(self) -> None:
        """Stop the server and restore the environment as it was before ``start()``."""
        if self._server is not None:
            self._server.stop()
            self._server = None
        for name, value in self._saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        self._saved_env.clear()
