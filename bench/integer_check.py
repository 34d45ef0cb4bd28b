"""Same plans, exactly: digests of whole queue-aware solves over a corpus, for checking a speed-up of the integer part.

The corpus (issue 16 target 5's speed-ups must not move a plan): the thesis's sizes (bench/queue_bench.py's SIZES)
x seeds x cores {none, 1, 2} x Mode 1 / Mode 2, their ``running`` variants (Mode 1), site instances,
bench/bound_sweep.py's clusters and overloaded clusters (the instance bound's repair), and the random snapshots of
tests/unit/test_queue_repair_golden (Mode 1 / Mode 2 by seed), with ``queue`` and ``queue-p99``. Each
plan is digested (sha256 of its JSON with the timing fields left out: ``solve_ms``, ``details.relaxation_ms``), so
two checkouts' digests compare bit for bit (every float's repr)::

    PYTHONPATH=/work/main .venv/bin/python bench/integer_check.py --out /tmp/before.json
    PYTHONPATH=$PWD .venv/bin/python bench/integer_check.py --out /tmp/after.json --against /tmp/before.json

``--seeds`` (default 5) and ``--quick`` (seeds 0-1, no site instances) size the corpus.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import sys
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from bench.bound_sweep import cluster, overloaded_seed
from bench.queue_bench import SIZES, with_cores, with_running
from solver.api import solve
from solver.simulate import site_instance, thesis_instance
from solver.snapshot import Snapshot

CORES = (None, 1.0, 2.0)  # cores per node (None: as the snapshot declares: none)
SITE_SEEDS = 2  # 1,000-request x 100-node site instances per cores value
SWEEP_PER_SEED = 20  # bench/bound_sweep.py's clusters and overloaded clusters per seed, each
RANDOM_PER_SEED = 4  # random snapshots (test_queue_repair_golden's) per seed, each with queue and queue-p99
TIMING = ("solve_ms",)
DETAIL_TIMING = ("relaxation_ms",)


def corpus(seeds: int, sites: bool = True) -> Iterator[tuple[str, Snapshot, str, str]]:
    """(key, snapshot, mode, objective) over the corpus (module docstring): ``plans(seeds, sites)`` of them."""
    from tests.unit.test_queue_repair_golden import snapshot as random_snapshot

    for cores in CORES:
        for r, n in SIZES:
            tag = f"thesis/{r}x{n}"
            for s in range(seeds):
                snap = with_cores(thesis_instance(r, n, s), cores)
                for mode in ("1", "2"):
                    yield f"{tag}/s{s}/c{cores}/m{mode}", snap, mode, "queue"
                running = with_cores(with_running(thesis_instance(r, n, s), s), cores)
                yield f"{tag}/s{s}/c{cores}/m1/running", running, "1", "queue"
            yield f"{tag}/s0/c{cores}/m1/p99", with_cores(thesis_instance(r, n, 0), cores), "1", "queue-p99"
        for s in range(SITE_SEEDS if sites else 0):
            site = with_cores(site_instance(1000, 100, 50, s), cores)
            yield f"site/1000x100/s{s}/c{cores}/m1", site, "1", "queue"
    for s in range(SWEEP_PER_SEED * seeds):  # bench/bound_sweep.py's clusters: the instance bound's repair at work
        snap, tail = cluster(s)
        yield f"bound/s{s}", snap, "1", "queue-p99" if tail else "queue"
        snap, mode, tail = overloaded_seed(s)
        yield f"overloaded/s{s}", snap, str(mode.value), "queue-p99" if tail else "queue"
    for s in range(RANDOM_PER_SEED * seeds):
        snap = random_snapshot(np.random.default_rng(s))
        mode = "2" if s % 2 else "1"
        yield f"random/s{s}", snap, mode, "queue"
        yield f"random/s{s}/p99", snap, mode, "queue-p99"


def plans(seeds: int, sites: bool = True) -> int:
    """How many plans ``corpus(seeds, sites)`` solves (it grows linearly in ``seeds``)."""
    per_cores = len(SIZES) * (3 * seeds + 1) + (SITE_SEEDS if sites else 0)
    return len(CORES) * per_cores + 2 * (SWEEP_PER_SEED + RANDOM_PER_SEED) * seeds


def digest(plan: Any) -> str:
    """sha256 of the plan's JSON (floats as their repr), timing fields left out."""
    data = dataclasses.asdict(plan)
    for key in TIMING:
        data.pop(key, None)
    details = dict(data.get("details") or {})
    for key in DETAIL_TIMING:
        details.pop(key, None)
    data["details"] = details
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=repr).encode()).hexdigest()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", required=True)
    parser.add_argument("--against")
    args = parser.parse_args()
    seeds = 2 if args.quick else args.seeds
    out: dict[str, str] = {}
    start = time.process_time()
    for key, snap, mode, objective in corpus(seeds, sites=not args.quick):
        out[key] = digest(solve(snap, mode=mode, objective=objective))
    print(f"{len(out)} plans in {time.process_time() - start:.1f} s CPU", file=sys.stderr)
    with open(args.out, "w") as fh:
        json.dump(out, fh, indent=0, sort_keys=True)
    if args.against:
        with open(args.against) as fh:
            want = json.load(fh)
        differ = sorted(k for k in want if out.get(k) != want[k])
        missing = sorted(set(want) ^ set(out))
        print(f"{len(want)} compared, {len(differ)} differ, {len(missing)} missing either side")
        for k in differ[:40]:
            print("  differs:", k)
        return 1 if differ or missing else 0
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
