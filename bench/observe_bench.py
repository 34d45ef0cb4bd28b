"""What metrics cost: the agent's endpoint-query and proxied-inference p50 with metrics on vs off (two
real agents, requests interleaved, same run), and GET /metrics with 20 models and 10 peers (in process,
through the real app; the peer table is a static list of 10 members).

    .venv/bin/python bench/observe_bench.py [--requests N] [--scrapes N] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from agent.catalogue import builtin_catalogue_text, parse_catalogue  # noqa: E402
from agent.peers import Member  # noqa: E402
from agent.runtime.base import Instance  # noqa: E402
from bench.agent_bench import pct, process  # noqa: E402
from tests.service.conftest import free_port  # noqa: E402

PREDICT = "/services/xor_mlp/v1/models/xor_mlp:predict"


def twenty_model_catalogue(path: Path) -> Path:
    """The built-in catalogue plus stand-ins of half_plus_two under their own names: 20 models in all."""
    builtin = len(parse_catalogue(builtin_catalogue_text(), "bench").models)
    extra = "".join(
        f'\n[[models]]\nname = "model_{i:02d}"\nimage = "peerserve/modelserver:latest"\nstand_in = "half_plus_two"\n'
        f"mem_mb = 64\ncompute = 1\n"
        for i in range(20 - builtin)
    )
    path.write_text(builtin_catalogue_text() + extra)
    return path


def interleaved(urls: dict[str, str], path: str, n: int, post: bool) -> dict[str, list[float]]:
    """n requests to each agent, alternating, so load and noise hit both alike."""
    out: dict[str, list[float]] = {k: [] for k in urls}
    body = {"instances": [[0, 1]]}
    with httpx.Client(timeout=30) as client:
        for _ in range(n):
            for key, url in urls.items():
                started = time.perf_counter()
                r = client.post(url + path, json=body) if post else client.get(url + path)
                out[key].append(1000 * (time.perf_counter() - started))
                assert r.status_code == 200, r.text
    return out


def bench_overhead(n: int, tmp: Path) -> dict[str, Any]:
    on_port, off_port = free_port(), free_port()
    out: dict[str, Any] = {}
    base = [sys.executable, "-m", "peerserve", "agent", "--host", "127.0.0.1", "--no-discovery"]
    on_args = [*base, "--port", str(on_port), "--node-id", "on", "--data-dir", str(tmp / "on")]
    off_args = [*base, "--port", str(off_port), "--node-id", "off", "--data-dir", str(tmp / "off"), "--no-metrics"]
    with process(on_args, on_port) as on, process(off_args, off_port) as off:
        urls = {"metrics_on": on, "metrics_off": off}
        assert httpx.get(off + "/metrics").status_code == 404 and httpx.get(on + "/metrics").status_code == 200
        interleaved(urls, PREDICT, 50, post=True)  # provision and warm both
        for name, path, post in (("query", "/services/xor_mlp", False), ("inference", PREDICT, True)):
            series = interleaved(urls, path, n, post)
            for key, xs in series.items():
                out[f"{name}_{key}"] = {"p50_ms": pct(xs, 50), "p90_ms": pct(xs, 90), "n": len(xs)}
            out[f"{name}_on_vs_off_p50"] = out[f"{name}_metrics_on"]["p50_ms"] / out[f"{name}_metrics_off"]["p50_ms"]
    return out


def bench_scrape(scrapes: int, tmp: Path) -> dict[str, Any]:
    """GET /metrics through the app (httpx ASGI transport) with 20 models ready here and 10 peers."""
    from agent.api import create_app
    from agent.node import NodeAgent
    from agent.settings import Settings
    from agent.telemetry import outcome_of

    catalogue = twenty_model_catalogue(tmp / "catalogue20.toml")
    peers = [
        Member(f"peer{i:02d}", f"10.0.0.{i}", f"http://10.0.0.{i}:8400", "alive" if i % 5 else "dead",
               {"model_00": ["http://10.0.0.1:9000"]}, 1024.0, None, 10.0)
        for i in range(10)
    ]  # fmt: skip

    class StaticPeers:
        def members(self) -> list[Member]:
            return peers

    settings = Settings(node_id="bench", data_dir=str(tmp / "scrape"), catalogue=str(catalogue), discovery=False)
    node = NodeAgent(settings, peers=StaticPeers())
    models = sorted(node.catalogue.current.models)
    node.state.instances = [Instance(f"i{k}", m, f"http://127.0.0.1:{9000 + k}", True, 1, time.time())
                            for k, m in enumerate(models)]  # fmt: skip
    node.state.ready = {i.id for i in node.state.instances}
    for m in models:  # every label combination a busy agent would have
        for protocol in ("tfserving", "oip"):
            for status in (200, 404, 502, 503, 507):
                node.telemetry.request("inference", m, protocol, status, 0.004)
        node.telemetry.request("query", m, "http", 200, 0.001)
        node.telemetry.upstream(m, 3.0)
        node.telemetry.instance_ready(node.state.instances[0], time.time())
    assert len({outcome_of(s) for s in (200, 404, 502, 503, 507)}) == 5
    app = create_app(node)

    async def run() -> tuple[list[float], int, int]:
        times = []
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bench") as client:
            for _ in range(scrapes):
                started = time.perf_counter()
                r = await client.get("/metrics")
                times.append(1000 * (time.perf_counter() - started))
        series = sum(1 for line in r.text.splitlines() if line and not line.startswith("#"))
        return times, len(r.content), series

    times, size, series = asyncio.run(run())
    node.store.close()
    return {"p50_ms": pct(times, 50), "p90_ms": pct(times, 90), "bytes": size, "series": series,
            "models": len(models), "peers": len(peers), "n": scrapes, "mean_ms": statistics.fmean(times)}  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=1000, help="requests per agent per series (default 1000)")
    ap.add_argument("--scrapes", type=int, default=200, help="GET /metrics repetitions (default 200)")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        overhead = bench_overhead(args.requests, Path(tmp))
        scrape = bench_scrape(args.scrapes, Path(tmp))
    if args.json:
        print(json.dumps({"overhead": overhead, "scrape": scrape}, indent=2))
        return 0
    for name in ("query", "inference"):
        on, off = overhead[f"{name}_metrics_on"], overhead[f"{name}_metrics_off"]
        print(f"{name:9s} p50 metrics on {on['p50_ms']:.3f} ms, off {off['p50_ms']:.3f} ms "
              f"(x{overhead[f'{name}_on_vs_off_p50']:.3f}; p90 {on['p90_ms']:.3f} / {off['p90_ms']:.3f} ms, "
              f"n={on['n']} each, interleaved)")  # fmt: skip
    print(f"GET /metrics, {scrape['models']} models ready + {scrape['peers']} peers: p50 {scrape['p50_ms']:.2f} ms, "
          f"p90 {scrape['p90_ms']:.2f} ms, {scrape['series']} series, {scrape['bytes'] / 1024:.1f} KiB")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
