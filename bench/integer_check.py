"""Same plans, exactly: digests of whole queue-aware solves over a corpus, for checking a speed-up of the integer part.

The corpus (issue 16 target 5's speed-ups must not move a plan): the thesis's sizes (bench/queue_bench.py's SIZES)
x seeds x cores {none, 1, 2} x Mode 1 / Mode 2, their ``running`` variants (Mode 1), site instances,
bench/bound_sweep.py's clusters and overloaded clusters (the instance bound's repair), and the random snapshots of
tests/unit/test_queue_repair_golden (Mode 1 / Mode 2 by seed), with ``queue`` and ``queue-p99``. Each
plan is digested (sha256 of its JSON with the timing fields left out: ``solve_ms``, ``details.relaxation_ms``), so
two checkouts' digests compare bit for bit (every float's repr)::

    PYTHONPATH=/work/main .venv/bin/python bench/integer_check.py --out /tmp/before.json
    PYTHONPATH=$PWD .venv/bin/python bench/integer_check.py --out /tmp/after.json --against /tmp/before.json

``--seeds`` (default 5) and ``--quick`` (seeds 0-1, no site instances) size the corpus; ``--first`` (default 0) is its
first seed (``--first 5 --seeds 5``: fresh cases, to check a heuristic fitted on the default corpus).

``--quality``: a speed-up that moves plans (the relaxation's last bits decide ties, so any change of its arithmetic
does) is judged by what the plans are worth instead of their bits. Each plan's record keeps its mean latency
(``objective_ms``), rejected requests, instances and feasibility beside the digest; ``compare`` reports how many
plans moved, got better or worse, and the worst and mean relative change of the mean latency, and the speed-up
passes (exit 0) only within ``Gate``: no plan turned infeasible or rejects more requests, no plan's mean latency
worse by more than ``Gate.worst``, the mean change over the corpus at most ``Gate.mean`` and the corpus's instances
no more than before. A plan that rejects fewer requests is better whatever its mean (it serves more, farther).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import sys
import time
from collections.abc import Callable, Iterator
from functools import partial
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


def corpus(seeds: int, sites: bool = True, first: int = 0) -> Iterator[tuple[str, Callable[[], Snapshot], str, str]]:
    """(key, build, mode, objective) over the corpus (module docstring): ``plans(seeds, sites)`` of them, from seed
    ``first`` (0: the corpus the records were made on; another: fresh cases for a heuristic fitted to them).
    ``build()`` makes the case's snapshot, only when it is solved (a 1,000 x 100 site instance costs seconds)."""
    from tests.unit.test_queue_repair_golden import snapshot as random_snapshot

    for cores in CORES:
        for r, n in SIZES:
            tag = f"thesis/{r}x{n}"
            for s in range(first, first + seeds):
                for mode in ("1", "2"):
                    yield f"{tag}/s{s}/c{cores}/m{mode}", partial(_thesis, r, n, s, cores), mode, "queue"
                yield f"{tag}/s{s}/c{cores}/m1/running", partial(_thesis, r, n, s, cores, running=True), "1", "queue"
            yield f"{tag}/s{first}/c{cores}/m1/p99", partial(_thesis, r, n, first, cores), "1", "queue-p99"
        for s in range(first, first + (SITE_SEEDS if sites else 0)):
            yield f"site/1000x100/s{s}/c{cores}/m1", partial(_site, s, cores), "1", "queue"
    # bench/bound_sweep.py's clusters: the instance bound's repair at work
    for s in range(SWEEP_PER_SEED * first, SWEEP_PER_SEED * (first + seeds)):
        snap, tail = cluster(s)
        yield f"bound/s{s}", _given(snap), "1", "queue-p99" if tail else "queue"
        snap, mode, tail = overloaded_seed(s)
        yield f"overloaded/s{s}", _given(snap), str(mode.value), "queue-p99" if tail else "queue"
    for s in range(RANDOM_PER_SEED * first, RANDOM_PER_SEED * (first + seeds)):
        snap = random_snapshot(np.random.default_rng(s))
        mode = "2" if s % 2 else "1"
        yield f"random/s{s}", _given(snap), mode, "queue"
        yield f"random/s{s}/p99", _given(snap), mode, "queue-p99"


def _thesis(r: int, n: int, seed: int, cores: float | None, running: bool = False) -> Snapshot:
    """The thesis's instance of ``r`` requests x ``n`` nodes from ``seed``, with its running variant and cores."""
    snap = thesis_instance(r, n, seed)
    return with_cores(with_running(snap, seed) if running else snap, cores)


def _site(seed: int, cores: float | None) -> Snapshot:
    """A 1,000-request x 100-node site instance (50 sites) from ``seed``, with cores."""
    return with_cores(site_instance(1000, 100, 50, seed), cores)


def _given(snap: Snapshot) -> Callable[[], Snapshot]:
    """A snapshot already made (the cheap cases), as a builder."""
    return lambda: snap


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


@dataclasses.dataclass(frozen=True)
class Gate:
    """How far plans may move under ``--quality`` (relative changes of a plan's mean latency; + is worse)."""

    worst: float = 0.01  # no plan's mean latency more than 1 % worse
    mean: float = 0.0005  # the corpus's mean relative change at most +0.05 %


def record(plan: Any) -> dict[str, Any]:
    """What ``--quality`` compares of a plan: its digest and what it is worth."""
    return {
        "digest": digest(plan),
        "objective_ms": float(plan.objective_ms),
        "rejected": len(plan.rejected),
        "instances": sum(sum(models.values()) for models in plan.instances.values()),
        "feasible": bool(plan.feasible),
    }


def compare(want: dict[str, Any], got: dict[str, Any], gate: Gate = Gate()) -> tuple[bool, list[str]]:
    """Whether ``got``'s plans are worth at least ``want``'s within ``gate``, and the lines that say so.

    Both map a corpus key to a ``record``; keys on one side only fail the check (different corpora)."""
    lines: list[str] = []
    failures: list[str] = []
    missing = sorted(set(want) ^ set(got))
    if missing:
        failures.append(f"{len(missing)} keys on one side only, e.g. {missing[0]}")
    keys = sorted(set(want) & set(got))
    moved = better = worse = 0
    changes: list[float] = []
    worst_key, worst = "", 0.0
    for key in keys:
        a, b = want[key], got[key]
        if a["digest"] == b["digest"]:
            changes.append(0.0)
            continue
        moved += 1
        if a["feasible"] and not b["feasible"]:
            failures.append(f"{key}: feasible before, not now")
        if b["rejected"] > a["rejected"]:
            failures.append(f"{key}: rejects {b['rejected']} requests, {a['rejected']} before")
        if b["rejected"] < a["rejected"]:
            better += 1
            changes.append(0.0)
            continue
        change = (b["objective_ms"] - a["objective_ms"]) / max(abs(a["objective_ms"]), 1e-9)
        changes.append(change)
        better += change < 0
        worse += change > 0
        if change > worst:
            worst_key, worst = key, change
    mean = sum(changes) / len(changes) if changes else 0.0
    before = sum(want[k]["instances"] for k in keys)
    after = sum(got[k]["instances"] for k in keys)
    lines.append(f"{len(keys)} plans compared: {moved} moved ({better} better, {worse} worse)")
    lines.append(f"mean latency: worst {worst:+.4%} ({worst_key or '-'}), mean {mean:+.5%}")
    lines.append(f"instances over the corpus: {before} before, {after} now")
    if worst > gate.worst:
        failures.append(f"worst plan {worst:+.4%} > {gate.worst:+.2%} ({worst_key})")
    if mean > gate.mean:
        failures.append(f"mean change {mean:+.5%} > {gate.mean:+.3%}")
    if after > before:
        failures.append(f"{after - before} more instances over the corpus")
    return not failures, lines + [f"FAIL {f}" for f in failures]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--first", type=int, default=0, help="the first seed (0; e.g. 5 with --seeds 5: fresh cases)")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", required=True)
    parser.add_argument("--against")
    parser.add_argument("--quality", action="store_true", help="judge moved plans by their worth (see above)")
    args = parser.parse_args()
    seeds = 2 if args.quick else args.seeds
    out: dict[str, Any] = {}
    start = time.process_time()
    for key, build, mode, objective in corpus(seeds, sites=not args.quick, first=args.first):
        plan = solve(build(), mode=mode, objective=objective)
        out[key] = record(plan) if args.quality else digest(plan)
    print(f"{len(out)} plans in {time.process_time() - start:.1f} s CPU", file=sys.stderr)
    with open(args.out, "w") as fh:
        json.dump(out, fh, indent=0, sort_keys=True)
    if args.against:
        with open(args.against) as fh:
            want = json.load(fh)
        if args.quality:
            ok, lines = compare(want, out)
            print("\n".join(lines))
            return 0 if ok else 1
        differ = sorted(k for k in want if out.get(k) != want[k])
        missing = sorted(set(want) ^ set(out))
        print(f"{len(want)} compared, {len(differ)} differ, {len(missing)} missing either side")
        for k in differ[:40]:
            print("  differs:", k)
        return 1 if differ or missing else 0
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
