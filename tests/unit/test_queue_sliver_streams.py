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
