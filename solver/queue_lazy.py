"""The queue-aware NLP with lazy columns and dual pricing (as ``solver.fastlp`` does for the LP).

Only the (stream, node) columns x[c, j] grow with the instance (C * J of them); the pools (J * K) and
the rows stay whole. So:

1. Columns: every stream gets its ``CANDIDATES`` cheapest nodes (RTT + execution).
2. Solve the restricted NLP (``solver.queue_model.solve_restricted``) and read the multipliers.
3. Price every left-out column: x[c, j] enters the Lagrangian (Ipopt: f + y.g) only linearly, through
   its cost, stream c's assignment row and pool (j, k(c))'s balance row (coefficient -1), so its
   reduced cost is ``cost[c, j] + y_assign[c] - y_pool[j, k]``. Add the ``ADD_PER_ROUND`` most negative
   per stream and solve again.

When no column prices out, the restricted optimum with the left-out columns at zero satisfies the full
NLP's KKT conditions (the bound multiplier of each left-out column is its reduced cost, >= 0); the NLP
is convex, so that point is the full optimum. Ipopt's multipliers are not unique where a pool is empty
(lam = 0), so each pool row's multiplier is taken at the least value lam's bound allows before pricing
(without that, pricing adds hundreds of useless columns per round and never closes). Problems with fewer
than ``LAZY_MIN_PAIRS`` pairs (``LAZY_MIN_PAIRS_CORES`` where a node has a core row) are solved whole.
After ``MAX_ROUNDS``, or a restricted solve that is not optimal, the full NLP is solved instead (``fallback``).
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import numpy.typing as npt

from solver.problem import FloatArray, IntArray
from solver.queue_model import NlpSolution, QueueProblem, solve_nlp, solve_restricted

log = logging.getLogger(__name__)

CANDIDATES = 5  # cheapest nodes per stream in the first restricted solve
ADD_PER_ROUND = 3  # columns per stream added by one pricing round at most
MAX_ROUNDS = 6
LAZY_MIN_PAIRS = 2000  # below this many (stream, node) pairs the whole NLP is faster (measured: 25 x 10)
# ... and below this many where a node has a core row: there pricing needs 3-4 solves, and one whole solve
# took 0.7-0.9x the lazy time at 3,083-11,459 pairs (1 core per node), 2x and 6x at 19,800 and 79,800 (2 cores)
LAZY_MIN_PAIRS_CORES = 12000
BoolArray = npt.NDArray[np.bool_]
PRICE_TOL = 1e-6  # relative to the largest column cost: smaller negative reduced costs are noise


def solve_nlp_lazy(
    q: QueueProblem, candidates: int = CANDIDATES, min_pairs: int | None = None, allowed: BoolArray | None = None
) -> NlpSolution:
    """The full NLP's optimum, found on a few columns per stream grown by pricing (full solve as fallback).

    ``allowed`` [c, j]: the only columns that may carry rate (the caller proved the others need none);
    ``min_pairs``: fewer pairs are solved whole (None: ``LAZY_MIN_PAIRS``, ``LAZY_MIN_PAIRS_CORES`` with cores).
    """
    p = q.base
    C, J = p.n_classes, p.n_nodes
    if min_pairs is None:
        min_pairs = LAZY_MIN_PAIRS_CORES if np.isfinite(q.cores()).any() else LAZY_MIN_PAIRS
    pairs = C * J if allowed is None else int(allowed.sum())
    if C == 0 or J == 0 or candidates >= J or min_pairs > pairs:
        return _whole(q, allowed)
    ok = np.ones((C, J), dtype=bool) if allowed is None else allowed
    order = np.argsort(np.where(ok, p.cost, np.inf), axis=1, kind="stable")[:, :candidates]
    in_lp = np.zeros((C, J), dtype=bool)
    in_lp[np.arange(C)[:, None], order] = True
    in_lp &= ok
    iterations = 0
    for rounds in range(1, MAX_ROUNDS + 1):
        cols = np.flatnonzero(in_lp.ravel())
        sol, mult = solve_restricted(q, cols)
        iterations += sol.iterations
        if sol.status != "optimal":
            log.info("lazy NLP: restricted solve %s in round %d; solving the whole NLP", sol.status, rounds)
            break
        enter = _price(q, mult, in_lp | ~ok)  # a column the caller ruled out never enters nor takes a slot
        if not enter.any():
            return _with(sol, iterations, rounds, len(cols), False)
        in_lp |= enter
    full = _whole(q, allowed)
    return _with(full, iterations + full.iterations, MAX_ROUNDS + 1, pairs, True)


def _whole(q: QueueProblem, allowed: BoolArray | None) -> NlpSolution:
    """One solve over every column (or every allowed one)."""
    return solve_nlp(q) if allowed is None else solve_restricted(q, np.flatnonzero(allowed.ravel()))[0]


def reduced_costs(q: QueueProblem, mult: FloatArray) -> FloatArray:
    """Reduced cost [c, j] of every column given the restricted solve's row multipliers."""
    p = q.base
    C, K = p.n_classes, len(p.model_names)
    y_assign = mult[:C]
    y_pool = mult[C : C + p.n_nodes * K].reshape(p.n_nodes, K)
    return np.asarray(p.cost + y_assign[:, None] - y_pool[:, p.class_model].T)


def _price(q: QueueProblem, mult: FloatArray, in_lp: np.ndarray) -> np.ndarray:
    """Left-out columns to add: per stream its ``ADD_PER_ROUND`` most negative reduced costs (``in_lp``: the
    columns that may not enter, those in the restricted NLP and those ruled out)."""
    red = reduced_costs(q, mult)
    tol = PRICE_TOL * max(1.0, float(np.abs(q.base.cost).max(initial=0.0)))
    red = np.where(in_lp | (red >= -tol), np.inf, red)
    take = min(ADD_PER_ROUND, red.shape[1])
    best: IntArray = np.argsort(red, axis=1, kind="stable")[:, :take]
    enter = np.zeros_like(in_lp)
    rows = np.arange(red.shape[0])[:, None]
    enter[rows, best] = np.isfinite(red[rows, best])
    return enter


def _with(sol: NlpSolution, iterations: int, rounds: int, columns: int, fallback: bool) -> NlpSolution:
    return dataclasses.replace(sol, iterations=iterations, rounds=rounds, columns=columns, fallback=fallback)
