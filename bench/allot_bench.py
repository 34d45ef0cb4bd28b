"""A node's cores in the plan's figures: the equal split per instance against the allotment by load (issue 16).

1. ``--figures N``: bench/bound_sweep.py's overloaded clusters (seeds 0..N-1, at their rate and at half of it),
   each solved the plan's way (relaxation, repair, closing, moves, best split). Of the plans that pass repair's
   checks (every node's busy work within rho_max of its cores, every pool within rho_max of its instances):
   how many have a pool whose figure's load exceeds rho_max, or a planned queue at the 0.999 cap, with the
   equal split (``solver.node_cpu.effective_servers``), with the allotment by load (``allot_cores``), and with
   the planned queue the plan publishes (``sched``: solver.cpu_speed; the loads by load).
2. ``--sim``: per pool, the plan's mean sojourn (ms, M/M/1 on its servers: ``queue_plan._wait_terms``) and
   mean requests per instance (``planned_queue``) under each split, against the discrete-event simulation of
   the same placement (solver/shared_cores.py: Poisson arrivals at each pool's rate, each request to one of its
   instances uniformly, exponential service, the node's cores shared by the requests in service). Clusters: the
   review's repro (overloaded seed 0 at half its rate) and a few more overloaded seeds at a fraction of their
   rate, every instance with one slot (slots are another matter) and at least one core per node. A third
   column, ``speed``, is a prototype the solver does not use: each instance an M/M/1 at its speed while
   busy, ``v_i = E[min(1, cores / (1 + B_-i))]`` with ``B_-i`` the node's other instances busy (independent,
   each with its utilisation ``u_l``), solved as a fixed point of ``u_i = a_i / (mu_i v_i)``. A fourth,
   ``sched``, is what the plan publishes as ``planned_queue`` (solver.cpu_speed.node_speeds: that fixed point
   floored by the node's work conservation). Besides the plans, ``SHARED_NODES``: single nodes where many
   instances share few cores (where the prototype's independence fails), each simulated the same way.

    .venv/bin/python bench/allot_bench.py [--figures 600] [--sim] [--duration 300] [--json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from typing import Any

import numpy as np

from bench.bound_sweep import final_pools, overloaded_seed
from solver import cpu_speed, node_cpu
from solver.cpu_speed import node_speeds
from solver.node_cpu import allot_cores, effective_servers, node_slots, pool_servers
from solver.problem import build_problem
from solver.queue_model import QueueProblem, build_queue_problem
from solver.queue_plan import _wait_terms, planned_queue
from solver.queue_repair import Pools
from solver.queueing import requests_at_instance
from solver.shared_cores import shared_sojourn_ms
from solver.snapshot import Snapshot
from solver.tail_cap import with_tail_cap

SIM_CASES = ((0, 0.5), (27, 0.5), (32, 0.4), (35, 0.4), (29, 0.4), (1866, 0.5), (1323, 0.5))
# (name, cores, [(instances, rate req/s, mu req/s) per pool]): one node each, many instances on few cores
SHARED_NODES = (
    ("10x1core", 1.0, [(10, 90.0, 100.0)]),
    ("4+1on2", 2.0, [(4, 180.0, 100.0), (1, 5.0, 100.0)]),
    ("5+5on1", 1.0, [(5, 22.5, 50.0), (5, 45.0, 100.0)]),
    ("6+2on3", 3.0, [(6, 240.0, 100.0), (2, 30.0, 200.0)]),
    ("8+1on2", 2.0, [(8, 120.0, 80.0), (1, 40.0, 400.0)]),
)


def scaled(snap: Snapshot, scale: float, one_slot: bool = False) -> Snapshot:
    """``snap`` with every rate times ``scale`` (``one_slot``: every node at concurrency 1 and >= 1 core)."""
    reqs = tuple(dataclasses.replace(r, rate=(r.rate or 0.0) * scale) for r in snap.requests)
    nodes = snap.nodes
    if one_slot:
        nodes = tuple(dataclasses.replace(n, concurrency=1.0, cores=max(n.cores or 1.0, 1.0)) for n in nodes)
    return dataclasses.replace(snap, requests=reqs, nodes=nodes)


def solved(seed: int, scale: float, one_slot: bool = False) -> tuple[QueueProblem, Pools]:
    """The plan's integer placement of overloaded seed ``seed`` at ``scale`` of its rate."""
    snap, mode, tail = overloaded_seed(seed)
    q = build_queue_problem(build_problem(scaled(snap, scale, one_slot), mode))
    q = with_tail_cap(q) if tail else q
    return q, final_pools(q)


def passes_repair(pools: Pools) -> bool:
    """Repair's checks: budgets and cores (``over_budget``) and every pool within rho_max of its instances."""
    lam, counts = pools.state()
    own = lam <= pools.q.rho_max * pools.q.mu * counts * (1 + 1e-6) + 1e-9
    return not pools.over_budget(counts, lam) and bool(np.all(own | (counts == 0)))


def priced_past(pools: Pools) -> bool:
    """Whether some pool's figure (under the current split) is past rho_max or its planned queue at the cap."""
    lam, counts = pools.state()
    _, load = pool_servers(lam, pools.q.mu, counts, pools.cores)
    if float(np.where((counts > 0) & (lam > 0), load, 0.0).max(initial=0.0)) > pools.q.rho_max * (1 + 1e-5):
        return True
    slots = node_slots(pools.q.base)
    queues = planned_queue(pools.q, pools)
    for j, node in enumerate(pools.q.base.node_ids):
        cap = round(requests_at_instance(0.999, float(slots[j])), 6)
        if any(v >= cap for v in queues.get(node, {}).values()):
            return True
    return False


def figures(n: int) -> dict[str, Any]:
    """Part 1 (module docstring): per scale, plans passing repair and those priced past rho_max per split."""
    out: dict[str, Any] = {}
    for scale in (1.0, 0.5):
        row = {"clusters": n, "pass_repair": 0, "equal_split_past": 0, "by_load_past": 0, "sched_past": 0, "errors": 0}
        for seed in range(n):
            try:
                _, pools = solved(seed, scale)
            except Exception:  # a solver failure is counted, the sweep goes on
                row["errors"] += 1
                continue
            if not passes_repair(pools):
                continue
            row["pass_repair"] += 1
            for key, on, published in (("equal_split_past", False, False), ("by_load_past", True, False),
                                       ("sched_past", True, True)):  # fmt: skip
                node_cpu.ALLOT_BY_LOAD, cpu_speed.PUBLISHED = on, published
                row[key] += priced_past(pools)
            node_cpu.ALLOT_BY_LOAD = cpu_speed.PUBLISHED = True
        out[f"scale_{scale}"] = row
    return out


def simulate(pools: Pools, duration_s: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """[j, k] simulated mean sojourn (ms) and mean requests per instance of every busy pool (nan elsewhere)."""
    lam, counts = pools.state()
    return simulate_arrays(lam, pools.q.mu, counts, np.asarray(pools.cores, dtype=float), duration_s, seed)


def simulate_arrays(
    lam: np.ndarray, mu: np.ndarray, counts: np.ndarray, cores: np.ndarray, duration_s: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """``simulate`` on [j, k] rates, service rates and instance counts, [j] cores."""
    rng, counts = np.random.default_rng(seed), np.asarray(counts, dtype=np.int64)
    first = np.concatenate([[0], np.cumsum(counts.ravel())])  # instance ids per pool, row-major
    node_of = np.repeat(np.repeat(np.arange(counts.shape[0]), counts.shape[1]), counts.ravel())
    arrivals, instances, work, pool_of = [], [], [], []
    for j, k in zip(*np.nonzero((lam > 0) & (counts > 0)), strict=True):
        m = rng.poisson(lam[j, k] * duration_s)
        arrivals.append(np.sort(rng.uniform(0.0, duration_s, m)))
        instances.append(first[j * counts.shape[1] + k] + rng.integers(0, counts[j, k], m))
        work.append(rng.exponential(1.0 / mu[j, k], m))
        pool_of.append(np.full(m, j * counts.shape[1] + k))
    arrival, instance, service, pool = (np.concatenate(a) for a in (arrivals, instances, work, pool_of))
    sojourn = shared_sojourn_ms(arrival, instance, service, node_of, cores)
    warm = arrival > 0.1 * duration_s  # the first tenth is the warm-up
    flat = np.full(counts.size, np.nan)
    for p in np.unique(pool).tolist():
        flat[p] = float(sojourn[(pool == p) & warm].mean())
    mean = flat.reshape(counts.shape)
    return mean, lam / np.where(counts > 0, counts, 1) * mean / 1000.0  # Little: per instance


def plan_figures(pools: Pools) -> tuple[np.ndarray, np.ndarray]:
    """[j, k] the plan's mean sojourn (ms) and mean requests per instance under the current split."""
    q = pools.q
    wait, lam = _wait_terms(q, pools)
    sojourn = np.where(lam > 0, (wait + lam * q.service_ms) / np.where(lam > 0, lam, 1.0), np.nan)
    queues = planned_queue(q, pools)
    per = np.full(lam.shape, np.nan)
    for j, node in enumerate(q.base.node_ids):
        for k, m in enumerate(q.base.model_names):
            if m in queues.get(node, {}) and lam[j, k] > 0:
                per[j, k] = queues[node][m]
    return sojourn, per


def busy_count(u: np.ndarray) -> np.ndarray:
    """[b] the probability that ``b`` of independent instances busy with probabilities ``u`` are busy."""
    d = np.zeros(len(u) + 1)
    d[0] = 1.0
    for p in u.tolist():
        d[1:] = d[1:] * (1 - p) + d[:-1] * p
        d[0] *= 1 - p
    return d


def speed_sojourn(a: np.ndarray, mu: np.ndarray, cores: float) -> np.ndarray:
    """[i] mean sojourn (ms) of one node's instances (arrival ``a``, rate ``mu``) under the speed prototype."""
    u, v = np.minimum(a / mu, 0.999), np.ones(len(a))
    for _ in range(200):  # damped fixed point; converges in a few dozen rounds on the bench's nodes
        for i in range(len(a)):
            d = busy_count(np.delete(u, i))
            v[i] = float((d * np.minimum(1.0, cores / (1.0 + np.arange(len(d))))).sum())
        new = np.minimum(a / (mu * v), 0.999)
        if float(np.abs(new - u).max()) < 1e-10:
            break
        u = 0.5 * (u + new)
    return np.asarray(1000.0 / np.maximum(mu * v - a, 1e-9))


def speed_figures(pools: Pools) -> np.ndarray:
    """[j, k] the speed prototype's mean sojourn (ms) of every busy pool (nan elsewhere)."""
    lam, counts = pools.state()
    out = np.full(lam.shape, np.nan)
    for j in range(lam.shape[0]):
        ks = [k for k in range(lam.shape[1]) for _ in range(int(counts[j, k]))]
        if not ks:
            continue
        a = np.array([lam[j, k] / counts[j, k] for k in ks])
        sojourn = speed_sojourn(a, np.array([pools.q.mu[j, k] for k in ks]), float(pools.cores[j]))
        for i, k in enumerate(ks):
            out[j, k] = sojourn[i] if lam[j, k] > 0 else np.nan
    return out


def sim_rows(duration_s: float) -> list[dict[str, Any]]:
    """Part 2 (module docstring): one row per busy pool of every SIM_CASES cluster."""
    rows = []
    for seed, scale in SIM_CASES:
        q, pools = solved(seed, scale, one_slot=True)
        sim_ms, sim_l = simulate(pools, duration_s, seed)
        figs = {}
        cpu_speed.PUBLISHED = False
        for tag, on in (("equal", False), ("load", True)):
            node_cpu.ALLOT_BY_LOAD = on
            figs[tag] = plan_figures(pools)
        node_cpu.ALLOT_BY_LOAD = cpu_speed.PUBLISHED = True
        speed = speed_figures(pools)
        lam, counts = pools.state()
        sched = node_speeds(lam, q.mu, counts, pools.cores)
        for j, k in zip(*np.nonzero((lam > 0) & (counts > 0)), strict=True):
            rows.append({"seed": seed, "scale": scale, "node": q.base.node_ids[j], "model": q.base.model_names[k],
                         "cores": float(pools.cores[j]), "instances": int(counts[j, k]),
                         "rate_rps": round(float(lam[j, k]), 2), "service_ms": round(float(q.service_ms[j, k]), 3),
                         "sim_ms": float(sim_ms[j, k]), "equal_ms": float(figs["equal"][0][j, k]),
                         "load_ms": float(figs["load"][0][j, k]), "speed_ms": float(speed[j, k]),
                         "sched_ms": float(sched.sojourn_ms[j, k]), "sim_l": float(sim_l[j, k]),
                         "equal_l": float(figs["equal"][1][j, k]), "load_l": float(figs["load"][1][j, k]),
                         "sched_l": _queue(float(sched.load[j, k]))})  # fmt: skip
    return rows + shared_rows(duration_s)


def _queue(load: float) -> float:
    """Mean requests at a one-slot instance at ``load`` (planned_queue's figure, capped as there)."""
    return requests_at_instance(min(load, 0.999), 1.0)


def shared_rows(duration_s: float) -> list[dict[str, Any]]:
    """One row per pool of every SHARED_NODES node: the simulation against the four figures."""
    rows = []
    for i, (name, cores, spec) in enumerate(SHARED_NODES):
        n, lam, mu = (np.array([[p[f] for p in spec]], dtype=float) for f in range(3))
        c = np.array([cores])
        sim_ms, sim_l = simulate_arrays(lam, mu, n, c, duration_s, 1000 + i)
        sched = node_speeds(lam, mu, n, c)
        each = n[0].astype(int)
        speed = speed_sojourn(np.repeat(lam[0] / n[0], each), np.repeat(mu[0], each), cores)
        first = np.concatenate([[0], np.cumsum(each)])
        split = {"equal": effective_servers(n, c), "load": allot_cores(lam, mu, n, c)}
        for k in range(n.shape[1]):
            row: dict[str, Any] = {"seed": -1, "scale": 1.0, "node": name, "model": f"m{k}", "cores": cores,
                                   "instances": int(each[k]), "rate_rps": float(lam[0, k]),
                                   "service_ms": 1000.0 / float(mu[0, k]), "sim_ms": float(sim_ms[0, k]),
                                   "speed_ms": float(speed[first[k]]), "sched_ms": float(sched.sojourn_ms[0, k]),
                                   "sim_l": float(sim_l[0, k]), "sched_l": _queue(float(sched.load[0, k]))}  # fmt: skip
            for tag, e in split.items():
                row[f"{tag}_ms"] = _mm1_ms(float(lam[0, k]), float(mu[0, k]), float(e[0, k]))
                row[f"{tag}_l"] = _queue(float(lam[0, k] / (e[0, k] * mu[0, k])))
            rows.append(row)
    return rows


def _mm1_ms(lam: float, mu: float, servers: float) -> float:
    """Mean sojourn (ms) over ``servers`` M/M/1 servers, past 0.999 continued as queue_plan._wait_terms does."""
    t, tm = lam / servers, 0.999 * mu
    gap = mu - min(t, tm)
    g = 1000.0 * min(t, tm) / gap + (1000.0 * mu / gap**2 * (t - tm) if t > tm else 0.0)
    return g / t


def error_summary(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Rate-weighted mean |log(plan / sim)| of the sojourn per split and the prototype (0: exact), and the worst
    ratio."""
    out = {}
    weights = np.array([r["rate_rps"] for r in rows])
    for tag in ("equal", "load", "speed", "sched"):
        ratio = np.array([r[f"{tag}_ms"] / r["sim_ms"] for r in rows])
        out[f"{tag}_mean_abs_log"] = float((weights * np.abs(np.log(ratio))).sum() / weights.sum())
        out[f"{tag}_worst_ratio"] = float(ratio[np.argmax(np.abs(np.log(ratio)))])
    return out


def sim_table(rows: list[dict[str, Any]]) -> str:
    """The per-pool comparison as text."""
    lines = [
        "seed scale node/model   cores  n   rate svc_ms |  sim_ms  equal_ms  load_ms speed_ms sched_ms"
        " |  sim_L equal_L  load_L sched_L"
    ]
    for r in rows:
        lines.append(
            f"{r['seed']:4d} {r['scale']:4.2f} {r['node'] + '/' + r['model']:12s} {r['cores']:4.2f} "
            f"{r['instances']:2d} "
            f"{r['rate_rps']:6.1f} {r['service_ms']:6.2f} | {r['sim_ms']:7.2f} {_num(r['equal_ms']):>9s} "
            f"{r['load_ms']:8.2f} {r['speed_ms']:8.2f} {r['sched_ms']:8.2f} | {r['sim_l']:6.2f} {r['equal_l']:7.2f} "
            f"{r['load_l']:7.2f} {r['sched_l']:7.2f}"
        )
    return "\n".join(lines)


def _num(v: float) -> str:
    return f"{v:.2f}" if v < 1e5 else f"{v:.3g}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--figures", type=int, default=0, help="overloaded clusters for part 1 (0: skip)")
    ap.add_argument("--sim", action="store_true", help="part 2: the plan's figures against the simulation")
    ap.add_argument("--duration", type=float, default=300.0, help="simulated seconds per cluster (part 2)")
    ap.add_argument("--json", action="store_true", help="one JSON object instead of text")
    args = ap.parse_args()
    out: dict[str, Any] = {}
    if args.figures:
        out["figures"] = figures(args.figures)
    if args.sim:
        rows = sim_rows(args.duration)
        out["sim"] = {"rows": rows, "summary": error_summary(rows), "duration_s": args.duration}
    if args.json:
        print(json.dumps(out, default=lambda v: None if isinstance(v, float) and math.isnan(v) else v))
        return
    for key, row in out.get("figures", {}).items():
        print(f"{key}: {row}")
    if "sim" in out:
        print(sim_table(out["sim"]["rows"]))
        print("summary (rate-weighted mean |log plan/sim|, worst plan/sim):", out["sim"]["summary"])


if __name__ == "__main__":
    main()
