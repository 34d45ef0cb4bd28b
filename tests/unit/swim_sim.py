"""A simulated network of N nodes, each driven by the pure SWIM core (agent.discovery.swim).

Discrete time (``DT``); every exchange is a request and an answer, each lost with probability ``loss`` and
delayed uniformly up to ``max_delay``; an exchange slower than the probe timeout counts as a miss. Nodes can
crash (never answer again) or pause (answer nothing for a while, then go on). Transitions to dead are
recorded per observer so checkers can tell true detections from false deaths.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from agent.discovery import swim as sw
from peerserve.wire import MAX_PROOFS, Lease, MemberUpdate, PeerState, SwimMessage

DT = 0.02
Key = tuple[str, int, str]
Age = Callable[[str, int, str, float], float | None]


def url_of(i: int) -> str:
    return f"https://127.0.0.{i + 2}:7001"


def state_of(node: sw.Swim) -> PeerState:
    host = node.self_url.split("//")[1].split(":")[0]
    return PeerState(node.self_id, f"http://{host}:7000", 7001, {}, 1000.0, 2000.0, None, 0.0, "default", 1.0, 0,
                     None, version=node.version, incarnation=node.incarnation)  # fmt: skip


@dataclass
class Sim:
    n: int
    seed: int = 0
    loss: float = 0.0
    max_delay: float = 0.01
    config: sw.SwimConfig = field(default_factory=sw.SwimConfig)
    refute: bool = True
    now: float = 0.0
    nodes: dict[str, sw.Swim] = field(default_factory=dict)
    crashed: dict[str, float] = field(default_factory=dict)
    paused_until: dict[str, float] = field(default_factory=dict)
    cuts: set[frozenset[str]] = field(default_factory=set)  # pairs whose direct link is down (both ways)
    deaths: list[tuple[float, str, str]] = field(default_factory=list)  # (when, observer, subject)
    leader: str | None = None  # renews a lease every ``renew_s`` (signed leases: the shell's job, not simulated)
    renew_s: float = 0.3
    relay_leases: bool = True  # members follow the leader (take_lease accepted=True): they relay its renewals
    lease_news: dict[str, list[float]] = field(default_factory=dict)  # node -> when a newer renewal reached it
    proofs: bool = True  # senders attach signed suspicions (swim_proofs: the shell's job, emulated in _prove)
    lazy: bool = False  # tick a node only when its core says work is due (Swim.next_due) or something reached it
    ticks: int = 0  # core ticks run (lazy runs need far fewer)
    held: dict[str, dict[tuple[str, str], int]] = field(default_factory=dict)  # node -> checked proofs it holds
    held_dead: dict[str, dict[tuple[str, str], int]] = field(default_factory=dict)  # ... and dead declarations
    # R3's gate (swim_proofs.RELAYED_GATE_S): a node counts relayed proofs only this long after its run began (0: no
    # gate, the rule before); ``started``: when each node's run began (absent: long before the simulation, so a
    # converged cluster is past it; ``cold_start`` puts every node's at 0, ``restart`` one node's at now)
    relay_gate_s: float = 0.0
    started: dict[str, float] = field(default_factory=dict)
    cold_start: bool = False
    gated: int = 0  # relayed proofs a gated node held (and relayed) but did not count
    _due: dict[str, float] = field(default_factory=dict)
    _woken: set[str] = field(default_factory=set)
    _events: list[tuple[float, int, Callable[[], None]]] = field(default_factory=list)
    _seq: itertools.count[int] = field(default_factory=itertools.count)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        for i in range(self.n):
            node_id = f"n{i}"
            node = sw.Swim(node_id, url_of(i), self.config, random.Random(self.seed * 1000 + i), refute=self.refute)
            self.nodes[node_id] = node
        for node_id, node in self.nodes.items():  # everyone knows one seed: n0 (n0 knows n1)
            seed = "n1" if node_id == "n0" else "n0"
            node.hint(seed, self.nodes[seed].self_url, "", 0.0)
            if self.cold_start:
                self.started[node_id] = 0.0

    def restart(self, node_id: str) -> None:
        """``node_id``'s agent restarts at once: a fresh core (incarnation 0, a higher state version, as the agent's
        version floor gives it; only its seed known), its held proofs gone, its run (and R3's gate) starting now."""
        old, i = self.nodes[node_id], int(node_id[1:])
        node = sw.Swim(node_id, url_of(i), self.config, random.Random(self.seed * 1000 + i + 7919), refute=self.refute)
        node.version = old.version + 1
        seed = "n1" if node_id == "n0" else "n0"
        node.hint(seed, self.nodes[seed].self_url, "", self.now)
        self.nodes[node_id] = node
        self.held.pop(node_id, None)
        self.held_dead.pop(node_id, None)
        self.crashed.pop(node_id, None)
        self.paused_until.pop(node_id, None)
        self._due.pop(node_id, None)
        self.started[node_id] = self.now

    def gated_at(self, node_id: str) -> bool:
        """Whether ``node_id`` is within R3's gate: it holds relayed proofs but does not count them yet."""
        return self.now - self.started.get(node_id, -float("inf")) <= self.relay_gate_s

    # -- faults --------------------------------------------------------------------------------------------
    def crash(self, node_id: str) -> None:
        self.crashed[node_id] = self.now

    def pause(self, node_id: str, seconds: float) -> None:
        self.paused_until[node_id] = self.now + seconds

    def cut(self, a: str, b: str) -> None:
        """The direct link between ``a`` and ``b`` drops everything; both still reach everyone else."""
        self.cuts.add(frozenset((a, b)))

    def up(self, node_id: str) -> bool:
        return node_id not in self.crashed and self.paused_until.get(node_id, -1.0) <= self.now

    def _leg(self) -> tuple[bool, float]:
        """One message: (delivered, delay)."""
        return self.rng.random() >= self.loss, self.rng.uniform(0.0, self.max_delay)

    def _exchange(self, a: str, b: str) -> tuple[bool, float]:
        """A request a -> b and its answer: (both delivered in time, round-trip delay)."""
        ok1, d1 = self._leg()
        ok2, d2 = self._leg()
        linked = frozenset((a, b)) not in self.cuts
        ok = ok1 and ok2 and linked and self.up(a) and self.up(b) and d1 + d2 <= self.nodes[a].probe_timeout()
        return ok, d1 + d2

    # -- running -------------------------------------------------------------------------------------------
    def run(self, seconds: float) -> None:
        end = self.now + seconds
        while self.now < end:
            self.now = round(self.now + DT, 6)
            while self._events and self._events[0][0] <= self.now:
                heapq.heappop(self._events)[2]()
            if self.leader is not None and round(self.now / DT) % round(self.renew_s / DT) == 0:
                self._renew()
            for node_id, node in self.nodes.items():
                if self.up(node_id) and self._due_now(node_id):
                    self.ticks += 1
                    instructions, transitions = node.tick(self.now)
                    self._note(node_id, transitions)
                    for ins in instructions:
                        self._carry_out(node_id, ins)
                    if self.lazy:  # only a lazy run reads it (eager runs tick each node each step; ~1/6 of their cost)
                        self._due[node_id] = node.next_due(self.now)

    def _poke(self, node_id: str) -> None:
        """As swim_io's ``wake``: something was fed to the core; tick at once only if that made work due sooner."""
        if self.lazy and self.nodes[node_id].next_due(self.now) < self._due.get(node_id, 0.0):
            self._woken.add(node_id)

    def _due_now(self, node_id: str) -> bool:
        """Eager: every step. Lazy: when its core said, or when a message or result reached it since."""
        if not self.lazy or node_id in self._woken or self.now >= self._due.get(node_id, 0.0):
            self._woken.discard(node_id)
            return True
        return False

    def _renew(self) -> None:
        if self.leader is not None and self.up(self.leader):
            node = self.nodes[self.leader]
            seq = node.leases.seen.get(self.leader, (1, 0))[1] + 1
            node.renew(Lease(1, self.leader, seq, (0, 0.0, self.leader)))
            self._poke(self.leader)

    def _lease_in(self, at: str, msg: SwimMessage | None) -> None:
        """What swim_io.lease_in does once the signature checks out (every member follows the one leader)."""
        node = self.nodes[at]
        if msg is not None and msg.lease is not None and node.lease_news(msg.lease):
            node.take_lease(msg.lease, msg.node_id, self.relay_leases)
            self._poke(at)
            self.lease_news.setdefault(at, []).append(self.now)

    def lease_gaps(self, since: float) -> dict[str, float]:
        """Per live follower: the longest time after ``since`` without a newer renewal reaching it."""
        out = {}
        for n in self.live():
            if n == self.leader:
                continue
            times = [since, *(t for t in self.lease_news.get(n, []) if t >= since), self.now]
            out[n] = max(b - a for a, b in itertools.pairwise(times))
        return out

    def _later(self, delay: float, fn: Callable[[], None]) -> None:
        heapq.heappush(self._events, (self.now + delay, next(self._seq), fn))

    def _note(self, observer: str, transitions: list[sw.Transition]) -> None:
        self._poke(observer)
        for t in transitions:
            if t.new == "dead":
                self.deaths.append((self.now, observer, t.node_id))

    def _prove(self, at: str, msg: SwimMessage | None) -> tuple[list[Key], list[Key]]:
        """What swim_proofs does: the sender attaches its own signed dead declarations (only of nodes it holds dead
        itself) and suspicions (only those it probed itself) and those it holds checked (at most MAX_PROOFS a
        message in all, dead ones first; every node here is honest, so each signature checks out); ``at`` keeps
        those its core would use and they prove the suspicions and declarations of this message only."""
        if not self.proofs or msg is None:
            return [], []
        sender, receiver = self.nodes[msg.node_id], self.nodes[at]
        declared = self._signed(at, msg, "dead", sender.declaration_age, receiver.declaration_age, MAX_PROOFS)
        room = MAX_PROOFS - len(declared)
        return self._signed(at, msg, "suspect", sender.suspicion_age, receiver.suspicion_age, room), declared

    def _signed(self, at: str, msg: SwimMessage, status: str, mine_age: Age, their_age: Age, room: int) -> list[Key]:
        books = self.held_dead if status == "dead" else self.held
        mine, theirs, now = books.setdefault(msg.node_id, {}), books.setdefault(at, {}), self.now
        carried = [(u.node_id, u.incarnation, u.origin) for u in msg.updates if u.status == status and u.origin]
        signed = [k for k in carried if (k[2] == msg.node_id and mine_age(*k, now) is not None)
                  or mine.get((k[0], k[2])) == k[1]]  # fmt: skip
        out = [k for k in list(dict.fromkeys(signed))[:room] if their_age(*k, now) is not None]
        for node_id, inc, origin in out:
            theirs.pop((node_id, origin), None)
            theirs[(node_id, origin)] = inc
            while len(theirs) > 512:
                del theirs[next(iter(theirs))]
        if self.relay_gate_s and self.gated_at(at):  # held and relayed, but only the sender's own word counts
            direct = [k for k in out if k[2] == msg.node_id]
            self.gated += len(out) - len(direct)
            return direct
        return out

    def _deliver(self, a: str, b: str, msg: SwimMessage) -> tuple[bool, float, SwimMessage | None]:
        ok, rtt = self._exchange(a, b)
        if not ok:
            return False, rtt, None
        self._lease_in(b, msg)
        proven, declared = self._prove(b, msg)
        self._poke(b)
        reply, transitions = self.nodes[b].received(msg, self.now, proven, declared)
        self._note(b, transitions)
        if reply is not None:
            self._later(rtt, lambda: self._lease_in(a, reply) if self.up(a) else None)
        return True, rtt, reply

    def _reply(self, a: str, reply: SwimMessage) -> None:
        if self.up(a):
            proven, declared = self._prove(a, reply)
            self._note(a, self.nodes[a].received(reply, self.now, proven, declared)[1])

    def _acked(self, a: str, ins: sw.Probe, ack: SwimMessage | None) -> None:
        proven, declared = self._prove(a, ack)
        result = self.nodes[a].probe_result(ins.node_id, ack, 0, self.now, ins.verify, proven=proven, declared=declared)
        self._note(a, result)

    def _carry_out(self, a: str, ins: sw.Instruction) -> None:
        me = self.nodes[a]
        if isinstance(ins, sw.Probe):
            self._probe(a, ins)
        elif isinstance(ins, (sw.Gossip, sw.Sync)):
            ok, rtt, reply = self._deliver(a, ins.node_id, ins.message)
            if ok and reply is not None:
                self._later(rtt, lambda: self._reply(a, reply))
        elif isinstance(ins, (sw.Admit, sw.FetchState)):
            ok, rtt = self._exchange(a, ins.node_id)
            target = self.nodes[ins.node_id]
            state = state_of(target)
            if isinstance(ins, sw.Admit):
                if ok:
                    self._later(rtt, lambda: self._note(a, me.admitted(ins.node_id, ins.url, "", state, self.now)))
                else:
                    me.admit_failed(ins.node_id, ins.url, self.now)
            elif ok:
                self._later(rtt, lambda: self._note(a, me.state_fetched(ins.node_id, state, self.now)))
            else:
                me.fetch_failed(ins.node_id, self.now)

    def _probe(self, a: str, ins: sw.Probe) -> None:
        me, sent = self.nodes[a], self.now
        ok, rtt, ack = self._deliver(a, ins.node_id, me.message("ping", ins.node_id))
        if ok:
            self._later(rtt, lambda: self._acked(a, ins, ack))
            return
        if ins.verify and not me.config.verify_indirect:  # the direct ping alone, until the probe's end
            self._later(3 * me.probe_timeout(),
                        lambda: self._note(a, me.probe_result(ins.node_id, None, 0, self.now, True, sent)))  # fmt: skip
            return
        acks, answered = 0, 0
        relays = me.indirect_targets(ins.node_id)
        for relay, _url in relays:
            req = SwimMessage("ping_req", a, me.incarnation, me.version, me.self_url)
            delivered, _, _ = self._deliver(a, relay, req)
            answered += delivered
            if delivered and self._deliver(relay, ins.node_id, self.nodes[relay].message("ping", ins.node_id))[0]:
                acks += 1
        silent = bool(relays) and answered == 0

        def report() -> None:
            self._note(a, me.probe_result(ins.node_id, None, acks, self.now, ins.verify, sent, silent))

        self._later(3 * me.probe_timeout(), report)  # swim_io: relays asked after one timeout, for two more

    def forge_suspicion(self, liar: str, victim: str, k: int, launder: bool = False) -> None:
        """Member ``liar`` tells every member that ``k`` others (not itself) suspect ``victim``: one message each, at
        the incarnation that member holds, with no signatures (it cannot sign as the others). ``launder``: it tells
        each member that the member itself suspects ``victim`` (to have it sign that, the review's attack)."""
        sender = self.nodes[liar]
        named = [n for n in self.nodes if n not in (liar, victim)][:k]
        for target in self.live():
            rec = self.nodes[target].records.get(victim)
            if target in (liar, victim) or not self.up(target) or rec is None:
                continue
            others = [target] if launder else named
            updates = tuple(MemberUpdate(victim, "suspect", rec.incarnation, rec.peer_url, 0, o) for o in others)
            msg = SwimMessage("gossip", liar, sender.incarnation, sender.version, sender.self_url, updates)
            self._note(target, self.nodes[target].received(msg, self.now)[1])

    def forge_dead(self, liar: str, victim: str, status: str = "dead") -> None:
        """Member ``liar`` tells every member, in its own name (origin = itself), that ``victim`` is dead (or left),
        at the incarnation that member holds: the review's dead-rumour stall."""
        sender = self.nodes[liar]
        for target in self.live():
            rec = self.nodes[target].records.get(victim)
            if target in (liar, victim) or not self.up(target) or rec is None:
                continue
            update = MemberUpdate(victim, status, rec.incarnation, rec.peer_url, 0, liar)
            msg = SwimMessage("gossip", liar, sender.incarnation, sender.version, sender.self_url, (update,))
            self._note(target, self.nodes[target].received(msg, self.now)[1])

    # -- views ---------------------------------------------------------------------------------------------
    def view(self, observer: str, subject: str) -> str | None:
        return self.nodes[observer].status_of(subject)

    def live(self) -> list[str]:
        return [n for n in self.nodes if n not in self.crashed]

    def converged(self) -> bool:
        """Every live node sees every other live node alive."""
        live = self.live()
        return all(self.view(a, b) == "alive" for a in live for b in live if a != b)

    def false_deaths(self) -> list[tuple[float, str, str]]:
        """Deaths of nodes that had not crashed when they were declared."""
        return [(t, o, s) for t, o, s in self.deaths if s not in self.crashed or t < self.crashed[s]]
