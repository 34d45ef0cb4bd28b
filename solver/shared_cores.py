"""Discrete-event simulation of instances that share their node's cores (issue 16, ``simulate --workload``).

Each instance is a FIFO server with ``slots`` slots: it works on up to that many requests at once, started
in arrival order (one slot: one request at a time). All requests in service on a node share its ``cores``:
while ``b`` are in service there, each progresses at ``min(1, cores / b)`` of its own speed (processor
sharing among running requests, as an OS scheduler gives runnable threads equal slices). With at least as
many cores as requests that can be in service this is the FIFO-c recursion (Lindley's with one slot,
``fifo_sojourn_ms``; Kiefer-Wolfowitz with c); with one core and exponential service times the node is
work-conserving, so the number of requests in it is that of one M/M/1 queue at the node's total load (all
tested).

Event loop per node: the next event is the earlier of the next arrival and the first completion at the
current rate; between events every request in service has its remaining work fall by rate x elapsed time.
"""

from __future__ import annotations

from collections import deque

import numpy as np

from solver.problem import FloatArray, IntArray


def shared_sojourn_ms(
    arrival_s: FloatArray,
    instance: IntArray,
    service_s: FloatArray,
    node_of: IntArray,
    cores: FloatArray,
    slots: IntArray | None = None,
) -> FloatArray:
    """Time in system (ms) of each request: its instance ``instance[i]`` lives on node ``node_of[instance]``,
    whose ``cores[node]`` (inf: one per request in service) its requests in service share; an instance there
    serves up to ``slots[node]`` requests at once (None: 1 everywhere)."""
    out = np.zeros(len(arrival_s))
    node = np.asarray(node_of)[np.asarray(instance, dtype=np.int64)] if len(arrival_s) else np.zeros(0, np.int64)
    width = np.ones(len(cores), dtype=np.int64) if slots is None else np.asarray(slots, dtype=np.int64)
    for j in np.unique(node).tolist():
        mine = np.flatnonzero(node == j)
        order = mine[np.lexsort((mine, arrival_s[mine]))]
        out[order] = _node_sojourn_ms(
            arrival_s[order], instance[order], service_s[order], float(cores[j]), max(int(width[j]), 1)
        )
    return out


def _node_sojourn_ms(arrival: FloatArray, instance: IntArray, work: FloatArray, cores: float, slots: int) -> FloatArray:
    """One node's requests, sorted by arrival: FIFO per instance with ``slots`` slots, running ones share ``cores``."""
    out = np.zeros(len(arrival))
    waiting: dict[int, deque[int]] = {}
    running: dict[int, int] = {}  # instance -> requests in service
    left = work.astype(float).copy()
    now, nxt = 0.0, 0
    heads: list[int] = []  # requests in service
    while nxt < len(arrival) or heads:
        rate = min(1.0, cores / len(heads)) if heads else 1.0
        finish = now + min(left[i] for i in heads) / rate if heads else np.inf
        if nxt < len(arrival) and arrival[nxt] <= finish:
            _advance(left, heads, rate * (arrival[nxt] - now))
            now = float(arrival[nxt])
            k = int(instance[nxt])
            if running.get(k, 0) < slots:
                running[k] = running.get(k, 0) + 1
                heads.append(nxt)
            else:
                waiting.setdefault(k, deque()).append(nxt)
            nxt += 1
            continue
        _advance(left, heads, rate * (finish - now))
        now = float(finish)
        first = min(heads, key=lambda i: left[i])  # completes now, whatever the float residue
        for done in [i for i in heads if i == first or left[i] <= 1e-12]:
            out[done] = 1000.0 * (now - arrival[done])
            heads.remove(done)
            k = int(instance[done])
            queue = waiting.get(k)
            if queue:
                heads.append(queue.popleft())  # its successor takes the slot at once
            else:
                running[k] -= 1
    return out


def _advance(left: FloatArray, heads: list[int], amount: float) -> None:
    for i in heads:
        left[i] -= amount
