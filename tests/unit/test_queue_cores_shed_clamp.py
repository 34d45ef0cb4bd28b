"""solver.queue_cores.shed_making_room on a pool that a load cap below ``rho_max`` keeps at two instances.

Regression: the excess (the rate above one instance fewer at ``rho_max``) was not clamped at 0, so for a pool
under that line it was negative and the "move" took rate the other way, leaving a negative rate on the
receiving node; ``_shed_by_moving`` already clamped it.
"""

from __future__ import annotations

import numpy as np

from solver.problem import Mode, build_problem
from solver.queue_cores import shed_making_room
from solver.queue_model import build_queue_problem
from solver.queue_repair import Pools
from solver.snapshot import Model, Node, Request, Snapshot


def test_a_pool_under_one_instance_fewer_moves_no_rate_backwards() -> None:
    nodes = tuple(Node(f"n{j}", 2048.0, 2048.0, 100.0, cores=2.0) for j in range(2))
    exec_ms = {"n0": 2.0, "n1": 2.0}
    reqs = (
        Request("m0", {"n0": 5.0, "n1": 9.0}, exec_ms, "a", 60.0),
        Request("m0", {"n0": 9.0, "n1": 5.0}, exec_ms, "b", 10.0),
    )
    q = build_queue_problem(
        build_problem(Snapshot(nodes, (Model("m0", 100.0, 1.0, {"default": 100.0}),), reqs), Mode.MODE2)
    )
    pools = Pools(q, np.array([[60.0, 0.0], [0.0, 10.0]]), np.zeros(2))
    pools.cap[:, 0] = 40.0  # a load cap of 0.4: n0's 60 req/s need 2 instances, under one at rho_max 0.9
    assert pools.counts()[:, 0].tolist() == [2, 1]
    assert shed_making_room(pools, [0, 1], 0)
    assert np.all(pools.x >= 0), pools.x
    np.testing.assert_allclose(pools.x.sum(axis=1), [60.0, 10.0])
    assert pools.counts()[:, 0].tolist() == [1, 1]
