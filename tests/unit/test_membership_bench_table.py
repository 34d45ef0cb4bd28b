"""bench/membership_bench.py's pure parts: the same-run CPU ratios and the table with the bed mode's label (the
live runs start real agents: a bench, run by hand; the bed mode as root under the netns lock)."""

from __future__ import annotations

import json
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.membership_bench import main, with_ratios


@pytest.fixture(autouse=True)
def _signal_handlers_given_back() -> Iterator[None]:
    """main() sets the process's SIGTERM and SIGINT handlers (a bench run's teardown on a timeout): the test process
    gets its own back. Left set, the unit tier's pytest turned a later SIGTERM (a ``timeout`` wrapper's) into a
    SystemExit in whichever test ran then, which failed, and the run went on instead of ending."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)
    assert all(signal.getsignal(sig) is handler for sig, handler in saved.items())


def row(n: int, cpu: float, **extra: Any) -> dict[str, Any]:
    return {"n": n, "leader": "n0", "converge_s": 1.0 + n / 10, "follower_cpu": cpu, "follower_cpu_max": cpu,
            "leader_cpu": 2 * cpu, "follower_rss_mb": 81.0, "follower_rss_max_mb": 82.0, "sent_per_s": 7.5,
            "received_per_s": 10.0, "opened_per_s": 0.02, "detect_p50_s": 0.9, "detect_p99_s": 1.1,
            "join_max_s": 0.1, "load_avg_1m": 1.2, **extra}  # fmt: skip


def test_ratios_are_to_the_smallest_size_that_did_not_fail() -> None:
    figures = with_ratios({"now": [{"n": 5, "failed": "x", "load_avg_1m": 1.0}, row(10, 0.02), row(25, 0.03)]})
    assert [r.get("cpu_ratio_to_smallest") for r in figures["now"]] == [None, 1.0, pytest.approx(1.5)]


def test_bed_rows_print_in_the_loopback_table_with_their_label(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    bed = "bed (mDNS)"
    figures = with_ratios({"now": [row(5, 0.016, mode=bed), row(10, 0.02, mode=bed)], "before": [], "mode": bed})
    saved = tmp_path / "bed.json"
    saved.write_text(json.dumps(figures))
    monkeypatch.setattr(sys, "argv", ["membership_bench.py", "--from-json", str(saved)])
    main()
    out = capsys.readouterr().out
    assert out.startswith("membership, bed (mDNS):")
    assert "| 5, bed (mDNS) | 0.0160 | 1.00 | 0.0320 | 81 / 82 MiB |" in out
    assert "| 10, bed (mDNS) | 0.0200 | 1.25 |" in out
    assert "5 agents 1.5 s, 10 agents 2.0 s" in out  # convergence per size
    assert "follower CPU at 10 / at 5 agents = 1.25 (<= 1.5)" in out


def test_loopback_rows_keep_their_plain_size_cell(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    saved = tmp_path / "loop.json"
    saved.write_text(json.dumps(with_ratios({"now": [row(5, 0.01)], "before": []})))
    monkeypatch.setattr(sys, "argv", ["membership_bench.py", "--from-json", str(saved)])
    main()
    out = capsys.readouterr().out
    assert out.startswith("membership, loopback:") and "| 5 | 0.0100 | 1.00 |" in out
