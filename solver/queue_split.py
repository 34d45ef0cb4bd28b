"""The best split of the served rate over the plan's whole instance counts (issue 16, after pool closing).

Repair fixes whole instance counts (the fewest under the load cap, then the spread bound takes instances
back) but keeps the rates where the relaxation put them for its fractional counts. Where the bound took
instances away, the pools left are unevenly loaded: in the shared-cores lab at 180 req/s (three 2-core
nodes, 50 req/s instances, bound 5) the plan ran 2 + 1 + 2 instances with one pair near 0.8 load, mean
latency 104 ms and simulated p99 472 ms, while the same counts at their best split give 75 ms and 288 ms.

With the counts fixed, the split that minimises the plan's objective (RTT + execution + each pool's
M/M/1 wait on its effective servers, solver.node_cpu) is a convex flow problem: Frank-Wolfe as in
solver.hold (the running placement's value, so a plan and the status quo with the same counts are valued
alike). The result must keep every pool within its load cap on its instances and every node within its
cores; where the unconstrained best split does not, the step from the current split is cut back to the
largest that does (the constraints are linear, the current split meets them, the objective is convex, so
every point of that segment is no worse than the current one). Kept only if the integer objective falls
and no model ends past the instance bound (rate moved between node classes lowers one class's need at
``rho_max`` while its counts stay: 2 of 1,000 Mode 1 clusters in bench/bound_sweep.py).
Frank-Wolfe stops at relative duality gap ``TOLERANCE`` (no step at all where repair left the split within
it); its line search is a safeguarded Newton on the wait's closed-form second derivative (_SplitFlow.step).
Where its first step already leaves the caps, a run that stays within them is tried first (``CAPPED``,
_capped_or_plain).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Generator

import numpy as np
import numpy.typing as npt

from solver.hold import EVAL_RHO, _all_on
from solver.node_cpu import busy, effective_servers
from solver.problem import FloatArray, IntArray
from solver.queue_close import integer_objective
from solver.queue_model import QueueProblem
from solver.queue_repair import Pools, needed

log = logging.getLogger(__name__)
BoolArray = npt.NDArray[np.bool_]

ENABLED = True  # switched off only to show the tests failing without it
ITERATIONS = 20  # Frank-Wolfe steps: on 72 thesis instances 10 / 30 / 80 (from the cheapest node) gave a median
TOLERANCE = 1e-3  # 3.5 / 4.2 / 4.6 % lower objective; 20 from the repaired split ~4 % (solver.hold runs to 1e-4)
KEEP_BOUND = True  # a split that leaves a model past the instance bound is not taken (off only in its test)
GAP_STOP = True  # stop at relative duality gap TOLERANCE (off only to show the tests failing without it)
NEWTON_STEPS = 30  # line search: safeguarded Newton steps at most
STEP_TOLERANCE = 1e-6  # ... until its last move is below this (converging quadratically; bisection stopped at 1e-6)
ABANDON_STEP = 4  # a move try (solver.queue_move) whose run, extrapolated from here at ABANDON_SLOPES times its last
ABANDON_SLOPES = 2.0  # step's fall, cannot beat the plan stops (bench, 2 cores: 43 % of tries, none a move kept)
ABANDONED = -np.inf  # the gap a given-up run returns
LAZY_END = True  # the slope at step 1 only where Newton reaches 1 (off: checked first, one evaluation more per step)
CAPPED = True  # where the run's first step leaves the caps, a capped run (_SplitFlow.run_capped) first: off, the plain
# run cut back at its end (docs/solver.md, "The capped split": 17 of 222 bench plans change, mean -0.9 %, worst +0.1 %)
PROBE = 2  # ... taken where it ends within this many steps (stalled or blocked), else the plain run as before
BLOCKED = 1e-3  # a capped run's first step shorter than this takes the cheapest vertex among the pools with room,
ROOM_HAIR = 1e-6  # ... those whose room exceeds this fraction of their limit (and nodes likewise)
STALL = 1e-4  # a capped run stops once a step fell by less than this relative to the objective
HALF_CURVATURE = True  # the line search sums half the curvature and doubles the sum (exact: a power of two)


def best_split(pools: Pools) -> bool:
    """Re-split the served rate of every stream over the pools' fixed counts (module docstring); True if kept."""
    if not ENABLED or pools.x.size == 0:
        return False
    q, p = pools.q, pools.q.base
    counts = pools.counts()
    served = pools.x.sum(axis=1)
    allowed = (counts[:, p.class_model].T > 0) & (served[:, None] > 0)  # [c, j]: a pool of its model runs there
    if not np.any(allowed.sum(axis=1) > 1):
        return False  # no stream has a choice
    servers = effective_servers(counts, pools.cores)
    rated, fcounts = dataclasses.replace(q, rate=served), counts.astype(float)
    if CAPPED:
        split, steps = _capped_or_plain(pools, rated, servers, allowed, fcounts)
    else:
        run = split_run(rated, servers, allowed, pools.x, ITERATIONS, pools.split_run)
        split, steps = run.x, run.steps
    if steps == 0:
        return False  # the repaired split is already within TOLERANCE of its best
    old, old_cap = pools.x, pools.cap.copy()
    step = _feasible_step(pools, fcounts, old, split - old)
    before = integer_objective(pools)
    if step <= 0 or not apply_split(pools, np.where(allowed, old + step * (split - old), 0.0).clip(min=0.0), counts):
        return False
    after = integer_objective(pools)
    if after >= before - 1e-9 * max(1.0, abs(before)):
        pools.x, pools.cap = old, old_cap
        return False
    log.debug("best split: objective %.3f -> %.3f (step %.3f)", before, after, step)
    return True


def _capped_or_plain(
    pools: Pools, rated: QueueProblem, servers: FloatArray, allowed: BoolArray, counts: FloatArray
) -> tuple[FloatArray, int]:
    """best_split's run: the plain Frank-Wolfe run (``split_run``, continuing the move pass's run where it can)
    where its first step keeps every pool within its cap and every node within its cores; else first the capped run
    (``_SplitFlow.run_capped``) from the same start, taken where it ends within ``PROBE`` steps. Returns (split,
    steps).

    Why: where the first step leaves the caps (a pool at its cap, or a node at its cores, that the cheapest vertex
    grows), the plain run's 20 steps mostly end where the cut back from the start is 0 (on the bench's thesis cases
    at 1 core 41 of 72, at 2 cores 9 of 72: ~1.2 ms each for nothing), while the capped run stalls within a step or
    two. Where the capped run goes on, the plain run (whose cut can reach further) answers as before."""
    start = np.where(allowed, pools.x, 0.0)
    fixed = feasible_limits(pools, counts)
    resume = pools.split_run
    if not (
        resume is not None
        and resume.iterations <= ITERATIONS
        and resume.same_inputs(rated.rate, servers, allowed, start)
    ):
        resume = None
    flow = None
    if resume is not None and (resume.first is not None or resume.steps == 0):
        first = resume.first  # the move pass's run without a move: its first step is this run's (None: at the gap)
    else:
        flow = _SplitFlow(rated, servers, allowed)
        first = flow.first_step(start)
    if first is None:
        return start, 0  # within TOLERANCE at the start: the plain run stops there too
    a, direction, lam = first
    if _feasible_step(pools, counts, start, direction, fixed, lam) < a:
        flow = _SplitFlow(rated, servers, allowed) if flow is None else flow
        x, steps = flow.run_capped(start, PROBE, lambda y, d, at: _feasible_step(pools, counts, y, d, fixed, at), fixed)
        if steps < PROBE:
            return x, steps
    if resume is not None:
        run = split_run(rated, servers, allowed, pools.x, ITERATIONS, resume)
        return run.x, run.steps
    assert flow is not None  # no resume: the flow was made for the first step
    x, steps, _ = flow.run(start + a * direction, ITERATIONS, done=1)  # the plain run's first step, as it takes it
    return x, steps


@dataclasses.dataclass(frozen=True)
class SplitRun:
    """A Frank-Wolfe run of ``split_run``: its inputs (rates, servers, allowed pools, start) and where it stopped."""

    rate: FloatArray
    servers: FloatArray
    allowed: BoolArray
    start: FloatArray
    x: FloatArray
    steps: int
    gap: float
    iterations: int
    first: tuple[float, FloatArray, FloatArray] | None = None  # its first step (step, direction, pool rates at start)

    def same_inputs(self, rate: FloatArray, servers: FloatArray, allowed: BoolArray, start: FloatArray) -> bool:
        """Whether a run from these inputs takes this run's steps (bit for bit equal arrays)."""
        pairs = ((self.rate, rate), (self.servers, servers), (self.allowed, allowed), (self.start, start))
        return all(np.array_equal(a, b) for a, b in pairs)


def split_run(
    q: QueueProblem,
    servers: FloatArray,
    allowed: BoolArray,
    start: FloatArray,
    iterations: int,
    resume: SplitRun | None = None,
) -> SplitRun:
    """Frank-Wolfe from ``start`` (``_frank_wolfe``), continued from ``resume`` where that run had the same inputs
    and at most ``iterations`` steps: each step depends on the split alone, so the result is the same bit for bit
    (solver.queue_move's run without a move is best_split's first steps: the best split then saves them)."""
    start = np.where(allowed, start, 0.0)
    if resume is not None and resume.iterations <= iterations and resume.same_inputs(q.rate, servers, allowed, start):
        if resume.steps < resume.iterations:  # it stopped at the gap: a longer run stops there too
            return dataclasses.replace(resume, iterations=iterations)
        x, steps, gap = _SplitFlow(q, servers, allowed).run(resume.x, iterations, done=resume.steps)
        first = resume.first
    else:
        flow = _SplitFlow(q, servers, allowed)
        x, steps, gap = flow.run(start, iterations)
        first = flow.first
    return SplitRun(q.rate, servers, allowed, start, x, steps, gap, iterations, first)


def load_limit(pools: Pools) -> FloatArray:
    """[j, k] req/s one instance may carry: its load cap (or the higher cap repair gave it to keep the bound;
    a cap lowered to run more instances does not bind a new split), at most ``rho_max``."""
    q = pools.q
    return np.asarray(np.minimum(np.maximum(pools.cap, q.cap() * q.mu), q.rho_max * q.mu))


def apply_split(pools: Pools, x: FloatArray, counts: IntArray) -> bool:
    """Take rates ``x`` on the whole ``counts`` if every pool stays within its ``load_limit`` on its count and
    every node within its budgets and cores (the pools' caps then hold exactly those counts); else change
    nothing and return False."""
    lam = np.asarray(x.T @ pools.onehot)  # pools.lam() once x is taken: read once for every check below
    if np.any(lam > load_limit(pools) * counts * (1 + 1e-9) + 1e-12):
        return False
    old_x, old_cap = pools.x, pools.cap
    excess = _bound_excess(pools)
    pools.x = x
    pools.cap = np.where((counts > 0) & (lam > 0), lam / np.maximum(counts, 1) * (1 + 1e-9), pools.cap)
    now = needed(lam, pools.cap)  # pools.counts()
    past = KEEP_BOUND and np.any(_bound_excess(pools, (lam, now)) > np.maximum(excess, 0))  # it lowered a class's need
    if past or np.any(now > counts) or pools.over_budget(now, lam):
        pools.x, pools.cap = old_x, old_cap
        return False
    return True


def _bound_excess(pools: Pools, state: tuple[FloatArray, IntArray] | None = None) -> IntArray:
    """[k] the most instances each model runs past the instance bound in a node class (queue_repair.bound_excess
    for every model at once). ``state``: the current (lam, counts), where the caller has them."""
    q = pools.q
    lam, counts = pools.state() if state is None else state
    group = pools.group_matrix()  # [g, j] node class membership
    load = group @ (lam / (q.rho_max * q.mu))  # [g, k] need at rho_max, as bound_excess sums it
    running = group @ counts
    return np.asarray((running - (np.ceil(load - 1e-9) + 1)).max(axis=0), dtype=np.int64)


def _frank_wolfe(
    q: QueueProblem, n: FloatArray, allowed: BoolArray, start: FloatArray, iterations: int | None = None
) -> FloatArray:
    """solver.hold's Frank-Wolfe from ``start`` (``iterations`` steps at most, default ``ITERATIONS``; stops
    at relative duality gap ``TOLERANCE``): the split of ``q.rate`` over ``allowed`` [c, j] on ``n`` servers."""
    return _SplitFlow(q, n, allowed).run(
        np.where(allowed, start, 0.0), ITERATIONS if iterations is None else iterations
    )[0]


class _SplitFlow:
    """The split's convex objective on fixed servers, evaluated per pool (numpy over pools, no per-stream
    Python): solver.hold's _objective / _gradient / _delay with the pool-level terms computed once.

    Every array that does not change during a run (masks, 1000 mu, the rows that carry rate) is made once
    here, and the rare branch past ``EVAL_RHO`` is only computed where some pool is past it: the same
    floating-point operations per element as before, so the same split bit for bit."""

    def __init__(self, q: QueueProblem, n: FloatArray, allowed: BoolArray) -> None:
        self.cost, self.rate, self.model = q.base.cost, q.rate, q.base.class_model
        self.onehot = np.eye(len(q.base.model_names))[q.base.class_model]  # [c, k]
        self.on = n > 0
        self.n = np.where(self.on, n, 1.0)
        self.mu, self.service = q.mu, 1000.0 / q.mu
        self.top = EVAL_RHO * q.mu
        self.big = np.where(allowed, 0.0, np.inf)
        self.kmu = 1000.0 * self.mu  # d1's numerator (``1000.0 * mu / gap**2`` evaluates it first)
        self.off = ~self.on
        self.idle_slope = (0.0 - self.service)[self.off]  # the first derivative where a pool runs nothing
        self.any_off = bool(self.off.any())
        self.rows = np.flatnonzero(self.rate > 0)  # _all_on's rows (the rate is fixed during a run)
        self.all_rows = len(self.rows) == len(self.rate)
        self.rate_col = self.rate[:, None]
        self.cols = np.arange(self.cost.shape[1])
        self.buffers = tuple(np.empty(self.mu.shape) for _ in range(4))  # along's work arrays
        self.at_top = np.empty(self.mu.shape, dtype=bool)
        self.first: tuple[float, FloatArray, FloatArray] | None = None  # run's first step from its start, once taken

    def pools(self, lam: FloatArray, order: int, wait: bool = False) -> tuple[FloatArray, ...]:
        """Per pool [j, k]: the wait term D - lam * service (for ``order`` 0 or ``wait``), then its first
        ``order`` derivatives in lam."""
        t = lam / self.n
        at_top = np.greater_equal(t, self.top)  # ~(t < top): t is never NaN here
        beyond = np.count_nonzero(at_top) > 0  # a pool at or past EVAL_RHO (rare): only then the branches below
        tc = np.minimum(t, self.top) if beyond else t
        gap = self.mu - tc
        d1 = self.kmu / np.square(gap)
        out = []
        off = self.off if beyond or self.any_off else None  # pools that run nothing, masked to 0 as before
        if order == 0 or wait:
            g = 1000.0 * tc / gap
            if beyond:
                g += np.where(t > self.top, d1 * (t - self.top), 0.0)
            ng = np.multiply(self.n, g, out=g)
            if off is not None:
                ng[off] = 0.0
            out.append(ng - lam * self.service)
        if order >= 1:  # d1 - service, and 0.0 - service where a pool runs nothing (as d1 masked to 0 first)
            first = np.subtract(d1, self.service) if order == 2 else np.subtract(d1, self.service, out=d1)
            if off is not None:
                first[off] = self.idle_slope
            out.append(first)
        if order == 2:
            second = 2.0 * d1 / (gap * self.n)
            if off is not None:
                second[(off | at_top) if beyond else off] = 0.0
            out.append(second)
        return tuple(out)

    def along(self, lam: FloatArray, a: float, line: tuple[float, FloatArray, FloatArray]) -> tuple[float, float]:
        """``_along(linear, dlam, *pools(lam + a * dlam, 2))`` for ``line`` = (linear, dlam, dlam * dlam): the
        same operations per element, in preallocated arrays, and without masking the pools that run nothing (there
        dlam is 0, as no stream may use them: their products are zeros either way, a zero's sign aside, which
        no comparison sees). The curvature's factor 2 is taken out of the sum and put back
        after it (a power of two: every product and partial sum is exactly twice, so the total is the same)."""
        linear, dlam, dd = line
        t, d1, second, twice = self.buffers
        np.multiply(dlam, a, out=t)
        np.add(lam, t, out=t)
        np.divide(t, self.n, out=t)
        at_top = np.greater_equal(t, self.top, out=self.at_top)  # ~(t < top): t is never NaN here
        beyond = np.count_nonzero(at_top) > 0
        if beyond:
            np.minimum(t, self.top, out=t)
        gap = np.subtract(self.mu, t, out=t)
        np.divide(self.kmu, np.square(gap, out=d1), out=d1)
        add = np.add.reduce
        if HALF_CURVATURE:
            np.divide(d1, np.multiply(gap, self.n, out=second), out=second)
            if beyond:
                second[at_top] = 0.0
            slope = linear + float(add(np.multiply(dlam, np.subtract(d1, self.service, out=d1), out=d1), axis=None))
            return slope, 2.0 * float(add(np.multiply(dd, second, out=second), axis=None))
        np.divide(np.multiply(d1, 2.0, out=twice), np.multiply(gap, self.n, out=second), out=second)
        if beyond:
            second[at_top] = 0.0
        slope = linear + float(add(np.multiply(dlam, np.subtract(d1, self.service, out=d1), out=d1), axis=None))
        return slope, float(add(np.multiply(dd, second, out=second), axis=None))

    def all_on(self, cost: FloatArray) -> FloatArray:
        """solver.hold._all_on(cost, self.rate): each class's whole rate on its cheapest node."""
        if self.all_rows:  # every rate positive: rate x True is the rate, rate x False is 0.0
            return np.asarray(np.multiply(self.cols == cost.argmin(axis=1)[:, None], self.rate_col))
        return _all_on(cost, self.rate)

    def run(
        self, x: FloatArray, iterations: int, done: int = 0, abandon: float = np.inf
    ) -> tuple[FloatArray, int, float]:
        """Up to ``iterations`` steps from ``x``; returns (x, steps taken, last relative duality gap).

        ``done``: steps already taken to reach ``x`` (counted in ``iterations`` and in the steps returned).
        ``abandon``: after ``ABANDON_STEP`` steps, a run whose objective, less ``ABANDON_SLOPES`` times its last
        step's fall for each step left, is still at or above this stops there with gap ``ABANDONED``."""
        gap, steps, last = np.inf, done, np.inf
        for steps in range(done, iterations + 1):
            lam, slope, second, direction, value, gap = self._here(x)
            if steps == iterations or (GAP_STOP and gap <= TOLERANCE):
                break
            if steps == ABANDON_STEP and value - ABANDON_SLOPES * (last - value) * (iterations - steps) >= abandon:
                return x, steps, ABANDONED
            last = value
            a = self.step(x, lam, direction, (slope, second))
            if steps == 0:
                self.first = (a, direction, lam)
            x = x + a * direction
        return x, steps, gap

    def first_step(self, x: FloatArray) -> tuple[float, FloatArray, FloatArray] | None:
        """``run``'s first step from ``x``: (step, direction, pool rates at ``x``), or None where ``run`` stops at
        ``x`` (its gap within ``TOLERANCE``). The same operations as ``run``'s (``_here``), so ``x + step * direction``
        is its first iterate bit for bit."""
        lam, slope, second, direction, _value, gap = self._here(x)
        if GAP_STOP and gap <= TOLERANCE:
            return None
        return self.step(x, lam, direction, (slope, second)), direction, lam

    def _here(self, x: FloatArray) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray, float, float]:
        """Frank-Wolfe's figures at ``x`` (one definition for ``run`` and ``first_step``): the pool rates, their
        slope and curvature, the direction to the vertex, the objective and the relative duality gap."""
        add = np.add.reduce
        lam = x.T @ self.onehot
        wait, slope, second = self.pools(lam, 2, wait=True)
        grad = self.cost + slope.T[self.model]
        direction = self.all_on(grad + self.big) - x
        value = float(add(x * self.cost, axis=None) + add(wait, axis=None))
        gap = -float(add(grad * direction, axis=None)) / max(value, 1e-9)
        return lam, slope, second, direction, value, gap

    def run_capped(
        self,
        x: FloatArray,
        iterations: int,
        room: Callable[[FloatArray, FloatArray, FloatArray], float],
        fixed: tuple[FloatArray, FloatArray, FloatArray],
    ) -> tuple[FloatArray, int]:
        """Frank-Wolfe from ``x`` (within every cap) whose iterates stay within the caps (best_split where the plain
        run's first step leaves them: there the plain run's end is cut back from the start, often to nothing).

        Each step is searched on the segment within the caps (``room(x, direction, lam)``: ``_feasible_step``'s
        largest step; the segment scaled to [0, 1], so Newton's lazy end check takes its end in one evaluation
        where the objective still falls there). Where the first step's cheapest vertex has no room at all (it grows
        a pool at its cap or a node at its cores), that step's vertex is the cheapest among the pools and nodes
        with room (a stream with none keeps its split); a later step without room ends the run (on the bench's
        cases, later restricted steps gained ~1e-7 each at two to three times a plain step's line-search cost).
        Also stops at the plain gap's ``TOLERANCE``, after ``iterations`` steps, or once a step fell by less than
        ``STALL`` of the objective. Returns (x, steps taken)."""
        _, cap_room, limit = fixed
        add = np.add.reduce
        steps, last = 0, np.inf
        for steps in range(iterations + 1):
            lam = x.T @ self.onehot
            wait, slope, second = self.pools(lam, 2, wait=True)
            grad = self.cost + slope.T[self.model]
            direction = self.all_on(grad + self.big) - x
            value = float(add(x * self.cost, axis=None) + add(wait, axis=None))
            gap = -float(add(grad * direction, axis=None)) / max(value, 1e-9)
            if steps == iterations or (GAP_STOP and gap <= TOLERANCE) or last - value < STALL * value:
                break
            last = value
            cap = room(x, direction, lam)
            if cap < BLOCKED and steps == 0:  # [j, k] the pools at their cap, to a hair, or on a node at its cores
                full = np.isfinite(limit) & (limit - busy(lam, self.mu) <= ROOM_HAIR * limit)
                shut = (cap_room - lam <= ROOM_HAIR * cap_room) | full[:, None]
                barred = grad + self.big + np.where(shut[:, self.model].T, np.inf, 0.0)
                stuck = ~np.isfinite(barred.min(axis=1))  # [c] every allowed pool shut: the stream stays
                vertex = self.all_on(np.where(stuck[:, None], 0.0, barred))
                direction = np.where(stuck[:, None], 0.0, vertex - x)
                cap = room(x, direction, lam)
            if cap <= 0:
                break
            if cap < 1.0:  # the segment within the caps, searched as the whole step's [0, 1]
                direction = direction * cap
            a = self.step(x, lam, direction, (slope, second))
            if a <= 0:
                break
            x = x + a * direction
        return x, steps

    def step(
        self, x: FloatArray, lam: FloatArray, d: FloatArray, here: tuple[FloatArray, FloatArray] | None = None
    ) -> float:
        """The step in [0, 1] minimising the objective along ``d`` (to ``STEP_TOLERANCE``): safeguarded Newton on
        its derivative (the M/M/1 wait's closed-form second derivative) from 0, bisection where Newton leaves the
        bracket; the whole step where Newton first reaches 1 and the objective still falls there.

        ``here``: ``pools(lam, 2)``'s derivatives, if the caller has them (the slope at 0 without a new pass)."""
        linear = float(np.add.reduce(self.cost * d, axis=None))
        dlam = d.T @ self.onehot
        line = (linear, dlam, dlam * dlam)
        add = np.add.reduce

        def slope(a: float) -> tuple[float, float]:
            return self.along(lam, a, line)

        if here is None:
            start = slope(0.0)
        else:  # _along(linear, dlam, *here), dlam * dlam as the line has it
            start = (linear + float(add(dlam * here[0], axis=None)), float(add(line[2] * here[1], axis=None)))
        search = newton(start)
        try:
            a = next(search)
            while True:
                a = search.send(slope(a))
        except StopIteration as done:
            return float(done.value)


def newton(start: tuple[float, float]) -> Generator[float, tuple[float, float], float]:
    """``_SplitFlow.step``'s line search from the slope and curvature ``start`` at 0: yields each point whose (slope,
    curvature) it needs next and returns the step (one generator for the single and the batched runs,
    solver.queue_batch, so that both take the same steps)."""
    lo, hi, a = 0.0, 1.0, 0.0
    s, h = start
    if not LAZY_END and (yield 1.0)[0] <= 0:
        return 1.0
    end_checked = not LAZY_END  # the slope at 1: an evaluation most steps do not need
    for _ in range(NEWTON_STEPS):
        hi = min(hi, a) if s > 0 else hi
        lo = max(lo, a) if s < 0 else lo
        nxt = a - s / h if h > 0 else 2.0
        if not end_checked and hi == 1.0 and nxt >= 1.0:
            end_checked = True
            if (yield 1.0)[0] <= 0:
                return 1.0
        nxt = nxt if lo < nxt < hi else (lo + hi) / 2
        if abs(nxt - a) <= STEP_TOLERANCE or hi - lo <= STEP_TOLERANCE:
            return nxt
        a = nxt
        s, h = yield a
        if s == 0.0:
            break
    return a


def _along(linear: float, dlam: FloatArray, first: FloatArray, second: FloatArray) -> tuple[float, float]:
    """The objective's first and second derivatives along a direction (``linear``: its RTT + execution part,
    ``dlam`` its pool rates) from the pools' derivatives ``first`` and ``second``."""
    add = np.add.reduce
    return linear + float(add(dlam * first, axis=None)), float(add(dlam * dlam * second, axis=None))


def _feasible_step(
    pools: Pools,
    counts: FloatArray,
    x: FloatArray,
    direction: FloatArray,
    fixed: tuple[FloatArray, FloatArray, FloatArray] | None = None,
    lam: FloatArray | None = None,
) -> float:
    """The largest a in [0, 1] with x + a d within every pool's cap on its ``counts`` and every node's cores.

    ``fixed``: ``feasible_limits(pools, counts)``, where the caller keeps it over several steps (the pools' caps
    unchanged); ``lam``: the pool rates of ``x``, where the caller has them (the same product)."""
    q = pools.q
    onehot, cap_room, limit = feasible_limits(pools, counts) if fixed is None else fixed
    lam = x.T @ onehot if lam is None else lam
    dlam = direction.T @ onehot  # [j, k]
    room = cap_room - lam
    rows = [(room.ravel(), dlam.ravel()), (limit - busy(lam, q.mu), busy(dlam, q.mu))]
    step = 1.0
    for slack, change in rows:
        grows = change > 1e-15
        if np.any(grows):
            step = min(step, float(np.min(np.maximum(slack[grows], 0.0) / change[grows])))
    return step


def feasible_limits(pools: Pools, counts: FloatArray) -> tuple[FloatArray, FloatArray, FloatArray]:
    """``_feasible_step``'s terms that do not depend on the split: [c, k] the class -> model one-hot, [j, k] each
    pool's rate limit on ``counts`` (``load_limit(pools) * counts * (1 - 1e-9)``), [j] each node's busy-work limit."""
    q = pools.q
    return pools.onehot, load_limit(pools) * counts * (1 - 1e-9), q.rho_max * pools.cores * (1 - 1e-9)
