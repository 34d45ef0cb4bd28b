"""Move an instance to a node whose cores idle, within the instance bound (issue 16, nodes with cores).

The spread bound (need at ``rho_max`` + one spare per node class) fixes how many instances a model runs,
not where: repair takes instances back from the pools that stay least loaded without them, and pool
closing moves whole pools only. In the shared-cores lab at 120 req/s (three 2-core nodes, 50 req/s
instances, bound 4) that left 2 + 0 + 2 instances: one node's two cores idle, mean latency 74 ms,
simulated p99 295 ms, while 1 + 1 + 2 at its best split gives 55 ms and 185 ms.

Here, per model and node class, one instance at a time moves from a pool with several instances to a
node of the class with a core's worth of room (most room first), the new counts' rates split by Frank-Wolfe
(solver.queue_split); a move is kept when every pool stays within its cap on its new count, every node
within its budgets and cores, and the integer objective falls (the best of the tries per round). The
instance count does not change, so the bound holds. Only nodes with ``cores`` take part (elsewhere an
instance adds a server wherever it goes and repair's counts stand), and at most ``MAX_TRIES`` splits are
tried per solve (each costs a Frank-Wolfe run). A try whose run, after ``queue_split.ABANDON_STEP`` steps and
extrapolated at twice its last step's fall, still cannot beat the plan stops there (a heuristic: on the bench's
222 cases and the golden ones no move kept changed).

A round first runs the split without a move (best_split continues it), then tries only the moves that its split
says may pay (``screen``: the two nodes' pools re-priced at the moved counts and the best shift of rate between
the moved model's two pools, a gain of at least ``SCREEN_GAIN`` of the objective to beat). A heuristic too: over
integer_check's corpus at seeds 0-39 the move each round kept was estimated at -1.2 % or lower, and no plan moved
(docs/solver.md, "Session 19 (solver19a)").
"""

from __future__ import annotations

import dataclasses
import logging
import math

import numpy as np

from solver.node_cpu import core_room, effective_servers
from solver.problem import FloatArray, IntArray
from solver.queue_batch import hopeless, run_batch, sibling
from solver.queue_close import integer_objective
from solver.queue_model import QueueProblem
from solver.queue_repair import Pools
from solver.queue_split import ABANDON_STEP, ABANDONED, BoolArray, SplitRun, _SplitFlow, apply_split, split_run

log = logging.getLogger(__name__)

ENABLED = True  # switched off only to show the tests failing without it
MAX_TRIES = 4  # moves tried per solve, each a Frank-Wolfe run (thesis sizes with 2 cores per node: 8 tries of 20
TRY_ITERATIONS = 8  # steps cost 1.06x the rest of the solve's CPU; 4 of 8 steps to idle cores 0.16x, 11 ms)
IDLE_CORE = 1.0  # a destination has at least this much of its cores' busy-work limit free (a core's worth)
CANDIDATES = 2  # sources (most instances) and destinations (most core room) per model and node class
ABANDON = True  # a try whose run cannot beat the plan stops early (queue_split.ABANDON_STEP; off: every try runs out)
BATCH = True  # a round's runs make their Frank-Wolfe steps together (solver.queue_batch; the same runs bit for bit)
BATCH_SIZE = 4096  # ... where a run's split has at most this many entries (numpy's per-call cost dominates; on larger
# ones, e.g. 1,000 x 100, the tries given up at ABANDON_STEP would run on for nothing)
BATCH_MIN = 3  # ... where the screen leaves at least this many tries (one run alone is ~30 % cheaper than a batch of
# one; two together cost as much as two alone: measured on the thesis sizes at 2 cores, session 19)
SCREEN = True  # a try runs only where its two-pool estimate (``gain_estimates``) promises a gain (off: every try runs)
SCREEN_GAIN = 0.005  # ... of at least this fraction of what a move can change (kept in session 19: >= 1.2 %)
SCREEN_GRID = 64  # ... the rate shifted from the source pool to the destination's, tried in this many equal steps


def move_instances(pools: Pools) -> int:
    """Moves of the module docstring until none pays or the tries run out; returns how many were kept."""
    if not ENABLED or not np.isfinite(pools.cores).any():
        return 0
    moved, tries = 0, 0
    while tries < MAX_TRIES:
        counts = pools.counts()
        candidates = _candidates(pools, counts)[: MAX_TRIES - tries]
        if not candidates:
            break
        before, tried = _round(pools, counts, candidates)
        best: tuple[float, IntArray, FloatArray] | None = None
        for found in tried:
            tries += 1
            if found is not None and found[0] < before - 1e-9 * max(1.0, abs(before)):
                best = found if best is None or found[0] < best[0] else best
        if best is None or not apply_split(pools, best[2], best[1]):
            break
        moved += 1
        log.debug("moved an instance: objective %.3f -> %.3f", before, best[0])
    return moved


def _candidates(pools: Pools, counts: IntArray) -> list[tuple[int, int, int]]:
    """(from node, to node, model): per model and node class, its pools with several instances to the
    nodes with the most core room, at least ``IDLE_CORE`` (both on nodes with cores)."""
    q = pools.q
    room = core_room(pools.lam(), q.mu, pools.cores, q.rho_max).tolist()
    cores = pools.cores.tolist()
    groups = pools.node_group.tolist()
    by_model = counts.T.tolist()  # [k][j]
    out = []
    for k, row in enumerate(by_model):
        for g in sorted(set(groups)):  # np.unique's order
            mine = [j for j, h in enumerate(groups) if h == g and math.isfinite(cores[j])]  # on nodes with cores
            sources = sorted((j for j in mine if row[j] >= 2), key=lambda j: (-row[j], j))[:CANDIDATES]
            dests = [j for j in mine if row[j] < cores[j] and room[j] >= IDLE_CORE]
            dests = sorted(dests, key=lambda j: (-room[j], j))[:CANDIDATES]
            out += [(a, b, k) for a in sources for b in dests if a != b]
    return out


def _try(
    pools: Pools, counts: IntArray, move: tuple[int, int, int] | None, beat: float = np.inf
) -> tuple[float, IntArray, FloatArray] | None:
    """The integer objective, counts and split with one instance of model k moved from node a to node b
    (``move`` = (a, b, k); None: no move), or None where the split breaks a cap, a budget or a node's cores,
    or where its Frank-Wolfe run, extrapolated, cannot get below ``beat`` (queue_split.ABANDON_STEP)."""
    ready = _prepare(pools, counts, move)
    if ready is None:
        return None
    moved, inputs, start, fixed = ready
    if move is None:
        run = split_run(*inputs, start, TRY_ITERATIONS)
        pools.split_run = run  # best_split continues it where no move is kept (solver.queue_split.split_run)
        return _valued(pools, moved, run.x)
    split, _, gap = _SplitFlow(*inputs).run(start, TRY_ITERATIONS, abandon=beat - fixed)
    return None if gap == ABANDONED else _valued(pools, moved, split)


Tried = tuple[float, IntArray, FloatArray] | None


def _round(pools: Pools, counts: IntArray, moves: list[tuple[int, int, int]]) -> tuple[float, list[Tried]]:
    """One round: the objective a move must beat (the plan's, or the same split budget without a move: ``_try``
    with None) and each move's ``_try`` against it; with ``SCREEN``, the run without a move first and only the
    moves it leaves tried (``_round_screened``); else with ``BATCH``, every run of the round made together
    (``_round_together``)."""
    if SCREEN:
        return _round_screened(pools, counts, moves)
    if BATCH and pools.x.size <= BATCH_SIZE:
        return _round_together(pools, counts, moves)
    stay = _try(pools, counts, None)
    before = min(integer_objective(pools), stay[0] if stay else np.inf)
    beat = before if ABANDON else np.inf
    return before, [_try(pools, counts, move, beat) for move in moves]


def _round_screened(pools: Pools, counts: IntArray, moves: list[tuple[int, int, int]]) -> tuple[float, list[Tried]]:
    """``_round`` where the run without a move goes first and screens the moves (``screen``): a move it rules out
    counts as tried and failed (None), the others are tried as ``_round`` tries them (together with ``BATCH``). A
    round whose moves are all ruled out costs no Frank-Wolfe run of its own: best_split continues the run without a
    move (``pools.split_run``), which it would otherwise make itself."""
    stay = _try(pools, counts, None)
    before = min(integer_objective(pools), stay[0] if stay else np.inf)
    beat = before if ABANDON else np.inf
    kept = screen(pools, counts, moves, before) if stay is not None else [True] * len(moves)
    chosen = [move for move, keep in zip(moves, kept, strict=True) if keep]
    if BATCH and pools.x.size <= BATCH_SIZE and len(chosen) >= BATCH_MIN:
        found = iter(_tries_together(pools, counts, chosen, beat))
    else:
        found = iter([_try(pools, counts, move, beat) for move in chosen])
    return before, [next(found) if keep else None for keep in kept]


def screen(pools: Pools, counts: IntArray, moves: list[tuple[int, int, int]], before: float) -> list[bool]:
    """Which moves to try: those whose ``gain_estimates`` at the run without a move's split (``pools.split_run``,
    near that split's optimum: a try beats it only by what the move itself changes) fall below ``-SCREEN_GAIN`` of
    the part of ``before`` a move can change (less the rejection penalty), or are not finite. A heuristic, not a
    bound (the estimate is one re-routing, so the try's own optimum is at or below it; a try can gain where the
    estimate does not): on integer_check's corpus, seeds 0-39, every kept move's estimate was at or below -1.2 %;
    review19d found a move that paid 1.5 % estimated at -0.37 % elsewhere (docs/solver.md, session 19)."""
    if not moves:
        return []
    gains = gain_estimates(pools, pools.split_run.x, counts, moves)
    # the share of ``before`` a move can change: the rejection penalty is the same for every try (review19d F2: where
    # rejections dominate, a threshold on the whole objective ruled out moves that gain ~10 % of the rest)
    movable = abs(before - pools.penalty * float(pools.rejected.sum()))
    # a move is ruled out only on a finite estimate above the threshold: NaN or inf is no estimate, so it is tried
    return [not (math.isfinite(gain) and gain >= -SCREEN_GAIN * movable) for gain in gains.tolist()]


def gain_estimates(pools: Pools, x: FloatArray, counts: IntArray, moves: list[tuple[int, int, int]]) -> FloatArray:
    """[move] the integer objective's change for each move (a, b, k) from the split ``x`` on ``counts``: every pool
    on nodes a and b re-priced at its servers with the move (``effective_servers``: a node's cores shared by its
    instances) at its rate in ``x``, the instance term's change, and the best of ``SCREEN_GRID`` + 1 shifts of
    rate from pool (a, k) to pool (b, k) within ``rho_max`` of their servers, each shifted request/s at the least
    network cost change of model k's classes on node a. A shift past ``rho_max`` is priced by the wait's clip, as
    ``integer_objective`` prices it (the try itself may send the excess to third pools, or load a node with more
    instances than cores past its equal share: a limit here ruled out moves that paid, review19d F1)."""
    q, p = pools.q, pools.q.base
    lam = np.asarray(x.T @ pools.onehot)
    src, dst, mod = (np.array(column, dtype=np.intp) for column in zip(*moves, strict=True))
    nodes = np.stack([src, dst], axis=1)  # [move, 2]: the two nodes whose pools change
    index, ends = np.arange(len(moves))[:, None], np.arange(2)[None]  # [move, 1], [1, 2]: pools (a, k), (b, k)
    old = counts[nodes]  # [move, 2, k]
    new = old.copy()
    new[index, ends, mod[:, None]] += np.array([-1, 1])
    mu, service, rate, free = q.mu[nodes], pools.service_ms[nodes], lam[nodes], p.free[nodes]
    cores = pools.cores[nodes]
    servers = _servers(new, cores)
    after = _waits(rate, new, cores, mu, service, q.rho_max)
    change = after.sum(axis=(1, 2)) - _waits(rate, old, cores, mu, service, q.rho_max).sum(axis=(1, 2))
    change += q.instance_cost * (np.maximum(new - free, 0) - np.maximum(old - free, 0)).sum(axis=(1, 2))
    # the shift: rate d from pool (a, k) to pool (b, k), d in [0, lam[a, k]], both pools' rates as [move, 2, step]
    own = index, ends, mod[:, None]
    d = rate[index[:, 0], 0, mod][:, None] * np.linspace(0.0, 1.0, SCREEN_GRID + 1)[None]  # [move, step]
    moved = rate[own][:, :, None] + np.stack([-d, d], axis=1)
    waits = _wait(moved, servers[own][:, :, None], mu[own][:, :, None], service[own][:, :, None], q.rho_max)
    carried = (p.class_model[:, None] == mod[None]) & (x[:, src] > 0)  # [c, move]: model k's classes on node a
    network = np.where(carried, p.cost[:, dst] - p.cost[:, src], np.inf).min(axis=0)  # [move]
    network = np.where(np.isfinite(network), network, 0.0)
    shifted = (waits.sum(axis=1) + d * network[:, None]).min(axis=1)
    return np.asarray(change + shifted - after[own].sum(axis=1))


def _servers(counts: IntArray, cores: FloatArray) -> FloatArray:
    """``effective_servers`` of [move, node, k] counts on [move, node] cores."""
    total = counts.sum(axis=2)
    share = np.where(total > cores, cores / np.where(total > 0, total, 1), 1.0)
    return np.asarray(counts * share[:, :, None])


def _waits(
    rate: FloatArray, counts: IntArray, cores: FloatArray, mu: FloatArray, service: FloatArray, rho: float
) -> FloatArray:
    """``integer_objective``'s wait term of each pool ([move, node, k]) at ``counts``' servers."""
    return _wait(rate, np.where(counts > 0, _servers(counts, cores), 0.0), mu, service, rho)


def _wait(rate: FloatArray, servers: FloatArray, mu: FloatArray, service: FloatArray, rho: float) -> FloatArray:
    """``integer_objective``'s wait term of pools at ``rate`` on ``servers`` (a pool without servers waits 0)."""
    t = np.minimum(rate / np.where(servers > 0, servers, 1.0), rho * mu)
    return np.asarray(np.where(servers > 0, rate * (1000.0 / (mu - t) - service), 0.0))


def _tries_together(pools: Pools, counts: IntArray, moves: list[tuple[int, int, int]], beat: float) -> list[Tried]:
    """Each move's ``_try`` against ``beat``, their Frank-Wolfe runs made together (solver.queue_batch: the same runs,
    bit for bit, each stopped at ``ABANDON_STEP`` as ``_try`` stops it)."""
    shared = _shared(pools)
    ready = [_prepare(pools, counts, move, shared) for move in moves]
    runs = [r for r in ready if r is not None]
    if not runs:
        return [None] * len(ready)
    starts = [np.where(r[1][2], r[2], 0.0) for r in runs]  # as _round_together's (the same values)
    flows = [_SplitFlow(*runs[0][1])]
    flows += [sibling(flows[0], r[1][1], r[1][2]) for r in runs[1:]]  # the same rates: the first's arrays shared
    done = iter(run_batch(flows, starts, TRY_ITERATIONS, [beat - r[3] for r in runs]))
    out: list[Tried] = []
    for r in ready:
        if r is None:
            out.append(None)
            continue
        split, _, gap = next(done)
        out.append(None if gap == ABANDONED else _valued(pools, r[0], split))
    return out


def _round_together(pools: Pools, counts: IntArray, moves: list[tuple[int, int, int]]) -> tuple[float, list[Tried]]:
    """``_round`` with the Frank-Wolfe runs without a move and of every move made together (solver.queue_batch: the
    same runs, bit for bit). The tries' threshold is known only once the run without a move is valued, so the
    tries run on and the test at ``ABANDON_STEP`` is applied afterwards to the values they had there: a run's steps
    do not depend on its threshold, so a try not abandoned ends as it would alone, and an abandoned one gives None
    either way."""
    shared = _shared(pools)
    stay_ready = _prepare(pools, counts, None, shared)
    ready = [_prepare(pools, counts, move, shared) for move in moves]
    runs = ([] if stay_ready is None else [stay_ready]) + [r for r in ready if r is not None]
    marks: list[tuple[float, float] | None] = [None] * len(runs)
    starts = [np.where(r[1][2], r[2], 0.0) for r in runs]  # split_run's start (the tries' is the same)
    flows = [_SplitFlow(*runs[0][1])] if runs else []
    flows += [sibling(flows[0], r[1][1], r[1][2]) for r in runs[1:]]  # the same rates: the first's arrays shared
    firsts: list[tuple[float, FloatArray, FloatArray] | None] = [None] * len(runs)
    done = run_batch(flows, starts, TRY_ITERATIONS, [np.inf] * len(runs), marks, firsts) if runs else []
    stay = None
    if stay_ready is not None:
        (rated, servers, allowed), (x, steps, gap) = stay_ready[1], done[0]
        run = SplitRun(rated.rate, servers, allowed, starts[0], x, steps, gap, TRY_ITERATIONS, firsts[0])
        pools.split_run = run
        stay = _valued(pools, stay_ready[0], x)
    before = min(integer_objective(pools), stay[0] if stay else np.inf)
    beat = before if ABANDON else np.inf
    first = 0 if stay_ready is None else 1
    results = iter(zip(done[first:], marks[first:], strict=True))
    out: list[Tried] = []
    for r in ready:
        if r is None:
            out.append(None)
            continue
        (split, _, _), mark = next(results)
        gave_up = mark is not None and hopeless(mark[0], mark[1], TRY_ITERATIONS - ABANDON_STEP, beat - r[3])
        out.append(None if gave_up else _valued(pools, r[0], split))
    return before, out


Prepared = tuple[IntArray, tuple[QueueProblem, FloatArray, BoolArray], FloatArray, float]
Shared = tuple[FloatArray, QueueProblem, float]  # a round's served rates, the problem with them, rejected rate's term


def _shared(pools: Pools) -> Shared:
    """What every ``_prepare`` of a round computes alike (made once: the same values)."""
    served = pools.x.sum(axis=1)
    return served, dataclasses.replace(pools.q, rate=served), pools.penalty * float(pools.rejected.sum())


def _prepare(
    pools: Pools, counts: IntArray, move: tuple[int, int, int] | None, shared: Shared | None = None
) -> Prepared | None:
    """A try's counts, Frank-Wolfe inputs (rates, servers, allowed pools), start and the integer objective's terms
    the split does not move (None where a stream whose pool closed has nowhere to go; ``shared``: the round's
    ``_shared``, where the caller has it)."""
    q, p = pools.q, pools.q.base
    moved = counts.copy()
    if move is not None:
        a, b, k = move
        moved[a, k] -= 1
        moved[b, k] += 1
    served, rated, fixed = _shared(pools) if shared is None else shared
    allowed = (moved[:, p.class_model].T > 0) & (served[:, None] > 0)
    start = np.where(allowed, pools.x, 0.0)
    short = served - start.sum(axis=1)  # rate of a class whose pool closed: to its cheapest allowed node
    for c in np.flatnonzero(short > 0).tolist():
        if not allowed[c].any():
            return None
        start[c, int(np.argmin(np.where(allowed[c], p.cost[c], np.inf)))] += short[c]
    servers = effective_servers(moved, pools.cores)
    fixed += q.instance_cost * float(np.maximum(moved - p.free, 0).sum())  # (the rejected rate's term first)
    return moved, (rated, servers, allowed), start, fixed


def _valued(pools: Pools, moved: IntArray, split: FloatArray) -> tuple[float, IntArray, FloatArray] | None:
    """The integer objective of ``split`` on the counts ``moved`` (pools left as they were), or None where
    ``apply_split`` refuses it."""
    saved = pools.x, pools.cap.copy()
    if not apply_split(pools, split, moved):
        return None
    value = integer_objective(pools)
    pools.x, pools.cap = saved
    return value, moved, split
