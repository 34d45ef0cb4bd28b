"""The leader's snapshot for the queue objective: sites, rates, throughput per node class (issue 16)."""

from __future__ import annotations

import pytest

from agent.catalogue import builtin_catalogue_text, parse_catalogue
from agent.errors import ConfigError
from agent.placement import NodeReport, RequestRecord, build_snapshot
from agent.settings import Settings
from solver import Snapshot
from solver.api import solve

CAT = parse_catalogue(builtin_catalogue_text(), "t")


def node(nid: str, node_class: str = "default") -> NodeReport:
    return NodeReport(nid, 4000.0, 4000.0, 100.0, node_class, {})


def rec(
    client: str, rtts: dict[str, float], ts: float, node_: str | None = None, latency: float | None = None
) -> RequestRecord:
    return RequestRecord(ts, "half_plus_two", client, rtts, node_, latency, 200)


def test_a_room_of_phones_is_one_stream_with_its_rate() -> None:
    nodes = [node("a", "jetson-nano"), node("b", "orin")]
    room = [rec(f"phone{i}", {"a": 3.0 + i * 0.01, "b": 9.0}, float(t)) for i in range(60) for t in range(5)]
    far = [rec("far", {"a": 40.0, "b": 2.0}, 1.0)]
    snap = build_snapshot(nodes, room + far, CAT, 100.0, objective="queue", window_s=10.0)
    assert snap["objective"] == "queue"
    streams = sorted(snap["requests"], key=lambda r: -r["rate"])
    assert len(streams) == 2
    assert streams[0]["rate"] == pytest.approx(300 / 10.0) and streams[1]["rate"] == pytest.approx(0.1)
    hpt = next(m for m in snap["models"] if m["name"] == "half_plus_two")
    assert hpt["throughput_rps"] == {"a": 150.0, "b": 500.0}  # the catalogue's per node class
    assert [n["node_class"] for n in snap["nodes"]] == ["jetson-nano", "orin"]
    plan = solve(Snapshot.from_dict(snap))
    assert plan.shares and sum(sum(m.values()) for m in plan.instances.values()) <= 2


def test_measured_latency_lowers_the_throughput_never_raises_it() -> None:
    slow = [rec("c", {"a": 1.0}, float(t), "a", 20.0) for t in range(6)]
    snap = build_snapshot([node("a")], slow, CAT, 10.0, objective="queue", window_s=60.0)
    hpt = next(m for m in snap["models"] if m["name"] == "half_plus_two")
    assert hpt["throughput_rps"]["a"] == pytest.approx(50.0)
    fast = [rec("c", {"a": 1.0}, float(t), "a", 0.1) for t in range(6)]
    snap = build_snapshot([node("a")], fast, CAT, 10.0, objective="queue", window_s=60.0)
    assert next(m for m in snap["models"] if m["name"] == "half_plus_two")["throughput_rps"]["a"] == 500.0


def test_queueing_waits_do_not_lower_the_throughput_estimate() -> None:
    # 20 ms of service; under load most requests also waited in the queue (up to 200 ms). Taking the median
    # would say the instance serves ~6 requests/s, ask for more instances on the same cores, and feed the wait.
    waits = [0, 0, 0, 0, 5, 20, 40, 80, 120, 160, 200, 200, 180, 140, 100]
    loaded = [rec("c", {"a": 1.0}, float(t), "a", 20.0 + w) for t, w in enumerate(waits)]
    snap = build_snapshot([node("a")], loaded, CAT, 10.0, objective="queue", window_s=60.0)
    hpt = next(m for m in snap["models"] if m["name"] == "half_plus_two")
    assert hpt["throughput_rps"]["a"] == pytest.approx(50.0)
    assert snap["requests"][0]["exec_ms"]["a"] == pytest.approx(20.0)  # the queue model adds the wait itself
    thesis = build_snapshot([node("a")], loaded, CAT, 10.0)  # the thesis's objective keeps the median
    assert thesis["requests"][0]["exec_ms"]["a"] == pytest.approx(100.0)


def test_thesis_snapshot_is_unchanged_and_queue_needs_a_window() -> None:
    records = [rec("c", {"a": 1.0}, 1.0)]
    assert "objective" not in build_snapshot([node("a")], records, CAT, 10.0)
    with pytest.raises(ValueError):
        build_snapshot([node("a")], records, CAT, 10.0, objective="queue")


def test_catalogue_throughput_field_and_default() -> None:
    text = '[[models]]\nname = "m"\nimage = "i"\nmem_mb = 1\ncompute = 1\nexec_ms = { default = 4.0 }\n'
    assert parse_catalogue(text, "t").models["m"].expected_throughput_rps("x") == pytest.approx(250.0)
    with pytest.raises(ConfigError, match="throughput_rps"):
        parse_catalogue(text + "throughput_rps = { default = 0 }\n", "t")


def test_queue_p99_snapshot_is_the_queue_snapshot_under_its_own_objective() -> None:
    room = [rec(f"phone{i}", {"a": 3.0, "b": 9.0}, float(t)) for i in range(20) for t in range(5)]
    queue = build_snapshot([node("a"), node("b")], room, CAT, 100.0, objective="queue", window_s=10.0)
    tail = build_snapshot([node("a"), node("b")], room, CAT, 100.0, objective="queue-p99", window_s=10.0)
    assert tail["objective"] == "queue-p99" and {**tail, "objective": "queue"} == queue
    assert solve(Snapshot.from_dict(tail)).shares


def test_placement_objective_setting() -> None:
    assert Settings(node_id="n").placement_objective == "queue-p99"
    assert Settings(node_id="n", placement_objective="queue-p99").placement_objective == "queue-p99"
    with pytest.raises(ConfigError, match="placement_objective"):
        Settings(node_id="n", placement_objective="fast")


def test_an_unmeasured_node_is_priced_like_its_measured_class_peers() -> None:
    """a measured 4 ms where the catalogue says 1 ms (default class): b, same class, no instance yet, is
    priced at 4 ms too, not 1 ms (else every plan would move the instance to the node it has not measured);
    c, another class, keeps its own catalogue figure; the thesis objective is untouched."""
    nodes = [node("a"), node("b"), node("c", "orin")]
    measured = [rec("c1", {"a": 1.0, "b": 1.0, "c": 1.0}, float(t), "a", 4.0) for t in range(8)]
    snap = build_snapshot(nodes, measured, CAT, 10.0, objective="queue", window_s=60.0)
    assert snap["requests"][0]["exec_ms"] == pytest.approx({"a": 4.0, "b": 4.0, "c": 1.0})
    hpt = next(m for m in snap["models"] if m["name"] == "half_plus_two")
    assert hpt["throughput_rps"] == pytest.approx({"a": 250.0, "b": 250.0, "c": 500.0})
    thesis = build_snapshot(nodes, measured, CAT, 10.0)
    assert thesis["requests"][0]["exec_ms"] == pytest.approx({"a": 4.0, "b": 1.0, "c": 1.0})
