"""The column generation's HiGHS object handed from one LP to the next on a thread (solver.queue_dual ``_highs``,
``REUSE_HIGHS``; issue 16 target 5, session 19): the same answers bit for bit, one spare per thread at most, never
shared by two live LPs or two threads, never reused with other options."""

from __future__ import annotations

import dataclasses
import threading
from typing import Any

import highspy
import numpy as np
import pytest

from solver import queue_dual, queue_warm
from solver.problem import Mode, build_problem
from solver.queue_fast import solve_nlp_fast
from solver.queue_model import NlpSolution, QueueProblem, build_queue_problem
from solver.simulate import thesis_instance
from tests.unit.test_queue_fast import _with_running


def _problem(requests: int, nodes: int, seed: int, mode: Mode, cores: float | None, running: bool) -> QueueProblem:
    snap = thesis_instance(requests, nodes, seed)
    snap = _with_running(snap, seed) if running else snap
    snap = dataclasses.replace(snap, nodes=tuple(dataclasses.replace(n, cores=cores) for n in snap.nodes))
    return build_queue_problem(build_problem(snap, mode))


def _bits(sol: NlpSolution) -> tuple[bytes, ...]:
    """The relaxation's answer bit for bit: x, r, n, the servers and the objective."""
    parts = (sol.x, sol.r, sol.n, sol.effective(), np.array([sol.value]))
    return tuple(np.ascontiguousarray(a, dtype=float).tobytes() for a in parts)


CASES = [
    (25, 10, 0, Mode.MODE1, 2.0, False),
    (25, 15, 1, Mode.MODE2, 2.0, False),
    (40, 10, 2, Mode.MODE1, 1.0, True),
    (20, 10, 1, Mode.MODE2, 1.0, False),
    (30, 10, 0, Mode.MODE1, None, True),
]


def test_a_reused_object_gives_the_same_answers_bit_for_bit(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whole relaxations (column generation, Ipopt's polish) with a fresh HiGHS object per LP and with the reused
    one, alternating so that each reused object has solved other LPs before: identical answers."""
    problems = [_problem(*case) for case in CASES]
    runs: dict[bool, list[list[tuple[bytes, ...]]]] = {True: [], False: []}
    for reuse in (False, True, False, True):
        monkeypatch.setattr(queue_dual, "REUSE_HIGHS", reuse)
        runs[reuse].append([_bits(solve_nlp_fast(q)) for q in problems])
    assert runs[True][0] == runs[False][0] == runs[True][1] == runs[False][1]


def test_one_spare_per_thread_never_shared_by_two_live_lps() -> None:
    """An LP takes the spare (and empties the slot); a second LP opened while the first is alive gets a new object;
    handing both back leaves one spare (the last), so a thread holds at most one idle object."""
    queue_dual._highs(highspy)  # whatever a previous test left: taken and dropped
    first = queue_dual._highs(highspy)
    second = queue_dual._highs(highspy)
    assert first is not second
    queue_dual._SPARE.highs = (first, tuple(queue_dual.HIGHS_OPTIONS.items()))
    assert queue_dual._highs(highspy) is first
    assert queue_dual._SPARE.highs is None  # taken: the next LP while this one lives gets another object
    assert queue_dual._highs(highspy) is not first


def test_prove_lp_hands_its_object_back_and_the_next_lp_starts_empty() -> None:
    """After a proof the slot holds the LP's object; the next LP built on it has only its own model (the old
    columns and rows gone) and proves the same R(S) again to the same bits."""
    q = _problem(25, 10, 0, Mode.MODE1, 2.0, False)
    allowed = np.ones((q.base.n_classes, q.base.n_nodes), dtype=bool)
    sub = dataclasses.replace(q, r_cost=np.full(q.base.n_classes, q.penalty()))
    first = queue_dual.prove_lp(sub, allowed, queue_warm.GAP, False, True)
    spare = queue_dual._SPARE.highs
    assert first is not None and spare is not None
    lp, _ = queue_dual._open_lp(sub, allowed, highspy, False, True)
    assert lp.h is spare[0]
    assert lp.h.getNumCol() == lp.X + lp.C + lp.R and lp.h.getNumRow() == lp.core0 + len(lp.cored)
    lp.release()
    again = queue_dual.prove_lp(sub, allowed, queue_warm.GAP, False, True)
    assert again is not None
    assert _bits(again.solution) == _bits(first.solution)
    assert np.array_equal(again.reduced, first.reduced) and np.array_equal(again.pool, first.pool)


def test_other_options_get_a_fresh_object(monkeypatch: pytest.MonkeyPatch) -> None:
    """An object set up with other options (a bench's variant) is not reused once the options are back, nor is
    today's reused under a variant: HiGHS keeps an option once set."""
    queue_dual._highs(highspy)
    today = queue_dual._highs(highspy)
    queue_dual._SPARE.highs = (today, tuple(queue_dual.HIGHS_OPTIONS.items()))
    monkeypatch.setitem(queue_dual.HIGHS_OPTIONS, "simplex_scale_strategy", 0)
    variant = queue_dual._highs(highspy)
    assert variant is not today
    assert variant.getOptionValue("simplex_scale_strategy")[1] == 0
    queue_dual._SPARE.highs = (variant, tuple(queue_dual.HIGHS_OPTIONS.items()))
    monkeypatch.undo()
    assert queue_dual._highs(highspy) is not variant


def test_each_thread_has_its_own_spare() -> None:
    """The slot is per thread: a solver thread never takes an object another thread handed back."""
    queue_dual._highs(highspy)
    mine = queue_dual._highs(highspy)
    queue_dual._SPARE.highs = (mine, tuple(queue_dual.HIGHS_OPTIONS.items()))
    got: list[Any] = []
    thread = threading.Thread(target=lambda: got.append(queue_dual._highs(highspy)))
    thread.start()
    thread.join()
    assert got and got[0] is not mine
    assert queue_dual._highs(highspy) is mine


def test_the_object_comes_back_when_a_round_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    """An exception in the rounds still hands the object back (and the next LP on it solves as a fresh one)."""
    q = _problem(25, 10, 0, Mode.MODE1, 2.0, False)
    allowed = np.ones((q.base.n_classes, q.base.n_nodes), dtype=bool)
    sub = dataclasses.replace(q, r_cost=np.full(q.base.n_classes, q.penalty()))
    before = queue_dual.prove_lp(sub, allowed, queue_warm.GAP, False, True)

    def broken(self: Any) -> None:
        raise RuntimeError("a round failed")

    queue_dual._highs(highspy)  # empty the slot
    with monkeypatch.context() as m:
        m.setattr(queue_dual._Lp, "solve", broken)
        with pytest.raises(RuntimeError):
            queue_dual.prove_lp(sub, allowed, queue_warm.GAP, False, True)
    assert queue_dual._SPARE.highs is not None
    after = queue_dual.prove_lp(sub, allowed, queue_warm.GAP, False, True)
    assert before is not None and after is not None and _bits(after.solution) == _bits(before.solution)
