"""Storage stands on its own ground floor: the stores (and the keys they share) load no FIT code.

Each module is imported in a fresh interpreter, since this one has long imported everything; what the
import pulled in is read from ``sys.modules`` there.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.support import ROOT

LAYER = ROOT / "layers" / "forge_remote"
STORAGE_MODULES = [
    "forge_remote.storage.table_keys",
    "forge_remote.tokens.store",
    "forge_remote.storage.installations",
    "forge_remote.storage.results",
]
FORBIDDEN = ["forge_remote.forge.invocations", "jwt"]  # the FIT verifier and the JWT library it needs


def modules_loaded_by(module: str) -> set[str]:
    script = f"import json, sys\nimport {module}\nprint(json.dumps(sorted(sys.modules)))"
    paths = [str(LAYER), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    done = subprocess.run(  # noqa: S603 - this interpreter, a fixed script: no shell, no outside input
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=ROOT, env=env, timeout=60
    )
    return set(json.loads(done.stdout))


@pytest.mark.parametrize("module", STORAGE_MODULES)
def test_a_storage_module_imports_no_fit_code(module: str) -> None:
    loaded = modules_loaded_by(module)
    assert module in loaded  # the import really happened, from the layer
    assert loaded.isdisjoint(FORBIDDEN), sorted(loaded & set(FORBIDDEN))


def test_the_check_sees_fit_code_where_it_is() -> None:
    """Control: the same check does see the FIT verifier's imports, so the cases above are not vacuous."""
    assert set(FORBIDDEN) <= modules_loaded_by("forge_remote.inbound.wiring")
