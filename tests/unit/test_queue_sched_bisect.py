"""solver.queue_sched's cut: the kept share from a guess and solver.monotone_bisect, bit for bit the plain loop's, on
random crowded nodes and the thesis plans where the cut fires; the margin check sends a grid too fine for the
model's figures (40 halvings) to the plain loop, and a wrong answer would be caught."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from bench.queue_bench import with_cores
from solver import queue_sched
from solver.cpu_speed import node_speeds
from solver.problem import Mode, build_problem
from solver.queue_fast import solve_nlp_fast
from solver.queue_model import build_queue_problem
from solver.queue_plan import integer_part
from solver.queue_sched import kept_share, plain_share
from solver.simulate import thesis_instance

RHO = 0.9


def _node(rng: np.random.Generator) -> tuple[Any, ...]:
    """A random node of 2-4 cores, 2-4 pools of 1-3 instances, whose pool 0 is past RHO in the scheduler model."""
    while True:
        k = int(rng.integers(2, 5))
        counts = rng.integers(1, 4, (1, k)).astype(float)
        mu = rng.uniform(5.0, 400.0, (1, k))
        cores = np.array([float(rng.choice([2.0, 3.0, 4.0]))])
        lam = rng.uniform(0.3, 1.0, (1, k)) * counts * mu * min(1.0, cores[0] / counts.sum())
        full = float(node_speeds(lam, mu, counts, cores).load[0, 0])
        if full > RHO:
            return lam, mu, counts, cores, full


_DRAWN: dict[int, tuple[np.random.Generator, list[tuple[Any, ...]]]] = {}


def _nodes(seed: int, count: int) -> list[tuple[Any, ...]]:
    """The first ``count`` nodes ``_node`` draws from ``default_rng(seed)``, each drawn once per module: the draws are
    ~60 % of this module's time (~45 scheduler-model runs per node kept), and the tests only read the nodes
    (``_load`` scales a copy); test_a_guided_answer_one_step_off_is_caught's 20 are the first 20 of seed 5's."""
    rng, drawn = _DRAWN.setdefault(seed, (np.random.default_rng(seed), []))
    while len(drawn) < count:
        drawn.append(_node(rng))
    return drawn[:count]


def _load(node: tuple[Any, ...], runs: list[int]) -> Any:
    lam, mu, counts, cores, _ = node

    def load(share: float) -> tuple[float, bool]:
        runs[0] += 1
        trial = lam.copy()
        trial[0, 0] *= share
        figures = node_speeds(trial, mu, counts, cores)
        return float(figures.load[0, 0]), figures.converged

    return load


def test_random_crowded_nodes_the_same_share_from_fewer_runs() -> None:
    fast_runs, plain_runs = [0], [0]
    for node in _nodes(5, 60):
        for halvings in (20, 40):
            want = plain_share(_load(node, plain_runs), RHO, halvings)
            got = kept_share(_load(node, fast_runs), RHO, halvings, node[-1])
            assert got == want
    assert plain_runs[0] == 60 * (20 + 40)
    assert fast_runs[0] < 60 * (6 + 40)  # 40 halvings: the plain loop at once (a grid step below MARGIN)


def test_twenty_halvings_take_a_few_runs() -> None:
    runs, fell_back = [], 0
    for node in _nodes(8, 40):
        count = [0]
        got = kept_share(_load(node, count), RHO, 20, node[-1])
        assert got == plain_share(_load(node, [0]), RHO, 20)
        runs.append(count[0])
        fell_back += count[0] >= 20
    assert fell_back <= 4 and float(np.median(runs)) <= 6


def test_a_guided_answer_one_step_off_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """The guided search's answer one grid step high: the margin check sees the load past rho_max there and runs the
    plain loop (the loop's answer); with the check off the cut's share would differ from the loop's."""
    search = queue_sched.bisect

    def one_step_high(*args: Any) -> Any:
        return search(*args) + 2.0**-20

    monkeypatch.setattr(queue_sched, "bisect", one_step_high)
    nodes = _nodes(5, 20)
    plain = [plain_share(_load(node, [0]), RHO, 20) for node in nodes]  # reads neither bisect nor MARGIN
    for node, want in zip(nodes, plain, strict=True):
        assert kept_share(_load(node, [0]), RHO, 20, node[-1]) == want
    monkeypatch.setattr(queue_sched, "MARGIN", -np.inf)
    differ = [kept_share(_load(n, [0]), RHO, 20, n[-1]) != want for n, want in zip(nodes, plain, strict=True)]
    assert all(differ)


@pytest.mark.parametrize(("requests", "nodes", "mode"), [(25, 5, "1"), (50, 10, "2")])
def test_the_thesis_plans_that_cut_are_the_same_bit_for_bit(
    requests: int, nodes: int, mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The two thesis plans at 2 cores where the cut fires (bench/sched_cut_bench.py: seed 2, and seed 1 of 50 x 10):
    the same plan with the guided search on and off, the cut's model runs 20 -> a few."""
    runs: list[int] = []
    kept = queue_sched.kept_share

    def counted(load: Any, *args: Any) -> float:
        def counting(share: float) -> tuple[float, bool]:
            runs[-1] += 1
            return load(share)  # type: ignore[no-any-return]

        runs.append(0)
        return kept(counting, *args)

    monkeypatch.setattr(queue_sched, "kept_share", counted)
    plans = []
    for fast in (True, False):
        monkeypatch.setattr(queue_sched, "FAST", fast)
        seed = 2 if requests == 25 else 1
        snapshot = with_cores(thesis_instance(requests, nodes, seed), 2.0)
        q = build_queue_problem(build_problem(snapshot, Mode.MODE1 if mode == "1" else Mode.MODE2))
        plans.append(integer_part(q, solve_nlp_fast(q))[0])
    fast_pools, plain_pools = plans
    assert np.array_equal(fast_pools.x, plain_pools.x) and np.array_equal(fast_pools.rejected, plain_pools.rejected)
    assert np.array_equal(fast_pools.counts(), plain_pools.counts()) and fast_pools.rejected.sum() > 0
    assert len(runs) == 2 and runs[1] == 20 and runs[0] <= 6
