"""A running local stack picks up what the README tells a developer to edit, as a deploy would: a job module
dropped in ``confluence_jobs/``, a route module in ``ui_routes/``, an ``EVENTS`` change, a library change.

Every test runs a ``LocalRuntime`` on a copy of ``functions/`` in ``tmp_path`` (``functions_root``), so it
edits no file of the repository (others may be running the suite on it) and leaves nothing behind even when
it fails. Reloads are asked for with ``reload_changed()``, never waited for; each write moves the file's
mtime whole seconds on, so no snapshot can miss it.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from forge_remote import clock
from forge_remote.jobs.contract import JOBS, JobRequest, send_job_requests
from forge_remote.jobs.worker import WorkerHandler
from local.forge_emulator import Site
from local.job_outcomes import JobOutcome, OutcomeJournal, journal_worker_outcomes
from local.reload import LIBRARY_DIR
from local.runtime import LocalRuntime
from tests.support import ROOT

WORKER, CALLS, TRIGGERS = "ConfluenceWorkerFunction", "ForgeCallsFunction", "ForgeTriggersFunction"
USER = "557058:cccccccc-0000-4000-8000-000000000003"
JOB_FILE = "functions/confluence_worker/confluence_jobs/label_audit.py"
ROUTE_FILE = "functions/forge_calls/ui_routes/labels.py"


def readme_example(first_line: str) -> str:
    """The README's python block whose first line is ``first_line``: what a user copies, as written."""
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(encoding="utf-8"), re.S)
    [found] = [block for block in blocks if block.startswith(first_line + "\n")]
    return str(found)


README_JOB = readme_example(f"# {JOB_FILE}")
README_ROUTE = readme_example(f"# {ROUTE_FILE}")


def write(path: Path, text: str) -> None:
    """Save ``text`` as an editor would (atomically: a watcher never sees half a file), its mtime moved whole
    seconds past the previous one: no snapshot, nor a cached .pyc, can take it for the old file."""
    before = path.stat().st_mtime_ns if path.exists() else 0
    draft = path.with_name(path.name + ".draft")
    draft.write_text(text, encoding="utf-8")
    later = max(draft.stat().st_mtime_ns, before + 2_000_000_000)
    os.utime(draft, ns=(later, later))
    draft.replace(path)


def line_of(source: str, text: str) -> int:
    """The 1-based line of ``source`` that contains ``text``."""
    return next(number for number, line in enumerate(source.splitlines(), 1) if text in line)


@pytest.fixture
def functions_root(tmp_path: Path) -> Path:
    """A copy of the repository's functions (the template's CodeUri folders) under ``tmp_path``."""
    shutil.copytree(ROOT / "functions", tmp_path / "functions", ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path


def assert_process_put_back(root: Path) -> None:
    """After stop(): nothing imported from the copy is left where a later test would find it."""
    copied = str(root)
    assert not [name for name, module in list(sys.modules.items()) if copied in str(getattr(module, "__file__", ""))]
    assert not [entry for entry in sys.path if entry.startswith(copied)]
    assert not [name for name in JOBS.names() if copied in JOBS.get(name).run.__code__.co_filename]
    assert "label-audit" not in JOBS.names()


class Stack:
    """A runtime on the copy, with the job outcomes journal hooked on the worker as ``make local`` does."""

    def __init__(self, rt: LocalRuntime, root: Path, journal: OutcomeJournal) -> None:
        self.rt, self.root, self.journal = rt, root, journal

    def install(self, lifetime_s: float = 3 * 3600) -> tuple[Site, str]:
        site = self.rt.site()
        token = self.rt.forge.app_token(lifetime_s=lifetime_s)
        event = self.rt.forge.installed_event(site)
        response = self.rt.call("POST", "/forge/lifecycle", self.rt.forge.headers(site, app_token=token), event)
        assert response.status_code == 200, response.text
        return site, token

    def run_job(self, site: Site, job: str, args: dict[str, Any] | None = None) -> JobOutcome:
        """A request through the jobs queue, as ``request_job`` sends it, and what the worker did with it."""
        request = JobRequest(job=job, installation_id=site.installation_id, args=args or {})
        send_job_requests(boto3.client("sqs"), self.rt.poller.queue_url, [request])
        self.rt.settle()
        outcome = self.journal.find(request.request_id)
        assert outcome is not None, f"no outcome journaled for {job}"
        return outcome

    def path(self, relative: str) -> Path:
        return self.root / relative

    def modules(self) -> dict[str, Any]:
        return {logical_id: function.module for logical_id, function in self.rt.functions.items()}


@pytest.fixture
def stack(functions_root: Path, tmp_path: Path) -> Iterator[Stack]:
    journal = OutcomeJournal(tmp_path / "jobs.jsonl")
    journal.create()
    with LocalRuntime(functions_root=functions_root, watch_library=False) as rt:
        # serve.py's hook, registered so that it outlives reloads
        rt.on_load(rt.poller.source.function, lambda worker: journal_worker_outcomes(worker, journal))
        yield Stack(rt, functions_root, journal)
    assert_process_put_back(functions_root)


def labelled_pages(stack: Stack) -> list[str]:
    stack.rt.confluence.add_space("DOCS", "Documentation")
    titles = [stack.rt.confluence.add_page("DOCS", f"Audited {n}", labels=["audit"])["title"] for n in range(2)]
    stack.rt.confluence.add_page("DOCS", "Not audited", labels=["draft"])
    return titles


def test_a_new_job_and_a_new_route_are_served_after_a_reload_and_nothing_else_reloads(stack: Stack) -> None:
    rt = stack.rt
    site, app_token = stack.install()
    audited = labelled_pages(stack)
    user_token = rt.forge.app_token(subject=USER)
    headers = rt.forge.headers(site, user_token=user_token, principal=USER, app_token=app_token)
    # What the README's user saw: the running stack knows neither.
    unknown = stack.run_job(site, "label-audit", {"label": "audit"})
    assert (unknown.status, unknown.reason) == ("dead", "unknown job 'label-audit'")
    assert rt.call("GET", "/api/labels/audit/pages", headers).status_code == 404
    before = stack.modules()

    write(stack.path(JOB_FILE), README_JOB)
    write(stack.path(ROUTE_FILE), README_ROUTE)
    assert rt.reload_changed() == [
        f"reloaded {WORKER} ({JOB_FILE} changed)",
        f"reloaded {CALLS} ({ROUTE_FILE} changed)",
    ]
    assert rt.reload_changed() == []  # nothing changed since
    assert {lid for lid, module in stack.modules().items() if module is before[lid]} == set(before) - {WORKER, CALLS}

    done = stack.run_job(site, "label-audit", {"label": "audit"})
    assert (done.status, done.summary["pages"]) == ("done", 2)  # journaled by the hook, on the new worker
    assert len(rt.functions[WORKER].module.worker.observers) == 1  # re-applied once, not piled up
    [record] = rt.results(site.installation_id, "LABEL_AUDIT")
    assert len(record["pages"]) == 2
    answer = rt.call("GET", "/api/labels/audit/pages", headers)
    assert answer.status_code == 200, answer.text
    assert (sorted(answer.json()["titles"]), answer.json()["partial"]) == (sorted(audited), False)


def test_an_events_mapping_change_takes_effect(stack: Stack) -> None:
    rt = stack.rt
    site, token = stack.install()
    rt.confluence.add_space("ENG", "Engineering")
    first, second = (str(rt.confluence.add_page("ENG", title)["id"]) for title in ("First", "Second"))

    def page_created(page_id: str) -> None:
        event = rt.forge.page_event(page_id, "ENG")
        assert rt.call("POST", "/forge/events", rt.forge.headers(site, app_token=token), event).status_code == 202
        rt.settle()

    page_created(first)
    assert [s["pageId"] for s in rt.results(site.installation_id, "SNAPSHOT")] == [first]
    app = stack.path("functions/forge_triggers/app.py")
    source = app.read_text(encoding="utf-8")
    mapping = '"avi:confluence:created:page": "page-snapshot",'
    assert mapping in source
    write(app, source.replace(mapping, '"avi:confluence:created:page": "space-digest",'))
    assert rt.reload_changed() == [f"reloaded {TRIGGERS} (functions/forge_triggers/app.py changed)"]

    page_created(second)
    assert [s["pageId"] for s in rt.results(site.installation_id, "SNAPSHOT")] == [first]  # no snapshot now
    [digest] = rt.results(site.installation_id, "DIGEST")
    assert (digest["spaceKey"], digest["count"]) == ("ENG", 2)


def test_a_module_that_does_not_import_leaves_the_previous_code_running_until_it_is_fixed(stack: Stack) -> None:
    rt = stack.rt
    site, _ = stack.install()
    rt.confluence.add_space("ENG", "Engineering")
    page_id = str(rt.confluence.add_page("ENG", "Release notes")["id"])
    worker = rt.functions[WORKER].module
    job = stack.path(JOB_FILE)
    signature = "def label_audit(ctx: JobContext, label: str) -> JobResult:"

    broken = README_JOB.replace(signature, signature.rstrip(":"))
    write(job, broken)
    [line] = rt.reload_changed()
    assert line == (
        f"{WORKER} not reloaded (its previous code still runs): "
        f"{JOB_FILE}:{line_of(broken, 'def label_audit')}: SyntaxError: expected ':'"
    )
    assert rt.functions[WORKER].module is worker
    assert stack.run_job(site, "page-snapshot", {"pageId": page_id}).status == "done"  # the old code serves
    assert rt.reload_changed() == []  # said once, not at every look

    missing = README_JOB.replace("cql, job\n", "cql, job, no_such_name\n")
    write(job, missing)
    [line] = rt.reload_changed()
    assert line.startswith(
        f"{WORKER} not reloaded (its previous code still runs): "
        f"{JOB_FILE}:{line_of(missing, 'no_such_name')}: ImportError: cannot import name 'no_such_name' from 'forge_remote'"
    )
    assert "Traceback" not in line
    assert rt.functions[WORKER].module is worker

    write(job, README_JOB)
    assert rt.reload_changed() == [f"reloaded {WORKER} ({JOB_FILE} changed)"]
    labelled_pages(stack)
    assert stack.run_job(site, "label-audit", {"label": "audit"}).status == "done"
    assert stack.run_job(site, "page-snapshot", {"pageId": page_id}).status == "done"


def test_the_registered_jobs_are_those_of_the_files_neither_stale_nor_twice(stack: Stack) -> None:
    rt = stack.rt
    site, _ = stack.install()
    labelled_pages(stack)
    job, copy = stack.path(JOB_FILE), stack.path(JOB_FILE.replace("label_audit", "label_audit_copy"))
    write(job, README_JOB)
    assert rt.reload_changed() == [f"reloaded {WORKER} ({JOB_FILE} changed)"]

    # A second module registering the same name is a mistake: reported, and the registry stays as it was.
    write(copy, README_JOB)
    [line] = rt.reload_changed()
    decorator = line_of(README_JOB, '@job("label-audit"')
    copy_file = JOB_FILE.replace("label_audit", "label_audit_copy")
    assert line == (
        f"{WORKER} not reloaded (its previous code still runs): "
        f"{copy_file}:{decorator}: ValueError: job 'label-audit' is already registered"
    )
    registry = rt.functions[WORKER].module.runner.registry
    assert registry.get("label-audit").run.__module__ == "confluence_jobs.label_audit"
    assert stack.run_job(site, "label-audit", {"label": "audit"}).status == "done"

    # The job edited (moved down its file: another function to the registry) and the copy removed: one reload.
    copy.unlink()
    write(job, "# audited labels\n\n" + README_JOB)
    assert rt.reload_changed() == [f"reloaded {WORKER} ({JOB_FILE}, {copy_file} changed)"]
    assert stack.run_job(site, "label-audit", {"label": "audit"}).status == "done"

    job.unlink()  # a removed job is gone from the running worker too
    assert rt.reload_changed() == [f"reloaded {WORKER} ({JOB_FILE} changed)"]
    assert "label-audit" not in rt.functions[WORKER].module.runner.registry.names()
    gone = stack.run_job(site, "label-audit", {"label": "audit"})
    assert (gone.status, gone.reason) == ("dead", "unknown job 'label-audit'")


def test_a_library_change_reloads_every_function_and_the_stack_keeps_its_clock(
    functions_root: Path, tmp_path: Path
) -> None:
    journal = OutcomeJournal(tmp_path / "jobs.jsonl")
    journal.create()
    original_worker_module = sys.modules["forge_remote.jobs.worker"]
    refusing = threading.Event()
    refusing.set()
    with LocalRuntime(functions_root=functions_root) as rt:
        stack = Stack(rt, functions_root, journal)
        rt.on_load(WORKER, lambda worker: journal_worker_outcomes(worker, journal))
        loaded_calls = rt.functions[CALLS].module

        def refuse(handler: Any) -> None:
            if refusing.is_set() and handler is not loaded_calls:
                raise RuntimeError("refused by the test")

        rt.on_load(CALLS, refuse)
        site, app_token = stack.install(lifetime_s=3 * 3600)
        rt.confluence.add_space("ENG", "Engineering")
        page_id = str(rt.confluence.add_page("ENG", "Release notes")["id"])
        rt.advance(2 * 3600)  # the stack's clock: the token has one hour left
        moved_to = clock.now()
        before = stack.modules()
        library_file = LIBRARY_DIR / "jobs" / "worker.py"

        # As if the library file had been saved: the test edits nothing in the repository.
        rt._watcher.snapshot[library_file] = (0, 0)  # type: ignore[union-attr]
        [line] = rt.reload_changed()
        assert line.startswith(f"{CALLS} not reloaded, nor any other function (the library changed; ")
        assert line.endswith("RuntimeError: refused by the test")
        assert all(stack.modules()[lid] is before[lid] for lid in before)  # all or none
        assert sys.modules["forge_remote.jobs.worker"] is original_worker_module
        assert rt.reload_changed() == []

        refusing.clear()
        rt._watcher.snapshot[library_file] = (0, 0)  # type: ignore[union-attr]
        rt._watcher.snapshot[LIBRARY_DIR / "clock.py"] = (0, 0)  # type: ignore[union-attr]
        *lines, kept = rt.reload_changed()
        assert [line.split(" (")[0] for line in lines] == [f"reloaded {lid}" for lid in sorted(before)]
        assert all("layers/forge_remote/forge_remote/jobs/worker.py" in line for line in lines)
        assert kept == (
            "layers/forge_remote/forge_remote/clock.py is not reloaded (its state is the whole stack's): "
            "restart the stack to use it"
        )
        assert not [lid for lid in before if rt.functions[lid].module is before[lid]]
        worker = rt.functions[WORKER].module
        assert type(worker) is not WorkerHandler  # the library's modules were imported afresh...
        assert type(worker).__module__ == "forge_remote.jobs.worker"
        assert sys.modules["forge_remote.clock"] is clock  # ...but for the stack's clock
        assert clock.now() >= moved_to

        # The new code runs on the stack's clock: the token is good for an hour, then expired.
        assert stack.run_job(site, "page-snapshot", {"pageId": page_id}).status == "done"
        rt.advance(2 * 3600)
        assert stack.run_job(site, "page-snapshot", {"pageId": page_id}).status == "deferred"
        headers = rt.forge.headers(site, app_token=app_token, principal=USER)
        assert rt.call("GET", "/api/status", headers).status_code == 200
    assert sys.modules["forge_remote.jobs.worker"] is original_worker_module  # stop() put the library back
    assert sys.modules["forge_remote"].jobs.worker is original_worker_module
    assert_process_put_back(functions_root)


def test_the_watcher_thread_reloads_in_the_background_and_stops_with_the_stack(functions_root: Path) -> None:
    reported: queue.Queue[str] = queue.Queue()
    with LocalRuntime(functions_root=functions_root, watch_library=False) as rt:
        rt.start_watching(interval_s=0.01, notify=reported.put)
        with pytest.raises(RuntimeError, match="already watching"):
            rt.start_watching()
        write(functions_root / ROUTE_FILE, README_ROUTE)
        assert reported.get(timeout=60) == f"reloaded {CALLS} ({ROUTE_FILE} changed)"
        assert any(thread.name == "local-reload" for thread in threading.enumerate())
    assert not any(thread.name == "local-reload" for thread in threading.enumerate())
    assert_process_put_back(functions_root)


def test_a_changed_route_module_is_read_again(stack: Stack) -> None:
    """Not only new modules: an edited one is imported afresh too (no stale module, no stale bytecode)."""
    rt = stack.rt
    site, app_token = stack.install()
    headers = rt.forge.headers(site, app_token=app_token, principal=USER)
    route = stack.path(ROUTE_FILE)
    write(
        route,
        'from forge_remote import Router\n\nrouter = Router()\n\n\n@router.get("/api/hello")\ndef hello() -> dict[str, str]:\n    return {"hello": "one"}\n',
    )
    rt.reload_changed()
    assert rt.call("GET", "/api/hello", headers).json() == {"hello": "one"}
    write(route, route.read_text(encoding="utf-8").replace('"one"', '"two"'))  # the same size
    assert rt.reload_changed() == [f"reloaded {CALLS} ({ROUTE_FILE} changed)"]
    assert rt.call("GET", "/api/hello", headers).json() == {"hello": "two"}
    assert json.loads(rt.call("GET", "/api/status", headers).text)["installationId"] == site.installation_id
