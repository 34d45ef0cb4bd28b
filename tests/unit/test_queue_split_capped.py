"""The capped split run (solver.queue_split.CAPPED, ``_capped_or_plain``, ``_SplitFlow.run_capped``; issue 16 item 5).

Where the plain Frank-Wolfe run's first step keeps every pool within its cap and every node within its cores,
best_split is the plain run's bit for bit; where it does not, a run whose iterates stay within the caps is tried
first and taken where it ends within ``PROBE`` steps. These tests hold the first to the plain run exactly, the capped
run to the caps (and catch a run that is not capped), count the Frank-Wolfe steps it saves at 1 core, and keep every
invariant of the best split with the capped run taken every time.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.queue_bench import with_cores
from solver import queue_move, queue_split
from solver.node_cpu import busy, effective_servers
from solver.problem import FloatArray, Mode
from solver.queue_close import integer_objective
from solver.queue_move import move_instances
from solver.queue_repair import Pools
from solver.queue_split import _feasible_step, _SplitFlow, best_split, feasible_limits, load_limit
from solver.simulate import thesis_instance
from solver.snapshot import Snapshot
from tests.unit.test_instance_bound import cluster
from tests.unit.test_queue_split import _closed
from tests.unit.test_solver_queue_placement import check, instances

SIZES = [(20, 10), (30, 10), (40, 10), (50, 10), (25, 5), (25, 10), (25, 15)]


def _moved(cores: float, r: int, n: int, seed: int, mode: Mode) -> Pools:
    """A thesis instance's pools after repair, pool closing and the move pass (best_split's input), with the move
    pass's ``queue_move.BATCH`` as it is now."""
    return _moved_once(cores, r, n, seed, mode, queue_move.BATCH)


@functools.cache
def _moved_once(cores: float, r: int, n: int, seed: int, mode: Mode, batch: bool) -> Pools:
    """``_moved``, built once per arguments: ~3 s CPU for the 56 cases, asked for by 6 of the 7 tests (the pools are
    only read: ``_split`` runs best_split on a copy; the move pass makes no _SplitFlow.step call with the batch, so
    the step counts of test_the_capped_run_saves_the_plain_runs_steps_at_one_core are the same)."""
    assert batch == queue_move.BATCH
    _, pools = _closed(with_cores(thesis_instance(r, n, seed), cores), mode)
    move_instances(pools)
    return pools


def _cases(cores: float, seeds: int = 2) -> list[Pools]:
    return [_moved(cores, r, n, s, m) for r, n in SIZES for s in range(seeds) for m in (Mode.MODE1, Mode.MODE2)]


def _start(pools: Pools) -> tuple[_SplitFlow, FloatArray, FloatArray, Any] | None:
    """best_split's flow, start and counts, and its first step (None where no stream has a choice)."""
    q, p = pools.q, pools.q.base
    counts = pools.counts()
    served = pools.x.sum(axis=1)
    allowed = (counts[:, p.class_model].T > 0) & (served[:, None] > 0)
    if not np.any(allowed.sum(axis=1) > 1):
        return None
    flow = _SplitFlow(dataclasses.replace(q, rate=served), effective_servers(counts, pools.cores), allowed)
    start = np.where(allowed, pools.x, 0.0)
    return flow, start, counts.astype(float), flow.first_step(start)


def _leaves(pools: Pools) -> bool | None:
    """Whether the plain run's first step leaves the caps (None: no run, or none needed)."""
    found = _start(pools)
    if found is None or found[3] is None:
        return None
    _, start, counts, (a, direction, lam) = found
    return bool(_feasible_step(pools, counts, start, direction, feasible_limits(pools, counts), lam) < a)


def _split(pools: Pools, capped: bool, monkeypatch: pytest.MonkeyPatch) -> tuple[bool, FloatArray, float]:
    """best_split on a copy of ``pools`` with CAPPED as given: (kept, split, integer objective)."""
    monkeypatch.setattr(queue_split, "CAPPED", capped)
    pools = copy.deepcopy(pools)
    kept = best_split(pools)
    return kept, pools.x, integer_objective(pools)


def test_where_the_first_step_keeps_the_caps_the_split_is_the_plain_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Thesis sizes x 2 seeds x both modes at 2 and 1 cores: where the first step stays within the caps, the split
    with CAPPED on is the plain run's bit for bit (continued from the move pass's run or from the first step); both
    branches occur."""
    kinds = {True: 0, False: 0}
    for cores in (2.0, 1.0):
        for pools in _cases(cores):
            leaves = _leaves(pools)
            plain = _split(pools, False, monkeypatch)
            capped = _split(pools, True, monkeypatch)
            if leaves is None or not leaves:
                assert plain[0] == capped[0] and np.array_equal(plain[1], capped[1])
            if leaves is not None:
                kinds[leaves] += 1
    assert kinds[True] >= 10 and kinds[False] >= 10


def _excess(pools: Pools, x: FloatArray, counts: FloatArray) -> FloatArray:
    """Every row's excess at split ``x``: each pool's rate over its load limit on its count, each node's busy work
    over ``rho_max`` of its cores (repair may leave a node a hair over, ~1e-7: such a row may not grow)."""
    lam = x.T @ feasible_limits(pools, counts)[0]
    q = pools.q
    nodes = busy(lam, q.mu) - q.rho_max * pools.cores
    return np.concatenate([(lam - load_limit(pools) * counts).ravel(), np.where(np.isfinite(nodes), nodes, 0.0)])


@pytest.mark.parametrize("capped", [True, False])
def test_the_capped_run_keeps_every_cap(capped: bool) -> None:
    """Every run_capped of ITERATIONS steps from the start of a case whose first step leaves the caps ends within every
    pool's cap and every node's cores (a row already over at the start no further over); with its room check
    replaced by the whole step (``capped`` False: a plain run with run_capped's stops) the check fails, so it sees an
    uncapped run."""
    ends = []
    for cores in (2.0, 1.0):
        for pools in _cases(cores, seeds=1):
            if not _leaves(pools):
                continue
            flow, start, counts, _ = _start(pools)  # type: ignore[misc]
            fixed = feasible_limits(pools, counts)

            def room(
                y: FloatArray, d: FloatArray, at: FloatArray, pools: Pools = pools, counts: FloatArray = counts
            ) -> float:
                return _feasible_step(pools, counts, y, d, feasible_limits(pools, counts), at) if capped else 1.0

            x, _ = flow.run_capped(start, queue_split.ITERATIONS, room, fixed)
            ends.append(
                bool(np.all(_excess(pools, x, counts) <= np.maximum(_excess(pools, start, counts), 0.0) + 1e-9))
            )
    assert len(ends) >= 10
    if capped:
        assert all(ends)
    else:
        assert not all(ends)


def test_the_capped_run_saves_the_plain_runs_steps_at_one_core(monkeypatch: pytest.MonkeyPatch) -> None:
    """At 1 core per node the plain run's first step leaves the caps in most thesis cases, and its 20 steps then end
    mostly where the cut back from the start is nothing: the capped run stops within PROBE steps there. Frank-Wolfe
    steps over the cases (line searches counted, the first step's included) fall by more than half, and no split
    costs more than its start."""
    calls = [0]
    real = _SplitFlow.step

    def counted(self: _SplitFlow, *args: Any) -> float:
        calls[0] += 1
        return real(self, *args)

    monkeypatch.setattr(_SplitFlow, "step", counted)
    totals = {}
    for capped in (False, True):
        calls[0] = 0
        for pools in _cases(1.0):
            before = integer_objective(pools)
            _, _, after = _split(pools, capped, monkeypatch)
            assert after <= before + 1e-9 * max(1.0, abs(before))
        totals[capped] = calls[0]
    assert totals[True] < 0.5 * totals[False]


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(instances(), st.builds(lambda d: d, st.data()).map(lambda d: cluster(d.draw))), st.booleans())
def test_the_capped_run_taken_every_time_keeps_every_invariant(snap: Snapshot, mode1: bool) -> None:
    """test_queue_split's invariants (budgets, caps, cores, rates, no model gains an instance, the integer objective
    does not rise) with the capped run taken wherever the first step leaves the caps, however long it runs."""
    old = queue_split.PROBE
    queue_split.PROBE = queue_split.ITERATIONS + 1
    try:
        q, pools = _closed(snap, Mode.MODE1 if mode1 else Mode.MODE2)
        counts, before, rejected = pools.counts(), integer_objective(pools), pools.rejected.copy()
        move_instances(pools)
        best_split(pools)
    finally:
        queue_split.PROBE = old
    check(pools)
    assert np.all(pools.counts().sum(axis=0) <= counts.sum(axis=0))
    assert np.all(busy(pools.lam(), q.mu) <= q.rho_max * q.cores() * (1 + 1e-6) + 1e-6)
    np.testing.assert_allclose(pools.rejected, rejected)
    assert integer_objective(pools) <= before + 1e-9 * max(1.0, abs(before))


@pytest.mark.parametrize("batch", [True, False])
def test_the_move_pass_hands_on_its_first_step_bit_for_bit(monkeypatch: pytest.MonkeyPatch, batch: bool) -> None:
    """best_split reads the first step of the move pass's run without a move (``SplitRun.first``) instead of taking it
    again: made together with the tries (solver.queue_batch) or alone, it is ``_SplitFlow.first_step``'s from the
    same start, bit for bit, wherever the split continues that run."""
    from solver import queue_move

    monkeypatch.setattr(queue_move, "BATCH", batch)
    compared = 0
    for pools in _cases(2.0) + _cases(1.0, seeds=1):
        run, found = pools.split_run, _start(pools)
        if run is None or found is None or run.first is None or found[3] is None:
            continue
        _, start, _, (a, direction, lam) = found
        if not run.same_inputs(pools.x.sum(axis=1), run.servers, run.allowed, start):
            continue
        assert run.first[0] == a
        assert np.array_equal(run.first[1], direction) and np.array_equal(run.first[2], lam)
        compared += 1
    assert compared >= 10
