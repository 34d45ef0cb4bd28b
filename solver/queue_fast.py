"""The queue NLP's optimum with Ipopt only where a capacity row binds: closed-form pools everywhere else.

A pool that reuses no running instance (free = 0) on a node whose memory and compute rows do not bind
picks its instance count freely at price ``beta`` per instance. -dD/dn = 1000 (t / (mu - t))^2 at
per-instance rate t, so its best load is rho* with rho* / (1 - rho*) = sqrt(beta / 1000), capped at the
pool's load cap, and n = lam / t*, t* = rho* mu. D is homogeneous in (lam, n), so the pool then costs a
constant ``w = 1000 / (mu - t*) - 1000 / mu + beta / t*`` per req/s: it is linear. Drop the rows of
every node outside a set S (the relaxation R(S)); then every stream's best column outside S is its one
of least ``cost_cj + w_jk`` (the others never carry rate), and only S's nodes need lam, n and rows:

1. S: nodes with a pool that reuses instances (free > 0: its cost is not linear below free * t*) where
   the closed form leaves that pool short of free * t* (above it, the pool opens new instances at t*
   and costs w per req/s on the margin, as any other: ``LINEAR_REUSE``), and nodes whose budgets
   (memory, compute, cores: solver.node_cpu) the closed form overfills (every stream whole on its
   least-cost node, n = lam / t*; outside S a pool's effective servers are its n).
2. S empty: the closed form is R(S)'s optimum, no Ipopt at all. Else Ipopt solves R(S) on S's nodes
   with one outside column per stream (its best node outside S, or rejection where the penalty is
   lower): warm-started from ``solver.queue_dual``'s proven column generation and certified by pricing
   (``solver.queue_warm``), else cold through ``solver.queue_lazy`` (the column generation's own answer
   in Ipopt's place where ``queue_dual.ENABLED``).
3. Recheck the dropped rows: nodes outside S that the result overfills, or whose reused pools it
   leaves short of free * t*, join S; repeat.

R(S) relaxes the NLP; an optimum of R(S) that keeps every dropped row is feasible for the NLP, hence
its optimum. After ``MAX_ROUNDS``, a non-optimal solve, or with ``beta <= 0`` (no finite best load)
the whole NLP is solved (``fallback``).
"""

from __future__ import annotations

import dataclasses
import logging
import math

import numpy as np
import numpy.typing as npt

from solver.problem import FloatArray
from solver.queue_dual import solve_binding
from solver.queue_lazy import solve_nlp_lazy
from solver.queue_model import N_MIN, NlpSolution, QueueProblem
from solver.queue_warm import solve_certified

log = logging.getLogger(__name__)

MAX_ROUNDS = 4
GREEDY_START = True  # start S with the nodes a greedy placement fills (saves re-solves)
PRUNE = True  # leave out the columns of R(S) that cannot carry rate (see _restricted)
KEEP_REUSE = True  # ... but never those into pools with running instances (their marginal cost can be below w)
RECHECK = True  # check the dropped rows (switched off only to show the property test catching it)
LINEAR_REUSE = True  # leave out of S the nodes whose reused pools the closed form fills (see _short_of_reuse)
REUSE_MARGIN = 0.25  # ... by this share more than free * t* (R(S) may draw rate away: a re-solve costs more)
BoolArray = npt.NDArray[np.bool_]


def free_pool_terms(q: QueueProblem) -> tuple[FloatArray, FloatArray]:
    """[j, k] per-request cost w and best per-instance rate t* of a pool with no reuse and no binding row."""
    a = math.sqrt(q.instance_cost / 1000.0)
    t = np.minimum(a / (1.0 + a), q.cap()) * q.mu
    return np.asarray(1000.0 / (q.mu - t) - q.service_ms + q.instance_cost / t), np.asarray(t)


def solve_nlp_fast(q: QueueProblem) -> NlpSolution:
    """The NLP's optimum (as ``solve_nlp_lazy``): closed form outside the nodes where capacity binds."""
    p = q.base
    if q.instance_cost <= 0 or p.n_classes == 0 or p.n_nodes == 0:
        return solve_nlp_lazy(q)
    w, t_best = free_pool_terms(q)
    total = p.cost + w[:, p.class_model].T  # [c, j] each column's cost per req/s at its pool's closed form
    model_of = np.eye(len(p.model_names))[p.class_model]  # [c, k] the pools' rates are x.T @ this
    in_s = _reuse_nodes(q, w, t_best, total, model_of)
    if GREEDY_START:
        in_s |= _filled_by_greedy(q, w, t_best, in_s, total)
    iterations = columns = 0
    for rounds in range(1, MAX_ROUNDS + 1):
        x, r, n_out = _outside(q, w, t_best, in_s, total)
        e_out = n_out.copy()
        if in_s.any():
            sub_q, allowed = _restricted(q, in_s, x, r, total)
            sub = _solve_sub(sub_q, allowed)
            iterations += sub.iterations
            columns = int(allowed.sum())
            if sub.status != "optimal":
                log.info("queue NLP on %d nodes: %s; solving the whole NLP", int(in_s.sum()), sub.status)
                break
            x, r = _merge(q, in_s, x, r, sub)
            n_out[in_s] = sub.n
            e_out[in_s] = sub.effective()
        lam = x.T @ model_of
        n = np.where(in_s[:, None], n_out, np.maximum(lam / t_best, N_MIN))
        e = np.where(in_s[:, None], e_out, n)
        cores = q.cores()
        over = (_overfilled(q, n, cores) | _short_of_reuse(q, lam, t_best)) & ~in_s
        if not over.any() or not RECHECK:
            value = objective_value(q, x, r, n, e, lam)
            servers = e if np.isfinite(cores).any() else None
            return NlpSolution(x, r, lam, n, value, "optimal", iterations, rounds, columns, servers=servers)
        in_s |= over
    full = solve_nlp_lazy(q)
    return dataclasses.replace(full, iterations=iterations + full.iterations, fallback=True)


def _reuse_nodes(
    q: QueueProblem,
    w: FloatArray,
    t_best: FloatArray,
    total: FloatArray | None = None,
    model_of: FloatArray | None = None,
) -> BoolArray:
    """[j] nodes with reused pools (free > 0) that S needs: all of them, or (``LINEAR_REUSE``) those the closed
    form over every node does not fill ``REUSE_MARGIN`` beyond free * t*."""
    reuse: BoolArray = np.asarray((q.base.free > 0).any(axis=1))
    if not LINEAR_REUSE or not reuse.any():
        return reuse
    x, _, _ = _outside(q, w, t_best, np.zeros(q.base.n_nodes, dtype=bool), total)
    lam = x.T @ (np.eye(len(q.base.model_names))[q.base.class_model] if model_of is None else model_of)
    return _short_of_reuse(q, lam, t_best, REUSE_MARGIN)


def _short_of_reuse(q: QueueProblem, lam: FloatArray, t_best: FloatArray, margin: float = 0.0) -> BoolArray:
    """[j] nodes with a reused pool whose rate lam [j, k] is below (1 + margin) free * t*.

    Above it the pool's best instance count is lam / t* >= free (new instances at t*, the running ones
    free): its cost is linear, w per req/s, as the closed form takes it. Below, its marginal cost is less
    than w (the running instances serve for nothing): only Ipopt on S gets its share right.
    """
    free = q.base.free
    short = (free > 0) & (lam < (1.0 + margin) * free * t_best * (1 - 1e-9))
    return np.asarray(short.any(axis=1))


def _outside(
    q: QueueProblem, w: FloatArray, t_best: FloatArray, in_s: BoolArray, total: FloatArray | None = None
) -> tuple[FloatArray, ...]:
    """Every stream whole on its least-cost node outside S (or rejected, if cheaper); n [j, k] zero in S.
    ``total``: ``p.cost + w[:, class_model].T`` where the caller has it (read, not changed)."""
    p = q.base
    total = np.where(in_s, np.inf, p.cost + w[:, p.class_model].T if total is None else total)  # [c, j]
    best = np.argmin(total, axis=1)
    value = total[np.arange(p.n_classes), best]
    served = value < q.penalty()
    x = np.zeros((p.n_classes, p.n_nodes))
    x[np.arange(p.n_classes)[served], best[served]] = q.rate[served]
    r = np.where(served, 0.0, q.rate)
    return x, r, np.zeros(q.mu.shape)


def _filled_by_greedy(
    q: QueueProblem, w: FloatArray, t_best: FloatArray, in_s: BoolArray, total: FloatArray | None = None
) -> BoolArray:
    """[j] nodes whose budgets (cores too) fill up when streams, largest first, take their least-cost nodes with
    room left (``total`` as in ``_outside``)."""
    p = q.base
    total = p.cost + w[:, p.class_model].T if total is None else total
    order = np.argsort(total, axis=1, kind="stable").tolist()
    # Python floats and lists: the loop reads single entries (numpy's scalar indexing costs ~10x; same IEEE doubles)
    mem_left = np.maximum(p.mem_budget, 0.0).tolist()
    comp_left = np.maximum(p.comp_budget, 0.0).tolist()
    core_left = q.cores().tolist()  # closed-form instances (n = lam / t*) a node's cores hold
    full = [False] * p.n_nodes
    skip = in_s.tolist()
    mem, comp, rates, costs = p.mem.tolist(), p.comp.tolist(), q.rate.tolist(), total.tolist()
    per_rate = (1.0 / t_best).tolist()  # [j][k] instances per req/s
    penalty = q.penalty()
    models = p.class_model.tolist()
    for c in np.argsort(-q.rate, kind="stable").tolist():
        k, need, row = models[c], rates[c], costs[c]
        for j in order[c]:
            if need <= 0 or row[j] >= penalty:
                break
            if skip[j] or full[j]:
                continue
            per = per_rate[j][k]
            # the room left in req/s under each budget (inf where the pool needs none of it)
            m_rate, c_rate = mem[k] * per, comp[k] * per
            room = min(
                math.inf if m_rate <= 0 else max(mem_left[j], 0.0) / m_rate,
                math.inf if c_rate <= 0 else max(comp_left[j], 0.0) / c_rate,
            )
            room = min(room, math.inf if per <= 0 else max(core_left[j], 0.0) / per)
            take = min(need, room)
            mem_left[j] -= take * mem[k] * per
            comp_left[j] -= take * comp[k] * per
            core_left[j] -= take * per
            need -= take
            full[j] = room <= take  # it took all the room left
    return np.array(full, dtype=bool)


def _restricted(
    q: QueueProblem, in_s: BoolArray, x: FloatArray, r: FloatArray, total: FloatArray | None = None
) -> tuple[QueueProblem, BoolArray]:
    """R(S) on S's nodes (the rejection column becomes each stream's outside option at its cost) and the
    columns [c, j in S] that may carry rate in it.

    A pool's marginal cost per req/s is at least w (its cost at no capacity price) unless it reuses running
    instances, so a column to a pool without reuse whose ``cost + w`` is not below the stream's outside
    option has a reduced cost >= 0 at R(S)'s optimum: it stays out, and a stream with no column left takes
    its outside option (``PRUNE``).
    """
    p = q.base
    nodes = np.flatnonzero(in_s)
    outside = np.full(p.n_classes, q.penalty())
    placed = x.sum(axis=1) > 0
    if total is None:
        w, _ = free_pool_terms(q)
        total = p.cost + w[:, p.class_model].T
    outside[placed] = np.minimum(outside[placed], (total * (x > 0)).sum(axis=1)[placed])
    allowed = np.ones((p.n_classes, len(nodes)), dtype=bool)
    if PRUNE:
        reuse = (p.free[nodes][:, p.class_model].T > 0) & KEEP_REUSE
        allowed = reuse | (total[:, nodes] < outside[:, None] * (1 + 1e-9))
    base = dataclasses.replace(
        p,
        node_ids=tuple(p.node_ids[j] for j in nodes),
        cost=p.cost[:, nodes],
        free=p.free[nodes],
        mem_budget=p.mem_budget[nodes],
        comp_budget=p.comp_budget[nodes],
        current=p.current[nodes],
    )
    return dataclasses.replace(
        q,
        base=base,
        mu=q.mu[nodes],
        node_class=tuple(q.node_class[j] for j in nodes),
        load_cap=None if q.load_cap is None else q.load_cap[nodes],
        r_cost=outside,
    ), allowed


def _solve_sub(q: QueueProblem, allowed: BoolArray) -> NlpSolution:
    """R(S)'s optimum: by column generation where it proves it (solver.queue_dual, switched on), else by Ipopt
    warm from that proof (solver.queue_warm), else by Ipopt cold (solver.queue_lazy)."""
    if not allowed.any():
        return _all_outside(q)
    exact = solve_binding(q, allowed)
    exact = exact if exact is not None else solve_certified(q, allowed)
    return exact if exact is not None else solve_nlp_lazy(q, allowed=allowed)


def _all_outside(q: QueueProblem) -> NlpSolution:
    """R(S)'s optimum when no column of S may carry rate: every stream on its outside option."""
    n = np.full(q.mu.shape, N_MIN)
    lam = np.zeros(q.mu.shape)
    return NlpSolution(np.zeros((q.base.n_classes, q.base.n_nodes)), q.rate.copy(), lam, n, 0.0, "optimal", 0)


def _merge(
    q: QueueProblem, in_s: BoolArray, x: FloatArray, r: FloatArray, sub: NlpSolution
) -> tuple[FloatArray, FloatArray]:
    """The full x, r from R(S)'s solution: its r goes to each stream's outside option (node or rejection)."""
    out = np.zeros_like(x)
    out[:, in_s] = sub.x
    placed = x.sum(axis=1) > 0
    best = np.argmax(x, axis=1)
    rows = np.flatnonzero(placed)
    out[rows, best[rows]] += sub.r[rows]
    return out, np.where(placed, 0.0, sub.r)


def _overfilled(q: QueueProblem, n: FloatArray, cores: FloatArray | None = None) -> BoolArray:
    """[j] nodes whose instances exceed the NLP's memory, compute or core rows (with their N_MIN slack);
    ``cores``: ``q.cores()`` where the caller has it."""
    p = q.base
    new = np.maximum(n - p.free, 0.0)
    mem_cu = np.maximum(p.mem_budget, 0.0) + N_MIN * float(np.sum(p.mem))
    comp_cu = np.maximum(p.comp_budget, 0.0) + N_MIN * float(np.sum(p.comp))
    tol = 1e-9
    cores = np.maximum(q.cores() if cores is None else cores, 2 * N_MIN * len(p.model_names))  # as the core rows
    return np.asarray(
        (new @ p.mem > mem_cu * (1 + tol) + tol)
        | (new @ p.comp > comp_cu * (1 + tol) + tol)
        | (n.sum(axis=1) > cores * (1 + tol) + tol),
    )


def objective_value(
    q: QueueProblem,
    x: FloatArray,
    r: FloatArray,
    n: FloatArray,
    servers: FloatArray | None = None,
    lam: FloatArray | None = None,
) -> float:
    """The NLP's objective at rates x [c, j], rejections r [c], instance counts n and effective servers [j, k]
    (``lam``: the pools' rates x.T @ eye[class_model] where the caller has them)."""
    p = q.base
    lam = x.T @ np.eye(len(p.model_names))[p.class_model] if lam is None else lam
    n = np.maximum(n, N_MIN)
    e = np.maximum(n if servers is None else servers, N_MIN)
    t = lam / e
    tm = q.rho_max * q.mu
    tc = np.minimum(t, tm)
    gap = q.mu - tc
    g = np.where(t <= tm, 1000.0 * tc / gap, 1000.0 * tc / gap + 1000.0 * q.mu / gap**2 * (t - tm))
    wait = float((e * g - lam * q.service_ms).sum())
    new = float(np.maximum(n - p.free, 0.0).sum())
    return float((p.cost * x).sum()) + q.penalty() * float(r.sum()) + wait + q.instance_cost * new
