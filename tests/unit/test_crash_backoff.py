"""The crash-restart backoff decision (pure, clock passed in) and its record file."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent import crash_backoff as cb
from agent.crash_backoff import Decision, StartRecord, decide


def test_a_crash_loop_backs_off_doubling_to_the_cap_then_a_healthy_run_resets() -> None:
    previous, now, delays = None, 1000.0, []
    for _ in range(12):  # every run crashes 1 s after it started, systemd restarts it 1 s later
        d = decide(previous, now)
        delays.append(d.delay_s)
        previous = StartRecord(now + d.delay_s, d.crashes)
        now += d.delay_s + 2
    assert delays == [0, 0, 0, 2, 4, 8, 16, 32, 60, 60, 60, 60]
    assert decide(previous, previous.started_at + cb.HEALTHY_S) == Decision(0, 0.0)  # ran long enough


def test_clean_exits_and_clock_jumps_never_delay() -> None:
    assert decide(None, 5.0) == Decision(0, 0.0)  # no record: clean exit, or first start
    assert decide(StartRecord(10_000.0, 50), 5.0) == Decision(0, 0.0)  # the clock moved back (no RTC)
    assert decide(StartRecord(0.0, cb.MAX_COUNT), 1.0) == Decision(cb.MAX_COUNT, cb.MAX_DELAY_S)  # bounded


def test_without_the_record_a_crash_loop_would_never_back_off() -> None:
    """The property switched off (each start forgets the last): the loop restarts at once forever."""
    assert {decide(None, t).delay_s for t in range(0, 40, 2)} == {0.0}


def test_before_start_sleeps_records_and_a_clean_exit_clears(tmp_path: Path) -> None:
    slept: list[float] = []
    for t in (100.0, 102.0, 104.0):
        cb.before_start(tmp_path, clock=lambda t=t: t, sleep=slept.append)  # type: ignore[misc]
    assert slept == []
    d = cb.before_start(tmp_path, clock=lambda: 106.0, sleep=slept.append)
    assert d == Decision(3, 2.0) and slept == [2.0]
    assert cb.read_record(tmp_path / cb.RECORD) == StartRecord(106.0, 3)
    cb.after_clean_exit(tmp_path)
    assert cb.before_start(tmp_path, clock=lambda: 108.0, sleep=slept.append) == Decision(0, 0.0)


@pytest.mark.parametrize(
    "text", ["{", "[]", '{"started_at": 1}', '{"started_at": "nan", "crashes": 1}', '{"started_at": 1, "crashes": -1}',
             '{"started_at": 1, "crashes": 1e9}',
             # review27b F1: OverflowError (int of inf, float of a 400-digit int) and RecursionError (nesting)
             # escaped and ended every start, for good
             '{"started_at": 1, "crashes": 1e999}', '{"started_at": 1' + "0" * 400 + ', "crashes": 1}',
             '{"started_at": ' + "[" * 100_000 + "]" * 100_000 + ', "crashes": 1}']
)  # fmt: skip
def test_a_bad_record_is_ignored_not_a_crash(tmp_path: Path, text: str) -> None:
    (tmp_path / cb.RECORD).write_text(text)
    assert cb.read_record(tmp_path / cb.RECORD) is None
