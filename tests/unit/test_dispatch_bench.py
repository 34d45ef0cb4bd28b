"""bench/dispatch_bench.py: every placement under the three dispatches, the ratios, and its two what-ifs."""

from __future__ import annotations

import json
import sys
from typing import Any

import pytest

import bench.dispatch_bench as bench
from bench.dispatch_bench import BASELINES, DISPATCHES, PLACES, WHAT_IFS, main, one_rate


def test_one_rate_simulates_every_placement_under_every_dispatch_and_the_ratios_follow() -> None:
    row = one_rate(2.0, "exp", 20.0)
    assert set(row["by"]) == set(DISPATCHES)
    requests = {o["requests"] for d in DISPATCHES for o in row["by"][d]["outcomes"].values()}
    assert len(requests) == 1  # the same arrivals everywhere
    best_any = min(row["by"][d]["outcomes"][b]["p99_ms"] for d in DISPATCHES for b in BASELINES)
    for d in DISPATCHES:
        outs = row["by"][d]["outcomes"]
        assert set(outs) == set(PLACES)
        assert row["by"][d]["ratio"] == pytest.approx(
            outs["queue-p99"]["p99_ms"] / min(outs[b]["p99_ms"] for b in BASELINES), rel=1e-3, abs=1e-3
        )
        assert row["by"][d]["ratio_any"] == pytest.approx(outs["queue-p99"]["p99_ms"] / best_any, rel=1e-3, abs=1e-3)
    agent = row["by"]["agent"]["outcomes"]["queue-p99"]
    weighted = row["by"]["weighted"]["outcomes"]
    assert weighted["queue-p99"]["requests"] == agent["requests"] and weighted["queue-p99"] != agent  # another rule
    # the what-ifs replace the rule, not the plan: same instances, other latencies
    for key in WHAT_IFS:
        assert row[key]["instances"] == agent["instances"] and row[key]["requests"] == agent["requests"]
    assert row["jsq"]["p99_ms"] != agent["p99_ms"]
    assert row["jsq"]["p99_ms"] < row["by"]["plan"]["outcomes"]["queue-p99"]["p99_ms"]


def test_json_output(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(
        sys, "argv", ["dispatch_bench.py", "--duration", "5", "--rates", "1", "--services", "det", "--json"]
    )
    main()
    data = json.loads(capsys.readouterr().out)
    assert len(data["rows"]) == 1 and data["rows"][0]["service"] == "det" and len(data["loadavg"]) == 3
    assert data["concurrency"] == data["rows"][0]["concurrency"] == 2  # the lab's default: its cores


def test_concurrency_one_is_the_lab_before(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """--concurrency 1: one request at a time per instance; the plain output says which."""
    argv = ["dispatch_bench.py", "--duration", "5", "--rates", "1", "--services", "det", "--concurrency", "1"]
    monkeypatch.setattr(sys, "argv", argv)
    rows: list[dict[str, Any]] = []  # the row main computed: one_rate(1.0, "det", 5.0, 1), not computed again here

    def kept(*args: Any) -> dict[str, Any]:
        rows.append(one_rate(*args))  # the bench's own, imported above
        return rows[-1]

    monkeypatch.setattr(bench, "one_rate", kept)
    main()
    out = capsys.readouterr().out
    assert "concurrency 1 (slots per instance: 1)" in out
    assert len(rows) == 1 and rows[0]["rate"] == 1.0 and rows[0]["service"] == "det" and rows[0]["concurrency"] == 1
    one, two = rows[0], one_rate(1.0, "det", 5.0, 2)
    instances = [r["by"]["agent"]["outcomes"]["queue-p99"]["instances"] for r in (one, two)]
    assert instances[1] < instances[0]  # two-slot instances: fewer of them for the same 60 req/s
