"""Plans whose node's CPU scheduler would fall behind, with and without solver.queue_sched (issue 16, next 6).

1. ``--clusters N``: bench/bound_sweep.py's overloaded clusters (seeds 0..N-1, at their rate and at half of it),
   each solved the plan's way (bound_sweep.final_pools) with queue_sched off ("before") and on ("after") in the
   same run. Counted: plans that pass repair's checks, plans with a node the scheduler model caps (solver.cpu_speed:
   a busy instance at the 0.999 load cap), instances added, req/s rejected instead; per acted plan, the capped
   pool's mean sojourn in the shared-cores simulation (solver/shared_cores.py) of the whole plan over ``--sim`` and
   4x as many seconds (a queue that grows without bound grows with the run), before and after, and the plan's mean
   latency and served rate after / before.
2. ``--regular N``: bound_sweep's ordinary clusters (seeds 0..N-1, as drawn and ``--tight``), solved by solver.api
   in Mode 1 with the step off and on: plans where it added an instance, and plans that changed at all (instances
   or shares), with the rate rejected off / on.
3. ``--cost``: the queue solve from the relaxation on (solver.queue_plan._solve) with the step off and on,
   interleaved, on the thesis's sizes (bench/queue_integer_bench.py's cases, both modes) at 2 and 1 cores per
   node, least CPU ms of ``--reps`` each: the step's cost net of the figures it hands the planned queue.

    .venv/bin/python bench/sched_fix_bench.py [--clusters 600] [--sim 100] [--regular 300] [--cost] [--reps 5] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from typing import Any

import numpy as np

from bench.allot_bench import passes_repair, simulate_arrays, solved
from solver import queue_sched
from solver.cpu_speed import CAP, node_speeds
from solver.queue_plan import mean_latency_ms
from solver.queue_repair import Pools


def capped_pools(pools: Pools) -> list[tuple[int, int]]:
    """(node, model) of every busy pool the scheduler model caps."""
    lam, counts = pools.state()
    f = node_speeds(lam, pools.q.mu, counts, pools.cores)
    return [(int(j), int(k)) for j, k in zip(*np.nonzero((f.load >= CAP) & (counts > 0) & (lam > 0)), strict=True)]


def _sim(pools: Pools, seconds: float) -> np.ndarray:
    lam, counts = pools.state()
    return simulate_arrays(lam, pools.q.mu, counts, np.asarray(pools.cores, dtype=float), seconds, 1)[0]


def sweep(n: int, sim_s: float) -> dict[str, Any]:
    """Part 1 (module docstring)."""
    out: dict[str, Any] = {}
    for scale in (1.0, 0.5):
        row: dict[str, Any] = {"clusters": n, "pass_repair": 0, "behind_before": 0, "behind_after": 0,
                               "added": 0, "shed_rps": 0.0, "acted": []}  # fmt: skip
        for seed in range(n):
            plans = {}
            for on in (False, True):
                queue_sched.ENABLED = on
                try:
                    plans[on] = solved(seed, scale)
                except Exception:  # a solver failure is the sweep's business, not this bench's
                    plans = {}
                    break
            queue_sched.ENABLED = True
            if not plans or not passes_repair(plans[False][1]):
                continue
            (q, before), (_, after) = plans[False], plans[True]
            row["pass_repair"] += 1
            hot = capped_pools(before)
            row["behind_before"] += bool(hot)
            row["behind_after"] += bool(capped_pools(after))
            if not hot:
                continue
            row["added"] += int(after.counts().sum() - before.counts().sum())
            shed = float(after.rejected.sum() - before.rejected.sum())
            row["shed_rps"] += max(shed, 0.0)
            acted: dict[str, Any] = {"seed": seed, "pools": hot, "shed_rps": round(shed, 2)}
            if sim_s > 0:
                for name, pools in (("before", before), ("after", after)):
                    acted[f"{name}_ms"] = [round(float(np.nanmax(_sim(pools, s)[tuple(np.array(hot).T)])), 1)
                                           for s in (sim_s, 4 * sim_s)]  # fmt: skip
            acted["latency_ratio"] = round(mean_latency_ms(q, after) / mean_latency_ms(q, before), 4)
            acted["served_ratio"] = round(float(after.lam().sum() / before.lam().sum()), 4)
            row["acted"].append(acted)
        out[f"scale_{scale}"] = row
    return out


def regular(n: int) -> dict[str, Any]:
    """Part 2 (module docstring)."""
    from bench.bound_sweep import cluster, tight
    from solver.api import solve

    out: dict[str, Any] = {"clusters": 2 * n, "added": 0, "changed": []}
    for seed in range(n):
        for variant in ("drawn", "tight"):
            snap, tail = cluster(seed)
            snap = tight(snap, seed) if variant == "tight" else snap
            plans = {}
            for on in (False, True):
                queue_sched.ENABLED = on
                plans[on] = solve(snap, mode="1", objective="queue-p99" if tail else "queue")
            queue_sched.ENABLED = True
            off, on_ = plans[False], plans[True]
            out["added"] += on_.details["scheduler_added"] > 0
            if off.instances != on_.instances or off.shares != on_.shares:
                rejected = [off.details["rejected_rps"], on_.details["rejected_rps"]]
                latency = [round(off.objective_ms, 2), round(on_.objective_ms, 2)]
                out["changed"].append({"seed": seed, "variant": variant, "rate_rps": off.details["rate_rps"],
                                       "rejected_rps": rejected, "latency_ms": latency})  # fmt: skip
    return out


def cost(reps: int) -> list[dict[str, Any]]:
    """Part 2 (module docstring): per cores setting, the queue solve after the relaxation (solver.queue_plan._solve
    from the relaxation on) with the step off and on, interleaved, least CPU ms of ``reps`` each, per case."""
    from bench.queue_integer_bench import cases
    from solver import cpu_speed
    from solver.problem import Mode, build_problem
    from solver.queue_model import build_queue_problem
    from solver.queue_plan import _solve

    rows = []
    for cores in (2.0, 1.0):
        best: dict[bool, list[float]] = {False: [], True: []}
        for _, snap, mode in cases("thesis", 1, cores):
            q = build_queue_problem(build_problem(snap, Mode(mode)))
            least = {False: np.inf, True: np.inf}
            for _ in range(reps):
                for on in (False, True):
                    queue_sched.ENABLED = on
                    cpu_speed._LAST.clear()  # no figures left from the other run
                    t0 = time.process_time()
                    _solve(q, {})
                    least[on] = min(least[on], 1000.0 * (time.process_time() - t0))
            queue_sched.ENABLED = True
            for on in (False, True):
                best[on].append(least[on])
        diff = [b - a for a, b in zip(best[False], best[True], strict=True)]
        ratio = [b / a for a, b in zip(best[False], best[True], strict=True)]
        rows.append({"cores": cores, "cases": len(diff), "off_ms_median": round(statistics.median(best[False]), 3),
                     "on_ms_median": round(statistics.median(best[True]), 3),
                     "diff_ms_median": round(statistics.median(diff), 3),
                     "ratio_median": round(statistics.median(ratio), 4),
                     "ratio_max": round(max(ratio), 4)})  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clusters", type=int, default=600, help="overloaded seeds per scale (0: skip the sweep)")
    ap.add_argument("--sim", type=float, default=100.0, help="simulated seconds (and 4x) per acted plan; 0: none")
    ap.add_argument("--regular", type=int, default=0, help="ordinary sweep seeds (drawn and tight) to check too")
    ap.add_argument("--cost", action="store_true", help="also time the step on the thesis's sizes")
    ap.add_argument("--reps", type=int, default=5, help="repetitions per case for --cost (the least is kept)")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of the summary")
    a = ap.parse_args(argv)
    result: dict[str, Any] = {"loadavg": os.getloadavg()[0]}
    if a.clusters > 0:
        result["sweep"] = sweep(a.clusters, a.sim)
    if a.regular > 0:
        result["regular"] = regular(a.regular)
    if a.cost:
        result["cost"] = cost(a.reps)
    if a.json:
        print(json.dumps(result))
        return 0
    print(f"loadavg {result['loadavg']:.2f}")
    for scale, row in result.get("sweep", {}).items():
        print(f"{scale}: {row['pass_repair']} of {row['clusters']} pass repair; a node behind: before "
              f"{row['behind_before']}, after {row['behind_after']}; {row['added']} instances added, "
              f"{row['shed_rps']:.1f} req/s rejected instead")  # fmt: skip
        for acted in row["acted"]:
            print(f"  seed {acted['seed']}: sim ms before {acted.get('before_ms')} after {acted.get('after_ms')}, "
                  f"latency x{acted['latency_ratio']}, served x{acted['served_ratio']}")  # fmt: skip
    if "regular" in result:
        reg = result["regular"]
        print(f"ordinary sweep: {reg['clusters']} clusters, an instance added in {reg['added']}, "
              f"{len(reg['changed'])} plans changed")  # fmt: skip
        for c in reg["changed"]:
            print(f"  seed {c['seed']} {c['variant']}: rate {c['rate_rps']:.1f} req/s, rejected {c['rejected_rps']}, "
                  f"mean latency {c['latency_ms']} ms")  # fmt: skip
    for r in result.get("cost", []):
        print(f"{r['cores']:g} cores, {r['cases']} cases: queue solve off {r['off_ms_median']} ms, on "
              f"{r['on_ms_median']} ms median; on - off {r['diff_ms_median']} ms, on / off {r['ratio_median']} "
              f"(max {r['ratio_max']})")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
