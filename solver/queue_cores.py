"""Repair's instance bound where models share a node's saturated cores (issue 16, solver.node_cpu).

The spread bound (``solver.queue_repair`` step 4) gathers a model's smallest pool into its other open
pools. Where those pools' nodes have instance headroom but no core room (another model's rate fills the
cores), that fails and the model keeps an instance past its bound. Here the pool is gathered into
one such pool anyway, then the other models' rate on that node moves to their own open pools elsewhere
(never opening an instance; the emptied node's cores take it first) until the node's busy work fits
again. If that does not fit, or saves no instance, everything is undone.

Where no pool can be emptied that way, ``shed_making_room`` moves only the part of a pool's rate above
what one instance fewer carries at ``rho_max`` into another open pool's instance headroom, and frees the
cores that takes on the receiving node by moving other models' rate off it (the freed node's cores take
it first): a swap of two models' rates between nodes, never opening an instance.

A swap conserves busy work, so where the freed node's pools are full at ``rho_max`` (one instance a core,
e.g. a 1-core node) its room equals the deficit exactly and the budget checks' safety margins (1e-9) left
it a hair short: no swap fitted and the bound broke. The last move is then trimmed to the receiving pool's
room (``TRIM_TO_ROOM``), and the node that made room is kept if its busy work is within solver.node_cpu's
tolerance (``TOL``, as every other check of the cores).
"""

from __future__ import annotations

import numpy as np

from solver.node_cpu import TOL, core_room, over_cores
from solver.problem import FloatArray, IntArray
from solver.queue_repair import TINY, Pools, needed

State = tuple[FloatArray, IntArray]  # the rates' (lam, counts): ``Pools.state()``

HAIR = TOL / 2  # busy work (s/s) a move off a node may fall short by: trimmed to the room where it goes
TRIM_TO_ROOM = True  # switched off only to show the bound's tests failing without it


def gather_making_room(pools: Pools, src: int, k: int, nodes: list[int]) -> bool:
    """Empty pool (src, k) into one open pool of model k on ``nodes`` after making core room there."""
    q, p = pools.q, pools.q.base
    lam, counts = pools.state()
    if not np.isfinite(pools.cores[nodes]).any() or lam[src, k] <= TINY:
        return False
    dsts = [j for j in nodes if j != src and counts[j, k] > 0 and np.isfinite(pools.cores[j])]
    for dst in sorted(dsts, key=lambda j: (-float(pools.cores[j]), j)):
        if needed(np.array(lam[dst, k] + lam[src, k]), np.array(pools.cap[dst, k])) > counts[dst, k]:
            continue  # no instance headroom: gathering would open one
        saved_x = pools.x.copy()
        for c in np.flatnonzero((p.class_model == k) & (pools.x[:, src] > 0)).tolist():
            pools.move(c, src, dst, float(pools.x[c, src]))  # gather first: src's cores are free then
        now = pools.lam()  # the rates after the gather, read once
        over = -float(core_room(now, q.mu, pools.cores, q.rho_max)[dst])
        room, state = _make_room(pools, dst, k, over * (1 + 1e-9) + 1e-12, (now, needed(now, pools.cap)))
        if room and _fewer_within_budget(pools, state, counts):
            return True
        pools.x = saved_x
    return False


def _make_room(pools: Pools, dst: int, k: int, deficit: float, state: State | None = None) -> tuple[bool, State | None]:
    """Move other models' rate off ``dst`` (smallest streams first) until ``deficit`` busy work is freed or
    ``dst``'s busy work is within solver.node_cpu's tolerance (module docstring: a move trimmed to a hair): whether
    it is, and ``pools.state()`` of the rates it leaves where it knows it (else None).

    ``state``: ``pools.state()`` of the current rates, where the caller has it; each move's is the next one's."""
    q, p = pools.q, pools.q.base
    for c in sorted(
        np.flatnonzero((p.class_model != k) & (pools.x[:, dst] > 0)).tolist(), key=lambda c: pools.x[c, dst]
    ):
        if deficit <= 0:
            break
        k2 = int(p.class_model[c])
        amount = min(float(pools.x[c, dst]), deficit * float(q.mu[dst, k2]))
        moved, trimmed, state = _move_off(pools, c, dst, amount, state)
        deficit -= moved / float(q.mu[dst, k2])
        if trimmed:
            break  # the receiving pools are full: what is left is a hair (or the check below fails)
    lam = pools.lam() if state is None else state[0]  # a kept last move's state: the current rates
    within = TRIM_TO_ROOM and not bool(over_cores(lam, q.mu, pools.cores, q.rho_max)[dst])
    return deficit <= 0 or within, state


def _fewer_within_budget(pools: Pools, state: State | None, counts: IntArray) -> bool:
    """Whether the current rates keep every node within its budgets and run fewer instances than ``counts``
    (``state``: their ``pools.state()``, where known: the same values as reading them again)."""
    lam, now = pools.state() if state is None else state
    return not pools.over_budget(now, lam) and now.sum() < counts.sum()


def _move_off(
    pools: Pools, c: int, dst: int, amount: float, state: State | None = None
) -> tuple[float, bool, State | None]:
    """Move up to ``amount`` of class c off ``dst`` into an open pool that grows by no instance: (req/s moved,
    whether the move was trimmed to the receiving pool's room, at most ``HAIR`` of ``dst``'s busy work less, and
    the rates' ``pools.state()`` after a kept move, else None).

    ``state``: ``pools.state()`` of the current rates, where the caller has it (``_make_room`` keeps the one a kept
    move returned: nothing changes the rates between; after an undone move, whose float residue may change them,
    it is read again). The same values as reading the rates anew: the same placements bit for bit."""
    k2 = int(pools.q.base.class_model[c])
    lam, counts = pools.state() if state is None else state
    before = int(counts.sum())
    to, trimmed = pools.best_destination(c, amount, {dst}, open_only=True, state=(lam, counts)), False
    if to is None and TRIM_TO_ROOM:
        to = pools.best_destination(c, amount - HAIR * float(pools.q.mu[dst, k2]), {dst}, True, (lam, counts))
        if to is not None:
            amount, trimmed = min(amount, pools.room(to, k2, grow=False)), True
    if to is None or amount <= 0:
        return 0.0, False, (lam, counts)
    pools.move(c, dst, to, amount)
    after = pools.state()
    if int(after[1].sum()) > before:  # it would open an instance: not this way
        pools.move(c, to, dst, amount)
        return 0.0, False, None
    return amount, trimmed, after


def shed_making_room(pools: Pools, nodes: list[int], k: int) -> bool:
    """One instance fewer for model k on ``nodes``: a pool's rate above one instance fewer at ``rho_max`` moves
    into another open pool's headroom on ``nodes`` after core room is made there (module docstring)."""
    q, p = pools.q, pools.q.base
    lam, counts = pools.state()
    top = q.rho_max * q.mu[:, k]
    if not np.isfinite(pools.cores[nodes]).any():
        return False
    sources = sorted((float(lam[j, k] - (counts[j, k] - 1) * top[j]), j) for j in nodes if counts[j, k] > p.free[j, k])
    for over_one_fewer, src in sources:
        excess = max(over_one_fewer, 0.0)  # a pool below one instance fewer at rho_max moves nothing (a cap gives)
        for dst in [j for j in nodes if j != src and counts[j, k] > 0]:
            if counts[dst, k] * top[dst] - lam[dst, k] < excess * (1 + 1e-9) + TINY:
                continue  # no instance headroom for the excess
            saved_x, saved_cap = pools.x.copy(), pools.cap.copy()
            left = excess * (1 + 1e-9) + TINY
            for c in np.flatnonzero((p.class_model == k) & (pools.x[:, src] > 0)).tolist():
                take = min(left, float(pools.x[c, src]))
                pools.move(c, src, dst, take)
                left -= take
                if left <= 0:
                    break
            now = pools.lam()  # the rates after the moves (the caps below do not change them)
            for o in (src, dst):
                keep = counts[o, k] - (1 if o == src else 0)
                if keep > 0:  # load caps below rho_max are raised, as repair's own shedding does
                    pools.cap[o, k] = max(pools.cap[o, k], float(now[o, k]) / keep * (1 + 1e-9))
            state: State | None = (now, needed(now, pools.cap))  # pools.state() with the new caps
            over = -float(core_room(now, q.mu, pools.cores, q.rho_max)[dst])
            fits = over <= 0
            if not fits:
                fits, state = _make_room(pools, dst, k, over * (1 + 1e-9) + 1e-12, state)
            if fits and _fewer_within_budget(pools, state, counts):
                pools.shed += 1
                return True
            pools.x, pools.cap = saved_x, saved_cap
    return False
