"""Two ``make local`` stacks on one machine, as a developer runs them: the second on another port, the
default status page port taken. Each gets its own state file (one per port), nothing of the first is
touched when the second starts, a third that names the first's state file is refused before it starts,
and each stack's CLI acts on its own stack. Plus serve's own usage errors (``--app-id``) in one line.
Ports are the kernel's choice (port 0); the stacks are real ``python -m local.serve`` processes."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import requests

from local import forge_cli, serve
from tests.serve_process import ServeProcess
from tests.support import ROOT


class Serve(ServeProcess):
    """``python -m local.serve`` at the repository root; its banner waited for up to 120 s."""

    def __init__(self, *args: str) -> None:
        super().__init__(*args, cwd=ROOT)

    def banner(self, timeout: float = 120) -> list[str]:
        return super().banner(timeout)


def cli(state_file: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603
        [sys.executable, "-m", "local.forge_cli", *args, "--state-file", str(state_file)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def as_printed(command: str) -> subprocess.CompletedProcess[str]:
    """A banner command, run as typed at the repository root."""
    return subprocess.run(  # noqa: S603
        ["bash", "-c", command],  # noqa: S607
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def body_of(out: str) -> Any:
    text = out.partition(" -> HTTP ")[2].partition("\n")[2]
    return json.JSONDecoder().raw_decode(text)[0]


def held_port() -> socket.socket:
    """A listening socket on a port of the kernel's choice: the default UI port, held by someone else."""
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    return holder


def status_page_url(lines: list[str]) -> str | None:
    line = next(line for line in lines if line.startswith("Token status page"))
    found = re.search(r"http://127\.0\.0\.1:\d+/status/", line)
    return found.group(0) if found else None  # None: "not served" (no Node.js here); the stack runs anyway


def gateway_port(lines: list[str]) -> int:
    found = re.search(r"^Local stack on http://127\.0\.0\.1:(\d+)", lines[0])
    assert found, lines[0]
    return int(found.group(1))


def test_two_stacks_run_side_by_side_and_each_cli_acts_on_its_own(tmp_path: Path) -> None:
    default_state = serve.STATE_FILE
    default_before = default_state.read_bytes() if default_state.exists() else None  # a developer's own stack
    first_state = tmp_path / "first.json"
    first_journal = serve.journal_path(first_state)
    with held_port() as holder:
        busy = holder.getsockname()[1]
        first = Serve("--port", "0", "--ui-port", str(busy), "--state-file", str(first_state))
        second: Serve | None = None
        second_state: Path | None = None
        try:
            first_lines = first.banner()
            page = status_page_url(first_lines)
            if page is not None:  # the taken UI port fell back to a free one, as --help promises
                assert f":{busy}/" not in page
                assert requests.get(page, timeout=30).status_code == 200
            assert cli(first_state, "install").returncode == 0
            digest = cli(first_state, "job", "space-digest", "--wait")
            assert digest.returncode == 0, digest.stdout + digest.stderr
            state_before, journal_before = first_state.read_bytes(), first_journal.read_text(encoding="utf-8")
            assert journal_before  # the worker's outcome of that job

            # The second, as `make local ARGS="--port N"`: no --state-file, so one of its own, named by its port.
            second = Serve("--port", "0", "--ui-port", str(busy))
            second_lines = second.banner()
            port = gateway_port(second_lines)
            second_state = serve.CACHE / f"local-stack-{port}.json"
            assert second_state.exists()
            second_page = status_page_url(second_lines)
            if second_page is not None:
                assert f":{busy}/" not in second_page
                assert second_page != page
            commands = [line.strip() for line in second_lines if "-m local.forge_cli" in line]
            assert commands, second_lines
            for command in commands:
                if "--help" not in command:
                    assert f"--state-file .cache/local-stack-{port}.json" in command, command
            # Nothing of the first was touched: its state file, its outcomes journal.
            assert first_state.read_bytes() == state_before
            assert first_journal.read_text(encoding="utf-8") == journal_before

            install = next(c for c in commands if " install " in f"{c} ")
            installed = as_printed(install)  # the second's banner command, as printed
            assert installed.returncode == 0, installed.stdout + installed.stderr

            # Each CLI acts on its own stack: its own installation, its own emulated Confluence.
            ids = []
            for state_file in (first_state, second_state):
                status = cli(state_file, "status")
                assert status.returncode == 0, status.stdout + status.stderr
                body = body_of(status.stdout)
                assert body["installationId"] == json.loads(state_file.read_text())["site"]["installationId"]
                assert body["installation"]["status"] == "active"
                ids.append(body["installationId"])
                edited = cli(state_file, "page-updated", "--wait")
                assert edited.returncode == 0, edited.stdout + edited.stderr
                assert "edited: now version 2" in edited.stdout  # each stack's page, edited once
            assert ids[0] != ids[1]

            # A third stack naming the first's state file is refused before it starts: nothing touched.
            third = subprocess.run(  # noqa: S603
                [
                    sys.executable,
                    "-m",
                    "local.serve",
                    "--port",
                    "0",
                    "--ui-port",
                    "0",
                    "--state-file",
                    str(first_state),
                ],
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            assert third.returncode == 2, third.stdout + third.stderr
            assert "belongs to another local stack that is still running" in third.stderr
            assert f"pid {first.process.pid}" in third.stderr
            assert "Traceback" not in third.stderr
            state_now = first_state.read_bytes()
            assert json.loads(state_now)["site"]["installationId"] == ids[0]  # its own rewrites only
            assert first_journal.read_text(encoding="utf-8").startswith(journal_before)
            assert cli(first_state, "clock").returncode == 0  # and its CLI still reaches it
        finally:
            outputs = [first.stop()] + ([second.stop()] if second is not None else [])
    assert first.process.returncode == 0, outputs[0]
    assert second is not None
    assert second.process.returncode == 0, outputs[1]
    assert not first_state.exists()
    assert second_state is not None
    assert not second_state.exists()
    assert not serve.lock_path(second_state).exists()
    if default_before is None:
        assert not default_state.exists()  # neither stack wrote the default port's file
    else:
        assert default_state.read_bytes() == default_before


def test_state_files_follow_the_port() -> None:
    assert serve.default_state_file(8787) == ROOT / ".cache" / "local-stack.json"
    assert serve.default_state_file(9000) == ROOT / ".cache" / "local-stack-9000.json"
    assert serve.journal_path(serve.default_state_file(9000)).name == "local-stack-9000-jobs.jsonl"
    assert serve.parse_args([]).state_file is None  # derived once the gateway's port is known
    assert serve.parse_args(["--state-file", "x.json"]).state_file == Path("x.json")


def test_a_state_file_is_held_by_one_live_stack(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    held = serve.StateLock.acquire(state)
    held.note("pid 4242, gateway http://127.0.0.1:1")
    with pytest.raises(serve.StackRunning, match=r"still running \(pid 4242, gateway http://127\.0\.0\.1:1\)"):
        serve.StateLock.acquire(state)
    held.release()
    assert not serve.lock_path(state).exists()
    serve.StateLock.acquire(state).release()  # free again once its holder is gone


def test_the_cli_points_at_stacks_on_other_ports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(forge_cli, "CACHE", tmp_path)
    monkeypatch.setattr(forge_cli, "STATE_FILE", tmp_path / "local-stack.json")
    (tmp_path / "local-stack-9000.json").write_text("{}")
    assert forge_cli.main(["status", "--state-file", str(tmp_path / "local-stack.json")]) == 1
    err = capsys.readouterr().err
    assert "start the stack first with `make local`" in err
    assert f"stacks on other ports: --state-file {tmp_path / 'local-stack-9000.json'}" in err


@pytest.mark.parametrize(
    "app_id", ["not-a-uuid", "ari:cloud:ecosystem::app/123", "5c7bd2a4-0f1e-4d3b-9a6c-2e8f1b7d4a9"]
)
def test_a_bad_app_id_is_one_line_naming_the_flag(app_id: str) -> None:
    result = subprocess.run(  # noqa: S603
        [sys.executable, "-m", "local.serve", "--app-id", app_id, "--port", "0", "--ui-port", "0"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert "error: --app-id must be your app's uuid or ari:cloud:ecosystem::app/<uuid>" in lines[0]
    assert "FORGE_APP_ID" not in result.stderr
    assert "Traceback" not in result.stderr
