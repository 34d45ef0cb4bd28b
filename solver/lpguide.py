"""Capacity prices for the placement LP, estimated in numpy before Ipopt runs: which columns to give it.

At the LP optimum a class sits on the nodes of least *reduced* cost (cost plus the capacity rows' duals
times what it uses there), and nearly always on one or two of them; the cheapest nodes by plain cost are
a poorer guess wherever capacity binds. This module estimates the duals without an LP solver:

* an upper bound: a feasible fractional placement, classes in order of regret (second-cheapest minus
  cheapest cost) each filling the cheapest nodes with room, the rest rejected at the penalty;
* a lower bound and prices: the Lagrangian of the memory and compute rows (each class whole on its node
  of least priced cost, or rejected), maximised by subgradient steps of Polyak's length towards the
  upper bound, halved when the bound stalls; then the greedy again in the order of the estimated
  reduced costs, which tightens the upper bound and (when it places every request) gives a placement the
  restricted LP can hold without rejection columns.

A cluster the first greedy cannot fit (nearly or wholly full) has its duals near the penalty, far beyond
a few subgradient steps' reach: there the prices come from Newton's method on the smoothed dual
(solver.lpdual), and the upper bound from the greedy seeded with that dual's soft placement. Both bounds
are exact (weak duality and feasibility), so ``lower <= LP optimum <= upper`` always; their gap says how
far to trust the prices. The guide only
chooses columns: solver.fastlp still solves the LP with Ipopt and proves its optimum by pricing every
left-out column with Ipopt's own duals.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from solver import lpdual
from solver.lpdual import smoothed_prices
from solver.problem import FloatArray, IntArray, Problem

BoolArray = Any

log = logging.getLogger(__name__)

FIRST_NODES = 8  # nodes per class ordered up front for the greedy bound
STEPS = 40  # subgradient steps; each is a few numpy operations on [classes, nodes]
REFRESH = 40  # steps between tightenings of the upper bound
MIN_THETA = 1 / 32  # step-length factor below which the ascent stops
STALL = 3  # steps without a better bound before the step length is halved
SEED_MIN = 0.01  # seeded greedy: soft shares below this many requests are not placed up front
SMOOTHED = True  # nearly full clusters: prices from the smoothed dual (solver.lpdual); else left untrusted


@dataclass(frozen=True)
class Guide:
    """Estimated reduced costs [c, j] and the bounds around the LP optimum (penalty included)."""

    reduced: FloatArray
    lower: float
    upper: float
    placed: BoolArray | None = None  # [c, j] a placement of every request (from the greedy), if found
    method: str = "subgradient"  # how the prices were found: "subgradient", "smoothed" (nearly full) or "none"

    @property
    def gap(self) -> float:
        """(upper - lower) / upper: 0 when the prices are the LP's duals for sure."""
        if not np.isfinite(self.upper):
            return float("inf")
        return (self.upper - self.lower) / max(1e-12, abs(self.upper))


def greedy_upper_bound(p: Problem, penalty: float, order_by: FloatArray | None = None) -> float:
    """The value of a feasible fractional placement: regret order, cheapest nodes with room first.

    ``order_by`` [c, j] (estimated reduced costs) replaces the costs for the order, not for the value.
    Requests that fit nowhere are rejected at ``penalty`` each.
    """
    return _greedy(p, penalty, order_by)[0]


def _greedy(
    p: Problem, penalty: float, order_by: FloatArray | None, seed: FloatArray | None = None
) -> tuple[float, float, BoolArray]:
    """(value, requests rejected, [c, j] columns used) of the placement of ``greedy_upper_bound``.

    ``seed`` [c, j]: amounts placed first, as far as they fit (most confident shares first).
    """
    fill = _fill(p, order_by, seed)
    rejected = fill.rejected()
    return fill.total + rejected * penalty, rejected, fill.used


def _fill(p: Problem, order_by: FloatArray | None, seed: FloatArray | None = None) -> _Fill:
    """The greedy placement itself (see ``greedy_upper_bound``)."""
    rank = p.cost if order_by is None else order_by
    near = min(p.n_nodes, FIRST_NODES)  # most classes fit on one of their first few nodes
    near = p.n_nodes if p.n_nodes <= 2 * FIRST_NODES else near  # few nodes: sorting them all is cheap
    first = np.argpartition(rank, near - 1, axis=1)[:, :near] if near < p.n_nodes else np.argsort(rank, axis=1)
    first = np.take_along_axis(first, np.argsort(np.take_along_axis(rank, first, axis=1), axis=1), axis=1)
    ranked = np.take_along_axis(rank, first[:, :2], axis=1)
    regret = ranked[:, 1] - ranked[:, 0] if p.n_nodes > 1 else np.zeros(p.n_classes)
    fill = _Fill(p)
    if seed is not None:
        cs, js = np.nonzero(seed >= SEED_MIN)
        for i in np.argsort(-seed[cs, js] / p.class_count[cs], kind="stable").tolist():
            fill.put(int(cs[i]), int(js[i]), float(seed[cs[i], js[i]]))
    for c in np.argsort(-regret, kind="stable").tolist():
        for j in _nodes_in_order(rank, first, c):
            if fill.need[c] <= 0:
                break
            fill.put(c, j, fill.need[c])
    return fill


class _Fill:
    """A fractional placement being filled: budgets left, free slots left, requests still to place."""

    def __init__(self, p: Problem) -> None:
        self.p = p
        self.mem_left, self.comp_left, self.free = p.mem_budget.tolist(), p.comp_budget.tolist(), p.free.tolist()
        self.mem, self.comp, self.model = p.mem.tolist(), p.comp.tolist(), p.class_model.tolist()
        self.need = [float(n) for n in p.class_count.tolist()]
        self.total = 0.0
        self.used = np.zeros(p.cost.shape, dtype=bool)

    def put(self, c: int, j: int, amount: float) -> None:
        """Place up to ``amount`` of class c's remaining requests on node j, as far as they fit."""
        k = self.model[c]
        amount = min(amount, self.need[c])
        reuse = min(amount, self.free[j][k])
        room = min(_room(self.mem_left[j], self.mem[k]), _room(self.comp_left[j], self.comp[k]), amount - reuse)
        self.free[j][k] -= reuse
        self.mem_left[j] -= room * self.mem[k]
        self.comp_left[j] -= room * self.comp[k]
        self.need[c] -= reuse + room
        self.total += (reuse + room) * float(self.p.cost[c, j])
        self.used[c, j] |= reuse + room > 0

    def rejected(self) -> float:
        """Requests that found no room."""
        return float(sum(max(0.0, n) for n in self.need))

    def full_rows(self) -> tuple[BoolArray, BoolArray]:
        """[j] memory rows, compute rows with no room left for the smallest model's new instance."""
        p = self.p
        return np.array(self.mem_left) < float(p.mem.min()) - 1e-9, np.array(self.comp_left) < float(
            p.comp.min()
        ) - 1e-9


def _nodes_in_order(rank: FloatArray, first: IntArray, c: int) -> Iterator[int]:
    """Class c's nodes by ``rank``: the precomputed first few, then (rarely needed) the rest."""
    yield from first[c].tolist()
    if first.shape[1] < rank.shape[1]:
        rest = np.setdiff1d(np.arange(rank.shape[1]), first[c])
        yield from rest[np.argsort(rank[c, rest], kind="stable")].tolist()


def _room(left: float, per_request: float) -> float:
    return max(0.0, left) / per_request if per_request > 0 else float("inf")


def estimate(p: Problem, penalty: float, steps: int | None = None, refresh: int | None = None) -> Guide:
    """Lagrangian prices of the memory and compute rows by subgradient ascent (smoothed Newton where the
    plain greedy cannot place every request and ``SMOOTHED``), and the bounds.

    Every ``refresh`` steps the upper bound is tightened by the greedy placement ordered by the best
    prices so far (Polyak's steps are only as good as the bound they aim at).
    """
    steps = STEPS if steps is None else steps
    refresh = REFRESH if refresh is None else refresh
    plain = _fill(p, None)
    upper = plain.total + plain.rejected() * penalty
    priced = (p.free == 0).astype(float)  # [j, k]: where a request may start a new instance
    best = (float(p.class_count @ np.minimum(p.cost, penalty).min(axis=1)), np.zeros(p.n_nodes), np.zeros(p.n_nodes))
    if plain.rejected() > 0:  # a (nearly) full cluster: duals near the penalty, beyond a few subgradient steps
        if not SMOOTHED or not lpdual.fits(p):
            return Guide(p.cost, best[0], upper, None, "none")
        return _nearly_full(p, penalty, best[0], plain)
    placed = None
    for _ in range(max(1, -(-steps // refresh))):
        best = _ascend(p, penalty, priced, upper, best, min(steps, refresh))
        value, missed, used = _greedy(p, penalty, _reduced(p, best[1], best[2], priced))
        upper = min(upper, value)
        placed = used if missed <= 0 else placed
        if upper - best[0] <= 1e-9 * abs(upper):
            break
    lower, lam, mu = best
    return Guide(_reduced(p, lam, mu, priced), lower, upper, placed)


Best = tuple[float, FloatArray, FloatArray]


def _ascend(p: Problem, penalty: float, priced: FloatArray, upper: float, best: Best, steps: int) -> Best:
    """``steps`` subgradient steps from the best prices so far; the best (bound, lam, mu) seen."""
    n_j, n_k = p.n_nodes, len(p.mem)
    _, lam, mu = best
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
                if theta < MIN_THETA:  # converged as far as these steps go
                    break
        placed = np.where(least < penalty, p.class_count, 0)
        load = np.bincount(where * n_k + p.class_model, weights=placed, minlength=n_j * n_k).reshape(n_j, n_k)
        new = np.maximum(load - p.free, 0.0)
        g, h = new @ p.mem - p.mem_budget, new @ p.comp - p.comp_budget
        g[(lam <= 0) & (g < 0)] = 0.0  # projected: a zero price cannot fall
        h[(mu <= 0) & (h < 0)] = 0.0
        norm = float(g @ g + h @ h)
        if norm == 0.0 or upper - lower <= 1e-9 * abs(upper):
            break
        step = theta * (upper - lower) / norm
        lam, mu = np.maximum(0.0, lam + step * g), np.maximum(0.0, mu + step * h)
    return best


def _reduced(p: Problem, lam: FloatArray, mu: FloatArray, priced: FloatArray) -> FloatArray:
    """[c, j] cost plus the capacity prices a request pays at j where it starts a new instance."""
    per_model = (lam[:, None] * p.mem[None, :] + mu[:, None] * p.comp[None, :]) * priced  # [j, k]
    out: FloatArray = p.cost + per_model[:, p.class_model].T
    return out


def _nearly_full(p: Problem, penalty: float, trivial: float, plain: _Fill) -> Guide:
    """Bounds and prices where the plain greedy cannot place every request: the smoothed dual's prices.

    The upper bound is the greedy seeded with the smoothed dual's soft placement (each class's shares
    placed first, as far as they fit), the rest ordered by the estimated reduced costs capped at the
    penalty, so a class that is cheaper to reject than to place anywhere goes last and takes the rejection.
    """
    prices = smoothed_prices(p, penalty, *plain.full_rows())
    reduced, lower = prices.reduced, max(trivial, prices.lower)
    upper, missed, used = _greedy(p, penalty, np.minimum(reduced, penalty), seed=prices.shares)
    plain_value = plain.total + plain.rejected() * penalty
    upper = min(upper, plain_value)
    return Guide(reduced, lower, upper, used if missed <= 0 else None, "smoothed")
