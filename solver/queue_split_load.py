"""The plan's split by its own figures (issue 16, the review's finding 2), after ``queue_split.best_split``.

best_split chooses the split of the served rate over the plan's whole counts under the *equal* split of a
node's cores (``node_cpu.effective_servers``: rate-independent, cheap), but the plan's figures
(``objective_ms``, ``model_ms``) share the cores *by load* (``node_cpu.allot_cores``), and so does the
running placement's value that the leader's hysteresis compares them with (``solver.hold.value_running``).
So the published split was not the best by the plan's own figures (the review: hold's split better in 37
of 214 plans by > 1 %, up to 1.29x), and the hysteresis compared a fixed split with a best one.

Here the split continues by load, in rounds (majorize-minimize): the cores are allotted at the current
rates (``allot_cores``), and best_split's Frank-Wolfe (``queue_split.split_run``, the same pool terms as
hold's ``_objective``) runs on those fixed servers. Fixed servers price every split at or above its by-load
figure (the allotment by load is the least wait over the allotments) and exactly at the current one, so
wherever a round's split lowers the fixed-server value it lowers the by-load figure at least as much; by
the envelope theorem its gradient at the start is the by-load one, so its duality gap at step 0 is hold's
(``hold.split_gap``'s): under ``queue_split.TOLERANCE`` of the figure no round runs (the screen).

A round's split must pass repair's checks on the same counts (``queue_split.apply_split``: every pool
within its load cap on its instances, every node within memory, compute and ``rho_max`` of its cores, no
model past the instance bound); where it does not, the step towards it is cut back to the largest that
does (``queue_split._feasible_step``: the fixed-server value is convex, so the cut point is no worse).
Kept only if the plan's figure (``queue_plan.mean_latency_ms``: hold's ``_objective`` per request) falls;
else the plan's split stays. ``ROUNDS`` x ``STEPS`` bound the work.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from solver.node_cpu import allot_cores, effective_servers
from solver.problem import FloatArray, IntArray
from solver.queue_model import QueueProblem
from solver.queue_plan import mean_latency_ms
from solver.queue_repair import Pools
from solver.queue_split import BoolArray, _feasible_step, apply_split, split_run

log = logging.getLogger(__name__)

ENABLED = True  # switched off only to show the tests failing without it
ROUNDS = 3  # allotments at most (each round's Frank-Wolfe from the last one's split)
STEPS = 10  # Frank-Wolfe steps per round at most
SAME_SERVERS = True  # no run where the allotment by load gives every pool best_split's servers (equal split)


def resplit_by_load(pools: Pools) -> bool:
    """Move ``pools``' split towards the best split by load on its counts where that passes repair's checks and
    lowers the plan's mean latency (module docstring); True if a new split was kept."""
    if not ENABLED or pools.x.size == 0:
        return False
    first = figure = None
    for r in range(ROUNDS):
        inputs = _round_inputs(pools, screen=r == 0)
        if inputs is None:
            break
        rates, servers, allowed, counts = inputs
        run = split_run(rates, servers, allowed, pools.x, STEPS)
        if run.steps == 0:
            break  # within queue_split.TOLERANCE of the best by load at its first step (the gap's screen)
        figure = mean_latency_ms(pools.q, pools) if figure is None else figure
        lower = _take(pools, run.x, counts, figure)
        if lower is None:
            break  # no feasible step that lowers the figure
        first, figure = figure if first is None else first, lower
    if first is not None:
        log.debug("split by load: mean latency %.4f -> %.4f ms", first, figure)
    return first is not None


def _round_inputs(pools: Pools, screen: bool) -> tuple[QueueProblem, FloatArray, BoolArray, IntArray] | None:
    """(the served rates, [j, k] the servers allotted by load at the current rates, [c, j] the pools a stream may
    use, the counts) for one round; None where no stream has a choice, where an allowed pool is allotted no
    servers (work that underflows), or (``screen``, ``SAME_SERVERS``) where every pool has best_split's servers."""
    p = pools.q.base
    lam, counts = pools.state()
    served = pools.x.sum(axis=1)
    allowed = (counts[:, p.class_model].T > 0) & (served[:, None] > 0)  # [c, j]: a pool of its model runs there
    if not np.any(allowed.sum(axis=1) > 1):
        return None
    servers = allot_cores(lam, pools.q.mu, counts, pools.cores)
    if np.any(allowed & (servers[:, p.class_model].T <= 0)):
        return None
    if screen and SAME_SERVERS and np.array_equal(servers, effective_servers(counts, pools.cores)):
        return None
    return dataclasses.replace(pools.q, rate=served), servers, allowed, counts


def _take(pools: Pools, split: FloatArray, counts: IntArray, before: float) -> float | None:
    """Take ``split`` (or the feasible part of the step to it) if it passes repair's checks and lowers the
    plan's mean latency from ``before``: the new figure; else leave ``pools`` as they were (None)."""
    old, old_cap = pools.x, pools.cap.copy()
    direction = split - old
    if not apply_split(pools, split.clip(min=0.0), counts):
        step = _feasible_step(pools, counts.astype(float), old, direction)
        if step <= 0 or not apply_split(pools, (old + step * direction).clip(min=0.0), counts):
            return None
    after = mean_latency_ms(pools.q, pools)
    if after >= before - 1e-9 * max(1.0, abs(before)):
        pools.x, pools.cap = old, old_cap
        return None
    return after
