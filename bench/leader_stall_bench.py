"""The leader's serving while its placement rounds build a snapshot: event-loop stall and request latency, same run.

One real agent on loopback (process runtime, no mDNS, a cluster token: it elects itself and leads) whose request
log holds N real request records (written through agent.store before it starts, stamped within the window: clients
at sites, RTTs to 10 nodes, proxied latencies of the one model served), placement rounds every ``--period-s``. Each
round gathers the log over the peer plane into the leader's window and builds the snapshot from all N records.
While rounds run, one client sends proxied predicts (``/v1/models/half_plus_two:predict``), another endpoint
queries (``/services/half_plus_two``) and a probe ``GET /health``, each ``--interval-s`` after its last answer; the
probe shows the event loop's stalls (its latency over the idle run's); the serving process's CPU per round (user +
system, its children not counted) shows where the build ran. Reported: p50 / p99 / max per kind and
window size, for this tree and (``--before-rev REV``) revision REV's agent in the same run, with the load average;
``--sizes 0``: idle.

    python bench/leader_stall_bench.py --sizes 0,1000,10000,50000 --before-rev main [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.common import extract_revision, served  # noqa: E402
from tests.service.conftest import free_port  # noqa: E402

NODE = "lead"
TOKEN = "bench-cluster-token-0123456789"
OTHER_NODES = 9  # RTTs reported to these too (as in a 10-node cluster): a record's size as in the field
SITES, CLIENTS = 12, 300
MODEL = "half_plus_two"


def fill_log(data_dir: Path, n: int, window_s: float, seed: int = 0) -> None:
    """``n`` request records in the agent's request log, stamped over the last half window."""
    from agent.store import Store

    rnd = random.Random(seed)
    names = [NODE, *(f"n{j}" for j in range(OTHER_NODES))]
    sites = [[rnd.uniform(1, 80) for _ in names] for _ in range(SITES)]
    home = [rnd.randrange(SITES) for _ in range(CLIENTS)]
    store = Store(data_dir, max_request_rows=max(100_000, n), max_pending=max(n, 1))
    now = time.time()
    for _ in range(n):
        c = rnd.randrange(CLIENTS)
        rtt = {name: sites[home[c]][j] + rnd.uniform(0, 2) for j, name in enumerate(names)}
        store.record_request(now - rnd.random() * window_s / 2, MODEL, f"c{c}", rtt, NODE,
                             rnd.uniform(2, 30), 200)  # fmt: skip
    store.flush()
    store.close()


def percentiles(samples: list[float]) -> dict[str, float]:
    if len(samples) < 2:
        return {"n": len(samples), "p50_ms": float("nan"), "p99_ms": float("nan"), "max_ms": float("nan")}
    q = statistics.quantiles(samples, n=100)
    return {"n": len(samples), "p50_ms": round(statistics.median(samples), 2), "p99_ms": round(q[98], 2),
            "max_ms": round(max(samples), 2)}  # fmt: skip


def sender(url: str, kind: str, stop: threading.Event, out: list[float], interval_s: float) -> None:
    """One client sending ``kind`` requests one after another (``interval_s`` apart) until ``stop``."""
    with httpx.Client(timeout=30, headers={"X-Peerserve-Client": f"bench-{kind}"}) as http:
        while not stop.is_set():
            t = time.perf_counter()
            if kind == "predict":
                r = http.post(f"{url}/v1/models/{MODEL}:predict", json={"instances": [1.0, 2.0]})
            elif kind == "endpoint":
                r = http.get(f"{url}/services/{MODEL}")
            else:
                r = http.get(f"{url}/health")
            if r.status_code == 200:
                out.append(1000 * (time.perf_counter() - t))
            stop.wait(interval_s)


def last_round(url: str) -> float | None:
    """When the agent's last placement round was made (its /cluster summary's ``at``), None before the first."""
    with httpx.Client(timeout=10) as http:
        last = http.get(f"{url}/cluster").json().get("last_placement") or {}
    return last.get("at")


def wait_rounds(url: str, count: int, timeout: float) -> int:
    """Wait until ``count`` more placement rounds have ended (or ``timeout``); how many did."""
    seen, done = last_round(url), 0
    deadline = time.monotonic() + timeout
    while done < count and time.monotonic() < deadline:
        time.sleep(0.1)
        at = last_round(url)
        if at != seen:
            seen, done = at, done + 1
    return done


def measure(code: Path, n: int, args: argparse.Namespace) -> dict[str, Any]:
    """Start the agent of tree ``code`` with ``n`` records in its log; latencies over ``args.rounds`` rounds."""
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        fill_log(data, n, args.window_s)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        argv = [sys.executable, "-m", "peerserve", "agent", "--host", "127.0.0.1", "--port", str(port),
                "--peer-port", str(free_port()), "--node-id", NODE, "--data-dir", str(data), "--cluster-token",
                TOKEN, "--placement-period-s", str(args.period_s), "--placement-method",
                "least-loaded", "--provision-wait-s", "60"]  # fmt: skip
        env = {"PYTHONPATH": str(code), "PEERSERVE_REQUEST_WINDOW_S": str(args.window_s), "PEERSERVE_MDNS": "false"}
        with served(argv, url + "/health", env=env, cwd=code, timeout=60) as proc:
            with httpx.Client(timeout=90) as http:
                assert http.post(f"{url}/v1/models/{MODEL}:predict", json={"instances": [1.0]}).status_code == 200
            wait_rounds(url, 2, 120)  # the window gathered whole, the worker warm
            stop = threading.Event()
            samples: dict[str, list[float]] = {"predict": [], "endpoint": [], "probe": []}
            threads = [threading.Thread(target=sender, args=(url, k, stop, samples[k], args.interval_s))
                       for k in samples]  # fmt: skip
            agent = psutil.Process(proc.pid)  # the serving process itself (its solver worker is a child)
            cpu = sum(agent.cpu_times()[:2])
            for t in threads:
                t.start()
            done = wait_rounds(url, args.rounds, args.rounds * args.period_s * 4 + 30)
            cpu = sum(agent.cpu_times()[:2]) - cpu
            stop.set()
            for t in threads:
                t.join()
            figures = {k: percentiles(v) for k, v in samples.items()}
            return {"rounds": done, "serving_cpu_ms_per_round": round(1000 * cpu / max(done, 1), 1), **figures}


def run(args: argparse.Namespace) -> dict[str, Any]:
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    out: dict[str, Any] = {"sizes": sizes, "period_s": args.period_s, "now": {}, "before": {}}
    with tempfile.TemporaryDirectory() as tmp:
        before = extract_revision(args.before_rev, Path(tmp)) if args.before_rev else None
        for n in sizes:
            out["now"][str(n)] = measure(REPO, n, args)
            if before is not None:
                out["before"][str(n)] = measure(before, n, args)
    out["load"] = os.getloadavg()
    out["before_rev"] = args.before_rev
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="0,1000,10000,50000", help="records in the window, comma-separated")
    ap.add_argument("--rounds", type=int, default=5, help="placement rounds measured per size (default 5)")
    ap.add_argument("--period-s", type=float, default=2.0, help="placement period (default 2 s)")
    ap.add_argument("--window-s", type=float, default=600.0, help="request window (default 600 s)")
    ap.add_argument(
        "--interval-s",
        type=float,
        default=0.01,
        help="pause between one client's requests (default 0.01 s: light traffic, the rounds show)",
    )
    ap.add_argument("--before-rev", help="also run git revision REV's agent, in the same run")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = ap.parse_args(argv)
    out = run(args)
    if args.json:
        print(json.dumps(out))
        return 0
    print(f"leader serving during placement rounds (period {args.period_s:g} s); load average {out['load'][0]:.2f}")
    print(f"{'records':>7} {'tree':>6} {'rounds':>6}  {'predict p50/p99/max ms':>24}  {'endpoint p50/p99/max ms':>24}"
          f"  {'probe p50/p99/max ms':>22}  serving CPU ms/round")  # fmt: skip
    for n in out["sizes"]:
        for tree in ("now", "before"):
            r = out[tree].get(str(n))
            if r is None:
                continue
            kinds = ("predict", "endpoint", "probe")
            cells = ["/".join(f"{r[k][q]:.1f}" for q in ("p50_ms", "p99_ms", "max_ms")) for k in kinds]
            print(f"{n:>7} {tree:>6} {r['rounds']:>6}  {cells[0]:>24}  {cells[1]:>24}  {cells[2]:>22}"
                  f"  {r['serving_cpu_ms_per_round']:>8.1f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
