"""The integer part's cheaper steps where cores bind (issue 16 item 5, session intcores): each must leave the
plans as they were or within the stated tolerance, and do less work (counted, not timed)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from solver import queue_split
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
