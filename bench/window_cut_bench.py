"""What one page costs the leader's request window once it is full: the cut kept across pages (agent/request_window.py)
against tidy12's cut (tests/unit/request_window_reference.py, a heap built from the node's clients every cut), in the
same process, alternating, on windows filled alike.

Two cases, each on a full window of ``--records`` lab records (bench/snapshot_bench.py: ten nodes, 300 clients):

* ``made_up``: a member at its full share sends pages of 1,000 records, each of a new made-up client (one row each):
  every page is cut from a node holding thousands of clients (after ``--warm`` such pages, so its share is full);
* ``made_up_alone``: the same, from the only node in the window: its share is the whole window (~29,000 clients);
* ``normal``: a member sends a page of 100 lab records (its own clients): the window cuts its share back.

Each round times ``--pages`` pages per window (CPU ms per page: thread_time around ``add``; on a shared machine wall
time is mostly waiting), the two windows in
alternating order; the median and range over all pages are printed with the load average. At the end both windows
must hold the same rows (an assertion: the figures are of the same work).

    python bench/window_cut_bench.py --rounds 5 --pages 10 --json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


CASES = ("made_up", "made_up_alone", "normal")


def made_up_page(page: int, n: int = 1000) -> list[Any]:
    """``n`` records, each of a new made-up client, stamped within the window."""
    from agent.placement import RequestRecord

    return [RequestRecord(1059.0, "m", f"made-up-{page}-{j}", {"n0": 1.0, "n1": 2.0}, "n9", 3.0, 200) for j in range(n)]


def full_window(cls: Any, records: int) -> Any:
    """A window of ``records`` (its bound) filled with lab pages of 1,000, round-robin over ten nodes."""
    from agent.request_window import MAX_WINDOW_BYTES
    from bench.snapshot_bench import NODES
    from bench.snapshot_bench import window as lab

    w = cls(records, 600.0, 60.0, MAX_WINDOW_BYTES)
    for i in range(0, records, 1000):
        w.add(f"n{(i // 1000) % NODES}", lab(1000, seed=i), 1060.0)
    return w


def run(records: int, rounds: int, pages: int, warm: int) -> dict[str, Any]:
    from agent.request_window import RequestWindow
    from bench.snapshot_bench import window as lab
    from tests.unit.request_window_reference import ReferenceWindow

    out: dict[str, Any] = {"records": records, "rounds": rounds, "pages": pages}
    for case in CASES:
        if case == "made_up_alone":  # the member's share is the whole window: ~29,000 one-row clients (bytes bind)
            windows = {"reference": ReferenceWindow(records, 600.0, 60.0), "kept": RequestWindow(records, 600.0, 60.0)}
            for w in windows.values():
                for k in range(records // 1000):
                    w.add("n9", made_up_page(-1 - k), 1060.0)
        else:
            windows = {"reference": full_window(ReferenceWindow, records), "kept": full_window(RequestWindow, records)}
        times: dict[str, list[float]] = {name: [] for name in windows}
        pages_of = {name: iter(range(1, 10**9)) for name in windows}  # each window gets the same pages in turn
        make = made_up_page if case.startswith("made_up") else (lambda k: lab(100, seed=10_000 + k))
        for name, w in windows.items():
            for _ in range(warm):
                w.add("n9", make(next(pages_of[name])), 1060.0)
        for r in range(rounds):
            for name in list(windows) if r % 2 == 0 else list(reversed(windows)):
                for _ in range(pages):
                    page = make(next(pages_of[name]))
                    t0 = time.thread_time()
                    windows[name].add("n9", page, 1060.0)
                    times[name].append((time.thread_time() - t0) * 1000)
        a, b = windows.values()
        assert [(n, list(rows)) for n, rows in a.records().groups] == [(n, list(r)) for n, r in b.records().groups]
        assert (len(a), a.nbytes) == (len(b), b.nbytes)
        out[case] = {
            name: {"median_ms": statistics.median(t), "min_ms": min(t), "max_ms": max(t)} for name, t in times.items()
        }
        out[case]["clients_of_the_member"] = len(b._by_node["n9"])
    out["loadavg"] = os.getloadavg()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=50_000, help="the window's bound (filled)")
    ap.add_argument("--rounds", type=int, default=5, help="alternating rounds")
    ap.add_argument("--pages", type=int, default=10, help="pages per window per round")
    ap.add_argument("--warm", type=int, default=10, help="pages per window before timing")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    out = run(args.records, args.rounds, args.pages, args.warm)
    if args.json:
        print(json.dumps(out, indent=1))
    else:
        for case in CASES:
            for name, t in out[case].items():
                if isinstance(t, dict):
                    print(f"{case:13} {name:11} median {t['median_ms']:.2f} ms  ({t['min_ms']:.2f}-{t['max_ms']:.2f})")
            print(f"{case:13} the member holds {out[case]['clients_of_the_member']} clients")
        print("load average", " ".join(f"{x:.2f}" for x in out["loadavg"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
