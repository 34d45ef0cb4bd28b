"""Reference placements the optimiser is measured against.

* iterative search (thesis 6.1): for each node, sum RTT + execution over all requests; put every request
  on the node with the smallest sum. It ignores memory and compute, so its plan may be infeasible.
* nearest: every request on its minimum-RTT node, ignoring capacity (may be infeasible).
* least-loaded: requests in input order, each on the node with the most memory left that fits
  (capacity-aware; rejects what fits nowhere).
"""

from __future__ import annotations

import numpy as np

from solver.capacity import Ledger
from solver.problem import IntArray, Problem


def iterative_search(p: Problem) -> tuple[IntArray, IntArray, list[str]]:
    """Counts [c, j] with every request on the node of least total latency."""
    totals = (p.cost * p.class_count[:, None]).sum(axis=0)
    best = int(np.argmin(totals))
    counts = np.zeros((p.n_classes, p.n_nodes), dtype=np.int64)
    counts[:, best] = p.class_count
    return counts, np.zeros(p.n_classes, dtype=np.int64), [""] * p.n_classes


def nearest_node(p: Problem) -> tuple[IntArray, IntArray, list[str]]:
    """Counts [c, j] with every request on its minimum-RTT node."""
    counts = np.zeros((p.n_classes, p.n_nodes), dtype=np.int64)
    for c, members in enumerate(p.class_members):
        rtt = p.snapshot.requests[members[0]].rtt_ms
        j = min(range(p.n_nodes), key=lambda j: (rtt[p.node_ids[j]], j))
        counts[c, j] = p.class_count[c]
    return counts, np.zeros(p.n_classes, dtype=np.int64), [""] * p.n_classes


def least_loaded(p: Problem) -> tuple[IntArray, IntArray, list[str]]:
    """Counts [c, j] placing each request where the most memory is left, if it fits."""
    ledger = Ledger(p)
    counts = np.zeros((p.n_classes, p.n_nodes), dtype=np.int64)
    rejected = np.zeros(p.n_classes, dtype=np.int64)
    reasons = [""] * p.n_classes
    class_of = {i: c for c, members in enumerate(p.class_members) for i in members}
    for i in range(p.n_requests):
        c = class_of[i]
        k = int(p.class_model[c])
        order = sorted(range(p.n_nodes), key=lambda j: (-ledger.mem_left[j], p.cost[c, j], j))
        j = ledger.best_fitting_node(k, order)
        if j is None:
            rejected[c] += 1
            reasons[c] = ledger.rejection_reason(k)
            continue
        ledger.add(j, k)
        counts[c, j] += 1
    return counts, rejected, reasons
