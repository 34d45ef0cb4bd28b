"""R(S) answered by the column generation's certificate vs by the warm Ipopt (issue 16 item 5): time and plans.

solver.queue_warm answers each R(S) of solver.queue_fast with Ipopt, warm-started from the proven column
generation. With ``queue_warm.LP_ANSWER`` the column generation's own point is the answer wherever its
Lagrangian bound at the NLP's budgets certifies it within ``queue_warm.ANSWER_GAP`` (Ipopt only where not).
This bench solves the same snapshots both ways in the same run (the thesis's sizes x ``--seeds``, both modes,
Mode 1 with instances running, the 1,000 x 100 site instance; ``--cores``: one table per core count) and
prints, per case and way: the relaxation's CPU ms over the thesis LP's (medians over the seeds), and the plans'
differences (the whole plan's ``objective_ms`` per seed, relative, and the instance totals), then a summary
line per core count: relaxation / LP and queue / LP medians of both ways, how many plans differ and by how much.

    .venv/bin/python bench/queue_relax_bench.py [--seeds N] [--cores N [N ...]] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from typing import Any

from bench.queue_bench import SIZES, cpu_ms, timed, with_cores, with_running
from solver import queue_warm
from solver.api import solve
from solver.fastlp import tune_solver_process
from solver.plan import Plan
from solver.simulate import site_instance, thesis_instance
from solver.snapshot import Snapshot

WAYS = ("ipopt", "lp")


def cases(seeds: int) -> list[tuple[str, list[Snapshot], str]]:
    """(label, snapshots, modes) as bench/queue_bench.py's solve-time table."""
    out = [(f"{r} x {n}", [thesis_instance(r, n, s) for s in range(seeds)], "12") for r, n in SIZES]
    out.append(("1000 x 100, 50 sites", [site_instance(1000, 100, 50, s) for s in range(max(1, seeds // 2))], "12"))
    out += [
        (f"{r} x {n}, running", [with_running(thesis_instance(r, n, s), s) for s in range(seeds)], "1")
        for r, n in SIZES
    ]
    return out


def answered_by(way: str) -> None:
    """Answer R(S) by the warm Ipopt (``ipopt``) or, where certified, by the column generation's point (``lp``)."""
    queue_warm.LP_ANSWER = way == "lp"


def instances(plan: Plan) -> int:
    return sum(sum(per.values()) for per in plan.instances.values())


def measure(seeds: int, cores: float | None) -> list[dict[str, Any]]:
    """One row per (case, mode): the LP's ms, each way's queue and relaxation ms (medians), and the plans."""
    saved = queue_warm.LP_ANSWER
    rows = []
    try:
        for label, snaps, modes in cases(seeds):
            snaps = [with_cores(s, cores) for s in snaps]
            for mode in modes:
                lp = statistics.median(cpu_ms(s, "thesis", mode) for s in snaps)
                row: dict[str, Any] = {"size": label, "mode": mode, "thesis_lp_ms": lp}
                plans = {}
                for way in WAYS:  # interleaved per case: the same load for both
                    answered_by(way)
                    times = [timed(s, "queue", mode) for s in snaps]
                    plans[way] = [solve(s, mode=mode, objective="queue") for s in snaps]
                    row[f"{way}_queue_ms"] = statistics.median(t for t, _, _ in times)
                    row[f"{way}_relaxation_ms"] = statistics.median(r for _, r, _ in times)
                    row[f"{way}_ratio"] = row[f"{way}_queue_ms"] / lp
                    row[f"{way}_relaxation_ratio"] = row[f"{way}_relaxation_ms"] / lp
                    row[f"{way}_ipopt_iterations"] = statistics.median(i for _, _, i in times)
                    row[f"{way}_objective_ms"] = [p.objective_ms for p in plans[way]]
                    row[f"{way}_instances"] = [instances(p) for p in plans[way]]
                pairs = list(zip(plans["ipopt"], plans["lp"], strict=True))
                row["objective_change"] = [(b.objective_ms - a.objective_ms) / a.objective_ms for a, b in pairs]
                row["same_plans"] = sum(  # the same instances and assignments, objective within 1e-6
                    a.instances == b.instances and a.assignments == b.assignments and abs(c) <= 1e-6
                    for (a, b), c in zip(pairs, row["objective_change"], strict=True)
                )
                rows.append(row)
    finally:
        queue_warm.LP_ANSWER = saved
    return rows


def summary(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Medians over the thesis's sizes (both modes; the 1,000 x 100 and running rows apart) and the plans."""
    thesis = [r for r in rows if "," not in r["size"]]
    out: dict[str, float] = {}
    for way in WAYS:
        for key in ("ratio", "relaxation_ratio"):
            out[f"{way}_{key}_median"] = statistics.median(r[f"{way}_{key}"] for r in thesis)
    changes = [c for r in rows for c in r["objective_change"]]
    out["plans"] = len(changes)
    out["same_plans"] = sum(r["same_plans"] for r in rows)
    out["worse_1e-3"] = sum(c > 1e-3 for c in changes)
    out["better_1e-3"] = sum(c < -1e-3 for c in changes)
    out["change_mean"] = statistics.mean(changes)
    out["change_max"], out["change_min"] = max(changes), min(changes)
    return out


def print_table(rows: list[dict[str, Any]]) -> None:
    print(
        f"{'size':<22}{'mode':>5}{'LP ms':>7}{'relax ipopt':>12}{'/ LP':>6}{'relax lp':>10}{'/ LP':>6}"
        f"{'queue / LP ipopt':>17}{'lp':>6}  same  objective change (lp vs ipopt), instances"
    )
    for r in rows:
        changes = " ".join(f"{c:+.1e}" for c in r["objective_change"])
        inst = " ".join(f"{a}/{b}" for a, b in zip(r["ipopt_instances"], r["lp_instances"], strict=True))
        print(
            f"{r['size']:<22}{r['mode']:>5}{r['thesis_lp_ms']:>7.1f}{r['ipopt_relaxation_ms']:>12.1f}"
            f"{r['ipopt_relaxation_ratio']:>6.2f}{r['lp_relaxation_ms']:>10.1f}{r['lp_relaxation_ratio']:>6.2f}"
            f"{r['ipopt_ratio']:>17.2f}{r['lp_ratio']:>6.2f}  {r['same_plans']}/{len(r['objective_change'])}"
            f"   {changes}   {inst}"
        )


def print_summary(cores: float, s: dict[str, float]) -> None:
    label = "no cores" if not cores else f"{cores:g} cores"
    print(
        f"[{label}] thesis sizes, relaxation / LP median: ipopt {s['ipopt_relaxation_ratio_median']:.2f}, "
        f"lp {s['lp_relaxation_ratio_median']:.2f}; queue / LP median: ipopt {s['ipopt_ratio_median']:.2f}, "
        f"lp {s['lp_ratio_median']:.2f}; plans (every row): {s['same_plans']:.0f} of {s['plans']:.0f} the same, "
        f"objective worse by > 1e-3 in {s['worse_1e-3']:.0f}, better in {s['better_1e-3']:.0f}, mean change "
        f"{s['change_mean']:+.2e} (max {s['change_max']:+.2e}, min {s['change_min']:+.2e})"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=3, help="instances per size (default 3)")
    ap.add_argument("--cores", type=float, nargs="+", default=[2.0, 1.0, 0.0], metavar="N",
                    help="cores per node of the snapshots (0: none); one table each (default 2 1 0)")  # fmt: skip
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = ap.parse_args()
    tune_solver_process()
    warm = thesis_instance(25, 10, 0)
    for way in WAYS:
        answered_by(way)
        for objective in ("thesis", "queue"):
            solve(with_cores(warm, 2.0), objective=objective)
    runs = [(c, measure(args.seeds, c or None)) for c in args.cores]
    if args.json:
        out = [{"cores": c, "rows": rows, "summary": summary(rows)} for c, rows in runs]
        print(json.dumps({"by_cores": out, "load_average": os.getloadavg()}, indent=1))
        return
    for c, rows in runs:
        print(f"== {'no cores' if not c else f'{c:g} cores per node'}")
        print_table(rows)
    for c, rows in runs:
        print_summary(c, summary(rows))
    print("load average (1, 5, 15 min) at the end: " + ", ".join(f"{x:.2f}" for x in os.getloadavg()))


if __name__ == "__main__":
    main()
