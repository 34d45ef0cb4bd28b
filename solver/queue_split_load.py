"""The plan's split by its own figures (issue 16, the review's finding 2), after ``queue_split.best_split``.

best_split chooses the split of the served rate over the plan's whole counts under the *equal* split of a
node's cores (``node_cpu.effective_servers``: rate-independent, cheap), but the plan's figures
(``objective_ms``, ``model_ms``) share the cores *by load* (``node_cpu.allot_cores``), and so does the
running placement's value that the leader's hysteresis compares them with (``solver.hold.value_running``).
So the published split was not the best by the plan's own figures (the review: hold's split better in 37
of 214 plans by > 1 %, up to 1.29x), and the hysteresis compared a fixed split with a best one.

Here hold's split continues from the plan's split on the final counts: hold's objective (``hold._objective``,
the plan's ``mean_latency_ms`` times the served rate), its gradient and curvature by load
(``_gradient_curvature``) and its direction (``_shift``: each class moves rate from its dearer nodes to its
cheapest by a Newton step on the pools' curvature), ``ITERATIONS`` steps at most. Only the step differs:
hold's exact line search ignores the plan's load caps, so here a step is at most the largest that keeps
every pool within its load cap on its instances and every node within ``rho_max`` of its cores
(``queue_split._feasible_step``) and backtracks from there until the objective falls enough (Armijo). Screens:
no step where the allotment by load gives every pool best_split's servers (``SAME_SERVERS``: then both
figures agree and best_split already ran), and none where Frank-Wolfe's duality gap by load (a bound on what
any split can gain) is under ``TOLERANCE`` of the figure. The result must pass repair's checks on the same
counts (``queue_split.apply_split``: also memory, compute and the instance bound) and lower the plan's
figure; else the plan's split stays.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from solver import hold
from solver.node_cpu import allot_cores, effective_servers, pool_servers
from solver.problem import FloatArray, IntArray
from solver.queue_model import QueueProblem
from solver.queue_plan import mean_latency_ms
from solver.queue_repair import Pools
from solver.queue_split import BoolArray, _feasible_step, apply_split, feasible_limits

log = logging.getLogger(__name__)

ENABLED = True  # switched off only to show the tests failing without it
ITERATIONS = 6  # hold's steps at most (thesis sizes at 2/1 cores, 3 / 6 / 10 steps: mean gain x1.0041 /
# 1.0058 / 1.0065, mean CPU 0.7 / 1.0 / 1.4 ms; bench/split_bench.py)
TOLERANCE = 1e-3  # relative duality gap at which no further step is taken (best_split's)
SAME_SERVERS = True  # no step where the allotment by load gives every pool best_split's servers (equal split);
# False: hold's steps there too, on those fixed servers (where best_split's 20 Frank-Wolfe steps stopped short: thesis
# sizes at 2/1 cores 16 instead of 7 of 64 plans better by > 1 %, CPU median 1.9 instead of 0.3 ms)
ARMIJO = 1e-4  # a step must lower the objective by this share of its first-order prediction ...
BACKTRACK = 0.3  # ... else it shrinks by this factor, down to MIN_STEP of the largest feasible one
MIN_STEP = 1e-4
FAST_FIGURES = True  # _descend values splits with _ByLoad (hold's figures, invariants made once: exact)


def resplit_by_load(pools: Pools) -> bool:
    """Move ``pools``' split towards the best split by load on its counts where that passes repair's checks and
    lowers the plan's mean latency (module docstring); True if a new split was kept."""
    if not ENABLED or pools.x.size == 0:
        return False
    p = pools.q.base
    lam, counts = pools.state()
    served = pools.x.sum(axis=1)
    allowed = (counts[:, p.class_model].T > 0) & (served[:, None] > 0)  # [c, j]: a pool of its model runs there
    if not np.any(allowed.sum(axis=1) > 1):
        return False  # no stream has a choice
    equal = effective_servers(counts, pools.cores)
    same = bool(np.array_equal(allot_cores(lam, pools.q.mu, counts, pools.cores), equal))
    if same and SAME_SERVERS:
        return False  # the figures by load and best_split's agree
    q = dataclasses.replace(pools.q, rate=served)
    servers: hold.Servers = equal if same else hold.Held(counts.astype(float), pools.cores)
    start = np.where(allowed, pools.x, 0.0)
    x, value, first = _descend(pools, q, servers, allowed, start)
    if value >= first - 1e-9 * max(1.0, abs(first)):
        return False
    before = mean_latency_ms(pools.q, pools)
    after = _take(pools, x, counts, before)
    if after is not None:
        log.debug("split by load: mean latency %.4f -> %.4f ms", before, after)
    return after is not None


def _descend(
    pools: Pools, q: QueueProblem, servers: hold.Servers, allowed: BoolArray, x: FloatArray
) -> tuple[FloatArray, float, float]:
    """Up to ``ITERATIONS`` of hold's projected Newton steps from ``x``, each within the plan's caps (module
    docstring): (the split, hold's objective there, hold's objective at ``x``)."""
    big = np.where(allowed, 0.0, np.inf)
    counts = pools.counts().astype(float)
    figures = _ByLoad(q, servers) if FAST_FIGURES and isinstance(servers, hold.Held) else _Hold(q, servers)
    fixed = feasible_limits(pools, counts)  # the pools' caps do not change here
    value = first = figures.objective(x)
    for _ in range(ITERATIONS):
        grad, curve = figures.gradient_curvature(x)
        target = hold._all_on(grad + big, q.rate)
        if -float((grad * (target - x)).sum()) <= TOLERANCE * max(value, 1e-9):
            break  # within TOLERANCE of the best by load
        direction = hold._shift(x, grad + big, curve, target > 0)
        slope = float((grad * direction).sum())
        top = min(1.0, _feasible_step(pools, counts, x, direction, fixed, figures.rates(x))) if slope < 0 else 0.0
        step = _armijo(figures, x, direction, (value, slope), top)
        if step is None:
            break
        x, value = step
    return x, value, first


class _Hold:
    """hold's own figures of a split on ``servers`` (the path without ``_ByLoad``)."""

    def __init__(self, q: QueueProblem, servers: hold.Servers) -> None:
        self.q, self.servers = q, servers

    def objective(self, x: FloatArray) -> float:
        return hold._objective(self.q, self.servers, x)

    def gradient_curvature(self, x: FloatArray) -> tuple[FloatArray, FloatArray]:
        return hold._gradient_curvature(self.q, self.servers, x)

    def rates(self, x: FloatArray) -> FloatArray:
        return hold._lam(self.q, x)


class _ByLoad(_Hold):
    """``hold._objective`` and ``hold._gradient_curvature`` on one descent's instances (``hold.Held``: the cores shared
    by load), with what does not change during the descent made once (the one-hot, the pools with instances, 1000 mu,
    the service times, the load cap's rates) and the rates and allotment of the last split valued kept for the next
    figure at that split (Armijo's accepted point is the next step's start: the same split, so the same rates and the
    same allotment). The same operations per element as hold's functions, so the same figures bit for bit
    (tests/unit/test_queue_split_load.py compares them)."""

    def __init__(self, q: QueueProblem, servers: hold.Held) -> None:
        super().__init__(q, servers)
        p = q.base
        self.counts, self.cores = servers.counts, servers.cores
        self.onehot = np.eye(len(p.model_names))[p.class_model]  # hold._lam's
        self.cost, self.model, self.mu = p.cost, p.class_model, q.mu
        self.service = q.service_ms
        self.on = servers.counts > 0
        self.top = hold.EVAL_RHO * q.mu
        self.kmu = 1000.0 * q.mu  # _delay's d1 numerator (``1000.0 * mu / gap**2`` evaluates it first)
        self.hmu = 2000.0 * q.mu  # the curvature's numerator, likewise
        self.last: tuple[FloatArray, FloatArray, tuple[FloatArray, FloatArray]] | None = None

    def rates(self, x: FloatArray) -> FloatArray:
        return self._at(x)[0]

    def _at(self, x: FloatArray) -> tuple[FloatArray, tuple[FloatArray, FloatArray]]:
        """(rates, ``pool_servers``' allotment) of split ``x``; the last ones again for the same array (the descent
        never changes a split it has valued in place: each step makes a new one)."""
        last = self.last
        if last is not None and last[0] is x:
            return last[1], last[2]
        lam = np.asarray(x.T @ self.onehot)
        allotted = pool_servers(lam, self.mu, self.counts, self.cores)
        self.last = (x, lam, allotted)
        return lam, allotted

    def _delay(self, lam: FloatArray, allotted: tuple[FloatArray, FloatArray]) -> tuple[FloatArray, FloatArray]:
        """``hold._delay(q, lam, Held, allotted)``."""
        servers, load = allotted
        mu, top = self.mu, self.top
        busy = self.on & (servers > 0)
        t = np.where(busy, lam / np.where(servers > 0, servers, 1.0), load * mu)
        tc = np.minimum(t, top)
        gap = mu - tc
        d1 = self.kmu / gap**2
        g = 1000.0 * tc / gap + np.where(t > top, d1 * (t - top), 0.0)
        return np.where(busy, servers * g, 0.0), np.where(self.on, d1, 0.0)

    def objective(self, x: FloatArray) -> float:
        lam, allotted = self._at(x)
        d, _ = self._delay(lam, allotted)
        return float((x * self.cost).sum() + (d - lam * self.service).sum())

    def gradient_curvature(self, x: FloatArray) -> tuple[FloatArray, FloatArray]:
        lam, (servers, load) = self._at(x)
        _, d1 = self._delay(lam, (servers, load))
        servers = np.where(servers > 0, servers, self.counts)  # an idle pool: its instances
        t = load * self.mu
        h = np.where((servers > 0) & (t < self.top), self.hmu / (self.mu - np.minimum(t, self.top)) ** 3, 0.0)
        with np.errstate(over="ignore"):
            h = h / np.where(servers > 0, servers, 1.0)
        model = self.model
        return np.asarray(self.cost + (d1 - self.service)[:, model].T), np.asarray(h[:, model].T)


def _armijo(
    figures: _Hold,
    x: FloatArray,
    direction: FloatArray,
    here: tuple[float, float],
    top: float,
) -> tuple[FloatArray, float] | None:
    """The first step from ``top`` down (by ``BACKTRACK``) whose objective falls by ``ARMIJO`` of the slope's
    prediction (``here``: the value and slope at ``x``): (the new split, its value); None if none does."""
    value, slope = here
    step = top
    while step > MIN_STEP * max(top, 1e-300) and top > 0:
        moved = np.maximum(x + step * direction, 0.0)
        found = figures.objective(moved)
        if found <= value + ARMIJO * step * slope:
            return moved, found
        step *= BACKTRACK
    return None


def _take(pools: Pools, split: FloatArray, counts: IntArray, before: float) -> float | None:
    """Take ``split`` if it passes repair's checks on ``counts`` and lowers the plan's mean latency from ``before``:
    the new figure; else leave ``pools`` as they were (None)."""
    old, old_cap = pools.x, pools.cap.copy()
    if not apply_split(pools, split.clip(min=0.0), counts):
        return None
    after = mean_latency_ms(pools.q, pools)
    if after >= before - 1e-9 * max(1.0, abs(before)):
        pools.x, pools.cap = old, old_cap
        return None
    return after
