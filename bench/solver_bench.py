"""Solver benchmark: solve times at the thesis's sizes, the 1,000 x 100 scale case, and quality.

Prints figures and ratios against baselines measured in the same run (Pyomo's stock cyipopt path for
time, the MILP optimum and iterative search for quality) and against the thesis's reported numbers.
Imports and first-call initialisation are excluded (one warm-up solve per method).

    .venv/bin/python bench/solver_bench.py [--seeds N] [--quality-seeds N] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Any

from tqdm import tqdm

from solver.api import solve
from solver.simulate import site_instance, thesis_instance

THESIS_MS = {"requests": (19.2, 24.4), "nodes": (17.7, 26.5)}
SIZES = {"requests": [(r, 10) for r in (20, 30, 40, 50)], "nodes": [(25, n) for n in (5, 10, 15, 20)]}


def median_ms(snapshots: list[Any], method: str, mode: str, repeat: int) -> float:
    times = []
    for s in snapshots:
        for _ in range(repeat):
            times.append(solve(s, method=method, mode=mode).solve_ms)
    return statistics.median(times)


def timing(seeds: int, repeat: int, bar: Any) -> list[dict[str, Any]]:
    rows = []
    for vary, sizes in SIZES.items():
        for requests, nodes in sizes:
            snaps = [thesis_instance(requests, nodes, seed) for seed in range(seeds)]
            row: dict[str, Any] = {"vary": vary, "requests": requests, "nodes": nodes}
            for mode in ("1", "2"):
                row[f"ipopt_mode{mode}_ms"] = median_ms(snaps, "ipopt", mode, repeat)
                bar.update(1)
            row["stock_pyomo_cyipopt_ms"] = median_ms(snaps, "ipopt-nl", "1", repeat)
            row["milp_ms"] = median_ms(snaps, "milp", "1", 1)
            bar.update(2)
            rows.append(row)
    return rows


def scale(bar: Any) -> dict[str, Any]:
    s = site_instance(1000, 100, sites=50, seed=0)
    ip = solve(s, method="ipopt", mode="2")
    bar.update(1)
    mi = solve(s, method="milp", mode="2")
    bar.update(1)
    return {
        "requests": 1000,
        "nodes": 100,
        "classes": ip.details.get("classes"),
        "columns": ip.details.get("columns"),
        "pricing_rounds": ip.details.get("pricing_rounds"),
        "ipopt_ms": ip.solve_ms,
        "milp_ms": mi.solve_ms,
        "ipopt_gap_to_milp_pct": 100 * (ip.objective_ms / mi.objective_ms - 1),
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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=5, help="instances per size for timing (default 5)")
    ap.add_argument("--repeat", type=int, default=3, help="solves per instance for timing (default 3)")
    ap.add_argument("--quality-seeds", type=int, default=20, help="instances for quality (default 20)")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = ap.parse_args()
    for method in ("ipopt", "ipopt-nl", "milp", "iterative"):
        solve(thesis_instance(5, 3, 0), method=method)  # warm-up: imports and library loading
    total = 8 * 4 + 2 + args.quality_seeds
    started = time.perf_counter()
    with tqdm(total=total, desc="bench", file=sys.stderr, disable=args.json, leave=False) as bar:
        rows = timing(args.seeds, args.repeat, bar)
        big = scale(bar)
        qual = quality(args.quality_seeds, bar)
    result = {"timing": rows, "scale": big, "quality": qual, "wall_s": time.perf_counter() - started}
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    print("Solve time, median ms (imports excluded); thesis: AMPL+Ipopt on a Xavier NX")
    print(
        f"{'requests':>8} {'nodes':>5} {'ipopt m1':>9} {'ipopt m2':>9} {'stock':>7} {'ratio':>6} "
        f"{'milp':>7} {'thesis':>11}"
    )
    for r in rows:
        lo, hi = THESIS_MS[r["vary"]]
        ratio = r["ipopt_mode1_ms"] / r["stock_pyomo_cyipopt_ms"]
        print(
            f"{r['requests']:>8} {r['nodes']:>5} {r['ipopt_mode1_ms']:>9.1f} {r['ipopt_mode2_ms']:>9.1f} "
            f"{r['stock_pyomo_cyipopt_ms']:>7.1f} {ratio:>6.2f} {r['milp_ms']:>7.1f} {lo:>5.1f}-{hi:<5.1f}"
        )
    print("  stock = Pyomo's SolverFactory('cyipopt') on the same model; ratio = ipopt m1 / stock")
    print(
        f"\n1,000 requests x 100 nodes (50 client sites): {big['classes']} classes, {big['columns']} columns, "
        f"Ipopt {big['ipopt_ms']:.0f} ms (goal < 1,000), MILP {big['milp_ms']:.0f} ms, "
        f"Ipopt {big['ipopt_gap_to_milp_pct']:.2f}% above the MILP optimum"
    )
    print(
        f"\nQuality at thesis defaults over {qual['seeds']} seeds (Mode 1): Ipopt "
        f"{qual['ipopt_mode1_gap_to_milp_pct_mean']:.2f}% above the MILP optimum on average "
        f"(max {qual['ipopt_mode1_gap_to_milp_pct_max']:.2f}%, goal < 2%), "
        f"{qual['ipopt_mode1_below_iterative_pct_mean']:.1f}% below iterative search (thesis 41%, goal >= 35%)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
