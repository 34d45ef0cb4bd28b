"""Ipopt option sets on the queue NLP's R(S) problems (issue 16 item 5): iterations, time and optimum per set.

The problems are the ones ``solver.queue_fast`` hands to Ipopt while the bench's placements run
(bench/queue_bench.py's thesis sizes, Mode 1 and 2, and Mode 1 with instances running), captured once per
``--cores`` value (0: no cores). Each option set then solves every captured problem in the compact form
from solver.queue_start's start: the cold path, which solver.queue_warm falls back to and whose
per-iteration cost its warm solves share (``solver.queue_model.IPOPT_NLP_COMPACT`` replaced by the set, the
retries kept). "gap" is the worst relative gap of a set's optimum (Ipopt's objective of R(S)) over the
reference form's (``compact=False``, its own options); the time columns are each set's CPU ms over the first set's
in the same run (the sets run interleaved per problem, so they share the machine's load); "retry" counts
the solves that needed a retry or ended not optimal.

    PYTHONPATH=. .venv/bin/python bench/ipopt_options.py [--seeds N] [--cores N [N ...]] [--json]
                                                         [--set NAME KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import time
from typing import Any

import numpy as np

from bench.queue_bench import SIZES, with_cores, with_running
from solver import queue_fast, queue_model
from solver.api import solve
from solver.fastlp import tune_solver_process
from solver.simulate import thesis_instance

BASE = dict(queue_model.IPOPT_NLP_COMPACT)
# Candidate sets: each one a change against the current compact options (None removes an option).
# Mehrotra's predictor-corrector needs mu_strategy adaptive (with monotone Ipopt stops: "Invalid option") and
# switches the line search off; mu_init and the superlinear power are monotone-only options.
MEHROTRA = {
    "mehrotra_algorithm": "yes",
    "mu_strategy": "adaptive",
    "mu_init": None,
    "mu_superlinear_decrease_power": None,
}
SETS: dict[str, dict[str, Any]] = {
    "current": {},
    "monotone_plain": {"mu_init": None, "mu_superlinear_decrease_power": None, "nlp_scaling_max_gradient": None},
    "no_fast_step": {"fast_step_computation": None},
    "mehrotra": MEHROTRA,
    "probing": {"mu_strategy": "adaptive", "mu_oracle": "probing"},
}


class _Counter(logging.Handler):
    """Counts the queue model's retry warnings."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1


def capture(seeds: int, cores: float | None) -> list[tuple[str, Any, Any]]:
    """The R(S) problems (label, QueueProblem, allowed) queue_fast gives Ipopt on the bench's instances."""
    found: list[tuple[str, Any, Any]] = []
    original = queue_fast._solve_sub
    label = ""

    def spy(q: Any, allowed: Any) -> Any:
        if allowed.any():
            found.append((label, q, allowed.copy()))
        return original(q, allowed)

    queue_fast._solve_sub = spy  # type: ignore[assignment]
    try:
        for r, n in SIZES:
            for s in range(seeds):
                snap = with_cores(thesis_instance(r, n, s), cores)
                for mode in ("1", "2"):
                    label = f"{r}x{n} m{mode}"
                    solve(snap, mode=mode, objective="queue")
                label = f"{r}x{n} run"
                solve(with_cores(with_running(thesis_instance(r, n, s), s), cores), mode="1", objective="queue")
    finally:
        queue_fast._solve_sub = original  # type: ignore[assignment]
    return found


def options_for(change: dict[str, Any]) -> dict[str, Any]:
    """The compact options with ``change`` applied (None removes an option)."""
    out = dict(BASE)
    for key, value in change.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = value
    return out


def run_one(q: Any, allowed: Any, options: dict[str, Any], counter: _Counter) -> tuple[float, int, float, int, str]:
    """CPU ms, iterations, objective, retries and status of one compact solve of R(S) under ``options``."""
    saved = queue_model.IPOPT_NLP_COMPACT
    queue_model.IPOPT_NLP_COMPACT = options
    before = counter.count
    try:
        start = time.process_time()
        sol, _ = queue_model.solve_restricted(q, np.flatnonzero(allowed.ravel()))
        ms = 1000.0 * (time.process_time() - start)
    finally:
        queue_model.IPOPT_NLP_COMPACT = saved
    return ms, sol.iterations, sol.value, counter.count - before, sol.status


def measure(problems: list[tuple[str, Any, Any]], sets: dict[str, dict[str, Any]], repeat: int) -> dict[str, Any]:
    """Per set: median/max iterations, median ms ratio to the first set, worst relative gap, retries."""
    counter = _Counter()
    logger = logging.getLogger("solver.queue_model")
    logger.addHandler(counter)
    try:
        stats, bad = _collect(problems, sets, repeat, counter)
    finally:
        logger.removeHandler(counter)
    base = stats[next(iter(sets))]["ms"]
    out = {}
    for name, s in stats.items():
        out[name] = {
            "median_iterations": statistics.median(s["it"]),
            "max_iterations": max(s["it"]),
            "total_iterations": sum(s["it"]),
            "median_ms": statistics.median(s["ms"]),
            "ms_ratio_median": statistics.median(a / b for a, b in zip(s["ms"], base, strict=True)),
            "total_ms_ratio": sum(s["ms"]) / sum(base),
            "worst_gap": max(s["gap"]),
            "retries": int(sum(s["retries"])),
            "not_optimal": bad[name],
        }
    return out


def _collect(
    problems: list[tuple[str, Any, Any]], sets: dict[str, dict[str, Any]], repeat: int, counter: _Counter
) -> tuple[dict[str, dict[str, list[float]]], dict[str, int]]:
    """Each set on each problem, interleaved: fastest CPU ms, iterations, gap to the reference, retries."""
    stats: dict[str, dict[str, list[float]]] = {n: {"ms": [], "it": [], "gap": [], "retries": []} for n in sets}
    bad: dict[str, int] = dict.fromkeys(sets, 0)
    for _, q, allowed in problems:
        ref_value = queue_model.solve_restricted(q, np.flatnonzero(allowed.ravel()), compact=False)[0].value
        for name, change in sets.items():
            runs = [run_one(q, allowed, options_for(change), counter) for _ in range(repeat)]
            _, it, value, retries, status = runs[0]
            stats[name]["ms"].append(min(r[0] for r in runs))
            stats[name]["it"].append(it)
            stats[name]["gap"].append(abs(value - ref_value) / max(abs(ref_value), 1e-12))
            stats[name]["retries"].append(retries)
            bad[name] += status != "optimal"
    return stats, bad


def parse_sets(raw: list[list[str]] | None) -> dict[str, dict[str, Any]]:
    """The built-in sets, or 'current' and the command line's (``NAME KEY=VALUE ...``; VALUE '-' removes)."""
    if not raw:
        return SETS
    sets: dict[str, dict[str, Any]] = {"current": {}}
    for name, *pairs in raw:
        change: dict[str, Any] = {}
        for pair in pairs:
            key, value = pair.split("=", 1)
            change[key] = None if value == "-" else _number(value)
        sets[name] = change
    return sets


def _number(value: str) -> Any:
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=2, help="instances per size (default 2)")
    ap.add_argument("--cores", type=float, nargs="+", default=[0.0, 2.0, 1.0], metavar="N",
                    help="cores per node of the captured problems (0: none); one table each")  # fmt: skip
    ap.add_argument("--repeat", type=int, default=1, help="solves per (problem, set); the fastest counts")
    ap.add_argument("--set", nargs="+", action="append", metavar="NAME KEY=VALUE",
                    help="an option set against the current options (VALUE '-' removes the option); "
                         "replaces the built-in sets, 'current' stays first")  # fmt: skip
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = ap.parse_args()
    tune_solver_process()
    sets = parse_sets(args.set)
    results = []
    for cores in args.cores:
        problems = capture(args.seeds, cores or None)
        results.append({"cores": cores, "problems": len(problems), "sets": measure(problems, sets, args.repeat)})
    if args.json:
        print(json.dumps({"load_average": os.getloadavg(), "results": results}, indent=1))
        return
    for res in results:
        print(f"== cores {res['cores']:g}: {res['problems']} R(S) problems; load average {os.getloadavg()[0]:.2f}")
        print(f"{'set':<22}{'it med':>8}{'it max':>8}{'ms med':>8}{'ms/cur':>8}{'tot/cur':>8}{'gap':>10}{'retry':>6}")
        for name, s in res["sets"].items():
            print(
                f"{name:<22}{s['median_iterations']:>8.0f}{s['max_iterations']:>8}{s['median_ms']:>8.2f}"
                f"{s['ms_ratio_median']:>8.2f}{s['total_ms_ratio']:>8.2f}{s['worst_gap']:>10.1e}"
                f"{s['retries'] + s['not_optimal']:>6}"
            )


if __name__ == "__main__":
    main()
