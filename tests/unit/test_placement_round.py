"""The leader's pure placement helpers: snapshot building and make-before-break."""

from __future__ import annotations

import gc
import json
import random
import tracemalloc
from typing import Any

from agent.catalogue import builtin_catalogue_text, parse_catalogue
from agent.handover import make_before_break
from agent.placement import (
    MIN_LATENCY_SAMPLES,
    USAGE_KEYS,
    NodeReport,
    RequestRecord,
    build_snapshot,
    desired_sets,
    parse_node_report,
)
from peerserve import wire
from solver import Snapshot

CAT = parse_catalogue(builtin_catalogue_text(), "t")


def node(nid: str, **instances: int) -> NodeReport:
    return NodeReport(nid, 1000, 2000, 100, "orin", instances)


def rec(client: str, model: str, rtts: dict[str, float], node_: str | None = None, latency: float | None = None,
        ts: float = 1.0, status: int = 200) -> RequestRecord:  # fmt: skip
    return RequestRecord(ts, model, client, rtts, node_, latency, status)


def test_one_request_per_stream_with_latest_rtts_and_profiles() -> None:
    snap = build_snapshot(
        [node("a", half_plus_two=1), node("b")],
        [rec("c1", "half_plus_two", {"a": 5}, ts=1), rec("c1", "half_plus_two", {"a": 2, "b": 9}, ts=2),
         rec("c2", "xor_mlp", {}), rec("c3", "no_such_model", {"a": 1}), rec("c4", "xor_mlp", {"a": 1}, status=502)],
        CAT, now_s=100.0,
    )  # fmt: skip
    s = Snapshot.from_dict(snap)  # a valid solver snapshot
    assert [(r.client, r.model) for r in s.requests] == [("c1", "half_plus_two"), ("c2", "xor_mlp")]
    assert dict(s.requests[0].rtt_ms) == {"a": 2, "b": 9}
    assert dict(s.requests[1].rtt_ms) == {"a": 1.0, "b": 1.0}  # unmeasured: the LAN default
    assert s.requests[0].exec_ms["a"] == CAT.models["half_plus_two"].expected_exec_ms("orin")
    assert dict(s.nodes[0].instances) == {"half_plus_two": 1} and s.now_s == 100.0


def test_measured_latency_replaces_the_profile_once_there_are_enough_samples() -> None:
    few = [rec("c", "xor_mlp", {"a": 1}, "a", 50.0)] * (MIN_LATENCY_SAMPLES - 1)
    snap = build_snapshot([node("a")], few, CAT, 0)
    assert snap["requests"][0]["exec_ms"]["a"] == CAT.models["xor_mlp"].expected_exec_ms("orin")
    enough = few + [rec("c", "xor_mlp", {"a": 1}, "a", 30.0)] * 3
    assert build_snapshot([node("a")], enough, CAT, 0)["requests"][0]["exec_ms"]["a"] == 50.0


def test_make_before_break_holds_stops_until_replacements_are_ready() -> None:
    desired = {"a": {}, "b": {"m": 1}}
    held = make_before_break(desired, {"a": {"m": 1}, "b": {}})
    assert held == {"a": {"m": 1}, "b": {"m": 1}}  # b not ready yet: a keeps its instance
    assert make_before_break(desired, {"a": {"m": 1}, "b": {"m": 1}}) == desired  # now the stop goes through
    assert make_before_break({"a": {}}, {"a": {"m": 2}}) == {"a": {}}  # nothing replaces it: stop


def test_parse_node_report_and_desired_sets() -> None:
    r = parse_node_report(
        {"node_id": "a", "mem_available_mb": 5, "mem_total_mb": 9, "compute": 100, "node_class": "orin",
         "instances": [{"model": "m", "running": True, "ready": True}, {"model": "m", "running": True, "ready": False},
                       {"model": "x", "running": False, "ready": False}]},
        {"models": {"m": {"requests_since_provisioned": 3}}},
    )  # fmt: skip
    assert r.instances == {"m": 2} and r.ready == {"m": 1} and r.usage["m"]["requests_since_provisioned"] == 3
    assert desired_sets({"a": {"m": 2, "x": 0}}, ["a", "b"]) == {"a": {"m": 2}, "b": {}}


def test_a_report_keeps_only_the_usage_the_snapshot_reads() -> None:
    """A member's /stats/models answer may name 200 models with 16 made-up keys each (as much as a peer answer holds):
    the leader keeps a report a round, then as the stale stand-in, and sends it to the worker every round. Only the
    three figures the snapshot reads stay (~40 KB held where the whole answer held ~560 KB), and the snapshot is the
    one the whole answer gives."""
    models: dict[str, dict[str, float]] = {
        f"{i:03d}" + "m" * 60: {f"{i:03d}{k:02d}" + "k" * 59: float(k) for k in range(16)} for i in range(200)
    }
    models["xor_mlp"] = {"requests_since_provisioned": 4, "last_request": 9.5, "provisioned_at": 1.0, "junk": 2.0}
    body = json.dumps({"node_id": "a", "models": models})
    base = {"node_id": "a", "mem_available_mb": 5, "mem_total_mb": 9, "compute": 100, "instances": []}
    assert len(body) < wire.MAX_BODY

    def held(parse: Any) -> tuple[Any, int]:
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        out = parse(wire.ModelStats.parse(json.loads(body)).to_json())  # the answer itself dropped after
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
        tracemalloc.stop()
        return out, grown

    report, kept = held(lambda stats: parse_node_report(base, stats))
    whole, all_kept = held(lambda stats: {str(m): dict(v) for m, v in stats["models"].items()})  # as before
    assert all(set(u) <= set(USAGE_KEYS) for u in report.usage.values()) and kept < 100_000 < 4 * 100_000 < all_kept
    assert report.usage["xor_mlp"] == {"requests_since_provisioned": 4, "last_request": 9.5, "provisioned_at": 1.0}
    everything = NodeReport("a", 5, 9, 100, "default", {}, whole)
    assert build_snapshot([report], [], CAT, 10.0) == build_snapshot([everything], [], CAT, 10.0)


def test_a_streams_rtt_to_each_node_is_the_newest_report_of_that_node() -> None:
    """Newest first, set once per node: a node missing from the newest record keeps its latest earlier report,
    in whatever order the window holds the records (the leader reads only a stream's newest records)."""
    rng = random.Random(7)
    for _ in range(200):
        recs = [rec("c", "xor_mlp", {n: float(rng.randrange(1, 99)) for n in "ab" if rng.random() < 0.6},
                    ts=float(rng.randrange(10))) for _ in range(rng.randrange(1, 6))]  # fmt: skip
        expect: dict[str, float] = {}
        for r in sorted(recs, key=lambda r: r.ts):  # the reference: every report in time order, the last one wins
            expect.update(r.rtt_ms)
        got = build_snapshot([node("a"), node("b")], recs, CAT, 10.0)["requests"][0]["rtt_ms"]
        assert got == {n: expect.get(n, 1.0) for n in "ab"}, recs


def test_a_row_stamped_ahead_of_now_is_no_newer_than_now() -> None:
    """The window keeps rows stamped up to max_ahead_s ahead (clock skew): such a row counts as stamped now, so it
    cannot outrank the stream's rows of now by its stamp; of rows at now, the later in the window is the newer."""
    ahead = rec("c", "xor_mlp", {"a": 60_000.0}, ts=159.0)
    at_now = rec("c", "xor_mlp", {"a": 3.0}, ts=100.0)
    assert build_snapshot([node("a")], [ahead, at_now], CAT, 100.0)["requests"][0]["rtt_ms"] == {"a": 3.0}
    assert build_snapshot([node("a")], [at_now, ahead], CAT, 100.0)["requests"][0]["rtt_ms"] == {"a": 60_000.0}
    older = rec("c", "xor_mlp", {"a": 5.0}, ts=99.0)
    assert build_snapshot([node("a")], [ahead, older], CAT, 100.0)["requests"][0]["rtt_ms"] == {"a": 60_000.0}


def test_a_plan_never_gives_out_memory_the_nodes_running_servers_are_promised() -> None:
    """Servers measuring less than their catalogue mem_mb leave more memory free than the catalogue says; a Mode 1
    plan that spent it would be refused by the node (agent.decisions.memory_refusal sums count x mem_mb)."""
    from agent.decisions import memory_refusal
    from solver.api import solve

    need = {m: s.mem_mb for m, s in CAT.models.items()}  # half_plus_two: 64 MB
    full = NodeReport("a", 250, 300, 100, "orin", {"half_plus_two": 4})  # 256 MB promised, 250 MB measured free
    snap = build_snapshot([full, NodeReport("b", 4000, 4000, 100, "orin", {})],
                          [rec(f"c{i}", "half_plus_two", {"a": 1, "b": 50}) for i in range(8)], CAT, 0)  # fmt: skip
    assert [n["mem_available_mb"] for n in snap["nodes"]] == [44, 4000]  # 300 - 4 x 64, not 250
    plan = solve(Snapshot.from_dict(snap), method="ipopt", mode="1")
    assert memory_refusal(plan.instances["a"], need, 300) is None
    assert dict(plan.instances["a"]) == {"half_plus_two": 4}  # no fifth: 320 MB of mem_mb on a 300 MB node
    over = NodeReport("o", 100, 100, 100, "orin", {"half_plus_two": 3})  # already past its total: nothing more
    assert build_snapshot([over], [], CAT, 0)["nodes"][0]["mem_available_mb"] == 0
