"""Leader election as a sans-IO state machine: events in, actions out, the clock passed in.

Algorithm: leases with terms and votes over the *discovered* members (see docs/election.md for why).

* A leader renews its lease every ``heartbeat_s`` (``Renew(Announce(term))``: the shell may spread it by
  gossip, e.g. signed and piggybacked on membership messages; a new leader's first announce is a
  ``Broadcast``); a follower that hears it holds a lease on that leader for ``lease_s`` (default
  ``election_timeout_s``; longer when renewals travel by gossip and may arrive late).
* When its lease runs out (or the leader drops out of the alive view), a follower looks at the alive
  members: only the best by priority (configured priority, then memory, then node id) stands, after a
  quiet period, with ``term + 1``; the others wait, and skip a best candidate that has not led within an
  election timeout, with every id of its voice (until a leader is followed).
* A voter grants one vote per term, and none while it holds a lease on a live leader (so a returning
  node cannot unseat a healthy leader: no churn). A vote request is its sender's word (priority and term are
  self-declared): it never ends a candidacy, and it cannot keep a passed-over best candidate in the running; a voter
  holds the term of the candidate it just granted for a heartbeat. A fresh board (``fresh``, nothing persisted, no
  known peers) grants nothing, follows no certificate and stands only alone until its view has stopped growing for a
  timeout.
  A candidate wins with votes from a majority of the members alive in its view, so a partition's sides each elect
  their own leader and keep placing.
* A follower holding a lease that hears another leader's renewal tells it whom it follows; that leader sends it and
  the rival its certificate (two leaders after a heal meet within a renewal).
* One leader per term at each node: a node accepts (follows, obeys) at most one leader in a term, the first it
  hears (``accepted``, persisted with term and vote), and never a lower term. Two sides of a partition may each
  elect a leader of the same term number, but no node accepts both: its fencing token (term, leader) only
  moves up. Two leaders that hear each other (after a partition heals) resolve by priority: on equal terms
  the higher priority moves to a new term (the loser stays where it is until it hears that term: it never
  follows a rival of its own term); a lower leader's newer term is moved past, a better one's followed. A
  leader back from a freeze longer than a lease yields to a newer term instead (its voters may have moved on).
* Leader stickiness: a node holding a lease on a live leader ignores a newer term from anyone else (announce,
  lease, unasked-for refusal): with the voters' leases held, nobody can have won it. Another node's message
  moves a leader to a new term at most once per election timeout (each move costs every node an fsync).
* A restarted node listens for a leader for an election timeout before it may stand, unless it was told
  whom to expect (``known``: the peers it knew before the restart): once every one of them is alive in its
  view again and none has announced itself as leader for two heartbeats, there is no leader to wait for
  and the listen period ends (after a power cut the cluster elects in about two heartbeats, not a timeout).
  Until its expected peers (``known`` and the leader it accepted) are all in its view again it grants no vote,
  and they count in the majority a certificate needs: a view still filling is not the cluster.
* A node given seeds (``join_by``) does not stand while it sees no other member until ``join_by``: it is
  joining a cluster, and a leader of one would only spawn a solver and fight the cluster's leader later.
* Persist before you send: whenever the term, this node's vote in it or the leader it accepts for it changes,
  ``step`` returns a ``Persist(term, vote, leader)`` first; the shell must make it durable (fsync) before it
  carries out any later action (or obeys a command), and a restarted node is built from exactly what was
  persisted (``Election(term=, vote=, accepted=)``).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from enum import Enum

Priority = tuple[int, float, str]  # (configured priority, memory MB, node id): higher wins
FRESH_WAIT_TIMEOUTS = 5  # a fresh board waits for its view to settle at most this many election timeouts after start


class Role(str, Enum):
    FOLLOWER = "follower"
    CANDIDATE = "candidate"
    LEADER = "leader"


# -- messages --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Announce:
    """``leader`` leads ``term``. ``voters``: its quorum certificate, the voters whose signed grants of (term, leader)
    the shell verified (None: none carried, as in a renewal). A node that does not yet accept ``leader`` for ``term``
    follows it only when ``voters`` are a majority of the members alive in its own view."""

    term: int
    leader: str
    priority: Priority
    voters: frozenset[str] | None = None


@dataclass(frozen=True)
class VoteRequest:
    """``candidate`` asks for a vote in ``term``. A sitting leader standing again (a re-election) carries the
    certificate of the term it leads (``voters``, verified by the shell, of ``cert_term``): another leader weighs it."""

    term: int
    candidate: str
    priority: Priority
    voters: frozenset[str] | None = None
    cert_term: int = 0


@dataclass(frozen=True)
class Vote:
    term: int
    voter: str
    granted: bool
    leader: str | None  # the live leader the voter follows when it refuses


Message = Announce | VoteRequest | Vote


# -- events ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Tick:
    """Time passed; ``alive`` is the current membership view (node id -> priority), self included. ``voices``: each
    member's voice in a majority (its address as admitted; a member missing from it is its own voice): node ids are
    free to mint with the cluster token, so ids at one address count once (review14b F2)."""

    now: float
    alive: Mapping[str, Priority]
    voices: Mapping[str, str] | None = None


@dataclass(frozen=True)
class Received:
    now: float
    sender: str
    message: Message


Event = Tick | Received


# -- actions ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Send:
    to: str
    message: Message


@dataclass(frozen=True)
class Broadcast:
    """Send to every member alive in the view except self."""

    message: Message


@dataclass(frozen=True)
class Renew:
    """The leader's periodic lease renewal: it must reach every member, but gossip may carry it (not O(N) sends)."""

    message: Announce


@dataclass(frozen=True)
class Persist:
    """Make (term, vote, leader accepted for the term) durable (fsync) before carrying out what follows it."""

    term: int
    vote: str | None
    leader: str | None = None


@dataclass(frozen=True)
class BecameLeader:
    """This node leads ``term``; ``voters`` granted it (itself alone when it moved to a new term)."""

    term: int
    voters: frozenset[str] = frozenset()


@dataclass(frozen=True)
class BecameFollower:
    term: int
    leader: str | None


Action = Persist | Send | Broadcast | Renew | BecameLeader | BecameFollower


@dataclass(frozen=True)
class ElectionConfig:
    heartbeat_s: float = 0.3
    election_timeout_s: float = 1.2
    lease_s: float | None = None  # how long a renewal holds a follower's lease (default election_timeout_s)

    def __post_init__(self) -> None:
        if self.election_timeout_s <= 3 * self.heartbeat_s:
            raise ValueError("election_timeout_s must exceed 3 x heartbeat_s")
        if self.lease_s is not None and self.lease_s < self.election_timeout_s:
            raise ValueError("lease_s must be at least election_timeout_s")

    @property
    def lease(self) -> float:
        return self.election_timeout_s if self.lease_s is None else self.lease_s


@dataclass
class _Candidacy:
    term: int
    started: float
    asked: float
    granted: set[str] = field(default_factory=set)
    electorate: frozenset[str] = frozenset()
    sitting: bool = False  # a leader standing again: it keeps leading its certified term meanwhile
    outranked: bool = False  # a candidate claiming a better priority asked in our term: if we lose, it goes first


class Election:
    """One node's election state. ``step(event)`` returns the actions to carry out."""

    def __init__(
        self, node_id: str, priority: Priority, config: ElectionConfig, now: float, term: int = 0,
        vote: str | None = None, known: frozenset[str] = frozenset(), join_by: float = -1e18,
        accepted: str | None = None, fresh: bool = False,
    ) -> None:  # fmt: skip
        self.node_id = node_id
        self.priority = priority
        self.config = config
        self.term = term
        self.vote = vote  # whom this node voted for in ``term`` (only the current term's vote matters)
        self.accepted = accepted  # the one leader this node accepts in ``term`` (itself when it leads), if any
        self._persisted = (term, vote, accepted)
        self.role = Role.FOLLOWER
        self.leader: str | None = None
        self.lease_until = now + config.election_timeout_s  # listen before standing
        # the first listen's end, fixed: ``lease_until`` moves (a refused vote of a newer term made it listen again),
        # and a restarted node waiting on it for its expected peers waited for good while one member kept it moving
        # and a board it expected was gone (review14d Q2)
        self._listen_ends = self.lease_until
        self._refusal_listen_at = -1e18  # when a refused vote of a newer term last made this node listen (_heard_newer)
        self.alive: dict[str, Priority] = {node_id: priority}
        self.voices: dict[str, str] = {}  # member -> its voice in a majority (its address), where the shell gave one
        self._candidacy: _Candidacy | None = None
        self._last_announce = -1e18
        self._waiting_since: float | None = None
        self._skipped: set[str] = set()
        self._lost_leader: str | None = None  # the leader whose lease ran out, if any
        # peers expected back after a restart (the ones it knew, and the leader it accepted): emptied once a leader is
        # known or the first listen ends. Until they are all in the view again it grants nobody, and they count in the
        # majority a certificate needs (a just-restarted view of {itself, m} made m's grant a majority, review14b F7)
        self._expected = (known | ({accepted} if accepted is not None else frozenset())) - {node_id}
        self._back_since: float | None = None  # when every expected peer was last seen alive again
        # a fresh board (nothing persisted, no known peers) joins with a view that fills one admission at a time: until
        # it has not grown for an election timeout (at most FRESH_WAIT_TIMEOUTS after the start) it grants no vote and
        # follows no certificate, so the member admitted first cannot take it with a certificate of itself and the
        # board (a majority of a view of two). Over once it follows or leads. ``fresh``: the shell says the board is
        # new (nothing persisted, no known peers); the wait applies only then
        fresh = fresh and term == 0 and vote is None and accepted is None and not known
        self._fresh_until = now + FRESH_WAIT_TIMEOUTS * config.election_timeout_s if fresh else -1e18
        self._seen: set[str] = {node_id}  # members seen while fresh
        self._grew_at = now  # when a member was last seen for the first time while fresh
        # given seeds, a node is joining a cluster, not founding one: until ``join_by`` it does not stand while it
        # sees no other member (under load a seed can take seconds to admit us; a leader of one spawns a solver)
        self._join_by = join_by
        # per sender, when its message last moved this leader to a new term (one each per election timeout: one
        # member's stream of messages cannot use up the allowance another leader's announces need at a heal)
        self._moved_at: dict[str, float] = {}
        self._last_event = now  # when this node last took an event: a longer silence means it was frozen
        self._yield_until = -1e18  # a leader back from a freeze yields to a newer term until then
        self.cert: frozenset[str] = frozenset()  # while leading: the voters that granted us ``led_term``
        self.led_term = 0  # the term whose certificate we hold (below ``term`` while we stand again)
        self._led_view: frozenset[str] = frozenset()  # our electorate when we stood for it
        # per node, when we last sent it our certificate or an unasked refusal (once per election timeout each: two
        # leaders that each answer the other's announce would otherwise send them back and forth for ever)
        self._told_at: dict[str, float] = {}
        self._waited_for: dict[str, float] = {}  # per voice we granted, when it last reset our wait to stand
        self._granted_until = -1e18  # until then we hold the term of the candidate we granted (its result is due)

    # -- queries ---------------------------------------------------------------------------------
    @property
    def is_leader(self) -> bool:
        return self.role is Role.LEADER

    @property
    def standing_for(self) -> int | None:
        """The term this node stands for now (a candidate, or a leader standing again), if any: the only term whose
        granted votes the shell books (agent.quorum.Grants.take)."""
        return self._candidacy.term if self._candidacy is not None else None

    def _lease_valid(self, now: float) -> bool:
        return self.leader is not None and now < self.lease_until and self.leader in self.alive

    def _majority(self, voters: frozenset[str] | None) -> bool:
        """Whether ``voters`` (a verified certificate) are a majority of the members alive in this node's own view,
        itself included: the quorum rule for following a leader this node does not accept yet. The candidate's view
        when it stood does not count (it names its electorate itself); a view that grew since the election (a
        partition healed) makes the certificate a minority here, and the leader stands again (``_tick``). During the
        first listen after a restart the peers it expects back count too, alive or not yet (review14b F7)."""
        if voters is None:
            return False
        return 2 * self._count(voters & self.alive.keys()) > self._count(self.alive.keys() | self._expected)

    def _count(self, nodes: Collection[str]) -> int:
        """How many distinct voices ``nodes`` are: members at one address count once (ids minted with the token at a
        member's own address are not a majority, review14b F2), this node is its own voice."""
        return len({n if n == self.node_id else self.voices.get(n, n) for n in nodes})

    def _voice(self, node: str) -> str:
        """``node``'s voice in a majority (its address as admitted; itself where the shell gave none)."""
        return self.voices.get(node, node)

    def _weaker_than(self, other: str, voters: frozenset[str], claimed: Priority) -> bool:
        """Whether this leader yields to ``other``'s certificate where neither holds a majority of this view: more
        voters alive here win, then priority (the view's, else as claimed). Priority only breaks a tie between two
        certificates of the same size: a member that declares itself better has at best its own grant."""
        ours = (self._count(self.cert & self.alive.keys()), self.priority)
        return (self._count(voters & self.alive.keys()), self.alive.get(other, claimed)) > ours

    # -- the step function -----------------------------------------------------------------------
    def step(self, event: Event) -> list[Action]:
        """Feed one event; returns the actions, a ``Persist`` first whenever term, vote or accepted leader changed."""
        if self.role is Role.LEADER and event.now - self._last_event > self.config.lease:
            # frozen (SIGSTOP, a stalled loop) for longer than a lease: our followers may have elected another leader
            # meanwhile, so for an election timeout this leader yields to a newer term instead of defending its own
            self._yield_until = event.now + self.config.election_timeout_s
        self._last_event = max(self._last_event, event.now)
        actions = self._step(event)
        if (self.term, self.vote, self.accepted) != self._persisted:
            self._persisted = (self.term, self.vote, self.accepted)
            return [Persist(self.term, self.vote, self.accepted), *actions]
        return actions

    def observe(self, alive: Mapping[str, Priority], voices: Mapping[str, str] | None = None) -> None:
        """The current membership view (node id -> priority; ``voices`` as in ``Tick``), without time passing: the
        shell may call it before a message, so that whether our leader is still alive is judged on the view of now
        (leader stickiness)."""
        self.alive = {**alive, self.node_id: self.priority}
        self.voices = dict(voices) if voices is not None else {}

    def _set_term(self, term: int) -> None:
        """Move to a higher term: the vote and the accepted leader belong to the old one."""
        if term > self.term:
            self.term = term
            self.vote = None
            self.accepted = None

    def _step(self, event: Event) -> list[Action]:
        if isinstance(event, Tick):
            self.observe(event.alive, event.voices)
            self._note_growth(event.now)
            return self._tick(event.now)
        self._note_growth(event.now)  # (the shell may have given the view of now just before: ``observe``)
        message = event.message
        if isinstance(message, Announce):
            return self._on_announce(event.now, message)
        if isinstance(message, VoteRequest):
            return self._on_vote_request(event.now, message)
        return self._on_vote(event.now, message)

    def _tick(self, now: float) -> list[Action]:
        if self._expected and now >= self._listen_ends and not self._joining(now):
            self._expected = frozenset()  # the first listen is over, whatever moved ``lease_until`` since
        if self.role is Role.LEADER:
            actions: list[Action] = []
            c = self._candidacy
            if c is not None and now - c.started >= self.config.lease + self.config.heartbeat_s:
                self._candidacy = c = None  # standing again did not win: we keep leading; the view decides below
            if c is not None and now - c.asked >= self.config.heartbeat_s:
                c.asked = now  # ask again: the leases other voters hold on another leader run out one by one
                actions.append(Broadcast(self._request(c.term)))
            elif c is None and not self._majority(self.cert) and not self.alive.keys() <= self._led_view:
                # the view outgrew our certificate (members joined, a partition healed): stand again, so that the new
                # members can follow us on a majority (at most once per election timeout). A view that only shrank
                # (a partition's minority side, voters gone) needs nothing: the members left follow us already
                actions += self._reelect(now, self.term + 1, self.node_id)
            if now - self._last_announce >= self.config.heartbeat_s:
                self._last_announce = now
                actions.append(Renew(Announce(self.term, self.node_id, self.priority)))
            return actions
        if self.role is Role.CANDIDATE:
            c = self._candidacy
            assert c is not None
            if now - c.started >= self.config.election_timeout_s:
                actions = self._follow(now, None)  # lost or stalled; re-evaluate on the next tick
                if c.outranked:  # a better candidate stood in our term: it stands again first
                    self.lease_until = now + 2 * self.config.election_timeout_s
                return actions
            if now - c.asked >= self.config.heartbeat_s:  # ask again: voters' leases expire one by one
                c.asked = now
                return [Broadcast(VoteRequest(self.term, self.node_id, self.priority))]
            return []
        if self._lease_valid(now):
            self._waiting_since = None
            self._skipped.clear()
            return []
        if self.leader is None and now < self.lease_until and not self._all_back(now):
            return []  # listening for a leader (after start, or after standing down)
        if self._joining(now):
            return []  # still joining through a seed: nobody to lead yet
        self._expected = frozenset()  # the first listen is over: from now on the usual timeouts
        return self._consider_standing(now)

    def _joining(self, now: float) -> bool:
        return now < self._join_by and self.alive.keys() == {self.node_id}

    def _restarting(self) -> bool:
        """In the first listen after a restart, some peer it expects back not yet in the view: its view is still
        filling (SWIM admits one new member at a time; a member that contacts it first gets in first), so a grant now
        could make one member's candidacy a majority of a view of two (review14b F7)."""
        return bool(self._expected) and not self._expected <= self.alive.keys()

    def _note_growth(self, now: float) -> None:
        """While fresh, note when the view last showed a member for the first time (bounded: members seen, and only
        until the fresh wait ends)."""
        if now >= self._fresh_until:
            self._seen.clear()
            return
        if not self.alive.keys() <= self._seen:
            self._seen.update(self.alive)
            self._grew_at = now

    def _settling(self, now: float) -> bool:
        """A fresh board whose view grew within the last election timeout: it may be seeing a corner of the cluster
        (SWIM admits one candidate at a time, the first to contact it first), so it grants nobody and follows no
        certificate yet. A genuinely new cluster is not stalled: one board needs no grant, and two boards' views
        settle a timeout after they met (the candidate asks again every heartbeat)."""
        return now < self._fresh_until and now - self._grew_at < self.config.election_timeout_s

    def _all_back(self, now: float) -> bool:
        """Every expected peer has been alive in the view for two heartbeats and none announced a leader."""
        if not self._expected or not self._expected <= self.alive.keys():
            self._back_since = None
            return False
        if self._back_since is None:
            self._back_since = now
        return now - self._back_since >= 2 * self.config.heartbeat_s

    def _consider_standing(self, now: float) -> list[Action]:
        if self.leader is not None:
            self._lost_leader = self.leader
            self.leader = None  # the lease ran out: no known leader
        if self._settling(now) and self.alive.keys() != {self.node_id}:
            # a fresh board whose view is still growing stands only alone (one board leads itself): the member admitted
            # first, claiming a low priority, would otherwise grant it a majority of a view of two (review15b F4)
            return []
        if self._waiting_since is None:
            self._waiting_since = now
        elif now - self._waiting_since >= self.config.election_timeout_s:
            best = self._best(exclude=self._skipped)
            if best is not None and best != self.node_id:
                # the best candidate stayed silent: pass over it and every other id of its voice (ids are free to mint
                # with the token: passed over one id a timeout, K ids at one address cost every election K timeouts,
                # review15b F1)
                voice = self._voice(best)
                self._skipped.update(n for n in self.alive if n != self.node_id and self._voice(n) == voice)
            self._waiting_since = now
        best = self._best(exclude=self._skipped)
        if best != self.node_id:
            return []
        return self._stand(now)

    def _best(self, exclude: set[str]) -> str | None:
        ranked = sorted((p, n) for n, p in self.alive.items() if n not in exclude or n == self.node_id)
        return ranked[-1][1] if ranked else None

    def _stand(self, now: float) -> list[Action]:
        self._set_term(self.term + 1)
        self.role = Role.CANDIDATE
        self.vote = self.node_id
        electorate = frozenset(self.alive)
        self._candidacy = _Candidacy(self.term, now, now, {self.node_id}, electorate)
        if self._has_majority():
            return self._win(now)
        return [Broadcast(VoteRequest(self.term, self.node_id, self.priority))]

    def _has_majority(self) -> bool:
        c = self._candidacy
        return c is not None and self._count(c.granted & c.electorate) * 2 > self._count(c.electorate)

    def _win(self, now: float) -> list[Action]:
        """A majority granted the term: lead it, and announce it with the certificate (the shell adds the grants)."""
        assert self._candidacy is not None
        voters = frozenset(self._candidacy.granted)
        self.role = Role.LEADER
        self.leader = self.accepted = self.node_id
        self.cert, self.led_term, self._led_view = voters, self.term, self._candidacy.electorate
        self._fresh_until = -1e18
        self._candidacy = None
        self._waiting_since = None
        self._skipped.clear()
        self._last_announce = now
        return [BecameLeader(self.term, voters), Broadcast(Announce(self.term, self.node_id, self.priority, voters))]

    def _heard_newer(self, now: float, term: int) -> list[Action]:
        """A refused vote of a newer ``term`` (any member may send one, unasked): take the term, end a candidacy of an
        older one, and listen for that term's leader -- at most one such listen per two election timeouts, from any
        sender. Each used to restart the listen, so one member's refusal a second kept every node without a lease from
        ever standing (no leader anywhere once the leader was lost), review14d Q2; now the listen it starts ends in
        time and the node stands in the next timeout if no leader announced itself."""
        self._set_term(term)
        return self._follow(now, None, self._refusal_listen(now))

    def _refusal_listen(self, now: float) -> bool:
        """Whether a refused vote may make this node listen now (and noted): once per two election timeouts, from any
        sender, so that however often refusals come, each listen is followed by a timeout in which the node stands."""
        if now - self._refusal_listen_at < 2 * self.config.election_timeout_s:
            return False
        self._refusal_listen_at = now
        return True

    def _request(self, term: int) -> VoteRequest:
        """Our vote request for ``term``; standing again while leading, it carries the certificate we hold."""
        if self.role is Role.LEADER:
            return VoteRequest(term, self.node_id, self.priority, self.cert, self.led_term)
        return VoteRequest(term, self.node_id, self.priority)

    def _once_per_timeout(self, table: dict[str, float], key: str, now: float) -> bool:
        """True (and noted) if ``key`` has not used ``table``'s allowance within an election timeout."""
        return self._once_per(table, key, now, self.config.election_timeout_s)

    @staticmethod
    def _once_per(table: dict[str, float], key: str, now: float, timeout: float) -> bool:
        """True (and noted) if ``key`` has not used ``table``'s allowance within ``timeout``. The table holds the last
        ``timeout``'s entries only (pruned by time alone, not by the view: two senders outside it must not wipe each
        other's entry), so it is bounded by the senders heard within it."""
        if now - table.get(key, -1e18) < timeout:
            return False
        for k in [k for k, t in table.items() if now - t >= timeout]:
            del table[k]
        table[key] = now
        return True

    def _tell(self, now: float, to: str) -> list[Action]:
        """Send ``to`` our certificate (a rival leader, a node that does not follow us yet), once a timeout per node."""
        if not self._once_per_timeout(self._told_at, to, now):
            return []
        return [Send(to, Announce(self.led_term, self.node_id, self.priority, self.cert))]

    def _refuse_unasked(self, now: float, to: str, term: int) -> list[Action]:
        """Tell a leader we do not follow (its announce carried no certificate, or one that is a minority here) that we
        follow no one at ``term``: a real leader answers with its certificate or stands again. Once a timeout each."""
        if not self._once_per_timeout(self._told_at, to, now):
            return []
        return [Send(to, Vote(term, self.node_id, False, None))]

    def _yielding(self, now: float) -> bool:
        return now < self._yield_until

    def _reelect(self, now: float, term: int, by: str = "") -> list[Action]:
        """``by``'s message (or our own view, ``by`` = us) makes this leader stand again, for ``term`` or above: a real
        election, which only a majority can win, while it keeps leading the term it holds a certificate for (its
        followers grant it and keep their lease on it; the others' leases run out and they grant). At most once per
        election timeout per sender, so a member's stream of election messages cannot make every node fsync and
        answer a new term each time, nor use up the move another leader's announce needs (one allowance for all let
        a member keep two leaders after a partition healed for minutes, review13c F1). This replaced the jump, a
        leader taking a newer term on its own word, which a follower can no longer take (no certificate)."""
        c = self._candidacy
        if c is not None and term <= c.term:
            return []  # we stand for that term already
        term = max(term, self.term + 1)
        if not self._once_per_timeout(self._moved_at, by, now):
            return []
        self._set_term(term)
        self.vote = self.node_id  # our one vote in the new term is spent on ourselves
        self._candidacy = _Candidacy(term, now, now, {self.node_id}, frozenset(self.alive), sitting=True)
        if self._has_majority():
            return self._win(now)
        return [Broadcast(self._request(term))]

    def _follow(self, now: float, leader: str | None, listen: bool = True) -> list[Action]:
        """Follow ``leader`` on a lease, or (None) no one: then listen for an election timeout before standing, unless
        ``listen`` is False (the listen that is running, if any, ends when it would have)."""
        was = (self.role, self.leader, self.accepted)
        self.role = Role.FOLLOWER
        self.leader = leader
        self._candidacy = None
        if leader is not None:
            assert self.accepted in (None, leader), "a node accepts one leader per term"
            self.accepted = leader
            self.lease_until = now + self.config.lease
            self._waiting_since = None
            self._skipped.clear()
            self._lost_leader = None
            self._expected = frozenset()
            self._fresh_until = -1e18  # a board that follows a leader is no longer fresh
        else:
            if listen:
                self.lease_until = now + self.config.election_timeout_s  # listen before standing again
            self._waiting_since = None
        if was != (self.role, self.leader, self.accepted):  # (our leader's new term, once its certificate came)
            return [BecameFollower(self.term, leader)]
        return []

    # -- messages --------------------------------------------------------------------------------
    def _on_announce(self, now: float, m: Announce) -> list[Action]:
        if m.leader == self.node_id:
            return []
        if self.role is Role.LEADER:
            return self._leader_hears(now, m)
        if m.term < self.term:
            # a leader behind our term (we came back with a higher one): tell it, so it stands again past us
            return [Send(m.leader, Vote(self.term, self.node_id, False, self.leader))]
        if m.term == self.term and self.accepted == m.leader:
            return self._follow(now, m.leader)  # the leader we accept for this term: a renewal
        if m.term == self.term and self.accepted is not None:
            # another leader of the term whose leader we accept: never follow it; tell it whose term it is here
            return [Send(m.leader, Vote(self.term, self.node_id, False, self.accepted))]
        if self._majority(m.voters) and not self._settling(now):
            # a majority of the members we see granted it the term (the certificate the shell verified): follow it,
            # whatever lease we hold -- those voters cannot also have held leases on our leader. (A fresh board whose
            # view is still growing judges no certificate yet: it says it follows no one, and the leader sends its
            # certificate again a timeout later, below)
            self._set_term(m.term)
            return self._follow(now, m.leader)
        if self._lease_valid(now) and self.leader == m.leader:
            # our leader stands again for a newer term: hold on to it, and ask for the certificate once a timeout (its
            # broadcast of the win may not have reached us)
            self.lease_until = now + self.config.lease
            return self._refuse_unasked(now, m.leader, m.term)
        if self._lease_valid(now):
            # leader stickiness: we hold a lease on a live leader, so nobody else can have won a majority for a newer
            # term (its voters refuse while they hold one too). Tell the other leader whom we follow, at what term (once
            # a timeout): after a partition healed it learns of our leader at once and sends it its certificate, and
            # the two resolve by the certificate rule (before, they waited for our lease or a stand-again)
            if self._once_per_timeout(self._told_at, m.leader, now):
                return [Send(m.leader, Vote(self.term, self.node_id, False, self.leader))]
            return []
        # a newer term, or a leader of ours we have not accepted, without a majority certificate: one member's word, not
        # followed (a lower member once took every lease-less node this way). Tell it we follow no one: a real leader
        # answers with its certificate, or stands again when its certificate is a minority of our view
        return self._refuse_unasked(now, m.leader, max(m.term, self.term))

    def _leader_hears(self, now: float, m: Announce) -> list[Action]:
        """Another leader's announce (or its certificate, sent to us): who keeps leading."""
        if m.term > self.term and self._majority(m.voters):
            self._set_term(m.term)  # a majority of our view granted it a newer term: it won; follow it
            return self._follow(now, m.leader)
        if m.term > self.term and self._yielding(now):
            # back from a freeze longer than a lease: our followers may have elected it meanwhile. Stand down and ask it
            # for its certificate (not on its word: we would follow a member's announce)
            return [*self._follow(now, None), *self._refuse_unasked(now, m.leader, m.term)]
        if m.voters is not None and not self._majority(self.cert) and self._weaker_than(m.leader, m.voters, m.priority):
            # two leaders met (a partition healed) and our certificate is a minority here: the one with more voters
            # (then priority) keeps leading and stands again; we stand down, so that our followers' leases run out and
            # they can grant it
            return self._follow(now, None)
        # ours holds a majority of this view, or it sent no certificate (a renewal), or it is weaker: send it ours,
        # so that it can judge; a member's word moves nothing here
        return self._tell(now, m.leader)

    def _on_vote_request(self, now: float, m: VoteRequest) -> list[Action]:
        actions: list[Action] = []
        if self.role is Role.LEADER:
            newer = m.voters is not None and m.cert_term > self.led_term and self._majority(m.voters)
            stronger = (
                m.voters is not None and not self._majority(self.cert)
                and self._weaker_than(m.candidate, m.voters, m.priority)
            )  # fmt: skip
            if not (newer or stronger):
                # a live leader refuses; if the candidate's term caught up, it stands again past it (no step-down), at
                # most once per election timeout per candidate: later requests are refused with the current term
                moved = self._reelect(now, m.term + 1, m.candidate) if m.term >= self.term else []
                return [*moved, Send(m.candidate, Vote(self.term, self.node_id, False, self.node_id))]
            # another leader standing again with a certificate that beats ours (a majority here for a newer term, or
            # more voters than ours where neither has a majority): stand down and grant it if our vote is free
            actions += self._follow(now, None)
        if m.term < self.term:
            return [*actions, Send(m.candidate, Vote(self.term, self.node_id, False, self.leader))]
        if self._restarting() or self._settling(now):
            return [*actions, Send(m.candidate, Vote(m.term, self.node_id, False, self.leader))]  # asks again later
        if self._lease_valid(now) and self.leader != m.candidate:
            # we follow a live leader: refuse, and let the candidate learn who it is
            return [Send(m.candidate, Vote(m.term, self.node_id, False, self.leader))]
        if m.term == self.term and self.accepted not in (None, m.candidate):
            return [*actions, Send(m.candidate, Vote(m.term, self.node_id, False, self.leader))]  # it has its leader
        # A vote request is its sender's word (its priority is self-declared, its term made up at will): it is no proof
        # that anyone will win, so it never ends our candidacy: we keep standing and refuse it (our vote in our term is
        # ours). Only proof does: a certificate that is a majority of our view (``_on_announce``), a refusal of our
        # request naming a live leader or a newer term (``_on_vote``, at most once per two timeouts), or our timeout.
        # A better candidate of our term is remembered: when our candidacy times out, we listen two timeouts, so that
        # it stands again first (two nodes that each think themselves best split the vote in lockstep otherwise).
        # Before, each such request ended the candidacy at once and restarted the listen, and un-skipped its sender as
        # the best candidate: one member asking with a top priority kept every election from finishing (session 14's
        # note, item 1). A passed-over candidate stays passed over until a leader is followed (asking is not leading).
        c = self._candidacy
        if self.role is Role.CANDIDATE and c is not None and (m.term > self.term or m.priority > self.priority):
            c.outranked = c.outranked or m.priority > self.priority
            return [Send(m.candidate, Vote(m.term, self.node_id, False, None))]
        if m.term > self.term and self.role is Role.FOLLOWER and now < self._granted_until and self.vote != m.candidate:
            # we granted a candidate of our term a heartbeat ago: its certificate is on the way. Moving to a newer term
            # now would refuse it (a member answering each candidate's request at once with a newer term's request
            # kept every winner unfollowed); the hold is given once per two timeouts per voice, as the wait is
            return [Send(m.candidate, Vote(m.term, self.node_id, False, None))]
        if m.term > self.term:
            ours = self._lease_valid(now) and self.leader == m.candidate  # our own leader stands again: keep it
            self._set_term(m.term)
            if not ours and (self.role is Role.CANDIDATE or self.leader is not None):
                # a leader whose lease ran out (not yet noticed by a tick) is not this term's: /cluster, the chaos
                # checker and the agent must not see it named as the leader of a term it was never accepted for
                self._lost_leader = self.leader or self._lost_leader
                actions += self._follow(now, None)
        granted = self.vote in (None, m.candidate)
        if granted:
            self.vote = m.candidate
            if self._once_per(self._waited_for, self._voice(m.candidate), now, 2 * self.config.election_timeout_s):
                # give the candidate a full timeout before standing ourselves (and hold its term for a heartbeat): once
                # per two timeouts per voice, or one member asking every second would keep every node from ever
                # standing, and one with K ids at its address would win it K times (review15b F1)
                self._waiting_since = now
                self._granted_until = now + self.config.heartbeat_s
        return [*actions, Send(m.candidate, Vote(m.term, self.node_id, granted, self.leader))]

    def _on_vote(self, now: float, m: Vote) -> list[Action]:
        if self.role is Role.LEADER:
            c = self._candidacy
            if c is not None and m.term == c.term:  # an answer to our standing again
                if m.granted:
                    c.granted.add(m.voter)
                    return self._win(now) if self._has_majority() else []
                return []  # its lease on a leader holds, or it voted already: we ask again every heartbeat
            if m.granted or m.leader == self.node_id:
                return []  # late answers to our own candidacy
            if m.term < self.term:
                if m.leader is not None and m.leader in self.alive:
                    # a node that follows another leader at an older term (it answered our renewal: a partition
                    # healed): send it and that leader our certificate. The node follows us at once if it is a
                    # majority of its view (not when its lease ran out), the leader judges by the certificate rule
                    return [*self._tell(now, m.voter), *self._tell(now, m.leader)]
                return []  # old news
            if m.term > self.term and self._yielding(now):
                self._set_term(m.term)  # back from a freeze: our followers may have moved on, stand down
                return self._follow(now, None)
            if m.leader is None and m.term == self.term == self.led_term:
                return self._tell(now, m.voter)  # it follows no one in our term: our certificate lets it follow us
            # (at our term but past our certificate's: it granted a standing-again of ours that did not win, and
            # cannot follow us until one does: stand again, below)
            # a node at a newer term, or one that accepts another leader of ours or of a newer term (a partition's other
            # side; a leader that took it while it had no lease): stand again past it -- a real election, which only a
            # majority can win (a made-up rival's name moves nothing but the voter's own allowance, review13d F1)
            rival = self._tell(now, m.leader) if m.leader is not None and m.leader in self.alive else []
            return [*self._reelect(now, m.term + 1, m.voter), *rival]  # (the rival learns of us: certificate rule)
        if m.term > self.term and self._lease_valid(now):
            return []  # unasked-for news of a newer term while our leader is live: stickiness, as for announces
        if m.term > self.term and not m.granted:
            return self._heard_newer(now, m.term)
        c = self._candidacy
        if self.role is not Role.CANDIDATE or c is None or m.term != c.term:
            return []
        if not m.granted:
            if m.leader is not None and m.leader not in (self.node_id, self._lost_leader):
                # someone follows another live leader: stand down and listen (once per two timeouts, as below)
                return self._follow(now, None, self._refusal_listen(now))
            return []  # its lease on the leader we lost runs out soon: we ask again
        c.granted.add(m.voter)
        if self._has_majority():
            return self._win(now)
        return []
