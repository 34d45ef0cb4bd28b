"""solver.hold.value_running: the running instances valued under the plan's own queue model."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from solver import Snapshot
from solver.api import solve
from solver.hold import EVAL_RHO, TOLERANCE, Held, _delay, value_running
from solver.problem import Mode, build_problem, running_instances
from solver.queue_model import build_queue_problem
from solver.queueing import PoolDelay

pytest.importorskip("cyipopt")


def snapshot(running: dict[str, int], rates: list[float], rtt: list[list[float]], mu: float = 300.0) -> Snapshot:
    nodes = [f"n{j}" for j in range(len(rtt[0]))]
    return Snapshot.from_dict(
        {
            "objective": "queue",
            "nodes": [
                {"id": n, "mem_available_mb": 4000, "mem_total_mb": 4000, "compute": 100,
                 "instances": {"m": running.get(n, 0)} if running.get(n) else {}}
                for n in nodes
            ],
            "models": [{"name": "m", "mem_mb": 64, "compute": 10, "throughput_rps": {"default": mu}}],
            "requests": [
                {"model": "m", "client": f"s{c}", "rate": r, "rtt_ms": dict(zip(nodes, row, strict=True)),
                 "exec_ms": dict.fromkeys(nodes, 1000.0 / mu)}
                for c, (r, row) in enumerate(zip(rates, rtt, strict=True))
            ],
        }
    )  # fmt: skip


def test_the_delay_is_pool_delays_at_the_evaluation_load_cap() -> None:
    s = snapshot({"n0": 2}, [10.0], [[1.0, 2.0]])
    q = build_queue_problem(build_problem(s, Mode.MODE2, current=running_instances(s)))
    n = np.array([[2.0], [3.0]])
    for lam in (0.0, 50.0, 400.0, 900.0):  # below, near and past the cap
        d, d1 = _delay(q, np.array([[lam], [lam]]), Held(n, np.full(2, np.inf)))
        for j in range(2):
            ref = PoolDelay(300.0, EVAL_RHO)
            assert d[j, 0] == pytest.approx(float(ref.value(lam, n[j, 0])), rel=1e-9)
            assert d1[j, 0] == pytest.approx(float(ref.gradient(lam, n[j, 0])[0]), rel=1e-9)


def test_a_symmetric_stream_splits_evenly_and_the_gap_is_tiny() -> None:
    v = value_running(snapshot({"n0": 1, "n1": 1}, [200.0], [[5.0, 5.0]]))
    assert v.spread[0]["shares"] == pytest.approx({"n0": 0.5, "n1": 0.5}, abs=1e-3)
    assert v.gap_ms < TOLERANCE * v.objective_ms
    assert v.objective_ms == pytest.approx(5.0 + 1000.0 / (300.0 - 100.0), rel=1e-4)  # RTT + M/M/1 sojourn


def test_what_the_running_instances_cannot_do_is_named() -> None:
    assert value_running(snapshot({}, [10.0], [[1.0, 2.0]])).unserved == ("m",)
    hot = value_running(snapshot({"n0": 1}, [290.0], [[1.0, 2.0]]))
    assert hot.overloaded == ("n0/m",) and hot.unserved == ()
    many = value_running(snapshot({"n0": 3, "n1": 2}, [10.0], [[1.0, 2.0]]))
    assert many.over_bound == ("m",) and many.demand == ("m",)  # need 1 + one spare per class = 2 < 5
    fine = value_running(snapshot({"n0": 1, "n1": 1}, [100.0], [[1.0, 2.0]]))
    assert fine.over_bound == () and fine.overloaded == () and fine.unserved == ()


@settings(max_examples=15, deadline=None)
@given(
    st.lists(st.floats(1.0, 150.0), min_size=1, max_size=4),
    st.lists(st.lists(st.floats(0.5, 20.0), min_size=3, max_size=3), min_size=4, max_size=4),
)
def test_the_plans_own_instances_are_valued_no_worse_than_the_plan_says(rates: list[float], rtt: Any) -> None:
    """At the plan's instance counts, the best split is at least as good as the plan's own split (its objective)."""
    rows = rtt[: len(rates)]
    plan = solve(snapshot({}, rates, rows), method="ipopt", mode="2")
    counts = {n: ms.get("m", 0) for n, ms in plan.instances.items()}
    v = value_running(snapshot(counts, rates, rows))
    assert v.unserved == () and v.overloaded == ()
    assert v.objective_ms <= plan.objective_ms * (1 + 1e-6) + v.gap_ms + 1e-9
