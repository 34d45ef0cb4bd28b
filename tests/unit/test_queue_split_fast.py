"""The fast best split (solver.queue_split._SplitFlow) against the previous bisection Frank-Wolfe (issue 16)."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.queue_bench import with_cores
from solver import queue_split
from solver.hold import _all_on, _delay, _gradient, _lam, _objective
from solver.node_cpu import effective_servers
from solver.problem import FloatArray, Mode
from solver.queue_model import QueueProblem
from solver.simulate import thesis_instance
from solver.snapshot import Snapshot
from tests.unit.test_instance_bound import cluster
from tests.unit.test_queue_split import _closed
from tests.unit.test_solver_queue_placement import instances

Case = tuple[QueueProblem, FloatArray, np.ndarray, FloatArray]


def reference(q: QueueProblem, n: FloatArray, allowed: np.ndarray, start: FloatArray, steps: int) -> FloatArray:
    """The split as solver.queue_split computed it before: 20-halving bisection line search, gap 1e-3."""
    big = np.where(allowed, 0.0, np.inf)
    x = np.where(allowed, start, 0.0)
    for _ in range(steps):
        grad = _gradient(q, n, x)
        d = _all_on(grad + big, q.rate) - x
        if -(grad * d).sum() <= 1e-3 * max(_objective(q, n, x), 1e-9):
            break
        x = reference_step(q, n, x, d)
    return x


def reference_step(q: QueueProblem, n: FloatArray, x: FloatArray, d: FloatArray) -> FloatArray:
    """The previous line search: ``x`` moved along ``d`` by 20 halvings on the derivative, as before."""
    linear, lam, dlam = float((q.base.cost * d).sum()), _lam(q, x), _lam(q, d)

    def slope(a: float) -> float:
        return linear + float((dlam * (_delay(q, lam + a * dlam, n)[1] - q.service_ms)).sum())

    if slope(1.0) <= 0:
        return x + d
    lo, hi = 0.0, 1.0
    for _ in range(20):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if slope(mid) < 0 else (lo, mid)
    return x + lo * d


def case(snap: Snapshot, mode1: bool) -> Case | None:
    """best_split's inputs on a repaired, pool-closed plan: (q at the served rates, servers, allowed, start)."""
    q, pools = _closed(snap, Mode.MODE1 if mode1 else Mode.MODE2)
    counts, served = pools.counts(), pools.x.sum(axis=1)
    allowed = (counts[:, q.base.class_model].T > 0) & (served[:, None] > 0)
    if pools.x.size == 0 or not np.any(allowed.sum(axis=1) > 1):
        return None
    return dataclasses.replace(q, rate=served), effective_servers(counts, pools.cores), allowed, pools.x


def thesis_cases() -> list[Case]:
    """best_split's inputs on the bench's thesis instances (3 sizes x 2 seeds, without and with 2 cores)."""
    found = [
        case(with_cores(thesis_instance(r, n, s), cores), mode1)
        for r, n in [(25, 10), (50, 10), (25, 20)]
        for s in range(2)
        for cores in (None, 2.0)
        for mode1 in (False, True)
    ]
    return [c for c in found if c is not None]


CASES = thesis_cases()


def test_each_newton_step_is_at_least_as_good_as_the_bisection_step() -> None:
    """From the same split and direction, the Newton line search's objective is within 1e-6 relative of the
    bisection's (20 halvings) and never above it by more than 1e-9: the step is the line's exact minimiser."""
    assert len(CASES) >= 10
    for q, n, allowed, start in CASES:
        x, big = np.where(allowed, start, 0.0), np.where(allowed, 0.0, np.inf)
        flow = queue_split._SplitFlow(q, n, allowed)
        for _ in range(8):
            d = _all_on(_gradient(q, n, x) + big, q.rate) - x
            newton = x + flow.step(x, _lam(q, x), d) * d
            halved = reference_step(q, n, x, d)
            assert _objective(q, n, newton) == pytest.approx(_objective(q, n, halved), rel=1e-6)
            assert _objective(q, n, newton) <= _objective(q, n, halved) * (1 + 1e-9)
            x = newton


def test_whole_runs_match_the_bisection_split() -> None:
    """8 and 20 steps from the repaired split: most runs end within 1e-6 relative of the bisection split (the
    paths diverge where a step's last digits pick another vertex), none above it by more than 2e-4."""
    diffs = []
    for q, n, allowed, start in CASES:
        for steps in (8, 20):
            fast = _objective(q, n, queue_split._frank_wolfe(q, n, allowed, start, steps))
            slow = _objective(q, n, reference(q, n, allowed, start, steps))
            diffs.append((fast - slow) / abs(slow))
    assert max(diffs) <= 2e-4
    assert np.mean(np.abs(diffs) <= 1e-6) >= 0.8


def test_the_gap_stop_ends_runs_at_the_stated_gap(monkeypatch: pytest.MonkeyPatch) -> None:
    """Run long (200 steps), some thesis instances stop early at relative duality gap TOLERANCE, and every
    early stop is at a gap within TOLERANCE (best_split then takes no step where repair left it within)."""
    ran = []
    for q, n, allowed, start in CASES:
        _, steps, gap = queue_split._SplitFlow(q, n, allowed).run(np.where(allowed, start, 0.0), 200)
        ran.append(steps)
        assert steps == 200 or gap <= queue_split.TOLERANCE
    assert sum(1 for s in ran if s < 200) >= 2


def test_without_the_gap_stop_the_gap_test_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    """The checker above fails with the gap stop switched off (every run takes all its steps)."""
    monkeypatch.setattr(queue_split, "GAP_STOP", False)
    with pytest.raises(AssertionError):
        test_the_gap_stop_ends_runs_at_the_stated_gap(monkeypatch)


@pytest.mark.parametrize("gap_stop", [True, False])
def test_a_split_repair_left_within_the_gap_takes_no_step(monkeypatch: pytest.MonkeyPatch, gap_stop: bool) -> None:
    """Thesis 25 x 5 (seed 0, 2 cores per node, Mode 1): repair leaves the split at relative gap 8.8e-4, within
    TOLERANCE, so best_split takes no Frank-Wolfe step and changes nothing; without the gap stop it takes all
    ITERATIONS steps (the plain run's: the capped run, queue_split.CAPPED, is counted apart in
    test_queue_split_capped)."""
    monkeypatch.setattr(queue_split, "GAP_STOP", gap_stop)
    monkeypatch.setattr(queue_split, "CAPPED", False)
    steps = []
    real = queue_split._SplitFlow.step

    def counted(self: queue_split._SplitFlow, x: FloatArray, lam: FloatArray, d: FloatArray, *rest: Any) -> float:
        steps.append(1)
        return real(self, x, lam, d, *rest)

    monkeypatch.setattr(queue_split._SplitFlow, "step", counted)
    _, pools = _closed(with_cores(thesis_instance(25, 5, 0), 2.0), Mode.MODE1)
    x = pools.x.copy()
    kept = queue_split.best_split(pools)
    assert len(steps) == (0 if gap_stop else queue_split.ITERATIONS)
    if gap_stop:
        assert not kept and np.array_equal(pools.x, x)


snapshots = st.one_of(instances(), st.builds(lambda d: d, st.data()).map(lambda d: cluster(d.draw)))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(snapshots, st.booleans(), st.sampled_from([8, 20]))
def test_the_fast_split_is_no_worse_than_the_bisection_split_on_random_clusters(
    snap: Snapshot, mode1: bool, steps: int
) -> None:
    """Random clusters with and without cores (Mode 1 and 2), 8 (moves) and 20 (best split) steps: the fast
    split's objective is at most ``queue_split.TOLERANCE`` relative above the bisection split's (after a fixed
    number of steps neither is at the optimum and the two line searches take different paths: 2.4e-4 was seen
    on a random two-node cluster; the split itself is kept at that relative duality gap), and it keeps every
    stream's rate."""
    found = case(snap, mode1)
    if found is None:
        return
    q, n, allowed, start = found
    fast = queue_split._frank_wolfe(q, n, allowed, start, steps)
    slow = reference(q, n, allowed, start, steps)
    slack = queue_split.TOLERANCE * abs(_objective(q, n, slow))
    assert _objective(q, n, fast) <= _objective(q, n, slow) + slack
    np.testing.assert_allclose(fast.sum(axis=1), q.rate * allowed.any(axis=1), rtol=1e-9, atol=1e-9)
    assert np.all(fast[~allowed] == 0) and np.all(fast >= -1e-9)
