"""Integer instance counts for the queue-aware relaxation: rounding and repair that keep every budget.

Stream rates stay fractional (a site's traffic splits over pools in any proportion); only instance
counts are integers. From the relaxation's rates ``x[c, j]``:

1. Clean: shares under a millionth of a stream's rate (all of a stream of rate 0) are dropped; a stream's
   rate on a pool that carries under ``SLIVER`` of one instance's load joins its largest share on another
   pool (the relaxation's ``N_MIN`` floor on every pool holds such slivers on a saturated cluster; each
   would open a whole instance); a stream with no other pool loses it to step 5, which may open an
   instance for a stream that rare as a whole (a model asked once a window is served).
2. Count: each pool runs the fewest instances that keep it under the load cap (``ceil(lam / (rho mu))``).
3. Capacity: a node whose busy work exceeds ``rho_max`` of its cores (solver.node_cpu) sheds its smallest
   streams' rate (placed again in step 5); a node whose new instances exceed its memory or compute moves
   its smallest pools' streams to the node where they cost least and fit (an open pool's headroom first),
   until it fits.
4. Spread bound: per model and node class, while the pools run more instances than the class's load
   needs at ``rho_max`` plus one spare, a pool running below ``rho_max`` gives up an instance (its load cap
   is raised, never above ``rho_max``: a tail cap gives way to the bound), else the smallest pool's
   streams move into the other open pools of that class; where neither works, part of a pool's rate
   moves into the others' room up to ``rho_max`` so that it needs one instance fewer (on full cores,
   after other models' rate moves off the receiving node: solver.queue_cores). Where only pools that reuse
   running instances are left (Mode 1), the least useful one's traffic drains into the others: the bound
   counts the instances the plan serves with, and running ones past it go idle (solver.queue_running).
   Where no move frees one (every node's cores full, as at overload), the least loaded last instance's rate
   is rejected (solver.queue_reject): the bound holds at any load.
5. Rejected rate is placed where it fits (headroom first, then a new instance, but never one past the
   spread bound nor one for a sliver that is only part of its stream), else stays rejected; float
   residue left on a pool without instances joins the stream's largest share; step 4 once more (where that
   rejected rate for the bound, the freed cores then serve rejected streams of open pools: solver.queue_reject).

Every move re-checks the node's budgets, so no step breaks memory, compute or throughput.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt

from solver.node_cpu import core_room, over_cores
from solver.problem import FloatArray, IntArray
from solver.queue_model import QueueProblem
from solver.ties import least

TINY = 1e-6
RoomState = tuple[FloatArray, IntArray, IntArray, FloatArray]  # Pools.room_state: lam, counts, new, core room
SLIVER = 1e-5  # a pool whose rate is under this fraction of one instance's load is a relaxation artifact
DROP_SLIVERS = True  # step 1's sliver rule (switched off only to show the bound's tests failing)
BOUND_STEP_5 = True  # step 5 opens no instance past the bound nor for a sliver (likewise)
SHED_BY_MOVING = True  # step 4's last resort: move rate into other pools' headroom to free one instance
SHED_BY_REJECTING = True  # where no move frees one: reject the least loaded last instance's rate (queue_reject)
REFILL_OPENS = True  # the freed cores go to step 5 again (new instances within the bound); off: open pools only
KEEP_EXACT_STATE = True  # step 5 keeps its rates' state where an undone move restored them bit for bit (exact)
CORES_FIRST = True  # best_destination tests core room first and stops where no node has it (exact)
SLIVER_FIRST = True  # step 5 refuses a sliver into an empty pool before computing the move's counts (exact)
HAIR_TOLERANCE = 1e-3  # step 3's hair above whole instances at the cap: the relaxation's error (solver.ties; was 1e-6)
HAIR_OPENS = False  # step 5 opens an instance for a hair of a stream (HAIR_TOLERANCE of its rate; before: True)
SKIP_FULL_CORES = True  # step 5 passes over a class whose model has no core room anywhere (exact: nothing moves)


class Pools:
    """Rates per (class, node) and the instance counts and budgets they imply."""

    def __init__(self, q: QueueProblem, x: FloatArray, rejected: FloatArray) -> None:
        self.q = q
        p = q.base
        self.x = np.where((x > TINY * np.maximum(q.rate, 1e-12)[:, None]) & (q.rate > 0)[:, None], x, 0.0)
        self.onehot = np.eye(len(p.model_names))[p.class_model]
        self.cap = q.cap() * q.mu  # [j, k] requests/s one instance takes under the cap
        if DROP_SLIVERS:
            self.x = _merge_slivers(self.x, (self.lam() < SLIVER * self.cap).T[p.class_model])
        self.rejected = np.clip(q.rate - self.x.sum(axis=1), 0.0, None) + 0.0 * rejected
        self.shed = 0  # instances taken from pools below rho_max to keep the instance bound (step 4)
        self.rejected_for_bound = 0.0  # req/s step 4 rejected where no move freed an instance (solver.queue_reject)
        self.shed_models: set[int] = set()  # the models whose rate that was (the plan's rejection reason names it)
        self.too_slow_models: set[int] = set()  # models whose rate on too-slow pools was rejected (solver.too_slow)
        self.penalty = q.penalty()
        self.service_ms = q.service_ms
        names = {g: i for i, g in enumerate(sorted(set(q.node_class)))}  # np.unique's order: sorted names
        self.node_group = np.array([names[g] for g in q.node_class], dtype=np.intp)  # [j] node class
        self.cores = q.cores()  # [j] parallel capacity (inf: no limit)
        self.split_run: Any = None  # the last Frank-Wolfe run without a move (solver.queue_split.split_run)
        self._groups: FloatArray | None = None

    def group_matrix(self) -> FloatArray:
        """[g, j] 1.0 where node j is in node class g (made once: the classes do not change)."""
        if self._groups is None:
            self._groups = np.eye(int(self.node_group.max()) + 1)[self.node_group].T
        return self._groups

    def lam(self) -> FloatArray:
        return np.asarray(self.x.T @ self.onehot)

    def counts(self) -> IntArray:
        return needed(self.lam(), self.cap)

    def state(self) -> tuple[FloatArray, IntArray]:
        """(``lam()``, ``counts()``) with the rates read once (the same values as reading them twice)."""
        lam = self.lam()
        return lam, needed(lam, self.cap)

    def over_budget(self, counts: IntArray, lam: FloatArray | None = None) -> list[int]:
        """Nodes whose new instances exceed memory or compute, or whose busy work exceeds their cores (``lam``: the
        current pool rates, where the caller has them)."""
        p = self.q.base
        new = np.maximum(counts - p.free, 0)
        over = (new @ p.mem > p.mem_budget + TINY) | (new @ p.comp > p.comp_budget + TINY)
        over |= over_cores(self.lam() if lam is None else lam, self.q.mu, self.cores, self.q.rho_max)
        return [int(j) for j in np.flatnonzero(over)]

    def fits_with(self, j: int, k: int, extra: float) -> bool:
        """Whether pool (j, k) can take ``extra`` req/s more without breaking node j's budgets."""
        counts = self.counts()
        counts[j, k] = needed(np.array(self.lam()[j, k] + extra), np.array(self.cap[j, k]))
        return j not in self.over_budget(counts)

    def room(self, j: int, k: int, grow: bool = True, state: RoomState | None = None) -> float:
        """Req/s pool (j, k) can still take: its headroom plus (``grow``) the instances node j's budgets still allow.

        ``state``: ``room_state()`` of the current rates, where the caller keeps it (saves recomputing)."""
        p = self.q.base
        lam, counts, new, by_core = self.room_state() if state is None else state
        more: float = 0
        if grow:  # the instances node j's budgets still allow (not read without ``grow``)
            mem_left = p.mem_budget[j] - float(new[j] @ p.mem)
            comp_left = p.comp_budget[j] - float(new[j] @ p.comp)
            spare_free = max(int(p.free[j, k] - counts[j, k]), 0)
            by_mem = math.inf if p.mem[k] <= 0 else math.floor((mem_left + TINY) / p.mem[k])
            by_comp = math.inf if p.comp[k] <= 0 else math.floor((comp_left + TINY) / p.comp[k])
            more = min(by_mem, by_comp, 10**6) + spare_free
        by_cores = float(by_core[j]) * float(self.q.mu[j, k])
        room = min(float((counts[j, k] + more) * self.cap[j, k] - lam[j, k]), by_cores)
        return max(0.0, room * (1 - 1e-9))

    def room_state(self) -> RoomState:
        """What ``room`` reads of the current rates: pool rates, counts, new instances and each node's core room."""
        lam, counts = self.state()
        by_core = core_room(lam, self.q.mu, self.cores, self.q.rho_max)
        return lam, counts, np.maximum(counts - self.q.base.free, 0), by_core

    def move(self, c: int, src: int | None, dst: int | None, amount: float) -> None:
        """Move ``amount`` req/s of class c from node ``src`` to node ``dst`` (None: the rejected rate)."""
        if src is None:
            self.rejected[c] -= amount
        else:
            self.x[c, src] -= amount
        if dst is None:
            self.rejected[c] += amount
        else:
            self.x[c, dst] += amount

    def best_destination(
        self,
        c: int,
        amount: float,
        exclude: set[int],
        open_only: bool = False,
        state: tuple[FloatArray, IntArray] | None = None,
    ) -> int | None:
        """The node for ``amount`` req/s of class c: no new instance before new ones, then cheapest.

        ``state``: the current (lam, counts) where the caller keeps them up to date (saves recomputing).
        """
        p = self.q.base
        k = int(p.class_model[c])
        lam, counts = state if state is not None else self.state()
        fits = core_room(lam, self.q.mu, self.cores, self.q.rho_max) >= amount / self.q.mu[:, k] * (1 + 1e-9)
        if exclude:
            fits[list(exclude)] = False
        if open_only:
            fits &= counts[:, k] > 0
        if CORES_FIRST and not fits.any():
            return None  # no node has the core room (and the other tests only narrow it): as below, sooner
        after = needed(lam[:, k] + amount, self.cap[:, k])  # [j] pool k's count with the amount added
        new = np.maximum(counts - p.free, 0)
        grown = np.maximum(after - p.free[:, k], 0) - new[:, k]  # [j] change in new instances of model k
        fits &= (new @ p.mem + grown * p.mem[k] <= p.mem_budget + TINY) & (
            new @ p.comp + grown * p.comp[k] <= p.comp_budget + TINY
        )
        if not fits.any():
            return None
        stays = fits & (after <= counts[:, k])  # no new instance first (as min over (grows, cost, j))
        pick = stays if stays.any() else fits
        return int(np.argmin(np.where(pick, p.cost[c], np.inf)))


def _merge_slivers(x: FloatArray, sliver: npt.NDArray[np.bool_]) -> FloatArray:
    """Without the rate on sliver pools (``sliver[c, j]``): a stream's sliver rate joins its largest share on
    a pool that is no sliver; a stream with no such pool loses it to ``rejected`` (step 5 places it)."""
    kept = np.where(sliver, 0.0, x)  # [c, j] shares on pools that are no sliver
    rows = np.flatnonzero(kept.max(axis=1, initial=0.0) > 0)  # streams that keep an open pool
    kept[rows, np.argmax(kept[rows], axis=1)] += np.where(sliver, x, 0.0).sum(axis=1)[rows]
    return kept


def needed(lam: FloatArray, cap: FloatArray) -> IntArray:
    """The fewest instances that keep each pool at or below its capacity (0 for no traffic)."""
    return np.asarray(np.maximum(np.ceil(np.asarray(lam) / np.asarray(cap) - 1e-9), 0.0), dtype=np.int64)


def repair(q: QueueProblem, x: FloatArray, rejected: FloatArray, n: FloatArray | None = None) -> Pools:
    """Steps 1-5 of the module docstring on the relaxation's rates; the result is within every budget.

    ``n``: the relaxation's instance counts, which step 2 then follows where budgets allow (solver.queue_seed)."""
    pools = Pools(q, x, rejected)
    if n is not None:
        from solver.queue_seed import seed_counts

        seed_counts(pools, n)
    _fix_cores(pools)
    _fix_capacity(pools)
    _bound_spread(pools)
    _place_rejected(pools)
    _sweep_residue(pools)
    _bound_spread(pools, SHED_BY_REJECTING)  # rate placed in step 5 may have opened instances past the bound
    if pools.rejected_for_bound > 0:  # rate rejected for the bound: its cores serve rejected streams of open pools
        _refill_open_pools(pools)
    return pools


def _sweep_residue(pools: Pools) -> None:
    """Rate left (by float residue of moves) on a pool with no instance joins the stream's largest share."""
    idle = pools.counts() == 0  # [j, k]
    for c, j in zip(*np.nonzero(pools.x > 0), strict=True):
        k = int(pools.q.base.class_model[c])
        if not idle[j, k]:
            continue
        amount = float(pools.x[c, j])
        pools.x[c, j] = 0.0
        live = np.where(~idle[:, k], pools.x[c], 0.0)
        t = int(np.argmax(live))
        before = pools.counts()[t, k]
        pools.x[c, t] += amount
        if live[t] <= 0 or pools.counts()[t, k] != before:  # no open pool, or it would need another instance
            pools.x[c, t] -= amount
            pools.rejected[c] += amount


def _evacuate(pools: Pools, j: int, k: int, exclude: set[int]) -> bool:
    """Move every stream of pool (j, k) into other open pools; False (nothing moved) if some part fits nowhere."""
    saved = pools.x.copy()
    lam, counts = pools.state()
    for c in np.nonzero((pools.q.base.class_model == k) & (pools.x[:, j] > 0))[0].tolist():
        amount = float(pools.x[c, j])
        dst = pools.best_destination(c, amount, exclude | {j}, open_only=True, state=(lam, counts))
        if dst is None:
            pools.x = saved
            return False
        pools.move(c, j, dst, amount)
        lam[j, k] -= amount
        lam[dst, k] += amount
        both = [j, dst]
        counts[both, k] = needed(lam[both, k], pools.cap[both, k])
    return True


def _fix_cores(pools: Pools) -> None:
    """Step 3's core rule: a node over its busy-work limit sheds its smallest streams' rate to ``rejected``;
    a pool on a node with cores that Ipopt's tolerance left a hair (``HAIR_TOLERANCE`` of its rate) above whole
    instances at its cap (where the core row binds) sheds the hair, so it does not count one instance more."""
    q, p = pools.q, pools.q.base
    lam, counts = pools.state()
    hair = np.isfinite(pools.cores)[:, None] & (counts > needed(lam * (1 - HAIR_TOLERANCE), pools.cap))
    for j, k in zip(*np.nonzero(hair), strict=True):
        excess = float(lam[j, k] - (counts[j, k] - 1) * pools.cap[j, k])
        _reject_rate(pools, j, np.flatnonzero((p.class_model == k) & (pools.x[:, j] > 0)).tolist(), excess)
    room = core_room(pools.lam(), q.mu, pools.cores, q.rho_max)
    for j in np.flatnonzero(over_cores(pools.lam(), q.mu, pools.cores, q.rho_max)).tolist():
        excess = -float(room[j]) * (1 + 1e-9)  # seconds of service per second
        members = _smallest_first(pools, j, np.flatnonzero(pools.x[:, j] > 0).tolist())
        _reject_rate(pools, j, members, excess, [float(q.mu[j, p.class_model[c]]) for c in members])


def _smallest_first(pools: Pools, j: int, members: list[int]) -> list[int]:
    """``members`` (classes) by their rate at node j, smallest first (ties in the given order)."""
    return sorted(members, key=lambda c: pools.x[c, j])


def _reject_rate(pools: Pools, j: int, members: list[int], excess: float, scale: list[float] | None = None) -> None:
    """Move the members' rate at node j to ``rejected``, in their order, until ``excess`` is covered.

    ``scale[i]``: req/s of ``members[i]`` per unit of ``excess`` (1: ``excess`` is in req/s)."""
    for i, c in enumerate(members):
        unit = 1.0 if scale is None else scale[i]
        take = min(excess * unit, float(pools.x[c, j]))
        pools.x[c, j] -= take
        pools.rejected[c] += take
        excess -= take / unit
        if excess <= 0:
            break


def _fix_capacity(pools: Pools) -> None:
    """Step 3: shrink the smallest pools of over-budget nodes by one instance each until they fit.

    The rate the smaller pool cannot take moves elsewhere (``_spill``); what fits nowhere is rejected.
    """
    for j in pools.over_budget(pools.counts()):
        for _ in range(int(pools.counts()[j].sum()) + 1):  # each pass stops one instance
            if j not in pools.over_budget(pools.counts()):
                break
            lam, counts = pools.lam()[j], pools.counts()[j]
            open_k = [k for k in range(len(lam)) if counts[k] > pools.q.base.free[j, k]]
            if not open_k:
                break
            k = least(open_k, [float(lam[k]) for k in open_k])  # near-ties: the first (solver.ties)
            excess = float(lam[k] - (counts[k] - 1) * pools.cap[j, k] * (1.0 - 1e-9))
            members = np.nonzero((pools.q.base.class_model == k) & (pools.x[:, j] > 0))[0].tolist()
            _reject_rate(pools, j, _smallest_first(pools, j, members), excess)
            pools.x[:, j] = np.where(pools.x[:, j] > TINY, pools.x[:, j], 0.0)


def _bound_spread(pools: Pools, reject: bool = False) -> None:
    """Step 4: per model and node class, at most the class's need plus one spare instance (``reject``: where no
    move frees one, reject the least loaded last instance's rate; the last pass only, so a plan that keeps
    the bound without it is never touched)."""
    q = pools.q
    clear = _within_bound(pools)
    for k in range(len(q.base.model_names)):
        for g in sorted(set(q.node_class)):
            if clear.get((k, g)):
                continue  # the loop below would stop at once
            nodes = [j for j in range(q.base.n_nodes) if q.node_class[j] == g]
            stuck: set[int] = set()
            while True:
                lam = pools.lam()
                counts = needed(lam, pools.cap)  # pools.counts()
                need = math.ceil(sum(lam[j, k] / (q.rho_max * q.mu[j, k]) for j in nodes) - 1e-9)
                open_j = [j for j in nodes if counts[j, k] > 0 and j not in stuck]
                if sum(int(counts[j, k]) for j in nodes) <= need + 1:
                    break
                if _shed_instance(pools, nodes, k, (lam, counts)):
                    continue
                if len(open_j) < 2:
                    if SHED_BY_MOVING and (_shed_by_moving(pools, nodes, k) or _swap_with_room(pools, nodes, k)):
                        continue
                    if _drain_running(pools, nodes, k):
                        continue
                    if reject and _reject_for_bound(pools, nodes, k):
                        stuck.clear()  # the rejected rate freed core room: a stuck pool may move now
                        continue
                    break
                smallest = least(open_j, [float(lam[j, k]) for j in open_j])  # near-ties: the first (solver.ties)
                others = {j for j in range(q.base.n_nodes) if j not in nodes or j == smallest}
                if not _evacuate(pools, smallest, k, others) and not _gather_with_room(pools, smallest, k, nodes):
                    stuck.add(smallest)


def _within_bound(pools: Pools) -> dict[tuple[int, str], bool]:
    """(model, node class) -> whether its pools are within the spread bound with a margin that float
    summation order cannot cross (vectorised; ``_bound_spread`` skips those)."""
    q = pools.q
    lam, counts = pools.state()
    load = (lam / (q.rho_max * q.mu)).T  # [k, j]
    out = {}
    for g in set(q.node_class):
        nodes = [j for j in range(q.base.n_nodes) if q.node_class[j] == g]
        need = np.ceil(load[:, nodes].sum(axis=1) - 1e-6)
        have = counts[nodes].sum(axis=0)
        for k, ok in enumerate((have <= need + 1).tolist()):
            out[(k, g)] = ok
    return out


def _gather_with_room(pools: Pools, src: int, k: int, nodes: list[int]) -> bool:
    """Where models share saturated cores: make core room, then gather (solver.queue_cores)."""
    from solver.queue_cores import gather_making_room

    return gather_making_room(pools, src, k, nodes)


def _swap_with_room(pools: Pools, nodes: list[int], k: int) -> bool:
    """Where every node's cores are full: shed part of a pool after moving other models' rate off the
    receiving node (solver.queue_cores)."""
    from solver.queue_cores import shed_making_room

    return shed_making_room(pools, nodes, k)


def _reject_for_bound(pools: Pools, nodes: list[int], k: int) -> bool:
    """Where no move frees an instance (every node's cores full): reject the least loaded last instance's rate
    (solver.queue_reject); ``_refill_open_pools`` then places rejected streams in the cores it freed."""
    from solver.queue_reject import shed_by_rejecting

    return shed_by_rejecting(pools, nodes, k)


def _refill_open_pools(pools: Pools) -> None:
    """After rate was rejected for the bound: rejected streams placed by step 5 again, within the bound
    (``REFILL_OPENS``), else only into open pools' headroom (solver.queue_reject)."""
    if REFILL_OPENS:
        _place_rejected(pools)
        return
    from solver.queue_reject import refill_open_pools

    refill_open_pools(pools)


def _drain_running(pools: Pools, nodes: list[int], k: int) -> bool:
    """Where only pools that reuse running instances are left: drain one's traffic (solver.queue_running)."""
    from solver.queue_running import drain_running

    return drain_running(pools, nodes, k)


def _shed_instance(pools: Pools, nodes: list[int], k: int, state: tuple[FloatArray, IntArray] | None = None) -> bool:
    """One instance fewer in the pool of ``nodes`` that stays least loaded without it, at most ``rho_max``
    (``state``: the current (lam, counts), where the caller has them)."""
    q = pools.q
    lam, counts = pools.state() if state is None else state
    options = [
        (float(lam[j, k] / ((counts[j, k] - 1) * q.mu[j, k])), j)
        for j in nodes
        if counts[j, k] >= 2 and lam[j, k] <= (counts[j, k] - 1) * q.rho_max * q.mu[j, k] * (1 - 1e-9)
    ]
    if not options:
        return False
    _, j = min(options)
    pools.cap[j, k] = max(pools.cap[j, k], float(lam[j, k]) / (counts[j, k] - 1) * (1 + 1e-9))
    pools.shed += 1
    return True


def _shed_by_moving(pools: Pools, nodes: list[int], k: int) -> bool:
    """One instance fewer in a pool of ``nodes`` that starts new ones: the rate above what one instance
    fewer carries at ``rho_max`` moves into the class's other open pools of model k, up to ``rho_max`` on
    their instances (none grows; load caps below ``rho_max`` are raised, as in ``_shed_instance``)."""
    q, p = pools.q, pools.q.base
    lam, counts = pools.state()
    top = q.rho_max * q.mu[:, k]  # [j] req/s one instance may take at rho_max
    by_cores = core_room(lam, q.mu, pools.cores, q.rho_max) * q.mu[:, k]  # [j] req/s the node's cores still take
    full_room = {
        j: min(float(counts[j, k] * top[j] - lam[j, k]), float(by_cores[j])) * (1 - 1e-9)
        for j in nodes
        if counts[j, k] > 0
    }
    options = sorted((float(lam[j, k] - (counts[j, k] - 1) * top[j]), j) for j in nodes if counts[j, k] > p.free[j, k])
    for excess, j in options:
        room = {o: r for o, r in full_room.items() if o != j}
        if sum(room.values()) < max(excess, 0.0) * (1 + 1e-9) + TINY:
            continue
        saved_x, saved_cap = pools.x.copy(), pools.cap.copy()
        left = min(max(excess, 0.0) * (1 + 1e-9) + TINY, float(lam[j, k]))
        for c in np.nonzero((p.class_model == k) & (pools.x[:, j] > 0))[0].tolist():
            for dst in sorted((o for o in room if room[o] > TINY), key=lambda o: (p.cost[c, o], o)):
                take = min(left, float(pools.x[c, j]), room[dst])
                if take <= 0:
                    break
                pools.move(c, j, dst, take)
                room[dst] -= take
                left -= take
        now = pools.lam()[:, k]
        for o in (*room, j):
            keep = counts[o, k] - (1 if o == j else 0)
            if keep > 0:
                pools.cap[o, k] = max(pools.cap[o, k], float(now[o]) / keep * (1 + 1e-9))
        after = pools.counts()
        if after[j, k] == counts[j, k] - 1 and all(after[o, k] <= counts[o, k] for o in room):
            pools.shed += 1
            return True
        pools.x, pools.cap = saved_x, saved_cap
    return False


def _place_rejected(pools: Pools) -> None:
    """Step 5: rejected rate where it fits: whole where possible, else in parts on the cheapest nodes; a
    placement that would open instances past the spread bound is not made (``_move_within_bound``)."""
    p = pools.q.base
    for c in np.nonzero(pools.rejected > TINY)[0].tolist():
        k = int(p.class_model[c])
        amount = float(pools.rejected[c])
        lam = pools.lam()  # the rates as the three steps below read them (none changes them before the next)
        if SKIP_FULL_CORES and _no_core_room(pools, k, amount, lam):
            pools.rejected[c] = max(0.0, amount)
            continue  # every node's cores are full: neither step below can move anything (``_no_core_room``)
        now = (lam, needed(lam, pools.cap))
        limit = max(bound_excess(pools, k, now), 0) if BOUND_STEP_5 else 10**9  # step 4 may have been stuck
        if _place_whole(pools, c, amount, limit, now):
            continue
        state = pools.room_state()  # the rates change only where a move is made or undone
        mu = pools.q.mu[:, k].tolist()
        for j in np.argsort(p.cost[c], kind="stable").tolist():
            if pools.rejected[c] <= TINY:
                break  # every take below is at most the rate left, so none would be made
            if float(state[3][j]) * mu[j] <= TINY:
                continue  # no core room on node j: room() is at most this for either ``grow``
            for grow in (True, False):  # new instances where the bound allows them, else the open pool's headroom
                take = min(float(pools.rejected[c]), pools.room(j, k, grow, state))
                if take <= TINY:
                    if grow:
                        break  # the room without new instances is no larger
                    continue
                saved = _cell(pools, c, j)
                moved = _move_within_bound(pools, c, j, take, limit, (state[0], state[1]))
                state = _state_after(pools, (c, j, saved, moved), state, pools.room_state)
                if moved:
                    break
        pools.rejected[c] = max(0.0, float(pools.rejected[c]))


def _no_core_room(pools: Pools, k: int, amount: float, lam: FloatArray | None = None) -> bool:
    """Whether no node has core room for any of ``amount`` (> 2 ``TINY``) req/s of model k: then ``best_destination``
    finds no node (room below ``TINY`` / mu < amount / mu) and step 5's loop skips every node (the same product
    ``room x mu`` it tests), so the class's rejected rate stays as it is, exactly."""
    if amount <= 2 * TINY:
        return False
    room = core_room(pools.lam() if lam is None else lam, pools.q.mu, pools.cores, pools.q.rho_max)
    return all(r * m <= TINY for r, m in zip(room.tolist(), pools.q.mu[:, k].tolist(), strict=True))


def _place_whole(
    pools: Pools, c: int, amount: float, limit: int, state: tuple[FloatArray, IntArray] | None = None
) -> bool:
    """Class c's whole rejected ``amount`` on its best destination, else its best open pool (``_move_within_bound``;
    ``state``: the current (lam, counts), where the caller has them)."""
    state = pools.state() if state is None else state
    for open_only in (False, True):
        dst = pools.best_destination(c, amount, set(), open_only, state)
        if dst is None:
            return False  # no node fits it, so no open pool does (the second pick is among the first's)
        saved = _cell(pools, c, dst)
        if _move_within_bound(pools, c, dst, amount, limit, (state[0], state[1])):
            return True
        state = _state_after(pools, (c, dst, saved, False), state, pools.state)
    return False


def _state_after(pools: Pools, tried: tuple[int, int, str, bool], state: Any, fresh: Any) -> Any:
    """Step 5's rate state after a try of class c at node j (``tried`` = (c, j, ``_cell`` before, kept)): ``state``
    itself where the try was undone bit for bit (the rates are then unchanged; the state is read from the rates
    and caps only), else ``fresh()`` (a kept move, or an undone one that left float residue: read again)."""
    c, j, saved, moved = tried
    if not moved and KEEP_EXACT_STATE and _cell(pools, c, j) == saved:
        return state
    return fresh()


def _cell(pools: Pools, c: int, j: int) -> str:
    """Class c's rate at node j, bit for bit (``float.hex``: a zero's sign included): all of the rates a move of
    class c to node j writes (it writes the rejected rate too, which no state of step 5 reads), so where an undone
    move leaves it as it was the rates are unchanged."""
    return float(pools.x[c, j]).hex()


def _move_within_bound(
    pools: Pools,
    c: int,
    dst: int,
    amount: float,
    limit: int,
    state: tuple[FloatArray, IntArray] | None = None,
) -> bool:
    """Move ``amount`` of class c's rejected rate to ``dst`` unless its model then runs more than ``limit``
    instances past the spread bound in some node class, or it opens an instance for a sliver (``SLIVER``)
    that is only part of the stream (a stream that rare as a whole, e.g. once a window, gets its instance).

    ``state``: (``pools.lam()``, ``pools.counts()``) before the move, where the caller has them."""
    k = int(pools.q.base.class_model[c])
    if state is not None and _opens_for_sliver(pools, c, dst, amount, state[0]):
        pools.move(c, None, dst, amount)  # the move and its undo below, float residue and all
        pools.move(c, dst, None, amount)
        return False
    before = int((pools.counts() if state is None else state[1])[:, k].sum())
    pools.move(c, None, dst, amount)
    lam = pools.lam()  # the rates after the move, read once for both checks (the same values each reads)
    after = needed(lam, pools.cap)
    part = amount < float(pools.q.rate[c]) * (1 - 1e-6)
    small = amount < _sliver_limit(pools, c, dst, k)
    sliver = BOUND_STEP_5 and part and small and after[:, k].sum() > before
    if not sliver and bound_excess(pools, k, (lam, after)) <= limit:
        return True
    pools.move(c, dst, None, amount)
    return False


def _opens_for_sliver(pools: Pools, c: int, dst: int, amount: float, lam: FloatArray) -> bool:
    """Whether ``_move_within_bound`` refuses the move as a sliver that opens an instance, known before the move:
    part of the stream, under ``SLIVER`` of one instance's load, to a pool with no rate at all (``lam`` the rates
    before; every share is >= 0, so all of that pool's are 0 and after the move its rate is ``amount`` exactly,
    whose count ``needed`` is 1 where amount / cap - 1e-9 > 0, one instance more than before)."""
    k = int(pools.q.base.class_model[c])
    cap = float(pools.cap[dst, k])
    part = amount < float(pools.q.rate[c]) * (1 - 1e-6)
    return bool(
        SLIVER_FIRST
        and BOUND_STEP_5
        and part
        and amount < _sliver_limit(pools, c, dst, k)
        and lam[dst, k] == 0.0
        and amount / cap - 1e-9 > 0.0
    )


def _sliver_limit(pools: Pools, c: int, dst: int, k: int) -> float:
    """Req/s below which part of class c's stream opens no instance at ``dst``: ``SLIVER`` of one instance's load,
    or (not ``HAIR_OPENS``) a hair: within the relaxation's own error of the stream (``HAIR_TOLERANCE`` of its
    rate) and as little of the new instance's load (a slow node's instance may be worth a hair of a stream)."""
    cap = float(pools.cap[dst, k])
    hair = 0.0 if HAIR_OPENS else HAIR_TOLERANCE * min(float(pools.q.rate[c]), cap)
    return max(SLIVER * cap, hair)


def bound_excess(pools: Pools, k: int, state: tuple[FloatArray, IntArray] | None = None) -> int:
    """The most instances model k runs past the spread bound (its need at ``rho_max`` + one spare) in a node class.

    ``state``: the current (lam, counts), where the caller has them."""
    q = pools.q
    lam, counts = pools.state() if state is None else state
    load = np.bincount(pools.node_group, weights=lam[:, k] / (q.rho_max * q.mu[:, k]))
    running = np.bincount(pools.node_group, weights=counts[:, k])
    return int(np.max(running - (np.ceil(load - 1e-9) + 1)))
