"""Issue 16 item 5 in Mode 1 with running instances: the instance bound on random clusters, drain on and off.

1. Sweep: ``--clusters`` seeded random clusters (up to 5 nodes of two classes, 0-2 instances of each of
   1-3 models running, memory available from none to 2 GB, 1-12 streams of 0.1-400 req/s, half of them
   under the p99 tail cap; the generator of tests/unit/test_solver_queue_placement.py's ``instances``) solved
   in Mode 1 the plan's way (relaxation, repair, pool closing, instance moves, best split). A cluster breaks
   the bound where some model and node class serve with more instances than the class's need at
   ``rho_max`` plus one spare. Each cluster is solved with repair's drain of running pools
   (solver.queue_running) and the best split's bound check (solver.queue_split.KEEP_BOUND) off ("before")
   and on ("after") in the same run; also the instances kept running idle, the served rate and the
   mean latency of both. ``--tight``: the same clusters with 1-4 cores per node, 0-300 MB available and 0-3
   instances of each model running. ``--concurrency N``: every node's instances serve up to N requests at once
   (slots: N, at most the node's cores), so the need counts ``slots x mu`` per instance (the queue model's
   ``mu``, solver.queue_model.build_queue_problem).
2. Solve time: bench/queue_bench.py's Mode 1 rows with instances running (thesis sizes, 15 % of (node,
   model) pairs running one instance), CPU ms per whole solve with both off and on, interleaved in the
   same run; medians and the ratio after / before.

    .venv/bin/python bench/bound_sweep.py [--clusters 1000] [--tight] [--seeds 5] [--cores N] [--concurrency N]
        [--json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import time
from typing import Any

import numpy as np

from solver import queue_running, queue_split
from solver.api import solve
from solver.fastlp import tune_solver_process
from solver.problem import Mode, build_problem
from solver.queue_close_fast import close_pools_fast
from solver.queue_fast import solve_nlp_fast
from solver.queue_model import QueueProblem, build_queue_problem
from solver.queue_move import move_instances
from solver.queue_plan import mean_latency_ms
from solver.queue_repair import Pools, repair
from solver.queue_split import best_split
from solver.snapshot import Model, Node, Request, Snapshot
from solver.tail_cap import with_tail_cap


def switch(on: bool) -> None:
    """Today's two steps for the bound in Mode 1 on (after) or off (before)."""
    queue_running.ENABLED = on
    queue_split.KEEP_BOUND = on


def cluster(seed: int) -> tuple[Snapshot, bool]:
    """One random Mode 1 cluster with running instances (module docstring) and whether to tail-cap it."""
    rng = np.random.default_rng(seed)
    n_nodes, n_models = int(rng.integers(1, 6)), int(rng.integers(1, 4))
    nodes = []
    for j in range(n_nodes):
        mem = float(rng.uniform(0.0, 2000.0))
        running = {f"m{k}": int(rng.integers(0, 3)) for k in range(n_models)}
        cls = ("nano", "orin")[int(rng.integers(0, 2))]
        nodes.append(
            Node(f"n{j}", mem, mem + float(rng.uniform(0, 1000)), float(rng.uniform(10, 100)), running, {}, cls)
        )
    models = tuple(
        Model(f"m{k}", float(rng.uniform(50, 400)), float(rng.uniform(1, 20)), {"default": float(rng.uniform(20, 500))})
        for k in range(n_models)
    )
    reqs = tuple(
        Request(
            f"m{int(rng.integers(0, n_models))}",
            {n.id: float(rng.uniform(0.5, 300.0)) for n in nodes},
            {n.id: 2.0 for n in nodes},
            f"c{i}",
            float(rng.uniform(0.1, 400.0)),
        )
        for i in range(int(rng.integers(1, 13)))
    )
    return Snapshot(tuple(nodes), models, reqs), bool(seed % 2)


def tight(snap: Snapshot, seed: int) -> Snapshot:
    """The cluster with 1-4 cores per node, 0-300 MB available and 0-3 instances of each model running."""
    rng = np.random.default_rng(seed + 10**6)
    nodes = tuple(
        dataclasses.replace(
            n, cores=float(rng.integers(1, 5)), mem_available_mb=min(n.mem_total_mb, float(rng.uniform(0, 300))),
            instances={m: int(rng.integers(0, 4)) for m in n.instances},
        )
        for n in snap.nodes
    )  # fmt: skip
    return dataclasses.replace(snap, nodes=nodes)


def with_concurrency(snap: Snapshot, concurrency: int) -> Snapshot:
    """``snap`` with every node's instances serving up to ``concurrency`` requests at once (1: as generated)."""
    if concurrency == 1:
        return snap
    nodes = tuple(dataclasses.replace(n, concurrency=float(concurrency)) for n in snap.nodes)
    return dataclasses.replace(snap, nodes=nodes)


def final_pools(q: QueueProblem) -> Pools:
    """The integer placement the plan is made of (solver.queue_plan._solve's steps)."""
    nlp = solve_nlp_fast(q)
    pools = repair(q, nlp.x, nlp.r, nlp.n)
    close_pools_fast(pools)
    move_instances(pools)
    best_split(pools)
    return pools


def past_bound(pools: Pools) -> int:
    """Instances with traffic past the bound, summed over models and node classes."""
    q = pools.q
    lam, counts = pools.lam(), pools.counts()
    out = 0
    for k in range(len(q.base.model_names)):
        for g in set(q.node_class):
            nodes = [j for j in range(q.base.n_nodes) if q.node_class[j] == g]
            need = math.ceil(sum(lam[j, k] / (q.rho_max * q.mu[j, k]) for j in nodes) - 1e-9)
            out += max(0, int(sum(counts[j, k] for j in nodes)) - need - 1)
    return out


def sweep(n: int, tighter: bool = False, concurrency: int = 1) -> dict[str, Any]:
    """Clusters past the bound, idle running instances, served rate and mean latency with the drain off/on."""
    out: dict[str, Any] = {"clusters": n, "tight": tighter, "concurrency": concurrency, "errors": 0}
    for tag in ("before", "after"):
        out[tag] = {"clusters_past_bound": 0, "instances_past_bound": 0, "idle_running": 0, "served_rps": 0.0}
    worse = []
    for seed in range(n):
        snap, tail = cluster(seed)
        snap = with_concurrency(tight(snap, seed) if tighter else snap, concurrency)
        q = build_queue_problem(build_problem(snap, Mode.MODE1))
        q = with_tail_cap(q) if tail else q
        lat = {}
        try:
            for tag, on in (("before", False), ("after", True)):
                switch(on)
                pools = final_pools(q)
                excess = past_bound(pools)
                row = out[tag]
                row["clusters_past_bound"] += excess > 0
                row["instances_past_bound"] += excess
                row["idle_running"] += int(np.maximum(q.base.free - pools.counts(), 0).sum())
                row["served_rps"] += float(pools.x.sum())
                lat[tag] = mean_latency_ms(q, pools)
        except Exception:  # a solver failure is counted, the sweep goes on
            out["errors"] += 1
            continue
        finally:
            switch(True)
        if lat["before"] > 0 and not math.isclose(lat["after"], lat["before"], rel_tol=1e-9):
            worse.append(lat["after"] / lat["before"])
    out["changed_latency_clusters"] = len(worse)
    out["changed_latency_ratio_median"] = statistics.median(worse) if worse else 1.0
    out["changed_latency_ratio_max"] = max(worse) if worse else 1.0
    return out


def solve_times(seeds: int, cores: float = 0.0, concurrency: int = 1) -> list[dict[str, Any]]:
    """CPU ms per whole Mode 1 solve with instances running, both steps off and on interleaved (medians);
    ``cores``: every node gets that many (0: none; bench/queue_bench.py's ``--cores``); ``concurrency``: slots."""
    from bench.queue_bench import SIZES, with_cores, with_running
    from solver.simulate import thesis_instance

    rows = []
    for r, n in SIZES:
        snaps = [
            with_concurrency(with_cores(with_running(thesis_instance(r, n, s), s), cores or None), concurrency)
            for s in range(seeds)
        ]
        for objective in ("queue", "queue-p99"):
            times: dict[bool, list[float]] = {False: [], True: []}
            for snap in snaps:
                for on in (False, True, False, True):  # first pair warms up
                    switch(on)
                    start = time.process_time()
                    solve(snap, mode="1", objective=objective)
                    times[on].append(1000.0 * (time.process_time() - start))
            switch(True)
            before = statistics.median(times[False][1::2])
            after = statistics.median(times[True][1::2])
            rows.append({"size": f"{r} x {n}", "objective": objective, "before_ms": before, "after_ms": after,
                         "ratio": after / before})  # fmt: skip
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clusters", type=int, default=1000, help="random clusters in the sweep (default 1000)")
    ap.add_argument("--seeds", type=int, default=5, help="snapshots per size in the solve-time part (default 5)")
    ap.add_argument("--cores", type=float, default=0.0, help="cores per node in the solve-time part (0: none)")
    ap.add_argument("--tight", action="store_true",
                    help="clusters with 1-4 cores a node, 0-300 MB available, 0-3 instances running")  # fmt: skip
    ap.add_argument("--concurrency", type=int, default=1,
                    help="requests one instance serves at once, at most its node's cores (default 1)")  # fmt: skip
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = ap.parse_args()
    if not 1 <= args.concurrency <= 1024:
        ap.error("--concurrency must be 1-1024")
    tune_solver_process()
    result = {
        "sweep": sweep(args.clusters, args.tight, args.concurrency),
        "solve": solve_times(args.seeds, args.cores, args.concurrency) if args.seeds else [],
    }
    if args.json:
        print(json.dumps(result, indent=1))
        return
    s = result["sweep"]
    what = "tight (cores, little memory, more running)" if s["tight"] else "with running instances"
    print(f"{s['clusters']} Mode 1 clusters, {what}, concurrency {s['concurrency']} ({s['errors']} solver errors)")
    for tag in ("before", "after"):
        r = s[tag]
        print(f"  {tag:<6}: {r['clusters_past_bound']} clusters past the bound "
              f"({r['instances_past_bound']} instances), {r['idle_running']} running instances idle, "
              f"served {r['served_rps']:.1f} req/s")  # fmt: skip
    print(f"  mean latency changed in {s['changed_latency_clusters']} clusters: after / before median "
          f"{s['changed_latency_ratio_median']:.3f} max {s['changed_latency_ratio_max']:.3f}")  # fmt: skip
    if result["solve"]:
        print(f"{'size':<12}{'objective':>11}{'before ms':>11}{'after ms':>10}{'after / before':>16}")
        for row in result["solve"]:
            print(f"{row['size']:<12}{row['objective']:>11}{row['before_ms']:>11.1f}{row['after_ms']:>10.1f}"
                  f"{row['ratio']:>16.3f}")  # fmt: skip
        ratios = [row["ratio"] for row in result["solve"]]
        print(f"after / before: median {statistics.median(ratios):.3f}, max {max(ratios):.3f}")


if __name__ == "__main__":
    main()
