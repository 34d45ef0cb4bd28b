"""The move tries' Frank-Wolfe runs made together (solver.queue_batch) against the same runs one at a time
(issue 16 item 5): the same splits, steps and gaps bit for bit, abandoned runs included."""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import pytest

from bench.queue_bench import with_cores
from solver import queue_batch, queue_move
from solver.problem import Mode, build_problem
from solver.queue_close import integer_objective
from solver.queue_close_fast import close_pools_fast
from solver.queue_fast import solve_nlp_fast
from solver.queue_model import build_queue_problem
from solver.queue_move import TRY_ITERATIONS
from solver.queue_repair import Pools, repair
from solver.queue_split import ABANDONED, _SplitFlow
from solver.simulate import thesis_instance
from tests.unit.built_once import built_once
from tests.unit.test_queue_repair_golden import cases


@functools.cache
def _rounds() -> list[tuple[list[Any], float]]:
    """Move rounds (each: its prepared tries and the plan's integer objective) on thesis instances at 2 and 4 cores
    per node and on the golden synthetic inputs with 4 cores per node.

    Built once for the three tests that read them (~1 s CPU each time: 20 relaxations, repairs and closings): no
    test writes to them (run_batch and _SplitFlow.run start from copies; checked unmutated after the module), and
    what test_a_batch_with_one_runs_servers_for_all_is_caught patches (queue_batch._Stack) builds none of them."""
    found = []
    pools_list = []
    for cores in (2.0, 4.0):
        for r, n in [(20, 10), (40, 10), (25, 15), (50, 10), (30, 5)]:
            for mode in (Mode.MODE1, Mode.MODE2):
                q = build_queue_problem(build_problem(with_cores(thesis_instance(r, n, 2), cores), mode))
                nlp = solve_nlp_fast(q)
                pools_list.append(repair(q, nlp.x, nlp.r, nlp.n))
    from tests.unit.test_queue_plan_golden import _with_cores

    for _, q, x, rejected, n in cases():
        pools_list.append(repair(_with_cores(q, 4.0), x, rejected, n))
    for pools in pools_list:
        close_pools_fast(pools)
        counts = pools.counts()
        ready = [queue_move._prepare(pools, counts, move) for move in queue_move._candidates(pools, counts)]
        ready = [r for r in ready if r is not None]
        if len(ready) >= 2:
            found.append((ready, integer_objective(pools)))
    return found


def _compare(rounds: list[tuple[list[Any], float]], slack: float) -> tuple[int, int]:
    """Each round's runs together and one at a time, with abandon at the plan's objective times ``slack``; asserts
    they match bit for bit. Returns (runs, abandoned)."""
    runs = abandoned = 0
    for ready, before in rounds:
        beats = [before * slack - fixed for _, _, _, fixed in ready]
        together = queue_batch.run_batch(
            [_SplitFlow(*inputs) for _, inputs, _, _ in ready], [r[2] for r in ready], TRY_ITERATIONS, beats
        )
        for (_, inputs, start, _), beat, (x, steps, gap) in zip(ready, beats, together, strict=True):
            alone = _SplitFlow(*inputs).run(start, TRY_ITERATIONS, abandon=beat)
            assert np.array_equal(x, alone[0]) and steps == alone[1] and (gap == alone[2])
            assert np.signbit(x).tolist() == np.signbit(alone[0]).tolist()  # zeros' signs too
            runs += 1
            abandoned += gap == ABANDONED
    return runs, abandoned


def test_runs_together_equal_runs_alone() -> None:
    """Bit for bit on every round (plain, and with abandon thresholds that stop some runs at ABANDON_STEP)."""
    rounds = _rounds()
    assert len(rounds) >= 10
    runs, _ = _compare(rounds, np.inf)
    assert runs >= 30
    _, abandoned = _compare(rounds, 1.0)
    assert abandoned >= 5


def test_a_batch_with_one_runs_servers_for_all_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch that gives every run the first run's servers (a plausible slip: they share everything else) differs."""
    real = queue_batch._Stack.__init__

    def shared(self: Any, flows: Any) -> None:
        real(self, flows)
        self.n = np.stack([flows[0].n for _ in flows])

    monkeypatch.setattr(queue_batch._Stack, "__init__", shared)
    with pytest.raises(AssertionError):
        _compare(_rounds(), np.inf)


def test_the_move_pass_is_the_same_with_and_without_the_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    """The golden plans (recorded before the batch) hold with the batch off as well as on (test_queue_plan_golden)."""
    from tests.unit.test_queue_cgint import _golden_differs

    monkeypatch.setattr(queue_move, "BATCH", False)
    assert not _golden_differs()


@built_once
def _closed_pools(cores: float, r: int, n: int, mode: Mode) -> Pools:
    """Seed 1 of thesis instance r x n at ``cores`` per node: the relaxation, repaired and its pools closed (a copy
    of its own for each caller). The relaxation, repair and closing are ~80 % of a move pass's time here and read
    none of the switches these tests set (queue_move's BATCH, SCREEN and hopeless): built once, they serve both of
    test_a_round_made_together_equals_the_round_one_run_at_a_time's passes and the candidates test (72 builds ->
    32)."""
    q = build_queue_problem(build_problem(with_cores(thesis_instance(r, n, 1), cores), mode))
    nlp = solve_nlp_fast(q)
    pools = repair(q, nlp.x, nlp.r, nlp.n)
    close_pools_fast(pools)
    return pools


def _move_passes(monkeypatch: pytest.MonkeyPatch, batch: bool) -> list[Any]:
    """The move pass and the best split after it on thesis instances at 2 and 4 cores per node (``BATCH`` as given):
    moves kept, rates, caps, the run best_split continues, and the split's result."""
    monkeypatch.setattr(queue_move, "BATCH", batch)
    from solver.queue_split import best_split

    out = []
    for cores in (2.0, 4.0):
        for r, n in [(20, 10), (40, 10), (25, 15), (50, 10), (30, 5), (20, 20)]:
            for mode in (Mode.MODE1, Mode.MODE2):
                pools = _closed_pools(cores, r, n, mode)
                moved = queue_move.move_instances(pools)
                run = pools.split_run
                kept = None if run is None else (run.x.tolist(), run.steps, run.gap, run.start.tolist())
                out.append((moved, pools.x.tolist(), pools.cap.tolist(), kept, best_split(pools), pools.x.tolist()))
    return out


def test_a_round_made_together_equals_the_round_one_run_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """The run without a move and the tries made together, the tries' early stop applied afterwards: the same
    moves, rates, caps, continued run and best split bit for bit; some tries are given up and some moves kept."""
    given_up = [0]
    real = queue_batch.hopeless

    def counted(*args: Any) -> bool:
        out = real(*args)
        given_up[0] += out
        return out

    monkeypatch.setattr(queue_move, "hopeless", counted)
    monkeypatch.setattr(queue_move, "SCREEN", False)  # every try run (the screened round: test_queue_move_screen)
    together = _move_passes(monkeypatch, True)
    assert given_up[0] >= 3 and sum(p[0] for p in together) >= 2
    assert _move_passes(monkeypatch, False) == together


def _flow_fields(flow: _SplitFlow) -> dict[str, Any]:
    """A flow's fields, its work buffers' contents left out (they are scratch space)."""
    return {k: v for k, v in vars(flow).items() if k not in ("buffers", "at_top")}


def _same_fields(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Equal field sets, arrays equal bit for bit (dtype included), other values equal."""
    if a.keys() != b.keys():
        return False
    for key, value in a.items():
        other = b[key]
        if isinstance(value, np.ndarray):
            if not (isinstance(other, np.ndarray) and value.dtype == other.dtype and np.array_equal(value, other)):
                return False
        elif value != other:
            return False
    return True


def test_a_sibling_flow_has_a_fresh_flows_fields() -> None:
    """queue_batch.sibling (a round's later runs share the first's arrays) sets every field as _SplitFlow's
    __init__ does; a sibling that keeps the first run's servers is caught."""
    checked = 0
    for ready, _ in _rounds():
        one = _SplitFlow(*ready[0][1])
        for _, (q, servers, allowed), _, _ in ready[1:]:
            fresh = _flow_fields(_SplitFlow(q, servers, allowed))
            assert _same_fields(_flow_fields(queue_batch.sibling(one, servers, allowed)), fresh)
            if not np.array_equal(servers, ready[0][1][1]):
                assert not _same_fields(_flow_fields(one), fresh)
                checked += 1
    assert checked >= 10


def test_both_sums_reduce_each_half_as_its_own_sums() -> None:
    """queue_batch._both_sums (the slope's and the curvature's terms of every run in one reduction) gives each half's
    per-run sums bit for bit as ``_sums`` on that half alone, on shapes below, at and past numpy's pairwise blocks."""
    rng = np.random.default_rng(16)
    for runs, rows, cols in [(1, 1, 1), (3, 5, 4), (5, 10, 5), (4, 50, 10), (2, 129, 7), (6, 40, 100)]:
        terms = rng.standard_normal((2, runs, rows, cols)) * 10.0 ** rng.integers(-8, 8, (2, runs, rows, cols))
        first, second = queue_batch._both_sums(terms)
        assert first == queue_batch._sums(np.array(terms[0])).tolist()
        assert second == queue_batch._sums(np.array(terms[1])).tolist()


def _candidates_reference(pools: Any, counts: Any) -> list[tuple[int, int, int]]:
    """queue_move._candidates as it was in numpy (session 12): the Python-list version must list the same moves."""
    from solver.node_cpu import core_room

    q = pools.q
    room = core_room(pools.lam(), q.mu, pools.cores, q.rho_max)
    cored = np.isfinite(pools.cores)
    out = []
    for k in range(counts.shape[1]):
        for g in np.unique(pools.node_group).tolist():
            mine = cored & (pools.node_group == g)
            sources = [int(j) for j in np.flatnonzero(mine & (counts[:, k] >= 2))]
            sources = sorted(sources, key=lambda j: (-counts[j, k], j))[: queue_move.CANDIDATES]
            dests = [
                int(j) for j in np.flatnonzero(mine & (counts[:, k] < pools.cores) & (room >= queue_move.IDLE_CORE))
            ]
            dests = sorted(dests, key=lambda j: (-room[j], j))[: queue_move.CANDIDATES]
            out += [(a, b, k) for a in sources for b in dests if a != b]
    return out


def test_move_candidates_equal_the_numpy_reference() -> None:
    """The move pass's candidates (Python lists over the nodes) equal the numpy version's, moves and order, on thesis
    instances at 1, 2 and 4 cores and with half the nodes without cores (those take no part)."""
    listed = 0
    for cores in (1.0, 2.0, 4.0):
        for r, n in [(20, 10), (40, 10), (25, 15), (30, 5)]:
            for mode in (Mode.MODE1, Mode.MODE2):
                pools = _closed_pools(cores, r, n, mode)
                counts = pools.counts()
                assert queue_move._candidates(pools, counts) == _candidates_reference(pools, counts)
                pools.cores = np.where(np.arange(len(pools.cores)) % 2 == 0, pools.cores, np.inf)
                assert queue_move._candidates(pools, counts) == _candidates_reference(pools, counts)
                listed += len(queue_move._candidates(pools, counts))
    assert listed > 0
