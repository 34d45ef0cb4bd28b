"""A thesis-model plan's assignments as per-site shares (``details["spread"]``), the form queue plans publish.

The thesis objective and the baselines (nearest, least-loaded, iterative, milp) place each request on one
node; the agent reads no assignments, only a plan summary's ``spread`` (peerserve/dispatch.py). So these
plans publish, per request class (requests of one model with one cost row: a client site) and largest
rate first, the class's RTT row and node -> share of its requests, at most MAX_SPREAD_SITES entries (the
bound the queue objective's summary keeps). The agent then spreads a site's requests over the plan's
nodes in those proportions and over each node's instances, instead of sending all of them to the best
node's first instance.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from peerserve.dispatch import MAX_SPREAD_SITES
from solver.problem import IntArray, Problem


def assigned_spread(p: Problem, counts: IntArray, limit: int = MAX_SPREAD_SITES) -> list[dict[str, Any]]:
    """Per class with assigned requests, largest rate first: its model, RTT row and node -> share; <= ``limit``."""
    reqs = p.snapshot.requests
    rate = np.array([sum(reqs[i].rate or 1.0 for i in members) for members in p.class_members])
    out: list[dict[str, Any]] = []
    for c in np.argsort(-rate, kind="stable").tolist():
        if len(out) >= limit:
            break
        placed = float(counts[c].sum())
        if placed <= 0:
            continue
        first = reqs[p.class_members[c][0]]
        shares = {p.node_ids[j]: round(float(v) / placed, 6) for j, v in enumerate(counts[c].tolist()) if v > 0}
        out.append(
            {"model": first.model, "rtt_ms": {n: round(v, 1) for n, v in first.rtt_ms.items()}, "shares": shares}
        )
    return out
