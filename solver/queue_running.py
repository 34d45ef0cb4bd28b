"""Repair's instance bound where a model's pools reuse instances that already run (Mode 1; issue 16 item 5).

The bound: per model and node class, the plan serves with at most the instances the class's load needs at
``rho_max`` plus one spare. Mode 1 keeps its meaning: the solver never stops an instance (solver.modes'
eviction stops idle ones). So the bound counts the instances the plan *serves with* (those its rates need,
``Pools.counts``), also where more already run; running instances past that get no traffic from the plan,
go idle, and Mode 1's eviction stops them after ``idle_s`` (the plan reports them as
``details["idle_running"]``, solver.queue_plan).

Step 4 of solver.queue_repair takes instances only from pools that start new ones. Where a model is still
past the bound and every pool left reuses running instances (e.g. Mode 1, no memory left, 1 + 2 + 2
instances running where the load needs 3), ``drain_running`` takes one instance's traffic off the least
useful running pool of the class: the rate above what one instance fewer carries moves into the model's
other open pools of that class, up to their instances' load caps first and, where that is not enough, up
to ``rho_max`` (a tail cap gives way to the bound, as in step 4); within every node's cores; never opening
an instance (no receiving pool grows, so memory and compute budgets are untouched). Least useful: a pool
whose whole traffic moves (its node's instances of the model then go idle, so eviction can stop them) before
one that keeps some, then the smallest added RTT + execution (req/s x ms) of the cheapest moves.
"""

from __future__ import annotations

import logging
import math

import numpy as np

from solver.node_cpu import core_room
from solver.problem import FloatArray
from solver.queue_repair import TINY, Pools

log = logging.getLogger(__name__)

ENABLED = True  # switched off only to show the bound's tests failing without it

Move = tuple[int, int, float]  # (class, destination node, req/s)


def drain_running(pools: Pools, nodes: list[int], k: int) -> bool:
    """One instance fewer with traffic for model k on ``nodes``, taken from a pool that reuses running
    instances (module docstring); False, with nothing changed, where no drain fits."""
    if not ENABLED:
        return False
    q = pools.q
    at_caps = pools.cap[:, k].copy()
    at_rho = np.maximum(at_caps, q.rho_max * q.mu[:, k])
    for ceiling, raise_caps in ((at_caps, False), (at_rho, True)):
        if raise_caps and np.array_equal(at_rho, at_caps):
            break
        for _, _, src, moves in sorted(_options(pools, nodes, k, ceiling)):
            if _apply(pools, k, src, moves):
                if raise_caps:
                    pools.shed += 1  # a load cap was raised for the bound (solver.queue_plan's tail fallback)
                log.debug("drained one running instance of model %d on node %d", k, src)
                return True
    return False


def _options(pools: Pools, nodes: list[int], k: int, ceiling: FloatArray) -> list[tuple[bool, float, int, list[Move]]]:
    """(keeps traffic, added cost, source, moves) per running pool of ``nodes`` that can shed one instance's
    traffic into the others' room under ``ceiling`` ([j] req/s per instance)."""
    q, p = pools.q, pools.q.base
    lam, counts = pools.state()
    by_cores = core_room(lam, q.mu, pools.cores, q.rho_max) * q.mu[:, k]  # [j] req/s the node's cores take
    room = {
        j: min(float(counts[j, k] * ceiling[j] - lam[j, k]), float(by_cores[j])) * (1 - 1e-9)
        for j in nodes
        if counts[j, k] > 0
    }
    out = []
    for src in nodes:
        if not 0 < counts[src, k] <= p.free[src, k]:
            continue  # no traffic, or it starts new instances (step 4's own shedding handles those)
        keep = int(counts[src, k]) - 1
        excess = float(lam[src, k]) if keep == 0 else float(lam[src, k] - keep * ceiling[src]) * (1 + 1e-9) + TINY
        others = {o: r for o, r in room.items() if o != src and r > TINY}
        if excess <= 0 or sum(others.values()) < excess:
            continue
        planned = _cheapest_moves(pools, src, k, others, math.inf if keep == 0 else excess)
        if planned is not None:
            out.append((keep > 0, planned[0], src, planned[1]))
    return out


def _cheapest_moves(
    pools: Pools, src: int, k: int, room: dict[int, float], amount: float
) -> tuple[float, list[Move]] | None:
    """The moves of ``amount`` req/s (inf: all) of model k's streams off ``src`` into ``room``, cheapest added
    RTT + execution first, and their added cost; None if the room does not take it."""
    p = pools.q.base
    streams = np.flatnonzero((p.class_model == k) & (pools.x[:, src] > 0)).tolist()
    pairs = sorted((float(p.cost[c, o] - p.cost[c, src]), c, o) for c in streams for o in room)
    left_of = {c: float(pools.x[c, src]) for c in streams}
    left, room, cost, moves = amount, dict(room), 0.0, []
    for delta, c, o in pairs:
        take = min(left, left_of[c], room[o])
        if take <= 0:
            continue
        moves.append((c, o, take))
        left_of[c] -= take
        room[o] -= take
        left -= take
        cost += take * delta
        if left <= 0:
            break
    whole = math.isinf(amount) and all(v <= 0 for v in left_of.values())
    return (cost, moves) if whole or left <= 0 else None


def _apply(pools: Pools, k: int, src: int, moves: list[Move]) -> bool:
    """Carry out ``moves`` and raise the load caps they fill (never past the moves' ceiling); kept only if
    ``src`` serves with one instance fewer, no pool grows and no node breaks a budget or its cores."""
    counts = pools.counts()
    saved_x, saved_cap = pools.x.copy(), pools.cap.copy()
    for c, o, take in moves:
        pools.move(c, src, o, take)
    now = pools.lam()[:, k]
    for o in {src, *(o for _, o, _ in moves)}:
        keep = int(counts[o, k]) - (1 if o == src else 0)
        if keep > 0:
            pools.cap[o, k] = max(pools.cap[o, k], float(now[o]) / keep * (1 + 1e-9))
    after = pools.counts()
    broken = set(pools.over_budget(after)) - set(pools.over_budget(counts))
    if after[src, k] == counts[src, k] - 1 and np.all(after <= counts) and not broken:
        return True
    pools.x, pools.cap = saved_x, saved_cap
    return False
