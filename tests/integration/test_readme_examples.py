"""The README's "Write your own job" and "Write your own route" examples, run as written on the local
stack (moto, the Forge emulator, the Confluence emulator): a user copying them gets working code.

Each example is taken from the README's code block (the one headed by its file name), loaded the way
its package would load it, and exercised end to end.
"""

from __future__ import annotations

import json
import re
import sys
import types

import pytest

from forge_remote.jobs.contract import JobRequest
from tests.support import ROOT, LocalWorld

README = ROOT / "README.md"
USER = "557058:cccccccc-0000-4000-8000-000000000003"


def readme_example(first_line: str) -> str:
    """The README's python block whose first line is ``first_line`` (a comment naming the file)."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    found = [block for block in blocks if block.startswith(first_line + "\n")]
    assert len(found) == 1, f"README has {len(found)} python blocks starting with {first_line!r}"
    return found[0]


def load_example(module_name: str, source: str) -> types.ModuleType:
    module = types.ModuleType(module_name)
    module.__file__ = module_name.replace(".", "/") + ".py"
    sys.modules[module_name] = module
    exec(compile(source, module.__file__, "exec"), module.__dict__)  # noqa: S102 (the README's own code)
    return module


@pytest.fixture
def labelled(local_world: LocalWorld) -> list[str]:
    """A space with two pages labelled ``audit`` and one that is not, on the world's installed site."""
    local_world.install()
    confluence = local_world.confluence
    confluence.add_space("DOCS", "Documentation")
    audited = [confluence.add_page("DOCS", f"Audited {n}", labels=["audit"])["title"] for n in range(2)]
    confluence.add_page("DOCS", "Not audited", labels=["draft"])
    return audited


@pytest.mark.parametrize(
    "first_line",
    [
        "# functions/confluence_worker/confluence_jobs/label_audit.py",
        "# functions/forge_calls/ui_routes/labels.py",
        "# functions/forge_triggers/app.py",
    ],
)
def test_a_readme_example_imports_only_the_library_face(first_line: str) -> None:
    """What a team copies from the README is written with ``forge_remote``'s public names alone."""
    import forge_remote

    source = readme_example(first_line)
    imports = re.findall(r"^from (\S+) import (.+)$", source, re.M)
    library = [(module, names) for module, names in imports if module.startswith("forge_remote")]
    assert library, "the example imports nothing from the library"
    for module, names in library:
        assert module == "forge_remote", f"{first_line} imports from {module}, not the face"
        for name in (n.strip() for n in names.split(",")):
            assert name in forge_remote.__all__, f"{name} is not in forge_remote.__all__"


def test_the_readme_job_example_runs(local_world: LocalWorld, labelled: list[str]) -> None:
    from forge_remote.jobs.contract import JOBS

    module = load_example(
        "confluence_jobs.label_audit", readme_example("# functions/confluence_worker/confluence_jobs/label_audit.py")
    )
    try:
        assert "label-audit" in JOBS.names()
        request = JobRequest(
            job="label-audit", installation_id=local_world.site.installation_id, args={"label": "audit"}
        )
        local_world.enqueue(request)
        local_world.drain()
        [record] = local_world.results("LABEL_AUDIT")
        pages = {page["id"]: page["title"] for page in local_world.confluence.pages.values()}
        assert sorted(pages[int(page_id)] for page_id in record["pages"]) == sorted(labelled)
        assert local_world.queue_count() == 0
    finally:
        JOBS._jobs.pop("label-audit", None)
        sys.modules.pop(module.__name__, None)


def test_the_readme_route_example_runs(local_world: LocalWorld, labelled: list[str]) -> None:
    module = load_example("ui_routes.labels", readme_example("# functions/forge_calls/ui_routes/labels.py"))
    try:
        local_world.calls.app.include_router(module.router)  # what ui_routes/__init__.py does for every module
        user_token = local_world.forge.app_token(subject=USER)
        headers = local_world.forge.headers(local_world.site, user_token=user_token, principal=USER)
        response = local_world.send("GET", "/api/labels/audit/pages", headers)
        assert response["statusCode"] == 200, response
        body = json.loads(response["body"])
        assert sorted(body["titles"]) == sorted(labelled)
        assert body["partial"] is False
        assert set(local_world.bearer_tokens_seen()) == {user_token}  # as the user
        without_user = local_world.forge.headers(local_world.site, principal=USER)
        assert local_world.send("GET", "/api/labels/audit/pages", without_user)["statusCode"] == 403
    finally:
        sys.modules.pop(module.__name__, None)
