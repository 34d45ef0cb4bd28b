"""Pool closing (``solver.queue_close``) with the candidate checks vectorised and each try in scalar Python.

The same two passes, in the same order, with the same decisions as ``solver.queue_close.close_pools``
(the reference and the test oracle; ``tests/unit/test_queue_close_fast.py`` checks the placements are
equal). What changes is the cost of a pass:

* One view per step (``_View``): pool rates, instance counts, each node's memory and compute in use and
  the integer objective are computed once, not once per candidate.
* The close screen (``queue_close._worth_trying``) and the move screen (``queue_close._move_one``'s
  two-pool bound) run in numpy over every open pool at once. The close screen's falls and shares are made only
  in a step that reaches a pool a cheaper bound cannot pass (``surely_worth``: its extra RTT + execution below its
  own term; on the bench's thesis-size cases at cores 97 % of the pools tried, so 108 of 680 steps make them).
* A close try evacuates the pool on plain Python lists (the model's open pools only: a few nodes), its
  budgets checked on the nodes it touches and its objective change summed over the pools it touches;
  nothing is written back unless it is kept.
* A pool whose try failed is skipped until its model's rates, or the memory and compute in use where
  that model has open pools, change (a version counter per model instead of a copy of its rates).

Moves pass the screen rarely; those are checked as the reference checks them.

Nodes with ``cores`` (solver.node_cpu) are handled as the reference handles them: a destination needs
core room for the rate it takes (the try's busy work kept per node), a try fails where a touched node's
busy work ends over ``rho_max`` of its cores, and the objective change counts the other models' pools
on a touched node whose instance total changes while it exceeds the node's cores (their effective
servers change with it).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

from solver.node_cpu import TOL as CORE_TOL
from solver.node_cpu import busy, over_cores
from solver.problem import FloatArray, IntArray
from solver.queue_close import MOVE_CANDIDATES, close_screen, integer_objective, own_terms
from solver.queue_repair import TINY, Pools, needed
from solver.ties import ascending

log = logging.getLogger(__name__)

CHECK_BUDGETS = True  # a try's memory and compute check (switched off only to show the equality test failing)
CHECK_CORES = True  # a try's core-room and busy-work check (likewise)
SCREEN_CORES = True  # move tries that _try_move's core or over-budget check would fail are not made (exact)
LAZY_SCREEN = True  # the close screen made only where surely_worth cannot pass a pool (exact; off: made every step)
SURE_MARGIN = 1e-12  # surely_worth's margin, relative to the screen's terms (rounding there is ~1e-16 of them)
BoolArray = npt.NDArray[np.bool_]


class _Static:
    """What no closing step changes: per-model classes, costs, budgets and caps as Python lists."""

    def __init__(self, pools: Pools) -> None:
        q, p = pools.q, pools.q.base
        self.K = len(p.model_names)
        self.class_idx = [np.flatnonzero(p.class_model == k) for k in range(self.K)]  # [k] its classes, as an index
        self.classes = [idx.tolist() for idx in self.class_idx]
        self.cost_rows = [p.cost[idx] for idx in self.class_idx]  # [k] the cost rows of its classes
        self.cost: list[list[float]] = p.cost.tolist()
        self.cap: list[list[float]] = pools.cap.T.tolist()  # [k][j]
        self.free: list[list[int]] = p.free.T.tolist()
        self.mu: list[list[float]] = q.mu.T.tolist()
        self.service: list[list[float]] = pools.service_ms.T.tolist()
        self.mem: list[float] = p.mem.tolist()
        self.comp: list[float] = p.comp.tolist()
        self.mem_budget: list[float] = p.mem_budget.tolist()
        self.comp_budget: list[float] = p.comp_budget.tolist()
        self.rho, self.beta = q.rho_max, q.instance_cost
        self.top: list[list[float]] = (q.rho_max * q.mu).T.tolist()  # [k][j] req/s one instance takes at rho_max
        self.groups = [np.flatnonzero(pools.node_group == g).tolist() for g in range(int(pools.node_group.max()) + 1)]
        self.cores: list[float] = np.asarray(pools.cores, dtype=float).tolist()
        self.core_room: list[float] = (q.rho_max * np.asarray(pools.cores, dtype=float)).tolist()  # [j] busy-work cap
        self.core_limit = [r * (1 + CORE_TOL) + CORE_TOL for r in self.core_room]  # as node_cpu.over_cores
        self.core_limit_j = np.array(self.core_limit, dtype=float)

    def share(self, j: int, total: int) -> float:
        """Each instance's share of a core on node j running ``total`` instances (``effective_servers``)."""
        cores = self.cores[j]
        return cores / total if total > cores else 1.0

    def term(self, j: int, k: int, lam: float, n: int, share: float = 1.0) -> float:
        """Pool (j, k)'s part of the integer objective at rate ``lam`` on ``n`` instances, each with
        ``share`` of a server."""
        if n <= 0:
            return 0.0
        return self.beta * max(n - self.free[k][j], 0) + self.wait(j, k, lam, n * share)

    def wait(self, j: int, k: int, lam: float, servers: float) -> float:
        """Pool (j, k)'s M/M/1 wait term at rate ``lam`` on ``servers`` effective servers."""
        mu = self.mu[k][j]
        t = min(lam / servers, self.rho * mu)
        return lam * (1000.0 / (mu - t) - self.service[k][j])


class _View:
    """The placement's state at the start of a step (pools.x unchanged while it is used)."""

    def __init__(self, pools: Pools, static: _Static) -> None:
        p = pools.q.base
        self.lam = pools.lam()
        self.counts = needed(self.lam, pools.cap)
        new = np.maximum(self.counts - p.free, 0)
        self.mem_used, self.comp_used = new @ p.mem, new @ p.comp
        over = (self.mem_used > p.mem_budget + TINY) | (self.comp_used > p.comp_budget + TINY)
        over |= over_cores(self.lam, pools.q.mu, pools.cores, pools.q.rho_max)
        self.over = set(np.flatnonzero(over).tolist())
        self.busy_j = busy(self.lam, pools.q.mu)  # [j] seconds of service per second
        self.busy: list[float] = self.busy_j.tolist()
        self.total: list[int] = self.counts.sum(axis=1).tolist()  # [j] instances on the node
        self.lam_j, self.cnt_j = self.lam.tolist(), self.counts.tolist()  # [j][k]
        self.before = integer_objective(pools, (self.lam, self.counts))
        self.tol = 1e-9 * max(1.0, abs(self.before))
        self.lam_k, self.cnt_k = self.lam.T.tolist(), self.counts.T.tolist()  # [k][j]
        self.used = [[m, c] for m, c in zip(self.mem_used.tolist(), self.comp_used.tolist(), strict=True)]
        self.open = [[j for j in range(p.n_nodes) if row[j] > 0] for row in self.cnt_k]  # [k] nodes with a pool
        self._sig: dict[int, tuple[Any, ...]] = {}
        self._order: list[int] | None = None
        self._screen: list[list[bool]] | None = None

    def screen(self, make: Callable[[], list[list[bool]]]) -> list[list[bool]]:
        """The close screen of this step (``make()`` once: pools.x does not change while the view is used)."""
        if self._screen is None:
            self._screen = make()
        return self._screen

    def order(self) -> list[int]:
        """``_open_order(self.lam)``, made once per view (both passes of a step read it)."""
        if self._order is None:
            self._order = _open_order(self.lam)
        return self._order

    def signature(self, k: int, version: int) -> tuple[Any, ...]:
        """What a failed try of a model-k pool depends on: model k's rates (their version), and the memory
        and compute in use on the nodes where model k has open pools (its streams can go nowhere else)."""
        if k not in self._sig:
            self._sig[k] = (version, tuple(tuple(self.used[o]) for o in self.open[k]))
        return self._sig[k]


def close_pools_fast(pools: Pools) -> int:
    """``queue_close.close_pools``'s passes until neither applies; returns how many pools closed or moved."""
    if pools.x.size == 0:
        return 0
    static = _Static(pools)
    failed: dict[tuple[int, int], tuple[Any, ...]] = {}
    versions = [0] * static.K
    steps = 0
    for _ in range(4 * pools.counts().size + 1):  # each step closes a pool or strictly lowers the objective
        view = _View(pools, static)
        k = _close_one(pools, static, view, failed, versions)
        if k is None:
            k = _move_one(pools, static, view)
        if k is None:
            break
        versions[k] += 1
        steps += 1
    return steps


def _open_order(lam: FloatArray) -> list[int]:
    """Flat indices (j * K + k) of the pools with traffic, smallest rate first (as ``queue_close._open_pools``)."""
    flat = lam.ravel()
    idx = np.flatnonzero(flat > TINY)
    return ascending(idx.tolist(), flat[idx].tolist())  # near-ties in pool order (solver.ties)


def _least_elsewhere(score: FloatArray) -> FloatArray:
    """[c, j] the least of row c of ``score`` over the columns other than j (inf where there is none)."""
    J = score.shape[1]
    two = np.partition(score, 1, axis=1)
    first = np.argmin(score, axis=1)
    return np.asarray(np.where(np.arange(J)[None, :] == first[:, None], two[:, 1:2], two[:, 0:1]))


def _per_pool(pools: Pools, per_class: FloatArray) -> FloatArray:
    """[j, k] the sum of ``pools.x * per_class`` over the streams of model k that pool (j, k) carries."""
    p = pools.q.base
    rows, cols = np.nonzero(pools.x > 0)  # row by row: each pool's terms in class order, as a dense add.at adds
    out = np.zeros((len(p.model_names), p.n_nodes))
    np.add.at(out, (p.class_model[rows], cols), pools.x[rows, cols] * per_class[rows, cols])  # zeros add nothing
    return out.T


def worth_trying(pools: Pools, lam: FloatArray, counts: IntArray, extra: FloatArray | None = None) -> BoolArray:
    """[j, k] ``queue_close._worth_trying`` for every pool at once (``extra``: ``_extra(pools, counts)``, where the
    caller has it)."""
    p = pools.q.base
    if p.n_nodes < 2:
        return np.zeros(counts.shape, dtype=bool)
    open_ = counts > 0
    saves, fall = close_screen(pools, lam, counts)
    gain = saves + fall.sum(axis=0)[None, :] - fall  # the model's other open pools' falls (closed pools: 0)
    extra = _extra(pools, counts) if extra is None else extra
    has_other = open_.sum(axis=0)[None, :] - open_ >= 1
    return np.asarray(open_ & has_other & (extra <= gain + 1e-9 * np.maximum(1.0, gain)))


def _extra(pools: Pools, counts: IntArray) -> FloatArray:
    """[j, k] ``worth_trying``'s least extra RTT + execution of the pool's streams in its model's other open pools."""
    p = pools.q.base
    in_class = (counts > 0)[:, p.class_model].T  # [c, j]: class c's model has an open pool at j
    return _per_pool(pools, _least_elsewhere(np.where(in_class, p.cost, np.inf)) - p.cost)


def surely_worth(pools: Pools, lam: FloatArray, counts: IntArray, extra: FloatArray) -> BoolArray:
    """[j, k] pools that ``worth_trying`` passes, known without ``queue_close.close_screen``'s falls and shares (the
    screen's cost): where the extra RTT + execution is below the pool's own term, by a margin (``SURE_MARGIN`` of
    ``bound`` below) that covers the screen's rounding.

    Why exact: the screen passes where ``extra <= gain + 1e-9 max(1, gain)``, ``gain = (saves + F) - fall``, ``F``
    the model's falls summed over its pools, ``fall`` this pool's. In exact arithmetic on the computed terms
    ``gain >= saves >= own``: the shares lost that ``saves`` adds to ``own`` are >= 0 (more servers, no more wait,
    each operation rounded monotonically; a float sum of terms >= 0 less one of them is >= 0), and ``F >= fall``
    (the falls are >= 0). Rounding the two operations costs at most an ulp of ``saves + F`` or so, and ``saves + F``
    is at most ``bound`` = ``own`` + the node's waits + the model's own terms (a share lost is at most the pool's
    wait, a fall at most its pool's own term: ``best >= 0``, as ``lam (1000 / mu - service)`` is exactly 0). So
    ``extra <= own - SURE_MARGIN bound`` (1e-12: thousands of ulps) gives ``extra <= gain``, and the tolerance only
    widens it (tests/unit/test_queue_close_fast.py checks the implication on the bench's states)."""
    own, wait = own_terms(pools, lam, counts)
    bound = own + np.add.reduce(wait, axis=1)[:, None] + np.add.reduce(own, axis=0)[None, :]
    return np.asarray(_has_other(counts) & (extra <= own - SURE_MARGIN * bound))


def _has_other(counts: IntArray) -> BoolArray:
    """[j, k] ``worth_trying``'s first two tests alone: pool (j, k) is open and its model has another open pool."""
    open_ = counts > 0
    return np.asarray(open_ & (open_.sum(axis=0)[None, :] - open_ >= 1))


def _close_one(
    pools: Pools, static: _Static, view: _View, failed: dict[tuple[int, int], tuple[Any, ...]], versions: list[int]
) -> int | None:
    """Close the first pool (smallest rate first) that can close; its model, or None.

    With ``LAZY_SCREEN``, a pool is tested against the close screen (``worth_trying``) only where ``surely_worth`` does
    not pass it and it is not skipped as failed before: the screen's arrays are then made once for the step, and
    in most steps not at all. The same pools are tried as with the screen made first (both tests must pass)."""
    K = static.K
    worth: list[list[bool]] | None = None
    if LAZY_SCREEN and pools.q.base.n_nodes >= 2:
        extra = _extra(pools, view.counts)
        sure = surely_worth(pools, view.lam, view.counts, extra).tolist()
        candidate = _has_other(view.counts).tolist()
    else:
        worth = worth_trying(pools, view.lam, view.counts).tolist()
    for f in view.order():
        j, k = divmod(f, K)
        if worth is None:
            if not candidate[j][k]:
                continue
        elif not worth[j][k]:
            continue
        sig = view.signature(k, versions[k])
        if failed.get((j, k)) == sig:
            continue
        if worth is None and not sure[j][k]:
            full = view.screen(lambda: worth_trying(pools, view.lam, view.counts, extra).tolist())
            if not full[j][k]:
                continue
        moves = _try_close(pools, static, view, j, k)
        if moves is None:
            failed[(j, k)] = sig
            continue
        for c, dst, amount in moves:
            pools.move(c, j, dst, amount)
        log.debug("closed pool %s/%s", pools.q.base.node_ids[j], pools.q.base.model_names[k])
        return k
    return None


def _try_close(pools: Pools, static: _Static, view: _View, j: int, k: int) -> list[tuple[int, int, float]] | None:
    """The moves that empty pool (j, k) into the model's other open pools, if they fit and do not cost more."""
    col = pools.x[:, j]
    if len(static.classes[k]) > 64:  # many classes: numpy picks the positive ones (in class order)
        members = np.flatnonzero((col > 0) & (pools.q.base.class_model == k)).tolist()
    else:
        members = [c for c, v in zip(static.classes[k], col[static.class_idx[k]].tolist(), strict=True) if v > 0]
    lam, cnt = list(view.lam_k[k]), list(view.cnt_k[k])
    cap, free = static.cap[k], static.free[k]
    used = {o: [*view.used[o], view.busy[o]] for o in view.open[k]}
    open_ = [o for o in view.open[k] if o != j]
    mem_k, comp_k, costs, mu = static.mem[k], static.comp[k], static.cost, static.mu[k]
    moves: list[tuple[int, int, float]] = []
    delta = 0.0
    for c, amount in zip(members, col[members].tolist(), strict=True):
        dst = _destination(static, c, k, amount, open_, lam, cnt, used)
        if dst is None:
            return None
        moves.append((c, dst, amount))
        delta += amount * (costs[c][dst] - costs[c][j])
        for o, change in ((j, -amount), (dst, amount)):
            lam[o] += change
            used[o][2] += change / mu[o]
            after = math.ceil(lam[o] / cap[o] - 1e-9) if lam[o] > 0 else 0
            grown = max(after - free[o], 0) - max(cnt[o] - free[o], 0)
            if grown:
                used[o][0] += grown * mem_k
                used[o][1] += grown * comp_k
            cnt[o] = after
    touched = {j} | {dst for _, dst, _ in moves}
    if view.over - touched or any(_over(static, o, used[o]) for o in touched):
        return None
    if _spread_excess(static, k, lam, cnt):
        return None
    delta += _terms_change(static, view, k, touched, lam, cnt)
    return moves if delta <= view.tol else None


def _terms_change(static: _Static, view: _View, k: int, touched: set[int], lam: list[float], cnt: list[int]) -> float:
    """The change in the pool terms of the integer objective when model k's rates and counts on the
    ``touched`` nodes become ``lam`` and ``cnt``: model k's pools there, and where a node's instance total
    changes its cores' share, every other pool on it."""
    k_lam, k_cnt = view.lam_k[k], view.cnt_k[k]
    delta = 0.0
    for o in sorted(touched):
        total = view.total[o]
        was, now = static.share(o, total), static.share(o, total - k_cnt[o] + cnt[o])
        delta += static.term(o, k, lam[o], cnt[o], now) - static.term(o, k, k_lam[o], k_cnt[o], was)
        if now == was:
            continue
        row_lam, row_cnt = view.lam_j[o], view.cnt_j[o]
        for k2, n2 in enumerate(row_cnt):
            if k2 != k and n2 > 0:
                delta += static.wait(o, k2, row_lam[k2], n2 * now) - static.wait(o, k2, row_lam[k2], n2 * was)
    return delta


def _destination(
    static: _Static, c: int, k: int, amount: float, open_: list[int], lam: list[float], cnt: list[int], used: Any
) -> int | None:
    """``Pools.best_destination(open_only=True)`` on lists: a pool that needs no new instance first, then cheapest.

    ``used[o]``: node o's memory, compute and busy work in use at the try's current rates."""
    cap, free, cost, mu = static.cap[k], static.free[k], static.cost[c], static.mu[k]
    mem_k, comp_k, mem_b, comp_b = static.mem[k], static.comp[k], static.mem_budget, static.comp_budget
    check, cores, room = CHECK_BUDGETS, CHECK_CORES, static.core_room
    stays = fits = -1
    stays_cost = fits_cost = math.inf
    for o in open_:
        after = math.ceil((lam[o] + amount) / cap[o] - 1e-9)
        f = free[o]
        grown = (after - f if after > f else 0) - (cnt[o] - f if cnt[o] > f else 0)
        u = used[o]
        if check and (u[0] + grown * mem_k > mem_b[o] + TINY or u[1] + grown * comp_k > comp_b[o] + TINY):
            continue
        if cores and not room[o] - u[2] >= amount / mu[o] * (1 + 1e-9):
            continue
        co = cost[o]
        if co < fits_cost or fits < 0:
            fits, fits_cost = o, co
        if after <= cnt[o] and (co < stays_cost or stays < 0):
            stays, stays_cost = o, co
    return stays if stays >= 0 else (fits if fits >= 0 else None)


def _over(static: _Static, o: int, used: list[float]) -> bool:
    """Whether node o's memory, compute (``used[0]``, ``used[1]``) or busy work (``used[2]``) is over budget."""
    if CHECK_BUDGETS and (used[0] > static.mem_budget[o] + TINY or used[1] > static.comp_budget[o] + TINY):
        return True
    return CHECK_CORES and used[2] > static.core_limit[o]


def _spread_excess(static: _Static, k: int, lam: list[float], cnt: list[int]) -> bool:
    """``queue_close.spread_excess`` for model k at the try's rates and counts (same sums, same order)."""
    top = static.top[k]
    for nodes in static.groups:
        load = running = 0.0
        for o in nodes:
            load += lam[o] / top[o]
            running += cnt[o]
        if running > math.ceil(load - 1e-9) + 1:
            return True
    return False


def _terms(pools: Pools, lam: FloatArray, at: tuple[Any, ...]) -> FloatArray:
    """Pool terms of the integer objective (``queue_close._pool_term``) at rates ``lam`` for the pools ``at``
    (an index into [j, k] arrays), vectorised."""
    q = pools.q
    n = needed(lam, pools.cap[at])
    mu = q.mu[at]
    t = np.minimum(lam / np.where(n > 0, n, 1), q.rho_max * mu)
    wait = lam * (1000.0 / (mu - t) - pools.service_ms[at])
    return np.where(n > 0, q.instance_cost * np.maximum(n - q.base.free[at], 0) + wait, 0.0)


def _move_one(pools: Pools, static: _Static, view: _View) -> int | None:
    """``queue_close._move_one``: its two-pool objective change for every open pool and candidate node at once."""
    p = pools.q.base
    J, K = p.n_nodes, static.K
    m = min(MOVE_CANDIDATES, J - 1)
    order = view.order()
    if not order or m < 1:
        return None
    # by[k, j, o]: the RTT + execution of pool (j, k)'s streams if all sat at node o
    by = np.stack([pools.x[cs].T @ rows for cs, rows in zip(static.class_idx, static.cost_rows, strict=True)])
    ranks = np.argsort(by, axis=2, kind="stable")[:, :, : m + 1]
    keep = ranks != np.arange(J)[None, :, None]
    keep &= np.cumsum(keep, axis=2) <= m
    dsts = ranks[keep].reshape(K, J, m)  # the m cheapest nodes other than j
    kk, jj = np.arange(K)[:, None, None], np.arange(J)[None, :, None]
    here, there = _here_and_there(pools, view.lam, dsts)
    gain = by[kk, jj, dsts] - by[kk, jj, jj] - here[:, :, None] + there - here[kk, dsts]
    may = gain < 0.0
    if SCREEN_CORES and CHECK_CORES:
        may &= ~_hopeless_moves(pools, static, view, dsts)
    tries = may.tolist()
    over = view.over
    for f in order:
        j, k = divmod(f, K)
        for i in range(m):
            if not tries[k][j][i]:
                continue
            dst = int(dsts[k, j, i])
            if SCREEN_CORES and over and not over <= {j, dst}:
                continue  # a node over budget that the move does not touch: _try_move fails at once
            if _try_move(pools, static, view, j, k, dst):
                return k
    return None


def _here_and_there(pools: Pools, lam: FloatArray, dsts: IntArray) -> tuple[FloatArray, FloatArray]:
    """[k, j] each pool's term at its rate ``lam`` [j, k], and [k, j, i] model k's term at node ``dsts[k, j, i]``
    with pool (j, k)'s rate moved there: ``_terms`` of both in one call, [k, j, 0] and [k, j, 1:] (the same
    operations per element as two calls, ``_terms`` being elementwise; ~10 numpy calls fewer a step)."""
    K, J = lam.shape[1], lam.shape[0]
    kk, jj = np.arange(K)[:, None, None], np.arange(J)[None, :, None]
    lam_t = lam.T
    at = np.concatenate([np.broadcast_to(jj, (K, J, 1)), dsts], axis=2)
    rates = np.concatenate([lam_t[:, :, None], lam_t[:, :, None] + lam_t[kk, dsts]], axis=2)
    both = _terms(pools, rates, (at, kk))
    return both[:, :, 0], both[:, :, 1:]


def _hopeless_moves(pools: Pools, static: _Static, view: _View, dsts: IntArray) -> BoolArray:
    """[k, j, i] whether moving pool (j, k) whole to node ``dsts[k, j, i]`` leaves that node's busy work over its
    cores' limit: ``_try_move``'s core check on the destination, the same sum (its busy work plus the pool's rate
    over the destination's service rate) in the same order, so that try would fail."""
    kk = np.arange(static.K)[:, None, None]
    after = view.busy_j[dsts] + view.lam.T[:, :, None] / pools.q.mu.T[kk, dsts]
    return np.asarray(after > static.core_limit_j[dsts])


def _try_move(pools: Pools, static: _Static, view: _View, j: int, k: int, dst: int) -> bool:
    """Move pool (j, k) whole to ``dst`` if the budgets and the spread bound hold and the objective falls."""
    lam, cnt = list(view.lam_k[k]), list(view.cnt_k[k])
    cap, free, mu = static.cap[k], static.free[k], static.mu[k]
    used = {o: [*view.used[o], view.busy[o]] for o in (j, dst)}
    used[dst][2] += lam[j] / mu[dst]
    used[j][2] -= lam[j] / mu[j]
    lam[dst] += lam[j]
    lam[j] = 0.0
    for o in (j, dst):
        after = math.ceil(lam[o] / cap[o] - 1e-9) if lam[o] > 0 else 0
        grown = max(after - free[o], 0) - max(cnt[o] - free[o], 0)
        used[o][0] += grown * static.mem[k]
        used[o][1] += grown * static.comp[k]
        cnt[o] = after
    if view.over - {j, dst} or any(_over(static, o, used[o]) for o in (j, dst)):
        return False
    if _spread_excess(static, k, lam, cnt):
        return False
    col = pools.x[:, j]
    members = [c for c in static.classes[k] if col[c] > 0]
    delta = sum(float(col[c]) * (static.cost[c][dst] - static.cost[c][j]) for c in members)
    delta += _terms_change(static, view, k, {j, dst}, lam, cnt)
    if delta >= -view.tol:
        return False
    pools.x[members, dst] += pools.x[members, j]
    pools.x[members, j] = 0.0
    return True
