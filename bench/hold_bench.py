"""The running placement's value (solver.hold.value_running): CPU per snapshot, now against ``--before-rev``.

The leader values what runs every round (agent/hysteresis.py), in its solver worker, on a Jetson 3-5x slower
than this machine. Snapshots: the thesis's sizes (25 x 10, 50 x 10, 25 x 20 requests x nodes, seeds
``--seeds``) with one instance of each model running on a node with probability 0.15 (bench/queue_bench.py's
``with_running``) and ``--cores`` cores per node. Each is valued with the nodes' cores shared by load
(solver.node_cpu.ALLOT_BY_LOAD, the default) and by the equal split; least CPU of ``--repeats`` rounds,
the code of ``--before-rev`` (extracted with ``git archive``) and the working tree's alternating in separate
processes, so both see the same load. Prints per snapshot the CPU ms, now / before, the values and their
duality gaps (the two must agree within the larger gap where both converged), and the load average.

``--steady``: the steady state instead (issue 16): each snapshot (no running instances drawn) held at the counts
its own queue plan asks for in Modes 1 and 2, what runs once the leader applied the last plan; by load only.
Prints CPU ms, steps, values and gaps now / before, and medians and maxima of them and of the values' change;
where the tree's value_running takes warm starts, also from the cheapest nodes in the same process (``cold_*``), the
leader's round (the plan's solve + the value) and the next round (rates off by up to 5 %, the same counts held),
valued from the plan's split and the last round's as the solver worker does (``next_*``), and from the plan's alone.

    .venv/bin/python bench/hold_bench.py --before-rev main [--steady] [--cores 2 1] [--seeds 2] [--repeats 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SIZES = ((25, 10), (50, 10), (25, 20))
CPU_KEYS = ("cpu_ms", "cold_cpu_ms", "solve_ms", "next_cpu_ms", "next_plan_cpu_ms")  # least of the rounds


def _snapshot(size: tuple[int, int], seed: int, cores: float) -> Any:
    """The thesis instance with running instances (share 0.15, as queue_bench's with_running) and cores."""
    import dataclasses
    import random

    from solver.simulate import thesis_instance

    snap = thesis_instance(size[0], size[1], seed)
    rng = random.Random(seed)
    nodes = tuple(
        dataclasses.replace(n, instances={m.name: 1 for m in snap.models if rng.random() < 0.15}) for n in snap.nodes
    )
    nodes = tuple(dataclasses.replace(n, cores=cores if n.cores is None else n.cores) for n in nodes)
    return dataclasses.replace(snap, nodes=nodes)


def _steady(size: tuple[int, int], seed: int, cores: float, mode: str) -> tuple[Any, Any, float]:
    """The steady state: the thesis instance with ``cores`` per node, its own queue plan (held at the counts it asks
    for) and the plan's solve CPU ms: (snapshot, plan, ms)."""
    import dataclasses
    import time

    from solver.api import solve
    from solver.simulate import thesis_instance

    snap = thesis_instance(size[0], size[1], seed)
    snap = dataclasses.replace(snap, nodes=tuple(dataclasses.replace(n, cores=cores) for n in snap.nodes))
    t0 = time.process_time()
    plan = solve(snap, mode=mode, objective="queue")
    return snap, plan, (time.process_time() - t0) * 1000.0


def _next_round(snap: Any, seed: int) -> Any:
    """The next round's snapshot in the steady state: every stream's rate off by up to 5 % (window noise), seeded."""
    import dataclasses
    import random

    rng = random.Random(seed)
    rates = tuple(dataclasses.replace(r, rate=(r.rate or 1.0) * (1 + rng.uniform(-0.05, 0.05))) for r in snap.requests)
    return dataclasses.replace(snap, requests=rates)


def _timed(call: Any) -> tuple[Any, float]:
    """(call(), its CPU ms)."""
    import time

    t0 = time.process_time()
    out = call()
    return out, (time.process_time() - t0) * 1000.0


def steady_worker(cores: list[float], seeds: int) -> list[dict[str, Any]]:
    """One round of the steady state (``--steady``): per snapshot and mode, value_running's CPU ms, steps, value, as
    the solver worker calls it (from the plan's split where the code takes ``starts``), the cheapest-node start's
    (``cold_*``), the plan's solve CPU (``solve_ms``: the leader's round is both) and the next round's (rates off
    by up to 5 %, the same counts held: ``next_*`` from the plan's split and the last round's as the worker keeps it,
    ``next_plan_*`` from the plan's alone)."""
    import inspect

    from solver.api import solve
    from solver.hold import value_running

    def _value(snap: Any, held: Any, starts: dict[str, Any]) -> Any:
        """value_running from ``starts`` where the code takes them, else from the cheapest nodes (main's)."""
        if "starts" in inspect.signature(value_running).parameters:
            return value_running(snap, held, starts=starts)
        return value_running(snap, held)

    rows = []
    for c in cores:
        for size in SIZES:
            for seed in range(seeds):
                for mode in ("1", "2"):
                    snap, plan, solve_ms = _steady(size, seed, c, mode)
                    held = {node: dict(models) for node, models in plan.instances.items()}
                    v, ms = _timed(lambda: _value(snap, held, {"plan": plan.shares}))  # noqa: B023
                    cold, cold_ms = _timed(lambda: value_running(snap, held))  # noqa: B023
                    nxt = _next_round(snap, seed)
                    plan2 = solve(nxt, mode=mode, objective="queue")
                    both = {"plan": plan2.shares, "last round": list(getattr(v, "shares", ()))}
                    v2, ms2 = _timed(lambda: _value(nxt, held, both))  # noqa: B023
                    p2, p2_ms = _timed(lambda: _value(nxt, held, {"plan": plan2.shares}))  # noqa: B023
                    rows.append({"case": f"{size[0]}x{size[1]} s{seed} c{c:g} M{mode}", "by_load": True, "cpu_ms": ms,
                                 "objective_ms": v.objective_ms, "gap_ms": v.gap_ms, "steps": v.steps,
                                 "start": getattr(v, "start", "cheapest"), "cold_cpu_ms": cold_ms,
                                 "cold_steps": cold.steps, "cold_objective_ms": cold.objective_ms,
                                 "overloaded": len(v.overloaded), "solve_ms": solve_ms, "next_cpu_ms": ms2,
                                 "next_steps": v2.steps, "next_objective_ms": v2.objective_ms, "next_gap_ms": v2.gap_ms,
                                 "next_start": getattr(v2, "start", "cheapest"), "next_plan_cpu_ms": p2_ms,
                                 "next_plan_steps": p2.steps})  # fmt: skip
    return rows


def worker(cores: list[float], seeds: int) -> list[dict[str, Any]]:
    """One round with the code on sys.path: per snapshot and allotment, value_running's CPU ms and value."""
    import time

    from solver import node_cpu
    from solver.hold import value_running

    rows = []
    for c in cores:
        for size in SIZES:
            for seed in range(seeds):
                snap = _snapshot(size, seed, c)
                for by_load in (True, False):
                    if not hasattr(node_cpu, "ALLOT_BY_LOAD") and by_load:
                        continue  # a revision before the allotment by load: the equal split only
                    node_cpu.ALLOT_BY_LOAD = by_load
                    t0 = time.process_time()
                    v = value_running(snap)
                    ms = (time.process_time() - t0) * 1000.0
                    rows.append({"case": f"{size[0]}x{size[1]} s{seed} c{c:g}", "by_load": by_load, "cpu_ms": ms,
                                 "objective_ms": v.objective_ms, "gap_ms": v.gap_ms})  # fmt: skip
    return rows


def _round(code: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    """One worker round in a fresh process on ``code``'s tree."""
    argv = [sys.executable, str(Path(__file__).resolve()), "--worker", "--seeds", str(args.seeds)]
    argv += ["--steady", "--cores"] if args.steady else ["--cores"]
    env = {**os.environ, "PYTHONPATH": str(code)}
    out = subprocess.run([*argv, *map(str, args.cores)], check=True, capture_output=True, text=True, env=env, cwd=code)
    return list(json.loads(out.stdout))


def _least(rounds: list[list[dict[str, Any]]]) -> dict[tuple[str, bool], dict[str, Any]]:
    """Per (case, by_load): the last round's values with the least CPU over the rounds."""
    out: dict[tuple[str, bool], dict[str, Any]] = {}
    for rows in rounds:
        for r in rows:
            key = (r["case"], r["by_load"])
            kept = out.get(key, {})
            out[key] = {**r, **{k: min(kept.get(k, float("inf")), r[k]) for k in CPU_KEYS if k in r}}
    return out


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Both codes, alternating, ``args.repeats`` rounds each; the rows and the summary ratios."""
    sys.path.insert(0, str(REPO))  # the parent only: a worker imports the tree it measures
    from bench.common import extract_revision

    load = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory() as tmp:
        before_code = extract_revision(args.before_rev, Path(tmp)) if args.before_rev else None
        now_rounds, before_rounds = [], []
        for _ in range(args.repeats):
            if before_code is not None:
                before_rounds.append(_round(before_code, args))
            now_rounds.append(_round(REPO, args))
    load.append(os.getloadavg()[0])
    now, before = _least(now_rounds), _least(before_rounds)
    rows = []
    for (case, by_load), r in now.items():
        b = before.get((case, by_load))
        keys = ("cpu_ms", "objective_ms", "gap_ms", "steps", "solve_ms", "next_cpu_ms", "next_steps")
        keys += ("next_objective_ms", "next_gap_ms")
        rows.append({**r, **{f"before_{key}": b.get(key) if b else None for key in keys}})
    summary = _steady_summary(rows) if args.steady else _summary(rows)
    return {"rows": rows, "summary": summary, "load_average": load, "before_rev": args.before_rev}


def _steady_summary(rows: list[dict[str, Any]]) -> dict[str, float]:
    """The steady state's CPU (median, max) now and before, their ratio, steps, and the values' relative change
    and gaps (now - before over before: positive where the value now is higher, within its larger gap)."""
    out: dict[str, float] = {}
    figures = {
        "cpu_ms_now": [r["cpu_ms"] for r in rows],
        "cpu_ms_before": [r["before_cpu_ms"] for r in rows if r["before_cpu_ms"]],
        "ratio_now_over_before": [r["cpu_ms"] / r["before_cpu_ms"] for r in rows if r["before_cpu_ms"]],
        "steps_now": [float(r["steps"]) for r in rows],
        "steps_before": [float(r["before_steps"]) for r in rows if r["before_steps"] is not None],
        "relative_gap_now": [r["gap_ms"] / r["objective_ms"] for r in rows if r["objective_ms"]],
        "relative_gap_before": [
            r["before_gap_ms"] / r["before_objective_ms"] for r in rows if r["before_objective_ms"]
        ],
        "value_change": [r["objective_ms"] / r["before_objective_ms"] - 1 for r in rows if r["before_objective_ms"]],
        **_warm_figures(rows),
    }  # fmt: skip
    for key, values in figures.items():
        if values:
            out[f"{key}_median"], out[f"{key}_max"] = statistics.median(values), max(values)
    return out


def _warm_figures(rows: list[dict[str, Any]]) -> dict[str, list[float]]:
    """The warm start's figures (rows from a tree whose value_running takes the plan's split): now against the
    cheapest-node start in the same process, steps where nothing is overloaded, and the leader's round (the plan's
    solve + the value) against before's."""
    warm = [r for r in rows if "cold_cpu_ms" in r]
    calm = [r for r in warm if not r["overloaded"]]
    round_before = [r for r in warm if r.get("before_solve_ms") is not None and r["before_cpu_ms"]]
    return {
        "warm_starts": [float(sum(r["start"] != "cheapest" for r in warm))] if warm else [],
        "next_cpu_ms_now": [r["next_cpu_ms"] for r in warm],
        "next_cpu_ms_before": [r["before_next_cpu_ms"] for r in warm if r.get("before_next_cpu_ms")],
        "next_plan_only_cpu_ms": [r["next_plan_cpu_ms"] for r in warm],
        "next_steps_now_not_overloaded": [float(r["next_steps"]) for r in calm],
        "next_plan_only_steps_not_overloaded": [float(r["next_plan_steps"]) for r in calm],
        "next_steps_before_not_overloaded": [float(r["before_next_steps"]) for r in calm if r.get("before_next_steps")],
        "next_value_change": [
            r["next_objective_ms"] / r["before_next_objective_ms"] - 1
            for r in warm
            if r.get("before_next_objective_ms")
        ],
        "cold_cpu_ms": [r["cold_cpu_ms"] for r in warm],
        "ratio_now_over_cold": [r["cpu_ms"] / r["cold_cpu_ms"] for r in warm if r["cold_cpu_ms"]],
        "cold_steps": [float(r["cold_steps"]) for r in warm],
        "steps_now_not_overloaded": [float(r["steps"]) for r in calm],
        "cold_steps_not_overloaded": [float(r["cold_steps"]) for r in calm],
        "value_change_vs_cold_not_overloaded": [r["objective_ms"] / r["cold_objective_ms"] - 1 for r in calm],
        "round_cpu_ms_now": [r["solve_ms"] + r["cpu_ms"] for r in round_before],
        "round_cpu_ms_before": [r["before_solve_ms"] + r["before_cpu_ms"] for r in round_before],
        "round_ratio_now_over_before": [
            (r["solve_ms"] + r["cpu_ms"]) / (r["before_solve_ms"] + r["before_cpu_ms"]) for r in round_before
        ],
    }


def _summary(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Medians and maxima of the CPU ratios (by load now over: the equal split before / now, by load before)."""
    equal_before = {r["case"]: r["before_cpu_ms"] for r in rows if not r["by_load"] and r["before_cpu_ms"]}
    equal_now = {r["case"]: r["cpu_ms"] for r in rows if not r["by_load"]}
    by_load = [r for r in rows if r["by_load"]]
    ratios = {
        "vs_equal_before": [r["cpu_ms"] / equal_before[r["case"]] for r in by_load if r["case"] in equal_before],
        "vs_equal_now": [r["cpu_ms"] / equal_now[r["case"]] for r in by_load if r["case"] in equal_now],
        "vs_by_load_before": [r["cpu_ms"] / r["before_cpu_ms"] for r in by_load if r["before_cpu_ms"]],
    }
    out: dict[str, float] = {}
    for key, values in ratios.items():
        if values:
            out[f"{key}_median"], out[f"{key}_max"] = statistics.median(values), max(values)
    return out


def main(argv: list[str] | None = None) -> int:
    """Parse the flags, measure, print a table (or --json)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before-rev", help="git revision to compare with in the same run (e.g. main)")
    parser.add_argument("--cores", type=float, nargs="+", default=[2.0, 1.0], help="cores per node (default 2 1)")
    parser.add_argument("--seeds", type=int, default=2, help="seeds per size (default 2)")
    parser.add_argument("--repeats", type=int, default=2, help="rounds per code; the least CPU is kept (default 2)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    steady = "the steady state instead: each snapshot held at its own queue plan's counts (Modes 1, 2)"
    parser.add_argument("--steady", action="store_true", help=steady)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps((steady_worker if args.steady else worker)(args.cores, args.seeds)))
        return 0
    out = measure(args)
    if args.json:
        print(json.dumps(out, indent=1))
        return 0
    print(f"value_running CPU ms (least of {args.repeats}); before = {args.before_rev or '-'}; "
          f"load average {out['load_average'][0]:.2f} -> {out['load_average'][1]:.2f}")  # fmt: skip
    print(f"{'case':<19} {'cores':<8} {'now ms':>8} {'before':>8} {'ratio':>6}  {'value now':>14} {'gap':>9}"
          f"  {'value before':>14} {'gap':>9}")  # fmt: skip
    for r in sorted(out["rows"], key=lambda r: (r["case"], not r["by_load"])):
        before = r["before_cpu_ms"]
        ratio = f"{r['cpu_ms'] / before:6.2f}" if before else "     -"
        b_value = f"{r['before_objective_ms']:14.6g} {r['before_gap_ms']:9.3g}" if before else ""
        steps = f"  steps {r['steps']} / {r['before_steps']}" if "steps" in r else ""
        if "cold_cpu_ms" in r:
            steps += f"  from {r['start']}; cold {r['cold_cpu_ms']:.1f} ms {r['cold_steps']} steps; next round"
            steps += f" {r['next_cpu_ms']:.1f} ms {r['next_steps']} steps from {r['next_start']}"
        kind, shown = "by load" if r["by_load"] else "equal", before if before else float("nan")
        print(f"{r['case']:<19} {kind:<8} {r['cpu_ms']:8.1f} {shown:8.1f} {ratio}  "
              f"{r['objective_ms']:14.6g} {r['gap_ms']:9.3g}  {b_value}{steps}")  # fmt: skip
    for key, value in sorted(out["summary"].items()):
        print(f"{key}: {value:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
