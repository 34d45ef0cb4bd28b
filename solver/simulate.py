"""Reproduce the thesis's Chapter 6 simulation: random instances, methods compared, solve times.

Table 6.1's defaults: 25 requests, 10 nodes, 4 models, execution time 0.1-0.8 s, RTT 0.1-0.5 s,
available RAM 10,000-500,000 KB, total RAM 30,000-800,000 KB (1 MB = 1,024 KB here).

Choices the thesis leaves open, fixed here and documented:

* model memory 10, 20, 30 and 40 MB (``MODEL_MEM_MB``): 25 requests need ~0.6 GB (50 need ~1.25 GB)
  against ~2.4 GB available over 10 nodes, so memory binds on the smaller nodes (a tenth of them have
  under 60 MB) while the cluster as a whole can serve every request;
* compute: every node 100 units, models 10/15/20/25 units (binds only when many requests pile up);
* execution time and RTT are drawn per (request, node), as independent uniform draws;
* no instance runs before the round, so Mode 1 places into available memory, Mode 2 into total memory.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from solver.api import solve
from solver.snapshot import Model, Node, Request, Snapshot

MODEL_MEM_MB = (10.0, 20.0, 30.0, 40.0)
MODEL_COMPUTE = (10.0, 15.0, 20.0, 25.0)
NODE_COMPUTE = 100.0
METHODS = ("ipopt-mode1", "ipopt-mode2", "iterative", "milp-mode1", "milp-mode2")
SWEEPS = {"requests": [20, 30, 40, 50], "nodes": [5, 10, 15, 20]}
DEFAULT_REQUESTS = 25
DEFAULT_NODES = 10


def thesis_instance(requests: int, nodes: int, seed: int, models: int = 4) -> Snapshot:
    """One random instance with Table 6.1's ranges."""
    rng = np.random.default_rng(seed)
    node_ids = [f"n{j + 1}" for j in range(nodes)]
    avail_kb = rng.uniform(10_000, 500_000, nodes)
    total_kb = np.maximum(rng.uniform(30_000, 800_000, nodes), avail_kb)
    node_list = tuple(
        Node(nid, float(avail_kb[j] / 1024), float(total_kb[j] / 1024), NODE_COMPUTE) for j, nid in enumerate(node_ids)
    )
    model_list = tuple(
        Model(f"m{k + 1}", MODEL_MEM_MB[k % len(MODEL_MEM_MB)], MODEL_COMPUTE[k % len(MODEL_COMPUTE)])
        for k in range(models)
    )
    exec_ms = rng.uniform(100, 800, (requests, nodes))
    rtt_ms = rng.uniform(100, 500, (requests, nodes))
    kinds = rng.integers(0, models, requests)
    reqs = tuple(
        Request(
            model=model_list[int(kinds[i])].name,
            rtt_ms={nid: float(rtt_ms[i, j]) for j, nid in enumerate(node_ids)},
            exec_ms={nid: float(exec_ms[i, j]) for j, nid in enumerate(node_ids)},
            client=f"c{i + 1}",
        )
        for i in range(requests)
    )
    return Snapshot(nodes=node_list, models=model_list, requests=reqs)


def site_instance(requests: int, nodes: int, sites: int, seed: int, models: int = 4) -> Snapshot:
    """A large instance where clients sit at ``sites`` places (RTT depends on the site, not the client)."""
    rng = np.random.default_rng(seed)
    node_ids = [f"n{j + 1}" for j in range(nodes)]
    site_rtt = rng.uniform(1, 50, (sites, nodes)).round(1)
    exec_ms = rng.uniform(10, 200, (models, nodes)).round(1)
    node_list = tuple(Node(nid, 4096.0, 8192.0, 1000.0) for nid in node_ids)
    model_list = tuple(Model(f"m{k + 1}", 100.0 + 50 * k, 10.0 + 5 * k) for k in range(models))
    where = rng.integers(0, sites, requests)
    kinds = rng.integers(0, models, requests)
    reqs = tuple(
        Request(
            model=model_list[int(kinds[i])].name,
            rtt_ms={nid: float(site_rtt[where[i], j]) for j, nid in enumerate(node_ids)},
            exec_ms={nid: float(exec_ms[kinds[i], j]) for j, nid in enumerate(node_ids)},
        )
        for i in range(requests)
    )
    return Snapshot(nodes=node_list, models=model_list, requests=reqs)


@dataclass(frozen=True)
class Point:
    """One (instance, method) result."""

    vary: str
    requests: int
    nodes: int
    seed: int
    method: str
    objective: float
    solve_ms: float
    feasible: bool
    rejected: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "vary": self.vary,
            "requests": self.requests,
            "nodes": self.nodes,
            "seed": self.seed,
            "method": self.method,
            "objective": round(self.objective, 6),
            "solve_ms": round(self.solve_ms, 3),
            "feasible": self.feasible,
            "rejected": self.rejected,
        }


def run_method(snapshot: Snapshot, method: str) -> tuple[float, float, bool, int]:
    """(objective, solve_ms, feasible, rejected) of a simulation method name like ``ipopt-mode1``."""
    base, _, mode = method.partition("-mode")
    plan = solve(snapshot, method=base, mode=mode or "1")
    return plan.objective_ms, plan.solve_ms, plan.feasible, len(plan.rejected)


def sweep(vary: str, seeds: int, methods: tuple[str, ...] = METHODS) -> Iterator[Point]:
    """Every (size, seed, method) point of the sweep, in order."""
    for size in SWEEPS[vary]:
        requests = size if vary == "requests" else DEFAULT_REQUESTS
        nodes = size if vary == "nodes" else DEFAULT_NODES
        for seed in range(seeds):
            snapshot = thesis_instance(requests, nodes, seed)
            for method in methods:
                objective, solve_ms, feasible, rejected = run_method(snapshot, method)
                yield Point(vary, requests, nodes, seed, method, objective, solve_ms, feasible, rejected)


def sweep_size(vary: str, seeds: int, methods: tuple[str, ...] = METHODS) -> int:
    return len(SWEEPS[vary]) * seeds * len(methods)


def warm_up() -> dict[str, float]:
    """Import and initialise every solver once, so the sweep's timings exclude imports; ms per method."""
    snapshot = thesis_instance(DEFAULT_REQUESTS, DEFAULT_NODES, 0)
    return {method: run_method(snapshot, method)[1] for method in METHODS}


def summarise(points: list[Point]) -> list[dict[str, Any]]:
    """Rows per (size, method): mean objective, median solve time, feasible share, rejections."""
    groups: dict[tuple[int, str], list[Point]] = {}
    for pt in points:
        size = pt.requests if pt.vary == "requests" else pt.nodes
        groups.setdefault((size, pt.method), []).append(pt)
    rows = []
    for (size, method), pts in sorted(groups.items(), key=lambda kv: (kv[0][0], METHODS.index(kv[0][1]))):
        rows.append(
            {
                "size": size,
                "method": method,
                "objective_mean": statistics.fmean(p.objective for p in pts),
                "solve_ms_median": statistics.median(p.solve_ms for p in pts),
                "feasible_share": sum(p.feasible for p in pts) / len(pts),
                "rejected": sum(p.rejected for p in pts),
            }
        )
    return rows


def quality(points: list[Point]) -> dict[str, float]:
    """Average gaps per instance: Ipopt Mode 1 vs the MILP optimum, and vs iterative search."""
    by_instance: dict[tuple[int, int, int], dict[str, Point]] = {}
    for pt in points:
        by_instance.setdefault((pt.requests, pt.nodes, pt.seed), {})[pt.method] = pt
    gaps, gains = [], []
    for methods in by_instance.values():
        ip, mi, it = methods.get("ipopt-mode1"), methods.get("milp-mode1"), methods.get("iterative")
        comparable = ip is not None and mi is not None and ip.rejected == mi.rejected
        if comparable and ip is not None and mi is not None and mi.objective > 0:
            gaps.append(100.0 * (ip.objective - mi.objective) / mi.objective)
        if ip is not None and it is not None and it.objective > 0 and ip.rejected == 0:
            gains.append(100.0 * (it.objective - ip.objective) / it.objective)
    return {
        "ipopt_mode1_gap_to_milp_pct": statistics.fmean(gaps) if gaps else float("nan"),
        "ipopt_mode1_below_iterative_pct": statistics.fmean(gains) if gains else float("nan"),
        "instances": float(len(by_instance)),
    }


ProgressFactory = Callable[[int], Any]
