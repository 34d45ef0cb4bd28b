"""bench/p99_audit.py: the bound-side figures are what they claim on small labs (issue 16's p99 clause)."""

from __future__ import annotations

import dataclasses

import pytest

from bench.p99_audit import instance_bound, one, verdict
from solver.snapshot import Model, Node, Request, Snapshot
from solver.workload import Workload

SMALL = Workload(clients=12, sites=3, duration_s=6.0)


@pytest.mark.parametrize(
    "w",
    [
        dataclasses.replace(SMALL, rate=2.0),
        dataclasses.replace(SMALL, rate=20.0, service="det"),
        dataclasses.replace(SMALL, rate=8.0, cores=2.0, concurrency=2, throughput=50.0, model_mem_mb=100.0),
    ],
)
def test_the_floor_is_below_every_plan_within_the_bound_and_pooled_above_it(w: Workload) -> None:
    """No plan within the bound beats ``floor`` (queue-p99's, the searched one, the greedy dispatch's); queueing
    never lowers it (``pooled`` >= ``floor``); queue-p99 keeps the bound."""
    row = one(w)
    assert row["queue_p99_within_bound"]
    within = [row["outcomes"]["queue-p99"]["p99_ms"], row["searched"]["p99_ms"], row["all_live"]["p99_ms"]]
    if w.cores == 0:
        within.append(row["greedy_ms"])
    assert all(row["floor_ms"] <= p + 1e-9 for p in within)
    assert row["pooled_ms"] >= row["floor_ms"] - 1e-9
    assert row["searched"]["instances"] <= row["bound"]


def test_the_bound_is_the_need_at_rho_max_plus_one_spare() -> None:
    nodes = tuple(Node(f"n{j}", 4096.0, 4096.0, 100.0) for j in range(3))
    model = Model("m", 100.0, 1.0, {"default": 300.0})
    ids = ("n0", "n1", "n2")
    for rate, bound in ((120.0, 2), (270.0, 2), (271.0, 3), (720.0, 4)):
        reqs = (Request("m", dict.fromkeys(ids, 1.0), dict.fromkeys(ids, 3.3), "c", rate),)
        assert instance_bound(Snapshot(nodes, (model,), reqs)) == bound


def test_the_verdict_names_which_side_misses() -> None:
    assert verdict(1.1, 1.3, 1.3, 1.3) == "met"
    assert verdict(1.3, 1.25, 1.0, 1.0).startswith("conflicts with the bound")
    assert verdict(1.3, 1.0, 1.25, 1.1).startswith("missed: a plan within the bound")
    assert verdict(1.3, 1.0, 1.1, 1.25).startswith("missed: the bound's instances reach 1.2x")
    assert verdict(1.3, 1.0, 1.25, 1.25) == "missed: nothing found within the bound reaches 1.2x"
