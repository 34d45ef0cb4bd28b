"""Issue 16 target 5: "at any load the plan's instance count is at most what the throughput needs plus one spare
per node class", on the plan the agent publishes (``solver.api.solve``, every step: relaxation, repair, closing,
moves, the splits, the scheduler's extra instance, too-slow pools), not on an intermediate step.

The other bound tests check repair's or the integer part's pools on clusters drawn for one failure each (full
cores, overload, hairs); this one sweeps the load itself: rooms of clients at 1-8 sites on 1-5 nodes of one or two
classes, with or without cores, one or two models, the offered rate a log-uniform 0.005-3x of what the nodes'
cores (or one instance a node, without cores) serve at ``rho_max``, Mode 1 with running instances or Mode 2, the
agent's default objective (queue-p99) and queue. ``plan_violations`` counts the instances that serve traffic
against the need of the rates the plan's shares send there.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from solver import queue_repair
from solver.api import solve
from solver.plan import Plan
from solver.problem import Mode
from solver.snapshot import Model, Node, Request, Snapshot
from tests.unit.test_instance_bound_hair import plan_violations

Ints = Callable[[int, int], int]
Reals = Callable[[float, float], float]


def room_at_load(integer: Ints, real: Reals) -> tuple[Snapshot, Mode, str, float]:
    """A lab (module docstring) and its mode, objective and load factor."""
    n_nodes, n_models, n_sites = integer(1, 5), integer(1, 2), integer(1, 8)
    cores = [None, 1.0, 2.0, 4.0][integer(0, 3)]
    mode = Mode.MODE1 if integer(0, 1) else Mode.MODE2
    models = tuple(Model(f"m{k}", 200.0, 1.0, {"default": real(20.0, 2000.0)}) for k in range(n_models))
    nodes = tuple(
        Node(
            f"n{j}",
            4096.0,
            4096.0,
            100.0,
            {m.name: integer(0, 2) for m in models} if mode is Mode.MODE1 else {},
            node_class=("nano", "orin")[integer(0, 1)],
            cores=cores,
        )
        for j in range(n_nodes)
    )
    site_rtt = [[real(1.0, 40.0) for _ in nodes] for _ in range(n_sites)]
    factor = math.exp(real(math.log(0.005), math.log(3.0)))
    clients = integer(10, 60)
    requests = []
    for k, m in enumerate(models):
        served = 0.9 * m.throughput_rps["default"] * n_nodes * (cores or 1.0)  # the cluster's rate at rho_max
        mine = [c for c in range(clients) if c % n_models == k]
        for c in mine:
            rtt = {n.id: site_rtt[c % n_sites][j] for j, n in enumerate(nodes)}
            exec_ms = 1000.0 / m.throughput_rps["default"]
            requests.append(Request(m.name, rtt, dict.fromkeys(rtt, exec_ms), f"c{c}", factor * served / len(mine)))
    objective = ("queue-p99", "queue")[integer(0, 1)]
    return Snapshot(nodes, models, tuple(requests)), mode, objective, factor


def seeded(seed: int) -> tuple[Snapshot, Mode, str, float]:
    rng = np.random.default_rng(seed)
    return room_at_load(lambda lo, hi: int(rng.integers(lo, hi + 1)), lambda lo, hi: float(rng.uniform(lo, hi)))


def placed(snap: Snapshot, mode: Mode, objective: str) -> Plan:
    return solve(snap, method="ipopt", mode=mode.value, objective=objective)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_the_published_plan_keeps_the_bound_at_any_load(data: st.DataObject) -> None:
    snap, mode, objective, _ = room_at_load(
        lambda lo, hi: data.draw(st.integers(lo, hi)), lambda lo, hi: data.draw(st.floats(lo, hi))
    )
    plan = placed(snap, mode, objective)
    assert plan.feasible
    assert plan_violations(snap, mode, plan) == []


SEEDS = range(40)


def past(snap: Snapshot, model: Model) -> int:
    """More instances of ``model`` than this break the bound whatever the plan serves: the offered rate's need at
    rho_max, plus one spare and one for rounding per node class."""
    rate = sum(r.rate for r in snap.requests if r.model == model.name)
    classes = {n.node_class for n in snap.nodes}
    per_instance = 0.9 * model.throughput_rps["default"] * min(1.0, snap.nodes[0].cores or 1.0)
    return math.ceil(rate / per_instance - 1e-9) + 2 * len(classes)


def test_the_sweep_spans_idle_to_overloaded_and_the_thesis_model_breaks_the_bound_there() -> None:
    """Not vacuous: the seeded draws of the same generator run from nearly idle (one instance a model) through
    loads needing several to overload (rate rejected, by cores or memory), and the thesis's model, placed on them,
    runs more instances than the bound allows in most (an instance per stream where memory allows)."""
    counts, overloaded, thesis_past = [], 0, 0
    for seed in SEEDS:
        snap, mode, objective, _ = seeded(seed)
        plan = placed(snap, mode, objective)
        counts.append(max(sum(plan.instances.get(n.id, {}).get(m.name, 0) for n in snap.nodes) for m in snap.models))
        overloaded += bool(plan.rejected)
        thesis = solve(snap, method="ipopt", mode="2", objective="thesis")
        thesis_past += any(
            sum(thesis.instances.get(n.id, {}).get(m.name, 0) for n in snap.nodes) > past(snap, m) for m in snap.models
        )
    assert min(counts) <= 1 and max(counts) >= 4
    assert overloaded >= 3
    assert thesis_past >= len(SEEDS) // 2


def test_the_check_fails_on_the_sweep_with_repairs_bound_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """The property holds because of the bound, not by the draws: with repair's bound step off some seeded
    clusters of the sweep publish plans past it."""
    monkeypatch.setattr(queue_repair, "_bound_spread", lambda *_: None)
    broken = [s for s in SEEDS if plan_violations(seeded(s)[0], seeded(s)[1], placed(*seeded(s)[:3]))]
    assert broken, "with the bound step off some cluster of the sweep must break the bound"
