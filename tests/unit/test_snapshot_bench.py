"""bench/snapshot_bench.py: its window is the shape it says and its timings are of real builds."""

from __future__ import annotations

import pytest

from bench.snapshot_bench import CLIENTS, NODES, main, measure, window


def test_the_window_has_the_records_clients_and_nodes_it_says() -> None:
    records = window(500)
    assert len(records) == 500
    assert {r.client for r in records} <= {f"c{c}" for c in range(CLIENTS)}
    assert all(len(r.rtt_ms) == NODES and r.latency_ms is not None for r in records)


def test_it_times_each_size(capsys: pytest.CaptureFixture[str]) -> None:
    figures = measure([50, 200], 1, "queue")
    assert set(figures) == {"50", "200"} and all(ms > 0 for ms in figures.values())
    assert main(["--records", "100", "--reps", "1", "--json"]) == 0
    assert '"now_ms": {"100":' in capsys.readouterr().out


def test_it_times_the_hand_off_to_the_solver_worker(capsys: pytest.CaptureFixture[str]) -> None:
    from bench.snapshot_bench import handoff

    figures = handoff([300], 1, 50)
    assert figures["300"]["round_ms"] > 0 and figures["300"]["reset_ms"] > 0
    assert main(["--records", "100", "--reps", "1", "--new-per-round", "10"]) == 0
    assert "reset (a new worker only)" in capsys.readouterr().out


def test_it_times_the_event_loop_while_a_round_is_solved() -> None:
    from bench.snapshot_bench import loop_lag

    figures = loop_lag([300], 1)
    assert set(figures["300"]) == {"worker_ms", "thread_ms"} and all(v >= -1 for v in figures["300"].values())


def test_each_clients_records_are_logged_by_the_agents_it_says(capsys: pytest.CaptureFixture[str]) -> None:
    """``--loggers``: at 1 each client has one logger, at k its records are spread over k agents (every one used,
    the window otherwise unchanged); the table has a row per size and count with the ratio to the first count's."""
    from bench.snapshot_bench import logged_window, measure_loggers

    for k in (1, 3):
        records = logged_window(3000, k)
        assert [(r.ts, r.client, r.rtt_ms) for r in records] == [(r.ts, r.client, r.rtt_ms) for r in window(3000)]
        loggers: dict[str, set[str | None]] = {}
        for r in records:
            loggers.setdefault(r.client, set()).add(r.logged_by)
        assert max(map(len, loggers.values())) == k and all(len(v) <= k for v in loggers.values())
    figures = measure_loggers([200], 1, "queue", [1, 2])
    assert set(figures) == {"200/1", "200/2"} and all(ms > 0 for ms in figures.values())
    assert main(["--records", "200", "--reps", "1", "--loggers", "1,2"]) == 0
    out = capsys.readouterr().out
    assert "logged by k agents" in out and "    200        2 " in out and "1.00x" in out
