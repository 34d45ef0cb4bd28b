"""Whole instance counts that follow the relaxation's (issue 16): a pool runs ``round(n)`` instances where
budgets allow, not only the fewest under its load cap.

Repair counts a pool's instances as the fewest that keep it under its cap (``queue_repair.needed``), which
throws away the load the relaxation chose: it prices each instance at ``beta`` and picks a load near
``rho*`` (about 0.41), so where it spread a node's traffic over two instances, repair kept one at 0.85-0.95.
With a node's cores in the model (solver.node_cpu) the relaxation balances load across nodes at ~``rho*``
and that rounding left every pool hot (simulated p99 2.4x the blind model's at low load). Here each
pool's cap is lowered so that it runs ``round(n_jk)`` instances, one pool at a time and only while the
node's memory, compute and cores still fit; the spread bound (repair's step 4) then takes back instances
past the class's need + one spare, from the pools that stay least loaded without them. Only pools on
nodes with ``cores``: plans of snapshots without them are unchanged (the thesis-size tables, the
hysteresis cases); the agent always reports cores.
"""

from __future__ import annotations

import numpy as np

from solver.problem import FloatArray
from solver.queue_repair import TINY, Pools, needed


def seed_counts(pools: Pools, n: FloatArray) -> int:
    """Lower pool caps so each pool runs ``round(n)`` instances where budgets allow; returns instances added."""
    lam = pools.lam()
    added = 0
    cored = np.isfinite(pools.cores)[:, None]  # only where the model knows the node's cores (see the docstring)
    counts = pools.counts()  # kept up to date below: only pool (j, k)'s cap changes, so only its count
    for j, k in zip(*np.nonzero((lam > TINY) & cored), strict=True):
        have = int(counts[j, k])
        want = int(np.floor(float(n[j, k]) + 0.5))
        if want <= have:
            continue
        saved = float(pools.cap[j, k])
        pools.cap[j, k] = float(lam[j, k]) / want * (1 + 1e-9)
        counts[j, k] = needed(lam[j, k], pools.cap[j, k])
        if pools.over_budget(counts):
            pools.cap[j, k] = saved
            counts[j, k] = have
            continue
        added += int(counts[j, k]) - have
    return added
