"""A load cap that accounts for the tail (issue 16, objective ``queue-p99``).

The plain queue objective caps every instance at ``rho_max`` (0.9) and counts instances against the
mean wait, so a pool runs hot and its p99 is several service times. Here each pool (j, k) gets the load
at which the M/M/1 p99 of its sojourn exceeds the unloaded one by at most ``fraction`` of the cheapest
RTT + execution a stream of model k sees there:

    p99(rho) = ln(100) s / (1 - rho)   ->   ln(100) s rho / (1 - rho) <= fraction (rtt + exec)
    rho <= a / (1 + a),  a = fraction (rtt + exec) / (ln(100) s)

Spare memory then holds the extra instances. Where a model's rate needs more instances at that cap than
the nodes' memory and compute can hold, the cap is raised (uniformly for that model) to the load that
fits, never above ``rho_max``: the tail bound gives way before any request is rejected.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from solver.problem import FloatArray
from solver.queue_model import QueueProblem

TAIL_FRACTION = 0.25  # p99 wait over the unloaded p99 <= this share of the pool's cheapest RTT + execution
MIN_CAP = 0.02  # never plan an instance below 2 % load (its cost would buy nothing measurable)
LN100 = math.log(100.0)
FIT_MARGIN = 0.85  # share of the budgets' slots the lifted cap plans to fill (room for rounding up per pool)


def with_tail_cap(q: QueueProblem, fraction: float = TAIL_FRACTION) -> QueueProblem:
    """``q`` with a per-pool load cap from the p99 bound above, raised where memory cannot hold it."""
    return dataclasses.replace(q, load_cap=tail_caps(q, fraction))


def tail_caps(q: QueueProblem, fraction: float) -> FloatArray:
    """The cap [j, k]: the tail bound per pool, lifted per model to what the budgets can hold."""
    p = q.base
    s_ms = q.service_ms  # [j, k]
    cheapest = np.full(q.mu.shape, np.inf)
    for k in range(len(p.model_names)):
        mine = p.class_model == k
        if mine.any():
            cheapest[:, k] = p.cost[mine].min(axis=0)
    cheapest = np.where(np.isfinite(cheapest), cheapest, s_ms)
    a = fraction * cheapest / (LN100 * s_ms)
    cap = np.clip(a / (1.0 + a), MIN_CAP, q.rho_max)
    return np.asarray(np.maximum(cap, _fitting_load(q)[None, :]).clip(max=q.rho_max))


def _fitting_load(q: QueueProblem) -> FloatArray:
    """Per model: the load at which its whole rate fits the instances every node's budgets (and cores) can hold."""
    p = q.base
    out = np.zeros(len(p.model_names))
    for k in range(len(p.model_names)):
        slots = np.minimum(
            np.floor(p.mem_budget / max(float(p.mem[k]), 1e-9)), np.floor(p.comp_budget / max(float(p.comp[k]), 1e-9))
        )
        slots = np.minimum(slots + p.free[:, k], q.cores())  # instances past a node's cores add no throughput
        capacity = float((slots * q.mu[:, k]).sum())
        demand = float(q.rate[p.class_model == k].sum())
        out[k] = demand / (FIT_MARGIN * capacity) if capacity > 0 else q.rho_max
    return out
