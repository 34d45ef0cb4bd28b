"""solver.fast_round: Python's round(x, digits) bit for bit on every kind of float; without its tie check the
comparison catches the difference."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from solver import fast_round
from solver.fast_round import python_round


def _values() -> list[float]:
    """Random shares and RTTs, values a hair off decimal ties at 1 and 6 digits, exact ties, edge floats."""
    rng = np.random.default_rng(5)
    out = [float(v) for v in rng.uniform(0, 500, 20000)] + [float(v) for v in rng.uniform(0, 1, 20000)]
    out += [k / 10 + 0.05 for k in range(-2000, 2000)] + [k / 1e6 + 5e-7 for k in range(-2000, 2000)]
    out += [1.15, 2.675, 0.125, 0.25, -0.0, 0.0, float("nan"), float("inf"), -float("inf"), 1e300, 1e-300, 2.0**52]
    return out + [float(v) for v in rng.standard_normal(20000) * 10.0 ** rng.integers(-10, 15, 20000)]


def _same(a: float, b: float) -> bool:
    """Equal floats with the same sign bit, or both NaN."""
    return (a == b and np.signbit(a) == np.signbit(b)) or (a != a and b != b)


@pytest.mark.parametrize("digits", [0, 1, 3, 6])
def test_python_round_is_pythons_round(digits: int) -> None:
    values = _values()
    got = python_round(values, digits)
    assert all(_same(a, round(v, digits)) for a, v in zip(got, values, strict=True))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=30), st.integers(0, 8))
def test_python_round_on_any_floats(values: list[float], digits: int) -> None:
    got = python_round(values, digits)
    assert all(_same(a, round(v, digits)) for a, v in zip(got, values, strict=True))


def test_without_the_tie_check_the_comparison_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fast_round, "CHECK_TIES", False)
    values = _values()
    got = python_round(values, 1)
    assert not all(_same(a, round(v, 1)) for a, v in zip(got, values, strict=True))
