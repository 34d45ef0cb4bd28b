"""`peerserve demo`: a cluster of agents on loopback, a client workload, and a leader failover.

Embedded default (no Docker, no Jetson, no root): N agents on 127.0.0.2, .3, ... with the process
runtime and the stand-in TF-Serving server, mDNS bound to loopback. Three simulated client sites each
send predict requests for their model through the client library, reporting an RTT that puts each site
next to one node (the placement follows them). Halfway, the leader is killed with SIGKILL: the survivors
elect a new leader, which places the dead node's models again. Everything started is stopped at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from peerserve import agent_procs

SITES = [("half_plus_two", [1.0, 2.0, 5.0]), ("half_plus_three", [1.0]), ("xor_mlp", [[0, 1], [1, 1]])]


@dataclass
class DemoAgent:
    index: int
    host: str
    port: int
    data_dir: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def node_id(self) -> str:
        return f"node{self.index}"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


@dataclass
class Tally:
    lock: threading.Lock = field(default_factory=threading.Lock)
    results: list[tuple[float, bool, float, str]] = field(default_factory=list)  # (t, ok, ms, error)

    def add(self, t: float, ok: bool, ms: float, error: str = "") -> None:
        with self.lock:
            self.results.append((t, ok, ms, error))


def _free_port(host: str, preferred: int) -> int:
    for port in (preferred, 0):
        with socket.socket() as s:
            try:
                s.bind((host, port))
                return int(s.getsockname()[1])
            except OSError:
                continue
    raise RuntimeError(f"no free port on {host}")


def _cluster(url: str) -> dict[str, Any]:
    import httpx  # here, not at the top: `peerserve --help` registers this module's command and needs no httpx

    try:
        return dict(httpx.get(url + "/cluster", timeout=1.0).json())
    except (httpx.HTTPError, ValueError):
        return {}


def _agreed_leader(agents: list[DemoAgent]) -> tuple[str, int] | None:
    views = [_cluster(a.url) for a in agents]
    pairs = {(v.get("leader"), v.get("term")) for v in views}
    if len(pairs) != 1:
        return None
    leader, term = pairs.pop()

    def alive(view: dict[str, Any]) -> int:
        return sum(1 for m in view.get("members", []) if m.get("status") == "alive")

    if leader not in {a.node_id for a in agents} or not all(alive(v) == len(agents) for v in views):
        return None  # a killed leader stays the leader its followers accept while they only suspect it
    return str(leader), int(term or 0)


class Demo:
    def __init__(self, nodes: int, duration: float, say: Any, workdir: Path, placement_period_s: float) -> None:
        self.say = say
        self.duration = duration
        self.workdir = workdir
        self.period = placement_period_s
        self.token = secrets.token_hex(16)
        self.agents = []
        for i in range(nodes):
            host = f"127.0.0.{2 + i}"
            self.agents.append(DemoAgent(i, host, _free_port(host, 8400), workdir / f"node{i}"))
        self.tally = Tally()
        self.placements: list[dict[str, Any]] = []
        self.stop = threading.Event()

    # -- agents ----------------------------------------------------------------------------------
    def start_agents(self) -> None:
        for a in self.agents:
            argv = agent_procs.agent_argv(
                a.node_id, a.host, a.port, a.data_dir, self.token, "--placement-period-s", str(self.period),
                "--placement-mode", "auto", "--log-level", "info", peer_port=_free_port(a.host, a.port + 1),
            )  # fmt: skip
            a.proc = agent_procs.spawn(argv, self.workdir / f"{a.node_id}.log")
            self.say(f"started {a.node_id} at {a.url} (pid {a.proc.pid})")

    def wait_for_leader(self, agents: list[DemoAgent], timeout: float = 60.0) -> tuple[str, int]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = _agreed_leader(agents)
            if found:
                return found
            time.sleep(0.05)
        raise RuntimeError("the agents did not agree on a leader; see the logs in " + str(self.workdir))

    def shutdown(self) -> None:
        """Stop every agent (SIGTERM, all at once), then the model servers of those we killed, by PID."""
        for a in self.agents:
            if a.proc is not None and a.proc.poll() is None:
                a.proc.send_signal(signal.SIGTERM)
        for a in self.agents:
            agent_procs.stop(a.proc)
            agent_procs.kill_servers(a.data_dir, signal.SIGTERM)

    # -- workload --------------------------------------------------------------------------------
    def client_loop(self, site: int) -> None:
        import httpx

        from client import Client, PeerserveError

        model, instances = SITES[site % len(SITES)]
        near = self.agents[site % len(self.agents)].node_id
        rtts = {a.node_id: (0.5 if a.node_id == near else 8.0) for a in self.agents}
        with Client(agents=[a.url for a in self.agents], client_id=f"site{site}", timeout=2.0,
                    rtt_override=rtts, rtt_ttl_s=5.0) as c:  # fmt: skip
            while not self.stop.is_set():
                started = time.perf_counter()
                try:
                    c.predict(model, instances=instances)
                    self.tally.add(time.monotonic(), True, 1000 * (time.perf_counter() - started))
                except (PeerserveError, httpx.HTTPError) as exc:
                    self.tally.add(time.monotonic(), False, 0.0, f"{type(exc).__name__}: {exc}"[:200])
                    time.sleep(0.2)
                time.sleep(0.05)

    def watch_placements(self, leader_url: str) -> None:
        placement = _cluster(leader_url).get("last_placement")
        if placement and (not self.placements or placement["at"] != self.placements[-1]["at"]):
            self.placements.append(placement)
            acts = ", ".join(f"{x['op']} {x['model']} on {x['node']}" for x in placement.get("actions") or []) or "none"
            self.say(
                f"placement by {placement['leader']} (term {placement['term']}): {placement['requests']} request "
                f"streams, objective {placement['objective_ms']:.1f} ms, solve {placement['solve_ms']:.1f} ms, "
                f"actions: {acts}"
            )

    # -- the run ---------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        import httpx

        self.start_agents()
        leader, term = self.wait_for_leader(self.agents)
        self.say(f"discovery complete; {leader} is leader at term {term}")
        threads = [threading.Thread(target=self.client_loop, args=(s,), daemon=True) for s in range(len(SITES))]
        started = time.monotonic()
        for t in threads:
            t.start()
        killed_at = failover_ms = replaced_at = None
        leader_after, term_after = leader, term
        survivors = list(self.agents)
        shown_endpoints = False
        last_line = 0.0
        while time.monotonic() - started < self.duration:
            time.sleep(0.1)
            now = time.monotonic()
            current = next((a for a in survivors if a.node_id == leader_after), survivors[0])
            if now - last_line >= 1.0:
                last_line = now
                self.watch_placements(current.url)
                if not shown_endpoints and self.placements:
                    with contextlib.suppress(httpx.HTTPError, ValueError):
                        for e in httpx.get(current.url + "/services", timeout=2).json():
                            self.say(f"endpoint: {e['model']} -> {e['node']} {e['url']}")
                            shown_endpoints = True
                self.progress(now - started, leader_after, term_after)
            if killed_at is None and now - started >= self.duration / 2:
                victim = next(a for a in self.agents if a.node_id == leader)
                self.say(f"killing the leader {leader} (SIGKILL, pid {victim.proc.pid if victim.proc else '?'})")
                killed_at = time.monotonic()
                assert victim.proc is not None
                victim.proc.kill()
                victim.proc.wait()
                survivors = [a for a in self.agents if a is not victim]
                leader_after, term_after = self.wait_for_leader(survivors, timeout=30)
                failover_ms = 1000 * (time.monotonic() - killed_at)
                self.say(f"new leader {leader_after} at term {term_after}, agreed by all survivors "
                         f"{failover_ms:.0f} ms after the kill")  # fmt: skip
            if killed_at is not None and replaced_at is None:
                p = _cluster(next(a for a in survivors if a.node_id == leader_after).url).get("last_placement")
                if p and p.get("term") == term_after:
                    replaced_at = time.monotonic()
                    self.watch_placements(next(a for a in survivors if a.node_id == leader_after).url)
        self.stop.set()
        for t in threads:
            t.join(10)
        self.watch_placements(next(a for a in survivors if a.node_id == leader_after).url)
        return self.summary(leader, leader_after, killed_at, failover_ms, replaced_at)

    def progress(self, elapsed: float, leader: str, term: int) -> None:
        with self.tally.lock:
            oks = [r[2] for r in self.tally.results if r[1]]
            failed = sum(1 for r in self.tally.results if not r[1])
        p50 = statistics.median(oks) if oks else 0.0
        self.say(f"[{elapsed:5.1f}/{self.duration:.0f} s] leader {leader} term {term} | requests ok {len(oks)} "
                 f"failed {failed} | p50 {p50:.1f} ms", progress=True)  # fmt: skip

    def summary(self, before: str, after: str, killed_at: float | None, failover_ms: float | None,
                replaced_at: float | None) -> dict[str, Any]:  # fmt: skip
        with self.tally.lock:
            results = list(self.tally.results)
        oks = sorted(r[2] for r in results if r[1])
        window_end = (replaced_at or killed_at or 0.0) + 1.0
        outside = [r for r in results if not r[1] and not (killed_at is not None and killed_at <= r[0] <= window_end)]
        return {
            "nodes": len(self.agents),
            "duration_s": self.duration,
            "leader_before": before,
            "leader_after": after,
            "failover_ms": None if failover_ms is None else round(failover_ms, 1),
            "replacement_ms": None
            if replaced_at is None or killed_at is None
            else round(1000 * (replaced_at - killed_at), 1),
            "requests_ok": len(oks),
            "requests_failed": len(results) - len(oks),
            "failed_outside_failover_window": len(outside),
            "errors": sorted({r[3] for r in results if not r[1]})[:5],
            "latency_ms": {
                "p50": round(statistics.median(oks), 3) if oks else None,
                "p99": round(oks[int(0.99 * (len(oks) - 1))], 3) if oks else None,
            },
            "placements": self.placements,
        }


def register(commands: Any) -> None:
    p = commands.add_parser(
        "demo",
        help="run a demo cluster on loopback with a workload and a leader failover",
        description=(
            "Start N agents on 127.0.0.2... (process runtime, stand-in TF-Serving server, mDNS on loopback), "
            "wait for discovery and a leader, run three client sites' predict workload through the client "
            "library, kill the leader halfway and show the failover, then stop everything. No Docker, no "
            "Jetson, no root. Exit 0 when no request failed outside the failover window."
        ),
    )
    p.add_argument("--nodes", type=int, default=3, help="agents to start (default 3, at least 2)")
    p.add_argument("--duration", type=float, default=30.0, help="seconds of workload (default 30)")
    p.add_argument("--placement-period-s", type=float, default=4.0, help="leader's placement period (default 4)")
    p.add_argument("--json", action="store_true", help="print only a JSON summary at the end")
    p.set_defaults(handler=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    from peerserve.errors import UsageError

    if args.nodes < 2 or args.nodes > 50:
        raise UsageError("--nodes must be between 2 and 50")
    if args.duration < 6:
        raise UsageError("--duration must be at least 6 seconds (the leader is killed halfway)")
    tty = sys.stderr.isatty()

    def say(message: str, progress: bool = False) -> None:
        if args.json:
            return
        if progress and tty:
            print("\r" + message, end="", file=sys.stderr, flush=True)
        elif progress:
            if int(message[1:6].strip().split(".")[0] or 0) % 5 == 0:
                print(message, file=sys.stderr, flush=True)
        else:
            print(("\n" if tty else "") + message, file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="peerserve-demo-") as tmp:
        demo = Demo(args.nodes, args.duration, say, Path(tmp), args.placement_period_s)
        try:
            summary = demo.run()
        except KeyboardInterrupt:
            say("interrupted; stopping the agents")
            return 130
        except RuntimeError as exc:
            print(f"peerserve demo: {exc}", file=sys.stderr)
            for a in demo.agents:
                log = Path(tmp) / f"{a.node_id}.log"
                if log.exists():
                    print(f"--- {a.node_id} log tail ---\n{log.read_text()[-1500:]}", file=sys.stderr)
            return 1
        finally:
            demo.stop.set()
            demo.shutdown()
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(
            f"\nsummary: leader {summary['leader_before']} -> {summary['leader_after']} "
            f"(failover {summary['failover_ms']} ms, models placed again {summary['replacement_ms']} ms after the "
            f"kill); requests ok {summary['requests_ok']}, failed {summary['requests_failed']} "
            f"({summary['failed_outside_failover_window']} outside the failover window); latency p50 "
            f"{summary['latency_ms']['p50']} ms p99 {summary['latency_ms']['p99']} ms; "
            f"{len(summary['placements'])} placements"
        )
    ok = summary["requests_ok"] > 0 and summary["failed_outside_failover_window"] == 0
    return 0 if ok else 1
