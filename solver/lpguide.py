"""Capacity prices for the placement LP, estimated in numpy before Ipopt runs: which columns to give it.

At the LP optimum a class sits on the nodes of least *reduced* cost (cost plus the capacity rows' duals
times what it uses there), and nearly always on one or two of them; the cheapest nodes by plain cost are
a poorer guess wherever capacity binds. This module estimates the duals without an LP solver:

* an upper bound: a feasible fractional placement, classes in order of regret (second-cheapest minus
  cheapest cost) each filling the cheapest nodes with room, the rest rejected at the penalty;
* a lower bound and prices: the Lagrangian of the memory and compute rows (each class whole on its node
  of least priced cost, or rejected), maximised by subgradient steps of Polyak's length towards the
  upper bound, halved when the bound stalls.

Both bounds are exact (weak duality and feasibility), so ``lower <= LP optimum <= upper`` always; their
gap says how far to trust the prices. The guide only chooses columns: solver.fastlp still solves the LP
with Ipopt and proves its optimum by pricing every left-out column with Ipopt's own duals.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from solver.problem import FloatArray, Problem

log = logging.getLogger(__name__)

STEPS = 40  # subgradient steps; each is a few numpy operations on [classes, nodes]
STALL = 3  # steps without a better bound before the step length is halved


@dataclass(frozen=True)
class Guide:
    """Estimated reduced costs [c, j] and the bounds around the LP optimum (penalty included)."""

    reduced: FloatArray
    lower: float
    upper: float

    @property
    def gap(self) -> float:
        """(upper - lower) / upper: 0 when the prices are the LP's duals for sure."""
        return (self.upper - self.lower) / max(1e-12, abs(self.upper))


def greedy_upper_bound(p: Problem, penalty: float) -> float:
    """The value of a feasible fractional placement: regret order, cheapest nodes with room first."""
    mem_left, comp_left = p.mem_budget.astype(float), p.comp_budget.astype(float)
    free = p.free.astype(float)
    by_cost = np.argsort(p.cost, axis=1, kind="stable")
    ranked = np.take_along_axis(p.cost, by_cost, axis=1)
    regret = ranked[:, 1] - ranked[:, 0] if p.n_nodes > 1 else np.zeros(p.n_classes)
    total = 0.0
    for c in np.argsort(-regret, kind="stable").tolist():
        k = int(p.class_model[c])
        need = float(p.class_count[c])
        for j in by_cost[c].tolist():
            if need <= 0:
                break
            reuse = min(need, free[j, k])
            room = min(_room(mem_left[j], p.mem[k]), _room(comp_left[j], p.comp[k]), need - reuse)
            free[j, k] -= reuse
            mem_left[j] -= room * p.mem[k]
            comp_left[j] -= room * p.comp[k]
            need -= reuse + room
            total += (reuse + room) * float(p.cost[c, j])
        total += need * penalty
    return total


def _room(left: float, per_request: float) -> float:
    return max(0.0, left) / per_request if per_request > 0 else float("inf")


def estimate(p: Problem, penalty: float, steps: int = STEPS) -> Guide:
    """Lagrangian prices of the memory and compute rows by subgradient ascent, and the bounds."""
    upper = greedy_upper_bound(p, penalty)
    n_j = p.n_nodes
    priced = (p.free == 0).astype(float)  # [j, k]: where a request may start a new instance
    lam, mu = np.zeros(n_j), np.zeros(n_j)
    best = (-np.inf, lam, mu)
    theta, stall = 1.0, 0
    for _ in range(steps):
        reduced = np.minimum(_reduced(p, lam, mu, priced), penalty)
        where = np.argmin(reduced, axis=1)
        least = reduced[np.arange(p.n_classes), where]
        lower = float(p.class_count @ least - lam @ p.mem_budget - mu @ p.comp_budget)
        if lower > best[0]:
            best, stall = (lower, lam, mu), 0
        else:
            stall += 1
            if stall >= STALL:
                theta, stall = theta / 2, 0
        placed = np.where(least < penalty, p.class_count, 0)
        load = np.zeros((n_j, len(p.mem)))
        np.add.at(load, (where, p.class_model), placed)
        new = np.maximum(load - p.free, 0.0)
        g = np.where((lam <= 0) & (new @ p.mem < p.mem_budget), 0.0, new @ p.mem - p.mem_budget)
        h = np.where((mu <= 0) & (new @ p.comp < p.comp_budget), 0.0, new @ p.comp - p.comp_budget)
        norm = float(g @ g + h @ h)
        if norm == 0.0 or upper - lower <= 1e-9 * abs(upper):
            break
        step = theta * (upper - lower) / norm
        lam, mu = np.maximum(0.0, lam + step * g), np.maximum(0.0, mu + step * h)
    lower, lam, mu = best
    return Guide(_reduced(p, lam, mu, priced), lower, upper)


def _reduced(p: Problem, lam: FloatArray, mu: FloatArray, priced: FloatArray) -> FloatArray:
    """[c, j] cost plus the capacity prices a request pays at j where it starts a new instance."""
    per_model = (lam[:, None] * p.mem[None, :] + mu[:, None] * p.comp[None, :]) * priced  # [j, k]
    out: FloatArray = p.cost + per_model[:, p.class_model].T
    return out
