"""Repair's instance bound at any load: where no move frees an instance, reject the least loaded one's rate
(issue 16 item 5, solver.queue_repair step 4).

The bound: per model and node class, the plan serves with at most the instances the class's load needs at
``rho_max`` plus one spare. Step 4 frees an instance by moving rate: into the pool's own instances (a load
cap gives way), into the class's other open pools, into their headroom after other models' rate moves off
their node (solver.queue_cores), or off running instances (solver.queue_running). Every such move needs core
room somewhere. On an overloaded cluster every node's cores are full (the relaxation fills them: rejecting a
request costs more than any placement), so where the relaxation's rates leave a model past the bound no
move fits, or fits only by a hair the budget checks' safety margins refuse, and the bound broke (e.g. 147
req/s of 20 req/s instances on 3 + 1 + 1 + 3 cores: m1 on 1 + 1 + 3 instances, need 3, the swap that would
fix it 4.5e-5 req/s short).

``shed_by_rejecting`` is then the last resort: the pool of the class whose last instance carries the least
rate (the rate above what one instance fewer carries at ``rho_max``; a pool of one instance: its whole rate)
gives that rate up to ``rejected``, smallest streams first, and runs one instance fewer (a load cap below
``rho_max`` is raised, as in step 4's own shedding). It acts in step 4's last pass only (after step 5), so
a plan that keeps the bound without it is never touched. It only lowers rates: memory, compute, cores and
the other pools' loads are untouched, the rate is conserved (served + rejected), and each call takes one
instance away, so step 4's loop ends.

``refill_open_pools`` then gives the freed core share to rejected streams whose model already has an open
pool on the node (its instances' headroom, cheapest node first; nothing opens, so the bound and memory
hold). It opens no instance: a new instance there for a few req/s would count as one of the node's
instances when its cores are shared (solver.node_cpu.effective_servers: counts x cores / instances), and
the pools beside it, full at rho_max, would be priced past saturation (measured: one such plan's mean
latency 274,544 ms against 69 ms).
"""

from __future__ import annotations

import logging

import numpy as np

from solver.queue_repair import TINY, Pools, _reject_rate, _smallest_first

log = logging.getLogger(__name__)


def least_loaded_last_instance(pools: Pools, nodes: list[int], k: int) -> tuple[float, int] | None:
    """(req/s above one instance fewer at ``rho_max``, node) of model k's pool on ``nodes`` whose last instance
    carries the least; None where no pool of ``nodes`` serves model k."""
    q = pools.q
    lam, counts = pools.lam(), pools.counts()
    top = q.rho_max * q.mu[:, k]
    options = [(max(float(lam[j, k] - (counts[j, k] - 1) * top[j]), 0.0), j) for j in nodes if counts[j, k] > 0]
    return min(options) if options else None


def shed_by_rejecting(pools: Pools, nodes: list[int], k: int) -> bool:
    """One instance fewer for model k on ``nodes``: the least loaded last instance's rate goes to ``rejected``
    (module docstring); False, with nothing changed, where no pool of ``nodes`` serves model k."""
    pick = least_loaded_last_instance(pools, nodes, k)
    if pick is None:
        return False
    excess, j = pick
    counts = pools.counts()
    keep = int(counts[j, k]) - 1
    members = np.flatnonzero((pools.q.base.class_model == k) & (pools.x[:, j] > 0)).tolist()
    if keep == 0:  # the whole pool, stream by stream (no residue of a sum left behind)
        excess = 0.0
        for c in members:
            excess += float(pools.x[c, j])
            pools.move(c, j, None, float(pools.x[c, j]))
    else:  # the part above one instance fewer; a load cap below rho_max is raised, as step 4's shedding does
        _reject_rate(pools, j, _smallest_first(pools, j, members), excess)
        pools.cap[j, k] = max(pools.cap[j, k], float(pools.lam()[j, k]) / keep * (1 + 1e-9))
    pools.shed += 1
    pools.rejected_for_bound += excess
    pools.shed_models.add(k)
    log.debug("rejected %.6g req/s of model %d on node %d for the instance bound", excess, k, j)
    return True


def refill_open_pools(pools: Pools) -> None:
    """Rejected rate into open pools' headroom within their nodes' cores, cheapest node first, opening no
    instance (module docstring); a move that would change a count or break a budget (float edge) is undone."""
    p = pools.q.base
    for c in np.flatnonzero(pools.rejected > TINY).tolist():
        k = int(p.class_model[c])
        for j in np.argsort(p.cost[c], kind="stable").tolist():
            counts = pools.counts()
            if pools.rejected[c] <= TINY:
                break
            take = min(float(pools.rejected[c]), pools.room(j, k, grow=False)) if counts[j, k] > 0 else 0.0
            if take <= TINY:
                continue
            pools.move(c, None, j, take)
            after = pools.counts()
            if after[j, k] != counts[j, k] or j in pools.over_budget(after):
                pools.move(c, j, None, take)
