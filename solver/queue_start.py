"""A feasible, centred start for Ipopt on the queue NLP (issue 16 item 5: fewer iterations where cores bind).

``solver.queue_model``'s plain start spreads every stream evenly over its columns with pools half loaded:
where a node's cores or memory bind, that point breaks the throughput and budget rows by far, and Ipopt
spent its first 15-40 iterations at the first barrier parameter creeping back to feasibility (steps of
1-5 %). This start is a greedy placement that keeps every row:

1. Streams, largest rate first, take their columns cheapest first (never one costing more than the
   stream's outside option ``r_cost``); a pool runs at the closed form's best load ``t*``
   (``solver.queue_fast``), its running instances first, then new ones while the node's memory, compute
   and cores (``SHRINK`` of them) hold; what is left goes to r.
2. A share ``SPREAD`` of every stream is spread evenly over its columns and r (a point strictly inside the
   bounds, near the centre, as an interior-point method wants).
3. Each pool gets the servers its rate needs at ``t*``, scaled down on a node where that overfills a
   budget; a pool whose rate then exceeds ``FILL`` of its throughput row sheds the excess to r.

The start changes Ipopt's path, never the problem: the optimum is the same (property tests against the
reference form, which keeps the plain start: ``tests/unit/test_queue_start.py``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from solver.problem import FloatArray

SHRINK = 0.9  # share of a node's budgets the greedy fills
SPREAD = 0.3  # share of each stream spread evenly over its columns and r
FILL = 0.95  # largest share of a pool's throughput row the start uses
MIN_SERVERS = 1e-3  # servers of a pool the start leaves (nearly) empty


def best_load(q: Any) -> FloatArray:
    """[j, k] the closed form's per-instance rate t* (``solver.queue_fast.free_pool_terms``) for ``q``."""
    a = math.sqrt(max(q.instance_cost, 0.0) / 1000.0)
    rho = a / (1.0 + a) if a > 0 else 0.5
    return np.asarray(np.minimum(rho, q.cap()) * q.mu)


def feasible_start(q: Any, lay: Any) -> FloatArray:
    """Ipopt's start for ``q`` in layout ``lay`` (``solver.queue_model._Layout``): greedy, spread, within rows."""
    p = q.base
    per = 1.0 / np.maximum(best_load(q), 1e-12)  # instances per req/s
    greedy = _greedy(q, lay, per)
    ncol = np.bincount(lay.cc, minlength=lay.C).astype(float)
    xs = (1.0 - SPREAD) * greedy + SPREAD * (q.rate / (ncol + 1.0))[lay.cc]
    lam = np.zeros(lay.P)
    np.add.at(lam, lay.jj * lay.K + p.class_model[lay.cc], xs)
    servers = _servers(q, lay, lam, per.ravel())
    limit = FILL * (q.cap() * q.mu).ravel() * servers
    keep = np.where(lam > limit, limit / np.maximum(lam, 1e-300), 1.0)  # a pool sheds what its servers lack
    xs = xs * keep[lay.jj * lay.K + p.class_model[lay.cc]]
    lam = lam * keep
    return _vector(q, lay, xs, lam, servers)


def _greedy(q: Any, lay: Any, per: FloatArray) -> FloatArray:
    """[X] rate per column: streams, largest first, on their cheapest columns within SHRINK of the budgets."""
    p = q.base
    cost = p.cost.ravel()[lay.cols]
    outside = np.full(lay.C, q.penalty()) if q.r_cost is None else np.asarray(q.r_cost, dtype=float)
    mem_left = SHRINK * np.maximum(p.mem_budget, 0.0)
    comp_left = SHRINK * np.maximum(p.comp_budget, 0.0)
    core_left = SHRINK * lay.cores
    free_left = p.free.astype(float).copy()  # running instances Mode 1 reuses (no memory, no compute)
    out = np.zeros(len(lay.cols))
    by_class: list[list[int]] = [[] for _ in range(lay.C)]
    for i in np.lexsort((cost, lay.cc)).tolist():
        by_class[int(lay.cc[i])].append(i)
    for c in np.argsort(-q.rate, kind="stable").tolist():
        k, need = int(p.class_model[c]), float(q.rate[c])
        for i in by_class[c]:
            if need <= 0 or cost[i] >= outside[c]:
                break
            j = int(lay.jj[i])
            unit = float(per[j, k])
            cores = core_left[j] / unit
            reuse = min(need, free_left[j, k] / unit, cores)
            room = min(_room(mem_left[j], p.mem[k] * unit), _room(comp_left[j], p.comp[k] * unit), cores - reuse)
            new = max(min(need - reuse, room), 0.0)
            free_left[j, k] -= reuse * unit
            mem_left[j] -= new * p.mem[k] * unit
            comp_left[j] -= new * p.comp[k] * unit
            core_left[j] -= (reuse + new) * unit
            out[i] = reuse + new
            need -= reuse + new
    return out


def _room(left: float, per_rate: float) -> float:
    return math.inf if per_rate <= 0 else max(left, 0.0) / per_rate


def _servers(q: Any, lay: Any, lam: FloatArray, per: FloatArray) -> FloatArray:
    """[P] each pool's servers at t*, scaled down per node to fit SHRINK of its memory, compute and cores."""
    p = q.base
    e = np.maximum(lam * per, MIN_SERVERS)
    new = np.maximum(e - p.free.ravel(), 0.0).reshape(lay.J, lay.K)
    used = (new @ p.mem, new @ p.comp, e.reshape(lay.J, lay.K).sum(axis=1))
    budgets = (np.maximum(p.mem_budget, 0.0), np.maximum(p.comp_budget, 0.0), lay.cores)
    scale = np.ones(lay.J)
    for use, budget in zip(used, budgets, strict=True):
        fits = SHRINK * budget
        scale = np.minimum(scale, np.where(use > fits, fits / np.maximum(use, 1e-300), 1.0))
    return np.asarray(np.maximum(e * np.repeat(scale, lay.K), MIN_SERVERS))


def _vector(q: Any, lay: Any, xs: FloatArray, lam: FloatArray, servers: FloatArray) -> FloatArray:
    """The variable vector in ``lay``'s order from column rates, pool rates and servers."""
    p = q.base
    x0 = np.zeros(lay.size)
    x0[: lay.r0] = xs
    x0[lay.r0 : lay.lam0] = np.maximum(q.rate - np.bincount(lay.cc, weights=xs, minlength=lay.C), 0.0)
    x0[lay.lam0 : lay.n0] = lam
    n = servers * 1.02 + MIN_SERVERS  # e <= n strictly where e is a variable
    x0[lay.n0 : lay.new0] = n
    free = p.free.ravel().astype(float)
    x0[lay.new0 : lay.e0] = np.maximum(n[lay.linked] - free[lay.linked], 0.0) + MIN_SERVERS
    x0[lay.e0 :] = servers[lay.cored]
    return x0
