"""Shared builders for solver tests, and the traffic rule's guard for the whole unit tier (tests/no_traffic.py)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from solver import Snapshot
from tests.no_traffic import Guard

GUARD = Guard()


@pytest.fixture(scope="session", autouse=True)
def loopback_only() -> Iterator[Guard]:
    """Every unit test connects to loopback only (a connect elsewhere raises OffMachine at once)."""
    with GUARD.active():
        yield GUARD


@pytest.fixture(autouse=True)
def no_traffic_off_machine(loopback_only: Guard) -> Iterator[None]:
    """A test that tried to connect off this machine fails, even where its code swallowed the OSError."""
    before = loopback_only.count
    yield
    if loopback_only.count > before:
        pytest.fail(f"tried to connect off this machine {loopback_only.count - before} time(s): {loopback_only.tried}")


def make_snapshot(
    nodes: list[dict[str, Any]], models: list[dict[str, Any]], requests: list[dict[str, Any]], **extra: Any
) -> Snapshot:
    return Snapshot.from_dict({"nodes": nodes, "models": models, "requests": requests, **extra})


def request(model: str, rtt: dict[str, float], exe: dict[str, float] | None = None) -> dict[str, Any]:
    return {"model": model, "rtt_ms": rtt, "exec_ms": exe or {k: 0.0 for k in rtt}}


@pytest.fixture
def example_dict() -> dict[str, Any]:
    """The snapshot from the `peerserve solve` documentation."""
    return {
        "nodes": [
            {
                "id": "n1",
                "mem_available_mb": 900,
                "mem_total_mb": 4096,
                "compute": 100,
                "instances": {"m1": 1},
            }
        ],
        "models": [{"name": "m1", "mem_mb": 300, "compute": 10}],
        "requests": [{"model": "m1", "rtt_ms": {"n1": 2.0}, "exec_ms": {"n1": 40.0}}],
    }
