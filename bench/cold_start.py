"""Part 1, cold start: import-and-init of each function's handler module in a fresh interpreter.

Each sample is a new interpreter that times, from inside, the import of ``app`` with the function's folder
and the layer first on ``sys.path`` (as Lambda's runtime does) and the environment ``template.yaml`` gives
the function (resolved by ``local.stack.LocalStack``). AWS points at a dead endpoint (``127.0.0.1:9``) with
fake credentials: module import creates boto3 clients but must not call them. The baseline is the bare
minimum a handler needs: ``import boto3, jwt`` and one ``boto3.client("dynamodb")``.

Side by side: every round runs the baseline twice and each handler once, in shuffled order. A shared
machine's load drifts over seconds, so each handler's ratio is taken against the baseline of its own round,
and the median of those paired ratios is reported (with plain medians in ms).

Three sets, each with its own baseline built the same way:
- the dev venv: every module has its ``.pyc`` (in a private ``pycache_prefix``, nothing written into the
  repository);
- the Lambda artifact as ``sam build`` makes it (``packaging/Makefile``, through ``local.lambda_build``, for
  x86_64 so it runs here): the layer's ``python/`` and the function's folder, read-only, no site-packages,
  no bytecode written (``-S -B``), the layer and functions compiled at build time;
- the same artifact without ``.pyc``, as SAM's own python3.12 builder ships it: every cold start compiles
  whatever it imports. This is the figure the build step exists to remove.
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
sys.path[:0] = sys.argv[2:]
if sys.argv[1] == "baseline":
    import boto3, jwt
    boto3.client("dynamodb")
else:
    __import__("app")  # what Lambda's importlib.import_module does, but visible to -X importtime
t1 = time.perf_counter()
import json
roots = tuple(sys.argv[2:])
files = sorted(
    f for m in list(sys.modules.values())
    if isinstance(f := getattr(m, "__file__", None), str) and roots and f.startswith(roots)
)
sys.stdout.write("\nBENCH_FILES=%s\nBENCH_MS=%.3f\n" % (json.dumps(files), (t1 - t0) * 1000))
"""


@dataclass
class Variant:
    name: str  # "baseline" or the function's logical id
    paths: list[Path] = field(default_factory=list)  # put first on sys.path: the function's folder, the layer
    env: dict[str, str] = field(default_factory=dict)
    python: str = sys.executable
    flags: list[str] = field(default_factory=list)  # interpreter options beyond -I


@dataclass
class Layout:
    """One way of laying the code out: dev venv, or a built artifact; how its interpreter is started."""

    label: str
    key: str  # row suffix and figures key
    python: str
    flags: list[str]
    layer: Path
    folders: dict[str, Path]  # logical id -> the function's folder
    baseline_paths: list[Path]


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
    flags = [arg.replace("{prefix}", str(prefix)) for arg in variant.flags]
    argv = [variant.python, "-I", *flags]
    if importtime:
        argv += ["-X", "importtime"]
    argv += ["-c", CHILD, variant.name, *map(str, variant.paths)]
    done = subprocess.run(argv, env=variant.env, capture_output=True, text=True, timeout=120, check=False)
    found = dict(line.split("=", 1) for line in done.stdout.splitlines() if line.startswith("BENCH_"))
    if done.returncode != 0 or "BENCH_MS" not in found:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"{variant.name}: import failed: {tail}")
    return ChildRun(float(found["BENCH_MS"]), json.loads(found.get("BENCH_FILES", "[]")), done.stderr)


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


@dataclass
class LayoutRun:
    layout: Layout
    baseline: Variant
    handlers: list[Variant]
    failed: dict[str, str]
    samples: Samples


def variants(layout: Layout, environments: dict[str, dict[str, str]]) -> tuple[Variant, list[Variant]]:
    """The baseline and one variant per function, started the layout's way."""
    baseline = Variant("baseline", list(layout.baseline_paths), child_env({}), layout.python, layout.flags)
    handlers = [
        Variant(logical, [layout.folders[logical], layout.layer], child_env(env), layout.python, layout.flags)
        for logical, env in environments.items()
    ]
    return baseline, handlers


def dev_layout() -> Layout:
    # Every .pyc written once by the warm-up into a private prefix, so the samples read bytecode.
    folders = {logical: ROOT / folder for logical, folder in FUNCTIONS.items()}
    return Layout("dev venv", "dev", sys.executable, ["-X", "pycache_prefix={prefix}"], LAYER, folders, [])


def artifact_layout(built: Any, *, bytecode: bool) -> Layout:
    # Lambda's layout: the layer's python/ is /opt/python, the function's folder /var/task; no site-packages
    # (-S: nothing from the dev venv), no bytecode written (-B: the folders are read-only on Lambda).
    layer = built.layer / "python"
    label, key = ("Lambda artifact", "artifact") if bytecode else ("artifact without .pyc", "artifact_no_pyc")
    return Layout(label, key, built.python, ["-S", "-B"], layer, dict(built.functions), [layer])


def measure(layout: Layout, environments: dict[str, dict[str, str]], prefix: Path, rounds: int) -> LayoutRun:
    baseline, handlers = variants(layout, environments)
    failed: dict[str, str] = {}
    for variant in [baseline, *handlers]:  # warm-up (not measured): the dev layout writes its .pyc here
        try:
            run_child(variant, prefix)
        except RuntimeError as exc:
            failed[variant.name] = str(exc)
    if "baseline" in failed:
        raise RuntimeError(f"{layout.label}: {failed['baseline']}")
    live = [h for h in handlers if h.name not in failed]
    return LayoutRun(layout, baseline, handlers, failed, sample(baseline, live, prefix, rounds))


def rounds_of(layout: Layout, rounds: int) -> int:
    """The artifact without .pyc compiles on every sample: fewer rounds tell the same story."""
    return max(4, rounds // 2) if layout.key == "artifact_no_pyc" else rounds


def run(quick: bool = False, rounds: int | None = None) -> Section:
    from local import lambda_build

    rounds = rounds or (6 if quick else 20)
    section = Section("cold start")
    environments = function_environments()
    with tempfile.TemporaryDirectory(prefix="bench-cold-") as tmp:
        prefix = Path(tmp) / "pycache"
        started = time.perf_counter()
        with_pyc = lambda_build.build(Path(tmp) / "artifact", bytecode=True)
        without_pyc = lambda_build.build(Path(tmp) / "artifact-no-pyc", bytecode=False, python=with_pyc.python)
        print(f"  built the Lambda artifacts (packaging/Makefile, x86_64) in {time.perf_counter() - started:.0f} s")
        layouts = [dev_layout(), artifact_layout(with_pyc, bytecode=True), artifact_layout(without_pyc, bytecode=False)]
        for layout in layouts[1:]:
            lambda_build.read_only(layout.layer.parent)
            for folder in layout.folders.values():
                lambda_build.read_only(folder)
        try:
            # The artifact without .pyc compiles on every sample: fewer rounds give the same story.
            done = [measure(layout, environments, prefix, rounds_of(layout, rounds)) for layout in layouts]
        finally:
            for layout in layouts[1:]:
                lambda_build.writable(layout.layer.parent)
                for folder in layout.folders.values():
                    lambda_build.writable(folder)
        print(
            f"  {rounds} rounds a set ({rounds_of(layouts[2], rounds)} without .pyc), a fresh interpreter per sample."
        )
        print("  Median ms (interquartile range); ratio: median over rounds of handler / the same round's baseline")
        print("  (the table's figure); fastest/fastest is a cross-check less sensitive to a noisy machine.")
        if rounds < 20:
            print("  (few rounds: on a shared machine these ratios move by +-0.1 from run to run)")
        over_target: list[LayoutRun] = []
        for layout_run in done:
            if report(section, layout_run, done[1] if layout_run.layout.key == "artifact_no_pyc" else None):
                over_target.append(layout_run)
        for layout_run in over_target:
            explain(section, layout_run, prefix, 3 if quick else 5)
    section.figures["rounds"] = rounds
    return section


def report(section: Section, layout_run: LayoutRun, compiled: LayoutRun | None) -> list[str]:
    """Print one set's medians and ratios, add its rows; returns the functions over target.

    ``compiled``: for the set without .pyc, the artifact set with them, to print what the build step saves.
    """
    layout, samples, failed = layout_run.layout, layout_run.samples, layout_run.failed
    suffix = "" if layout.key == "dev" else f", {layout.label}"
    has_target = layout.key != "artifact_no_pyc"  # the "before" figure: what SAM's own builder would ship
    base = samples.ms["baseline"]
    base_ms = median(base)
    figures: dict[str, Any] = {"baseline_ms": {"median": base_ms, "iqr": spread(base), "samples": base}, "handlers": {}}
    section.figures[layout.key] = figures
    print(f"\n  {layout.label}:")
    print(f"  {'baseline: import boto3, jwt + boto3.client(dynamodb)':<54} {base_ms:7.1f}  ({spread(base)})")
    over_target: list[str] = []
    for variant in layout_run.handlers:
        name = short(variant.name)
        if variant.name in failed:
            print(f"  {name:<54} FAILED: {failed[variant.name]}")
            figures["handlers"][variant.name] = {"error": failed[variant.name]}
            section.rows.append(
                Row(f"cold start {name}{suffix}", "import failed", f"{base_ms:.0f} ms", None, TARGET, False)
            )
            continue
        values, paired = samples.ms[variant.name], samples.paired[variant.name]
        ms, r = median(values), median(paired)
        figures["handlers"][variant.name] = {
            "median_ms": ms,
            "iqr": spread(values),
            "paired_ratio": r,
            "paired_ratio_iqr": spread(paired, 2),
            "min_over_min_ratio": min(values) / min(base),
            "paired_ratios": paired,
            "samples": values,
        }
        line = f"  {name:<54} {ms:7.1f}  ({spread(values)})  {r:.2f}x  (fastest/fastest {min(values) / min(base):.2f}x)"
        if compiled is not None and variant.name in compiled.samples.ms:
            with_pyc = median(compiled.samples.ms[variant.name])
            figures["handlers"][variant.name]["over_artifact_with_pyc"] = ms / with_pyc
            line += f"  {ms / with_pyc:.1f}x the artifact with .pyc"
        print(line)
        if has_target:
            section.rows.append(
                Row(f"cold start {name}{suffix}", f"{ms:.0f} ms", f"{base_ms:.0f} ms", r, TARGET, r <= TARGET_RATIO)
            )
            if r > TARGET_RATIO:
                over_target.append(variant.name)
        else:
            section.rows.append(Row(f"cold start {name}{suffix}", f"{ms:.0f} ms", f"{base_ms:.0f} ms", r))
    return over_target


def explain(section: Section, layout_run: LayoutRun, prefix: Path, runs: int) -> None:
    """-X importtime for the functions of a set that are over target."""
    over = [h for h in layout_run.handlers if h.name not in layout_run.failed]
    over = [h for h in over if median(layout_run.samples.paired[h.name]) > TARGET_RATIO]
    base_runs = [run_child(layout_run.baseline, prefix, importtime=True).stderr for _ in range(runs)]
    details = section.figures.setdefault("importtime", {}).setdefault(layout_run.layout.key, {})
    for variant in over:
        handler_runs = [run_child(variant, prefix, importtime=True).stderr for _ in range(runs)]
        details[variant.name] = breakdown(handler_runs, base_runs)
        print_breakdown(f"{short(variant.name)} ({layout_run.layout.label})", details[variant.name], runs)


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
