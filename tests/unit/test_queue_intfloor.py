"""The queue integer part's exact shortcuts (issue 16 item 5, solve time): each gives what the long way gives.

* solver.queue_split.split_run continues a shorter Frank-Wolfe run from the same inputs (the move pass's run
  without a move is the best split's first steps): bit for bit the long run, and never a run from other inputs.
"""

from __future__ import annotations

import numpy as np
import pytest

from solver.queue_move import TRY_ITERATIONS
from solver.queue_split import ITERATIONS, SplitRun, split_run
from tests.unit.test_queue_split_fast import CASES


def test_a_continued_run_is_the_long_run_bit_for_bit() -> None:
    assert len(CASES) >= 10
    continued = 0
    for q, n, allowed, start in CASES:
        short = split_run(q, n, allowed, start, TRY_ITERATIONS)
        long = split_run(q, n, allowed, start, ITERATIONS)
        resumed = split_run(q, n, allowed, start, ITERATIONS, short)
        assert np.array_equal(resumed.x, long.x) and (resumed.steps, resumed.gap) == (long.steps, long.gap)
        continued += short.steps == TRY_ITERATIONS
    assert continued >= 5  # most short runs took all their steps, so the continuation ran


def test_a_run_from_other_inputs_is_not_continued(monkeypatch: pytest.MonkeyPatch) -> None:
    """Another start (or other servers) gives a fresh run: the check that compares the inputs is what keeps the
    continuation exact (a run continued from another start would end elsewhere)."""
    q, n, allowed, start = CASES[0]
    short = split_run(q, n, allowed, start, TRY_ITERATIONS)
    other = np.where(allowed, start, 0.0)
    rows = np.flatnonzero(allowed.sum(axis=1) > 1)
    j = np.flatnonzero(allowed[rows[0]])
    other[rows[0], j] = other[rows[0], j].sum() / len(j)  # the same rate, split evenly
    fresh = split_run(q, n, allowed, other, ITERATIONS)
    assert np.array_equal(split_run(q, n, allowed, other, ITERATIONS, short).x, fresh.x)
    assert np.array_equal(split_run(q, n * 1.5, allowed, start, ITERATIONS, short).x,
                          split_run(q, n * 1.5, allowed, start, ITERATIONS).x)  # fmt: skip
    monkeypatch.setattr(SplitRun, "same_inputs", lambda *_: True)  # switched off: it continues the wrong run
    assert not np.array_equal(split_run(q, n, allowed, other, ITERATIONS, short).x, fresh.x)
