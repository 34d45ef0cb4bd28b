"""A node's parallel compute is shared by its instances (issue 16: the per-node throughput limit).

``n`` instances of a model on a node are not ``n`` independent servers: they share the node's cores (or
GPU streams). A node with ``cores`` of them does at most ``cores`` seconds of service per second, so

    busy_j = sum_k lam_jk / mu_jk <= rho_max * cores_j                (the node's busy work)

and a pool's delay is that of its *effective* servers: the instances it runs, but no more than the
cores the node gives it (``e_jk <= n_jk``, ``sum_k e_jk <= cores_j``). In the relaxation
(``solver.queue_model``) ``e`` is a variable and the optimiser allots the cores; on an integer
placement the plan's figures (objective, per-model latency, planned queues) and the running placement's
value share them by load (``allot_cores``: the minimum-wait allotment, every pool short of cores at one
utilisation), which is feasible at ``rho_max`` exactly where repair's two core checks pass. The integer
part's search still prices a move by ``effective_servers``' equal slice per instance where a node runs
more instances than it has cores (rate-independent, cheap). Nodes without ``cores`` have no limit.

An instance may serve several requests at once (a model server's thread pool; Triton's instance group):
on node j it has ``slots_j = min(concurrency_j, max(cores_j, 1))`` slots (``node_slots``; no concurrency:
1). The queue model then sees it as one server at ``slots_j`` times the rate, and the node's cores hold
``cores_j / slots_j`` such instances (solver.queue_model.build_queue_problem, QueueProblem.cores).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from solver.problem import FloatArray, Problem

TOL = 1e-6  # relative slack on the busy-work row (the relaxation meets it to Ipopt's tolerance)


def node_cores(p: Problem) -> FloatArray:
    """[j] the parallel capacity of each of ``p``'s nodes (inf where the snapshot gives none)."""
    by_id = {n.id: n.cores for n in p.snapshot.nodes}
    return np.array([np.inf if by_id.get(i) is None else float(by_id[i] or np.inf) for i in p.node_ids], dtype=float)


def node_slots(p: Problem) -> FloatArray:
    """[j] requests one instance serves at once on each of ``p``'s nodes: min(concurrency, max(cores, 1)), >= 1."""
    if all(n.concurrency is None for n in p.snapshot.nodes):
        return np.ones(len(p.node_ids))  # one slot everywhere (every snapshot before concurrency)
    nodes = {n.id: n for n in p.snapshot.nodes}
    cores = np.maximum(node_cores(p), 1.0)
    wanted = [nodes[i].concurrency if i in nodes else None for i in p.node_ids]
    conc = np.array([1.0 if c is None else max(float(c), 1.0) for c in wanted], dtype=float)
    return np.asarray(np.minimum(conc, cores))


def busy(lam: FloatArray, mu: FloatArray) -> FloatArray:
    """[j] seconds of service per second the pools' rates ``lam`` [j, k] ask of each node (``ndarray.sum``'s own
    reduction called directly: the same sums without its Python wrapper, which costs as much on these sizes)."""
    return np.asarray(np.add.reduce(np.divide(lam, mu, dtype=float), axis=1))


def core_room(lam: FloatArray, mu: FloatArray, cores: FloatArray, rho_max: float) -> FloatArray:
    """[j] busy work each node can still take (seconds per second; inf without a limit)."""
    return np.subtract(np.multiply(rho_max, cores, dtype=float), busy(lam, mu))


def over_cores(lam: FloatArray, mu: FloatArray, cores: FloatArray, rho_max: float) -> FloatArray:
    """[j] whether a node's busy work exceeds ``rho_max`` of its cores."""
    limit = np.multiply(rho_max, cores, dtype=float)
    return np.greater(busy(lam, mu), limit * (1 + TOL) + TOL)


def effective_servers(counts: npt.ArrayLike, cores: FloatArray) -> FloatArray:
    """[j, k] the servers each pool really has: its instance ``counts`` where the node has a core for each,
    else the node's cores shared equally by its instances (``counts x cores / sum_k counts``).

    Independent of the rates, so a delay over these servers stays convex in the rates (solver.hold's
    Frank-Wolfe needs that); the relaxation allots the cores per pool instead and is never worse."""
    counts = np.asarray(counts, dtype=float)
    total = np.add.reduce(counts, axis=1)  # counts.sum(axis=1) without its Python wrapper
    share = np.where(total > cores, cores / np.where(total > 0, total, 1.0), 1.0)
    return np.asarray(np.multiply(counts, share[:, None]))


ALLOT_BY_LOAD = True  # the plan's figures share a node's cores by busy work (False: the equal split per instance)


def allot_cores(lam: FloatArray, mu: FloatArray, counts: npt.ArrayLike, cores: FloatArray) -> FloatArray:
    """[j, k] the cores each pool gets where its node shares them by load: equal utilisation for every pool below
    its instance count (``e = min(n, b / rho*)``, ``b = lam / mu``, ``sum_k e = cores``); idle pools get none.

    Minimises the pools' total wait over the allotments (``sum_k e_k <= cores``, ``e_k <= n_k``) for any
    convex per-server delay of the load: its KKT conditions equalise the load of the uncapped pools. So it is
    the relaxation's own allotment, what a work-conserving scheduler approaches, and feasible at ``rho_max``
    exactly where repair's checks pass (``sum b <= rho_max cores`` and ``b <= rho_max n``)."""
    return allot_with_level(lam, mu, counts, cores)[0]


def allot_with_level(
    lam: FloatArray, mu: FloatArray, counts: npt.ArrayLike, cores: FloatArray
) -> tuple[FloatArray, FloatArray]:
    """(``allot_cores``, [j] the node's water level ``rho*``: the load of its uncapped pools, 0 where no busy pool
    is short of cores). One sort per node, vectorised: the pools whose own load ``b / n`` is highest are capped
    at ``n`` first; with the top ``m`` capped, ``rho*_m = (sum of the rest's b) / (cores - sum of the top m's
    n)``, which falls with m while pool m is busier than it and rises after: ``rho*`` is the least of them."""
    n = np.asarray(counts, dtype=float)
    lam, mu = np.asarray(lam, dtype=float), np.asarray(mu, dtype=float)
    b = lam / mu  # [j, k] busy work, divided once (the rows' work below is this array's rows: the same quotients)
    on = (n > 0) & (b > 0)  # busy: work to do (a rate so small its work underflows to 0 is idle)
    e = np.where(on, n, 0.0)
    # the node's busy pools want its cores or more: only those rows are allotted. ">=": where they fill the cores
    # exactly, the level is their load (an idle pool's first request would share it), not 0
    short = (e.sum(axis=1) >= cores) & e.any(axis=1)
    if short.all():  # every node short of cores (the usual case where nodes declare them): no row selection
        return _water_fill(b, e, np.asarray(cores, dtype=float))
    level = np.zeros(len(e))
    if short.any():
        e[short], level[short] = _water_fill(b[short], e[short], np.asarray(cores)[short])
    return e, level


def _water_fill(b: FloatArray, n: FloatArray, cores: FloatArray) -> tuple[FloatArray, FloatArray]:
    """``allot_with_level`` on nodes short of cores: [j, k] busy work ``b`` (0 where idle), counts ``n`` of the
    busy pools (0 elsewhere), [j] cores below ``n``'s row sums."""
    on = n > 0
    own = np.where(on, b / np.where(on, n, 1.0), -1.0)  # [j, k] a pool's load on all its instances
    order = np.argsort(-own, axis=1, kind="stable")
    rows = np.arange(len(n))[:, None]  # take_along_axis's own index, made once for the three gathers
    b_on = np.where(on, b, 0.0)
    own_s, b_s, n_s = own[rows, order], b_on[rows, order], n[rows, order]
    capped_n = np.cumsum(n_s, axis=1) - n_s  # [j, m] n of the pools ranked above m
    rest_b = np.cumsum(b_s[:, ::-1], axis=1)[:, ::-1]  # [j, m] b of pool m and those below it
    room = cores[:, None] - capped_n
    # capping pool m lowers the level exactly while m's own load is above it, so the level is the least one
    rho = np.where((own_s > 0) & (room > 0), rest_b / np.where(room > 0, room, 1.0), np.inf).min(axis=1)
    return np.where(on, np.minimum(n, b_on / rho[:, None]), 0.0), rho


def pool_servers(
    lam: FloatArray, mu: FloatArray, counts: npt.ArrayLike, cores: FloatArray
) -> tuple[FloatArray, FloatArray]:
    """([j, k] the servers each pool's figures use, [j, k] its load per server): ``allot_cores`` (an idle pool's
    load is its node's level ``rho*``, the load its first request would share), or, with ``ALLOT_BY_LOAD``
    off, ``effective_servers``' equal split (an idle pool's load 0)."""
    lam, mu = np.asarray(lam, dtype=float), np.asarray(mu, dtype=float)
    if ALLOT_BY_LOAD:
        e, level = allot_with_level(lam, mu, counts, cores)
        idle = level[:, None]  # np.where broadcasts it over the pools
    else:
        e, idle = effective_servers(counts, cores), np.zeros((len(lam), 1))
    on = (e > 0) & (lam > 0)
    return e, np.where(on, lam / np.where(on, e * mu, 1.0), idle)
