"""Event-driven simulation of requests dispatched as the agent dispatches them (``simulate --workload``).

Where a request goes can depend on the queues at its arrival (the agent weighs endpoints by the requests
it has in flight there, peerserve/dispatch.py), and with shared cores a request's departure depends on
every other request in service on its node, so arrivals and departures are simulated in one time order:
the arrivals (sorted) against a heap of projected departures, one per request in service. Each instance
is a FIFO server with ``slots`` slots (up to that many requests in service, started in arrival order);
the requests in service on a node progress at ``min(1, cores / in service)`` of their speed (as
solver/shared_cores.py), so a departure is projected as ``now + work left / rate`` and re-projected only
when its node's rate changes. With no rate change (cores >= the node's slots in use) a departure is
start + service exactly: Lindley's recursion with one slot, bit for bit (tested against
``workload.fifo_sojourn_ms``), Kiefer-Wolfowitz's with c (tests/unit/test_slots.py).

``AgentDispatch`` replays the agent's choice at every arrival (agent/serving/resolve.py ->
agent/decisions.py ``rank_endpoints`` + ``spread_ranked``, both built on peerserve/dispatch.py):

* the client's site sends through the agent of its nearest node (bench/load_bench.py: "through that
  site's own agent"); that agent's live queues are the requests IT has in flight per instance
  (agent/serving/inflight.py: only its own; an instance with none is absent and reads 0), open until
  the departure;
* endpoints are ranked by RTT + that agent's execution estimate per node: the median of the last 16
  server times it measured there (agent/serving/exec_times.py; the server time is the request's time in
  the server, wait included), the catalogue's service time before any; ties by node id, then URL (the
  node's instances in start order; load, equal within a node, is left out);
* with the plan's shares (``details["spread"]``: every objective publishes them, thesis-model plans
  from their assignments; queue objectives also ``["planned_queue"]``, Mode 1 ``["idle_running"]``)
  the first endpoint is chosen by ``choose_endpoint`` under ``rule`` (``p2c`` by default, the agent's
  ``endpoint_rule``); details without shares leave the ranking, so the request goes to the first
  endpoint: the best node's first instance;
* under ``lef`` (plan or not) ``choose_endpoint`` takes the least expected finish among every endpoint but
  the plan's idle ones, as the agent does: each endpoint's RTT the client's to its node (the ranking's),
  its service time the catalogue's (``exec_ms``: the lab's one figure, not the agent's measured estimate),
  its slots its node's (``slots``; None: 1), its queue the entry agent's requests in flight there.
"""

from __future__ import annotations

import heapq
import statistics
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from peerserve.dispatch import (
    DEFAULT_RULE,
    Finish,
    choose_endpoint,
    idle_counts,
    parse_spread,
    planned_queues,
    rank_key,
    site_shares,
)
from solver.problem import FloatArray, IntArray

HEAP_SLACK = 1024  # superseded departure projections kept before the heap is compacted
EXEC_SAMPLES = 16  # agent/serving/exec_times.py SAMPLES: the median of this many recent server times


class Dispatch(Protocol):
    """Where request ``i`` goes at time ``now`` (an instance, or -1: rejected), and its departure."""

    def choose(self, i: int, now: float) -> int: ...

    def done(self, i: int, instance: int, now: float, sojourn_ms: float) -> None: ...


class Fixed:
    """Requests go where ``instance`` says (-1: rejected): the queues as if routing were decided before."""

    def __init__(self, instance: IntArray) -> None:
        self.instance = np.asarray(instance, dtype=np.int64)

    def choose(self, i: int, now: float) -> int:
        return int(self.instance[i])

    def done(self, i: int, instance: int, now: float, sojourn_ms: float) -> None:
        return None


def event_sojourn_ms(
    arrival_s: FloatArray,
    work_s: FloatArray,
    dispatch: Dispatch,
    node_of: IntArray,
    cores: FloatArray,
    slots: IntArray | None = None,
) -> tuple[IntArray, FloatArray]:
    """Each request's instance (-1: rejected) and time in system (ms; nan if rejected), ``arrival_s`` sorted;
    instance k lives on node ``node_of[k]``, whose ``cores`` (inf: one per request in service) its requests in
    service share; an instance there serves up to ``slots[node]`` requests at once (None: 1 everywhere)."""
    width = np.ones(len(cores), dtype=np.int64) if slots is None else np.asarray(slots, dtype=np.int64)
    sim = _Engine(np.asarray(node_of, dtype=np.int64), np.asarray(cores, dtype=float), np.maximum(width, 1))
    where = np.full(len(arrival_s), -1, dtype=np.int64)
    out = np.full(len(arrival_s), np.nan)
    arrival, work = np.asarray(arrival_s, dtype=float).tolist(), np.asarray(work_s, dtype=float).tolist()
    nxt = 0
    while True:
        tf, k = sim.next_departure()
        if k < 0 and nxt >= len(arrival):
            break
        if nxt < len(arrival) and arrival[nxt] <= tf:
            now = arrival[nxt]
            k = dispatch.choose(nxt, now)
            if k >= 0:
                where[nxt] = k
                sim.arrive(k, nxt, now, work)
            nxt += 1
            continue
        i = sim.depart(k, tf, work)
        out[i] = 1000.0 * (tf - arrival[i])
        dispatch.done(i, k, tf, float(out[i]))
    return where, out


class _Engine:
    """FIFO instances with slots whose node's requests in service share its cores; departures in a heap."""

    def __init__(self, node_of: IntArray, cores: FloatArray, slots: IntArray | None = None) -> None:
        self.node_of = node_of.tolist()
        self.cores = cores.tolist()
        self.slots = [1] * len(self.cores) if slots is None else [int(v) for v in slots.tolist()]
        self.queues: list[deque[int]] = [deque() for _ in self.node_of]  # requests waiting for a slot
        self.running = [0] * len(self.node_of)  # requests in service per instance
        self.finish: dict[int, float] = {}  # request in service -> projected departure
        self.version: dict[int, int] = {}
        self.at: dict[int, int] = {}  # request in service -> its instance
        self.serving: list[set[int]] = [set() for _ in self.cores]  # requests in service per node
        self.heap: list[tuple[float, int, int, int]] = []  # (projected departure, instance, request, version)
        widest = max([self.slots[j] for j in self.node_of], default=1)
        self.heap_bound = 2 * len(self.node_of) * widest + HEAP_SLACK  # at most one live entry per slot
        self.peak = 0
        self._stamp = 0

    def rate(self, j: int) -> float:
        return min(1.0, self.cores[j] / len(self.serving[j])) if self.serving[j] else 1.0

    def next_departure(self) -> tuple[float, int]:
        """The earliest live projected departure (inf, -1 if none)."""
        while self.heap and self.heap[0][3] != self.version.get(self.heap[0][2]):
            heapq.heappop(self.heap)
        return (self.heap[0][0], self.heap[0][1]) if self.heap else (np.inf, -1)

    def arrive(self, k: int, i: int, now: float, work: Sequence[float]) -> None:
        j = self.node_of[k]
        if self.running[k] >= self.slots[j]:
            self.queues[k].append(i)
            return
        self.running[k] += 1
        before = self.rate(j)
        self.serving[j].add(i)
        self._reproject(j, now, before, skip=i)
        self._project(k, i, now + work[i] / self.rate(j))

    def depart(self, k: int, now: float, work: Sequence[float]) -> int:
        """The request leaving instance k at ``now`` (the heap's top); a waiting one takes its slot at once."""
        i = heapq.heappop(self.heap)[2]
        del self.finish[i], self.version[i], self.at[i]
        j = self.node_of[k]
        if self.queues[k]:  # the node's requests in service stay as many: no rate change
            successor = self.queues[k].popleft()
            self.serving[j].discard(i)
            self.serving[j].add(successor)
            self._project(k, successor, now + work[successor] / self.rate(j))
            return i
        before = self.rate(j)
        self.serving[j].discard(i)
        self.running[k] -= 1
        self._reproject(j, now, before, skip=i)
        return i

    def _project(self, k: int, i: int, at: float) -> None:
        self.finish[i] = at
        self.at[i] = k
        self._stamp += 1
        self.version[i] = self._stamp
        heapq.heappush(self.heap, (at, k, i, self._stamp))
        if len(self.heap) > self.heap_bound:  # mostly superseded projections: keep the live ones only
            self.heap = [e for e in self.heap if e[3] == self.version.get(e[2])]
            heapq.heapify(self.heap)
        self.peak = max(self.peak, len(self.heap))

    def _reproject(self, j: int, now: float, before: float, skip: int) -> None:
        """Node j's rate went from ``before`` to its current one: every other running request's departure moves."""
        after = self.rate(j)
        if after == before:
            return
        for i in self.serving[j]:
            if i != skip:
                self._project(self.at[i], i, now + max(0.0, self.finish[i] - now) * before / after)


class AgentDispatch:
    """The agent's endpoint choice at each arrival (module docstring); counts per agent as the agent does.
    ``draws``, ``draws2``: each request's two uniforms (None: the second is 0); ``rule``: the endpoint rule
    (the class's, or ``endpoint_rule``); ``slots``: per node, requests an instance serves at once (None: 1)."""

    rule = DEFAULT_RULE

    def __init__(
        self,
        plan_details: Mapping[str, Any],
        node_ids: Sequence[str],
        started: Sequence[int],
        rtt: FloatArray,
        client: IntArray,
        exec_ms: float,
        draws: FloatArray,
        draws2: FloatArray | None = None,
        slots: Sequence[float] | None = None,
        endpoint_rule: str | None = None,
    ) -> None:
        if endpoint_rule is not None:
            self.rule = endpoint_rule
        self.node_ids = list(node_ids)
        self.node_slots = [1.0] * len(self.node_ids) if slots is None else [float(v) for v in slots]
        if len(self.node_slots) != len(self.node_ids):
            raise ValueError(f"{len(self.node_slots)} slot counts for {len(self.node_ids)} nodes")
        self.endpoints = [(n, f"{n}/{i:05d}") for n, count in zip(node_ids, started, strict=True) for i in range(count)]
        self.node_index = [self.node_ids.index(n) for n, _ in self.endpoints]
        self.of_node = [[e for e, j in enumerate(self.node_index) if j == n] for n in range(len(self.node_ids))]
        self.rtt = np.asarray(rtt, dtype=float)
        self.client = np.asarray(client, dtype=np.int64).tolist()
        self.agent = np.argmin(self.rtt, axis=1).tolist()  # each client's entry agent: its nearest node's
        self.exec_ms = exec_ms
        self.draws = np.asarray(draws, dtype=float).tolist()
        self.draws2 = np.zeros(len(self.draws)).tolist() if draws2 is None else np.asarray(draws2, float).tolist()
        sites = parse_spread(plan_details.get("spread"))
        self.shares = [site_shares(sites, "m", dict(zip(self.node_ids, row, strict=True))) for row in self.rtt.tolist()]
        self.planned = planned_queues(plan_details, "m")
        self.idle = idle_counts(plan_details, "m")
        self.live: list[dict[str, int]] = [{} for _ in self.node_ids]  # agent -> URL -> requests in flight
        self.seen: list[list[deque[float]]] = [[deque(maxlen=EXEC_SAMPLES) for _ in node_ids] for _ in node_ids]
        self.estimate = [[exec_ms] * len(node_ids) for _ in node_ids]  # agent -> node -> exec estimate (ms)
        self.sent_by: dict[int, int] = {}

    def ranked(self, a: int, c: int) -> list[int]:
        """Endpoint indices best first for client c through agent a (rank_endpoints's order: a node's
        endpoints tie on estimate and load, so they sit together in URL order, here start order)."""
        est, row = self.estimate[a], self.rtt[c].tolist()
        nodes = sorted(range(len(self.node_ids)), key=lambda j: rank_key(row[j] + est[j], 0.0, self.node_ids[j], ""))
        return [e for j in nodes for e in self.of_node[j]]

    def choose(self, i: int, now: float) -> int:
        if not self.endpoints:
            return -1
        c = self.client[i]
        a = self.agent[c]
        order = self.ranked(a, c)
        pick = self.pick([self.endpoints[e] for e in order], c, a, i) if self.shares[c] or self.rule == "lef" else None
        k = order[0 if pick is None else pick]
        url = self.endpoints[k][1]
        self.live[a][url] = self.live[a].get(url, 0) + 1
        self.sent_by[i] = a
        return k

    def pick(self, endpoints: list[tuple[str, str]], c: int, a: int, i: int) -> int | None:
        """The index in ``endpoints`` (ranked) that request i of client c takes through agent a, or None."""
        draws = (self.draws[i], self.draws2[i])
        live, finish = self.live[a], self.finish_inputs(endpoints, c)
        return choose_endpoint(endpoints, self.shares[c], self.planned, live, draws, self.rule, self.idle, finish)

    def finish_inputs(self, endpoints: list[tuple[str, str]], c: int) -> list[Finish] | None:
        """``lef``'s inputs for client c per endpoint (its RTT, the service time, the node's slots); None under
        the other rules (they read none)."""
        if self.rule != "lef":
            return None
        row, index = self.rtt[c].tolist(), self.node_ids.index
        return [Finish(row[j], self.exec_ms, self.node_slots[j]) for j in (index(n) for n, _ in endpoints)]

    def done(self, i: int, instance: int, now: float, sojourn_ms: float) -> None:
        a = self.sent_by.pop(i)
        url = self.endpoints[instance][1]
        left = self.live[a][url] - 1
        if left:
            self.live[a][url] = left
        else:
            del self.live[a][url]  # as InFlight.counts: absent, nothing in flight (the rule reads 0)
        j = self.node_index[instance]
        window = self.seen[a][j]
        window.append(sojourn_ms)
        self.estimate[a][j] = float(statistics.median(window))
