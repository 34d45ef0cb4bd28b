"""The membership bench's bed mode: agents on separate hosts (network namespaces on a bridge), mDNS on, no seeds.

For a size N, scripts/testbed.py brings up N + 1 hosts (blackhole route first; the last host is the joiner);
agents start one after another with mDNS on and no ``--seeds`` (they find each other by real multicast on the
bridge) and the loopback mode's measuring code runs on them unchanged (bench.membership_bench.measure_booted):
convergence, follower CPU and RSS from /proc of the agents' PIDs (``ip netns exec`` execs into the agent, so the
PID is the agent's), exchanges from /metrics (fetched from the bed's client host), a new member alive
everywhere and a kill -9 dead everywhere from the members' logs. The bed's teardown (by PID, namespaces, the
route) runs even on a failure, Ctrl-C or SIGTERM. Root only; run under ``flock /tmp/peerserve-netns.lock``.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bench.membership_bench import REPO, Agent, Cluster, measure_booted, say
from scripts.testbed import TestBed, available, testbed

LABEL = "bed (mDNS)"


@dataclass
class BedAgent(Agent):
    """An agent on one bed host; its HTTP API is reached from the bed's client host."""

    bed: TestBed | None = None
    url: str = ""

    def get(self, path: str) -> httpx.Response:
        assert self.bed is not None
        response: httpx.Response = self.bed.get(self.url + path)
        return response


@dataclass
class BedCluster(Cluster):
    """The bed's hosts as a Cluster: ``boot`` starts the agent of the next unused host."""

    bed: TestBed | None = None

    def boot(self, name: str, seeds: list[int], port: int = 0, tries: int = 3) -> Agent:
        """Start the next host's agent (named n<i> by the bed; ``name``/``seeds``/``port`` unused: mDNS finds
        the others) and wait until it answers /health."""
        assert self.bed is not None
        i = len(self.agents)
        host = self.bed.start(i, env={"PEERSERVE_MDNS": "true"})
        self.bed.wait_healthy(i, timeout=60)
        assert host.proc is not None
        agent = BedAgent(host.node_id, 8400, host.proc, host.log, bed=self.bed, url=host.url)
        self.agents.append(agent)
        return agent

    def stop(self) -> None:
        """Nothing here: the bed's teardown ends the agents by PID."""


def measure_bed_size(n: int, window: float) -> dict[str, Any]:
    """One bed of ``n`` agents (mDNS on, no seeds) plus a joiner: the loopback mode's figures, labelled."""
    reason = available()
    if reason:
        raise RuntimeError(f"the bed mode {reason}")
    with tempfile.TemporaryDirectory(prefix=f"membench-bed-{n}-") as tmp, testbed(n + 1, Path(tmp)) as bed:
        c = BedCluster(REPO, Path(tmp), bed=bed)
        say(f"[{LABEL}] {n + 1} hosts up (namespaces {bed.hosts[0].netns}..); starting {n} agents")
        for i in range(n):
            c.boot(f"n{i}", [])  # one after another, as boards boot
        return {"mode": LABEL, **measure_booted(c, window, 0.0, LABEL, 0, [])}


def run_bed_size(n: int, window: float) -> dict[str, Any]:
    """``measure_bed_size``, or ``failed`` (where it broke, with the load average)."""
    started = time.monotonic()
    try:
        return measure_bed_size(n, window)
    except RuntimeError as exc:
        say(f"[{LABEL}] N={n} FAILED after {time.monotonic() - started:.0f} s: {exc}")
        return {"n": n, "mode": LABEL, "failed": str(exc), "load_avg_1m": os.getloadavg()[0]}
