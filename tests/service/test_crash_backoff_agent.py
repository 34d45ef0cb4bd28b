"""Crash-restart backoff on a real agent process: repeated kill -9 delays the next start; a clean stop resets."""

from __future__ import annotations

import signal
import time
from typing import Any

from agent.crash_backoff import RECORD, delay_for, read_record


def crashes_recorded(a: Any) -> int:
    record = read_record(a.data_dir / RECORD)
    assert record is not None
    return record.crashes


def test_a_crash_looping_agent_waits_before_starting_and_a_clean_stop_resets(agents: Any) -> None:
    a = agents("a", "--no-discovery")
    quick = []
    for crashes in (1, 2, 3):  # each run killed right after it is healthy, as a crash loop would
        assert a.stop(signal.SIGKILL) == -signal.SIGKILL
        began = time.monotonic()
        a.start()
        quick.append(time.monotonic() - began)
        assert crashes_recorded(a) == crashes
    print("kill -9 to healthy, crashes 1-3 in a row:", ", ".join(f"{q:.1f} s" for q in quick))
    assert delay_for(3) == 2.0
    assert quick[2] >= 2.0  # the third crash in a row: 2 s of backoff before the agent serves
    assert "crash backoff: 3 unclean exits in a row" in a.log.read_text()
    a.stop(signal.SIGTERM)  # systemd's stop, or an operator's
    assert not (a.data_dir / RECORD).exists()  # a clean exit leaves no record
    a.start()
    assert crashes_recorded(a) == 0  # so this start was not a crash restart
    assert a.log.read_text().count("crash backoff:") == 1


def test_no_crash_backoff_starts_at_once_and_keeps_no_record(agents: Any) -> None:
    b = agents("b", "--no-discovery", "--no-crash-backoff")
    for _ in range(3):
        b.stop(signal.SIGKILL)
        b.start()
    assert "crash backoff:" not in b.log.read_text()
    assert not (b.data_dir / RECORD).exists()
