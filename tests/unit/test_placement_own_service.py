"""A node's own servers' service times in the leader's figures (agent/placement.py ``latency_figures``): its word
where nobody else measured it, never faster than the other loggers measured it, and read within bounds."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from agent.catalogue import builtin_catalogue_text, parse_catalogue
from agent.placement import (
    LOGGER_SHARE,
    MAX_SERVICE_MODELS,
    MIN_LATENCY_SAMPLES,
    NodeReport,
    RequestRecord,
    build_snapshot,
    latency_figures,
    others_figure,
    parse_node_report,
    service_ms,
)
from agent.window_sync import BuildInputs
from peerserve import wire

CAT = parse_catalogue(builtin_catalogue_text(), "t")
NOW, M, WINDOW_S = 10_000.0, "digits", 600.0


def node(node_id: str, runs: bool = True, service: dict[str, tuple[int, float]] | None = None) -> NodeReport:
    return NodeReport(node_id, 3000, 4000, 100, "default", {M: 1} if runs else {}, ready={M: 1} if runs else {},
                      cores=2.0, service=service or {})  # fmt: skip


def logged(by: str, target: str, ms: float, n: int, client: str = "c@10.0.0.1") -> list[RequestRecord]:
    return [RequestRecord(NOW - 1 - i, M, client, {"a": 1.0, "b": 2.0}, target, ms, 200, by) for i in range(n)]


def direct_client() -> list[RequestRecord]:
    """A client that asked a's endpoint answer where digits is served and sent its requests to b's server: a logs
    the stream (no node, no latency), nobody times the requests."""
    return [RequestRecord(NOW - 1 - i, M, "phone@10.0.0.9", {"a": 1.0, "b": 2.0}, None, None, 200, "a")
            for i in range(50)]  # fmt: skip


def exec_of(nodes: list[NodeReport], records: list[RequestRecord], objective: str = "queue-p99") -> dict[str, float]:
    s = build_snapshot(nodes, records, CAT, NOW, objective=objective, window_s=WINDOW_S)
    return dict(next(r for r in s["requests"] if r["model"] == M)["exec_ms"])


@pytest.mark.parametrize("objective", ["queue-p99", "thesis"])
def test_a_node_reached_only_directly_is_priced_at_what_its_servers_measured(objective: str) -> None:
    """Before, b (clients sent to its server directly) had only the catalogue's figure; now its servers' own."""
    catalogue_ms = CAT.models[M].expected_exec_ms("default")
    before = exec_of([node("a", runs=False), node("b")], direct_client(), objective)
    assert before["b"] == catalogue_ms
    after = exec_of([node("a", runs=False), node("b", service={M: (400, 7.5)})], direct_client(), objective)
    assert after["b"] == 7.5 != catalogue_ms


def test_too_few_requests_or_a_model_it_does_not_run_is_no_figure() -> None:
    few = exec_of([node("a", runs=False), node("b", service={M: (MIN_LATENCY_SAMPLES - 1, 7.5)})], direct_client())
    idle = exec_of([node("a", runs=False), node("b", runs=False, service={M: (400, 7.5)})], direct_client())
    plain = exec_of([node("a", runs=False), node("b")], direct_client())
    assert few["b"] == idle["b"] == plain["b"] == CAT.models[M].expected_exec_ms("default")


def test_a_node_claiming_to_be_faster_than_others_measured_it_gets_their_figure() -> None:
    """a's proxy measured b at 25 ms (200 records); b says its servers take 0.5 ms: the slower, a's, stands; b
    saying 40 ms (slower than a saw it: it only takes load off itself) is taken."""
    proxied = logged("a", "b", 25.0, 200)
    nodes = [node("a", runs=False), node("b", service={M: (5000, 0.5)})]
    assert exec_of(nodes, proxied)["b"] == 25.0
    assert exec_of([node("a", runs=False), node("b", service={M: (5000, 40.0)})], proxied)["b"] == 40.0
    assert exec_of([node("a", runs=False), node("b")], proxied)["b"] == 25.0  # as before without its word


def test_its_own_log_is_its_word_too_and_bounded_by_the_others_the_same_way() -> None:
    """b's own log says 1 ms (400 records), a's proxy 25 ms (200, over a quarter of b's 400): 25 ms; against
    b's 4,000 own records a's 200 are under a quarter, so b's own word stands (a member's few records cannot
    frame a node that measured itself: review13a F3)."""
    nodes = [node("a", runs=False), node("b")]
    assert exec_of(nodes, logged("b", "b", 1.0, 400, "p@10.0.0.2") + logged("a", "b", 25.0, 200))["b"] == 25.0
    assert exec_of(nodes, logged("b", "b", 1.0, 4000, "p@10.0.0.2") + logged("a", "b", 25.0, 200))["b"] == 1.0


def test_with_three_other_loggers_their_lower_median_bounds_its_word() -> None:
    records = logged("p1", "b", 10.0, 20) + logged("p2", "b", 20.0, 20) + logged("p3", "b", 900.0, 20)
    nodes = [node("a", runs=False), node("b", service={M: (5000, 1.0)})]
    assert exec_of(nodes, records)["b"] == 20.0


def test_others_figure_rules() -> None:
    assert others_figure([]) is None
    assert others_figure([(100, 5.0), (10, 1.0)]) == 5.0  # 10 < a quarter of 100
    assert others_figure([(100, 5.0), (30, 1.0)]) == 1.0
    assert others_figure([(100, 5.0)], own_samples=1000) is None  # under a quarter of the node's own log
    assert others_figure([(1, 9.0), (1, 3.0), (1000, 1.0), (5, 100.0)]) == 3.0  # lower median, one vote each


def test_its_word_has_the_contention_divided_out_like_the_logs() -> None:
    figures = latency_figures([], {"b": 2.0}, service_ms, {"b": {M}}, {("b", M): (100, 30.0)})
    assert figures == {("b", M): 15.0}


STATS: dict[str, Any] = {"node_id": "b", "node_class": "default", "compute": 100, "mem_available_mb": 1,
                         "mem_total_mb": 2, "instances": [{"model": M, "running": True, "ready": True}]}  # fmt: skip


def test_a_reports_service_figures_are_read_within_bounds() -> None:
    junk = {"x": {"requests": "many", "service_ms": 1}, "y": {"requests": 10, "service_ms": float("nan")},
            "z": {"requests": 10, "service_ms": 1e9}, "w": [1], M: {"requests": 12, "service_ms": 3.5}}  # fmt: skip
    report = parse_node_report({**STATS, "service": junk}, {})
    assert report.service == {M: (12, 3.5)}
    many = {f"m{i}": {"requests": 10, "service_ms": 1.0} for i in range(10 * MAX_SERVICE_MODELS)}
    assert len(parse_node_report({**STATS, "service": many}, {}).service) == MAX_SERVICE_MODELS
    assert parse_node_report({**STATS, "service": "junk"}, {}).service == {}


def test_the_peer_plane_keeps_the_figures_and_refuses_too_many() -> None:
    stats = {**STATS, "service": {M: {"requests": 12, "service_ms": 3.5, "span_s": 600.0}}}
    parsed = wire.NodeStats.parse(stats)
    assert parse_node_report(parsed.to_json(), {}).service == {M: (12, 3.5)}
    assert "service" not in wire.NodeStats.parse(STATS).to_json()
    many = {f"m{i}": {"requests": 1, "service_ms": 1.0} for i in range(wire.MAX_MODELS + 1)}
    for bad in (many, {M: {"requests": -1, "service_ms": 1.0}}, {"../x": {"requests": 1, "service_ms": 1.0}}, [1]):
        with pytest.raises(wire.WireError):
            wire.NodeStats.parse({**STATS, "service": bad})


def test_the_figures_reach_the_solver_worker_whole() -> None:
    """The worker builds the snapshot from the round's reports as they cross its pipe (agent/window_sync.py)."""
    nodes = (node("a", runs=False), node("b", service={M: (400, 7.5)}))
    inputs = BuildInputs(nodes, CAT, NOW, "queue-p99", WINDOW_S)
    theirs = BuildInputs.from_json(json.loads(json.dumps(inputs.to_json())))
    assert theirs.nodes == nodes and theirs.build(direct_client()) == inputs.build(direct_client())


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 10_000), st.floats(0.0, 120_000.0), st.integers(0, 400), st.booleans())
@example(10_000, 0.0, 13, True)  # the share rule's edge: 13 of b's own 50 records
@example(10_000, 0.0, MIN_LATENCY_SAMPLES, False)
def test_whatever_a_node_says_of_itself_it_is_no_faster_than_others_measured_it(
    served: int, ms: float, proxied: int, b_logs_itself: bool
) -> None:
    """b's report (any count, any time) and its own log: b's figure is never below the other loggers' (a's proxy,
    where it measured b and holds LOGGER_SHARE of b's own log's records: volume decides between one logger and the
    node's log, test_its_own_log_is_its_word_too...), and a's own figure does not move."""
    records = logged("a", "a", 20.0, 300, "p@10.0.0.3") + logged("a", "b", 25.0, proxied)
    records += logged("b", "b", 0.5, 50, "q@10.0.0.4") if b_logs_itself else []
    plain = exec_of([node("a"), node("b")], records + direct_client())
    told = exec_of([node("a"), node("b", service={M: (served, ms)})], records + direct_client())
    assert told["a"] == plain["a"] == 20.0
    if proxied >= MIN_LATENCY_SAMPLES and (not b_logs_itself or proxied >= LOGGER_SHARE * 50):
        assert told["b"] >= 25.0 and plain["b"] >= 25.0
