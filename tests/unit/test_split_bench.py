"""bench/split_bench.py on a few overloaded clusters (the figures themselves are the bench's, not asserted)."""

from __future__ import annotations

import json
from typing import Any

from bench import split_bench


def test_the_bench_reports_every_plan_and_its_checks(capsys: Any) -> None:
    assert split_bench.main(["--seeds", "14", "--loads", "1.0", "--thesis-seeds", "0", "--reps", "1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    over = out["summary"]["over"]
    assert over["plans"] == 14 and over["passes"] == 14 and over["same_counts"] == 14
    assert over["kept"] >= 1 and over["gain_max"] > 1.1  # seed 13 at its rate: 1.19x
    assert over["mean_after_ms"] <= over["mean_before_ms"]
    assert all(r["after_ms"] <= r["before_ms"] for r in out["rows"]["over"])
