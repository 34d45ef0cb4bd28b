"""SWIM membership (the memberlist/Serf design), sans-IO: events in with ``now``, instructions out.

Each protocol period the node probes ONE member (a shuffled round robin); on a miss the shell asks ``k``
others to probe it (``IndirectProbe``); if none reaches it the member becomes *suspect*. Suspicion expires
after a Lifeguard timeout, scaled by log10(N) and shortened by independent confirmations, and the member is
declared *dead*; long-dead members are forgotten. Membership changes ride on pings, acks and gossip messages
from a bounded broadcast queue, each sent at most ``retransmit_mult * ceil(log10(N + 1))`` times; a periodic
push-pull (``Sync``) exchanges whole tables with one random member.

Trust (gossip about a third node is a claim, never proof):

* a node learned from gossip, a seed or mDNS is a *candidate* until its own authenticated answer to
  ``GET /peer/state`` (``Admit``) admits it; strangers never appear in ``members()``;
* incarnations and resource-state versions are taken as facts only from the node itself (its signed ping or
  ack); a rumour of a higher incarnation only makes us probe it at once, so only the node refutes;
* a suspect, dead or left rumour opens a suspicion (unprobed: it runs its timeout, then our own probe checks it);
  only our own miss starts the clock to death, so the node may refute; dead at once only by its own authenticated
  "left"; verify probes are rate-limited per member (``_verify``); a rumour never makes dead a node that
  answers our own probes; a dead update's ``origin`` is a *declarer* only when proven (as below, with a signed
  declaration), and ``dead_quorum`` (2) distinct proven declarers take the fast path: probe now, one miss of ours
  kills (with ``dead_rumour_verify``, the rule before, any dead rumour does);
* a suspect update's ``origin`` confirms a suspicion (Lifeguard) only when proven: the origin sent it itself, or
  the shell checked the origin's signature riding on the same message (``received(..., proven)``,
  agent.discovery.swim_proofs: nothing proven once counts again); we never count or pass on a suspicion in our
  own name unless our own probe missed; the clock to death starts at our own missed probe, never at a rumour;
* a rumour's incarnation may jump by at most ``MAX_INC_JUMP`` (the node's own authenticated word by any amount:
  it refutes above any suspicion of it, as memberlist does), and every table here has a bound.

    alive --our probe and k indirect probes miss / any rumour--> suspect --our clock's timeout--> dead --> forgotten
      ^------------- the node's own authenticated answer (with a refuting incarnation) -------'
"""

from __future__ import annotations

import ipaddress
import math
import random
from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass, field, replace

from coordinator_election.lease import MAX_TERM_AHEAD, LeaseBook
from peerserve import names
from peerserve.wire import MAX_PIGGYBACK, Grant, Lease, Loads, MemberUpdate, PeerState, SwimMessage

MAX_MEMBERS = 256  # admitted members (the push-pull message carries them all)
MAX_CANDIDATES = 64  # hinted (node id, peer url) pairs not yet authenticated, from mDNS, seeds or gossip ...
MAX_VOUCHED = 64  # ... and from the node itself (its signed message, its signed state request, our known-peers file)
MAX_BROADCASTS = 512  # queued membership updates (one per node at most; newer facts replace older)
MAX_INC_JUMP = 64  # an incarnation may rise by at most this much in one message or rumour
MAX_CONFLICTS = 64
MAX_HEALTH = 8  # Lifeguard local health: our own periods and timeouts stretch up to (1 + 8) x when we are slow


@dataclass(frozen=True)
class SwimConfig:
    """Timings; the defaults detect a crash everywhere in ~2-3 s at 50 nodes (memberlist LAN: ~5 s)."""

    probe_interval_s: float = 0.2
    probe_timeout_s: float = 0.4  # direct probe; indirect probes get twice as long
    indirect_k: int = 3
    suspicion_mult: float = 4.0  # suspicion min = mult * max(1, log10(N + 1)) * probe_interval
    suspicion_max_mult: float = 4.0  # Lifeguard: an unconfirmed suspicion lasts up to max_mult * min
    retransmit_mult: int = 4
    gossip_interval_s: float = 0.1
    gossip_fanout: int = 3
    push_pull_interval_s: float = 10.0
    dead_probe_interval_s: float = 2.0  # a dead member is still probed this often (partitions heal)
    forget_after_s: float = 600.0
    candidate_ttl_s: float = 60.0
    admit_interval_s: float = 0.5  # how often one candidate is asked to authenticate
    state_fetch_interval_s: float = 0.5  # least time between two state fetches from one member
    # A dead rumour is checked with our own probe AND k indirect probes: one missed direct probe of a node that
    # merely lags (a loaded machine: seconds of event-loop lag) made it dead everywhere and started elections.
    verify_indirect: bool = True
    lease_push: int = 3  # the leader sends each lease renewal to this many random members ...
    lease_forward: int = 1  # ... and each member that got a renewal from the leader itself forwards it to this many
    # Every member forwarding every renewal cost each member ~3.4 extra exchanges a second (40 % of its messages);
    # forwarding only the leader's own pushes (one more hop), then piggybacking, reaches every member about as fast
    # (simulated at 50 nodes: longest gap 0.92-0.98 s against 0.74-1.0 s).
    lease_forward_any: bool = False
    # Lifeguard's confirmers: a suspect update's ``origin`` counts only when that origin sent it to us itself (the
    # authenticated sender). True is the rule before, every distinct claimed origin counted: one member could name
    # k others in one message and cut a lagging node's suspicion to its minimum (tests switch it on to show that).
    unproven_confirmers: bool = False
    # A suspicion someone says is OURS (origin = us) but our probe never raised is passed on with no origin, and our
    # shell signs none. True is the rule before: passed on as received, so each node a member told "you suspect x"
    # signed a genuine suspicion of x (tests switch it on to show the laundering attack).
    relay_own_name: bool = False
    # A rumour starts our suspicion but not its clock: a member's own miss does (then the timeout, shortened by
    # proven confirmers). True is the rule before, the clock ran from the first rumour: a member that gossiped a
    # suspicion as a node stalled had it dead the moment anyone's own probe missed (a 1.2 s stall, not 2 s).
    rumour_clock: bool = False
    # Lifeguard: each refutation says others could not reach us (a step of local health), but any member can make us
    # refute at will; at most one step per this many seconds (answered probes heal one a period), 0: every one
    refute_health_s: float = 0.2
    # ... and at most one per our current probe period (probe_interval_s * (1 + health)): answered probes heal one
    # step a period, so a stream of suspicions cannot outpace them. False: the rule before (a fixed 0.2 s held one
    # member's victim at MAX_HEALTH, since probes slow down as health rises).
    refute_health_per_period: bool = True
    # True (the rule before; the agent's dead_quorum = 0): a third party's dead or left rumour makes us probe the node
    # (direct and k relays, at most one check a probe period) and one miss of ours makes it dead at once: one member
    # gossiping "x dead" while x stalls ~1.3 s has every member declare it dead (x refutes and rejoins when it
    # answers). False (the default): the quorum rule below (simulated: no false death in that attack, crashes dead
    # everywhere as fast; 50 real agents: kill -9 dead everywhere p99 2.16 s, issue 13's target 3 s).
    dead_rumour_verify: bool = False
    # With dead_rumour_verify False: a dead declaration (``origin`` declared the node dead: its own message, or its
    # signature riding on the message, wire.SuspectProof with ``dead``) is proof of that one member's word; once this
    # many distinct members other than the node (and us) are proven declarers, the fast path: probe it at once, and
    # one miss of ours makes it dead. Fewer: a suspicion like any other (the origin a proven confirmer; our own miss
    # starts its clock, x may refute). 0: never (every dead rumour a suspicion: a crash was dead everywhere ~1 s
    # later, real agents p99 3.07 s at 25).
    dead_quorum: int = 2
    # True: our own probed suspicion (our probe and k relays missed it) counts as one of them. Not the default: one
    # liar's "x dead" plus any member's own miss of a node that merely stalls then kills it (lifeguard_bench's dead
    # lie, 1.3 s stall: false deaths in 4 of 5 runs at 10 nodes, 5 of 5 at 25), while two proven declarers each ran
    # a suspicion's timeout (or were themselves shown two); a crash is dead everywhere about as fast either way.
    dead_quorum_own: bool = False
    # True (the operator-CA mode, agent/operator_ca.py): a declarer's voice is its node id, one per board card; node
    # ids are no longer free, so several addresses of one member are still one voice. False: its address (``_voice``)
    id_voices: bool = False
    # A node's own authenticated word on its incarnation is taken however far it jumps (MAX_INC_JUMP bounds rumours
    # only). True is the rule before: a jump above 64 was ignored even from the node itself, so a member that told a
    # node "you are suspect at inc+64" three times (it refutes above each, as memberlist does) desynced it for good.
    bounded_own_jump: bool = False
    max_members: int = MAX_MEMBERS
    max_candidates: int = MAX_CANDIDATES
    max_vouched: int = MAX_VOUCHED
    max_broadcasts: int = MAX_BROADCASTS


# -- instructions (what the shell must do) -----------------------------------------------------------------
@dataclass(frozen=True)
class Probe:
    """Ping ``node_id`` at ``url``; report with ``probe_result``. ``verify``: check a dead/left rumour."""

    node_id: str
    url: str
    verify: bool = False


@dataclass(frozen=True)
class Gossip:
    """Send ``message`` (a gossip with piggybacked updates) to ``node_id``; feed the answer to ``received``."""

    node_id: str
    url: str
    message: SwimMessage


@dataclass(frozen=True)
class Sync:
    """Push-pull with ``node_id``: send ``message`` (our table), feed its table to ``received``."""

    node_id: str
    url: str
    message: SwimMessage


@dataclass(frozen=True)
class Admit:
    """Ask candidate ``node_id`` at ``url`` for its state (GET /peer/state); report with ``admitted``."""

    node_id: str
    url: str
    address: str


@dataclass(frozen=True)
class FetchState:
    """Member ``node_id`` has a newer resource state than ours: GET it from the node itself (``state_fetched``)."""

    node_id: str
    url: str


Instruction = Probe | Gossip | Sync | Admit | FetchState
Key = tuple[str, int, str]  # a signed suspicion: (member, incarnation, origin)


@dataclass(frozen=True)
class Transition:
    """A member changed status (or appeared / was forgotten: old or new is None)."""

    node_id: str
    old: str | None
    new: str | None
    reason: str


def address_voice(address: str) -> str | None:
    """A member's voice in a majority or a quorum of declarers (the election's and ``dead_quorum``): its address as
    admitted, so that node ids minted with the cluster token at one host count once (review14b F2); None (its node id
    is its voice) for a loopback address, as pins exempt it (the loopback demo runs every agent on one host), and for
    none at all. A host with several addresses still has one voice per address (docs/security.md). An IPv4 address
    in another spelling the C resolver connects to (``10.0.05``, ``167772165``: review14d Q1) is its dotted quad, so it
    is the same voice (and a loopback one is exempt); hints refuse such spellings, this holds if one got through."""
    quad = names.ipv4_spelling(address)
    try:
        ip = ipaddress.ip_address(quad if quad is not None else address)
    except ValueError:  # not an address literal (a name, only from our own --seeds): the name itself
        return address or None
    return None if ip.is_loopback else str(ip)


def _other_spelling(peer_url: str) -> bool:
    """``peer_url``'s host is an IPv4 address spelt other than as its dotted quad (``https://10.0.05:7443``): never a
    candidate, from a seed, mDNS or gossip alike (the wire already refuses them: ``names.PEER_URL``)."""
    host = peer_url.split("//", 1)[-1].rsplit(":", 1)[0]
    quad = names.ipv4_spelling(host)
    return quad is not None and quad != host


# -- the table ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Suspicion:
    started: float
    incarnation: int
    confirmers: frozenset[str]  # members proven to suspect it: ourselves, or one that told us itself
    probed: bool  # we missed it ourselves (else only rumours): a rumour alone is verified before dead
    declarers: frozenset[str] = frozenset()  # members proven to have declared it dead (at most dead_quorum)

    def confirmations(self) -> int:
        """Lifeguard's count: proven suspecters beyond the first."""
        return max(0, len(self.confirmers) - 1)


@dataclass(frozen=True)
class Record:
    node_id: str
    peer_url: str
    address: str
    status: str  # alive | suspect | dead | left
    incarnation: int
    since: float
    state: PeerState
    claimed_version: int = 0  # the highest state version anyone told us of
    fetched_at: float = -math.inf
    last_probe: float = -math.inf
    suspicion: Suspicion | None = None
    heard_at: float = -math.inf  # when it last spoke for itself (a miss of a probe sent before is stale)
    checked_at: float = -math.inf  # when we last sent a verify probe of it (``Swim._verify``: rate-limited)
    goodbye_at: float = -math.inf  # when an mDNS goodbye for it was last taken (``Swim.recheck``: rate-limited) ...
    goodbye_due: float = math.inf  # ... and when the probe it asked for is due (a random point after it)


@dataclass(frozen=True)
class Candidate:
    """A hinted (node id, peer URL) not yet admitted. ``vouched``: the node itself said so (authenticated), so it
    holds one of ``max_vouched`` slots that mDNS, seeds and gossip cannot take."""

    node_id: str
    peer_url: str
    address: str
    seen: float  # the last hint that keeps it (a hint of one that failed admission does not: it expires)
    last_try: float = -math.inf
    failures: int = 0  # admissions it failed: a full table gives the slot of the most failed to a new hint
    first: float = 0.0  # when it was first hinted (among equally failed, the earliest goes first)
    vouched: bool = False


@dataclass
class _Broadcast:
    update: MemberUpdate
    sent: int = 0


@dataclass
class Swim:
    """One node's membership. Every method takes ``now``; none does I/O; ``rng`` decides every random choice."""

    self_id: str
    self_url: str
    config: SwimConfig = field(default_factory=SwimConfig)
    rng: random.Random = field(default_factory=random.Random)
    incarnation: int = 0
    version: int = 0
    term: int = 0
    leader: str | None = None
    refute: bool = True  # tests switch refutation off to show the checker catches it
    health: int = 0  # Lifeguard local health: 0 good .. MAX_HEALTH; our misses and refutations raise it
    records: dict[str, Record] = field(default_factory=dict)
    candidates: dict[tuple[str, str], Candidate] = field(default_factory=dict)
    broadcasts: dict[str, _Broadcast] = field(default_factory=dict)
    conflicts: set[tuple[str, str]] = field(default_factory=set)  # our own id claimed at another url (bounded)
    replaced: int = 0  # candidates whose slot a new hint took (``hint``: a full table)
    _failed: dict[tuple[str, str], int] = field(default_factory=dict)  # failures of candidates replaced (bounded)
    _order: list[str] = field(default_factory=list)  # the shuffled round robin of probe targets
    _probe_index: int = 0
    _next_probe: float = 0.0
    _next_gossip: float = 0.0
    _next_sync: float = 0.0
    _next_admit: float = 0.0
    _urgent: dict[str, bool] = field(default_factory=dict)  # node -> verify?: probe these at the next tick
    _refute_to: set[str] = field(default_factory=set)  # who suspects us: they hear our refutation from us
    lease: Lease | None = None  # the leader's renewal we relay on every message (our own while we lead)
    loads: Loads | None = None  # our own loads now (the shell keeps them current): on every message we send
    leases: LeaseBook = field(default_factory=LeaseBook)  # newest renewal seen per leader: stale/replays are no news
    _lease_fanout: int = 0  # random members the current renewal still goes to at the next gossip tick
    _lease_cert: tuple[Grant, ...] = ()  # the current renewal's certificate, carried on its pushes only
    _lease_skip: frozenset[str] = frozenset()  # who has it already (the sender, the leader)
    _refuted_at: float = -math.inf  # when a refutation last cost us a step of local health

    # -- sizes and timeouts ------------------------------------------------------------------------------
    def cluster_size(self) -> int:
        return 1 + sum(1 for r in self.records.values() if r.status in ("alive", "suspect"))

    def retransmit_limit(self) -> int:
        return self.config.retransmit_mult * max(1, math.ceil(math.log10(self.cluster_size() + 1)))

    def probe_timeout(self) -> float:
        """The direct probe's deadline, stretched while we ourselves are slow (Lifeguard local health)."""
        return self.config.probe_timeout_s * (1 + self.health)

    def _note_health(self, delta: int) -> None:
        self.health = max(0, min(MAX_HEALTH, self.health + delta))

    def suspicion_timeout(self, confirmations: int) -> float:
        """Lifeguard: from max_mult * min down to min as independent confirmations come in (k expected);
        stretched by our local health (a node that is itself slow is slow to declare others dead)."""
        cfg = self.config
        low = cfg.suspicion_mult * max(1.0, math.log10(self.cluster_size() + 1)) * cfg.probe_interval_s
        low *= 1 + self.health / 2
        high = cfg.suspicion_max_mult * low
        k = max(1, min(cfg.indirect_k, self.cluster_size() - 2))
        frac = math.log(min(confirmations, k) + 1) / math.log(k + 1)
        return max(low, high - (high - low) * frac)

    # -- hints and admission -----------------------------------------------------------------------------
    def hint(self, node_id: str, peer_url: str, address: str, now: float, vouched: bool = False) -> None:
        """mDNS, a seed or gossip says ``node_id`` may listen at ``peer_url``: a candidate, never a member.

        ``vouched``: the node itself said so, authenticated (its signed SWIM message or state request; or our own
        known-peers file): such candidates have their own ``max_vouched`` slots, which no stranger can fill. Anyone
        can send the others (an mDNS advert needs only the public ``c=``), so a full table never refuses a new one: it
        takes the slot of the candidate that failed admission most often (``_make_room``), and
        a candidate that failed is not kept by being hinted again (it expires ``candidate_ttl_s`` after the last
        hint before its failure). Made-up nodes re-announced forever then only displace each other, and a real
        node's advert is asked at once (before: a full table dropped every new hint, and re-hints kept the
        made-up ones, so no new board was ever admitted). The failures of a candidate replaced or expired are
        remembered (``4 * max_candidates`` keys): hinted again, it comes back as failed, not as new."""
        if _other_spelling(peer_url) or names.ipv4_spelling(address) not in (None, address):
            return  # one address in another spelling: a voice of its own per spelling (review14d Q1)
        if node_id == self.self_id:
            if peer_url != self.self_url and len(self.conflicts) < MAX_CONFLICTS:
                self.conflicts.add((node_id, peer_url))
            return
        rec = self.records.get(node_id)
        if rec is not None and rec.peer_url == peer_url and rec.status in ("alive", "suspect"):
            return
        key = (node_id, peer_url)
        old = self.candidates.get(key)
        if old is not None and (old.vouched or not vouched):
            if vouched or old.failures == 0:
                self.candidates[key] = replace(old, seen=now)
            return
        if old is not None:  # a stranger's hint the node itself now vouches for: into its own slots, asked afresh
            del self.candidates[key]
        failures = 0 if vouched else self._failed.get(key, 0)
        if not self._make_room(vouched, failures):
            return
        self._failed.pop(key, None)
        last_try = now if failures else -math.inf  # one that failed before waits its turn behind new ones
        self.candidates[key] = Candidate(node_id, peer_url, address, now, last_try, failures, now, vouched)
        if not failures:
            self._next_admit = min(self._next_admit, now)  # a newcomer is asked at the next tick, not 0.5 s on

    def _make_room(self, vouched: bool, failures: int = 0) -> bool:
        """Free a slot among the candidates of this kind (vouched or not) if they fill their bound: the one that
        failed admission most often; among equals one at the address with the most candidates (a stranger's names
        at its address, not a board alone at its own), the earliest hinted of those (counted in ``replaced``).
        False: no room for a newcomer with ``failures`` of its own (it never displaces one that failed less)."""
        cap = self.config.max_vouched if vouched else self.config.max_candidates
        kind = [c for c in self.candidates.values() if c.vouched == vouched]
        if len(kind) < cap:
            return True
        if not kind:
            return False  # a bound of 0: none of this kind at all
        per_address = Counter(c.address for c in kind)  # one host's made-up names crowd out only each other
        worst = max(kind, key=lambda c: (c.failures, per_address[c.address], -c.first))
        if failures > worst.failures:
            return False
        key = (worst.node_id, worst.peer_url)
        del self.candidates[key]
        self.replaced += 1
        self._remember_failed(worst)
        return True

    def _remember_failed(self, cand: Candidate) -> None:
        """A stranger's candidate leaves having failed admission: hinted again, it comes back as failed, not new."""
        if cand.failures and not cand.vouched:
            if len(self._failed) >= 4 * self.config.max_candidates:
                del self._failed[next(iter(self._failed))]  # the earliest remembered
            self._failed[(cand.node_id, cand.peer_url)] = cand.failures

    def admitted(self, node_id: str, peer_url: str, address: str, state: PeerState, now: float) -> list[Transition]:
        """``node_id`` answered GET /peer/state at ``peer_url`` itself, authenticated: a member (or refreshed)."""
        self.candidates.pop((node_id, peer_url), None)
        self._failed.pop((node_id, peer_url), None)
        rec = self.records.get(node_id)
        if rec is None and len(self.records) >= self.config.max_members:
            return []
        if rec is not None and rec.status in ("alive", "suspect") and rec.peer_url != peer_url:
            rec = replace(rec, peer_url=peer_url, address=address)  # the same key answers there now
        if rec is None:
            rec = Record(node_id, peer_url, address, "new", state.incarnation, now, state, state.version)
            self._order.insert(self.rng.randint(0, len(self._order)), node_id)
            if self.cluster_size() == 1:  # our first member (a seed): pull its whole table now (a join)
                self._next_sync = now
        rec = replace(rec, peer_url=peer_url, address=address, state=state, fetched_at=now,
                      claimed_version=state.version)  # fmt: skip
        self.records[node_id] = rec
        return self._heard_itself(node_id, state.incarnation, now, "admitted: answered authenticated")

    def state_fetched(self, node_id: str, state: PeerState, now: float) -> list[Transition]:
        """The member's own state (GET /peer/state, authenticated): newer resource state, and proof of life."""
        rec = self.records.get(node_id)
        if rec is None:
            return []
        if state.version >= rec.state.version:
            rec = replace(rec, state=state, claimed_version=state.version)
        self.records[node_id] = replace(rec, fetched_at=now)
        return self._heard_itself(node_id, state.incarnation, now, "its state answered")

    def sync_failed(self, now: float) -> None:
        """A push-pull exchange got no answer: try another member within a second, not a whole period."""
        self._next_sync = min(self._next_sync, now + 1.0)

    def fetch_failed(self, node_id: str, now: float) -> None:
        rec = self.records.get(node_id)
        if rec is not None:
            self.records[node_id] = replace(rec, fetched_at=now)

    def admit_failed(self, node_id: str, peer_url: str, now: float) -> None:
        cand = self.candidates.get((node_id, peer_url))
        if cand is not None:
            self.candidates[(node_id, peer_url)] = replace(cand, last_try=now, failures=cand.failures + 1)

    # -- the node's own word ------------------------------------------------------------------------------
    def _heard_itself(self, node_id: str, incarnation: int, now: float, reason: str) -> list[Transition]:
        """``node_id`` spoke for itself, authenticated: alive, at its incarnation (a bounded jump)."""
        rec = self.records.get(node_id)
        if rec is None:
            return []
        implausible = self.config.bounded_own_jump and incarnation > rec.incarnation + MAX_INC_JUMP
        inc = rec.incarnation if implausible else max(rec.incarnation, incarnation)
        self._urgent.pop(node_id, None)
        old = None if rec.status == "new" else rec.status
        self.records[node_id] = replace(rec, status="alive", incarnation=inc, suspicion=None, heard_at=now,
                                        since=now if old != "alive" else rec.since)  # fmt: skip
        if old == "alive" and inc == rec.incarnation:
            return []
        self._enqueue(self._update_of(self.records[node_id]))
        return [] if old == "alive" else [Transition(node_id, old, "alive", reason)]

    # -- protocol period ----------------------------------------------------------------------------------
    def tick(self, now: float) -> tuple[list[Instruction], list[Transition]]:
        """Time passed: expire suspicions and candidates, and say what to send now."""
        out: list[Instruction] = []
        transitions = self._expire(now)
        cfg = self.config
        for member in list(self.records.values()):  # goodbyes' probes that are due (``recheck``)
            if member.goodbye_due <= now:
                self.records[member.node_id] = replace(member, goodbye_due=math.inf)
                if now - member.last_probe >= self._goodbye_gap():
                    self._urgent.setdefault(member.node_id, False)
        for node_id, verify in list(self._urgent.items()):
            rec = self.records.get(node_id)
            if rec is not None:
                out.append(Probe(node_id, rec.peer_url, verify))
                self.records[node_id] = replace(rec, last_probe=now)
        self._urgent.clear()
        if now >= self._next_probe:
            self._next_probe = now + cfg.probe_interval_s * (1 + self.health)
            out += self._next_probes(now)
        for node_id in sorted(self._refute_to):  # our refutation, signed by us, straight to who suspects us
            out.append(Gossip(node_id, self.records[node_id].peer_url, self.message("gossip", node_id)))
        self._refute_to.clear()
        if now >= self._next_gossip:
            self._next_gossip = now + cfg.gossip_interval_s
            out += self._gossip()
            out += self._lease_gossip()
        if now >= self._next_sync:
            self._next_sync = now + cfg.push_pull_interval_s
            peer = self._random_members(1)
            if peer:
                rec = self.records[peer[0]]
                out.append(Sync(rec.node_id, rec.peer_url, self.sync_message()))
        if now >= self._next_admit:
            self._next_admit = now + cfg.admit_interval_s
            out += self._admissions(now)
        out += self._fetches(now)
        return out, transitions

    def next_due(self, now: float) -> float:
        """The earliest time at which ``tick`` has something to do, as far as this core knows now (>= ``now``).

        A shell may sleep until then (and must tick again after every message or result it feeds in, which can
        queue work); ticking earlier is harmless. An idle node wakes once per probe period, not 20 times a second."""
        if self._urgent or self._refute_to:
            return now
        cfg = self.config
        due = [self._next_probe, self._next_sync]
        if self.broadcasts or (self._lease_fanout > 0 and self.lease is not None):
            due.append(self._next_gossip)
        if self.candidates:
            first = min(c.last_try for c in self.candidates.values()) + cfg.admit_interval_s
            due.append(max(self._next_admit, first))
        for rec in self.records.values():
            due.append(rec.goodbye_due)
            if rec.status == "alive" and rec.claimed_version > rec.state.version:
                due.append(rec.fetched_at + cfg.state_fetch_interval_s)
            if rec.status == "suspect" and rec.suspicion is not None:
                end = rec.suspicion.started + self.suspicion_timeout(rec.suspicion.confirmations())
                # past it: an unprobed suspicion waits for our own verify probe (at most one running)
                due.append(end if end > now else rec.checked_at + self._check_gap())
            elif rec.status in ("dead", "left"):
                due.append(rec.since + cfg.forget_after_s)
        return max(now, min(due))

    def _next_target(self) -> str | None:
        """The next alive or suspect member of the round robin; reshuffled after each full pass."""
        for _ in range(len(self._order) + 1):
            if self._probe_index >= len(self._order):
                self._order = [n for n in self._order if n in self.records]
                self.rng.shuffle(self._order)
                self._probe_index = 0
                if not self._order:
                    return None
            node_id = self._order[self._probe_index]
            self._probe_index += 1
            rec = self.records.get(node_id)
            if rec is not None and rec.status in ("alive", "suspect"):
                return node_id
        return None

    def _next_probes(self, now: float) -> list[Instruction]:
        """One member from the shuffled round robin, and dead members due a re-check."""
        out: list[Instruction] = []
        target = self._next_target()
        if target is not None:
            rec = self.records[target]
            out.append(Probe(target, rec.peer_url))
            self.records[target] = replace(rec, last_probe=now)
        for rec in list(self.records.values()):
            if rec.node_id != target and rec.suspicion is not None and rec.suspicion.probed:
                out.append(Probe(rec.node_id, rec.peer_url))  # we suspect it: its own ack clears it
                self.records[rec.node_id] = replace(rec, last_probe=now)
            if rec.status in ("dead", "left") and now - rec.last_probe >= self.config.dead_probe_interval_s:
                out.append(Probe(rec.node_id, rec.peer_url))
                self.records[rec.node_id] = replace(rec, last_probe=now)
        return out

    def probe_result(
        self,
        node_id: str,
        ack: SwimMessage | None,
        indirect_acks: int,
        now: float,
        verify: bool = False,
        sent: float = -math.inf,
        relays_silent: bool = False,
        proven: Collection[Key] = (),
        declared: Collection[Key] = (),
    ) -> list[Transition]:
        """How a probe sent at ``sent`` went: the node's own ack (authenticated), else how many relays reached it.

        ``verify``: the probe checked a rumour (dead, left, or an unconfirmed suspicion that ran out);
        ``relays_silent``: not even the relays answered us (Lifeguard: then we are probably the slow one);
        ``proven``, ``declared``: the suspicions and declarations the ack's own proofs prove (as in ``received``)."""
        rec = self.records.get(node_id)
        if rec is None:
            return []
        if ack is not None and ack.node_id == node_id:
            self._note_health(-1)
            return self.received(ack, now, proven, declared)[1]
        if relays_silent:
            self._note_health(+1)
        if indirect_acks > 0 or rec.heard_at >= sent > -math.inf:
            return []  # reached through others: no suspicion from us, but no proof to clear one either
        return self._missed(rec, now, verify)

    def _missed(self, rec: Record, now: float, verify: bool) -> list[Transition]:
        if rec.status in ("dead", "left"):
            return []
        if verify and self.config.dead_rumour_verify:  # the rule before: a rumour and one miss of ours were enough
            return self._declare_dead(rec, now, "a rumour, and our own probe missed too")
        if rec.status == "suspect" and rec.suspicion is not None:
            if not rec.suspicion.probed:  # our own miss confirms the rumour, and the confirmation travels
                started = rec.suspicion.started if self.config.rumour_clock else now
                sus = replace(rec.suspicion, probed=True, confirmers=rec.suspicion.confirmers | {self.self_id},
                              started=started)  # fmt: skip
                rec = self.records[rec.node_id] = replace(rec, suspicion=sus)
                self._enqueue(MemberUpdate(rec.node_id, "suspect", sus.incarnation, rec.peer_url,
                                           rec.claimed_version, self.self_id))  # fmt: skip
            if self._dead_quorum(rec):  # enough members declared it dead, and our own probe missed it too
                return self._declare_dead(rec, now, "declared dead by enough members, and our own probe missed")
            return []
        sus = Suspicion(now, rec.incarnation, frozenset({self.self_id}), True)
        self.records[rec.node_id] = replace(rec, status="suspect", since=now, suspicion=sus)
        self._enqueue(MemberUpdate(rec.node_id, "suspect", rec.incarnation, rec.peer_url, rec.claimed_version,
                                   self.self_id))  # fmt: skip
        return [Transition(rec.node_id, "alive", "suspect", "our probe and the indirect probes missed")]

    def indirect_targets(self, node_id: str) -> list[tuple[str, str]]:
        """(node id, peer url) of up to k alive members to ask to probe ``node_id`` for us."""
        picked = self._random_members(self.config.indirect_k, exclude={node_id}, alive_only=True)
        return [(n, self.records[n].peer_url) for n in picked]

    def _declare_dead(self, rec: Record, now: float, reason: str) -> list[Transition]:
        self.records[rec.node_id] = replace(rec, status="dead", since=now, suspicion=None)
        self._enqueue(MemberUpdate(rec.node_id, "dead", rec.incarnation, rec.peer_url, rec.claimed_version,
                                   self.self_id))  # fmt: skip
        return [Transition(rec.node_id, rec.status, "dead", reason)]

    def _expire(self, now: float) -> list[Transition]:
        out: list[Transition] = []
        cfg = self.config
        for key, cand in list(self.candidates.items()):
            if now - cand.seen >= cfg.candidate_ttl_s:
                del self.candidates[key]
                self._remember_failed(cand)
        for node_id, rec in list(self.records.items()):
            sus = rec.suspicion
            if rec.status == "suspect" and sus is not None:
                if now - sus.started >= self.suspicion_timeout(sus.confirmations()):
                    if sus.probed:
                        out += self._declare_dead(rec, now, f"suspect for {now - sus.started:.2f} s")
                    else:
                        self._verify(rec, now)  # a rumour's suspicion: our own probe decides
            elif rec.status in ("dead", "left") and now - rec.since >= cfg.forget_after_s:
                del self.records[node_id]
                self.broadcasts.pop(node_id, None)
                out.append(Transition(node_id, rec.status, None, "forgotten"))
        return out

    def left(self, node_id: str, now: float) -> list[Transition]:
        """The node told us itself, authenticated, that it leaves: dead at once, and gossiped."""
        rec = self.records.get(node_id)
        if rec is None or rec.status in ("dead", "left"):
            return []
        self.records[node_id] = replace(rec, status="left", since=now, suspicion=None)
        self._enqueue(MemberUpdate(node_id, "left", rec.incarnation, rec.peer_url, rec.claimed_version, node_id))
        return [Transition(node_id, rec.status, "dead", "left")]

    def recheck(self, node_id: str, now: float) -> None:
        """An unauthenticated hint (an mDNS goodbye): probe it, change nothing else. Anyone can multicast goodbyes,
        and every agent hears them, so they must set neither our probe rate nor its timing: one goodbye per member
        is taken per ``_goodbye_gap``, its probe is due at a random point within that gap (``tick``), and sent only
        if we have not probed the member within the gap by then. review26b F3: a probe at once, each probe
        interval, made every agent probe a member in the same instant, so all of them missed a short stall
        together and confirmed each other's suspicions: a 1.9 s stall was a death in 5/5 simulated runs of 10
        members (4-6 of them declaring it), 0/5 without goodbyes; now 0/12, as without (2.1 s: 5/12, 4/12)."""
        rec = self.records.get(node_id)
        gap = self._goodbye_gap()
        if rec is None or now - rec.goodbye_at < gap:
            return
        self.records[node_id] = replace(rec, goodbye_at=now, goodbye_due=now + self.rng.uniform(0, gap))

    def _verify(self, rec: Record, now: float) -> None:
        """Probe ``rec`` at the next tick to check a rumour's suspicion that ran out, unless we did so less than
        ``_check_gap`` ago (a verify probe is not repeated while one may still run; rumours must not set our rate)."""
        if now - rec.checked_at >= self._check_gap():
            self._urgent[rec.node_id] = True
            self.records[rec.node_id] = replace(rec, checked_at=now)

    def _goodbye_gap(self) -> float:
        """Least time between two goodbyes taken for one member: an unconfirmed suspicion's timeout (3.3 s at 10
        members), the time a probe's miss of ours already takes to say anything."""
        return self.suspicion_timeout(0)

    def _check_gap(self) -> float:
        """Least time between two verify probes of one member: the probe's own length (three probe timeouts)."""
        return max(self.config.probe_interval_s, 3 * self.probe_timeout())

    # -- messages ----------------------------------------------------------------------------------------
    def message(self, kind: str, to: str | None = None) -> SwimMessage:
        """A message from this node (ping, ack, gossip) to ``to``, with updates from the broadcast queue
        (and our suspicion of ``to`` itself, so that it can refute at once)."""
        rec = self.records.get(to or "")
        own = [self._update_of(rec)] if rec is not None and rec.status == "suspect" else []
        piggyback = (*own, *self._take_broadcasts(MAX_PIGGYBACK - len(own)))
        return SwimMessage(kind, self.self_id, self.incarnation, self.version, self.self_url, piggyback[:MAX_PIGGYBACK],
                           self.term, self.leader, lease=self.lease, loads=self.loads)  # fmt: skip

    def sync_message(self) -> SwimMessage:
        """Our whole table (this node first) for a push-pull exchange."""
        table = [MemberUpdate(self.self_id, "alive", self.incarnation, self.self_url, self.version)]
        table += [self._update_of(r) for r in sorted(self.records.values(), key=lambda r: r.node_id)]
        return SwimMessage("sync", self.self_id, self.incarnation, self.version, self.self_url, tuple(table),
                           self.term, self.leader, lease=self.lease, loads=self.loads)  # fmt: skip

    def received(
        self, msg: SwimMessage, now: float, proven: Collection[Key] = (), declared: Collection[Key] = ()
    ) -> tuple[SwimMessage | None, list[Transition]]:
        """A message signed by ``msg.node_id`` (the shell checked that): apply it; (our answer, transitions).

        ``proven``: the (member, incarnation, origin) suspicions whose origin's signature rides on THIS message
        (the shell checked them: agent.discovery.swim_proofs); ``declared``: the same for dead declarations
        (``wire.SwimMessage.dead_proofs``); nothing proven earlier counts again.
        A ``ping_req`` is not answered here: the shell probes the target and answers ``indirect_ack``."""
        signed, dead_signed = frozenset(proven), frozenset(declared)
        out: list[Transition] = []
        if msg.node_id != self.self_id:
            if msg.node_id in self.records:
                out += self._heard_itself(msg.node_id, msg.incarnation, now, "it spoke to us")
                self._own_version(msg.node_id, msg.version)
                self._own_loads(msg.node_id, msg.loads)
            else:
                host = msg.peer_url.split("//", 1)[1].rsplit(":", 1)[0]
                self.hint(msg.node_id, msg.peer_url, host, now, vouched=True)  # its own signed word
            if msg.leader is not None and self.term < msg.term <= self.term + MAX_TERM_AHEAD:
                self.term, self.leader = msg.term, msg.leader  # informational; bounded like election terms
        for update in msg.updates:
            out += self.apply(update, now, msg.node_id, signed, dead_signed)
        if msg.kind in ("ping", "gossip"):
            return self.message("ack", msg.node_id), out
        if msg.kind == "sync":
            return self.sync_message(), out
        return None, out

    def apply(
        self,
        u: MemberUpdate,
        now: float,
        sender: str | None = None,
        proven: frozenset[Key] = frozenset(),
        declared: frozenset[Key] = frozenset(),
    ) -> list[Transition]:
        """A gossiped fact about ``u.node_id`` from ``sender`` (authenticated; None: unknown), not proof unless it
        is about the sender itself; its ``origin`` is proven only when it is the sender or signed (``proven`` for a
        suspicion, ``declared`` for a dead declaration)."""
        if u.node_id == self.self_id:
            return self._about_me(u, self._proven_origin(u, sender, proven), now)
        rec = self.records.get(u.node_id)
        if rec is None:
            if u.status == "alive":
                host = u.peer_url.split("//", 1)[1].rsplit(":", 1)[0]
                self.hint(u.node_id, u.peer_url, host, now)
            return []
        if u.status == "alive":  # however far it claims to jump: only the node's own answer to our probe counts
            if u.incarnation <= rec.incarnation + MAX_INC_JUMP:
                self._claim_version(u.node_id, u.version)
            if u.incarnation > rec.incarnation or rec.status in ("dead", "left"):
                self._urgent.setdefault(u.node_id, False)  # a refutation or a return: only its own word counts
            return []
        if not rec.incarnation <= u.incarnation <= rec.incarnation + MAX_INC_JUMP or rec.status in ("dead", "left"):
            return []  # an old incarnation, or an implausible jump: ignored
        if u.status == "left" and sender == u.node_id:
            return self.left(u.node_id, now)  # its own word, authenticated
        if u.status != "suspect" and self.config.dead_rumour_verify:
            self._verify(rec, now)  # the rule before: one miss of ours and it was dead
            return []
        # a third party's dead or left is a suspicion like any other (never naming the node as its own suspecter)
        as_suspect = replace(u, status="suspect", origin="" if u.origin == u.node_id else u.origin)
        if u.status != "dead":
            return self._suspect_rumour(rec, as_suspect, now, self._proven_origin(as_suspect, sender, proven))
        declarer = self._proven_declarer(u, sender, declared)
        origin = declarer if declarer is not None else self._proven_origin(as_suspect, sender, proven)
        out = self._suspect_rumour(rec, as_suspect, now, origin)
        if declarer is not None:
            out += self._declared(self.records[rec.node_id], u, declarer, now)
        return out

    def suspicion_age(self, node_id: str, incarnation: int, origin: str, now: float) -> float | None:
        """How long the suspicion that ``origin``'s signed word (``node_id`` at ``incarnation``) confirms has been
        open here (0.0: a message now would open it); None: it confirms nothing here, so it is not worth a check.

        Our own word only for our own probed suspicion at that incarnation (never a rumour naming us); another's only
        for a member, from a member, while the suspicion still takes confirmers (Lifeguard's k)."""
        rec = self.records.get(node_id)
        if rec is None or (origin != self.self_id and origin not in self.records):
            return None
        sus = rec.suspicion
        open_now = rec.status == "suspect" and sus is not None and sus.incarnation == incarnation
        if origin == self.self_id:
            ours = sus is not None and (sus.probed or self.config.relay_own_name)
            return now - rec.since if open_now and ours else None
        if open_now and sus is not None:
            full = origin not in sus.confirmers and len(sus.confirmers) > self.config.indirect_k
            return None if full else now - rec.since
        if rec.status == "alive" and rec.incarnation <= incarnation <= rec.incarnation + MAX_INC_JUMP:
            return 0.0
        return None

    def _proven_origin(self, u: MemberUpdate, sender: str | None, proven: frozenset[Key]) -> str | None:
        """The update's origin if it is proven (the authenticated sender, or its signature came with it), else None;
        never ourselves (we confirm a suspicion only with our own probe)."""
        if self.config.unproven_confirmers:
            return u.origin or "?"
        if not u.origin or u.origin == self.self_id:
            return None
        if u.origin == sender or (u.node_id, u.incarnation, u.origin) in proven:
            return u.origin
        return None

    def _proven_declarer(self, u: MemberUpdate, sender: str | None, declared: frozenset[Key]) -> str | None:
        """The dead update's origin if it is a proven declarer: a member other than the node and ourselves, that
        sent it itself or whose signed declaration came with it (``declared``); else None (hearsay)."""
        o = u.origin
        if not self._may_declare(u.node_id, o):
            return None
        return o if o == sender or (u.node_id, u.incarnation, o) in declared else None

    def _may_declare(self, node_id: str, origin: str) -> bool:
        """Whether ``origin`` may count as a declarer of ``node_id``: a live member of ours, neither the node (its
        own word is "left") nor ourselves (we count ourselves only by our own probe)."""
        rec = self.records.get(origin)
        return origin not in ("", node_id, self.self_id) and rec is not None and rec.status in ("alive", "suspect")

    def _declared(self, rec: Record, u: MemberUpdate, declarer: str, now: float) -> list[Transition]:
        """``declarer`` is proven to have declared ``rec`` dead: count it (bounded by the quorum); relay its
        declaration (its signature travels with it); at the quorum, the fast path: probe it now, one miss kills (a
        miss of ours since it last spoke to us is that miss: dead now)."""
        sus, quorum = rec.suspicion, self.config.dead_quorum
        if rec.status != "suspect" or sus is None or sus.incarnation != u.incarnation or quorum <= 0:
            return []
        voices = self._voices(sus.declarers)
        if declarer in sus.declarers or len(voices) >= quorum or self._voice(declarer) in voices:
            return []  # counted, the quorum is full, or another id at an address counted already (review14b F2)
        rec = self.records[rec.node_id] = replace(rec, suspicion=replace(sus, declarers=sus.declarers | {declarer}))
        self._enqueue(u)  # others count this declarer too (the rule before passed it on as a suspicion)
        if not self._dead_quorum(rec):
            return []
        if sus.probed and not self.config.dead_quorum_own:
            return self._declare_dead(rec, now, "declared dead by enough members, and our own probe missed")
        self._verify(rec, now)
        return []

    def _dead_quorum(self, rec: Record) -> bool:
        """Whether enough distinct members declared ``rec`` dead (our own probed suspicion one of them) that one
        miss of ours makes it dead."""
        sus, cfg = rec.suspicion, self.config
        if sus is None or cfg.dead_quorum <= 0 or cfg.dead_rumour_verify:
            return False
        own = 1 if sus.probed and cfg.dead_quorum_own else 0
        return len(self._voices(sus.declarers)) + own >= cfg.dead_quorum

    def _voice(self, node_id: str) -> str:
        """A member's voice among declarers: its address as admitted (ids minted with the cluster token at one host
        count once, review14b F2), its id at a loopback address (the one-host demo) or with none known."""
        rec = self.records.get(node_id)
        address = address_voice(rec.address) if rec is not None and not self.config.id_voices else None
        return address if address is not None else f"id:{node_id}"

    def _voices(self, nodes: Collection[str]) -> set[str]:
        return {self._voice(n) for n in nodes}

    def declaration_age(self, node_id: str, incarnation: int, origin: str, now: float) -> float | None:
        """As ``suspicion_age``, for ``origin``'s signed declaration that ``node_id`` is dead at ``incarnation``.

        Our own word only while we hold it dead ourselves (we declared it); another's only for a member (alive or
        suspect here), from a member other than the node, while it would count (a new declarer below the quorum, or
        one already counted, whose proof we relay)."""
        rec = self.records.get(node_id)
        if rec is None or origin == node_id:
            return None
        if origin == self.self_id:
            return now - rec.since if rec.status == "dead" and rec.incarnation == incarnation else None
        cfg = self.config
        if cfg.dead_rumour_verify or cfg.dead_quorum <= 0 or not self._may_declare(node_id, origin):
            return None
        sus = rec.suspicion
        if rec.status == "suspect" and sus is not None and sus.incarnation == incarnation:
            voices = self._voices(sus.declarers)
            full = origin not in sus.declarers and (len(voices) >= cfg.dead_quorum or self._voice(origin) in voices)
            return None if full else now - rec.since
        if rec.status == "alive" and rec.incarnation <= incarnation <= rec.incarnation + MAX_INC_JUMP:
            return 0.0
        return None

    def _suspect_rumour(self, rec: Record, u: MemberUpdate, now: float, origin: str | None) -> list[Transition]:
        """A suspect update about a member; only a proven ``origin`` confirms (Lifeguard), a claimed one is hearsay."""
        proven = frozenset({origin}) if origin is not None else frozenset()
        # passed on as received, but never naming us: our shell signs what names us (a member could have each node
        # it told "you suspect x" sign a genuine suspicion of x it never probed); the rule before passed it on as is
        cfg = self.config
        as_is = u.origin != self.self_id or cfg.unproven_confirmers or cfg.relay_own_name
        relay = u if as_is else replace(u, origin="")
        if rec.status == "suspect" and rec.suspicion is not None:
            if proven - rec.suspicion.confirmers and len(rec.suspicion.confirmers) <= self.config.indirect_k:
                sus = replace(rec.suspicion, confirmers=rec.suspicion.confirmers | proven)
                self.records[rec.node_id] = replace(rec, suspicion=sus)
                self._enqueue(relay)  # a new confirmation travels on
            return []
        sus = Suspicion(now, u.incarnation, proven, False)
        self.records[rec.node_id] = replace(rec, status="suspect", since=now, suspicion=sus, incarnation=u.incarnation)
        self._enqueue(relay)
        return [Transition(rec.node_id, rec.status, "suspect", f"{origin or 'a rumour'} suspects it")]

    def _about_me(self, u: MemberUpdate, origin: str | None, now: float) -> list[Transition]:
        """Someone says we are suspect or dead: refute with a higher incarnation (only we can)."""
        if u.status == "alive" or u.incarnation < self.incarnation or u.incarnation > self.incarnation + MAX_INC_JUMP:
            return []
        if self.refute:
            if now - self._refuted_at >= self._refute_gap():
                self._note_health(+1)  # others could not reach us: probably we are the slow one
                self._refuted_at = now
            self.incarnation = u.incarnation + 1
            self._enqueue(MemberUpdate(self.self_id, "alive", self.incarnation, self.self_url, self.version))
            if origin in self.records and len(self._refute_to) < self.config.indirect_k + 1:
                self._refute_to.add(origin)  # a proven suspecter hears it from us directly, no one else
        return []

    def _refute_gap(self) -> float:
        """Least time between two refutations that cost us a step of local health (answered probes heal one a
        period: a member that makes us refute at will must not outpace them)."""
        cfg = self.config
        period = cfg.probe_interval_s * (1 + self.health) if cfg.refute_health_per_period else 0.0
        return max(cfg.refute_health_s, period)

    def _own_version(self, node_id: str, version: int) -> None:
        """The node's own word on its state version replaces whatever rumours claimed."""
        rec = self.records.get(node_id)
        if rec is not None:
            self.records[node_id] = replace(rec, claimed_version=version)

    def _own_loads(self, node_id: str, loads: Loads | None) -> None:
        """The node's own current loads (its message, authenticated) replace those of its last fetched state."""
        rec = self.records.get(node_id)
        if rec is None or loads is None:
            return
        s, new = rec.state, (loads.mem_available_mb, loads.cpu_load, loads.gpu_load)
        if (s.mem_available_mb, s.cpu_load, s.gpu_load) != new:
            state = replace(s, mem_available_mb=new[0], cpu_load=new[1], gpu_load=new[2])
            self.records[node_id] = replace(rec, state=state)

    def _claim_version(self, node_id: str, version: int) -> None:
        rec = self.records.get(node_id)
        if rec is not None and version > rec.claimed_version:
            self.records[node_id] = replace(rec, claimed_version=version)

    def set_version(self, version: int) -> None:
        """Our resource state changed: gossip the new version (members fetch the state from us)."""
        if version != self.version:
            self.version = version
            self._enqueue(MemberUpdate(self.self_id, "alive", self.incarnation, self.self_url, version))

    # -- the leader's lease ---------------------------------------------------------------------------------
    def renew(self, lease: Lease) -> None:
        """Our own renewal (we lead, the shell signed it): relay it from now on, pushed to ``lease_push`` members (its
        certificate, if it carries one, on those pushes only: not on every message that piggybacks the lease)."""
        self.leases.note(lease.leader, lease.term, lease.seq, bool(lease.cert))
        self.lease, self._lease_cert = replace(lease, cert=()), lease.cert
        self._lease_fanout, self._lease_skip = self.config.lease_push, frozenset()

    def lease_news(self, lease: Lease) -> bool:
        """Whether a renewal is worth checking: another node's, newer than any seen from that leader, or the newest with
        a certificate where the copy seen had none (the election may need it; its checks are limited per leader)."""
        news = self.leases.is_news(lease.leader, lease.term, lease.seq, bool(lease.cert))
        return lease.leader != self.self_id and news

    def take_lease(self, lease: Lease, sender: str, accepted: bool) -> None:
        """A verified renewal (signed by its leader) from ``sender``; ``accepted``: our election follows it, so we
        relay it on our messages (and forward it once to ``lease_forward`` members if ``sender`` is the leader
        itself); else it is only remembered as seen."""
        self.leases.note(lease.leader, lease.term, lease.seq, bool(lease.cert))
        if accepted:
            self.lease, self._lease_cert = replace(lease, cert=()), lease.cert
            fanout = self.config.lease_forward if self.config.lease_forward_any or sender == lease.leader else 0
            self._lease_fanout, self._lease_skip = fanout, frozenset({sender, lease.leader})

    def _lease_gossip(self) -> list[Instruction]:
        if self._lease_fanout <= 0 or self.lease is None:
            return []
        targets = self._random_members(self._lease_fanout, exclude=set(self._lease_skip), alive_only=True)
        self._lease_fanout = 0
        lease = replace(self.lease, cert=self._lease_cert)
        return [Gossip(n, self.records[n].peer_url, replace(self.message("gossip", n), lease=lease)) for n in targets]

    # -- broadcast queue ------------------------------------------------------------------------------------
    def _update_of(self, rec: Record) -> MemberUpdate:
        """What we say of ``rec``: a suspicion as ours only if we missed it ourselves (else hearsay, no origin)."""
        status = "alive" if rec.status == "new" else rec.status
        ours = status == "dead" or (status == "suspect" and self.config.unproven_confirmers)
        ours = ours or (rec.suspicion is not None and rec.suspicion.probed)
        origin = self.self_id if ours else (rec.node_id if status == "left" else "")
        return MemberUpdate(rec.node_id, status, rec.incarnation, rec.peer_url, rec.claimed_version, origin)

    def _enqueue(self, update: MemberUpdate) -> None:
        """Queue a fact (replacing an older one about the same node); the oldest-sent go first when full."""
        if update.node_id not in self.broadcasts and len(self.broadcasts) >= self.config.max_broadcasts:
            worst = max(self.broadcasts.items(), key=lambda kv: kv[1].sent)[0]
            del self.broadcasts[worst]
        self.broadcasts[update.node_id] = _Broadcast(update)

    def _take_broadcasts(self, limit: int) -> list[MemberUpdate]:
        """Up to ``limit`` queued updates, least-sent first; each dropped after the retransmit limit."""
        chosen = sorted(self.broadcasts.items(), key=lambda kv: kv[1].sent)[:limit]
        cap = self.retransmit_limit()
        for node_id, b in chosen:
            b.sent += 1
            if b.sent >= cap:
                del self.broadcasts[node_id]
        return [b.update for _, b in chosen]

    def _gossip(self) -> list[Instruction]:
        if not self.broadcasts:
            return []
        out: list[Instruction] = []
        for node_id in self._random_members(self.config.gossip_fanout, alive_only=True):
            if not self.broadcasts:
                break
            out.append(Gossip(node_id, self.records[node_id].peer_url, self.message("gossip", node_id)))
        return out

    # -- helpers --------------------------------------------------------------------------------------------
    def _random_members(self, k: int, exclude: set[str] | None = None, alive_only: bool = False) -> list[str]:
        ok = ("alive",) if alive_only else ("alive", "suspect")
        pool = sorted(n for n, r in self.records.items() if r.status in ok and n not in (exclude or set()))
        return self.rng.sample(pool, min(k, len(pool)))

    def _admissions(self, now: float) -> list[Instruction]:
        due = [c for c in self.candidates.values() if now - c.last_try >= self.config.admit_interval_s]
        out: list[Instruction] = []
        # the nodes' own word first; then the least recently tried; among equals those at an address with fewer
        # candidates, the latest hinted (a stranger's burst of made-up names at its address does not keep a board's
        # advert waiting behind it)
        per_address = Counter(c.address for c in due)
        order = sorted(due, key=lambda c: (not c.vouched, c.last_try, per_address[c.address], -c.first))
        for cand in order[:8]:
            self.candidates[(cand.node_id, cand.peer_url)] = replace(cand, last_try=now)
            out.append(Admit(cand.node_id, cand.peer_url, cand.address))
        return out

    def _fetches(self, now: float) -> list[Instruction]:
        out: list[Instruction] = []
        for rec in list(self.records.values()):
            if (rec.status == "alive" and rec.claimed_version > rec.state.version
                    and now - rec.fetched_at >= self.config.state_fetch_interval_s):  # fmt: skip
                self.records[rec.node_id] = replace(rec, fetched_at=now)
                out.append(FetchState(rec.node_id, rec.peer_url))
        return out

    def status_of(self, node_id: str) -> str | None:
        rec = self.records.get(node_id)
        if rec is None:
            return None
        return "dead" if rec.status == "left" else rec.status
