"""Live measurement does not feed the loop on a saturated node (issue 16): the leader's snapshot and the real solver.

Node ``a`` (2 cores) is next to the clients; ``b`` and ``c`` (4 cores each) are 25 ms further. The model
serves a request in 10 ms (100 req/s per instance). Under load ``a``'s cores are shared by everything
running there, so its measured latencies stretch with the contention (the load average over its cores).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pytest

from agent.catalogue import parse_catalogue
from agent.placement import (
    MAX_SLOWDOWN,
    NodeReport,
    RequestRecord,
    build_snapshot,
    explained_contention,
    parse_node_report,
)
from solver import Snapshot
from solver.api import solve

CAT = parse_catalogue(
    '[[models]]\nname = "m"\nimage = "i"\nmem_mb = 100\ncompute = 1\nexec_ms = { default = 10.0 }\n'
    "throughput_rps = { default = 100.0 }\n",
    "t",
)
WINDOW_S = 10.0


def reports(load_a: float | None, cores_a: float | None = 2.0) -> list[NodeReport]:
    """a's runnable threads per CPU is ``load_a`` (None: not reported); b and c are idle."""
    return [
        NodeReport("a", 4000.0, 4000.0, 100.0, "board", {"m": 2}, cores=cores_a, load_per_cpu=load_a),
        NodeReport("b", 4000.0, 4000.0, 100.0, "board", {}, cores=4.0, load_per_cpu=0.05),
        NodeReport("c", 4000.0, 4000.0, 100.0, "board", {}, cores=4.0, load_per_cpu=0.05),
    ]


def records(rate: float, slowdown: float) -> list[RequestRecord]:
    """``rate`` req/s over the window from six phones by ``a``, served on ``a`` with stretched service times."""
    out = []
    n = int(rate * WINDOW_S)
    for i in range(n):
        rtt = {"a": 2.0, "b": 27.0, "c": 28.0}
        wait = 30.0 * (i % 5)  # most requests also queued; the low quantile finds the ones that did not
        out.append(RequestRecord(i / rate, "m", f"phone{i % 6}", rtt, "a", 10.0 * slowdown + wait, 200))
    return out


def plan_for(
    rate: float, cores_a: float | None = 2.0, contention: bool = True
) -> tuple[dict[str, Any], dict[str, int]]:
    """The leader's snapshot at ``rate`` and the real solver's instances per node."""
    slowdown = max(1.0, rate / 100.0 / 2.0 * 2.5)  # more runnable threads than cores as the load grows
    load = slowdown if contention else None
    snap = build_snapshot(reports(load, cores_a), records(rate, slowdown), CAT, 100.0, "queue", WINDOW_S)
    plan = solve(Snapshot.from_dict(snap), mode="2")
    return snap, {n: c.get("m", 0) for n, c in plan.instances.items()}


@pytest.mark.parametrize("rate", [30.0, 90.0, 180.0, 300.0, 500.0])
def test_raising_the_load_never_puts_more_instances_on_a_2_core_node(rate: float) -> None:
    snap, counts = plan_for(rate)
    assert snap["nodes"][0]["cores"] == 2.0
    assert counts["a"] <= 2  # what its cores serve; the rest runs on b and c
    total = sum(counts.values())
    assert total <= math.ceil(rate / 90.0) + 1


def test_the_contention_is_divided_out_of_the_measured_service_time() -> None:
    """At 500 req/s a has 6.25 runnable threads per CPU: its 62.5 ms latencies are a 10 ms service time."""
    snap, _ = plan_for(500.0)
    m = snap["models"][0]
    assert m["throughput_rps"]["a"] == pytest.approx(100.0)
    assert snap["requests"][0]["exec_ms"]["a"] == pytest.approx(10.0)
    raw, _ = plan_for(500.0, contention=False)  # no load reported: the stretched figure stands
    assert raw["models"][0]["throughput_rps"]["a"] == pytest.approx(100.0 / 6.25)


def test_without_the_core_limit_the_plan_piles_instances_onto_the_saturated_node() -> None:
    """The old model (the agent reports no cores): the nearest node gets ever more instances as load grows."""
    _, counts = plan_for(500.0, cores_a=None)
    assert counts["a"] > 2


def test_contention_is_clipped_and_parsed_from_the_report() -> None:
    assert NodeReport("a", 1, 1, 1, "x", {}, cores=2.0, load_per_cpu=0.5).contention() == 1.0
    assert NodeReport("a", 1, 1, 1, "x", {}, cores=2.0, load_per_cpu=3.0).contention() == 3.0
    assert NodeReport("a", 1, 1, 1, "x", {}, cores=2.0, load_per_cpu=1000.0).contention() == MAX_SLOWDOWN
    assert NodeReport("a", 1, 1, 1, "x", {}).contention() == 1.0
    base = {"node_id": "a", "mem_available_mb": 1, "mem_total_mb": 1, "compute": 1, "instances": []}
    good = parse_node_report({**base, "cores": 4, "load_per_cpu": 0.5}, {})
    assert good.cores == 4.0 and good.load_per_cpu == 0.5
    bad = parse_node_report({**base, "cores": -1, "load_per_cpu": float("nan")}, {})
    assert bad.cores is None and bad.load_per_cpu is None
    assert parse_node_report(base, {}).cores is None  # an older agent: no limit, as before


def _two_nodes(
    load_b: float,
    rate_b: float,
    latency_b_ms: float,
    extra: Sequence[RequestRecord] = (),
    cores_b: float | None = 2.0,
    own_logs: bool = False,
) -> dict[str, Any]:
    """a (2 ms from the phones) and b (5 ms), 2 cores each (b: ``cores_b``); a serves 20 req/s at 12 ms, b
    ``rate_b`` at ``latency_b_ms`` and reports ``load_b`` runnable threads per CPU; ``extra`` records join.
    ``own_logs``: each node logged the requests it served (else their logger is unknown)."""
    nodes = [
        NodeReport("a", 4000.0, 4000.0, 100.0, "board", {"m": 1}, cores=2.0, load_per_cpu=0.1),
        NodeReport("b", 4000.0, 4000.0, 100.0, "board", {"m": 1}, cores=cores_b, load_per_cpu=load_b),
    ]
    recs = []
    for node, rate, latency in (("a", 20.0, 12.0), ("b", rate_b, latency_b_ms)):
        for i in range(int(rate * WINDOW_S)):
            logger = node if own_logs else None
            recs.append(RequestRecord(i / rate, "m", f"phone{i % 6}", {"a": 2.0, "b": 5.0}, node, latency, 200, logger))
    return build_snapshot(nodes, [*recs, *extra], CAT, 100.0, "queue", WINDOW_S)


def test_a_node_reporting_inflated_contention_does_not_attract_the_streams(monkeypatch: pytest.MonkeyPatch) -> None:
    """b claims 8 runnable threads per CPU while its own 20 req/s at 12 ms keep 0.12 of a core busy: nothing is
    divided out of its latencies, so it is priced as a (3 ms nearer) and the plan keeps the phones on a.
    Taking b's word (the check switched off) prices it at 1.5 ms and moves every stream to b."""
    from agent import placement

    snap = _two_nodes(8.0, 20.0, 12.0)
    assert {n: snap["requests"][0]["exec_ms"][n] for n in "ab"} == pytest.approx({"a": 12.0, "b": 12.0})
    plan = solve(Snapshot.from_dict(snap), mode="2")
    assert sum(s.get("b", 0.0) for s in plan.shares) < 0.5 * len(plan.shares)
    monkeypatch.setattr(placement, "explained_contention", lambda _r, _w, cores, _k: dict.fromkeys(cores, math.inf))
    taken = _two_nodes(8.0, 20.0, 12.0)
    assert taken["requests"][0]["exec_ms"]["b"] == pytest.approx(1.5)
    plan = solve(Snapshot.from_dict(taken), mode="2")
    assert sum(s.get("b", 0.0) for s in plan.shares) == pytest.approx(len(plan.shares))


def test_contention_a_busy_nodes_own_traffic_explains_is_still_divided_out() -> None:
    """b serves 200 req/s at 40 ms on 2 cores: 8 requests in flight, 4 per core; it reports 4 runnable threads
    per CPU, all explained by its own traffic, so its 40 ms are a 10 ms service time; reporting 6 changes
    nothing (only 4 is explained)."""
    for load in (4.0, 6.0):
        snap = _two_nodes(load, 200.0, 40.0)
        assert snap["requests"][0]["exec_ms"]["b"] == pytest.approx(10.0)


@pytest.mark.parametrize("model", ["no-such-model", "m"])
def test_one_made_up_record_in_a_nodes_own_log_explains_no_contention(model: str) -> None:
    """The reviewer's attack: b reports 8 runnable threads per CPU and logs one made-up 160 s request it
    served (of a model outside the catalogue, or of ``m``). Summed, that record alone explained 8 per core
    (12 ms read as 1.5 ms, every stream moved to b); counted at the median latency of b's ``m`` records
    (and not at all outside the catalogue), b stays priced at its 12 ms and the phones stay on a."""
    fake = RequestRecord(5.0, model, "x", {}, "b", 160_000.0, 200)
    snap = _two_nodes(8.0, 20.0, 12.0, extra=[fake])
    assert snap["requests"][0]["exec_ms"]["b"] == pytest.approx(12.0)
    plan = solve(Snapshot.from_dict(snap), mode="2")
    assert sum(s.get("b", 0.0) for s in plan.shares) < 0.5 * len(plan.shares)


def test_a_node_that_reports_no_cores_gets_no_contention_divided_out() -> None:
    """b's 200 req/s at 40 ms explain 4 per core on 2 cores (divided out), but with no ``cores`` reported
    there is no core count to divide by: nothing is divided out (it was: counted as 1 core, 8)."""
    assert _two_nodes(4.0, 200.0, 40.0)["requests"][0]["exec_ms"]["b"] == pytest.approx(10.0)
    assert _two_nodes(8.0, 200.0, 40.0, cores_b=None)["requests"][0]["exec_ms"]["b"] == pytest.approx(40.0)


def test_only_catalogue_models_and_finite_latencies_explain_contention() -> None:
    """explained_contention itself: per (node, model) count x median; unknown models, NaN and errors count
    for nothing."""
    recs = [RequestRecord(float(i), "m", "c", {}, "b", 40.0, 200) for i in range(500)]
    recs += [RequestRecord(1.0, "m", "c", {}, "b", 1e9, 200), RequestRecord(1.0, "m", "c", {}, "b", math.nan, 200)]
    recs += [RequestRecord(1.0, "zz", "c", {}, "b", 1e9, 200), RequestRecord(1.0, "m", "c", {}, "b", 1e9, 500)]
    got = explained_contention(recs, WINDOW_S, {"b": 1.0}, {"m"})
    assert got == {"b": pytest.approx(501 * 0.040 / WINDOW_S)}


def test_a_node_cannot_move_the_median_with_its_own_records_where_others_logged_enough() -> None:
    """b (reporting 8) logs 300 made-up 160 s requests beside its 200 real 12 ms ones: the median of b's own
    word is 80 s and explains 8 per core (12 ms read as 1.5 ms). a proxied 100 requests to b and logged them
    at 12 ms; that median (the word of a node other than b) counts, and b stays at its 12 ms (its service time
    from its own log, which holds enough)."""
    fake = [RequestRecord(5.0, "m", "x", {}, "b", 160_000.0, 200, logged_by="b") for _ in range(300)]
    seen = [RequestRecord(i / 10, "m", f"phone{i % 6}", {}, "b", 12.0, 200, logged_by="a") for i in range(100)]
    snap = _two_nodes(8.0, 20.0, 12.0, extra=fake, own_logs=True)
    assert snap["requests"][0]["exec_ms"]["b"] == pytest.approx(1.5)
    snap = _two_nodes(8.0, 20.0, 12.0, extra=[*fake, *seen], own_logs=True)
    assert snap["requests"][0]["exec_ms"]["b"] == pytest.approx(12.0)
    own = [RequestRecord(i / 10, "m", "c", {}, "b", 12.0, 200, logged_by="b") for i in range(100)]
    got = explained_contention([*fake, *own], WINDOW_S, {"b": 2.0}, {"m"})  # b's word alone: its median stands
    assert got["b"] == pytest.approx(400 * 160.0 / WINDOW_S / 2.0)
