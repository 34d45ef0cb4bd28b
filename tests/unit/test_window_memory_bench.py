"""bench/window_memory_bench.py: its figures come from a real window and a real solver worker, and it prints JSON."""

from __future__ import annotations

import json

import pytest

from bench.window_memory_bench import main, measure_one


def test_it_measures_the_window_the_worker_and_the_round() -> None:
    figures = measure_one(2000, 1, 100)
    assert figures["records"] == 2000 and figures["window_heap_kib"] > 0
    assert figures["worker_rss_after_kib"] >= figures["worker_rss_before_kib"] > 0
    assert all(figures[k] > 0 for k in ("build_ms", "handoff_round_ms", "reset_encode_ms", "worker_round_ms"))
    assert figures["worker_round_cpu_ms"] >= 0  # clock ticks: a small round may take less than one


def test_it_prints_json_for_scripts(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--records", "300", "--reps", "1", "--new-per-round", "10", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["now"]["300"]["records"] == 300 and out["before"] is None
