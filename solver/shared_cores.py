"""Discrete-event simulation of instances that share their node's cores (issue 16, ``simulate --workload``).

Each instance is a FIFO server: it works on one request at a time, in arrival order. The instances of a
node share its ``cores``: while ``b`` of them are busy, each progresses at ``min(1, cores / b)`` of its
own speed (processor sharing among busy instances, as an OS scheduler gives runnable processes equal
slices). With at least as many cores as instances this is Lindley's recursion (``fifo_sojourn_ms``);
with one core and exponential service times the node is work-conserving, so the number of requests in
it is that of one M/M/1 queue at the node's total load (both are tested).

Event loop per node: the next event is the earlier of the next arrival and the first completion at the
current rate; between events every busy instance's remaining work falls by rate x elapsed time.
"""

from __future__ import annotations

from collections import deque

import numpy as np

from solver.problem import FloatArray, IntArray


def shared_sojourn_ms(
    arrival_s: FloatArray, instance: IntArray, service_s: FloatArray, node_of: IntArray, cores: FloatArray
) -> FloatArray:
    """Time in system (ms) of each request: its instance ``instance[i]`` lives on node ``node_of[instance]``,
    whose ``cores[node]`` (inf: one per instance) its instances share while busy."""
    out = np.zeros(len(arrival_s))
    node = np.asarray(node_of)[np.asarray(instance, dtype=np.int64)] if len(arrival_s) else np.zeros(0, np.int64)
    for j in np.unique(node).tolist():
        mine = np.flatnonzero(node == j)
        order = mine[np.lexsort((mine, arrival_s[mine]))]
        out[order] = _node_sojourn_ms(arrival_s[order], instance[order], service_s[order], float(cores[j]))
    return out


def _node_sojourn_ms(arrival: FloatArray, instance: IntArray, work: FloatArray, cores: float) -> FloatArray:
    """One node's requests, sorted by arrival: FIFO per instance, busy instances share ``cores``."""
    out = np.zeros(len(arrival))
    queues: dict[int, deque[int]] = {}
    left = work.astype(float).copy()
    now, nxt = 0.0, 0
    busy: list[int] = []  # instances with a request in service
    while nxt < len(arrival) or busy:
        rate = min(1.0, cores / len(busy)) if busy else 1.0
        heads = [queues[k][0] for k in busy]
        finish = now + min(left[i] for i in heads) / rate if heads else np.inf
        if nxt < len(arrival) and arrival[nxt] <= finish:
            _advance(left, heads, rate * (arrival[nxt] - now))
            now = float(arrival[nxt])
            k = int(instance[nxt])
            queue = queues.setdefault(k, deque())
            queue.append(nxt)
            if len(queue) == 1:
                busy.append(k)
            nxt += 1
            continue
        _advance(left, heads, rate * (finish - now))
        now = float(finish)
        first = min(busy, key=lambda k: left[queues[k][0]])  # completes now, whatever the float residue
        for k in [k for k in busy if k == first or left[queues[k][0]] <= 1e-12]:
            done = queues[k].popleft()
            out[done] = 1000.0 * (now - arrival[done])
            if not queues[k]:
                busy.remove(k)
    return out


def _advance(left: FloatArray, heads: list[int], amount: float) -> None:
    for i in heads:
        left[i] -= amount
