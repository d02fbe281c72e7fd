"""The runtime lock and how it ships: every package of the functions' tree pinned with its files' hashes
(``layers/forge_remote/requirements.txt``, made by ``make lock`` from ``requirements.in``), installed with
``--require-hashes`` by the SAM build (``packaging/Makefile``) and by the dev venv, which the tests run in."""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

import pytest

from local.cfn_yaml import load_template
from local.stack import TEMPLATE
from tests.support import ROOT

LAYER = ROOT / "layers" / "forge_remote"
PIN = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==(?P<version>[^\s;\\]+)")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirements(path: Path) -> dict[str, tuple[str, list[str]]]:
    """name -> (version, hashes) of every requirement in a pip requirements file (continuations joined)."""
    joined = re.sub(r"\\\n", " ", path.read_text(encoding="utf-8"))
    found: dict[str, tuple[str, list[str]]] = {}
    for raw in joined.splitlines():
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        match = PIN.match(line)
        assert match, f"{path.name}: not pinned with ==: {line[:80]}"
        name = canonical(match["name"])
        assert name not in found, f"{path.name}: {name} twice"
        found[name] = (match["version"], re.findall(r"--hash=sha256:([0-9a-f]{64})", line))
    return found


LOCK = requirements(LAYER / "requirements.txt")
CHOSEN = requirements(LAYER / "requirements.in")


def test_the_lock_holds_the_whole_tree_each_package_with_hashes() -> None:
    assert len(LOCK) > len(CHOSEN)  # the dependencies of the chosen packages are pinned too
    assert [name for name, (_, hashes) in LOCK.items() if not hashes] == []
    # FIT verification rests on these: they must be locked, not float.
    assert {"cryptography", "cffi", "urllib3", "certifi"} <= set(LOCK)


def test_every_chosen_package_is_locked_at_its_chosen_version() -> None:
    assert {name: version for name, (version, _) in CHOSEN.items()} == {
        name: LOCK[name][0] for name in CHOSEN if name in LOCK
    }
    assert set(CHOSEN) <= set(LOCK)


@pytest.mark.parametrize("name", sorted(LOCK))
def test_the_dev_venv_runs_the_locked_versions(name: str) -> None:
    """The tests run what ships: no test-only requirement may move a locked package."""
    assert metadata.version(name) == LOCK[name][0]


def test_the_layer_and_every_function_are_built_by_packaging_makefile() -> None:
    makefile = (ROOT / "packaging" / "Makefile").read_text(encoding="utf-8")
    targets = set(re.findall(r"^([\w-]+(?: [\w-]+)*):", makefile, flags=re.MULTILINE))
    named = {t for line in targets for t in line.split()}
    built = {
        lid: resource
        for lid, resource in load_template(TEMPLATE)["Resources"].items()
        if resource["Type"] in ("AWS::Serverless::Function", "AWS::Serverless::LayerVersion")
    }
    assert len(built) == 6
    for lid, resource in built.items():
        meta = resource.get("Metadata", {})
        assert (meta.get("BuildMethod"), meta.get("ContextPath")) == ("makefile", "packaging"), lid
        assert f"build-{lid}" in named, lid
    layer_meta = built["ForgeRemoteLayer"]["Metadata"]
    assert (
        layer_meta["BuildArchitecture"]
        == "arm64"
        == built["ForgeRemoteLayer"]["Properties"]["CompatibleArchitectures"][0]
    )


def test_the_layer_build_installs_the_lock_with_hashes_and_compiles_it() -> None:
    makefile = (ROOT / "packaging" / "Makefile").read_text(encoding="utf-8")
    recipe = makefile.split("build-ForgeRemoteLayer:", 1)[1].split("\n\n", 1)[0]
    for flag in (
        "--require-hashes",
        "--no-deps",
        "--only-binary=:all:",
        "--python-version 3.12",
        "-r requirements.txt",
    ):
        assert flag in recipe, flag
    assert "compile" in recipe
    assert "PYTHON ?= python3.12" in makefile
