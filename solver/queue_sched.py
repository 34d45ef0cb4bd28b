"""One more instance where the node's scheduler would fall behind (issue 16, "worth doing next" 6).

Repair's checks (a node's busy work within ``rho_max`` of its cores, each pool within ``rho_max`` of its
instances) do not keep the CPU scheduler stable on a fractional number of instance units: one instance at 0.885 of
a core beside another busy one on 1.5 cores gets 0.75 of a core whenever both run and falls behind; its queue grows
without bound (16 of bench/bound_sweep.py's 600 overloaded plans at their rate, 8 at half of it:
bench/sched_fix_bench.py). solver.cpu_speed's scheduler model caps such an instance's load at ``CAP``. Splitting
that pool's rate over one more instance (the pool's per-instance rate cap lowered so that its count is one more;
the node's busy work is unchanged, so no core row moves) made every one of those 24 stable in the shared-cores
simulation (sojourns 14-180 ms against 360-13,000 ms and growing), where shedding rate to the model's own
boundary did not. The instance is added only where the node's memory and compute hold it and the model stays
within the instance bound (``queue_repair.bound_excess``; 22 of the 24). Where it is not, the pool's rate is
rejected down to what keeps the model's load within ``rho_max`` (``SHED``: 8.6 and 14.6 req/s of 815 and 727 in
the other two, simulated 100-150 and 68 ms instead of 450-1,150 and 340-480 ms and growing), its reason the
instance bound's.

Crowded nodes (``CROWDED``, solver16b): on a node of 2 or more instance units of cores an instance cannot use an idle
core beside it, so the node is not work-conserving, and the scheduler model's ``CAP`` came too late there. The thesis
instance 25 x 5 (seed 2, 2 cores per node) runs one instance of a model beside two of another on a node at rho_max
of its cores: the model puts the single one at 0.988, and the shared-cores simulation's queue there grows with the
run (8 / 28 s mean at 1,000 / 4,000 s; both the integer objective and the plan's figure by load price it at 3.8 s).
So on such nodes a pool past ``rho_max`` in the model counts as behind too (one more instance, else the cut): at
thesis sizes 7 of 72 plans at 2 cores change, all better in the simulation (mean sojourn 0.46-0.95x, the worst pool
6.0-36 s -> 4.1-6.9 s, 0.8 % and 0.14 % of the rate cut in two of them); below 2 cores every busy request shares the
node's cores (at 1: work-conserving, stable wherever its busy work is) and ``CAP`` alone counts (there the same rule
changed 20 of 72 plans, mixed in the simulation). bound_sweep's overloaded clusters: 25 of 1,200 plans change, each
better in the simulation (mean sojourn median 0.52x). bench/queue_price_sim.py, docs/solver.md.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np

from solver.cpu_speed import CAP, node_speeds, node_speeds_once
from solver.monotone_bisect import BoolArray, bisect
from solver.problem import FloatArray
from solver.queue_repair import Pools, bound_excess

log = logging.getLogger(__name__)

ENABLED = True  # off only to show bench/sched_fix_bench.py and the tests the queues that grow
SHED = True  # where no instance can be added: reject the pool's rate down to rho_max in the scheduler model
BISECT = 40  # halvings of the kept share of the pool's rate
BISECT_CROWDED = 20  # the same for a crowded pool (to 1e-6 of its rate; FAST: ~4 model runs of ~1 ms, not 20)
CROWDED = True  # on nodes of CROWDED_CORES or more, a pool past rho_max in the model falls behind (False: CAP alone)
CROWDED_CORES = 2.0  # instance units (after the slot transform); below, CAP alone (bench/queue_price_sim.py)
FAST = True  # the cut's bisection from a guess (solver.monotone_bisect), its answer the plain loop's (False: the loop)
MARGIN = 1e-8  # the fast answer stands where the loads either side of it clear rho_max by this (else the plain loop)
GUESS_RUNS = 2  # secant steps (a model run each) toward the share at rho_max before the guided search
MAX_ADDED = 64  # instances added in one plan at most (each fixes one node; a node needs one or two)


def behind(pools: Pools) -> list[tuple[int, int]]:
    """(node, model) of each node's busiest pool that falls behind: whose instances the scheduler model caps, or on
    a node of ``CROWDED_CORES`` or more, whose load there is past ``rho_max`` (``CROWDED``)."""
    lam, counts = pools.state()
    f = node_speeds_once(lam, pools.q.mu, counts, pools.cores)  # the published planned queue reads it again
    limit = np.where((np.asarray(pools.cores) >= CROWDED_CORES) & CROWDED, pools.q.rho_max * (1 + 1e-9), CAP)
    capped = (f.load >= limit[:, None]) & (counts > 0) & (lam > 0)
    return [
        (int(j), int(np.argmax(np.where(capped[j], lam[j] / pools.q.mu[j], -1.0))))
        for j in np.flatnonzero(capped.any(axis=1))
    ]


def add_where_behind(pools: Pools) -> int:
    """Give the pools ``behind`` finds one more instance each where budgets and the bound allow; the number added."""
    if not ENABLED:
        return 0
    added, refused = 0, set()
    while added < MAX_ADDED:
        todo = [jk for jk in behind(pools) if jk not in refused]
        if not todo:
            break
        j, k = todo[0]
        if _one_more(pools, j, k):
            added += 1
        elif SHED:
            _shed_to_rho(pools, j, k, BISECT if _capped(pools, j, k) else BISECT_CROWDED)
            refused.add((j, k))
        else:
            refused.add((j, k))
    if refused:
        log.debug("scheduler would fall behind on %d pools the budgets or the bound leave as they are", len(refused))
    return added


def _one_more(pools: Pools, j: int, k: int) -> bool:
    """Lower pool (j, k)'s per-instance rate cap so that it runs one more instance; undone (False) where that breaks
    the node's memory or compute or model k's instance bound."""
    lam, counts = pools.state()
    old = float(pools.cap[j, k])
    pools.cap[j, k] = float(lam[j, k]) / (float(counts[j, k]) + 0.5)  # needed(): exactly counts + 1
    state = pools.state()
    if (
        state[1][j, k] == counts[j, k] + 1
        and not pools.over_budget(state[1], state[0])
        and bound_excess(pools, k, state) <= 0
    ):
        return True
    pools.cap[j, k] = old
    return False


def _capped(pools: Pools, j: int, k: int) -> bool:
    """Whether the scheduler model caps pool (j, k) (else it is only crowded; the model's figures are ``behind``'s,
    memoised)."""
    lam, counts = pools.state()
    return bool(node_speeds_once(lam, pools.q.mu, counts, pools.cores).load[j, k] >= CAP)


def _shed_to_rho(pools: Pools, j: int, k: int, halvings: int = BISECT) -> None:
    """Reject the share of pool (j, k)'s rate (every stream on it alike) past the most that keeps its load in the
    scheduler model within ``rho_max`` (to 2^-``halvings`` of its rate, on the safe side); model k's rejection then
    gives the instance bound's reason."""
    lam, counts = pools.state()
    q = pools.q
    row, mu, n, cores = lam[j : j + 1].copy(), q.mu[j : j + 1], counts[j : j + 1], pools.cores[j : j + 1]

    def load(share: float) -> tuple[float, bool]:
        trial = row.copy()
        trial[0, k] *= share
        figures = node_speeds(trial, mu, n, cores)
        return float(figures.load[0, k]), figures.converged

    full = float(node_speeds_once(lam, q.mu, counts, pools.cores).load[j, k])  # behind's figure: a guess's start
    lo = kept_share(load, q.rho_max, halvings, full)
    mine = np.flatnonzero((q.base.class_model == k) & (pools.x[:, j] > 0))
    for c in mine.tolist():
        pools.move(c, j, None, float(pools.x[c, j]) * (1.0 - lo))
    pools.shed_models.add(k)
    log.info("node %s: %.3g req/s of %r rejected (its scheduler would fall behind)", q.base.node_ids[j],
             float(lam[j, k]) * (1.0 - lo), q.base.model_names[k])  # fmt: skip


Load = Callable[[float], tuple[float, bool]]  # share of the pool's rate -> (its load in the scheduler model, converged)


def plain_share(load: Load, rho_max: float, halvings: int) -> float:
    """The largest kept share the plain bisection finds: ``halvings`` halvings of [0, 1], keeping ``lo = mid`` where
    the load at ``mid`` is within ``rho_max`` (the pool's load rises with its rate)."""
    lo, hi = 0.0, 1.0
    for _ in range(halvings):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if load(mid)[0] <= rho_max else (lo, mid)
    return lo


def kept_share(load: Load, rho_max: float, halvings: int, full: float) -> float:
    """``plain_share``'s answer bit for bit from fewer model runs (``FAST``); ``full`` the load at the whole rate.

    The loop evaluates the load only at multiples ``m / 2^halvings`` of the rate (its mids are exact dyadics), so
    its answer follows from the verdicts on that grid alone. The test on floats ``s`` reads the grid point below
    (``floor(s 2^h) / 2^h``, the share 0 passing as the loop's start does): where the verdicts on the grid are
    monotone it is monotone over floats, and solver.monotone_bisect gives the loop's answer from a guess (a secant
    on the load, ``GUESS_RUNS`` runs, from ``rho_max / full`` of the rate), each grid point run once (memoised).
    The load rises with the rate in exact arithmetic (more work on the node: the fixed point's least solution and
    the work floor both rise), but the model carries round-off and its fixed point's ``TOL``; so the answer stands
    only where the model converged at the two grid points either side of it and their loads clear ``rho_max`` by
    ``MARGIN`` (far above those errors): then every other grid point's verdict, further from the threshold, is
    the exact one's too. Elsewhere the plain loop runs, its points memoised as well; it runs
    at once where a grid step moves the load by less than ``4 MARGIN`` (40 halvings: ~1e-12), where the check
    would fail."""
    seen: dict[float, tuple[float, bool]] = {}

    def at(share: float) -> tuple[float, bool]:
        if share not in seen:
            seen[share] = load(share)
        return seen[share]

    size = float(2**halvings)
    if not FAST or full / size < 4.0 * MARGIN:  # a grid step moves the load by ~full / size
        return plain_share(at, rho_max, halvings)

    def test(s: FloatArray) -> BoolArray:
        cell = float(np.floor(float(s[0]) * size)) / size
        return np.array([cell <= 0.0 or at(min(cell, 1.0))[0] <= rho_max])

    guess = _secant_guess(at, rho_max, size, full)
    point = float(np.nextafter((np.floor(guess * size) + 1.0) / size, 0.0))  # the top float of the guess's cell
    one = np.ones(1)  # from lo = 0 (bisect's lo > 0 is for its test's sake: this one passes at 0 without a run)
    share = float(bisect(test, np.zeros(1), one, halvings, np.ones(1, dtype=bool), np.array([point]))[0])
    below = at(share) if share > 0.0 else (0.0, True)
    above = at(share + 1.0 / size) if share + 1.0 / size < 1.0 else (np.inf, True)
    if below[1] and above[1] and below[0] <= rho_max - MARGIN and above[0] >= rho_max + MARGIN:
        return share
    return plain_share(at, rho_max, halvings)


def _secant_guess(at: Load, rho_max: float, size: float, full: float) -> float:
    """The share where the load reaches ``rho_max``, by secant steps on grid points from the load's proportional
    guess (``rho_max / full``): only a guess (solver.monotone_bisect takes any), each step a model run."""
    if not (np.isfinite(full) and full > rho_max):
        return 0.5
    points = [(1.0, full)]
    share = rho_max / full
    for _ in range(GUESS_RUNS):
        cell = min(max(float(np.floor(share * size)) / size, 1.0 / size), 1.0 - 1.0 / size)
        points.append((cell, at(cell)[0]))
        (s0, l0), (s1, l1) = points[-2], points[-1]
        if not (np.isfinite(l1) and l0 != l1) or s0 == s1:
            return cell
        share = min(max(s1 + (rho_max - l1) * (s0 - s1) / (l0 - l1), 0.0), 1.0)
    return share
