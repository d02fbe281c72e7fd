"""The store Protocols (``storage/interfaces.py``): each DynamoDB store and its in-memory fake take exactly what
the Protocol says (names, kinds, defaults, annotations), and the Protocols load nothing at run time.

What the stores *do* is held to the same assertions in ``tests/integration/test_store_contracts.py`` (moto)."""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from forge_remote.jobs.parking import ParkingLot
from forge_remote.storage.installations import InstallationRegistry
from forge_remote.storage.interfaces import Installations, ParkedJobs, Results, Tokens
from forge_remote.storage.results import ResultStore
from forge_remote.testing import MemoryInstallations, MemoryParkingLot, MemoryResults, MemoryTokenStore
from forge_remote.tokens.store import TokenStore

ROOT = Path(__file__).resolve().parents[2]
STORES = [
    (Tokens, TokenStore, MemoryTokenStore),
    (Installations, InstallationRegistry, MemoryInstallations),
    (Results, ResultStore, MemoryResults),
    (ParkedJobs, ParkingLot, MemoryParkingLot),
]


def operations(protocol: type) -> list[str]:
    return [name for name, value in vars(protocol).items() if inspect.isfunction(value) and not name.startswith("_")]


@pytest.mark.parametrize(("protocol", "real", "fake"), STORES, ids=lambda c: c.__name__)
def test_the_store_and_its_fake_take_what_the_protocol_says(protocol: type, real: type, fake: type) -> None:
    names = operations(protocol)
    assert names  # the check below is not vacuous
    mismatched = {
        f"{impl.__name__}.{name}": str(inspect.signature(getattr(impl, name)))
        for name in names
        for impl in (real, fake)
        if inspect.signature(getattr(impl, name)) != inspect.signature(getattr(protocol, name))
    }
    assert mismatched == {}


def test_the_check_sees_a_signature_that_differs() -> None:
    """Control: a method with one more option is told apart, so the cases above are not vacuous."""

    class Drifted(MemoryResults):
        def get(self, installation_id: str, kind: str, key: str, *, consistent: bool = True) -> None:  # type: ignore[override]
            return None

    assert inspect.signature(Drifted.get) != inspect.signature(Results.get)


def test_the_protocols_load_nothing_at_run_time() -> None:
    script = "import json, sys\nimport forge_remote.storage.interfaces\nprint(json.dumps(sorted(sys.modules)))"
    layer = str(ROOT / "layers" / "forge_remote")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([layer, *filter(None, [os.environ.get("PYTHONPATH")])])}
    done = subprocess.run(  # noqa: S603 - this interpreter, a fixed script: no shell, no outside input
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=ROOT, env=env, timeout=60
    )
    loaded = {name for name in json.loads(done.stdout) if name.split(".")[0] in ("forge_remote", "boto3", "botocore")}
    assert loaded == {"forge_remote", "forge_remote.storage", "forge_remote.storage.interfaces"}
