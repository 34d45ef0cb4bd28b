"""The column generation's fused round (relax11): ``_Lp.bounds_and_loads`` and ``_Lp.value`` give exactly what
``bound_and_loads`` and ``nlp_value`` give, bit for bit (the warm start, hence Ipopt's path and the plan, rests on
them), the LP's prices read back as the tuple they were, the LP's matrix built column-wise is the one sorted
column-wise before, and ``QueueProblem.cores()`` computed once hands out a copy each call."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import highspy
import numpy as np
import pytest

from solver import queue_dual
from solver.problem import Mode
from solver.queue_model import QueueProblem
from tests.unit.test_queue_cgfast import _subproblems
from tests.unit.test_queue_start import instance

# cored, with running instances (link rows), with a tail cap (per-pool load caps), and a node without cores
CASES = [
    (4, 0, 0.15, (1, 2), Mode.MODE1, False),
    (2, 5, 0.0, (1,), Mode.MODE2, True),
    (4, 3, 0.4, (2, 0), Mode.MODE1, True),
]


def _rounds(q: QueueProblem, allowed: Any) -> Iterator[tuple[queue_dual._Lp, Any]]:
    """The warm path's LP at each of its first two solves, with that solve's answer (checked before the next)."""
    lp, _ = queue_dual._open_lp(q, allowed, highspy, False, True)
    queue_dual._start_levels(q, lp, True)
    lp.feasible_basis()
    for _ in range(2):
        solved = lp.solve()
        assert solved is not None
        yield lp, solved
        lp.add_levels(lp.bounds_and_loads(lp.price_vector[None])[1])


@pytest.mark.parametrize("args", CASES)
def test_the_fused_bounds_are_bound_and_loads_bit_for_bit(monkeypatch: pytest.MonkeyPatch, args: Any) -> None:
    checked = 0
    for q, allowed in _subproblems(monkeypatch, instance(*args)):
        for lp, (x, r, n, prices) in _rounds(q, allowed):
            # the tuple solve() returns is the flat vector's views
            for part, back in zip(prices, lp.prices_of(lp.price_vector), strict=True):
                assert np.array_equal(part, back)
            # the smoothed candidate as prove_lp forms it (flat) and as it was formed per price array
            nothing = np.zeros(q.base.n_nodes)
            best = (nothing, nothing, np.full(q.mu.shape, q.instance_cost), nothing)
            s = queue_dual.SMOOTH
            mixed = s * lp.flat_prices(best) + (1 - s) * lp.price_vector
            per_array = tuple(s * y + (1 - s) * v for v, y in zip(prices, best, strict=True))
            assert np.array_equal(mixed, lp.flat_prices(per_array))
            cands = np.stack((lp.price_vector, mixed))
            lowers, loads = lp.bounds_and_loads(cands)
            for i, cand in enumerate((prices, per_array)):
                lower, t = queue_dual.bound_and_loads(q, allowed, cand, lp.budgets, lp.cores)
                assert lowers[i] == lower  # exactly: same operations, same order
                assert np.array_equal(loads[i], t)
            lam = x.T @ np.eye(len(q.base.model_names))[q.base.class_model]
            assert lp.value(x, r, n, lam) == queue_dual.nlp_value(q, x, r, n)
            checked += 1
    assert checked >= 2


def test_the_cores_are_computed_once_and_handed_out_as_copies() -> None:
    q = instance(2, 1, 0.0, (1, 2), Mode.MODE2, False)
    first = q.cores()
    first[:] = -1.0  # a caller's change stays its own
    again = q.cores()
    assert np.all(again >= 1.0) and again is not q.cores()
    assert q.penalty() == q.penalty() > 0


def _reference_matrix(q: QueueProblem, allowed: Any) -> tuple[Any, Any, Any]:
    """The LP's matrix as it was built before relax11: triplets sorted column-wise by ``lexsort``."""
    p = q.base
    C, J, K = p.n_classes, p.n_nodes, len(p.model_names)
    P = J * K
    xc, xj = np.nonzero(allowed)
    reuse = np.flatnonzero(p.free.ravel() > 0)
    X, R = len(xc), len(reuse)
    rj, rk = np.divmod(reuse, K)
    link0 = C + P + 2 * J
    balance = C + xj * K + p.class_model[xc]
    rows = np.concatenate([xc, balance, np.arange(C), C + P + rj, C + P + J + rj, link0 + np.arange(R)])
    cols = np.concatenate([np.arange(X), np.arange(X), X + np.arange(C), *[X + C + np.arange(R)] * 3])
    vals = np.concatenate([np.ones(X), -np.ones(X), np.ones(C), p.mem[rk], p.comp[rk], -np.ones(R)])
    keep = vals != 0
    rows, cols, vals = rows[keep], cols[keep], vals[keep]
    order = np.lexsort((rows, cols))
    starts = np.concatenate([[0], np.cumsum(np.bincount(cols, minlength=X + C + R))])
    return starts, rows[order], vals[order]


@pytest.mark.parametrize("args", [*CASES[:1], (3, 2, 0.4, (1,), Mode.MODE1, False)])
def test_the_lp_built_column_wise_is_the_sorted_one(monkeypatch: pytest.MonkeyPatch, args: Any) -> None:
    reused = 0
    for q, allowed in _subproblems(monkeypatch, instance(*args)):
        lp = queue_dual._Lp(q, allowed, highspy)
        matrix = lp.h.getLp().a_matrix_
        starts, index, value = _reference_matrix(q, allowed)
        assert np.array_equal(np.asarray(matrix.start_), starts)
        assert np.array_equal(np.asarray(matrix.index_), index)
        assert np.array_equal(np.asarray(matrix.value_), value)
        reused += int((q.base.free > 0).any())
    assert reused  # the `new` columns of reused pools were built too
