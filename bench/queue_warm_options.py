"""Ipopt's warm-start options for solver.queue_warm: iterations per queue relaxation under each option set.

The relaxations of the thesis's instances (every other size of ``bench/queue_bench.py``, seed 0, Mode 1)
with no cores, 2 and 1 cores per node, and Mode 1 with instances running (none and 2 cores): 20 problems.
For each option set (over ``solver.queue_warm.WARM_OPTIONS``), Ipopt's iterations per relaxation (counting
its start, as ``details.iterations`` does; the cold fallback's included where the warm path declines), their
median and mean, and how many R(S) the warm path declined. Iteration counts, not times: they do not depend
on the machine's load. ``push`` sets every ``warm_start_*_push`` and ``*_frac`` option; ``slivers`` switches
``queue_warm.SLIVERS``; ``cold`` solves with the warm path off (the path before it); ``gap`` sets
``queue_warm.GAP``, the column generation's proven gap at the warm start (1e-8: as before cgfast); ``inner``
switches ``queue_warm.INNER`` (the column generation's budgets inside the NLP's), ``exact`` ``queue_warm.EXACT_BOUNDS``
(Ipopt's bounds exact, mu 1e-10; off: relaxed by 1e-8, mu 1e-9), ``basis`` ``queue_dual.FEASIBLE_BASIS``, ``cap``
``queue_dual.CAP_LEVEL``; ``session9`` all four off (the warm start before session 10).

    .venv/bin/python bench/queue_warm_options.py [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
from typing import Any

from solver import queue_dual, queue_fast, queue_warm
from solver.problem import Mode, build_problem
from solver.queue_fast import solve_nlp_fast
from solver.queue_model import QueueProblem, build_queue_problem
from solver.simulate import SWEEPS, thesis_instance
from solver.snapshot import Snapshot

SIZES = [(r, 10) for r in SWEEPS["requests"]] + [(25, n) for n in SWEEPS["nodes"]]
OPTION_SETS: list[dict[str, Any]] = [
    {},
    {"cold": True},
    {"session9": True},
    {"inner": False},
    {"exact": False},
    {"basis": False},
    {"cap": False},
    {"gap": 1e-8},
    {"gap": 1e-2},
    {"slivers": False},
    {"push": 1e-6, "mu_init": 1e-8},
    {"push": 1e-6},
    {"push": 1e-12},
    {"mu_init": 1e-7},
    {"mu_init": 1e-8},
    {"mu_init": 1e-9},
    {"mu_init": 1e-11},
    {"mu_strategy": "adaptive"},
    {"nlp_scaling_method": "none"},
    {"tol": 1e-7},
    {"tol": 1e-8},
]
PUSH_KEYS = [k for k in queue_warm.WARM_OPTIONS if k.endswith(("_push", "_frac"))]


def problems() -> list[QueueProblem]:
    """The 20 relaxations: every other thesis size x (no cores, 2, 1 cores; running with none, 2 cores)."""
    from bench.queue_bench import with_cores, with_running

    out = []
    for cores, running in [(None, False), (None, True), (2.0, False), (1.0, False), (2.0, True)]:
        for r, n in SIZES[::2]:
            snap: Snapshot = with_cores(thesis_instance(r, n, 0), cores)
            snap = with_running(snap, 0) if running else snap
            out.append(build_queue_problem(build_problem(snap, Mode.MODE1)))
    return out


def measure(qs: list[QueueProblem], change: dict[str, Any]) -> dict[str, Any]:
    """Iterations per relaxation with ``change`` applied over the default options (restored after)."""
    saved = (dict(queue_warm.WARM_OPTIONS), queue_warm.SLIVERS, queue_warm.ENABLED, queue_warm.GAP)
    switches = (queue_warm.INNER, queue_warm.EXACT_BOUNDS, queue_dual.FEASIBLE_BASIS, queue_dual.CAP_LEVEL)
    declined = 0
    real = queue_warm.solve_certified

    def counted(q: QueueProblem, allowed: Any) -> Any:
        nonlocal declined
        sol = real(q, allowed)
        declined += int(sol is None and queue_warm.ENABLED)
        return sol

    rest = dict(change)
    queue_warm.ENABLED = not rest.pop("cold", False)
    queue_warm.SLIVERS = rest.pop("slivers", True)
    queue_warm.GAP = rest.pop("gap", saved[3])
    before = not rest.pop("session9", False)
    queue_warm.INNER = rest.pop("inner", before)
    queue_warm.EXACT_BOUNDS = rest.pop("exact", before)
    queue_dual.FEASIBLE_BASIS = rest.pop("basis", before)
    queue_dual.CAP_LEVEL = rest.pop("cap", before)
    push = rest.pop("push", None)
    if push is not None:
        queue_warm.WARM_OPTIONS.update(dict.fromkeys(PUSH_KEYS, push))
    queue_warm.WARM_OPTIONS.update(rest)
    queue_fast.solve_certified = counted  # type: ignore[assignment]
    try:
        its = [solve_nlp_fast(q).iterations for q in qs]
    finally:
        queue_fast.solve_certified = real  # type: ignore[assignment]
        queue_warm.WARM_OPTIONS.clear()
        queue_warm.WARM_OPTIONS.update(saved[0])
        queue_warm.SLIVERS, queue_warm.ENABLED, queue_warm.GAP = saved[1], saved[2], saved[3]
        queue_warm.INNER, queue_warm.EXACT_BOUNDS, queue_dual.FEASIBLE_BASIS, queue_dual.CAP_LEVEL = switches
    return {"change": change, "median": statistics.median(its), "mean": statistics.fmean(its), "declined": declined}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = ap.parse_args()
    qs = problems()
    rows = [measure(qs, change) for change in OPTION_SETS]
    if args.json:
        print(json.dumps({"problems": len(qs), "defaults": queue_warm.WARM_OPTIONS, "rows": rows}, indent=1))
        return
    print(f"{len(qs)} relaxations; defaults: {queue_warm.WARM_OPTIONS}")
    print(f"{'change':<44}{'median it':>10}{'mean it':>9}{'declined':>10}")
    for r in rows:
        print(f"{json.dumps(r['change']) or '{}':<44}{r['median']:>10g}{r['mean']:>9.1f}{r['declined']:>10}")


if __name__ == "__main__":
    main()
