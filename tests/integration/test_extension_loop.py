"""The extension loop, as the README tells a team to live in it: with ``make local`` running, add the
README's job, route and product-event mapping (its code blocks, written where their first lines say),
see the stack load each one without a restart, run the README's own commands for them, then uninstall
and install again (a new installation id) and run the job once more.

The stack is a real ``python -m local.serve`` process started in a copy of the repository (the
README's files are written there, never into this checkout), on ports of the kernel's choice. The
commands are taken from the README's text and run as typed, with the copy's state file appended
(a stack on another port than 8787 has its own, as its banner says).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.test_readme_examples import readme_example
from tests.serve_process import ServeProcess
from tests.support import ROOT

README = ROOT / "README.md"
COPY_IGNORED = shutil.ignore_patterns(
    ".git", ".venv", ".venv-*", ".cache", "node_modules", ".aws-sam", "__pycache__", ".*_cache", ".hypothesis"
)
JOB_FILE = "functions/confluence_worker/confluence_jobs/label_audit.py"
ROUTE_FILE = "functions/forge_calls/ui_routes/labels.py"
EVENTS_FILE = "functions/forge_triggers/app.py"


def readme_command(*words: str) -> str:
    """The one ``forge_cli`` command of the README (in a code block or inline) holding all ``words``."""
    text = README.read_text(encoding="utf-8")
    commands: set[str] = set(re.findall(r"\.venv/bin/python -m local\.forge_cli [^`\n#]+", text))
    found = sorted(c.strip() for c in commands if all(word in c for word in words))
    assert len(found) == 1, f"README commands with {words}: {found}"
    return found[0]


class Stack(ServeProcess):
    """``python -m local.serve`` in ``root`` as ``make local`` runs it, on ports of the kernel's choice."""

    def __init__(self, root: Path) -> None:
        args = ("--port", "0", "--ui-port", "0", "--poll-interval", "0.2")
        super().__init__(*args, cwd=root, python=(".venv/bin/python",))
        self.root = root
        banner = self.wait_for(lambda line: line.startswith("Act as Forge"), timeout=180)
        found = re.search(r"\(state: (.+)\):$", banner)
        assert found, banner
        self.state_file = Path(found.group(1))

    def run(self, command: str) -> str:
        """A README command as typed in the copy's root, for this stack; its output (exit 0 asserted)."""
        argv = [*shlex.split(command), "--state-file", str(self.state_file)]
        result = subprocess.run(argv, cwd=self.root, capture_output=True, text=True, timeout=120, check=False)  # noqa: S603
        assert result.returncode == 0, f"{command}\n{result.stdout}\n{result.stderr}"
        return result.stdout

    def write(self, relative: str, source: str) -> None:
        """A file saved as an editor saves it; its mtime moved on so that no snapshot can miss it."""
        path = self.root / relative
        path.write_text(source, encoding="utf-8")
        later = time.time() + 2
        os.utime(path, (later, later))


@pytest.fixture
def repository_copy(tmp_path: Path) -> Path:
    """This checkout's files without its caches; the venv and the status page's node_modules linked."""
    from local.ui_dev import APP_DIR, build_dev_bundle

    build_dev_bundle(tmp_path / "bundle.js")  # installs forge-app/node_modules here once, if missing
    copy = tmp_path / "repo"
    shutil.copytree(ROOT, copy, ignore=COPY_IGNORED)
    (copy / ".venv").symlink_to(ROOT / ".venv")
    (copy / "forge-app" / "node_modules").symlink_to(APP_DIR / "node_modules")
    return copy


@pytest.fixture
def stack(repository_copy: Path) -> Iterator[Stack]:
    running = Stack(repository_copy)
    try:
        yield running
    finally:
        running.stop()


def test_a_job_a_route_and_an_event_added_as_the_readme_says_work_without_a_restart(stack: Stack) -> None:
    assert "HTTP 200" in stack.run(readme_command("forge_cli install"))

    # The job: unknown until saved, then loaded by the running stack and done by the README's command.
    job_command = readme_command("job label-audit")
    stack.write(JOB_FILE, readme_example(f"# {JOB_FILE}"))
    stack.wait_for(f"reloaded ConfluenceWorkerFunction ({JOB_FILE} changed)")
    out = stack.run(job_command)
    assert re.search(r'^done: \{"pages": 4, ', out, re.M), out  # the seeded site's four pages labelled audit
    assert "stored result (LABEL_AUDIT, 1 record)" in out

    # The route: called as the signed-in user, who may not see the restricted one of the four.
    stack.write(ROUTE_FILE, readme_example(f"# {ROUTE_FILE}"))
    stack.wait_for(f"reloaded ForgeCallsFunction ({ROUTE_FILE} changed)")
    out = stack.run(readme_command("call GET /api/labels/audit/pages"))
    assert "-> HTTP 200" in out, out
    assert '"partial": false' in out
    assert len(re.findall(r'^    "[^"]+",?$', out, re.M)) == 3, out

    # The product event: the new mapping requests the label audit.
    stack.write(EVENTS_FILE, readme_example(f"# {EVENTS_FILE}"))
    stack.wait_for(f"reloaded ForgeTriggersFunction ({EVENTS_FILE} changed)")
    out = stack.run(readme_command("event avi:confluence:added:label", "--wait"))
    assert '"jobs": 1' in out, out
    assert re.search(r'^done: \{"pages": 4, ', out, re.M), out

    # Uninstall, then install again: a new installation id, for which the new job runs too.
    before = re.search(r"requested for (\S+) ", stack.run(job_command))
    assert before
    assert '"installation": "uninstalled"' in stack.run(readme_command("forge_cli uninstall"))
    reinstalled = stack.run(readme_command("forge_cli install"))
    assert '"installation": "active"' in reinstalled, reinstalled
    out = stack.run(job_command)
    after = re.search(r"requested for (\S+) ", out)
    assert after
    assert after.group(1) != before.group(1)
    assert re.search(r'^done: \{"pages": 4, ', out, re.M), out


def test_a_saved_file_that_does_not_import_keeps_the_stack_on_its_previous_code(stack: Stack) -> None:
    stack.run(readme_command("forge_cli install"))
    stack.write(JOB_FILE, readme_example(f"# {JOB_FILE}").replace("def label_audit(", "def label_audit(("))
    line = stack.wait_for("ConfluenceWorkerFunction not reloaded")
    assert f"{JOB_FILE}:" in line
    assert "SyntaxError" in line
    out = stack.run(readme_command("job page-snapshot"))  # the worker still runs its previous code
    assert out.splitlines()[1].startswith("done: ")
    stack.write(JOB_FILE, readme_example(f"# {JOB_FILE}"))
    stack.wait_for(f"reloaded ConfluenceWorkerFunction ({JOB_FILE} changed)")
    assert re.search(r'^done: \{"pages": 4, ', stack.run(readme_command("job label-audit")), re.M)
