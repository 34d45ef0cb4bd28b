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

The worst case (``--worst N``, 50,000 by default; 0 leaves it out), in a fresh child process of its own: N maximal
records offered (``maximal_record``: the widest a peer's request page may carry, each packing to ~8 KiB, just under
the row limit) by ten nodes, in pages that fit a peer answer, then a real solver worker given the whole window and
``--reps`` delta rounds of ``--new-per-round`` more: the records and bytes the window holds, the serving process's
RSS growth (after the fill, and its peak: VmHWM, the whole window's encoding for the worker included), and the
worker's RSS before, after the whole window, after the rounds and at its peak.

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
WIDEST_PAGE = 25  # maximal records per gathered page: a peer's answer is at most 256 KiB (peerserve/wire.py MAX_BODY)
ROW_OVERHEAD = 48  # a held row's memory beyond its length, as agent/request_window.py counts it (not in old trees)


def maximal_record(ts: float, model: str = "m" * 64) -> Any:
    """A record a peer's request page may carry (peerserve.wire.RequestRow: 64 RTTs to ids of up to 64 characters,
    any characters; a client of up to 128, a node of up to 64; a model name of up to 64, peerserve/names.py) that
    packs to just under the row limit (8 KiB: 7,983 bytes): ids of three-byte characters. A row past the limit
    is left out, so this is the widest a window can be made to hold."""
    from agent.placement import RequestRecord

    rtt = {f"{j:02d}" + "\u20ac" * 34: 60_000.0 for j in range(64)}
    return RequestRecord(ts, model, "\u20ac" * 128, rtt, "\u20ac" * 64, 60_000.0, 200)


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    """A process's resident set (VmRSS, KiB; ``field="VmHWM"``: its peak so far) from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} for {pid}")


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


async def _worker_figures(w: Any, inputs: Any, new_per_round: int, reps: int, pages: Any = None) -> dict[str, float]:
    """RSS of a real solver worker before/after it takes the whole window, and a delta round's wall time (least);
    ``pages(n, i)``: round i's n new records, page by page (default: the lab's, one page)."""
    from agent.solver_worker import SolverWorker
    from agent.window_sync import WindowBuild
    from bench.snapshot_bench import window as lab

    pages = pages or (lambda n, i: [lab(n, seed=99 + i)])

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
            for page in pages(new_per_round, i):
                w.add("n0", page, 1060.0)
            w.expire(1060.0)
            t, c = time.perf_counter(), cpu_ms(pid)
            held, delta = w.records(), w.take_delta()
            await worker.solve_window(WindowBuild(delta, held, w.config(), inputs), "least-loaded", "1")
            round_ms = min(round_ms, (time.perf_counter() - t) * 1000.0)
            round_cpu = min(round_cpu, cpu_ms(pid) - c)
        return {"worker_rss_before_kib": before, "worker_rss_after_kib": after, "worker_round_ms": round_ms,
                "worker_rss_round_kib": rss_kib(pid), "worker_round_cpu_ms": round_cpu,
                "worker_rss_peak_kib": rss_kib(pid, "VmHWM")}  # fmt: skip
    finally:
        await worker.close()


def _lab_inputs() -> tuple[Any, str]:
    """The lab's build inputs besides the records (bench/snapshot_bench.py's ten nodes, the built-in catalogue, the
    queue-p99 objective) and the catalogue's first model, which each node runs."""
    from agent.catalogue import builtin_catalogue_text, parse_catalogue
    from agent.placement import NodeReport
    from agent.window_sync import BuildInputs
    from bench.snapshot_bench import NODES

    catalogue = parse_catalogue(builtin_catalogue_text(), "bench")
    first = next(iter(catalogue.models))
    nodes = tuple(NodeReport(f"n{j}", 2000.0, 4000.0, 100.0, "default", {first: 1}, cores=4.0) for j in range(NODES))
    return BuildInputs(nodes, catalogue, 1060.0, "queue-p99", 600.0), first


def measure_one(n: int, reps: int, new_per_round: int) -> dict[str, float]:
    """One window size's figures, in this process (meant to be a fresh one: RSS is the whole process's)."""
    from agent.window_sync import JournaledWindow, encode_delta, encode_reset
    from bench.snapshot_bench import window as lab

    inputs, _ = _lab_inputs()
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


def window_bytes(w: Any) -> int:
    """The window's rows as agent/request_window.py counts its byte budget, without its clients' cost (computed
    here: old trees have no byte count, nor a cost per client)."""
    return sum(sum(map(len, rows)) + ROW_OVERHEAD * len(rows) for _, rows in w.records().groups)


def measure_worst(n: int, reps: int, new_per_round: int) -> dict[str, float]:
    """The worst case's figures, in this process (meant to be a fresh one): ``n`` maximal records offered by ten
    nodes a page at a time (each page dropped after, as after a gather), then a real worker given the window."""
    from agent.window_sync import JournaledWindow
    from bench.snapshot_bench import NODES

    inputs, first = _lab_inputs()
    gc.collect()
    rss0 = rss_kib(os.getpid())
    w = JournaledWindow(n + new_per_round, 600.0, 30.0)  # the default byte budget, where the tree has one
    for i in range(0, n, WIDEST_PAGE):
        page = [maximal_record(1000.0 + (i + k) * 60.0 / max(n, 1), first) for k in range(min(WIDEST_PAGE, n - i))]
        w.add(f"n{(i // WIDEST_PAGE) % NODES}", page, 1060.0)
        del page
    w.take_delta()
    gc.collect()
    out = {"worst_offered": n, "worst_records": len(w), "worst_window_kib": window_bytes(w) / 1024,
           "worst_serving_rss_kib": rss_kib(os.getpid()) - rss0}  # fmt: skip

    def widest_pages(k: int, i: int) -> Any:  # as gathered: each page made, added and dropped in turn
        sizes = (min(WIDEST_PAGE, k - j) for j in range(0, k, WIDEST_PAGE))
        return ([maximal_record(1059.0, first) for _ in range(size)] for size in sizes)

    figures = asyncio.run(_worker_figures(w, inputs, new_per_round, reps, widest_pages))
    out.update({f"worst_{k}": v for k, v in figures.items() if k.startswith("worker_rss")})
    out["worst_serving_rss_peak_kib"] = rss_kib(os.getpid(), "VmHWM") - rss0  # the whole window's encoding included
    out["worst_records_after_rounds"] = len(w)
    out["worst_window_kib_after_rounds"] = window_bytes(w) / 1024
    return out


def run_child(n: int, reps: int, new_per_round: int, tree: Path | None, fn: str = "measure_one") -> dict[str, float]:
    """``fn`` (measure_one, measure_worst) in a fresh interpreter, on this checkout's agent/ or on ``tree``'s (another
    revision)."""
    code = (f"import json; from bench.window_memory_bench import {fn}; "
            f"print(json.dumps({fn}({n}, {reps}, {new_per_round})))")  # fmt: skip
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
    ap.add_argument("--worst", type=int, default=50_000, help="maximal records offered in the worst case (0: none)")
    ap.add_argument("--before-rev", help="also measure git revision REV's agent/ the same way, in the same run")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.records.split(",") if s.strip()]
    now = {str(n): run_child(n, args.reps, args.new_per_round, None) for n in sizes}
    then = None
    with tempfile.TemporaryDirectory() as tmp:
        tree = None
        if args.before_rev:
            from bench.common import extract_revision

            tree = extract_revision(args.before_rev, Path(tmp), ("agent", "solver", "peerserve"))
            then = {str(n): run_child(n, args.reps, args.new_per_round, tree) for n in sizes}
        if args.worst:  # the worst case, this tree then the before tree, in the same run
            now["worst"] = run_child(args.worst, args.reps, args.new_per_round, None, "measure_worst")
            if then is not None:
                then["worst"] = run_child(args.worst, args.reps, args.new_per_round, tree, "measure_worst")
    load = os.getloadavg()
    if args.json:
        print(json.dumps({"now": now, "before": then, "before_rev": args.before_rev, "load": load}))
        return 0
    print(f"request window memory and round costs ({args.new_per_round} new records a round); load {load[0]:.2f}")
    keys = ("window_heap_kib", "serving_rss_kib", "worker_rss_before_kib", "worker_rss_after_kib",
            "worker_rss_round_kib", "build_ms", "handoff_round_ms", "reset_encode_ms", "worker_round_ms",
            "worker_round_cpu_ms")  # fmt: skip
    worst = ("worst_records", "worst_window_kib", "worst_serving_rss_kib", "worst_serving_rss_peak_kib",
             "worst_worker_rss_before_kib", "worst_worker_rss_after_kib", "worst_worker_rss_round_kib",
             "worst_worker_rss_peak_kib", "worst_records_after_rounds", "worst_window_kib_after_rounds")  # fmt: skip
    shown = [(str(n), f"{n} records:", keys) for n in sizes]
    if args.worst:
        shown.append(("worst", f"worst case, {args.worst} maximal records offered:", worst))
    for n, title, figures in shown:
        print(title)
        for k in figures:
            row = f"  {k:<30} {now[n][k]:>10.1f}"
            if then:
                b = then[n][k]
                row += f"   before {b:>10.1f}   now/before {now[n][k] / b if b else float('nan'):>6.2f}x"
            print(row)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
