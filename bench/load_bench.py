"""Live load bench (issue 16): a loopback cluster serving the digits model to Poisson clients, placed by the
queue-aware objective and by the baselines (the thesis's model, its nearest-node heuristic) in the same run.

For each placement (default: ``queue-p99``, the agent's default, then ``thesis`` and ``nearest``; also
``queue``, ``least-loaded``, ``queue-p99-weighted``, the queue-p99 plan served by the agents' endpoint
rule before p2c, ``--endpoint-rule weighted``, and ``queue-p99-lef`` / ``queue-p99-p2c``, the same plan under
``--endpoint-rule lef`` / ``p2c``: ``PLACEMENTS``) the bench starts
``--nodes`` agents on 127.0.0.2, .3, ... (process runtime, the stand-in server running the real digits
softmax regression, mDNS bound to loopback, as ``peerserve demo`` does), and ``--clients`` clients at
``--sites`` sites, each sending Poisson arrivals of one digits image at ``--rate`` requests/s through
the agent nearest its site. A site reports RTT ``--near-ms`` to its own node and ``--far-ms`` to the
others (``X-Peerserve-RTT``), so the leader sees a room of phones next to each board.

Phases per objective, under one unbroken load (bench/load_gen.py: the clients and their connections
live from the warm-up through the measurement): warm-up (``--warmup-s``: the leader sees the streams and
places; the bench waits until the cluster's ready instances match the last plan), then measurement
(``--measure-s``: the requests scheduled in that window). Latency
of a request = its time through the proxy on loopback (execution, queueing, proxying: real) + the
simulated RTT from the client's site to the node that served it (``X-Peerserve-Node``): loopback has
no distance, so the placement's choice of node is charged what the site reported.
Reported per objective: p50/p99 latency, requests, failures, ready instances, RSS of the model servers
(MB, from /proc of the PIDs the agents recorded), the last plan's solve time, the placement changes and
held-back plans while measuring (the leader's round counters) and the ready servers' changes sampled
every second, and the load average; then per placement where the time went (bench/load_breakdown.py:
per stage p50/p99/mean and the slow 1 %'s mean, from the answers' Server-Timing entries: the load
generator's lateness, client side, agent, transit, model server, model call, RTT, GC pauses; who the
slow 1 % are: node, site, through the leader's agent, near a placement round, bursts) and the CPU-s/s
of each process group while measuring (bench/load_cpu.py: the bench's clients, the agents, the solver,
the model servers, the rest of the machine). ``--json`` prints it all;
``--plot`` writes docs/img/load_bench.png.

The agents share this machine's CPUs: each is told ``--cores`` (default: the machine's CPUs over the
agents), the share the queue model limits its busy work to. The last line compares each queue-aware
placement's p99 with the best baseline's in this run (issue 16's target: at most 1.2x).

Uses the fixed addresses 127.0.0.2.. like the demo: on a shared machine run it under
``flock /tmp/peerserve-netns.lock``. Everything started is stopped by PID at the end.

    .venv/bin/python bench/load_bench.py [--clients 30 --rate 4 --measure-s 30] [--json] [--plot]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from agent import digits  # noqa: E402
from agent.runtime.process import recorded_server_pids  # noqa: E402
from agent.serving import pauses  # noqa: E402
from bench.load_breakdown import Breakdown, breakdown, format_breakdown  # noqa: E402
from bench.load_cpu import rates, snapshot  # noqa: E402
from bench.load_gen import ClientSpec, Sample, Window, client  # noqa: E402
from peerserve.demo import _agreed_leader, _free_port  # noqa: E402

MODEL = "digits"
PLACEMENTS = {  # name -> (the agents' placement objective, method)
    "queue-p99": ("queue-p99", "ipopt"),
    "queue": ("queue", "ipopt"),
    "thesis": ("thesis", "ipopt"),
    "nearest": ("thesis", "nearest"),
    "least-loaded": ("thesis", "least-loaded"),
    "queue-p99-weighted": ("queue-p99", "ipopt"),  # the agents' endpoint rule before p2c (ENDPOINT_RULES)
    "queue-p99-lef": ("queue-p99", "ipopt"),  # the agents' endpoint rule lef: the least expected finish
    "queue-p99-p2c": ("queue-p99", "ipopt"),  # the agents' endpoint rule p2c, named whatever the default
}
# placement -> the agents' --endpoint-rule (default p2c)
ENDPOINT_RULES = {"queue-p99-weighted": "weighted", "queue-p99-lef": "lef", "queue-p99-p2c": "p2c"}
BASELINES = ("thesis", "nearest", "least-loaded")
TARGET_P99_RATIO = 1.2  # issue 16: p99 under load no worse than 1.2x the best baseline's
SETTLE_MORE_S = 30.0  # warm-up beyond --warmup-s while rounds keep changing the servers (the thesis's plan churns)


@dataclass(frozen=True)
class LoadConfig:
    """The run's sizes (as on the command line)."""

    nodes: int = 3
    clients: int = 30
    sites: int = 3
    rate: float = 4.0
    warmup_s: float = 25.0
    measure_s: float = 30.0
    near_ms: float = 1.0
    far_ms: float = 12.0
    period_s: float = 4.0
    seed: int = 0
    cores: float = 0.0  # cores each agent reports (0: the machine's CPUs over the agents)

    def node_cores(self) -> float:
        """The cores each agent is told it has: ``cores``, else its share of this machine's CPUs."""
        return self.cores or round((os.cpu_count() or 1) / self.nodes, 3)


@dataclass(frozen=True)
class Result:
    """One objective's measured run."""

    objective: str
    p50_ms: float
    p99_ms: float
    mean_ms: float
    requests: int
    failed: int
    instances: int
    instances_per_node: dict[str, int]
    server_rss_mb: float
    solve_ms: float | None
    settle_s: float
    placement_changes: int | None = None  # rounds in the measurement whose command changed the running servers
    held_rounds: int | None = None  # rounds in the measurement whose plan the leader held back (hysteresis)
    server_changes: int = 0  # changes of the ready servers per node, sampled every second while measuring
    load_avg_1m: float = 0.0  # the machine's 1-minute load average at the end of the measurement
    failure_kinds: dict[str, int] = field(default_factory=dict)  # failed requests by HTTP status / exception
    breakdown: dict[str, Any] | None = None  # where the time went (bench/load_breakdown.py)
    cpu: dict[str, float] = field(default_factory=dict)  # CPU-s/s per process group (load_cpu.py), bench_gc_ms/_full
    leader: str = ""  # the node whose agent led (ran the solver) during the measurement


def say(msg: str, quiet: bool) -> None:
    if not quiet:
        print(msg, file=sys.stderr, flush=True)


class Cluster:
    """``nodes`` agents on loopback addresses with one objective; stopped (servers included) on exit."""

    def __init__(self, cfg: LoadConfig, objective: str, workdir: Path) -> None:
        self.cfg, self.objective, self.workdir = cfg, objective, workdir
        self.token = secrets.token_hex(16)
        self.hosts = [f"127.0.0.{2 + i}" for i in range(cfg.nodes)]
        self.ports = [_free_port(h, 8400) for h in self.hosts]
        self.procs: list[subprocess.Popen[bytes]] = []
        # One client for the bench's own queries: each new httpx client costs ~25 ms of CPU (its TLS context)
        # with the GIL held, and four a second stalled every load client in this process.
        self.http = httpx.Client(timeout=5)

    def node_id(self, i: int) -> str:
        return f"node{i}"

    def url(self, i: int) -> str:
        return f"http://{self.hosts[i]}:{self.ports[i]}"

    def start(self) -> None:
        for i, host in enumerate(self.hosts):
            data = self.workdir / self.node_id(i)
            log = open(self.workdir / f"{self.node_id(i)}.log", "ab")  # noqa: SIM115 - owned by the child
            argv = [sys.executable, "-m", "peerserve", "agent", "--host", host, "--port", str(self.ports[i]),
                    "--peer-port", str(_free_port(host, self.ports[i] + 1)), "--node-id", self.node_id(i),
                    "--data-dir", str(data), "--cluster-token", self.token, "--placement-mode", "2",
                    "--placement-period-s", str(self.cfg.period_s), "--cores", str(self.cfg.node_cores()),
                    "--placement-objective", PLACEMENTS[self.objective][0],
                    "--placement-method", PLACEMENTS[self.objective][1],
                    "--endpoint-rule", ENDPOINT_RULES.get(self.objective, "p2c")]  # fmt: skip
            env = {
                **os.environ,
                "PEERSERVE_REQUEST_WINDOW_S": str(max(20.0, self.cfg.warmup_s)),
                # 30 phones share one loopback address here: the per-address cap (64) would cut them off
                "PEERSERVE_MAX_CONNECTIONS_PER_ADDRESS": "256",
            }
            proc = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=REPO, env=env
            )
            self.procs.append(proc)

    def wait_leader(self, timeout: float = 60.0) -> str:
        from peerserve.demo import DemoAgent

        agents = [DemoAgent(i, h, p, self.workdir) for i, (h, p) in enumerate(zip(self.hosts, self.ports, strict=True))]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = _agreed_leader(agents)
            if found:
                return found[0]
            time.sleep(0.1)
        raise RuntimeError(f"no leader agreed in {timeout:.0f} s; logs in {self.workdir}")

    def instances(self) -> dict[str, int]:
        """Ready digits servers per node."""
        out = {}
        for i in range(self.cfg.nodes):
            try:
                insts = self.http.get(self.url(i) + "/stats/node").json()["instances"]
            except (httpx.HTTPError, ValueError, KeyError):
                insts = []
            out[self.node_id(i)] = sum(1 for x in insts if x.get("model") == MODEL and x.get("ready"))
        return out

    def last_plan(self) -> dict[str, Any]:
        for i in range(self.cfg.nodes):
            with contextlib.suppress(httpx.HTTPError, ValueError):
                p = self.http.get(self.url(i) + "/cluster").json().get("last_placement")
                if p:
                    return dict(p)
        return {}

    def cpu_groups(self) -> dict[str, list[int]]:
        """PIDs per process group: this bench (its clients), the agents, the model servers."""
        servers = [pid for i in range(self.cfg.nodes) for pid in recorded_server_pids(self.workdir / self.node_id(i))]
        return {"bench": [os.getpid()], "agents": [p.pid for p in self.procs], "servers": servers}

    def server_rss_mb(self) -> float:
        total = 0
        for i in range(self.cfg.nodes):
            for pid in recorded_server_pids(self.workdir / self.node_id(i)):
                with contextlib.suppress(OSError, ValueError):
                    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                        if line.startswith("VmRSS:"):
                            total += int(line.split()[1])
        return total / 1024.0

    def stop(self) -> None:
        self.http.close()
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for i in range(self.cfg.nodes):
            for pid in recorded_server_pids(self.workdir / self.node_id(i)):
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGTERM)


def site_rtts(cfg: LoadConfig, site: int) -> dict[str, float]:
    near = site % cfg.nodes
    return {f"node{j}": (cfg.near_ms if j == near else cfg.far_ms) for j in range(cfg.nodes)}


def client_specs(cfg: LoadConfig, cluster: Cluster) -> list[ClientSpec]:
    """The clients: client c at site c % sites, sending through that site's own agent."""
    images = digits.heldout_set()[0][:50]  # once (~50 ms of CPU), before any client starts
    specs = []
    for c in range(cfg.clients):
        site = c % cfg.sites
        url = cluster.url(site % cfg.nodes) + f"/v1/models/{MODEL}:predict"
        specs.append(ClientSpec(c, site, url, site_rtts(cfg, site), images[c % len(images)], cfg.rate, cfg.seed))
    return specs


def quiet_gc() -> tuple[int, ...]:
    """Freeze what the warm-up built (clients, connections), collect young objects 30x more rarely and put off
    full collections until the window ends (a few MB of cyclic garbage at most); returns the thresholds."""
    before = gc.get_threshold()
    pauses.freeze_startup_heap()
    gc.set_threshold(max(before[0], 20_000), before[1], 1_000_000)
    return before


Measured = tuple[float, dict[str, Any], list[Sample], int, dict[str, float], list[float]]


async def run_load(cfg: LoadConfig, cluster: Cluster, quiet: bool) -> Measured:
    """Warm up, then measure, under one unbroken load: (settle s, hold summary before, samples, server changes,
    CPU-s/s per process group while measuring, the leader's rounds' solve times seen while measuring)."""
    window, record, rounds = Window(), list[Sample](), set[float]()
    specs = client_specs(cfg, cluster)
    pauses.install()
    pauses.freeze_startup_heap()  # a full collection of numpy, scikit-learn, httpx stalled every client ~100 ms
    clients = [asyncio.create_task(client(spec, window, record)) for spec in specs]
    try:
        settle = await warm_up(cfg, cluster, quiet)
        before = (await asyncio.to_thread(cluster.last_plan)).get("hold", {})
        say(f"{cluster.objective}: measuring {cfg.measure_s:g} s", quiet)
        groups = await asyncio.to_thread(cluster.cpu_groups)
        full_gc = quiet_gc()
        window.start = time.monotonic()
        cpu_before = await asyncio.to_thread(snapshot, groups, window.start)
        gc_before = pauses.stats()
        window.end = window.start + cfg.measure_s
        changes = await watch_servers(cluster, window.end, rounds)
        cpu = rates(cpu_before, await asyncio.to_thread(snapshot, groups, time.monotonic()))
        gc_after = pauses.stats()
        cpu["bench_gc_ms"] = round(gc_after["paused_ms"] - gc_before["paused_ms"], 3)
        cpu["bench_gc_full"] = gc_after["full"] - gc_before["full"]
        gc.set_threshold(*full_gc)
        await asyncio.gather(*clients)
    finally:
        for task in clients:
            task.cancel()
    return settle, before, record, changes, cpu, sorted(rounds)


async def warm_up(cfg: LoadConfig, cluster: Cluster, quiet: bool) -> float:
    """Load for at least ``warmup_s`` until a round changed nothing and the ready servers stopped changing."""
    started = time.monotonic()
    before: dict[str, int] = {}
    while True:
        await asyncio.sleep(5.0)
        elapsed = time.monotonic() - started
        plan = await asyncio.to_thread(cluster.last_plan)
        have = await asyncio.to_thread(cluster.instances)
        acts = ", ".join(f"{a['op']} {a['count']} on {a['node']}" for a in plan.get("actions", [])) or "none"
        hold = plan.get("hold", {})
        verdict = f"; {'switched' if hold.get('switched', True) else 'held'}: {hold['reason']}" if hold else ""
        say(f"  [{elapsed:5.1f} s] ready servers {have}; last plan's actions: {acts}{verdict}", quiet)
        settled = plan and not plan.get("actions") and have == before and sum(have.values()) > 0
        if elapsed >= cfg.warmup_s and settled:
            return elapsed
        before = have
        if elapsed >= cfg.warmup_s + SETTLE_MORE_S:
            say(f"  servers still changing {SETTLE_MORE_S:g} s after the warm-up; measuring anyway", quiet)
            return elapsed


def measure(cfg: LoadConfig, objective: str, quiet: bool) -> Result:
    with tempfile.TemporaryDirectory(prefix=f"load-bench-{objective}-") as tmp:
        cluster = Cluster(cfg, objective, Path(tmp))
        try:
            cluster.start()
            leader = cluster.wait_leader()
            say(f"{objective}: {cfg.nodes} agents up, {leader} leads; warming up", quiet)
            settle, before, record, server_changes, cpu, rounds = asyncio.run(run_load(cfg, cluster, quiet))
            leader = cluster.last_plan().get("leader", leader)
            per_node = cluster.instances()
            rss = cluster.server_rss_mb()
            plan = cluster.last_plan()
            load = os.getloadavg()[0]
        except BaseException:
            for log in sorted(Path(tmp).glob("*.log")):
                say(f"--- {log.name} (last lines)\n" + "\n".join(log.read_text().splitlines()[-15:]), quiet)
            raise
        finally:
            cluster.stop()
    ok = np.array([x.latency_ms for x in record if x.ok])
    kinds: dict[str, int] = {}
    for x in record:
        if x.why:
            kinds[x.why] = kinds.get(x.why, 0) + 1
    pct = np.percentile(ok, [50, 99]) if len(ok) else np.array([np.nan, np.nan])
    split = breakdown(record, {s: f"node{s % cfg.nodes}" for s in range(cfg.sites)}, leader, rounds)
    return Result(
        objective,
        round(float(pct[0]), 3),
        round(float(pct[1]), 3),
        round(float(ok.mean()), 3) if len(ok) else float("nan"),
        len(record),
        sum(1 for x in record if not x.ok),
        sum(per_node.values()),
        per_node,
        round(rss, 1),
        plan.get("solve_ms"),
        round(settle, 1),
        *_hold_counts(before, plan.get("hold", {})),
        server_changes,
        round(load, 2),
        kinds,
        None if split is None else split.to_json(),
        cpu,
        leader,
    )


def _hold_counts(before: dict[str, Any], after: dict[str, Any]) -> tuple[int | None, int | None]:
    """(placement changes, held rounds) between two of the leader's round summaries (None: leader changed)."""
    if not all(isinstance(d.get(k), int) for d in (before, after) for k in ("changes", "holds")):
        return None, None
    if after["changes"] < before["changes"] or after["holds"] < before["holds"]:
        return None, None
    return after["changes"] - before["changes"], after["holds"] - before["holds"]


async def watch_servers(cluster: Cluster, until: float, rounds: set[float]) -> int:
    """Sample the ready servers and the last round every second until ``until``; returns how often the servers
    changed and adds the rounds' solve times (wall clock) to ``rounds``."""
    last, changes = await asyncio.to_thread(cluster.instances), 0
    while time.monotonic() < until:
        await asyncio.sleep(min(1.0, max(0.0, until - time.monotonic())))
        now = await asyncio.to_thread(cluster.instances)
        at = (await asyncio.to_thread(cluster.last_plan)).get("at")
        if isinstance(at, (int, float)):
            rounds.add(float(at))
        changes += now != last
        last = now
    return changes


def plot(results: list[Result], path: Path) -> Path:
    import re

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # each name on lines of at most 9 characters, broken after a hyphen ("queue-" / "p99-" / "weighted"), and a part
    # longer than that every 9 characters (review20b L4), level: five placements' names on one line touched, even
    # rotated 20 degrees (tests/unit/test_load_bench.py measures them)
    names = []
    for r in results:
        lines = [""]
        for part in re.findall(r"[^-]{1,8}-|[^-]{1,9}|-", r.objective):
            lines[-1:] = [lines[-1] + part] if len(lines[-1] + part) <= 9 or not lines[-1] else [lines[-1], part]
        names.append("\n".join(lines))
    x = np.arange(len(names))
    fig, (lat, inst, mem) = plt.subplots(1, 3, figsize=(max(13.5, 2.2 * len(names) + 2.5), 4.4))  # wider past 5
    lat.bar(x - 0.2, [r.p50_ms for r in results], 0.4, label="p50")
    lat.bar(x + 0.2, [r.p99_ms for r in results], 0.4, label="p99")
    lat.set_ylabel("latency (ms): loopback proxy time + site RTT")
    lat.legend()
    inst.bar(x, [r.instances for r in results])
    inst.set_ylabel("model servers running")
    mem.bar(x, [r.server_rss_mb for r in results])
    mem.set_ylabel("model servers' RSS (MB)")
    for ax in (lat, inst, mem):
        ax.set_xticks(x, names, fontsize=8.5)
    fig.suptitle("bench/load_bench.py: digits on a 3-agent loopback cluster, Poisson clients")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    d = LoadConfig()
    ap.add_argument("--objectives", default="queue-p99,thesis,nearest",
                    help=f"comma list of placements ({', '.join(PLACEMENTS)}), measured in this order")  # fmt: skip
    ap.add_argument("--nodes", type=int, default=d.nodes, help=f"agents (default {d.nodes})")
    ap.add_argument("--clients", type=int, default=d.clients, help=f"clients (default {d.clients})")
    ap.add_argument("--sites", type=int, default=d.sites, help=f"client sites (default {d.sites})")
    ap.add_argument("--rate", type=float, default=d.rate, help=f"requests/s per client, Poisson (default {d.rate})")
    ap.add_argument("--warmup-s", type=float, default=d.warmup_s, help=f"warm-up at least (default {d.warmup_s})")
    ap.add_argument("--measure-s", type=float, default=d.measure_s, help=f"measurement (default {d.measure_s})")
    ap.add_argument("--near-ms", type=float, default=d.near_ms, help="RTT a site reports to its own node")
    ap.add_argument("--far-ms", type=float, default=d.far_ms, help="RTT a site reports to the other nodes")
    ap.add_argument("--period-s", type=float, default=d.period_s,
                    help=f"the agents' placement period (default {d.period_s}; an agent's own is 30)")  # fmt: skip
    ap.add_argument("--seed", type=int, default=d.seed)
    ap.add_argument("--cores", type=float, default=d.cores,
                    help="cores each agent reports (default: this machine's CPUs over the agents)")  # fmt: skip
    ap.add_argument("--json", action="store_true", help="print the results as JSON on stdout")
    ap.add_argument("--plot", nargs="?", const=str(REPO / "docs/img/load_bench.png"), default=None,
                    help="write the plot (default path docs/img/load_bench.png)")  # fmt: skip
    ap.add_argument("--quiet", action="store_true", help="no progress on stderr")
    args = ap.parse_args(argv)
    if min(args.nodes, args.clients, args.sites) < 1 or args.rate <= 0 or args.nodes > 200 or args.period_s <= 0:
        ap.error("nodes (1-200), clients and sites must be at least 1, the rate and period positive")
    names = [o.strip() for o in args.objectives.split(",") if o.strip()]
    unknown = [n for n in names if n not in PLACEMENTS]
    if unknown or args.cores < 0:
        ap.error(f"unknown placement {unknown[0]!r}" if unknown else "--cores must not be negative")
    cfg = LoadConfig(args.nodes, args.clients, args.sites, args.rate, args.warmup_s, args.measure_s,
                     args.near_ms, args.far_ms, args.period_s, args.seed, args.cores)  # fmt: skip
    results = [measure(cfg, name, args.quiet) for name in names]
    ratios = p99_ratios(results)
    if args.plot:
        say(f"plot: {plot(results, Path(args.plot))}", args.quiet)
    if args.json:
        out = {"config": {**asdict(cfg), "node_cores": cfg.node_cores()}, "results": [asdict(r) for r in results]}
        print(json.dumps({**out, "p99_vs_best_baseline": ratios}, indent=1))
        return 0
    print(f"{cfg.clients} clients at {cfg.sites} sites, {cfg.rate:g} req/s each (Poisson), {cfg.nodes} agents, "
          f"digits; latency = loopback proxy time + site RTT ({cfg.near_ms:g} / {cfg.far_ms:g} ms)")  # fmt: skip
    print(f"{'placement':<13}{'p50 ms':>9}{'p99 ms':>10}{'requests':>9}{'failed':>7}{'servers':>8}{'RSS MB':>8}"
          f"{'solve ms':>9}{'changes':>8}{'held':>5}{'seen':>5}{'load':>6}")  # fmt: skip
    for r in results:
        solve = f"{r.solve_ms:.1f}" if r.solve_ms is not None else "-"
        changes = "-" if r.placement_changes is None else str(r.placement_changes)
        held = "-" if r.held_rounds is None else str(r.held_rounds)
        print(
            f"{r.objective:<13}{r.p50_ms:>9.2f}{r.p99_ms:>10.2f}{r.requests:>9}{r.failed:>7}{r.instances:>8}"
            f"{r.server_rss_mb:>8.0f}{solve:>9}{changes:>8}{held:>5}{r.server_changes:>5}{r.load_avg_1m:>6.1f}"
        )
    for r in results:
        if r.failure_kinds:
            print(f"{r.objective} failures: " + ", ".join(f"{k} x{n}" for k, n in sorted(r.failure_kinds.items())))
    for r in results:
        if r.breakdown:
            print("\n".join(format_breakdown(r.objective, Breakdown(**r.breakdown))))
        if r.cpu:
            rates_ = ", ".join(f"{k} {v:.3f}" for k, v in r.cpu.items() if not k.startswith("bench_gc"))
            print(f"  CPU-s/s while measuring ({r.leader} led): {rates_}; the bench's own GC pauses "
                  f"{r.cpu.get('bench_gc_ms', 0):.1f} ms ({r.cpu.get('bench_gc_full', 0):.0f} full)")  # fmt: skip
    print("changes: rounds whose command changed the servers while measuring; held: plans held back; seen: changes "
          "of the ready servers sampled every second; load: 1-minute load average")  # fmt: skip
    for name, ratio in ratios.items():
        verdict = "meets" if ratio["ratio"] <= TARGET_P99_RATIO else "misses"
        print(f"{name}: p99 {ratio['ratio']:.2f}x the best baseline's ({ratio['baseline']}, same run); "
              f"{verdict} the {TARGET_P99_RATIO:g}x target")  # fmt: skip
    return 0


def p99_ratios(results: list[Result]) -> dict[str, dict[str, Any]]:
    """Per queue-aware placement: its p99 over the best (lowest) p99 among the baselines of this run."""
    base = [r for r in results if r.objective in BASELINES and r.p99_ms == r.p99_ms]
    if not base:
        return {}
    best = min(base, key=lambda r: r.p99_ms)
    return {
        r.objective: {"ratio": round(r.p99_ms / best.p99_ms, 3), "baseline": best.objective}
        for r in results
        if r.objective not in BASELINES and best.p99_ms > 0
    }


if __name__ == "__main__":
    raise SystemExit(main())
