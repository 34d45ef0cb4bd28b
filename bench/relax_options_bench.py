"""The cored relaxation's options against today's: time, the same answer or not, and the plans (issue 16 target 5).

The queue relaxation at 1 and 2 cores per node spends its time in HiGHS's column generation and the warm Ipopt
(solver.queue_dual, solver.queue_warm; docs/solver.md). Each variant below is one idea for a faster R(S): fewer
HiGHS rounds (more levels per round, a denser start ladder, a looser gap), another first basis, HiGHS options for
tiny LPs, MUMPS and Ipopt options for the warm solve; and, against session 19's reuse of one HiGHS object per thread
(``queue_dual.REUSE_HIGHS``), a new one per LP as before. The bench

1. captures every R(S) (``solver.queue_fast._solve_sub``'s problem and columns) of the thesis-size solves of
   bench/queue_bench.py (``SIZES`` x ``--seeds`` x Mode 1 and 2, every node given ``--cores``);
2. re-solves them all under each variant in turn, ``--reps`` times, alternating (today's settings first in each
   pass): CPU ms per R(S) (median and best pass), LP solves and Ipopt iterations per R(S), and how many answers are
   bitwise today's (x, r, n and servers) and the largest relative change of R(S)'s objective;
3. with ``--plans``: every plan of the corpus (thesis sizes x seeds 0-4, both modes; Mode 1 with instances
   running; the 1,000 x 100 site instance; no / 1 / 2 cores; both queue objectives) under today's settings and
   each variant that changes an answer: how many plans differ (assignments, instances, shares, objective), with
   other instance totals, and the plan objective's relative change.

A variant is a set of module attributes (``solver.queue_dual``, ``solver.queue_warm``) and options merged into
HiGHS's or the warm Ipopt's; ``applied`` sets them and restores every one.

    .venv/bin/python bench/relax_options_bench.py [--seeds N] [--cores N [N ...]] [--reps N] [--plans] [--json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from bench.queue_bench import SIZES, with_cores, with_running
from solver import queue_dual, queue_fast, queue_warm
from solver.api import solve
from solver.fastlp import tune_solver_process
from solver.plan import Plan
from solver.queue_model import NlpSolution
from solver.simulate import site_instance, thesis_instance
from solver.snapshot import Snapshot

# name -> settings: "dual.X" / "warm.X" a module attribute, "highs" / "ipopt" options merged into today's
VARIANTS: dict[str, dict[str, Any]] = {
    "today": {},
    "more levels per round (0.25)": {"dual.SMOOTH_EXTRA": (0.25,)},
    "more levels per round (0.25, 0.75)": {"dual.SMOOTH_EXTRA": (0.25, 0.75)},
    "denser start ladder": {"dual.START_LADDER": (2.0, 3.0, 5.0, 10.0, 30.0, 100.0)},
    "gap 1e-4": {"warm.GAP": 1e-4},
    "slack basis": {"dual.FEASIBLE_BASIS": False},
    "HiGHS no scaling": {"highs": {"simplex_scale_strategy": 0}},
    "HiGHS dual simplex": {"highs": {"simplex_strategy": 1}},
    "HiGHS no condition check": {"highs": {"simplex_initial_condition_check": False}},
    "MUMPS memory 5 %": {"ipopt": {"mumps_mem_percent": 5}},
    "MUMPS no scaling": {"ipopt": {"mumps_permuting_scaling": 0, "mumps_scaling": 0}},
    "Ipopt no NLP scaling": {"ipopt": {"nlp_scaling_method": "none"}},
    "no polish (session 17)": {"warm.POLISH": False, "warm.GAP": 1e-5},
    "polish, gap 1e-5": {"warm.GAP": 1e-5},
    "polish, gap 1e-4": {"warm.GAP": 1e-4},
    "polish 2 iterations": {"warm.POLISH_ITER": 2},
    "polish, more levels per round (0.25)": {"dual.SMOOTH_EXTRA": (0.25,)},
    "a new HiGHS object per LP (session 18)": {"dual.REUSE_HIGHS": False},
}
MODULES = {"dual": queue_dual, "warm": queue_warm}
Captured = list[tuple[Any, Any]]


@contextmanager
def applied(settings: dict[str, Any]) -> Iterator[None]:
    """``settings`` in force (module attributes and solver options), every one restored afterwards."""
    saved_attrs: list[tuple[Any, str, Any]] = []
    highs, ipopt = dict(queue_dual.HIGHS_OPTIONS), dict(queue_warm.WARM_OPTIONS)
    try:
        for key, value in settings.items():
            if key == "highs":
                queue_dual.HIGHS_OPTIONS.update(value)
            elif key == "ipopt":
                queue_warm.WARM_OPTIONS.update(value)
            else:
                module, name = MODULES[key.split(".")[0]], key.split(".", 1)[1]
                saved_attrs.append((module, name, getattr(module, name)))
                setattr(module, name, value)
        yield
    finally:
        for module, name, value in reversed(saved_attrs):
            setattr(module, name, value)
        queue_dual.HIGHS_OPTIONS.clear()
        queue_dual.HIGHS_OPTIONS.update(highs)
        queue_warm.WARM_OPTIONS.clear()
        queue_warm.WARM_OPTIONS.update(ipopt)


def capture(snapshots: list[Snapshot]) -> Captured:
    """Every R(S) (its problem and allowed columns) that the queue solves of ``snapshots`` (both modes) pass."""
    found: Captured = []
    sub = queue_fast._solve_sub

    def keep(q: Any, allowed: Any) -> NlpSolution:
        found.append((q, allowed))
        return sub(q, allowed)

    queue_fast._solve_sub = keep
    try:
        for snapshot in snapshots:
            for mode in "12":
                solve(snapshot, mode=mode, objective="queue")
    finally:
        queue_fast._solve_sub = sub
    return found


def digest(sol: NlpSolution) -> str:
    """A hash of R(S)'s answer: x, r, n and the servers, bit for bit."""
    h = hashlib.sha256()
    for part in (sol.x, sol.r, sol.n, sol.effective()):
        h.update(np.ascontiguousarray(part, dtype=float).tobytes())
    return h.hexdigest()


def answers(subs: Captured) -> tuple[list[tuple[str, float, int]], float]:
    """Each R(S)'s (digest, objective, Ipopt iterations) under the settings in force, and LP solves per R(S)."""
    solves = [0]
    lp_solve = queue_dual._Lp.solve

    def counted(self: Any) -> Any:
        solves[0] += 1
        return lp_solve(self)

    queue_dual._Lp.solve = counted  # type: ignore[method-assign]
    try:
        out = []
        for q, allowed in subs:
            sol = queue_fast._solve_sub(q, allowed)
            out.append((digest(sol), float(sol.value), int(sol.iterations)))
    finally:
        queue_dual._Lp.solve = lp_solve  # type: ignore[method-assign]
    return out, solves[0] / max(1, len(subs))


def measure(subs: Captured, names: list[str], reps: int) -> list[dict[str, Any]]:
    """Per variant: ms per R(S) (median and best of ``reps`` alternating passes), LP solves and Ipopt iterations
    per R(S), answers bitwise today's, the largest relative change of R(S)'s objective."""
    ref, _ = answers(subs)
    rows: dict[str, dict[str, Any]] = {}
    for name in names:
        with applied(VARIANTS[name]):
            got, lp_solves = answers(subs)
        change = max((abs(g[1] - r[1]) / max(1.0, abs(r[1])) for g, r in zip(got, ref, strict=True)), default=0.0)
        rows[name] = {
            "variant": name,
            "same": sum(g[0] == r[0] for g, r in zip(got, ref, strict=True)),
            "relaxations": len(subs),
            "objective_change": change,
            "lp_solves": lp_solves,
            "iterations": sum(g[2] for g in got) / max(1, len(got)),
            "ms": [],
        }
    for _ in range(reps):
        for name in names:
            with applied(VARIANTS[name]):
                start = time.process_time()
                for q, allowed in subs:
                    queue_fast._solve_sub(q, allowed)
                rows[name]["ms"].append(1000.0 * (time.process_time() - start) / max(1, len(subs)))
    for row in rows.values():
        times = row.pop("ms")
        row["ms_median"], row["ms_best"] = statistics.median(times), min(times)
    return list(rows.values())


def corpus(seeds: int) -> list[tuple[Snapshot, str]]:
    """The plan corpus's snapshots (no cores given) and modes."""
    out = [(thesis_instance(r, n, s), mode) for r, n in SIZES for s in range(seeds) for mode in "12"]
    out += [(site_instance(1000, 100, 50, s), mode) for s in range(2) for mode in "12"]
    out += [(with_running(thesis_instance(r, n, s), s), "1") for r, n in SIZES for s in range(seeds)]
    return out


def plan_key(plan: Plan) -> str:
    """The plan as JSON without its timings (assignments, instances, actions, shares, objective)."""
    d = plan.to_dict()
    d.pop("solve_ms", None)
    d.pop("details", None)
    d["shares"] = [dict(s) for s in plan.shares]
    return json.dumps(d, sort_keys=True, default=str)


def plans(cases: list[tuple[Snapshot, str]], cores: list[float | None]) -> list[tuple[str, float, int]]:
    """Every plan of ``cases`` at each core count, both queue objectives: (key, objective, instances)."""
    out = []
    for c in cores:
        for snapshot, mode in cases:
            for objective in ("queue", "queue-p99"):
                plan = solve(with_cores(snapshot, c), mode=mode, objective=objective)
                total = sum(sum(per.values()) for per in plan.instances.values())
                out.append((plan_key(plan), plan.objective_ms, total))
    return out


def compare_plans(ref: list[tuple[str, float, int]], got: list[tuple[str, float, int]]) -> dict[str, Any]:
    """How many plans differ from ``ref``, with other instance totals, and their objective's relative change."""
    pairs = [(g, r) for g, r in zip(got, ref, strict=True) if g[0] != r[0]]
    change = [(g[1] - r[1]) / max(1e-12, abs(r[1])) for g, r in pairs]
    return {
        "plans": len(ref),
        "differ": len(pairs),
        "other_instances": sum(g[2] != r[2] for g, r in pairs),
        "worse_1e3": sum(x > 1e-3 for x in change),
        "better_1e3": sum(x < -1e-3 for x in change),
        "worst": max(change, default=0.0),
        "best": min(change, default=0.0),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=3, help="instances per size for the timing (default 3)")
    ap.add_argument("--cores", type=float, nargs="+", default=[1.0, 2.0], metavar="N",
                    help="cores per node of the timed snapshots (default 1 2)")  # fmt: skip
    ap.add_argument("--reps", type=int, default=8, help="alternating passes over the captured R(S) (default 8)")
    ap.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS), metavar="NAME")
    ap.add_argument("--plans", action="store_true", help="also the plan corpus under each variant that moves R(S)")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = ap.parse_args()
    tune_solver_process()
    names = ["today", *(n for n in args.variants if n != "today")]
    snaps = [with_cores(thesis_instance(r, n, s), c) for c in args.cores for r, n in SIZES for s in range(args.seeds)]
    subs = capture(snaps)
    rows = measure(subs, names, args.reps)
    moved = [r["variant"] for r in rows if r["same"] < r["relaxations"]]
    plan_rows: dict[str, Any] = {}
    if args.plans and moved:
        cases = corpus(5)
        ref = plans(cases, [None, 1.0, 2.0])
        for name in moved:
            with applied(VARIANTS[name]):
                plan_rows[name] = compare_plans(ref, plans(cases, [None, 1.0, 2.0]))
    if args.json:
        print(json.dumps({"rows": rows, "plans": plan_rows, "load_average": os.getloadavg()}, indent=1))
        return
    base = next(r for r in rows if r["variant"] == "today")
    print(f"{len(subs)} cored R(S) captured; ms per R(S) over {args.reps} alternating passes")
    print(f"{'variant':<36}{'median':>8}{'best':>7}{'vs today':>9}{'LP':>6}{'Ipopt it':>9}{'bitwise':>9}{'obj chg':>9}")
    for r in rows:
        print(
            f"{r['variant']:<36}{r['ms_median']:>8.2f}{r['ms_best']:>7.2f}{r['ms_median'] / base['ms_median']:>9.3f}"
            f"{r['lp_solves']:>6.2f}{r['iterations']:>9.2f}{r['same']:>5}/{r['relaxations']:<3}{r['objective_change']:>9.1e}"
        )
    for name, p in plan_rows.items():
        print(
            f"plans, {name}: {p['differ']} of {p['plans']} differ ({p['other_instances']} with other instance totals; "
            f"objective worse by > 1e-3 in {p['worse_1e3']}, better in {p['better_1e3']}; "
            f"change {100 * p['best']:+.3f} % .. {100 * p['worst']:+.3f} %)"
        )
    print("load average (1, 5, 15 min) at the end: " + ", ".join(f"{x:.2f}" for x in os.getloadavg()))


if __name__ == "__main__":
    main()
