"""The Lambda artifacts exactly as ``sam build`` makes them, for any architecture: ``packaging/Makefile``'s targets
run the way SAM's makefile builder runs them (a copy of each resource's code folder as the working directory,
``ARTIFACTS_DIR`` set). The bench measures cold starts on them and CI runs them under Lambda's own runtime
interface client, so both see what ships, not the dev venv.

On this x86_64 machine the arm64 artifact cannot be imported (cryptography's native module), so both build
``arch="x86_64"``: the same lock, the same files, the other platform's wheels.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from local.cfn_yaml import load_template

ROOT = Path(__file__).resolve().parents[1]
MAKEFILE = ROOT / "packaging" / "Makefile"
LAYER_ID = "ForgeRemoteLayer"
RUNTIME = (3, 12)  # the template's Runtime: python3.12


@dataclass(frozen=True)
class Artifacts:
    """One build: the layer's folder (its ``python/`` is ``/opt/python``) and each function's (``/var/task``)."""

    layer: Path
    functions: dict[str, Path]  # logical id -> folder
    python: str  # the interpreter that compiled them (the runtime's minor version)


def runtime_python() -> str:
    """A Python of the Lambda runtime's minor version: the .pyc it writes must match the runtime's."""
    wanted = f"{RUNTIME[0]}.{RUNTIME[1]}"
    candidates = [sys.executable, shutil.which(f"python{wanted}") or ""]
    candidates += sorted(glob.glob(os.path.expanduser(f"~/.pyenv/versions/{wanted}*/bin/python3")), reverse=True)
    for candidate in filter(None, candidates):
        probe = [candidate, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"]
        done = subprocess.run(probe, capture_output=True, text=True, check=False)  # noqa: S603
        if done.returncode == 0 and done.stdout.strip() == wanted:
            return candidate
    raise RuntimeError(f"no python{wanted} found (PATH or pyenv): the Lambda runtime is python{wanted}")


def code_folders(template_path: Path = ROOT / "template.yaml") -> dict[str, Path]:
    """Logical id -> code folder of the layer and every function, as the template says."""
    resources = load_template(template_path)["Resources"]
    folders: dict[str, Path] = {}
    for logical_id, resource in resources.items():
        props = resource.get("Properties", {})
        if resource["Type"] == "AWS::Serverless::Function":
            folders[logical_id] = ROOT / props["CodeUri"]
        elif resource["Type"] == "AWS::Serverless::LayerVersion":
            folders[logical_id] = ROOT / props["ContentUri"]
    return folders


def build_one(logical_id: str, source: Path, target: Path, *, arch: str, bytecode: bool, python: str) -> Path:
    """``make build-<logical_id>`` in a copy of ``source``, as SAM runs it; returns the artifact folder."""
    scratch = target / ".scratch" / logical_id
    shutil.rmtree(scratch, ignore_errors=True)
    shutil.copytree(source, scratch, ignore=shutil.ignore_patterns("__pycache__", ".aws-sam", ".git"))
    artifact = target / logical_id
    shutil.rmtree(artifact, ignore_errors=True)
    artifact.mkdir(parents=True)
    argv = ["make", "--no-print-directory", "-f", str(MAKEFILE), f"build-{logical_id}"]
    argv += [f"ARTIFACTS_DIR={artifact}", f"ARCH={arch}", f"BYTECODE={'yes' if bytecode else 'no'}", f"PYTHON={python}"]
    done = subprocess.run(argv, cwd=scratch, capture_output=True, text=True, check=False)  # noqa: S603
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-8:])
        raise RuntimeError(f"make build-{logical_id} failed:\n{tail}")
    shutil.rmtree(scratch)
    return artifact


def build(target: Path, *, arch: str = "x86_64", bytecode: bool = True, python: str | None = None) -> Artifacts:
    """The layer and every function of the template, built into ``target`` (replaced if there)."""
    python = python or runtime_python()
    folders = code_folders()
    layer = build_one(LAYER_ID, folders.pop(LAYER_ID), target, arch=arch, bytecode=bytecode, python=python)
    functions = {
        logical_id: build_one(logical_id, source, target, arch=arch, bytecode=bytecode, python=python)
        for logical_id, source in folders.items()
    }
    shutil.rmtree(target / ".scratch", ignore_errors=True)
    return Artifacts(layer=layer, functions=functions, python=python)


def read_only(path: Path) -> None:
    """Files and folders without write bits, as Lambda's /var/task and /opt (root ignores them: run with -B)."""
    for folder, _dirs, files in os.walk(path):
        for name in files:
            os.chmod(os.path.join(folder, name), 0o444)
        os.chmod(folder, 0o555)  # noqa: S103 (Lambda's own mode for /var/task: readable, never writable)


def writable(path: Path) -> None:
    """Undo ``read_only`` so the folder can be removed."""
    for folder, _dirs, files in os.walk(path):
        os.chmod(folder, 0o700)
        for name in files:
            os.chmod(os.path.join(folder, name), 0o600)
