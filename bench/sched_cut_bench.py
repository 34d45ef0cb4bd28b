"""The scheduler cut's bisection (solver.queue_sched.kept_share): model runs per cut and ms per plan, fast against
the plain loop, on the plans where the cut fires (issue 16).

Runs bench/queue_integer_bench.py's cases (bench/queue_gap_bench.py's groups: thesis sizes x ``--seeds`` x both
modes) at each of ``--cores``, plans each with ``FAST`` on and off (alternating, ``--reps`` times), and where the cut
fires reports the model runs of each cut, the plan's ms in the cut, and whether the plans are the same bit for bit.

    PYTHONPATH=. .venv/bin/python bench/sched_cut_bench.py [--seeds N] [--cores N [N ...]] [--reps N]
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import numpy as np


def plan(snap: Any, mode: str, fast: bool) -> tuple[Any, list[int], float]:
    """(pools, model runs of each cut, seconds in the cuts) of one snapshot's plan with ``FAST`` as given."""
    from solver import queue_sched
    from solver.problem import Mode, build_problem
    from solver.queue_fast import solve_nlp_fast
    from solver.queue_model import build_queue_problem
    from solver.queue_plan import integer_part

    runs: list[int] = []
    spent = [0.0]
    kept = queue_sched.kept_share

    def counted(load: Any, *args: Any) -> float:
        count = [0]

        def counting(share: float) -> tuple[float, bool]:
            count[0] += 1
            return load(share)  # type: ignore[no-any-return]

        start = time.perf_counter()
        out = kept(counting, *args)
        spent[0] += time.perf_counter() - start
        runs.append(count[0])
        return out

    queue_sched.FAST, queue_sched.kept_share = fast, counted
    try:
        q = build_queue_problem(build_problem(snap, Mode.MODE1 if mode == "1" else Mode.MODE2))
        pools, _ = integer_part(q, solve_nlp_fast(q))
    finally:
        queue_sched.FAST, queue_sched.kept_share = True, kept
    return pools, runs, spent[0]


def same(a: Any, b: Any) -> bool:
    """Whether two plans are the same bit for bit (placement, instances, rejection)."""
    pairs = ((a.x, b.x), (a.counts(), b.counts()), (a.rejected, b.rejected))
    return all(np.array_equal(u, v) for u, v in pairs)


def main() -> None:
    from bench.queue_gap_bench import GROUPS
    from bench.queue_integer_bench import cases

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--cores", type=float, nargs="+", default=[2.0, 1.0])
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    for cores in args.cores:
        for group in GROUPS:
            for i, (label, snap, mode) in enumerate(cases(group, args.seeds, cores)):
                first, runs, _ = plan(snap, mode, True)
                if not runs:
                    continue
                ms: dict[bool, list[float]] = {True: [], False: []}
                counts: dict[bool, list[int]] = {True: runs, False: []}
                ok = True
                for _ in range(args.reps):
                    for fast in (False, True):
                        pools, runs, spent = plan(snap, mode, fast)
                        ms[fast].append(1000.0 * spent)
                        counts[fast] = runs
                        ok = ok and same(pools, first)
                print(f"{cores:g} cores {group} {label} mode {mode} #{i}: cuts {len(runs)}, model runs plain "
                      f"{counts[False]} fast {counts[True]}; ms in the cuts plain {statistics.median(ms[False]):.1f} "
                      f"fast {statistics.median(ms[True]):.1f}; plans the same: {ok}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
