"""Capacity prices of a nearly full cluster: Newton's method on the smoothed Lagrangian dual, in numpy.

The placement LP's Lagrangian dual over the memory and compute rows (prices lam, mu >= 0 per node) and
the free slots of running instances (price nu >= 0 per node and model running there) is

    L = sum_c n_c min(P, min_j [cost_cj + lam_j mem_k + mu_j comp_k], min_j [cost_cj + nu_jk])
        - lam . M - mu . C - nu . free

concave and piecewise linear with 2n (+ slots) variables; its maximum is the LP optimum. (Leaving the
free slots unpriced, as the subgradient estimate does, is also a bound, but a weak one wherever running
instances are many: in Mode 1 the estimate was then never trusted.) Where the cluster is nearly full
the maximising prices sit near the rejection penalty P (a rejected request's price), far beyond a few
subgradient steps. Here the inner min is replaced by a soft-min of temperature tau,
``-tau log sum exp(-a / tau)``: smooth and concave, with a small Hessian cheap to form, so damped
(Levenberg-Marquardt) projected Newton steps maximise it in a few iterations.

* Start: the price level. The plain greedy tells which rows it filled; prices s x (1 / mean size) on
  those rows, with s maximising L along that ray (golden-section search: L is concave in s), put a full
  cluster's prices near the penalty at once.
* Stages: tau from ``TEMPERATURES[0]`` typical cost gaps (cheapest to second-cheapest node, median over
  classes) down to ``TEMPERATURES[-1]``, each stage starting from the last one's prices.

The result is only an estimate: solver.lpguide turns it into bounds (L at these prices is a lower bound
by weak duality) and columns, and solver.fastlp proves the LP optimum with Ipopt's own duals.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.linalg.lapack import dposv

from solver.problem import FloatArray, Problem

BoolArray = Any

log = logging.getLogger(__name__)

TEMPERATURES = (10.0, 1.0, 0.1)  # smoothing per stage, in typical cost gaps
EVALS = 150  # evaluations of the smoothed dual, all stages together
DAMP = 1e-3  # initial Levenberg-Marquardt damping, relative to the Hessian's mean diagonal
TOL = 1e-6  # a stage ends when a Newton step promises less than this share of the value
LEVEL_STEPS = 24  # golden-section steps for the starting price level (interval 0.618^24 ~ 1e-5)
GOLDEN = (5**0.5 - 1) / 2
START_AT_LEVEL = True  # start from the price level of the greedy's full rows (else from zero prices)
SLOT_PRICES = True  # price running instances' free slots as rows of their own (else leave them free)
# Newton here is dense: a Hessian of size^2 and a Cholesky of size^3 per evaluation. Past this many prices
# the free slots go unpriced, and past it with node rows alone the estimate is not tried (lpguide: untrusted).
MAX_SIZE = 256


@dataclass(frozen=True)
class Prices:
    """The estimate: reduced costs [c, j] (cheapest way onto node j), the dual bound, soft placement [c, j]."""

    reduced: FloatArray
    lower: float
    shares: FloatArray


def smoothed_prices(p: Problem, penalty: float, full_mem: BoolArray, full_comp: BoolArray) -> Prices:
    """Prices that nearly maximise the Lagrangian dual, the bound they give, and the soft placement [c, j].

    ``full_mem`` / ``full_comp`` [j]: the rows a greedy placement filled (where the start puts its price
    level). The soft placement (requests of class c on node j at the last temperature) is a near-optimal
    fractional placement to seed a greedy with.
    """
    dual = SmoothedDual(p, penalty, slots=SLOT_PRICES and fits(p, slots=True))
    ranked = np.sort(p.cost, axis=1)
    gap = float(np.median(ranked[:, 1] - ranked[:, 0])) if p.n_nodes > 1 else 1.0
    temperatures = [max(1e-6, t * gap) for t in TEMPERATURES]
    x = np.zeros(dual.size)
    if START_AT_LEVEL:
        ray = np.zeros(dual.size)
        ray[: 2 * p.n_nodes] = np.concatenate(
            [full_mem / max(1e-12, float(p.mem.mean())), full_comp / max(1e-12, float(p.comp.mean()))]
        )
        x = price_level(dual, ray, penalty) * ray
    for stage, tau in enumerate(temperatures):
        x = _newton_stage(dual, x, tau, EVALS * (stage + 1) // len(temperatures))
    log.debug("smoothed dual: %d evaluations, %d slot prices", dual.evals, dual.n_slots)
    return Prices(dual.reduced(x), bound(dual, x), dual.shares(x, temperatures[-1]))


def fits(p: Problem, slots: bool = False) -> bool:
    """Whether the smoothed dual of ``p`` stays within ``MAX_SIZE`` prices (with the free slots' or without)."""
    return 2 * p.n_nodes + (int(np.count_nonzero(p.free > 0)) if slots else 0) <= MAX_SIZE


def bound(dual: SmoothedDual, x: FloatArray) -> float:
    """The exact dual at prices x: a lower bound on the LP optimum (weak duality)."""
    return dual.exact(x)


def price_level(dual: SmoothedDual, ray: FloatArray, penalty: float) -> float:
    """The s >= 0 maximising the exact dual at prices s * ray (concave in s: golden-section search)."""
    if not ray.any():
        return 0.0
    low, high = 0.0, penalty / max(1e-12, float(ray[ray > 0].min()))
    a, b = high - GOLDEN * (high - low), low + GOLDEN * (high - low)
    fa, fb = dual.exact(a * ray), dual.exact(b * ray)
    for _ in range(LEVEL_STEPS):
        if fa < fb:
            low, a, fa = a, b, fb
            b = low + GOLDEN * (high - low)
            fb = dual.exact(b * ray)
        else:
            high, b, fb = b, a, fa
            a = high - GOLDEN * (high - low)
            fa = dual.exact(a * ray)
    return (low + high) / 2


def _newton_stage(dual: SmoothedDual, x: FloatArray, tau: float, until: int) -> FloatArray:
    """Damped projected Newton ascent at temperature tau until converged or ``until`` evaluations in all."""
    value, grad, neg_hess = dual.evaluate(x, tau)
    damp = DAMP  # a new temperature sharpens the kinks: start each stage cautious
    while dual.evals < until and damp <= 1e6:
        step = _newton_step(x, value, grad, neg_hess, damp)
        if step is None:
            break
        for length in (1.0, 0.25):  # the full step, then one shorter one along it
            trial = np.maximum(0.0, x + length * step)
            if dual.value(trial, tau) > value:
                x = trial
                value, grad, neg_hess = dual.evaluate(x, tau)
                damp = max(1e-9, damp / 10) if length == 1.0 else damp
                break
        else:
            damp *= 30
    return x


def _newton_step(x: FloatArray, value: float, grad: FloatArray, neg_hess: FloatArray, damp: float) -> FloatArray | None:
    """The damped Newton ascent step on the coordinates not held at zero, or None when converged."""
    free = (x > 0) | (grad > 0)
    held = ~free
    if held.all():
        return None
    m = neg_hess.copy()  # held coordinates: an identity row and column and a zero gradient, so no step
    m[held, :] = 0.0
    m[:, held] = 0.0
    diagonal = np.einsum("ii->i", m)
    scale = max(1e-12, float(diagonal.sum()) / int(free.sum()))
    diagonal += np.where(free, damp * scale, 1.0)
    g = np.where(free, grad, 0.0)
    _, solved, info = dposv(m, g)  # positive definite: LAPACK's Cholesky solve, without numpy's wrapper cost
    step: FloatArray = np.asarray(solved if info == 0 else np.linalg.lstsq(m, g, rcond=None)[0], dtype=np.float64)
    if float(g @ step) < TOL * max(1.0, abs(value)):
        return None
    return step


class SmoothedDual:
    """The Lagrangian dual at prices x = (lam [j], mu [j], nu [slot]): exact and soft-min.

    Relaxed rows: every node's memory and compute, and (``SLOT_PRICES``) every running instance's free
    slots: a (node, model) with ``free`` running instances takes at most ``free`` requests at no capacity
    cost, at price nu each. A request's options: a new instance on node j (cost + lam_j mem + mu_j comp),
    a free slot of its model on node j (cost + nu), or rejection (the penalty).
    """

    def __init__(self, p: Problem, penalty: float, slots: bool = True) -> None:
        self.p, self.n_j, self.evals = p, p.n_nodes, 0
        self.count = p.class_count.astype(float)
        self.mem, self.comp = p.mem[p.class_model], p.comp[p.class_model]  # [c]
        slot_node, slot_model = np.nonzero(p.free > 0) if slots else (np.zeros(0, int), np.zeros(0, int))
        self.slot_node, self.n_slots = slot_node, len(slot_node)
        self.slot_free = p.free[slot_node, slot_model].astype(float)
        self.size = 2 * self.n_j + self.n_slots
        # where slots are not priced (``slots`` off) a running instance's requests are free of capacity
        self.where = np.ones((p.n_classes, self.n_j)) if slots else (p.free == 0)[:, p.class_model].T * 1.0
        self.mem_at, self.comp_at = self.where * self.mem[:, None], self.where * self.comp[:, None]
        fits = p.class_model[:, None] == slot_model[None, :]  # [c, slot]
        self.slot_cost = np.where(fits, p.cost[:, slot_node], np.inf)
        self.options = np.empty((p.n_classes, self.n_j + self.n_slots + 1))
        self.options[:, -1] = penalty  # the last option: rejection
        self._cached: tuple[FloatArray, float, float, FloatArray, FloatArray] | None = None

    def _fill(self, x: FloatArray) -> float:
        """Fill the options at prices x; the budgets' credit."""
        n_j, p = self.n_j, self.p
        lam, mu, nu = x[:n_j], x[n_j : 2 * n_j], x[2 * n_j :]
        self.options[:, :n_j] = p.cost + self.mem_at * lam + self.comp_at * mu
        self.options[:, n_j:-1] = self.slot_cost + nu
        return float(lam @ p.mem_budget + mu @ p.comp_budget + nu @ self.slot_free)

    def reduced(self, x: FloatArray) -> FloatArray:
        """[c, j] the cheapest way onto node j at prices x (a new instance or a free slot there)."""
        self._fill(x)
        out: FloatArray = self.options[:, : self.n_j].copy()
        if self.n_slots:
            for slot in range(self.n_slots):
                j = self.slot_node[slot]
                out[:, j] = np.minimum(out[:, j], self.options[:, self.n_j + slot])
        return out

    def exact(self, x: FloatArray) -> float:
        """The dual function itself: a lower bound on the LP optimum."""
        credit = self._fill(x)
        return float(self.count @ self.options.min(axis=1) - credit)

    def value(self, x: FloatArray, tau: float) -> float:
        """The smoothed dual (below the exact one by at most sum(n) tau log(options))."""
        self.evals += 1
        credit = self._fill(x)
        least = self.options.min(axis=1, keepdims=True)
        weight = np.exp((least - self.options) / tau)
        total = weight.sum(axis=1)
        value = float(self.count @ (least[:, 0] - tau * np.log(total)) - credit)
        self._cached = (x, tau, value, weight, total)
        return value

    def shares(self, x: FloatArray, tau: float) -> FloatArray:
        """[c, j] the soft placement: requests of class c on node j, new instances and free slots (the rest
        rejected)."""
        _, weight, total = self._soft(x, tau)
        share = weight[:, :-1] / total[:, None] * self.count[:, None]
        out: FloatArray = share[:, : self.n_j].copy()
        np.add.at(out.T, self.slot_node, share[:, self.n_j :].T)
        return out

    def _soft(self, x: FloatArray, tau: float) -> tuple[float, FloatArray, FloatArray]:
        cached = self._cached
        if cached is None or cached[1] != tau or cached[0] is not x:  # the Newton loop evaluates its last trial
            self.value(x, tau)
            cached = self._cached
        assert cached is not None
        return cached[2], cached[3], cached[4]

    def evaluate(self, x: FloatArray, tau: float) -> tuple[float, FloatArray, FloatArray]:
        """Value, gradient (soft load minus budget per row) and minus the Hessian (positive semidefinite)."""
        value, weight, total = self._soft(x, tau)
        n_j, p = self.n_j, self.p
        per = weight[:, :n_j] / total[:, None] * self.where  # [c, j] soft share starting an instance
        slot = weight[:, n_j:-1] / total[:, None]  # [c, slot] soft share on a free slot
        load = self.count[:, None] * per
        slot_load = self.count @ slot
        grad = np.concatenate(
            [self.mem @ load - p.mem_budget, self.comp @ load - p.comp_budget, slot_load - self.slot_free]
        )
        hess = np.zeros((self.size, self.size))
        idx = np.arange(n_j)
        hess[idx, idx], hess[n_j + idx, n_j + idx] = (self.mem * self.mem) @ load, (self.comp * self.comp) @ load
        hess[idx, n_j + idx] = hess[n_j + idx, idx] = (self.mem * self.comp) @ load
        rest = np.arange(2 * n_j, self.size)
        hess[rest, rest] = slot_load
        u = np.concatenate([per * self.mem[:, None], per * self.comp[:, None], slot], axis=1)
        hess -= u.T @ (self.count[:, None] * u)
        return value, grad, hess / tau
