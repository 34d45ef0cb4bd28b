"""A real Prometheus (Debian's package) on the bed's client host finds the agents through /sd/prometheus."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from scripts.testbed import TOKEN, TestBed
from tests.cluster.test_discovery_cluster import all_alive, start_all
from tests.waiting import wait_for

pytestmark = pytest.mark.cluster
PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
API = "http://127.0.0.1:9090/api/v1"  # Prometheus listens on the client host's own loopback
METRICS_TOKEN = "prometheus-test-metrics-token-42"  # the agents want it on /metrics and /sd/prometheus


def prometheus_config(bed: TestBed, sd_hosts: list[int], token_file: Path) -> str:
    """Scrape config with two SD sources; SD and scrapes both send the metrics token (docs/prometheus.yml)."""
    auth = f"authorization:\n          credentials_file: {token_file}"
    sd = "\n".join(
        f"      - url: {bed.hosts[i].url}/sd/prometheus\n        refresh_interval: 1s\n        {auth}" for i in sd_hosts
    )
    return f"""global:
  scrape_interval: 1s
  scrape_timeout: 900ms
scrape_configs:
  - job_name: peerserve
    authorization:
      credentials_file: {token_file}
    http_sd_configs:
{sd}
"""


def start_prometheus(bed: TestBed, workdir: Path, sd_hosts: list[int]) -> subprocess.Popen[bytes]:
    """Prometheus inside the client host's namespace; the bed kills it (by PID) at teardown."""
    config, token_file = workdir / "prometheus.yml", workdir / "metrics-token"
    token_file.write_text(METRICS_TOKEN + "\n")
    config.write_text(prometheus_config(bed, sd_hosts, token_file))
    log = open(workdir / "prometheus.log", "ab")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen(
        ["ip", "netns", "exec", bed.client_ns, PROMETHEUS, f"--config.file={config}",
         f"--storage.tsdb.path={workdir / 'tsdb'}", "--web.listen-address=127.0.0.1:9090"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    bed.extra_pids.append(proc.pid)  # `ip netns exec` execs into prometheus: this PID is prometheus's
    return proc


def query(bed: TestBed, promql: str) -> dict[str, float]:
    """Instant query from the client host -> {node label: value}."""
    with contextlib.suppress(Exception):
        body = bed.get(f"{API}/query", params={"query": promql}, timeout=2).json()
        return {r["metric"].get("node", ""): float(r["value"][1]) for r in body["data"]["result"]}
    return {}


def test_prometheus_scrapes_the_cluster_through_sd_and_sees_a_node_die(
    bed: Callable[[int], TestBed], tmp_path: Path
) -> None:
    if not os.access(PROMETHEUS, os.X_OK):
        pytest.fail("Debian's prometheus is missing (scripts/bootstrap.sh --test installs it)")
    b = bed(3)
    start_all(b, "--placement-period-s", "2", "--log-format", "json", "--metrics-token", METRICS_TOKEN)
    assert b.get(b.hosts[0].url + "/metrics").status_code == 401  # Prometheus gets in with its credentials_file
    wait_for(lambda: all_alive(b, [0, 1, 2]), 20)
    prom = start_prometheus(b, tmp_path, sd_hosts=[0, 1])  # two SD sources: either may die
    try:
        every = {"n0": 1.0, "n1": 1.0, "n2": 1.0}
        took = wait_for(lambda: query(b, "up") == every, 40, step=0.5)
        print(f"\nPrometheus found and scraped all 3 agents through /sd/prometheus {took:.1f} s after start")
        wait_for(lambda: query(b, 'peerserve_members{status="alive"}') == {"n0": 3.0, "n1": 3.0, "n2": 3.0}, 15)
        wait_for(lambda: sum(query(b, "peerserve_is_leader").values()) == 1.0, 15)
        leader = next(n for n, v in query(b, "peerserve_is_leader").items() if v == 1.0)
        for _ in range(5):
            assert b.get(b.hosts[0].url + "/services/xor_mlp").status_code == 200
        wait_for(lambda: query(b, 'peerserve_endpoint_queries_total{model="xor_mlp",outcome="ok"}').get("n0") == 5, 15)
        term = max(query(b, "peerserve_term").values())
        wait_for(lambda: query(b, "peerserve_placement_solve_duration_seconds_count").get(leader, 0) >= 1, 15)
        rounds = query(b, "sum by (node) (peerserve_placement_rounds_total)")
        assert rounds.get(leader, 0) >= 1, rounds

        victim = int(leader[1:]) if leader == "n2" else 2
        b.kill(victim, signal.SIGKILL)
        killed = time.monotonic()
        gone = f"n{victim}"
        survivors = '{node!="' + gone + '"}'
        wait_for(lambda: query(b, "up").get(gone) == 0.0, 20, step=0.5)
        down = time.monotonic() - killed
        wait_for(lambda: query(b, 'peerserve_members{status="dead"}') == {"n0": 1.0, "n1": 1.0}, 20, step=0.5)
        wait_for(lambda: sum(query(b, "peerserve_is_leader" + survivors).values()) == 1.0, 20, step=0.5)
        assert query(b, "up") == {**every, gone: 0.0}
        if gone == leader:
            wait_for(lambda: max(query(b, "peerserve_term" + survivors).values()) > term, 20, step=0.5)
        targets = b.get(f"{API}/targets", timeout=2).json()["data"]["activeTargets"]
        health = {t["labels"]["node"]: t["health"] for t in targets}
        assert health == {"n0": "up", "n1": "up", gone: "down"}, health
        print(f"kill -9 {gone} (leader {leader}): up == 0 in Prometheus {down:.1f} s after; survivors see it dead")
        check_logs(b)
    finally:
        prom.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            prom.wait(10)


def check_logs(bed: TestBed) -> None:
    """Elections, heartbeats and commands carried the token all along: no log line has it; every line is JSON."""
    for host in bed.hosts:
        text = host.log.read_text()
        assert TOKEN not in text and METRICS_TOKEN not in text, host.node_id
        lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
        assert lines and all(x["node"] == host.node_id for x in lines)
        assert any(x["msg"].startswith(("placement at term", "node n")) and x["term"] for x in lines)


def test_the_example_configuration_in_docs_is_valid() -> None:
    """docs/prometheus.yml passes `promtool check config` (when Debian's promtool is there)."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed")
    config = Path(__file__).resolve().parents[2] / "docs" / "prometheus.yml"
    out = subprocess.run([promtool, "check", "config", "--syntax-only", str(config)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
