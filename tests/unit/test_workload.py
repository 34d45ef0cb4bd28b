"""`peerserve simulate --workload`: the discrete-event run of each placement (issue 16, part 3)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from solver.workload import MAX_REQUESTS, Workload, fifo_sojourn_ms, run


def test_fifo_queue_by_hand() -> None:
    arrival = np.array([0.0, 0.001, 0.010, 0.0])
    instance = np.array([0, 0, 0, 1])
    service = np.array([0.005, 0.005, 0.005, 0.002])
    np.testing.assert_allclose(fifo_sojourn_ms(arrival, instance, service), [5.0, 9.0, 5.0, 2.0])


def test_one_instance_matches_mm1_theory() -> None:
    rng = np.random.default_rng(3)
    lam, mu, n = 100.0, 200.0, 60_000
    arrival = np.cumsum(rng.exponential(1 / lam, n))
    got = fifo_sojourn_ms(arrival, np.zeros(n, dtype=int), rng.exponential(1 / mu, n)).mean()
    assert got == pytest.approx(1000.0 / (mu - lam), rel=0.1)  # M/M/1: 1 / (mu - lam)


def test_queue_placement_serves_everyone_with_few_instances_where_the_thesis_model_hits_memory() -> None:
    w = Workload(duration_s=20.0, dispatch="plan")  # a request of a client the plan rejected is rejected
    out = {o.placement: o for o in run(w)}
    need = math.ceil(w.clients * w.rate / (0.9 * w.throughput))
    assert out["queue"].instances <= need + 1 and out["queue"].rejected == 0
    assert out["thesis"].instances == 18 and out["thesis"].rejected > 0  # 60 wanted, 6 per node fit
    agent = {o.placement: o for o in run(replace(w, dispatch="agent"), ("thesis", "queue"))}
    assert agent["thesis"].instances == 18 and agent["thesis"].rejected == 0  # the agent serves them anyway
    assert agent["queue"].instances == out["queue"].instances and agent["queue"].rejected == 0
    assert out["queue"].p99_ms < math.inf and all(o.p50_ms <= o.p99_ms for o in out.values() if o.requests > o.rejected)
    assert len({o.requests for o in out.values()}) == 1  # the same arrivals for every placement


def test_bad_workloads_are_refused() -> None:
    assert Workload(clients=0).check()
    assert Workload(rate=-1).check()
    assert Workload(clients=10_000, rate=100.0, duration_s=10.0).check() == (
        f"clients x rate x duration exceeds {MAX_REQUESTS:,} simulated requests"
    )
    assert Workload(service="weibull").check() == "service must be exp or det"
    assert Workload(dispatch="random").check() == "dispatch must be one of agent, assigned, plan"
    assert Workload().check() is None


def test_cli_json_plot_and_usage_errors(tmp_path: Path) -> None:
    # 1 simulated second (300 requests through each placement; 5 s: 1,500): the same code paths, and what is asserted
    # is the output's shape, the plot and the exit codes. 5 s took 2.2 s of CPU a run on this machine, 1 s 1.4 s.
    cmd = [sys.executable, "-m", "peerserve", "simulate", "--workload", "--duration", "1"]
    out = subprocess.run([*cmd, "--json", "--plot", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert [o["placement"] for o in data["outcomes"]] == ["thesis", "queue", "queue-p99", "nearest", "least-loaded"]
    assert set(data["outcomes"][0]) >= {"p50_ms", "p99_ms", "instances", "rejected", "memory_mb"}
    assert (tmp_path / "workload.png").stat().st_size > 1000
    bad = subprocess.run([*cmd, "--clients", "0"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "at least 1" in bad.stderr
    lef = subprocess.run([*cmd, "--endpoint-rule", "lef"], capture_output=True, text=True, timeout=300)
    assert lef.returncode == 0 and "agent dispatch (endpoint rule lef)" in lef.stdout, lef.stderr
    bad = subprocess.run([*cmd, "--endpoint-rule", "nearest"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "invalid choice" in bad.stderr
