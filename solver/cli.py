"""`peerserve solve` and `peerserve simulate`."""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import math
import sys
from pathlib import Path
from typing import Any

# numpy is looked for, not imported (~85 ms and ~20 MB that `peerserve --help` and the client's commands, which
# register these commands too, never use): an install without it (the `agent` extra) lists `solve` and `simulate`
# as unavailable, saying what to install (peerserve/cli.py), as when this import brought numpy with it.
if importlib.util.find_spec("numpy") is None:
    raise ModuleNotFoundError("No module named 'numpy'", name="numpy")

SOLVE_METHODS = ("ipopt", "ipopt-pyomo", "ipopt-nl", "milp", "iterative", "nearest", "least-loaded")


def register(commands: Any) -> None:
    """Add the solver's subcommands to the top-level parser."""
    p = commands.add_parser(
        "solve",
        help="place the requests of a snapshot file",
        description=(
            "Read a snapshot (nodes, models, requests as JSON; '-' for stdin) and print the placement: "
            "where each request goes, instances per node, start/stop actions, rejected requests. "
            "The snapshot is solved twice: solve_ms is the second, warm solve (as a running leader "
            "sees it), first_call_ms the first, with one-time imports and library set-up."
        ),
    )
    p.add_argument("file", help="snapshot JSON file, or - for standard input")
    p.add_argument(
        "--method",
        choices=SOLVE_METHODS,
        default="ipopt",
        help="ipopt: LP relaxation (numpy-built, lazy rows and columns) + rounding (default); "
        "ipopt-pyomo / ipopt-nl: the same on the Pyomo reference model; milp: exact optimum (HiGHS); "
        "iterative/nearest/least-loaded: baselines",
    )
    p.add_argument(
        "--mode",
        choices=("1", "2", "auto"),
        default="1",
        help="1: available memory, keep running instances; 2: total memory, follow the solver "
        "strictly; auto: choose each round (default 1)",
    )
    p.add_argument(
        "--objective",
        choices=("queue", "queue-p99", "thesis"),
        default=None,
        help="queue: streams with request rates, instances shared by many streams, queueing delay in the "
        "objective (method ipopt); queue-p99: the same with a load cap that bounds the p99 wait and "
        "spends spare memory on instances; thesis: one instance per request stream (Chapter 3). Default: the "
        "snapshot's own 'objective' field, else thesis",
    )
    p.add_argument("--idle-s", type=float, default=600.0, help="Mode 1 eviction: idle seconds (default 600)")
    p.add_argument(
        "--min-requests",
        type=int,
        default=1,
        help="Mode 1 eviction: fewer requests than this since provisioned is unused (default 1)",
    )
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.set_defaults(handler=cmd_solve)

    s = commands.add_parser(
        "simulate",
        help="reproduce the thesis's Chapter 6 simulation",
        description=(
            "Random instances with the thesis's Table 6.1 ranges, solved by Ipopt (modes 1 and 2), the "
            "iterative search baseline and the exact MILP; prints objectives and solve times."
        ),
    )
    s.add_argument(
        "--vary",
        choices=("requests", "nodes"),
        default="requests",
        help="sweep requests 20-50 (10 nodes) or nodes 5-20 (25 requests)",
    )
    s.add_argument(
        "--objective",
        choices=("queue", "thesis"),
        default="thesis",
        help="objective of the ipopt methods (default thesis, as in the thesis's tables)",
    )
    s.add_argument("--seeds", type=int, default=5, help="instances per size (default 5)")
    s.add_argument("--json", action="store_true", help="print every point as JSON")
    s.add_argument("--plot", metavar="DIR", help="write PNG plots (objective and solve time) to DIR")
    _workload_arguments(s)
    s.set_defaults(handler=cmd_simulate)


def _workload_arguments(s: Any) -> None:
    """The options of ``simulate --workload`` (solver/workload.py)."""
    from solver.workload_spec import Workload

    d = Workload()
    w = s.add_argument_group(
        "workload mode",
        "--workload: Poisson arrivals from clients at sites, each placement (thesis, queue, queue-p99: the "
        "agent's default, nearest, least-loaded) solved and run as a discrete-event simulation of its instances' "
        "FIFO queues, requests dispatched as the agent does; "
        "prints p50/p99 latency, instances started, memory and rejections (--plot DIR writes workload.png)",
    )
    w.add_argument("--workload", action="store_true", help="run the workload mode instead of the thesis sweep")
    w.add_argument("--clients", type=int, default=d.clients, help=f"clients (default {d.clients})")
    w.add_argument("--rate", type=float, default=d.rate, help=f"requests/s per client (default {d.rate:g})")
    w.add_argument("--sites", type=int, default=d.sites, help=f"sites the clients sit at (default {d.sites})")
    w.add_argument("--nodes", type=int, default=d.nodes, help=f"nodes (default {d.nodes})")
    w.add_argument(
        "--throughput", type=float, default=d.throughput, help=f"req/s one instance serves (default {d.throughput:g})"
    )
    w.add_argument("--duration", type=float, default=d.duration_s, help=f"simulated seconds (default {d.duration_s:g})")
    w.add_argument(
        "--node-mem-mb", type=float, default=d.node_mem_mb, help=f"memory per node (default {d.node_mem_mb:g})"
    )
    w.add_argument(
        "--model-mem-mb", type=float, default=d.model_mem_mb, help=f"memory per instance (default {d.model_mem_mb:g})"
    )
    w.add_argument("--seed", type=int, default=d.seed, help="random seed (default 0)")
    w.add_argument(
        "--cores",
        type=float,
        default=d.cores,
        help="cores each node's instances share (the solver sees them; queue-nocores does not); 0: one per "
        "instance (default)",
    )
    w.add_argument(
        "--concurrency",
        type=int,
        default=d.concurrency,
        help="requests one instance serves at once (its server's threads; its slots are this, at most the node's "
        "cores rounded up); the solver sees it as the nodes' concurrency (default 1: one at a time)",
    )
    w.add_argument(
        "--service",
        choices=("exp", "det"),
        default=d.service,
        help="service times: exp (exponential, M/M/1 queues; default) or det (constant, M/D/1)",
    )
    w.add_argument(
        "--dispatch",
        choices=("agent", "assigned", "plan"),
        default=d.dispatch,
        help="agent (default): each request dispatched by the agent's endpoint rule at its arrival (ranking, the "
        "plan's shares, thesis-model plans' from their assignments, and the entry agent's live queues); "
        "assigned: the same, a plan without shares given its assignments as shares (equal to agent for the "
        "solver's plans); plan: the plan's node, then one of its instances uniformly",
    )
    w.add_argument(
        "--endpoint-rule",
        choices=("p2c", "weighted", "lef"),
        default=d.endpoint_rule,
        help="the agents' endpoint rule under --dispatch agent / assigned, for every placement (as the agent's "
        "setting): p2c (default), weighted, lef (the least expected finish among every instance)",
    )


def _usage(message: str) -> Exception:
    from peerserve.errors import UsageError

    return UsageError(message)


def cmd_solve(args: argparse.Namespace) -> int:
    from solver import EvictionPolicy, Snapshot, SnapshotError, SolverError
    from solver.api import solve

    try:
        text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text()
    except OSError as exc:
        raise _usage(f"cannot read {args.file}: {exc.strerror}") from exc
    try:
        snapshot = Snapshot.from_dict(json.loads(text))
    except json.JSONDecodeError as exc:
        raise _usage(f"{args.file}: not valid JSON: {exc}") from exc
    except SnapshotError as exc:
        raise _usage(f"{args.file}: {exc}") from exc
    if args.idle_s < 0 or args.min_requests < 0:
        raise _usage("--idle-s and --min-requests must not be negative")
    policy = EvictionPolicy(idle_s=args.idle_s, min_requests=args.min_requests)
    from solver.fastlp import tune_solver_process

    tune_solver_process()  # as the leader's solver worker does
    try:
        # The first call pays one-time imports and library set-up; a leader's warm worker does not, so
        # the plan printed is a second, warm solve, and the first call's time is a separate field.
        kw = {"method": args.method, "mode": args.mode, "policy": policy, "objective": args.objective}
        first = solve(snapshot, **kw)
        plan = solve(snapshot, **kw)
    except SolverError as exc:
        print(f"peerserve: error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({**plan.to_dict(), "first_call_ms": round(first.solve_ms, 3)}, indent=2))
    else:
        print(_format_plan(plan, first.solve_ms))
    return 0


def _format_plan(plan: Any, first_call_ms: float) -> str:
    lines = [
        f"status {plan.status}  method {plan.method}  mode {plan.mode}  "
        f"objective {plan.objective_ms:.1f} ms  solve {plan.solve_ms:.1f} ms (first call {first_call_ms:.0f} ms)  "
        f"feasible {'yes' if plan.feasible else 'NO'}",
    ]
    if plan.note:
        lines.append(plan.note)
    lines.append("")
    lines.append(f"{'request':>7}  node")
    lines += [f"{i:>7}  {node or '-'}" for i, node in enumerate(plan.assignments)]
    lines.append("")
    lines.append(
        "instances: "
        + "; ".join(
            f"{n}: " + ", ".join(f"{m}x{c}" for m, c in models.items())
            for n, models in plan.instances.items()
            if models
        )
        or "instances: none"
    )
    idle = plan.details.get("idle_running") or {}
    if idle:  # Mode 1 past the instance bound: kept running, served with none of the plan's traffic
        listed = "; ".join(f"{n}: " + ", ".join(f"{m}x{c}" for m, c in ms.items()) for n, ms in idle.items())
        lines.append(f"idle running (no traffic; Mode 1 eviction stops them): {listed}")
    for a in plan.actions:
        lines.append(f"  {a.op:<5} {a.count} x {a.model} on {a.node}")
    for r in plan.rejected:
        lines.append(f"  rejected request {r.request}: {r.reason}")
    for v in plan.violations:
        lines.append(f"  violates {v}")
    return "\n".join(lines)


def cmd_simulate(args: argparse.Namespace) -> int:
    from solver import simulate

    if args.workload:
        return cmd_workload(args)

    if args.seeds < 1:
        raise _usage("--seeds must be at least 1")
    from solver.fastlp import tune_solver_process

    tune_solver_process()  # as the leader's solver worker does
    first_call_ms = simulate.warm_up(objective=args.objective)
    total = simulate.sweep_size(args.vary, args.seeds)
    points = []
    with _progress(total, enabled=not args.json) as bar:
        for point in simulate.sweep(args.vary, args.seeds, objective=args.objective):
            points.append(point)
            bar.update(1)
    quality = simulate.quality(points)
    if args.plot:
        from solver.plot import plot_simulation

        written = plot_simulation(points, Path(args.plot))
        if not args.json:
            print("plots: " + ", ".join(str(p) for p in written), file=sys.stderr)
    if args.json:
        first = {m: round(ms, 3) for m, ms in first_call_ms.items()}
        print(
            json.dumps({"points": [p.to_dict() for p in points], "quality": quality, "first_call_ms": first}, indent=1)
        )
        return 0
    print(_format_table(args.vary, simulate.summarise(points)))
    print(
        "first calls (imports and set-up, excluded above): "
        + ", ".join(f"{m} {ms:.0f} ms" for m, ms in first_call_ms.items())
    )
    gap, gain = quality["ipopt_mode1_gap_to_milp_pct"], quality["ipopt_mode1_below_iterative_pct"]
    print(
        f"\nIpopt Mode 1 vs MILP optimum: {_pct(gap)} above on average; "
        f"vs iterative search: {_pct(gain)} lower (thesis: 41% lower). "
        f"{int(quality['instances'])} instances."
    )
    return 0


def cmd_workload(args: argparse.Namespace) -> int:
    """``simulate --workload``: the placements compared on simulated Poisson traffic."""
    from solver import workload

    w = workload.Workload(
        clients=args.clients,
        rate=args.rate,
        sites=args.sites,
        nodes=args.nodes,
        throughput=args.throughput,
        duration_s=args.duration,
        node_mem_mb=args.node_mem_mb,
        model_mem_mb=args.model_mem_mb,
        seed=args.seed,
        service=args.service,
        cores=args.cores,
        concurrency=args.concurrency,
        dispatch=args.dispatch,
        endpoint_rule=args.endpoint_rule,
    )
    problem = w.check()
    if problem:
        raise _usage(problem)
    outcomes = workload.run(w)
    if args.plot:
        path = workload.plot(outcomes, Path(args.plot) / "workload.png", workload.format_table(w, []).splitlines()[0])
        if not args.json:
            print(f"plot: {path}", file=sys.stderr)
    if args.json:
        print(json.dumps({"workload": dataclasses.asdict(w), "outcomes": [o.to_dict() for o in outcomes]}, indent=1))
    else:
        print(workload.format_table(w, outcomes))
    return 0


def _pct(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{x:.2f}%"


def _format_table(vary: str, rows: list[dict[str, Any]]) -> str:
    head = f"{vary:>8}  {'method':<12} {'objective ms':>13} {'solve ms (p50)':>15} {'feasible':>9} {'rejected':>9}"
    out = [head, "-" * len(head)]
    for r in rows:
        out.append(
            f"{r['size']:>8}  {r['method']:<12} {r['objective_mean']:>13.1f} {r['solve_ms_median']:>15.2f} "
            f"{100 * r['feasible_share']:>8.0f}% {r['rejected']:>9}"
        )
    return "\n".join(out)


class _NoBar:
    def __enter__(self) -> _NoBar:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, n: int) -> None:
        return None


def _progress(total: int, enabled: bool) -> Any:
    if not enabled:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, desc="simulating", unit="solve", file=sys.stderr, leave=False)
