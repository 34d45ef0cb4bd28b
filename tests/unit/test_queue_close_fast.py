"""The fast pool closing (solver.queue_close_fast) reaches the reference closing's placement (issue 16 item 5)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from solver import queue_close_fast
from solver.problem import Mode, build_problem
from solver.queue_close import close_pools, integer_objective
from solver.queue_close_fast import close_pools_fast, worth_trying
from solver.queue_fast import solve_nlp_fast
from solver.queue_model import QueueProblem, build_queue_problem, solve_nlp
from solver.queue_repair import Pools, repair
from solver.simulate import thesis_instance
from solver.snapshot import Snapshot
from solver.tail_cap import with_tail_cap
from tests.unit.test_node_cores import with_cores
from tests.unit.test_queue_fast import _with_running
from tests.unit.test_solver_queue_placement import check, instances

CORES = (1.0, 2.0, 3.0, 4.0)  # per node, drawn; the small ones saturate under the thesis's loads
CORE_CASES = [(25, 5, 3, Mode.MODE2), (30, 5, 1, Mode.MODE1)]  # saturated nodes where closing must check cores


def _both(q: QueueProblem, reference_form: bool = False) -> tuple[Pools, Pools, int, int]:
    """The repaired placement closed by the reference pass and by the fast one (from the same start)."""
    nlp = solve_nlp(q, compact=False) if reference_form else solve_nlp_fast(q)
    ref = repair(q, nlp.x, nlp.r)
    fast = copy.deepcopy(ref)
    return ref, fast, close_pools(ref), close_pools_fast(fast)


def _same_or_better(ref: Pools, fast: Pools, ref_steps: int, fast_steps: int) -> None:
    """The fast pass's placement is the reference's (same steps, same rates), or keeps every invariant and
    costs no more."""
    if fast_steps == ref_steps and np.allclose(fast.x, ref.x, rtol=0.0, atol=1e-9):
        return
    check(fast)
    assert not fast.over_budget(fast.counts())  # memory, compute and every node's cores
    np.testing.assert_allclose(fast.rejected, ref.rejected)
    before = integer_objective(ref)
    assert integer_objective(fast) <= before + 1e-9 * max(1.0, abs(before))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
@given(instances(), st.sampled_from([Mode.MODE1, Mode.MODE2]), st.booleans(), st.integers(-1, 10_000))
def test_fast_closing_equals_the_reference_on_random_clusters(
    snap: Snapshot, mode: Mode, tail: bool, cores: int
) -> None:
    """``cores``: the seed of every node's drawn core count (-1: no cores, the model without them)."""
    snap = with_cores(snap, cores, CORES) if cores >= 0 else snap
    q = build_queue_problem(build_problem(snap, mode))
    q = with_tail_cap(q) if tail else q
    ref, fast, ref_steps, fast_steps = _both(q, reference_form=True)
    _same_or_better(ref, fast, ref_steps, fast_steps)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    requests=st.integers(5, 50),
    nodes=st.integers(3, 20),
    seed=st.integers(0, 10_000),
    mode=st.sampled_from([Mode.MODE1, Mode.MODE2]),
    running=st.booleans(),
    tail=st.booleans(),
    cores=st.booleans(),
)
def test_fast_closing_equals_the_reference_on_thesis_instances(
    requests: int, nodes: int, seed: int, mode: Mode, running: bool, tail: bool, cores: bool
) -> None:
    snap = thesis_instance(requests, nodes, seed)
    snap = _with_running(snap, seed) if running else snap
    snap = with_cores(snap, seed, CORES) if cores else snap
    q = build_queue_problem(build_problem(snap, mode))
    q = with_tail_cap(q) if tail else q
    ref, fast, ref_steps, fast_steps = _both(q)
    _same_or_better(ref, fast, ref_steps, fast_steps)


def test_the_vectorised_screen_is_the_reference_screen() -> None:
    from solver.queue_close import _worth_trying

    q = build_queue_problem(build_problem(_with_running(thesis_instance(30, 10, 2), 2), Mode.MODE1))
    nlp = solve_nlp_fast(q)
    pools = repair(q, nlp.x, nlp.r)
    lam, counts = pools.lam(), pools.counts()
    fast = worth_trying(pools, lam, counts)
    ref = np.array([[_worth_trying(pools, j, k) for k in range(lam.shape[1])] for j in range(lam.shape[0])])
    assert fast.any() and np.array_equal(fast, ref)


@pytest.mark.parametrize(("requests", "nodes", "seed", "mode"), [(20, 10, 1, Mode.MODE1), (30, 10, 2, Mode.MODE2)])
def test_the_equality_check_fails_when_the_fast_budget_check_is_off(
    monkeypatch: pytest.MonkeyPatch, requests: int, nodes: int, seed: int, mode: Mode
) -> None:
    """Without the tries' memory and compute check, the fast pass closes pools into nodes that cannot hold
    the extra instances: its placement leaves the reference's and breaks a budget."""
    q = build_queue_problem(build_problem(thesis_instance(requests, nodes, seed), mode))
    _same_or_better(*_both(q))
    monkeypatch.setattr(queue_close_fast, "CHECK_BUDGETS", False)
    ref, fast, ref_steps, fast_steps = _both(q)
    assert fast.over_budget(fast.counts())
    with pytest.raises(AssertionError):
        _same_or_better(ref, fast, ref_steps, fast_steps)


@pytest.mark.parametrize(("requests", "nodes", "seed", "mode"), CORE_CASES)
def test_the_equality_check_fails_when_the_fast_core_check_is_off(
    monkeypatch: pytest.MonkeyPatch, requests: int, nodes: int, seed: int, mode: Mode
) -> None:
    """On nodes whose cores are full, the fast pass (no hand-off to the reference) matches the reference;
    without its core-room check it closes pools into nodes whose cores cannot take the rate."""
    q = build_queue_problem(build_problem(with_cores(thesis_instance(requests, nodes, seed), seed, CORES), mode))
    ref, fast, ref_steps, fast_steps = _both(q)
    assert ref_steps > 0 and np.isfinite(fast.cores).all()
    _same_or_better(ref, fast, ref_steps, fast_steps)
    monkeypatch.setattr(queue_close_fast, "CHECK_CORES", False)
    ref, fast, ref_steps, fast_steps = _both(q)
    assert fast.over_budget(fast.counts())
    with pytest.raises(AssertionError):
        _same_or_better(ref, fast, ref_steps, fast_steps)


def _relaxed(q: QueueProblem) -> tuple[np.ndarray, np.ndarray]:
    nlp = solve_nlp_fast(q)
    return nlp.x, nlp.r


def _screen_states() -> list[Pools]:
    """Repaired placements of thesis instances without cores, at 1, 2 and 4 cores per node, Mode 1 with instances
    running and Mode 2, each as repair leaves it and after one closing pass."""
    from bench.queue_bench import with_cores as bench_cores

    found = []
    for cores in (None, 1.0, 2.0, 4.0):
        for r, n, seed in [(20, 10, 0), (40, 10, 1), (25, 15, 2), (25, 5, 1)]:
            for snap, mode in [
                (_with_running(thesis_instance(r, n, seed), seed), Mode.MODE1),
                (thesis_instance(r, n, seed), Mode.MODE2),
            ]:
                q = build_queue_problem(build_problem(bench_cores(snap, cores), mode))
                nlp = solve_nlp_fast(q)
                pools = repair(q, nlp.x, nlp.r, nlp.n)
                found.append(copy.deepcopy(pools))
                close_pools_fast(pools)
                found.append(pools)
    return found


def test_a_pool_surely_worth_trying_passes_the_screen(monkeypatch: pytest.MonkeyPatch) -> None:
    """queue_close_fast.surely_worth (no falls, no shares) passes only pools the full close screen passes, and most
    of those; with its margin made negative (a bound 1 % of the screen's terms above the pool's own term) the
    implication breaks."""
    passed = screened = 0
    states = _screen_states()
    for pools in states:
        lam, counts = pools.lam(), pools.counts()
        extra = queue_close_fast._extra(pools, counts)
        sure = queue_close_fast.surely_worth(pools, lam, counts, extra)
        full = worth_trying(pools, lam, counts, extra)
        assert np.array_equal(full, worth_trying(pools, lam, counts))  # ``extra`` handed in changes nothing
        assert not np.any(sure & ~full)
        passed, screened = passed + int(sure.sum()), screened + int(full.sum())
    assert passed > 0.8 * screened
    monkeypatch.setattr(queue_close_fast, "SURE_MARGIN", -0.01)
    wrong = 0
    for pools in states:
        lam, counts = pools.lam(), pools.counts()
        extra = queue_close_fast._extra(pools, counts)
        wrong += int(
            np.sum(queue_close_fast.surely_worth(pools, lam, counts, extra) & ~worth_trying(pools, lam, counts))
        )
    assert wrong > 0


def test_the_lazy_screen_closes_as_the_screen_made_first(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pool closing with the close screen made only where surely_worth cannot answer reaches the same placement, bit for
    bit, as with it made every step (queue_close_fast.LAZY_SCREEN off), on states where pools close."""
    closed = 0
    for pools in _screen_states()[::2]:
        lazy, eager = copy.deepcopy(pools), copy.deepcopy(pools)
        steps = close_pools_fast(lazy)
        monkeypatch.setattr(queue_close_fast, "LAZY_SCREEN", False)
        assert close_pools_fast(eager) == steps
        monkeypatch.setattr(queue_close_fast, "LAZY_SCREEN", True)
        assert np.array_equal(lazy.x, eager.x) and np.array_equal(lazy.cap, eager.cap)
        closed += steps
    assert closed > 0
