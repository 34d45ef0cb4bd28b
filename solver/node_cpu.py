"""A node's parallel compute is shared by its instances (issue 16: the per-node throughput limit).

``n`` instances of a model on a node are not ``n`` independent servers: they share the node's cores (or
GPU streams). A node with ``cores`` of them does at most ``cores`` seconds of service per second, so

    busy_j = sum_k lam_jk / mu_jk <= rho_max * cores_j                (the node's busy work)

and a pool's delay is that of its *effective* servers: the instances it runs, but no more than the
cores the node gives it (``e_jk <= n_jk``, ``sum_k e_jk <= cores_j``). In the relaxation
(``solver.queue_model``) ``e`` is a variable and the optimiser allots the cores; on an integer
placement ``effective_servers`` allots them by water-filling in proportion to each pool's busy work
(processor sharing gives every busy instance an equal slice). Nodes without ``cores`` have no limit.
"""

from __future__ import annotations

import numpy as np

from solver.problem import FloatArray, Problem

TOL = 1e-6  # relative slack on the busy-work row (the relaxation meets it to Ipopt's tolerance)


def node_cores(p: Problem) -> FloatArray:
    """[j] the parallel capacity of each of ``p``'s nodes (inf where the snapshot gives none)."""
    by_id = {n.id: n.cores for n in p.snapshot.nodes}
    return np.array([np.inf if by_id.get(i) is None else float(by_id[i] or np.inf) for i in p.node_ids], dtype=float)


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


def effective_servers(lam: FloatArray, counts: FloatArray, mu: FloatArray, cores: FloatArray) -> FloatArray:
    """[j, k] the servers each pool really has: its ``counts`` where the node has cores for all of them, else
    the node's cores shared in proportion to the pools' busy work (water-filling: none above its count)."""
    counts = np.asarray(counts, dtype=float)
    out = counts.copy()
    for j in np.flatnonzero(np.isfinite(cores) & (counts.sum(axis=1) > cores)).tolist():
        out[j] = _water_fill(np.asarray(lam[j] / mu[j], dtype=float), counts[j], float(cores[j]))
    return out


def _water_fill(work: FloatArray, counts: FloatArray, cores: float) -> FloatArray:
    """Share ``cores`` over pools in proportion to ``work``, capping each at its count; open pools get > 0."""
    share = np.zeros_like(counts)
    open_ = counts > 0
    weight = np.where(open_, np.maximum(work, 1e-9), 0.0)
    left = cores
    active = open_.copy()
    for _ in range(len(counts) + 1):
        if not active.any() or left <= 0:
            break
        give = left * weight / weight[active].sum() * active
        capped = active & (share + give >= counts)
        if not capped.any():
            share += give
            break
        left -= float((counts[capped] - share[capped]).sum())
        share[capped] = counts[capped]
        active &= ~capped
    return share
