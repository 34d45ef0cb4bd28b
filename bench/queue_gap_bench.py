"""Could a MIP-style gap stop end the queue solve's integer part early? The relaxation against the plan (issue 16).

Branch-and-bound solvers stop once the incumbent is within a relative gap of a valid lower bound. Here the
incumbent is the plan's integer objective (solver.queue_close.integer_objective) after each step of
solver.queue_plan.integer_part, and the candidate bound the relaxation's value (``NlpSolution.value``, R(S)'s
optimum as solver.queue_fast returns it). Per core count and objective (``queue``; ``queue-p99``: the tail-capped
problem the p99 objective solves first), over the thesis's sizes x ``--seeds`` x both modes and Mode 1 with
instances running (bench/queue_integer_bench.py's cases), it prints:

* ``bound fails``: plans whose final integer objective is below the relaxation's value (then it is no bound), how
  many by more than 1e-6 (Ipopt's answer is a primal point, its value a hair above R(S)'s optimum), the worst
  relative shortfall, and the largest pool load over the equal-share servers the integer objective uses
  (solver.node_cpu.effective_servers; the objective clips it at ``rho_max``), also over the relaxation's load cap;
* ``gap``: (integer objective - relaxation) / relaxation after repair and after pool closing, where the bound held:
  min, median, and how many within ``TOLERANCE`` (where a gap stop could fire);
* ``oracle``: plans whose integer objective after closing is within ``TOLERANCE`` of the final plan's. No valid bound
  exceeds the integer optimum, itself at most the final plan's objective, so this counts where even a perfect bound
  could stop after closing;
* ``moves``: solves in which the move pass kept a move.

    .venv/bin/python bench/queue_gap_bench.py [--seeds N] [--cores N [N ...]] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from typing import Any

import numpy as np

TOLERANCE = 1e-3  # the house's rule for plans that move (docs/solver.md, "Integer part, fewer steps")
GROUPS = ("thesis", "running")


def one_case(snap: Any, mode: str, tail: bool) -> dict[str, Any]:
    """The relaxation's value, the integer objective after repair and after each integer step, the moves kept and
    the largest pool load over equal-share servers, for one snapshot."""
    from solver.node_cpu import effective_servers
    from solver.problem import Mode, build_problem
    from solver.queue_close import integer_objective
    from solver.queue_close_fast import close_pools_fast
    from solver.queue_fast import solve_nlp_fast
    from solver.queue_model import build_queue_problem
    from solver.queue_move import move_instances
    from solver.queue_repair import repair
    from solver.queue_sched import add_where_behind
    from solver.queue_split import best_split
    from solver.queue_split_load import resplit_by_load
    from solver.tail_cap import with_tail_cap
    from solver.too_slow import drop_too_slow

    q = build_queue_problem(build_problem(snap, Mode.MODE1 if mode == "1" else Mode.MODE2))
    q = with_tail_cap(q) if tail else q
    nlp = solve_nlp_fast(q)
    pools = repair(q, nlp.x, nlp.r, nlp.n)  # solver.queue_plan.integer_part's steps, valued after each
    pools.too_slow_models = drop_too_slow(pools)
    values, results = [integer_objective(pools)], []
    for step in (close_pools_fast, move_instances, best_split, resplit_by_load, add_where_behind):
        results.append(step(pools))
        values.append(integer_objective(pools))
    lam, counts = pools.state()
    servers = effective_servers(counts, pools.cores)
    load = np.where(counts > 0, lam / (np.where(counts > 0, servers, 1.0) * q.mu), 0.0)
    over = float((load / q.cap()).max(initial=0.0))  # the load cap the relaxation kept (the tail cap where ``tail``)
    peak = float(load.max(initial=0.0))
    return {"relaxation": nlp.value, "values": values, "moved": results[1], "load": peak, "over_cap": over}


def measure(seeds: int, cores: float | None, tail: bool) -> dict[str, Any]:
    """The figures of the module docstring for one core count and objective."""
    from bench.queue_integer_bench import cases

    rows = [one_case(snap, mode, tail) for group in GROUPS for _, snap, mode in cases(group, seeds, cores)]
    failed = [r for r in rows if r["values"][-1] < r["relaxation"]]
    held = [r for r in rows if r["values"][-1] >= r["relaxation"]]
    out: dict[str, Any] = {
        "cores": cores or 0,
        "objective": "queue-p99" if tail else "queue",
        "cases": len(rows),
        "bound_fails": len(failed),
        "bound_fails_past_tol": sum(r["values"][-1] < (1 - 1e-6) * r["relaxation"] for r in failed),
        "worst_shortfall": min((r["values"][-1] / r["relaxation"] - 1 for r in failed), default=0.0),
        "largest_equal_share_load": max((r["load"] for r in failed), default=0.0),
        "largest_over_cap": max((r["over_cap"] for r in failed), default=0.0),
        "oracle_within": sum(r["values"][1] <= (1 + TOLERANCE) * r["values"][-1] for r in rows),
        "moves_kept": sum(1 for r in rows if r["moved"]),
    }
    for i, step in ((0, "repair"), (1, "close")):
        gaps = [r["values"][i] / r["relaxation"] - 1 for r in held]
        out[f"{step}_gap_min"] = min(gaps, default=float("nan"))
        out[f"{step}_gap_median"] = statistics.median(gaps) if gaps else float("nan")
        out[f"{step}_within"] = sum(g <= TOLERANCE for g in gaps)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--cores", type=float, nargs="+", default=[0.0, 2.0, 1.0])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    from solver.fastlp import tune_solver_process

    tune_solver_process()
    found = [measure(args.seeds, c or None, tail) for c in args.cores for tail in (False, True)]
    if args.json:
        print(json.dumps(found, indent=1))
        return
    for f in found:
        print(
            f"[{f['cores']:g} cores, {f['objective']}] {f['cases']} plans; bound fails {f['bound_fails']}"
            f" ({f['bound_fails_past_tol']} by > 1e-6, worst {f['worst_shortfall']:+.2%}; equal-share load up to"
            f" {f['largest_equal_share_load']:.2f}, {f['largest_over_cap']:.2f}x the relaxation's load cap);"
            f" gap after repair min {f['repair_gap_min']:.2%} median {f['repair_gap_median']:.2%}"
            f" <= {TOLERANCE:g}: {f['repair_within']}; after closing min {f['close_gap_min']:.2%}"
            f" median {f['close_gap_median']:.2%} <= {TOLERANCE:g}: {f['close_within']};"
            f" oracle {f['oracle_within']}; moves kept {f['moves_kept']}"
        )
    print("load average (1, 5, 15 min) at the end: {:.2f}, {:.2f}, {:.2f}".format(*os.getloadavg()))


if __name__ == "__main__":
    main()
