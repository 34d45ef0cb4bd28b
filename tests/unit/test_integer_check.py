"""bench/integer_check.py, the same-plans check for speed-ups of the queue solve's integer part: its digest sees a
one-ulp change of any figure and no timing field, two solves of one snapshot digest alike (else a before/after
comparison means nothing), and its corpus has the size it states, every key once."""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from bench.integer_check import corpus, digest, plans
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
