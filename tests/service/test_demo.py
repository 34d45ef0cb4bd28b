"""`peerserve demo` end to end: the README's main job, short."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

# scripts/test.sh runs it with nothing else: a failover within 3 s
pytestmark = pytest.mark.serial


def test_demo_runs_fails_over_and_loses_no_request_outside_the_window() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "peerserve", "demo", "--nodes", "3", "--duration", "16", "--json"],
        capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    summary = json.loads(out.stdout)
    for key in ("leader_before", "leader_after", "failover_ms", "requests_ok", "requests_failed", "placements"):
        assert key in summary
    assert summary["leader_after"] != summary["leader_before"]
    assert summary["failover_ms"] < 3000
    assert summary["requests_ok"] > 50
    assert summary["failed_outside_failover_window"] == 0
    assert summary["placements"] and summary["placements"][-1]["term"] > summary["placements"][0]["term"]
