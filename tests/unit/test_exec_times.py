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


def test_one_source_holds_under_half_of_the_window_and_pushes_no_other_out() -> None:
    """review14a F3: one client sending most of the last 16 requests (heavy or trivial inputs) set the median for
    everyone. Its new sample now replaces its own oldest: it holds at most SOURCE_SHARE (7 of 16)."""
    times = ExecTimes(samples=16, max_keys=8)
    for i in range(12):
        times.record("n1", "m", 50.0 + i % 3, source=f"10.0.0.{i % 4}")  # four honest clients, ~50 ms
    for _ in range(100):
        times.record("n1", "m", 0.2, source="10.0.0.66")  # one client's trivial inputs, as fast as it can
    assert times.get(("n1", "m")) is not None and 50.0 <= times.get(("n1", "m")) <= 52.0  # type: ignore[operator]
    for _ in range(100):
        times.record("n1", "m", 4000.0, source="10.0.0.66")  # or heavy ones
    assert 50.0 <= times.get(("n1", "m")) <= 52.0  # type: ignore[operator]
    lone = ExecTimes(samples=16, max_keys=8, share=7)
    for ms in [1.0] * 20 + [4000.0] * 3:
        lone.record("n1", "m", ms, source="a")
    assert lone.get(("n1", "m")) == 1.0  # a lone client: the median of its own last 7, 3 outliers move it not
    for _ in range(4):
        lone.record("n1", "m", 50.0, source="a")
    assert lone.get(("n1", "m")) == 50.0  # a real slowdown shows once most of them say so
