"""An in-memory network for the election machine: fake clock, message delays, cuts, drops, crashes, pauses.

Each node has a disk: a ``Persist`` action writes (term, vote, accepted leader) there before the node's later actions go
out, and ``restart`` builds the node from exactly what is on its disk. ``persist=False`` is the test-only
fault that loses every write, so the checker (``double_votes``) can be shown to catch what follows;
``one_leader_per_term=False`` is the test-only fault that makes every node forget the leader it accepted in
its term before each message (the election as it was before fencing tokens), for ``fencing_violations``;
``quorum=False`` makes every announce arrive as if every node had granted it (before quorum certificates, a node
followed an announce on its sender's word): with both, the checker is shown to bite again.

Leaders also command: at election and with every renewal a leader sends each member it sees (and itself) a
``Command(term, leader)``, which travels like any message; the receiver obeys it when the agent's fencing
rule (``coordinator_election.fencing.command_refusal``) says so, and the observer records it in ``obeyed``.
``fencing_violations`` is the property that matters to agents: no node obeys two leaders in one term, nor a
term below one it has obeyed (the record lives outside the nodes: it survives their restarts).

Quorum certificates travel as the agent carries them: a granted ``Vote`` is the voter's signed grant of (term,
candidate), which the network records when the voter sends it (``grants``); a certificate in an ``Announce`` or a
``VoteRequest`` reaches its receiver as the voters among it that really granted that (term, leader), as the agent's
signature check leaves it (a name with no grant behind it is a forgery and drops out). ``accepted_by`` records, per
term, which nodes accepted which leader; ``majority_violations`` is the quorum property: in no term are two leaders
accepted by majorities of the cluster.
"""

from __future__ import annotations

import heapq
import itertools
import random
from dataclasses import dataclass, field, replace

from coordinator_election import (
    Announce,
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
    Vote,
    VoteRequest,
)
from coordinator_election.fencing import command_refusal

CONFIG = ElectionConfig(heartbeat_s=0.3, election_timeout_s=1.2)
FAULTS = ["crash", "restart", "isolate", "partition", "heal", "drop", "delay", "power", "pause"]
DETECT_S = 2.0  # membership marks a silent node dead after this long (the discovery default)


@dataclass(frozen=True)
class Command:
    """A leader's placement command (``PUT /control/desired``) as the simulator carries it."""

    term: int
    leader: str


Packet = Message | Command


@dataclass
class Disruptor:
    """A hostile member (it holds the token): it asks every member for a vote every ``every`` s, and on hearing another
    node's vote request, in the newest term it heard of plus ``ahead`` (0: the candidate's own term, claiming a priority
    above everyone's), and never grants, answers or announces. Priority is self-declared: its view's priority is the
    top one too (``Network.memory``). It asks at most ``rate`` times a second (the peer route's ELECTION_RATE per
    sender id; without it two disruptors answered each other at network speed, which no receiver would take). Put in
    place by ``Network.disrupt``."""

    node_id: str
    every: float = 0.2
    ahead: int = 1
    react: bool = True
    rate: float = 5.0
    term: int = 0
    alive: dict[str, Priority] = field(default_factory=dict)
    role: Role = Role.FOLLOWER
    leader: str | None = None
    accepted: str | None = None
    _last: float = -1e18

    def _ask(self) -> list[object]:
        return [Broadcast(VoteRequest(self.term + self.ahead, self.node_id, (9, 1e12, self.node_id)))]

    def step(self, event: Tick | Received) -> list[object]:
        if isinstance(event, Tick):
            self.alive = {**event.alive, self.node_id: (9, 1e12, self.node_id)}
            if event.now - self._last >= max(self.every, 1 / self.rate):
                self._last = event.now
                return self._ask()
            return []
        self.term = max(self.term, event.message.term)
        if self.react and isinstance(event.message, VoteRequest) and event.now - self._last >= 1 / self.rate:
            self._last = event.now
            return self._ask()
        return []


@dataclass
class Captor:
    """A hostile member that goes for a fresh board (``target``) as soon as the board's view shows it: it asks the board
    for its vote in a newer term and, granted, announces itself with the certificate {itself, the board}: a majority
    of a view of two. It never grants anyone. Put in place by ``Network.capture``."""

    node_id: str
    target: str
    grants: dict[tuple[int, str], set[str]]
    term: int = 0
    granted: bool = False
    alive: dict[str, Priority] = field(default_factory=dict)
    role: Role = Role.FOLLOWER
    leader: str | None = None
    accepted: str | None = None

    def step(self, event: Tick | Received) -> list[object]:
        if isinstance(event, Tick):
            self.alive = {**event.alive, self.node_id: (0, 0.0, self.node_id)}
            if self.target in self.alive and not self.granted:  # ask again every tick until granted
                return [Send(self.target, VoteRequest(self.term + 1, self.node_id, (9, 1e12, self.node_id)))]
            return []
        m = event.message
        self.term = max(self.term, m.term) if not isinstance(m, Vote) or not m.granted else self.term
        if isinstance(m, Vote) and m.granted and event.sender == self.target:
            self.granted = True
            self.grants.setdefault((m.term, self.node_id), set()).add(self.node_id)  # its own grant, signed
            voters = frozenset({self.node_id, self.target})
            return [Send(self.target, Announce(m.term, self.node_id, (9, 1e12, self.node_id), voters))]
        return []


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
    one_leader_per_term: bool = True  # False: the test-only fault that forgets the leader accepted in a term
    quorum: bool = True  # False: the test-only fault that takes any announce as granted by every node (no certificates)
    detect_s: float = DETECT_S  # membership marks a silent node dead after this long
    # > 0: a renewal reaches that many random members of the leader's view at once and the others up to ``gossip_s``
    # later (SWIM pushes it to a few and piggybacks it on its messages), else every member at once
    renew_fanout: int = 0
    gossip_s: float = 0.8
    fresh: bool = True  # a node with nothing on its disk is a fresh board (it waits for its view to settle), as agents
    # each node's voice in a majority (its address, ``Tick.voices``); a node missing from it is its own voice
    voices: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.ids = [f"n{i}" for i in range(self.size)]
        self.up = set(self.ids)
        self.paused: set[str] = set()  # SIGSTOPped: no ticks, no answers; messages to it wait for resume
        self.held: list[tuple[str, str, Packet]] = []
        self.cut: set[frozenset[str]] = set()
        self.drop_rate = 0.0
        self.extra_delay = 0.0
        self.queue: list[tuple[float, int, str, str, Packet]] = []
        self.counter = itertools.count()
        self.disk: dict[str, tuple[int, str | None, str | None]] = dict.fromkeys(self.ids, (0, None, None))
        self.nodes = {n: self._new(n) for n in self.ids}
        self.last_heard: dict[str, dict[str, float]] = {n: dict.fromkeys(self.ids, 0.0) for n in self.ids}
        self.leader_log: list[tuple[float, str, int]] = []  # (time, node, term) at each BecameLeader
        self.votes_by_term: dict[int, list[tuple[str, frozenset[str]]]] = {}  # term -> (leader, voters)
        self.obeyed: dict[str, list[tuple[float, int, str]]] = {n: [] for n in self.ids}  # (time, term, leader)
        self.grants: dict[tuple[int, str], set[str]] = {}  # (term, candidate) -> voters that signed a grant of it
        self.accepted_by: dict[int, dict[str, set[str]]] = {}  # term -> leader -> nodes that accepted it
        self.admit_at: dict[str, dict[str, float]] = {}  # node -> member -> when its view admits it (``join``)

    def join(self, n: str, order: list[str], every: float = 0.5) -> None:
        """``n`` starts as a fresh board (nothing on its disk) whose view admits the others one at a time, in ``order``,
        ``every`` seconds apart from now (SWIM admits one candidate each 0.5 s; the first to contact it first)."""
        self.disk[n] = (0, None, None)
        self.up.add(n)
        self.nodes[n] = self._new(n)
        self.admit_at[n] = {m: self.now + (i + 1) * every for i, m in enumerate(order)}

    def capture(self, n: str, target: str) -> None:
        """Make ``n`` a ``Captor`` of the fresh board ``target``."""
        self.nodes[n] = Captor(n, target, self.grants)  # type: ignore[assignment]

    def disrupt(self, n: str, **how: object) -> None:
        """Make ``n`` a ``Disruptor`` (keyword arguments as its fields), ranked above everyone in every view."""
        self.memory[n] = 1e12
        self.nodes[n] = Disruptor(n, **how)  # type: ignore[assignment,arg-type]

    def completed(self, since: float = 0.0) -> int:
        """Elections completed since ``since``: leaders that became leader then and were accepted by a majority of
        the cluster in their term."""
        return sum(
            1 for at, n, term in self.leader_log
            if at >= since and 2 * len(self.accepted_by.get(term, {}).get(n, ())) > self.size
        )  # fmt: skip

    def priority(self, n: str) -> Priority:
        return (0, self.memory.get(n, 1000.0), n)

    def _new(self, n: str) -> Election:
        term, vote, accepted = self.disk[n]
        known = frozenset(self.ids) if self.known else frozenset()
        return Election(
            n,
            self.priority(n),
            CONFIG,
            self.now,
            term=term,
            vote=vote,
            known=known,
            accepted=accepted,
            fresh=self.fresh,
        )

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

    def inject(self, kind: str, who: int) -> None:
        """One fault of FAULTS on node ``who`` (modulo the size): what the property tests draw from."""
        node = self.ids[who % self.size]
        if kind == "crash" and len(self.up) > 1:
            self.crash(node)
        elif kind == "restart":
            self.restart(node)
        elif kind == "isolate":
            self.isolate(node)
        elif kind == "partition":
            cut = who % self.size + 1
            self.partition(self.ids[:cut], self.ids[cut:])
        elif kind == "heal":
            self.heal()
        elif kind == "drop":
            self.drop_rate = 0.3
        elif kind == "delay":
            self.extra_delay = 0.2
        elif kind == "power":
            self.power_cut()
        elif kind == "pause":
            self.pause(node)

    def end_faults(self) -> None:
        """The network heals, stops dropping and delaying; paused nodes resume, crashed ones restart."""
        self.heal()
        self.drop_rate = 0.0
        self.extra_delay = 0.0
        for node in self.ids:
            if node in self.paused:
                self.resume(node)
            if node not in self.up:
                self.restart(node)

    # -- running ---------------------------------------------------------------------------------
    def view(self, n: str) -> dict[str, Priority]:
        """What membership would say: nodes heard from (heartbeats) within DETECT_S."""
        admit, heard, now, detect_s = self.admit_at.get(n, {}), self.last_heard[n], self.now, self.detect_s
        memory = self.memory  # self.priority(m), inline (one call a member a node a tick)
        return {
            m: (0, memory.get(m, 1000.0), m) for m in self.ids
            if m != n and now - heard[m] < detect_s and now >= admit.get(m, -1e18)
        }  # fmt: skip

    def _deliver(self, sender: str, to: str, message: Packet, late: float = 0.0) -> None:
        if self.rng.random() < self.drop_rate:
            return
        at = self.now + self.delay + self.rng.random() * self.extra_delay + late
        heapq.heappush(self.queue, (at, next(self.counter), sender, to, message))

    def _carry_out(self, n: str, actions: list[object]) -> None:
        node = self.nodes[n]
        for a in actions:
            if isinstance(a, Persist):
                if self.persist:
                    self.disk[n] = (a.term, a.vote, a.leader)
            elif isinstance(a, Send):
                if isinstance(a.message, Vote) and a.message.granted:  # the voter signs its grant
                    self.grants.setdefault((a.message.term, a.to), set()).add(n)
                self._deliver(n, a.to, a.message)
            elif isinstance(a, (Broadcast, Renew)):  # a renewal reaches everyone here (gossip: test_swim.py) ...
                to = sorted(m for m in node.alive if m != n)
                first = set(to)
                if isinstance(a, Renew) and 0 < self.renew_fanout < len(to):  # ... or a few at once, the rest later
                    first = set(self.rng.sample(to, self.renew_fanout))
                for m in to:
                    self._deliver(n, m, a.message, 0.0 if m in first else self.rng.random() * self.gossip_s)
                if isinstance(a, Renew):
                    self._command(n, a.message.term)
            elif isinstance(a, BecameLeader):
                self.grants.setdefault((a.term, n), set()).add(n)  # its own grant, signed when it stood
                self.leader_log.append((self.now, n, a.term))
                self.votes_by_term.setdefault(a.term, []).append((n, a.voters))
                self._command(n, a.term)

    def _command(self, leader: str, term: int) -> None:
        """The leader commands itself at once and every member it sees through the network."""
        self._obey(leader, leader, Command(term, leader))
        for m in self.nodes[leader].alive:
            if m != leader:
                self._deliver(leader, m, Command(term, leader))

    def _verified(self, message: Packet) -> Packet:
        """``message`` as the receiving agent's signature check leaves it: voters without a grant drop out."""
        if isinstance(message, Announce) and not self.quorum:
            return replace(message, voters=frozenset(self.ids))  # the election before certificates: anyone's word
        if isinstance(message, Announce) and message.voters is not None:
            return replace(message, voters=message.voters & self.grants.get((message.term, message.leader), set()))
        if isinstance(message, VoteRequest) and message.voters is not None:
            granted = self.grants.get((message.cert_term, message.candidate), set())
            return replace(message, voters=message.voters & granted)
        return message

    def _note_accepted(self, n: str) -> None:
        node = self.nodes[n]
        if node.accepted is not None:
            self.accepted_by.setdefault(node.term, {}).setdefault(node.accepted, set()).add(n)

    def majority_violations(self) -> list[tuple[int, list[str]]]:
        """Terms in which two leaders were each accepted by a majority of the cluster's nodes."""
        found = []
        for term, by_leader in sorted(self.accepted_by.items()):
            big = sorted(leader for leader, nodes in by_leader.items() if 2 * len(nodes) > self.size)
            if len(big) > 1:
                found.append((term, big))
        return found

    def _obey(self, n: str, sender: str, command: Command) -> None:
        node = self.nodes[n]
        if command_refusal(command.term, sender, node.term, node.accepted) is None:
            self.obeyed[n].append((self.now, command.term, command.leader))

    def run(self, seconds: float) -> None:
        end = self.now + seconds
        while self.now < end:
            self.now = round(self.now + self.tick_s, 6)
            # heartbeats between reachable nodes keep membership views current: ``reachable(a, b) and b not in
            # self.paused`` for every pair, spelled out (this loop was a third of the property tests' time)
            up, cut, now = self.up, self.cut, self.now
            heard_from = [b for b in self.ids if b in up and b not in self.paused]
            for a in self.ids:
                if a in up and not cut:
                    self.last_heard[a].update(dict.fromkeys(heard_from, now))
                elif a in up:
                    heard = self.last_heard[a]
                    for b in heard_from:
                        if frozenset((a, b)) not in cut:
                            heard[b] = now
            while self.queue and self.queue[0][0] <= self.now:
                _, _, sender, to, message = heapq.heappop(self.queue)
                if to in self.paused and self.reachable(sender, to):
                    self.held.append((sender, to, message))
                elif self.reachable(sender, to) and isinstance(message, Command):
                    self._obey(to, sender, message)
                elif self.reachable(sender, to):
                    if not self.one_leader_per_term:
                        self.nodes[to].accepted = None
                    self._carry_out(to, self.nodes[to].step(Received(self.now, sender, self._verified(message))))
                    self._note_accepted(to)
            for n in self.ids:
                if n in self.up and n not in self.paused:
                    self._carry_out(n, self.nodes[n].step(Tick(self.now, self.view(n), self.voices or None)))
                    self._note_accepted(n)

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

    def fencing_violations(self) -> list[tuple[str, int, str, str]]:
        """(node, term, what it obeyed before, the leader it obeyed then): two leaders in a term, or a lower term."""
        found = []
        for n, record in self.obeyed.items():
            leader_of: dict[int, str] = {}
            highest = -1
            for _, term, leader in record:
                if term < highest:
                    found.append((n, term, f"term {highest}", leader))
                elif leader_of.setdefault(term, leader) != leader:
                    found.append((n, term, leader_of[term], leader))
                highest = max(highest, term)
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

    def elections_through_crashes(self, honest: list[str], rounds: int, limit: float) -> list[float | None]:
        """Each of ``rounds`` elections among ``honest``: how long the nodes up took to agree on a leader (None:
        not within ``limit``, or no longer agreed a second later); after each, that second of leadership, then the
        leader crashes and the one crashed before restarts (a majority of ``honest`` is always up). Stops at the
        first None."""
        took: list[float | None] = []
        down: str | None = None
        for _ in range(rounds):
            up = [n for n in honest if n != down]
            took.append(self.time_until_agreed(limit, up))
            if took[-1] is None:
                break
            self.run(1.0)
            leader = self.agreed_leader(up)
            if leader is None:
                took[-1] = None
                break
            if down is not None:
                self.restart(down)
            self.crash(leader)
            down = leader
        return took
