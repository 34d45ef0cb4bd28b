"""A model asked once or twice a window still gets one instance (solver.queue_repair's sliver rule).

Regression: the rule that drops pools under ``SLIVER`` of one instance's load (against the relaxation's
``N_MIN`` floor) also dropped the only pool of a stream that rare, and step 5 then refused to open an
instance for it: with the shipped catalogue's 500 req/s per instance, a model asked 1-2 times in a 600 s
window was rejected under the queue objective, in Mode 2 and in Mode 1 with an instance already running.
"""

from __future__ import annotations

import pytest

from solver import Snapshot
from solver.api import solve

WINDOW_S = 600.0


def one_stream(tput: float, rate: float, running: int = 0) -> Snapshot:
    """One 2-core node, one 100 MB model of ``tput`` req/s per instance (``running`` of them), one stream."""
    node = {"id": "n0", "mem_available_mb": 2048.0, "mem_total_mb": 2048.0, "compute": 100.0, "cores": 2.0}
    return Snapshot.from_dict(
        {
            "nodes": [{**node, "instances": {"m0": running} if running else {}}],
            "models": [{"name": "m0", "mem_mb": 100.0, "compute": 1.0, "throughput_rps": {"default": tput}}],
            "requests": [{"model": "m0", "client": "c", "rate": rate, "rtt_ms": {"n0": 5.0}, "exec_ms": {"n0": 0.1}}],
        }
    )


def assert_placed(snap: Snapshot, mode: str, objective: str) -> None:
    plan = solve(snap, mode=mode, objective=objective).to_dict()
    assert plan["rejected"] == [], plan["rejected"]
    assert plan["instances"]["n0"] == {"m0": 1}
    assert plan["shares"][0]["n0"] == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize("objective", ["queue", "queue-p99"])
@pytest.mark.parametrize("asked", [1, 2])
def test_a_model_asked_once_or_twice_a_window_gets_one_instance(asked: int, objective: str) -> None:
    assert_placed(one_stream(500.0, asked / WINDOW_S), "2", objective)


@pytest.mark.parametrize("objective", ["queue", "queue-p99"])
@pytest.mark.parametrize("asked", [1, 2])
def test_mode1_a_rare_stream_uses_the_running_instance(asked: int, objective: str) -> None:
    assert_placed(one_stream(500.0, asked / WINDOW_S, running=1), "1", objective)


@pytest.mark.parametrize("objective", ["queue", "queue-p99"])
@pytest.mark.parametrize(("tput", "rate"), [(1e4, 0.05), (1e9, 100.0), (100.0, 0.0005)])
def test_a_fast_model_with_little_traffic_is_placed(tput: float, rate: float, objective: str) -> None:
    assert_placed(one_stream(tput, rate), "2", objective)


def test_streams_of_rate_zero_beside_running_instances_get_a_plan() -> None:
    """Found by the reviewer's sweep: Mode 2, running instances reported, streams of rate 0; Ipopt's bound
    relaxation left ~1e-10 req/s of them on pools, and the plan divided by their rate of 0."""
    nodes = [
        {
            "id": "n0",
            "mem_available_mb": 150.0,
            "mem_total_mb": 2048.0,
            "compute": 1.0,
            "instances": {"m0": 1},
            "cores": 1.0,
        },
        {"id": "n1", "mem_available_mb": 150.0, "mem_total_mb": 2048.0, "compute": 1.0, "instances": {"m0": 1}},
        {"id": "n2", "mem_available_mb": 300.0, "mem_total_mb": 2048.0, "compute": 100.0, "cores": 1 / 64},
    ]
    rtt = (
        (89.9, 8.7, 67.9),
        (28.0, 84.2, 90.5),
        (39.4, 36.0, 94.1),
        (86.0, 87.3, 67.7),
        (43.7, 92.2, 9.5),
        (36.6, 90.8, 28.5),
    )
    reqs = [
        {"model": "m0", "client": f"c{i}", "rate": rate, "rtt_ms": dict(zip(("n0", "n1", "n2"), ms, strict=True)),
         "exec_ms": dict.fromkeys(("n0", "n1", "n2"), 2.0)}
        for i, (rate, ms) in enumerate(zip((0.0, 0.0, 1.0, 1.0, 80.0, 0.0), rtt, strict=True))
    ]  # fmt: skip
    model = {"name": "m0", "mem_mb": 100.0, "compute": 1.0, "throughput_rps": {"default": 5000.0}}
    snap = Snapshot.from_dict({"nodes": nodes, "models": [model], "requests": reqs})
    for objective in ("queue", "queue-p99"):
        plan = solve(snap, mode="2", objective=objective).to_dict()
        assert [plan["shares"][i] for i in (0, 1, 5)] == [{}, {}, {}]
        assert sum(plan["shares"][4].values()) == pytest.approx(1.0, abs=1e-4)  # the 80 req/s stream is served
