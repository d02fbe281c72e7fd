"""Part 1, cold start: import-and-init of each function's handler module in a fresh interpreter.

Each sample is a new ``python -I`` process that times, from inside, the import of ``app`` with the
function's folder and the layer first on ``sys.path`` (as Lambda's runtime does) and the environment
``template.yaml`` gives the function (resolved by ``local.stack.LocalStack``). AWS points at a dead
endpoint (``127.0.0.1:9``) with fake credentials: module import creates boto3 clients but must not
call them. The baseline is the bare minimum a handler needs: ``import boto3, jwt`` and one
``boto3.client("dynamodb")``.

Side by side: every round runs the baseline twice and each handler once, in shuffled order. A
shared machine's load drifts over seconds, so each handler's ratio is taken against the baseline of
its own round, and the median of those paired ratios is reported (with plain medians in ms).

Bytecode: every module has its ``.pyc`` (kept in a private ``pycache_prefix``, nothing is written into
the repository). On Lambda the project's own modules have none unless the package ships them (its
file system is read-only, so nothing is cached between cold starts): the time to compile exactly the
project modules a handler imports is measured in-process and reported as the Lambda figure.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import FAKE_AWS_ENV, FUNCTIONS, LAYER, ROOT, Row, Section, median, spread

TARGET_RATIO = 1.3
TARGET = f"<= {TARGET_RATIO:.2f}x"
DEAD_ENDPOINT = "http://127.0.0.1:9"

CHILD = r"""
import sys, time
t0 = time.perf_counter()
if sys.argv[1] == "baseline":
    import boto3, jwt
    boto3.client("dynamodb")
else:
    sys.path[:0] = [sys.argv[2], sys.argv[3]]
    __import__("app")  # what Lambda's importlib.import_module does, but visible to -X importtime
t1 = time.perf_counter()
import json
roots = tuple(sys.argv[2:4])
files = sorted(
    f for m in list(sys.modules.values())
    if isinstance(f := getattr(m, "__file__", None), str) and roots and f.startswith(roots)
)
sys.stdout.write("\nBENCH_FILES=%s\nBENCH_MS=%.3f\n" % (json.dumps(files), (t1 - t0) * 1000))
"""


@dataclass
class Variant:
    name: str  # "baseline" or the function's logical id
    folder: Path | None = None
    env: dict[str, str] = field(default_factory=dict)


def short(logical_id: str) -> str:
    return FUNCTIONS[logical_id].rsplit("/", 1)[-1] if logical_id in FUNCTIONS else logical_id


def function_environments() -> dict[str, dict[str, str]]:
    """Each function's variables as the template resolves them (tables and queues created in moto)."""
    from bench.common import moto_stack
    from local.forge_emulator import DEFAULT_APP_ID

    with moto_stack({"ForgeAppId": DEFAULT_APP_ID}) as stack:
        return {logical: stack.environment(logical) for logical in FUNCTIONS}


def child_env(function_env: dict[str, str]) -> dict[str, str]:
    env = {k: os.environ[k] for k in ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR") if k in os.environ}
    env.update(FAKE_AWS_ENV)
    env["AWS_ENDPOINT_URL"] = DEAD_ENDPOINT
    env.update(function_env)
    return env


@dataclass
class ChildRun:
    ms: float
    project_files: list[str]
    stderr: str


def run_child(variant: Variant, prefix: Path, *, importtime: bool = False) -> ChildRun:
    argv = [sys.executable, "-I", "-X", f"pycache_prefix={prefix}"]
    if importtime:
        argv += ["-X", "importtime"]
    argv += ["-c", CHILD, variant.name]
    if variant.folder is not None:
        argv += [str(variant.folder), str(LAYER)]
    done = subprocess.run(argv, env=variant.env, capture_output=True, text=True, timeout=120, check=False)
    found = dict(line.split("=", 1) for line in done.stdout.splitlines() if line.startswith("BENCH_"))
    if done.returncode != 0 or "BENCH_MS" not in found:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"{variant.name}: import failed: {tail}")
    return ChildRun(float(found["BENCH_MS"]), json.loads(found.get("BENCH_FILES", "[]")), done.stderr)


def compile_ms(files: list[str], reps: int) -> float:
    """Reading and compiling these source files, as an import without .pyc does (median of ``reps``)."""
    times = []
    for _ in range(reps):
        started = time.perf_counter()
        for path in files:
            compile(Path(path).read_bytes(), path, "exec", dont_inherit=True)
        times.append((time.perf_counter() - started) * 1000)
    return median(times)


# -- -X importtime ------------------------------------------------------------------------------------
@dataclass
class Node:
    name: str
    depth: int
    self_us: int
    cumulative_us: int
    children: list[Node] = field(default_factory=list)

    def walk(self) -> list[Node]:
        out = [self]
        for child in self.children:
            out.extend(child.walk())
        return out


def parse_importtime(stderr: str) -> list[Node]:
    """The import tree (roots) from ``-X importtime`` output (printed children first)."""
    stack: list[Node] = []
    for line in stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        parts = line.split("|")
        self_us, cumulative_us, name_field = parts[0].split(":", 1)[1], parts[1], parts[2][1:]
        depth = (len(name_field) - len(name_field.lstrip(" "))) // 2
        node = Node(name_field.strip(), depth, int(self_us), int(cumulative_us))
        while stack and stack[-1].depth > depth:
            node.children.insert(0, stack.pop())
        stack.append(node)
    return stack


def module_names(roots: list[Node]) -> set[str]:
    return {n.name for root in roots for n in root.walk()}


def group_of(name: str) -> str:
    parts = name.split(".")
    return ".".join(parts[:2]) if parts[0] in ("aws_lambda_powertools", "forge_remote", "botocore") else parts[0]


def breakdown(handler_runs: list[str], baseline_runs: list[str]) -> dict[str, Any]:
    """Import work the handler does beyond the baseline: by app.py's direct imports and by package."""
    baseline_modules: set[str] = set()
    for stderr in baseline_runs:
        baseline_modules |= module_names(parse_importtime(stderr))
    by_import: dict[str, list[float]] = defaultdict(list)
    by_package: dict[str, list[float]] = defaultdict(list)
    body: list[float] = []
    for stderr in handler_runs:
        app = next((r for r in parse_importtime(stderr) if r.name == "app"), None)
        if app is None:
            continue
        body.append(app.self_us / 1000)
        run_import: dict[str, float] = defaultdict(float)
        run_package: dict[str, float] = defaultdict(float)
        for child in app.children:
            for node in child.walk():
                if node.name not in baseline_modules:
                    run_import[child.name] += node.self_us / 1000
                    run_package[group_of(node.name)] += node.self_us / 1000
        for key, value in run_import.items():
            by_import[key].append(value)
        for key, value in run_package.items():
            by_package[key].append(value)
    runs = max(1, len(handler_runs))

    def ranked(table: dict[str, list[float]]) -> list[tuple[str, float]]:
        # A module missing from a run (absorbed elsewhere) counts as 0 there.
        medians = {k: median(v + [0.0] * (runs - len(v))) for k, v in table.items()}
        return sorted(((k, v) for k, v in medians.items() if v >= 0.5), key=lambda kv: -kv[1])

    return {
        "app_body_ms": median(body),
        "extra_by_app_import_ms": ranked(by_import),
        "extra_by_package_ms": ranked(by_package),
    }


# -- the benchmark ------------------------------------------------------------------------------------
@dataclass
class Samples:
    ms: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    paired: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))  # handler / its round's baseline


def sample(baseline: Variant, handlers: list[Variant], prefix: Path, rounds: int) -> Samples:
    """Each round: the baseline twice and every handler once, shuffled."""
    samples = Samples()
    rng = random.Random(1)
    for _ in range(rounds):
        plan = [baseline, baseline, *handlers]
        rng.shuffle(plan)
        this_round: dict[str, list[float]] = defaultdict(list)
        for variant in plan:
            this_round[variant.name].append(run_child(variant, prefix).ms)
        base = sum(this_round["baseline"]) / len(this_round["baseline"])
        for name, values in this_round.items():
            samples.ms[name].extend(values)
            if name != "baseline":
                samples.paired[name].append(values[0] / base)
    return samples


def run(quick: bool = False, rounds: int | None = None) -> Section:
    rounds = rounds or (6 if quick else 20)
    section = Section("cold start")
    baseline = Variant("baseline", env=child_env({}))
    handlers = [
        Variant(logical, ROOT / FUNCTIONS[logical], child_env(env)) for logical, env in function_environments().items()
    ]
    with tempfile.TemporaryDirectory(prefix="bench-pycache-") as tmp:
        prefix = Path(tmp)
        failed: dict[str, str] = {}
        project_files: dict[str, list[str]] = {}
        for variant in [baseline, *handlers]:  # warm-up: writes every .pyc into the prefix (not measured)
            try:
                project_files[variant.name] = run_child(variant, prefix).project_files
            except RuntimeError as exc:
                failed[variant.name] = str(exc)
        if "baseline" in failed:
            raise RuntimeError(failed["baseline"])
        live = [h for h in handlers if h.name not in failed]
        samples = sample(baseline, live, prefix, rounds)
        compile_times = {h.name: compile_ms(project_files[h.name], 5 if quick else 9) for h in live}
        over_target = report(section, samples, handlers, failed, compile_times)
        if over_target:
            runs = 3 if quick else 5
            base_runs = [run_child(baseline, prefix, importtime=True).stderr for _ in range(runs)]
            section.figures["importtime"] = {}
            for variant in [h for h in handlers if h.name in over_target]:
                handler_runs = [run_child(variant, prefix, importtime=True).stderr for _ in range(runs)]
                detail = breakdown(handler_runs, base_runs)
                section.figures["importtime"][variant.name] = detail
                print_breakdown(short(variant.name), detail, runs)
    section.figures["rounds"] = rounds
    return section


def report(
    section: Section,
    samples: Samples,
    handlers: list[Variant],
    failed: dict[str, str],
    compile_times: dict[str, float],
) -> list[str]:
    """Print medians and ratios, add the rows; returns the functions over target (either figure)."""
    base = samples.ms["baseline"]
    base_ms = median(base)
    section.figures["baseline_ms"] = {"median": base_ms, "iqr": spread(base), "samples": base}
    section.figures["handlers"] = {}
    print(f"  {len(base) // 2} rounds, a fresh interpreter per sample. Median ms (interquartile range);")
    print("  ratio: median over rounds of handler / the same round's baseline (the table's figure); the")
    print("  fastest-vs-fastest ratio is a cross-check that is less sensitive to a noisy machine.")
    if len(base) < 20:
        print("  (few rounds: on a shared machine these ratios move by +-0.1 from run to run)")
    print(f"  {'baseline: import boto3, jwt + boto3.client(dynamodb)':<54} {base_ms:7.1f}  ({spread(base)})")
    over_target: list[str] = []
    for variant in handlers:
        name = short(variant.name)
        if variant.name in failed:
            print(f"  {name:<54} FAILED: {failed[variant.name]}")
            section.figures["handlers"][variant.name] = {"error": failed[variant.name]}
            section.rows.append(Row(f"cold start {name}", "import failed", f"{base_ms:.0f} ms", None, TARGET, False))
            continue
        values, paired = samples.ms[variant.name], samples.paired[variant.name]
        ms, r, compile_cost = median(values), median(paired), compile_times[variant.name]
        lambda_ms, lambda_r = ms + compile_cost, median([p + compile_cost / base_ms for p in paired])
        section.figures["handlers"][variant.name] = {
            "median_ms": ms,
            "iqr": spread(values),
            "paired_ratio": r,
            "paired_ratio_iqr": spread(paired, 2),
            "min_over_min_ratio": min(values) / min(base),
            "paired_ratios": paired,
            "samples": values,
            "compile_project_modules_ms": compile_cost,
            "lambda_estimate_ms": lambda_ms,
            "lambda_estimate_ratio": lambda_r,
        }
        print(
            f"  {name:<54} {ms:7.1f}  ({spread(values)})  {r:.2f}x  (paired IQR {spread(paired, 2)}, "
            f"fastest/fastest {min(values) / min(base):.2f}x)"
        )
        label = "  + compiling its project modules (no .pyc, as on Lambda)"
        print(f"  {label:<54} {compile_cost:7.1f}  ->  {lambda_r:.2f}x")
        section.rows.append(
            Row(f"cold start {name}", f"{ms:.0f} ms", f"{base_ms:.0f} ms", r, TARGET, r <= TARGET_RATIO)
        )
        section.rows.append(
            Row(
                f"cold start {name}, no project .pyc",
                f"{lambda_ms:.0f} ms",
                f"{base_ms:.0f} ms",
                lambda_r,
                TARGET,
                lambda_r <= TARGET_RATIO,
            )
        )
        if max(r, lambda_r) > TARGET_RATIO:
            over_target.append(variant.name)
    return over_target


def print_breakdown(name: str, detail: dict[str, Any], runs: int) -> None:
    print(f"\n  {name}: over target. -X importtime, median of {runs} runs: self time of the modules that the")
    print("  baseline process never imports (modules both import, such as boto3, are left out):")
    total = sum(ms for _, ms in detail["extra_by_app_import_ms"])
    print(f"    by the app.py import that pulls them in (total {total:.1f} ms):")
    for module, ms in detail["extra_by_app_import_ms"][:8]:
        print(f"      {ms:6.1f} ms  {module}")
    print("    the same time by package:")
    for package, ms in detail["extra_by_package_ms"][:8]:
        print(f"      {ms:6.1f} ms  {package}")
    print(
        f"    app.py's own module body: {detail['app_body_ms']:.1f} ms (settings and boto3 client creation; "
        "the baseline creates a client too)"
    )
