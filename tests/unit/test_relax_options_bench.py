"""bench/relax_options_bench.py: its variants come out again, today's settings give today's answers bit for bit,
and the one knob it adds to the solver (``queue_dual.SMOOTH_EXTRA``) proves R(S) in fewer LP solves when on."""

from __future__ import annotations

from bench.queue_bench import with_cores
from bench.relax_options_bench import VARIANTS, answers, applied, capture, compare_plans, measure
from solver import queue_dual, queue_warm
from solver.queue_lazy import solve_nlp_lazy
from solver.simulate import thesis_instance


def _captured(seed: int = 0, size: tuple[int, int] = (20, 10)) -> list:
    return capture([with_cores(thesis_instance(*size, seed), 1.0)])


def test_every_variant_is_restored() -> None:
    highs, ipopt = dict(queue_dual.HIGHS_OPTIONS), dict(queue_warm.WARM_OPTIONS)
    attrs = (queue_dual.SMOOTH_EXTRA, queue_dual.START_LADDER, queue_dual.FEASIBLE_BASIS, queue_warm.GAP)
    for settings in VARIANTS.values():
        with applied(settings):
            pass
    assert highs == queue_dual.HIGHS_OPTIONS and ipopt == queue_warm.WARM_OPTIONS
    assert attrs == (queue_dual.SMOOTH_EXTRA, queue_dual.START_LADDER, queue_dual.FEASIBLE_BASIS, queue_warm.GAP)
    gap = queue_dual.GAP
    with applied({"dual.GAP": 0.5, "highs": {"simplex_scale_strategy": 0}}):
        assert queue_dual.GAP == 0.5 and queue_dual.HIGHS_OPTIONS["simplex_scale_strategy"] == 0
    assert gap == queue_dual.GAP and highs == queue_dual.HIGHS_OPTIONS


def test_today_is_bitwise_today_and_the_counts_are_read() -> None:
    subs = _captured()
    assert subs  # 1 core per node: the core rows bind, R(S) is solved
    rows = measure(subs, ["today", "slack basis"], reps=1)
    today, slack = rows
    assert today["same"] == today["relaxations"] == len(subs) and today["objective_change"] == 0.0
    assert today["lp_solves"] >= 1 and today["iterations"] > 0 and today["ms_median"] > 0
    # another first basis: the same optimum (within Ipopt's tolerance), reached by another path
    assert slack["objective_change"] < 1e-6


def test_more_levels_per_round_proves_in_fewer_lp_solves_at_the_same_optimum() -> None:
    subs = _captured(0, (25, 15))  # measured: 5 LP solves per R(S) with today's settings, 4 with the extra level
    base, plain = answers(subs)
    with applied({"dual.SMOOTH_EXTRA": (0.25,)}):
        more, fewer = answers(subs)
    assert fewer < plain
    for (q, allowed), b, m in zip(subs, base, more, strict=True):
        assert abs(m[1] - b[1]) <= 1e-6 * max(1.0, abs(b[1]))
        cold = solve_nlp_lazy(q, allowed=allowed)  # Ipopt from its own start: the oracle
        assert abs(m[1] - cold.value) <= 1e-6 * max(1.0, abs(cold.value))


def test_compare_plans_counts_what_differs() -> None:
    ref = [("a", 100.0, 3), ("b", 200.0, 4), ("c", 50.0, 1)]
    got = [("a", 100.0, 3), ("b2", 201.0, 5), ("c2", 49.0, 1)]
    out = compare_plans(ref, got)
    assert out["plans"] == 3 and out["differ"] == 2 and out["other_instances"] == 1
    assert out["worse_1e3"] == 1 and out["better_1e3"] == 1
    assert abs(out["worst"] - 0.005) < 1e-12 and abs(out["best"] + 0.02) < 1e-12
