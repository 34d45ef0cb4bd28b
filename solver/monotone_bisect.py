"""A vectorised bisection's answer, bit for bit, from far fewer evaluations of its test (issue 16 item 5).

``plain_bisect`` is the loop it replaces (solver.cpu_speed's work floor): per row, ``rounds`` halvings of
``[lo, hi]`` at ``mid = 0.5 * (lo + hi)``, keeping ``lo = mid`` where the test passes, else ``hi = mid``. Every
round evaluates the test on every row (a few numpy calls each: at the thesis's sizes, numpy's per-call cost).

Where the test is *monotone over floats* (it passes at a float s, then at every float below s), the loop's
answer depends only on the threshold between the floats where it passes and where it fails. ``bisect`` takes
the caller's guess of that threshold (any float: a scalar root finder's, a few ulps off), evaluates the test
there, then at points stepping away from it (4, 16, 64 ... floats) until the threshold is bracketed, and halves
the count of floats in between until the last passing and the first failing float are neighbours; then it
replays the loop's halvings in Python floats (the same ``0.5 * (lo + hi)`` in IEEE doubles), deciding each
``mid`` by comparison. A ``mid`` that no evaluated point decides (the search ran out of ``SEARCH_ROUNDS``) is
evaluated as the loop would: the answer is the loop's in every case, and a poor guess only costs evaluations
(``tests/unit/test_monotone_bisect.py``).

The test must treat rows independently (a row's verdict depends on its own ``s`` alone) and be evaluated on
positive floats.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from solver.problem import FloatArray

BoolArray = npt.NDArray[np.bool_]
IntArray = npt.NDArray[np.int64]
Test = Callable[[FloatArray], BoolArray]  # s [j] -> whether the test passes there [j]
SEARCH_ROUNDS = 60  # evaluations at most while closing the brackets
FIRST_STEP = 4  # floats between the guess and the first point stepped to (then 4 times as many each round)
BRACKET = True  # the guided search and replay (False: the plain loop; switched off only in the tests' comparison)


def plain_bisect(test: Test, lo: FloatArray, hi: FloatArray, rounds: int) -> FloatArray:
    """[j] ``lo`` after ``rounds`` halvings (the loop ``bisect`` reproduces)."""
    for _ in range(rounds):
        mid = 0.5 * (lo + hi)
        ok = test(mid)
        lo, hi = np.where(ok, mid, lo), np.where(ok, hi, mid)
    return lo


def bisect(test: Test, lo: FloatArray, hi: FloatArray, rounds: int, rows: BoolArray, guess: FloatArray) -> FloatArray:
    """[j] ``plain_bisect(test, lo, hi, rounds)`` on the ``rows`` wanted (elsewhere ``lo``), for a ``test`` monotone
    over floats (module docstring), with ``0 < lo <= hi``; ``guess`` [j] the threshold's estimate."""
    if not BRACKET:
        return np.where(rows, plain_bisect(test, lo, hi, rounds), lo)
    passes, fails = _brackets(test, lo, hi, rows, guess)
    out = np.array(lo, dtype=float)
    for j in np.flatnonzero(rows).tolist():
        out[j] = _replay(test, j, len(lo), (float(lo[j]), float(hi[j])), rounds, (float(passes[j]), float(fails[j])))
    return out


def _bits(x: FloatArray) -> IntArray:
    """[j] the bit patterns of non-negative floats (their order is the floats' order)."""
    return np.asarray(np.maximum(x, 0.0)).view(np.int64)


def _floats(bits: IntArray) -> FloatArray:
    """[j] the floats of non-negative bit patterns."""
    return np.asarray(np.asarray(bits, dtype=np.int64).view(np.float64))


def _brackets(
    test: Test, lo: FloatArray, hi: FloatArray, rows: BoolArray, guess: FloatArray
) -> tuple[FloatArray, FloatArray]:
    """[j] (a float where the test passes, or one below ``lo``; a float where it fails, or one above ``hi``),
    neighbours on the wanted rows unless ``SEARCH_ROUNDS`` ran out first (every point evaluated, or outside
    ``[lo, hi]``: the loop's mids lie in it)."""
    lo_b, hi_b = _bits(lo), _bits(hi)
    passes, fails = lo_b - 1, hi_b + 1  # nothing known: every mid is undecided
    at = np.clip(_bits(np.where(np.isfinite(guess), guess, lo)), lo_b, hi_b)
    step = np.zeros(len(lo), dtype=np.int64)  # 0: the guess not yet evaluated; > 0 the next step away from it
    for _ in range(SEARCH_ROUNDS):
        open_ = rows & (fails - passes > 1)
        if not open_.any():
            break
        ok = test(_floats(np.where(open_, at, lo_b))) & open_
        bad = open_ & ~ok
        passes, fails = np.where(ok, np.maximum(passes, at), passes), np.where(bad, np.minimum(fails, at), fails)
        known = (passes >= lo_b) & (fails <= hi_b)  # both sides evaluated: halve the floats in between
        step = np.where(step == 0, FIRST_STEP, step * 4)
        away = np.where(ok, np.minimum(at + step, hi_b), np.maximum(at - step, lo_b))
        middle = passes + (fails - passes) // 2
        at = np.where(known, middle, away)  # at an end (lo or hi) the next round finds the bracket closed
    return _floats(np.maximum(passes, 0)), _floats(fails)


def _replay(
    test: Test, j: int, size: int, span: tuple[float, float], rounds: int, bracket: tuple[float, float]
) -> float:
    """Row j's ``lo`` after ``rounds`` halvings of ``span``, each ``mid`` decided by the bracket (passes at or below
    its first float, fails at or above its second), else by the test itself on that row."""
    lo, hi = span
    passes, fails = bracket
    for _ in range(rounds):
        mid = 0.5 * (lo + hi)
        if mid <= passes:
            ok = True
        elif mid >= fails:
            ok = False
        else:
            point = np.full(size, mid)
            ok = bool(test(point)[j])
            passes, fails = (mid, fails) if ok else (passes, mid)
        lo, hi = (mid, hi) if ok else (lo, mid)
    return lo
