"""What the benchmark parts share: result rows, statistics, a quiet stdout, the moto-backed stack,
and a DynamoDB request counter hooked on a boto3 client's events (no monkey-patching)."""

from __future__ import annotations

import io
import math
import os
import statistics
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, redirect_stdout
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from local.stack import LocalStack

ROOT = Path(__file__).resolve().parents[1]
LAYER = ROOT / "layers" / "forge_remote"
REGION = "us-east-1"

# Fake credentials and no config files: nothing here may reach a real AWS account.
FAKE_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "bench",
    "AWS_SECRET_ACCESS_KEY": "bench",
    "AWS_DEFAULT_REGION": REGION,
    "AWS_REGION": REGION,
    "AWS_CONFIG_FILE": "/nonexistent/bench-aws-config",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/bench-aws-credentials",
    "AWS_EC2_METADATA_DISABLED": "true",
}
CLEARED_AWS_ENV = ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_SECURITY_TOKEN")

FUNCTIONS = LocalStack.from_template().functions()  # logical id -> code folder, as the template says

DYNAMODB_WRITES = frozenset({"PutItem", "UpdateItem", "DeleteItem", "TransactWriteItems", "BatchWriteItem"})
DYNAMODB_READS = frozenset({"GetItem", "Query", "Scan", "BatchGetItem", "TransactGetItems"})


# -- results -----------------------------------------------------------------------------------------
@dataclass
class Row:
    """One line of the final table."""

    metric: str
    ours: str
    other: str = "-"
    ratio: float | None = None
    target: str = "-"
    met: bool | None = None  # None: informational, no target

    @property
    def verdict(self) -> str:
        return "-" if self.met is None else ("yes" if self.met else "NO")


@dataclass
class Section:
    name: str
    figures: dict[str, Any] = field(default_factory=dict)
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "figures": self.figures,
            "rows": [{**asdict(r), "met": r.met} for r in self.rows],
            "notes": self.notes,
        }


def print_table(rows: Sequence[Row]) -> None:
    headers = ("metric", "this project", "baseline/anchor", "ratio", "target", "met?")
    cells = [(r.metric, r.ours, r.other, fmt_ratio(r.ratio), r.target, r.verdict) for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, h in enumerate(headers)]
    line = "  ".join("-" * w for w in widths)
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)))
    print(line)
    for c in cells:
        print("  ".join(v.ljust(w) for v, w in zip(c, widths, strict=True)))


# -- statistics --------------------------------------------------------------------------------------
def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else math.nan


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (p99 of 1,000 samples is the 990th smallest)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return float(ordered[rank - 1])


def spread(values: Sequence[float], digits: int = 1) -> str:
    """Interquartile range as text, to show how noisy a median is."""
    if len(values) < 4:
        return "n/a"
    q = statistics.quantiles(values, n=4)
    return f"{q[0]:.{digits}f}-{q[2]:.{digits}f}"


def fmt_ratio(ratio: float | None) -> str:
    if ratio is None or math.isnan(ratio):
        return "-"
    if math.isinf(ratio):
        return "inf"
    return f"{ratio:.2f}x"


def ratio(a: float, b: float) -> float:
    if b == 0:
        return math.inf if a else 1.0
    return a / b


# -- environment -------------------------------------------------------------------------------------
def fake_aws_environment() -> None:
    """Point this process at fake credentials (moto intercepts in-process; nothing real is reachable)."""
    for name in CLEARED_AWS_ENV:
        os.environ.pop(name, None)
    os.environ.update(FAKE_AWS_ENV)
    os.environ.setdefault("POWERTOOLS_TRACE_DISABLED", "true")
    warnings.filterwarnings("ignore", message="No application metrics to publish")
    warnings.filterwarnings("ignore", category=DeprecationWarning)


class _Sink(io.TextIOBase):
    """Accepts and discards text: handlers still format their log lines (a real cost) but print nothing."""

    def write(self, s: str) -> int:
        return len(s)

    def writable(self) -> bool:
        return True


SINK = _Sink()


@contextmanager
def quiet() -> Iterator[None]:
    """Powertools loggers bind ``sys.stdout`` when created and metrics print to it per invocation:
    load and call handlers inside this so their JSON lines do not flood the report."""
    with redirect_stdout(SINK):
        yield


# -- AWS in moto -------------------------------------------------------------------------------------
class RequestCounter:
    """Counts a boto3 client's API calls by operation, through its ``before-call`` event."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()

    def __call__(self, model: Any = None, **_: Any) -> None:
        if model is not None:
            self.calls[model.name] += 1

    def attach(self, client: Any) -> RequestCounter:
        service = client.meta.service_model.endpoint_prefix
        client.meta.events.register(f"before-call.{service}.*", self)
        return self

    @property
    def writes(self) -> int:
        return sum(n for op, n in self.calls.items() if op in DYNAMODB_WRITES)

    @property
    def reads(self) -> int:
        return sum(n for op, n in self.calls.items() if op in DYNAMODB_READS)

    def snapshot(self) -> dict[str, int]:
        return dict(sorted(self.calls.items()))


@contextmanager
def moto_stack(parameters: dict[str, str]) -> Iterator[Any]:
    """Tables and queues from template.yaml in in-process moto; yields the ``LocalStack``."""
    import boto3
    from moto import mock_aws

    from forge_remote import aws
    from local.stack import LocalStack

    fake_aws_environment()
    with mock_aws():
        aws.reset_clients()
        stack = LocalStack.from_template(parameters=parameters)
        stack.create(dynamodb=boto3.client("dynamodb"), sqs=boto3.client("sqs"))
        try:
            yield stack
        finally:
            aws.reset_clients()


def load_function(stack: Any, logical_id: str, extra_env: dict[str, str] | None = None) -> Any:
    """The real handler module with the template's environment (as ``local.handlers`` loads it), quietly."""
    from local.handlers import load_handler

    environment = {**stack.environment(logical_id), **(extra_env or {})}
    with quiet():
        return load_handler(logical_id, FUNCTIONS[logical_id], environment)
