"""The cluster tier: real agents in network namespaces with real multicast mDNS (root only)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from scripts.testbed import Failures, TestBed, available


@pytest.fixture
def bed(tmp_path: Path) -> Iterator[Callable[[int], TestBed]]:
    """Factory: bed(n) brings up n hosts (no agents yet); everything is torn down after the test."""
    reason = available()
    if reason:
        if os.environ.get("PEERSERVE_REQUIRE_DOCKER") == "1":
            pytest.fail(f"the cluster tier must run here but cannot: {reason}")
        pytest.skip(reason)
    beds: list[TestBed] = []

    def make(n: int) -> TestBed:
        b = TestBed(n, tmp_path)
        beds.append(b)
        return b.up()

    yield make
    failures = Failures()  # every bed is torn down even when one's teardown fails; then each failure is named
    for i, b in enumerate(beds):
        with failures.step(f"bed {i}"):
            b.teardown()
    failures.raise_any("the cluster beds' teardown")
