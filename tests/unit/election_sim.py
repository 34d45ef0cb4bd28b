"""An in-memory network for the election machine: fake clock, message delays, cuts, drops, crashes, pauses.

Each node has a disk: a ``Persist`` action writes (term, vote) there before the node's later actions go
out, and ``restart`` builds the node from exactly what is on its disk. ``persist=False`` is the test-only
fault that loses every write, so the checker (``double_votes``) can be shown to catch what follows.
"""

from __future__ import annotations

import heapq
import itertools
import random
from dataclasses import dataclass, field

from coordinator_election import (
    BecameLeader,
    Broadcast,
    Election,
    ElectionConfig,
    Message,
    Persist,
    Priority,
    Received,
    Renew,
    Role,
    Send,
    Tick,
)

CONFIG = ElectionConfig(heartbeat_s=0.3, election_timeout_s=1.2)
DETECT_S = 2.0  # membership marks a silent node dead after this long (the discovery default)


@dataclass
class Network:
    """Nodes n0..n{k-1}; priority = (0, memory, id). Call run(seconds) to advance."""

    size: int
    seed: int = 0
    delay: float = 0.002
    memory: dict[str, float] = field(default_factory=dict)
    now: float = 0.0
    tick_s: float = 0.05
    persist: bool = True  # False: the test-only fault that loses every Persist
    known: bool = False  # True: a restarted node expects every other node back (agent/known_peers.py)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.ids = [f"n{i}" for i in range(self.size)]
        self.up = set(self.ids)
        self.paused: set[str] = set()  # SIGSTOPped: no ticks, no answers; messages to it wait for resume
        self.held: list[tuple[str, str, Message]] = []
        self.cut: set[frozenset[str]] = set()
        self.drop_rate = 0.0
        self.extra_delay = 0.0
        self.queue: list[tuple[float, int, str, str, Message]] = []
        self.counter = itertools.count()
        self.disk: dict[str, tuple[int, str | None]] = dict.fromkeys(self.ids, (0, None))
        self.nodes = {n: self._new(n) for n in self.ids}
        self.last_heard: dict[str, dict[str, float]] = {n: dict.fromkeys(self.ids, 0.0) for n in self.ids}
        self.leader_log: list[tuple[float, str, int]] = []  # (time, node, term) at each BecameLeader
        self.votes_by_term: dict[int, list[tuple[str, frozenset[str]]]] = {}  # term -> (leader, voters)

    def priority(self, n: str) -> Priority:
        return (0, self.memory.get(n, 1000.0), n)

    def _new(self, n: str) -> Election:
        term, vote = self.disk[n]
        known = frozenset(self.ids) if self.known else frozenset()
        return Election(n, self.priority(n), CONFIG, self.now, term=term, vote=vote, known=known)

    # -- faults ----------------------------------------------------------------------------------
    def reachable(self, a: str, b: str) -> bool:
        return a in self.up and b in self.up and frozenset((a, b)) not in self.cut

    def partition(self, *groups: list[str]) -> None:
        for g1, g2 in itertools.combinations(groups, 2):
            for a in g1:
                for b in g2:
                    self.cut.add(frozenset((a, b)))

    def isolate(self, n: str) -> None:
        self.partition([n], [m for m in self.ids if m != n])

    def heal(self) -> None:
        self.cut.clear()

    def crash(self, n: str) -> None:
        self.up.discard(n)

    def pause(self, n: str) -> None:
        """Freeze ``n`` (a long GC pause, SIGSTOP): it keeps its memory; what is sent to it waits."""
        self.paused.add(n)

    def resume(self, n: str) -> None:
        self.paused.discard(n)
        held, self.held = self.held, []
        for sender, to, message in held:
            heapq.heappush(self.queue, (self.now, next(self.counter), sender, to, message))

    def restart(self, n: str) -> None:
        """Start ``n`` again from exactly what it persisted (memory is lost)."""
        self.up.add(n)
        self.nodes[n] = self._new(n)
        self.last_heard[n] = dict.fromkeys(self.ids, 0.0)  # its membership starts empty

    def power_cut(self) -> None:
        """Every node loses power at once and comes back (from its disk)."""
        for n in self.ids:
            self.crash(n)
        for n in self.ids:
            self.restart(n)

    # -- running ---------------------------------------------------------------------------------
    def view(self, n: str) -> dict[str, Priority]:
        """What membership would say: nodes heard from (heartbeats) within DETECT_S."""
        return {m: self.priority(m) for m in self.ids if m != n and self.now - self.last_heard[n][m] < DETECT_S}

    def _deliver(self, sender: str, to: str, message: Message) -> None:
        if self.rng.random() < self.drop_rate:
            return
        at = self.now + self.delay + self.rng.random() * self.extra_delay
        heapq.heappush(self.queue, (at, next(self.counter), sender, to, message))

    def _carry_out(self, n: str, actions: list[object]) -> None:
        node = self.nodes[n]
        for a in actions:
            if isinstance(a, Persist):
                if self.persist:
                    self.disk[n] = (a.term, a.vote)
            elif isinstance(a, Send):
                self._deliver(n, a.to, a.message)
            elif isinstance(a, (Broadcast, Renew)):  # a renewal reaches everyone here (gossip: test_swim.py)
                for m in node.alive:
                    if m != n:
                        self._deliver(n, m, a.message)
            elif isinstance(a, BecameLeader):
                self.leader_log.append((self.now, n, a.term))
                self.votes_by_term.setdefault(a.term, []).append((n, a.voters))

    def run(self, seconds: float) -> None:
        end = self.now + seconds
        while self.now < end:
            self.now = round(self.now + self.tick_s, 6)
            for a in self.ids:  # heartbeats between reachable nodes keep membership views current
                for b in self.ids:
                    if self.reachable(a, b) and b not in self.paused:
                        self.last_heard[a][b] = self.now
            while self.queue and self.queue[0][0] <= self.now:
                _, _, sender, to, message = heapq.heappop(self.queue)
                if to in self.paused and self.reachable(sender, to):
                    self.held.append((sender, to, message))
                elif self.reachable(sender, to):
                    self._carry_out(to, self.nodes[to].step(Received(self.now, sender, message)))
            for n in self.ids:
                if n in self.up and n not in self.paused:
                    self._carry_out(n, self.nodes[n].step(Tick(self.now, self.view(n))))

    # -- observations ----------------------------------------------------------------------------
    def leader_log_voters(self) -> list[tuple[str, frozenset[str]]]:
        """Every election so far as (leader, voters), oldest first."""
        return [pair for term in sorted(self.votes_by_term) for pair in self.votes_by_term[term]]

    def max_leaders_per_term(self) -> int:
        """The most distinct nodes that became leader of one term (what `peerserve chaos` reports)."""
        return max((len({leader for leader, _ in elected}) for elected in self.votes_by_term.values()), default=0)

    def double_votes(self) -> list[tuple[int, str, str, frozenset[str]]]:
        """Violations: (term, leader, leader, shared voters) where one voter elected two leaders in a term."""
        found = []
        for term, elected in self.votes_by_term.items():
            for i, (a, va) in enumerate(elected):
                for b, vb in elected[i + 1 :]:
                    if a != b and va & vb:
                        found.append((term, a, b, va & vb))
        return found

    def leaders(self) -> list[str]:
        return sorted(n for n in self.up if self.nodes[n].role is Role.LEADER)

    def agreed_leader(self, among: list[str] | None = None) -> str | None:
        """The leader every node in ``among`` (default: all up) follows, if they agree and it leads."""
        group = among or sorted(self.up)
        seen = {self.nodes[n].leader for n in group}
        if len(seen) != 1:
            return None
        (leader,) = seen
        if leader is None or leader not in group or self.nodes[leader].role is not Role.LEADER:
            return None
        terms = {self.nodes[n].term for n in group}
        return leader if len(terms) == 1 else None

    def time_until_agreed(self, limit: float, among: list[str] | None = None) -> float | None:
        start = self.now
        while self.now - start < limit:
            self.run(self.tick_s)
            if self.agreed_leader(among) is not None:
                return self.now - start
        return None
