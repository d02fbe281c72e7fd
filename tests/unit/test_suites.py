"""The three suites stay what their names say: every test module is in one that pytest collects, and the
unit suite starts no moto stack and no emulator server."""

from __future__ import annotations

import re
import tomllib

import pytest

from tests.support import ROOT

SUITES = ("unit", "integration", "reliability")
SERVER_FIXTURES = {"forge", "stack", "confluence"}  # every moto or emulator fixture needs one of these


def test_every_test_module_is_in_a_suite_that_pytest_collects() -> None:
    options = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    assert options["testpaths"] == [f"tests/{suite}" for suite in SUITES]
    modules = [path.relative_to(ROOT / "tests") for path in (ROOT / "tests").rglob("test_*.py")]
    assert len(modules) > 20
    assert [str(m) for m in modules if m.parts[0] not in SUITES] == []  # anywhere else, it would never run


def test_unit_tests_use_no_moto_and_no_emulator_server(request: pytest.FixtureRequest) -> None:
    unit = [item for item in request.session.items if item.nodeid.startswith("tests/unit/")]
    assert request.node in unit
    servers = {item.nodeid: sorted(SERVER_FIXTURES & set(getattr(item, "fixturenames", ()))) for item in unit}
    assert {nodeid: found for nodeid, found in servers.items() if found} == {}
    imports_moto = re.compile(r"^\s*(from|import) moto\b", re.MULTILINE)
    sources = {path.name: path.read_text() for path in (ROOT / "tests" / "unit").glob("*.py")}
    assert [name for name, text in sources.items() if imports_moto.search(text)] == []
