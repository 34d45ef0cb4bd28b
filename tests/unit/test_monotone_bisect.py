"""solver.monotone_bisect: the plain loop's answer bit for bit from a few evaluations, whatever the guess; the
comparison catches a bracket one float off; solver.cpu_speed's work floor the same with the search on or off."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from solver import cpu_speed, monotone_bisect
from solver.monotone_bisect import bisect, plain_bisect


def _threshold_test(t: np.ndarray, calls: list[int]) -> Any:
    """A test monotone over floats: passes where s <= t (per row), counting its evaluations."""

    def test(s: np.ndarray) -> np.ndarray:
        calls[0] += 1
        return np.asarray(s <= t)

    return test


def _ulps_off(x: float, ulps: int) -> float:
    """The float ``ulps`` floats above ``x`` (below where negative; from 1e-300 where x is smaller)."""
    return float((np.array(max(x, 1e-300)).view(np.int64) + ulps).view(np.float64))


def _rows(draw: Any) -> tuple[np.ndarray, ...]:
    """(lo, hi, thresholds, guesses) for 1-6 rows: thresholds inside, below and above [lo, hi], guesses exact,
    a few ulps off, far off, outside or not finite."""
    size = draw(st.integers(1, 6))
    lo = np.array([draw(st.floats(1e-300, 0.9)) for _ in range(size)])
    hi = np.array([draw(st.sampled_from([1.0, float(x) + draw(st.floats(1e-9, 1.0))])) for x in lo])
    t = np.array([draw(st.sampled_from([x - 1e-3, y + 1.0, x, y])) if draw(st.booleans()) else draw(st.floats(x, y))
                  for x, y in zip(lo, hi, strict=True)])  # fmt: skip
    offsets = [0, 1, -3, 17, -1000, 10**12]
    guess = []
    for x, y, at in zip(lo, hi, t, strict=True):
        if draw(st.integers(0, 4)) == 0:
            guess.append(draw(st.sampled_from([np.nan, np.inf, -1.0, 2.0 * y, x])))
        else:
            guess.append(_ulps_off(float(at), draw(st.sampled_from(offsets))))
    return lo, hi, t, np.array(guess)


@st.composite
def _cases(draw: Any) -> tuple[np.ndarray, ...]:
    """``_rows`` and the rows to search (row 0 always). One composite strategy rather than ``st.data()``: the same
    draws in the same order, without st.data's per-draw bookkeeping (~60 % of this test's time over 400 examples)."""
    lo, hi, t, guess = _rows(draw)
    rows = np.array([draw(st.booleans()) for _ in lo]) | (np.arange(len(lo)) == 0)
    return lo, hi, t, guess, rows


@settings(max_examples=400, deadline=None)
@given(_cases())
def test_the_guided_search_gives_the_plain_loops_answer_bit_for_bit(case: tuple[np.ndarray, ...]) -> None:
    lo, hi, t, guess, rows = case
    plain, fast = [0], [0]
    with np.errstate(invalid="ignore", over="ignore"):
        want = np.where(rows, plain_bisect(_threshold_test(t, plain), lo, hi, 60), lo)
        got = bisect(_threshold_test(t, fast), lo, hi, 60, rows, guess)
    assert np.array_equal(got, want)
    assert plain[0] == 60


def test_a_close_guess_costs_a_few_evaluations() -> None:
    lo, hi = np.array([0.3, 0.5, 0.01]), np.ones(3)
    t = np.array([0.61, 0.77, 0.5])
    calls = [0]
    guess = np.array([_ulps_off(x, d) for x, d in zip(t, (2, -3, 0), strict=True)])
    got = bisect(_threshold_test(t, calls), lo, hi, 60, np.ones(3, dtype=bool), guess)
    assert np.array_equal(got, plain_bisect(_threshold_test(t, [0]), lo, hi, 60))
    assert calls[0] <= 6


def test_a_bracket_one_float_off_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """Taking the float after the last passing one as passing: the comparison with the plain loop fails."""
    brackets = monotone_bisect._brackets

    def off_by_one(*args: Any) -> tuple[np.ndarray, np.ndarray]:
        passes, fails = brackets(*args)
        return np.nextafter(passes, np.inf), fails

    monkeypatch.setattr(monotone_bisect, "_brackets", off_by_one)
    rng = np.random.default_rng(3)
    lo, hi, t = np.full(200, 0.25), np.ones(200), rng.uniform(0.3, 0.9, 200)
    got = bisect(_threshold_test(t, [0]), lo, hi, 60, np.ones(200, dtype=bool), t)
    assert not np.array_equal(got, plain_bisect(_threshold_test(t, [0]), lo, hi, 60))


def test_the_work_floor_is_the_plain_bisections(monkeypatch: pytest.MonkeyPatch) -> None:
    """400 random nodes (1-4 pools, 0-6 instances each, 0.5-2 cores or none, loads up to 1): the scheduler model's
    figures bit for bit with the search on and off; the floor binds (the search runs) on many of them."""
    rng = np.random.default_rng(11)
    guessed = [0]
    floor_guess = cpu_speed._floor_guess

    def counted(*args: Any) -> np.ndarray:
        guessed[0] += 1
        return floor_guess(*args)

    monkeypatch.setattr(cpu_speed, "_floor_guess", counted)
    monkeypatch.setattr(cpu_speed, "PLAIN", False)  # every shared node in the arrays (the small ones: _node_floor)
    for _ in range(400):
        j, k = rng.integers(1, 5), rng.integers(1, 5)
        counts = rng.integers(0, 7, (j, k)).astype(float)
        mu = rng.uniform(5.0, 400.0, (j, k))
        lam = rng.uniform(0.0, 1.0, (j, k)) * counts * mu
        cores = rng.choice([1.0, 2.0, 0.5, 1.5, np.inf], j)
        with np.errstate(all="ignore"):
            fast = cpu_speed.node_speeds(lam, mu, counts, cores)
            monkeypatch.setattr(monotone_bisect, "BRACKET", False)
            plain = cpu_speed.node_speeds(lam, mu, counts, cores)
            monkeypatch.setattr(monotone_bisect, "BRACKET", True)
        for a, b in ((fast.load, plain.load), (fast.speed, plain.speed), (fast.sojourn_ms, plain.sojourn_ms)):
            assert np.array_equal(a, b, equal_nan=True)
    assert guessed[0] >= 100
