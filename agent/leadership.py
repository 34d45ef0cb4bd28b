"""Carries out the election machine over HTTP and, while leader, runs the placement loop.

Election messages travel as ``POST /election/message`` (cluster token); every tick feeds the machine the
membership view (alive peers and their priorities). While this node leads, a placement round runs every
``placement_period_s`` and at once on a membership change: gather stats from every alive agent (request
log by cursor, so nothing is counted twice or lost), build the snapshot (agent.placement), solve it
(solver), and send each agent its desired set with this term (fencing).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Mapping
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
from agent.solver_worker import SolverWorker
from coordinator_election import (
    Action,
    Announce,
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
    Vote,
    VoteRequest,
)

if TYPE_CHECKING:
    from agent.node import NodeAgent

log = logging.getLogger(__name__)

TICK_S = 0.05
ROUND_DEBOUNCE_S = 0.2
# A peer that died since the round began must not hold the round up: connects to a dead host hang.
GATHER_TIMEOUT = httpx.Timeout(3.0, connect=0.5)


def encode(message: Message) -> dict[str, Any]:
    if isinstance(message, Announce):
        return {"type": "announce", "term": message.term, "leader": message.leader, "priority": list(message.priority)}
    if isinstance(message, VoteRequest):
        return {"type": "vote_request", "term": message.term, "candidate": message.candidate,
                "priority": list(message.priority)}  # fmt: skip
    return {"type": "vote", "term": message.term, "voter": message.voter, "granted": message.granted,
            "leader": message.leader}  # fmt: skip


def decode(data: Any) -> Message:
    """Parse an election message; raises ValueError on anything malformed."""
    if not isinstance(data, dict):
        raise ValueError("not an object")

    def term() -> int:
        t = data.get("term")
        if isinstance(t, bool) or not isinstance(t, int) or t < 0:
            raise ValueError("bad term")
        return t

    def priority() -> Priority:
        p = data.get("priority")
        if not isinstance(p, list) or len(p) != 3:
            raise ValueError("bad priority")
        return (int(p[0]), float(p[1]), str(p[2]))

    def text(key: str, optional: bool = False) -> Any:
        v = data.get(key)
        if v is None and optional:
            return None
        if not isinstance(v, str) or not v or len(v) > 63:
            raise ValueError(f"bad {key}")
        return v

    kind = data.get("type")
    if kind == "announce":
        return Announce(term(), text("leader"), priority())
    if kind == "vote_request":
        return VoteRequest(term(), text("candidate"), priority())
    if kind == "vote":
        granted = data.get("granted")
        if not isinstance(granted, bool):
            raise ValueError("bad granted")
        return Vote(term(), text("voter"), granted, text("leader", optional=True))
    raise ValueError(f"unknown message type {kind!r}")


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
        self.solver = SolverWorker(s.placement_method)  # runs only while this node leads

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

    async def stop(self) -> None:
        for task in [*self._tasks, *([self._round_task] if self._round_task else [])]:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.solver.close()

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
                self.solver.start()  # warms up in the background
                self._start_rounds()
            elif isinstance(action, BecameFollower):
                self.agent.store.observe_term(action.term)
                if action.leader is not None:
                    log.info("node %s follows %s at term %d", self.agent.settings.node_id, action.leader, action.term)
                self._stop_rounds()
                self.solver.stop()

    async def _post(self, url: str, message: Message) -> None:
        s = self.agent.settings
        headers = {"Authorization": f"Bearer {s.cluster_token}"} if s.cluster_token else {}
        body = {"from": s.node_id, "message": encode(message)}
        with contextlib.suppress(httpx.HTTPError):
            await self.agent.http.post(f"{url}/election/message", json=body, headers=headers, timeout=0.5)

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
        plan, fallback = await self.solver.solve(snapshot, s.placement_method, s.placement_mode)
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
        r = await self.agent.http.get(url, params=params, timeout=GATHER_TIMEOUT)
        r.raise_for_status()
        return r.json()

    async def _command(self, url: str, term: int, instances: dict[str, int], summary: dict[str, Any]) -> bool:
        s = self.agent.settings
        body = {"term": term, "leader": s.node_id, "instances": instances, "placement": summary}
        headers = {"Authorization": f"Bearer {s.cluster_token}"}
        for attempt in range(3):
            try:
                r = await self.agent.http.put(
                    f"{url}/control/desired", json=body, headers=headers, timeout=GATHER_TIMEOUT
                )
                if r.status_code == 409:
                    log.warning("command to %s fenced: %s", url, r.text)
                    return False
                if r.status_code == 200:
                    return True
            except (httpx.ConnectError, httpx.ConnectTimeout):
                return False  # the node is gone; membership will drop it, the next round resends anyway
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.2 * 2**attempt)
        return False

    def _say_once(self, key: str, message: str, *args: Any) -> None:
        if key not in self._said:
            self._said.add(key)
            log.warning(message, *args)
