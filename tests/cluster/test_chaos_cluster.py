"""A short seeded chaos soak on the namespace test bed, run through the real `peerserve chaos` command."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from scripts.testbed import available

pytestmark = pytest.mark.cluster

SEED = 19
DURATION_S = 60


def test_seeded_soak_finds_no_violation() -> None:
    reason = available()
    if reason:
        if os.environ.get("PEERSERVE_REQUIRE_DOCKER") == "1":
            pytest.fail(f"the cluster tier must run here but cannot: {reason}")
        pytest.skip(reason)
    argv = [sys.executable, "-m", "peerserve", "chaos", "--nodes", "5", "--duration", str(DURATION_S),
            "--seed", str(SEED), "--json"]  # fmt: skip
    run = subprocess.run(argv, capture_output=True, text=True, timeout=DURATION_S + 240)
    print(run.stderr[-6000:])
    report = json.loads(run.stdout)  # stdout is exactly the report
    kinds = [f["kind"] for f in report["faults"]]
    print(f"\nchaos seed {SEED}, {DURATION_S} s: {json.dumps({k: v for k, v in report.items() if k != 'faults'})}")
    print(f"faults: {kinds}")
    assert len(report["faults"]) >= 4 and report["requests_ok"] >= 60
    assert report["max_leaders_per_term"] == 1
    assert report["requests_failed_outside_windows"] == 0
    assert report["dead_endpoint_answers"] == 0
    assert report["desired_state_lost"] == 0
    assert report["rss_growth_ratio"] <= 1.5
    assert run.returncode == 0, run.stderr[-2000:]
