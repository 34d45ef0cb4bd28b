"""The integer part's cheaper steps where cores bind (issue 16 item 5, session intcores): each must leave the
plans as they were or within the stated tolerance, and do less work (counted, not timed)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from bench.queue_bench import with_cores
from solver import queue_move, queue_split
from solver.problem import Mode, build_problem
from solver.queue_close_fast import close_pools_fast
from solver.queue_fast import solve_nlp_fast
from solver.queue_model import build_queue_problem
from solver.queue_repair import repair
from solver.simulate import thesis_instance
from tests.unit.test_queue_split_fast import CASES


def _runs(monkeypatch: pytest.MonkeyPatch, lazy: bool) -> tuple[list[Any], int]:
    """20-step Frank-Wolfe runs on the split cases with ``LAZY_END`` as given; their splits and the line
    search's evaluations."""
    monkeypatch.setattr(queue_split, "LAZY_END", lazy)
    calls = [0]
    along = queue_split._SplitFlow.along

    def counted(self: Any, *args: Any) -> tuple[float, float]:
        calls[0] += 1
        return along(self, *args)

    monkeypatch.setattr(queue_split._SplitFlow, "along", counted)
    out = [queue_split._frank_wolfe(q, n, allowed, start, 20) for q, n, allowed, start in CASES]
    return out, calls[0]


def test_the_lazy_end_check_gives_the_same_splits_with_fewer_evaluations(monkeypatch: pytest.MonkeyPatch) -> None:
    """The slope at step 1 read only where Newton reaches 1: every split bit for bit as with it read first,
    and at most 85 % of the line search's evaluations."""
    assert len(CASES) >= 10
    eager, eager_calls = _runs(monkeypatch, lazy=False)
    lazy, lazy_calls = _runs(monkeypatch, lazy=True)
    for a, b in zip(eager, lazy, strict=True):
        assert np.array_equal(a, b)
    assert lazy_calls <= 0.85 * eager_calls


def _moves(monkeypatch: pytest.MonkeyPatch, abandon: bool) -> tuple[list[Any], int, int]:
    """Closing and instance moves on thesis instances whose nodes have 2 cores, with ``queue_move.ABANDON`` as
    given: the pools, the line searches the move pass made and the moves it kept."""
    monkeypatch.setattr(queue_move, "ABANDON", abandon)
    monkeypatch.setattr(queue_move, "BATCH", False)  # the tries' line searches counted one run at a time
    monkeypatch.setattr(queue_move, "SCREEN", False)  # every try made (the screen's own test: test_queue_move_screen)
    calls = [0]
    step = queue_split._SplitFlow.step

    def counted(self: Any, *args: Any) -> float:
        calls[0] += 1
        return step(self, *args)

    out, kept = [], 0
    for r, n in [(20, 10), (40, 10), (25, 15), (50, 10)]:
        for s in range(3):
            for mode in (Mode.MODE1, Mode.MODE2):
                q = build_queue_problem(build_problem(with_cores(thesis_instance(r, n, s), 2.0), mode))
                nlp = solve_nlp_fast(q)
                pools = repair(q, nlp.x, nlp.r, nlp.n)
                close_pools_fast(pools)
                monkeypatch.setattr(queue_split._SplitFlow, "step", counted)
                kept += queue_move.move_instances(pools)
                monkeypatch.setattr(queue_split._SplitFlow, "step", step)
                out.append(pools)
    return out, calls[0], kept


def test_hopeless_move_tries_stop_early_and_the_moves_kept_are_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where cores bind, a move try whose Frank-Wolfe run cannot beat the plan stops after ABANDON_STEP steps:
    the move pass takes at most 90 % of the Frank-Wolfe steps and keeps the same moves (plans bit for bit)."""
    full, full_steps, full_kept = _moves(monkeypatch, abandon=False)
    early, early_steps, early_kept = _moves(monkeypatch, abandon=True)
    assert early_steps <= 0.9 * full_steps
    assert early_kept == full_kept > 0
    for a, b in zip(full, early, strict=True):
        assert np.array_equal(a.x, b.x) and np.array_equal(a.counts(), b.counts())
