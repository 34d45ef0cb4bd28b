"""Several Frank-Wolfe runs of the best split at once (solver.queue_move's move tries, issue 16 item 5).

A move try is a short Frank-Wolfe run (solver.queue_split._SplitFlow.run) on the plan's counts with one
instance moved; the tries of a round are independent, on the same streams and rates, and differ only in their
servers and the pools their streams may use. On the thesis's sizes a run's arrays are a few dozen numbers, so
its time is numpy's per-call cost, not arithmetic. Here the runs of a round go together: every element-wise
step is one numpy call over the runs stacked ([run, j, k] and [run, c, j]), with the same operations per
element as a single run, and every sum is taken per run on its own slice (the same reduction, in the same order,
as a single run's array), each run's line search driven by the same Newton generator (queue_split.newton).
Each run therefore takes the steps it takes alone, bit for bit (tests/unit/test_queue_batch.py), and stops
where it stops alone (the gap, ``ABANDON_STEP``'s extrapolation, its step limit).

Where one run has a pool at the delay's linear extension (``EVAL_RHO``) the clip is applied to all: below the
top it is the identity, and the extension's term adds an exact 0.0 (a zero's sign aside, which no comparison or
non-zero sum sees).
"""

from __future__ import annotations

import copy
from collections.abc import Generator, Sequence

import numpy as np

from solver import queue_split
from solver.problem import FloatArray
from solver.queue_split import ABANDON_SLOPES, ABANDON_STEP, ABANDONED, BoolArray, _SplitFlow, newton

Search = Generator[float, tuple[float, float], float]


class _Stack:
    """The per-pool arrays of several _SplitFlow runs stacked ([run, j, k]); the runs share streams and rates."""

    def __init__(self, flows: Sequence[_SplitFlow]) -> None:
        one = flows[0]
        self.flows, self.one = flows, one
        self.n = np.stack([f.n for f in flows])
        self.off = np.stack([f.off for f in flows])
        self.big = np.stack([f.big for f in flows])
        self.any_off = bool(self.off.any())
        self.both = np.empty((2, *self.n.shape))  # along's two terms, reduced before the next call writes them
        self.pair = np.empty((2, len(flows), *one.cost.shape))  # a step's x * cost and grad * direction, likewise

    def pools(self, lam: FloatArray) -> tuple[FloatArray, FloatArray, FloatArray]:
        """``_SplitFlow.pools(lam, 2, wait=True)`` of every run at once: wait terms, first and second derivatives."""
        one = self.one
        t = lam / self.n
        at_top = np.greater_equal(t, one.top)
        beyond = np.count_nonzero(at_top) > 0
        tc = np.minimum(t, one.top) if beyond else t
        gap = one.mu - tc
        d1 = one.kmu / np.square(gap)
        g = 1000.0 * tc / gap
        if beyond:
            g += np.where(t > one.top, d1 * (t - one.top), 0.0)
        ng = np.multiply(self.n, g, out=g)
        masked = beyond or self.any_off
        if masked:
            ng[self.off] = 0.0
        wait = ng - lam * one.service
        first = d1.copy()
        if masked:
            first[self.off] = 0.0
        first = np.subtract(first, one.service, out=first)
        second = 2.0 * d1 / (gap * self.n)
        if masked:
            second[(self.off | at_top) if beyond else self.off] = 0.0
        return wait, first, second

    def along(self, lam: FloatArray, at: FloatArray, dlam: FloatArray, dd: FloatArray) -> FloatArray:
        """Per run r: ``_SplitFlow.along``'s two sums' terms at ``lam + at[r] dlam`` (the slope's and the curvature's,
        the latter halved where ``queue_split.HALF_CURVATURE``), as [2, run, j, k]: one reduction sums both per run
        (``_both_sums``)."""
        one = self.one
        t = np.multiply(dlam, at[:, None, None])
        np.add(lam, t, out=t)
        np.divide(t, self.n, out=t)
        at_top = np.greater_equal(t, one.top)
        beyond = np.count_nonzero(at_top) > 0
        if beyond:
            np.minimum(t, one.top, out=t)
        gap = np.subtract(one.mu, t, out=t)
        d1 = np.divide(one.kmu, np.square(gap))
        if queue_split.HALF_CURVATURE:
            second = np.divide(d1, np.multiply(gap, self.n))
        else:
            second = np.divide(np.multiply(d1, 2.0), np.multiply(gap, self.n))
        if beyond:
            second[at_top] = 0.0
        both = self.both
        np.multiply(dlam, np.subtract(d1, one.service, out=d1), out=both[0])
        np.multiply(dd, second, out=both[1])
        return both


def sibling(one: _SplitFlow, n: FloatArray, allowed: BoolArray) -> _SplitFlow:
    """``_SplitFlow(q, n, allowed)`` for the ``q`` of ``one`` (a run of the same round: the same rates and costs):
    ``one``'s arrays shared, those made from the servers ``n`` and the ``allowed`` pools made as its __init__ makes
    them (tests/unit/test_queue_batch.py compares every field with a fresh flow's)."""
    flow = copy.copy(one)
    flow.on = n > 0
    flow.n = np.where(flow.on, n, 1.0)
    flow.big = np.where(allowed, 0.0, np.inf)
    flow.off = ~flow.on
    flow.idle_slope = (0.0 - flow.service)[flow.off]
    flow.any_off = bool(flow.off.any())
    flow.buffers = tuple(np.empty(flow.mu.shape) for _ in range(4))
    flow.at_top = np.empty(flow.mu.shape, dtype=bool)
    return flow


def run_batch(
    flows: Sequence[_SplitFlow],
    starts: Sequence[FloatArray],
    iterations: int,
    abandons: Sequence[float],
    marks: list[tuple[float, float] | None] | None = None,
    firsts: list[tuple[float, FloatArray, FloatArray] | None] | None = None,
) -> list[tuple[FloatArray, int, float]]:
    """``flows[r].run(starts[r], iterations, abandon=abandons[r])`` for every run r, together (module docstring).

    ``marks``: receives, for each run that reaches ``ABANDON_STEP`` without stopping there, its objective there and
    the step before (``hopeless``'s first two arguments), so that a caller can apply a threshold known later.
    ``firsts``: receives each run's first step (step, direction, pool rates at its start), as ``_SplitFlow.run``
    keeps it in ``first``."""
    stack, one = _Stack(flows), flows[0]
    x = np.stack([np.asarray(s) for s in starts])  # [run, c, j]
    out: list[tuple[FloatArray, int, float] | None] = [None] * len(flows)
    last = [np.inf] * len(flows)
    for steps in range(iterations + 1):
        lam = _per_run_lam(one, x)
        wait, slope, second = stack.pools(lam)
        grad = one.cost + slope.transpose(0, 2, 1)[:, one.model]
        direction = _all_on(one, grad + stack.big) - x
        pair = stack.pair  # x * cost and grad * direction, summed per run in one reduction
        np.multiply(x, one.cost, out=pair[0])
        np.multiply(grad, direction, out=pair[1])
        linear, fall = _both_sums(pair)
        value = [a + b for a, b in zip(linear, _sums(wait).tolist(), strict=True)]  # as the arrays' sum
        moving = []
        for r in range(len(flows)):
            if out[r] is not None:
                continue
            gap = -fall[r] / max(value[r], 1e-9)
            if steps == iterations or (queue_split.GAP_STOP and gap <= queue_split.TOLERANCE):
                out[r] = (np.array(x[r]), steps, gap)
            elif steps == ABANDON_STEP and hopeless(value[r], last[r], iterations - steps, abandons[r]):
                out[r] = (np.array(x[r]), steps, ABANDONED)
            else:
                if steps == ABANDON_STEP and marks is not None:
                    marks[r] = (value[r], last[r])
                last[r] = value[r]
                moving.append(r)
        if not moving:
            break
        at = np.zeros(len(flows))
        at[moving] = _steps(stack, lam, direction, (slope, second), moving)
        if steps == 0 and firsts is not None:
            for r in moving:
                firsts[r] = (float(at[r]), direction[r], lam[r])
        x = np.where(_rows(moving, len(flows)), x + at[:, None, None] * direction, x)
    return [o if o is not None else (np.array(x[r]), iterations, np.inf) for r, o in enumerate(out)]


def _per_run_lam(one: _SplitFlow, x: FloatArray) -> FloatArray:
    """[run, j, k] each run's pool rates ``x[r].T @ onehot`` (one stacked product; the same sums)."""
    return np.asarray(np.matmul(x.transpose(0, 2, 1), one.onehot))


def _sums(terms: FloatArray) -> FloatArray:
    """[run] each run's sum of its slice (the reduction a single run makes over its own array, in the same order)."""
    return np.asarray(np.add.reduce(terms, axis=(1, 2)))


def _both_sums(terms: FloatArray) -> list[list[float]]:
    """``_sums`` of ``terms[0]`` and of ``terms[1]`` ([2, run, ...]) in one reduction: each run's slice is the same
    contiguous block reduced alone, in the same order (tests/unit/test_queue_batch.py)."""
    return list(np.add.reduce(terms, axis=(2, 3)).tolist())


def _rows(runs: list[int], count: int) -> FloatArray:
    """[run, 1, 1] True for the runs listed."""
    mask = np.zeros((count, 1, 1), dtype=bool)
    mask[runs] = True
    return mask


def hopeless(value: float, last: float, left: int, abandon: float) -> bool:
    """``_SplitFlow.run``'s test at ``ABANDON_STEP``: the objective, less ``ABANDON_SLOPES`` times the last step's fall
    for each of the ``left`` steps, still at or above ``abandon``."""
    return bool(value - ABANDON_SLOPES * (last - value) * left >= abandon)


def _all_on(one: _SplitFlow, cost: FloatArray) -> FloatArray:
    """``_SplitFlow.all_on`` of every run's ``cost`` [run, c, j]."""
    if one.all_rows:
        return np.asarray(np.multiply(one.cols == cost.argmin(axis=2)[:, :, None], one.rate_col))
    return np.stack([one.all_on(c) for c in cost])


def _steps(
    stack: _Stack, lam: FloatArray, direction: FloatArray, here: tuple[FloatArray, FloatArray], moving: list[int]
) -> list[float]:
    """The line search's step of each run in ``moving`` (``_SplitFlow.step`` with the pools' derivatives ``here``)."""
    one = stack.one
    dlam = _per_run_lam(one, direction)
    dd = dlam * dlam
    linear = _sums(one.cost * direction).tolist()
    pair = stack.both  # free until the first ``along``
    np.multiply(dlam, here[0], out=pair[0])
    np.multiply(dd, here[1], out=pair[1])
    slope0, curve0 = _both_sums(pair)
    searches: dict[int, Search] = {}
    wanted: dict[int, float] = {}
    steps: dict[int, float] = {}
    for r in moving:
        searches[r] = newton((linear[r] + slope0[r], curve0[r]))
        _advance(searches, wanted, steps, r, None)
    double = 2.0 if queue_split.HALF_CURVATURE else 1.0
    while wanted:
        at = np.zeros(len(stack.flows))  # runs whose search is over are evaluated at 0 (their pools' own point)
        for r, a in wanted.items():
            at[r] = a
        slopes, curves = _both_sums(stack.along(lam, at, dlam, dd))
        for r in list(wanted):
            _advance(searches, wanted, steps, r, (linear[r] + slopes[r], double * curves[r]))
    return [steps[r] for r in moving]


def _advance(
    searches: dict[int, Search],
    wanted: dict[int, float],
    steps: dict[int, float],
    r: int,
    answer: tuple[float, float] | None,
) -> None:
    """Give run r's line search its answer (None: start it); record the point it wants next, or its step."""
    try:
        wanted[r] = next(searches[r]) if answer is None else searches[r].send(answer)
    except StopIteration as done:
        wanted.pop(r, None)
        steps[r] = float(done.value)
