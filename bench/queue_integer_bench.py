"""The queue solve's integer part (issue 16 item 5): CPU ms per phase against the thesis's LP, same run.

Everything after the relaxation: repair (solver.queue_repair), pool closing (solver.queue_close_fast),
instance moves (solver.queue_move), the best split (solver.queue_split) and plan assembly
(solver.queue_plan). Each case's relaxation is solved once, then the integer part is run ``--reps`` times
from it and the least CPU time of each phase is kept (robust to other load on the machine); the thesis's LP
solves the same snapshots (least CPU ms of as many solves). Cases: the thesis's sizes (Table 6.1, both
modes), Mode 1 with instances running, and 1,000 requests x 100 nodes from 50 sites; ``--cores`` as in
bench/queue_bench.py.

``--baseline DIR`` times a second source tree in the same run (e.g. ``git archive REV solver bench | tar -x
-C DIR``), alternating with this one case group by case group, and prints this tree's integer ms over the
baseline's: the before/after of a change, both on the same load.

    .venv/bin/python bench/queue_integer_bench.py [--seeds N] [--reps N] [--cores N [N ...]]
                                                  [--baseline DIR] [--json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

PHASES = ("repair", "close", "move", "split", "plan")
GROUPS = ("thesis", "running", "1000x100")


def cases(group: str, seeds: int, cores: float | None) -> list[tuple[str, Any, str]]:
    """(label, snapshot, mode) of one case group."""
    from bench.queue_bench import SIZES, with_cores, with_running
    from solver.simulate import site_instance, thesis_instance

    if group == "thesis":
        found = [(f"{r}x{n}", thesis_instance(r, n, s), m) for r, n in SIZES for s in range(seeds) for m in "12"]
    elif group == "running":
        found = [(f"{r}x{n}", with_running(thesis_instance(r, n, s), s), "1") for r, n in SIZES for s in range(seeds)]
    else:
        found = [("1000x100", site_instance(1000, 100, 50, 0), m) for m in "12"]
    return [(label, with_cores(snap, cores), mode) for label, snap, mode in found]


def integer_phases(q: Any, nlp: Any) -> list[float]:
    """CPU ms of each phase of one integer part from the relaxation ``nlp`` (solver.queue_plan._solve's steps)."""
    from solver import queue_plan
    from solver.queue_close_fast import close_pools_fast
    from solver.queue_move import move_instances
    from solver.queue_repair import repair
    from solver.queue_split import best_split

    marks = [time.process_time()]
    pools = repair(q, nlp.x, nlp.r, nlp.n)
    marks.append(time.process_time())
    close_pools_fast(pools)
    marks.append(time.process_time())
    move_instances(pools)
    marks.append(time.process_time())
    best_split(pools)
    marks.append(time.process_time())
    details = {"spread": queue_plan.spread(q, pools), "planned_queue": queue_plan.planned_queue(q, pools)}
    queue_plan.make_queue_plan(q, pools, "ipopt", nlp.status, details)
    marks.append(time.process_time())
    return [1000.0 * (b - a) for a, b in itertools.pairwise(marks)]


def measure(group: str, seeds: int, reps: int, cores: float | None) -> dict[str, Any]:
    """Per phase: the mean over cases of each case's least CPU ms; the LP's median ms and the ratio."""
    from solver.api import solve
    from solver.problem import Mode, build_problem
    from solver.queue_fast import solve_nlp_fast
    from solver.queue_model import build_queue_problem

    found = cases(group, seeds, cores)
    runs = []
    for _, snap, mode in found:
        q = build_queue_problem(build_problem(snap, Mode.MODE1 if mode == "1" else Mode.MODE2))
        runs.append((q, solve_nlp_fast(q)))
    best = [[float("inf")] * len(PHASES) for _ in runs]
    for _ in range(reps):
        for i, (q, nlp) in enumerate(runs):
            best[i] = [min(a, b) for a, b in zip(best[i], integer_phases(q, nlp), strict=True)]
    lp = [float("inf")] * len(found)
    for _ in range(reps):
        for i, (_, snap, mode) in enumerate(found):
            start = time.process_time()
            solve(snap, mode=mode, objective="thesis")
            lp[i] = min(lp[i], 1000.0 * (time.process_time() - start))
    phases = {name: statistics.mean(b[i] for b in best) for i, name in enumerate(PHASES)}
    totals = [sum(b) for b in best]
    return {
        "group": group,
        "cases": len(runs),
        **{f"{k}_ms": v for k, v in phases.items()},
        "integer_ms": statistics.mean(totals),
        "integer_median_ms": statistics.median(totals),
        "lp_median_ms": statistics.median(lp),
        "ratio_median": statistics.median(t / max(x, 1e-9) for t, x in zip(totals, lp, strict=True)),
    }


def child(args: argparse.Namespace) -> None:
    """Measure one group in this process and print it as JSON (used for both trees)."""
    from solver.fastlp import tune_solver_process
    from solver.simulate import thesis_instance

    tune_solver_process()
    from solver.api import solve

    for objective in ("thesis", "queue"):
        solve(thesis_instance(25, 10, 0), objective=objective)  # imports and first-call costs out of the figures
    print(json.dumps(measure(args.group, args.seeds, args.reps, args.one_cores or None)))


def run_tree(tree: Path, group: str, args: argparse.Namespace, cores: float) -> dict[str, Any]:
    """One group measured in a fresh process on the source tree ``tree`` (its solver/ and bench/ first)."""
    env = {**os.environ, "PYTHONPATH": f"{tree}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", group, "--seeds", str(args.seeds)]
    cmd += ["--reps", str(args.reps), "--one-cores", str(cores)]
    out = subprocess.run(cmd, env=env, cwd=tree, check=True, capture_output=True, text=True).stdout
    return dict(json.loads(out.strip().splitlines()[-1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=3, help="instances per thesis size (default 3)")
    ap.add_argument("--reps", type=int, default=3, help="integer parts per case; the least CPU time counts (3)")
    ap.add_argument("--cores", type=float, nargs="+", default=[0.0, 2.0], metavar="N",
                    help="cores per node where the snapshot declares none (0: none); default 0 2")  # fmt: skip
    ap.add_argument("--baseline", type=Path, help="a second source tree to time in the same run (before/after)")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    ap.add_argument("--child", choices=GROUPS, dest="group", help=argparse.SUPPRESS)
    ap.add_argument("--one-cores", type=float, default=0.0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.group:
        child(args)
        return
    here = Path(__file__).resolve().parents[1]
    rows = []
    for cores in args.cores:
        for group in GROUPS:
            row = {"cores": cores, "now": run_tree(here, group, args, cores)}
            if args.baseline:
                row["before"] = run_tree(args.baseline.resolve(), group, args, cores)
            rows.append(row)
    load = os.getloadavg()
    if args.json:
        print(json.dumps({"rows": rows, "loadavg": load}, indent=1))
        return
    print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} (CPU time: least of {args.reps} per case)")
    head = f"{'cores':>5} {'group':<9}" + "".join(f"{p:>8}" for p in PHASES)
    print(head + f"{'integer':>9}{'LP':>7}{'int/LP':>8}" + ("  before  now/before" if args.baseline else ""))
    for row in rows:
        now = row["now"]
        line = f"{row['cores']:>5g} {now['group']:<9}" + "".join(f"{now[p + '_ms']:>8.2f}" for p in PHASES)
        line += f"{now['integer_ms']:>9.2f}{now['lp_median_ms']:>7.1f}{now['ratio_median']:>8.2f}"
        if "before" in row:
            line += f"  {row['before']['integer_ms']:>6.2f}  {now['integer_ms'] / row['before']['integer_ms']:>10.2f}"
        print(line)
    print("ms: mean over the group's cases; int/LP: median over cases of integer ms / the LP's ms on that snapshot")


if __name__ == "__main__":
    main()
