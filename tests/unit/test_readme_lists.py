"""The README's lists of the library's sub-packages, its face, the jobs and the routes say what the code has."""

from __future__ import annotations

import re

import forge_remote
from tests.support import ROOT

README = (ROOT / "README.md").read_text(encoding="utf-8")
LIBRARY = ROOT / "layers" / "forge_remote" / "forge_remote"
FUNCTIONS = ROOT / "functions"


def layout_row(path: str) -> str:
    """The "what" cell of the README's "Project layout" row for ``path``."""
    [row] = [line for line in README.splitlines() if line.startswith(f"| `{path}` |")]
    return row.split(" | ", 1)[1]


def backticked(text: str) -> set[str]:
    return set(re.findall(r"`([^`]+)`", text))


def section(title: str) -> str:
    start = README.index(f"## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start : end if end > 0 else None]


def test_the_layout_names_every_sub_package_of_the_library() -> None:
    packages = {p.parent.name for p in LIBRARY.glob("*/__init__.py")}
    named = backticked(layout_row("layers/forge_remote/forge_remote/"))
    assert packages, "the library has no sub-packages"
    assert packages <= named, sorted(packages - named)
    # and names no sub-package that is not there
    assert {n for n in named if re.fullmatch(r"[a-z_]+", n)} - packages == set()


def test_the_face_section_lists_exactly_the_face() -> None:
    listed = {name for name in backticked(section("The library's face")) if re.fullmatch(r"[A-Za-z_]+", name)}
    assert set(forge_remote.__all__) <= listed, sorted(set(forge_remote.__all__) - listed)
    assert listed & set(dir(forge_remote)) == set(forge_remote.__all__)


def test_the_face_loads_every_name_it_exports() -> None:
    for name in forge_remote.__all__:
        assert getattr(forge_remote, name) is not None, name


def test_the_layout_lists_the_jobs_the_worker_registers() -> None:
    names = set()
    for module in (FUNCTIONS / "confluence_worker" / "confluence_jobs").glob("*.py"):
        names |= set(re.findall(r'^@job\("([a-z0-9-]+)"', module.read_text(encoding="utf-8"), re.M))
    listed = backticked(layout_row("functions/confluence_worker/confluence_jobs/"))
    assert names, "no job found in the jobs package"
    assert names == listed, (sorted(names), sorted(listed))


def test_the_layout_lists_the_routes_the_ui_function_serves() -> None:
    served = set()
    for module in (FUNCTIONS / "forge_calls" / "ui_routes").glob("*.py"):
        served |= set(
            re.findall(r'^@router\.\w+\("(/api/[^"<]*?)/?(?:<[^"]*)?"\)', module.read_text(encoding="utf-8"), re.M)
        )
    listed = {name.rstrip("./") for name in backticked(layout_row("functions/forge_calls/ui_routes/"))}
    prefixes = {path.rsplit("/", 1)[0] if path.count("/") > 2 else path for path in served}
    assert served, "no route found in the routes package"
    assert prefixes == listed, (sorted(prefixes), sorted(listed))
