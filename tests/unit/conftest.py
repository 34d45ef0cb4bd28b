"""Shared builders for solver tests."""

from __future__ import annotations

from typing import Any

import pytest

from solver import Snapshot


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
