"""The queue solve's integer part (issue 16 item 5): CPU ms per phase against the thesis's LP, same run.

Everything after the relaxation: repair (solver.queue_repair), pool closing (solver.queue_close_fast),
instance moves (solver.queue_move), the best split (solver.queue_split, then solver.queue_split_load) and plan
assembly (solver.queue_plan). Each case's relaxation is solved once, then the integer part is run ``--reps`` times
from it and the least CPU time of each phase is kept (robust to other load on the machine); the thesis's LP
solves the same snapshots (least CPU ms of as many solves). Cases: the thesis's sizes (Table 6.1, both
modes), Mode 1 with instances running, and 1,000 requests x 100 nodes from 50 sites; ``--cores`` as in
bench/queue_bench.py.

``--baseline DIR`` times a second source tree in the same run (e.g. ``git archive REV solver bench | tar -x
-C DIR``; this script runs on both, each tree's solver/ first), alternating with this one case group by case
group, and prints this tree's integer ms over the baseline's: the before/after of a change, both on the same
load; with it, the plans' change over the baseline's on the same relaxations (integer objective and mean
latency: the worst relative increase and the median relative change over the cases).

``--counts`` adds, per group, the tries and what came of them (summed over the cases, one integer part each):
pool closing's close tries and the pools it closed or moved; the move pass's rounds, tries, tries that beat the
plan and moves kept. ``--switch MODULE.NAME=VALUE`` (repeatable) sets one of the solver's switches in this
tree's runs only (e.g. ``queue_move.ENABLED=False``): with ``--baseline``, an option's cost and plan change
against the unchanged tree in the same run.

    .venv/bin/python bench/queue_integer_bench.py [--seeds N] [--reps N] [--cores N [N ...]]
                                                  [--baseline DIR] [--counts] [--switch M.NAME=V ...] [--json]
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import importlib
import itertools
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

PHASES = ("repair", "close", "move", "split", "plan")
GROUPS = ("thesis", "running", "1000x100")
COUNTS = ("close_tries", "closed", "move_rounds", "move_tries", "move_better", "moved")


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


def integer_phases(q: Any, nlp: Any, figures: list[float] | None = None) -> list[float]:
    """CPU ms of each phase of one integer part from the relaxation ``nlp`` (solver.queue_plan._solve's steps);
    ``figures`` (if given) receives the plan's integer objective and mean latency (ms)."""
    from solver import queue_plan
    from solver.queue_close_fast import close_pools_fast
    from solver.queue_move import move_instances
    from solver.queue_repair import repair
    from solver.queue_split import best_split

    try:
        from solver.queue_split_load import resplit_by_load
    except ImportError:  # a --baseline tree from before the split by load

        def resplit_by_load(pools: Any) -> bool:
            return False

    try:
        from solver.queue_sched import add_where_behind
        from solver.too_slow import drop_too_slow
    except ImportError:  # a --baseline tree from before the too-slow pools and the scheduler's extra instance

        def add_where_behind(pools: Any) -> int:
            return 0

        def drop_too_slow(pools: Any) -> Any:
            return getattr(pools, "too_slow_models", ())

    marks = [time.process_time()]
    pools = repair(q, nlp.x, nlp.r, nlp.n)
    pools.too_slow_models = drop_too_slow(pools)  # the plan's steps (solver.queue_plan.integer_part), timed apart
    marks.append(time.process_time())
    close_pools_fast(pools)
    marks.append(time.process_time())
    move_instances(pools)
    marks.append(time.process_time())
    best_split(pools)
    resplit_by_load(pools)
    add_where_behind(pools)
    marks.append(time.process_time())
    details = {"spread": queue_plan.spread(q, pools), "planned_queue": queue_plan.planned_queue(q, pools)}
    queue_plan.make_queue_plan(q, pools, "ipopt", nlp.status, details)
    marks.append(time.process_time())
    if figures is not None:
        from solver.queue_close import integer_objective

        figures[:] = [integer_objective(pools), queue_plan.mean_latency_ms(q, pools)]
    return [1000.0 * (b - a) for a, b in itertools.pairwise(marks)]


def measure(group: str, seeds: int, reps: int, cores: float | None, counting: bool = False) -> dict[str, Any]:
    """Per phase: the mean over cases of each case's least CPU ms; the LP's median ms and the ratio (``counting``:
    also the tries of ``COUNTS``, from one untimed integer part per case)."""
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
    figures: list[list[float]] = [[] for _ in runs]
    tally = {name: 0 for name in COUNTS}
    if counting:
        with _counting(tally):
            for q, nlp in runs:
                integer_phases(q, nlp)
    for _ in range(reps):
        for i, (q, nlp) in enumerate(runs):
            best[i] = [min(a, b) for a, b in zip(best[i], integer_phases(q, nlp, figures[i]), strict=True)]
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
        "figures": figures,
        "counts": tally if counting else None,
    }


@contextlib.contextmanager
def _counting(tally: dict[str, int]) -> Iterator[None]:
    """While open, count into ``tally`` the close tries (queue_close_fast._try_close) and what they closed, and the
    move rounds (queue_move._round), their tries, the tries that beat the plan and the moves kept."""
    from solver import queue_close_fast, queue_move

    try_close, one_round, move = queue_close_fast._try_close, queue_move._round, queue_move.move_instances

    def counted_close(*args: Any) -> Any:
        found = try_close(*args)
        tally["close_tries"] += 1
        tally["closed"] += found is not None
        return found

    def counted_round(pools: Any, counts: Any, moves: Any) -> Any:
        before, tried = one_round(pools, counts, moves)
        tally["move_rounds"] += 1
        tally["move_tries"] += len(tried)
        tally["move_better"] += sum(t is not None and t[0] < before - 1e-9 * max(1.0, abs(before)) for t in tried)
        return before, tried

    def counted_move(pools: Any) -> int:
        kept = int(move(pools))
        tally["moved"] += kept
        return kept

    wrapped: list[tuple[Any, str, Any]] = [(queue_close_fast, "_try_close", counted_close)]
    wrapped += [(queue_move, "_round", counted_round), (queue_move, "move_instances", counted_move)]
    originals = [(module, name, getattr(module, name)) for module, name, _ in wrapped]
    for module, name, counted in wrapped:
        setattr(module, name, counted)
    try:
        yield
    finally:
        for module, name, original in originals:
            setattr(module, name, original)


def set_switches(switches: list[str]) -> None:
    """Set each ``MODULE.NAME=VALUE`` (a module of solver/, an existing upper-case name, a Python literal)."""
    for item in switches:
        target, _, value = item.partition("=")
        module, _, name = target.rpartition(".")
        try:
            found = importlib.import_module(f"solver.{module}") if module.isidentifier() else None
            setting = ast.literal_eval(value)
        except (ImportError, ValueError, SyntaxError):
            found = None
        if found is None or not name.isupper() or not hasattr(found, name):
            raise SystemExit(f"--switch {item!r}: want MODULE.NAME=VALUE (an upper-case name of a solver/ module)")
        setattr(found, name, setting)


def child(args: argparse.Namespace) -> None:
    """Measure one group in this process and print it as JSON (used for both trees)."""
    from solver.fastlp import tune_solver_process
    from solver.simulate import thesis_instance

    tune_solver_process()
    from solver.api import solve

    set_switches(args.switch)
    for objective in ("thesis", "queue"):
        solve(thesis_instance(25, 10, 0), objective=objective)  # imports and first-call costs out of the figures
    print(json.dumps(measure(args.group, args.seeds, args.reps, args.one_cores or None, args.counts)))


def run_tree(
    tree: Path, group: str, args: argparse.Namespace, cores: float, switches: list[str] | None = None
) -> dict[str, Any]:
    """One group measured in a fresh process on the source tree ``tree`` (its solver/ and bench/ first), with
    ``switches`` set there (``--switch``)."""
    env = {**os.environ, "PYTHONPATH": f"{tree}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", group, "--seeds", str(args.seeds)]
    cmd += ["--reps", str(args.reps), "--one-cores", str(cores)]
    cmd += ["--counts"] if args.counts else []
    for item in switches or []:
        cmd += ["--switch", item]
    out = subprocess.run(cmd, env=env, cwd=tree, check=True, capture_output=True, text=True).stdout
    return dict(json.loads(out.strip().splitlines()[-1]))


def plan_change(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Over every case of ``rows`` (each with "now" and "before"): the worst relative increase and the median
    relative change of the integer objective and of the mean latency, this tree against the baseline."""
    objective: list[float] = []
    latency: list[float] = []
    for row in rows:
        for now, before in zip(row["now"]["figures"], row["before"]["figures"], strict=True):
            objective.append((now[0] - before[0]) / max(abs(before[0]), 1e-12))
            latency.append((now[1] - before[1]) / max(abs(before[1]), 1e-12))
    return {
        "cases": len(objective),
        "changed": sum(o != 0.0 or m != 0.0 for o, m in zip(objective, latency, strict=True)),
        "objective_worst": max(objective),
        "objective_median": statistics.median(objective),
        "objective_best": min(objective),
        "latency_worst": max(latency),
        "latency_median": statistics.median(latency),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=3, help="instances per thesis size (default 3)")
    ap.add_argument("--reps", type=int, default=3, help="integer parts per case; the least CPU time counts (3)")
    ap.add_argument("--cores", type=float, nargs="+", default=[0.0, 2.0], metavar="N",
                    help="cores per node where the snapshot declares none (0: none); default 0 2")  # fmt: skip
    ap.add_argument("--baseline", type=Path, help="a second source tree to time in the same run (before/after)")
    ap.add_argument("--counts", action="store_true", help="also count the close and move tries and what came of them")
    ap.add_argument("--switch", action="append", default=[], metavar="M.NAME=V",
                    help="set a solver switch in this tree's runs (queue_move.ENABLED=False); repeatable")  # fmt: skip
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    ap.add_argument("--child", choices=GROUPS, dest="group", help=argparse.SUPPRESS)
    ap.add_argument("--one-cores", type=float, default=0.0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.group:
        child(args)
        return
    set_switches(args.switch)  # checked here before any run (each run sets them in its own process)
    here = Path(__file__).resolve().parents[1]
    rows = []
    for cores in args.cores:
        for group in GROUPS:
            row = {"cores": cores, "now": run_tree(here, group, args, cores, args.switch)}
            if args.baseline:
                row["before"] = run_tree(args.baseline.resolve(), group, args, cores)
            rows.append(row)
    load = os.getloadavg()
    change = plan_change(rows) if args.baseline else None
    if args.json:
        print(json.dumps({"rows": rows, "loadavg": load, "plan_change": change}, indent=1))
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
    if args.counts:
        print(f"{'cores':>5} {'group':<9}" + "".join(f"{name:>13}" for name in COUNTS) + "  (summed over the cases)")
        for row in rows:
            found = row["now"]["counts"]
            print(f"{row['cores']:>5g} {row['now']['group']:<9}" + "".join(f"{found[name]:>13}" for name in COUNTS))
    if args.switch:
        print("switches (this tree only): " + ", ".join(args.switch))
    if change is not None:
        print(
            f"plans against the baseline's ({change['cases']} cases, {change['changed']} changed): integer objective"
            f" worst {change['objective_worst']:+.2e}, median {change['objective_median']:+.2e}, best"
            f" {change['objective_best']:+.2e}; mean latency worst {change['latency_worst']:+.2e}, median"
            f" {change['latency_median']:+.2e} (relative)"
        )


if __name__ == "__main__":
    main()
