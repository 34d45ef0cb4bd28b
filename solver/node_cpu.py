"""A node's parallel compute is shared by its instances (issue 16: the per-node throughput limit).

``n`` instances of a model on a node are not ``n`` independent servers: they share the node's cores (or
GPU streams). A node with ``cores`` of them does at most ``cores`` seconds of service per second, so

    busy_j = sum_k lam_jk / mu_jk <= rho_max * cores_j                (the node's busy work)

and a pool's delay is that of its *effective* servers: the instances it runs, but no more than the
cores the node gives it (``e_jk <= n_jk``, ``sum_k e_jk <= cores_j``). In the relaxation
(``solver.queue_model``) ``e`` is a variable and the optimiser allots the cores; on an integer
placement (the plan's objective, the running placement's value) ``effective_servers`` gives every
instance an equal slice where a node runs more instances than it has cores. Nodes without ``cores`` have
no limit.

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
    """[j] seconds of service per second the pools' rates ``lam`` [j, k] ask of each node."""
    return np.asarray((np.asarray(lam) / np.asarray(mu)).sum(axis=1), dtype=float)


def core_room(lam: FloatArray, mu: FloatArray, cores: FloatArray, rho_max: float) -> FloatArray:
    """[j] busy work each node can still take (seconds per second; inf without a limit)."""
    return np.asarray(rho_max * cores - busy(lam, mu), dtype=float)


def over_cores(lam: FloatArray, mu: FloatArray, cores: FloatArray, rho_max: float) -> FloatArray:
    """[j] whether a node's busy work exceeds ``rho_max`` of its cores."""
    limit = rho_max * cores
    return np.asarray(busy(lam, mu) > limit * (1 + TOL) + TOL)


def effective_servers(counts: npt.ArrayLike, cores: FloatArray) -> FloatArray:
    """[j, k] the servers each pool really has: its instance ``counts`` where the node has a core for each,
    else the node's cores shared equally by its instances (``counts x cores / sum_k counts``).

    Independent of the rates, so a delay over these servers stays convex in the rates (solver.hold's
    Frank-Wolfe needs that); the relaxation allots the cores per pool instead and is never worse."""
    counts = np.asarray(counts, dtype=float)
    total = counts.sum(axis=1)
    share = np.where(total > cores, cores / np.where(total > 0, total, 1.0), 1.0)
    return np.asarray(counts * share[:, None])
