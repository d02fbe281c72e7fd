"""CI: every handler imported and answering its sample events from a clean venv that holds only what Lambda
would give it: the layer's runtime requirements and each function's own requirements.txt, with the
layer's package and the function's folder on ``sys.path`` (``/opt/python`` and ``/var/task`` on Lambda).
No moto, no test tools, no editable install in that venv.

This process (the dev venv) plays the rest of the world on 127.0.0.1: moto in server mode with the
template's tables and queues (``local.stack``), and the Forge emulator's signing keys, so the HTTP
samples carry a real FIT. Each function then runs in a child process of the clean venv with the
environment the template gives it, and answers every sample in ``events/<its folder>/``.

It cannot pass by doing nothing: every function of the template must have at least one sample, each
child must prove it runs the clean venv's boto3 and cannot import moto or pytest, and each sample's
answer is checked (HTTP 2xx, an SQS or stream batch response, the scheduler's report).

Usage: .venv/bin/python .ci/runtime_only.py [--keep-venv DIR]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CHILD = r"""
import importlib, json, sys
folder, layer, events_file = sys.argv[1:4]
sys.path[:0] = [folder, layer]
import boto3
for forbidden in ("moto", "pytest"):
    try:
        importlib.import_module(forbidden)
    except ImportError:
        pass
    else:
        raise SystemExit(f"{forbidden} is importable: not a clean runtime venv")

class Context:
    function_name = "runtime-only"
    memory_limit_in_mb = 512
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:runtime-only"
    aws_request_id = "00000000-0000-4000-8000-000000000000"
    function_version = "$LATEST"
    log_group_name = "/aws/lambda/runtime-only"
    log_stream_name = "runtime-only"
    def get_remaining_time_in_millis(self):
        return 60_000

app = importlib.import_module("app")
answers = [app.lambda_handler(event, Context()) for event in json.load(open(events_file))]
report = {"boto3": boto3.__version__, "boto3_file": boto3.__file__, "answers": answers}
sys.stdout.write("\nRUNTIME_ONLY=" + json.dumps(report, default=str) + "\n")
"""


def requirement_files(functions: dict[str, str]) -> list[Path]:
    files = [ROOT / "layers" / "forge_remote" / "requirements.txt"]
    files += [
        ROOT / folder / "requirements.txt"
        for folder in functions.values()
        if (ROOT / folder / "requirements.txt").exists()
    ]
    return files


def build_venv(target: Path, requirements: list[Path]) -> Path:
    """A venv at ``target`` with only ``requirements`` installed; returns its python."""
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(target)], check=True)  # noqa: S603
    python = target / "bin" / "python"
    pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, *(arg for path in requirements for arg in ("-r", str(path)))], check=True)  # noqa: S603
    return python


def sample_events(folder: str) -> list[dict[str, Any]]:
    samples = sorted((ROOT / "events" / Path(folder).name).glob("*.json"))
    return [json.loads(path.read_text()) for path in samples]


def with_real_fit(event: dict[str, Any], forge: Any, site: Any) -> dict[str, Any]:
    """An HTTP sample with a real FIT (and app token) from the Forge emulator for ``site``."""
    principal = "557058:runtime-only-user" if event["rawPath"].startswith("/api/") else None
    real = forge.headers(site, app_token=forge.app_token(), principal=principal)
    event["headers"].update({k: v for k, v in real.items() if k in ("authorization", "x-forge-oauth-system")})
    return event


def answer_problem(event: dict[str, Any], answer: Any) -> str | None:
    """Why ``answer`` is not what Lambda's caller for ``event`` expects (None: it is)."""
    if "rawPath" in event:
        status = answer.get("statusCode") if isinstance(answer, dict) else None
        return None if isinstance(status, int) and 200 <= status < 300 else f"HTTP {status}"
    if "Records" in event:
        ok = isinstance(answer, dict) and isinstance(answer.get("batchItemFailures"), list)
        return None if ok else "no batchItemFailures list"
    return None if isinstance(answer, dict) and answer else "empty answer"


SAMPLE_SITE = {
    "installation_id": "ari:cloud:ecosystem::installation/8d0c7a51-3f2e-4b6a-9c1d-5e7f9a2b4c6d",
    "cloud_id": "a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d",
    "api_base_url": "https://api.atlassian.com/ex/confluence/a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d",
    "site_url": "https://example-site.atlassian.net",
}


def run_function(python: Path, folder: str, events_file: Path, env: dict[str, str]) -> dict[str, Any]:
    """One function's module imported in the clean venv, answering the events in ``events_file``."""
    argv = [str(python), "-I", "-c", CHILD, str(ROOT / folder), str(ROOT / "layers" / "forge_remote"), str(events_file)]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300, check=False)  # noqa: S603
    line = next((row for row in done.stdout.splitlines() if row.startswith("RUNTIME_ONLY=")), None)
    if done.returncode != 0 or line is None:
        tail = "\n".join(done.stderr.strip().splitlines()[-5:]) or "no output"
        raise RuntimeError(f"did not run\n{tail}")
    report: dict[str, Any] = json.loads(line.split("=", 1)[1])
    return report


def check_functions(python: Path, venv_dir: Path, scratch: Path, functions: dict[str, str]) -> list[str]:
    """Every function against moto and the Forge emulator on loopback; the failures found."""
    import boto3

    from forge_remote import aws
    from local.forge_emulator import ForgeEmulator, Site
    from local.moto_server import MotoServer
    from local.stack import LocalStack

    moto, forge = MotoServer(), ForgeEmulator()
    moto.start()
    jwks_url = forge.start()
    failures: list[str] = []
    try:
        session = boto3.session.Session(region_name=moto.region)
        stack = LocalStack.from_template(
            parameters={"ForgeAppId": forge.app_ari, "ForgeJwksUrl": jwks_url}, region=moto.region
        ).create(dynamodb=session.client("dynamodb"), sqs=session.client("sqs"))
        site = Site(**SAMPLE_SITE)
        base_env = {k: os.environ[k] for k in ("PATH", "HOME", "LANG", "TMPDIR") if k in os.environ}
        base_env |= {
            "AWS_ENDPOINT_URL": moto.url,
            "AWS_ACCESS_KEY_ID": "runtime-only",
            "AWS_SECRET_ACCESS_KEY": "runtime-only",
            "AWS_DEFAULT_REGION": moto.region,
            "AWS_REGION": moto.region,
            "POWERTOOLS_METRICS_DISABLED": "true",
        }
        # HTTP samples first (the lifecycle sample installs the sample site), then the rest.
        order = sorted(functions, key=lambda lid: not any("rawPath" in e for e in sample_events(functions[lid])))
        for logical_id in order:
            events = [
                with_real_fit(e, forge, site) if "rawPath" in e else e for e in sample_events(functions[logical_id])
            ]
            events_file = scratch / f"{logical_id}.json"
            events_file.write_text(json.dumps(events))
            try:
                report = run_function(
                    python, functions[logical_id], events_file, base_env | stack.environment(logical_id)
                )
            except RuntimeError as exc:
                failures.append(f"{logical_id}: {exc}")
                continue
            if not report["boto3_file"].startswith(str(venv_dir)):
                failures.append(f"{logical_id}: boto3 came from {report['boto3_file']}, not the clean venv")
            problems = [p for e, a in zip(events, report["answers"], strict=True) if (p := answer_problem(e, a))]
            failures += [f"{logical_id}: sample answered {p}" for p in problems]
            wrong = f" ({len(problems)} wrong)" if problems else ""
            print(
                f"runtime-only: {logical_id}: imported, {len(events)} sample events answered{wrong}"
                f" with boto3 {report['boto3']}"
            )
    finally:
        forge.stop()
        moto.stop()
        aws.reset_clients()
    return failures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep-venv", type=Path, help="build the clean venv here and keep it")
    args = parser.parse_args()
    started = time.monotonic()
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request the servers answer

    from local.stack import LocalStack

    functions = LocalStack.from_template().functions()
    missing = [lid for lid, folder in functions.items() if not sample_events(folder)]
    if missing:
        print(f"runtime-only: no sample event in events/<folder>/ for {', '.join(missing)}", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as scratch:
        venv_dir = args.keep_venv or Path(scratch) / "venv"
        requirements = requirement_files(functions)
        python = build_venv(venv_dir, requirements)
        print(f"runtime-only: clean venv built in {time.monotonic() - started:.0f} s from {len(requirements)} files")
        failures = check_functions(python, venv_dir, Path(scratch), functions)
    elapsed = time.monotonic() - started
    print(f"runtime-only: {len(functions)} functions, {len(failures)} failures, {elapsed:.0f} s in all")
    for failure in failures:
        print(f"runtime-only: FAILED {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
