"""The leader's snapshot build per placement round (agent.placement.build_snapshot) against the request window's size.

The leader builds the snapshot from every record in its request window (up to 50,000). It did so in a thread of its
serving process (pure Python holding the GIL: proxying and endpoint answers waited behind it); now the solver worker
builds it from its copy of the window (agent/window_sync.py), and the serving process only hands over what changed:
``handoff`` times that part. This bench times the build (CPU time, the least of ``--reps``) on synthetic windows
shaped like a lab: clients at a few sites (RTT vectors within a few ms of their site's), several models, latencies
logged by every node. ``--before-rev REV`` times the same windows on ``agent/placement.py`` of git revision REV in
the same run (its tree extracted to a temporary directory and run in a child process) and prints the ratio.

``--loggers 1,2,10`` times the build where each client's requests pass through that many agents (each record logged
by one of the client's agents, at random: every agent logs every client at 10), the builds of the counts alternating
in each repetition, with the ratio to the first count's measured in the same run (with ``--before-rev``, REV's too).

    python bench/snapshot_bench.py --records 1000,10000,50000 --before-rev HEAD~1
    python bench/snapshot_bench.py --records 10000,50000 --loggers 1,2,10 --reps 5 --before-rev HEAD~1
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
NODES = 10
SITES = 12
CLIENTS = 300


def window(n: int, seed: int = 0) -> list[Any]:
    """``n`` request records over 60 s: CLIENTS clients at SITES sites, the catalogue's models, NODES nodes."""
    from agent.catalogue import builtin_catalogue_text, parse_catalogue
    from agent.placement import RequestRecord

    models = list(parse_catalogue(builtin_catalogue_text(), "bench").models)
    rnd = random.Random(seed)
    sites = [[rnd.uniform(1, 80) for _ in range(NODES)] for _ in range(SITES)]
    home = [rnd.randrange(SITES) for _ in range(CLIENTS)]
    out = []
    for _ in range(n):
        c = rnd.randrange(CLIENTS)
        rtt = {f"n{j}": sites[home[c]][j] + rnd.uniform(0, 2) for j in range(NODES)}
        ts, model, node = 1000 + rnd.random() * 60, rnd.choice(models), f"n{rnd.randrange(NODES)}"
        out.append(RequestRecord(ts, model, f"c{c}", rtt, node, rnd.uniform(2, 30), 200))
    return out


def logged_window(n: int, loggers: int, seed: int = 0) -> list[Any]:
    """``window(n)`` with each client's records logged by ``loggers`` agents: client c's are agents c, c + 1, ...
    (mod NODES), each record by one of them at random; one logger per client at 1."""
    from dataclasses import replace

    rnd = random.Random(seed + 1)
    return [replace(r, logged_by=f"n{(int(r.client[1:]) + rnd.randrange(loggers)) % NODES}") for r in window(n, seed)]


def measure_loggers(sizes: list[int], reps: int, objective: str, loggers: list[int]) -> dict[str, float]:
    """ "records/loggers" -> least CPU ms of ``reps`` builds, the logger counts alternating within each repetition."""
    from agent.catalogue import builtin_catalogue_text, parse_catalogue
    from agent.placement import NodeReport, build_snapshot

    catalogue = parse_catalogue(builtin_catalogue_text(), "bench")
    first = next(iter(catalogue.models))
    nodes = [NodeReport(f"n{j}", 2000.0, 4000.0, 4.0, "default", {first: 1}, cores=4.0) for j in range(NODES)]
    out: dict[str, float] = {}
    for n in sizes:
        windows = {k: logged_window(n, k) for k in loggers}
        for _ in range(reps):
            for k, records in windows.items():
                t = time.process_time()
                build_snapshot(nodes, records, catalogue, 1060.0, objective, 60.0)
                key = f"{n}/{k}"
                out[key] = min(out.get(key, float("inf")), (time.process_time() - t) * 1000.0)
    return out


def measure(sizes: list[int], reps: int, objective: str) -> dict[str, float]:
    """Records -> least CPU ms of ``reps`` builds, with this interpreter's ``agent.placement``."""
    from agent.catalogue import builtin_catalogue_text, parse_catalogue
    from agent.placement import NodeReport, build_snapshot

    catalogue = parse_catalogue(builtin_catalogue_text(), "bench")
    first = next(iter(catalogue.models))
    nodes = [NodeReport(f"n{j}", 2000.0, 4000.0, 4.0, "default", {first: 1}, cores=4.0) for j in range(NODES)]
    out = {}
    for n in sizes:
        records = window(n)
        best = float("inf")
        for _ in range(reps):
            t = time.process_time()
            build_snapshot(nodes, records, catalogue, 1060.0, objective, 60.0)
            best = min(best, time.process_time() - t)
        out[str(n)] = best * 1000.0
    return out


def handoff(sizes: list[int], reps: int, new_per_round: int) -> dict[str, dict[str, float]]:
    """What the serving process spends per round to let the solver worker build (agent.window_sync), CPU ms, least of
    ``reps``: the window's records and delta taken and ``new_per_round`` new records encoded (each round), and the
    whole window encoded (only when the worker must start again: a new worker, a refused delta, a journal gap)."""
    from dataclasses import replace

    from agent.window_sync import JournaledWindow, encode_delta, encode_reset

    out = {}
    for n in sizes:
        records = [replace(r, logged_by=f"n{i % NODES}") for i, r in enumerate(window(n))]
        fresh = window(new_per_round, seed=1)
        best_round = best_reset = float("inf")
        for _ in range(reps):
            w = JournaledWindow(max(n, 1) + new_per_round, 600.0, 30.0)
            for j in range(NODES):
                w.add(f"n{j}", records[j::NODES], 1060.0)
            w.take_delta()
            t = time.process_time()
            w.add("n0", fresh, 1060.0)
            w.expire(1060.0)
            held, delta = w.records(), w.take_delta()
            encode_delta(delta)
            best_round = min(best_round, time.process_time() - t)
            t = time.process_time()
            encode_reset(held, delta.seq, w.config())
            best_reset = min(best_reset, time.process_time() - t)
        out[str(n)] = {"round_ms": best_round * 1000.0, "reset_ms": best_reset * 1000.0}
    return out


async def _ticker(stop: Any, lags: list[float]) -> None:
    """Ask the event loop for 1 ms sleeps until ``stop``; record how late each came back (ms)."""
    import asyncio

    while not stop.is_set():
        t = time.perf_counter()
        await asyncio.sleep(0.001)
        lags.append((time.perf_counter() - t) * 1000 - 1)


async def _lags(n: int, rounds: int) -> dict[str, list[float]]:
    import asyncio

    from agent.catalogue import builtin_catalogue_text, parse_catalogue
    from agent.placement import NodeReport
    from agent.solver_worker import SolverWorker
    from agent.window_sync import BuildInputs, JournaledWindow, WindowBuild

    catalogue = parse_catalogue(builtin_catalogue_text(), "bench")
    first = next(iter(catalogue.models))
    nodes = tuple(NodeReport(f"n{j}", 2000.0, 4000.0, 100.0, "default", {first: 1}, cores=4.0) for j in range(NODES))
    w = JournaledWindow(n + 1000, 600.0, 30.0)
    records = window(n)
    for j in range(NODES):
        w.add(f"n{j}", records[j::NODES], 1060.0)
    worker = SolverWorker("least-loaded")
    worker.start()
    out: dict[str, list[float]] = {"worker": [], "thread": []}
    try:
        for i in range(rounds + 1):  # the first round hands the whole window over: not counted
            w.add("n0", window(200, seed=10 + i), 1060.0)
            w.expire(1060.0)
            held, delta = w.records(), w.take_delta()
            inputs = BuildInputs(nodes, catalogue, 1060.0, "queue-p99", 600.0)
            for kind in ("worker", "thread"):
                stop, lags = asyncio.Event(), []
                tick = asyncio.create_task(_ticker(stop, lags))
                await asyncio.sleep(0.02)
                if kind == "worker":
                    await worker.solve_window(WindowBuild(delta, held, w.config(), inputs), "least-loaded", "1")
                else:
                    snapshot = await asyncio.to_thread(inputs.build, held)
                    await worker.solve(snapshot, "least-loaded", "1")
                stop.set()
                await tick
                if i > 0:
                    out[kind].append(max(lags))
    finally:
        await worker.close()
    return out


def loop_lag(sizes: list[int], rounds: int) -> dict[str, dict[str, float]]:
    """The event loop's longest lateness (ms, a 1 ms ticker; worst of ``rounds``) while one round is solved: the
    snapshot built by the solver worker from its window copy (now) or in a thread of this process (before)."""
    import asyncio

    out = {}
    for n in sizes:
        lags = asyncio.run(_lags(n, rounds))
        out[str(n)] = {"worker_ms": max(lags["worker"]), "thread_ms": max(lags["thread"])}
    return out


def before(rev: str, sizes: list[int], reps: int, objective: str, loggers: list[int] | None = None) -> dict[str, float]:
    """``measure`` (``measure_loggers`` with ``loggers``) on revision ``rev``'s agent/ (this bench's window
    unchanged), in a child process."""
    from bench.common import extract_revision

    call = f"measure({sizes!r}, {reps}, {objective!r})"
    if loggers:
        call = f"measure_loggers({sizes!r}, {reps}, {objective!r}, {loggers!r})"
    with tempfile.TemporaryDirectory() as tmp:
        tree = str(extract_revision(rev, Path(tmp), ("agent", "solver", "peerserve")))
        code = (f"import json, sys; sys.path.insert(0, {tree!r}); sys.path.append({str(ROOT)!r}); "
                "from bench.snapshot_bench import measure, measure_loggers; "
                f"print(json.dumps({call}))")  # fmt: skip
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        done = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, env=env)
        return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", default="1000,10000,50000", help="window sizes, comma-separated")
    ap.add_argument("--reps", type=int, default=3, help="builds per size; the least CPU time counts")
    ap.add_argument("--objective", default="queue-p99", choices=["thesis", "queue", "queue-p99"])
    ap.add_argument("--before-rev", help="also time git revision REV's agent/placement.py, in the same run")
    ap.add_argument(
        "--new-per-round",
        type=int,
        default=1000,
        help="records new to the window each round, for the hand-off figures (default 1000)",
    )
    ap.add_argument(
        "--lag-rounds",
        type=int,
        default=0,
        help="also time the event loop's lateness over this many solved rounds (a real solver worker)",
    )
    ap.add_argument(
        "--loggers",
        help="instead: time the build with each client logged by this many agents, e.g. 1,2,10 (ratios to the first)",
    )
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.records.split(",") if s.strip()]
    if args.loggers:
        return print_loggers(args, sizes, [int(k) for k in args.loggers.split(",") if k.strip()])
    now = measure(sizes, args.reps, args.objective)
    passed = handoff(sizes, args.reps, args.new_per_round)
    lag = loop_lag(sizes, args.lag_rounds) if args.lag_rounds > 0 else None
    then = before(args.before_rev, sizes, args.reps, args.objective) if args.before_rev else None
    load = os.getloadavg()
    if args.json:
        print(json.dumps({"now_ms": now, "before_ms": then, "before_rev": args.before_rev, "handoff_ms": passed,
                          "loop_lag_ms": lag, "new_per_round": args.new_per_round, "load": load}))  # fmt: skip
        return 0
    print(f"build_snapshot ({args.objective}), CPU ms, least of {args.reps}; load average {load[0]:.2f}")
    print("records      now" + ("    before   now/before" if then else ""))
    for n in sizes:
        row = f"{n:>7} {now[str(n)]:>8.1f}"
        if then:
            row += f" {then[str(n)]:>9.1f} {now[str(n)] / then[str(n)]:>11.2f}x"
        print(row)
    print(f"serving process per round with the build in the solver worker ({args.new_per_round} new records a round):")
    print("records  round  reset (a new worker only)")
    for n in sizes:
        print(f"{n:>7} {passed[str(n)]['round_ms']:>6.1f} {passed[str(n)]['reset_ms']:>6.1f}")
    if lag:
        print(f"event loop's longest lateness while a round is solved (worst of {args.lag_rounds}):")
        print("records  worker builds  thread builds")
        for n in sizes:
            print(f"{n:>7} {lag[str(n)]['worker_ms']:>11.1f} ms {lag[str(n)]['thread_ms']:>10.1f} ms")
    return 0


def print_loggers(args: argparse.Namespace, sizes: list[int], loggers: list[int]) -> int:
    """The ``--loggers`` table: per window size and logger count, the build's CPU ms and its ratio to the first
    count's, now (and REV's, in the same run)."""
    now = measure_loggers(sizes, args.reps, args.objective, loggers)
    then = before(args.before_rev, sizes, args.reps, args.objective, loggers) if args.before_rev else None
    load = os.getloadavg()
    if args.json:
        print(json.dumps({"now_ms": now, "before_ms": then, "before_rev": args.before_rev, "load": load}))
        return 0
    print(f"build_snapshot ({args.objective}) with each client logged by k agents, CPU ms, least of {args.reps}; "
          f"load average {load[0]:.2f}")  # fmt: skip
    print("records  loggers      now   vs first" + ("    before   vs first   now/before" if then else ""))
    for n in sizes:
        base, base_then = now[f"{n}/{loggers[0]}"], then[f"{n}/{loggers[0]}"] if then else 0.0
        for k in loggers:
            ms = now[f"{n}/{k}"]
            row = f"{n:>7} {k:>8} {ms:>8.1f} {ms / base:>9.2f}x"
            if then:
                old = then[f"{n}/{k}"]
                row += f" {old:>9.1f} {old / base_then:>9.2f}x {ms / old:>11.2f}x"
            print(row)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
