"""R(S) of ``solver.queue_fast`` without Ipopt: pool loads by column generation, proven by a Lagrangian bound.

A pool (j, k) run at per-instance rate t (``n = lam / t``) costs ``phi(t) = 1000 / (mu - t) - s + beta / t``
per req/s and needs ``mem_k / t`` MB and ``comp_k / t`` compute per req/s: for fixed loads the NLP is an LP.
Mixing loads in one pool is feasible for the NLP and costs no less there (its delay is sublinear), so the
LP over a set of loads per pool (one column per pool and load) bounds R(S)'s optimum from above. Its row
prices ``a_j``, ``b_j`` (memory, compute) give each pool the load it should run at, ``t*`` with
``t* / (mu - t*) = sqrt(beta_jk / 1000)``, ``beta_jk = beta + a_j mem_k + b_j comp_k`` (at most its load
cap), and the Lagrangian bound

    L(a, b) = sum_c rate_c min(outside_c, min_j [cost_cj + w_jk(beta_jk)]) - a.M - b.C

(``w`` the pool's cost per req/s at ``t*``; a pool that reuses running instances has a link row
n - new <= free whose price ``v`` in [0, beta_jk] prices its instances instead, and its free ones add
``- v free``) bounds it from below (weak duality). Each round adds every
pool's ``t*`` at the LP's prices and at Wentges-smoothed prices (half way to the best bound's) as new
loads and re-solves the one HiGHS model from its last basis, until the NLP objective at the LP's point is
within ``GAP`` of the best bound: then it is R(S)'s optimum to that tolerance. Otherwise (``MAX_ROUNDS``,
no HiGHS, a field of the problem it does not model) the caller solves
R(S) with Ipopt, which stays the oracle (``tests/unit/test_queue_dual.py``).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from solver.problem import FloatArray
from solver.queue_model import N_MIN, NlpSolution, QueueProblem

log = logging.getLogger(__name__)

GAP = 1e-8  # relative gap between the LP's NLP objective and the Lagrangian bound that proves the optimum
MAX_ROUNDS = 24  # the bench instances need 3-16
MIN_LOAD = 1e-6  # least per-instance load of a column (a pool whose instances cost nothing wants t -> 0)
SMOOTH = 0.5  # weight of the best bound's prices in the smoothed prices (Wentges)
PROVE = True  # stop only at a proven optimum (switched off only to show the oracle test failing)
# Off by default: issue 16 asks that Ipopt solve the nonlinear relaxation, and this method does not model
# node cores (the agent always reports them). `bench/queue_bench.py --proven-cg` measures it beside Ipopt;
# tests/unit/test_queue_dual.py holds it to Ipopt's optimum.
ENABLED = False
BoolArray = npt.NDArray[np.bool_]
Prices = tuple[FloatArray, FloatArray, FloatArray]  # memory, compute row prices [j]; reused pools' link rows [j, k]


def best_load(q: QueueProblem, price: FloatArray) -> tuple[FloatArray, FloatArray]:
    """[j, k] per-instance rate t* and cost per req/s w at instance price ``price`` [j, k] (beta + row prices)."""
    a = np.sqrt(np.maximum(price, 0.0) / 1000.0)
    t = np.maximum(np.minimum(a / (1.0 + a), q.cap()), MIN_LOAD) * q.mu
    # at price 0 (a reused pool with running instances to spare) the infimum over t > 0 is 0, at t -> 0
    return t, np.asarray(np.where(price > 0, _phi(q, t, price), 0.0))


def _phi(q: QueueProblem, t: FloatArray, price: FloatArray | float) -> FloatArray:
    """Cost per req/s of a pool run at per-instance rate t, instances priced at ``price``."""
    return np.asarray(1000.0 / (q.mu - t) - q.service_ms + price / t)


def solve_binding(q: QueueProblem, allowed: BoolArray) -> NlpSolution | None:
    """R(S)'s optimum (``q`` on S's nodes, ``r_cost`` each stream's outside option), or None where this method
    does not apply or does not prove its result (then Ipopt solves it)."""
    proven = solve_binding_priced(q, allowed)
    return None if proven is None else proven[0]


def solve_binding_priced(q: QueueProblem, allowed: BoolArray) -> tuple[NlpSolution, Prices] | None:
    """``solve_binding`` and the (memory, compute) row prices [j] whose Lagrangian bound proves it."""
    p = q.base
    if not ENABLED or q.instance_cost <= 0 or not allowed.any() or _unknown_terms(q) or _has_cores(q):
        return None
    try:
        import highspy
    except ImportError:  # pragma: no cover - depends on the install
        return None
    lp = _Lp(q, allowed, highspy)
    zero: Prices = (np.zeros(p.n_nodes), np.zeros(p.n_nodes), np.full(q.mu.shape, q.instance_cost))
    lp.add_level(best_load(q, _price(q, *zero))[0])
    best = -math.inf
    best_prices = zero
    for rounds in range(1, MAX_ROUNDS + 1):
        solved = lp.solve()
        if solved is None:
            return None
        x, r, n, prices = solved
        lam = x.T @ np.eye(len(p.model_names))[p.class_model]
        if lp.budgets_for(lam > 0):
            continue  # the active pools changed: their slivers of slack moved (see _Lp.budgets_for)
        upper = nlp_value(q, x, r, n)
        # Wentges smoothing: new loads at the LP's prices and between them and the best bound's prices
        mixed: Prices = (
            SMOOTH * best_prices[0] + (1 - SMOOTH) * prices[0],
            SMOOTH * best_prices[1] + (1 - SMOOTH) * prices[1],
            SMOOTH * best_prices[2] + (1 - SMOOTH) * prices[2],
        )
        for cand in (prices, mixed):
            lower = lagrangian_bound(q, allowed, *cand, budgets=lp.budgets)
            if lower > best:
                best, best_prices = lower, cand
        if upper - best <= GAP * max(1.0, abs(upper)) or not PROVE:
            log.debug("R(S) by column generation: %d rounds, gap %.2e", rounds, upper - best)
            return NlpSolution(x, r, lam, n, upper, "optimal", 0, rounds, int(allowed.sum())), best_prices
        lp.add_level(best_load(q, _price(q, *prices))[0])
        lp.add_level(best_load(q, _price(q, *mixed))[0])
    log.info("R(S) by column generation: no proof after %d rounds; Ipopt solves it", MAX_ROUNDS)
    return None


KNOWN_FIELDS = frozenset({"base", "rate", "mu", "node_class", "rho_max", "instance_cost", "load_cap", "r_cost"})


def _unknown_terms(q: QueueProblem) -> bool:
    """Whether ``q`` sets a field this LP does not model (a constraint added to the NLP since): Ipopt then."""
    for f in dataclasses.fields(q):
        if f.name in KNOWN_FIELDS:
            continue
        value = getattr(q, f.name)
        if value is not None and not (isinstance(value, (int, float)) and value == f.default):
            return True
    return False


def _has_cores(q: QueueProblem) -> bool:
    """Whether a node of ``q`` declares ``cores`` (its instances share them: rows this LP does not model)."""
    mine = set(q.base.node_ids)
    return any(getattr(n, "cores", None) is not None for n in q.base.snapshot.nodes if n.id in mine)


def _price(q: QueueProblem, mem_price: FloatArray, comp_price: FloatArray, link_price: FloatArray) -> FloatArray:
    """[j, k] an instance's price: beta plus its memory and compute at the rows' prices [j]; in a pool that
    reuses running instances, its link row's price (between 0 and that: a running instance costs nothing)."""
    p = q.base
    new = q.instance_cost + mem_price[:, None] * p.mem[None, :] + comp_price[:, None] * p.comp[None, :]
    return np.asarray(np.where(p.free > 0, np.clip(link_price, 0.0, new), new))


def nlp_value(q: QueueProblem, x: FloatArray, r: FloatArray, n: FloatArray) -> float:
    """R(S)'s objective at (x, r, n): outside options at ``r_cost``, pools without rate cost nothing."""
    p = q.base
    lam = x.T @ np.eye(len(p.model_names))[p.class_model]
    live = (lam > 0) & (n > 0)
    safe_n = np.where(live, n, 1.0)
    t = np.where(live, lam / safe_n, 0.0)
    new = np.maximum(n - p.free, 0.0)
    wait = np.where(live, lam * (1000.0 / (q.mu - t) - q.service_ms) + q.instance_cost * new, 0.0)
    outside = q.r_cost if q.r_cost is not None else np.full(p.n_classes, q.penalty())
    return float((p.cost * x).sum() + outside @ r + wait.sum())


def lagrangian_bound(
    q: QueueProblem,
    allowed: BoolArray,
    mem_price: FloatArray,
    comp_price: FloatArray,
    link_price: FloatArray,
    budgets: tuple[FloatArray, FloatArray] | None = None,
) -> float:
    """L(a, b, v): a lower bound on R(S)'s optimum at memory and compute prices ``a``, ``b`` (>= 0) [j] and
    link prices ``v`` [j, k] of the pools that reuse running instances, with the rows' ``budgets`` (memory,
    compute) [j] (default: the problem's). With the link rows n - new <= free relaxed at v (0 <= v <= the
    instance's price), such a pool's instances cost v each and the free ones are worth v free."""
    p = q.base
    price = _price(q, mem_price, comp_price, link_price)
    _, w = best_load(q, price)
    per = np.where(allowed, p.cost + w[:, p.class_model].T, np.inf).min(axis=1)
    outside = q.r_cost if q.r_cost is not None else np.full(p.n_classes, q.penalty())
    served = np.minimum(per, outside)
    mem_b, comp_b = budgets if budgets is not None else (np.maximum(p.mem_budget, 0.0), np.maximum(p.comp_budget, 0.0))
    reused = float((np.where(p.free > 0, price, 0.0) * p.free).sum())
    return float(q.rate @ served - mem_price @ mem_b - comp_price @ comp_b - reused)


class _Lp:
    """The LP over stream columns x[c, j], rejections r[c], new instances new[j, k] of the pools that reuse
    running instances, and pool-load columns z[j, k, level], kept in one HiGHS model: each round adds load
    columns and re-solves from the last basis.

    Rows: assignment [C] (sum x + r = rate), pool balance [P] (sum z - sum x = 0), memory [J] and compute
    [J] (on n = sum z / t, or on new where a pool reuses instances), link [R] (sum z / t - new <= free).
    """

    def __init__(self, q: QueueProblem, allowed: BoolArray, hs: Any) -> None:
        p = q.base
        self.q, self.hs = q, hs
        self.C, self.J, self.K = p.n_classes, p.n_nodes, len(p.model_names)
        C, J, K, P = self.C, self.J, self.K, self.J * self.K
        self.xc, self.xj = np.nonzero(allowed)
        self.reuse = np.flatnonzero(p.free.ravel() > 0)  # pools with running instances to reuse
        self.link_of = np.full(P, -1)
        self.link_of[self.reuse] = np.arange(len(self.reuse))
        X, R = len(self.xc), len(self.reuse)
        outside = q.r_cost if q.r_cost is not None else np.full(C, q.penalty())
        rj, rk = np.divmod(self.reuse, K)
        link0 = C + P + 2 * J
        assign, balance = [self.xc, np.arange(C)], C + self.xj * K + p.class_model[self.xc]
        rows = np.concatenate([assign[0], balance, assign[1], C + P + rj, C + P + J + rj, link0 + np.arange(R)])
        cols = np.concatenate([np.arange(X), np.arange(X), X + np.arange(C), *[X + C + np.arange(R)] * 3])
        vals = np.concatenate([np.ones(X), -np.ones(X), np.ones(C), p.mem[rk], p.comp[rk], -np.ones(R)])
        keep = vals != 0
        n_col, n_row = X + C + R, link0 + R
        a = sp.csc_matrix((vals[keep], (rows[keep], cols[keep])), shape=(n_row, n_col))
        # the bindings' own class: highspy.Highs() prints HiGHS's banner to stdout before any option can be
        # set, and stdout carries `peerserve solve --json`
        h = getattr(getattr(hs, "_core", None), "_Highs", hs.Highs)()
        h.setOptionValue("output_flag", False)
        h.setOptionValue("threads", 1)
        lp = hs.HighsLp()
        lp.num_col_, lp.num_row_ = n_col, n_row
        lp.col_cost_ = np.concatenate([p.cost[self.xc, self.xj], outside, np.full(R, q.instance_cost)])
        lp.col_lower_, lp.col_upper_ = np.zeros(n_col), np.full(n_col, math.inf)
        self.active = np.zeros((J, K), dtype=bool)
        self.budgets = (np.maximum(p.mem_budget, 0.0), np.maximum(p.comp_budget, 0.0))
        lp.row_lower_ = np.concatenate([q.rate, np.zeros(P), np.full(2 * J + R, -math.inf)])
        lp.row_upper_ = np.concatenate([q.rate, np.zeros(P), *self.budgets, p.free.ravel()[self.reuse]])
        lp.a_matrix_.format_ = hs.MatrixFormat.kColwise
        lp.a_matrix_.start_, lp.a_matrix_.index_, lp.a_matrix_.value_ = a.indptr, a.indices, a.data
        h.passModel(lp)
        self.h, self.X, self.R = h, X, R
        self.levels: list[FloatArray] = []

    def budgets_for(self, active: BoolArray) -> bool:
        """Set the rows' budgets for the pools ``active`` [j, k] (and those active before); True if they changed.

        The reference NLP keeps every pool at n >= N_MIN and gives each node N_MIN of every model's memory
        and compute as slack (solver.queue_model); a pool without rate sits at N_MIN, so the pools with rate
        that start new instances share M_j + N_MIN sum of their models' memory (compute alike; a pool that
        reuses instances holds its N_MIN in them). The same rows here make the optimum the reference's, not
        one a few millionths above it."""
        p = self.q.base
        active = (active & (p.free == 0)) | self.active  # only ever grows: budgets that follow it can cycle
        if np.array_equal(active, self.active):
            return False
        self.active = active
        self.budgets = (
            np.maximum(p.mem_budget, 0.0) + N_MIN * (active @ p.mem),
            np.maximum(p.comp_budget, 0.0) + N_MIN * (active @ p.comp),
        )
        rows = self.C + self.J * self.K + np.arange(2 * self.J, dtype=np.int32)
        self.h.changeRowsBounds(len(rows), rows, np.full(len(rows), -math.inf), np.concatenate(self.budgets))
        return True

    def add_level(self, t: FloatArray) -> None:
        """One column per pool run at per-instance rate t [j, k]: its cost per req/s, and its instances per
        req/s in the memory and compute rows (or, where the pool reuses instances, in its link row)."""
        q, p = self.q, self.q.base
        C, J, K = self.C, self.J, self.K
        P = J * K
        pools = np.arange(P)
        zj, zk = np.divmod(pools, K)
        tz = t.ravel()
        linked = self.link_of >= 0
        link_row = C + P + 2 * J + np.maximum(self.link_of, 0)
        rows = np.stack(
            [C + pools, np.where(linked, link_row, C + P + zj), np.where(linked, -1, C + P + J + zj)], axis=1
        )
        vals = np.stack([np.ones(P), np.where(linked, 1.0, p.mem[zk]) / tz, p.comp[zk] / tz], axis=1)
        keep = (rows >= 0) & (vals != 0)
        starts = np.concatenate([[0], np.cumsum(keep.sum(axis=1))[:-1]]).astype(np.int32)
        # where the pool reuses instances, new instances are paid through its `new` column, not per req/s
        cost = _phi_pools(q, tz[None, :]).ravel() - np.where(linked, q.instance_cost / tz, 0.0)
        index, value = rows[keep].astype(np.int32), vals[keep]
        self.h.addCols(P, cost, np.zeros(P), np.full(P, math.inf), len(value), starts, index, value)
        self.levels.append(tz)

    def solve(self) -> tuple[FloatArray, FloatArray, FloatArray, Prices] | None:
        """x [c, j], r [c], n [j, k] and the row prices (>= 0); None if HiGHS fails."""
        h, hs = self.h, self.hs
        C, J, K, X, R = self.C, self.J, self.K, self.X, self.R
        P = J * K
        h.run()
        if h.getModelStatus() != hs.HighsModelStatus.kOptimal:
            return None
        sol = h.getSolution()
        col = np.clip(np.asarray(sol.col_value), 0.0, None)
        dual = np.asarray(sol.row_dual)
        x = np.zeros((C, J))
        x[self.xc, self.xj] = col[:X]
        z = col[X + C + R :].reshape(len(self.levels), P)
        n = (z / np.stack(self.levels)).sum(axis=0).reshape(J, K)
        link = np.zeros(P)
        link[self.reuse] = np.clip(-dual[C + P + 2 * J :], 0.0, None)
        prices = (
            np.clip(-dual[C + P : C + P + J], 0.0, None),
            np.clip(-dual[C + P + J : C + P + 2 * J], 0.0, None),
            link.reshape(J, K),
        )
        return x, col[X : X + C], n, prices


def _phi_pools(q: QueueProblem, t: FloatArray) -> FloatArray:
    """phi at loads t [level, pool] for every pool (flattened j * K + k)."""
    mu, s = q.mu.ravel()[None, :], q.service_ms.ravel()[None, :]
    return np.asarray(1000.0 / (mu - t) - s + q.instance_cost / t)
