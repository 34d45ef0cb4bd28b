"""Carries out the SWIM core's instructions (agent.discovery.swim) on the authenticated peer plane.

I/O only: every decision is the core's. Probes, gossip, push-pull and indirect-probe requests are direct
``POST /peer/swim`` messages (agent.peer_client, ``direct=True``: authenticated by the kept mutual-TLS
connection's certificates, pinned; signed both ways only to a node that asks for it, docs/security.md);
admission and resource state are the node's own signed ``GET /peer/state`` answer, accepted only when it
speaks for itself (``admissible``). An answer counts only when the node we addressed signed it and the
message names that node as its sender. Suspect and dead updates travel with their origins' signatures
(agent.discovery.swim_proofs: attached to every message we send, checked on every one we get, before the core
applies it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx

from agent import aio
from agent.discovery import swim as sw
from agent.discovery.state_version import VersionFloor
from agent.discovery.swim_proofs import ProofBook
from agent.errors import PeerError
from agent.identity import AuthError
from agent.peer_client import PeerCallError, PeerClient
from agent.rate_limit import SenderBuckets
from peerserve import wire
from peerserve.wire import Grant, Lease, Loads, PeerState, SwimMessage

log = logging.getLogger(__name__)

MIN_SLEEP_S = 0.01  # the loop's shortest sleep (work due now that an exchange in flight holds back)
MAX_SLEEP_S = 0.25  # and its longest: a hint fed in without ``wake`` waits no longer than this
VERSION_CHECK_S = 0.5  # how often our own state is compared with what we last announced
LOAD_STEP = 10.0  # CPU/GPU load points that count as a change of our resource state
MEMORY_STEP = 0.05  # share of total memory that counts as a change
# Loads ride on every SWIM message a node sends (wire.Loads): a member hears a node's own figures at every exchange
# with it (each pair exchanges every few seconds). A change of loads or memory alone still makes a new version, so a
# member that takes no loads from messages (an older agent) fetches them, but at most this often (each costs N-1
# fetches: every 30 s was ~0.9 fetches a second per member at 25 agents, growing with N).
LOAD_UPDATE_S = 300.0
MAX_IN_FLIGHT = 256  # concurrent SWIM exchanges this node starts (each has a deadline)
MIN_TICK_S = 0.05  # the shortest gap between two ticks, whatever wakes the loop (unauthenticated mDNS goodbyes can)
# ping_req from one member: we probe a target for it. A member asks us only when its own ping missed (at most a few
# a second, even across a partition); past this it is answered 429 (the asker counts us a silent relay).
RELAY_RATE = 8.0  # per second per member, past the burst
RELAY_BURST = 16.0
SAID_MAX = 256  # distinct refused-lease warnings remembered


def parse_peer_state(data: Any, expected_id: str | None = None) -> PeerState:
    """Validate a state answer (peerserve.wire.PeerState); raises PeerError on garbage or another node's."""
    try:
        state = PeerState.parse(data)
    except wire.WireError as exc:
        raise PeerError(f"bad state answer: {exc}") from exc
    if expected_id is not None and state.node_id != expected_id:
        raise PeerError(f"expected node {expected_id!r}, {state.node_id!r} answered")
    return state


def fingerprint(s: PeerState) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    """What of a node's state is worth a new version: (what serving needs at once, loads and memory in steps)."""
    mem_step = max(1.0, MEMORY_STEP * s.mem_total_mb)
    gpu = None if s.gpu_load is None else round(s.gpu_load / LOAD_STEP)
    serving = (tuple(sorted((m, tuple(u)) for m, u in s.endpoints.items())), s.api_url, s.catalogue_version,
               s.term, s.leader, s.priority, s.node_class, s.compute)  # fmt: skip
    return serving, (round(s.mem_available_mb / mem_step), round(s.mem_total_mb / mem_step), gpu,
                     round(s.cpu_load / LOAD_STEP))  # fmt: skip


def version_due(old: tuple[Any, ...] | None, new: tuple[Any, ...], now: float, bumped_at: float) -> bool:
    """Whether our state changed enough for a new version: serving facts at once, loads at most every 30 s."""
    if old is None:
        return False
    return bool(new[0] != old[0] or (new[1] != old[1] and now - bumped_at >= LOAD_UPDATE_S))


class _Busy:
    """``BUSY``: a direct ping our own bound refused before sending (see ``agent.peer_http.PeerBusyError``)."""


BUSY = _Busy()


class RelayRefused(Exception):
    """We will not answer a ping_req yes or no: its member asks faster than ``RELAY_RATE`` (429), or our bound of
    exchanges with the target refused the ping (503). The asker counts us a silent relay, not a "no"."""

    def __init__(self, message: str, status: int = 429) -> None:
        super().__init__(message)
        self.status = status


class SwimDriver:
    """Runs one node's SWIM core: a tick loop that starts exchanges, and the handler of incoming messages."""

    def __init__(
        self,
        node_id: str,
        peer_url: str,
        peers: PeerClient,
        config: sw.SwimConfig,
        local_state: Callable[[], PeerState],
        admissible: Callable[[PeerState, str], PeerState],
        on_transitions: Callable[[list[sw.Transition]], None],
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        version_file: Path | None = None,
    ) -> None:
        self.wall = wall  # the agent's wall clock (NodeAgent.clock): proof stamps, state versions, relayed leases
        self.core = sw.Swim(node_id, peer_url, config, random.Random())
        # versions rise across restarts (a restarted node is newer), also after a step back of the wall clock: from
        # max(wall-clock ms, the ceiling the last run saved in ``version_file`` + 1) (agent.discovery.state_version)
        self._versions = VersionFloor(version_file, int(wall() * 1000))
        self.core.version = self._versions.first
        self.peers = peers
        self.local_state = local_state
        self.admissible = admissible
        self.on_transitions = on_transitions
        self.clock = clock
        # signed suspicions: Lifeguard's confirmers only where proven, for suspicions the core holds open; relayed
        # ones count only RELAYED_GATE_S after this start (R3: a restart forgot which proofs had counted)
        started = clock()
        self.proofs = ProofBook(
            peers.identity, wall, episode=lambda n, i, o: self.core.suspicion_age(n, i, o, self.clock()),
            mono=lambda: self.clock(), started=started,
        )  # fmt: skip
        # signed dead declarations: a third party's "dead" acts at once only from SwimConfig.dead_quorum members
        self.dead_proofs = ProofBook(
            peers.identity, wall, episode=lambda n, i, o: self.core.declaration_age(n, i, o, self.clock()), dead=True,
            mono=lambda: self.clock(), started=started,
        )  # fmt: skip
        self._fingerprint: tuple[tuple[Any, ...], tuple[Any, ...]] | None = None
        self._checked_at = -1e9
        self._bumped_at = -1e9
        self._in_flight: set[tuple[str, str]] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        # the election's judge of a verified lease renewal (agent.leadership): True when it follows that leader
        self.on_lease: Callable[[Lease], bool] | None = None
        # operator-CA mode (agent.revocation_sync): the (stamp, digest) of our revocation list our messages carry, and
        # who hears a member's own (its message, authenticated); None: none carried, none heard (token-only mode)
        self.revocation_advert: Callable[[], tuple[int, str] | None] | None = None
        self.on_revocations: Callable[[str, tuple[int, str] | None], None] | None = None
        self._lease_seq = int(wall() * 1000)  # renewals rise across restarts too
        self._said: set[str] = set()
        self._wake: asyncio.Event | None = None
        self._sleep_until = -math.inf
        self.ticks = 0  # core ticks so far (the idle-cost test reads it)
        self._last_tick = -math.inf
        self.inconclusive_probes = 0  # probes whose direct ping our own bound refused and no relay settled
        self._relay_buckets = SenderBuckets(RELAY_RATE, RELAY_BURST)
        self._relays: dict[str, asyncio.Task[bool | None]] = {}  # target -> the one relay ping in flight (members only)
        # exchanges by kind (SWIM kinds and "state"; a fixed set): /metrics (agent.discovery.service) and the bench
        self.sent: Counter[str] = Counter()
        self.received: Counter[str] = Counter()
        # exchanges that raised something unexpected, by kind of exception (logged once each, with its traceback):
        # an admission or fetch counts as failed, any other exchange as having learned nothing
        self.errors: Counter[str] = Counter()

    # -- our own state -------------------------------------------------------------------------------------
    def stamp(self, state: PeerState) -> PeerState:
        """Our state as we answer it (GET /peer/state): with our state version and incarnation."""
        return replace(state, version=self.core.version, incarnation=self.core.incarnation)

    def _refresh_own(self, now: float) -> None:
        if now - self._checked_at < VERSION_CHECK_S:
            return
        self._checked_at = now
        state = self.local_state()
        self.core.term, self.core.leader = max(self.core.term, state.term), state.leader or self.core.leader
        self.core.loads = Loads(state.mem_available_mb, state.cpu_load, state.gpu_load)
        fp = fingerprint(state)
        if self._fingerprint is None:
            self._fingerprint = fp
        elif version_due(self._fingerprint, fp, now, self._bumped_at):
            self._versions.reserve(self.core.version + 1)  # saved before it is announced
            self.core.set_version(self.core.version + 1)
            self._fingerprint, self._bumped_at = fp, now

    # -- the leader's lease -----------------------------------------------------------------------------
    def renew_lease(self, term: int, priority: tuple[int, float, str], cert: tuple[Grant, ...] = ()) -> Lease:
        """We lead ``term``: sign a new renewal; SWIM carries it (pushed to a few, then piggybacked and relayed), with
        ``cert`` (our certificate of ``term``, at most ``MAX_LEASE_GRANTS``) on its pushes."""
        self._lease_seq += 1
        lease = Lease(term, self.core.self_id, self._lease_seq, priority)
        card, signature = self.peers.identity.sign_detached(lease.signing_bytes())
        lease = replace(lease, card=card, signature=signature, cert=cert)
        self.core.renew(lease)
        self.wake()
        return lease

    def lease_in(self, msg: SwimMessage) -> None:
        """A renewal riding on ``msg`` (authenticated as sent by ``msg.node_id``): if news, check it is signed by its
        leader, unless the leader itself sent it to us, then let the election judge it."""
        lease = msg.lease
        if lease is None or not self.core.lease_news(lease):
            return
        if lease.leader == msg.node_id:  # from the leader itself: its message is authenticated, so is its lease
            self.core.take_lease(lease, msg.node_id, self.on_lease(lease) if self.on_lease is not None else False)
            return
        try:
            signer = self.peers.identity.verify_detached(
                lease.card, lease.signature, lease.signing_bytes(), self.wall()
            )
        except AuthError as exc:
            self._say_once(f"lease:{msg.node_id}", "refused a lease of %s relayed by %s: %s", lease.leader,
                           msg.node_id, exc)  # fmt: skip
            return
        if signer != lease.leader:
            self._say_once(f"lease-signer:{signer}", "refused a lease of %s signed by %s", lease.leader, signer)
            return
        accepted = self.on_lease(lease) if self.on_lease is not None else False
        self.core.take_lease(lease, msg.node_id, accepted)

    def _say_once(self, key: str, message: str, *args: Any) -> None:
        if key not in self._said:
            if len(self._said) >= SAID_MAX:
                self._said.clear()
            self._said.add(key)
            log.warning(message, *args)

    # -- the loop ------------------------------------------------------------------------------------------
    async def run(self) -> None:
        """Tick the core when it has work due (``Swim.next_due``) or something came in (``wake``); never busy."""
        self._wake = asyncio.Event()
        while True:
            early = self._last_tick + MIN_TICK_S - self.clock()
            if early > 0:  # woken again right after a tick: wait out the floor (wake-ups cannot drive the rate)
                await asyncio.sleep(early)
            now = self._last_tick = self.clock()
            self._wake.clear()
            try:
                self._refresh_own(now)
                instructions, transitions = self.core.tick(now)
                self.on_transitions(transitions)
                for ins in instructions:
                    self._start(ins)
                self.ticks += 1
                delay = self.core.next_due(self.clock()) - self.clock()
            except Exception:  # the loop must outlive any bug in one step
                log.exception("membership tick failed")
                delay = MAX_SLEEP_S
            delay = min(MAX_SLEEP_S, max(MIN_SLEEP_S, delay))
            self._sleep_until = self.clock() + delay
            with contextlib.suppress(asyncio.TimeoutError):
                await aio.wait_for(self._wake.wait(), delay)

    def wake(self) -> None:
        """Something was fed to the core from outside the loop (a message, a result, a hint): tick at once if that
        made work due before the loop's planned wake-up (most messages queue nothing: no extra wake-up)."""
        if self._wake is not None and self.core.next_due(self.clock()) < self._sleep_until - MIN_SLEEP_S:
            self._wake.set()

    def _start(self, ins: sw.Instruction) -> None:
        key = (type(ins).__name__, ins.node_id)
        if key in self._in_flight or len(self._in_flight) >= MAX_IN_FLIGHT:
            return
        self._in_flight.add(key)
        coro: Coroutine[Any, Any, None]
        if isinstance(ins, sw.Probe):
            coro = self._probe(ins)
        elif isinstance(ins, (sw.Gossip, sw.Sync)):
            coro = self._exchange(ins.node_id, ins.url, ins.message)
        elif isinstance(ins, sw.Admit):
            coro = self._admit(ins)
        else:
            coro = self._fetch(ins)
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(self._finished)
        task.add_done_callback(lambda _t: self._in_flight.discard(key))
        task.add_done_callback(lambda _t: self.wake())  # its result may have queued work (a refutation, gossip)

    def _finished(self, task: asyncio.Task[Any]) -> None:
        """An exchange ended: an exception it raised is taken here (asyncio would print each one's traceback as
        "Task exception was never retrieved": 144 in 10 s from one stranger's adverts, review13a F5)."""
        if not task.cancelled() and (exc := task.exception()) is not None:
            self._unexpected(exc, "an exchange")

    def _unexpected(self, exc: BaseException, what: str) -> None:
        """Counted by its kind; logged once per kind (``SAID_MAX``), with its traceback: a bug to find, not news."""
        kind = type(exc).__name__
        self.errors[kind] += 1
        key = f"error:{kind}"
        if key not in self._said:
            if len(self._said) >= SAID_MAX:
                self._said.clear()
            self._said.add(key)
            log.warning("%s failed unexpectedly (%s; each kind logged once, counted)", what, kind, exc_info=exc)

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- exchanges -----------------------------------------------------------------------------------------
    def _timeout(self, factor: float = 1.0) -> httpx.Timeout:
        t = self.core.probe_timeout() * factor
        # A timed-out exchange closes its kept-alive connection, so the next one needs a mutual-TLS handshake
        # (CPU on both sides, two lagging event loops): give the connect twice as long, or misses feed misses.
        return httpx.Timeout(t, connect=2 * t)

    async def send(self, node_id: str, url: str, msg: SwimMessage, factor: float = 1.0) -> SwimMessage:
        """One SWIM exchange with ``node_id`` (direct); the answer must be a valid message it sent about itself."""
        self.sent[msg.kind] += 1
        msg = self._attach(msg)
        status, data = await self.peers.call(node_id, url, "POST", wire.ROUTE_SWIM, body=msg.to_json(),
                                             timeout=self._timeout(factor), direct=True)  # fmt: skip
        if status != 200:
            raise PeerCallError(f"{node_id} answered HTTP {status} to a membership message", status)
        try:
            answer = SwimMessage.parse(data)
        except wire.WireError as exc:
            raise PeerCallError(f"{node_id} answered a malformed membership message: {exc}", status) from exc
        if answer.node_id != node_id:
            raise PeerCallError(f"{node_id} answered in the name of {answer.node_id}", status)
        self.lease_in(answer)
        self._revocations_in(answer)
        return answer

    def _revocations_in(self, msg: SwimMessage) -> None:
        """The revocation list's stamp ``msg``'s sender (authenticated) advertised, to whoever takes it."""
        if self.on_revocations is not None and msg.revocations is not None:
            self.on_revocations(msg.node_id, msg.revocations)

    def _attach(self, msg: SwimMessage) -> SwimMessage:
        """``msg`` with the signed dead declarations and suspicions of the updates it carries (dead ones first: the
        fast path waits on them; MAX_PROOFS in all), and our revocation list's stamp (operator-CA mode)."""
        if self.revocation_advert is not None:
            msg = replace(msg, revocations=self.revocation_advert())
        return self.proofs.attach(self.dead_proofs.attach(msg))

    def apply(self, msg: SwimMessage) -> tuple[SwimMessage | None, list[sw.Transition]]:
        """The core applies ``msg`` with the suspicions and dead declarations its own proofs prove (checked now,
        nothing kept for later)."""
        return self.core.received(msg, self.clock(), self.proofs.check(msg), self.dead_proofs.check(msg))

    async def _probe(self, ins: sw.Probe) -> None:
        """SWIM's probe: a direct ping; if it has not answered within the probe timeout, k relays probe the target
        for us while the direct ping goes on (a late ack still counts); the whole probe ends 3 timeouts after it
        began, whatever is still connecting. A relay across a partition that never completes a TCP connect
        costs no more than one that answers "no"."""
        sent = self.clock()
        t = self.core.probe_timeout()
        direct = asyncio.ensure_future(self._ping(ins))
        relays: dict[asyncio.Future[bool | None], str] = {}
        every: list[asyncio.Future[Any]] = [direct]
        try:
            await asyncio.wait({direct}, timeout=t)
            busy = direct.done() and not direct.cancelled() and direct.result() is BUSY
            if (busy or not direct.done()) and (not ins.verify or self.core.config.verify_indirect):
                for n, u in self.core.indirect_targets(ins.node_id):
                    relays[asyncio.ensure_future(self._ping_req(n, u, ins))] = n
            every += relays
            pending = {f for f in every if not f.done()}
            deadline = sent + 3 * t
            while pending and not self._reached(direct, relays):
                left = deadline - self.clock()
                if left <= 0:
                    break
                _done, pending = await asyncio.wait(pending, timeout=left, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for f in every:
                f.cancel()
        answer = direct.result() if direct.done() and not direct.cancelled() else None
        ack = answer if isinstance(answer, SwimMessage) else None
        results = [f.result() if f.done() and not f.cancelled() else None for f in relays]
        acks = sum(1 for r in results if r)
        silent = bool(results) and all(r is None for r in results)
        if answer is BUSY and acks == 0 and False not in results:
            # our own bound refused the ping (its slots may be relays others asked of us) and no relay could
            # say the target is unreachable: we learned nothing, so no miss (a flood of ping_req must not
            # make a healthy member look failed)
            self.inconclusive_probes += 1
            return
        proven = self.proofs.check(ack) if ack is not None else ()
        declared = self.dead_proofs.check(ack) if ack is not None else ()
        transitions = self.core.probe_result(
            ins.node_id, ack, acks, self.clock(), ins.verify, sent, silent, proven, declared
        )
        self.on_transitions(transitions)

    @staticmethod
    def _reached(
        direct: asyncio.Future[SwimMessage | _Busy | None], relays: dict[asyncio.Future[bool | None], str]
    ) -> bool:
        if direct.done() and not direct.cancelled() and isinstance(direct.result(), SwimMessage):
            return True
        return any(f.done() and not f.cancelled() and f.result() for f in relays)

    async def _ping(self, ins: sw.Probe) -> SwimMessage | _Busy | None:
        """The direct ping (its deadline is the probe's: ``_probe`` cancels it); ``BUSY``: refused by our own
        bound of exchanges in flight with the target, before anything was sent."""
        try:
            return await self.send(ins.node_id, ins.url, self.core.message("ping", ins.node_id), factor=3.0)
        except PeerCallError as exc:
            return BUSY if exc.busy else None
        except Exception as exc:  # ours, not the target's: evidence of nothing, like our own bound's refusal
            self._unexpected(exc, f"a ping of {ins.node_id}")
            return BUSY

    async def _ping_req(self, relay: str, relay_url: str, ins: sw.Probe) -> bool | None:
        """Whether ``relay`` reached the target for us (None: the relay itself did not answer)."""
        c = self.core
        msg = SwimMessage("ping_req", c.self_id, c.incarnation, c.version, c.self_url, (), c.term, c.leader,
                          ins.node_id, ins.url, loads=c.loads)  # fmt: skip
        try:
            answer = await self.send(relay, relay_url, msg, factor=2.0)
            self.on_transitions(self.apply(answer)[1])
        except PeerCallError:
            return None
        except Exception as exc:  # a silent relay, as one that did not answer
            self._unexpected(exc, f"a ping_req through {relay}")
            return None
        return answer.kind == "indirect_ack" and answer.target == ins.node_id and answer.acked

    async def _exchange(self, node_id: str, url: str, msg: SwimMessage) -> None:
        try:
            answer = await self.send(node_id, url, msg, factor=2.0 if msg.kind == "sync" else 1.0)
        except Exception as exc:
            if not isinstance(exc, PeerCallError):
                self._unexpected(exc, f"a {msg.kind} exchange with {node_id}")
            if msg.kind == "sync":
                self.core.sync_failed(self.clock())
            return
        self.on_transitions(self.apply(answer)[1])

    async def _get_state(self, node_id: str, url: str) -> PeerState:
        params = {"peer": self.core.self_url}  # where we listen: a hint for them
        self.sent["state"] += 1
        status, data = await self.peers.call(node_id, url, "GET", wire.ROUTE_STATE, params, timeout=self._timeout(2))
        if status != 200:
            raise PeerError(f"HTTP {status}")
        return self.admissible(parse_peer_state(data, expected_id=node_id), url)

    async def _admit(self, ins: sw.Admit) -> None:
        """Admission: any exception is a failed attempt (counted: a candidate that never fails is never replaced
        nor expired, review11b), not only the peer's own refusal."""
        try:
            state = await self._get_state(ins.node_id, ins.url)
        except Exception as exc:
            if not isinstance(exc, (PeerCallError, PeerError)):
                self._unexpected(exc, f"admission of {ins.node_id}")
            self.core.admit_failed(ins.node_id, ins.url, self.clock())
            self.on_admit_failed(ins, exc)
            return
        self.on_transitions(self.core.admitted(ins.node_id, ins.url, ins.address, state, self.clock()))

    def on_admit_failed(self, ins: sw.Admit, exc: Exception) -> None:
        """Hook for the discovery shell's logging (a candidate that did not authenticate)."""

    async def _fetch(self, ins: sw.FetchState) -> None:
        try:
            state = await self._get_state(ins.node_id, ins.url)
        except Exception as exc:  # any exception: a failed fetch (as in ``_admit``)
            if not isinstance(exc, (PeerCallError, PeerError)):
                self._unexpected(exc, f"state fetch of {ins.node_id}")
            self.core.fetch_failed(ins.node_id, self.clock())
            return
        self.on_transitions(self.core.state_fetched(ins.node_id, state, self.clock()))

    # -- incoming (POST /peer/swim) ------------------------------------------------------------------------
    async def handle(self, sender: str, msg: SwimMessage) -> SwimMessage:
        """A message ``sender`` signed (the peer listener checked it names itself): apply it; our answer."""
        c = self.core
        self.received[msg.kind] += 1
        self.lease_in(msg)
        self._revocations_in(msg)
        reply, transitions = self.apply(msg)
        self.on_transitions(transitions)
        self.wake()
        if msg.kind == "ping_req":
            if not self._relay_buckets.allow(sender, self.clock()):
                raise RelayRefused(f"{sender} asks us to probe others faster than {RELAY_RATE:g}/s")
            acked = await self._relay(msg.target or "", msg.target_url or "")
            return SwimMessage("indirect_ack", c.self_id, c.incarnation, c.version, c.self_url, (), c.term, c.leader,
                               msg.target, msg.target_url, acked, loads=c.loads)  # fmt: skip
        return self._attach(reply if reply is not None else c.message("ack", sender))

    async def _relay(self, target: str, target_url: str) -> bool:
        """Probe ``target`` for someone else: only a member of ours, at the address we know it by. Askers at the
        same time share one ping (a burst of ping_req about one target costs the target one exchange)."""
        rec = self.core.records.get(target)
        if rec is None or rec.peer_url != target_url:
            return False
        shared = self._relays.get(target)
        if shared is None:
            task = asyncio.get_running_loop().create_task(self._relay_ping(target, target_url))
            shared = self._relays[target] = task
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            task.add_done_callback(self._finished)  # its asker may be gone
            task.add_done_callback(lambda _t: self._relays.pop(target, None))
        acked = await asyncio.shield(shared)  # one asker going away does not cancel the others' ping
        if acked is None:
            raise RelayRefused(f"too many exchanges with {target} in flight here to probe it now", 503)
        return acked

    async def _relay_ping(self, target: str, target_url: str) -> bool | None:
        """Whether our ping reached ``target`` (None: our own bound refused it: we cannot say)."""
        try:  # within one probe timeout in all (connect included): the asker waits twice that for our answer
            ping = self.send(target, target_url, self.core.message("ping", target))
            ack = await aio.wait_for(ping, self.core.probe_timeout())
        except PeerCallError as exc:
            return None if exc.busy else False
        except asyncio.TimeoutError:
            return False
        self.on_transitions(self.apply(ack)[1])
        self.wake()  # the target's ack may have brought news (its handler's own wake came before this)
        return True
