"""`peerserve simulate --workload`: Poisson traffic through the instances each placement starts.

A lab: ``clients`` clients at ``sites`` sites (clients at one site share their RTT row to every node),
each sending Poisson arrivals at ``rate`` requests/s for ``duration_s`` seconds to one model whose
instance serves ``throughput`` requests/s (service times exponential, or constant with ``det``, mean
1000 / throughput ms).
Every placement solves the same snapshot; its plan is then run as a discrete-event simulation:

* the instances a node starts are the plan's, capped at what the node's memory holds (a plan that
  ignores memory cannot start more);
* each request is dispatched as the agent dispatches it (``dispatch="agent"``, the default;
  solver.agent_sim replays peerserve.dispatch, the agent's rule, at every arrival against the queues of
  that instant): ranked by RTT + the entry agent's measured execution time, then chosen by the plan's
  shares (every plan publishes them; thesis model and baselines: their assignments,
  solver/assigned_spread.py) and the entry agent's live queues (the endpoint rule, ``p2c``, or
  ``endpoint_rule``: ``lef``, the least expected finish among every instance, plan or not); a plan
  without shares would go to the best node's first instance; only a request with no instance anywhere
  is rejected. ``assigned``: the same, a plan without shares given its assignments as shares (the same
  as ``agent`` for every plan the solver makes now). ``plan``: the run
  as it was: a node drawn by the plan's shares for its client or the client's assigned node, then one
  of that node's instances uniformly; a client the plan rejected, or a node with no instance started,
  counts a rejection;
* every instance is a FIFO server with ``slots`` slots (``concurrency``, ``--concurrency``: how many requests
  one instance serves at once, at most the node's cores, rounded up; 1 by default): with one slot, start =
  max(arrival, previous finish) (Lindley's recursion, the exact event order of a FIFO queue); latency =
  RTT + wait + service; the solver sees it as the nodes' ``concurrency``;
* with ``cores`` (``--cores``) a node's instances share that many cores: while more of them are busy
  than it has cores, each runs at cores / busy of its speed (solver.shared_cores); the solver sees the
  cores too (the nodes' ``cores``), except the ``queue-nocores`` placement: the queue model without the
  node limit, as it was before (its instances on one node counted as independent servers).

Placements: ``thesis`` (Ipopt, the thesis's model: one instance per client stream), ``queue``
(Ipopt, the queue-aware model), ``queue-p99`` (the same with solver.tail_cap's load cap), ``nearest``
and ``least-loaded`` (the thesis-model baselines).
"""

from __future__ import annotations

import math
import textwrap
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from peerserve.dispatch import DEFAULT_RULE
from solver.agent_sim import AgentDispatch, event_sojourn_ms
from solver.api import solve
from solver.plan import Plan
from solver.shared_cores import shared_sojourn_ms
from solver.snapshot import Model, Node, Request, Snapshot
from solver.workload_spec import DISPATCH as DISPATCH  # the lab's parameters, kept apart from numpy (solver.cli)
from solver.workload_spec import MAX_REQUESTS as MAX_REQUESTS
from solver.workload_spec import Workload as Workload

PLACEMENTS: dict[str, tuple[str, str]] = {  # name -> (method, objective)
    "thesis": ("ipopt", "thesis"),
    "queue": ("ipopt", "queue"),
    "queue-p99": ("ipopt", "queue-p99"),
    "queue-nocores": ("ipopt", "queue"),  # the queue model blind to the nodes' cores (solved without them)
    "nearest": ("nearest", "thesis"),
    "least-loaded": ("least-loaded", "thesis"),
}


@dataclass(frozen=True)
class Outcome:
    """One placement's run: latency percentiles (ms), instances, memory, rejections, solve time."""

    placement: str
    p50_ms: float
    p99_ms: float
    mean_ms: float
    instances: int
    memory_mb: float
    requests: int
    rejected: int
    solve_ms: float

    def to_dict(self) -> dict[str, Any]:
        return {k: round(v, 3) if isinstance(v, float) else v for k, v in asdict(self).items()}


def lab_snapshot(w: Workload) -> tuple[Snapshot, np.ndarray]:
    """The snapshot every placement solves, and the RTT matrix [client, node] (ms)."""
    rng = np.random.default_rng(w.seed)
    ids = [f"n{j + 1}" for j in range(w.nodes)]
    site_rtt = rng.uniform(1.0, 20.0, (w.sites, w.nodes)).round(2)
    rtt = site_rtt[np.arange(w.clients) % w.sites]
    exec_ms = 1000.0 / w.throughput
    conc = float(w.concurrency) if w.concurrency != 1 else None
    nodes = tuple(Node(i, w.node_mem_mb, w.node_mem_mb, 100.0, cores=w.cores or None, concurrency=conc) for i in ids)
    model = Model("m", w.model_mem_mb, 1.0, {"default": w.throughput})
    requests = tuple(
        Request("m", {i: float(rtt[c, j]) for j, i in enumerate(ids)}, dict.fromkeys(ids, exec_ms), f"c{c}", w.rate)
        for c in range(w.clients)
    )
    return Snapshot(nodes, (model,), requests), rtt


def run(w: Workload, placements: tuple[str, ...] | None = None) -> list[Outcome]:
    """Solve the lab with each placement (default: all; ``queue-nocores`` only with cores) and simulate the
    same arrivals through each plan."""
    if placements is None:
        placements = tuple(n for n in PLACEMENTS if w.cores > 0 or n != "queue-nocores")
    snap, rtt = lab_snapshot(w)
    arrivals = _arrivals(w)
    out = []
    for name in placements:
        method, objective = PLACEMENTS[name]
        seen = _without_cores(snap) if name == "queue-nocores" else snap
        solve(seen, method=method, mode="2", objective=objective)  # warm: imports and set-up
        plan = solve(seen, method=method, mode="2", objective=objective)
        out.append(simulate_plan(name, plan, w, rtt, arrivals))
    return out


def _without_cores(snap: Snapshot) -> Snapshot:
    """``snap`` as the queue model saw it before nodes had cores."""
    return replace(snap, nodes=tuple(replace(n, cores=None) for n in snap.nodes))


def _arrivals(w: Workload) -> list[np.ndarray]:
    """Per client, sorted Poisson arrival times (s) over the duration."""
    rng = np.random.default_rng(w.seed + 1)
    counts = rng.poisson(w.rate * w.duration_s, w.clients)
    return [np.sort(rng.uniform(0.0, w.duration_s, int(n))) for n in counts]


def simulate_plan(
    name: str,
    plan: Plan,
    w: Workload,
    rtt: np.ndarray,
    arrivals: list[np.ndarray],
    rule: type[AgentDispatch] = AgentDispatch,
) -> Outcome:
    """The discrete-event run of one plan (same arrivals and service draws for every plan; ``rule``: the
    agent's dispatch, or a what-if subclass of it)."""
    per_node = int(w.node_mem_mb // w.model_mem_mb)
    started = [min(int(plan.instances.get(f"n{j + 1}", {}).get("m", 0)), per_node) for j in range(w.nodes)]
    service = _service(w, arrivals)
    if w.dispatch == "plan":
        total, rejected = _plan_run(plan, w, rtt, arrivals, service, started)
    else:
        total, rejected = _agent_run(plan, w, rtt, arrivals, (service, started), rule)
    pct = np.percentile(total, [50, 99]) if len(total) else np.array([np.nan, np.nan])
    return Outcome(
        name,
        float(pct[0]),
        float(pct[1]),
        float(total.mean()) if len(total) else float("nan"),
        int(sum(started)),
        float(sum(started) * w.model_mem_mb),
        int(sum(len(a) for a in arrivals)),
        rejected,
        plan.solve_ms,
    )


def _service(w: Workload, arrivals: list[np.ndarray]) -> list[np.ndarray]:
    """Per client, the service time (s) of each of its arrivals (one stream, whatever the dispatch)."""
    rng = np.random.default_rng(w.seed + 3)
    draws = rng.exponential(1.0 / w.throughput, sum(len(a) for a in arrivals))
    if w.service == "det":
        draws = np.full(len(draws), 1.0 / w.throughput)
    return np.split(draws, np.cumsum([len(a) for a in arrivals])[:-1])


def _agent_run(
    plan: Plan,
    w: Workload,
    rtt: np.ndarray,
    arrivals: list[np.ndarray],
    run: tuple[list[np.ndarray], list[int]],
    rule: type[AgentDispatch],
) -> tuple[np.ndarray, int]:
    """Latencies (ms, RTT included) and rejections when every request is dispatched by the agent's rule
    (``run``: each client's service times, the instances each node started)."""
    service, started = run
    client = np.concatenate([np.full(len(a), c, dtype=np.int64) for c, a in enumerate(arrivals)] or [np.zeros(0, int)])
    order = np.argsort(np.concatenate(arrivals or [np.zeros(0)]), kind="stable")
    t, work, client = np.concatenate(arrivals)[order], np.concatenate(service)[order], client[order]
    draws = np.random.default_rng(w.seed + 2).random(len(t))
    draws2 = np.random.default_rng(w.seed + 4).random(len(t))  # the second choice's (endpoint rule p2c)
    ids = [f"n{j + 1}" for j in range(w.nodes)]
    details = plan.details
    if w.dispatch == "assigned" and "spread" not in details:
        details = {**details, "spread": assigned_spread(plan, w, rtt)}
    slots = [float(sim_slots(w))] * w.nodes
    # the workload's endpoint rule where it names one other than the default; else the class's (a what-if's own)
    named = None if w.endpoint_rule == DEFAULT_RULE else w.endpoint_rule
    dispatch = rule(details, ids, started, rtt, client, 1000.0 / w.throughput, draws, draws2, slots, named)
    node_of = np.repeat(np.arange(w.nodes), started)
    cores = np.full(w.nodes, w.cores if w.cores > 0 else np.inf)
    where, sojourn = event_sojourn_ms(t, work, dispatch, node_of, cores, np.full(w.nodes, sim_slots(w)))
    ok = where >= 0
    total = np.full(len(t), np.nan)
    total[order[ok]] = sojourn[ok] + rtt[client[ok], node_of[where[ok]]]  # back in the plan run's order
    return total[~np.isnan(total)], int((~ok).sum())


def assigned_spread(plan: Plan, w: Workload, rtt: np.ndarray) -> list[dict[str, Any]]:
    """A plan's per-client assignments as the queue plan's ``spread``: per site, node -> share of its clients."""
    out = []
    for site in range(min(w.sites, w.clients)):
        members = range(site, w.clients, w.sites)
        nodes = [n for n in (plan.assignments[c] for c in members) if n is not None]
        if nodes:
            shares = {n: round(nodes.count(n) / len(nodes), 6) for n in sorted(set(nodes))}
            row = {f"n{j + 1}": round(float(v), 1) for j, v in enumerate(rtt[site])}
            out.append({"model": "m", "rtt_ms": row, "shares": shares})
    return out


def _plan_run(
    plan: Plan, w: Workload, rtt: np.ndarray, arrivals: list[np.ndarray], service: list[np.ndarray], started: list[int]
) -> tuple[np.ndarray, int]:
    """Latencies and rejections when a request goes to a node by the plan and to one of its instances uniformly."""
    rng = np.random.default_rng(w.seed + 2)
    offset = np.concatenate([[0], np.cumsum(started)])
    times, inst, net, work = [], [], [], []
    rejected = 0
    for c, ts in enumerate(arrivals):
        nodes, probs = _routing(plan, c, w.nodes)
        if not nodes:
            rejected += len(ts)
            continue
        j = np.asarray(nodes)[rng.choice(len(nodes), size=len(ts), p=probs)]
        alive = (j >= 0) & (np.asarray(started)[np.maximum(j, 0)] > 0)
        rejected += int((~alive).sum())
        j, t = j[alive], ts[alive]
        k = offset[j] + (rng.random(len(j)) * np.asarray(started)[j]).astype(int)
        times.append(t)
        inst.append(k)
        net.append(rtt[c, j])
        work.append(service[c][alive])
    arrival = np.concatenate(times or [np.zeros(0)])
    instance = np.concatenate(inst or [np.zeros(0, int)])
    served = np.concatenate(work or [np.zeros(0)])
    if w.cores > 0 or w.concurrency > 1:
        node_of = np.repeat(np.arange(w.nodes), started)
        cores = np.full(w.nodes, w.cores if w.cores > 0 else np.inf)
        latency = shared_sojourn_ms(arrival, instance, served, node_of, cores, np.full(w.nodes, sim_slots(w)))
    else:
        latency = fifo_sojourn_ms(arrival, instance, served)
    return latency + np.concatenate(net or [np.zeros(0)]), rejected


def sim_slots(w: Workload) -> int:
    """Slots of each simulated instance: its concurrency, at most the node's cores rounded up (no cores: no cap)."""
    return w.concurrency if w.cores <= 0 else min(w.concurrency, math.ceil(max(w.cores, 1.0)))


def _routing(plan: Plan, c: int, n_nodes: int) -> tuple[list[int], list[float]]:
    """Node indices and probabilities for client c's requests; empty when the plan rejected it."""
    if plan.shares and plan.shares[c]:
        items = sorted(plan.shares[c].items())
        nodes, probs = [int(n[1:]) - 1 for n, _ in items], [v for _, v in items]
        total = sum(probs)
        if total < 1.0 - 1e-6:  # the rest of the client's rate was rejected
            nodes, probs = [*nodes, -1], [*probs, 1.0 - total]
        return nodes, [v / sum(probs) for v in probs]
    node = plan.assignments[c]
    return ([int(node[1:]) - 1], [1.0]) if node is not None else ([], [])


def fifo_sojourn_ms(arrival_s: np.ndarray, instance: np.ndarray, service_s: np.ndarray) -> np.ndarray:
    """Time in system (ms) of each request at its FIFO single-server instance: wait + its service time."""
    out = np.zeros(len(arrival_s))
    free_at: dict[int, float] = {}
    for i in np.lexsort((arrival_s, instance)).tolist():
        k = int(instance[i])
        start = max(float(arrival_s[i]), free_at.get(k, 0.0))
        free_at[k] = start + float(service_s[i])
        out[i] = 1000.0 * (free_at[k] - arrival_s[i])
    return out


def format_table(w: Workload, outcomes: list[Outcome]) -> str:
    """The human-readable comparison."""
    head = (
        f"{'placement':<13}{'p50 ms':>9}{'p99 ms':>9}{'instances':>10}{'memory MB':>10}{'rejected':>10}{'solve ms':>9}"
    )
    lines = [
        f"{w.clients} clients at {w.sites} sites, {w.rate:g} req/s each, {w.nodes} nodes of {w.node_mem_mb:g} MB, "
        f"instance {w.model_mem_mb:g} MB serving {w.throughput:g} req/s ({w.service} service), {w.duration_s:g} s"
        + (f", {w.cores:g} cores per node" if w.cores else "")
        + f", {sim_slots(w)} slot{'s' if sim_slots(w) > 1 else ''} per instance (concurrency {w.concurrency})"
        + f", {w.dispatch} dispatch"
        + (f" (endpoint rule {w.endpoint_rule})" if w.dispatch != "plan" else ""),
        head,
        "-" * len(head),
    ]
    for o in outcomes:
        lines.append(
            f"{o.placement:<13}{o.p50_ms:>9.2f}{o.p99_ms:>9.2f}{o.instances:>10}{o.memory_mb:>10.0f}"
            f"{o.rejected:>10}{o.solve_ms:>9.1f}"
        )
    return "\n".join(lines)


def plot(outcomes: list[Outcome], path: Any, title: str = "") -> Any:
    """A PNG: p50 and p99 latency (log scale where they span over 30x) and instances per placement; returns
    the path written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [o.placement for o in outcomes]
    fig, (lat, inst) = plt.subplots(1, 2, figsize=(10, 4))
    x = np.arange(len(names))
    lat.bar(x - 0.2, [o.p50_ms for o in outcomes], 0.4, label="p50")
    lat.bar(x + 0.2, [o.p99_ms for o in outcomes], 0.4, label="p99")
    lat.set_xticks(x, names, rotation=20)
    lat.set_ylabel("latency (ms)")
    shown = [v for o in outcomes for v in (o.p50_ms, o.p99_ms) if v > 0 and np.isfinite(v)]
    if shown and max(shown) > 30 * min(shown):
        lat.set_yscale("log")
    lat.legend()
    inst.bar(x, [o.instances for o in outcomes])
    inst.set_xticks(x, names, rotation=20)
    inst.set_ylabel("instances started")
    for o, xi in zip(outcomes, x, strict=True):
        if o.rejected:
            inst.annotate(f"{o.rejected} rejected", (xi, o.instances), ha="center", va="bottom", fontsize=8)
    if title:
        fig.suptitle(textwrap.fill(title, 120), fontsize=9)  # the lab's line is wider than the figure
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
