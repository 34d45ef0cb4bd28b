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
   ``--overload``: instead, overloaded clusters where every node's cores bind (``overloaded``: 1-4 nodes of
   whole or fractional cores, 1-3 slots an instance or ``--concurrency N`` on every node, 2-3 models,
   1.05-2.5x the rate rho_max of all the cores serves, Mode 1 or 2, queue or queue-p99), each solved with
   repair's rejecting last resort (solver.queue_reject, ``queue_repair.SHED_BY_REJECTING``) off ("before") and
   on ("after") in the same run; where it acts, the change in served rate, integer objective and mean latency.
2. Solve time: bench/queue_bench.py's Mode 1 rows with instances running (thesis sizes, 15 % of (node,
   model) pairs running one instance), CPU ms per whole solve with both off and on, interleaved in the
   same run; medians and the ratio after / before.

    .venv/bin/python bench/bound_sweep.py [--clusters 1000] [--tight] [--seeds 5] [--cores N] [--concurrency N]
        [--overload] [--json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from solver import queue_repair, queue_running, queue_split
from solver.api import solve
from solver.fastlp import tune_solver_process
from solver.problem import Mode, build_problem
from solver.queue_fast import solve_nlp_fast
from solver.queue_model import QueueProblem, build_queue_problem
from solver.queue_plan import integer_part, mean_latency_ms
from solver.queue_repair import Pools
from solver.queueing import RHO_MAX
from solver.snapshot import Model, Node, Request, Snapshot
from solver.tail_cap import with_tail_cap


def switch(on: bool) -> None:
    """The steps for the bound in Mode 1 on (after) or off (before): the drain, the split's check, and the
    rejecting last resort (reached only where the others fail, so the sweep's figures stay comparable)."""
    queue_running.ENABLED = on
    queue_split.KEEP_BOUND = on
    queue_repair.SHED_BY_REJECTING = on


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


def overloaded(
    integer: Callable[[int, int], int], real: Callable[[float, float], float]
) -> tuple[Snapshot, Mode, bool]:
    """An overloaded cluster (``--overload``): 1-4 nodes of whole (1-4) or fractional (0.3-4) cores, each
    instance 1-3 slots, one or two node classes; 2-3 models of 20-400 req/s a core; 2-8 streams offering
    1.05-2.5x the requests rho_max of all the cores serves; Mode 1 (0-2 instances of each model running) or
    Mode 2; queue or queue-p99. ``integer(lo, hi)`` and ``real(lo, hi)`` draw (numpy's rng or hypothesis).
    Memory is ample, so every node's cores bind. Returns (snapshot, mode, tail cap)."""
    n_nodes, n_models = integer(1, 4), integer(2, 3)
    mode, tail = (Mode.MODE1 if integer(0, 1) else Mode.MODE2), bool(integer(0, 1))
    cores = [float(integer(1, 4)) if integer(0, 1) else round(real(0.3, 4.0), 2) for _ in range(n_nodes)]
    nodes = tuple(
        Node(
            f"n{j}", 2048.0, 2048.0, 100.0,
            {f"m{k}": integer(0, 2) for k in range(n_models)} if mode is Mode.MODE1 else {}, {},
            ("nano", "orin")[integer(0, 1)], cores=cores[j], concurrency=float(integer(1, 3)),
        )
        for j in range(n_nodes)
    )  # fmt: skip
    mu = [real(20.0, 400.0) for _ in range(n_models)]
    models = tuple(Model(f"m{k}", 100.0, 1.0, {"default": mu[k]}) for k in range(n_models))
    ids = [n.id for n in nodes]
    streams = [
        (integer(0, n_models - 1), real(0.05, 1.0), [real(0.5, 100.0) for _ in ids]) for _ in range(integer(2, 8))
    ]
    busy = sum(w / mu[k] for k, w, _ in streams)  # core-seconds per second per unit of weight
    scale = real(1.05, 2.5) * RHO_MAX * sum(cores) / busy  # past what rho_max of every core serves
    reqs = tuple(
        Request(f"m{k}", dict(zip(ids, rtt, strict=True)), dict.fromkeys(ids, 2.0), f"c{i}", w * scale)
        for i, (k, w, rtt) in enumerate(streams)
    )
    return Snapshot(nodes, models, reqs), mode, tail


def overloaded_seed(seed: int) -> tuple[Snapshot, Mode, bool]:
    """``overloaded`` drawn by numpy's rng from ``seed``."""
    rng = np.random.default_rng(seed + 2 * 10**6)
    return overloaded(lambda lo, hi: int(rng.integers(lo, hi + 1)), lambda lo, hi: float(rng.uniform(lo, hi)))


def with_concurrency(snap: Snapshot, concurrency: int) -> Snapshot:
    """``snap`` with every node's instances serving up to ``concurrency`` requests at once (1: as generated)."""
    if concurrency == 1:
        return snap
    nodes = tuple(dataclasses.replace(n, concurrency=float(concurrency)) for n in snap.nodes)
    return dataclasses.replace(snap, nodes=nodes)


def final_pools(q: QueueProblem) -> Pools:
    """The integer placement the plan is made of (solver.queue_plan.integer_part, every step)."""
    return integer_part(q, solve_nlp_fast(q))[0]


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


def overload_sweep(n: int, concurrency: int | None = None) -> dict[str, Any]:
    """``n`` overloaded clusters (``overloaded_seed``; ``concurrency``: every node's slots, None as drawn), each
    solved the plan's way with step 4's rejecting last resort (solver.queue_reject) off and on in the same run:
    clusters and instances past the bound, served rate, CPU, and on the clusters where the resort acts the
    change in served rate, integer objective and mean latency."""
    from solver.queue_close import integer_objective

    out: dict[str, Any] = {"clusters": n, "overload": True, "concurrency": concurrency, "errors": 0}
    out["changed_within_bound"] = 0  # clusters whose plan changed although it kept the bound before
    for tag in ("before", "after"):
        out[tag] = {"clusters_past_bound": 0, "instances_past_bound": 0, "served_rps": 0.0, "cpu_s": 0.0}
    acted: list[dict[str, float]] = []
    for seed in range(n):
        snap, mode, tail = overloaded_seed(seed)
        if concurrency is not None:
            snap = dataclasses.replace(snap, nodes=tuple(dataclasses.replace(x, concurrency=float(concurrency))
                                                          for x in snap.nodes))  # fmt: skip
        q = build_queue_problem(build_problem(snap, mode))
        q = with_tail_cap(q) if tail else q
        got: dict[str, Pools] = {}
        try:
            for tag, on in (("before", False), ("after", True)):
                queue_repair.SHED_BY_REJECTING = on
                start = time.process_time()
                got[tag] = pools = final_pools(q)
                row = out[tag]
                row["cpu_s"] += time.process_time() - start
                excess = past_bound(pools)
                row["clusters_past_bound"] += excess > 0
                row["instances_past_bound"] += excess
                row["served_rps"] += float(pools.x.sum())
        except Exception:  # a solver failure is counted, the sweep goes on
            out["errors"] += 1
            continue
        finally:
            queue_repair.SHED_BY_REJECTING = True
        same = np.array_equal(got["after"].x, got["before"].x) and np.array_equal(got["after"].cap, got["before"].cap)
        out["changed_within_bound"] += not same and past_bound(got["before"]) == 0  # must stay 0
        if got["after"].rejected_for_bound > 0:
            b, a = got["before"], got["after"]
            acted.append({"seed": seed, "rejected_for_bound_rps": a.rejected_for_bound,
                          "served_change_rps": float(a.x.sum() - b.x.sum()), "offered_rps": float(q.rate.sum()),
                          "objective_ratio": integer_objective(a) / integer_objective(b),
                          "latency_ratio": mean_latency_ms(q, a) / mean_latency_ms(q, b)})  # fmt: skip
    out["acted"] = acted
    return out


def overload_report(s: dict[str, Any]) -> str:
    """``overload_sweep``'s figures as text."""
    slots = "1-3 slots as drawn" if s["concurrency"] is None else f"concurrency {s['concurrency']}"
    lines = [f"{s['clusters']} overloaded clusters, {slots} ({s['errors']} solver errors)"]
    for tag in ("before", "after"):
        r = s[tag]
        lines.append(f"  {tag:<6}: {r['clusters_past_bound']} clusters past the bound ({r['instances_past_bound']} "
                     f"instances), served {r['served_rps']:.1f} req/s, CPU {r['cpu_s']:.2f} s")  # fmt: skip
    acted = s["acted"]
    lines.append(f"  the rejecting last resort acted in {len(acted)} clusters; plans changed where the bound "
                 f"held before: {s['changed_within_bound']}")  # fmt: skip
    if acted:

        def stat(key: str) -> str:
            values = [a[key] for a in acted]
            return f"median {statistics.median(values):.6g}, min {min(values):.6g}, max {max(values):.6g}"

        lines.append(f"    rejected for the bound (req/s): {stat('rejected_for_bound_rps')}")
        lines.append(f"    served after - before (req/s): {stat('served_change_rps')}; offered {stat('offered_rps')}")
        lines.append(f"    integer objective after / before: {stat('objective_ratio')}")
        lines.append(f"    mean latency after / before: {stat('latency_ratio')}")
    return "\n".join(lines)


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
    ap.add_argument("--concurrency", type=int, default=None,
                    help="requests one instance serves at once, at most its node's cores (default 1; "
                         "--overload: 1-3 as drawn)")  # fmt: skip
    ap.add_argument("--overload", action="store_true",
                    help="overloaded clusters with every node's cores binding; before/after = step 4's rejecting "
                         "last resort off/on (no solve-time part)")  # fmt: skip
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = ap.parse_args()
    if args.concurrency is not None and not 1 <= args.concurrency <= 1024:
        ap.error("--concurrency must be 1-1024")
    tune_solver_process()
    if args.overload:
        over = overload_sweep(args.clusters, args.concurrency)
        print(json.dumps(over, indent=1) if args.json else overload_report(over))
        return
    args.concurrency = args.concurrency or 1
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
