"""Repair's drain of pools that reuse running instances (solver.queue_running), on hand-made rate placements.

Mode 1, no memory left, one model of 100 req/s an instance (90 at rho_max), three nodes of one class with
1, 1 and 4 instances running; the streams sit where the test puts them, so each rule is seen on its own.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from solver.problem import Mode, build_problem
from solver.queue_model import QueueProblem, build_queue_problem
from solver.queue_repair import Pools
from solver.queue_running import drain_running
from solver.snapshot import Model, Node, Request, Snapshot

NODES = [0, 1, 2]


def problem(cores: float | None = None, n2_cap: float = 0.4) -> QueueProblem:
    """n0 (``cores``), n1, n2 with 1, 1, 4 instances of m running; one stream nearest each node (10 ms more
    RTT per node away); n2's pool under a load cap of ``n2_cap`` (0.4: 40 req/s an instance), the others 0.9."""
    running = (1, 1, 4)
    nodes = tuple(Node(f"n{j}", 0.0, 0.0, 10.0, {"m": running[j]}, cores=cores if j == 0 else None) for j in range(3))
    reqs = tuple(
        Request("m", {f"n{o}": 1.0 + 10.0 * abs(o - j) for o in range(3)}, dict.fromkeys(("n0", "n1", "n2"), 2.0),
                f"c{j}", 1.0)
        for j in range(3)
    )  # fmt: skip
    q = build_queue_problem(
        build_problem(Snapshot(nodes, (Model("m", 100.0, 1.0, {"default": 100.0}),), reqs), Mode.MODE1)
    )
    caps = np.array([[0.9], [0.9], [n2_cap]])
    return dataclasses.replace(q, load_cap=caps, rate=np.array([50.0, 85.0, 150.0]))


def pools(q: QueueProblem, rates: tuple[float, float, float]) -> Pools:
    """Each stream whole on its own node at ``rates``."""
    return Pools(q, np.diag(rates), np.zeros(3))


def test_a_pool_keeps_traffic_and_sheds_one_instance_within_the_caps_where_no_pool_can_empty() -> None:
    """n0 (50 req/s) and n1 (85) cannot empty into the others' room at their caps (15 and 50 req/s); n2's 150
    req/s on 4 instances at 40 gives 30 to the others' headroom, cheapest first (n1's 5, then n0), and
    runs 3: no cap raised, no shed counted."""
    p = pools(problem(), (50.0, 85.0, 150.0))
    assert p.counts()[:, 0].tolist() == [1, 1, 4]
    assert drain_running(p, NODES, 0)
    assert p.counts()[:, 0].tolist() == [1, 1, 3] and p.shed == 0
    np.testing.assert_allclose(p.lam()[:, 0], [75.0, 90.0, 120.0], atol=1e-5)
    assert np.all(p.counts() <= p.q.base.free)  # no instance opened
    np.testing.assert_allclose(p.cap, pools(problem(), (50.0, 85.0, 150.0)).cap)


def test_a_whole_pool_drains_up_to_rho_max_the_cheapest_first_and_within_the_cores() -> None:
    """With n0 at 0.6 cores (4 req/s of core room) n2's 30 req/s has nowhere to go within the caps. At
    rho_max either single pool can empty: n1's 85 req/s costs 10 ms more each (850 req-ms/s), n0's 50 req/s
    20 ms (1,000), so n1's drains: 4 req/s into n0's core room, the rest into n2's instances (cap 40 -> 58
    an instance, under 90). n1's instance goes idle; the raised cap counts as a shed instance."""
    p = pools(problem(cores=0.6), (50.0, 85.0, 150.0))
    assert drain_running(p, NODES, 0)
    assert p.counts()[:, 0].tolist() == [1, 0, 4] and p.shed == 1
    np.testing.assert_allclose(p.lam()[:, 0], [54.0, 0.0, 231.0], atol=1e-5)
    assert p.lam()[0, 0] / 100.0 <= 0.9 * 0.6 + 1e-9  # n0's busy work within its cores
    assert 57.75 <= p.cap[2, 0] <= 0.9 * 100.0


def test_nothing_changes_where_no_drain_fits() -> None:
    """Every pool nearly full at rho_max (n2 at 4 x 90): no instance's traffic fits elsewhere."""
    p = pools(problem(n2_cap=0.9), (89.0, 89.0, 359.0))
    x, cap = p.x.copy(), p.cap.copy()
    assert not drain_running(p, NODES, 0)
    np.testing.assert_array_equal(p.x, x)
    np.testing.assert_array_equal(p.cap, cap)


def test_a_pool_that_empties_goes_before_a_cheaper_one_that_keeps_traffic() -> None:
    """Within the caps both n0's whole 40 req/s (10 ms more each into n1: 400 req-ms/s) and 30 of n2's 150
    (300) could move; n0's goes, since an idle pool is one Mode 1's eviction can stop."""
    p = pools(problem(), (40.0, 50.0, 150.0))
    assert drain_running(p, NODES, 0)
    assert p.counts()[:, 0].tolist() == [0, 1, 4] and p.shed == 0
    np.testing.assert_allclose(p.lam()[:, 0], [0.0, 90.0, 150.0], atol=1e-5)
