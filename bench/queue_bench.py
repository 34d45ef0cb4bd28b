"""Queue-aware placement benchmark (issue 16): solve time against the thesis's LP, and the workload run.

1. Solve time: at the thesis's sizes (Table 6.1 instances, every request a stream at 1 req/s) and on
   the 1,000-request x 100-node site instances, the queue-aware NLP (``objective="queue"`` and the
   agent's default ``queue-p99``) and the thesis's LP (``objective="thesis"``, the fast path) solve the
   same snapshots in the same run; medians
   of CPU time per solve, imports excluded (one warm-up each), and the ratio (issue 16: at most 2x).
2. Workload: ``simulate --workload`` at a few rates (exponential and constant service): p50/p99,
   instances, memory and rejections per placement, and queue's p99 over the best baseline's.

   "queue ms" is the whole queue-aware solve (relaxation, repair, pool closing, plan); "relaxation ms"
   the NLP's part of it (``details.relaxation_ms``: solver.queue_fast's closed form, and where capacity
   binds Ipopt on those nodes; with ``--proven-cg`` solver.queue_dual's proven column generation there,
   Ipopt only where it gives no proof); "integer ms" the rest (repair, solver.queue_close_fast, the plan);
   "Ipopt" how many of the instances still needed Ipopt; "LP Ipopt" on how many the thesis LP called Ipopt at all
   (0: no memory or compute row binds and the LP's optimum, every class on its cheapest node, costs ~1 ms; the
   thesis model has no cores, so declaring them does not change the LP).

   ``--cores N [N ...]`` gives every node of the solve-time snapshots N cores (where it declares none;
   0: none), one table per N in the same run, then one summary line per N: the agent's case (every live
   agent reports its cores). ``--plain-start`` adds a column: the same queue solve with the compact NLP
   started as before solver.queue_start (plain start, IPOPT_NLP's options, e variables on cored nodes),
   timed on the same snapshots right after, and the ratio of the two (same-run, same load).
   ``--reference-closing`` closes pools with solver.queue_close's reference pass instead of the fast one
   (the "before" of the fast pass). "it" is the median of Ipopt's iterations per queue solve.
   ``--nlp-before`` fills the plain start's column with the same queue solve with the NLP switches of
   session 7's Ipopt round off instead (solver.queue_fast.LINEAR_REUSE, solver.queue_model.DROP_IDLE_ROWS
   and UNUSED_POOLS, Ipopt's fast_step_computation, solver.queue_lazy.LAZY_MIN_PAIRS_CORES back to
   LAZY_MIN_PAIRS; the leaner callbacks and the pricing fix stay: docs/solver.md times them apart).
   ``--warm-before`` fills it with the same queue solve from session 9's warm start instead (solver.queue_warm's
   column generation on budgets a few millionths above the NLP's from HiGHS's slack basis, Ipopt's bounds relaxed
   by 1e-8, mu 1e-9: the switches ``queue_warm.INNER``, ``EXACT_BOUNDS``, ``queue_dual.FEASIBLE_BASIS`` and
   ``CAP_LEVEL`` off)
   and the summary adds its queue / LP and relaxation / LP medians.
   ``--cold-ipopt`` adds columns: the same queue solve with solver.queue_warm switched off (Ipopt cold on
   the binding nodes, the path before it), timed on the same snapshots right after: its relaxation ms,
   relaxation / LP, Ipopt iterations, and the warm relaxation's speed-up over it (same run, same load).
   ``--tight-cg`` adds columns alike for the warm path's column generation as before issue 16's cgfast step
   (proven to 1e-8 instead of ``queue_warm.GAP``, HiGHS's default dual simplex, ``tight_cg``): its
   relaxation ms, relaxation / LP, and how much faster the warm path is now ("x").

   ``--reps N`` solves each snapshot N times back to back (thesis LP and queue alike) and takes the median CPU ms of
   each: on a shared machine one solve per snapshot scatters the 2-core median queue / LP by about +-0.15x from run
   to run on the same tree (docs/solver.md, session 20).

    .venv/bin/python bench/queue_bench.py [--seeds N] [--reps N] [--solve-only] [--proven-cg] [--cores N [N ...]]
                                          [--plain-start | --nlp-before | --warm-before] [--cold-ipopt]
                                          [--tight-cg] [--lp-answer]
                                          [--reference-closing] [--json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import statistics
import time
from typing import Any

from solver import queue_lazy
from solver.api import solve
from solver.fastlp import tune_solver_process
from solver.simulate import SWEEPS, site_instance, thesis_instance
from solver.snapshot import Snapshot
from solver.workload import Workload, run

SIZES = [(r, 10) for r in SWEEPS["requests"]] + [(25, n) for n in SWEEPS["nodes"]]


def cpu_ms(snapshot: Snapshot, objective: str, mode: str) -> float:
    """CPU ms of one whole solve (plan included)."""
    return timed(snapshot, objective, mode)[0]


REPS = 1  # solves per snapshot and objective, back to back; each figure is their median (``--reps``)


def timed(snapshot: Snapshot, objective: str, mode: str) -> tuple[float, float, int]:
    """CPU ms of one whole solve, of its queue relaxation alone (0 for the LP), and Ipopt's iterations in it: with
    ``REPS`` > 1 the medians of that many solves of the same snapshot (the same plan each time)."""
    runs = []
    for _ in range(max(1, REPS)):
        start = time.process_time()
        plan = solve(snapshot, mode=mode, objective=objective)
        elapsed = 1000.0 * (time.process_time() - start)
        runs.append((elapsed, float(plan.details.get("relaxation_ms", 0.0)), int(plan.details.get("iterations", 0))))
    if len(runs) == 1:
        return runs[0]
    return statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs), runs[0][2]


def lp_figures(snaps: list[Snapshot], mode: str) -> tuple[float, int]:
    """The thesis LP's median CPU ms over ``snaps`` and on how many of them it called Ipopt at all.

    Where no node's memory or compute binds (every class fits on its cheapest node), solver.fastlp adds no row
    and answers without Ipopt: that placement is the LP's optimum (its objective is a lower bound of any), in
    ~1 ms. The thesis model has no cores, so declaring them changes nothing there, while the queue-aware model's
    core rows may bind: such rows of the table compare a closed form with a solve (docs/solver.md, "The LP's
    1 ms rows")."""
    runs = [timed(s, "thesis", mode) for s in snaps]
    return statistics.median(t for t, _, _ in runs), sum(1 for _, _, i in runs if i > 0)


def with_cores(snapshot: Snapshot, cores: float | None) -> Snapshot:
    """The snapshot with ``cores`` cores on every node that declares none (unchanged for None)."""
    if cores is None:
        return snapshot
    nodes = tuple(n if n.cores is not None else dataclasses.replace(n, cores=cores) for n in snapshot.nodes)
    return dataclasses.replace(snapshot, nodes=nodes)


def plain_start(on: bool) -> None:
    """Solve the compact queue NLP as before solver.queue_start (``on``) or as now."""
    from solver import queue_model

    queue_model.FEASIBLE_START = queue_model.MERGE_SERVERS = not on


NOW_LAZY_MIN_PAIRS_CORES = queue_lazy.LAZY_MIN_PAIRS_CORES


def nlp_before(on: bool) -> None:
    """Solve the queue NLP with the switches of session 7's Ipopt round off (``on``) or as now."""
    from solver import queue_fast, queue_model

    queue_fast.LINEAR_REUSE = queue_model.DROP_IDLE_ROWS = queue_model.UNUSED_POOLS = not on
    queue_lazy.LAZY_MIN_PAIRS_CORES = queue_lazy.LAZY_MIN_PAIRS if on else NOW_LAZY_MIN_PAIRS_CORES
    fast = {"fast_step_computation": "yes"}
    queue_model.IPOPT_NLP_COMPACT = {k: v for k, v in queue_model.IPOPT_NLP_COMPACT.items() if k not in fast}
    if not on:
        queue_model.IPOPT_NLP_COMPACT |= fast


def warm_before(on: bool) -> None:
    """Solve the binding nodes' relaxation from session 9's warm start (``on``) or as now."""
    from solver import queue_dual, queue_warm

    queue_warm.INNER = queue_warm.EXACT_BOUNDS = queue_dual.FEASIBLE_BASIS = queue_dual.CAP_LEVEL = not on


def cold_ipopt(on: bool) -> None:
    """Solve the binding nodes' relaxation by cold Ipopt (``on``: solver.queue_warm off) or as now."""
    from solver import queue_warm

    queue_warm.ENABLED = not on


def tight_cg(on: bool) -> None:
    """The warm path's column generation as before cgfast (``on``: proven to 1e-8, dual simplex) or as now."""
    from solver import queue_dual, queue_warm

    if on:
        TIGHT_SAVED[:] = [queue_warm.GAP, dict(queue_dual.HIGHS_OPTIONS)]
        queue_warm.GAP = 1e-8
        queue_dual.HIGHS_OPTIONS.pop("simplex_strategy", None)
    elif TIGHT_SAVED:
        queue_warm.GAP, options = TIGHT_SAVED
        queue_dual.HIGHS_OPTIONS.clear()
        queue_dual.HIGHS_OPTIONS.update(options)


TIGHT_SAVED: list[Any] = []


def solve_times(
    seeds: int,
    cores: float | None = None,
    before: bool = False,
    cold: bool = False,
    switch: Any = plain_start,
    tight: bool = False,
) -> list[dict[str, Any]]:
    """Median CPU ms per (size, mode) for both objectives on the same snapshots (``cores``: ``with_cores``;
    ``before``: also the queue solve with ``switch(True)``, ``plain_start`` or ``nlp_before``; ``cold``: also
    with cold Ipopt, ``cold_ipopt``)."""
    warm = thesis_instance(25, 10, 0)
    for objective in ("thesis", "queue", "queue-p99"):
        solve(warm, objective=objective)
    rows = []
    cases = [(f"{r} x {n}", [thesis_instance(r, n, s) for s in range(seeds)], "12") for r, n in SIZES]
    cases.append(("1000 x 100, 50 sites", [site_instance(1000, 100, 50, s) for s in range(max(1, seeds // 2))], "12"))
    # Mode 1 with instances running (the leader's usual case): pools that reuse them
    cases += [
        (f"{r} x {n}, running", [with_running(thesis_instance(r, n, s), s) for s in range(seeds)], "1")
        for r, n in SIZES
    ]
    for label, snaps, modes in cases:
        snaps = [with_cores(s, cores) for s in snaps]
        for mode in modes:
            lp, lp_ipopt = lp_figures(snaps, mode)
            queue = [timed(s, "queue", mode) for s in snaps]
            nlp = statistics.median(t for t, _, _ in queue)
            relax = statistics.median(r for _, r, _ in queue)
            p99 = statistics.median(cpu_ms(s, "queue-p99", mode) for s in snaps)
            old = old_relax = float("nan")
            if before:
                switch(True)
                earlier = [timed(s, "queue", mode) for s in snaps]
                switch(False)
                old, old_relax = (statistics.median(t[i] for t in earlier) for i in (0, 1))
            unwarmed = [(float("nan"), float("nan"), 0)]
            if cold:
                cold_ipopt(True)
                unwarmed = [timed(s, "queue", mode) for s in snaps]
                cold_ipopt(False)
            cold_relax = statistics.median(r for _, r, _ in unwarmed)
            tight_relax = float("nan")
            if tight:
                tight_cg(True)
                tight_relax = statistics.median(timed(s, "queue", mode)[1] for s in snaps)
                tight_cg(False)
            rows.append(
                {
                    "size": label,
                    "mode": mode,
                    "thesis_lp_ms": lp,
                    "lp_ipopt_solves": lp_ipopt,
                    "queue_nlp_ms": nlp,
                    "ratio": nlp / lp,
                    "relaxation_ms": relax,
                    "relaxation_ratio": relax / lp,
                    "integer_ms": statistics.median(t - r for t, r, _ in queue),
                    "ipopt_solves": sum(1 for _, _, i in queue if i > 0),
                    "solves": len(queue),
                    "queue_p99_ms": p99,
                    "p99_ratio": p99 / lp,
                    "plain_start_ms": old,
                    "plain_start_speedup": old / nlp,
                    "before_ratio": old / lp,
                    "before_relaxation_ratio": old_relax / lp,
                    "iterations": statistics.median(i for _, _, i in queue),
                    "cold_relaxation_ms": cold_relax,
                    "cold_relaxation_ratio": cold_relax / lp,
                    "cold_iterations": statistics.median(i for _, _, i in unwarmed) if cold else float("nan"),
                    "warm_speedup": cold_relax / relax if relax > 0 else float("nan"),
                    "tight_relaxation_ms": tight_relax,
                    "tight_relaxation_ratio": tight_relax / lp,
                    "cgfast_speedup": tight_relax / relax if relax > 0 else float("nan"),
                }
            )
    return rows


def with_running(snapshot: Snapshot, seed: int, share: float = 0.15) -> Snapshot:
    """The snapshot with one instance of each model running on a node with probability ``share``."""
    rng = random.Random(seed)
    nodes = tuple(
        dataclasses.replace(n, instances={m.name: 1 for m in snapshot.models if rng.random() < share})
        for n in snapshot.nodes
    )
    return dataclasses.replace(snapshot, nodes=nodes)


def summary(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Median and max of the ratios over the thesis's sizes (the 1,000 x 100 rows apart; running apart)."""
    out: dict[str, float] = {}
    for tag, pick in (("", lambda r: "," not in r["size"]), ("running_", lambda r: r["size"].endswith("running"))):
        thesis = [r for r in rows if pick(r)]
        for key in ("ratio", "relaxation_ratio", "p99_ratio"):
            values = [r[key] for r in thesis]
            out[f"{tag}{key}_median"], out[f"{tag}{key}_max"] = statistics.median(values), max(values)
        speedups = [r["plain_start_speedup"] for r in thesis if r["plain_start_speedup"] == r["plain_start_speedup"]]
        if speedups:
            out[f"{tag}speedup_median"] = statistics.median(speedups)
            for key in ("before_ratio", "before_relaxation_ratio"):
                out[f"{tag}{key}_median"] = statistics.median(r[key] for r in thesis)
        colds = [r for r in thesis if r["cold_relaxation_ms"] == r["cold_relaxation_ms"]]
        if colds:
            out[f"{tag}cold_relaxation_ratio_median"] = statistics.median(r["cold_relaxation_ratio"] for r in colds)
            out[f"{tag}iterations_median"] = statistics.median(r["iterations"] for r in colds)
            out[f"{tag}cold_iterations_median"] = statistics.median(r["cold_iterations"] for r in colds)
        tights = [r for r in thesis if r["tight_relaxation_ms"] == r["tight_relaxation_ms"]]
        if tights:
            out[f"{tag}tight_relaxation_ratio_median"] = statistics.median(r["tight_relaxation_ratio"] for r in tights)
    return out


def workloads() -> list[dict[str, Any]]:
    out = []
    for service in ("exp", "det"):
        for rate in (2.0, 5.0, 12.0):
            w = Workload(rate=rate, service=service, duration_s=30.0)
            res = {o.placement: o.to_dict() for o in run(w)}
            best = min(res[b]["p99_ms"] for b in ("nearest", "least-loaded"))
            out.append(
                {
                    "service": service,
                    "rate": rate,
                    "outcomes": res,
                    "queue_p99_over_best_baseline": res["queue"]["p99_ms"] / best,
                    "queue_p99_cap_over_best_baseline": res["queue-p99"]["p99_ms"] / best,
                }
            )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=5, help="instances per size (default 5)")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    ap.add_argument("--reps", type=int, default=1,
                    help="solves per snapshot, back to back, their median CPU ms taken (LP and queue alike; default 1: "
                         "one solve each, as before; the machine's load then scatters a row by +-10 %%)")  # fmt: skip
    ap.add_argument("--solve-only", action="store_true", help="solve times only (skip the workload runs)")
    ap.add_argument("--proven-cg", action="store_true",
                    help="binding nodes by solver.queue_dual's column generation (default: Ipopt)")  # fmt: skip
    ap.add_argument("--cores", type=float, nargs="+", default=[0.0], metavar="N",
                    help="give every node of the solve-time snapshots N cores where it declares none "
                         "(0: none, the default); several: one table each, same run")  # fmt: skip
    ap.add_argument("--plain-start", action="store_true",
                    help="also time each queue solve from the plain start (before solver.queue_start)")  # fmt: skip
    ap.add_argument("--nlp-before", action="store_true",
                    help="also time each queue solve with session 7's NLP switches off")  # fmt: skip
    ap.add_argument("--warm-before", action="store_true",
                    help="also time each queue solve from session 9's warm start "
                         "(queue_warm.INNER, EXACT_BOUNDS off)")  # fmt: skip
    ap.add_argument("--cold-ipopt", action="store_true",
                    help="also time each queue solve with solver.queue_warm off (cold Ipopt, as before)")  # fmt: skip
    ap.add_argument("--tight-cg", action="store_true",
                    help="also time each queue solve with the warm path's column generation as before cgfast "
                         "(proven to 1e-8, dual simplex)")  # fmt: skip
    ap.add_argument("--lp-answer", action="store_true",
                    help="R(S) answered by the column generation's certified point (solver.queue_warm.LP_ANSWER; "
                         "bench/queue_relax_bench.py compares both answers in one run)")  # fmt: skip
    ap.add_argument("--reference-closing", action="store_true",
                    help="close pools with solver.queue_close's reference pass, not the fast one")  # fmt: skip
    args = ap.parse_args()
    global REPS
    REPS = args.reps
    if args.reference_closing:
        from solver import queue_close, queue_plan

        queue_plan.close_pools_fast = queue_close.close_pools  # type: ignore[assignment]
    if args.lp_answer:
        from solver import queue_warm

        queue_warm.LP_ANSWER = True
    if args.proven_cg:
        from solver import queue_dual

        queue_dual.ENABLED = True
    tune_solver_process()
    before = args.plain_start or args.nlp_before or args.warm_before
    switch = nlp_before if args.nlp_before else warm_before if args.warm_before else plain_start
    runs = [(c, solve_times(args.seeds, c or None, before, args.cold_ipopt, switch, args.tight_cg)) for c in args.cores]
    loads = [] if args.solve_only else workloads()
    if args.json:
        by_cores = [{"cores": c, "solve": t, "summary": summary(t)} for c, t in runs]
        print(json.dumps({"solve": runs[0][1], "summary": summary(runs[0][1]), "by_cores": by_cores,
                          "workload": loads, "load_average": os.getloadavg()}, indent=1))  # fmt: skip
        return
    for c, times in runs:
        print(f"== {'no cores' if not c else f'{c:g} cores per node'}")
        print_table(times, before, args.cold_ipopt, args.tight_cg)
    for c, times in runs:
        print_summary(c, times)
    print("load average (1, 5, 15 min) at the end: " + ", ".join(f"{x:.2f}" for x in os.getloadavg()))
    if loads:
        print_loads(loads)


def print_table(times: list[dict[str, Any]], before: bool, cold: bool = False, tight: bool = False) -> None:
    """One row per (size, mode): LP and queue CPU ms and their ratios (and the plain start's, ``before``; the
    cold Ipopt relaxation's, ``cold``; the tight column generation's, ``tight``)."""
    print(
        f"{'size':<22}{'mode':>5}{'thesis LP ms':>14}{'LP Ipopt':>10}{'queue ms':>10}{'/ LP':>7}"
        f"{'relaxation ms':>15}{'/ LP':>7}{'it':>5}{'integer ms':>12}{'Ipopt':>7}{'queue-p99 ms':>14}{'/ LP':>7}"
        + (f"{'before ms':>16}{'x':>6}" if before else "")
        + (f"{'cold relax ms':>15}{'/ LP':>7}{'it':>5}{'x':>6}" if cold else "")
        + (f"{'tight-cg relax ms':>19}{'/ LP':>7}{'x':>6}" if tight else "")
    )
    for r in times:
        print(
            f"{r['size']:<22}{r['mode']:>5}{r['thesis_lp_ms']:>14.1f}{r['lp_ipopt_solves']:>7}/{r['solves']:<2}"
            f"{r['queue_nlp_ms']:>10.1f}{r['ratio']:>7.2f}"
            f"{r['relaxation_ms']:>15.1f}{r['relaxation_ratio']:>7.2f}{r['iterations']:>5.0f}{r['integer_ms']:>12.1f}"
            f"{r['ipopt_solves']:>4}/{r['solves']:<2}{r['queue_p99_ms']:>14.1f}{r['p99_ratio']:>7.2f}"
            + (f"{r['plain_start_ms']:>16.1f}{r['plain_start_speedup']:>6.2f}" if before else "")
            + (
                f"{r['cold_relaxation_ms']:>15.1f}{r['cold_relaxation_ratio']:>7.2f}{r['cold_iterations']:>5.0f}"
                f"{r['warm_speedup']:>6.2f}"
                if cold
                else ""
            )
            + (
                f"{r['tight_relaxation_ms']:>19.1f}{r['tight_relaxation_ratio']:>7.2f}{r['cgfast_speedup']:>6.2f}"
                if tight
                else ""
            )
        )


def print_summary(cores: float, times: list[dict[str, Any]]) -> None:
    """Median and max queue / LP over the thesis's sizes (and with instances running), 1,000 x 100 apart."""
    s = summary(times)
    label = "no cores" if not cores else f"{cores:g} cores"
    for tag, what in (("", "thesis sizes"), ("running_", "thesis sizes, Mode 1 with instances running")):
        print(
            f"[{label}] {what}, queue / LP: median {s[tag + 'ratio_median']:.2f} max {s[tag + 'ratio_max']:.2f}; "
            f"relaxation / LP: median {s[tag + 'relaxation_ratio_median']:.2f} "
            f"max {s[tag + 'relaxation_ratio_max']:.2f}; queue-p99 / LP: median {s[tag + 'p99_ratio_median']:.2f} "
            f"max {s[tag + 'p99_ratio_max']:.2f}"
            + (
                f"; before / now: median {s[tag + 'speedup_median']:.2f} (before: queue / LP median "
                f"{s[tag + 'before_ratio_median']:.2f}, relaxation / LP median "
                f"{s[tag + 'before_relaxation_ratio_median']:.2f})"
                if tag + "speedup_median" in s
                else ""
            )
            + (
                f"; cold Ipopt relaxation / LP: median {s[tag + 'cold_relaxation_ratio_median']:.2f}, Ipopt "
                f"iterations median {s[tag + 'iterations_median']:.0f} (cold {s[tag + 'cold_iterations_median']:.0f})"
                if tag + "cold_relaxation_ratio_median" in s
                else ""
            )
            + (
                f"; tight column generation relaxation / LP: median {s[tag + 'tight_relaxation_ratio_median']:.2f}"
                if tag + "tight_relaxation_ratio_median" in s
                else ""
            )
        )
    big = [f"Mode {r['mode']} {r['queue_nlp_ms']:.0f} ms ({r['ratio']:.2f}x)" for r in times if "1000" in r["size"]]
    print(f"[{label}] 1000 x 100, 50 sites: " + ", ".join(big))


def print_loads(loads: list[dict[str, Any]]) -> None:
    """The workload table: p50/p99, instances and rejections per placement."""
    print()
    print(
        f"{'service':<8}{'rate':>5}  "
        + "  ".join(f"{p:>22}" for p in ("thesis", "queue", "queue-p99", "nearest", "least-loaded"))
        + "  p99 / best baseline: queue, queue-p99"
    )
    for w in loads:
        cells = [
            f"{o['p50_ms']:5.1f}/{o['p99_ms']:5.1f} {o['instances']:>3}i {o['rejected']:>5}r"
            for o in w["outcomes"].values()
        ]
        print(
            f"{w['service']:<8}{w['rate']:>5g}  "
            + "  ".join(f"{c:>22}" for c in cells)
            + f"  {w['queue_p99_over_best_baseline']:.2f}, {w['queue_p99_cap_over_best_baseline']:.2f}"
        )
    print(
        "cells: p50/p99 ms, instances started, requests rejected "
        "(60 clients at 6 sites, 3 nodes of 2048 MB, 300 MB instances)"
    )


if __name__ == "__main__":
    main()
