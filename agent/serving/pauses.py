"""The process's garbage-collector pauses: tracked (for Server-Timing) and kept short (the startup heap frozen).

A full collection scans every tracked object; an agent holds ~70,000 after its imports (FastAPI, pydantic,
httpx, cryptography...), so each full collection stopped its event loop for ~40-100 ms on this 2-core machine,
and every request in flight through that agent waited (the load bench's tail). ``freeze_startup_heap()``
moves what exists after start-up into the permanent generation (``gc.freeze``), so later collections scan
only what was allocated since: ~0 ms for the same heap. ``install()`` times every collection;
``paused_ms()`` is the running total, so a request's ``gc`` time is the difference between its end and start.

``full_collection_cpu_s()`` is the CPU time full collections took in the calling thread: the parse budgets
(agent/http_sliced.py) charge a step its thread time less what a full collection took inside it. A full
collection scans the whole heap (0.25-0.3 s in a test process, seen): that is the process's cost, not the
address whose step it happened to land in (at a 10 % share it was starved for ~3 s). The young generations'
collections are charged as before: they scan what was allocated lately, in proportion to the step's own work.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)


@dataclass
class _Pauses:
    total_ms: float = 0.0
    full: int = 0  # full (generation 2) collections
    longest_ms: float = 0.0
    started: float | None = None


_state = _Pauses()
_lock = threading.Lock()
_thread = threading.local()  # per thread: ``full_cpu_s`` (its full collections' CPU) and ``full_started``


def _on_gc(phase: str, info: dict[str, Any]) -> None:
    full = info.get("generation") == 2
    if phase == "start":
        _state.started = time.perf_counter()
        if full:
            _thread.full_started = time.thread_time()
        return
    if full and (cpu_started := getattr(_thread, "full_started", None)) is not None:
        _thread.full_started = None
        _thread.full_cpu_s = getattr(_thread, "full_cpu_s", 0.0) + time.thread_time() - cpu_started
    if _state.started is None:
        return
    ms = 1000 * (time.perf_counter() - _state.started)
    _state.started = None
    _state.total_ms += ms
    _state.longest_ms = max(_state.longest_ms, ms)
    if info.get("generation") == 2:
        _state.full += 1


def install() -> None:
    """Time every collection in this process from now on (idempotent; cheap once installed: every connection of
    the sliced protocol calls it)."""
    if _on_gc in gc.callbacks:
        return
    with _lock:
        if _on_gc not in gc.callbacks:
            gc.callbacks.append(_on_gc)


def paused_ms() -> float:
    """Milliseconds this process has spent in the garbage collector since ``install()``."""
    return _state.total_ms


def full_collection_cpu_s() -> float:
    """CPU seconds the calling thread has spent in full (generation 2) collections since ``install()``: a
    collection runs in whichever thread allocated past the threshold, and only this thread's count in its
    ``time.thread_time()``."""
    return float(getattr(_thread, "full_cpu_s", 0.0))


def stats() -> dict[str, float]:
    """Totals since ``install()``: pause ms, full collections, the longest pause (ms)."""
    return {"paused_ms": round(_state.total_ms, 3), "full": _state.full, "longest_ms": round(_state.longest_ms, 3)}


def freeze_startup_heap() -> int:
    """Collect once, then exclude every object that exists now from later collections; returns how many."""
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    log.debug("froze %d start-up objects out of the garbage collector's scans", frozen)
    return frozen
