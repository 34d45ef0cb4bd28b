"""The scheduler model's cost and error on a node with many instances (solver.cpu_law; issue 16, "worth doing next" 8).

solver.cpu_speed.node_speeds on 50 nodes x 10 models: every node runs ``--others`` instances (spread over the
models), one node runs N (16 / 128 / 512: peerserve.wire.MAX_INSTANCES), loads drawn so that every node's busy work
is ``--load`` of its cores (the fixed point runs its rounds). Per N, in the same run: ms per call with the law read
over every instance (``exact``: cpu_speed.LAW_BOUNDED off, the FFT over the largest node's count) and with the
bounded law (``bounded``), the ratio, fixed-point rounds, the widest array either reads (points on the FFT's last
axis), and the error of the bounded figures against the exact: the largest relative difference in speed and in
planned queue (requests per instance, the figure the agents steer by). ``--sim S``: the large node alone against
the shared-cores simulation (solver/shared_cores.py, S seconds): mean |log(plan / sim)| of the sojourn, both ways.

    .venv/bin/python bench/cpu_law_bench.py [--counts 16 128 512] [--repeat 5] [--sim 60] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

import numpy as np

from solver import cpu_law, cpu_speed
from solver.cpu_speed import node_speeds
from solver.queueing import requests_at_instance

NODES, MODELS = 50, 10


def cluster(big: int, others: int, load: float, seed: int = 0) -> tuple[np.ndarray, ...]:
    """(lam, mu, counts, cores) [j, k]: node 0 runs ``big`` instances, the rest ``others`` each, busy work ``load``
    of the cores, cores a third of each node's instances (so they share)."""
    rng = np.random.default_rng(seed)
    counts = np.stack([rng.multinomial(big if j == 0 else others, np.full(MODELS, 1.0 / MODELS)) for j in range(NODES)])
    mu = rng.uniform(20.0, 400.0, (NODES, MODELS))
    cores = np.maximum(counts.sum(axis=1) / 3.0, 1.0)
    weight = rng.uniform(0.2, 1.0, (NODES, MODELS)) * counts
    busy = weight / np.maximum(weight.sum(axis=1, keepdims=True), 1e-12) * (load * cores)[:, None]  # core-s per s
    return busy * mu, mu, counts.astype(float), cores


def _timed(lam: np.ndarray, mu: np.ndarray, n: np.ndarray, c: np.ndarray, bounded: bool, repeat: int) -> Any:
    """(best ms of ``repeat`` calls, the figures, the widest FFT) with the law bounded or not."""
    cpu_speed.LAW_BOUNDED = bounded
    widest = [0]
    real_fft = np.fft.fft

    def spy(a: Any, *args: Any, **kwargs: Any) -> Any:
        widest[0] = max(widest[0], int(np.shape(a)[-1]))
        return real_fft(a, *args, **kwargs)

    best = np.inf
    try:
        for _ in range(repeat):
            t0 = time.perf_counter()
            f = node_speeds(lam, mu, n, c)
            best = min(best, 1000.0 * (time.perf_counter() - t0))
        np.fft.fft = spy
        node_speeds(lam, mu, n, c)
    finally:
        np.fft.fft = real_fft
        cpu_speed.LAW_BOUNDED = True
    return best, f, widest[0]


def row(big: int, others: int, load: float, repeat: int) -> dict[str, Any]:
    """One N's figures (module docstring)."""
    lam, mu, n, c = cluster(big, others, load)
    exact_ms, exact, exact_pts = _timed(lam, mu, n, c, False, repeat)
    bounded_ms, bounded, bounded_pts = _timed(lam, mu, n, c, True, repeat)
    on = (n > 0) & (lam > 0)
    queue = [requests_at_instance(f.load, 1.0) for f in (exact, bounded)]
    return {
        "instances": big,
        "exact_ms": round(exact_ms, 2),
        "bounded_ms": round(bounded_ms, 2),
        "ratio": round(bounded_ms / exact_ms, 3),
        "rounds": [exact.rounds, bounded.rounds],
        "fft_points": [exact_pts, bounded_pts],
        "speed_rel_err": float(np.max(np.abs(bounded.speed - exact.speed) / exact.speed)),
        "queue_rel_err": float(np.max(np.abs(queue[1] - queue[0])[on] / np.maximum(queue[0][on], 1e-12))),
    }


def sim_row(big: int, load: float, duration: float) -> dict[str, Any]:
    """The large node alone: plan sojourns (exact law, bounded law) against the shared-cores simulation."""
    from bench.allot_bench import simulate_arrays

    lam, mu, n, c = (a[:1] for a in cluster(big, 16, load))
    sim, _ = simulate_arrays(lam, mu, n, c, duration, 1)
    on = (n > 0) & (lam > 0)
    w = lam[on]
    out: dict[str, Any] = {"instances": big}
    for name, flag in (("exact", False), ("bounded", True)):
        cpu_speed.LAW_BOUNDED = flag
        plan = node_speeds(lam, mu, n, c).sojourn_ms
        out[f"{name}_vs_sim"] = round(float((w * np.abs(np.log(plan[on] / sim[on]))).sum() / w.sum()), 4)
    cpu_speed.LAW_BOUNDED = True
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--counts", type=int, nargs="+", default=[16, 128, 512], help="instances on the large node")
    ap.add_argument("--others", type=int, default=16, help="instances on every other node")
    ap.add_argument("--load", type=float, default=0.85, help="busy work over cores on every node")
    ap.add_argument("--repeat", type=int, default=5, help="calls per figure (the best is kept)")
    ap.add_argument("--sim", type=float, default=0.0, help="seconds of shared-cores simulation of the large node")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    a = ap.parse_args(argv)
    rows = [row(big, a.others, a.load, a.repeat) for big in a.counts]
    sims = [sim_row(big, a.load, a.sim) for big in a.counts] if a.sim > 0 else []
    load = os.getloadavg()[0]
    if a.json:
        print(json.dumps({"rows": rows, "sim": sims, "loadavg": load, "exact_max": cpu_law.EXACT_MAX}))
        return 0
    print(f"{NODES} nodes x {MODELS} models, others {a.others} instances, load {a.load}; loadavg {load:.2f}")
    heads = ("N", "exact ms", "bounded", "ratio", "rounds", "fft pts", "speed err", "queue err")
    print(" ".join(f"{h:>{w}}" for h, w in zip(heads, (5, 9, 9, 6, 9, 9, 10, 10), strict=True)))
    for r in rows:
        print(f"{r['instances']:>5} {r['exact_ms']:>9.2f} {r['bounded_ms']:>9.2f} {r['ratio']:>6.3f} "
              f"{'/'.join(map(str, r['rounds'])):>9} {'/'.join(map(str, r['fft_points'])):>9} "
              f"{r['speed_rel_err']:>10.1e} {r['queue_rel_err']:>10.1e}")  # fmt: skip
    for s in sims:
        print(f"N {s['instances']}: mean |log plan/sim| exact {s['exact_vs_sim']}, bounded {s['bounded_vs_sim']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
