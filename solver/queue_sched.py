"""One more instance where the node's scheduler would fall behind (issue 16, "worth doing next" 6).

Repair's checks (a node's busy work within ``rho_max`` of its cores, each pool within ``rho_max`` of its
instances) do not keep the CPU scheduler stable on a fractional number of instance units: one instance at 0.885 of
a core beside another busy one on 1.5 cores gets 0.75 of a core whenever both run and falls behind; its queue grows
without bound (16 of bench/bound_sweep.py's 600 overloaded plans at their rate, 8 at half of it:
bench/sched_fix_bench.py). solver.cpu_speed's scheduler model caps such an instance's load at ``CAP``. Splitting
that pool's rate over one more instance (the pool's per-instance rate cap lowered so that its count is one more;
the node's busy work is unchanged, so no core row moves) made every one of those 24 stable in the shared-cores
simulation (sojourns 14-180 ms against 360-13,000 ms and growing), where shedding rate to the model's own
boundary did not. The instance is added only where the node's memory and compute hold it and the model stays
within the instance bound (``queue_repair.bound_excess``; 22 of the 24). Where it is not, the pool's rate is
rejected down to what keeps the model's load within ``rho_max`` (``SHED``: 8.6 and 14.6 req/s of 815 and 727 in
the other two, simulated 100-150 and 68 ms instead of 450-1,150 and 340-480 ms and growing), its reason the
instance bound's.

Crowded nodes (``CROWDED``, solver16b): on a node of 2 or more instance units of cores an instance cannot use an idle
core beside it, so the node is not work-conserving, and the scheduler model's ``CAP`` came too late there. The thesis
instance 25 x 5 (seed 2, 2 cores per node) runs one instance of a model beside two of another on a node at rho_max
of its cores: the model puts the single one at 0.988, and the shared-cores simulation's queue there grows with the
run (8 / 28 s mean at 1,000 / 4,000 s; both the integer objective and the plan's figure by load price it at 3.8 s).
So on such nodes a pool past ``rho_max`` in the model counts as behind too (one more instance, else the cut): at
thesis sizes 7 of 72 plans at 2 cores change, all better in the simulation (mean sojourn 0.46-0.95x, the worst pool
6.0-36 s -> 4.1-6.9 s, 0.8 % and 0.14 % of the rate cut in two of them); below 2 cores every busy request shares the
node's cores (at 1: work-conserving, stable wherever its busy work is) and ``CAP`` alone counts (there the same rule
changed 20 of 72 plans, mixed in the simulation). bound_sweep's overloaded clusters: 25 of 1,200 plans change, each
better in the simulation (mean sojourn median 0.52x). bench/queue_price_sim.py, docs/solver.md.
"""

from __future__ import annotations

import logging

import numpy as np

from solver.cpu_speed import CAP, node_speeds, node_speeds_once
from solver.queue_repair import Pools, bound_excess

log = logging.getLogger(__name__)

ENABLED = True  # off only to show bench/sched_fix_bench.py and the tests the queues that grow
SHED = True  # where no instance can be added: reject the pool's rate down to rho_max in the scheduler model
BISECT = 40  # halvings of the kept share of the pool's rate
BISECT_CROWDED = 20  # the same for a crowded pool (to 1e-6 of its rate: each halving runs the model, ~1 ms)
CROWDED = True  # on nodes of CROWDED_CORES or more, a pool past rho_max in the model falls behind (False: CAP alone)
CROWDED_CORES = 2.0  # instance units (after the slot transform); below, CAP alone (bench/queue_price_sim.py)
MAX_ADDED = 64  # instances added in one plan at most (each fixes one node; a node needs one or two)


def behind(pools: Pools) -> list[tuple[int, int]]:
    """(node, model) of each node's busiest pool that falls behind: whose instances the scheduler model caps, or on
    a node of ``CROWDED_CORES`` or more, whose load there is past ``rho_max`` (``CROWDED``)."""
    lam, counts = pools.state()
    f = node_speeds_once(lam, pools.q.mu, counts, pools.cores)  # the published planned queue reads it again
    limit = np.where((np.asarray(pools.cores) >= CROWDED_CORES) & CROWDED, pools.q.rho_max * (1 + 1e-9), CAP)
    capped = (f.load >= limit[:, None]) & (counts > 0) & (lam > 0)
    return [
        (int(j), int(np.argmax(np.where(capped[j], lam[j] / pools.q.mu[j], -1.0))))
        for j in np.flatnonzero(capped.any(axis=1))
    ]


def add_where_behind(pools: Pools) -> int:
    """Give the pools ``behind`` finds one more instance each where budgets and the bound allow; the number added."""
    if not ENABLED:
        return 0
    added, refused = 0, set()
    while added < MAX_ADDED:
        todo = [jk for jk in behind(pools) if jk not in refused]
        if not todo:
            break
        j, k = todo[0]
        if _one_more(pools, j, k):
            added += 1
        elif SHED:
            _shed_to_rho(pools, j, k, BISECT if _capped(pools, j, k) else BISECT_CROWDED)
            refused.add((j, k))
        else:
            refused.add((j, k))
    if refused:
        log.debug("scheduler would fall behind on %d pools the budgets or the bound leave as they are", len(refused))
    return added


def _one_more(pools: Pools, j: int, k: int) -> bool:
    """Lower pool (j, k)'s per-instance rate cap so that it runs one more instance; undone (False) where that breaks
    the node's memory or compute or model k's instance bound."""
    lam, counts = pools.state()
    old = float(pools.cap[j, k])
    pools.cap[j, k] = float(lam[j, k]) / (float(counts[j, k]) + 0.5)  # needed(): exactly counts + 1
    state = pools.state()
    if (
        state[1][j, k] == counts[j, k] + 1
        and not pools.over_budget(state[1], state[0])
        and bound_excess(pools, k, state) <= 0
    ):
        return True
    pools.cap[j, k] = old
    return False


def _capped(pools: Pools, j: int, k: int) -> bool:
    """Whether the scheduler model caps pool (j, k) (else it is only crowded; the model's figures are ``behind``'s,
    memoised)."""
    lam, counts = pools.state()
    return bool(node_speeds_once(lam, pools.q.mu, counts, pools.cores).load[j, k] >= CAP)


def _shed_to_rho(pools: Pools, j: int, k: int, halvings: int = BISECT) -> None:
    """Reject the share of pool (j, k)'s rate (every stream on it alike) past the most that keeps its load in the
    scheduler model within ``rho_max`` (to 2^-``halvings`` of its rate, on the safe side); model k's rejection then
    gives the instance bound's reason."""
    lam, counts = pools.state()
    q = pools.q
    row, mu, n, cores = lam[j : j + 1].copy(), q.mu[j : j + 1], counts[j : j + 1], pools.cores[j : j + 1]
    lo, hi = 0.0, 1.0
    for _ in range(halvings):  # the pool's load rises with its rate: the largest kept share within rho_max
        mid = 0.5 * (lo + hi)
        trial = row.copy()
        trial[0, k] *= mid
        lo, hi = (mid, hi) if node_speeds(trial, mu, n, cores).load[0, k] <= q.rho_max else (lo, mid)
    mine = np.flatnonzero((q.base.class_model == k) & (pools.x[:, j] > 0))
    for c in mine.tolist():
        pools.move(c, j, None, float(pools.x[c, j]) * (1.0 - lo))
    pools.shed_models.add(k)
    log.info("node %s: %.3g req/s of %r rejected (its scheduler would fall behind)", q.base.node_ids[j],
             float(lam[j, k]) * (1.0 - lo), q.base.model_names[k])  # fmt: skip
