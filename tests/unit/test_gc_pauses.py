"""agent/serving/pauses.py: collections are timed, and the frozen start-up heap is left out of them."""

from __future__ import annotations

import gc
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
