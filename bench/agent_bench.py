"""Agent benchmark: endpoint-query latency against a bare FastAPI baseline, /services with 1 vs 20
models deployed, and provisioning time to AVAILABLE (ProcessRuntime; DockerRuntime with a private
dockerd when run as root). Figures and ratios are measured in the same run; thesis numbers for context.

    .venv/bin/python bench/agent_bench.py [--requests N] [--json] [--no-docker]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from tqdm import tqdm

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from agent.catalogue import builtin_catalogue_text, parse_catalogue  # noqa: E402
from agent.runtime.base import probe_available  # noqa: E402
from bench.common import served  # noqa: E402
from tests.peer_tools import TestPeer  # noqa: E402
from tests.service.conftest import TOKEN, free_port  # noqa: E402

THESIS = {
    "query_one_ms": (103.7, 154.8),
    "query_all_ms": (213.0, 434.9),
    "provision_one_ms": 2548,
    "provision_four_ms": 11848,
}


@contextmanager
def process(args: list[str], port: int, env: dict[str, str] | None = None) -> Iterator[str]:
    url = f"http://127.0.0.1:{port}"
    with served(args, url + "/health", env):
        yield url


PEER_PORTS: dict[int, int] = {}


def agent(data_dir: Path, port: int, catalogue: str | None = None) -> Any:
    """A lone agent (no election, so the bench may command it as the signed test node "bench")."""
    PEER_PORTS[port] = free_port()
    args = [sys.executable, "-m", "peerserve", "agent", "--port", str(port), "--data-dir", str(data_dir),
            "--peer-port", str(PEER_PORTS[port]), "--node-id", "bench-node", "--no-discovery",
            "--cluster-token", TOKEN, "--log-level", "warning"]  # fmt: skip
    if catalogue:
        args += ["--catalogue", catalogue]
    return process(args, port)


def command(url: str, tmp: Path, term: int, instances: dict[str, int]) -> None:
    """The leader's signed desired set, sent over the agent's peer listener."""
    port = int(url.rsplit(":", 1)[1])
    lead = TestPeer("bench", TOKEN, tmp / "bench-identity")
    r = lead.put_desired("bench-node", f"https://127.0.0.1:{PEER_PORTS[port]}", term, instances)
    lead.close()
    assert r.status_code == 200, r.text


def latencies(client: httpx.Client, url: str, n: int, bar: Any) -> list[float]:
    for _ in range(50):
        client.get(url)
    out = []
    for _ in range(n):
        t = time.perf_counter()
        r = client.get(url)
        out.append(1000 * (time.perf_counter() - t))
        assert r.status_code == 200, r.text
        bar.update(1)
    return out


def pct(xs: list[float], q: float) -> float:
    return statistics.quantiles(xs, n=100)[int(q) - 1] if len(xs) > 1 else xs[0]


def wait_ready(url: str, count: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        node = httpx.get(url + "/stats/node", timeout=10).json()
        if sum(i["ready"] for i in node["instances"]) >= count:
            return
        time.sleep(0.1)
    raise RuntimeError("instances not ready")


def bench_queries(n: int, tmp: Path, bar: Any) -> dict[str, Any]:
    # 20 models: the built-in three plus 17 more stand-ins of half_plus_two under their own names.
    extra = "".join(
        f'\n[[models]]\nname = "model_{i:02d}"\nimage = "peerserve/modelserver:latest"\nstand_in = "half_plus_two"\n'
        f"mem_mb = 64\ncompute = 1\n"
        for i in range(17)
    )
    cat = tmp / "catalogue20.toml"
    cat.write_text(builtin_catalogue_text() + extra)
    names = sorted(parse_catalogue(cat.read_text(), "bench").models)
    assert len(names) == 20
    out: dict[str, Any] = {}
    with httpx.Client() as client:
        port = free_port()
        with process([sys.executable, "-m", "uvicorn", "bench.bare_app:app", "--port", str(port),
                      "--log-level", "warning"], port) as bare:  # fmt: skip
            base = latencies(client, bare + "/services/half_plus_two", n, bar)
        port = free_port()
        with agent(tmp / "agent", port, str(cat)) as url:
            command(url, tmp, 1, {"half_plus_two": 1})
            wait_ready(url, 1)
            one = latencies(client, url + "/services/half_plus_two", n, bar)
            all_one = latencies(client, url + "/services", n // 2, bar)
            command(url, tmp, 2, {m: 1 for m in names})
            wait_ready(url, 20)
            all_twenty = latencies(client, url + "/services", n // 2, bar)
            assert len(client.get(url + "/services").json()) == 20
    for key, xs in (("bare", base), ("query_one", one), ("services_1", all_one), ("services_20", all_twenty)):
        out[key] = {"p50_ms": statistics.median(xs), "p99_ms": pct(xs, 99)}
    out["query_one_ratio_p50"] = out["query_one"]["p50_ms"] / out["bare"]["p50_ms"]
    out["query_one_ratio_p99"] = out["query_one"]["p99_ms"] / out["bare"]["p99_ms"]
    out["services_20_vs_1_p50"] = out["services_20"]["p50_ms"] / out["services_1"]["p50_ms"]
    return out


async def _provision(runtime: Any, spec: Any) -> float:
    started = time.perf_counter()
    inst = await runtime.start(spec, 1)
    async with httpx.AsyncClient() as http:
        while not await probe_available(http, inst.url, spec.name, timeout=1):
            await asyncio.sleep(0.01)
    return 1000 * (time.perf_counter() - started)


async def _provision_round(runtime: Any, specs: list[Any]) -> tuple[float, list[float]]:
    started = time.perf_counter()
    each = await asyncio.gather(*(_provision(runtime, s) for s in specs))
    total = 1000 * (time.perf_counter() - started)
    for inst in await runtime.list():
        await runtime.stop(inst.id)
    return total, list(each)


def bench_provisioning(runtime_factory: Any, reps: int, bar: Any) -> dict[str, Any]:
    cat = parse_catalogue(builtin_catalogue_text(), "bench")
    hp2 = cat.models["half_plus_two"]
    four = [cat.models["half_plus_two"], cat.models["half_plus_three"], cat.models["xor_mlp"],
            cat.models["half_plus_two"]]  # fmt: skip

    async def run() -> dict[str, Any]:
        runtime = runtime_factory()
        ones, fours = [], []
        for _ in range(reps):
            ones.append((await _provision_round(runtime, [hp2]))[0])
            bar.update(1)
            fours.append((await _provision_round(runtime, four))[0])
            bar.update(1)
        await runtime.close()
        return {"one_model_ms_p50": statistics.median(ones), "four_models_ms_p50": statistics.median(fours),
                "one_model_ms_all": ones, "four_models_ms_all": fours}  # fmt: skip

    return asyncio.run(run())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=2000, help="requests per latency series (default 2000)")
    ap.add_argument("--reps", type=int, default=5, help="provisioning repetitions (default 5)")
    ap.add_argument("--no-docker", action="store_true", help="skip the Docker provisioning figures")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    from agent.runtime.docker import DockerRuntime
    from agent.runtime.process import ProcessRuntime
    from scripts.dockerd import available, private_dockerd

    docker_reason = "skipped (--no-docker)" if args.no_docker else available()
    total = 3 * args.requests + 2 * args.reps * (1 if docker_reason else 2)
    result: dict[str, Any] = {}
    with (
        tempfile.TemporaryDirectory() as tmp,
        tqdm(total=total, file=sys.stderr, disable=args.json, leave=False) as bar,
    ):
        result["queries"] = bench_queries(args.requests, Path(tmp), bar)
        result["provision_process"] = bench_provisioning(
            lambda: ProcessRuntime("127.0.0.1", Path(tmp) / "p"), args.reps, bar
        )
        if docker_reason is None:
            with private_dockerd() as engine:
                os.environ["DOCKER_HOST"] = engine.host
                result["provision_docker"] = bench_provisioning(
                    lambda: DockerRuntime("bench", "127.0.0.1"), args.reps, bar
                )
        else:
            result["provision_docker"] = {"skipped": docker_reason}
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    q = result["queries"]
    print("Endpoint queries on loopback (keep-alive client, ms)")
    series = {
        "bare": "bare FastAPI constant JSON",
        "query_one": "GET /services/{model}",
        "services_1": "GET /services, 1 model",
        "services_20": "GET /services, 20 models",
    }
    for key, label in series.items():
        print(f"  {label:<28} p50 {q[key]['p50_ms']:6.2f}  p99 {q[key]['p99_ms']:6.2f}")
    ratio = f"p50 {q['query_one_ratio_p50']:.2f}x, p99 {q['query_one_ratio_p99']:.2f}x"
    print(f"  /services/{{model}} vs bare: {ratio} (goal <= 1.5x; thesis 103.7-154.8 ms)")
    grow = q["services_20_vs_1_p50"]
    print(f"  /services 20 vs 1 model: {grow:.2f}x (goal <= 1.5x; thesis grows 213 -> 435 ms from 1 to 3)")
    for key, label in (("provision_process", "ProcessRuntime"), ("provision_docker", "DockerRuntime (real dockerd)")):
        p = result[key]
        if "skipped" in p:
            print(f"Provisioning, {label}: {p['skipped']}")
        else:
            print(f"Provisioning to AVAILABLE, {label}: one model {p['one_model_ms_p50']:.0f} ms, four models "
                  f"{p['four_models_ms_p50']:.0f} ms (thesis K8s: 2,548 / 11,848 ms)")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
