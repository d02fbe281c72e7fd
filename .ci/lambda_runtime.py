"""CI: every function run by Lambda's own runtime interface client, ``awslambdaric``, from the artifacts the SAM
build makes, laid out as Lambda lays them out, answering its sample events over a loopback Runtime API.

What this proves that the tests cannot: the template's handler strings, the imports and the layer's layout
are exactly what Lambda loads. The artifacts come from ``packaging/Makefile`` (``local.lambda_build``, for
x86_64 so they run here: the same lock installed with ``--require-hashes``, the other platform's wheels),
read-only as ``/var/task`` and ``/opt`` are. Each function's process is ``python3.12 -S -B -m awslambdaric
<Handler>`` with the function's folder as its working directory and ``PYTHONPATH`` = the function's folder,
the layer's ``python/`` and the client: no site-packages, so nothing of the dev venv can be imported (a
probe checks that boto3 is the layer's and that moto and pytest are absent).

This process plays the rest of the world on 127.0.0.1: the Runtime API (``/2018-06-01/runtime/...``), moto
in server mode with the template's tables and queues (``local.stack``), and the Forge emulator's signing
keys, so the HTTP samples carry a real FIT. An init error (``/runtime/init/error``), an invocation error, a
crash or a sample answered wrongly fails the run, as does a FIT or token found in a function's output.

Usage: .venv/bin/python .ci/lambda_runtime.py
"""

from __future__ import annotations

import json
import logging
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# Lambda's runtime interface client and its dependencies (the versions AWS's python3.12 images ship with).
RUNTIME_CLIENT = ("awslambdaric==4.2.2", "simplejson==4.3.0", "snapshot-restore-py==1.0.0")
API = "/2018-06-01/runtime"
INVOCATION_TIMEOUT_S = 60.0

PROBE = r"""
import importlib.util, json, sys
import boto3
print(json.dumps({"boto3": boto3.__file__, "present": [m for m in ("moto", "pytest") if importlib.util.find_spec(m)]}))
"""


@dataclass
class Invocation:
    request_id: str
    event: dict[str, Any]
    answer: Any = None
    error: Any = None
    done: threading.Event = field(default_factory=threading.Event)


class QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A connection the stopped function left open is no error of the run; anything else is printed."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class RuntimeApi:
    """Lambda's Runtime API on a loopback port (port 0): hands out ``invocations`` one at a time, records
    each response or error, and an init error if the function reports one."""

    def __init__(self, function_arn: str) -> None:
        self.pending: queue.SimpleQueue[Invocation | None] = queue.SimpleQueue()
        self.by_id: dict[str, Invocation] = {}
        self.init_error: Any = None
        self.init_failed = threading.Event()
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _body(self) -> Any:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    return json.loads(raw) if raw else None
                except ValueError:
                    return raw.decode("utf-8", "replace")

            def _reply(self, status: int, body: bytes = b"{}", headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                if self.path != f"{API}/invocation/next":
                    self._reply(404)
                    return
                invocation = api.pending.get()  # blocks, as Lambda's does, until there is work
                if invocation is None:  # no more samples: the process is stopped from outside
                    time.sleep(INVOCATION_TIMEOUT_S)
                    self._reply(500)
                    return
                deadline_ms = int((time.time() + INVOCATION_TIMEOUT_S) * 1000)
                self._reply(
                    200,
                    json.dumps(invocation.event).encode(),
                    {
                        "Lambda-Runtime-Aws-Request-Id": invocation.request_id,
                        "Lambda-Runtime-Deadline-Ms": str(deadline_ms),
                        "Lambda-Runtime-Invoked-Function-Arn": function_arn,
                        "Lambda-Runtime-Trace-Id": f"Root=1-{int(time.time()):08x}-{uuid.uuid4().hex[:24]};Sampled=0",
                    },
                )

            def do_POST(self) -> None:
                body = self._body()
                if self.path == f"{API}/init/error":
                    api.init_error = body
                    api.init_failed.set()
                    self._reply(202)
                    return
                parts = self.path.removeprefix(f"{API}/invocation/").split("/")
                invocation = api.by_id.get(parts[0]) if len(parts) == 2 else None
                if invocation is None or parts[1] not in ("response", "error"):
                    self._reply(404)
                    return
                if parts[1] == "response":
                    invocation.answer = body
                else:
                    invocation.error = body
                invocation.done.set()
                self._reply(202)

        self._server = QuietServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="runtime-api", daemon=True)

    @property
    def address(self) -> str:
        host, port = self._server.server_address[:2]
        return f"{host}:{port}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.pending.put(None)
        self._server.shutdown()
        self._server.server_close()

    def invoke(self, event: dict[str, Any], process: subprocess.Popen[str]) -> Invocation:
        """Queue one event; wait for its response or error, the function's init error, or its exit."""
        invocation = Invocation(str(uuid.uuid4()), event)
        self.by_id[invocation.request_id] = invocation
        self.pending.put(invocation)
        deadline = time.monotonic() + INVOCATION_TIMEOUT_S
        while not invocation.done.wait(0.05):
            if self.init_failed.is_set():
                raise RuntimeError(f"init error: {json.dumps(self.init_error)[:600]}")
            if process.poll() is not None:
                raise RuntimeError(f"the process exited ({process.returncode}) before answering")
            if time.monotonic() > deadline:
                raise RuntimeError(f"no answer within {INVOCATION_TIMEOUT_S:.0f} s")
        if invocation.error is not None:
            raise RuntimeError(f"invocation error: {json.dumps(invocation.error)[:600]}")
        return invocation


def install_runtime_client(python: str, target: Path) -> None:
    argv = [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-compile"]
    argv += ["--no-deps", "--only-binary=:all:", "--target", str(target), *RUNTIME_CLIENT]
    subprocess.run(argv, check=True)  # noqa: S603


def sample_events(folder: Path) -> list[dict[str, Any]]:
    return [json.loads(path.read_text()) for path in sorted((ROOT / "events" / folder.name).glob("*.json"))]


def with_real_fit(event: dict[str, Any], forge: Any, site: Any, secrets: set[str]) -> dict[str, Any]:
    """An HTTP sample with a real FIT (and app token) from the Forge emulator for ``site``."""
    principal = "557058:lambda-runtime-user" if event["rawPath"].startswith("/api/") else None
    real = forge.headers(site, app_token=forge.app_token(), principal=principal)
    wanted = {k: v for k, v in real.items() if k in ("authorization", "x-forge-oauth-system")}
    secrets.update(v.split(" ", 1)[-1] for v in wanted.values())
    event["headers"].update(wanted)
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


def lambda_environment(logical_id: str, task_root: Path, path: list[Path]) -> dict[str, str]:
    """The variables Lambda's python3.12 runtime sets for a function (besides the template's own and the
    Runtime API's address, which each run adds)."""
    name = f"lambda-runtime-{logical_id}"
    return {
        "AWS_EXECUTION_ENV": "AWS_Lambda_python3.12",
        "AWS_LAMBDA_FUNCTION_NAME": name,
        "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "512",
        "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{name}",
        "AWS_LAMBDA_LOG_STREAM_NAME": "2026/01/01/[$LATEST]0123456789abcdef",
        "AWS_LAMBDA_INITIALIZATION_TYPE": "on-demand",
        "LAMBDA_TASK_ROOT": str(task_root),
        "LAMBDA_RUNTIME_DIR": str(path[-1]),
        "PYTHONPATH": os.pathsep.join(map(str, path)),
        "TZ": ":UTC",
        "LANG": "en_US.UTF-8",
    }


@dataclass
class Function:
    """One function as Lambda would start it: its handler string, its folder, its environment."""

    logical_id: str
    handler: str
    task_root: Path
    env: dict[str, str]
    events: list[dict[str, Any]]
    secrets: set[str]  # the FITs and tokens its samples carry: none may appear in its output

    @property
    def arn(self) -> str:
        return f"arn:aws:lambda:us-east-1:123456789012:function:lambda-runtime-{self.logical_id}"


def run_function(python: str, function: Function) -> tuple[list[Any], str]:
    """The function under awslambdaric, each event invoked in turn; its answers and its output."""
    api = RuntimeApi(function.arn)
    api.start()
    env = function.env | {"AWS_LAMBDA_RUNTIME_API": api.address}
    argv = [python, "-S", "-B", "-m", "awslambdaric", function.handler]
    with tempfile.TemporaryFile(mode="w+") as output:
        process = subprocess.Popen(  # noqa: S603
            argv, cwd=function.task_root, env=env, stdout=output, stderr=subprocess.STDOUT, text=True
        )
        try:
            answers = []
            for event in function.events:
                try:
                    answers.append(api.invoke(event, process).answer)
                except RuntimeError as exc:
                    output.seek(0)
                    tail = "\n".join(output.read().strip().splitlines()[-6:])
                    raise RuntimeError(f"{exc}\n{tail}") from None
        finally:
            process.kill()
            process.wait()
            api.stop()
        output.seek(0)
        return answers, output.read()


def layout_problems(python: str, function: Function, layer: Path) -> list[str]:
    """What Lambda's layout would not give the function: boto3 from elsewhere than the layer, test tools."""
    probe = [python, "-S", "-B", "-c", PROBE]
    done = subprocess.run(probe, cwd=function.task_root, env=function.env, capture_output=True, text=True, check=False)  # noqa: S603
    if done.returncode != 0:
        return [f"the layout probe failed: {done.stderr.strip()[-300:]}"]
    found = json.loads(done.stdout)
    problems = [f"{module} is importable in Lambda's layout" for module in found["present"]]
    if not found["boto3"].startswith(str(layer / "python")):
        problems.append(f"boto3 came from {found['boto3']}, not the layer")
    return problems


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def output_problems(function: Function, output: str) -> list[str]:
    """Every line a function writes is a structured (JSON) log line, and none holds a FIT or token."""
    problems = [
        f"a line of its output is not JSON: {line[:160]!r}" for line in output.splitlines() if not is_json(line)
    ]
    if any(secret in output for secret in function.secrets):
        problems.append("a FIT or token is in its output")
    return problems


def is_json(line: str) -> bool:
    if not line.strip():
        return True
    try:
        json.loads(line)
    except ValueError:
        return False
    return True


def check_function(python: str, function: Function, layer: Path) -> list[str]:
    problems = layout_problems(python, function, layer)
    try:
        answers, output = run_function(python, function)
    except RuntimeError as exc:
        return [*problems, str(exc)]
    if os.environ.get("LAMBDA_RUNTIME_SHOW_OUTPUT"):
        print(output)
    problems += [
        f"sample answered {p}" for e, a in zip(function.events, answers, strict=True) if (p := answer_problem(e, a))
    ]
    problems += output_problems(function, output)
    print(
        f"lambda-runtime: {function.logical_id}: {function.handler} loaded by awslambdaric, "
        f"{_count(len(function.events), 'sample event')} answered, {_count(len(problems), 'problem')}"
    )
    return problems


def check_functions(scratch: Path) -> list[str]:
    """Every function against moto and the Forge emulator on loopback; the failures found."""
    import boto3

    from local import lambda_build
    from local.cfn_yaml import load_template
    from local.forge_emulator import ForgeEmulator, Site
    from local.moto_server import MotoServer
    from local.stack import TEMPLATE, LocalStack

    started = time.monotonic()
    built = lambda_build.build(scratch / "artifacts")
    client_dir = scratch / "runtime"
    install_runtime_client(built.python, client_dir)
    print(f"lambda-runtime: artifacts built and awslambdaric installed in {time.monotonic() - started:.0f} s")
    resources = load_template(TEMPLATE)["Resources"]
    sources = lambda_build.code_folders()  # the samples are filed by the function's source folder
    missing = [lid for lid in built.functions if not sample_events(sources[lid])]
    failures = [f"{lid}: no sample event in events/{sources[lid].name}/" for lid in missing]
    # HTTP samples first (the lifecycle sample installs the sample site), then the rest.
    order = sorted(
        set(built.functions) - set(missing),
        key=lambda lid: not any("rawPath" in e for e in sample_events(sources[lid])),
    )

    for folder in [built.layer, *built.functions.values()]:
        lambda_build.read_only(folder)
    moto, forge = MotoServer(), ForgeEmulator()
    moto.start()
    jwks_url = forge.start()
    try:
        session = boto3.session.Session(region_name=moto.region)
        stack = LocalStack.from_template(
            parameters={"ForgeAppId": forge.app_ari, "ForgeJwksUrl": jwks_url}, region=moto.region
        ).create(dynamodb=session.client("dynamodb"), sqs=session.client("sqs"))
        site = Site(**SAMPLE_SITE)
        base_env = {k: os.environ[k] for k in ("PATH", "HOME", "TMPDIR") if k in os.environ}
        base_env |= {
            "AWS_ENDPOINT_URL": moto.url,
            "AWS_ACCESS_KEY_ID": "lambda-runtime",
            "AWS_SECRET_ACCESS_KEY": "lambda-runtime",
            "AWS_SESSION_TOKEN": "lambda-runtime",
            "AWS_DEFAULT_REGION": moto.region,
            "AWS_REGION": moto.region,
            "POWERTOOLS_METRICS_DISABLED": "true",
        }
        for logical_id in order:
            task_root = built.functions[logical_id]
            path = [task_root, built.layer / "python", client_dir]
            secrets: set[str] = set()
            events = [
                with_real_fit(e, forge, site, secrets) if "rawPath" in e else e
                for e in sample_events(sources[logical_id])
            ]
            function = Function(
                logical_id,
                resources[logical_id]["Properties"]["Handler"],
                task_root,
                base_env | stack.environment(logical_id) | lambda_environment(logical_id, task_root, path),
                events,
                secrets,
            )
            failures += [f"{logical_id}: {problem}" for problem in check_function(built.python, function, built.layer)]
    finally:
        forge.stop()
        moto.stop()
        for folder in [built.layer, *built.functions.values()]:
            lambda_build.writable(folder)
    return failures


def main() -> int:
    started = time.monotonic()
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request the servers answer
    with tempfile.TemporaryDirectory(prefix="lambda-runtime-") as scratch:
        try:
            failures = check_functions(Path(scratch))
        except (RuntimeError, subprocess.CalledProcessError) as exc:
            failures = [f"setup: {exc}"]
    print(f"lambda-runtime: {len(failures)} failures, {time.monotonic() - started:.0f} s in all")
    for failure in failures:
        print(f"lambda-runtime: FAILED {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
