"""R(S) of ``solver.queue_fast`` without Ipopt: pool loads by column generation, proven by a Lagrangian bound.

A pool (j, k) run at per-instance rate t (``n = lam / t``) costs ``phi(t) = 1000 / (mu - t) - s + beta / t``
per req/s and needs ``mem_k / t`` MB and ``comp_k / t`` compute per req/s: for fixed loads the NLP is an LP.
Mixing loads in one pool is feasible for the NLP and costs no less there (its delay is sublinear), so the
LP over a set of loads per pool (one column per pool and load) bounds R(S)'s optimum from above. Its row
prices ``a_j``, ``b_j`` (memory, compute) give each pool the load it should run at, ``t*`` with
``t* / (mu - t*) = sqrt(beta_jk / 1000)``, ``beta_jk = beta + a_j mem_k + b_j comp_k + c_j`` (at most its
load cap; ``c_j`` the price of node j's core row sum_k n_jk <= cores_j, where it declares cores: as in the
compact NLP a pool's n is its servers there, ``1 / t`` per req/s in that row), and the Lagrangian bound

    L(a, b, c) = sum_c rate_c min(outside_c, min_j [cost_cj + w_jk(beta_jk)]) - a.M - b.C - c.cores

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
import threading
from typing import Any

import numpy as np
import numpy.typing as npt

from solver.problem import FloatArray
from solver.queue_model import N_MIN, NlpSolution, QueueProblem

log = logging.getLogger(__name__)

GAP = 1e-8  # relative gap between the LP's NLP objective and the Lagrangian bound that proves the optimum
MAX_ROUNDS = 24  # the bench instances need 3-16
MIN_LOAD = 1e-6  # least per-instance load of a column (a pool whose instances cost nothing wants t -> 0)
# first LP: loads also at these multiples of the instance price (measured on the bench's R(S) problems: 7.1 -> 5.6
# LP solves per R(S), 8.1 -> 7.5 ms)
START_LADDER: tuple[float, ...] = (3.0, 10.0, 30.0, 100.0)
CAP_LEVEL = True  # ... and at the pool's load cap, where a pool whose core or memory row binds runs, for the warm
# start (``inner``; session 10: 3.19 -> 2.61 LP solves per R(S) of bench/queue_bench.py at 1 core, 3.53 -> 3.35 at
# 2, the same without cores). This LP's own answer (``ENABLED``, off by default) keeps the ladder it was tested
# with; the warm path's answer is Ipopt's, certified by pricing, whatever vertex the LP ends at.
# HiGHS's options for the column generation's LP (tiny, re-solved from its last basis after each round's columns)
HIGHS_OPTIONS: dict[str, Any] = {
    "output_flag": False,
    "threads": 1,
    "presolve": "off",  # measured: 20 % less time on these small LPs, re-solved from a basis
    "simplex_strategy": 4,  # primal: the basis stays feasible when columns join (7 % less per R(S), same optima)
}
FEASIBLE_BASIS = True  # the first LP starts from a feasible basis (every stream rejected, one load column per pool
# basic at 0, the budget rows' slacks basic) instead of HiGHS's slack basis, which is infeasible on the assignment
# rows: 195 -> 114 simplex iterations in the first LP of the bench's cored relaxations, the same optima
SMOOTH = 0.5  # weight of the best bound's prices in the smoothed prices (Wentges)
# more smoothed candidates per round, their loads added as columns too (more levels per round, fewer rounds): off.
# Measured (bench/relax_options_bench.py, solver17b): with 0.25, 2.88 -> 2.58 LP solves and 3.90 -> 3.68 Ipopt
# iterations per cored R(S), time 0.94x (median pass) / 1.01x (best), but the LP's point moves, so R(S)'s answer
# moves within Ipopt's tolerance and plans change (70 of 744; docs/solver.md, "The cored relaxation's options")
SMOOTH_EXTRA: tuple[float, ...] = ()
PROVE = True  # stop only at a proven optimum (switched off only to show the oracle test failing)
# where the LP is R(S)'s answer: every pool keeps n >= N_MIN (an idle column, ``_Lp.add_floors``) within the NLP's own
# budgets, so a sliver of rate may ride on an empty pool's N_MIN instance as in the NLP, and the proof is the
# NLP's bound (``floor_bound``); False: the rows' budgets follow the pools with rate (the LP's own optimum,
# up to N_MIN x each empty pool's instance price above R(S)'s: 1.42e-5 relative on the saved case, cgproof)
FLOORS = True
# Off by default as the relaxation's answer: issue 16 asks that Ipopt solve the nonlinear relaxation
# (solver.queue_warm certifies this method's optimum by a warm-started Ipopt instead: ``prove_lp``).
# `bench/queue_bench.py --proven-cg` measures it beside Ipopt; tests/unit/test_queue_dual.py holds it to
# Ipopt's optimum, nodes with cores included.
ENABLED = False
REUSE_HIGHS = True  # prove_lp hands its HiGHS object back for the next LP on its thread (``_highs``, ``_Lp.release``)
BoolArray = npt.NDArray[np.bool_]
# memory, compute row prices [j]; reused pools' link rows [j, k]; core rows [j] (0 on a node without cores)
Prices = tuple[FloatArray, FloatArray, FloatArray, FloatArray]


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
    """``solve_binding`` and the row prices (``Prices``) whose Lagrangian bound proves it."""
    return prove(q, allowed) if ENABLED else None


def prove(q: QueueProblem, allowed: BoolArray) -> tuple[NlpSolution, Prices] | None:
    """``solve_binding_priced`` whether or not ``ENABLED`` (solver.queue_warm certifies its result by Ipopt)."""
    found = prove_lp(q, allowed)
    return None if found is None else (found.solution, found.prices)


@dataclasses.dataclass(frozen=True)
class Proof:
    """A proven R(S) optimum: the LP's point, the prices of its bound, and the LP's own duals at its optimum
    (``reduced`` [c, j] per allowed column, inf elsewhere; ``assign`` [C] and ``pool`` [P] row multipliers
    with the NLP's sign: Lagrangian f + y.g)."""

    solution: NlpSolution
    prices: Prices
    reduced: FloatArray
    assign: FloatArray
    pool: FloatArray
    bound: float = -math.inf  # a lower bound on R(S) as the reference NLP has it (``nlp_budgets``; -inf: none)


def prove_lp(
    q: QueueProblem, allowed: BoolArray, gap: float = GAP, exact_slack: bool = True, inner: bool = False
) -> Proof | None:
    """``prove`` with the LP's duals at its optimum (``Proof``), to relative ``gap``. ``exact_slack=False``: the
    rows carry the N_MIN slack of every pool from the start (no re-solve when the pools with rate change; the
    LP then relaxes R(S) by a few millionths of an instance per pool: for a warm start, not as R(S)'s answer)."""
    if q.instance_cost <= 0 or not allowed.any() or _unknown_terms(q):
        return None
    try:
        import highspy
    except ImportError:  # pragma: no cover - depends on the install
        return None
    lp, floors = _open_lp(q, allowed, highspy, exact_slack, inner)
    try:
        return _prove(q, allowed, lp, floors, gap, inner)
    finally:
        lp.release()


def _prove(q: QueueProblem, allowed: BoolArray, lp: _Lp, floors: bool, gap: float, inner: bool) -> Proof | None:
    """``prove_lp``'s rounds on the LP it opened."""
    p = q.base
    zero = _start_levels(q, lp, CAP_LEVEL and inner)
    if FEASIBLE_BASIS:
        lp.feasible_basis()
    best = -math.inf
    best_prices = lp.flat_prices(zero)  # every candidate's prices as one vector (``_Lp.prices_of``)
    for rounds in range(1, MAX_ROUNDS + 1):
        solved = lp.solve()
        if solved is None:
            return None
        x, r, n, prices = solved
        lam = x.T @ lp.model_of
        if lp.budgets_for(lam > 0):
            continue  # the active pools changed: their slivers of slack moved (see _Lp.budgets_for)
        upper = value = lp.value(x, r, n, lam)
        if floors:  # the LP pays each empty pool's N_MIN instance, as the reference NLP does
            upper += q.instance_cost * float(np.where(lam > 0, 0.0, np.maximum(n - p.free, 0.0)).sum())
            lower, t_floor = floor_bound(q, allowed, prices, lp)
            if lower > best:
                best, best_prices = lower, lp.price_vector
        # Wentges smoothing: new loads at the LP's prices and between them and the best bound's prices
        smooth = (SMOOTH, *SMOOTH_EXTRA)
        cands = np.stack((lp.price_vector, *(w * best_prices + (1 - w) * lp.price_vector for w in smooth)))
        lowers, loads = lp.bounds_and_loads(cands)  # each candidate's bound and best loads (the next load columns)
        for lower, cand in zip(lowers, cands, strict=True):
            if lower > best:
                best, best_prices = lower, cand
        if floors:
            loads = np.concatenate([loads, t_floor[None]])  # where the floor's instances carry rate best (slivers too)
        if upper - best <= gap * max(1.0, abs(upper)) or not PROVE:
            proven = lp.prices_of(best_prices)
            valid = _nlp_bound(q, allowed, lp, best, proven, floors, inner)
            log.debug(
                "R(S) by column generation: %d rounds, gap %.2e (%.2e to R(S)'s)", rounds, upper - best, value - valid
            )
            found = NlpSolution(x, r, lam, n, value, "optimal", 0, rounds, int(allowed.sum()), servers=lp.servers(n))
            return Proof(found, proven, lp.reduced_costs(), *lp.row_multipliers(), bound=valid)
        lp.add_levels(loads)
    log.info("R(S) by column generation: no proof after %d rounds; Ipopt solves it", MAX_ROUNDS)
    return None


_SPARE = threading.local()  # per thread: (a HiGHS object an LP handed back, the options it was set up with)


def _highs(hs: Any) -> Any:
    """A HiGHS object with ``HIGHS_OPTIONS`` set and no model: the one the last LP on this thread handed back
    (``_Lp.release``), emptied, where it was set up with today's options; else a new one. Creating one costs ~0.14 ms
    (HiGHS registers its ~200 options), 3-5 % of a cored R(S) (session 19); an emptied one solves the same LP from
    the same basis to the same bits (HiGHS redraws its simplex's random vectors from the options' seed at every run;
    measured: 140 captured R(S) and the 630 plans of ``bench/integer_check.py --quality`` unchanged).

    The bindings' own class: highspy.Highs() prints HiGHS's banner to stdout before any option can be set, and
    stdout carries `peerserve solve --json`."""
    options = tuple(HIGHS_OPTIONS.items())
    spare = getattr(_SPARE, "highs", None)
    _SPARE.highs = None
    if REUSE_HIGHS and spare is not None and spare[1] == options:
        spare[0].clearModel()
        return spare[0]
    h = getattr(getattr(hs, "_core", None), "_Highs", hs.Highs)()
    for key, value in options:
        h.setOptionValue(key, value)
    return h


def _open_lp(q: QueueProblem, allowed: BoolArray, hs: Any, exact_slack: bool, inner: bool) -> tuple[_Lp, bool]:
    """The LP with its rows' budgets for its use (``prove_lp``) and whether it keeps every pool's N_MIN floor."""
    lp = _Lp(q, allowed, hs)
    floors = FLOORS and exact_slack and not inner
    if inner:
        lp.budgets_inner()
    elif floors:
        lp.add_floors()
    elif not exact_slack:
        lp.budgets_for(np.ones(q.mu.shape, dtype=bool))
    return lp, floors


def _nlp_bound(
    q: QueueProblem, allowed: BoolArray, lp: _Lp, best: float, prices: Prices, floors: bool, inner: bool
) -> float:
    """A lower bound on R(S) as ``nlp_value`` counts it (``Proof.bound``): with the floors, the proof's less the
    empty pools' N_MIN instances (free there); else the bound at the NLP's own budgets; -inf for the warm
    start's proof (``inner``: Ipopt certifies that one)."""
    if floors:
        return best - q.instance_cost * N_MIN * float((q.base.free == 0).sum())
    return -math.inf if inner else bound_and_loads(q, allowed, prices, nlp_budgets(q), lp.cores)[0]


def _start_levels(q: QueueProblem, lp: _Lp, cap: bool = False) -> Prices:
    """Add the first LP's loads (at no row price, ``START_LADDER`` times the instance price, and with ``cap`` each
    pool's load cap); the zero prices."""
    nothing = np.zeros(q.base.n_nodes)
    zero: Prices = (nothing, nothing, np.full(q.mu.shape, q.instance_cost), nothing)
    price = _price(q, *zero, lp.cores)
    # loads at higher instance prices too, as if memory, compute or cores were priced (one pass over the ladder:
    # each factor's loads are best_load's at factor * price, element for element)
    factors = np.array([1.0, *START_LADDER])[:, None, None]
    loads = best_load(q, factors * price)[0]
    lp.add_levels(np.concatenate([loads, (q.cap() * q.mu)[None]]) if cap else loads)
    return zero


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


def core_capacity(q: QueueProblem) -> FloatArray:
    """[j] the core row's right-hand side of a node (as solver.queue_model's compact form; inf without cores)."""
    return np.maximum(q.cores(), 2 * N_MIN * len(q.base.model_names))


def _price(
    q: QueueProblem,
    mem_price: FloatArray,
    comp_price: FloatArray,
    link_price: FloatArray,
    core_price: FloatArray | None = None,
    cores: FloatArray | None = None,
) -> FloatArray:
    """[j, k] an instance's price: beta plus its memory and compute at the rows' prices [j]; in a pool that
    reuses running instances, its link row's price (between 0 and that: a running instance costs nothing);
    plus its node's core row price where the node has cores (every instance there is one of its servers;
    ``cores``: ``q.cores()`` where the caller has it)."""
    p = q.base
    new = q.instance_cost + mem_price[:, None] * p.mem[None, :] + comp_price[:, None] * p.comp[None, :]
    if core_price is None:
        return np.asarray(np.where(p.free > 0, np.clip(link_price, 0.0, new), new))
    core = np.where(np.isfinite(q.cores() if cores is None else cores), core_price, 0.0)
    return np.asarray(np.where(p.free > 0, np.clip(link_price, 0.0, new), new) + core[:, None])


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
    core_price: FloatArray | None = None,
    budgets: tuple[FloatArray, FloatArray, FloatArray] | None = None,
    cores: FloatArray | None = None,
) -> float:
    """L(a, b, v, c): a lower bound on R(S)'s optimum at memory and compute prices ``a``, ``b`` (>= 0) [j],
    link prices ``v`` [j, k] of the pools that reuse running instances and core prices ``c`` (>= 0) [j], with
    the rows' ``budgets`` (memory, compute, cores) [j] (default: the problem's). With the link rows
    n - new <= free relaxed at v (0 <= v <= the instance's price), such a pool's instances cost v each and
    the free ones are worth v free; with a node's core row sum_k n <= cores relaxed at c, each of its
    instances costs c more and its cores are worth c cores."""
    prices = (mem_price, comp_price, link_price, core_price)
    return bound_and_loads(q, allowed, prices, budgets, cores)[0]


def bound_and_loads(
    q: QueueProblem,
    allowed: BoolArray,
    prices: tuple[FloatArray, FloatArray, FloatArray, FloatArray | None],
    budgets: tuple[FloatArray, FloatArray, FloatArray] | None = None,
    cores: FloatArray | None = None,
) -> tuple[float, FloatArray]:
    """``lagrangian_bound`` at ``prices`` (memory, compute, link, core) and each pool's best load t* [j, k] there
    (the bound's instance prices, computed once for both: the column generation adds those loads next)."""
    p = q.base
    mem_price, comp_price, link_price, core_price = prices
    price = _price(q, mem_price, comp_price, link_price, core_price, cores)
    t, w = best_load(q, price)
    per = np.where(allowed, p.cost + w[:, p.class_model].T, np.inf).min(axis=1)
    outside = q.r_cost if q.r_cost is not None else np.full(p.n_classes, q.penalty())
    served = np.minimum(per, outside)
    mem_b, comp_b, core_b = budgets if budgets is not None else (*_plain_budgets(q), core_capacity(q))
    reused = 0.0
    if (p.free > 0).any():
        link = _price(q, mem_price, comp_price, link_price)  # without the core price: that is paid on core_b
        reused = float((np.where(p.free > 0, link, 0.0) * p.free).sum())
    cored = np.isfinite(core_b)
    on_cores = 0.0 if core_price is None else float(np.where(cored, core_price, 0.0) @ np.where(cored, core_b, 0.0))
    return float(q.rate @ served - mem_price @ mem_b - comp_price @ comp_b - on_cores - reused), t


def nlp_budgets(q: QueueProblem) -> tuple[FloatArray, FloatArray, FloatArray]:
    """[j] the reference NLP's memory, compute and core budgets: every pool's N_MIN room included.

    The LP's rows leave a pool without rate its N_MIN instance idle (``_Lp.budgets_for``); the NLP may carry
    a sliver of rate on it (Ipopt does, where the rows bind), so only the bound at these budgets is a lower
    bound on R(S) as the NLP has it: the LP's own bound (its rows' budgets) proves the LP's optimum only,
    which sits up to N_MIN x each empty pool's instance price above the NLP's (issue 16, cgproof)."""
    mem, comp = _plain_budgets(q)
    p = q.base
    return mem + N_MIN * float(p.mem.sum()), comp + N_MIN * float(p.comp.sum()), core_capacity(q)


def floor_bound(q: QueueProblem, allowed: BoolArray, prices: Prices, lp: _Lp) -> tuple[float, FloatArray]:
    """The Lagrangian bound of R(S) with every pool at n >= N_MIN (the reference NLP's form, its budgets) at the
    rows' ``prices`` and the LP's pool balance multipliers pi (each at most the pool's w, so the pool's term
    min over lam >= 0, n >= N_MIN of D(lam, n) + beta_jk n - pi lam is N_MIN m(pi) >= 0, m below); and the
    loads [j, k] that minimise m (the next round's load columns)."""
    p = q.base
    price = _price(q, *prices, lp.cores)
    _, w = best_load(q, price)
    pi = np.minimum(-lp.row_multipliers()[1].reshape(w.shape), w)  # the balance rows: pool rate at its marginal cost
    per = np.where(allowed, p.cost + pi[:, p.class_model].T, np.inf).min(axis=1)
    outside = q.r_cost if q.r_cost is not None else np.full(p.n_classes, q.penalty())
    # m(pi) = beta_jk + min over 0 <= t <= cap mu of t (1000 / (mu - t) - s - pi): where the slope is zero
    slope = np.maximum(q.service_ms + pi, 1e-300)
    t = np.clip(q.mu - np.sqrt(1000.0 * q.mu / slope), 0.0, q.cap() * q.mu)
    m = np.maximum(price + t * (1000.0 / (q.mu - t) - q.service_ms - pi), 0.0)
    mem_b, comp_b, core_b = nlp_budgets(q)
    mem_price, comp_price, link_price, core_price = prices
    reused = float((np.where(p.free > 0, _price(q, mem_price, comp_price, link_price), 0.0) * p.free).sum())
    cored = np.isfinite(core_b)
    on_cores = float(np.where(cored, core_price, 0.0) @ np.where(cored, core_b, 0.0))
    served = q.rate @ np.minimum(per, outside) + N_MIN * float(m.sum())
    return float(served - mem_price @ mem_b - comp_price @ comp_b - on_cores - reused), np.maximum(t, MIN_LOAD * q.mu)


def _plain_budgets(q: QueueProblem) -> tuple[FloatArray, FloatArray]:
    """[j] memory and compute budgets (at least 0)."""
    return np.maximum(q.base.mem_budget, 0.0), np.maximum(q.base.comp_budget, 0.0)


class _Lp:
    """The LP over stream columns x[c, j], rejections r[c], new instances new[j, k] of the pools that reuse
    running instances, and pool-load columns z[j, k, level], kept in one HiGHS model: each round adds load
    columns and re-solves from the last basis.

    Rows: assignment [C] (sum x + r = rate), pool balance [P] (sum z - sum x = 0), memory [J] and compute
    [J] (on n = sum z / t, or on new where a pool reuses instances), link [R] (sum z / t - new <= free),
    cores [Q] (sum_k sum z / t <= cores, on each node that declares cores: n is the pool's servers there).
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
        self.cores = q.cores()
        self.cored = np.flatnonzero(np.isfinite(self.cores))  # nodes with a core row
        self.core_of = np.full(J, -1)
        self.core_of[self.cored] = np.arange(len(self.cored))
        X, R = len(self.xc), len(self.reuse)
        outside = q.r_cost if q.r_cost is not None else np.full(C, q.penalty())
        rj, rk = np.divmod(self.reuse, K)
        link0 = C + P + 2 * J
        self.core0 = link0 + R
        # column-wise, rows ascending in each column: a stream column's assignment row (< C) then its pool's
        # balance row; a rejection's assignment row; a reused pool's `new` in its memory, compute and link rows
        # (left out where its model needs none)
        balance = C + self.xj * K + p.class_model[self.xc]
        new_rows = np.stack([C + P + rj, C + P + J + rj, link0 + np.arange(R)], axis=1)
        new_vals = np.stack([p.mem[rk], p.comp[rk], np.full(R, -1.0)], axis=1)
        nonzero = new_vals != 0
        n_col, n_row = X + C + R, self.core0 + len(self.cored)
        index = np.concatenate([np.stack([self.xc, balance], axis=1).ravel(), np.arange(C), new_rows[nonzero]])
        coef = np.concatenate([np.tile([1.0, -1.0], X), np.ones(C), new_vals[nonzero]])
        per_col = np.concatenate([np.full(X, 2), np.ones(C, dtype=np.int64), nonzero.sum(axis=1)])
        starts = np.concatenate([[0], np.cumsum(per_col)])
        h, self.highs_options = _highs(hs), tuple(HIGHS_OPTIONS.items())
        self.outside = outside
        self.active = np.zeros((J, K), dtype=bool)  # pools with rate that start new instances
        self.served = np.zeros((J, K), dtype=bool)  # pools with rate
        self.every_pool = False  # every pool active and served (``_set_budgets``): the budgets stay as set
        # every pool holds n >= N_MIN of its node's cores in the reference NLP: those without rate hold that
        self.core_cap = core_capacity(q)
        self.budgets = (*_plain_budgets(q), self.core_cap - N_MIN * K)
        self._core_budget()
        core_b = self.budgets[2][self.cored]
        # the LP as arrays in one call (HighsLp's attribute setters convert the matrix element by element);
        # every column continuous, as an LP passed without integrality
        h.passModel(
            n_col,
            n_row,
            len(index),
            int(hs.MatrixFormat.kColwise),
            int(hs.ObjSense.kMinimize),
            0.0,
            np.concatenate([p.cost[self.xc, self.xj], outside, np.full(R, q.instance_cost)]),
            np.zeros(n_col),
            np.full(n_col, math.inf),
            np.concatenate([q.rate, np.zeros(P), np.full(n_row - C - P, -math.inf)]),
            np.concatenate([q.rate, np.zeros(P), *self.budgets[:2], p.free.ravel()[self.reuse], core_b]),
            starts.astype(np.int32),
            index.astype(np.int32),
            coef,
            np.zeros(n_col, dtype=np.int32),
        )
        self.h, self.X, self.R = h, X, R
        self.F, self.floor0 = 0, -1  # idle columns and floor rows, one per pool (``add_floors``)
        self.levels: list[FloatArray] = []
        self.level_rates = np.zeros((0, P))  # [L, P] the levels stacked (``solve`` reads them every round)
        self._level_structure()
        self._constants(allowed)

    def release(self) -> None:
        """Hand this LP's HiGHS object to the next LP on this thread (``_highs``): this LP is done with it."""
        if REUSE_HIGHS and self.h is not None:
            _SPARE.highs = (self.h, self.highs_options)
        self.h = None

    def _constants(self, allowed: BoolArray) -> None:
        """What every round reads and no round changes, computed once (the same arrays the module's functions
        compute from ``q`` on each call: ``bounds_and_loads``, ``value`` and ``add_levels`` repeat their
        arithmetic element for element)."""
        q, p = self.q, self.q.base
        J, P = self.J, self.J * self.K
        self.allowed = allowed
        self.model_of = np.eye(self.K)[p.class_model]  # [c, k] 1 where stream c asks for model k
        self.mu, self.s, self.cap = q.mu, q.service_ms, q.cap()
        self.mu_flat, self.s_flat = self.mu.ravel()[None, :], self.s.ravel()[None, :]
        self.reused = p.free > 0  # [j, k] pools with running instances
        self.any_reused = bool(self.reused.any())
        self.finite_cores = np.isfinite(self.cores)
        # the flat price vector: memory [J], compute [J], link [P] (a pool's, as [j, k] row-major), cores [J]
        self.price_size = 3 * J + P
        # where each priced row's dual lands in it: memory and compute rows, link rows (reused pools), core rows
        self.price_dest = np.concatenate([np.arange(2 * J), 2 * J + self.reuse, 2 * J + P + self.cored])
        self.price_vector = np.zeros(self.price_size)  # the last solve's prices

    def _core_budget(self) -> None:
        """The core rows' budgets as the bound reads them (``bound_and_loads``): where finite, and 0 elsewhere."""
        core_b = self.budgets[2]
        self.cored_budget = np.isfinite(core_b)
        self.core_budget = np.where(self.cored_budget, core_b, 0.0)

    def flat_prices(self, prices: Prices) -> FloatArray:
        """``prices`` as one vector (memory, compute, link, cores)."""
        return np.concatenate([prices[0], prices[1], np.ravel(prices[2]), prices[3]])

    def prices_of(self, vector: FloatArray) -> Prices:
        """The ``Prices`` tuple of a flat price vector (views into it)."""
        J, P = self.J, self.J * self.K
        return vector[:J], vector[J : 2 * J], vector[2 * J : 2 * J + P].reshape(J, self.K), vector[2 * J + P :]

    def bounds_and_loads(self, cands: FloatArray) -> tuple[list[float], FloatArray]:
        """``bound_and_loads`` at the rows' budgets for each flat price vector of ``cands`` [L, 3J + P] in one
        pass: the bounds and the best loads [L, j, k]. Element for element the same arithmetic; the sums and
        dot products per candidate, on contiguous rows, as there."""
        J, K, P = self.J, self.K, self.J * self.K
        L = len(cands)
        mem, comp = cands[:, :J], cands[:, J : 2 * J]
        link, core = cands[:, 2 * J : 2 * J + P].reshape(L, J, K), cands[:, 2 * J + P :]
        p = self.q.base
        new = self.q.instance_cost + mem[:, :, None] * p.mem[None, None, :] + comp[:, :, None] * p.comp[None, None, :]
        unpriced = np.where(self.reused, np.clip(link, 0.0, new), new)  # _price without the core price
        price = unpriced + np.where(self.finite_cores, core, 0.0)[:, :, None]
        a = np.sqrt(np.maximum(price, 0.0) / 1000.0)
        t = np.maximum(np.minimum(a / (1.0 + a), self.cap), MIN_LOAD) * self.mu
        w = np.where(price > 0, 1000.0 / (self.mu - t) - self.s + price / t, 0.0)
        per = np.where(self.allowed, p.cost + w[:, :, p.class_model].transpose(0, 2, 1), np.inf).min(axis=2)
        # C order, so each candidate's row is contiguous as bound_and_loads' vector is: numpy lays `per` out as the
        # transposed operand (stride 2 along a row), and a strided dot product sums in another order (last bit)
        served = np.ascontiguousarray(np.minimum(per, self.outside))
        mem_b, comp_b = self.budgets[:2]
        on_cores, core_b = np.ascontiguousarray(np.where(self.cored_budget, core, 0.0)), self.core_budget
        reused = np.ascontiguousarray(np.where(self.reused, unpriced, 0.0) * p.free) if self.any_reused else None
        out = []
        for i in range(L):
            r = 0.0 if reused is None else float(reused[i].sum())
            c = float(on_cores[i] @ core_b)
            out.append(float(self.q.rate @ served[i] - mem[i] @ mem_b - comp[i] @ comp_b - c - r))
        return out, t

    def value(self, x: FloatArray, r: FloatArray, n: FloatArray, lam: FloatArray) -> float:
        """``nlp_value`` at (x, r, n) with the pools' rates ``lam`` (x.T @ model_of, as there)."""
        p = self.q.base
        live = (lam > 0) & (n > 0)
        safe_n = np.where(live, n, 1.0)
        t = np.where(live, lam / safe_n, 0.0)
        new = np.maximum(n - p.free, 0.0)
        wait = np.where(live, lam * (1000.0 / (self.mu - t) - self.s) + self.q.instance_cost * new, 0.0)
        return float((p.cost * x).sum() + self.outside @ r + wait.sum())

    def budgets_for(self, active: BoolArray) -> bool:
        """Set the rows' budgets for the pools ``active`` [j, k] (and those active before); True if they changed.

        The reference NLP keeps every pool at n >= N_MIN and gives each node N_MIN of every model's memory
        and compute as slack (solver.queue_model); a pool without rate sits at N_MIN, so the pools with rate
        that start new instances share M_j + N_MIN sum of their models' memory (compute alike; a pool that
        reuses instances holds its N_MIN in them), and a node's pools with rate share its cores less N_MIN per
        pool without. The same rows here make the optimum the reference's, not one a few millionths above it."""
        p = self.q.base
        if self.every_pool:  # every pool counts as active and served already: nothing can change
            return False
        served = active | self.served  # only ever grows: budgets that follow it can cycle
        active = (active & (p.free == 0)) | self.active
        if (active == self.active).all() and (served == self.served).all():  # np.array_equal's test ([j, k] both)
            return False
        self.active, self.served = active, served
        mem, comp = _plain_budgets(self.q)
        self._set_budgets(
            (
                mem + N_MIN * (active @ p.mem),
                comp + N_MIN * (active @ p.comp),
                self.core_cap - N_MIN * (self.K - served.sum(axis=1)),
            )
        )
        return True

    def add_floors(self) -> None:
        """Keep every pool at n >= N_MIN as the reference NLP does: a floor row per pool (sum z / t + idle >= N_MIN)
        and an idle column (instances without rate, at beta each; on the link row, free, where the pool reuses
        instances), within the NLP's own budgets (``nlp_budgets``), before any load column."""
        P, nrow = self.J * self.K, self.core0 + len(self.cored)
        self.h.addRows(
            P, np.full(P, N_MIN), np.full(P, math.inf), 0, np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros(0)
        )
        self.floor0, self.F = nrow, P
        self._level_structure()  # the load columns' floor rows too
        keep = self.lvl_per_t  # a load column's entries but its balance row's, at t = 1
        counts = np.bincount(self.lvl_pool[keep], minlength=P)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int32)
        cost = np.where(self.linked, 0.0, self.q.instance_cost)
        index, vals = self.lvl_index[keep], self.lvl_num[keep]
        self.h.addCols(P, cost, np.zeros(P), np.full(P, math.inf), len(index), starts, index, vals)
        self._set_budgets(nlp_budgets(self.q), every_pool=True)

    def budgets_inner(self) -> None:
        """Set the rows' budgets inside the NLP's: the plain memory and compute budgets and each node's cores less
        N_MIN per pool, so the LP's point with every pool at n >= N_MIN keeps the NLP's rows (a feasible warm
        start; the LP's optimum lies a few millionths of an instance's price above R(S)'s)."""
        mem, comp = _plain_budgets(self.q)
        self._set_budgets((mem, comp, self.core_cap - N_MIN * self.K), every_pool=True)

    def _set_budgets(self, budgets: Any, every_pool: bool = False) -> None:
        """The memory, compute and core rows' upper bounds (``budgets``: per node); ``every_pool``: every pool
        counts as active and served, so ``budgets_for`` leaves these budgets as set."""
        self.budgets = budgets
        self._core_budget()
        rows = self.C + self.J * self.K + np.arange(2 * self.J, dtype=np.int32)
        rows = np.concatenate([rows, self.core0 + np.arange(len(self.cored), dtype=np.int32)])
        bounds = np.concatenate([*self.budgets[:2], self.budgets[2][self.cored]])
        self.h.changeRowsBounds(len(rows), rows, np.full(len(rows), -math.inf), bounds)
        if every_pool:
            self.active = np.ones((self.J, self.K), dtype=bool)
            self.served = np.ones((self.J, self.K), dtype=bool)
            self.every_pool = True

    def feasible_basis(self) -> None:
        """Start HiGHS from a feasible basis: the rejections r basic in the assignment rows (every stream
        rejected), each pool's first load column basic at 0 in its balance row, the budget rows' slacks basic.
        Triangular, hence a basis; the point x = 0, r = rate keeps every row (the budgets are >= 0)."""
        hs, kind = self.hs, self.hs.HighsBasisStatus
        P = self.J * self.K
        first = self.X + self.C + self.R + self.F  # the first load level's columns, one per pool
        cols = [kind.kLower] * (first + len(self.levels) * P)
        cols[self.X : self.X + self.C] = [kind.kBasic] * self.C
        cols[first - self.F : first] = [kind.kBasic] * self.F  # each pool's idle column at N_MIN in its floor row
        cols[first : first + P] = [kind.kBasic] * P
        rows = [kind.kLower] * (self.C + P) + [kind.kBasic] * (self.core0 + len(self.cored) - self.C - P)
        rows += [kind.kLower] * self.F
        basis = hs.HighsBasis()
        basis.col_status, basis.row_status, basis.valid = cols, rows, True
        self.h.setBasis(basis)

    def _level_structure(self) -> None:
        """The pattern every load column shares, per pool: its balance row (1), its memory row (or its link
        row where the pool reuses instances) and compute row, and its node's core row, each at numerator / t."""
        p = self.q.base
        C, J, K = self.C, self.J, self.K
        P = J * K
        pools = np.arange(P)
        zj, zk = np.divmod(pools, K)
        self.linked = self.link_of >= 0
        link_row = C + P + 2 * J + np.maximum(self.link_of, 0)
        core_row = np.where(self.core_of[zj] >= 0, self.core0 + self.core_of[zj], -1)
        rows = np.stack(
            [
                C + pools,
                np.where(self.linked, link_row, C + P + zj),
                np.where(self.linked, -1, C + P + J + zj),
                core_row,
                np.where(self.floor0 >= 0, self.floor0 + pools, -1),
            ],
            axis=1,
        )
        num = np.stack([np.ones(P), np.where(self.linked, 1.0, p.mem[zk]), p.comp[zk], np.ones(P), np.ones(P)], axis=1)
        keep = (rows >= 0) & (num != 0)
        pool, slot = np.nonzero(keep)  # row-major: each pool's entries together, in slot order
        self.lvl_index = rows[pool, slot].astype(np.int32)
        self.lvl_num = num[pool, slot]
        self.lvl_pool = pool
        self.lvl_per_t = slot > 0  # all rows but balance
        self.lvl_starts = np.concatenate([[0], np.cumsum(keep.sum(axis=1))[:-1]]).astype(np.int32)
        # where the pool reuses instances, new instances are paid through its `new` column, not per req/s
        self.lvl_unpaid = np.where(self.linked, self.q.instance_cost, 0.0)
        self.level_cache: dict[int, tuple[Any, ...]] = {}  # add_levels' index arrays per number of loads

    def add_level(self, t: FloatArray) -> None:
        """One column per pool run at per-instance rate t [j, k] (``add_levels``)."""
        self.add_levels([t])

    def add_levels(self, ts: list[FloatArray] | FloatArray) -> None:
        """Per load t [j, k] in ``ts`` (a list, or stacked [L, j, k]), one column per pool run at per-instance rate
        t: its cost per req/s, and its instances per req/s in the memory and compute rows (or, where the pool
        reuses instances, in its link row) and in its node's core row; all in one call to HiGHS (its index
        arrays built once per number of loads)."""
        tz = np.asarray(ts, dtype=float).reshape(len(ts), -1)  # [L, P]
        L, P = tz.shape
        if L not in self.level_cache:
            nnz = len(self.lvl_index)
            starts = (self.lvl_starts[None, :] + nnz * np.arange(L, dtype=np.int32)[:, None]).ravel()
            index = np.tile(self.lvl_index, L)
            self.level_cache[L] = (starts, index, np.zeros(L * P), np.full(L * P, math.inf), L * nnz)
        starts, index, lower, upper, nnz = self.level_cache[L]
        vals = self.lvl_num * np.where(self.lvl_per_t, 1.0 / tz[:, self.lvl_pool], 1.0)  # [L, nnz]
        cost = 1000.0 / (self.mu_flat - tz) - self.s_flat + self.q.instance_cost / tz - self.lvl_unpaid / tz
        self.h.addCols(L * P, cost.ravel(), lower, upper, nnz, starts, index, vals.ravel())
        self.levels.extend(tz)
        self.level_rates = np.concatenate([self.level_rates, tz])

    def solve(self) -> tuple[FloatArray, FloatArray, FloatArray, Prices] | None:
        """x [c, j], r [c], n [j, k] and the row prices (>= 0); None if HiGHS fails."""
        h, hs = self.h, self.hs
        C, J, K, X, R = self.C, self.J, self.K, self.X, self.R
        P = J * K
        h.run()
        if h.getModelStatus() != hs.HighsModelStatus.kOptimal:
            return None
        sol = h.getSolution()
        col = np.maximum(_floats(sol.col_value), 0.0)  # np.clip(.., 0, None)'s ufunc
        dual = _floats(sol.row_dual)
        self.solution, self.row_dual = sol, dual  # the column duals are read only for the proof (reduced_costs)
        x = np.zeros((C, J))
        x[self.xc, self.xj] = col[:X]
        z = col[X + C + R + self.F :].reshape(len(self.levels), P)
        idle = col[X + C + R : X + C + R + self.F] if self.F else 0.0
        n = ((z / self.level_rates).sum(axis=0) + idle).reshape(J, K)
        # the priced rows (memory, compute, link, cores: consecutive) into the flat price vector, 0 where no row
        y = np.zeros(self.price_size)
        y[self.price_dest] = np.maximum(-dual[C + P : self.core0 + len(self.cored)], 0.0)
        self.price_vector = y
        return x, col[X : X + C], n, self.prices_of(y)

    def reduced_costs(self) -> FloatArray:
        """[c, j] the last solve's reduced cost of every stream column (inf where not allowed)."""
        out = np.full((self.C, self.J), np.inf)
        out[self.xc, self.xj] = _floats(self.solution.col_dual)[: self.X]
        return out

    def row_multipliers(self) -> tuple[FloatArray, FloatArray]:
        """The last solve's assignment [C] and pool balance [P] row multipliers with the NLP's sign."""
        C, P = self.C, self.J * self.K
        return -self.row_dual[:C], -self.row_dual[C : C + P]

    def servers(self, n: FloatArray) -> FloatArray | None:
        """[j, k] the pools' servers (their n, as the compact NLP's) where a node has cores, else None."""
        return None if not len(self.cored) else n.copy()


def _floats(values: Any) -> FloatArray:
    """A list of floats (HiGHS's solution vectors) as an array: with the dtype and length given, numpy skips its
    per-element type discovery (~2x faster on the column generation's ~800 columns; the same doubles)."""
    return np.fromiter(values, np.float64, len(values))


def _phi_pools(q: QueueProblem, t: FloatArray) -> FloatArray:
    """phi at loads t [level, pool] for every pool (flattened j * K + k)."""
    mu, s = q.mu.ravel()[None, :], q.service_ms.ravel()[None, :]
    return np.asarray(1000.0 / (mu - t) - s + q.instance_cost / t)
