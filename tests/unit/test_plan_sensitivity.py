"""The integer part gives the same instance counts from two relaxation answers that differ by no more than
Ipopt's own error (nudged answers; warm vs cold Ipopt), and each fix's switch turned off shows it failing
(issue 16, "Worth doing next" 3; bench/plan_sensitivity_bench.py measures it at scale; docs/solver.md)."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest

from solver import queue_repair, queue_warm, ties
from solver.api import solve
from solver.problem import Mode, build_problem
from solver.queue_close_fast import close_pools_fast
from solver.queue_fast import solve_nlp_fast
from solver.queue_model import QueueProblem, build_queue_problem
from solver.queue_move import move_instances
from solver.queue_repair import repair
from solver.queue_split import best_split
from solver.simulate import thesis_instance


def _counts(q: QueueProblem, x: Any, r: Any, n: Any) -> Any:
    """The plan's instance counts from the relaxation's (x, r, n): repair, closing, moves, the best split."""
    pools = repair(q, x, r, n)
    for step in (close_pools_fast, move_instances, best_split):
        step(pools)
    return pools.counts()


def _nudged(x: Any, eps: float, seed: int) -> Any:
    """``x`` with every rate times 1 + eps u (u uniform in [-1, 1]), each stream's rates rescaled to its total."""
    y = x * (1.0 + eps * np.random.default_rng(seed).uniform(-1.0, 1.0, x.shape))
    now = y.sum(axis=1)
    return y * np.where(now > 0, x.sum(axis=1) / np.where(now > 0, now, 1.0), 0.0)[:, None]


def _tied_case() -> tuple[QueueProblem, Any]:
    """A thesis-size snapshot (every request 1 req/s, no cores) whose pools carry exactly equal rates."""
    q = build_queue_problem(build_problem(thesis_instance(20, 10, 1), Mode.MODE2))
    return q, solve_nlp_fast(q)


def test_repair_breaks_equal_rates_by_node_not_by_float_noise() -> None:
    q, nlp = _tied_case()
    base = repair(q, nlp.x, nlp.r, nlp.n).counts()
    for seed in range(8):
        for eps in (1e-6, 1e-4, 1e-3):
            assert np.array_equal(repair(q, _nudged(nlp.x, eps, seed), nlp.r, nlp.n).counts(), base)


def test_without_the_tolerance_the_noise_picks_repairs_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ties, "TIE_TOLERANCE", 0.0)
    q, nlp = _tied_case()
    base = repair(q, nlp.x, nlp.r, nlp.n).counts()
    nudged = [repair(q, _nudged(nlp.x, e, s), nlp.r, nlp.n).counts() for s in range(8) for e in (1e-6, 1e-4, 1e-3)]
    assert any(not np.array_equal(counts, base) for counts in nudged)


def test_least_takes_the_first_of_near_ties() -> None:
    assert ties.least([3, 5, 7], [1.0, 0.9999999999999999, 2.0]) == 3
    assert ties.least([7, 5, 3], [2.0, 0.9999999999999999, 1.0]) == 5
    assert ties.least([3, 7], [1.01, 1.0]) == 7  # a real difference still decides


def _at_cap_case() -> tuple[QueueProblem, Any]:
    """A thesis-size snapshot on 1-core nodes: the core rows bind and pools sit exactly at whole instances' cap."""
    snap = thesis_instance(40, 10, 1)
    snap = dataclasses.replace(snap, nodes=tuple(dataclasses.replace(n, cores=1.0) for n in snap.nodes))
    q = build_queue_problem(build_problem(snap, Mode.MODE1))
    return q, solve_nlp_fast(q)


def _repair_counts_differ(eps: float) -> bool:
    q, nlp = _at_cap_case()
    base = repair(q, nlp.x, nlp.r, nlp.n).counts()
    return any(not np.array_equal(repair(q, _nudged(nlp.x, eps, s), nlp.r, nlp.n).counts(), base) for s in range(8))


def test_a_pool_at_its_cap_keeps_its_count_under_noise() -> None:
    assert not _repair_counts_differ(1e-4)


def test_with_the_old_hair_the_noise_adds_an_instance(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(queue_repair, "HAIR_TOLERANCE", 1e-6)
    assert _repair_counts_differ(1e-4)


def test_a_hair_of_a_stream_opens_no_instance_under_noise() -> None:
    assert not _repair_counts_differ(1e-3)


def test_where_a_hair_opens_instances_the_noise_adds_them(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(queue_repair, "HAIR_OPENS", True)
    assert _repair_counts_differ(1e-3)


def test_the_whole_integer_part_keeps_its_counts_on_cores() -> None:
    q, nlp = _at_cap_case()
    base = _counts(q, nlp.x, nlp.r, nlp.n)
    for seed in range(4):
        assert np.array_equal(_counts(q, _nudged(nlp.x, 1e-3, seed), nlp.r, nlp.n), base)


def _whole_counts_differ(eps: float) -> bool:
    q, nlp = _tied_case()
    base = _counts(q, nlp.x, nlp.r, nlp.n)
    return any(not np.array_equal(_counts(q, _nudged(nlp.x, eps, s), nlp.r, nlp.n), base) for s in range(8))


def test_pool_closing_takes_equal_pools_in_pool_order() -> None:
    assert not _whole_counts_differ(1e-4)
    assert not _whole_counts_differ(1e-3)


def test_closing_by_float_order_follows_the_noise(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ties, "TIE_TOLERANCE", 0.0)
    assert _whole_counts_differ(1e-4)


def test_ascending_keeps_near_ties_in_the_given_order() -> None:
    assert ties.ascending([10, 11, 12, 13], [1.0, 0.9999999, 0.5, 1.0000001]) == [12, 10, 11, 13]
    assert ties.ascending([10, 11, 12], [3.0, 2.0, 1.0]) == [12, 11, 10]
    assert ties.ascending([10, 11], [1.0, 1.01]) == [10, 11]
    assert ties.ascending([11, 10], [1.01, 1.0]) == [10, 11]


def _warm_and_cold_differ(snap: Any, mode: str) -> bool:
    """Whether the whole queue solve's instances differ between warm and cold Ipopt (both optimal)."""
    found = []
    try:
        for warm in (True, False):
            queue_warm.ENABLED = warm
            found.append(solve(snap, mode=mode, objective="queue").instances)
    finally:
        queue_warm.ENABLED = True
    return bool(found[0] != found[1])


WARM_COLD_CASES = [(thesis_instance(40, 10, 1), "2", None), (thesis_instance(20, 10, 2), "1", 2.0)]


@pytest.mark.parametrize(("snap", "mode", "cores"), WARM_COLD_CASES)
def test_warm_and_cold_ipopt_give_the_same_plan(snap: Any, mode: str, cores: float | None) -> None:
    assert not _warm_and_cold_differ(_cored(snap, cores), mode)


@pytest.mark.parametrize(("snap", "mode", "cores"), WARM_COLD_CASES)
def test_with_the_fixes_off_warm_and_cold_differ(
    snap: Any, mode: str, cores: float | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ties, "TIE_TOLERANCE", 0.0)
    monkeypatch.setattr(queue_repair, "HAIR_TOLERANCE", 1e-6)
    monkeypatch.setattr(queue_repair, "HAIR_OPENS", True)
    monkeypatch.setattr(queue_warm, "POLISH", False)  # the cases were found on the warm KKT point's plans
    assert _warm_and_cold_differ(_cored(snap, cores), mode)


def _cored(snap: Any, cores: float | None) -> Any:
    """``snap`` with ``cores`` on every node (None: as it is)."""
    if cores is None:
        return snap
    return dataclasses.replace(snap, nodes=tuple(dataclasses.replace(n, cores=cores) for n in snap.nodes))
