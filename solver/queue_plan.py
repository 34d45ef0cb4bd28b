"""The queue-aware objective end to end: relaxation (solver.queue_model), repair, and the Plan.

The plan's ``objective_ms`` is the mean latency per request (RTT + execution + queueing wait, ms) over
the served rate; ``shares`` gives each request (stream) its node -> fraction split; ``instances`` the
integer pool sizes (in Mode 1 never below what runs and is kept); ``details["idle_running"]`` the
instances it keeps running but serves with none of its traffic (Mode 1: running ones its rates do not need).
"""

from __future__ import annotations

import itertools
import math
import time
from typing import Any

import numpy as np

from solver import cpu_speed
from solver.capacity import violations
from solver.fast_round import python_round
from solver.node_cpu import core_room, node_slots, pool_servers
from solver.plan import Plan, Rejection
from solver.problem import FloatArray, IntArray, Mode, Problem, plan_actions, plan_instances, running_instances
from solver.queue_close_fast import close_pools_fast
from solver.queue_fast import solve_nlp_fast
from solver.queue_model import QueueProblem, build_queue_problem
from solver.queue_repair import Pools, repair
from solver.queue_sched import add_where_behind
from solver.queueing import requests_at_instance
from solver.tail_cap import with_tail_cap
from solver.too_slow import drop_too_slow
from solver.too_slow import reason as too_slow_reason

SEED_COUNTS = True  # whole counts follow the relaxation's where budgets allow (solver.queue_seed)
MAX_SPREAD_SITES = 64  # sites (largest rate first) whose split the plan hands to the agents (peer messages <= 256 KiB)


def solve_queue(problem: Problem, tail: bool = False) -> Plan:
    """Place ``problem``'s streams under the queue-aware objective (``tail``: the p99 load cap of solver.tail_cap).

    Where the tail cap would break the instance bound (the repair had to take instances away from
    tail-capped pools), the plain objective's plan is returned instead: at the bound the tail cap buys
    nothing, and the plain plan spreads the load the relaxation chose (``details["tail_cap"]``).
    """
    q = build_queue_problem(problem)
    if not tail:
        return _solve(q, {})
    bound = "gave way to the instance bound"
    tailed = with_tail_cap(q)
    if tail_breaks_bound(tailed):
        return _solve(q, {"tail_cap": bound})
    capped = _solve(tailed, {"tail_cap": "kept"})
    if capped.details.get("shed", 0) == 0:
        return capped
    return _solve(q, {"tail_cap": bound, "tail_iterations": capped.details["iterations"]})


def tail_breaks_bound(q: QueueProblem) -> bool:
    """Whether some model needs more instances at its tail cap, even on its best pools, than the bound allows
    (its need at ``rho_max`` + one spare per node class): then the tail-capped solve is not worth running."""
    p = q.base
    per_instance = q.cap() * q.mu  # [j, k] req/s under the tail cap
    for k in range(len(p.model_names)):
        rate = float(q.rate[p.class_model == k].sum())
        fewest = math.ceil(rate / max(float(per_instance[:, k].max()), 1e-12) - 1e-9)
        bound = math.ceil(rate / (q.rho_max * max(float(q.mu[:, k].max()), 1e-12)) - 1e-9) + len(set(q.node_class))
        if fewest > bound:
            return True
    return False


INTEGER_STEPS = ("pools_closed", "instances_moved", "resplit", "resplit_by_load", "scheduler_added")


def integer_part(q: QueueProblem, nlp: Any, last: str = INTEGER_STEPS[-1]) -> tuple[Pools, dict[str, Any]]:
    """The plan's integer part from the relaxation's answer ``nlp``: repair, then ``INTEGER_STEPS`` in order up to
    and with ``last`` (the plan runs them all; benches and tests stop earlier); each step's result by name."""
    from solver.queue_move import move_instances  # solver.hold (their Frank-Wolfe) imports this module
    from solver.queue_split import best_split
    from solver.queue_split_load import resplit_by_load

    pools = repair(q, nlp.x, nlp.r, nlp.n if SEED_COUNTS else None)
    pools.too_slow_models = drop_too_slow(pools)  # no instance that could not answer in time (solver.too_slow)
    steps = (close_pools_fast, move_instances, best_split, resplit_by_load, add_where_behind)  # the last: where
    done: dict[str, Any] = {}  # the node's scheduler would fall behind (solver.queue_sched)
    for name, step in zip(INTEGER_STEPS, steps, strict=True):
        done[name] = step(pools)
        if name == last:
            break
    return pools, done


def _solve(q: QueueProblem, extra: dict[str, Any]) -> Plan:
    """Relaxation, repair and pool closing for one QueueProblem."""
    problem = q.base
    start = time.process_time()
    nlp = solve_nlp_fast(q)
    relaxation_ms = 1000.0 * (time.process_time() - start)
    pools, done = integer_part(q, nlp)
    details: dict[str, Any] = {
        **extra,
        "shed": pools.shed,
        "classes": problem.n_classes,
        "iterations": nlp.iterations,
        "relaxation_ms": round(relaxation_ms, 3),
        "nlp_rounds": nlp.rounds,
        "nlp_columns": nlp.columns,
        "nlp_fallback": nlp.fallback,
        **done,
        "relaxation_instances": round(float(nlp.n.sum()), 3),
        "rate_rps": round(float(q.rate.sum()), 6),
        "rejected_rps": round(float(pools.rejected.sum()), 6),
    }
    details.update(spread=spread(q, pools), planned_queue=planned_queue(q, pools))
    return make_queue_plan(q, pools, "ipopt", nlp.status, details)


def spread(q: QueueProblem, pools: Pools, limit: int = MAX_SPREAD_SITES) -> list[dict[str, Any]]:
    """Per site (class) and model: its RTT row and node -> share of its rate; at most ``limit`` sites."""
    p = q.base
    rows, totals, used = pools.x.tolist(), pools.x.sum(axis=1).tolist(), _positive(pools.x)  # row sums as row by row
    listed = [c for c in np.argsort(-q.rate, kind="stable")[:limit].tolist() if totals[c] > 0]
    firsts = [p.snapshot.requests[p.class_members[c][0]] for c in listed]
    rtt_rows = [list(first.rtt_ms.items()) for first in firsts]
    rtts = iter(_rounded([v for row in rtt_rows for _, v in row], 1))
    shares = iter(_rounded([rows[c][j] / totals[c] for c in listed for j in used[c]], 6))
    return [
        {
            "model": first.model,
            "rtt_ms": {n: next(rtts) for n, _ in rtt_row},
            "shares": {p.node_ids[j]: next(shares) for j in used[c]},
        }
        for c, first, rtt_row in zip(listed, firsts, rtt_rows, strict=True)
    ]


def _rounded(values: list[float], digits: int) -> list[float]:
    """``[round(v, digits) for v in values]``, at once where every value is a float (solver.fast_round)."""
    if all(type(v) is float for v in values):
        return python_round(values, digits)
    return [round(v, digits) for v in values]


def _positive(x: FloatArray) -> list[list[int]]:
    """[c] the columns where row c of ``x`` is positive, in order (the plan's loops then skip the zeros)."""
    rows, cols = np.nonzero(x > 0)
    bounds = np.searchsorted(rows, np.arange(x.shape[0] + 1)).tolist()
    flat = cols.tolist()
    return [flat[a:b] for a, b in itertools.pairwise(bounds)]


def planned_queue(q: QueueProblem, pools: Pools) -> dict[str, dict[str, float]]:
    """Per node and model: the mean number of requests at one instance under the plan (M/M/c L over its slots),
    at the load the scheduler model gives it (solver.cpu_speed; with ``cpu_speed.PUBLISHED`` off, the node's
    cores shared by load: solver.node_cpu.pool_servers); an idle pool: 0."""
    lam, counts = pools.state()
    load = cpu_speed.published_load(lam, q.mu, counts, pools.cores)
    slots = node_slots(q.base).tolist()
    loads, rates = np.asarray(load).tolist(), lam.tolist()  # Python floats: float(load[j, k]) each, read at once
    rows, cols = np.nonzero(counts > 0)
    out: dict[str, dict[str, float]] = {}
    for j, k in zip(rows.tolist(), cols.tolist(), strict=True):
        rho = min(loads[j][k], 0.999) if rates[j][k] > 0 else 0.0
        out.setdefault(q.base.node_ids[j], {})[q.base.model_names[k]] = round(requests_at_instance(rho, slots[j]), 6)
    return out


def _wait_terms(q: QueueProblem, pools: Pools) -> tuple[FloatArray, FloatArray]:
    """[j, k] each pool's M/M/1 wait (request-ms/s, PoolDelay at a cap of rho_max + 0.099, vectorised) and lam,
    over the servers its node's cores give it by load (solver.node_cpu.pool_servers)."""
    lam, whole = pools.state()
    counts = pool_servers(lam, q.mu, whole, pools.cores)[0]
    rho = min(0.999, q.rho_max + 0.099)
    busy = (lam > 0) & (counts > 0)  # no servers with a rate: work that underflows to 0 (no wait)
    n = np.where(busy, counts, 1).astype(float)
    t, tm = lam / n, rho * q.mu
    tc = np.minimum(t, tm)
    gap = q.mu - tc
    g_in = 1000.0 * tc / gap
    g = np.where(t <= tm, g_in, g_in + 1000.0 * q.mu / gap**2 * (t - tm))
    return np.where(busy, n * g - lam * q.service_ms, 0.0), lam


def _summed(start: float, values: FloatArray) -> float:
    """``start`` plus the non-zero ``values`` one at a time, in row-major order (the loop's float sum)."""
    for v in values[values != 0].tolist():
        start += v
    return start


def mean_latency_ms(q: QueueProblem, pools: Pools, terms: tuple[FloatArray, FloatArray] | None = None) -> float:
    """Rate-weighted mean of RTT + execution + M/M/1 wait over the served rate (0 if nothing is served).

    ``terms``: ``_wait_terms(q, pools)`` where the caller has them."""
    served = float(pools.x.sum())
    if served <= 0:
        return 0.0
    wait, lam = _wait_terms(q, pools) if terms is None else terms
    return _summed(float((pools.x * q.base.cost).sum()), wait[lam > 0]) / served


def model_latency_ms(
    q: QueueProblem, pools: Pools, terms: tuple[FloatArray, FloatArray] | None = None
) -> dict[str, float]:
    """Per model with served rate: the rate-weighted mean of RTT + execution + M/M/1 wait (mean_latency_ms's terms)."""
    p = q.base
    wait, lam = _wait_terms(q, pools) if terms is None else terms
    out: dict[str, float] = {}
    for k, name in enumerate(p.model_names):
        mine = p.class_model == k
        served = float(pools.x[mine].sum())
        if served <= 0:
            continue
        total = _summed(float((pools.x[mine] * p.cost[mine]).sum()), wait[:, k][lam[:, k] > 0])
        out[name] = round(float(total / served), 6)
    return out


def make_queue_plan(q: QueueProblem, pools: Pools, method: str, status: str, details: dict[str, Any]) -> Plan:
    """The Plan of a repaired (or baseline) rate placement."""
    p = q.base
    placed = pools.counts()
    target = np.maximum(p.free, placed) if p.mode is Mode.MODE1 else placed
    assignments: list[str | None] = [None] * p.n_requests
    shares: list[dict[str, float]] = [{} for _ in range(p.n_requests)]
    rejections = []
    rows, rates, rejected, used = pools.x.tolist(), q.rate.tolist(), pools.rejected.tolist(), _positive(pools.x)
    reasons: dict[int, str] = {}  # per model: the same for every rejected member
    totals: list[float] | None = None  # per class: its weights' sum as _spread_members takes it
    fractions = iter(_rounded([rows[c][j] / rates[c] for c in range(len(rows)) for j in used[c]], 6))
    for c, members in enumerate(p.class_members):
        row = rows[c]
        rounded = {p.node_ids[j]: next(fractions) for j in used[c]}
        if len(members) == 1:
            nodes = [_largest(row, used[c], rejected[c])]
        else:
            totals = _row_totals(pools) if totals is None else totals
            short = _split_members(len(members), row, rejected[c], totals[c])
            nodes = _spread_members(len(members), pools.x[c], rejected[c]) if short is None else short
        for i, j in zip(members, nodes, strict=True):
            shares[i] = dict(rounded)
            if j is None:
                k = int(p.class_model[c])
                reasons[k] = reasons[k] if k in reasons else _reason(q, pools, k)
                rejections.append(Rejection(i, reasons[k]))
            else:
                assignments[i] = p.node_ids[j]
    broken = violations(p, placed)
    terms = _wait_terms(q, pools)
    details = {
        **details,
        "model_ms": model_latency_ms(q, pools, terms),
        "idle_running": idle_running(p, target - placed),
    }
    return Plan(
        status=status,
        method=method,
        mode=p.mode.value,
        objective_ms=mean_latency_ms(q, pools, terms),
        solve_ms=0.0,
        assignments=tuple(assignments),
        instances=plan_instances(p, target),
        rejected=tuple(sorted(rejections, key=lambda r: r.request)),
        actions=plan_actions(p, running_instances(p.snapshot), target),
        feasible=not broken,
        violations=tuple(broken),
        note="objective queue: objective_ms is the mean latency per request, queueing included",
        details=details,
        shares=tuple(shares),
    )


def _largest(row: list[float], positive: list[int], rejected: float) -> int | None:
    """One member's node: the largest of ``row``'s weights and ``rejected`` (None), the first of equals; None
    where none is positive (``positive``: the columns where ``row`` is, in order; no other can be largest)."""
    best, at = rejected, None
    for j in reversed(positive):  # from the right, so that the first of equals wins; rejected comes last
        if row[j] >= best:
            best, at = row[j], j
    return None if best <= 0 else at


def _row_totals(pools: Pools) -> list[float]:
    """[c] ``np.append(pools.x[c], pools.rejected[c]).sum()`` for every class at once (the same row sums)."""
    return np.concatenate((pools.x, pools.rejected[:, None]), axis=1).sum(axis=1).tolist()  # type: ignore[no-any-return]


def _split_members(n: int, row: list[float], rejected: float, total: float) -> list[int | None] | None:
    """``_spread_members(n, row, rejected)`` on the non-zero weights only, where that is provably the same: the
    members left after the whole parts go to the largest remainders, and where those are all positive no zero
    weight (remainder 0) can take one; else None (the caller takes the long way)."""
    if n == 0 or total <= 0:
        return None
    weights = [(v, j) for j, v in enumerate(row) if v != 0] + ([(rejected, len(row))] if rejected != 0 else [])
    whole, keys = {}, []
    for v, j in weights:
        exact = v / total * n
        whole[j] = math.floor(exact)
        keys.append((-(exact - whole[j]), j))
    left = n - sum(whole.values())
    keys.sort()
    if left < 0 or (left > 0 and not (left <= len(keys) and keys[left - 1][0] < 0)):
        return None
    for _, j in keys[:left]:
        whole[j] += 1
    out: list[int | None] = []
    for _, j in sorted((-v, j) for v, j in weights):
        if whole[j] > 0:
            out += [None if j == len(row) else j] * whole[j]
    return out


def idle_running(p: Problem, idle: IntArray) -> dict[str, dict[str, int]]:
    """Node -> model -> instances the plan keeps running but serves with none of its traffic (Mode 1: they go
    idle and eviction stops them, solver.queue_running); nodes and models without any left out."""
    rows = np.flatnonzero((idle > 0).any(axis=1)).tolist()  # the nodes with any, in order
    return {
        p.node_ids[j]: {p.model_names[k]: int(idle[j, k]) for k in np.flatnonzero(idle[j] > 0).tolist()} for j in rows
    }


def _spread_members(n: int, x: Any, rejected: float, row: list[float] | None = None) -> list[int | None]:
    """n members over the nodes of a split (and rejection) by largest remainder, biggest share first.

    ``row``: ``x`` as a list, for the one-member shortcut (the largest weight, the first of equals)."""
    if n == 1 and row is not None:
        return [_largest(row, [j for j, v in enumerate(row) if v > 0], rejected)]
    weights = np.append(x, rejected)
    total = float(weights.sum())
    if n == 0 or total <= 0:
        return [None] * n
    exact = weights / total * n
    whole = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - whole), kind="stable")[: n - int(whole.sum())]:
        whole[i] += 1
    out: list[int | None] = []
    order = np.argsort(-weights, kind="stable")
    for i in order[whole[order] > 0].tolist():
        out += [None if i == len(x) else int(i)] * int(whole[i])
    return out


def _reason(q: QueueProblem, pools: Pools, k: int) -> str:
    """Why model k's rejected rate found no place: the instance bound at full cores, full cores, or memory/compute."""
    p = q.base
    name = p.model_names[k]
    if k in pools.too_slow_models:
        return too_slow_reason(q, k)
    if k in pools.shed_models:
        return (
            f"every node's cores are busy at {q.rho_max:g} of capacity and {name!r} runs the instances its load "
            "needs plus one spare per node class (the plan's instance bound): the rest of its rate is rejected"
        )
    room = np.maximum(core_room(pools.lam(), q.mu, pools.cores, q.rho_max), 0.0) * q.mu[:, k]  # [j] req/s of k
    lost = float(pools.rejected[p.class_model == k].sum())
    if np.isfinite(room).all() and lost > float(room.sum()) * (1 + 1e-6):
        return (
            f"the nodes' cores, busy up to {q.rho_max:g} of capacity, have room for only "
            f"{float(room.sum()) if room.sum() > 1e-3 else 0.0:.3g} more req/s of {name!r}; {lost:.3g} req/s rejected"
        )
    counts = pools.counts()
    new = np.maximum(counts - p.free, 0)
    left = p.mem_budget - new @ p.mem
    j = int(np.argmax(left))
    return (
        f"no node has throughput or room for {name!r} (an instance needs {p.mem[k]:g} MB and "
        f"{p.comp[k]:g} compute); most memory left: {p.node_ids[j]} with {max(0.0, float(left[j])):g} MB"
    )
