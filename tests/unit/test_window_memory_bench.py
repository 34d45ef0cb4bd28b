"""bench/window_memory_bench.py: its figures come from a real window and a real solver worker, and it prints JSON."""

from __future__ import annotations

import json

import pytest

from agent.packed_records import MAX_ROW_BYTES, pack_record
from agent.request_window import MAX_WINDOW_BYTES
from bench.window_memory_bench import main, maximal_record, measure_one, measure_worst
from peerserve import wire


def test_it_measures_the_window_the_worker_and_the_round() -> None:
    figures = measure_one(2000, 1, 100)
    assert figures["records"] == 2000 and figures["window_heap_kib"] > 0
    assert figures["worker_rss_after_kib"] >= figures["worker_rss_before_kib"] > 0
    assert all(figures[k] > 0 for k in ("build_ms", "handoff_round_ms", "reset_encode_ms", "worker_round_ms"))
    assert figures["worker_round_cpu_ms"] >= 0  # clock ticks: a small round may take less than one


def test_it_prints_json_for_scripts(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--records", "300", "--reps", "1", "--new-per-round", "10", "--worst", "40", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["now"]["300"]["records"] == 300 and out["before"] is None
    assert out["now"]["worst"]["worst_records"] == 40  # 40 maximal rows: well within the budget


def test_the_worst_case_offers_rows_a_peer_may_send_that_the_budget_holds_back() -> None:
    r = maximal_record(1000.0)
    raw = {"id": 1, "ts": r.ts, "model": r.model, "client": r.client, "rtt_ms": dict(r.rtt_ms), "node": r.node,
           "latency_ms": r.latency_ms, "status": r.status}  # fmt: skip
    assert wire.RequestRow.parse(raw).client == r.client  # within the wire's bounds
    assert 0.97 * MAX_ROW_BYTES < len(pack_record(r)) <= MAX_ROW_BYTES  # and just under the row limit
    figures = measure_worst(2500, 1, 10)  # ~19 MiB offered
    assert 2000 < figures["worst_records"] < 2500 and figures["worst_window_kib"] * 1024 <= MAX_WINDOW_BYTES
    assert figures["worst_worker_rss_after_kib"] > figures["worst_worker_rss_before_kib"] > 0
