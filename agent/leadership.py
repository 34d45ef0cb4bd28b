"""Carries out the election machine over HTTP and, while leader, runs the placement loop.

Election messages travel as ``POST /election/message`` on the peer plane (signed: agent.peer_client); every
tick feeds the machine the membership view (alive, admitted peers and their priorities). While this node
leads, a placement round runs every ``placement_period_s`` and at once on a membership change: gather
stats from every alive agent (request log by cursor, so nothing is counted twice or lost), build the
snapshot (agent.placement), solve it (solver), and send each agent its desired set with this term (fencing).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import time
from collections import deque
from collections.abc import Mapping
from concurrent.futures import ProcessPoolExecutor
from typing import TYPE_CHECKING, Any

import httpx

from agent.placement import (
    NodeReport,
    RequestRecord,
    build_snapshot,
    desired_sets,
    make_before_break,
    parse_node_report,
    parse_request,
)
from coordinator_election import (
    Action,
    BecameFollower,
    BecameLeader,
    Broadcast,
    Election,
    ElectionConfig,
    Message,
    Priority,
    Received,
    Send,
    Tick,
)
from peerserve.wire import ROUTE_DESIRED, ROUTE_ELECTION, DesiredCommand, ElectionPost

if TYPE_CHECKING:
    from agent.node import NodeAgent

log = logging.getLogger(__name__)

TICK_S = 0.05
ROUND_DEBOUNCE_S = 0.2
# A peer that died since the round began must not hold the round up: connects to a dead host hang.
GATHER_TIMEOUT = httpx.Timeout(3.0, connect=0.5)


def encode(message: Message) -> dict[str, Any]:
    """An election message as it travels (peerserve.wire.ElectionPost)."""
    return ElectionPost.from_message(message).to_json()


def decode(data: Any) -> Message:
    """Parse an election message; raises ValueError (WireError) on anything malformed or out of range."""
    return ElectionPost.parse(data).to_message()


def _warm_up_solver(method: str) -> None:
    """Import and initialise the solver once, so a new leader's first round is not 2 s of imports."""
    try:
        from solver.api import solve
        from solver.simulate import thesis_instance

        solve(thesis_instance(3, 2, 0), method=method)
    except Exception as exc:  # a missing solver shows up (and falls back) in the first round instead
        log.debug("solver warm-up failed: %s", exc)


def _die_with_parent() -> None:
    """Worker initializer: the kernel kills the solver worker when its agent dies, even by SIGKILL."""
    import ctypes
    import os
    import signal

    pr_set_pdeathsig = 1
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() == 1:  # the agent died before we got here
        os._exit(0)


def _solve_snapshot(snapshot: dict[str, Any], method: str, mode: str) -> tuple[dict[str, Any], str]:
    """Solve in the worker process; falls back to least-loaded when Ipopt/HiGHS are not installed."""
    from solver import Snapshot, SolverUnavailableError
    from solver.api import solve

    snap = Snapshot.from_dict(snapshot)
    try:
        return solve(snap, method=method, mode=mode).to_dict(), ""
    except SolverUnavailableError as exc:
        return solve(snap, method="least-loaded", mode=mode).to_dict(), str(exc)


class Leadership:
    def __init__(self, agent: NodeAgent) -> None:
        self.agent = agent
        s = agent.settings
        self.priority: Priority = (s.priority, agent.node_metrics().mem_total_mb, s.node_id)
        config = ElectionConfig(heartbeat_s=s.election_heartbeat_s, election_timeout_s=s.election_timeout_s)
        self.machine = Election(s.node_id, self.priority, config, now=time.monotonic(), term=agent.store.highest_term())
        self.last_placement: dict[str, Any] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._round_task: asyncio.Task[None] | None = None
        self._trigger = asyncio.Event()
        self._cursors: dict[str, int] = {}
        self._window: deque[RequestRecord] = deque()
        self._seen: set[tuple[str, int]] = set()
        self._background: set[asyncio.Task[Any]] = set()
        self._said: set[str] = set()
        self.leader_since: float | None = None
        self._pool: ProcessPoolExecutor | None = None
        self._warm_up: asyncio.Future[None] | None = None

    @property
    def leader(self) -> str | None:
        return self.machine.leader

    @property
    def term(self) -> int:
        return self.machine.term

    @property
    def is_leader(self) -> bool:
        return self.machine.is_leader

    async def start(self) -> None:
        self._tasks = [asyncio.create_task(self._tick_loop(), name="election")]
        # Solving runs in a worker process: Pyomo is pure Python and would hold this process's GIL
        # (and the API's latency) for the length of a solve.
        self._pool = ProcessPoolExecutor(
            max_workers=1, mp_context=multiprocessing.get_context("spawn"), initializer=_die_with_parent
        )
        loop = asyncio.get_running_loop()
        self._warm_up = loop.run_in_executor(self._pool, _warm_up_solver, self.agent.settings.placement_method)
        self._warm_up.add_done_callback(lambda f: f.cancelled() or f.exception())

    async def stop(self) -> None:
        for task in [*self._tasks, *([self._round_task] if self._round_task else [])]:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    # -- election I/O ----------------------------------------------------------------------------
    def _view(self) -> dict[str, Priority]:
        return {
            m.node_id: (m.priority, m.mem_total_mb, m.node_id)
            for m in self.agent.peers.members()
            if m.status == "alive"
        }

    async def _tick_loop(self) -> None:
        while True:
            try:
                self._carry_out(self.machine.step(Tick(time.monotonic(), self._view())))
            except Exception:
                log.exception("election tick failed")
            await asyncio.sleep(TICK_S)

    def receive(self, sender: str, data: Any) -> None:
        """A message from a peer (POST /election/message); raises ValueError when malformed."""
        message = decode(data)
        self._carry_out(self.machine.step(Received(time.monotonic(), sender, message)))

    def _carry_out(self, actions: list[Action]) -> None:
        urls = {m.node_id: m.api_url for m in self.agent.peers.members() if m.status != "dead"}
        for action in actions:
            if isinstance(action, Send):
                if action.to in urls:
                    self._spawn(self._post(urls[action.to], action.message))
            elif isinstance(action, Broadcast):
                for node, url in urls.items():
                    if node in self.machine.alive:
                        self._spawn(self._post(url, action.message))
            elif isinstance(action, BecameLeader):
                self.agent.store.observe_term(action.term)
                log.info("node %s became leader at term %d", self.agent.settings.node_id, action.term)
                self.leader_since = time.time()
                self._start_rounds()
            elif isinstance(action, BecameFollower):
                self.agent.store.observe_term(action.term)
                if action.leader is not None:
                    log.info("node %s follows %s at term %d", self.agent.settings.node_id, action.leader, action.term)
                self._stop_rounds()

    async def _post(self, url: str, message: Message) -> None:
        peers = self.agent.peer_client
        if peers is None:
            return
        with contextlib.suppress(ValueError):  # PeerCallError: unreachable or unauthentic; the machine retries
            await peers.send(url, "POST", ROUTE_ELECTION, encode(message))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- placement rounds --------------------------------------------------------------------------
    def membership_changed(self) -> None:
        if self.is_leader:
            self._trigger.set()

    def _start_rounds(self) -> None:
        if self._round_task is None or self._round_task.done():
            self._round_task = asyncio.get_running_loop().create_task(self._rounds(self.machine.term))
        self._trigger.set()

    def _stop_rounds(self) -> None:
        if self._round_task is not None and not self._round_task.done() and not self.is_leader:
            self._round_task.cancel()
            self._round_task = None

    async def _rounds(self, first_term: int) -> None:
        period = self.agent.settings.placement_period_s
        while self.is_leader:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._trigger.wait(), period)
            self._trigger.clear()
            await asyncio.sleep(ROUND_DEBOUNCE_S)
            if not self.is_leader:
                return
            try:
                await self.placement_round(self.machine.term)
            except Exception:
                log.exception("placement round failed")

    async def placement_round(self, term: int) -> dict[str, Any]:
        s = self.agent.settings
        members = [(m.node_id, m.api_url) for m in self.agent.peers.members() if m.status == "alive"]
        members.append((s.node_id, s.api_url))
        reports = await asyncio.gather(*(self._gather(node, url) for node, url in members))
        nodes = [r for r in reports if r is not None]
        cutoff = time.time() - s.request_window_s
        while self._window and self._window[0].ts < cutoff:
            self._window.popleft()
        snapshot = build_snapshot(nodes, list(self._window), self.agent.catalogue.current, time.time())
        assert self._pool is not None
        plan, fallback = await asyncio.get_running_loop().run_in_executor(
            self._pool, _solve_snapshot, snapshot, s.placement_method, s.placement_mode
        )
        if fallback:
            self._say_once("solver", "placement falls back to least-loaded: %s", fallback)
        desired = make_before_break(
            desired_sets(plan["instances"], [n.node_id for n in nodes]), {n.node_id: n.ready for n in nodes}
        )
        summary = {
            "at": time.time(),
            "term": term,
            "leader": s.node_id,
            "method": plan.get("method"),
            "mode": plan.get("mode"),
            "status": plan.get("status"),
            "objective_ms": plan.get("objective_ms"),
            "solve_ms": plan.get("solve_ms"),
            "requests": len(snapshot["requests"]),
            "nodes": [n.node_id for n in nodes],
            "actions": plan.get("actions", []),
            "rejected": len(plan.get("rejected", [])),
            "note": plan.get("note", ""),
        }
        urls = dict(members)
        results = await asyncio.gather(*(self._command(urls[n], term, d, summary) for n, d in desired.items()))
        summary["delivered"] = sum(results)
        self.last_placement = summary
        log.info(
            "placement at term %d: %d requests on %d nodes, objective %.1f ms, solve %.1f ms, %d actions",
            term, summary["requests"], len(nodes), summary["objective_ms"] or 0.0, summary["solve_ms"] or 0.0,
            len(summary["actions"]),
        )  # fmt: skip
        return summary

    async def _gather(self, node: str, url: str) -> NodeReport | None:
        try:
            stats_node, stats_models = await asyncio.gather(
                self._get_json(f"{url}/stats/node"), self._get_json(f"{url}/stats/models")
            )
            report = parse_node_report(stats_node, stats_models)
            cursor = self._cursors.get(node, 0)
            while True:
                page = await self._get_json(f"{url}/stats/requests", params={"since": cursor, "limit": 5000})
                for raw in page["requests"]:
                    key = (node, int(raw["id"]))
                    if key not in self._seen:
                        self._seen.add(key)
                        self._window.append(parse_request(raw))
                if not page["requests"]:
                    break
                cursor = int(page["next"])
            self._cursors[node] = cursor
            return report
        except (httpx.HTTPError, KeyError, TypeError, ValueError) as exc:
            self._say_once(f"gather:{node}:{type(exc).__name__}", "cannot gather stats from %s: %s", node, exc)
            return None

    async def _get_json(self, url: str, params: Mapping[str, Any] | None = None) -> Any:
        """A peer's stats answer, authenticated and strictly parsed; raises ValueError (PeerCallError)."""
        if self.agent.peer_client is None:
            raise ValueError("no peer plane without a cluster token")
        return await self.agent.peer_client.get_json(url, params)

    async def _command(self, url: str, term: int, instances: dict[str, int], summary: dict[str, Any]) -> bool:
        peers = self.agent.peer_client
        if peers is None:
            return False
        body = DesiredCommand(term, self.agent.settings.node_id, instances, summary).to_json()
        for attempt in range(3):
            try:
                status, answer = await peers.send(url, "PUT", ROUTE_DESIRED, body)
                if status == 409:
                    log.warning("command to %s fenced: %s", url, answer)
                    return False
                if status == 200:
                    return True
            except ValueError as exc:  # PeerCallError
                if "unreachable" in str(exc) and "Connect" in str(exc):
                    return False  # the node is gone; membership will drop it, the next round resends anyway
            await asyncio.sleep(0.2 * 2**attempt)
        return False

    def _say_once(self, key: str, message: str, *args: Any) -> None:
        if key not in self._said:
            self._said.add(key)
            log.warning(message, *args)
