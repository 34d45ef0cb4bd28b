"""The steady state's running value (issue 16): what runs is what the last plan asked for, thesis sizes with cores.

value_running on a plan's own counts ran all 400 steps (0.25-5.7 s of CPU a leader round) chasing a relative gap
of 1e-4; now it stops at ``TOLERANCE`` (1e-3, a hundredth of the hysteresis margin) or ``ITERATIONS`` steps,
and whatever stops it, the value stays an achievable split's and ``gap_ms`` a valid bound on its error.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from solver import hold
from solver.api import solve
from solver.hold import RunningValue, value_running
from solver.simulate import thesis_instance


def steady(size: tuple[int, int], seed: int, cores: float, mode: str) -> tuple[Any, dict[str, dict[str, int]]]:
    """The thesis instance with ``cores`` per node and the counts its own queue plan asks for."""
    snap = thesis_instance(size[0], size[1], seed)
    snap = dataclasses.replace(snap, nodes=tuple(dataclasses.replace(n, cores=cores) for n in snap.nodes))
    plan = solve(snap, mode=mode, objective="queue")
    return snap, {node: dict(models) for node, models in plan.instances.items()}


@pytest.fixture(scope="module")
def case() -> tuple[Any, dict[str, dict[str, int]], RunningValue]:
    """25 x 20, seed 0, 2 cores, Mode 2 (the old rule ran 171 steps here) and its long reference solve."""
    snap, held = steady((25, 20), 0, 2.0, "2")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(hold, "TOLERANCE", 1e-5)
        mp.setattr(hold, "ITERATIONS", 1000)
        reference = value_running(snap, held)
    return snap, held, reference


def within_gap(v: RunningValue, reference: RunningValue) -> bool:
    """``v`` is an achievable split's value (not below the best's lower bound) and its gap bounds its error."""
    slack = 1e-9 * reference.objective_ms
    lower = reference.objective_ms - reference.gap_ms  # the reference's own lower bound on the best split
    return v.objective_ms >= lower - slack and v.objective_ms - v.gap_ms <= reference.objective_ms + slack


def test_the_steady_state_stops_at_the_tolerance_well_before_the_reference(case: Any) -> None:
    snap, held, reference = case
    v = value_running(snap, held)
    assert v.gap_ms <= hold.TOLERANCE * v.objective_ms and v.steps < hold.ITERATIONS
    assert reference.steps > 2 * v.steps  # the tolerance is what stops it early (the old rule's 1e-4: 171 steps)
    assert within_gap(v, reference)
    assert v.to_dict()["steps"] == v.steps and v.to_dict()["gap_ms"] == v.gap_ms


def test_stopped_by_the_work_bound_the_gap_still_bounds_the_error(case: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    snap, held, reference = case
    monkeypatch.setattr(hold, "ITERATIONS", 5)
    v = value_running(snap, held)
    assert v.steps == 5 and v.gap_ms > hold.TOLERANCE * v.objective_ms  # not converged: the gap says by how much
    assert v.objective_ms > reference.objective_ms  # a worse split's value, above the best ...
    assert within_gap(v, reference)  # ... by no more than its gap


def test_the_gap_check_fails_on_an_understated_value(case: Any) -> None:
    """The checker above catches a value below what any split achieves, or a gap too small for the error."""
    snap, held, reference = case
    v = value_running(snap, held)
    assert not within_gap(dataclasses.replace(v, objective_ms=reference.objective_ms - 2 * reference.gap_ms), reference)
    far = dataclasses.replace(v, objective_ms=reference.objective_ms * 1.01, gap_ms=0.001 * reference.objective_ms)
    assert not within_gap(far, reference)


@pytest.mark.parametrize("steps", [5, 40])
def test_the_best_lower_bound_so_far_tightens_the_gap_and_stays_valid(
    case: Any, steps: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each iterate's value less its duality gap bounds the best split from below; the best of them is tighter than
    the latest alone (where the value falls slowly) and, like it, never above the long reference's value."""
    snap, held, reference = case
    monkeypatch.setattr(hold, "ITERATIONS", steps)
    best = value_running(snap, held)
    monkeypatch.setattr(hold, "LOWER_BOUNDS", False)
    latest = value_running(snap, held)
    assert best.steps == latest.steps == steps and best.objective_ms == latest.objective_ms  # the same iterates
    assert best.gap_ms < latest.gap_ms
    assert within_gap(best, reference) and within_gap(latest, reference)
