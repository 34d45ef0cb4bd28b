"""The integer part's exact speed-ups where nodes declare cores (issue 16 item 5, session cgint): each switch
gives the same plans bit for bit as without it, each does fire on the inputs checked, and a deliberately wrong
version of each is caught by the same exact check (tests/unit/test_queue_plan_golden.py's record)."""

from __future__ import annotations

import copy
import json
from typing import Any

import numpy as np
import pytest

from bench.queue_bench import with_cores
from solver import queue_close_fast, queue_repair, queue_split
from solver.problem import Mode, build_problem
from solver.queue_fast import solve_nlp_fast
from solver.queue_model import build_queue_problem
from solver.simulate import thesis_instance
from tests.unit.built_once import built_once
from tests.unit.test_queue_plan_golden import GOLDEN, record
from tests.unit.test_queue_split_fast import CASES


def _golden_differs() -> bool:
    """Whether the whole integer part now gives any plan other than the recorded ones."""
    want = json.loads(GOLDEN.read_text())
    got = json.loads(json.dumps(record()))
    return any(got[key] != case for key, case in want.items())


def _counted(monkeypatch: pytest.MonkeyPatch, module: Any, name: str) -> list[int]:
    """Count the calls of ``module.name`` that return True (a shortcut firing)."""
    real, fired = getattr(module, name), [0]

    def wrapped(*args: Any) -> Any:
        out = real(*args)
        fired[0] += bool(out)
        return out

    monkeypatch.setattr(module, name, wrapped)
    return fired


@built_once
def _relaxation(r: int, n: int, seed: int, cores: float, mode: Mode) -> tuple[Any, Any]:
    """(problem, its relaxation) of a thesis instance at ``cores`` per node, a copy of its own for each caller: solved
    once per module, as the relaxation reads nothing these tests patch (solver.queue_fast's path reaches neither
    queue_repair nor queue_close_fast), and the same 22 instances were solved 100 times here."""
    q = build_queue_problem(build_problem(with_cores(thesis_instance(r, n, seed), cores), mode))
    return q, solve_nlp_fast(q)


def _thesis_repairs() -> list[Any]:
    """Repair's pools on thesis instances (1 core per node: step 5 meets full cores), both modes."""
    return [
        _relaxation(r, n, 0, 1.0, mode) for r, n in [(20, 10), (40, 10), (25, 15)] for mode in (Mode.MODE1, Mode.MODE2)
    ]


def _repaired(runs: list[Any]) -> list[tuple[Any, ...]]:
    """Repair's rates, caps, rejections and shed count for each (problem, relaxation) of ``runs``."""
    pools = [queue_repair.repair(q, nlp.x, nlp.r, nlp.n) for q, nlp in runs]
    return [(p.x.tolist(), p.cap.tolist(), p.rejected.tolist(), p.shed) for p in pools]


def test_the_full_cores_skip_and_the_kept_state_give_the_same_repairs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Step 5 with and without its two shortcuts: the same pools bit for bit on thesis instances at 1 core, where
    the skip fires (classes whose model has no core room left) and undone moves keep their state."""
    runs = _thesis_repairs()
    fired = _counted(monkeypatch, queue_repair, "_no_core_room")
    fast = _repaired(runs)
    assert fired[0] >= 3
    monkeypatch.setattr(queue_repair, "SKIP_FULL_CORES", False)
    monkeypatch.setattr(queue_repair, "KEEP_EXACT_STATE", False)
    assert _repaired(runs) == fast


def test_the_switches_off_give_the_recorded_plans(monkeypatch: pytest.MonkeyPatch) -> None:
    """The golden plans were recorded before these shortcuts; with them off they are the same (with them on:
    test_queue_plan_golden), so on and off agree on all 120 cases."""
    from solver import queue_move

    switches = [(queue_split, "HALF_CURVATURE"), (queue_repair, "SKIP_FULL_CORES"), (queue_repair, "SLIVER_FIRST")]
    switches += [(queue_repair, "KEEP_EXACT_STATE"), (queue_close_fast, "SCREEN_CORES"), (queue_move, "BATCH")]
    switches += [(queue_repair, "CORES_FIRST")]
    for module, name in switches:
        monkeypatch.setattr(module, name, False)
    assert not _golden_differs()


def test_a_wrong_full_cores_skip_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """Skipping a class where a node has room for some but not all of its rate (room < its amount, a plausible
    slip) changes plans: the exact record sees it."""

    def too_eager(pools: Any, k: int, amount: float, lam: Any = None) -> bool:
        room = queue_repair.core_room(pools.lam(), pools.q.mu, pools.cores, pools.q.rho_max)
        return bool(np.all(room * pools.q.mu[:, k] < amount))

    monkeypatch.setattr(queue_repair, "_no_core_room", too_eager)
    assert _golden_differs()


def _check_kept_states(monkeypatch: pytest.MonkeyPatch, rule: Any = None) -> int:
    """Repair thesis instances at 1 core and the golden inputs with an oracle on step 5's kept state (by
    ``queue_repair._state_after``, or ``rule`` in its place): wherever it is kept, reading the rates again gives
    the same arrays bit for bit. Returns how often it was kept."""
    real, kept = rule or queue_repair._state_after, [0]

    def checked(pools: Any, tried: Any, state: Any, fresh: Any) -> Any:
        out = real(pools, tried, state, fresh)
        if out is state:
            kept[0] += 1
            assert all(np.array_equal(a, b) and a.dtype == b.dtype for a, b in zip(out, fresh(), strict=True))
        return out

    monkeypatch.setattr(queue_repair, "_state_after", checked)
    for q, nlp in _thesis_repairs():
        queue_repair.repair(q, nlp.x, nlp.r, nlp.n)
    assert not _golden_differs()
    return kept[0]


def test_a_kept_state_equals_the_state_read_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """The oracle above holds, and the state is kept often."""
    assert _check_kept_states(monkeypatch) >= 20


def test_the_kept_state_oracle_catches_a_state_kept_after_a_move(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keeping the state after every try, a kept move too, is caught by the oracle. (It changes no repair on these
    inputs: a kept move changes only its own node's column, which the loop does not visit again for that class;
    the oracle is the check that holds the rule to its claim.)"""
    with pytest.raises(AssertionError):
        _check_kept_states(monkeypatch, lambda pools, tried, state, fresh: state)


def test_the_halved_curvature_gives_the_same_splits_and_a_wrong_factor_is_caught(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """20-step Frank-Wolfe runs with the curvature halved and doubled back equal the runs without, bit for bit;
    the same runs without the doubling (Newton's steps then twice too long) differ."""

    def runs() -> list[Any]:
        return [queue_split._frank_wolfe(q, n, allowed, start, 20) for q, n, allowed, start in CASES]

    fast = runs()
    monkeypatch.setattr(queue_split, "HALF_CURVATURE", False)
    assert all(np.array_equal(a, b) for a, b in zip(runs(), fast, strict=True))
    real = queue_split._SplitFlow.along

    def undoubled(self: Any, lam: Any, a: float, line: Any) -> tuple[float, float]:
        slope, curvature = real(self, lam, a, line)
        return slope, curvature / 2.0

    monkeypatch.setattr(queue_split, "HALF_CURVATURE", True)
    monkeypatch.setattr(queue_split._SplitFlow, "along", undoubled)
    assert not all(np.array_equal(a, b) for a, b in zip(runs(), fast, strict=True))


def _closings(monkeypatch: pytest.MonkeyPatch) -> tuple[list[Any], int]:
    """Pool closing on thesis instances at 1 and 2 cores (after repair): the closed rates and caps, and how many
    whole-pool moves were tried."""
    tried = [0]
    real = queue_close_fast._try_move

    def counted(*args: Any) -> bool:
        tried[0] += 1
        return bool(real(*args))

    monkeypatch.setattr(queue_close_fast, "_try_move", counted)
    out = []
    for cores in (1.0, 2.0):
        for r, n in [(20, 10), (40, 10), (25, 15), (50, 10)]:
            for mode in (Mode.MODE1, Mode.MODE2):
                q, nlp = _relaxation(r, n, 1, cores, mode)
                pools = queue_repair.repair(q, nlp.x, nlp.r, nlp.n)
                steps = queue_close_fast.close_pools_fast(pools)
                out.append((steps, pools.x.tolist(), pools.cap.tolist()))
    monkeypatch.setattr(queue_close_fast, "_try_move", real)
    return out, tried[0]


def test_the_move_screen_gives_the_same_closings_with_fewer_tries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whole-pool moves screened by the destination's cores and by nodes over budget that a move does not touch:
    the same closings bit for bit as without the screen (and the golden plans), with at most half the tries."""
    fast, fast_tries = _closings(monkeypatch)
    monkeypatch.setattr(queue_close_fast, "SCREEN_CORES", False)
    slow, slow_tries = _closings(monkeypatch)
    assert fast == slow
    assert fast_tries <= 0.5 * slow_tries
    assert not _golden_differs()


def _screen_oracle(monkeypatch: pytest.MonkeyPatch, screen: Any) -> None:
    """Close the golden inputs and thesis instances with ``screen`` as the move screen, checking every move it rules
    out: ``_try_move`` must fail there (it changes nothing when it fails)."""

    def checked(pools: Any, static: Any, view: Any, dsts: Any) -> Any:
        out = screen(pools, static, view, dsts)
        for k, j, i in zip(*np.nonzero(out), strict=True):
            if view.lam[j, k] > queue_repair.TINY:
                assert not queue_close_fast._try_move(pools, static, view, int(j), int(k), int(dsts[k, j, i]))
        return out

    monkeypatch.setattr(queue_close_fast, "_hopeless_moves", checked)
    _closings(monkeypatch)
    _golden_differs()


def test_the_move_screen_rules_out_only_moves_that_fail(monkeypatch: pytest.MonkeyPatch) -> None:
    """Oracle: every move the screen rules out fails when tried; a screen that also rules out moves whose destination
    is merely busy (over rho_max of its cores less a margin: a plausible slip) is caught by the same oracle."""
    _screen_oracle(monkeypatch, queue_close_fast._hopeless_moves)
    real = queue_close_fast._hopeless_moves

    def too_eager(pools: Any, static: Any, view: Any, dsts: Any) -> Any:
        limit = 0.5 * static.core_limit_j[dsts]
        return real(pools, static, view, dsts) | (view.busy_j[dsts] > limit)

    with pytest.raises(AssertionError):
        _screen_oracle(monkeypatch, too_eager)


def _check_slivers(monkeypatch: pytest.MonkeyPatch, rule: Any) -> int:
    """Repair thesis instances at 1 core and the golden inputs with ``rule`` as step 5's early sliver test and an
    oracle: wherever it fires, the full check (the move made, the counts read, the move undone) on a copy of the
    pools refuses the move too and leaves the same rates bit for bit. Returns how often it fired."""
    fired = [0]

    def checked(pools: Any, c: int, dst: int, amount: float, lam: Any) -> bool:
        out = bool(rule(pools, c, dst, amount, lam))
        if out:
            fired[0] += 1
            full = copy.deepcopy(pools)
            assert not queue_repair._move_within_bound(full, c, dst, amount, 10**9)
            mine = copy.deepcopy(pools)
            mine.move(c, None, dst, amount)
            mine.move(c, dst, None, amount)
            assert full.x.tobytes() == mine.x.tobytes() and full.rejected.tobytes() == mine.rejected.tobytes()
        return out

    monkeypatch.setattr(queue_repair, "_opens_for_sliver", checked)
    for q, nlp in _thesis_repairs():
        queue_repair.repair(q, nlp.x, nlp.r, nlp.n)
    assert not _golden_differs()
    return fired[0]


def test_the_early_sliver_refusal_agrees_with_the_full_check(monkeypatch: pytest.MonkeyPatch) -> None:
    """Oracle above on the real rule (it fires often at 1 core); with it off the repairs are the same."""
    runs = _thesis_repairs()
    want = _repaired(runs)
    assert _check_slivers(monkeypatch, queue_repair._opens_for_sliver) >= 50
    monkeypatch.setattr(queue_repair, "SLIVER_FIRST", False)
    assert _repaired(runs) == want


def test_an_early_sliver_refusal_into_open_pools_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """The same rule without its empty-pool condition (a sliver into an open pool need not open an instance, and
    the full check then takes it) is caught by the oracle."""

    def any_pool(pools: Any, c: int, dst: int, amount: float, lam: Any) -> bool:
        k = int(pools.q.base.class_model[c])
        part = amount < float(pools.q.rate[c]) * (1 - 1e-6)
        return bool(part and amount < queue_repair.SLIVER * float(pools.cap[dst, k]))

    with pytest.raises(AssertionError):
        _check_slivers(monkeypatch, any_pool)
