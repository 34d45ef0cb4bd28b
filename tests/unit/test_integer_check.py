"""bench/integer_check.py, the same-plans check for speed-ups of the queue solve's integer part: its digest sees a
one-ulp change of any figure and no timing field, two solves of one snapshot digest alike (else a before/after
comparison means nothing), and its corpus has the size it states, every key once."""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from bench.integer_check import compare, corpus, digest, plans, record
from solver.api import solve
from solver.plan import Plan
from tests.unit.test_queue_repair_golden import snapshot


def _plan(seed: int = 3) -> Plan:
    return solve(snapshot(np.random.default_rng(seed)), mode="1", objective="queue")


def test_the_digest_leaves_out_timing_and_sees_a_one_ulp_change() -> None:
    plan = _plan()
    base = digest(plan)
    details = {**plan.details, "relaxation_ms": plan.details["relaxation_ms"] + 5.0}
    assert digest(dataclasses.replace(plan, solve_ms=123.0, details=details)) == base
    nudged = math.nextafter(plan.objective_ms, math.inf)
    assert digest(dataclasses.replace(plan, objective_ms=nudged)) != base
    other = {**plan.details, "shed": plan.details["shed"] + 1}
    assert digest(dataclasses.replace(plan, details=other)) != base


def test_two_solves_of_one_snapshot_digest_alike() -> None:
    for seed in (0, 3, 6):
        assert digest(_plan(seed)) == digest(_plan(seed))


def test_the_corpus_has_the_stated_size_and_unique_keys() -> None:
    for seeds, sites in ((1, False), (2, False), (1, True)):
        keys = [key for key, *_ in corpus(seeds, sites)]
        assert len(keys) == len(set(keys)) == plans(seeds, sites)
    assert plans(3) - plans(2) == plans(2) - plans(1) > 0  # linear in the seeds


def test_a_corpus_from_another_first_seed_is_as_large_and_new() -> None:
    """``--first``: from seed 2 as many plans, every key new against seeds 0-1; from 0 the same corpus."""
    fresh = [key for key, *_ in corpus(1, True, first=2)]
    assert len(fresh) == len(set(fresh)) == plans(1, True)
    assert not set(fresh) & {key for key, *_ in corpus(2, True)}
    assert [key for key, *_ in corpus(1, False, first=0)] == [key for key, *_ in corpus(1, False)]


def test_the_quality_gate_passes_equal_and_better_plans_and_fails_worse_ones() -> None:
    plans_ = {f"random/s{s}": record(_plan(s)) for s in (0, 3)}
    ok, lines = compare(plans_, plans_)
    assert ok and lines[0].startswith("2 plans compared: 0 moved")

    def moved(key: str, **changes: object) -> dict[str, dict[str, object]]:
        return {**plans_, key: {**plans_[key], "digest": "x", **changes}}

    a = plans_["random/s0"]
    better = moved("random/s0", objective_ms=a["objective_ms"] * 0.99)
    assert compare(plans_, better)[0]
    slightly = moved("random/s0", objective_ms=a["objective_ms"] * 1.0004)  # within worst, mean +0.02 % over 2 plans
    assert compare(plans_, slightly)[0]
    for bad in (
        moved("random/s0", objective_ms=a["objective_ms"] * 1.02),  # one plan 2 % worse
        moved("random/s0", objective_ms=a["objective_ms"] * 1.002),  # the mean +0.1 %
        moved("random/s0", rejected=a["rejected"] + 1),
        moved("random/s0", feasible=False),
        moved("random/s0", instances=a["instances"] + 1),
        {"random/s0": a},  # a key missing
    ):
        ok, lines = compare(plans_, bad)
        assert not ok and any(line.startswith("FAIL") for line in lines)
    rejecting = {**plans_, "random/s0": {**a, "rejected": a["rejected"] + 1}}
    assert compare(rejecting, moved("random/s0", objective_ms=a["objective_ms"] * 1.5))[0]  # serving more wins
