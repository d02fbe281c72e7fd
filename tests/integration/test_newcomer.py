"""What a new user runs first, run the way they run it: the ``make local`` banner's commands as printed,
``make`` and ``make help``, ``forge_cli --help``, ``forge_cli job``, and a job module dropped into
``confluence_jobs/`` without editing an import list. Loopback only."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import requests

from forge_remote.config import PRODUCTION_JWKS_URL
from forge_remote.jobs.contract import JobRequest, send_job_requests
from local import forge_cli, serve
from local.job_outcomes import JobOutcome, OutcomeJournal
from local.runtime import LocalRuntime
from tests.serve_process import ServeProcess
from tests.support import ROOT

JOBS_PACKAGE = ROOT / "functions" / "confluence_worker" / "confluence_jobs"
LAYER = ROOT / "layers" / "forge_remote"
VENV_PYTHON = ROOT / ".venv" / "bin" / "python"
MAKE_TARGETS = ("demo", "test", "local", "bench", "build", "sam-validate", "format", "clean", "lint", "unit", "help")
RST_MARKUP = re.compile(r"``|:(func|class|mod|meth|attr|data|exc|obj|ref):`")
SHIPPED_JOBS = {"page-snapshot", "personal-data-report", "space-digest", "user-digest"}


# Port 0: the kernel's choice. A developer's own `make local` may hold the defaults while the suite runs.
ANY_PORTS = ("--port", "0", "--ui-port", "0")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def new_user_env() -> dict[str, str]:
    """A shell as a new user has it: no virtualenv active, so a bare ``python`` lacks the dependencies."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    venv_bins = {str(Path(sys.prefix) / "bin"), str(ROOT / ".venv" / "bin")}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p not in venv_bins)
    env["COLUMNS"] = "80"
    return env


def run(command: str | list[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run as typed in a terminal at the repository root (a string goes through bash, quotes and all)."""
    argv = ["bash", "-c", command] if isinstance(command, str) else command
    return subprocess.run(  # noqa: S603
        argv, cwd=ROOT, env=new_user_env(), capture_output=True, text=True, timeout=timeout, check=False
    )


class Serve(ServeProcess):
    """``python -m local.serve`` at the repository root, as the README's newcomer starts it."""

    def __init__(self, *args: str) -> None:
        super().__init__(*args, cwd=ROOT)


# -- 1. the make local banner
def banner_commands(lines: list[str]) -> list[str]:
    return [line.strip() for line in lines if "-m local.forge_cli" in line]


def test_every_command_the_banner_prints_works_as_printed(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    stack = Serve(*ANY_PORTS, "--state-file", str(state))
    try:
        lines = stack.banner()
        commands = banner_commands(lines)
        assert len(commands) >= 8, lines  # five Forge calls, two jobs, --help
        for command in commands:
            interpreter = command.split()[0]
            assert interpreter != "python", command  # the system python has no jwt, requests, boto3
            assert (ROOT / interpreter).exists(), command
            assert f"--state-file {state}" in command or "--help" in command  # a non-default state file is passed on
        if Path(sys.executable).absolute() == VENV_PYTHON:  # make local, make test: the repository's venv
            assert {c.split()[0] for c in commands} == {".venv/bin/python"}

        # Top to bottom, as a new user would: each one works, none needs anything the shell lacks.
        outputs = {}
        for command in commands:
            result = run(command)
            assert result.returncode == 0, f"{command}\n{result.stdout}{result.stderr}"
            assert "No module named" not in result.stderr
            outputs[command] = result.stdout
        snapshot = next(out for cmd, out in outputs.items() if " job page-snapshot " in cmd)
        assert "done: " in snapshot
        assert "stored result (SNAPSHOT, 1 record)" in snapshot
        digest = next(out for cmd, out in outputs.items() if " job space-digest " in cmd)
        assert "stored result (DIGEST, 2 records)" in digest  # the seeded site: ENG and PROD changed today
        assert '"spaceKey": "ENG"' in digest
        assert not any("eyJ" in out for out in outputs.values())  # no FIT or token printed
    finally:
        output = stack.stop()
    assert stack.process.returncode == 0, output
    assert not state.exists()
    assert not serve.journal_path(state).exists()  # the outcomes journal goes with the state file


def test_the_production_banner_lists_no_confluence_emulator_and_no_emulator_cli(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    stack = Serve(
        *ANY_PORTS,
        "--state-file",
        str(state),
        "--jwks",
        "production",
        "--app-id",
        "0f1e2d3c-4b5a-4987-8654-3210fedcba98",
    )
    try:
        text = "\n".join(stack.banner())
        assert not state.exists()  # no dev key to share with Atlassian's FITs
    finally:
        stack.stop()
    assert "Confluence emulator" not in text
    assert "/ex/confluence/" not in text  # nor its URL under another label
    assert "local.forge_cli" not in text
    assert PRODUCTION_JWKS_URL in text
    assert "tokens may be sent to" in text
    assert "api.atlassian.com" in text


def held_port() -> socket.socket:
    """A listening socket on a port of the kernel's choice: "another program" holding that port."""
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    return holder


def banner_url(lines: list[str], label: str) -> str:
    line = next(line for line in lines if line.strip().startswith(label))
    match = re.search(r"http://127\.0\.0\.1:(\d+)\S*", line)
    assert match, line
    return match.group(0)


def test_a_taken_status_page_port_falls_back_to_a_free_one(tmp_path: Path) -> None:
    with held_port() as holder:
        taken = holder.getsockname()[1]
        stack = Serve("--port", "0", "--ui-port", str(taken), "--state-file", str(tmp_path / "state.json"))
        try:
            lines = stack.banner()
            page = banner_url(lines, "Token status page")
            assert f":{taken}/" not in page
            assert requests.get(page, timeout=30).status_code == 200  # the page is served on the port it names
        finally:
            output = stack.stop()
    assert stack.process.returncode == 0, output
    assert "in use by another program" not in output  # werkzeug's exit hint: the fallback is silent


def test_a_taken_gateway_port_is_a_clear_error_that_leaves_the_other_stacks_files_alone(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    state.write_text('{"gatewayUrl": "the other stack\'s"}', encoding="utf-8")
    journal = serve.journal_path(state)
    journal.write_text("the other stack's outcomes\n", encoding="utf-8")
    with held_port() as holder:
        taken = holder.getsockname()[1]
        result = subprocess.run(  # noqa: S603
            [sys.executable, "-m", "local.serve", "--port", str(taken), "--ui-port", "0", "--state-file", str(state)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"port {taken} on 127.0.0.1 is in use by another program" in result.stderr
    assert "make local ARGS='--port" in result.stderr
    assert "Traceback" not in result.stderr
    assert state.read_text(encoding="utf-8") == '{"gatewayUrl": "the other stack\'s"}'
    assert journal.read_text(encoding="utf-8") == "the other stack's outcomes\n"


def port_is_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_the_default_ports_are_used_when_free_and_never_required(tmp_path: Path) -> None:
    """``make local`` with no arguments: the gateway on 8787 and the page on 8788 when nobody holds them.
    When a developer's own stack holds them (the suite beside ``make local``), what a second plain
    ``make local`` does instead is checked: a clear error for the gateway, a free port for the page."""
    defaults = serve.parse_args([])
    assert (defaults.port, defaults.ui_port) == (8787, 8788)
    gateway_free, page_free = port_is_free(defaults.port), port_is_free(defaults.ui_port)
    stack = Serve("--state-file", str(tmp_path / "state.json"))
    try:
        if not gateway_free:
            assert stack.process.wait(timeout=120) == 2
            assert f"port {defaults.port} on 127.0.0.1 is in use" in "\n".join(stack.banner_or_exit())
            return
        lines = stack.banner()
        assert "http://127.0.0.1:8787" in "\n".join(lines)
        page = banner_url(lines, "Token status page")
        assert (":8788/" in page) == page_free, page
    finally:
        if stack.process.poll() is None:
            stack.stop()


# -- 2. make
def make(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603
        ["make", "--no-print-directory", *args],  # noqa: S607
        cwd=cwd,
        env=new_user_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def help_lines(text: str) -> dict[str, str]:
    return dict(re.findall(r"^  ([a-z][a-z-]*) +(\S.*)$", text, re.MULTILINE))


def test_make_help_lists_every_target_with_a_description() -> None:
    result = make("help")
    assert result.returncode == 0, result.stderr
    listed = help_lines(result.stdout)
    for target in MAKE_TARGETS:
        assert target in listed, result.stdout
        assert len(listed[target]) > 10, listed[target]
    phony = re.search(r"^\.PHONY:(.*)$", (ROOT / "Makefile").read_text(), re.MULTILINE)
    assert phony is not None
    assert set(phony.group(1).split()) <= set(listed)  # a target added later gets a line too


def test_plain_make_is_make_help() -> None:
    plain, helped = make(), make("help")
    assert plain.returncode == 0, plain.stderr
    assert plain.stdout == helped.stdout
    assert ".installed" not in plain.stdout + plain.stderr  # not the venv stamp any more
    assert make("-n").stdout == make("-n", "help").stdout


VENV_INPUTS = ("Makefile", "pyproject.toml", "requirements-dev.txt", "layers/forge_remote/requirements.txt")


def copy_from_root(destination: Path, *names: str) -> None:
    for name in names:
        (destination / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, destination / name)


def test_a_fresh_clone_still_builds_its_venv_for_demo_test_and_ci(tmp_path: Path) -> None:
    """``make demo`` / ``make test`` / ``.ci/run`` in a clone without ``.venv``, as a dry run."""
    copy_from_root(tmp_path, *VENV_INPUTS, ".ci/run")
    demo = make("-n", "demo", cwd=tmp_path)
    assert demo.returncode == 0, demo.stderr
    assert demo.stderr == ""
    assert "-m venv .venv" in demo.stdout
    assert "pip install" in demo.stdout
    assert "pip install --quiet --disable-pip-version-check --no-deps -e ." in demo.stdout  # the layer's package
    assert ".venv/bin/python -m local.demo" in demo.stdout
    test = make("-n", "test", cwd=tmp_path)
    assert test.returncode == 0, test.stderr
    assert "-m venv .venv" in test.stdout
    assert ".venv/bin/ruff check ." in test.stdout
    assert ".venv/bin/python -m pytest" in test.stdout
    ci_targets = re.findall(r"^make (\S+)", (ROOT / ".ci" / "run").read_text(), re.MULTILINE)
    assert ci_targets == ["test", "sam-validate", "build"]
    ci = make("-n", *ci_targets, cwd=tmp_path)
    assert ci.returncode == 0, ci.stderr
    assert "sam validate --lint" in ci.stdout
    assert "sam build" in ci.stdout


SLOW_INSTALLS = (  # target, what it says first, the slow command it says it before
    ("demo", "installing the pinned dependencies into .venv (about 1-2 min the first time", "/pip install"),
    ("sam-validate", "installing SAM CLI into .venv-sam (about 1 min, once)", "pip install --quiet aws-sam-cli"),
    ("checkov", "installing checkov into .venv-checkov (about 1 min, once)", "checkov==3"),
)


def test_each_slow_install_first_says_what_and_how_long_and_later_runs_say_nothing(tmp_path: Path) -> None:
    """A minute of silence after "creating .venv" looks like a hang: each install says what it installs
    and roughly for how long, before it starts; once installed, the same targets print no such line."""
    copy_from_root(tmp_path, *VENV_INPUTS)
    for target, says, slow in SLOW_INSTALLS:
        lines = make("-n", target, cwd=tmp_path).stdout.splitlines()
        said = [n for n, line in enumerate(lines) if says in line]
        assert len(said) == 1, lines
        assert said[0] < next(n for n, line in enumerate(lines) if slow in line)
    stamp = re.search(r"^touch (\.venv/\.installed-[0-9a-f]{12})$", make("-n", "venv", cwd=tmp_path).stdout, re.M)
    assert stamp is not None
    for installed in (stamp.group(1), ".venv-sam/.installed", ".venv-checkov/.installed"):
        (tmp_path / installed).parent.mkdir(exist_ok=True)
        (tmp_path / installed).touch()
    for target, _, _ in SLOW_INSTALLS:
        again = make("-n", target, cwd=tmp_path).stdout
        assert "installing" not in again
        assert "pip install" not in again


def test_the_venv_is_rebuilt_when_what_it_installs_changes_and_only_then(tmp_path: Path) -> None:
    """The venv's stamp names the pinned requirements and pyproject's package entry, not its tool settings."""
    copy_from_root(tmp_path, *VENV_INPUTS)

    def stamp() -> str:
        dry_run = make("-n", "venv", cwd=tmp_path)
        found = re.search(r"^touch (\.venv/\.installed-[0-9a-f]{12})$", dry_run.stdout, re.MULTILINE)
        assert found is not None, dry_run.stdout + dry_run.stderr
        return found.group(1)

    pyproject = tmp_path / "pyproject.toml"
    built = stamp()
    pyproject.write_text(pyproject.read_text() + "\n[tool.example]\nsetting = 1\n")
    assert stamp() == built  # a tool's settings: the same venv
    version = re.sub(r'(?m)^version = ".*"$', 'version = "99.0"', pyproject.read_text())
    pyproject.write_text(version)
    seen = [built, stamp()]
    assert seen[1] != built  # the package entry changed: the package is installed again
    packages = version.replace('where = ["layers/forge_remote"]', 'where = ["layers/forge_remote", "elsewhere"]')
    assert packages != version
    pyproject.write_text(packages)
    seen.append(stamp())
    with (tmp_path / "requirements-dev.txt").open("a") as requirements:
        requirements.write("# a pin added\n")
    seen.append(stamp())
    assert len(set(seen)) == 4, seen


# -- 3. forge_cli job, against a local stack in this process (as make local wires it)
@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[LocalRuntime, serve.Shared]]:
    with LocalRuntime() as rt:
        shared = serve.share_with_forge_cli(rt, tmp_path / "state.json")
        try:
            yield rt, shared
        finally:
            shared.remove()  # the control endpoint stops with the stack, as under make local


@pytest.fixture
def polled(served: tuple[LocalRuntime, serve.Shared]) -> tuple[LocalRuntime, serve.Shared]:
    """The same, with the worker's queue polled (jobs run as they come)."""
    served[0].poller.start(0.05)
    return served


@pytest.fixture
def installed(
    polled: tuple[LocalRuntime, serve.Shared], capsys: pytest.CaptureFixture[str]
) -> tuple[LocalRuntime, serve.Shared]:
    """The same, after ``forge_cli install`` (its output is not the test's)."""
    assert cli(polled[1], "install") == 0
    capsys.readouterr()
    return polled


def cli(shared: serve.Shared, *args: str) -> int:
    return forge_cli.main([*args, "--state-file", str(shared.state_file)])


def total_messages(rt: LocalRuntime) -> int:
    return sum(sum(depth) for depth in rt.queue_depths().values())


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["job", "page-snapshot", "--args", "{pageId: 1}"], "--args is not valid JSON"),
        (["job", "page-snapshot", "--args", '["pageId", 1]'], "--args must be a JSON object"),
        (["job", "page-snapshot", "--args", "'{}'"], "--args is not valid JSON"),  # quotes the shell did not eat
        (
            ["job", "page-snapshots", "--wait"],
            "unknown job 'page-snapshots': the worker has page-snapshot, personal-data-report, space-digest",
        ),
        (["job", "space-digest", "--wait", "--timeout", "0"], "--timeout must be a positive number"),
    ],
)
def test_bad_job_requests_exit_2_and_send_nothing(
    served: tuple[LocalRuntime, serve.Shared], capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    rt, shared = served
    with pytest.raises(SystemExit) as exited:
        cli(shared, *args)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err
    assert total_messages(rt) == 0
    assert shared.journal.outcomes() == []


def settled_depths(
    rt: LocalRuntime, expected: dict[str, tuple[int, int]], timeout_s: float = 10
) -> dict[str, tuple[int, int]]:
    """The queues' depths once the poller thread is done with the batch: the CLI prints a job's outcome
    when the worker logs it, a moment before the poller deletes the message it answered."""
    deadline = time.monotonic() + timeout_s
    depths = rt.queue_depths()
    while depths != expected and time.monotonic() < deadline:
        time.sleep(0.05)
        depths = rt.queue_depths()
    return depths


def test_a_job_before_install_is_deferred_with_its_reason(
    polled: tuple[LocalRuntime, serve.Shared], capsys: pytest.CaptureFixture[str]
) -> None:
    rt, shared = polled
    assert cli(shared, "job", "page-snapshot", "--args", json.dumps({"pageId": shared.page_id}), "--wait") == 1
    out = capsys.readouterr().out
    assert "deferred: installation not seen yet. It stays in the queue and runs again in about" in out
    assert "Run install first." in out
    assert rt.queue_depths() == {"queue": (0, 1), "dlq": (0, 0)}  # waiting for its delay, not lost


def test_jobs_after_install_are_done_and_print_what_they_stored(
    installed: tuple[LocalRuntime, serve.Shared], capsys: pytest.CaptureFixture[str]
) -> None:
    rt, shared = installed
    assert cli(shared, "job", "page-snapshot", "--args", json.dumps({"pageId": shared.page_id}), "--wait") == 0
    out = capsys.readouterr().out
    request_id = re.search(r"\(request ([0-9a-f]+)\)", out)
    assert request_id is not None, out
    # One search returning one page: 2 points of Atlassian's quota.
    assert f'done: {{"pageId": {shared.page_id}, "found": true, "version": 1, "points": 2}}' in out
    assert "stored result (SNAPSHOT, 1 record):" in out
    assert f'"requestId": "{request_id.group(1)}"' in out
    assert '"title": "Release notes"' in out

    assert cli(shared, "job", "space-digest", "--wait") == 0
    out = capsys.readouterr().out
    assert 'done: {"spaces": 2, "pages": 4' in out  # the seeded site's pages edited in the last day
    assert "stored result (DIGEST, 2 records):" in out
    assert '"spaceKey": "ENG"' in out
    assert settled_depths(rt, {"queue": (0, 0), "dlq": (0, 0)}) == {"queue": (0, 0), "dlq": (0, 0)}
    assert set(rt.functions[rt.poller.source.function].module.runner.registry.names()) >= SHIPPED_JOBS


def test_result_kind_lists_a_kind_for_jobs_the_cli_does_not_know(
    installed: tuple[LocalRuntime, serve.Shared], capsys: pytest.CaptureFixture[str]
) -> None:
    _, shared = installed
    args = json.dumps({"pageId": shared.page_id})
    assert cli(shared, "job", "page-snapshot", "--args", args, "--wait") == 0
    capsys.readouterr()
    # A second request for the same page version overwrites its record: the kind still holds one.
    assert cli(shared, "job", "page-snapshot", "--args", args, "--wait", "--result-kind", "SNAPSHOT") == 0
    assert "stored result (SNAPSHOT, 1 record):" in capsys.readouterr().out
    assert cli(shared, "job", "space-digest", "--wait", "--result-kind", "SNAPSHOT") == 0
    assert "stored result (SNAPSHOT, 1 record):" in capsys.readouterr().out


def test_bad_job_arguments_are_dead_lettered_with_the_reason(
    installed: tuple[LocalRuntime, serve.Shared], capsys: pytest.CaptureFixture[str]
) -> None:
    rt, shared = installed
    assert cli(shared, "job", "page-snapshot", "--args", '{"pageId": "not-a-number"}', "--wait") == 1
    out = capsys.readouterr().out
    assert (
        "dead-lettered: bad arguments for job page-snapshot: pageId must be a page id (digits, at most 20), "
        "not 'not-a-number'."
    ) in out
    assert cli(shared, "job", "page-snapshot", "--wait") == 1  # no --args: no pageId
    out = capsys.readouterr().out
    assert (
        "dead-lettered: bad arguments for job page-snapshot: the job needs the argument pageId (the id of the "
        "page to snapshot), which the request did not give."
    ) in out
    assert settled_depths(rt, {"queue": (0, 0), "dlq": (2, 0)}) == {"queue": (0, 0), "dlq": (2, 0)}


def test_waiting_is_bounded_and_without_wait_the_request_is_only_sent(
    served: tuple[LocalRuntime, serve.Shared], capsys: pytest.CaptureFixture[str]
) -> None:
    rt, shared = served  # no poller: nothing will run the job
    started = time.monotonic()
    assert cli(shared, "job", "space-digest", "--wait", "--timeout", "0.5") == 1
    assert time.monotonic() - started < 10
    assert "no outcome within 0.5 s: the request is still queued" in capsys.readouterr().out
    assert cli(shared, "job", "space-digest") == 0
    assert "job space-digest requested for" in capsys.readouterr().out
    assert rt.queue_depths()["queue"] == (2, 0)


def test_a_stack_that_is_gone_is_named_not_a_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = {
        "site": {
            "installationId": "ari:cloud:ecosystem::installation/x",
            "cloudId": "c",
            "apiBaseUrl": "",
            "siteUrl": "",
        },
        "aws": {
            "endpointUrl": f"http://127.0.0.1:{free_port()}",
            "region": "us-east-1",
            "jobsQueueUrl": "http://127.0.0.1:1/123456789012/q",
            "appTable": "t",
        },
        "jobOutcomes": str(tmp_path / "jobs.jsonl"),
        "control": {"url": f"http://127.0.0.1:{free_port()}", "secret": "s"},  # nobody listens there any more
    }
    (tmp_path / "state.json").write_text(json.dumps(state))
    assert forge_cli.main(["job", "space-digest", "--state-file", str(tmp_path / "state.json")]) == 1
    err = capsys.readouterr().err
    assert "cannot reach the local stack" in err
    assert "is `make local` still running?" in err
    assert "Traceback" not in err
    del state["control"]  # a state file from before the control endpoint
    (tmp_path / "state.json").write_text(json.dumps(state))
    assert forge_cli.main(["job", "space-digest", "--state-file", str(tmp_path / "state.json")]) == 1
    assert "predates the dev control endpoint: restart `make local`" in capsys.readouterr().err
    assert forge_cli.main(["job", "space-digest", "--state-file", str(tmp_path / "missing.json")]) == 1
    assert "start the stack first with `make local`" in capsys.readouterr().err


def test_the_journal_reads_back_what_the_worker_decided(tmp_path: Path) -> None:
    journal = OutcomeJournal(tmp_path / "jobs.jsonl")
    journal.create()
    assert journal.path.stat().st_mode & 0o777 == 0o600
    first = JobOutcome("r1", "space-digest", "ari:x", "deferred", "no token stored", 61)
    journal.record(first)
    journal.record(JobOutcome("r1", "space-digest", "ari:x", "done", summary={"spaces": 0}))
    with journal.path.open("a") as handle:
        handle.write('{"request_id": "half a li')  # a line the stack is still writing
    assert journal.find("r1") == first  # the first run's outcome, as the CLI waited for it
    assert len(journal.outcomes()) == 2
    assert journal.find("r2") is None


# -- 4. forge_cli --help
def test_forge_cli_help_gives_every_command_one_line_of_plain_text() -> None:
    result = run([sys.executable, "-m", "local.forge_cli", "--help"])
    assert result.returncode == 0, result.stderr
    text = result.stdout
    for command in forge_cli.COMMANDS:
        line = re.search(rf"^    {re.escape(command)} +(\S.+)$", text, re.MULTILINE)
        assert line is not None, f"{command} has no description on its line:\n{text}"
    assert not RST_MARKUP.search(text), text
    assert "usage: .venv/bin/python -m local.forge_cli" in text  # the usage line works as printed


@pytest.mark.parametrize("command", forge_cli.COMMANDS)
def test_each_command_help_describes_it_in_plain_text(command: str) -> None:
    result = run([sys.executable, "-m", "local.forge_cli", command, "--help"])
    assert result.returncode == 0, result.stderr
    usage, _, rest = result.stdout.partition("\n\n")
    description = rest.split("\n\n")[0]
    assert usage.startswith(f"usage: .venv/bin/python -m local.forge_cli {command}")
    assert not description.startswith("options:"), result.stdout
    assert len(description) > 40, result.stdout
    assert not RST_MARKUP.search(result.stdout), result.stdout
    assert re.search(r"--state-file PATH +\S", result.stdout)


def test_serve_help_is_plain_text_too() -> None:
    result = run([sys.executable, "-m", "local.serve", "--help"])
    assert result.returncode == 0, result.stderr
    assert not RST_MARKUP.search(result.stdout), result.stdout
    assert "make local ARGS=" in result.stdout


# -- 5. jobs are found without an import list
def test_the_shipped_jobs_are_registered() -> None:
    from forge_remote.jobs.contract import JOBS
    from forge_remote.jobs.worker import import_jobs

    assert {"page_snapshot", "space_digest"} <= set(import_jobs("confluence_jobs"))
    assert set(JOBS.names()) >= SHIPPED_JOBS


LABEL_AUDIT = '''\
"""The README's example job."""
from collections.abc import Mapping
from typing import Any

from forge_remote import JobContext, JobResult, job


def parse_args(args: Mapping[str, Any]) -> str:
    return str(args["label"])


@job("label-audit", parse_args)
def label_audit(ctx: JobContext, label: str) -> JobResult:
    return JobResult({"label": label})
'''

IMPORT_AND_REPORT = """
import json, sys
from forge_remote.jobs.contract import JOBS
from forge_remote.jobs.worker import import_jobs
import_jobs("confluence_jobs")
print(json.dumps({
    "jobs": JOBS.names(),
    "modules": sorted(m for m in sys.modules if m.split(".")[0] == "confluence_jobs"),
    "heavy": sorted(m for m in ("requests", "boto3", "forge_remote.confluence.client") if m in sys.modules),
}))
"""


def test_a_job_module_dropped_into_the_package_is_registered_without_editing_init(tmp_path: Path) -> None:
    package = tmp_path / "confluence_jobs"
    shutil.copytree(JOBS_PACKAGE, package, ignore=shutil.ignore_patterns("__pycache__"))
    (package / "label_audit.py").write_text(LABEL_AUDIT)
    assert (package / "__init__.py").read_bytes() == (JOBS_PACKAGE / "__init__.py").read_bytes()

    result = subprocess.run(  # noqa: S603
        [sys.executable, "-c", IMPORT_AND_REPORT],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(LAYER)])},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert set(report["jobs"]) == {*SHIPPED_JOBS, "label-audit"}
    # Cold start stays lean: the package's own modules, nothing that waits for the first job.
    shipped = {f"confluence_jobs.{p.stem}" for p in JOBS_PACKAGE.glob("*.py") if p.stem != "__init__"}
    assert set(report["modules"]) == {"confluence_jobs", "confluence_jobs.label_audit", *shipped}
    assert report["heavy"] == []


def test_a_job_acting_as_a_user_runs_under_make_local(
    installed: tuple[LocalRuntime, serve.Shared], capsys: pytest.CaptureFixture[str]
) -> None:
    """The CLI delivers app tokens the stack's own Forge emulator issued: its GraphQL mints user tokens
    only for those, so a job acting as a user runs under `make local` as it does in the demo."""
    _, shared = installed
    args = json.dumps({"accountId": "557058:newcomer-alice"})
    assert cli(shared, "job", "user-digest", "--args", args, "--wait", "--result-kind", "USER_DIGEST") == 0, (
        capsys.readouterr().out
    )
    out = capsys.readouterr().out
    assert "done" in out
    assert '"pages"' in out


# -- 4. make local's logs: five functions in one process, each library line its own function's
class LogTap(logging.Handler):
    """The library's lines one function writes, as that function's Powertools formatter writes them."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.function_logger = logging.getLogger(service)
        self.setFormatter(self.function_logger.powertools_handler.formatter)  # type: ignore[attr-defined]
        self.lines: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith("forge_remote"):
            self.lines.append(json.loads(self.format(record)))


FUNCTION_OF = {"forge-triggers": "ForgeTriggersFunction", "forge-calls": "ForgeCallsFunction"}


def test_under_make_local_each_library_line_names_the_function_that_logged_it() -> None:
    """The five functions share one process under `make local`, the scheduler loaded last; still a FIT
    refused by the trigger function or the UI function, and a token Confluence refused in the worker, are
    logged with that function's service, function name and correlation id, each line once."""
    services = ("forge-calls", "forge-triggers", "confluence-worker", "token-wakeup", "job-scheduler")
    with LocalRuntime() as rt:
        taps = {service: LogTap(service) for service in services}
        for tap in taps.values():
            tap.function_logger.addHandler(tap)
        try:
            site = rt.site()
            token = rt.forge.app_token()
            lifecycle = rt.forge.headers(site, app_token=token, module_key="lifecycle-endpoint")
            assert rt.call("POST", "/forge/lifecycle", lifecycle, rt.forge.installed_event(site)).status_code == 200
            refused: dict[str, dict[str, str]] = {}
            for service, method, path in (
                ("forge-triggers", "POST", "/forge/keepalive"),
                ("forge-calls", "GET", "/api/status"),
            ):
                refused[service] = {**rt.forge.headers(site), "authorization": "Bearer not-a-jwt"}
                assert rt.call(method, path, refused[service]).status_code == 401
            rt.confluence.add_space("ENG", "Engineering")
            page = rt.confluence.add_page("ENG", "Release notes")
            rt.confluence.revoke(token)  # the worker's request is answered 401: the runner logs it
            request = JobRequest(job="page-snapshot", installation_id=site.installation_id, args={"pageId": page["id"]})
            send_job_requests(boto3.client("sqs"), rt.stack.physical["JobsQueue"], [request])
            rt.poller.drain()
        finally:
            for tap in taps.values():
                tap.function_logger.removeHandler(tap)
    for service in ("forge-triggers", "forge-calls"):
        [line] = taps[service].lines
        assert (line["message"], line["service"]) == ("Forge invocation rejected: malformed token", service)
        assert line["correlation_id"] == refused[service]["x-b3-traceid"]
        assert line["function_name"].endswith(FUNCTION_OF[service])
    client, runner = taps["confluence-worker"].lines  # the client's 401, then the runner's invalidation
    assert (client["name"], runner["name"]) == ("forge_remote.confluence.client", "forge_remote.jobs.runner")
    assert runner["message"] == "Confluence rejected the token (HTTP 401); invalidated it"
    for line in (client, runner):
        assert line["service"] == "confluence-worker"
        assert line["function_name"].endswith("ConfluenceWorkerFunction")
        assert line["request_id"] == request.request_id
    assert taps["job-scheduler"].lines == taps["token-wakeup"].lines == []
