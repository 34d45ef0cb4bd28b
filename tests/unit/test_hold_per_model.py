"""The reviewer's small-stream case on the real solver and valuation: per-model latencies and the rule on them."""

from __future__ import annotations

from typing import Any

import pytest

from agent.hysteresis import Births, HoldConfig, judge
from solver import Snapshot
from solver.api import solve
from solver.hold import value_running

HELD = {"n0": {"A": 4}, "n1": {"B": 1}}
EXEC = {"n0": 3.3, "n1": 3.3}


def small_stream_snapshot() -> Snapshot:
    """Stream A: 1000 req/s next to both nodes; stream B: 1 req/s next to n0, 500 ms from n1 (where B runs)."""
    rtt = {"A": {"n0": 5, "n1": 5}, "B": {"n0": 5, "n1": 500}}
    return Snapshot.from_dict({
        "objective": "queue",
        "nodes": [{"id": n, "mem_available_mb": 4000, "mem_total_mb": 4000, "compute": 100, "instances": HELD[n]}
                  for n in ("n0", "n1")],
        "models": [{"name": m, "mem_mb": 64, "compute": 10, "throughput_rps": {"default": 300.0}} for m in "AB"],
        "requests": [{"model": m, "client": m.lower(), "rate": rate, "rtt_ms": rtt[m], "exec_ms": EXEC}
                     for m, rate in (("A", 1000.0), ("B", 1.0))],
    })  # fmt: skip


def weighted(per_model: dict[str, Any], rates: dict[str, float]) -> float:
    return sum(rates[m] * v for m, v in per_model.items()) / sum(rates[m] for m in per_model)


def test_per_model_latencies_average_to_the_objective_on_both_sides() -> None:
    snap = small_stream_snapshot()
    plan = solve(snap, method="ipopt", mode="2").to_dict()
    running = value_running(snap)
    rates = {"A": 1000.0, "B": 1.0}
    assert weighted(plan["details"]["model_ms"], rates) == pytest.approx(plan["objective_ms"], rel=1e-6)
    assert weighted(running.model_ms, rates) == pytest.approx(running.objective_ms, rel=1e-6)
    assert running.model_ms["B"] > 500.0 and plan["details"]["model_ms"]["B"] < 20.0


def test_the_small_stream_is_moved_with_the_per_model_rule_and_held_forever_without_it() -> None:
    snap = small_stream_snapshot()
    plan = solve(snap, method="ipopt", mode="2").to_dict()
    value = value_running(snap).to_dict()
    births = Births()
    births.observe(HELD, 0.0)
    counts = {n: plan["instances"].get(n, {}) for n in HELD}
    assert counts == {"n0": {"A": 4, "B": 1}, "n1": {}}
    model_ms = plan["details"]["model_ms"]
    on = judge(counts, HELD, plan["objective_ms"], value, (), births, 100.0, HoldConfig(), False, model_ms)
    assert on.switch and on.desired == counts and "of B" in on.reason
    off = HoldConfig(per_model=False)
    for k in range(5):  # no round ever breaks the hold without the rule (the cluster mean gains 0.49 ms)
        v = judge(counts, HELD, plan["objective_ms"], value, (), births, 100.0 + k, off, k > 0, model_ms)
        assert not v.switch and v.desired == HELD
