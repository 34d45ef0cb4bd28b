"""agent/serving/pauses.py: collections are timed, and the frozen start-up heap is left out of them."""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Iterator

import pytest

from agent.serving import pauses


@pytest.fixture
def unfrozen() -> Iterator[None]:
    yield
    gc.unfreeze()  # the rest of the test session collects as usual


def test_collections_are_timed_and_counted() -> None:
    pauses.install()
    pauses.install()  # idempotent: one callback
    assert gc.callbacks.count(pauses._on_gc) == 1
    before, full = pauses.paused_ms(), pauses.stats()["full"]
    gc.collect()
    assert pauses.paused_ms() > before and pauses.stats()["full"] == full + 1
    assert pauses.stats()["longest_ms"] > 0


def test_the_startup_heap_is_frozen_out_of_full_collections(unfrozen: None) -> None:
    assert gc.get_freeze_count() == 0
    scanned_before = len(gc.get_objects())  # what a full collection scans now
    frozen = pauses.freeze_startup_heap()
    assert frozen >= scanned_before * 0.9 and gc.get_freeze_count() == frozen
    assert len(gc.get_objects()) < scanned_before / 10  # a full collection now scans only what came after
    gc.unfreeze()  # switched off: everything is scanned again
    assert len(gc.get_objects()) >= frozen


def test_full_collections_cpu_is_counted_in_the_thread_that_ran_them() -> None:
    """What the parse budgets leave out of a step (agent/http_sliced.py ``step_cpu``): the CPU of the full
    collections that ran in the step's thread. A young collection is the step's own allocations (still charged);
    a full one in another thread is not in this thread's ``thread_time`` (never subtracted from it)."""
    pauses.install()
    heap = [[] for _ in range(300_000)]  # something for a full collection to scan
    before = pauses.full_collection_cpu_s()
    started = time.thread_time()
    gc.collect()
    took = time.thread_time() - started
    counted = pauses.full_collection_cpu_s() - before
    assert 0.9 * took - 0.001 <= counted <= took, (counted, took)
    assert counted > 0.002, counted  # (300,000 lists: ~20 ms here)
    before = pauses.full_collection_cpu_s()
    gc.collect(0)
    gc.collect(1)
    assert pauses.full_collection_cpu_s() == before  # the young generations are charged as before
    theirs: list[float] = []

    def collect_there() -> None:
        gc.collect()
        theirs.append(pauses.full_collection_cpu_s())

    there = threading.Thread(target=collect_there)
    there.start()
    there.join()
    assert theirs[0] > 0.002 and pauses.full_collection_cpu_s() == before  # counted there, not here
    del heap
