"""bench/relax_floor_bench.py: its timers split the relaxation without changing it, and come out afterwards."""

from __future__ import annotations

import cyipopt

from bench.queue_bench import with_cores
from bench.relax_floor_bench import CALLBACKS, split, timers
from solver import queue_dual, queue_model
from solver.api import solve
from solver.simulate import thesis_instance


def test_the_parts_add_up_to_the_relaxation_and_the_plan_is_unchanged() -> None:
    snapshot = with_cores(thesis_instance(25, 5, 0), 2.0)
    plain = solve(snapshot, mode="1", objective="queue")
    parts = split(snapshot, "1")
    assert parts["highs"] > 0 and parts["ipopt"] > 0 and parts["callbacks"] > 0  # cores bind: R(S) by both
    total = parts["highs"] + parts["ipopt"] + parts["callbacks"] + parts["python"]
    assert abs(total - parts["relaxation"]) < 1e-9
    with timers():
        timed = solve(snapshot, mode="1", objective="queue")
    assert timed.objective_ms == plain.objective_ms and timed.instances == plain.instances
    assert timed.assignments == plain.assignments


def test_the_timers_come_out() -> None:
    init, problem = queue_dual._Lp.__init__, cyipopt.Problem
    callbacks = {name: getattr(queue_model._Callbacks, name) for name in CALLBACKS}
    with timers():
        assert cyipopt.Problem is not problem
    assert queue_dual._Lp.__init__ is init and cyipopt.Problem is problem
    assert all(getattr(queue_model._Callbacks, name) is fn for name, fn in callbacks.items())
