"""NodeAgent: one node's services wired together; async I/O that carries out agent.decisions.

It keeps the runtime at the desired set (reconcile loop with backoff), watches the catalogue, answers
endpoint queries from its own instances and the peer table, provisions on demand, and records request
statistics for the leader.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from agent import aio, known_peers
from agent.catalogue import CatalogueWatcher, ModelSpec
from agent.decisions import (
    STOP_FIRST,
    Candidate,
    NodeRoom,
    Start,
    Step,
    Stop,
    backoff_delay,
    drain_stops,
    memory_refusal,
    plan_reconcile,
    provision_target,
    stuck_instances,
    while_stopping,
)
from agent.discovery import state_version
from agent.discovery.service import Discovery
from agent.discovery.swim import SwimConfig
from agent.discovery.txt import cluster_id
from agent.errors import AgentError, InstanceStartError, RuntimeUnavailable
from agent.identity import Identity
from agent.leadership import Leadership
from agent.metrics import MetricsReader, NodeMetrics
from agent.operator_ca import CardError, parse_operator_ca, read_board_card
from agent.peer_client import PeerClient
from agent.peers import NoPeers, PeerTable
from agent.runtime.base import Instance, Runtime, probe_available
from agent.serving.exec_times import ExecTimes
from agent.serving.provision import ProvisionRequests
from agent.serving.resolve import Outcome, resolve
from agent.serving.server_scrape import ServerScraper
from agent.serving.server_stats import report as service_report
from agent.settings import Settings
from agent.store import DesiredState, Store
from agent.telemetry import Telemetry
from peerserve.dispatch import node_slots, reported_slots
from peerserve.wire import PeerState

log = logging.getLogger(__name__)

CLIENT_CACHE = 10_000


class FencedError(AgentError):
    """A leader command carried a term lower than the highest seen, or the term of another leader."""

    def __init__(self, term: int, highest: int, leader: str | None = None) -> None:
        if leader is None:
            super().__init__(f"term {term} is lower than the highest term seen ({highest})")
        else:
            super().__init__(f"term {term} already has leader {leader}")
        self.term = term
        self.highest = highest


class UnknownModelError(AgentError):
    """A model name that is not in the catalogue."""


class CapacityError(AgentError):
    """A desired set whose servers together need more memory than this node has (decisions.memory_refusal)."""


@dataclass
class ModelHealth:
    failures: int = 0
    next_try: float = 0.0
    last_error: str = ""


@dataclass
class NodeState:
    """What the reconcile loop last saw."""

    instances: list[Instance] = field(default_factory=list)
    ready: set[str] = field(default_factory=set)
    runtime_error: str | None = None
    reconcile_error: str | None = None  # the last round's exception, None once a round succeeds


def model_server_concurrency(s: Settings) -> float:
    """Requests one of this node's model servers serves at once, as the placement counts them: the setting (default
    1), 0 meaning the node's cores. Not guessed from the runtime: a GPU-bound model or one whose intra-op threads
    already span the cores serves no faster with more requests at once, and counting it as several servers would
    plan too few instances; the stand-in runs its model under one Python lock (docs/architecture.md)."""
    return s.instance_concurrency or max(1.0, s.cores or float(os.cpu_count() or 1))


def offset_clock(offset_s: float) -> Callable[[], float]:
    """The wall clock, read ``offset_s`` seconds off (0: time.time itself)."""
    if offset_s == 0:
        return time.time
    return lambda: time.time() + offset_s


def make_runtime(
    settings: Settings,
    spec_of: Callable[[str], ModelSpec | None] | None = None,
    clock: Callable[[], float] = time.time,
) -> Runtime:
    if settings.runtime == "docker":
        from agent.runtime.docker import DockerLog, DockerRuntime

        log = DockerLog(settings.docker_log_max_mb, settings.docker_log_files)
        return DockerRuntime(
            settings.node_id, settings.advertise_address or settings.host, gpu=settings.docker_gpu, log=log,
            spec_of=spec_of,
        )  # fmt: skip
    from agent.runtime.process import ProcessRuntime

    return ProcessRuntime(
        settings.advertise_address or settings.host, Path(settings.data_dir), settings.server_timing,
        settings.max_body_mb, clock=clock,
    )  # fmt: skip


async def gather_bounded(jobs: Iterable[Awaitable[None]], limit: int) -> None:
    """Await every job, at most ``limit`` at once: a round may start dozens of servers, each one loading its model
    (memory, CPU, the runtime's own workers), and the runtime need not take them all at the same moment."""
    gate = asyncio.Semaphore(limit)

    async def one(job: Awaitable[None]) -> None:
        async with gate:
            await job

    # every job is awaited before any error is raised (review27b F5: gather raised at the first, the round ended and
    # the starts still in flight were not listed yet, so the next round started them again: duplicate servers)
    results = await asyncio.gather(*(one(j) for j in jobs), return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result


def _first_ipv4() -> str:
    """A non-loopback IPv4 address of this host, for advertising when none is configured."""
    import ifaddr

    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if isinstance(ip.ip, str) and not ip.ip.startswith("127."):
                return ip.ip
    return "127.0.0.1"


def _operator_settings(settings: Settings) -> Settings:
    """In the operator-CA mode the election priority is the one the operator granted on this board's card (0 where
    it grants none), not ``--priority``: the settings as the agent runs with them (the card itself is checked when
    the identity is made; a card that cannot be read is left to that check)."""
    if not settings.operator_ca or not settings.cluster_token:
        return settings
    path = Path(settings.board_card or Path(settings.data_dir) / "peer" / "board.card")
    try:
        granted = read_board_card(path).priority or 0
    except CardError:
        return settings
    if granted != settings.priority:
        log.warning("election priority %d from this board's card, not the configured %d (operator-CA mode)",
                    granted, settings.priority)  # fmt: skip
    return settings.replace(priority=granted)


class NodeAgent:
    def __init__(
        self,
        settings: Settings,
        runtime: Runtime | None = None,
        metrics: MetricsReader | None = None,
        peers: PeerTable | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.settings = settings = _operator_settings(settings)
        # the agent's one wall clock (request stamps, signatures, proofs, leases, runtimes): the machine's, or off by
        # settings.clock_offset_s in a drill
        self.clock = clock or offset_clock(settings.clock_offset_s)
        clock = self.clock
        self.catalogue = CatalogueWatcher(Path(settings.catalogue) if settings.catalogue else None)
        self.store = Store(
            Path(settings.data_dir), settings.request_log_rows, settings.client_rtt_ttl_s, settings.client_rtt_rows
        )
        self.runtime = runtime or make_runtime(settings, lambda model: self.catalogue.current.get(model), clock)
        self.metrics = metrics or MetricsReader()
        self.http = httpx.AsyncClient(
            timeout=httpx.Timeout(30.0, connect=2.0), limits=httpx.Limits(max_keepalive_connections=64)
        )
        # The peer plane exists only with a cluster token: identity, keys and admission all derive from it.
        self.identity = Identity(
            settings.node_id, settings.cluster_token, Path(settings.data_dir),
            settings.pin_first_contact_per_min, settings.pin_first_contact_burst,
            parse_operator_ca(settings.operator_ca) if settings.operator_ca else None,
            Path(settings.board_card) if settings.board_card else None,
            Path(settings.revocations) if settings.revocations else None,
            accept_v1=settings.peer_v1_requests,
        ) if settings.cluster_token else None  # fmt: skip
        self.peer_client = PeerClient(self.identity, self._peer_route, clock) if self.identity else None
        self.peer_server: Any = None
        self.discovery: Discovery | None = None
        if peers is None and settings.discovery and self.peer_client is not None:
            self.discovery = self._make_discovery(self.peer_client)
        elif settings.discovery and peers is None:
            log.warning("no cluster token: this node runs alone (no peer plane without a join secret)")
        self.peers: PeerTable = peers or self.discovery or NoPeers()
        self.started_at = clock()
        self.leadership: Leadership | None = None
        self._last_placement: dict[str, Any] | None = None
        self.placement_slots: dict[str, float] = {}  # its ``slots`` parsed once (last_placement's setter)
        self.state = NodeState()
        self.health: dict[str, ModelHealth] = {}
        self.exec_ms = ExecTimes()  # (node, model) -> median of recent proxied times (agent/serving/exec_times.py)
        # its own servers' service times, measured at the servers, over the request window (server_scrape.py)
        self.server_stats = ServerScraper(self.http, settings.request_window_s, clock)
        self._metrics_cache: tuple[float, NodeMetrics] | None = None
        try:
            self._desired = self._restored_desired()
        except sqlite3.DatabaseError as exc:  # a file SQLite opened whose pages are damaged
            raise self.store.unusable(exc) from exc
        self._on_demand_at = dict.fromkeys(self._desired.on_demand, clock())
        self._ever_ready: set[str] = set()
        self._ready_models: set[str] = set()
        self._draining: dict[str, float] = {}  # instance id -> unpublished since (decisions.drain_stops)
        self._stopped_first: set[str] = set()  # outdated servers logged as stopped before their replacement
        self._exits_seen: set[str] = set()  # exited servers whose exit is recorded (one failure per exit)
        self._unremoved: dict[str, str] = {}  # exited servers the runtime could not remove -> the error logged
        self._last_ready: dict[str, float] = {}  # instance id -> its last successful probe (decisions.stuck_instances)
        self._refused: dict[str, float] = {}  # instance id -> when it refused a proxied connection (endpoint_refused)
        self._wake = asyncio.Event()
        self.shutting_down = False  # begin_shutdown: the server stops; waits for a model end, nothing starts
        self._tasks: list[asyncio.Task[None]] = []
        self._background: set[asyncio.Task[None]] = set()
        self._client_rtts: dict[str, tuple[float, dict[str, float]]] = {}  # client -> (loaded at, rtts)
        self.telemetry = Telemetry(self, enabled=settings.metrics)
        if self.discovery is not None:
            from agent.discovery.metrics import MembershipCollector

            self.telemetry.registry.register(MembershipCollector(self.discovery))
        if self.peer_client is not None:
            from agent.discovery.metrics import StaleBootCollector

            self.telemetry.registry.register(StaleBootCollector(self.peer_client))
        self.provision_requests = ProvisionRequests()
        self.known_peers = known_peers.load(Path(settings.data_dir))

    # -- lifecycle -----------------------------------------------------------------------------------
    async def start(self) -> None:
        log.info(
            "node %s starting: runtime %s, catalogue %s, restored desired %s (term %d)",
            self.settings.node_id, self.runtime.kind, self.catalogue.current.version,
            dict(self._desired.instances), self._desired.term,
        )  # fmt: skip
        await self.observe()  # adopt running servers (ready ones answer at once); starting the rest is the loop's
        if self.identity is not None:
            from agent.peer_api import PeerServer, create_peer_app

            self.peer_server = PeerServer(create_peer_app(self, self.identity), self.identity, self.settings.host,
                                          self.settings.peer_listen_port)  # fmt: skip
            await self.peer_server.start()
        if self.discovery is not None:
            for peer in self.known_peers:  # heartbeat the peers of the last run at once (a hint, as mDNS is)
                self.discovery.heard_from(peer.node_id, peer.peer_url)
            await self.discovery.start()
            if not self.known_peers:  # it knows nobody: its peers come over mDNS, so listen once its name is out
                await self.discovery.mdns_ready.wait()
            self.leadership = Leadership(self, known=[p.node_id for p in self.known_peers])
            await self.leadership.start()
        self._wake.set()  # the first full reconcile runs now, in the background, after the listeners are up
        self._tasks = [
            asyncio.create_task(self._reconcile_loop(), name="reconcile"),
            asyncio.create_task(self._catalogue_loop(), name="catalogue"),
            asyncio.create_task(self._flush_loop(), name="request-log"),
        ]
        if self.settings.server_stats_s > 0:
            self._tasks.append(asyncio.create_task(self._server_stats_loop(), name="server-stats"))

    async def stop(self) -> None:
        if self.leadership is not None:
            await self.leadership.stop()
        if self.discovery is not None:
            await self.discovery.stop()
        if self.peer_server is not None:
            await self.peer_server.stop()
        if self.peer_client is not None:
            await self.peer_client.close()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.runtime.close()
        await self.http.aclose()
        self.metrics.close()
        self.store.close()
        log.info("node %s stopped", self.settings.node_id)

    def _make_discovery(self, peer_client: PeerClient) -> Discovery:
        s = self.settings
        address = s.advertise_address or _first_ipv4()
        return Discovery(
            node_id=s.node_id,
            api_port=s.port,
            advertise_address=address,
            interface=s.interface,
            local_state=self.peer_state,
            peers=peer_client,
            http=self.http,
            models=lambda: self.catalogue.current.models.keys(),
            peer_port=s.peer_listen_port,
            config=SwimConfig(
                probe_interval_s=s.probe_interval_s,
                probe_timeout_s=s.probe_timeout_s,
                suspicion_mult=s.suspicion_mult,
                push_pull_interval_s=s.push_pull_interval_s,
                dead_rumour_verify=s.dead_quorum == 0,
                dead_quorum=s.dead_quorum,
                id_voices=bool(s.operator_ca),
            ),
            cluster=cluster_id(s.cluster_token),
            seeds=s.seed_urls,
            use_mdns=s.mdns,
            on_change=lambda _transitions: self._membership_changed(),
            wall=self.clock,
            # the state version's floor across restarts (agent.discovery.state_version); none without a data dir
            version_file=Path(s.data_dir) / state_version.FILE_NAME if s.data_dir else None,
        )

    def _membership_changed(self) -> None:
        if self.leadership is not None:
            self.leadership.membership_changed()
        alive = [(m.node_id, m.peer_url) for m in self.peers.members() if m.status == "alive" and m.peer_url]
        known = {(p.node_id, p.peer_url) for p in self.known_peers}
        if not set(alive) <= known:  # saved when a peer is new or moved, not on every status change
            self.known_peers = known_peers.merge(self.known_peers, alive, self.clock())
            known_peers.save(Path(self.settings.data_dir), self.known_peers)

    def peer_state(self) -> PeerState:
        """This node as peers see it (GET /peer/state: admission and resource state; also the TXT's source)."""
        m = self.node_metrics()
        endpoints: dict[str, tuple[str, ...]] = {}
        for i in self.state.instances:
            if i.id in self.state.ready:
                endpoints[i.model] = (*endpoints.get(i.model, ()), i.url)
        s = self.settings
        return PeerState(
            node_id=s.node_id, api_url=s.api_url, peer_port=s.peer_listen_port, endpoints=endpoints,
            mem_available_mb=m.mem_available_mb, mem_total_mb=m.mem_total_mb, gpu_load=m.gpu_percent,
            cpu_load=m.cpu_percent, node_class=s.node_class, compute=s.compute, term=self.store.highest_term(),
            leader=self._desired.leader, catalogue_version=self.catalogue.current.version,
            started_at=self.started_at, priority=s.priority,
        )  # fmt: skip

    def _peer_route(self, api_url: str) -> tuple[str, str] | None:
        """(node id, peer URL) of the admitted node (or this one) whose client API is at ``api_url``."""
        s = self.settings
        if api_url == s.api_url:
            return s.node_id, s.peer_url
        for m in self.peers.members():
            if m.api_url == api_url and m.peer_url:
                return m.node_id, m.peer_url
        return None

    # -- desired state ---------------------------------------------------------------------------------
    @property
    def desired(self) -> DesiredState:
        return self._desired

    def memory_refusal(self, instances: Mapping[str, int]) -> str | None:
        """Why ``instances`` could never fit in this node's memory (None: they fit; decisions.memory_refusal)."""
        need = {m: s.mem_mb for m, s in self.catalogue.current.models.items()}
        return memory_refusal(instances, need, self.node_metrics().mem_total_mb)

    def _restored_desired(self) -> DesiredState:
        """The persisted desired set, emptied when it cannot fit here (kept by a version without the memory check,
        or a catalogue whose sizes grew): the leader's next round orders again."""
        state = self.store.desired()
        why = self.memory_refusal(state.instances)
        if why is None:
            return state
        log.warning("not restoring the desired set %s: %s", dict(state.instances), why)
        return DesiredState({}, state.term, state.leader, frozenset())

    def set_desired(
        self, term: int, leader: str | None, instances: Mapping[str, int], placement: dict[str, Any] | None = None
    ) -> DesiredState:
        """Apply a leader's desired set (idempotent); raises FencedError, UnknownModelError or CapacityError."""
        unknown = sorted(m for m in instances if self.catalogue.current.get(m) is None)
        if unknown:
            raise UnknownModelError(f"not in the catalogue: {', '.join(unknown)}")
        highest = self.store.highest_term()
        if term < highest:
            raise FencedError(term, highest)
        accepted = self.store.term_leader() if term == highest else None
        if accepted is not None and leader is not None and accepted != leader:
            raise FencedError(term, highest, accepted)  # two leaders in one term: only the first is obeyed
        why = self.memory_refusal(instances)
        if why is not None:
            raise CapacityError(why)
        self.store.observe_term(term, leader)
        if placement is not None:
            self.last_placement = placement
        wanted = {m: int(c) for m, c in instances.items() if c > 0}
        # A model provisioned on demand moments ago may be missing from a plan made before its first
        # request reached the leader: keep it for two placement periods unless the leader places it.
        now = self.clock()
        grace = 2 * self.settings.placement_period_s
        kept = {m: at for m, at in self._on_demand_at.items() if m not in wanted and now - at < grace}
        self._on_demand_at = {}
        for m, at in sorted(kept.items(), key=lambda item: item[1]):  # the leader's set first, then what still fits
            if self.memory_refusal({**wanted, m: 1}) is None:
                wanted[m], self._on_demand_at[m] = 1, at
        state = DesiredState(wanted, term, leader, frozenset(self._on_demand_at))
        if state != self._desired:
            log.info("desired set from %s at term %d: %s", leader, term, wanted)  # every change is an event
            self.store.set_desired(state)
            self._desired = state
            self._wake.set()
        return state

    def _add_on_demand(self, model: str) -> bool:
        """Add one server of ``model`` to the desired set; False when the set with it would not fit in memory."""
        if self._desired.instances.get(model, 0) > 0:
            return True
        instances = {**self._desired.instances, model: 1}
        why = self.memory_refusal(instances)
        if why is not None:
            log.warning("not provisioning %s on demand: %s", model, why)
            return False
        self._on_demand_at[model] = self.clock()
        state = DesiredState(instances, self._desired.term, self._desired.leader, self._desired.on_demand | {model})
        self.store.set_desired(state)
        self._desired = state
        log.info("provisioning %s on demand", model)
        self._wake.set()
        return True

    # -- reconciliation ----------------------------------------------------------------------------------
    async def _reconcile_loop(self) -> None:
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await aio.wait_for(self._wake.wait(), self.settings.reconcile_interval_s)
            self._wake.clear()
            try:
                await self.reconcile_once()
            except Exception as exc:  # the loop must survive anything a runtime throws
                message = f"{type(exc).__name__}: {exc}"[:500]
                if message != self.state.reconcile_error:
                    log.exception("reconcile round failed")
                self.state.reconcile_error = message
            else:
                self.state.reconcile_error = None

    async def observe(self) -> tuple[list[Instance], set[str]] | None:
        """List the runtime's servers, probe readiness and publish them; None when the runtime is unavailable."""
        try:
            instances = await self.runtime.list()
        except RuntimeUnavailable as exc:
            if self.state.runtime_error != str(exc):
                log.error("runtime unavailable: %s", exc)
            self.state.runtime_error = str(exc)
            return None
        self.state.runtime_error = None
        ready = await self._probe(instances)
        self._note_readiness(instances, ready, self.clock())
        self._publish(instances, ready)
        return instances, ready

    async def reconcile_once(self) -> None:
        """One round: observe the runtime, probe readiness, carry out plan_reconcile's steps."""
        observed = await self.observe()
        if observed is None:
            return
        instances, ready = observed
        now = self.clock()
        next_try = {m: h.next_try for m, h in self.health.items()}
        timeout = self.settings.instance_ready_timeout_s
        stuck = stuck_instances(instances, ready, self._last_ready, now, timeout)
        need = {m: spec.mem_mb for m, spec in self.catalogue.current.models.items()}
        total = self.node_metrics().mem_total_mb
        steps = plan_reconcile(
            self._desired.instances, instances, next_try, now, stuck, ready, need, total, self._draining.keys()
        )
        if self.shutting_down:
            steps = while_stopping(steps)
        self._say_stop_first(steps, instances, need, total)
        steps, self._draining = drain_stops(steps, self._draining, now, self.settings.instance_drain_s)
        self._publish(instances, ready)  # servers that began to drain leave every endpoint answer now
        listed = {i.id for i in instances}
        self._exits_seen &= listed  # both bounded by the servers listed now
        self._unremoved = {k: v for k, v in self._unremoved.items() if k in listed}
        unstopped: set[str] = set()  # models one of whose running servers the runtime could not stop
        for step in steps:
            if isinstance(step, Stop):
                if step.reason == "exited" and step.instance_id not in self._exits_seen:
                    # one exit is one failure, however many rounds its removal fails: recorded each round, a dead
                    # server the runtime could not remove pushed the model's backoff past every round (review27c L2)
                    self._exits_seen.add(step.instance_id)
                    self._record_failure(step.model, "model server exited", now)
                elif step.reason == "not ready in time":
                    self._record_failure(step.model, f"not AVAILABLE for {timeout:g} s", now)
                if not await self._stop(step) and step.reason != "exited":
                    unstopped.add(step.model)
        # no replacement for a running server that could not be stopped: each round would add one more beside it.
        # An exited one that could not be removed (a Docker 'Dead' container whose root file system is busy) uses no
        # CPU, memory or port and never counts as live, so nothing piles up beside it: its replacement starts
        starts = [s.model for s in steps if isinstance(s, Start) and s.model not in unstopped]
        await gather_bounded((self._start(m) for m in starts), self.settings.max_parallel_starts)
        if steps:
            instances = await self.runtime.list()
            ready = await self._probe(instances)
            self._note_readiness(instances, ready, self.clock())
            self._publish(instances, ready)

    def _say_stop_first(
        self, steps: Sequence[Step], instances: Sequence[Instance], need: Mapping[str, float], total: float
    ) -> None:
        """Log once per server that an outdated one is stopped before its replacement (decisions.stop_first)."""
        self._stopped_first &= {i.id for i in instances}  # bounded by the servers listed now
        for step in steps:
            if isinstance(step, Stop) and step.reason == STOP_FIRST and step.instance_id not in self._stopped_first:
                self._stopped_first.add(step.instance_id)
                log.warning(
                    "stopping outdated %s (%s) before its replacement starts: this node's %.0f MB cannot hold both "
                    "(%s needs %.0f MB beside its other servers); %s has fewer servers while the new one loads",
                    step.instance_id, step.model, total, step.model, need.get(step.model, 0.0), step.model,
                )  # fmt: skip

    def _publish(self, instances: list[Instance], ready: set[str]) -> None:
        ready = ready - self._draining.keys() - self._refused.keys()
        self.state.instances = instances
        self.state.ready = ready
        self._ready_models = {i.model for i in instances if i.id in ready}

    async def _probe(self, instances: list[Instance]) -> set[str]:
        running = [i for i in instances if i.running and i.url]
        cat = self.catalogue.current

        def server_of(model: str) -> str:
            spec = cat.get(model)
            return spec.server if spec is not None else "tfserving"

        began = self.clock()
        probes = (probe_available(self.http, i.url, i.model, server=server_of(i.model)) for i in running)
        results = await asyncio.gather(*probes)
        # A refusal seen after these probes were sent still stands; an older one is superseded by them.
        self._refused = {k: at for k, at in self._refused.items() if at >= began}
        return {i.id for i, ok in zip(running, results, strict=True) if ok}

    def endpoint_refused(self, url: str) -> bool:
        """The proxy's connection to ``url`` was refused; True when that is one of this node's servers.

        Nothing listens there (a killed server): it leaves the ready set, this node's endpoint answers and its
        peer state at once, until a probe sent after now finds it ready again, and the reconcile loop is woken to
        replace it. Before, the dead URL was handed out, and refused, until the next round (review12d F5)."""
        hit = [i for i in self.state.instances if i.url == url]
        if not hit:
            return False
        now = self.clock()
        for inst in hit:
            if inst.id in self.state.ready:
                log.warning("%s at %s refused a connection: out of the ready set until a probe answers", inst.id, url)
            self._refused[inst.id] = now
        self._publish(self.state.instances, self.state.ready)
        self._wake.set()
        return True

    def _note_readiness(self, instances: list[Instance], ready: set[str], now: float) -> None:
        present = {i.id for i in instances}
        self._last_ready = {k: at for k, at in self._last_ready.items() if k in present} | dict.fromkeys(
            ready & present, now
        )
        for inst in instances:
            if inst.id in ready:
                self.health.pop(inst.model, None)
                if inst.id not in self._ever_ready:
                    self._ever_ready.add(inst.id)
                    self.telemetry.instance_ready(inst, now)
                    spec = self.catalogue.current.get(inst.model)
                    if spec is not None:
                        task = asyncio.create_task(self._warm_up(inst, spec))
                        self._background.add(task)
                        task.add_done_callback(self._background.discard)
        models_now = {i.model for i in instances if i.id in ready}
        for model in models_now - self._ready_models:
            self.store.mark_provisioned(model, now)

    def _record_failure(self, model: str, error: str, now: float) -> None:
        h = self.health.setdefault(model, ModelHealth())
        self.telemetry.reconcile_failure(model)
        h.failures += 1
        h.next_try = now + backoff_delay(h.failures)
        if error != h.last_error:
            log.warning(
                "model %s failed (%d in a row, retry in %.0f s): %s",
                model,
                h.failures,
                h.next_try - now,
                error,
            )
        h.last_error = error

    async def _start(self, model: str) -> None:
        spec = self.catalogue.current.get(model)
        if spec is None:
            return
        try:
            await self.runtime.start(spec, self._desired.term)
        except (InstanceStartError, RuntimeUnavailable) as exc:
            self._record_failure(model, str(exc), self.clock())
        except Exception as exc:  # a runtime's unforeseen error: the model's failure and backoff, never the round's
            log.exception("starting %s failed", model)  # review27b F5: it ended the round, with no backoff
            self._record_failure(model, f"{type(exc).__name__}: {exc}", self.clock())

    async def _stop(self, step: Stop) -> bool:
        """Stop the step's server; False (logged, the model's failure) when the runtime could not.

        An exited server that could not be removed is logged (once per server and error) and is not the model's
        failure: its exit was, once; its replacement's own starts and their backoff govern the model (review27c L2)."""
        exited = step.reason == "exited"
        try:
            await self.runtime.stop(step.instance_id)
            return True
        except RuntimeUnavailable as exc:
            why = str(exc)
            if not exited:
                log.error("could not stop %s: %s", step.instance_id, exc)
        except Exception as exc:  # an Engine error on stop (a 409, a 500) ended the round before its starts
            why = f"{type(exc).__name__}: {exc}"
            if not exited:
                log.exception("could not stop %s", step.instance_id)
        if exited:
            if self._unremoved.get(step.instance_id) != why:  # each round tries again: one line, not one a round
                self._unremoved[step.instance_id] = why
                log.warning("could not remove exited %s (%s): %s", step.instance_id, step.model, why)
            return False
        self._record_failure(step.model, f"could not stop {step.instance_id[:12]}: {why}", self.clock())
        return False

    async def _warm_up(self, inst: Instance, spec: ModelSpec) -> None:
        if not spec.warmup:
            return
        try:
            path = f"/v2/models/{spec.name}/infer" if spec.server == "triton" else f"/v1/models/{spec.name}:predict"
            r = await self.http.post(f"{inst.url}{path}", json=dict(spec.warmup), timeout=30)
            log.info("warm-up of %s at %s: HTTP %d", spec.name, inst.url, r.status_code)
        except httpx.HTTPError as exc:
            log.warning("warm-up of %s at %s failed: %s", spec.name, inst.url, exc)

    async def _flush_loop(self) -> None:
        """Write the request log in batches, off the request path (readers flush before reading)."""
        while True:
            await asyncio.sleep(0.25)
            if not self.store.queued():  # idle: no thread hop 4 times a second for nothing
                continue
            try:
                await asyncio.to_thread(self.store.flush)
            except Exception:
                log.exception("writing the request log failed")

    async def _server_stats_loop(self) -> None:
        """Scrape this node's servers' statistics every ``server_stats_s`` (each scrape bounded: server_scrape.py)."""
        cat = self.catalogue

        def server_of(model: str) -> str:
            spec = cat.current.get(model)
            return spec.server if spec is not None else "tfserving"

        while True:
            await asyncio.sleep(self.settings.server_stats_s)
            try:
                await self.server_stats.scrape_once(self.state.instances, server_of, self.state.ready)
            except Exception:  # the loop must survive anything; each server's failure is counted in scrape_once
                log.exception("scraping the model servers' statistics failed")

    async def _catalogue_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.catalogue_poll_s)
            try:
                if self.catalogue.poll():
                    self._wake.set()
            except Exception:
                log.exception("catalogue poll failed")

    # -- endpoints -------------------------------------------------------------------------------------
    def node_metrics(self) -> NodeMetrics:
        now = self.clock()
        if self._metrics_cache is None or abs(now - self._metrics_cache[0]) > 0.5:  # a clock step also refreshes
            self._metrics_cache = (now, self.metrics.read())
        return self._metrics_cache[1]

    def expected_exec_ms(self, node: str, model: str, node_class: str) -> float:
        measured = self.exec_ms.get((node, model))
        if measured is not None:
            return measured
        spec = self.catalogue.current.get(model)
        return spec.expected_exec_ms(node_class) if spec else 0.0

    def client_rtts(self, client: str, reported: Mapping[str, float]) -> dict[str, float]:
        """The client's RTTs to nodes: what it reports now over what it reported before (cached; a cached
        entry is reloaded from the store, which drops expired reports, once it is client_rtt_ttl_s old)."""
        now = self.clock()
        cached = self._client_rtts.get(client)
        if cached is None or now - cached[0] > self.settings.client_rtt_ttl_s:
            if cached is None and len(self._client_rtts) >= CLIENT_CACHE:
                self._client_rtts.pop(next(iter(self._client_rtts)))
            cached = self._client_rtts[client] = (now, self.store.client_rtts(client, now))
        cached[1].update(reported)
        return dict(cached[1])

    def record_latency(self, node: str, model: str, latency_ms: float, source: str = "") -> None:
        """A proxied inference's 2xx service time (a status GET runs no model: not one, agent/serving/routes.py);
        ``source`` is the client's address (its share of the figure is bounded: agent/serving/exec_times.py)."""
        self.telemetry.upstream(model, latency_ms)
        self.exec_ms.record(node, model, latency_ms, source, time.monotonic())

    def candidates(self, model: str | None = None) -> list[Candidate]:
        """Ready servers of ``model`` (or of every model) on this node and on alive peers."""
        me = self.settings.node_id
        metrics = self.node_metrics()
        load = metrics.gpu_percent if metrics.gpu_percent is not None else metrics.cpu_percent
        cls = self.settings.node_class
        out = [
            Candidate(me, i.url, i.model, self.expected_exec_ms(me, i.model, cls), load, self.service_ms(i.model, cls))
            for i in self.state.instances
            if i.id in self.state.ready and (model is None or i.model == model)
        ]
        for peer in self.peers.members():
            if peer.status != "alive":
                continue
            peer_load = peer.gpu_load if peer.gpu_load is not None else peer.cpu_load
            for m, urls in peer.endpoints.items():
                if model is None or m == model:
                    exec_ms = self.expected_exec_ms(peer.node_id, m, peer.node_class)
                    service = self.service_ms(m, peer.node_class)
                    out += [Candidate(peer.node_id, u, m, exec_ms, peer_load, service) for u in urls]
        return out

    @property
    def last_placement(self) -> dict[str, Any] | None:
        """The last placement summary a leader sent with this node's desired set (None: none yet)."""
        return self._last_placement

    @last_placement.setter
    def last_placement(self, placement: dict[str, Any] | None) -> None:
        # the summary's ``slots`` are parsed here, once per summary, not on each request (review20c M1); only the
        # endpoint rule ``lef`` reads them (agent/serving/resolve.py)
        self._last_placement = placement
        self.placement_slots = node_slots(placement)

    @property
    def concurrency(self) -> float:
        """Requests one of this node's model servers serves at once (its slots; model_server_concurrency)."""
        return model_server_concurrency(self.settings)

    @property
    def cores(self) -> float:
        """The cores this node's model servers share, as it reports them: its setting, else os.cpu_count()."""
        return self.settings.cores or float(os.cpu_count() or 1)

    @property
    def slots(self) -> float:
        """This node's slots under ``lef``, bounded as the leader bounds every member's (``reported_slots``: at
        most its cores), so its own answers weigh it as the summary weighs it everywhere else."""
        return reported_slots(self.concurrency, self.cores) or 1.0

    def service_ms(self, model: str, node_class: str) -> float | None:
        """The catalogue's service time of ``model`` on ``node_class`` (None: not in it, or no figure)."""
        spec = self.catalogue.current.get(model)
        return spec.service_ms(node_class) if spec else None

    async def resolve(
        self, model: str, client: str, reported: Mapping[str, float], live: Mapping[str, int] | None = None
    ) -> Outcome:
        """Where ``client``'s request for ``model`` should go (the serving façade, agent/serving/resolve.py)."""
        return await resolve(self, model, client, reported, live)

    def provision_decision(self, spec: ModelSpec) -> tuple[str | None, str]:
        free = self.node_metrics().mem_available_mb
        desired = self._desired.instances
        if self.memory_refusal({**desired, spec.name: max(1, desired.get(spec.name, 0))}) is not None:
            free = 0.0  # free now, but promised to servers of the desired set that are still to start
        local = NodeRoom(self.settings.node_id, free)
        peers = [NodeRoom(p.node_id, p.mem_available_mb) for p in self.peers.members() if p.status == "alive"]
        return provision_target(spec.mem_mb, local, peers)

    def begin_shutdown(self) -> None:
        """The agent's server is stopping (agent/cli.py ``AgentServer``: uvicorn's shutdown, before it waits up to
        its graceful timeout for open requests). A request waiting for a model started for it (provision_locally,
        up to provision_wait_s) ends within one poll and is answered 503 (resolve's ``ShuttingDown``): its client may
        have left, and its wait held the stop for up to 10 s. No model is added on demand any more (a peer's request
        is answered 503 "this node is stopping"), and the reconcile loop starts no server (``while_stopping``)."""
        self.shutting_down = True

    def add_on_demand(self, model: str) -> bool:
        """Put one server of ``model`` into the desired set for a request (the reconcile loop starts it); False when
        nothing was added: this agent is shutting down, or the desired set with it would not fit in memory."""
        return not self.shutting_down and self._add_on_demand(model)

    async def provision_locally(self, model: str, wait_s: float) -> bool:
        """Start ``model`` here on demand and wait up to ``wait_s`` for it to be ready (not once shutting down)."""
        if not self.add_on_demand(model):
            return False
        deadline = self.clock() + wait_s
        while self.clock() < deadline and not self.shutting_down:
            if model in self._ready_models:
                return True
            self._wake.set()
            await asyncio.sleep(0.05)
        return model in self._ready_models

    def node_report(self) -> dict[str, Any]:
        """What ``/stats/node`` answers (client port and peer plane): metrics, instances, desired set, term."""
        s = self.settings
        return {
            "node_id": s.node_id,
            "node_class": s.node_class,
            "compute": s.compute,
            "cores": self.cores,
            "concurrency": model_server_concurrency(s),
            # runnable threads per CPU of this machine: how much contention stretches a service time here
            "load_per_cpu": round(os.getloadavg()[0] / (os.cpu_count() or 1), 3),
            "api_url": s.api_url,
            **self.node_metrics().to_dict(),
            "instances": [
                {**i.to_dict(), "ready": i.id in self.state.ready, "draining": i.id in self._draining}
                for i in self.state.instances
            ],
            "desired": dict(self.desired.instances),
            "term": self.store.highest_term(),
            # per model: requests its servers here served over the request window, whoever sent them, and their
            # mean time in the server (the leader's figure for this node where nobody else measured it)
            "service": service_report(self.server_stats.figures()),
        }

    def models_report(self) -> dict[str, Any]:
        """What ``/stats/models`` answers: per model here, instances, ready ones, requests since provisioned."""
        stats = self.store.model_stats()
        out: dict[str, dict[str, Any]] = {}
        for inst in self.state.instances:
            entry = out.setdefault(inst.model, {"instances": 0, "ready": 0, **stats.get(inst.model, {})})
            entry["instances"] += 1
            entry["ready"] += int(inst.id in self.state.ready)
        return {"node_id": self.settings.node_id, "models": out}

    def health_report(self) -> dict[str, Any]:
        cat = self.catalogue
        reasons = [
            *([f"catalogue: {cat.error}"] if cat.error else []),
            *([f"runtime: {self.state.runtime_error}"] if self.state.runtime_error else []),
            *([f"reconcile failing: {self.state.reconcile_error}"] if self.state.reconcile_error else []),
            *(f"model {m} failing: {h.last_error}" for m, h in self.health.items()),
        ]
        return {
            "status": "degraded" if reasons else "ok",
            "reasons": reasons,
            "node_id": self.settings.node_id,
            "catalogue": {
                "version": cat.current.version,
                "models": sorted(cat.current.models),
                "error": cat.error,
            },
            "runtime": {"kind": self.runtime.kind, "error": self.state.runtime_error},
            "reconcile": {"error": self.state.reconcile_error},
            "instances": [{**i.to_dict(), "ready": i.id in self.state.ready} for i in self.state.instances],
            "failing_models": {
                m: {"failures": h.failures, "error": h.last_error, "retry_at": h.next_try}
                for m, h in self.health.items()
            },
            # request records the log could not keep (its write queue was full: the disk fell behind; or a write
            # failed: a full disk); not an error of this agent's serving, but the leader's statistics miss them
            "server_stats": {"errors": self.server_stats.errors, "last_error": self.server_stats.last_error or None},
            "request_log": {
                "dropped": self.store.dropped,
                "write_failures": self.store.write_failures,
                "last_write_error": self.store.last_write_error or None,
            },
        }
