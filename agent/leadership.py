"""Carries out the election machine and, while leader, the placement-round machine (agent.leader_round).

Election messages travel as ``POST /election/message`` on the peer plane (signed: agent.peer_client); every
tick feeds the election the membership view (alive, admitted peers and their priorities) and persists
(term, vote) before anything is sent. While this node leads, every tick also feeds the round machine, whose
instructions become HTTP calls
(``_gather`` via ``_get_json``, ``_command``) and solves (``_solve``, in a worker process); each result
goes back into the machine as an event. The only HTTP is in ``_post``, ``_get_json`` and ``_command``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Collection, Mapping
from typing import TYPE_CHECKING, Any

import httpx

from agent import aio
from agent import leader_round as lr
from agent.discovery.swim import address_voice
from agent.hysteresis import HoldConfig
from agent.peer_client import TIMEOUT
from agent.placement import parse_node_report, parse_request
from agent.quorum import Certificates, Grants
from agent.solver_worker import SolverStopped, SolverWorker
from agent.window_sync import BuildInputs, WindowBuild
from coordinator_election import (
    Action,
    Announce,
    BecameFollower,
    BecameLeader,
    Broadcast,
    Election,
    ElectionConfig,
    Message,
    Persist,
    Priority,
    Received,
    Renew,
    Send,
    Tick,
    Vote,
    VoteRequest,
    lease_refusal,
)
from coordinator_election.lease import CertAllowance
from peerserve.wire import (
    MAX_LEASE_GRANTS,
    ROUTE_DESIRED,
    ROUTE_ELECTION,
    DesiredCommand,
    ElectionPost,
    Grant,
    Lease,
)

if TYPE_CHECKING:
    from agent.node import NodeAgent
    from agent.operator_ca import OperatorTrust

log = logging.getLogger(__name__)

TICK_S = 0.1  # at most: a third of the heartbeat when that is shorter (20 Hz was an idle agent's largest loop)
SAID_MAX = 1024  # distinct once-only warnings remembered
# One node's gather (three calls on one kept connection) ends within this, whatever each call's own timeout: a
# node answering each call just in time must not hold the round 3 x as long (a dead one fails at connect, 0.5 s).
GATHER_DEADLINE_S = 3.0
# Renewals travel by gossip (agent/discovery/swim.py), so one may reach a member up to ~1 s late at 50 nodes
# (simulated tail): a follower's lease lasts this much longer than the election timeout. A crashed leader is
# still noticed sooner by SWIM (dead: out of the view, the lease ends at once).
GOSSIP_LEASE_SLACK_S = 0.8
LEASE_CERT_EVERY = 4  # a lease renewal's pushes carry our certificate every this many renewals (1.2 s by default)
JOIN_WAIT_S = 10.0  # a node given seeds stands alone only if no member is admitted by then (seeds retry every 5 s)


def encode(message: Message) -> dict[str, Any]:
    """An election message as it travels (peerserve.wire.ElectionPost)."""
    return ElectionPost.from_message(message).to_json()


def decode(data: Any) -> Message:
    """Parse an election message; raises ValueError (WireError) on anything malformed or out of range."""
    return ElectionPost.parse(data).to_message()


class Leadership:
    def __init__(
        self, agent: NodeAgent, monotonic: Callable[[], float] = time.monotonic, known: Collection[str] = ()
    ) -> None:
        """``known``: the peers this node knew before it (re)started (agent/known_peers.py): the first election
        does not wait out a full timeout once they are all back and none leads."""
        self.agent = agent
        self.monotonic = monotonic  # the election's clock; wall time (request records, rounds) is agent.clock
        s = agent.settings
        self.priority: Priority = (s.priority, agent.node_metrics().mem_total_mb, s.node_id)
        config = ElectionConfig(heartbeat_s=s.election_heartbeat_s, election_timeout_s=s.election_timeout_s,
                                lease_s=s.election_timeout_s + GOSSIP_LEASE_SLACK_S)  # fmt: skip
        term, vote = agent.store.election_state()
        accepted = agent.store.election_accepted()  # the one leader this node obeys in ``term``
        if accepted is None and agent.store.highest_term() == term:  # a store written before it was persisted
            accepted = agent.store.term_leader()
        if agent.store.highest_term() > term:  # a leader's command told us of a newer term: we hold no vote in it
            term, vote, accepted = agent.store.highest_term(), None, agent.store.term_leader()
        join_by = monotonic() + JOIN_WAIT_S if s.seed_urls else -1e18  # joining through seeds: no leader of one
        self.machine = Election(s.node_id, self.priority, config, now=monotonic(), term=term, vote=vote,
                                known=frozenset(known), join_by=join_by, accepted=accepted, fresh=True)  # fmt: skip
        hold = HoldConfig(
            s.placement_hold, s.placement_hold_margin, s.placement_hold_start_ms, s.placement_min_dwell_s,
            per_model=s.placement_hold_per_model,
        )  # fmt: skip
        round_config = lr.RoundConfig(
            period_s=s.placement_period_s, window_s=s.request_window_s, hold=hold,
            target_rounds=s.placement_target_rounds, max_window_bytes=int(s.request_window_mb * 2**20),
            fence_pause_s=4 * s.election_timeout_s,  # a real newer leader's announces reach us well within it
        )  # fmt: skip
        self.rounds = lr.LeaderRound(s.node_id, round_config)
        self._tasks: list[asyncio.Task[None]] = []
        self._background: set[asyncio.Task[Any]] = set()
        self._said: set[str] = set()
        self._renewals = 0  # lease renewals signed (every LEASE_CERT_EVERY-th carries our certificate)
        self.leader_since: float | None = None
        self.solver = SolverWorker(s.placement_method)  # runs only while this node leads
        # quorum certificates (agent/quorum.py): the grants we sign and collect, and others' certificates verified
        self.grants = Grants(agent.identity) if agent.identity is not None else None
        self.certificates = Certificates(agent.identity) if agent.identity is not None else None
        self._lease_certs = CertAllowance(config.election_timeout_s)  # gossiped lease certificates verified, per leader
        if agent.discovery is not None:  # the leader's lease rides on SWIM messages (signed by the leader)
            agent.discovery.swim.on_lease = self.lease_received

    @property
    def leader(self) -> str | None:
        """The leader this node follows and accepts for ``term`` (not one whose newer term it has no certificate of)."""
        return self.machine.leader if self.machine.leader == self.machine.accepted else None

    @property
    def term(self) -> int:
        return self.machine.term

    @property
    def accepted(self) -> str | None:
        """The one leader this node accepts (obeys) in ``term``, if any: the fencing pair is (term, accepted)."""
        return self.machine.accepted

    @property
    def is_leader(self) -> bool:
        return self.machine.is_leader

    @property
    def last_placement(self) -> dict[str, Any] | None:
        return self.rounds.last_placement

    async def start(self) -> None:
        self._tasks = [asyncio.create_task(self._tick_loop(), name="election")]

    async def stop(self) -> None:
        for task in [*self._tasks, *self._background]:
            task.cancel()
        for task in [*self._tasks, *self._background]:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.solver.close()

    # -- election I/O ----------------------------------------------------------------------------
    def _view(self) -> dict[str, Priority]:
        return self._view_and_voices()[0]

    def _view_and_voices(self) -> tuple[dict[str, Priority], dict[str, str]]:
        """The election's view (node id -> priority) and each member's voice in a majority (``address_voice``)."""
        # A suspect member stays in the view: SWIM suspects after one missed probe round and the node usually
        # refutes within a few hundred ms; the lease (or dead) decides when a leader is gone.
        view: dict[str, Priority] = {}
        voices: dict[str, str] = {}  # operator-CA mode: none, each member (one board card) its own voice
        by_card = self._operator() is not None
        for m in self.agent.peers.members():
            if m.status in ("alive", "suspect"):
                view[m.node_id] = self._granted(m.node_id, (m.priority, m.mem_total_mb, m.node_id))
                address = None if by_card else address_voice(m.address)
                if address is not None:
                    voices[m.node_id] = address
        return view, voices

    def _operator(self) -> OperatorTrust | None:
        identity = getattr(self.agent, "identity", None)
        return identity.operator if identity is not None else None

    def _granted(self, node_id: str, claimed: Priority) -> Priority:
        """``node_id``'s priority: in the operator-CA mode the one its board card grants (0 without), whatever it
        claims (agent/operator_ca.py); as claimed otherwise."""
        trust = self._operator()
        return claimed if trust is None else (trust.priority(node_id, self.agent.clock()), claimed[1], claimed[2])

    async def _tick_loop(self) -> None:
        while True:
            try:
                self._carry_out(self.machine.step(Tick(self.monotonic(), *self._view_and_voices())))
                if self.is_leader:
                    self._feed(lr.Tick(self.agent.clock()))
            except Exception:
                log.exception("election tick failed")
            await asyncio.sleep(min(TICK_S, self.agent.settings.election_heartbeat_s / 3))

    def receive(self, sender: str, data: Any) -> None:
        """A message from a peer (POST /election/message); raises ValueError when malformed. Its proofs are checked
        here: a granted vote counts only with the voter's signed grant, and a certificate reaches the machine as the
        voters whose grants verify (``agent.quorum``)."""
        post = ElectionPost.parse(data)
        message = self._verified(sender, post)
        if message is None:
            return
        self._judge_with_current_view()
        self._carry_out(self.machine.step(Received(self.monotonic(), sender, message)))

    def _verified(self, sender: str, post: ElectionPost) -> Message | None:
        """``post`` as the machine may take it: certificates reduced to verified voters; a grant without a valid
        signature dropped (None)."""
        message = post.to_message()
        if isinstance(message, Announce):
            message = dataclasses.replace(message, priority=self._granted(message.leader, message.priority))
        elif isinstance(message, VoteRequest):
            message = dataclasses.replace(message, priority=self._granted(message.candidate, message.priority))
        if self.grants is None or self.certificates is None:
            return message  # no cluster token: no peer plane, nobody to verify
        members = {m.node_id for m in self.agent.peers.members() if m.status != "dead"} | {self.agent.settings.node_id}
        if isinstance(message, Vote) and message.granted:
            standing = self.machine.standing_for
            if message.term != standing:
                return None  # late, or of a term we do not stand for: nothing to count or to book (review14b F1)
            if not self.grants.take(message.term, sender, post.grant, standing, self.machine.led_term):
                self._say_once(f"grant:{sender}", "a vote granted by %s at term %d carries no valid signed grant: "
                               "not counted", sender, message.term)  # fmt: skip
                return None
        elif isinstance(message, Announce):
            if post.cert is None:
                if (message.term, message.leader) != (self.term, self.accepted):
                    self._say_once(f"nocert:{sender}", "announce of %s at term %d carries no quorum certificate (a "
                                   "peer of an older version?): not followed", sender, message.term)  # fmt: skip
                return message
            voters = self.certificates.voters(message.term, message.leader, post.cert, members)
            return Announce(message.term, message.leader, message.priority, voters)
        elif isinstance(message, VoteRequest) and post.cert is not None:
            voters = self.certificates.voters(post.cert_term, message.candidate, post.cert, members)
            return VoteRequest(message.term, message.candidate, message.priority, voters, post.cert_term)
        return message

    def _encode(self, to: str | None, message: Message) -> dict[str, Any]:
        """``message`` as it travels, with its proofs: our signed grant on a granted vote (to ``to``), the certificate's
        grants on an announce or a sitting leader's vote request."""
        post = ElectionPost.from_message(message)
        if self.grants is not None:
            if isinstance(message, Vote) and message.granted and to is not None:
                post = dataclasses.replace(post, grant=self.grants.sign(message.term, to))
            elif isinstance(message, Announce) and message.voters is not None:
                cert = self.grants.certificate(message.term, message.voters, self._keep())
                post = dataclasses.replace(post, cert=cert)
            elif isinstance(message, VoteRequest) and message.voters is not None:
                cert = self.grants.certificate(message.cert_term, message.voters, self._keep())
                post = dataclasses.replace(post, cert=cert)
        return post.to_json()

    def _lease_cert(self, term: int) -> tuple[Grant, ...]:
        """The certificate a renewal of ``term`` carries on its pushes: ours of that term, every LEASE_CERT_EVERY-th
        renewal (a member that missed the announce verifies us within that many heartbeats without asking), none when
        it has more than MAX_LEASE_GRANTS grants (those members ask us for it, as before) or we stand again."""
        self._renewals += 1
        cert = self.machine.cert
        if self.grants is None or term != self.machine.led_term or len(cert) > MAX_LEASE_GRANTS:
            return ()
        if (self._renewals - 1) % LEASE_CERT_EVERY:
            return ()
        return self.grants.certificate(term, cert, self._keep())

    def _keep(self) -> tuple[int, ...]:
        """The grant books never pruned: the term we lead and the one we stand for."""
        standing = self.machine.standing_for
        return (self.machine.led_term,) if standing is None else (self.machine.led_term, standing)

    def _judge_with_current_view(self) -> None:
        """Give the machine the membership view as it is now, before a message: whether the leader this node holds a
        lease on is still alive decides whether a newer term's announce is ignored (leader stickiness); the view of
        the last tick may be a tick old, or missing before the first tick."""
        self.machine.observe(*self._view_and_voices())

    def lease_received(self, lease: Lease) -> bool:
        """A renewal signed by its leader (checked by the SWIM shell): fed to the election as that leader's announce
        unless ``lease_refusal`` says no; True when this node now follows that leader at that term."""
        members = {m.node_id for m in self.agent.peers.members() if m.status != "dead"}
        why = lease_refusal(lease.term, lease.leader, self.agent.settings.node_id, self.term, members)
        if why is not None:
            log.debug("lease of %s at term %d not taken: %s", lease.leader, lease.term, why)
            return False
        priority = self._granted(lease.leader, lease.priority)
        announce = Announce(lease.term, lease.leader, priority)
        if lease.cert and self.certificates is not None and self._lease_cert_wanted(lease):
            # its certificate rode along (a push): a node that missed the winner's announce verifies the leader from
            # the gossiped lease (agent/quorum.py; only members' grants, each signature once)
            voters = self.certificates.voters(
                lease.term, lease.leader, lease.cert, {*members, self.machine.node_id}, from_leader=False
            )  # (a relay may have swapped a grant for a forgery: not cached whole, nor its verdicts kept)
            announce = Announce(lease.term, lease.leader, priority, voters)
        self._judge_with_current_view()
        self._carry_out(self.machine.step(Received(self.monotonic(), lease.leader, announce)))
        return self.machine.leader == lease.leader and self.machine.term == lease.term

    def _lease_cert_wanted(self, lease: Lease) -> bool:
        """Whether a gossiped lease's certificate could change whom this node follows, and may be verified now: not of a
        term below ours, not of the leader we accept at its term already, and at most one per leader per election
        timeout (``CertAllowance``, 16 leaders). Any member may put a lease of its own, with forged grants, on every
        SWIM message (a route with no per-sender rate limit): each cost every receiver a signature check per grant
        even where the machine then ignored the certificate (958 us a message against 310 for the request's own
        check, review15b F2)."""
        if lease.term < self.term or (lease.term, lease.leader) == (self.term, self.accepted):
            return False
        return self._lease_certs.take(lease.leader, self.monotonic())

    def _carry_out(self, actions: list[Action]) -> None:
        if not actions:  # most ticks: nothing to do (and no member list to build)
            return
        urls = {m.node_id: m.api_url for m in self.agent.peers.members() if m.status != "dead"}
        for action in actions:
            if isinstance(action, Persist):  # first in the list: durable before anything below goes out
                self.agent.store.save_election_state(action.term, action.vote, action.leader)
            elif isinstance(action, Send):
                if action.to in urls:
                    self._spawn(self._post(urls[action.to], self._encode(action.to, action.message)))
            elif isinstance(action, Broadcast):
                body = self._encode(None, action.message)  # signed once for every member
                for node, url in urls.items():
                    if node in self.machine.alive:
                        self._spawn(self._post(url, body))
            elif isinstance(action, Renew):
                if self.agent.discovery is not None:
                    m = action.message
                    self.agent.discovery.swim.renew_lease(m.term, m.priority, self._lease_cert(m.term))
            elif isinstance(action, BecameLeader):
                self.agent.store.observe_term(action.term, self.agent.settings.node_id)
                log.info("node %s became leader at term %d", self.agent.settings.node_id, action.term)
                if self.rounds.term is None:  # a new tenure (a move to a new term keeps its start and its round)
                    self.leader_since = self.agent.clock()
                self.solver.start()  # warms up in the background; before the round machine can ask for a solve
                self._feed(lr.Elected(self.agent.clock(), action.term, self._members()))
            elif isinstance(action, BecameFollower):
                self.agent.store.observe_term(action.term, action.leader)
                if action.leader is not None:
                    log.info("node %s follows %s at term %d", self.agent.settings.node_id, action.leader, action.term)
                self._feed(lr.Deposed(self.agent.clock()))
                self.solver.stop()

    async def _post(self, url: str, body: dict[str, Any]) -> None:
        peers = self.agent.peer_client
        if peers is None:
            return
        with contextlib.suppress(ValueError):  # PeerCallError: unreachable or unauthentic; the machine retries
            await peers.send(url, "POST", ROUTE_ELECTION, body)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- placement rounds: carry out the round machine's instructions --------------------------------
    def _members(self) -> dict[str, str]:
        """Alive members and this node: node id -> API URL (who a round gathers from and commands)."""
        members = {m.node_id: m.api_url for m in self.agent.peers.members() if m.status == "alive"}
        members[self.agent.settings.node_id] = self.agent.settings.api_url
        return members

    def membership_changed(self) -> None:
        if self.is_leader:
            self._feed(lr.MembershipChanged(self.agent.clock(), self._members()))

    def _feed(self, event: lr.Event) -> None:
        """Step the round machine and start what it instructs; each result is fed back the same way."""
        for instruction in self.rounds.step(event):
            if isinstance(instruction, lr.Gather):
                self._spawn(self._then_feed(self._gather(instruction)))
            elif isinstance(instruction, lr.Solve):
                self._spawn(self._then_feed(self._solve(instruction)))
            elif isinstance(instruction, lr.Command):
                self._spawn(self._then_feed(self._command(instruction)))
            else:
                self._placed(instruction.summary)

    async def _then_feed(self, result: Any) -> None:
        try:
            event = await result
        except Exception:  # a bug or a broken worker: the round machine times the round out
            log.exception("placement round step failed")
            return
        self._feed(event)

    def _placed(self, summary: Mapping[str, Any]) -> None:
        self.agent.telemetry.placement_round(dict(summary))
        if summary.get("fallback"):
            self._say_once("solver", "placement falls back to least-loaded: %s", summary["fallback"])
        log.info(
            "placement at term %d: %d requests on %d nodes, objective %.1f ms, solve %.1f ms, %d actions, %d delivered"
            "; %s: %s",
            summary["term"], summary["requests"], len(summary["nodes"]), summary["objective_ms"] or 0.0,
            summary["solve_ms"] or 0.0, len(summary["actions"]), summary["delivered"],
            "switched" if summary.get("hold", {}).get("switched", True) else "held",
            summary.get("hold", {}).get("reason", ""),
        )  # fmt: skip

    async def _gather(self, g: lr.Gather) -> lr.Gathered | lr.GatherFailed:
        """One gather: the node's stats and one page of its request log after ``g.since``."""
        deadline = asyncio.get_running_loop().time() + GATHER_DEADLINE_S
        try:
            stats_node, stats_models, page, ahead = await aio.wait_for(
                self._fetch_stats(g, deadline), GATHER_DEADLINE_S
            )
            report = parse_node_report(stats_node, stats_models)
            records = tuple((int(raw["id"]), parse_request(raw)) for raw in page["requests"])
            return lr.Gathered(self.agent.clock(), g.round, g.node, report, records, ahead)
        except (asyncio.TimeoutError, httpx.HTTPError, KeyError, TypeError, ValueError, OverflowError) as exc:
            # a call cut to what was left of the deadline failed by it (a timer may fire a clock tick early)
            if isinstance(exc, asyncio.TimeoutError) or asyncio.get_running_loop().time() >= deadline - 0.001:
                self._say_once(f"gather:{g.node}:deadline", "cannot gather stats from %s within %.1f s", g.node,
                               GATHER_DEADLINE_S)  # fmt: skip
                return lr.GatherFailed(self.agent.clock(), g.round, g.node,
                                       f"no stats within {GATHER_DEADLINE_S:g} s")  # fmt: skip
            self._say_once(f"gather:{g.node}:{type(exc).__name__}", "cannot gather stats from %s: %s", g.node, exc)
            return lr.GatherFailed(self.agent.clock(), g.round, g.node, f"{type(exc).__name__}: {exc}")

    async def _fetch_stats(self, g: lr.Gather, deadline: float) -> tuple[Any, Any, Any, float]:
        """The node's two stats answers, one request-log page and how far its clock reads ahead of ours (from the
        page's signed stamp against the middle of our wait for it): one after another, on one kept connection
        (three at once needed a third connection to each peer every round, two are kept: a TLS handshake on the
        leader's event loop that its proxied requests waited behind, the load bench's slow 1 %).

        Each call's own timeout is what is left of ``deadline`` (the loop's clock), so the gather ends by then even
        where a cancellation from the outer wait is lost below us (Python 3.10/3.11's ``asyncio.wait_for`` in a
        library: the call would return, and the next one would start with a full timeout of its own)."""
        stats_node = await self._get_json(f"{g.url}/stats/node", None, _left(deadline))
        stats_models = await self._get_json(f"{g.url}/stats/models", None, _left(deadline))
        stamp: list[float] = []
        asked = self.agent.clock()
        page = await self._get_json(
            f"{g.url}/stats/requests", {"since": g.since, "limit": g.limit}, _left(deadline), stamp
        )
        ahead = stamp[0] - (asked + self.agent.clock()) / 2 if stamp else 0.0
        return stats_node, stats_models, page, ahead

    async def _get_json(
        self,
        url: str,
        params: Mapping[str, Any] | None,
        timeout: httpx.Timeout,
        stamp: list[float] | None = None,
    ) -> Any:
        """A peer's stats answer, authenticated and strictly parsed; raises ValueError (PeerCallError)."""
        if self.agent.peer_client is None:
            raise ValueError("no peer plane without a cluster token")
        return await self.agent.peer_client.get_json(url, params, timeout, stamp)

    async def _solve(self, solve: lr.Solve) -> lr.Solved | lr.SolveFailed:
        """Solve in the worker process (the one place that solves); it builds the snapshot there too, from its copy
        of the request window (agent.window_sync), so the build holds no GIL of this serving process."""
        s = self.agent.settings
        catalogue = self.agent.catalogue.current
        inputs = BuildInputs(solve.nodes, catalogue, solve.now, s.placement_objective, s.request_window_s)
        mem_mb = {m: spec.mem_mb for m, spec in catalogue.models.items()}
        try:
            if solve.delta is None or solve.window_config is None:  # a Solve made without the round's window
                snapshot = await asyncio.to_thread(inputs.build, solve.requests)
                plan, fallback = await self.solver.solve(snapshot, s.placement_method, s.placement_mode, solve.held)
                requests = len(snapshot["requests"])
            else:
                build = WindowBuild(solve.delta, solve.requests, solve.window_config, inputs)
                plan, fallback, requests = await self.solver.solve_window(
                    build, s.placement_method, s.placement_mode, solve.held
                )
        except SolverStopped as exc:  # this node stepped down while the round solved: the new leader plans
            log.info("placement solve dropped: %s", exc)
            return lr.SolveFailed(self.agent.clock(), solve.round, f"{type(exc).__name__}: {exc}")
        except Exception as exc:  # the worker died or the solver raised
            log.exception("placement solve failed")
            return lr.SolveFailed(self.agent.clock(), solve.round, f"{type(exc).__name__}: {exc}")
        return lr.Solved(self.agent.clock(), solve.round, plan, requests, fallback, mem_mb)

    async def _command(self, c: lr.Command) -> lr.Acknowledged | lr.CommandFailed | lr.Fenced:
        """One signed ``PUT /control/desired`` attempt on the peer plane (the round machine decides on retries)."""
        peers = self.agent.peer_client
        if peers is None:
            return lr.CommandFailed(self.agent.clock(), c.round, c.node, transient=False)
        body = DesiredCommand(c.term, self.agent.settings.node_id, dict(c.instances), dict(c.summary)).to_json()
        try:
            status, answer = await peers.send(c.url, "PUT", ROUTE_DESIRED, body)
        except ValueError as exc:  # PeerCallError: unreachable (gone: the next round resends) or unauthentic
            gone = "unreachable" in str(exc) and "Connect" in str(exc)
            return lr.CommandFailed(self.agent.clock(), c.round, c.node, transient=not gone)
        if status == 409:
            log.warning("command to %s fenced: %s", c.node, answer)
            highest = _highest_term(answer)
            return lr.Fenced(self.agent.clock(), c.round, c.node, c.term if highest is None else highest)
        if status == 200:
            return lr.Acknowledged(self.agent.clock(), c.round, c.node)
        # refused (e.g. 400: the plan's own set is over the node's memory -- make-before-break adds no hold that
        # does not fit -- or the node's catalogue differs): said, bounded, so the operator sees why it keeps its old set
        self._say_once(f"refused {c.node} {status}", "command to %s refused (HTTP %d): %.300s", c.node, status, answer)
        return lr.CommandFailed(self.agent.clock(), c.round, c.node, transient=status >= 500)

    def _say_once(self, key: str, message: str, *args: Any) -> None:
        if key not in self._said:
            if len(self._said) >= SAID_MAX:
                self._said.clear()  # bounded: a long-lived leader with churning peers says things again
            self._said.add(key)
            log.warning(message, *args)


def _highest_term(answer: Any) -> int | None:
    """The ``highest_term`` a 409 answer names, if it names one."""
    highest = answer.get("highest_term") if isinstance(answer, dict) else None
    if isinstance(highest, int) and not isinstance(highest, bool):
        return highest
    return None


def _left(deadline: float) -> httpx.Timeout:
    """A peer call's timeout: its usual one (agent.peer_client.TIMEOUT), cut to what is left of ``deadline``;
    ``asyncio.TimeoutError`` when nothing is."""
    left = deadline - asyncio.get_running_loop().time()
    if left <= 0:
        raise asyncio.TimeoutError
    full, connect = TIMEOUT.read or left, TIMEOUT.connect or left
    return httpx.Timeout(min(full, left), connect=min(connect, left))
