"""`peerserve chaos`: a seeded fault soak on the namespace test bed, with a checker outside the agents.

N agents (process runtime) run in network namespaces (scripts/testbed.py); a client host sends predict
requests for every catalogue model through the client library; a seeded schedule (printed, replayable)
injects one fault at a time: kill -9 of a node or of the leader and its restart, a crash and restart
within one second, SIGSTOP of the leader for longer than the election timeout, a partition (sometimes
with the leader on the minority side) and its heal, a power cut of every node and the restart.

The checker reads every agent's /cluster, /services and /stats/node and their logs, and reports:
the most leaders one agent accepted in one term (its /cluster pairs; the leaders its log says it led,
followed or obeyed: the fencing property, at most 1) and the terms an agent obeyed below one it had
obeyed before (0), leaders per term number across the cluster (informational: a partition's sides may
each elect one of the same number, and no agent accepts both), client requests failed outside a
fault's window (a window lasts from the fault until the checker sees the cluster recovered, at most
WINDOW_MAX_S; a request in flight when a window opens is inside it), /services answers naming a node
that is down and that the answering agent already marked dead or suspect, desired state lost across
restarts, time to recover after each fault, and agent RSS growth. Pure parts (plan, summarise) are unit-tested.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import logging
import math
import random
import re
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from scripts.testbed import TestBed

log = logging.getLogger(__name__)

KINDS = ("kill_node", "kill_leader", "quick_restart", "pause_leader", "partition", "partition_minority_leader",
         "power_cut")  # fmt: skip
WINDOW_MAX_S = 5.0  # a fault's window closes when the cluster recovered, at most this long after it
RECOVERY_LIMIT_S = 20.0  # recovery not seen within this long is reported as this long
RSS_STEADY_AFTER_S = 5.0  # an agent's first steady RSS sample: this long after it started
# Chaos kills agents on purpose, often the same one within a minute: no crash backoff (agent/crash_backoff.py)
AGENT_ARGS = ("--placement-period-s", "5", "--placement-mode", "auto", "--log-level", "info", "--no-crash-backoff")
# what an agent's log says it accepted, in order: it led, followed, or obeyed a leader's desired set
ACCEPT_LINE = re.compile(
    r"node (?P<led>\S+) became leader at term (?P<led_term>\d+)"
    r"|node \S+ follows (?P<followed>\S+) at term (?P<followed_term>\d+)"
    r"|desired set from (?P<obeyed>\S+) at term (?P<obeyed_term>\d+)"
)


# -- the schedule (pure) -------------------------------------------------------------------------------
@dataclass(frozen=True)
class PlannedFault:
    """One fault to inject: ``pick`` chooses among eligible targets; ``hold_s`` how long it lasts."""

    kind: str
    pick: float
    hold_s: float
    gap_s: float  # quiet time after the fault's episode, before the next one


def plan(seed: int, count: int = 200) -> list[PlannedFault]:
    """The seeded fault schedule: the same seed always gives the same faults in the same order."""
    rng = random.Random(seed)
    faults = []
    for _ in range(count):
        kind = rng.choice(KINDS)
        hold = {"quick_restart": rng.uniform(0.2, 0.9), "pause_leader": rng.uniform(1.8, 3.0),
                "power_cut": rng.uniform(0.5, 1.5)}.get(kind, rng.uniform(2.0, 5.0))  # fmt: skip
        faults.append(PlannedFault(kind, rng.random(), round(hold, 2), round(rng.uniform(1.0, 3.0), 2)))
    return faults


def tfserving_models(names: Iterable[str]) -> dict[str, Any]:
    """The catalogue models a TF-Serving REST client can call, each with its warm-up instances as a request."""
    from agent.catalogue import builtin_catalogue_text, parse_catalogue

    catalogue = parse_catalogue(builtin_catalogue_text(), "builtin")
    out = {}
    for name in sorted(names):
        spec = catalogue.get(name)
        if spec is not None and spec.server == "tfserving" and spec.warmup and "instances" in spec.warmup:
            out[name] = spec.warmup["instances"]
    return out


# -- the verdict (pure) --------------------------------------------------------------------------------
@dataclass
class Observed:
    """What the checker saw; ``summarise`` turns it into the report."""

    leaders: dict[int, set[str]] = field(default_factory=dict)  # term -> leaders seen (/cluster and logs)
    accepted: dict[str, dict[int, set[str]]] = field(default_factory=dict)  # agent -> term -> leaders it accepted
    lower_terms: list[tuple[str, int, int]] = field(default_factory=list)  # (agent, term obeyed, after this term)
    requests: list[tuple[float, float, bool]] = field(default_factory=list)  # (sent, answered, ok)
    windows: list[tuple[float, float]] = field(default_factory=list)  # (start, end)
    recoveries_ms: list[float] = field(default_factory=list)
    dead_endpoint_answers: int = 0
    desired_state_lost: int = 0
    rss: dict[str, list[tuple[float, int]]] = field(default_factory=dict)  # agent incarnation -> (t, kB)
    faults: list[dict[str, Any]] = field(default_factory=list)

    def leader_seen(self, term: int, leader: str) -> None:
        self.leaders.setdefault(term, set()).add(leader)

    def accepted_seen(self, agent: str, term: int, leader: str) -> None:
        """``agent`` accepted ``leader`` for ``term`` (its /cluster pair, or its log: led, followed, obeyed)."""
        self.accepted.setdefault(agent, {}).setdefault(term, set()).add(leader)

    def agent_log(self, agent: str, text: str) -> None:
        """Everything ``agent``'s log (all its runs, in order) says it accepted, and obeyed terms that went down."""
        highest = -1
        for how, leader, term in accepted_in_log(text):
            self.accepted_seen(agent, term, leader)
            if how == "led":
                self.leader_seen(term, leader)
            elif how == "obeyed":
                if term < highest:
                    self.lower_terms.append((agent, term, highest))
                highest = max(highest, term)


def accepted_in_log(text: str) -> Iterable[tuple[str, str, int]]:
    """(how, leader, term) for each leader an agent's log says it "led", "followed" or "obeyed", in order."""
    for m in ACCEPT_LINE.finditer(text):
        how = next(k for k in ("led", "followed", "obeyed") if m.group(k))
        yield how, m.group(how), int(m.group(f"{how}_term"))


def gone(view: dict[str, Any]) -> set[str]:
    """Members an agent's /cluster answer marks dead or suspect."""
    return {m["node_id"] for m in view.get("members", []) if m.get("status") in ("dead", "suspect")}


def dead_answers(gone_before: set[str], answered: set[str], gone_after: set[str], down: set[str]) -> set[str]:
    """Nodes a /services answer named although the agent marked them dead or suspect before and after the
    answer and they were down all along (a node that came back in between is not counted)."""
    return answered & gone_before & gone_after & down


Request = tuple[float, float, bool]  # (sent, answered or given up, ok)


def failed_outside(requests: Sequence[Request], windows: Sequence[tuple[float, float]]) -> int:
    return len(failures_outside(requests, windows))


def failures_outside(requests: Sequence[Request], windows: Sequence[tuple[float, float]]) -> list[float]:
    """Send times of the failed requests whose whole span [sent, answered] no fault window touches.

    A request in flight when a fault strikes may fail because of it (a power cut 40 ms after it was sent
    takes every agent away under it), so a failure is excused when its span overlaps a window, not only
    when it was sent inside one."""
    return [t0 for t0, t1, ok in requests if not ok and not any(a <= t1 and t0 <= b for a, b in windows)]


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100); None when there are no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def rss_growth(samples: dict[str, list[tuple[float, int]]], steady_after_s: float = RSS_STEADY_AFTER_S) -> float:
    """Largest final / first-steady RSS of any agent incarnation that was sampled past its steady point."""
    ratios = []
    for series in samples.values():
        if not series:
            continue
        start = series[0][0]
        steady = [kb for t, kb in series if t - start >= steady_after_s]
        if len(steady) >= 2 and steady[0] > 0:
            ratios.append(steady[-1] / steady[0])
    return round(max(ratios), 3) if ratios else 1.0


def summarise(o: Observed) -> dict[str, Any]:
    """The report: the keys `peerserve chaos --json` prints."""
    p50, p99 = percentile(o.recoveries_ms, 50), percentile(o.recoveries_ms, 99)
    return {
        "max_leaders_per_term": max((len(v) for terms in o.accepted.values() for v in terms.values()), default=0),
        "lower_terms_obeyed": len(o.lower_terms),
        "max_leaders_per_term_anywhere": max((len(v) for v in o.leaders.values()), default=0),
        "requests_ok": sum(1 for _, _, ok in o.requests if ok),
        "requests_failed_outside_windows": failed_outside(o.requests, o.windows),
        "dead_endpoint_answers": o.dead_endpoint_answers,
        "desired_state_lost": o.desired_state_lost,
        "recovery_ms_p50": None if p50 is None else round(p50, 1),
        "recovery_ms_p99": None if p99 is None else round(p99, 1),
        "rss_growth_ratio": rss_growth(o.rss),
        "faults": o.faults,
    }


def violations(report: dict[str, Any]) -> list[str]:
    """The zero-target counts (and bounds) this report breaks."""
    zero = ("lower_terms_obeyed", "requests_failed_outside_windows", "dead_endpoint_answers", "desired_state_lost")
    out = [k for k in zero if report[k]]
    if report["max_leaders_per_term"] > 1:
        out.append("max_leaders_per_term")
    if report["rss_growth_ratio"] > 1.5:
        out.append("rss_growth_ratio")
    return out


# -- the run (I/O) -------------------------------------------------------------------------------------
class Soak:
    """Runs agents on ``bed``, a workload, the seeded schedule and the checker for ``duration`` seconds."""

    def __init__(self, bed: TestBed, duration: float, seed: int, say: Callable[[str], None]) -> None:
        self.bed, self.duration, self.seed, self.say = bed, duration, seed, say
        self.n = len(bed.hosts)
        self.o = Observed()
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.down: set[int] = set()  # killed or paused: not answering
        self.away: set[int] = set()  # on the far side of a partition from the client
        self.started = 0.0
        self.desired: dict[int, tuple[dict[str, int], int]] = {}  # last seen (desired set, term) per node
        self.models: dict[str, Any] = {}  # model -> the predict instances its clients send
        self.incarnation: dict[int, str] = {}
        self.restarts = 0
        self._worker: Any = None
        self._client: Any = None

    def now(self) -> float:
        return time.monotonic() - self.started

    # -- setup -------------------------------------------------------------------------------------
    def start_agents(self) -> None:
        for i in range(self.n):
            self.bed.start(i, *AGENT_ARGS)
            self.incarnation[i] = f"n{i}#0"
        for i in range(self.n):
            self.bed.wait_healthy(i)
        self.started = time.monotonic()
        if self.recover(list(range(self.n)), 30.0) is None:
            raise RuntimeError("the agents did not agree on a leader within 30 s")
        self.models = tfserving_models(self.bed.json(0, "/health")["catalogue"]["models"])

    # -- observations ------------------------------------------------------------------------------
    def _cluster_of(self, i: int, client: Any) -> dict[str, Any] | None:
        with contextlib.suppress(Exception):
            r = client.get(self.bed.hosts[i].url + "/cluster", timeout=0.8)
            return dict(r.json())
        return None

    def reachable(self) -> list[int]:
        return [i for i in range(self.n) if i not in self.down and i not in self.away]

    def recover(self, expected: list[int], limit: float) -> float | None:
        """Seconds until every expected node names one leader among them and sees exactly them alive."""
        began = time.monotonic()
        while time.monotonic() - began < limit:
            if self.agreed(expected) is not None:
                return time.monotonic() - began
            time.sleep(0.1)
        return None

    def agreed(self, expected: list[int]) -> str | None:
        want = {self.bed.hosts[i].node_id for i in expected}
        pairs = set()
        for i in expected:
            view = self.bed_call(functools.partial(self._cluster_of, i))
            if view is None:
                return None
            alive = {m["node_id"] for m in view.get("members", []) if m.get("status") == "alive"}
            if alive != want:
                return None
            pairs.add((view.get("leader"), view.get("term")))
        if len(pairs) != 1:
            return None
        (leader, _term) = pairs.pop()
        return str(leader) if leader in want else None

    def bed_call(self, fn: Callable[[Any], Any]) -> Any:
        """Call ``fn(client)`` with an httpx client living in the client namespace."""
        if self._worker is None:
            import httpx

            from scripts.testbed import NetnsWorker

            self._worker = NetnsWorker(self.bed.client_ns)
            self._client = self._worker.call(lambda: httpx.Client(timeout=0.8))
        return self._worker.call(fn, self._client)

    def close(self) -> None:
        if self._worker is not None:
            with contextlib.suppress(Exception):
                self._worker.call(self._client.close)
            self._worker.close()
            self._worker = None

    # -- background threads ------------------------------------------------------------------------
    def workload(self, model: str, instances: Any, ready: threading.Event) -> None:
        """One client site: predict ``model`` through the client library, failing over between agents.

        Requests count from its first success on (before that the model is still being provisioned)."""
        import httpx

        from client import Client, PeerserveError
        from scripts.testbed import _join_netns

        _join_netns(self.bed.client_ns)
        urls = [h.url for h in self.bed.hosts]
        with Client(agents=urls, client_id=f"chaos-{model}", timeout=2.0, rtt_ttl_s=3600.0,
                    rtt_override={h.node_id: 1.0 for h in self.bed.hosts}) as c:  # fmt: skip
            while not self.stop.is_set():
                t = self.now()
                try:
                    c.predict(model, instances=instances)
                    ok = True
                except (PeerserveError, httpx.HTTPError, OSError, ValueError) as exc:
                    ok = False
                    log.debug("request failed: %s", exc)
                if ok:
                    ready.set()
                if ready.is_set():
                    with self.lock:
                        self.o.requests.append((t, self.now(), ok))
                time.sleep(0.1 if ok else 0.2)

    def watch(self) -> None:
        """Leaders per term, dead endpoints, desired sets and RSS, every 0.3 s from the client host."""
        import httpx

        from scripts.testbed import _join_netns

        _join_netns(self.bed.client_ns)
        with httpx.Client(timeout=0.8) as client:
            while not self.stop.is_set():
                for i in self.reachable():
                    self.look_at(i, client)
                self.sample_rss()
                time.sleep(0.3)

    def look_at(self, i: int, client: Any) -> None:
        url = self.bed.hosts[i].url
        with contextlib.suppress(Exception):
            down_before = {self.bed.hosts[j].node_id for j in self.down}
            view = client.get(url + "/cluster").json()
            if view.get("leader") is not None and view.get("term") is not None:
                with self.lock:
                    self.o.leader_seen(int(view["term"]), str(view["leader"]))
                    self.o.accepted_seen(str(view["node_id"]), int(view["term"]), str(view["leader"]))
            answered = {e["node"] for e in client.get(url + "/services").json()}
            after = client.get(url + "/cluster").json()
            down_after = {self.bed.hosts[j].node_id for j in self.down}
            wrong = dead_answers(gone(view), answered, gone(after), down_before & down_after)
            if wrong:
                with self.lock:
                    self.o.dead_endpoint_answers += 1
                self.say(f"n{i} answered with endpoints of {sorted(wrong)} after marking them dead")
            node = client.get(url + "/stats/node").json()
            self.desired[i] = (dict(node["desired"]), int(node["term"]))

    def sample_rss(self) -> None:
        t = self.now()
        for i, host in enumerate(self.bed.hosts):
            if host.proc is None or host.proc.poll() is not None or i in self.down:
                continue
            with contextlib.suppress(OSError, ValueError):
                status = Path(f"/proc/{host.proc.pid}/status").read_text()
                kb = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")))
                with self.lock:
                    self.o.rss.setdefault(self.incarnation[i], []).append((t, kb))

    # -- faults ------------------------------------------------------------------------------------
    def leader_index(self) -> int | None:
        leader = self.agreed(self.reachable())
        return None if leader is None else int(leader[1:])

    def choose(self, candidates: list[int], pick: float) -> int:
        return sorted(candidates)[min(len(candidates) - 1, int(pick * len(candidates)))]

    def fault(self, kind: str, nodes: list[int], expected: list[int], at: float | None = None) -> None:
        """Record a fault injected at ``at`` (default now); wait until the cluster recovered (window <= 5 s)."""
        at = self.now() if at is None else at
        seen = self.recover(expected, max(0.0, RECOVERY_LIMIT_S - (self.now() - at)))
        took = None if seen is None else self.now() - at
        recovery = RECOVERY_LIMIT_S if took is None else took
        names = [self.bed.hosts[i].node_id for i in nodes]
        with self.lock:
            self.o.windows.append((at, at + min(recovery, WINDOW_MAX_S)))
            self.o.recoveries_ms.append(1000 * recovery)
            self.o.faults.append({"kind": kind, "nodes": names, "at_s": round(at, 2),
                                  "recovered_ms": None if took is None else round(1000 * took, 1)})  # fmt: skip
        shown = "not recovered" if took is None else f"recovered in {1000 * took:.0f} ms"
        self.say(f"[{at:6.1f} s] {kind} {','.join(names)}: {shown}")

    def kill(self, i: int) -> None:
        self.down.add(i)
        self.bed.kill(i)

    def restart(self, i: int) -> float:
        """Start agent i again on its data and wait until it answers; returns when it was started."""
        before = self.desired.get(i)
        at = self.now()
        self.bed.restart(i)
        self.restarts += 1
        self.incarnation[i] = f"n{i}#{self.restarts}"
        self.bed.wait_healthy(i, 30.0)
        self.down.discard(i)
        self.check_restored(i, before)
        return at

    def check_restored(self, i: int, before: tuple[dict[str, int], int] | None) -> None:
        """The restarted agent serves the desired set and term it had before (nothing lost)."""
        node = self.bed_call(lambda c: c.get(self.bed.hosts[i].url + "/stats/node", timeout=2.0).json())
        desired, term = dict(node["desired"]), int(node["term"])
        if before is not None and (term < before[1] or (before[0] and not desired)):
            with self.lock:
                self.o.desired_state_lost += 1
            self.say(f"n{i} lost its desired state: had {before}, restored {(desired, term)}")

    def episode(self, f: PlannedFault) -> None:
        """Inject one planned fault and what ends it (restart, SIGCONT, heal), each with its window."""
        leader = self.leader_index()
        up = self.reachable()
        if f.kind in ("kill_leader", "pause_leader", "partition_minority_leader") and leader is None:
            return
        if f.kind == "kill_node":
            self.kill_and_restart("kill_node", self.choose([i for i in up if i != leader], f.pick), f.hold_s)
        elif f.kind == "kill_leader":
            self.kill_and_restart("kill_leader", int(leader or 0), f.hold_s)
        elif f.kind == "quick_restart":
            i = self.choose(up, f.pick)
            at = self.now()
            self.kill(i)
            time.sleep(f.hold_s)
            self.restart(i)
            self.fault("quick_restart", [i], self.reachable(), at=at)
        elif f.kind == "pause_leader":
            i = int(leader or 0)
            self.down.add(i)
            self.bed.pause(i)
            self.fault("pause_leader", [i], self.reachable())
            time.sleep(max(0.0, f.hold_s - 1.0))
            self.bed.resume(i)
            self.down.discard(i)
            self.fault("resume", [i], self.reachable())
        elif f.kind.startswith("partition"):
            self.partition(f, leader)
        else:
            self.power_cut(f.hold_s)

    def kill_and_restart(self, kind: str, i: int, hold_s: float) -> None:
        self.kill(i)
        self.fault(kind, [i], self.reachable())
        time.sleep(hold_s)
        at = self.restart(i)
        self.fault("restart", [i], self.reachable(), at=at)

    def partition(self, f: PlannedFault, leader: int | None) -> None:
        """Cut a minority off (with the leader in it for partition_minority_leader); heal after hold_s."""
        rng = random.Random(f.pick)
        size = rng.randint(1, max(1, (self.n - 1) // 2))
        others = [i for i in range(self.n) if i != leader]
        if f.kind == "partition_minority_leader" and leader is not None:
            minority = [leader, *rng.sample(others, size - 1)]
        else:
            minority = rng.sample(others, size)
        majority = [i for i in range(self.n) if i not in minority]
        self.bed.partition(majority, minority)
        self.away = set(minority)
        self.fault(f.kind, sorted(minority), self.reachable())
        time.sleep(f.hold_s)
        self.bed.heal()
        self.away = set()
        self.fault("heal", sorted(minority), self.reachable())

    def power_cut(self, hold_s: float) -> None:
        """Every node off for ``hold_s``, then every agent started again. The cut's window lasts until every
        agent answers again (its process started: Python's imports alone are ~1 s of CPU an agent, five on two
        cores took 5-6 s, the machine's and not the cluster's doing); the restart's own window, at most
        WINDOW_MAX_S of the cluster recovering, starts there, and the start-up time is reported as ``boot_ms``."""
        before = dict(self.desired)
        self.down = set(range(self.n))
        cut = self.now()
        self.bed.power_cut()
        time.sleep(hold_s)
        at = self.now()
        everyone = [self.bed.hosts[i].node_id for i in range(self.n)]
        self.say(f"[{cut:6.1f} s] power_cut {','.join(everyone)}: restarting all after {at - cut:.1f} s")
        for i in range(self.n):
            self.bed.restart(i)
            self.restarts += 1
            self.incarnation[i] = f"n{i}#{self.restarts}"
        for i in range(self.n):
            self.bed.wait_healthy(i, 30.0)
            self.down.discard(i)
            self.check_restored(i, before.get(i))
        up = self.now()
        with self.lock:  # nothing can recover while every node is off or starting: no recovery time of its own
            self.o.windows.append((cut, up))
            self.o.faults.append({"kind": "power_cut", "nodes": everyone, "at_s": round(cut, 2), "recovered_ms": None,
                                  "boot_ms": round(1000 * (up - at), 1)})  # fmt: skip
        self.say(f"[{at:6.1f} s] every agent answers {1000 * (up - at):.0f} ms after the restart")
        self.fault("restart_all", list(range(self.n)), self.reachable(), at=up)

    # -- the whole run -----------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        self.start_agents()
        schedule = plan(self.seed)
        shown = int(self.duration / 5) + 3
        listed = "; ".join(
            f"{k + 1}:{f.kind} pick {f.pick:.2f} hold {f.hold_s} s gap {f.gap_s} s" for k, f in enumerate(schedule)
        )
        self.say(f"schedule (seed {self.seed}), first {shown}: {'; '.join(listed.split('; ')[:shown])}")
        readies = {m: threading.Event() for m in self.models}
        threads = [threading.Thread(target=self.workload, args=(m, body, readies[m]), daemon=True)
                   for m, body in self.models.items()]  # fmt: skip
        threads.append(threading.Thread(target=self.watch, daemon=True))
        for t in threads:
            t.start()
        for m, ready in readies.items():
            if not ready.wait(60.0):
                raise RuntimeError(f"no request for {m} succeeded within 60 s of the start")
        self.say(f"[{self.now():6.1f} s] every model answers ({', '.join(self.models)}): faults begin")
        self.started = time.monotonic()
        for f in schedule:
            if self.now() >= self.duration:
                break
            self.episode(f)
            time.sleep(f.gap_s)
        self.stop.set()
        for t in threads:
            t.join(10)
        for host in self.bed.hosts:
            with contextlib.suppress(OSError):
                self.o.agent_log(host.node_id, host.log.read_text(errors="replace"))
        self.explain()
        return summarise(self.o)

    def explain(self) -> None:
        """On stderr: when the failures outside windows happened, after which fault, and terms with two leaders."""
        for t in failures_outside(self.o.requests, self.o.windows)[:20]:
            before = [f for f in self.o.faults if f["at_s"] <= t]
            last = f"{before[-1]['kind']} at {before[-1]['at_s']} s" if before else "no fault yet"
            self.say(f"request failed outside any window at {t:.2f} s (last fault: {last})")
        for agent, terms in sorted(self.o.accepted.items()):
            for term, leaders in sorted(terms.items()):
                if len(leaders) > 1:
                    self.say(f"{agent} accepted leaders {sorted(leaders)} in term {term}")
        for agent, term, highest in self.o.lower_terms[:20]:
            self.say(f"{agent} obeyed term {term} after term {highest}")
        for term, leaders in sorted(self.o.leaders.items()):
            if len(leaders) > 1:
                self.say(f"term {term} had leaders {sorted(leaders)} (each on its side of a partition: no agent both)")


def register(commands: Any) -> None:
    p = commands.add_parser(
        "chaos",
        help="fault soak on the namespace test bed with an outside checker (root)",
        description=(
            "Bring up N agents in network namespaces (scripts/testbed.py, process runtime), run a predict "
            "workload on every model from a client host, and inject a seeded, printed, replayable schedule of "
            "faults one at a time: kill -9 of a node or the leader and its restart, a crash and restart within "
            "a second, SIGSTOP of the leader past the election timeout, a partition (also with the leader in "
            "the minority) and its heal, a power cut of every node and the restart. A checker outside the "
            "agents reports leaders per term, requests failed outside fault windows, answers naming dead "
            "endpoints, desired state lost across restarts, recovery time p50/p99 and agent RSS growth. "
            "Needs root; run it under `flock /tmp/peerserve-netns.lock` on a shared machine. Exit 0 when every "
            "zero-target count is zero and RSS growth <= 1.5, 1 otherwise, 2 on bad usage or no test bed."
        ),
    )
    p.add_argument("--nodes", type=int, default=5, help="agents (default 5, at least 3)")
    p.add_argument("--duration", type=float, default=90.0, help="seconds of faults (default 90)")
    p.add_argument("--seed", type=int, default=1, help="seed of the fault schedule (default 1): same seed, same faults")
    p.add_argument("--json", action="store_true", help="stdout is exactly one JSON object; progress goes to stderr")
    p.add_argument("--keep", metavar="DIR", type=Path, default=None,
                   help="keep the agents' data directories and logs in DIR (made if missing) to read after the run; "
                        "default: a temporary directory, removed at the end")  # fmt: skip
    p.set_defaults(handler=cmd_chaos)


def cmd_chaos(args: argparse.Namespace) -> int:
    from peerserve.cli import UsageError
    from scripts.testbed import TestBed, available

    if not 3 <= args.nodes <= 20:
        raise UsageError("--nodes must be between 3 and 20")
    if args.duration < 10:
        raise UsageError("--duration must be at least 10 seconds")
    reason = available()
    if reason:
        print(f"peerserve chaos: {reason}", file=sys.stderr)
        return 2

    def say(message: str) -> None:
        stamp = time.strftime("%H:%M:%S", time.localtime()) + f".{int(time.time() * 1000) % 1000:03d}"
        print(f"{stamp} {message}", file=sys.stderr, flush=True)

    with contextlib.ExitStack() as stack:
        if args.keep is not None:
            args.keep.mkdir(parents=True, exist_ok=True)
            workdir = args.keep
        else:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="peerserve-chaos-")))
        bed = TestBed(args.nodes, workdir)
        soak = Soak(bed, args.duration, args.seed, say)
        try:
            bed.up()
            report = soak.run()
        except (RuntimeError, OSError) as exc:
            print(f"peerserve chaos: the run could not be carried out: {exc}", file=sys.stderr)
            return 1
        finally:
            soak.stop.set()
            soak.close()
            bed.teardown()
    broken = violations(report)
    if args.json:
        print(json.dumps(report))
    else:
        print(_text(report))
    if broken:
        say(f"peerserve chaos: violated: {', '.join(broken)}")
    return 1 if broken else 0


def _text(r: dict[str, Any]) -> str:
    return (
        f"{len(r['faults'])} faults; leaders one agent accepted in a term (max) {r['max_leaders_per_term']}, "
        f"lower terms obeyed {r['lower_terms_obeyed']}, leaders of one term anywhere (max) "
        f"{r['max_leaders_per_term_anywhere']}; requests ok "
        f"{r['requests_ok']}, failed outside windows {r['requests_failed_outside_windows']}; dead endpoint answers "
        f"{r['dead_endpoint_answers']}; desired state lost {r['desired_state_lost']}; recovery p50 "
        f"{r['recovery_ms_p50']} ms p99 {r['recovery_ms_p99']} ms; RSS growth {r['rss_growth_ratio']}"
    )
