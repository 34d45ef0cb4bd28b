"""Crash-restart backoff that works on any systemd: the agent delays its own start after repeated crashes.

systemd >= 254 grows the restart delay itself (RestartSteps); Debian 12 (252) and JetPack 6 (249) restart a
crashing agent every second forever. So at start the agent reads ``DATA_DIR/crash.json``, a record of its
previous start that a clean exit removes: a record still there means that run ended uncleanly; if it had
run under ``HEALTHY_S`` it counts as one more crash in a row, otherwise the count starts again. From the
``FREE_CRASHES``-th crash in a row on, the start waits 2, 4, 8, ... up to ``MAX_DELAY_S`` seconds.

    decide(previous, now) -> Decision     pure: the crash count and the delay for this start
    before_start(data_dir), marking_clean_exit(lifespan, data_dir)   carry it out (sleep, write, remove)
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

HEALTHY_S = 60.0  # a run at least this long resets the count
FREE_CRASHES = 3  # crashes in a row restarted at once (systemd's RestartSec only)
MAX_DELAY_S = 60.0
MAX_COUNT = 1000  # the stored count is bounded
RECORD = "crash.json"


@dataclass(frozen=True)
class StartRecord:
    """One start of the agent: when it began (wall clock, after any delay) and the crashes in a row before it."""

    started_at: float
    crashes: int


@dataclass(frozen=True)
class Decision:
    """What this start does: the crashes in a row so far and how long to wait before serving."""

    crashes: int
    delay_s: float


def delay_for(crashes: int) -> float:
    """0 s for the first FREE_CRASHES - 1 crashes in a row, then 2, 4, 8, ... capped at MAX_DELAY_S."""
    if crashes < FREE_CRASHES:
        return 0.0
    return min(MAX_DELAY_S, 2.0 ** min(crashes - FREE_CRASHES + 1, 16))


def decide(previous: StartRecord | None, now: float) -> Decision:
    """``previous`` is the record left by the last start (None: it exited cleanly, or never ran)."""
    if previous is None:
        return Decision(0, 0.0)
    ran = now - previous.started_at
    if not 0 <= ran < HEALTHY_S:  # a healthy run, or the clock moved back (no RTC): start again from 0
        return Decision(0, 0.0)
    crashes = min(MAX_COUNT, previous.crashes + 1)
    return Decision(crashes, delay_for(crashes))


def read_record(path: Path) -> StartRecord | None:
    """The record at ``path``; None when there is none, or it is unreadable (then logged)."""
    try:
        raw = json.loads(path.read_text())
        record = StartRecord(float(raw["started_at"]), int(raw["crashes"]))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError, KeyError, OverflowError, RecursionError) as exc:
        # OverflowError: int() of a count of 1e999 (inf); RecursionError: json.loads of deeply nested arrays. Both
        # escaped and ended every start, for good (review27b F1)
        log.warning("ignoring unreadable crash record %s: %r", path, exc)
        return None
    if not math.isfinite(record.started_at) or not 0 <= record.crashes <= MAX_COUNT:
        log.warning("ignoring out-of-range crash record %s", path)
        return None
    return record


def before_start(
    data_dir: Path, clock: Callable[[], float] = time.time, sleep: Callable[[float], None] = time.sleep
) -> Decision:
    """Wait as ``decide`` says, then record this start (a clean exit removes the record)."""
    path = data_dir / RECORD
    decision = decide(read_record(path), clock())
    if decision.delay_s > 0:
        log.warning("crash backoff: %d unclean exits in a row, each within %.0f s of its start; waiting %.0f s "
                    "before starting", decision.crashes, HEALTHY_S, decision.delay_s)  # fmt: skip
        sleep(decision.delay_s)
    data_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"started_at": clock(), "crashes": decision.crashes}))
    os.replace(tmp, path)
    return decision


def after_clean_exit(data_dir: Path) -> None:
    """The run ended cleanly: the next start is not a crash restart."""
    (data_dir / RECORD).unlink(missing_ok=True)


def marking_clean_exit(lifespan: Callable[[Any], Any], data_dir: Path) -> Callable[[Any], Any]:
    """``lifespan`` that also removes the record once its shutdown completed (uvicorn re-raises the stop
    signal after serving, so code after ``Server.run()`` never runs on SIGTERM)."""

    @contextlib.asynccontextmanager
    async def wrapped(app: Any) -> AsyncIterator[None]:
        async with lifespan(app):
            yield
        after_clean_exit(data_dir)

    return wrapped
