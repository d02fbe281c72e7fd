"""Act as Forge against a running ``make local``: ``.venv/bin/python -m local.forge_cli COMMAND``.

Commands send what Forge sends for the emulated site (``.cache/local-stack.json``, written by
``local.serve``), with FITs signed by the serve process's dev key; they print the HTTP status and
JSON body, never a token. ``job`` is what no Forge call does directly: it sends a job request for
the site's installation to the stack's jobs queue, as the triggers and the scheduler do, and with
``--wait`` prints the worker's outcome (from the journal ``local.job_outcomes`` keeps) and the
result the job stored.

The help texts below are what ``--help`` shows: plain sentences, no markup.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "functions" / "confluence_worker"
if str(WORKER) not in sys.path:  # `job` reads the worker's confluence_jobs package from its folder, as Lambda does
    sys.path.insert(0, str(WORKER))

import boto3  # noqa: E402
import requests  # noqa: E402
from botocore.config import Config  # noqa: E402
from botocore.exceptions import BotoCoreError, ClientError  # noqa: E402
from cryptography.hazmat.primitives import serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import rsa  # noqa: E402

from forge_remote.jobs.contract import JobRequest, send_job_requests  # noqa: E402
from forge_remote.storage.results import ResultStore  # noqa: E402
from local.forge_emulator import ForgeEmulator, SigningKey, Site  # noqa: E402
from local.job_outcomes import JobOutcome, OutcomeJournal  # noqa: E402

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_sqs import SQSClient

STATE_FILE = ROOT / ".cache" / "local-stack.json"
USER_ACCOUNT_ID = "557058:0a1b2c3d-4e5f-6789-abcd-ef0123456789"
DEFAULT_WAIT_S = 30.0
DESCRIPTION = (
    "Act as Forge against a running 'make local' stack. Each command sends what Forge would send for "
    "the stack's emulated Confluence site, signed with the stack's throwaway dev key, and prints the "
    "HTTP status and JSON body (never a token)."
)
EPILOG = (
    "Run from the repository root with the venv's python, for example: "
    ".venv/bin/python -m local.forge_cli install. 'COMMAND --help' shows a command's options. "
    "Exit status: 0 on success; 1 when the stack answers an error, cannot be reached, or a waited-for "
    "job did not run; 2 for bad usage (nothing is sent)."
)
# Forge calls: command -> (one line for the command list, its own --help). What each sends: request_for().
FORGE_CALLS = {
    "install": (
        "installed trigger: stores the installation and a token",
        "Send the lifecycle 'installed' event to POST /forge/lifecycle with a fresh app token, as Forge "
        "does when the app is installed: the stack stores the installation and the token.",
    ),
    "keepalive": (
        "the hourly scheduled trigger, with a fresh app token",
        "Send the hourly scheduled trigger to POST /forge/keepalive with a fresh app token, so that jobs "
        "find a valid token.",
    ),
    "page-created": (
        "page created event: requests a page-snapshot job",
        "Send a page created product event for the seeded page to POST /forge/events: the stack sends a "
        "page-snapshot job request to its jobs queue.",
    ),
    "page-updated": (
        "page updated event: requests a page-snapshot job",
        "Send a page updated product event for the seeded page to POST /forge/events: the stack sends a "
        "page-snapshot job request to its jobs queue.",
    ),
    "status": (
        "GET /api/status as a user in the app's UI",
        "Call GET /api/status as the app's UI does (invokeRemote, with app and user tokens): it shows "
        "until when jobs can use the stored token.",
    ),
    "uninstall": (
        "preUninstall: deletes the installation's tokens",
        "Send preUninstall to POST /forge/uninstall (no token): the stack deletes the installation's "
        "tokens and marks it uninstalled.",
    ),
}
COMMANDS = (*FORGE_CALLS, "job")


class CliError(Exception):
    """A failure the user can act on: printed as one line, exit status 1, no traceback."""


# -- the running stack
def load_state(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise CliError(f"{path} not found: start the stack first with `make local` (emulator JWKS mode)")
    state: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return state


def emulator_from(state: dict[str, Any]) -> tuple[ForgeEmulator, Site]:
    """A Forge emulator that signs with the running stack's dev key, and the stack's emulated site."""
    forge = ForgeEmulator(state["appId"])
    private_key = serialization.load_pem_private_key(state["privateKeyPem"].encode(), password=None)
    if not isinstance(private_key, rsa.RSAPrivateKey):
        raise CliError("state file holds no RSA key")
    forge.keys = [SigningKey(kid=state["kid"], private_key=private_key)]
    token_pem = state.get("tokenKeyPem")
    if token_pem:  # app tokens the stack's own Forge emulator recognises as its own (GraphQL mints)
        token_key = serialization.load_pem_private_key(token_pem.encode(), password=None)
        if isinstance(token_key, rsa.RSAPrivateKey):
            forge.token_key = token_key
    return forge, site_from(state)


def site_from(state: dict[str, Any]) -> Site:
    site = state["site"]
    return Site(
        installation_id=site["installationId"],
        cloud_id=site["cloudId"],
        api_base_url=site["apiBaseUrl"],
        site_url=site["siteUrl"],
    )


# -- Forge calls
def request_for(
    command: str, forge: ForgeEmulator, site: Site, state: dict[str, Any]
) -> tuple[str, str, Any, dict[str, str]]:
    """(method, path, body, headers) of the Forge call ``command`` stands for."""
    token = forge.app_token()
    page = state["page"]
    if command == "install":
        return (
            "POST",
            "/forge/lifecycle",
            forge.installed_event(site),
            forge.headers(site, app_token=token, module_key="lifecycle-endpoint"),
        )
    if command == "keepalive":
        return "POST", "/forge/keepalive", {}, forge.headers(site, app_token=token, module_key="keepalive-endpoint")
    if command in ("page-created", "page-updated"):
        event = forge.page_event(page["id"], page["spaceKey"], created=command == "page-created", title=page["title"])
        return "POST", "/forge/events", event, forge.headers(site, app_token=token, module_key="events-endpoint")
    if command == "status":
        headers = forge.headers(
            site,
            app_token=token,
            user_token=forge.app_token(subject=USER_ACCOUNT_ID),
            principal=USER_ACCOUNT_ID,
            module_key="ui-endpoint",
        )
        return "GET", "/api/status", None, headers
    if command == "uninstall":
        return "POST", "/forge/uninstall", {}, forge.headers(site, module_key="uninstall-endpoint")
    raise ValueError(f"unknown command {command}")


def forge_call(command: str, state: dict[str, Any], url: str | None) -> int:
    forge, site = emulator_from(state)
    method, path, body, headers = request_for(command, forge, site, state)
    base = (url or state["gatewayUrl"]).rstrip("/")
    try:
        response = requests.request(method, base + path, headers=headers, json=body, timeout=30)
    except requests.ConnectionError as exc:
        raise CliError(f"cannot reach the local gateway at {base}: is `make local` still running?") from exc
    print(f"{method} {path} -> HTTP {response.status_code}")
    if response.content:
        try:
            print(json.dumps(response.json(), indent=2))
        except ValueError:
            print(response.text)
    return 0 if response.ok else 1


# -- jobs
def known_jobs() -> list[str]:
    """The jobs the worker registers: every module of its jobs package, imported as the worker does."""
    from forge_remote.jobs.contract import JOBS
    from forge_remote.jobs.worker import import_jobs

    import_jobs("confluence_jobs")
    return JOBS.names()


def parse_job_args(text: str) -> dict[str, Any]:
    """``--args`` as a JSON object; ``ValueError`` with a message fit for the user otherwise."""
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"--args is not valid JSON ({exc.msg} at character {exc.pos}): {text!r}") from None
    if not isinstance(document, dict):
        raise ValueError(f'--args must be a JSON object such as \'{{"pageId": "65537"}}\', not {text!r}')
    return document


@dataclass(frozen=True)
class ResultLookup:
    """Where a job stores its result: a result kind, and which records of that kind this run wrote."""

    kind: str
    written_by: Callable[[dict[str, Any], JobOutcome], bool]


def result_lookup(job: str, kind: str | None) -> ResultLookup | None:
    """The shipped jobs' results (kinds and keys as their modules store them); ``kind`` for any other job."""
    from confluence_jobs.page_snapshot import SNAPSHOT
    from confluence_jobs.space_digest import DIGEST

    if kind:
        return ResultLookup(kind, lambda record, outcome: True)
    if job == "page-snapshot":  # one record per page version, stamped with the request that wrote it
        return ResultLookup(SNAPSHOT, lambda record, outcome: record.get("requestId") == outcome.request_id)
    if job == "space-digest":  # one record per space and day: this run's day
        return ResultLookup(DIGEST, lambda record, outcome: record.get("day") == _utc_day(outcome.at))
    return None


def _utc_day(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, UTC).date().isoformat()


def _aws(state: dict[str, Any]) -> dict[str, Any]:
    """The stack's moto endpoint, with explicit fake credentials: never the user's real AWS ones."""
    try:
        aws: dict[str, Any] = state["aws"]
        return {
            "endpoint_url": aws["endpointUrl"],
            "region_name": aws["region"],
            "aws_access_key_id": "local",
            "aws_secret_access_key": "local",
            # A stack that stopped answering fails the command in seconds instead of botocore's minutes.
            "config": Config(connect_timeout=5, read_timeout=15, retries={"max_attempts": 2}),
        }
    except KeyError:
        raise CliError("the state file predates the job command: restart `make local`") from None


def sqs_client(state: dict[str, Any]) -> SQSClient:
    return boto3.client("sqs", **_aws(state))


def dynamodb_client(state: dict[str, Any]) -> DynamoDBClient:
    return boto3.client("dynamodb", **_aws(state))


def send_job(state: dict[str, Any], request: JobRequest) -> None:
    client = sqs_client(state)
    queue_url = state["aws"].get("jobsQueueUrl")
    if not isinstance(queue_url, str):  # a state file from before job requests went straight to the queue
        raise CliError("the state file names no jobs queue: restart `make local`")
    try:
        send_job_requests(client, queue_url, [request])
    except (BotoCoreError, ClientError) as exc:
        raise CliError(
            f"could not send the job request to the local jobs queue: {exc}; is `make local` still running?"
        ) from exc


def wait_for_outcome(journal: OutcomeJournal, request_id: str, timeout_s: float) -> JobOutcome | None:
    """The worker's first outcome for the request, or None after ``timeout_s`` (bounded: never hangs)."""
    deadline = time.monotonic() + timeout_s
    while True:
        outcome = journal.find(request_id)
        if outcome is not None or time.monotonic() >= deadline:
            return outcome
        time.sleep(0.1)


def describe(outcome: JobOutcome) -> str:
    if outcome.status == "done":
        return f"done: {json.dumps(outcome.summary)}"
    if outcome.status == "deferred":
        again = f"It stays in the queue and runs again in about {outcome.delay_s} s."
        return f"deferred: {outcome.reason}. {again}{_hint(outcome.reason)}"
    if outcome.status == "dead":
        return f"dead-lettered: {outcome.reason}. It is in the DLQ and will not be retried."
    return f"{outcome.status}: {outcome.reason}"


def _hint(reason: str) -> str:
    """What to do locally about the usual deferrals: both mean no usable token has arrived yet."""
    if "installation not seen" in reason:
        return " Run install first."
    if "token" in reason:
        return " Run keepalive to deliver a fresh token."
    return ""


def print_results(state: dict[str, Any], outcome: JobOutcome, lookup: ResultLookup | None) -> None:
    if lookup is None:
        print(f"stored result: unknown for job {outcome.job} (pass --result-kind KIND to list a kind's records)")
        return
    store = ResultStore(dynamodb_client(state), state["aws"]["appTable"])
    records = [r for r in store.list(outcome.installation_id, lookup.kind) if lookup.written_by(r, outcome)]
    print(f"stored result ({lookup.kind}, {len(records)} record{'' if len(records) == 1 else 's'}):")
    for record in records:
        print(json.dumps(record, indent=2, ensure_ascii=False))


def run_job(args: argparse.Namespace, job_args: dict[str, Any]) -> int:
    state = load_state(args.state_file)
    site = site_from(state)
    request = JobRequest(job=args.name, installation_id=site.installation_id, args=job_args)
    send_job(state, request)
    print(f"job {request.job} requested for {site.installation_id} (request {request.request_id})")
    if not args.wait:
        return 0
    outcome = wait_for_outcome(OutcomeJournal(Path(state["jobOutcomes"])), request.request_id, args.timeout)
    if outcome is None:
        print(f"no outcome within {args.timeout:g} s: the request is still queued (is the stack's poller running?)")
        return 1
    print(describe(outcome))
    if outcome.status != "done":
        return 1
    print_results(state, outcome, result_lookup(outcome.job, args.result_kind))
    return 0


# -- the command line
class CommandListFormatter(argparse.HelpFormatter):
    """Keeps every command's description on its name's line.

    argparse measures the command names one indent (2 columns) short of where it prints them, so the
    longest (page-created) would get its description on a line of its own.
    """

    def add_argument(self, action: argparse.Action) -> None:
        super().add_argument(action)
        if isinstance(action, argparse._SubParsersAction):
            self._action_max_length += 2


def _add_common(parser: argparse.ArgumentParser, *, url: bool) -> None:
    if url:
        parser.add_argument("--url", metavar="URL", help="the local gateway (default: the one in the state file)")
    parser.add_argument(
        "--state-file",
        type=Path,
        default=STATE_FILE,
        metavar="PATH",
        help="the running stack's state, written by 'make local' (default: .cache/local-stack.json)",
    )


def build_parser() -> argparse.ArgumentParser:
    # The usage line names the venv's python: a bare `python` has none of the dependencies.
    parser = argparse.ArgumentParser(
        prog=".venv/bin/python -m local.forge_cli",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=CommandListFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", title="commands")
    for name, (summary, description) in FORGE_CALLS.items():
        _add_common(commands.add_parser(name, help=summary, description=description), url=True)
    job = commands.add_parser(
        "job",
        help="send a job request to the jobs queue (--wait: its outcome)",
        description=(
            "Send a job request for the emulated site's installation to the stack's jobs queue, as the triggers "
            "and the scheduler do. With --wait, print what the worker did (done, deferred and why, "
            "dead-lettered and why) and the result the job stored. Exit status 0 when the job was sent "
            "(without --wait) or done; 1 when it was deferred, dead-lettered or discarded, or no outcome "
            "came in time; 2 for bad JSON or an unknown job (nothing sent)."
        ),
    )
    job.add_argument("name", metavar="JOB", help="the job to run, for example page-snapshot or space-digest")
    job.add_argument(
        "--args",
        default="{}",
        metavar="JSON",
        help='the job\'s arguments as a JSON object (default {}), for example \'{"pageId": "65537"}\'',
    )
    job.add_argument("--wait", action="store_true", help="wait for the worker's outcome and the stored result")
    job.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_WAIT_S,
        metavar="SECONDS",
        help=f"how long --wait waits for the outcome (default {DEFAULT_WAIT_S:g})",
    )
    job.add_argument(
        "--result-kind",
        metavar="KIND",
        help="with --wait, list the stored results of this kind (for your own jobs, for example LABEL_AUDIT)",
    )
    _add_common(job, url=False)
    job.set_defaults(usage_error=job.error)  # job's own usage line with its errors, not the top level's
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command != "job":
            return forge_call(args.command, load_state(args.state_file), args.url)
        # Checked before anything is read or sent: a typo costs nothing and explains itself (exit 2).
        try:
            job_args = parse_job_args(args.args)
        except ValueError as exc:
            args.usage_error(str(exc))
        jobs = known_jobs()
        if args.name not in jobs:
            args.usage_error(f"unknown job {args.name!r}: the worker has {', '.join(jobs)}")
        if args.timeout <= 0:
            args.usage_error("--timeout must be a positive number of seconds")
        return run_job(args, job_args)
    except CliError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
