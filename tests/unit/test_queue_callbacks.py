"""The compact queue NLP's cyipopt callbacks (issue 16 item 5, callback cost): the vectorised delay terms are
PoolDelay's, above t_max too, and the per-point cache never answers for another point."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from solver import queue_model
from solver.problem import Mode, build_problem
from solver.queue_model import QueueProblem, build_queue_problem
from solver.queue_start import feasible_start
from solver.queueing import PoolDelay
from solver.simulate import thesis_instance


def _problem(cores: float | None) -> QueueProblem:
    snap = thesis_instance(30, 6, 2)
    snap = dataclasses.replace(snap, nodes=tuple(dataclasses.replace(n, cores=cores) for n in snap.nodes))
    return build_queue_problem(build_problem(snap, Mode.MODE1))


def _callbacks(q: QueueProblem, compact: bool = True) -> tuple[queue_model._Callbacks, np.ndarray]:
    lay = queue_model._Layout(q, compact=compact)
    rows, cols, vals, cl, _ = queue_model._jacobian(q, lay)
    cb = queue_model._Callbacks(q, lay, (rows, cols, vals))
    cb.m = len(cl)
    return cb, feasible_start(q, lay)


@pytest.mark.parametrize("compact", [True, False])
def test_the_delay_terms_are_pooldelays_below_and_above_t_max(compact: bool) -> None:
    """Random pool rates from empty to twice t_max: value, gradient and Hessian entries equal PoolDelay's."""
    q = _problem(2.0)
    cb, _ = _callbacks(q, compact)
    rng = np.random.default_rng(0)
    n = rng.uniform(0.05, 3.0, cb.lay.P)
    lam = rng.uniform(0.0, 2.0, cb.lay.P) * q.rho_max * cb.mu * n
    lam[:3] = 0.0
    got = cb._delay(lam, n)
    for p, mu in enumerate(cb.mu):
        d = PoolDelay(float(mu), q.rho_max)
        want = (d.value(lam[p], n[p]), *d.gradient(lam[p], n[p]), *d.hessian(lam[p], n[p]))
        np.testing.assert_allclose([term[p] for term in got], np.asarray(want, dtype=float), rtol=1e-12, atol=1e-12)
    assert (lam > q.rho_max * cb.mu * n).any() and (lam < q.rho_max * cb.mu * n).any()


@pytest.mark.parametrize("cores", [None, 1.0])
def test_the_cache_answers_only_for_its_point(cores: float | None) -> None:
    """f, grad f and the Hessian at a point are the same from a fresh callback object as after a call at
    another point that differs only in the pools' lam or servers (the cache's key)."""
    q = _problem(cores)
    cb, x = _callbacks(q)
    busiest = int(np.argmax(x[cb.lay.lam0 : cb.lay.lam0 + cb.lay.P]))
    for moved in (cb.lay.lam0 + busiest, int(np.atleast_1d(cb.lay.server)[busiest])):
        y = x.copy()
        y[moved] *= 1.5
        cb.objective(x)
        fresh, _ = _callbacks(q)
        assert cb.objective(y) == fresh.objective(y) != cb.objective(x)
        np.testing.assert_array_equal(cb.gradient(y), fresh.gradient(y))
        np.testing.assert_array_equal(cb.hessian(y, np.zeros(cb.m), 1.0), fresh.hessian(y, np.zeros(cb.m), 1.0))


def test_the_gradient_is_the_objectives_derivative() -> None:
    """Central differences of f along every pool's lam and server entry match grad f (the slices in place)."""
    q = _problem(2.0)
    cb, x = _callbacks(q)
    grad = cb.gradient(x)
    for i in np.concatenate([np.arange(cb.lay.lam0, cb.lay.lam0 + cb.lay.P), np.atleast_1d(cb.lay.server)]):
        h = 1e-6 * max(1.0, abs(x[i]))
        up, down = x.copy(), x.copy()
        up[i] += h
        down[i] -= h
        assert (cb.objective(up) - cb.objective(down)) / (2 * h) == pytest.approx(grad[i], rel=1e-5, abs=1e-4)
