"""Solver benchmark: solve times at the thesis's sizes, the 1,000 x 100 scale cases, and quality.

Every figure is measured in this run, beside its baselines: HiGHS (dual simplex, the floor for an LP
this size) on exactly the LP the fast path solves, built whole; the Pyomo reference model solved by the
same Ipopt (``ipopt-pyomo``, the path before the fast one); the MILP optimum and iterative search for
quality; and the thesis's reported AMPL + Ipopt times on a Jetson Xavier NX. Imports and first-call
set-up are excluded (one warm-up solve per method, then, as the leader's solver worker does, the heap frozen for the
garbage collector and freed memory kept in the heap); times are medians over seeds and repeats.

Times are CPU time of this process (``time.process_time``; the solvers run single-threaded), because
on a shared machine wall time mostly measures the other jobs; the summary gives the wall-time figures too.

Nearly full instances (the plain greedy cannot place every request, so the capacity prices come from the
smoothed dual of solver.lpdual) are named separately, with the instance that sets the max; ``--runs N``
repeats the timing section and prints each run's median / p90 / max beside the load average, then the
medians over the runs (on a shared machine one run's max mostly measures the neighbours).

    .venv/bin/python bench/solver_bench.py [--seeds N] [--repeat N] [--runs N] [--quality-seeds N] [--json]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time
from typing import Any

import numpy as np
from tqdm import tqdm

from solver import fastlp, lpguide
from solver.api import solve
from solver.fastlp import full_lp, solve_lp, tune_solver_process
from solver.problem import Mode, build_problem
from solver.simulate import SWEEPS, site_instance, thesis_instance

THESIS_MS = {"requests": (19.2, 24.4), "nodes": (17.7, 26.5)}
SIZES = {"requests": [(r, 10) for r in SWEEPS["requests"]], "nodes": [(25, n) for n in SWEEPS["nodes"]]}
SCALE_SITES = (50, 100)  # 1,000 requests x 100 nodes with ~200 and ~370 request classes


def highs_lp(p: Any) -> tuple[float, float]:
    """(ms, optimum) of HiGHS on the whole LP the fast path solves (model hand-over included)."""
    import highspy
    import scipy.sparse as sp

    arrays = full_lp(p)
    n, m = len(arrays["cost"]), len(arrays["cl"])
    a = sp.csc_matrix((arrays["vals"], (arrays["rows"], arrays["cols"])), shape=(m, n))
    start = time.process_time()
    h = highspy.Highs()
    h.setOptionValue("output_flag", False)
    h.setOptionValue("threads", 1)
    lp = highspy.HighsLp()
    lp.num_col_, lp.num_row_ = n, m
    lp.col_cost_, lp.col_lower_, lp.col_upper_ = arrays["cost"], arrays["lb"], arrays["ub"]
    lp.row_lower_, lp.row_upper_ = arrays["cl"], arrays["cu"]
    lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
    lp.a_matrix_.start_, lp.a_matrix_.index_, lp.a_matrix_.value_ = a.indptr, a.indices, a.data
    h.passModel(lp)
    h.run()
    elapsed = 1000 * (time.process_time() - start)
    return elapsed, float(h.getInfo().objective_function_value)


def lp_times(problems: list[Any], repeat: int) -> dict[str, float]:
    """Median ms of the fast path's LP and of HiGHS on the same LPs; largest optimum difference."""
    fast, highs, diff = [], [], 0.0
    for p in problems:
        for _ in range(repeat):
            t = time.process_time()
            sol = solve_lp(p)
            fast.append(1000 * (time.process_time() - t))
            ms, optimum = highs_lp(p)
            highs.append(ms)
        diff = max(diff, abs(sol.value - optimum) / max(1.0, abs(optimum)))
    return {"lp_ms": statistics.median(fast), "highs_ms": statistics.median(highs), "lp_rel_diff": diff}


WALL: list[float] = []  # every ipopt full solve's wall time (plan.solve_ms), for the summary
SOLVES: list[dict[str, Any]] = []  # every ipopt full solve: CPU ms, instance, mode, nearly full or not


def solve_times(
    snapshots: list[Any], method: str, mode: str, repeat: int, names: list[str] | None = None
) -> list[float]:
    """CPU ms of each full solve (each snapshot ``repeat`` times)."""
    out = []
    for i, s in enumerate(snapshots):
        for _ in range(repeat):
            t = time.process_time()
            plan = solve(s, method=method, mode=mode)
            out.append(1000 * (time.process_time() - t))
            if method == "ipopt":
                WALL.append(plan.solve_ms)
                full = plan.details.get("estimate") == "smoothed"  # the plain greedy could not place everything
                name = names[i] if names else "?"
                SOLVES.append({"ms": out[-1], "instance": name, "mode": mode, "nearly_full": full, "snapshot": s})
    return out


def nearly_full_ab(repeat: int) -> dict[str, Any]:
    """The nearly full instances of the last run solved with and without the smoothed-dual prices, interleaved.

    Without them (``lpguide.SMOOTHED = False``) is the previous fast path: every node a candidate column.
    """
    seen: dict[tuple[str, str], Any] = {}
    for r in SOLVES:
        if r["nearly_full"]:
            seen[(r["instance"], r["mode"])] = r["snapshot"]
    times: dict[bool, list[float]] = {True: [], False: []}
    for (_, mode), snapshot in seen.items():
        for _ in range(repeat):
            for smoothed in (True, False):
                lpguide.SMOOTHED = smoothed
                t = time.process_time()
                solve(snapshot, method="ipopt", mode=mode)
                times[smoothed].append(1000 * (time.process_time() - t))
    lpguide.SMOOTHED = True
    if not seen:
        return {"instances": 0}
    return {
        "instances": len(seen),
        "smoothed_median_ms": statistics.median(times[True]),
        "smoothed_max_ms": max(times[True]),
        "previous_median_ms": statistics.median(times[False]),
        "previous_max_ms": max(times[False]),
    }


class Probe:
    """Counts the Ipopt calls and LP sizes of the fast path and the CPU time in Ipopt and the price estimate."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int, int]] = []  # (variables, rows, iterations)
        self.ipopt_s = 0.0
        self.guide_s = 0.0
        self._ipopt, self._estimate = fastlp._ipopt, fastlp.estimate

    def __enter__(self) -> Probe:
        def ipopt(lp: Any, options: dict[str, Any]) -> Any:
            t = time.process_time()
            out = self._ipopt(lp, options)
            self.ipopt_s += time.process_time() - t
            self.calls.append((len(lp.cost), len(lp.cl), out[3]))
            return out

        def estimate(*args: Any, **kwargs: Any) -> Any:
            t = time.process_time()
            out = self._estimate(*args, **kwargs)
            self.guide_s += time.process_time() - t
            return out

        fastlp._ipopt, fastlp.estimate = ipopt, estimate
        return self

    def __exit__(self, *exc: object) -> None:
        fastlp._ipopt, fastlp.estimate = self._ipopt, self._estimate


def breakdown(snapshots: list[Any], mode: str) -> dict[str, Any]:
    """Where a full solve's CPU time goes (per solve, means): Ipopt calls, LP size, estimate, Ipopt, rest."""
    total, guided, probe = 0.0, 0, Probe()
    with probe:
        for s in snapshots:
            t = time.process_time()
            plan = solve(s, method="ipopt", mode=mode)
            total += time.process_time() - t
            guided += bool(plan.details.get("guided"))
    n = len(snapshots)
    return {
        "calls": len(probe.calls) / n,
        "lp_vars": statistics.fmean(c[0] for c in probe.calls) if probe.calls else 0.0,
        "lp_rows": statistics.fmean(c[1] for c in probe.calls) if probe.calls else 0.0,
        "iterations": sum(c[2] for c in probe.calls) / n,
        "guided": guided / n,
        "guide_ms": 1000 * probe.guide_s / n,
        "ipopt_ms": 1000 * probe.ipopt_s / n,
        "rest_ms": 1000 * (total - probe.ipopt_s - probe.guide_s) / n,
    }


def timing(seeds: int, repeat: int, bar: Any) -> tuple[list[dict[str, Any]], dict[str, list[float]]]:
    rows, every = [], {"1": [], "2": []}
    for vary, sizes in SIZES.items():
        for requests, nodes in sizes:
            snaps = [thesis_instance(requests, nodes, seed) for seed in range(seeds)]
            names = [f"{requests}x{nodes} seed {seed}" for seed in range(seeds)]
            row: dict[str, Any] = {"vary": vary, "requests": requests, "nodes": nodes}
            for mode in ("1", "2"):
                times = solve_times(snaps, "ipopt", mode, repeat, names)
                every[mode] += times
                row[f"ipopt_mode{mode}_ms"] = statistics.median(times)
            row["pyomo_ipopt_mode1_ms"] = statistics.median(solve_times(snaps, "ipopt-pyomo", "1", 1))
            row.update(lp_times([build_problem(s, Mode.MODE1) for s in snaps], repeat))
            row["milp_ms"] = statistics.median(solve_times(snaps, "milp", "1", 1))
            row["where"] = {mode: breakdown(snaps, mode) for mode in ("1", "2")}
            bar.update(1)
            rows.append(row)
    return rows, every


def scale(sites: int, repeat: int) -> dict[str, Any]:
    s = site_instance(1000, 100, sites=sites, seed=0)
    times = solve_times([s], "ipopt", "2", repeat)
    ip = solve(s, method="ipopt", mode="2")
    mi = solve(s, method="milp", mode="2")
    lp = lp_times([build_problem(s, Mode.MODE2)], repeat)
    return {
        "requests": 1000,
        "nodes": 100,
        "classes": ip.details.get("classes"),
        "columns": ip.details.get("columns"),
        "rows": ip.details.get("rows"),
        "ipopt_ms": statistics.median(times),
        "ipopt_ms_min": min(times),
        "pyomo_ipopt_ms": solve_times([s], "ipopt-pyomo", "2", 1)[0],
        "milp_ms": solve_times([s], "milp", "2", 1)[0],
        **lp,
        "ipopt_gap_to_milp_pct": 100 * (ip.objective_ms / mi.objective_ms - 1),
        "where": breakdown([s], "2"),
    }


def quality(seeds: int, bar: Any) -> dict[str, Any]:
    gaps, gains, lp_gaps = [], [], []
    for seed in range(seeds):
        s = thesis_instance(25, 10, seed)
        ip, mi, it = (solve(s, method=m, mode="1") for m in ("ipopt", "milp", "iterative"))
        bar.update(1)
        if ip.served == mi.served:
            gaps.append(100 * (ip.objective_ms / mi.objective_ms - 1))
        gains.append(100 * (1 - ip.objective_ms / it.objective_ms))
        if ip.lower_bound_ms:
            lp_gaps.append(100 * (ip.objective_ms / ip.lower_bound_ms - 1))
    return {
        "seeds": seeds,
        "ipopt_mode1_gap_to_milp_pct_mean": statistics.fmean(gaps),
        "ipopt_mode1_gap_to_milp_pct_max": max(gaps),
        "ipopt_mode1_below_iterative_pct_mean": statistics.fmean(gains),
        "ipopt_mode1_above_lp_bound_pct_mean": statistics.fmean(lp_gaps),
    }


def summary(every: dict[str, list[float]]) -> dict[str, Any]:
    both = every["1"] + every["2"]
    full = [r["ms"] for r in SOLVES if r["nearly_full"]]
    worst = max(SOLVES, key=lambda r: r["ms"])
    return {
        "median_ms": statistics.median(both),
        "p90_ms": float(np.percentile(both, 90)),
        "max_ms": max(both),
        "solves": len(both),
        "max_at": f"{worst['instance']}, mode {worst['mode']}" + (" (nearly full)" if worst["nearly_full"] else ""),
        "nearly_full_solves": len(full),
        "nearly_full_median_ms": statistics.median(full) if full else None,
        "nearly_full_max_ms": max(full) if full else None,
        "other_max_ms": max((r["ms"] for r in SOLVES if not r["nearly_full"]), default=None),
        "wall_median_ms": statistics.median(WALL),
        "wall_max_ms": max(WALL),
    }


def report(result: dict[str, Any]) -> None:
    print("Solve time, median CPU ms (imports excluded); thesis: AMPL+Ipopt on a Xavier NX")
    head = ("requests", "nodes", "ipopt m1", "ipopt m2", "before", "LP", "HiGHS", "LP/HiGHS", "thesis")
    print(f"{head[0]:>8} {head[1]:>5} {head[2]:>9} {head[3]:>9} {head[4]:>7} {head[5]:>6} {head[6]:>6} "
          f"{head[7]:>8} {head[8]:>11}")  # fmt: skip
    for r in result["timing"]:
        lo, hi = THESIS_MS[r["vary"]]
        print(
            f"{r['requests']:>8} {r['nodes']:>5} {r['ipopt_mode1_ms']:>9.1f} {r['ipopt_mode2_ms']:>9.1f} "
            f"{r['pyomo_ipopt_mode1_ms']:>7.1f} {r['lp_ms']:>6.1f} {r['highs_ms']:>6.1f} "
            f"{r['lp_ms'] / r['highs_ms']:>8.1f} {lo:>5.1f}-{hi:<5.1f}"
        )
    a = result["all"]
    print(
        "  ipopt m1/m2 = full solve (LP + rounding + plan); before = the Pyomo model with the same Ipopt;\n"
        "  LP = the fast path's LP alone; HiGHS = dual simplex on that whole LP; LP/HiGHS = their ratio\n"
        f"  every full solve above, both modes: median {a['median_ms']:.1f} ms, p90 {a['p90_ms']:.1f} ms, "
        f"max {a['max_ms']:.1f} ms over {a['solves']} solves (goal: median <= 10, max <= 26.5), max at {a['max_at']};\n"
        f"  nearly full instances (the plain greedy cannot place every request; smoothed-dual prices): "
        f"{a['nearly_full_solves']} solves, median {_ms(a['nearly_full_median_ms'])}, "
        f"max {_ms(a['nearly_full_max_ms'])}; "
        f"the other solves' max {_ms(a['other_max_ms'])};\n"
        f"  wall time (plan.solve_ms, shared machine): median {a['wall_median_ms']:.1f} ms, "
        f"max {a['wall_max_ms']:.1f} ms"
    )
    print("\nWhere a full solve's time goes (means per solve, CPU ms): Ipopt calls, LP size (variables x rows),")
    print("Ipopt iterations, share of solves whose columns came from the trusted price estimate")
    head = ("size", "mode", "calls", "LP", "iters", "guided", "estimate", "Ipopt", "rest")
    print(f"{head[0]:>9} {head[1]:>4} {head[2]:>5} {head[3]:>11} {head[4]:>5} {head[5]:>6} {head[6]:>8} {head[7]:>6} "
          f"{head[8]:>5}")  # fmt: skip
    wheres = [(f"{r['requests']}x{r['nodes']}", m, w) for r in result["timing"] for m, w in r["where"].items()]
    wheres += [(f"1000x100/{b['classes']}", "2", b["where"]) for b in result["scale"]]
    for size, mode, w in wheres:
        print(
            f"{size:>9} {mode:>4} {w['calls']:>5.1f} {w['lp_vars']:>5.0f} x {w['lp_rows']:<3.0f} "
            f"{w['iterations']:>5.1f} {100 * w['guided']:>5.0f}% {w['guide_ms']:>8.1f} {w['ipopt_ms']:>6.1f} "
            f"{w['rest_ms']:>5.1f}"
        )
    for big in result["scale"]:
        print(
            f"\n1,000 requests x 100 nodes, {big['classes']} classes: LP of {big['rows']} rows x {big['columns']} "
            f"columns; full solve {big['ipopt_ms']:.0f} ms (min {big['ipopt_ms_min']:.0f}; goal <= 150), before "
            f"{big['pyomo_ipopt_ms']:.0f} ms; LP {big['lp_ms']:.0f} ms vs HiGHS {big['highs_ms']:.0f} ms "
            f"(ratio {big['lp_ms'] / big['highs_ms']:.1f}); MILP {big['milp_ms']:.0f} ms; "
            f"{big['ipopt_gap_to_milp_pct']:.2f}% above the MILP optimum"
        )
    ab = result["nearly_full_ab"]
    if ab["instances"]:
        print(
            f"\nNearly full instances ({ab['instances']} instance x mode pairs), same run, interleaved: smoothed-dual "
            f"prices median {ab['smoothed_median_ms']:.1f} ms, max {ab['smoothed_max_ms']:.1f} ms; previous fast path "
            f"(every node a candidate) median {ab['previous_median_ms']:.1f} ms, max {ab['previous_max_ms']:.1f} ms"
        )
    q = result["quality"]
    print(
        f"\nQuality at thesis defaults over {q['seeds']} seeds (Mode 1): Ipopt "
        f"{q['ipopt_mode1_gap_to_milp_pct_mean']:.2f}% above the MILP optimum on average "
        f"(max {q['ipopt_mode1_gap_to_milp_pct_max']:.2f}%, goal < 2%), "
        f"{q['ipopt_mode1_below_iterative_pct_mean']:.1f}% below iterative search (thesis 41%, goal >= 35%)"
    )


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


def report_runs(runs: list[dict[str, Any]], loads: list[tuple[float, float]]) -> None:
    """Per-run summary figures and their medians (``--runs``), with the load average around each run."""
    print(f"\nRuns ({len(runs)}): median / p90 / max CPU ms over the thesis sizes, both modes; load average (1 min)")
    for i, (a, load) in enumerate(zip(runs, loads, strict=True)):
        print(
            f"  run {i + 1}: {a['median_ms']:.1f} / {a['p90_ms']:.1f} / {a['max_ms']:.1f} (max at {a['max_at']}); "
            f"nearly full max {_ms(a['nearly_full_max_ms'])}; load {load[0]:.1f} -> {load[1]:.1f}"
        )
    for key in ("median_ms", "p90_ms", "max_ms", "nearly_full_max_ms", "other_max_ms"):
        values = [r[key] for r in runs if r[key] is not None]
        if values:
            print(f"  {key}: median of runs {statistics.median(values):.1f} (runs {min(values):.1f}-{max(values):.1f})")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=5, help="instances per size for timing (default 5)")
    ap.add_argument("--repeat", type=int, default=3, help="solves per instance for timing (default 3)")
    ap.add_argument("--quality-seeds", type=int, default=20, help="instances for quality (default 20)")
    ap.add_argument("--runs", type=int, default=1, help="repeat the timing section; report each run and the medians")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = ap.parse_args()
    for method in ("ipopt", "ipopt-pyomo", "milp", "iterative"):
        solve(thesis_instance(5, 3, 0), method=method)  # warm-up: imports and library loading
    highs_lp(build_problem(thesis_instance(5, 3, 0), Mode.MODE1))
    gc.collect()
    gc.freeze()  # as the leader's solver worker does after its warm-up (agent/solver_worker.py)
    tune_solver_process()  # likewise
    started = time.perf_counter()
    runs, loads = [], []
    total = 8 * args.runs + args.quality_seeds
    with tqdm(total=total, desc="bench", file=sys.stderr, disable=args.json, leave=False) as bar:
        for _ in range(args.runs):
            WALL.clear()
            SOLVES.clear()
            before = os.getloadavg()[0]
            rows, every = timing(args.seeds, args.repeat, bar)
            runs.append(summary(every))
            loads.append((before, os.getloadavg()[0]))
        ab = nearly_full_ab(args.repeat)
        big = [scale(sites, args.repeat) for sites in SCALE_SITES]
        qual = quality(args.quality_seeds, bar)
    for r in SOLVES:
        r.pop("snapshot")
    result = {"timing": rows, "all": runs[-1], "runs": runs, "load": loads, "nearly_full_ab": ab}
    result |= {"scale": big, "quality": qual}
    result["wall_s"] = time.perf_counter() - started
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        report(result)
        report_runs(runs, loads)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
