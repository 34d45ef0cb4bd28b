"""Python's ``round(x, digits)`` for many floats at once, bit for bit (the plan's published figures, issue 16 item 5).

The plan rounds every share and RTT it publishes (solver.queue_plan.spread: up to 64 sites x every node's RTT,
6,400 calls at 1,000 x 100, ~0.4 us each). ``round(x, d)`` is the double nearest the decimal ``k / 10^d``, ``k``
the integer nearest ``x 10^d`` (exact value, ties to even). ``rint(fl(x 10^d)) / 10^d`` in numpy is that same
double (a whole ``k`` below 2^50 and ``10^d`` are exact, and the division rounds correctly) wherever ``fl(x 10^d)``
rounds to the same ``k`` as the exact product: everywhere except within the product's rounding error of a
half-integer. Those values (and non-finite or huge ones) go to Python's ``round`` itself.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

CHECK_TIES = True  # values near a half-integer after scaling go to Python's round (off only in the test)


def python_round(values: npt.ArrayLike, digits: int) -> list[float]:
    """``[round(v, digits) for v in values]`` for floats (0 <= digits <= 15), as numpy where that is provably
    the same double (module docstring)."""
    x = np.asarray(values, dtype=float)
    scale = 10.0**digits
    with np.errstate(invalid="ignore", over="ignore"):  # inf and NaN go to Python's round below
        scaled = x * scale
        dist = np.abs(np.abs(scaled - np.trunc(scaled)) - 0.5)  # exact below 2^50: the distance to a half-integer
        safe = (np.abs(scaled) < 2.0**50) & (dist > np.abs(scaled) * 2.0**-50 if CHECK_TIES else True)
    out: list[float] = (np.rint(scaled) / scale).tolist()
    for i in np.flatnonzero(~safe).tolist():
        out[i] = round(float(x[i]), digits)
    return out
