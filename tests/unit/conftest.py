"""Shared builders for solver tests, and which unit tests may run beside the serial tier (``cpu_only``)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from solver import Snapshot

# scripts/test.sh runs the unit tests marked ``cpu_only`` beside the serial tier at the lowest CPU priority (nice 19:
# they take only what the serial tests leave, ~70 % of two cores here), and the rest after it at normal priority. A
# module is cpu_only unless its source names anything that reads or waits on a clock (CPU time included), or talks to
# a socket, a thread, a process or a server (below): at low priority such a test is held off the CPU for whole
# seconds while its clock runs (a 300 B/s upload measured at 260 B/s, given up at the agent's 280; a CPU-time bound
# of 2 s met in 2.1). Deliberately broad: a module wrongly left out only runs later; one wrongly let in can flake.
CLOCKED = re.compile(
    r"time\.(sleep|monotonic|time|perf_counter|process_time|thread_time)|getrusage|asyncio\.|loop\.time"
    r"|socket|open_connection|create_connection|uvicorn|subprocess|threading|Thread|wait_for|httpx|Popen|signal\."
    r"|tests\.(service|cluster|system)|PeerServer|NodeAgent|TestClient|dockerd"
)
_CPU_ONLY: dict[Path, bool] = {}


def cpu_only(path: Path) -> bool:
    """Whether the test module at ``path`` only computes (``CLOCKED`` nowhere in its source)."""
    if path not in _CPU_ONLY:
        _CPU_ONLY[path] = CLOCKED.search(path.read_text()) is None
    return _CPU_ONLY[path]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if Path(item.path).parent == here and cpu_only(Path(item.path)):
            item.add_marker(pytest.mark.cpu_only)


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
