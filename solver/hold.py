"""The placement that runs now, valued under the same queue model as a new plan (the leader's hysteresis).

A new plan's ``objective_ms`` is the mean latency per request (RTT + execution + M/M/1 wait) of its
instances with its split of every stream's rate (``solver.queue_plan.mean_latency_ms``). The leader
keeps the running instances unless the plan beats them by a margin (``agent/hysteresis.py``), so it
needs their value under the same snapshot: ``value_running`` fixes the instance counts at what runs and
finds the split of each stream's rate over the nodes running its model that minimises the same
objective. With the counts fixed that is a convex flow problem (linear costs plus the convex pool
delays; a node's cores shared by load, ``solver.node_cpu.allot_cores``, recomputed as the rates move: the
minimum over the allotments of jointly convex perspectives stays convex in the rates), solved by
gradient projection (each class shifts from its dearer nodes to its cheapest by a Newton step on the pools'
curvature, one model at a time with an exact line search; plain Frank-Wolfe, the method before, zig-zagged
for all 400 iterations where pools sit at the load cap's kink); Frank-Wolfe's duality gap bounds
the error: the value is an achievable split's, never below the best split's and above it by at most ``gap_ms``
(so the running placement is, if anything, overvalued by less than ``gap_ms``). The split stops at a relative
gap of ``TOLERANCE`` (1e-3: a hundredth of the hysteresis's 10 % margin) or after ``ITERATIONS`` steps, a bound on
the work: in the steady state (what runs is what the last plan asked for, thesis sizes with cores) the pools sit
near the load cap and the gap shrinks slowly, so the round's CPU is bounded and the gap, not a tolerance, says how
far the value may be off (``gap_ms``, ``steps``; bench/hold_bench.py ``--steady``). ``gap_ms`` is the value less the
best of Frank-Wolfe's lower bounds over the iterates (each iterate's value less its duality gap), not the last one's
alone: about half as large where the value falls slowly, as valid. ``starts`` (the solver worker passes the plan it
just solved on the same snapshot, its ``shares``, and this valuation's own split from the last round, ``shares``,
matched by client and model) are warm starts: each restricted to the held pools and renormalised per stream (a
stream with no share on them starts on its cheapest node); the split starts from the cheapest of them and the
cheapest-node start; any start is a feasible split, so the value and ``gap_ms`` keep their meaning.

Hard facts come with it: models with demand and no running instance (``unserved``) and pools whose
load at the best split exceeds ``rho_max`` (``overloaded``): the leader acts on a plan at once there.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from solver import node_cpu
from solver.cpu_speed import published_load
from solver.node_cpu import node_slots, over_cores, pool_servers
from solver.problem import FloatArray, Mode, build_problem, running_instances
from solver.queue_model import QueueProblem, build_queue_problem
from solver.queue_plan import MAX_SPREAD_SITES
from solver.queueing import requests_at_instance
from solver.snapshot import Snapshot

EVAL_RHO = 0.999  # the delay is M/M/1 up to this load when valuing a placement (as mean_latency_ms does)
ITERATIONS = 100  # the work bound (400 before: the steady state ran all 400 in 0.25-5.7 s of CPU a round)
TOLERANCE = 1e-3  # relative duality gap at which the split stops: a hundredth of the hysteresis margin (1e-4 before)
BISECTIONS = 30  # plain Frank-Wolfe's line search (PROJECTED off)
PROJECTED = True  # the split by Newton-scaled gradient projection (False: plain Frank-Wolfe, the method before)
SECANTS = 60  # the projected method's line search: evaluations at most (half of them bisections at worst)
LOWER_BOUNDS = True  # the gap against the best lower bound so far (False: the latest iterate's duality gap alone)
WARM_START = True  # start from the cheapest of the given splits and the cheapest-node start (False: never warm)

Shares = Sequence[Mapping[str, float]]  # per request, node -> share of its rate (the plan's ``shares``)


@dataclass(frozen=True)
class Held:
    """The instances valued: [j, k] counts and [j] each node's cores (instance units; inf: no limit)."""

    counts: FloatArray
    cores: FloatArray


Servers = Held | FloatArray  # the instances valued, or (the integer part's split, solver.queue_split) fixed servers


@dataclass(frozen=True)
class RunningValue:
    """The running placement under this snapshot: mean latency per request at its best split, and what it cannot do."""

    objective_ms: float
    gap_ms: float  # Frank-Wolfe's duality gap: the best split's value is within this of objective_ms
    unserved: tuple[str, ...] = ()  # models with demand and no instance running anywhere
    overloaded: tuple[str, ...] = ()  # "node/model" pools above rho_max even at the best split
    demand: tuple[str, ...] = ()  # models some stream asks for
    over_bound: tuple[str, ...] = ()  # models running more instances than need at rho_max + one spare per class
    instances: dict[str, dict[str, int]] = field(default_factory=dict)
    spread: list[dict[str, Any]] = field(default_factory=list)
    planned_queue: dict[str, dict[str, float]] = field(default_factory=dict)
    model_ms: dict[str, float] = field(default_factory=dict)  # per served model: its mean latency per request
    steps: int = 0  # the split's iterations (at most ITERATIONS)
    start: str = "cheapest"  # where the split started: each stream's cheapest node, or the name of one of ``starts``
    shares: tuple[Mapping[str, float], ...] = field(default=(), repr=False, compare=False)  # per request: its split

    def to_dict(self) -> dict[str, Any]:
        """JSON form (the solver worker's reply, the leader's round)."""
        return {
            "objective_ms": self.objective_ms, "gap_ms": self.gap_ms, "unserved": list(self.unserved),
            "overloaded": list(self.overloaded), "demand": list(self.demand), "over_bound": list(self.over_bound),
            "instances": self.instances,
            "spread": self.spread, "planned_queue": self.planned_queue, "model_ms": self.model_ms,
            "steps": self.steps, "start": self.start,
        }  # fmt: skip


class LastSplit:
    """The running value's split from the last round per (client, model), the next round's warm start; replaced every
    round (``keep``), so it holds at most the last snapshot's requests (the leader's window bounds them)."""

    def __init__(self) -> None:
        self.streams: dict[tuple[str, str], Mapping[str, float]] = {}

    def shares_for(self, snapshot: Snapshot) -> list[Mapping[str, float]]:
        """Per request of ``snapshot``: the last round's split of its stream (empty where unknown or no client)."""
        return [self.streams.get((r.client, r.model), {}) if r.client is not None else {} for r in snapshot.requests]

    def keep(self, snapshot: Snapshot, value: RunningValue) -> None:
        """Replace what is kept with ``value``'s split of ``snapshot``'s streams."""
        pairs = zip(snapshot.requests, value.shares, strict=False)
        self.streams = {(r.client, r.model): s for r, s in pairs if r.client is not None and s}


def parse_counts(raw: Any) -> dict[str, dict[str, int]] | None:
    """node -> model -> count from JSON (None for None); raises ValueError on anything else."""
    if raw is None:
        return None
    if not isinstance(raw, dict) or not all(isinstance(v, dict) for v in raw.values()):
        raise ValueError("held must map node -> model -> count")
    return {str(n): {str(m): int(c) for m, c in ms.items()} for n, ms in raw.items()}


def value_running(
    snapshot: Snapshot,
    held: Mapping[str, Mapping[str, int]] | None = None,
    rho_max: float | None = None,
    starts: Mapping[str, Shares] | None = None,
) -> RunningValue:
    """Value ``held`` (node -> model -> count; default: the snapshot's running instances) under its streams;
    ``starts``: name -> per-request shares on this snapshot (the plan's, the last round's), warm starts (``_warm``)."""
    running = running_instances(snapshot)
    if held is not None:
        models = {m.name: k for k, m in enumerate(snapshot.models)}
        for j, node in enumerate(snapshot.nodes):
            running[j] = 0
            for m, c in held.get(node.id, {}).items():
                if m in models and c > 0:
                    running[j, models[m]] = c
    q = build_queue_problem(build_problem(snapshot, Mode.MODE2, current=running))
    if rho_max is not None:
        q = QueueProblem(q.base, q.rate, q.mu, q.node_class, rho_max, q.instance_cost)
    p = q.base
    n = Held(running.astype(float), q.cores())  # the pools' servers follow the rates (solver.node_cpu.pool_servers)
    allowed = running[:, p.class_model].T > 0  # [c, j]: node j runs the class's model
    demand = q.rate > 0
    lost = demand & ~allowed.any(axis=1)
    unserved = tuple(sorted({p.model_names[int(p.class_model[c])] for c in np.nonzero(lost)[0]}))
    served = demand & ~lost
    usable = allowed & served[:, None]
    warm = {name: _warm(q, usable, shares) for name, shares in (starts or {}).items()} if WARM_START else {}
    x, gap, steps, started = _best_split(q, n, usable, {k: v for k, v in warm.items() if v is not None})
    lam = _lam(q, x)
    over = _over(q, n, lam)
    overloaded = tuple(f"{p.node_ids[j]}/{p.model_names[k]}" for j, k in zip(*np.nonzero(over), strict=True))
    total = float(x.sum())
    value = _objective(q, n, x) / total if total > 0 else 0.0
    instances = {
        p.node_ids[j]: {p.model_names[k]: int(running[j, k]) for k in np.nonzero(running[j])[0]}
        for j in range(p.n_nodes)
        if running[j].any()
    }
    asked = tuple(sorted({p.model_names[int(p.class_model[c])] for c in np.nonzero(demand)[0]}))
    return RunningValue(
        objective_ms=value, gap_ms=gap / total if total > 0 else 0.0, unserved=unserved, overloaded=overloaded,
        demand=asked, over_bound=_over_bound(q, running), instances=instances, spread=_spread(q, x),
        planned_queue=_planned_queue(q, n, lam), model_ms=_model_ms(q, n, x), steps=steps, start=started,
        shares=_request_shares(q, x),
    )  # fmt: skip


def _request_shares(q: QueueProblem, x: FloatArray) -> tuple[dict[str, float], ...]:
    """Per request: node -> share of its class's split (a request whose class is not served: empty)."""
    p = q.base
    out: list[dict[str, float]] = [{} for _ in p.snapshot.requests]
    total = x.sum(axis=1)
    for c in np.nonzero(total > 0)[0].tolist():
        row = {p.node_ids[j]: float(x[c, j] / total[c]) for j in np.nonzero(x[c] > 0)[0].tolist()}
        for i in p.class_members[c]:
            out[i] = row
    return tuple(out)


def _model_ms(q: QueueProblem, n: Servers, x: FloatArray) -> dict[str, float]:
    """Per model with served rate: mean latency per request at this split (``_objective``'s terms, per model)."""
    p = q.base
    lam = _lam(q, x)
    d, _ = _delay(q, lam, n)
    wait = d - lam * q.service_ms  # [j, k]
    out: dict[str, float] = {}
    for k, name in enumerate(p.model_names):
        mine = p.class_model == k
        served = float(x[mine].sum())
        if served > 0:
            out[name] = round((float((x[mine] * p.cost[mine]).sum()) + float(wait[:, k].sum())) / served, 6)
    return out


def _over_bound(q: QueueProblem, running: Any) -> tuple[str, ...]:
    """Models whose running instances exceed the plan's bound: their need at rho_max + one spare per node class."""
    p = q.base
    out = []
    for k, name in enumerate(p.model_names):
        rate = float(q.rate[p.class_model == k].sum())
        need = math.ceil(rate / (q.rho_max * max(float(q.mu[:, k].max()), 1e-12)) - 1e-9)
        if int(running[:, k].sum()) > need + len(set(q.node_class)):
            out.append(name)
    return tuple(out)


def _lam(q: QueueProblem, x: FloatArray) -> FloatArray:
    """[j, k] rate arriving at each pool."""
    onehot = np.eye(len(q.base.model_names))[q.base.class_model]
    return np.asarray(x.T @ onehot)


def _delay(
    q: QueueProblem, lam: FloatArray, n: Servers, allotted: tuple[FloatArray, FloatArray] | None = None
) -> tuple[FloatArray, FloatArray]:
    """(D, dD/dlam) per pool, solver.queueing.PoolDelay's formulas at load cap EVAL_RHO over the servers the
    node's cores give the pools at these rates (``pool_servers``, or ``allotted`` where the caller has it; by the
    envelope theorem the allotment's own change adds nothing to the derivative), or over fixed servers ``n``
    (an array); 0 where no instance runs."""
    if isinstance(n, Held):
        servers, load = pool_servers(lam, q.mu, n.counts, n.cores) if allotted is None else allotted
        on = n.counts > 0
    else:
        servers, load, on = n, np.zeros(n.shape), n > 0
    mu = q.mu
    t = np.where(on & (servers > 0), lam / np.where(servers > 0, servers, 1.0), load * mu)
    tm = EVAL_RHO * mu
    tc = np.minimum(t, tm)
    gap = mu - tc
    d1 = 1000.0 * mu / gap**2
    g = 1000.0 * tc / gap + np.where(t > tm, d1 * (t - tm), 0.0)
    return np.where(on & (servers > 0), servers * g, 0.0), np.where(on, d1, 0.0)


def _over(q: QueueProblem, n: Held, lam: FloatArray) -> FloatArray:
    """[j, k] pools whose load exceeds ``rho_max`` where the node shares its cores by load: every busy pool on a
    node over its cores, and a pool over its own instances (repair's two checks, with their tolerances)."""
    on = (n.counts > 0) & (lam > 0)
    own = lam > n.counts * q.rho_max * q.mu * (1 + 1e-6) + 1e-9
    if not node_cpu.ALLOT_BY_LOAD:  # the equal split: a pool over the servers it gives
        servers, _ = pool_servers(lam, q.mu, n.counts, n.cores)
        return np.asarray(on & (lam > servers * q.rho_max * q.mu * (1 + 1e-6) + 1e-9))
    node = np.asarray(over_cores(lam, q.mu, n.cores, q.rho_max), dtype=bool)
    return np.asarray(on & (own | node[:, None]))


def _objective(q: QueueProblem, n: Servers, x: FloatArray) -> float:
    """Total request-ms per second: RTT + execution on every share, the pools' waits (service counted once)."""
    lam = _lam(q, x)
    d, _ = _delay(q, lam, n)
    return float((x * q.base.cost).sum() + (d - lam * q.service_ms).sum())


def _gradient(q: QueueProblem, n: Servers, x: FloatArray) -> FloatArray:
    _, d1 = _delay(q, _lam(q, x), n)
    marginal = (d1 - q.service_ms)[:, q.base.class_model].T  # [c, j]
    return np.asarray(q.base.cost + marginal)


def _warm(q: QueueProblem, allowed: Any, shares: Shares) -> FloatArray | None:
    """[c, j] the plan's split restricted to the held pools (``allowed``), renormalised per class to its whole rate;
    a class with no share on a held pool starts on its cheapest node. None if ``shares`` is not this snapshot's
    (another request count) or no class keeps a share: the plan's split does not fit what runs."""
    p = q.base
    if len(shares) != len(p.snapshot.requests):
        return None
    index = {node: j for j, node in enumerate(p.node_ids)}
    x = np.zeros((p.n_classes, p.n_nodes))
    for c, members in enumerate(p.class_members):
        for i in members:
            for node, share in shares[i].items():
                j = index.get(node)
                if j is not None and math.isfinite(share) and share > 0:
                    x[c, j] += share
    x = np.where(allowed, x, 0.0)
    total = x.sum(axis=1)
    rate = np.where(allowed.any(axis=1), q.rate, 0.0)
    kept = (total > 0) & (rate > 0)
    if not kept.any():
        return None
    cold = _all_on(np.where(allowed, q.base.cost, np.inf), rate)
    return np.where(kept[:, None], x / np.where(kept, total, 1.0)[:, None] * rate[:, None], cold)


def _best_split(
    q: QueueProblem, n: Servers, allowed: Any, warm: Mapping[str, FloatArray] | None = None
) -> tuple[FloatArray, float, int, str]:
    """The split of each class's rate over its allowed nodes minimising ``_objective``: (x, duality gap, steps,
    where it started: "cheapest" (each class on its cheapest node) or the name of the cheapest of ``warm``'s splits).

    Each step's direction: ``_shift`` (PROJECTED) or plain Frank-Wolfe's (all toward the cheapest nodes, which
    zig-zags near the load cap's kink); either way the stop is at ``TOLERANCE`` of the gap between the value and
    the best of Frank-Wolfe's lower bounds so far (each iterate's value less its duality gap bounds the best
    split's value from below, by convexity; the latest alone is looser where the value falls slowly)."""
    rate = np.where(allowed.any(axis=1), q.rate, 0.0)
    big = np.where(allowed, 0.0, np.inf)
    x = _all_on(np.where(allowed, q.base.cost, np.inf), rate)
    started, value = "cheapest", _objective(q, n, x)
    for name, candidate in (warm or {}).items():
        found = _objective(q, n, candidate)
        if found <= value:
            started, value, x = name, found, candidate
    gap, steps, lower = 0.0, 0, -np.inf
    for steps in range(ITERATIONS + 1):
        grad, curve = _gradient_curvature(q, n, x) if PROJECTED else (_gradient(q, n, x), None)
        target = _all_on(grad + big, rate)
        direction = target - x
        value = _objective(q, n, x)
        lower = max(lower, value - float(-(grad * direction).sum()) if LOWER_BOUNDS else -np.inf)
        gap = value - lower if LOWER_BOUNDS else float(-(grad * direction).sum())
        if gap <= TOLERANCE * max(value, 1e-9) or steps == ITERATIONS:
            break
        if curve is None:
            x = x + _line_search(q, n, x, direction) * direction
        else:
            x = _shift_by_model(q, n, x, _shift(x, grad + big, curve, target > 0), grad)
    return x, max(gap, 0.0), steps, started


def _shift_by_model(q: QueueProblem, n: Servers, x: FloatArray, direction: FloatArray, grad: FloatArray) -> FloatArray:
    """``x`` moved along ``direction`` one model's classes at a time, each with its own exact step: models meet
    only through a node's shared cores, and one step for all let the model whose pools sit at the load cap's
    kink hold every other model's step to a thousandth (25 x 20 snapshot, 1 core: 400 iterations, 3e-1 gap)."""
    model = q.base.class_model
    for k in np.unique(model[np.any(direction != 0, axis=1)]).tolist():
        d = np.where((model == k)[:, None], direction, 0.0)
        slope0 = float((grad * d).sum())
        x = np.maximum(x + _secant_search(q, n, x, d, slope0) * d, 0.0)
        grad = _gradient(q, n, x)
    return x


def _gradient_curvature(q: QueueProblem, n: Servers, x: FloatArray) -> tuple[FloatArray, FloatArray]:
    """([c, j] ``_gradient``, [c, j] each pool's second derivative in its own rate at its servers: the M/M/1
    term's ``2000 mu / (mu - t)^3 / servers`` below the load cap, 0 past it (the linear extension)).

    Exact on fixed servers and on nodes with a core per instance; where a node shares its cores by load it is the
    pool's own servers' curvature, not the shared level's (a scale for the step only: the line search sets it)."""
    lam = _lam(q, x)
    if isinstance(n, Held):
        servers, load = pool_servers(lam, q.mu, n.counts, n.cores)
        _, d1 = _delay(q, lam, n, (servers, load))  # the same allotment, computed once
        servers = np.where(servers > 0, servers, n.counts)  # an idle pool: its instances (its first request's)
    else:
        _, d1 = _delay(q, lam, n)
        servers, load = n, np.where(n > 0, lam / np.where(n > 0, n * q.mu, 1.0), 0.0)
    t = load * q.mu
    h = np.where(
        (servers > 0) & (t < EVAL_RHO * q.mu), 2000.0 * q.mu / (q.mu - np.minimum(t, EVAL_RHO * q.mu)) ** 3, 0.0
    )
    with np.errstate(over="ignore"):  # a sliver of a core: no Newton move on that pool (inf), the line search's
        h = h / np.where(servers > 0, servers, 1.0)
    model = q.base.class_model
    return np.asarray(q.base.cost + (d1 - q.service_ms)[:, model].T), np.asarray(h[:, model].T)


def _shift(x: FloatArray, cost: FloatArray, curve: FloatArray, cheapest: Any) -> FloatArray:
    """Gradient projection's direction (Bertsekas; Jayakrishnan et al. for traffic assignment): per class, every
    node with rate moves to the class's cheapest (``cheapest`` [c, j]) its Newton share of the cost difference,
    ``(g_j - g_s) / (h_j + h_s)``, at most all it has (all of it where both are past the cap: no curvature)."""
    rows = np.arange(len(x))
    s = np.argmax(cheapest, axis=1)
    best = cost[rows, s][:, None]
    excess = np.where(cheapest | ~np.isfinite(cost), np.inf, cost - np.where(np.isfinite(best), best, 0.0))
    denom = curve + curve[rows, s][:, None]
    moving = (x > 0) & np.isfinite(excess)
    newton = np.divide(excess, denom, out=np.full_like(x, np.inf), where=moving & (denom > 0))  # inf / inf: no move
    move = np.where(moving, np.minimum(x, np.nan_to_num(newton, nan=0.0, posinf=np.inf)), 0.0)
    out = -move
    out[rows, s] += move.sum(axis=1)
    return np.asarray(out)


def _all_on(cost: FloatArray, rate: FloatArray) -> FloatArray:
    """Each class's whole rate on its cheapest node (a class with no finite cost gets nothing)."""
    out = np.zeros_like(cost)
    rows = np.nonzero(rate > 0)[0]
    if len(rows):
        out[rows, np.argmin(cost[rows], axis=1)] = rate[rows]
    return out


def _line_search(q: QueueProblem, n: Servers, x: FloatArray, d: FloatArray) -> float:
    """The step in [0, 1] minimising the convex objective along ``d`` (bisection on its derivative)."""

    def slope(a: float) -> float:
        return float((_gradient(q, n, x + a * d) * d).sum())

    if slope(1.0) <= 0:
        return 1.0
    lo, hi = 0.0, 1.0
    for _ in range(BISECTIONS):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if slope(mid) < 0 else (lo, mid)
    return lo


def _secant_search(q: QueueProblem, n: Servers, x: FloatArray, d: FloatArray, slope0: float) -> float:
    """The step in [0, 1] minimising the convex objective along ``d`` (``slope0`` its slope at 0, < 0): Illinois
    regula falsi on the slope, a bisection instead wherever two steps did not halve the bracket (the slope jumps
    by 1e3x at the load cap's kink), ``SECANTS`` evaluations at most; the last point known to still descend."""

    def slope(a: float) -> float:
        return float((_gradient(q, n, x + a * d) * d).sum())

    hi, s_hi = 1.0, slope(1.0)
    if s_hi <= 0 or slope0 >= 0:
        return 1.0 if s_hi <= 0 else 0.0
    lo, s_lo, side, width = 0.0, slope0, 0, 1.0
    for i in range(SECANTS):
        a = lo - s_lo * (hi - lo) / (s_hi - s_lo)
        bisect = (i % 2 == 1 and hi - lo > width / 2) or not lo < a < hi
        a = (lo + hi) / 2 if bisect else a
        s_a = slope(a)
        if abs(s_a) <= 1e-6 * -slope0:
            return a  # the minimum, to a millionth of the slope at 0
        if s_a < 0:  # Illinois: the end kept twice in a row has its slope halved, so both ends converge
            lo, s_lo, s_hi, side = a, s_a, s_hi / 2 if side == -1 and not bisect else s_hi, -1
        else:
            hi, s_hi, s_lo, side = a, s_a, s_lo / 2 if side == 1 and not bisect else s_lo, 1
        width = hi - lo if i % 2 == 1 else width
    return lo


def _spread(q: QueueProblem, x: FloatArray) -> list[dict[str, Any]]:
    """Per site and model, largest rate first: its RTT row and node -> share (solver.queue_plan.spread's form)."""
    p = q.base
    out = []
    for c in np.argsort(-q.rate, kind="stable")[:MAX_SPREAD_SITES].tolist():
        served = float(x[c].sum())
        if served <= 0:
            continue
        first = p.snapshot.requests[p.class_members[c][0]]
        keep = np.nonzero(x[c] > 1e-6 * served)[0]
        total = float(x[c, keep].sum())
        shares = {p.node_ids[j]: round(float(x[c, j]) / total, 6) for j in keep}
        out.append(
            {"model": first.model, "rtt_ms": {k: round(v, 1) for k, v in first.rtt_ms.items()}, "shares": shares}
        )
    return out


def _planned_queue(q: QueueProblem, n: Held, lam: FloatArray) -> dict[str, dict[str, float]]:
    """Per node and model with traffic: the mean number of requests at one instance (M/M/c L over its slots)."""
    out: dict[str, dict[str, float]] = {}
    slots = node_slots(q.base).tolist()
    load = published_load(lam, q.mu, n.counts, n.cores)  # the plan's own figure (solver.cpu_speed)
    for j, k in zip(*np.nonzero((n.counts > 0) & (lam > 0)), strict=True):
        rho = min(float(load[j, k]), EVAL_RHO)
        out.setdefault(q.base.node_ids[j], {})[q.base.model_names[k]] = round(requests_at_instance(rho, slots[j]), 6)
    return out
