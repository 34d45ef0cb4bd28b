"""The queue integer part's exact shortcuts (issue 16 item 5, solve time): each gives what the long way gives.

* solver.queue_split.split_run continues a shorter Frank-Wolfe run from the same inputs (the move pass's run
  without a move is the best split's first steps): bit for bit the long run, and never a run from other inputs.
"""

from __future__ import annotations

import numpy as np
import pytest

from solver.queue_move import TRY_ITERATIONS
from solver.queue_plan import _largest, _split_members, _spread_members
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


def _one_member_reference(row: list[float], rejected: float) -> int | None:
    """The one-member rule as it was: the first largest of the row and the rejected rate; None where it is none."""
    one = [*row, rejected]
    best = max(one)
    if best <= 0:
        return None
    i = one.index(best)
    return None if i == len(row) else i


def _rows(rng: np.random.Generator, count: int) -> list[tuple[list[float], float]]:
    """Random splits with zeros, ties (equal shares) and a rejected part that is zero, small or largest."""
    out = []
    for _ in range(count):
        j = int(rng.integers(1, 12))
        row = (rng.random(j) * (rng.random(j) < 0.6)).round(int(rng.integers(1, 4))).tolist()
        rejected = float(rng.choice([0.0, 0.0, round(float(rng.random()), 2), max(row, default=0.0)]))
        out.append((row, rejected))
    return out


def test_the_plans_member_rules_on_positive_weights_are_the_full_ones() -> None:
    """queue_plan's shortcuts (the largest positive weight for one member; largest remainders on the non-zero
    weights for several) give what the rules over every weight give, ties included."""
    rng = np.random.default_rng(7)
    fast = 0
    for row, rejected in _rows(rng, 3000):
        positive = [j for j, v in enumerate(row) if v > 0]
        assert _largest(row, positive, rejected) == _one_member_reference(row, rejected)
        for n in (2, 3, 5, 8):
            total = float(np.append(np.array(row), rejected).sum())
            got = _split_members(n, row, rejected, total)
            if got is not None:
                fast += 1
                assert got == _spread_members(n, np.array(row), rejected), (row, rejected, n)
    assert fast >= 8000  # the shortcut is taken almost always


def test_the_member_check_sees_a_changed_tie_rule() -> None:
    """The check above is not vacuous: the first of equal remainders (not the last) takes the member."""
    row, rejected = [0.5, 0.5, 0.0], 0.0
    assert _split_members(3, row, rejected, 1.0) == _spread_members(3, np.array(row), rejected) == [0, 0, 1]
    assert _largest([0.5, 0.5], [0, 1], 0.0) == 0 and _largest([0.5], [0], 0.5) == 0


def test_the_close_screens_per_pool_sums_skip_only_zeros() -> None:
    """queue_close_fast._per_pool adds each pool's positive shares only: the same floats as the dense add.at over
    every class (zeros add nothing, in the same class order), on splits with zeros and tiny negatives."""
    from types import SimpleNamespace

    from solver.queue_close_fast import _per_pool

    rng = np.random.default_rng(3)
    for _ in range(300):
        C, J, K = (int(v) for v in rng.integers(1, [60, 30, 6]))
        model = rng.integers(0, K, C)
        x = rng.random((C, J)) * 10.0 ** rng.uniform(-6, 6, (C, J)) * (rng.random((C, J)) < 0.4)
        x[rng.random((C, J)) < 0.05] = -1e-18
        per_class = rng.normal(size=(C, J)) * 10.0 ** rng.uniform(-3, 3, (C, J))
        pools = SimpleNamespace(x=x, q=SimpleNamespace(base=SimpleNamespace(class_model=model, model_names=[0] * K,
                                                                             n_nodes=J)))  # fmt: skip
        dense = np.zeros((K, J))
        np.add.at(dense, model, x * np.where(x > 0, per_class, 0.0))
        assert np.array_equal(_per_pool(pools, per_class), dense.T)  # type: ignore[arg-type]
