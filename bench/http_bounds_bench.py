"""HTTP bounds benchmark: what the bounds cost per request, and what a hostile client can still do.

- Overhead: p50/p99 of a constant-JSON FastAPI endpoint (bench/bare_app.py) under plain uvicorn vs the
  same app behind the agent's bounds (HttpLimits middleware + the header-deadline protocol + the
  concurrency limit), interleaved rounds in the same run.
- Fake demand: database growth and client_rtt rows after 300 endpoint queries that each claim a new
  client id and report RTTs to 60 made-up nodes, against 300 queries from one well-behaved client.
- Slowloris: how long a connection that trickles header bytes (one every 0.5 s) stays open.

    .venv/bin/python bench/http_bounds_bench.py [--requests N] [--json]
"""

from __future__ import annotations

import argparse
import json
import socket
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.agent_bench import agent, latencies, pct, process  # noqa: E402
from tests.service.conftest import free_port  # noqa: E402


def serve(mode: str, port: int) -> None:
    """Run bench/bare_app.py plainly or behind the agent's HTTP bounds (default settings)."""
    import uvicorn

    from agent.http_limits import HttpLimits, limited_protocol
    from agent.settings import Settings
    from bench.bare_app import app

    if mode == "plain":
        uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")
        return
    s = Settings(data_dir=tempfile.mkdtemp())
    bounded = HttpLimits(app, int(s.max_body_mb * 2**20), s.body_timeout_s, s.max_header_kb * 1024)
    config = uvicorn.Config(
        bounded,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        http=limited_protocol(s.header_timeout_s, s.max_connections_per_address),
        limit_concurrency=s.max_concurrency,
        h11_max_incomplete_event_size=s.max_header_kb * 1024,
    )
    uvicorn.Server(config).run()


class NoBar:
    def update(self, _n: int) -> None:
        pass


def bench_overhead(n: int) -> dict[str, Any]:
    samples: dict[str, list[float]] = {"plain": [], "bounded": []}
    with httpx.Client() as client:
        for _round in range(2):
            for mode in ("plain", "bounded"):
                port = free_port()
                with process([sys.executable, __file__, "--serve", mode, str(port)], port) as url:
                    samples[mode] += latencies(client, url + "/services/half_plus_two", n, NoBar())
    out: dict[str, Any] = {m: {"p50_ms": statistics.median(xs), "p99_ms": pct(xs, 99)} for m, xs in samples.items()}
    out["ratio_p50"] = out["bounded"]["p50_ms"] / out["plain"]["p50_ms"]
    out["ratio_p99"] = out["bounded"]["p99_ms"] / out["plain"]["p99_ms"]
    return out


def db_size(data_dir: Path) -> int:
    return sum(p.stat().st_size for p in data_dir.glob("peerserve.sqlite3*"))


def client_rtt_rows(data_dir: Path) -> int:
    db = sqlite3.connect(f"file:{data_dir / 'peerserve.sqlite3'}?mode=ro", uri=True)
    try:
        return int(db.execute("SELECT COUNT(*) FROM client_rtt").fetchone()[0])
    finally:
        db.close()


def demand_run(tmp: Path, name: str, hostile: bool) -> dict[str, Any]:
    data_dir, port = tmp / name, free_port()
    with agent(data_dir, port) as url, httpx.Client(base_url=url, timeout=30) as client:
        node = client.get("/health").json()["node_id"]
        client.get("/services/half_plus_two", headers={"X-Peerserve-RTT": f"{node}=1"})  # provisions
        client.get("/stats/requests?since=0")  # flushes the log
        before = db_size(data_dir)
        fakes = ", ".join(f"fake{k}=1" for k in range(60))
        for i in range(300):
            headers = (
                {"X-Peerserve-Client": f"made-up-{i}", "X-Peerserve-RTT": f"{fakes}, {node}=2"}
                if hostile
                else {"X-Peerserve-Client": "phone-1", "X-Peerserve-RTT": f"{node}=2"}
            )
            assert client.get("/services/half_plus_two", headers=headers).status_code == 200
        log = client.get("/stats/requests?since=0&limit=10000").json()["requests"]
        return {
            "db_growth_kb": (db_size(data_dir) - before) / 1024,
            "client_rtt_rows": client_rtt_rows(data_dir),
            "distinct_clients": len({r["client"] for r in log}),
        }


def bench_demand(tmp: Path) -> dict[str, Any]:
    benign, hostile = demand_run(tmp, "benign", False), demand_run(tmp, "hostile", True)
    ratio = hostile["db_growth_kb"] / benign["db_growth_kb"] if benign["db_growth_kb"] else None
    return {"benign": benign, "hostile": hostile, "db_growth_ratio": ratio}


def bench_slowloris(tmp: Path) -> dict[str, Any]:
    port = free_port()
    with agent(tmp / "slow", port):
        sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        sock.sendall(b"GET /health HTTP/1.1\r\nX-Slow: ")
        started = time.monotonic()
        while time.monotonic() - started < 120:
            try:
                sock.sendall(b"a")
                sock.settimeout(0.5)
                if sock.recv(4096) is not None:
                    break
            except TimeoutError:
                continue
            except OSError:
                break
        held = time.monotonic() - started
        sock.close()
    return {"held_s": held, "header_timeout_s": 10.0}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=2000, help="requests per overhead round (default 2000)")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.add_argument("--serve", nargs=2, metavar=("MODE", "PORT"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve:
        serve(args.serve[0], int(args.serve[1]))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        out = {
            "overhead": bench_overhead(args.requests),
            "demand": bench_demand(Path(tmp)),
            "slowloris": bench_slowloris(Path(tmp)),
        }
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    o, d, s = out["overhead"], out["demand"], out["slowloris"]
    print("| what | with the bounds | baseline in the same run |\n| --- | --- | --- |")
    print(f"| constant-JSON endpoint p50 / p99 | {o['bounded']['p50_ms']:.2f} / {o['bounded']['p99_ms']:.2f} ms | "
          f"plain uvicorn {o['plain']['p50_ms']:.2f} / {o['plain']['p99_ms']:.2f} ms "
          f"({o['ratio_p50']:.2f}x / {o['ratio_p99']:.2f}x) |")  # fmt: skip
    h, b = d["hostile"], d["benign"]
    print(f"| 300 queries, new client id + 60 fake nodes each: DB growth, client_rtt rows, clients | "
          f"{h['db_growth_kb']:.0f} KB, {h['client_rtt_rows']}, {h['distinct_clients']} | "
          f"one client: {b['db_growth_kb']:.0f} KB, {b['client_rtt_rows']}, {b['distinct_clients']} |")  # fmt: skip
    print(
        f"| header trickle (1 byte / 0.5 s) held open | {s['held_s']:.1f} s | "
        f"header_timeout_s = {s['header_timeout_s']:g} s (before: until the client gave up) |"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
