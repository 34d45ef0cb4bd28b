"""What the published planned queue changes for the agents' p2c rule: two models sharing a node (issue 16 item 2).

The lab: node n0 (3.74 cores) runs the review's repro, model A on 4 instances at 223.15 req/s (mu 69.64) beside
model B's one instance (mu 357.84); node n1 (3.74 cores) runs B's second instance. B's 115.74 req/s are planned
half on each node; A's all on n0. One site, equally near both nodes, sends through n0's agent (its live queues
are all the requests in flight). Every request is chosen by the agent's rule (solver/agent_sim.py AgentDispatch:
p2c on (1 + live) / (1 + planned queue)), with the planned queue per node computed the plan's way
(solver.cpu_speed.published_load) from the scheduler model (``sched``) or by load (``by_load``, the figure before):
by load B's instance on n0 is planned at 9 requests, so B's live queue there looks empty and p2c draws B to the
busy node. Same arrivals, work and draws for both; the node's cores shared as in the simulation
(solver/agent_sim.py's engine). Prints p50 / p99 per model and B's fraction served on n0, per seed.

    .venv/bin/python bench/two_model_p2c_bench.py [--duration 120] [--seeds 3] [--json]
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import numpy as np

from solver import cpu_speed
from solver.agent_sim import AgentDispatch, event_sojourn_ms
from solver.cpu_speed import published_load
from solver.queueing import requests_at_instance

NODES = ("n0", "n1")
CORES = np.array([3.74, 3.74])
MODELS = ("A", "B")
COUNTS = np.array([[4, 1], [0, 1]])  # [node, model] instances
MU = np.array([[69.64, 357.84], [69.64, 357.84]])  # req/s per instance
RATE = {"A": 223.15, "B": 2 * 57.87}
SHARES = {"A": {"n0": 1.0}, "B": {"n0": 0.5, "n1": 0.5}}


def planned(sched: bool) -> dict[str, dict[str, float]]:
    """Per model, node -> planned queue (one slot) at the plan's rates, by the scheduler model or by load."""
    lam = np.array([[RATE[m] * SHARES[m].get(n, 0.0) for m in MODELS] for n in NODES])
    cpu_speed.PUBLISHED = sched
    try:
        load = published_load(lam, MU, COUNTS, CORES)
    finally:
        cpu_speed.PUBLISHED = True
    return {
        m: {n: requests_at_instance(min(float(load[j, k]), 0.999), 1.0) for j, n in enumerate(NODES) if COUNTS[j, k]}
        for k, m in enumerate(MODELS)
    }


class TwoModels:
    """One AgentDispatch per model (each sees its model as ``m``); instances numbered model by model."""

    def __init__(self, parts: list[AgentDispatch], model_of: list[int]) -> None:
        self.parts, self.model_of = parts, model_of
        sizes = [len(p.endpoints) for p in parts]
        self.offset = np.concatenate([[0], np.cumsum(sizes)]).astype(int).tolist()

    def choose(self, i: int, now: float) -> int:
        m = self.model_of[i]
        k = self.parts[m].choose(i, now)
        return -1 if k < 0 else self.offset[m] + k

    def done(self, i: int, instance: int, now: float, sojourn_ms: float) -> None:
        m = self.model_of[i]
        self.parts[m].done(i, instance - self.offset[m], now, sojourn_ms)


def run(seed: int, duration_s: float, sched: bool) -> dict[str, Any]:
    """One lab run: p50/p99 per model (ms, after a tenth of warm-up) and B's fraction on n0."""
    rng = np.random.default_rng(seed)
    arrivals, model = [], []
    for k, m in enumerate(MODELS):
        t = np.sort(rng.uniform(0.0, duration_s, rng.poisson(RATE[m] * duration_s)))
        arrivals.append(t)
        model.append(np.full(len(t), k))
    order = np.argsort(np.concatenate(arrivals), kind="stable")
    arrival, model_of = np.concatenate(arrivals)[order], np.concatenate(model)[order]
    work = rng.exponential(1.0 / MU[0][model_of])  # the same rate on both nodes
    draws, draws2 = rng.uniform(size=len(arrival)), rng.uniform(size=len(arrival))
    queues = planned(sched)
    client, rtt = np.zeros(len(arrival), dtype=np.int64), np.array([[1.0, 1.0]])
    parts = []
    for k, m in enumerate(MODELS):
        details = {"spread": [{"model": "m", "rtt_ms": dict(zip(NODES, rtt[0].tolist(), strict=True)),
                               "shares": SHARES[m]}],
                   "planned_queue": {n: {"m": v} for n, v in queues[m].items()}}  # fmt: skip
        started = [int(c) for c in COUNTS[:, k]]
        parts.append(AgentDispatch(details, NODES, started, rtt, client, 1000.0 / MU[0, k], draws, draws2))
    dispatch = TwoModels(parts, model_of.tolist())
    node_of = np.concatenate([p.node_index for p in parts]).astype(np.int64)
    where, sojourn = event_sojourn_ms(arrival, work, dispatch, node_of, CORES)
    warm = arrival > 0.1 * duration_s
    out: dict[str, Any] = {"planned_queue": {m: {n: round(v, 3) for n, v in q.items()} for m, q in queues.items()}}
    for k, m in enumerate(MODELS):
        mine = warm & (model_of == k)
        out[m] = {q: round(float(np.percentile(sojourn[mine], p)), 2) for q, p in (("p50", 50), ("p99", 99))}
    b = warm & (model_of == 1)
    out["B_on_n0"] = round(float((node_of[where[b]] == 0).mean()), 3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=120.0, help="simulated seconds per run")
    ap.add_argument("--seeds", type=int, default=3, help="runs per figure (seeds 0..N-1)")
    ap.add_argument("--json", action="store_true", help="one JSON object instead of text")
    args = ap.parse_args()
    rows = [
        {"seed": s, "figure": tag, **run(s, args.duration, tag == "sched")}
        for s in range(args.seeds)
        for tag in ("by_load", "sched")
    ]
    if args.json:
        print(json.dumps(rows))
        return
    for r in rows:
        print(
            f"seed {r['seed']} {r['figure']:8s} planned B@n0 {r['planned_queue']['B']['n0']:6.3f} | "
            f"A p50 {r['A']['p50']:7.2f} p99 {r['A']['p99']:8.2f} | B p50 {r['B']['p50']:6.2f} "
            f"p99 {r['B']['p99']:7.2f} | B on n0 {r['B_on_n0']:.3f}"
        )


if __name__ == "__main__":
    main()
