"""Agent resources: RSS (agent + its child processes) and CPU, leader and follower, idle and under load.

Two real agents on loopback (seeds, mDNS off, no models deployed): ``a`` starts first and leads, ``b``
follows. Measured over a window each: both idle; then a client querying ``GET /services`` at a fixed
rate against the follower, then against the leader. CPU is CPU-seconds per second (agent + children),
RSS is the resident memory of the agent plus every child process (the solver worker included).

``--before PATH`` runs the same measurement on another checkout (e.g. main before this change), in the
same run, so the two columns share the machine's conditions. ``--python PATH`` runs the agents with another
interpreter, e.g. a virtualenv with only the agent's extra installed (as on a board without the dev tools,
whose rich and trio httpx/httpcore import when present); the load average is printed with the figures.

    .venv/bin/python bench/agent_resources_bench.py [--window S] [--rate N] [--before PATH] [--python PATH] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import httpx
import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from peerserve.agent_procs import stop  # noqa: E402
from tests.service.conftest import TOKEN, free_port  # noqa: E402


@contextmanager
def agent(repo: Path, name: str, port: int, seed_port: int, data: Path, python: str) -> Iterator[psutil.Process]:
    """A real agent from checkout ``repo`` on 127.0.0.1:``port`` seeded with the other agent."""
    env = {**os.environ, "PYTHONPATH": str(repo), "PEERSERVE_MDNS": "false"}
    proc = subprocess.Popen(
        [python, "-m", "peerserve", "agent", "--host", "127.0.0.1", "--port", str(port),
         "--node-id", name, "--data-dir", str(data / name), "--cluster-token", TOKEN,
         "--seeds", f"http://127.0.0.1:{seed_port}"],
        cwd=repo, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait(lambda: cluster(port).get("leader") is not None, 30)
        yield psutil.Process(proc.pid)
    finally:
        stop(proc)


def cluster(port: int) -> dict[str, Any]:
    try:
        return dict(httpx.get(f"http://127.0.0.1:{port}/cluster", timeout=2).json())
    except httpx.HTTPError:
        return {}


def wait(predicate: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise RuntimeError(f"condition not met within {timeout} s")


def tree(p: psutil.Process) -> list[psutil.Process]:
    return [p, *p.children(recursive=True)]


def rss_mb(p: psutil.Process) -> float:
    total = 0
    for q in tree(p):
        with suppress(psutil.NoSuchProcess):
            total += q.memory_info().rss
    return total / 2**20


def cpu_s(p: psutil.Process) -> float:
    total = 0.0
    for q in tree(p):
        with suppress(psutil.NoSuchProcess):
            t = q.cpu_times()
            total += t.user + t.system
    return total


def measure(procs: dict[str, psutil.Process], window: float, load_port: int | None, rate: float) -> dict[str, Any]:
    """CPU-s/s and peak RSS of each agent over ``window`` s, with a client loading ``load_port``."""
    stop = threading.Event()
    sent = [0]

    def client() -> None:
        with httpx.Client(timeout=5) as c:
            next_at = time.monotonic()
            while not stop.is_set():
                c.get(f"http://127.0.0.1:{load_port}/services")
                sent[0] += 1
                next_at += 1 / rate
                time.sleep(max(0.0, next_at - time.monotonic()))

    thread = threading.Thread(target=client, daemon=True) if load_port else None
    before = {n: cpu_s(p) for n, p in procs.items()}
    peak = {n: rss_mb(p) for n, p in procs.items()}
    started = time.monotonic()
    if thread:
        thread.start()
    while time.monotonic() - started < window:
        time.sleep(0.5)
        peak = {n: max(peak[n], rss_mb(p)) for n, p in procs.items()}
    stop.set()
    if thread:
        thread.join()
    elapsed = time.monotonic() - started
    out: dict[str, Any] = {n: {"cpu": (cpu_s(p) - before[n]) / elapsed, "rss_mb": peak[n]} for n, p in procs.items()}
    out["requests_per_s"] = sent[0] / elapsed
    return out


def run(repo: Path, window: float, rate: float, python: str = sys.executable) -> dict[str, Any]:
    pa, pb = free_port(), free_port()
    with tempfile.TemporaryDirectory() as tmp, agent(repo, "a", pa, pb, Path(tmp), python) as a:
        wait(lambda: cluster(pa).get("leader") == "a", 30)
        with agent(repo, "b", pb, pa, Path(tmp), python) as b:
            wait(lambda: cluster(pb).get("leader") == "a", 30)
            time.sleep(5)  # the leader's worker warms up; first rounds settle
            procs = {"leader": a, "follower": b}
            children = {n: [" ".join(c.cmdline()[1:4]) for c in p.children(recursive=True)] for n, p in procs.items()}
            return {
                "idle": measure(procs, window, None, rate),
                "follower_load": measure(procs, window, pb, rate),
                "leader_load": measure(procs, window, pa, rate),
                "children": children,
                "load_avg_1m": os.getloadavg()[0],
            }


def report(results: dict[str, dict[str, Any]], rate: float) -> None:
    print(f"Agent RSS (MB, agent + children, peak) and CPU (CPU-s/s), no models, client at {rate:.0f} GET /services/s")
    print(f"{'checkout':<10} {'role':<9} {'idle RSS':>9} {'idle CPU':>9} {'load RSS':>9} {'load CPU':>9}")
    for label, r in results.items():
        for role in ("follower", "leader"):
            load = r[f"{role}_load"][role]
            print(
                f"{label:<10} {role:<9} {r['idle'][role]['rss_mb']:>9.1f} {r['idle'][role]['cpu']:>9.3f} "
                f"{load['rss_mb']:>9.1f} {load['cpu']:>9.3f}"
            )
        kids = "; ".join(f"{n}: {len(c)}" for n, c in r["children"].items())
        print(f"{'':<10} children: {kids}; load average at the end {r['load_avg_1m']:.1f}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--window", type=float, default=10.0, help="seconds per measurement window (default 10)")
    ap.add_argument("--rate", type=float, default=100.0, help="client requests per second under load (default 100)")
    ap.add_argument("--before", type=Path, help="another checkout to measure the same way, e.g. main")
    ap.add_argument("--python", default=sys.executable, help="interpreter the agents run with (default: this one)")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = ap.parse_args()
    results = {"this": run(REPO, args.window, args.rate, args.python)}
    if args.before:
        results["before"] = run(args.before.resolve(), args.window, args.rate, args.python)
    if args.json:
        print(json.dumps(results, indent=1))
    else:
        report(results, args.rate)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
