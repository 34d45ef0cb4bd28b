"""Pool closing for the queue-aware placement: whole instances the relaxation opened but the plan does not need.

The relaxation prices an instance by its fractional count, so a pool that carries a sliver of a stream
(one tiny stream split 0.99999 / 0.00001 by Ipopt) costs it almost nothing, yet rounding opens a whole
instance there. After repair, on the integer placement:

1. Close: a pool whose streams all fit into the model's other open pools (every budget and the spread
   bound kept) is emptied there when the integer objective does not rise.
2. Move: a pool whose streams, moved whole to one of the ``MOVE_CANDIDATES`` nodes cheapest for them,
   fit there and lower the integer objective, is moved.

The integer objective is the relaxation's at whole instance counts (request-ms per second): RTT +
execution per request, the M/M/1 wait of every open pool, ``instance_cost`` per new instance and the
rejection penalty. Every step lowers it or closes a pool without raising it, so the passes end.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from solver.node_cpu import effective_servers
from solver.problem import FloatArray, IntArray
from solver.queue_repair import TINY, Pools, _evacuate, needed
from solver.ties import ascending

log = logging.getLogger(__name__)

MOVE_CANDIDATES = 3  # nodes a whole pool may move to (cheapest for its streams first)


def integer_objective(pools: Pools, state: tuple[FloatArray, IntArray] | None = None) -> float:
    """The relaxation's objective at the placement's whole instance counts (request-ms per second).

    ``state``: the current (lam, counts), where the caller has them."""
    q, p = pools.q, pools.q.base
    lam, counts = pools.state() if state is None else state
    total = float((pools.x * p.cost).sum()) + pools.penalty * float(pools.rejected.sum())
    total += q.instance_cost * float(np.maximum(counts - p.free, 0).sum())
    open_ = counts > 0
    n = np.where(open_, effective_servers(counts, pools.cores), 1.0)  # a node's cores shared by its instances
    # without cores the clip guards float residue; at cores repair lets a busy pool past its equal share where the
    # node's busy work fits (up to 1.8x), and the clip prices it as at rho_max: below the relaxation, a search-only
    # inaccuracy where the node is stable (docs/solver.md, "The integer objective at cores")
    t = np.minimum(lam / n, q.rho_max * q.mu)
    wait = np.where(open_, lam * (1000.0 / (q.mu - t) - pools.service_ms), 0.0)
    return total + float(wait.sum())


def spread_excess(pools: Pools, k: int) -> bool:
    """Whether model k runs more instances in some node class than its need at ``rho_max`` plus one spare."""
    q = pools.q
    lam, counts = pools.state()
    load = np.bincount(pools.node_group, weights=lam[:, k] / (q.rho_max * q.mu[:, k]))
    running = np.bincount(pools.node_group, weights=counts[:, k])
    return bool(np.any(running > np.ceil(load - 1e-9) + 1))


def close_pools(pools: Pools) -> int:
    """Steps 1 and 2 of the module docstring until neither applies; returns how many pools closed or moved."""
    steps = 0
    failed: dict[tuple[int, int], Signature] = {}
    for _ in range(4 * pools.counts().size + 1):  # each step closes a pool or strictly lowers the objective
        if not (_close_one(pools, failed) or _move_one(pools)):
            break
        steps += 1
    return steps


def closable(pools: Pools) -> list[tuple[int, int]]:
    """Open pools that step 1 would close now (empty after ``close_pools``: the invariant tests check)."""
    out = []
    for j, k in _open_pools(pools):
        saved = pools.x.copy()
        if _try_close(pools, j, k, integer_objective(pools)):
            out.append((j, k))
        pools.x = saved
    return out


def _open_pools(pools: Pools) -> list[tuple[int, int]]:
    """Pools with traffic, smallest rate first (near-ties in pool order: solver.ties)."""
    lam = pools.lam()
    open_ = [(int(j), int(k)) for j, k in zip(*np.nonzero(lam > TINY), strict=True)]
    K = lam.shape[1]
    return [divmod(f, K) for f in ascending([j * K + k for j, k in open_], [float(lam[jk]) for jk in open_])]


def _try_close(pools: Pools, j: int, k: int, before: float) -> bool:
    """Empty pool (j, k) into the other open pools; keeps the move (True) if it fits and does not cost more."""
    saved = pools.x.copy()
    if not _evacuate(pools, j, k, set()):
        return False
    ok = pools.lam()[j, k] <= TINY and not pools.over_budget(pools.counts()) and not spread_excess(pools, k)
    if ok and integer_objective(pools) <= before + 1e-9 * max(1.0, abs(before)):
        return True
    pools.x = saved
    return False


def _worth_trying(pools: Pools, j: int, k: int, state: tuple[FloatArray, IntArray] | None = None) -> bool:
    """Whether closing pool (j, k) could pay (``close_screen``'s bound for this pool).

    ``state``: the current (lam, counts), where the caller has them."""
    lam, counts = state if state is not None else pools.state()
    if counts[j, k] == 0 or not np.any(np.delete(counts[:, k], j) > 0):
        return False
    p = pools.q.base
    others = [o for o in np.nonzero(counts[:, k] > 0)[0].tolist() if o != j]
    members = np.nonzero((p.class_model == k) & (pools.x[:, j] > 0))[0]
    extra = float(pools.x[members, j] @ (p.cost[members][:, others].min(axis=1) - p.cost[members, j]))
    saves, fall = close_screen(pools, lam, counts)
    gain = float(saves[j, k] + fall.sum(axis=0)[k] - fall[j, k])  # the model's other open pools' falls
    return extra <= gain + 1e-9 * max(1.0, gain)


LOOKAHEAD = 4  # instances added one at a time when bounding how far a destination pool's term can fall
SCREEN_FALLS = True  # count the destinations' falls (switched off only to show the closing test failing)


def _wait(pools: Pools, lam: FloatArray, servers: FloatArray) -> FloatArray:
    """[j, k] the integer objective's wait term of every pool at rates ``lam`` on ``servers`` effective servers
    (any leading axes broadcast: the same operations per element)."""
    q = pools.q
    positive = servers > 0
    t = np.minimum(lam / np.where(positive, servers, 1.0), q.rho_max * q.mu)
    return np.asarray(np.where((lam > 0) & positive, lam * (1000.0 / (q.mu - t) - pools.service_ms), 0.0))


def close_screen(pools: Pools, lam: FloatArray, counts: IntArray) -> tuple[FloatArray, FloatArray]:
    """[j, k] bounds for the close screen: what closing pool (j, k) saves besides its streams' RTT + execution
    change (its own term, and the wait the node's other pools lose when their share of its cores grows),
    and how far pool (j, k)'s term can fall when it takes more rate (it may open an instance that cuts its
    wait by more than the instance costs). Closing cannot pay unless the streams' extra RTT + execution is
    at most the saving plus the falls of the model's other open pools."""
    q, p = pools.q, pools.q.base
    cores = np.asarray(pools.cores, dtype=float)[:, None]
    n = counts.astype(float)
    total = n.sum(axis=1, keepdims=True)
    cored = bool(np.isfinite(cores).any())  # without cores every share is 1.0 and x * 1.0 is x: skipped
    own, wait = own_terms(pools, lam, counts, n, cored)
    # node j's other pools when pool (j, k) closes: each of its instances then gets C / (T - n_jk) of a core
    saves = np.where(counts > 0, own, 0.0)
    # where no node has more instances than cores, every share below is 1 and ``lost`` is exactly 0
    if cored and np.any(total > cores):
        saves += _shares_lost(pools, lam, n, cores, total, wait, counts > 0)
    if not SCREEN_FALLS:
        return saves, np.zeros_like(saves)
    best = q.instance_cost * np.maximum(n + LOOKAHEAD + 1 - p.free, 0.0) + lam * (1000.0 / q.mu - pools.service_ms)
    d = _AHEAD[:, None, None]  # the LOOKAHEAD instance counts at once, [d, j, k] (their min is order-free)
    servers = (n + d) * np.minimum(1.0, cores / (total + d)) if cored else n + d
    ahead = q.instance_cost * np.maximum(n + d - p.free, 0.0) + _wait(pools, lam, servers)
    best = np.minimum(best, ahead.min(axis=0))
    fall = np.where(counts > 0, np.maximum(own - best, 0.0), 0.0)
    return saves, fall


_AHEAD = np.arange(1, LOOKAHEAD + 1, dtype=float)


def own_terms(
    pools: Pools, lam: FloatArray, counts: IntArray, n: FloatArray | None = None, cored: bool | None = None
) -> tuple[FloatArray, FloatArray]:
    """([j, k] each pool's own term of the integer objective, its wait part): ``close_screen``'s first figures
    (``n``: the counts as floats; ``cored``: whether any node declares cores, where the caller has them)."""
    q, p = pools.q, pools.q.base
    n = counts.astype(float) if n is None else n
    cored = bool(np.isfinite(pools.cores).any()) if cored is None else cored
    wait = _wait(pools, lam, effective_servers(counts, pools.cores) if cored else n)
    return q.instance_cost * np.maximum(n - p.free, 0.0) + wait, wait


def _shares_lost(
    pools: Pools, lam: FloatArray, n: FloatArray, cores: FloatArray, total: FloatArray, wait: FloatArray, open_: Any
) -> FloatArray:
    """[j, k] the wait node j's other pools lose when pool (j, k) closes and their share of the cores grows
    (every k at once on a [k, j, k2] array: the same sums as one k at a time)."""
    K = n.shape[1]
    rest = np.maximum(total[None, :, :] - n.T[:, :, None], 1e-12)  # [k, j, 1]: node j's instances without (j, k)
    lost = wait[None] - _wait(pools, lam[None], n[None] * np.minimum(1.0, cores[None] / rest))  # [k, j, k2]
    mine = lost[np.arange(K), :, np.arange(K)]  # [k, j]: lost[k, j, k]
    return np.where(open_, (lost.sum(axis=2) - mine).T, 0.0)


Signature = tuple[np.ndarray, ...]


def _signature(pools: Pools, k: int, counts: IntArray, mem: FloatArray, comp: FloatArray) -> Signature:
    """What closing a pool of model k depends on: model k's rates, and the memory and compute used (``mem``,
    ``comp`` [j]) on the nodes where model k has open pools (the only places its streams can go)."""
    nodes = np.flatnonzero(counts[:, k] > 0)
    return pools.x[pools.q.base.class_model == k].copy(), nodes, mem[nodes], comp[nodes]


def _close_one(pools: Pools, failed: dict[tuple[int, int], Signature] | None = None) -> bool:
    """Close the first pool (smallest rate first) that step 1 can close; ``failed`` remembers the pools that
    could not be closed and skips them while nothing they depend on has changed (``_signature``)."""
    p = pools.q.base
    before = integer_objective(pools)
    failed = {} if failed is None else failed
    lam, counts = pools.state()
    new = np.maximum(counts - p.free, 0)
    mem, comp = new @ p.mem, new @ p.comp
    for j, k in _open_pools(pools):
        if not _worth_trying(pools, j, k, (lam, counts)):
            continue
        sig = _signature(pools, k, counts, mem, comp)
        old = failed.get((j, k))
        if old is not None and all(np.array_equal(a, b) for a, b in zip(old, sig, strict=True)):
            continue
        if _try_close(pools, j, k, before):
            log.debug("closed pool %s/%s", pools.q.base.node_ids[j], pools.q.base.model_names[k])
            return True
        failed[(j, k)] = sig
    return False


def _pool_term(pools: Pools, j: int, k: int, lam: float) -> float:
    """Pool (j, k)'s part of ``integer_objective`` at arrival rate ``lam``: its new instances and its wait."""
    q = pools.q
    n = int(needed(np.array(lam), np.array(pools.cap[j, k])))
    if n == 0:
        return 0.0
    mu = float(q.mu[j, k])
    t = min(lam / n, q.rho_max * mu)
    wait = lam * (1000.0 / (mu - t) - float(pools.service_ms[j, k]))
    return q.instance_cost * max(n - int(q.base.free[j, k]), 0) + wait


def _move_one(pools: Pools) -> bool:
    """Move one whole pool to a node where its streams cost less in all (step 2)."""
    p = pools.q.base
    before = integer_objective(pools)
    for j, k in _open_pools(pools):
        members = np.nonzero((p.class_model == k) & (pools.x[:, j] > 0))[0]
        weights = pools.x[members, j]
        order = np.argsort(weights @ p.cost[members], kind="stable").tolist()
        lam = pools.lam()[:, k]
        here = _pool_term(pools, j, k, 0.0) - _pool_term(pools, j, k, float(lam[j]))
        for dst in [d for d in order if d != j][:MOVE_CANDIDATES]:
            moved = float(weights @ (p.cost[members, dst] - p.cost[members, j]))
            gain = moved + here + _pool_term(pools, dst, k, float(lam[dst] + weights.sum()))
            if gain - _pool_term(pools, dst, k, float(lam[dst])) >= 0.0:
                continue  # only pools (j, k) and (dst, k) change: the move cannot lower the objective
            saved = pools.x.copy()
            pools.x[members, dst] += weights
            pools.x[members, j] = 0.0
            fits = not pools.over_budget(pools.counts()) and not spread_excess(pools, k)
            if fits and integer_objective(pools) < before - 1e-9 * max(1.0, abs(before)):
                return True
            pools.x = saved
    return False
