"""Choices between rates that differ by less than the relaxation's own error, broken by a stable key (issue 16).

Ipopt answers the relaxation to a tolerance: two answers that are both optimal (warm and cold starts) give
rates that differ by up to ~1e-3 relative, and the thesis's snapshots give pools exactly equal rates (every
request 1 req/s) that the relaxation returns as 1.0 and 0.9999999999999999. A heuristic step that takes
"the pool with the smallest rate" then takes whichever the float noise made smaller, and the plans' instance
counts followed it (bench/plan_sensitivity_bench.py). Here a rate within ``TIE_TOLERANCE`` (relative) of the
least counts as equal to it, and the first candidate in the caller's stable order (node or model index) wins.
"""

from __future__ import annotations

from collections.abc import Sequence

TIE_TOLERANCE = 1e-3  # relative: above the relaxation's error between optimal answers (warm vs cold Ipopt ~1e-3)
FLOOR = 1e-6  # req/s: below this two rates are equal whatever their ratio (queue_repair.TINY)


def least(candidates: Sequence[int], values: Sequence[float]) -> int:
    """The first of ``candidates`` (in their order) whose value (``values``, aligned) is within ``TIE_TOLERANCE``
    of the least value."""
    low = min(values)
    limit = low + TIE_TOLERANCE * max(abs(low), FLOOR) if TIE_TOLERANCE > 0 else low
    return next(c for c, v in zip(candidates, values, strict=True) if v <= limit)


def ascending(candidates: Sequence[int], values: Sequence[float]) -> list[int]:
    """``candidates`` by value, smallest first, where a run of values each within ``TIE_TOLERANCE`` of the run's
    least counts as equal and keeps the candidates' given order (stable under noise below the tolerance)."""
    ranked = sorted(zip(values, range(len(candidates)), strict=True))
    out: list[int] = []
    run: list[int] = []
    low = 0.0
    for v, i in ranked:
        if run and (TIE_TOLERANCE <= 0 or v > low + TIE_TOLERANCE * max(abs(low), FLOOR)):
            out += [candidates[r] for r in sorted(run)]
            run = []
        if not run:
            low = v
        run.append(i)
    return out + [candidates[r] for r in sorted(run)]
