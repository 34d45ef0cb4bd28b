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


def test_a_busy_source_gives_way_first_and_cannot_set_the_median_for_the_others() -> None:
    """review14a F3: one client sending most of the last 16 requests (heavy or trivial inputs) set the median for
    everyone. At a full window the busiest source's oldest sample makes room, not the oldest of all."""
    times = ExecTimes(samples=16, max_keys=8)
    for i in range(12):
        times.record("n1", "m", 50.0 + i % 3, source=f"10.0.0.{i % 3}", now=float(i))  # three honest clients
    for t in range(100):
        times.record("n1", "m", 0.2, source="10.0.0.66", now=20.0 + t)  # one client's trivial inputs, flat out
    assert 50.0 <= times.get(("n1", "m")) <= 52.0  # type: ignore[operator]
    for t in range(100):
        times.record("n1", "m", 4000.0, source="10.0.0.66", now=200.0 + t)  # or heavy ones
    assert 50.0 <= times.get(("n1", "m")) <= 52.0  # type: ignore[operator]
    times.record("n1", "m", 4000.0, source="10.0.0.66", now=200.0 + 300.0 + 12.0)  # the honest ones went quiet
    assert times.get(("n1", "m")) == 4000.0  # their samples lapsed (MAX_AGE_S): a node's figure follows its use


def test_a_lone_source_keeps_the_plain_window() -> None:
    """One client (the usual board-side app): the last 16 as they came, the rule the workload simulation replays."""
    lone = ExecTimes(samples=16, max_keys=8)
    for ms in [1.0] * 20 + [4000.0] * 7:
        lone.record("n1", "m", ms, source="a", now=0.0)
    assert lone.get(("n1", "m")) == 1.0  # 7 of 16 outliers move it not
    for _ in range(2):
        lone.record("n1", "m", 50.0, source="a", now=0.0)
    assert lone.get(("n1", "m")) == 50.0  # 7 fast, 9 slower: the median moves with most of the window
