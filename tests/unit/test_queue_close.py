"""Pool closing (solver.queue_close): no instance the integer placement does not need, every budget kept."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from solver import queue_lazy, queue_plan, queue_repair, queue_split
from solver.api import solve
from solver.problem import Mode, build_problem
from solver.queue_close import closable, close_pools, integer_objective
from solver.queue_model import build_queue_problem, solve_nlp
from solver.queue_repair import bound_excess, repair
from solver.snapshot import Model, Node, Request, Snapshot
from solver.tail_cap import with_tail_cap
from tests.unit.test_solver_queue_placement import check, instances

IDS = ("n1", "n2", "n3")


def one_stream(rtts: tuple[float, ...], rate: float | None = None) -> Snapshot:
    """One client, one model, three roomy nodes: the stream the agent tests send."""
    nodes = tuple(Node(i, 2048.0, 2048.0, 100.0) for i in IDS)
    req = Request("m", dict(zip(IDS, rtts, strict=True)), dict.fromkeys(IDS, 2.0), "c0", rate)
    return Snapshot(nodes, (Model("m", 300.0, 1.0),), (req,))


@pytest.mark.parametrize("rtts", [(1.0, 5.0, 9.0), (1.0, 1.5, 2.0), (2.0, 1.0, 30.0)])
@pytest.mark.parametrize("objective", ["queue", "queue-p99"])
@pytest.mark.parametrize("mode", ["1", "2"])
def test_one_tiny_stream_gets_one_instance_on_its_nearest_node(rtts: Any, objective: str, mode: str) -> None:
    plan = solve(one_stream(rtts), mode=mode, objective=objective)
    nearest = IDS[int(np.argmin(rtts))]
    assert plan.instances == {n: ({"m": 1} if n == nearest else {}) for n in IDS}
    assert plan.shares == ({nearest: 1.0},)
    assert [e["shares"] for e in plan.details["spread"]] == [{nearest: 1.0}]


def test_the_checker_sees_the_extra_pool_when_closing_is_off(monkeypatch: Any) -> None:
    # the split here is a sliver at the relaxation's N_MIN floor, which repair now drops itself
    # (solver.queue_repair.DROP_SLIVERS); with that off it reaches closing, the general remedy
    monkeypatch.setattr(queue_repair, "DROP_SLIVERS", False)
    q = build_queue_problem(build_problem(one_stream((1.0, 5.0, 9.0)), Mode.MODE2))
    nlp = solve_nlp(q)
    pools = repair(q, nlp.x, nlp.r)
    assert int(pools.counts().sum()) == 2 and closable(pools), "the relaxation's split opens a second pool"
    monkeypatch.setattr(queue_plan, "close_pools_fast", lambda pools: 0)
    monkeypatch.setattr(queue_split, "ENABLED", False)  # the best split would empty the sliver's pool too
    # Ipopt's interior split (solver.queue_fast's closed form places this stream whole, opening no sliver)
    monkeypatch.setattr(queue_plan, "solve_nlp_fast", queue_lazy.solve_nlp_lazy)
    off = solve(one_stream((1.0, 5.0, 9.0)), mode="2", objective="queue")
    assert sum(sum(m.values()) for m in off.instances.values()) == 2
    before = integer_objective(pools)
    assert close_pools(pools) >= 1 and closable(pools) == []
    assert int(pools.counts().sum()) == 1 and integer_objective(pools) < before
    check(pools)


def test_a_pool_is_kept_when_closing_it_would_cost_more() -> None:
    """Two sites far apart, each with enough traffic that moving it costs more than an instance."""
    nodes = (Node("a", 2048.0, 2048.0, 100.0), Node("b", 2048.0, 2048.0, 100.0))
    model = Model("m", 300.0, 1.0, {"default": 1000.0})
    reqs = (
        Request("m", {"a": 1.0, "b": 80.0}, {"a": 2.0, "b": 2.0}, "near-a", 50.0),
        Request("m", {"a": 80.0, "b": 1.0}, {"a": 2.0, "b": 2.0}, "near-b", 50.0),
    )
    plan = solve(Snapshot(nodes, (model,), reqs), mode="2", objective="queue")
    assert plan.instances == {"a": {"m": 1}, "b": {"m": 1}}
    assert plan.shares == ({"a": 1.0}, {"b": 1.0})


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(instances(), st.sampled_from([Mode.MODE1, Mode.MODE2]), st.booleans())
def test_closing_keeps_every_invariant_and_never_raises_the_objective(snap: Snapshot, mode: Mode, tail: bool) -> None:
    q = build_queue_problem(build_problem(snap, mode))
    q = with_tail_cap(q) if tail else q
    nlp = solve_nlp(q, compact=False)  # the reference form's Ipopt point (test_a_destination_that_opens_...)
    pools = repair(q, nlp.x, nlp.r)
    before, rejected = integer_objective(pools), pools.rejected.copy()
    excess = [bound_excess(pools, k) for k in range(len(snap.models))]
    close_pools(pools)
    check(pools)  # the bound on the instances with traffic, Mode 1 included (solver.queue_running)
    after = [bound_excess(pools, k) for k in range(len(snap.models))]
    assert all(a <= max(b, 0) for a, b in zip(after, excess, strict=True))  # closing never adds to it
    assert np.all(pools.lam() <= pools.cap * pools.counts() + 1e-6)
    np.testing.assert_allclose(pools.rejected, rejected)  # closing moves served rate only
    assert integer_objective(pools) <= before + 1e-9 * max(1.0, abs(before))
    assert closable(pools) == []


@pytest.mark.parametrize("fast", [False, True])
def test_a_destination_that_opens_an_instance_can_make_closing_pay(fast: bool, monkeypatch: Any) -> None:
    """Found by hypothesis (tests/unit/data/queue_close_falls.json): closing n1's pool of m1 moves its streams to
    pools whose terms fall (a hot pool opens an instance and loses more wait than the instance costs). The
    screen used to assume a destination's term never falls and skipped the pool, leaving it closable; it now
    bounds how far each open pool's term can fall (queue_close.close_screen), in both passes."""
    import json
    from pathlib import Path

    from solver import queue_close
    from solver.queue_close_fast import close_pools_fast

    case = json.loads((Path(__file__).parent / "data" / "queue_close_falls.json").read_text())
    snap, mode = Snapshot.from_dict(case["snap"]), Mode(case["mode"])
    q = build_queue_problem(build_problem(snap, mode))
    q = with_tail_cap(q) if case["tail"] else q
    nlp = solve_nlp(q, compact=False)
    run = close_pools_fast if fast else close_pools
    pools = repair(q, nlp.x, nlp.r)
    run(pools)
    assert closable(pools) == []
    check(pools)
    monkeypatch.setattr(queue_close, "SCREEN_FALLS", False)
    pools = repair(q, nlp.x, nlp.r)
    run(pools)
    assert closable(pools), "with the old screen the pool stays open"
