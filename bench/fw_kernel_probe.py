"""Probe for issue 16's open option (a): the best split's Frank-Wolfe run as one compiled kernel, against numpy.

Not a part of the solver and not a dependency: it needs numba (``pip install numba``; it exits with a note
where numba is missing). On the thesis's cases at ``--cores`` per node it takes each plan's counts after
repair, pool closing and the move pass, runs ``solver.queue_split._SplitFlow.run`` (numpy) and the same steps
compiled (``fw_run``: the pool terms, the cheapest vertex, the safeguarded Newton line search of
``queue_split.newton`` with ``LAZY_END``), and prints the CPU ms per run, the speed-up, the compile time and how
far the two splits' objectives are apart. The compiled sums run in loop order, not numpy's pairwise order,
and the pool rates are not BLAS's product, so the splits agree to rounding, not bit for bit. ``--whole`` also
times the whole integer part (bench/queue_integer_bench.py's ``measure``) with numpy's runs and then with every
Frank-Wolfe run compiled (``_SplitFlow.run`` replaced for the process; the move tries one at a time, as
``queue_move.BATCH`` off runs them): ms per phase, integer / LP, and how far the plans' objectives move.

    .venv/bin/python bench/fw_kernel_probe.py [--cores N] [--seeds N] [--reps N] [--whole]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np


def kernels() -> Any:
    """The compiled Frank-Wolfe run (numba imported here, so that --help works without it)."""
    import numba

    jit: Callable[[Any], Any] = numba.njit(cache=False)

    @jit
    def along(lam: Any, dlam: Any, a: float, f: Any, linear: float) -> Any:
        n, on, mu, service, top = f
        s, h = linear, 0.0
        for j in range(lam.shape[0]):
            for k in range(lam.shape[1]):
                if on[j, k] and dlam[j, k] != 0.0:
                    t = min((lam[j, k] + a * dlam[j, k]) / n[j, k], top[j, k])
                    gap = mu[j, k] - t
                    d1 = 1000.0 * mu[j, k] / (gap * gap)
                    s += dlam[j, k] * (d1 - service[j, k])
                    if t < top[j, k]:
                        h += dlam[j, k] * dlam[j, k] * 2.0 * d1 / (gap * n[j, k])
        return s, h

    @jit
    def pools(lam: Any, f: Any, slope: Any, second: Any) -> Any:
        n, on, mu, service, top = f
        value = 0.0
        for j in range(lam.shape[0]):
            for k in range(lam.shape[1]):
                slope[j, k], second[j, k] = -service[j, k], 0.0
                value -= lam[j, k] * service[j, k]
                if on[j, k]:
                    t = lam[j, k] / n[j, k]
                    tc = min(t, top[j, k])
                    gap = mu[j, k] - tc
                    d1 = 1000.0 * mu[j, k] / (gap * gap)
                    g = 1000.0 * tc / gap + (d1 * (t - top[j, k]) if t > top[j, k] else 0.0)
                    value += n[j, k] * g
                    slope[j, k] = d1 - service[j, k]
                    second[j, k] = 0.0 if t >= top[j, k] else 2.0 * d1 / (gap * n[j, k])
        return value

    @jit
    def newton(s: float, h: float, lam: Any, dlam: Any, f: Any, linear: float, limits: Any) -> Any:
        lo, hi, a, checked = 0.0, 1.0, 0.0, False
        for _ in range(int(limits[0])):
            hi = min(hi, a) if s > 0 else hi
            lo = max(lo, a) if s < 0 else lo
            nxt = a - s / h if h > 0 else 2.0
            if not checked and hi == 1.0 and nxt >= 1.0:
                checked = True
                if along(lam, dlam, 1.0, f, linear)[0] <= 0:
                    return 1.0
            nxt = nxt if lo < nxt < hi else (lo + hi) / 2
            if abs(nxt - a) <= limits[1] or hi - lo <= limits[1]:
                return nxt
            a = nxt
            s, h = along(lam, dlam, a, f, linear)
            if s == 0.0:
                break
        return a

    @jit
    def evaluate(x: Any, cost: Any, model: Any, allowed: Any, rate: Any, f: Any, work: Any) -> Any:
        lam, dlam, slope, second, d = work
        lam[:], dlam[:] = 0.0, 0.0
        for c in range(x.shape[0]):
            for j in range(x.shape[1]):
                lam[j, model[c]] += x[c, j]
        value, fall, linear = pools(lam, f, slope, second), 0.0, 0.0
        for c in range(x.shape[0]):
            best, at = np.inf, -1
            for j in range(x.shape[1]):
                value += x[c, j] * cost[c, j]
                if allowed[c, j] and cost[c, j] + slope[j, model[c]] < best:
                    best, at = cost[c, j] + slope[j, model[c]], j
            for j in range(x.shape[1]):
                d[c, j] = (rate[c] if j == at else 0.0) - x[c, j]
                fall += (cost[c, j] + slope[j, model[c]]) * d[c, j]
                dlam[j, model[c]] += d[c, j]
                linear += cost[c, j] * d[c, j]
        return value, -fall / max(value, 1e-9), linear

    @jit
    def fw_run(x: Any, cost: Any, model: Any, allowed: Any, rate: Any, f: Any, bounds: Any, limits: Any) -> Any:
        """_SplitFlow.run(x, iterations, done, abandon) for ``bounds`` = (iterations, done, abandon)."""
        iterations, done, abandon = int(bounds[0]), int(bounds[1]), bounds[2]
        x, last, gap, steps = x.copy(), np.inf, np.inf, done
        shape = f[0].shape
        work = (np.zeros(shape), np.zeros(shape), np.zeros(shape), np.zeros(shape), np.zeros(x.shape))
        for steps in range(done, iterations + 1):
            value, gap, linear = evaluate(x, cost, model, allowed, rate, f, work)
            if steps == iterations or gap <= limits[2]:
                break
            if steps == limits[3] and value - limits[4] * (last - value) * (iterations - steps) >= abandon:
                return x, steps, -np.inf
            last = value
            lam, dlam, slope, second, d = work
            a = newton(linear + (dlam * slope).sum(), (dlam * dlam * second).sum(), lam, dlam, f, linear, limits)
            x += a * d
        return x, steps, gap

    return fw_run


def split_problems(cores: float, seeds: int) -> list[tuple[Any, Any]]:
    """(_SplitFlow, start) of the best split on every thesis case at ``cores`` per node."""
    from bench.queue_integer_bench import cases
    from solver.node_cpu import effective_servers
    from solver.problem import Mode, build_problem
    from solver.queue_close_fast import close_pools_fast
    from solver.queue_fast import solve_nlp_fast
    from solver.queue_model import build_queue_problem
    from solver.queue_move import move_instances
    from solver.queue_repair import repair
    from solver.queue_split import _SplitFlow

    out = []
    for _, snap, mode in cases("thesis", seeds, cores or None):
        q = build_queue_problem(build_problem(snap, Mode.MODE1 if mode == "1" else Mode.MODE2))
        nlp = solve_nlp_fast(q)
        pools = repair(q, nlp.x, nlp.r, nlp.n)
        close_pools_fast(pools)
        move_instances(pools)
        counts, served = pools.counts(), pools.x.sum(axis=1)
        allowed = (counts[:, q.base.class_model].T > 0) & (served[:, None] > 0)
        flow = _SplitFlow(dataclasses.replace(q, rate=served), effective_servers(counts, pools.cores), allowed)
        out.append((flow, np.where(allowed, pools.x, 0.0)))
    return out


def main() -> None:
    from solver.queue_split import ABANDON_SLOPES, ABANDON_STEP, ITERATIONS, NEWTON_STEPS, STEP_TOLERANCE, TOLERANCE

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cores", type=float, default=2.0, help="cores per node (0: none; default 2)")
    ap.add_argument("--seeds", type=int, default=3, help="instances per thesis size (default 3)")
    ap.add_argument("--reps", type=int, default=5, help="runs per case, CPU time averaged (default 5)")
    ap.add_argument("--whole", action="store_true",
                    help="also the integer part, each Frank-Wolfe run compiled (move tries one by one)")  # fmt: skip
    args = ap.parse_args()
    try:
        start = time.perf_counter()
        fw_run = kernels()
    except ImportError:
        sys.exit("numba is not installed (pip install numba): this probe measures an option, nothing needs it")
    problems = split_problems(args.cores, args.seeds)
    limits = np.array([NEWTON_STEPS, STEP_TOLERANCE, TOLERANCE, ABANDON_STEP, ABANDON_SLOPES])

    def compiled(flow: Any, x: Any) -> Any:
        f = (flow.n, flow.on, flow.mu, flow.service, flow.top)
        bounds = np.array([ITERATIONS, 0.0, np.inf])
        return fw_run(x, flow.cost, flow.model.astype(np.int64), flow.big == 0, flow.rate, f, bounds, limits)[0]

    compiled(*problems[0])
    print(f"compile and first call: {time.perf_counter() - start:.2f} s")

    def plain(flow: Any, x: Any) -> Any:
        return flow.run(x, ITERATIONS)[0]

    timed = {}
    runs: list[tuple[str, Callable[[Any, Any], Any]]] = [("numpy", plain), ("compiled", compiled)]
    for name, run in runs:
        begin = time.process_time()
        for _ in range(args.reps):
            found = [run(f, x) for f, x in problems]
        timed[name] = (1000.0 * (time.process_time() - begin) / args.reps / len(problems), found)
    pairs = zip(problems, timed["numpy"][1], timed["compiled"][1], strict=True)
    apart = [abs(_value(f, b) - _value(f, a)) / _value(f, a) for (f, _), a, b in pairs]
    (fast, _), (slow, _) = timed["compiled"], timed["numpy"]
    print(f"{len(problems)} best-split runs (<= {ITERATIONS} steps), {args.cores:g} cores: numpy {slow:.3f} ms, "
          f"compiled {fast:.4f} ms per run ({slow / fast:.0f}x); objectives apart by at most {max(apart):.1e} "
          f"relative (median {float(np.median(apart)):.1e})")  # fmt: skip
    if args.whole:
        whole(fw_run, limits, args)


def whole(fw_run: Any, limits: Any, args: argparse.Namespace) -> None:
    """The integer part (bench/queue_integer_bench.py's measure) with numpy's Frank-Wolfe runs, then with the compiled
    ones (``_SplitFlow.run`` replaced, the move tries run one at a time), in this process: ms, integer / LP, plans."""
    from bench.queue_integer_bench import measure
    from solver import queue_move, queue_split

    def run(self: Any, x: Any, iterations: int, done: int = 0, abandon: float = np.inf) -> Any:
        f = (self.n, self.on, self.mu, self.service, self.top)
        bounds = np.array([iterations, done, abandon])
        return fw_run(x, self.cost, self.model.astype(np.int64), self.big == 0, self.rate, f, bounds, limits)

    plain = measure("thesis", args.seeds, args.reps, args.cores or None)
    numpy_run, batch = queue_split._SplitFlow.run, queue_move.BATCH
    queue_split._SplitFlow.run, queue_move.BATCH = run, False  # type: ignore[method-assign]
    try:
        fast = measure("thesis", args.seeds, args.reps, args.cores or None)
    finally:
        queue_split._SplitFlow.run, queue_move.BATCH = numpy_run, batch  # type: ignore[method-assign]
    for name, found in (("numpy", plain), ("compiled", fast)):
        print(f"integer part, {name} Frank-Wolfe: {found['integer_ms']:.2f} ms (move {found['move_ms']:.2f}, split "
              f"{found['split_ms']:.2f}), integer / LP median {found['ratio_median']:.2f}x")  # fmt: skip
    change = [(b[0] - a[0]) / abs(a[0]) for a, b in zip(plain["figures"], fast["figures"], strict=True)]
    print(f"integer objective, compiled against numpy: {sum(c != 0 for c in change)} of {len(change)} plans differ, "
          f"worst {max(change):+.1e}, best {min(change):+.1e} (relative)")  # fmt: skip


def _value(flow: Any, x: Any) -> float:
    """The split objective of ``x`` (RTT + execution + the pools' wait terms), as the numpy run values it."""
    return float((x * flow.cost).sum() + flow.pools(x.T @ flow.onehot, 0)[0].sum())


if __name__ == "__main__":
    main()
