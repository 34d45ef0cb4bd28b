"""bench/queue_bench.py's thesis LP column: the LP's ~1 ms rows are its real optimum, the same with or without cores.

Issue 16's target compares the queue-aware solve with the thesis's LP on the same snapshots. Where nodes declare
cores, some Mode 2 rows show an LP of ~1 ms against a queue solve of 15 ms; these tests pin down why (docs/solver.md,
"The LP's 1 ms rows"): the thesis model has no cores, and on those snapshots no memory or compute row binds, so the
LP's optimum is every class on its cheapest node, found without Ipopt, while the queue model's core rows bind.
"""

from __future__ import annotations

import types

import numpy as np
import pytest

from bench.queue_bench import lp_figures, with_cores
from solver.api import solve
from solver.problem import Mode, build_problem, running_instances
from solver.simulate import thesis_instance


def test_the_thesis_lp_does_not_read_cores() -> None:
    for seed in range(3):
        snapshot = thesis_instance(20, 10, seed)
        for mode in ("1", "2"):
            plain = solve(snapshot, mode=mode, objective="thesis")
            for cores in (1.0, 2.0):
                cored = solve(with_cores(snapshot, cores), mode=mode, objective="thesis")
                assert cored.objective_ms == plain.objective_ms
                assert cored.assignments == plain.assignments and cored.instances == plain.instances
                assert cored.details["iterations"] == plain.details["iterations"]


def test_where_nothing_binds_the_lp_answers_without_ipopt_at_its_optimum() -> None:
    snapshot = with_cores(thesis_instance(25, 20, 1), 2.0)
    lp = solve(snapshot, mode="2", objective="thesis")
    assert lp.details["iterations"] == 0 and lp.details["rows"] == 0 and not lp.rejected
    p = build_problem(snapshot, Mode.MODE2, current=running_instances(snapshot))
    cheapest = float(p.cost.min(axis=1) @ p.class_count)  # a lower bound of any placement's objective
    assert np.isclose(lp.objective_ms, cheapest, rtol=1e-12, atol=0.0)
    exact = solve(snapshot, mode="2", method="milp", objective="thesis")  # HiGHS's integer optimum
    assert np.isclose(exact.objective_ms, cheapest, rtol=1e-9, atol=0.0)
    # the queue-aware model on the same snapshot: a closed form without cores, Ipopt where the cores bind
    assert solve(thesis_instance(25, 20, 1), mode="2", objective="queue").details["iterations"] == 0
    assert solve(snapshot, mode="2", objective="queue").details["iterations"] > 0


def test_the_bench_counts_the_lp_solves_that_called_ipopt() -> None:
    free = [with_cores(thesis_instance(25, 20, s), 2.0) for s in range(3)]  # Mode 2: nothing binds on any
    ms, ipopt = lp_figures(free, "2")
    assert ipopt == 0 and ms > 0
    bound = [thesis_instance(50, 10, s) for s in range(2)]  # nearly full: rows bind, Ipopt solves
    assert lp_figures(bound, "1")[1] == 2


def test_reps_times_each_snapshot_several_times_and_takes_the_median(monkeypatch: pytest.MonkeyPatch) -> None:
    """``--reps N`` (``queue_bench.REPS``): N solves of the same snapshot, the median of their CPU ms, and the same
    iterations as one solve (the same plan each time)."""
    import bench.queue_bench as qb

    snapshot = with_cores(thesis_instance(20, 10, 0), 2.0)
    one = qb.timed(snapshot, "queue", "1")
    readings = iter([0.0, 0.004, 0.004, 0.005, 0.005, 0.014])  # three solves of 4, 1 and 9 ms: the median is 4

    monkeypatch.setattr(qb, "REPS", 3)
    monkeypatch.setattr(qb, "time", types.SimpleNamespace(process_time=lambda: next(readings)))
    elapsed, relaxation, iterations = qb.timed(snapshot, "queue", "1")
    assert abs(elapsed - 4.0) < 1e-9
    assert iterations == one[2] and relaxation >= 0.0
