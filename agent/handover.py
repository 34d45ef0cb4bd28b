"""Make-before-break: the leader holds back the stops of a moving model until its replacements are ready.

Pure functions of the plan's desired sets and the nodes' ready servers (and, where known, the catalogue's sizes and
the nodes' memory): ``make_before_break`` returns the desired sets the leader sends this round. Split out of
agent/placement.py (the snapshot) as the step that follows the solve; the node's own side of an upgrade (stop-first
of an outdated server on a full board) is agent/decisions.py.
"""

from __future__ import annotations

import math
from collections.abc import Container, Mapping, Sequence

from agent.decisions import memory_fits


def make_before_break(
    desired: Mapping[str, Mapping[str, int]],
    ready: Mapping[str, Mapping[str, int]],
    mem_mb: Mapping[str, float] | None = None,
    mem_total_mb: Mapping[str, float] | None = None,
) -> dict[str, dict[str, int]]:
    """Hold back stops of a model while the instances that replace it are not ready yet, within each node's memory.

    A model that the plan moves (fewer instances on one node, more on another) keeps its ready
    instances where they are until every node the plan adds it to reports it ready; the next round then
    stops them. Clients never lose the last ready endpoint of a model to a move.

    With the catalogue's sizes (``mem_mb``) and the nodes' totals (``mem_total_mb``) a node is never sent a set
    it would refuse for the servers held on it (decisions.memory_fits, the node's own rule): the plan's set goes
    first, and held servers are added only where they fit beside it. Where they do not all fit:

    * the plan keeps a ready server of the model somewhere (or another held one is kept): the hold only adds
      capacity during the move and is dropped (``_add_capacity``);
    * the held servers are the model's last ready ones: one of them is kept (on the node where that costs the
      fewest deferred MB) and that node's *starts* of models still served elsewhere wait for the hold to clear
      (``_keep_last``): they only add capacity, and start the round after the replacement is ready.

    The starts that end an outage -- of a model the plan keeps no ready server of -- are never deferred, so no
    deferral waits on another (two full nodes swapping models would each wait for the other's hold): every hold
    kept at the price of a deferral waits only on starts that go ahead, and the cluster reaches the plan within
    two rounds of those starts becoming ready. Where even deferring every such start leaves no room, the model's
    last ready server is stopped (its replacement starts at once): memory cannot hold both. A node whose plan
    itself does not fit gets no holds (it refuses the plan for the plan's sake). Without sizes or a node's
    total every hold is kept, as before.
    """
    out = {n: dict(d) for n, d in desired.items()}
    holds = _held(desired, ready)
    if not holds:
        return out
    need = mem_mb or {}
    totals = {n: t for n, t in (mem_total_mb or {}).items() if math.isfinite(t)}  # (reports are checked finite)
    room = sorted(n for n in holds if n not in totals or memory_fits(out[n], need, totals[n]))
    floor = {n: {m: min(c, ready.get(n, {}).get(m, 0)) for m, c in desired[n].items()} for n in room}
    served = {m for n, d in desired.items() for m, c in d.items() if min(c, ready.get(n, {}).get(m, 0)) > 0}
    last = sorted({m for n in room for m in holds[n] if m not in served}, key=lambda m: (-need.get(m, 0.0), m))
    deferred: set[str] = set()
    for m in last:
        _keep_last(m, out, holds, room, floor, served, need, totals, deferred)
    for n in room:
        if n not in deferred:
            _add_capacity(out[n], holds[n], desired[n], need, totals.get(n))
    return out


def _held(
    desired: Mapping[str, Mapping[str, int]], ready: Mapping[str, Mapping[str, int]]
) -> dict[str, dict[str, int]]:
    """node -> model -> ready servers the plan stops while the model has a replacement not ready yet."""
    pending = {m for n, d in desired.items() for m, c in d.items() if c > ready.get(n, {}).get(m, 0)}
    out: dict[str, dict[str, int]] = {}
    for n, r in ready.items():
        if n not in desired:
            continue
        extra = {m: c - desired[n].get(m, 0) for m, c in r.items() if m in pending and c > desired[n].get(m, 0)}
        if extra:
            out[n] = extra
    return out


def _keep_last(
    m: str,
    out: dict[str, dict[str, int]],
    holds: Mapping[str, Mapping[str, int]],
    room: Sequence[str],
    floor: Mapping[str, Mapping[str, int]],
    served: Container[str],
    need: Mapping[str, float],
    totals: Mapping[str, float],
    deferred: set[str],
) -> None:
    """Keep one held server of ``m`` (its last ready ones are all leaving) where it costs the fewest deferred MB:
    a node deferring only its starts of models ``served`` elsewhere (never below its ready servers: ``floor``)."""
    best: tuple[float, float, str, dict[str, int]] | None = None
    for n in room:
        if holds[n].get(m, 0) <= 0:
            continue
        trial = {**out[n], m: out[n].get(m, 0) + 1}
        total = totals.get(n)
        if total is not None:
            spare = {x: c - floor[n].get(x, 0) for x, c in out[n].items() if x in served and x != m}
            if not _defer(trial, spare, need, total):
                continue
        cost = sum((out[n].get(x, 0) - c) * need.get(x, 0.0) for x, c in trial.items() if x != m)
        slack = math.inf if total is None else total - _need_mb(trial, need)
        if best is None or (cost, -slack, n) < best[:3]:
            best = (cost, -slack, n, trial)
    if best is None:
        return  # memory cannot hold it beside the starts that end outages: the replacement starts now
    n, trial = best[2], best[3]
    if any(trial.get(x, 0) < c for x, c in out[n].items()):
        deferred.add(n)
    out[n] = {x: c for x, c in trial.items() if c > 0}


def _defer(trial: dict[str, int], spare: Mapping[str, int], need: Mapping[str, float], total: float) -> bool:
    """Take starts out of ``trial`` (largest servers first, at most ``spare`` per model) until it fits ``total``;
    whether it does. Arithmetic per model, not per server: a count is bounded by memory only."""
    left = {x: max(0, c) for x, c in spare.items()}
    for x in sorted(left, key=lambda x: (-need.get(x, 0.0), x)):
        if memory_fits(trial, need, total):
            return True
        size, most = need.get(x, 0.0), left[x]
        if size <= 0 or most <= 0:
            continue
        k = min(most, max(1, math.ceil((_need_mb(trial, need) - total) / size)))
        trial[x] -= k
        while k < most and not memory_fits(trial, need, total):
            k, trial[x] = k + 1, trial[x] - 1  # float rounding in the estimate: one more, at most a few times
        left[x] -= k
    if not memory_fits(trial, need, total) and sum(trial.values()) - sum(left.values()) <= 1:
        for x, k in left.items():  # one server in all fits whatever its size: the rest of the starts wait
            trial[x] -= k
    return memory_fits(trial, need, total)


def _add_capacity(
    out: dict[str, int],
    held: Mapping[str, int],
    wanted: Mapping[str, int],
    need: Mapping[str, float],
    total: float | None,
) -> None:
    """Add the held servers that fit beside ``out`` (smallest first, one per model, then the rest): capacity
    during a move, never a reason to refuse or defer the plan."""
    left = {m: c - max(0, out.get(m, 0) - wanted.get(m, 0)) for m, c in held.items()}
    if total is None:
        for m, c in left.items():
            out[m] = out.get(m, 0) + c
        return
    order = sorted(left, key=lambda m: (need.get(m, 0.0), m))
    for m in order:
        if left[m] > 0 and memory_fits({**out, m: out.get(m, 0) + 1}, need, total):
            out[m], left[m] = out.get(m, 0) + 1, left[m] - 1
    for m in order:
        if left[m] <= 0:
            continue
        size = need.get(m, 0.0)
        if size <= 0:  # frees or takes nothing: all of them, unless the count rule alone let ``out`` fit
            k = left[m] if memory_fits({**out, m: out.get(m, 0) + left[m]}, need, total) else 0
        else:
            k = min(left[m], max(0, math.floor((total - _need_mb(out, need)) / size)))
        while k > 0 and not memory_fits({**out, m: out.get(m, 0) + k}, need, total):
            k -= 1  # float rounding in the estimate: once or twice
        if k > 0:
            out[m] = out.get(m, 0) + k


def _need_mb(instances: Mapping[str, int], need: Mapping[str, float]) -> float:
    return sum(c * need.get(m, 0.0) for m, c in instances.items() if c > 0)
