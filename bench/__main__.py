"""Run the benchmark parts in order, then print one summary table (``make bench ARGS=--quick``).

Parts: 1 cold (handler cold start), 2 fit (FIT verification), 3 warm (warm requests), 4 anchor (the
naive pattern over a simulated day), 5 scale (scheduling 10,000 installations; worker throughput),
6 offline (offline user token mints per 1,000 jobs, cached vs mint per job), 7 wakeup (fresh token to
parked job done after a 3 h lull, with the wake-up and backoff only), 8 quota (10,000 installations inside
one points quota over a simulated day, and a noisy neighbour, against today's design).
A part that fails is reported as failed (and not met); the others still run.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.common import Row, Section, fake_aws_environment, print_table

PARTS: dict[str, tuple[str, str]] = {
    "cold": ("1. Cold start: handler import + init in a fresh process", "bench.cold_start"),
    "fit": ("2. FIT verification, warm keys", "bench.fit_verify"),
    "warm": ("3. Warm requests through forge_triggers (in-process moto)", "bench.warm_requests"),
    "anchor": ("4. The anchor: the naive pattern over a simulated day", "bench.anchor"),
    "scale": ("5. Scale: scheduling and worker throughput", "bench.scale"),
    "offline": ("6. Offline user tokens: mints per 1,000 jobs, cached vs mint per job", "bench.offline_tokens"),
    "wakeup": ("7. Waking parked jobs: fresh token to job done after a 3 h lull", "bench.wakeup"),
    "quota": ("8. The fleet inside one points quota: a simulated day and a noisy neighbour", "bench.fleet_quota"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (about half the run time)")
    parser.add_argument("--json", metavar="PATH", type=Path, help="also write every figure to PATH as JSON")
    parser.add_argument(
        "--only", metavar="PARTS", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}"
    )
    args = parser.parse_args(argv)
    selected = [p.strip() for p in args.only.split(",") if p.strip()]
    unknown = [p for p in selected if p not in PARTS]
    if unknown:
        parser.error(f"unknown part(s) {', '.join(unknown)}; choose from {', '.join(PARTS)}")

    fake_aws_environment()
    # Emulators' access logs and the library's warnings (e.g. a late, already-expired token in the day
    # simulation) would interleave with the report; the figures count what matters.
    logging.getLogger().addHandler(logging.NullHandler())
    logging.getLogger("werkzeug").setLevel(logging.ERROR)

    started = time.perf_counter()
    print(
        f"forge-remote bench: Python {platform.python_version()} on {platform.machine()}, "
        f"{os.cpu_count()} CPUs{', --quick' if args.quick else ''}. Side by side in one run; medians."
    )
    sections: list[Section] = []
    crashed: list[str] = []
    for key in selected:
        title, module_name = PARTS[key]
        print(f"\n== {title} ==")
        part_started = time.perf_counter()
        try:
            module = __import__(module_name, fromlist=["run"])
            run: Callable[..., Section] = module.run
            section = run(quick=args.quick)
        except Exception as exc:
            traceback.print_exc(limit=3)
            crashed.append(key)
            section = Section(key, rows=[Row(f"{key}: part failed", type(exc).__name__, "-", None, "runs", False)])
            section.notes.append(f"{type(exc).__name__}: {exc}")
        section.figures["part_seconds"] = time.perf_counter() - part_started
        print(f"  ({section.figures['part_seconds']:.0f} s)")
        sections.append(section)

    wall = time.perf_counter() - started
    print("\n== Summary ==")
    rows = [row for section in sections for row in section.rows]
    print_table(rows)
    missed = [r.metric for r in rows if r.met is False]
    print(f"\n{len(rows)} figures, {sum(r.met is True for r in rows)} targets met, {len(missed)} not met", end="")
    print(f" ({'; '.join(missed)})" if missed else "")
    print(f"wall time {wall:.0f} s")

    if args.json:
        document: dict[str, Any] = {
            "meta": {
                "python": platform.python_version(),
                "machine": platform.machine(),
                "cpus": os.cpu_count(),
                "quick": args.quick,
                "parts": selected,
                "wall_s": wall,
                "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            },
            "sections": {s.name: s.as_dict() for s in sections},
        }
        args.json.write_text(json.dumps(document, indent=2, default=str) + "\n")
        print(f"figures written to {args.json}")
    # Targets missed are figures, not failures (never asserted); a part that could not run is a failure.
    return 1 if crashed else 0


if __name__ == "__main__":
    sys.exit(main())
