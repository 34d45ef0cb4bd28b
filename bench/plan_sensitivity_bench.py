"""The integer part's sensitivity to tiny differences in the relaxation's answer (issue 16, "Worth doing next" 3).

Two relaxation answers that are both optimal to Ipopt's tolerance differ by ~1e-3 relative (warm vs cold
Ipopt). This bench solves each case's relaxation once, runs the integer part (solver.queue_plan._solve's
steps: repair, pool closing, moves, the best split, the split by load, the scheduler's additions) from it, then
again from ``--draws`` perturbed copies per size ``--eps``: every rate ``x[c, j]`` and count ``n[j, k]`` times
``1 + eps u`` (u uniform in [-1, 1], seeded), each stream's rates rescaled to its served total (so the served
rate is the same), and counts what changes: plans with other instance counts (any pool), other
total instances, the worst relative change of the total, and the integer objective's and mean latency's
worst and median relative change. ``first`` names the step after which the counts first differ (repair,
close, move, split, sched), to find where a difference of 1e-3 becomes another count.

Cases (bench/queue_integer_bench.py's, 74 at 3 seeds): the thesis's sizes (Table 6.1, both modes, ``--seeds``
each), Mode 1 with instances running, and 1,000 x 100 from 50 sites (both modes), at each of ``--cores``
(0: none declared).
``--warm-cold`` instead solves every case whole twice, with warm and with cold Ipopt (solver.queue_warm off; both
optimal to Ipopt's tolerance, rates ~1e-3 apart), and counts plans with other instance counts: the finding that
started this bench (main before the fixes: 11 / 13 / 4 of 74 at no / 2 / 1 cores).
``--switch MODULE.NAME=VALUE`` sets a solver switch first (as queue_integer_bench's): run it with a fix
switched off and on, same run, for the before/after.

    .venv/bin/python bench/plan_sensitivity_bench.py [--seeds N] [--cores N ...] [--eps E ...] [--draws N]
                                                     [--warm-cold] [--switch M.NAME=V ...] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections import Counter
from typing import Any

import numpy as np

STEPS = ("repair", "close", "move", "split", "by_load", "sched")


def integer_part(q: Any, x: Any, r: Any, n: Any) -> tuple[list[Any], float, float, float, float]:
    """The counts after each of ``STEPS``, the integer objective, mean latency (ms), served req/s and CPU ms of one
    integer part from the relaxation's (x, r, n), as solver.queue_plan._solve runs it."""
    from solver import queue_plan
    from solver.queue_close import integer_objective
    from solver.queue_close_fast import close_pools_fast
    from solver.queue_move import move_instances
    from solver.queue_repair import repair
    from solver.queue_sched import add_where_behind
    from solver.queue_split import best_split
    from solver.queue_split_load import resplit_by_load
    from solver.too_slow import drop_too_slow

    start = time.process_time()
    pools = repair(q, x, r, n if queue_plan.SEED_COUNTS else None)
    pools.too_slow_models = drop_too_slow(pools)
    stages = [pools.counts()]
    for step in (close_pools_fast, move_instances, best_split, resplit_by_load, add_where_behind):
        step(pools)
        stages.append(pools.counts())
    ms = 1000.0 * (time.process_time() - start)
    return stages, integer_objective(pools), queue_plan.mean_latency_ms(q, pools), float(pools.x.sum()), ms


def perturbed(nlp: Any, eps: float, rng: np.random.Generator) -> tuple[Any, Any]:
    """(x, n) of ``nlp`` with every entry times 1 + eps u (u uniform in [-1, 1]), each stream's rates rescaled to
    its served total."""
    x = nlp.x * (1.0 + eps * rng.uniform(-1.0, 1.0, nlp.x.shape))
    served, now = nlp.x.sum(axis=1), x.sum(axis=1)
    x *= np.where(now > 0, served / np.where(now > 0, now, 1.0), 0.0)[:, None]
    return x, nlp.n * (1.0 + eps * rng.uniform(-1.0, 1.0, nlp.n.shape))


def compare(base: tuple[Any, ...], other: tuple[Any, ...]) -> dict[str, Any]:
    """What differs between two integer parts' results (``integer_part``'s tuples)."""
    stages = base[0]
    differ = [not np.array_equal(a, b) for a, b in zip(stages, other[0], strict=True)]
    first = STEPS[differ.index(True)] if any(differ) else None
    total, total_other = int(stages[-1].sum()), int(other[0][-1].sum())
    return {
        "first": first,
        "counts": first is not None,
        "total": total != total_other,
        "total_rel": (total_other - total) / max(total, 1),
        "objective_rel": (other[1] - base[1]) / max(abs(base[1]), 1e-12),
        "latency_rel": (other[2] - base[2]) / max(abs(base[2]), 1e-12),
        "served_rel": (other[3] - base[3]) / max(abs(base[3]), 1e-12),
    }


def measure(cores: float, eps_list: list[float], seeds: int, draws: int) -> dict[str, Any]:
    """Per eps: the changes over every case and draw at ``cores`` (0: none declared)."""
    from bench.queue_integer_bench import GROUPS, cases
    from solver.problem import Mode, build_problem
    from solver.queue_fast import solve_nlp_fast
    from solver.queue_model import build_queue_problem

    found = [case for group in GROUPS for case in cases(group, seeds, cores or None)]
    rows: dict[float, list[dict[str, Any]]] = {eps: [] for eps in eps_list}
    ms: list[float] = []
    for i, (label, snap, mode) in enumerate(found):
        q = build_queue_problem(build_problem(snap, Mode.MODE1 if mode == "1" else Mode.MODE2))
        nlp = solve_nlp_fast(q)
        base = integer_part(q, nlp.x, nlp.r, nlp.n)
        ms.append(base[4])
        for eps in eps_list:
            rng = np.random.default_rng([i, round(-np.log10(eps) * 100)])
            for _ in range(draws):
                x, n = perturbed(nlp, eps, rng)
                rows[eps].append({"case": f"{label}/m{mode}", **compare(base, integer_part(q, x, nlp.r, n))})
    return {"cores": cores, "cases": len(found), "integer_ms_mean": statistics.mean(ms), "by_eps": summary(rows)}


def warm_cold(cores: float, seeds: int) -> dict[str, Any]:
    """Whole queue solves with warm and with cold Ipopt (solver.queue_warm off) on every case at ``cores``: plans
    with other instance counts, the worst relative change of the total, and the objective's worst relative change."""
    from bench.queue_bench import cold_ipopt
    from bench.queue_integer_bench import GROUPS, cases
    from solver.api import solve

    changed, total_worst, objective_worst = 0, 0.0, 0.0
    found = [case for group in GROUPS for case in cases(group, seeds, cores or None)]
    for _, snap, mode in found:
        plans = []
        for cold in (False, True):
            cold_ipopt(cold)
            plans.append(solve(snap, mode=mode, objective="queue"))
        cold_ipopt(False)
        totals = [sum(sum(models.values()) for models in plan.instances.values()) for plan in plans]
        changed += plans[0].instances != plans[1].instances
        total_worst = max(total_worst, abs(totals[1] - totals[0]) / max(totals[0], 1))
        base = plans[0].objective_ms
        objective_worst = max(objective_worst, abs(plans[1].objective_ms - base) / max(abs(base), 1e-12))
    return {"cores": cores, "cases": len(found), "changed": changed, "total_worst": total_worst,
            "objective_worst": objective_worst}  # fmt: skip


def summary(rows: dict[float, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Per eps: how many plans changed and by how much."""
    out = []
    for eps, found in rows.items():
        cases_changed = {r["case"] for r in found if r["counts"]}
        out.append(
            {
                "eps": eps,
                "plans": len(found),
                "counts_changed": sum(r["counts"] for r in found),
                "cases_with_change": len(cases_changed),
                "total_changed": sum(r["total"] for r in found),
                "total_worst": max((abs(r["total_rel"]) for r in found), default=0.0),
                "objective_changed": sum(abs(r["objective_rel"]) > 1e-6 for r in found),
                "objective_worst": max((r["objective_rel"] for r in found), default=0.0),
                "objective_median": statistics.median(r["objective_rel"] for r in found),
                "latency_worst": max((r["latency_rel"] for r in found), default=0.0),
                "served_worst_loss": -min((r["served_rel"] for r in found), default=0.0),
                "first": dict(Counter(r["first"] for r in found if r["first"])),
            }
        )
    return out


def main() -> None:
    from bench.queue_integer_bench import set_switches

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=3, help="instances per thesis size (default 3)")
    ap.add_argument("--cores", type=float, nargs="+", default=[0.0, 2.0, 1.0], metavar="N",
                    help="cores per node where the snapshot declares none (0: none); default 0 2 1")  # fmt: skip
    ap.add_argument("--eps", type=float, nargs="+", default=[1e-6, 1e-4, 1e-3], help="relative perturbations")
    ap.add_argument("--draws", type=int, default=2, help="perturbed answers per case and eps (default 2)")
    ap.add_argument("--switch", action="append", default=[], metavar="M.NAME=V",
                    help="set a solver switch first (ties.TIE_TOLERANCE=0.0); repeatable")  # fmt: skip
    ap.add_argument("--warm-cold", action="store_true",
                    help="instead: whole solves, warm vs cold Ipopt (both optimal): plans that differ")  # fmt: skip
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = ap.parse_args()
    from solver.fastlp import tune_solver_process

    tune_solver_process()
    set_switches(args.switch)
    if args.warm_cold:
        found = [warm_cold(c, args.seeds) for c in args.cores]
        if args.json:
            print(json.dumps({"warm_cold": found, "loadavg": os.getloadavg(), "switches": args.switch}, indent=1))
            return
        for r in found:
            print(f"cores {r['cores']:g}: {r['changed']} of {r['cases']} plans with other instance counts (total worst"
                  f" {r['total_worst']:.3f}), objective worst {r['objective_worst']:.2e} (relative)")  # fmt: skip
        return
    rows = [measure(c, args.eps, args.seeds, args.draws) for c in args.cores]
    load = os.getloadavg()
    if args.json:
        print(json.dumps({"rows": rows, "loadavg": load, "switches": args.switch}, indent=1))
        return
    print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; switches: {', '.join(args.switch) or 'none'}")
    print(f"{'cores':>5} {'eps':>7} {'plans':>5} {'counts':>6} {'cases':>5} {'total':>5} {'tot.worst':>9}"
          f" {'obj.chg':>7} {'obj.worst':>9} {'obj.med':>9} {'lat.worst':>9}  first differing step")  # fmt: skip
    for row in rows:
        for s in row["by_eps"]:
            print(
                f"{row['cores']:>5g} {s['eps']:>7.0e} {s['plans']:>5} {s['counts_changed']:>6}"
                f" {s['cases_with_change']:>5} {s['total_changed']:>5} {s['total_worst']:>9.3f}"
                f" {s['objective_changed']:>7} {s['objective_worst']:>+9.2e} {s['objective_median']:>+9.2e}"
                f" {s['latency_worst']:>+9.2e}  {s['first']}"
            )
        print(f"{row['cores']:>5g} integer part {row['integer_ms_mean']:.2f} ms mean over {row['cases']} cases")
    print("counts: plans with another count in some pool; cases: of them, distinct cases; total: another total")


if __name__ == "__main__":
    main()
