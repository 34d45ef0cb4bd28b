"""Membership at scale: real agents on loopback (seeds, mDNS off), per-agent CPU, kill -9 detection, joins.

For each cluster size N: start N agents on 127.0.0.1 (own ports), agent 0 without seeds and every other
one with agent 0 as its only seed (the heartbeat code of ``--before-rev`` learns only its seeds: there
every agent gets all the others); wait until every agent sees every other alive; measure per-agent CPU
(agent process tree, from /proc via psutil) over ``--window`` seconds idle, each agent's RSS (process tree)
at its end, and the membership exchanges per agent by kind and the connections it opened (the agents'
/metrics: peerserve_membership_messages_total, peerserve_peer_connections_opened_total); start one more agent (seeded
with agent 0) and time until every member logged it alive (from its first /health answer); kill -9 one
follower and take, from every member's log, when it logged that node dead (p50/p99 over members). With
``--soak S`` the largest size then runs S seconds with the machine loaded (busy processes + client
queries) and every death of a live node is counted (a false death).

``--before-rev REV`` runs the same CPU/detection measurement on the code of git revision REV (e.g. main
before SWIM: all-to-all heartbeats), extracted with ``git archive``, in the same run, for
``--before-sizes`` (all-to-all at 25+ agents saturates two cores, which is the point).

    .venv/bin/python bench/membership_bench.py [--sizes 5,10,25] [--window S] [--soak S] [--soak-at N]
        [--soak-hogs K] [--before-rev main --before-sizes 5,10] [--plot docs/img/membership_cpu.png] [--json]

Issue #13's figures (on an otherwise idle machine; ~15 min at 5, 25 and 50 agents, then the 5-minute soak
at 50 with two busy processes: the whole of a 2-core machine):

    flock /tmp/peerserve-netns.lock .venv/bin/python bench/membership_bench.py --sizes 5,25,50 \\
        --soak 300 --soak-at 50 --soak-hogs 2 --json > membership.json
    .venv/bin/python bench/membership_bench.py --from-json membership.json    # the table and the targets

``--bed`` runs the same measurement (no soak, no before) with each agent on its own host of the namespace test
bed, mDNS on and no seeds (bench/membership_bed.py; root, under the netns lock); rows are labelled "bed (mDNS)":

    flock /tmp/peerserve-netns.lock .venv/bin/python bench/membership_bench.py --bed --sizes 5,10 --json > bed.json

The output ends with the targets: follower CPU at the largest size / at the smallest (<= 1.5), kill -9
dead everywhere p99 (<= 3 s), a new member alive everywhere (<= 3 s), and the soak's false deaths (0).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.common import extract_revision  # noqa: E402
from tests.service.conftest import TOKEN, free_port  # noqa: E402

LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) .*peer (\S+): (\S+) -> (\S+)")


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass
class Agent:
    name: str
    port: int
    proc: subprocess.Popen[bytes]
    log: Path

    def get(self, path: str) -> httpx.Response:
        """GET ``path`` from this agent's HTTP API (raises httpx.HTTPError)."""
        return httpx.get(f"http://127.0.0.1:{self.port}{path}", timeout=5)

    def cluster(self) -> dict[str, Any]:
        try:
            return dict(self.get("/cluster").json())
        except (httpx.HTTPError, ValueError):
            return {}

    def alive_peers(self) -> set[str]:
        """Members this agent holds alive or suspect (known and not dead)."""
        view = self.cluster()
        return {m["node_id"] for m in view.get("members", []) if m["status"] != "dead"} - {self.name}

    def transitions(self) -> list[tuple[float, str, str, str]]:
        """(wall time, node, old, new) of every membership transition this agent logged."""
        out = []
        for line in self.log.read_text(errors="replace").splitlines():
            m = LOG_LINE.match(line)
            if m:
                ts = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
                out.append((ts, m.group(2), m.group(3), m.group(4)))
        return out


@dataclass
class Cluster:
    code: Path
    tmp: Path
    agents: list[Agent] = field(default_factory=list)

    def start(self, name: str, seeds: list[int], port: int = 0) -> Agent:
        port = port or free_port()
        peer = free_port()
        log = self.tmp / f"{name}.log"
        env = {**os.environ, "PYTHONPATH": str(self.code), "PEERSERVE_MDNS": "false"}
        args = [sys.executable, "-m", "peerserve", "agent", "--host", "127.0.0.1", "--port", str(port),
                "--peer-port", str(peer), "--node-id", name, "--data-dir", str(self.tmp / name),
                "--cluster-token", TOKEN, "--no-crash-backoff"]  # fmt: skip
        if seeds:
            args += ["--seeds", ",".join(f"http://127.0.0.1:{p}" for p in seeds)]
        with open(log, "ab") as out:
            proc = subprocess.Popen(args, cwd=self.code, env=env, stdout=out, stderr=subprocess.STDOUT)
        agent = Agent(name, port, proc, log)
        self.agents.append(agent)
        return agent

    def boot(self, name: str, seeds: list[int], port: int = 0, tries: int = 3) -> Agent:
        """Start an agent and wait until it answers ``/cluster`` as itself. A start that died (a port another
        process took meanwhile: another bench's agent answered for it once) is retried on new ports."""
        for attempt in range(tries):
            agent = self.start(name, seeds, port if attempt == 0 else 0)
            with contextlib.suppress(RuntimeError):
                wait(lambda a=agent: a.proc.poll() is not None or a.cluster().get("node_id") == name, 60, 0.05)
            if agent.proc.poll() is None and agent.cluster().get("node_id") == name:
                return agent
            say(f"{name} did not start (exit code {agent.proc.poll()}; see {agent.log}): again on new ports")
            if agent.proc.poll() is None:
                agent.proc.kill()
            agent.proc.wait()
            self.agents.remove(agent)
        raise RuntimeError(f"{name} did not start in {tries} tries")

    def stop(self) -> None:
        for a in self.agents:
            if a.proc.poll() is None:
                a.proc.send_signal(signal.SIGKILL)
        for a in self.agents:
            a.proc.wait()

    def live(self) -> list[Agent]:
        return [a for a in self.agents if a.proc.poll() is None]


def wait(predicate: Any, timeout: float, step: float = 0.5) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():
            return time.monotonic() - start
        time.sleep(step)
    raise RuntimeError(f"condition not met within {timeout} s")


def cpu_seconds(agent: Agent) -> float:
    try:
        p = psutil.Process(agent.proc.pid)
        procs = [p, *p.children(recursive=True)]
        return sum(sum(q.cpu_times()[:2]) for q in procs)
    except psutil.Error:
        return 0.0


def rss_mb(agent: Agent) -> float:
    """Resident memory of the agent's process tree (MiB)."""
    try:
        p = psutil.Process(agent.proc.pid)
        return float(sum(q.memory_info().rss for q in [p, *p.children(recursive=True)])) / 2**20
    except psutil.Error:
        return float("nan")


METRIC = re.compile(r'^peerserve_membership_messages_total\{direction="(\w+)",kind="(\w+)"\} ([0-9.e+]+)$|'
                    r"^peerserve_peer_connections_opened_total ([0-9.e+]+)$")  # fmt: skip


def traffic(agent: Agent) -> dict[str, float]:
    """The agent's membership counters from /metrics: 'sent:ping' ..., and 'opened' (connections it opened)."""
    try:
        text = agent.get("/metrics").text
    except httpx.HTTPError:
        return {}
    out: dict[str, float] = {}
    for line in text.splitlines():
        m = METRIC.match(line)
        if m and m.group(4) is not None:
            out["opened"] = float(m.group(4))
        elif m:
            out[f"{m.group(1)}:{m.group(2)}"] = float(m.group(3))
    return out


def rates(before: dict[str, dict[str, float]], after: dict[str, dict[str, float]], spent: float) -> dict[str, float]:
    """Per-agent mean rate of each counter over the window (agents without counters, e.g. old code, left out)."""
    names = [n for n in after if after[n]]
    keys = sorted({k for n in names for k in after[n]})
    return {k: sum(after[n].get(k, 0) - before.get(n, {}).get(k, 0) for n in names) / spent / len(names)
            for k in keys} if names else {}  # fmt: skip


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))] if s else float("nan")


def first_time(agent: Agent, node: str, new: str, after: float) -> float | None:
    hits = [ts for ts, n, _old, nw in agent.transitions() if n == node and nw == new and ts >= after - 0.01]
    return min(hits) if hits else None


def run_size(code: Path, n: int, window: float, soak: float, label: str, hogs: int = 2) -> dict[str, Any]:
    """One cluster of ``n`` agents: its figures, or ``failed`` (where it broke, with the load average)."""
    started = time.monotonic()
    try:
        return measure_size(code, n, window, soak, label, hogs)
    except RuntimeError as exc:
        say(f"[{label}] N={n} FAILED after {time.monotonic() - started:.0f} s: {exc}")
        return {"n": n, "failed": str(exc), "load_avg_1m": os.getloadavg()[0]}


def measure_size(code: Path, n: int, window: float, soak: float, label: str, hogs: int = 2) -> dict[str, Any]:
    """One cluster of ``n`` agents from checkout ``code``: CPU, a join and a kill -9."""
    with tempfile.TemporaryDirectory(prefix=f"membench-{label}-{n}-") as tmp:
        c = Cluster(code, Path(tmp))
        try:
            say(f"[{label}] starting {n} agents")
            ports = [free_port() for _ in range(n)]
            for i in range(n):  # SWIM: one seed each; the heartbeat code learns only its seeds, so all of them
                seeds = [p for p in ports if p != ports[i]] if label == "before" else ports[:1] if i else []
                ports[i] = c.boot(f"m{i}", seeds, ports[i]).port  # one after another, as boards boot
            seeds = [a.port for a in c.agents] if label == "before" else [c.agents[0].port]
            return measure_booted(c, window, soak, label, hogs, seeds)
        finally:
            c.stop()


def measure_booted(c: Cluster, window: float, soak: float, label: str, hogs: int, seeds: list[int]) -> dict[str, Any]:
    """Figures of a booted cluster: convergence, idle CPU/RSS, a join (seeded with ``seeds``), a kill -9, a soak."""
    n = len(c.agents)
    seed = c.agents[0]
    names = {a.name for a in c.agents}
    booted = time.monotonic()
    say(f"[{label}] {n} agents answer (load average {os.getloadavg()[0]:.1f}); waiting for convergence")
    try:
        took = wait(lambda: all(a.alive_peers() == names - {a.name} for a in c.agents), 120 + 4 * n, 1.0)
    except RuntimeError as exc:
        short = min(len(a.alive_peers()) for a in c.agents)
        raise RuntimeError(f"not converged {time.monotonic() - booted:.0f} s after the last agent answered "
                           f"(fewest peers seen alive: {short} of {n - 1}; "
                           f"load average {os.getloadavg()[0]:.1f})") from exc  # fmt: skip
    say(f"[{label}] {n} agents converged {took:.1f} s after the last one answered; settling")
    time.sleep(5)
    leader = seed.cluster().get("leader")
    out: dict[str, Any] = {"n": n, "leader": leader, "converge_s": took, **idle_window(c, leader, window)}
    out["terms"] = len({a.cluster().get("term") for a in c.agents})
    say(f"[{label}] N={n}: follower CPU {out['follower_cpu']:.4f} CPU-s/s, leader ({leader}) "
        f"{out['leader_cpu']:.4f}; follower RSS median {out['follower_rss_mb']:.1f} MiB, max "
        f"{out['follower_rss_max_mb']:.1f}; exchanges sent/received per agent per s "
        f"{out['sent_per_s']:.2f}/{out['received_per_s']:.2f}, handshakes {out['opened_per_s']:.3f}/s; "
        f"load average {out['load_avg_1m']:.1f}, distinct terms now {out['terms']}")  # fmt: skip
    out.update(join(c, seeds))
    out.update(kill(c, leader))
    if soak > 0:
        out.update(soak_run(c, soak, hogs))
    return out


def idle_window(c: Cluster, leader: Any, window: float) -> dict[str, Any]:
    """``window`` idle seconds: per-agent CPU, RSS, and membership exchanges by kind (followers)."""
    followers = [a for a in c.agents if a.name != leader]
    before = {a.name: cpu_seconds(a) for a in c.agents}
    counted = {a.name: traffic(a) for a in followers}
    t0 = time.monotonic()
    time.sleep(window)
    spent = time.monotonic() - t0
    cpu = {a.name: (cpu_seconds(a) - before[a.name]) / spent for a in c.agents}
    per_kind = rates(counted, {a.name: traffic(a) for a in followers}, spent)
    rss = sorted(rss_mb(a) for a in followers)
    fcpu = [cpu[a.name] for a in followers]
    return {"follower_cpu": sum(fcpu) / len(fcpu), "follower_cpu_max": max(fcpu), "leader_cpu": cpu.get(str(leader)),
            "follower_rss_mb": rss[len(rss) // 2], "follower_rss_max_mb": rss[-1],
            "leader_rss_mb": next((rss_mb(a) for a in c.agents if a.name == leader), None),
            "exchanges_per_s": per_kind, "opened_per_s": per_kind.get("opened", float("nan")),
            "sent_per_s": sum(v for k, v in per_kind.items() if k.startswith("sent:")),
            "received_per_s": sum(v for k, v in per_kind.items() if k.startswith("received:")),
            "machine_cpus": os.cpu_count(), "load_avg_1m": os.getloadavg()[0]}  # fmt: skip


def join(c: Cluster, seeds: list[int]) -> dict[str, Any]:
    members = c.live()
    new = c.boot(f"m{len(c.agents)}", seeds)
    ready = time.time()
    wait(lambda: all(first_time(a, new.name, "alive", ready - 60) for a in members), 30, 0.25)
    times = [float(first_time(a, new.name, "alive", ready - 60) or 0) - ready for a in members]
    say(f"[join] {new.name} alive at every member {max(times):.2f} s after its first /health answer")
    return {"join_max_s": max(times), "join_p50_s": pct(times, 0.5)}


def kill(c: Cluster, leader: Any) -> dict[str, Any]:
    victim = next(a for a in reversed(c.live()[:-1]) if a.name not in (leader, c.agents[0].name))
    others = [a for a in c.live() if a is not victim]
    t_kill = time.time()
    victim.proc.send_signal(signal.SIGKILL)
    victim.proc.wait()
    with contextlib.suppress(RuntimeError):
        wait(lambda: all(first_time(a, victim.name, "dead", t_kill) for a in others), 30, 0.25)
    seen = [first_time(a, victim.name, "dead", t_kill) for a in others]
    times = [t - t_kill for t in seen if t is not None]
    missed = sum(1 for t in seen if t is None)
    say(f"[kill -9] {victim.name}: dead at {len(times)}/{len(others)} members, "
        f"p50 {pct(times, 0.5):.2f} s, p99 {pct(times, 0.99):.2f} s")  # fmt: skip
    return {"victim": victim.name, "detect_p50_s": pct(times, 0.5), "detect_p99_s": pct(times, 0.99),
            "detect_max_s": max(times, default=None), "detect_missed": missed, "kill_at": t_kill}  # fmt: skip


def _busy(stop_at: float) -> None:
    while time.time() < stop_at:
        pass


def soak_run(c: Cluster, seconds: float, hogs_n: int = 2) -> dict[str, Any]:
    """``seconds`` with ``hogs_n`` busy processes (one core each) and a client querying every agent; deaths of
    live nodes counted (false deaths), and what the hogs and the agents actually got of the CPU."""
    start = time.time()
    live = c.live()
    hogs = [subprocess.Popen([sys.executable, "-c", f"import time\nwhile time.time() < {start + seconds + 30}: pass"])
            for _ in range(hogs_n)]  # fmt: skip
    agents_cpu = sum(cpu_seconds(a) for a in live)
    stop = threading.Event()

    def client() -> None:
        with httpx.Client(timeout=10) as h:
            while not stop.is_set():
                for a in live:
                    if stop.is_set():
                        break
                    with contextlib.suppress(httpx.HTTPError):
                        h.get(f"http://127.0.0.1:{a.port}/services")

    t = threading.Thread(target=client, daemon=True)
    t.start()
    say(f"[soak] {seconds:.0f} s loaded: {hogs_n} busy processes (of {os.cpu_count()} cores) + a client querying "
        "/services round-robin")  # fmt: skip
    time.sleep(seconds)
    agents_cpu = (sum(cpu_seconds(a) for a in live) - agents_cpu) / seconds
    hog_cpu = 0.0
    for h in hogs:
        with contextlib.suppress(psutil.Error):
            hog_cpu += sum(psutil.Process(h.pid).cpu_times()[:2]) / seconds
    stop.set()
    t.join()
    for h in hogs:  # read above while they ran; ours, ended by their own pid
        h.kill()
        h.wait()
    names = {a.name for a in live}
    false = [(a.name, n) for a in live for ts, n, _o, new in a.transitions() if ts >= start and new == "dead"
             and n in names]  # fmt: skip
    load = os.getloadavg()
    terms = {a.cluster().get("term") for a in live}
    say(f"[soak] false deaths: {len(false)} {false[:5]}; hogs got {hog_cpu:.2f} CPU-s/s, the agents {agents_cpu:.2f}; "
        f"load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}")  # fmt: skip
    return {"soak_s": seconds, "soak_false_deaths": len(false), "soak_false": false[:20], "soak_load_avg": list(load),
            "soak_terms_after": len(terms), "soak_hogs": hogs_n, "soak_hog_cpu": hog_cpu,
            "soak_agents_cpu": agents_cpu}  # fmt: skip


def plot(now: list[dict[str, Any]], before: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    ax.plot([r["n"] for r in now], [r["follower_cpu"] for r in now], "o-", label="SWIM: follower (measured)")
    ax.plot([r["n"] for r in now], [r["leader_cpu"] for r in now], "s--", label="SWIM: leader (measured)")
    if before:
        ax.plot([r["n"] for r in before], [r["follower_cpu"] for r in before], "o-", label="heartbeats: follower")
    ns = [r["n"] for r in now]
    ax.plot(ns, [0.011 + 0.0055 * (n - 1) for n in ns], ":", label="heartbeats: follower (issue #13 fit)")
    ax.set_xlabel("agents in the cluster")
    ax.set_ylabel("CPU-seconds per second per agent")
    ax.set_title("Membership cost per agent (loopback, 2 shared cores)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Run every size (and the --before-rev sizes); the figures as --json prints them."""
    sizes = [int(x) for x in args.sizes.split(",") if x]
    if args.bed:
        from bench.membership_bed import LABEL, run_bed_size

        return with_ratios({"now": [run_bed_size(n, args.window) for n in sizes], "before": [], "mode": LABEL})
    soak_at = args.soak_at or max(sizes)
    now = [run_size(REPO, n, args.window, args.soak if n == soak_at else 0.0, "now", args.soak_hogs) for n in sizes]
    before: list[dict[str, Any]] = []
    if args.before_rev:
        with tempfile.TemporaryDirectory(prefix="membench-before-") as tmp:
            code = extract_revision(args.before_rev, Path(tmp))
            before = [run_size(code, int(n), args.window, 0.0, "before") for n in args.before_sizes.split(",") if n]
    return with_ratios({"now": now, "before": before, "before_rev": args.before_rev})


def with_ratios(figures: dict[str, Any]) -> dict[str, Any]:
    """``figures`` with each measured size's follower CPU as a ratio to the smallest size's (same run)."""
    ok = [r for r in figures["now"] if "failed" not in r]
    for r in ok:
        r["cpu_ratio_to_smallest"] = r["follower_cpu"] / ok[0]["follower_cpu"]
    return figures


def main() -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # a timeout's SIGTERM still kills every agent (finally)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C tears down too, even if started ignoring it
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="5,10,25", help="cluster sizes, comma-separated (default 5,10,25)")
    ap.add_argument("--window", type=float, default=20.0, help="idle CPU window in seconds (default 20)")
    ap.add_argument("--soak", type=float, default=0.0, help="loaded seconds at the largest size (default 0)")
    ap.add_argument("--soak-at", type=int, default=0, help="the size that soaks (default: the largest)")
    ap.add_argument(
        "--soak-hogs", type=int, default=2, help="busy processes during the soak, one core each (default 2)"
    )
    ap.add_argument("--before-rev", default="", help="git revision to measure in the same run (e.g. main)")
    ap.add_argument("--before-sizes", default="5,10", help="sizes for --before-rev (default 5,10)")
    ap.add_argument("--plot", default="", help="write the CPU-against-size plot here (PNG)")
    ap.add_argument("--bed", action="store_true", help="agents in the namespace test bed, mDNS on, no seeds (root; "
                    "under flock /tmp/peerserve-netns.lock; --soak and --before-rev do not apply)")  # fmt: skip
    ap.add_argument("--json", action="store_true", help="print the figures as JSON on stdout")
    ap.add_argument("--from-json", default="", help="print (and plot) figures saved by an earlier --json run")
    args = ap.parse_args()
    figures = json.loads(Path(args.from_json).read_text()) if args.from_json else measure(args)
    now, before = figures["now"], figures["before"]
    if args.plot:
        plot([r for r in now if "failed" not in r], before, Path(args.plot))
    if args.json:
        print(json.dumps(figures, indent=2))
        return
    print_table(now, before, figures.get("mode", "loopback"))


def print_table(now: list[dict[str, Any]], before: list[dict[str, Any]], mode: str = "loopback") -> None:
    """The README table (``mode``: loopback or bed (mDNS)), then the issue's targets against the largest and
    smallest sizes measured."""
    print(f"membership, {mode}:\n")
    print("| agents | follower CPU (CPU-s/s) | x smallest | leader CPU | follower RSS median / max "
          "| exchanges per agent per s (sent + received) | handshakes per agent per s "
          "| kill -9 dead everywhere p50 / p99 | new member everywhere | load average "
          "| before: follower CPU / RSS |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    old = {r["n"]: r for r in before}
    for r in now:
        if "failed" in r:
            print(f"| {agents_cell(r)} | failed: {r['failed']} | | | | | | | | {r['load_avg_1m']:.1f} | |")
            continue
        b = old.get(r["n"])
        was = f"{b['follower_cpu']:.4f} / {b.get('follower_rss_mb', float('nan')):.0f} MiB" if b else "-"
        print(f"| {agents_cell(r)} | {r['follower_cpu']:.4f} | {r['cpu_ratio_to_smallest']:.2f} | "
              f"{r['leader_cpu']:.4f} | "
              f"{r['follower_rss_mb']:.0f} / {r['follower_rss_max_mb']:.0f} MiB | "
              f"{r['sent_per_s']:.1f} + {r['received_per_s']:.1f} | {r['opened_per_s']:.3f} | "
              f"{r['detect_p50_s']:.2f} / {r['detect_p99_s']:.2f} s | {r['join_max_s']:.2f} s | "
              f"{r['load_avg_1m']:.1f} | {was} |")  # fmt: skip
    print_targets(now)


def agents_cell(row: dict[str, Any]) -> str:
    """The table's first cell: the size, with the mode where it is not loopback (e.g. '5, bed (mDNS)')."""
    return f"{row['n']}, {row['mode']}" if row.get("mode") else str(row["n"])


def print_targets(now: list[dict[str, Any]]) -> None:
    """Under the table: convergence per size, the issue's targets (largest against smallest), the soak."""
    ok = [r for r in now if "failed" not in r]
    if any("converge_s" in r for r in ok):
        print("\nevery member sees all, after the last agent answered: "
              + ", ".join(f"{r['n']} agents {r['converge_s']:.1f} s" for r in ok if "converge_s" in r))  # fmt: skip
    if len(ok) >= 2:
        small, big = ok[0], ok[-1]
        print(f"\nissue #13 targets: follower CPU at {big['n']} / at {small['n']} agents = "
              f"{big['follower_cpu'] / small['follower_cpu']:.2f} (<= 1.5); kill -9 p99 at {big['n']}: "
              f"{big['detect_p99_s']:.2f} s (<= 3); new member at {big['n']}: {big['join_max_s']:.2f} s (<= 3); "
              f"follower RSS at {big['n']}: median {big['follower_rss_mb']:.0f} MiB, max "
              f"{big['follower_rss_max_mb']:.0f} (at {small['n']}: {small['follower_rss_mb']:.0f})")  # fmt: skip
    nan = float("nan")
    for r in now:
        if "soak_s" in r:
            print(
                f"\nsoak at {r['n']} agents, {r['soak_s']:.0f} s loaded ({r.get('soak_hogs', 2)} busy processes got "
                f"{r.get('soak_hog_cpu', nan):.2f} CPU-s/s, the agents {r.get('soak_agents_cpu', nan):.2f}): "
                f"{r['soak_false_deaths']} false deaths (target 0), load average {r['soak_load_avg'][0]:.1f}, "
                f"{r['soak_terms_after']} distinct terms after"
            )


if __name__ == "__main__":
    main()
