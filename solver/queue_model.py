"""The queue-aware placement (issue 16): streams with rates, pools of instances, queueing delay, by Ipopt.

A stream (class c) is a client site and a model with a request rate ``rate[c]`` (requests/s). A pool
(j, k) is the instances of model k on node j; each serves ``mu[j, k]`` requests/s. The nonlinear
relaxation, solved by Ipopt through cyipopt with exact first and second derivatives:

    minimise  sum_cj x_cj (rtt_cj + exec_cj)                        (request-ms per second)
            + sum_jk [D_jk(lam_jk, n_jk) - lam_jk 1000 / mu_jk]       (queueing wait, solver.queueing)
            + beta sum_jk new_jk + P sum_c r_c                        (instance cost, rejection penalty)
    s.t.      sum_j x_cj + r_c = rate_c                               (every stream served or rejected)
              lam_jk = sum_{c of model k} x_cj                        (pool arrival rate)
              lam_jk <= rho_max mu_jk n_jk                            (throughput, below saturation)
              n_jk - new_jk <= free_jk                                (Mode 1 reuses running instances)
              sum_k mem_k new_jk <= mem_budget_j, same for compute
              x, r, lam, new >= 0, n >= N_MIN

On a node with ``cores`` (solver.node_cpu: its instances share them) the pools' delay and throughput
use effective servers e_jk instead of n_jk, with two more linear rows:

              e_jk <= n_jk,   sum_k e_jk <= cores_j,   e >= N_MIN      (instances share the node's cores)

so the node's busy work sum_k lam_jk / mu_jk stays below rho_max cores_j and an instance beyond the
cores the node can give a pool adds no throughput and no lower delay.

Every constraint is linear (constant Jacobian) and the objective is convex (D is jointly convex), so
Ipopt's local optimum is the global one. Integer instance counts come from ``solver.queue_repair``.
"""

from __future__ import annotations

import logging
import operator
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from solver.errors import SolverError, SolverUnavailableError
from solver.node_cpu import node_cores, node_slots
from solver.problem import FloatArray, IntArray, Problem
from solver.queue_start import feasible_start
from solver.queueing import RHO_MAX

log = logging.getLogger(__name__)

MERGE_SERVERS = True  # compact form: n is the servers on nodes with cores (no e; switched off only in tests)
PIN_NO_ROOM = True  # compact form: fix n = N_MIN where a node has no room (switched off only in tests)
CORE_ROWS = True  # compact form: the core rows (switched off only to show tests/unit/test_queue_start.py failing)
WARM_GAP = 1e-5  # a warm solve's point is taken only if its duality gap is at most this times max(1, |objective|)
MU_MIN, MU_MAX = 1e-3, 1e9  # requests/s one instance serves, clipped (a peer's absurd measurement overflowed the solve)
DROP_IDLE_ROWS = True  # compact form: leave out memory and compute rows the core rows keep from binding
UNUSED_POOLS = True  # compact form: a pool no column reaches (and no instance runs) has lam 0, n N_MIN, no rows
N_MIN = 1e-6  # lower bound on a pool's (fractional) instance count; D needs n > 0
INSTANCE_COST = 500.0  # request-ms per second one new instance must save to be worth starting (beta)
DEFAULT_RATE = 1.0  # requests/s of a stream whose rate the snapshot does not give

IPOPT_NLP: dict[str, Any] = {
    "print_level": 0,
    "sb": "yes",
    "jac_c_constant": "yes",
    "jac_d_constant": "yes",
    "tol": 1e-7,
    "mu_strategy": "monotone",  # measured: ~35 % fewer iterations than adaptive on these problems
    "max_iter": 500,
    "min_refinement_steps": 0,  # measured: ~30 % less time at the thesis's sizes, same iterates and optima
}
# The compact form's options (the fast path; the reference form keeps IPOPT_NLP): measured on the R(S) problems
# of bench/queue_bench.py (thesis sizes, no cores / 2 / 1 core per node, with and without running instances),
# from solver.queue_start's feasible start: mu_init 1 (the start is central, not near the bounds) and a faster
# superlinear barrier decrease cut Ipopt's median iterations 40 -> 34 at 2 cores and 58 -> 38 at 1 core, and
# a smaller gradient bound for the scaling (the rejection penalty's gradient set the objective's scale)
# another few; the same optima within 1e-7 relative.
# fast_step_computation skips the residual check of each step (the same iteration counts, optima to ~1e-16:
# the KKT systems here are solved well; the retries check again). Measured by bench/ipopt_options.py and not
# taken: Mehrotra's predictor-corrector (it needs mu_strategy adaptive, "Invalid option" with monotone, and
# drops the line search: on these NLPs it oscillated, median iterations 31 -> 204 and 2,000-iteration
# failures), the adaptive strategy with the probing oracle (fewer iterations, more time), tau_min,
# barrier_tol_factor, alpha_for_y, mu_init, mu_min, tol: none moved the iterations by more than a few per
# cent over the R(S) problems at 0, 2 and 1 core per node.
IPOPT_NLP_COMPACT: dict[str, Any] = IPOPT_NLP | {
    "mu_init": 1.0,
    "mu_superlinear_decrease_power": 1.9,
    "nlp_scaling_max_gradient": 10.0,
    "fast_step_computation": "yes",
}
FEASIBLE_START = True  # compact form: start from solver.queue_start (switched off only in tests and the bench)
# Tried in turn when Ipopt fails outright (e.g. -3, an error in the step computation: hypothesis found an
# instance where the speed options above fail and the first two each succeed, though not together; a
# nearly empty cluster once needed Ipopt's problem scaling off). Each retry checks every step's residual
# again (fast_step_computation no: refinement where a step is inaccurate, as before that option).
_CHECKED = {"fast_step_computation": "no"}
IPOPT_NLP_RETRIES: tuple[dict[str, Any], ...] = (
    {"min_refinement_steps": 1} | _CHECKED,
    {"mu_strategy": "adaptive"} | _CHECKED,
    {"nlp_scaling_method": "none"} | _CHECKED,
)
# Ipopt's ends that the safer option sets above may turn into an optimum: its iteration limit, a failure, and
# 3 (Search_Direction_Becomes_Too_Small: the reference form on a cored, tail-capped cluster stalled there at 62
# iterations; the adaptive mu strategy then solves it in 55)
RETRIED = frozenset({"iteration_limit", "failed", "ipopt_status_3"})


@dataclass(frozen=True)
class QueueProblem:
    """The arrays of the queue-aware model on top of a ``Problem`` (classes, costs, budgets, free slots)."""

    base: Problem
    rate: FloatArray  # [c] requests/s
    mu: FloatArray  # [j, k] requests/s one instance serves
    node_class: tuple[str, ...]  # [j]
    rho_max: float = RHO_MAX
    instance_cost: float = INSTANCE_COST
    load_cap: FloatArray | None = None  # [j, k] per-pool load cap (solver.tail_cap); None: rho_max everywhere
    r_cost: FloatArray | None = None  # [c] cost of r per req/s (solver.queue_fast's outside option); None: penalty

    def cap(self) -> FloatArray:
        """The load [j, k] each pool's instances may run at: ``load_cap`` where given, else ``rho_max``."""
        return np.full(self.mu.shape, self.rho_max) if self.load_cap is None else self.load_cap

    def cores(self) -> FloatArray:
        """[j] each node's parallel capacity, at least 1 (inf where the snapshot gives none: no core rows).

        A node with a fraction c < 1 of a core is modelled as one core at c times the speed: its ``mu`` is
        scaled by c (``build_queue_problem``), so one instance's throughput, and the instance bound counted
        from it, are what the node can deliver. In instance units: an instance with ``slots`` slots
        (solver.node_cpu.node_slots) takes that many cores, so the node holds ``cores / slots`` of them.

        Computed once per problem (the snapshot's nodes and the problem are immutable; a relaxation asked for
        it ~6 times, each a pass over the snapshot's nodes): each call gets its own copy."""
        cached = self.__dict__.get("_cores")
        if cached is None:
            cached = np.asarray(np.maximum(node_cores(self.base), 1.0) / node_slots(self.base))
            object.__setattr__(self, "_cores", cached)  # not a field: dataclasses.replace computes it anew
        return np.array(cached)

    @property
    def service_ms(self) -> FloatArray:
        return np.asarray(1000.0 / self.mu)

    def penalty(self) -> float:
        """Per req/s rejected: more than serving it anywhere, waiting included, plus a whole instance (computed once
        per problem, as ``cores``)."""
        cached = self.__dict__.get("_penalty")
        if cached is None:
            wait = float(self.service_ms.max()) / (1.0 - self.rho_max)
            worst = float(self.base.cost.max(initial=1.0)) + wait
            smallest = float(self.rate[self.rate > 0].min(initial=1.0))
            cached = 10.0 * (worst + self.instance_cost / smallest)
            object.__setattr__(self, "_penalty", cached)
        return float(cached)


def build_queue_problem(p: Problem, instance_cost: float = INSTANCE_COST, rho_max: float = RHO_MAX) -> QueueProblem:
    """Rates per class (member rates summed) and per-pool service rates from the snapshot.

    A model's ``throughput_rps`` names a node id or ``default``; where neither is given, one instance
    serves 1000 / exec_ms requests/s (exec_ms: the median over the model's streams at that node); on a
    node with less than one core, that times its cores.

    An instance with ``slots`` slots on a node (solver.node_cpu.node_slots: its concurrency, at most the node's
    cores) serves ``slots`` times that: the model sees it as ONE server at ``slots x mu`` (and
    ``QueueProblem.cores`` counts the node's cores in such instances), so every integer-part module keeps
    counting instances. Its M/M/1 wait, ``rho / (slots mu - lam)`` with ``rho = lam / (slots mu)``, is an
    upper bound of the M/M/c wait ``C(c, lam / mu) / (c mu - lam)`` (Erlang C <= rho); the execution time is
    unchanged (it is in the cost). One slot (no concurrency) leaves every figure as it was, bit for bit.
    """
    s = p.snapshot
    rate = np.array([sum(_rate(s.requests[i].rate) for i in members) for members in p.class_members], dtype=float)
    mu = np.zeros((p.n_nodes, len(p.model_names)))
    by_model: dict[str, list[Any]] | None = None  # each model's streams' exec_ms rows, made once where one is needed
    for k, model in enumerate(s.models):
        median = None
        if any(model.throughput_rps.get(node, model.throughput_rps.get("default")) is None for node in p.node_ids):
            by_model = _exec_rows(s, p.node_ids) if by_model is None else by_model
            median = _median_exec(by_model.get(model.name, []))
        medians = None if median is None else median.tolist()  # Python floats: float(median[j]) each
        column = []  # the column in Python, written once (numpy's element stores cost more than a list's)
        for j, node in enumerate(p.node_ids):
            declared = model.throughput_rps.get(node, model.throughput_rps.get("default"))
            if declared is not None:
                column.append(declared)
            else:
                column.append(1000.0 / max(medians[j], 1e-3) if medians is not None else 1000.0)
        mu[:, k] = column
    mu *= np.minimum(node_cores(p), 1.0)[:, None]  # a fraction of a core serves a fraction of the rate
    mu *= node_slots(p)[:, None]  # an instance's slots serve in parallel (1: unchanged)
    mu = np.clip(mu, MU_MIN, MU_MAX)  # measured figures come from peers: keep the arithmetic finite
    node_class = tuple(n.node_class for n in s.nodes)
    return QueueProblem(p, rate, mu, node_class, rho_max, instance_cost)


def _exec_rows(s: Any, node_ids: tuple[str, ...]) -> dict[str, list[Any]]:
    """Per model, its streams' exec_ms at each of ``node_ids`` (in stream order): one pass over the requests, each
    row's lookups made by ``operator.itemgetter`` (the same values as ``[r.exec_ms[node] for node in node_ids]``, a
    missing node a KeyError alike, without a Python loop per node or a pass over the requests per model)."""
    rows: dict[str, list[Any]] = {}
    if len(node_ids) >= 2:
        get = operator.itemgetter(*node_ids)
        for r in s.requests:
            rows.setdefault(r.model, []).append(get(r.exec_ms))
    else:  # itemgetter of one key answers the value, not a tuple (and of none is not defined)
        for r in s.requests:
            rows.setdefault(r.model, []).append([r.exec_ms[node] for node in node_ids])
    return rows


def _median_exec(mine: list[Any]) -> FloatArray | None:
    """[j] the median exec_ms of a model's streams (``_exec_rows``' rows for it) at each node (np.median's value,
    without its overhead); None without streams."""
    if not mine:
        return None
    rows = np.sort(np.asarray(mine, dtype=float), axis=0)
    half = len(mine) // 2
    return np.asarray(rows[half] if len(mine) % 2 else (rows[half - 1] + rows[half]) / 2)


def _rate(value: float | None) -> float:
    return DEFAULT_RATE if value is None else float(value)


@dataclass(frozen=True)
class NlpSolution:
    """The relaxation's optimum: x [c, j] req/s, r [c] rejected req/s, lam and n [j, k]."""

    x: FloatArray
    r: FloatArray
    lam: FloatArray
    n: FloatArray
    value: float
    status: str
    iterations: int
    rounds: int = 1  # restricted solves (solver.queue_lazy); 1 for a whole solve
    columns: int = 0  # x columns in the last solve
    fallback: bool = False  # the lazy solve gave up and solved the whole NLP
    servers: FloatArray | None = None  # [j, k] effective servers e (solver.node_cpu); None: n everywhere

    def effective(self) -> FloatArray:
        """[j, k] the servers the pools' delay counts: ``servers`` where the node's cores bind, else n."""
        return self.n if self.servers is None else self.servers


@dataclass(frozen=True)
class WarmStart:
    """Ipopt's start for one compact restricted solve (solver.queue_warm): the point, the rows' and the bounds'
    multipliers in the compact layout's order, and options over ``IPOPT_NLP_COMPACT`` (no retries)."""

    x: FloatArray
    mult_g: FloatArray
    zl: FloatArray
    zu: FloatArray
    options: dict[str, Any]
    layout: Any = None  # the _Layout of these columns where the caller built it already (built once per solve)
    jacobian: Any = None  # _jacobian(q, layout)'s result alike
    callbacks: Any = None  # a _Callbacks of this layout (its rows are set to Ipopt's; its delay terms at x kept)


class _Layout:
    """Variable and row positions: x [X] (the (c, j) pairs in ``cols``), r [C], lam [P], n [P], new [L], e [E].

    ``new`` and its link row exist only for the pools in ``linked``: every pool in the reference form
    (``compact=False``), else only pools with running instances to reuse (free > 0). Where free = 0 the
    link row forces new = n, so n itself carries the instance cost and the memory and compute rows.
    ``e`` exists for the pools of nodes with a core count (``cored``) in the reference form only; in the
    compact form a pool's n is its servers on such a node too, and the node's core row sums its n: e <= n
    costs nothing to close (n only pays for instances), so e = n at an optimum, and without e Ipopt meets
    no variable that is free between two bounds at an empty pool (``MERGE_SERVERS``).
    """

    def __init__(self, q: QueueProblem, cols: IntArray | None = None, compact: bool = True) -> None:
        p = q.base
        self.C, self.J, self.K = p.n_classes, p.n_nodes, len(p.model_names)
        self.P = self.J * self.K
        self.compact = compact
        self.cols = np.arange(self.C * self.J) if cols is None else np.asarray(cols, dtype=np.int64)
        self.cc, self.jj = np.divmod(self.cols, max(self.J, 1))
        free = p.free.ravel()
        self.linked = np.flatnonzero(free > 0) if compact else np.arange(self.P)
        self.x0, self.r0 = 0, len(self.cols)
        self.lam0 = self.r0 + self.C
        self.n0 = self.lam0 + self.P
        self.new0 = self.n0 + self.P
        self.cores = q.cores()
        rows = CORE_ROWS or not compact
        on_cores = np.flatnonzero(np.repeat(np.isfinite(self.cores) & rows, self.K))
        self.core_nodes = np.flatnonzero(np.isfinite(self.cores) & rows)  # nodes with a core row
        self.core_pools = on_cores  # pools whose servers count in their node's core row
        self.cored = on_cores[:0] if compact and MERGE_SERVERS else on_cores  # pools with an e variable
        self.e0 = self.new0 + len(self.linked)
        self.size = self.e0 + len(self.cored)
        self.rows = self.C + 2 * self.P + len(self.linked) + 2 * self.J + len(self.cored) + len(self.core_nodes)
        # per pool: the variable that pays for new instances (its `new`, or n itself where unlinked)
        self.payer = self.n0 + np.arange(self.P)
        self.payer[self.linked] = self.new0 + np.arange(len(self.linked))
        # per pool: the variable that counts its servers in the delay and the throughput row (e, or n)
        self.server = self.n0 + np.arange(self.P)
        self.server[self.cored] = self.e0 + np.arange(len(self.cored))
        # per pool: its n is fixed at N_MIN (compact form, no running instance, its node has no memory or
        # compute left for the model): the rows pin it there anyway, and Ipopt, which needs an interior,
        # met it as a variable between a bound and a row at the same value (up to 2,000 iterations)
        pj, pk = np.divmod(np.arange(self.P), self.K)
        none_left = ((p.mem[pk] > 0) & (p.mem_budget[pj] <= 0)) | ((p.comp[pk] > 0) & (p.comp_budget[pj] <= 0))
        # ... and so is it at a pool no column reaches (lam = 0: D(0, n) = 0, so n only costs beta): lam is
        # fixed at 0 too and the pool's balance and throughput rows, which it alone fills, are left out
        reached = np.bincount(self.jj * self.K + p.class_model[self.cc], minlength=self.P) > 0
        self.unused = ~reached & (free == 0) & compact & UNUSED_POOLS
        self.pinned = ((none_left & PIN_NO_ROOM) | self.unused) & (free == 0) & compact


def _jacobian(q: QueueProblem, lay: _Layout) -> tuple[IntArray, IntArray, FloatArray, FloatArray, FloatArray]:
    """Rows, columns, values and row bounds of the linear constraints (assign, pool, throughput, link, mem, comp)."""
    p = q.base
    C, J, K, P = lay.C, lay.J, lay.K, lay.P
    cc, jj, X = lay.cc, lay.jj, len(lay.cols)
    pool_of_x = jj * K + p.class_model[cc]
    pools = np.arange(P)
    pj, pk = np.divmod(pools, K)
    rows: list[Any] = []
    cols: list[Any] = []
    vals: list[Any] = []

    def add(r: Any, c: Any, v: Any) -> None:  # r, c: index arrays; v: one value for all, or one each (floats)
        rows.append(r)
        cols.append(c)
        vals.append(np.full(len(r), v) if isinstance(v, float) else v)

    add(cc, lay.x0 + np.arange(X), 1.0)  # assign rows 0..C-1
    add(np.arange(C), lay.r0 + np.arange(C), 1.0)
    add(C + pool_of_x, lay.x0 + np.arange(X), -1.0)  # pool rows: lam - sum x = 0
    add(C + pools, lay.lam0 + pools, 1.0)
    t0 = C + P  # throughput rows: lam - rho mu n <= 0
    add(t0 + pools, lay.lam0 + pools, 1.0)
    add(t0 + pools, lay.server, -(q.cap() * q.mu).ravel())
    L = len(lay.linked)
    l0 = t0 + P  # link rows: n - new <= free (linked pools only)
    add(l0 + np.arange(L), lay.n0 + lay.linked, 1.0)
    add(l0 + np.arange(L), lay.new0 + np.arange(L), -1.0)
    m0 = l0 + L  # memory rows, then compute rows: on each pool's payer
    add(m0 + pj, lay.payer, np.where(lay.pinned, 0.0, p.mem[pk]))  # a pinned n's use comes off the bound
    add(m0 + J + pj, lay.payer, np.where(lay.pinned, 0.0, p.comp[pk]))
    E = len(lay.cored)
    e0 = m0 + 2 * J  # core rows: e - n <= 0 per pool with an e, then sum_k servers <= cores per cored node
    add(e0 + np.arange(E), lay.e0 + np.arange(E), 1.0)
    add(e0 + np.arange(E), lay.n0 + lay.cored, -1.0)
    cored_nodes = lay.core_nodes
    node_row = np.full(J, -1)
    node_row[cored_nodes] = np.arange(len(cored_nodes))
    add(e0 + E + node_row[lay.core_pools // K], lay.server[lay.core_pools], 1.0)
    r, c, v = np.concatenate(rows), np.concatenate(cols), np.concatenate(vals)
    keep = v != 0
    n_core_rows = E + len(cored_nodes)
    cl = np.concatenate(
        [q.rate, np.zeros(P), np.full(P, -np.inf), np.full(L, -np.inf), np.full(2 * J + n_core_rows, -np.inf)]
    )
    # n >= N_MIN forces every pool to hold a sliver of a new instance where none runs; a node with no memory
    # or compute left (budget 0) made the rows infeasible and Ipopt failed with -3 (found by hypothesis).
    # The slack is that sliver's cost; rounding and repair keep the real budgets on whole instances.
    mem_cu = np.maximum(p.mem_budget, 0.0) + N_MIN * float(np.sum(p.mem))
    comp_cu = np.maximum(p.comp_budget, 0.0) + N_MIN * float(np.sum(p.comp))
    mem_cu -= N_MIN * np.bincount(pj, weights=lay.pinned * p.mem[pk], minlength=J)
    comp_cu -= N_MIN * np.bincount(pj, weights=lay.pinned * p.comp[pk], minlength=J)
    free = p.free.ravel()[lay.linked].astype(float)
    # every pool's e >= N_MIN: a node needs room for K slivers (a slack on every node would let a pool
    # carry 1e-6 more than its whole instances, and rounding would open one more)
    core_cu = np.concatenate([np.zeros(E), np.maximum(lay.cores[cored_nodes], 2 * K * N_MIN)])
    cu = np.concatenate([q.rate, np.zeros(P), np.zeros(P), free, mem_cu, comp_cu, core_cu])
    return r[keep], c[keep], v[keep], cl, cu


def _dropped_rows(q: QueueProblem, lay: _Layout) -> IntArray:
    """The rows of the full layout the compact form leaves out: unused pools' balance and throughput rows,
    idle memory and compute rows (``UNUSED_POOLS``, ``DROP_IDLE_ROWS``)."""
    unused = np.flatnonzero(lay.unused)
    drop = [lay.C + unused, lay.C + lay.P + unused]
    if lay.compact and DROP_IDLE_ROWS and q.instance_cost > 0:
        core_cu = np.maximum(lay.cores[lay.core_nodes], 2 * lay.K * N_MIN)  # as the core rows' bounds
        m0 = lay.C + 2 * lay.P + len(lay.linked)
        drop.append(m0 + _idle_budget_rows(q, lay, core_cu))
    return np.concatenate(drop).astype(np.int64)


def _idle_budget_rows(q: QueueProblem, lay: _Layout, core_cu: FloatArray) -> IntArray:
    """Memory and compute rows (0..2J-1 from the first memory row) that no optimum can reach: on a node with a
    core row, new <= n at an optimum (new costs beta > 0) and sum_k n <= cores, so the node's memory use is
    at most cores x the largest memory need (compute likewise); where that fits the row's bound, drop it."""
    p = q.base
    J = lay.J
    bound = np.full(J, np.inf)
    bound[lay.core_nodes] = core_cu
    mem_cu = np.maximum(p.mem_budget, 0.0)
    comp_cu = np.maximum(p.comp_budget, 0.0)
    idle_mem = bound * float(p.mem.max(initial=0.0)) <= mem_cu
    idle_comp = bound * float(p.comp.max(initial=0.0)) <= comp_cu
    return np.flatnonzero(np.concatenate([idle_mem, idle_comp]))


def _without_rows(
    r: IntArray, c: IntArray, v: FloatArray, cl: FloatArray, cu: FloatArray, drop: IntArray
) -> tuple[IntArray, IntArray, FloatArray, FloatArray, FloatArray]:
    """The constraint triplets and bounds with rows ``drop`` taken out and the rows after them renumbered."""
    kept = np.ones(len(cl), dtype=bool)
    kept[drop] = False
    new_index = np.cumsum(kept) - 1
    entries = kept[r]
    return new_index[r[entries]], c[entries], v[entries], cl[kept], cu[kept]


class _Callbacks:
    """cyipopt callbacks: linear constraints, the convex objective with its exact 2x2 Hessian blocks.

    Ipopt asks f, grad f and the Hessian at one point, so the pools' delay terms are computed once per point
    (keyed on the pools' lam and server entries, all the terms read); the rest is one dot product, one
    bincount and a few slices, about 60 us an iteration at the thesis's sizes (item 3 of issue 16 item 5).
    """

    def __init__(self, q: QueueProblem, lay: _Layout, jac: tuple[IntArray, IntArray, FloatArray]) -> None:
        self.q, self.lay = q, lay
        self.rows, self.cols, self.vals = jac
        self.m = int(self.rows.max(initial=-1)) + 1
        self.cost = np.concatenate(
            [
                q.base.cost.ravel()[lay.cols],
                np.full(lay.C, q.penalty()) if q.r_cost is None else q.r_cost,
                -q.service_ms.ravel(),
                np.zeros(lay.P),
                np.zeros(len(lay.linked)),
                np.zeros(len(lay.cored)),
            ]
        )
        self.cost[lay.payer] = q.instance_cost
        self.mu = q.mu.ravel()
        self.t_max = q.rho_max * self.mu
        self.lam = slice(lay.lam0, lay.lam0 + lay.P)
        contiguous = np.array_equal(lay.server, lay.n0 + np.arange(lay.P))  # the compact form: n is the servers
        self.server: slice | IntArray = slice(lay.n0, lay.n0 + lay.P) if contiguous else lay.server
        # the compact form's n follows lam in the variables: the pools' entries are one slice
        self.pool_slice = slice(lay.lam0, lay.n0 + lay.P) if contiguous and lay.n0 == lay.lam0 + lay.P else None
        self.iterations = 0
        self._key: FloatArray | None = None  # the pools' entries of the point of the cached delay terms
        self._terms: tuple[FloatArray, ...] = ()

    def _delay_at(self, x: FloatArray) -> tuple[FloatArray, ...]:
        """``_delay`` at the pools of point x, computed once per point."""
        key = np.concatenate([x[self.lam], x[self.server]]) if self.pool_slice is None else x[self.pool_slice].copy()
        # np.array_equal's test (same shape, every entry ==) without its wrapper: Ipopt calls this ~15 times a solve
        if self._key is None or key.shape != self._key.shape or not (key == self._key).all():
            P = self.lay.P
            self._terms = self._delay(np.maximum(key[:P], 0.0), np.maximum(key[P:], N_MIN))
            self._key = key
        return self._terms

    def _delay(self, lam: FloatArray, n: FloatArray) -> tuple[FloatArray, ...]:
        """Per pool: value, dD/dlam, dD/dn, and the Hessian's three entries (vectorised PoolDelay)."""
        mu, tm = self.mu, self.t_max
        t = lam / n
        over = t > tm
        tc = np.minimum(t, tm) if over.any() else t
        gap = mu - tc
        # the same operations as PoolDelay's, rounding included: Ipopt's path on the hypothesis cases of
        # tests/unit/test_solver_queue_placement.py turns on the last bit
        g = 1000.0 * tc / gap
        d1 = 1000.0 * mu / gap**2
        d2 = 2000.0 * mu / gap**3
        if over.any():  # above t_max: g's tangent, no curvature
            g = np.where(over, g + d1 * (t - tm), g)
            d2 = np.where(over, 0.0, d2)
        base = d2 / n
        return n * g, d1, g - t * d1, base, -t * base, t * t * base

    def objective(self, x: FloatArray) -> float:
        return float(self.cost @ x + self._delay_at(x)[0].sum())

    def gradient(self, x: FloatArray) -> FloatArray:
        _, d_lam, d_n, *_ = self._delay_at(x)
        out = self.cost.copy()
        out[self.lam] += d_lam
        out[self.server] += d_n
        return out

    def constraints(self, x: FloatArray) -> FloatArray:
        return np.bincount(self.rows, weights=self.vals * x[self.cols], minlength=self.m).astype(np.float64, copy=False)

    def jacobian(self, x: FloatArray) -> FloatArray:
        return self.vals

    def jacobianstructure(self) -> tuple[IntArray, IntArray]:
        return self.rows, self.cols

    def hessianstructure(self) -> tuple[IntArray, IntArray]:
        lam = self.lay.lam0 + np.arange(self.lay.P)
        n = self.lay.server  # e sits after lam in the variables, n too: (server, lam) is in the lower triangle
        return np.concatenate([lam, n, n]), np.concatenate([lam, lam, n])  # lower triangle

    def hessian(self, x: FloatArray, lagrange: FloatArray, obj_factor: float) -> FloatArray:
        *_, h_ll, h_nl, h_nn = self._delay_at(x)
        return obj_factor * np.concatenate([h_ll, h_nl, h_nn])

    def intermediate(self, *args: Any) -> bool:
        self.iterations += 1
        return True


def solve_nlp(q: QueueProblem, compact: bool = True) -> NlpSolution:
    """The relaxation's optimum by Ipopt over every (stream, node) column (``compact=False``: the reference form)."""
    return solve_restricted(q, None, compact)[0]


def solve_restricted(q: QueueProblem, cols: IntArray | None, compact: bool = True) -> tuple[NlpSolution, FloatArray]:
    """The optimum with x only on ``cols`` (flat c*J + j; None: all) and the rows' multipliers (for pricing).

    The compact form is tried first; where Ipopt fails on it even with the retries (a cluster with no
    room for any instance, found by hypothesis), the reference form, whose pricing rows sit at the same
    positions, answers instead.
    """
    if compact:
        try:
            return _solve_form(q, cols, compact=True)
        except SolverUnavailableError:
            raise
        except SolverError as exc:
            log.warning("Ipopt: %s on the compact queue NLP; solving its reference form", exc)
    return _solve_form(q, cols, compact=False)


def solve_warm(
    q: QueueProblem, cols: IntArray, warm: WarmStart, rows: float | None = None
) -> tuple[NlpSolution, FloatArray]:
    """``solve_restricted``'s compact form from ``warm`` (one attempt: raises SolverError where Ipopt fails).

    ``rows``: where Ipopt stops at its iteration limit (solver.queue_warm's polish), the status is "infeasible
    iterate" if its point breaks a row by more than this relative to max(1, the row's bound)."""
    return _solve_form(q, cols, True, warm, rows)


def _solve_form(
    q: QueueProblem, cols: IntArray | None, compact: bool, warm: WarmStart | None = None, rows_tol: float | None = None
) -> tuple[NlpSolution, FloatArray]:
    """One form of the restricted NLP by Ipopt, with the safer option sets as retries (none from ``warm``)."""
    try:
        import cyipopt
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise SolverUnavailableError("Ipopt (python package cyipopt-wheels)") from exc
    from solver.relaxation import ipopt_status

    p = q.base
    lay = warm.layout if warm is not None and warm.layout is not None else _Layout(q, cols, compact)
    if lay.C == 0 or lay.J == 0:
        empty = np.zeros((p.n_nodes, len(p.model_names)))
        return NlpSolution(np.zeros((lay.C, lay.J)), q.rate.copy(), empty, empty, 0.0, "optimal", 0), np.zeros(0)
    drop = _dropped_rows(q, lay)  # the full layout's rows Ipopt does not get (their multipliers come back 0)
    kept = np.ones(lay.rows, dtype=bool)
    kept[drop] = False
    full = warm.jacobian if warm is not None and warm.jacobian is not None else _jacobian(q, lay)
    rows, jcols, vals, cl, cu = _without_rows(full[0], full[1], full[2], full[3], full[4], drop)
    if warm is not None and warm.callbacks is not None:  # the caller's, built on this layout (no second build)
        callbacks = warm.callbacks
        callbacks.rows, callbacks.cols, callbacks.vals, callbacks.iterations = rows, jcols, vals, 0
    else:
        callbacks = _Callbacks(q, lay, (rows, jcols, vals))
    callbacks.m = len(cl)
    lb = np.zeros(lay.size)
    lb[lay.n0 : lay.n0 + lay.P] = N_MIN
    lb[lay.e0 :] = N_MIN
    ub = np.full(lay.size, np.inf)
    ub[lay.n0 + np.flatnonzero(lay.pinned)] = N_MIN
    ub[lay.lam0 + np.flatnonzero(lay.unused)] = 0.0
    ub[lay.e0 + np.flatnonzero(lay.pinned[lay.cored])] = N_MIN  # e <= n
    ub[: lay.r0] = q.rate[lay.cc]
    ub[lay.r0 : lay.lam0] = q.rate
    fast = compact and FEASIBLE_START
    start = warm.x if warm is not None else feasible_start(q, lay) if fast else _start(q, lay)
    options = IPOPT_NLP_COMPACT | warm.options if warm is not None else IPOPT_NLP_COMPACT if fast else IPOPT_NLP
    retries = IPOPT_NLP_RETRIES if warm is None else ()
    for attempt, change in enumerate(({}, *retries)):
        nlp = cyipopt.Problem(n=lay.size, m=len(cl), problem_obj=callbacks, lb=lb, ub=ub, cl=cl, cu=cu)
        for key, value in {**options, **change}.items():
            nlp.add_option(key, value)
        x, info = nlp.solve(start) if warm is None else nlp.solve(start, warm.mult_g[kept], warm.zl, warm.zu)
        last = attempt == len(retries)
        try:
            status = ipopt_status(int(info["status"]))
        except SolverError:
            if last:
                raise
            status = "failed"
        if status not in RETRIED or last:
            break
        log.warning(
            "Ipopt: %s (status %s) on the queue NLP; retrying with %s",
            status,
            info["status"],
            IPOPT_NLP_RETRIES[attempt],
        )
    x = np.asarray(x)
    if (
        warm is not None
        and status == "optimal"
        and _complementarity(x, info, (lb, ub, cl, cu)) > WARM_GAP * max(1.0, abs(float(info["obj_val"])))
    ):
        status = "not complementary"  # a KKT point only in name (a reviewer's case: a row multiplier of 74 on a
        # row with 1e-4 slack after a start outside a pinned pool's throughput row): the caller falls back
    if rows_tol is not None and status == "iteration_limit" and _breaks_rows(full, x, rows_tol):
        status = "infeasible iterate"  # every row of the full layout: the dropped idle rows rest on an optimum's
        # new <= n, which a stopped iterate does not promise
    flat = np.zeros(lay.C * lay.J)
    flat[lay.cols] = np.clip(x[: lay.r0], 0.0, None)
    xs = flat.reshape(lay.C, lay.J)
    lam = xs.T @ np.eye(lay.K)[p.class_model] if lay.C else np.zeros((lay.J, lay.K))
    n = np.clip(x[lay.n0 : lay.n0 + lay.P], 0.0, None).reshape(lay.J, lay.K)
    r = np.clip(x[lay.r0 : lay.lam0], 0.0, None)
    servers = None
    if len(lay.core_pools):
        servers = n.copy().ravel()
        servers[lay.cored] = np.clip(x[lay.e0 :], 0.0, None)
        servers = servers.reshape(lay.J, lay.K)
    value = float(info["obj_val"])
    sol = NlpSolution(xs, r, lam, n, value, status, callbacks.iterations, columns=len(lay.cols), servers=servers)
    mult = np.zeros(lay.rows)
    mult[kept] = np.asarray(info["mult_g"], dtype=float)
    # Pool rows' least valid multipliers: lam's lower-bound multiplier moves into its pool row (KKT kept).
    mult[lay.C : lay.C + lay.P] -= np.asarray(info["mult_x_L"], dtype=float)[lay.lam0 : lay.n0]
    # Assignment rows' likewise: the upper bounds x <= rate, r <= rate are implied by the row (nothing else is
    # negative), so a column at its bound (a stream wholly on it) moves its bound multiplier into the row.
    upper = np.asarray(info["mult_x_U"], dtype=float)
    mult[: lay.C] += np.bincount(lay.cc, weights=upper[: lay.r0], minlength=lay.C) + upper[lay.r0 : lay.lam0]
    # an unused pool's: -d(D - lam s)/dlam at lam = 0, which is 0 (no wait at no load), its rows being out
    mult[lay.C + np.flatnonzero(lay.unused)] = 0.0
    return sol, mult


def _breaks_rows(
    full: tuple[IntArray, IntArray, FloatArray, FloatArray, FloatArray], x: FloatArray, tol: float
) -> bool:
    """Whether the point ``x`` breaks a row of the linear constraints ``full`` (``_jacobian``'s triplets and bounds,
    dropped rows included) by more than ``tol`` relative to max(1, the row's bound); a NaN counts as broken."""
    rows, cols, vals, cl, cu = full
    g = np.asarray(np.bincount(rows, weights=vals * x[cols], minlength=len(cl)), dtype=float)
    return not _row_excess(g, cl, cu) <= tol


def _row_excess(g: FloatArray, cl: FloatArray, cu: FloatArray) -> float:
    """The largest amount by which the row values ``g`` break their bounds, relative to max(1, the row's bound) (0:
    none; an infinite bound is no bound; NaN where ``g`` has a NaN)."""
    low = np.where(np.isfinite(cl), np.abs(cl), 0.0)
    size = np.maximum(1.0, np.maximum(low, np.where(np.isfinite(cu), np.abs(cu), 0.0)))
    with np.errstate(invalid="ignore"):  # inf - inf where a bound is infinite: not read
        below = np.where(np.isfinite(cl), cl - g, 0.0)
        above = np.where(np.isfinite(cu), g - cu, 0.0)
    return float((np.maximum(np.maximum(below, above), 0.0) / size).max(initial=0.0))


def _complementarity(x: FloatArray, info: Mapping[str, Any], bounds: tuple[FloatArray, ...]) -> float:
    """The duality gap of Ipopt's point on a convex NLP: each multiplier times its row's or bound's slack, summed."""
    lb, ub, cl, cu = bounds
    g = np.asarray(info["g"], dtype=float)
    rows = np.abs(np.asarray(info["mult_g"], dtype=float)) * np.minimum(
        np.where(np.isfinite(cl), g - cl, np.inf), np.where(np.isfinite(cu), cu - g, np.inf)
    )
    zl = np.asarray(info["mult_x_L"], dtype=float) * np.where(np.isfinite(lb), x - lb, 0.0)
    zu = np.asarray(info["mult_x_U"], dtype=float) * np.where(np.isfinite(ub), ub - x, 0.0)
    return float(np.abs(rows).sum() + np.abs(zl).sum() + np.abs(zu).sum())


def _start(q: QueueProblem, lay: _Layout) -> FloatArray:
    """An interior-ish start: every stream spread evenly, pools half loaded."""
    p = q.base
    x0 = np.zeros(lay.size)
    per_class = q.rate / (np.bincount(lay.cc, minlength=lay.C) + 1)
    x0[: lay.r0] = per_class[lay.cc]
    x0[lay.r0 : lay.lam0] = per_class
    lam = np.zeros((lay.J, lay.K))
    np.add.at(lam, (lay.jj, p.class_model[lay.cc]), per_class[lay.cc])
    n = lam.ravel() / (0.5 * q.mu.ravel()) + 1e-3
    x0[lay.lam0 : lay.n0] = lam.ravel()
    x0[lay.n0 : lay.new0] = n
    x0[lay.new0 : lay.e0] = n[lay.linked]
    x0[lay.e0 :] = np.minimum(n[lay.cored], 0.5 * np.repeat(lay.cores, lay.K)[lay.cored] / lay.K)
    return x0
