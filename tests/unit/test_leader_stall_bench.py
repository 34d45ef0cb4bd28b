"""bench/leader_stall_bench.py's pure parts: the request log it fills is real and in the window; its percentiles."""

from __future__ import annotations

import math
import time
from pathlib import Path

from agent.store import Store
from bench.leader_stall_bench import CLIENTS, MODEL, NODE, OTHER_NODES, fill_log, percentiles


def test_the_log_holds_the_records_it_says_within_the_window(tmp_path: Path) -> None:
    fill_log(tmp_path, 400, 600.0)
    store = Store(tmp_path)
    try:
        records, _cursor = store.requests_since(0, 1000)
    finally:
        store.close()
    assert len(records) == 400
    now = time.time()
    assert all(now - 300.0 - 5 <= r.ts <= now and r.model == MODEL and r.node == NODE for r in records)
    assert all(len(r.rtts) == OTHER_NODES + 1 for r in records)
    assert {r.client for r in records} <= {f"c{c}" for c in range(CLIENTS)}


def test_percentiles() -> None:
    figures = percentiles([float(i) for i in range(1, 101)])
    assert figures["p50_ms"] == 50.5 and figures["max_ms"] == 100.0 and 99 <= figures["p99_ms"] <= 100
    assert math.isnan(percentiles([1.0])["p99_ms"])
