"""Do plans pay for the integer objective's clip at cores? The plan's pools simulated with shared cores (issue 16).

Where nodes declare cores, ``solver.queue_close.integer_objective`` (the figure closing, moves and the split compare)
shares a node's cores equally per instance (``solver.node_cpu.effective_servers``) and clips each pool's load there
at ``rho_max``; repair admits a busy pool past its equal share wherever the node's busy work fits. Such pools are
priced as at ``rho_max`` (bench/queue_gap_bench.py: plans below the relaxation's value). This bench takes the final
plans of bench/queue_integer_bench.py's cases (thesis sizes x ``--seeds`` x both modes and Mode 1 running), and for
every plan with a pool past its equal share at ``rho_max`` runs the plan's pools as a discrete-event simulation
(bench/allot_bench.py's ``simulate``: Poisson arrivals per pool, each request to one of the pool's instances
uniformly, exponential service, a node's running requests sharing its cores: solver.shared_cores). Per plan, the
total wait (request-ms/s, service excluded) three ways: ``objective`` (the integer objective's: equal split,
clipped), ``by_load`` (the plan's figures: solver.queue_plan._wait_terms, cores shared by load) and ``sim``; per
pool past its equal share: its simulated mean sojourn over the by-load figure and over the clipped figure, and its
drift (mean sojourn over the run's second half over its first: near 1 where the pool is stable).

``--no-crowded`` solves with solver.queue_sched's crowded nodes off (the plans before that step took them).

    .venv/bin/python bench/queue_price_sim.py [--seeds N] [--cores N [N ...]] [--duration S] [--no-crowded] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from typing import Any

import numpy as np


def clipped_wait(pools: Any) -> np.ndarray:
    """[j, k] each pool's wait term in ``integer_objective`` (request-ms/s): equal split, load clipped at rho_max."""
    from solver.node_cpu import effective_servers

    q = pools.q
    lam, counts = pools.state()
    open_ = counts > 0
    n = np.where(open_, effective_servers(counts, pools.cores), 1.0)
    t = np.minimum(lam / n, q.rho_max * q.mu)
    return np.asarray(np.where(open_, lam * (1000.0 / (q.mu - t) - pools.service_ms), 0.0))


def equal_share_load(pools: Any) -> np.ndarray:
    """[j, k] each open pool's load over its equal-share servers, unclipped (0 where closed)."""
    from solver.node_cpu import effective_servers

    lam, counts = pools.state()
    n = np.where(counts > 0, effective_servers(counts, pools.cores), 1.0)
    return np.asarray(np.where(counts > 0, lam / (n * pools.q.mu), 0.0))


def one_plan(snap: Any, mode: str, duration_s: float, seed: int) -> dict[str, Any] | None:
    """The figures of the module docstring for one snapshot's plan; None where no pool is past its equal share."""
    from bench.allot_bench import simulate_arrays
    from solver.problem import Mode, build_problem
    from solver.queue_close import integer_objective
    from solver.queue_fast import solve_nlp_fast
    from solver.queue_model import build_queue_problem
    from solver.queue_plan import _wait_terms, integer_part

    q = build_queue_problem(build_problem(snap, Mode.MODE1 if mode == "1" else Mode.MODE2))
    nlp = solve_nlp_fast(q)
    pools, _ = integer_part(q, nlp)
    load = equal_share_load(pools)
    past = load > q.rho_max * (1 + 1e-9)
    if not past.any():
        return None
    lam, counts = pools.state()
    cores = np.asarray(pools.cores, dtype=float)
    sim, _ = simulate_arrays(lam, q.mu, counts, cores, duration_s, seed)
    short, _ = simulate_arrays(lam, q.mu, counts, cores, duration_s / 4, seed + 1)
    busy = (lam > 0) & (counts > 0)
    by_load, _ = _wait_terms(q, pools)
    clip = clipped_wait(pools)
    sim_wait = np.where(busy, lam * (np.nan_to_num(sim) - q.service_ms), 0.0)
    load_ms = np.where(busy, (by_load + lam * q.service_ms) / np.where(busy, lam, 1.0), np.nan)
    clip_ms = np.where(busy, (clip + lam * q.service_ms) / np.where(busy, lam, 1.0), np.nan)
    return {
        "objective_vs_relaxation": integer_objective(pools) / nlp.value - 1,
        "wait_objective": float(clip.sum()),
        "wait_by_load": float(by_load.sum()),
        "wait_sim": float(sim_wait.sum()),
        "pools_past": int(past.sum()),
        "equal_share_load_max": float(load.max()),
        "sim_over_by_load": [float(v) for v in (sim / load_ms)[past]],
        "sim_over_clipped": [float(v) for v in (sim / clip_ms)[past]],
        "drift": [float(v) for v in (sim / short)[past]],  # the whole run's mean over a quarter-length run's
        "sim_ms": [float(v) for v in sim[past]],
        "by_load_ms": [float(v) for v in load_ms[past]],
        "clipped_ms": [float(v) for v in clip_ms[past]],
    }


def measure(seeds: int, cores: float, duration_s: float) -> dict[str, Any]:
    from bench.queue_gap_bench import GROUPS
    from bench.queue_integer_bench import cases

    rows = []
    for group in GROUPS:
        for i, (label, snap, mode) in enumerate(cases(group, seeds, cores)):
            row = one_plan(snap, mode, duration_s, seed=i)
            if row is not None:
                rows.append({"case": f"{group} {label} mode {mode} #{i}", **row})
    ratios = lambda key: [v for r in rows for v in r[key]]  # noqa: E731
    summary: dict[str, Any] = {"cores": cores, "plans_with_pools_past": len(rows)}
    for key in ("sim_over_by_load", "sim_over_clipped", "drift"):
        vals = ratios(key)
        summary[key] = [min(vals), statistics.median(vals), max(vals)] if vals else []
    for key in ("wait_objective", "wait_by_load"):
        vals = [r["wait_sim"] / r[key] for r in rows if r[key] > 0]
        summary[f"sim_wait_over_{key[5:]}"] = [min(vals), statistics.median(vals), max(vals)] if vals else []
    summary["rows"] = rows
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--cores", type=float, nargs="+", default=[2.0, 1.0])
    parser.add_argument("--duration", type=float, default=400.0)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--no-crowded", action="store_true", help="solver.queue_sched.CROWDED off (the plans before)")
    args = parser.parse_args()
    if args.no_crowded:
        from solver import queue_sched

        queue_sched.CROWDED = False
    found = [measure(args.seeds, c, args.duration) for c in args.cores]
    if args.json:
        print(json.dumps(found, indent=1))
        return
    for f in found:
        print(f"[{f['cores']:g} cores] plans with a pool past its equal share: {f['plans_with_pools_past']}")
        keys = ("sim_over_by_load", "sim_over_clipped", "drift", "sim_wait_over_objective", "sim_wait_over_by_load")
        for key in keys:
            print(f"  {key} (min / median / max): " + " / ".join(f"{v:.3f}" for v in f[key]))
        for r in f["rows"]:
            print(
                f"  {r['case']}: objective/relaxation {r['objective_vs_relaxation']:+.2%}, {r['pools_past']} pools"
                f" past (equal-share load up to {r['equal_share_load_max']:.2f}); wait sim {r['wait_sim']:.0f}"
                f" by-load {r['wait_by_load']:.0f} objective {r['wait_objective']:.0f} req-ms/s; past pools ms"
                " sim/by-load/clipped "
                + ", ".join(
                    f"{s:.1f}/{b:.1f}/{c:.1f}"
                    for s, b, c in zip(r["sim_ms"], r["by_load_ms"], r["clipped_ms"], strict=True)
                )
            )
    print("load average (1, 5, 15 min) at the end: {:.2f}, {:.2f}, {:.2f}".format(*os.getloadavg()))


if __name__ == "__main__":
    main()
