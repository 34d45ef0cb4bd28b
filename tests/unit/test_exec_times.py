"""The endpoint ranking's measured execution time (agent/serving/exec_times.py): robust and bounded."""

from __future__ import annotations

from agent.serving.exec_times import ExecTimes


def test_measured_exec_time_is_a_median_one_outlier_cannot_move() -> None:
    times = ExecTimes(samples=16, max_keys=3)
    for _ in range(20):
        times.record("n1", "m", 1.0)
    times.record("n1", "m", 4000.0)  # one client's huge request
    assert times.get(("n1", "m")) == 1.0
    for _ in range(9):
        times.record("n1", "m", 50.0)  # the server really got slower: most recent requests say so
    assert times.get(("n1", "m")) == 50.0
    for n in range(5):
        times.record(f"x{n}", "m", 1.0)
    assert len(times) == 3 and times.get(("n1", "m")) is None  # bounded: the oldest-updated key went
