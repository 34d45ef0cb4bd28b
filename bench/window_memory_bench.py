"""The request window's memory in the serving process and in the solver worker's copy, and what a round costs.

For each window size, a fresh child process fills the leader's window (agent.window_sync.JournaledWindow) page by
page from records shaped like bench/snapshot_bench.py's lab (ten nodes, 300 clients), letting each page go as it
would after a gather, and reports: the process's RSS growth, and the window's Python heap (tracemalloc: bytes still
held once the pages are gone, from a second window filled the same way, so that tracemalloc's own tables stay out of
the RSS); a real solver worker (agent.solver_worker.SolverWorker, least-loaded) given the whole window, its RSS
before, after, and after ``--reps`` more (delta) rounds; the snapshot build from the window's records (CPU ms, least
of ``--reps``); and per round with ``--new-per-round`` new records: the serving process's hand-off (add, expire,
take the records and the delta, encode the delta: CPU ms) and the whole round trip to the worker (wall ms, and the
worker's CPU ms: the wall time is at the mercy of a shared machine's load), and the reset's encoding (a new worker
only). ``--before-rev REV`` measures git revision REV's agent/ the same way in the same run and prints ratios.

    python bench/window_memory_bench.py --records 1000,10000,50000 --before-rev 5f53e85 --json
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PAGE = 1000  # records per gathered page


def rss_kib(pid: int) -> int:
    """A process's resident set (VmRSS, KiB) from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def cpu_ms(pid: int) -> float:
    """A process's CPU time so far (user + system, ms; the kernel's clock-tick resolution, 10 ms here)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * 1000.0 / os.sysconf("SC_CLK_TCK")


def _fill(window: Any, n: int) -> None:
    """``n`` records into ``window`` a page at a time, round-robin over the nodes; each page dropped after."""
    from bench.snapshot_bench import NODES
    from bench.snapshot_bench import window as lab

    for i in range(0, n, PAGE):
        page = lab(min(PAGE, n - i), seed=i)
        window.add(f"n{(i // PAGE) % NODES}", page, 1060.0)
        del page


def _cpu_ms(fn: Any, reps: int) -> float:
    best = float("inf")
    for _ in range(reps):
        t = time.process_time()
        fn()
        best = min(best, time.process_time() - t)
    return best * 1000.0


async def _worker_figures(w: Any, inputs: Any, new_per_round: int, reps: int) -> dict[str, float]:
    """RSS of a real solver worker before/after it takes the whole window, and a delta round's wall time (least)."""
    from agent.solver_worker import SolverWorker
    from agent.window_sync import WindowBuild
    from bench.snapshot_bench import window as lab

    worker = SolverWorker("least-loaded")
    worker.start()
    try:
        await worker.solve(inputs.build(()), "least-loaded", "1")  # started and warmed up: the baseline
        pid = worker.pid
        assert pid is not None
        before = rss_kib(pid)
        held, delta = w.records(), w.take_delta()
        await worker.solve_window(WindowBuild(delta, held, w.config(), inputs), "least-loaded", "1")
        after = rss_kib(pid)
        round_ms = round_cpu = float("inf")
        for i in range(reps):  # the least wall time, and the worker's least CPU time, of ``reps`` delta rounds
            w.add("n0", lab(new_per_round, seed=99 + i), 1060.0)
            w.expire(1060.0)
            t, c = time.perf_counter(), cpu_ms(pid)
            held, delta = w.records(), w.take_delta()
            await worker.solve_window(WindowBuild(delta, held, w.config(), inputs), "least-loaded", "1")
            round_ms = min(round_ms, (time.perf_counter() - t) * 1000.0)
            round_cpu = min(round_cpu, cpu_ms(pid) - c)
        return {"worker_rss_before_kib": before, "worker_rss_after_kib": after, "worker_round_ms": round_ms,
                "worker_rss_round_kib": rss_kib(pid), "worker_round_cpu_ms": round_cpu}  # fmt: skip
    finally:
        await worker.close()


def measure_one(n: int, reps: int, new_per_round: int) -> dict[str, float]:
    """One window size's figures, in this process (meant to be a fresh one: RSS is the whole process's)."""
    from agent.catalogue import builtin_catalogue_text, parse_catalogue
    from agent.placement import NodeReport
    from agent.window_sync import BuildInputs, JournaledWindow, encode_delta, encode_reset
    from bench.snapshot_bench import NODES
    from bench.snapshot_bench import window as lab

    catalogue = parse_catalogue(builtin_catalogue_text(), "bench")
    first = next(iter(catalogue.models))
    nodes = tuple(NodeReport(f"n{j}", 2000.0, 4000.0, 100.0, "default", {first: 1}, cores=4.0) for j in range(NODES))
    inputs = BuildInputs(nodes, catalogue, 1060.0, "queue-p99", 600.0)
    gc.collect()
    rss0 = rss_kib(os.getpid())
    w = JournaledWindow(n + new_per_round, 600.0, 30.0)
    _fill(w, n)
    w.take_delta()
    gc.collect()
    rss, held = rss_kib(os.getpid()) - rss0, len(w)
    tracemalloc.start()  # the heap from a second window (tracemalloc's own tables would inflate the RSS above)
    twin = JournaledWindow(n + new_per_round, 600.0, 30.0)
    _fill(twin, n)
    twin.take_delta()
    gc.collect()
    heap = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    del twin
    build_ms = _cpu_ms(lambda: inputs.build(w.records()), reps)
    fresh = lab(new_per_round, seed=7)

    def one_round() -> None:
        w.add("n1", fresh, 1060.0)
        w.expire(1060.0)
        w.records()
        encode_delta(w.take_delta())

    round_ms = _cpu_ms(one_round, reps)
    reset_ms = _cpu_ms(lambda: encode_reset(w.records(), w.seq, w.config()), reps)
    out = {"records": held, "window_heap_kib": heap / 1024, "serving_rss_kib": rss, "build_ms": build_ms,
           "handoff_round_ms": round_ms, "reset_encode_ms": reset_ms}  # fmt: skip
    out.update(asyncio.run(_worker_figures(w, inputs, new_per_round, reps)))
    return out


def run_child(n: int, reps: int, new_per_round: int, tree: Path | None) -> dict[str, float]:
    """``measure_one`` in a fresh interpreter, on this checkout's agent/ or on ``tree``'s (another revision)."""
    code = (f"import json; from bench.window_memory_bench import measure_one; "
            f"print(json.dumps(measure_one({n}, {reps}, {new_per_round})))")  # fmt: skip
    path = [str(tree)] if tree is not None else []
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([*path, str(ROOT)])}
    done = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, env=env,
                          cwd=str(tree or ROOT))  # fmt: skip
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", default="1000,10000,50000", help="window sizes, comma-separated")
    ap.add_argument("--reps", type=int, default=3, help="timed repetitions; the least CPU time counts")
    ap.add_argument("--new-per-round", type=int, default=1000, help="records new to the window each round")
    ap.add_argument("--before-rev", help="also measure git revision REV's agent/ the same way, in the same run")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.records.split(",") if s.strip()]
    now = {str(n): run_child(n, args.reps, args.new_per_round, None) for n in sizes}
    then = None
    if args.before_rev:
        from bench.common import extract_revision

        with tempfile.TemporaryDirectory() as tmp:
            tree = extract_revision(args.before_rev, Path(tmp), ("agent", "solver", "peerserve"))
            then = {str(n): run_child(n, args.reps, args.new_per_round, tree) for n in sizes}
    load = os.getloadavg()
    if args.json:
        print(json.dumps({"now": now, "before": then, "before_rev": args.before_rev, "load": load}))
        return 0
    print(f"request window memory and round costs ({args.new_per_round} new records a round); load {load[0]:.2f}")
    keys = ("window_heap_kib", "serving_rss_kib", "worker_rss_before_kib", "worker_rss_after_kib",
            "worker_rss_round_kib", "build_ms", "handoff_round_ms", "reset_encode_ms", "worker_round_ms",
            "worker_round_cpu_ms")  # fmt: skip
    for n in sizes:
        print(f"{n} records:")
        for k in keys:
            row = f"  {k:<22} {now[str(n)][k]:>10.1f}"
            if then:
                b = then[str(n)][k]
                row += f"   before {b:>10.1f}   now/before {now[str(n)][k] / b if b else float('nan'):>6.2f}x"
            print(row)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
