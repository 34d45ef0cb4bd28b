"""The endpoint rule the agent serves by and the workload simulation reproduces (issue 16, parts 2 and 3).

Pure and stdlib-only, so the agent (agent/decisions.py ``rank_endpoints`` / ``spread_choice``, which
carry it out on live candidates) and the simulation (solver/agent_sim.py, which replays it at every
simulated arrival) run the same code:

* rank: endpoints best first by (estimated RTT + execution ms rounded to 1e-6, load, node, URL);
* spread: with a plan's shares for the client's site (every objective publishes them), one endpoint is
  chosen first. Its plan weight: the node's share split evenly over the node's ready endpoints (but
  the last ``idle_running`` of them in rank order, weight 0: instances a Mode 1 plan keeps running
  without traffic). Its live queue: the requests this agent has in flight there (0 when idle, absent
  or not from the table). Its score: how full it is against the plan, (1 + live) / (1 + its node's
  planned queue). ``p2c`` (the default): two endpoints drawn by plan weight / score ** 2, the one with
  the lower score taken, a tie keeping the first draw: where every score is the same (the queues as
  planned, or all idle under one planned queue) the plan's proportions hold exactly. ``weighted`` (the
  rule before): one draw by plan weight / score. No share on any ready endpoint (no plan, or its nodes
  are down): the ranking stands, and the first endpoint takes the request.
  bench/endpoint_rules_bench.py weighs the rules.
* ``lef`` (least expected finish; issue 16 target 5c, docs/solver.md "The endpoint rule lef"): among EVERY
  ready endpoint of the model, whether or not the plan gives its node a share (but the plan's
  ``idle_running`` ones, which it keeps without traffic), the one with the least RTT + (max(0, live + 1 -
  slots) / slots + 1) x service time, ties to the better ranked: ``live`` this agent's requests in flight
  there, ``service`` the catalogue's service time for the node's class (not the measured server time, which
  includes the wait and would count it twice), ``slots`` the node's concurrency (the leader's summary,
  bounded by ``reported_slots``; parsed once per summary by ``node_slots``). An endpoint without a
  service time, or with any input not a finite number in range (NaN, inf, slots < 1), is never chosen;
  where none is left the ``p2c`` rule decides (the plan's shares, else the ranking). The plan still decides
  which instances run; only where a request goes among them changes. Cost: one pass over the endpoints.
  Not the default: the simulated audit misses fewer cells under it, no live run has shown its p99 no
  worse (docs/solver.md).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

RULES = ("p2c", "weighted", "lef")  # the endpoint rules (module docstring)
DEFAULT_RULE = RULES[0]
LIVE_POWER = 2  # p2c draws by plan weight / score ** LIVE_POWER (bench/endpoint_rules_bench.py: 2 over 1)
UNKNOWN_RTT_MS = 1.0  # a LAN hop, used for a node the client has not measured
MAX_SPREAD_SITES = 64  # site entries an agent keeps from a plan (more are ignored)
MAX_SLOTS = 1024.0  # a node's concurrency as the settings bound it (agent/settings.py instance_concurrency)


def rank_key(total_ms: float, load: float, node: str, url: str) -> tuple[float, float, str, str]:
    """The sort key of endpoint ranking: lowest estimated ms, then lower load, node id, URL."""
    return (round(total_ms, 6), load, node, url)


@dataclass(frozen=True)
class SiteShares:
    """A plan's split of one site's stream of ``model``: node -> share of its rate."""

    model: str
    rtt_ms: Mapping[str, float]
    shares: Mapping[str, float]


def parse_spread(raw: Any) -> tuple[SiteShares, ...]:
    """The plan summary's ``spread`` (queue objective), malformed entries skipped, at most MAX_SPREAD_SITES."""
    out: list[SiteShares] = []
    for entry in raw if isinstance(raw, list) else []:
        if len(out) >= MAX_SPREAD_SITES:
            break
        try:
            rtts = {str(n): float(v) for n, v in entry["rtt_ms"].items()}
            shares = {str(n): float(v) for n, v in entry["shares"].items() if float(v) > 0}
            out.append(SiteShares(str(entry["model"]), rtts, shares))
        except (KeyError, TypeError, ValueError, AttributeError):
            continue
    return tuple(out)


def site_shares(sites: Iterable[SiteShares], model: str, client_rtts: Mapping[str, float]) -> Mapping[str, float]:
    """The shares of the site of ``model`` nearest the client's RTTs (mean absolute difference); {} if none."""
    best: tuple[float, Mapping[str, float]] | None = None
    for site in sites:
        if site.model != model or not site.rtt_ms:
            continue
        gap = sum(abs(client_rtts.get(n, UNKNOWN_RTT_MS) - v) for n, v in site.rtt_ms.items()) / len(site.rtt_ms)
        if best is None or gap < best[0]:
            best = (gap, site.shares)
    return {} if best is None else best[1]


def planned_queues(placement: Mapping[str, Any], model: str) -> dict[str, float]:
    """The placement summary's planned queue per node for ``model`` (malformed entries skipped)."""
    queues = placement.get("planned_queue")
    if not isinstance(queues, Mapping):
        return {}
    return {
        str(n): float(m[model])
        for n, m in queues.items()
        if isinstance(m, Mapping) and isinstance(m.get(model), (int, float))
    }


def idle_counts(placement: Mapping[str, Any], model: str) -> dict[str, int]:
    """The placement summary's running instances of ``model`` kept without traffic per node (``idle_running``,
    Mode 1 past the instance bound); malformed, boolean, negative or absurd (>= 1e6) counts skipped."""
    raw = placement.get("idle_running")
    if not isinstance(raw, Mapping):
        return {}
    out = {}
    for n, m in raw.items():
        v = m.get(model) if isinstance(m, Mapping) else None
        if isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v < 1e6:
            out[str(n)] = int(v)
    return out


def spread_weights(
    endpoints: Sequence[tuple[str, str]],
    shares: Mapping[str, float],
    planned_queue: Mapping[str, float] | None = None,
    live_queue: Mapping[str, float] | None = None,
    idle: Mapping[str, int] | None = None,
) -> list[float]:
    """The ``weighted`` rule's draw weight of each (node, url) endpoint, in order; without ``live_queue``
    the plan weights (a node's share split evenly over its endpoints but the last ``idle[node]``); an
    endpoint absent from ``live_queue`` has nothing in flight (live 0)."""
    per_node: dict[str, int] = {}
    for node, _ in endpoints:
        per_node[node] = per_node.get(node, 0) + 1
    serving = {node: max(1, n - max(0, (idle or {}).get(node, 0))) for node, n in per_node.items()}
    seen: dict[str, int] = {}
    weights = []
    for node, url in endpoints:
        seen[node] = seen.get(node, 0) + 1
        w = shares.get(node, 0.0) / serving[node] if seen[node] <= serving[node] else 0.0
        if live_queue is not None:
            w *= (1.0 + (planned_queue or {}).get(node, 0.0)) / (1.0 + max(0.0, live_queue.get(url, 0.0)))
        weights.append(max(0.0, w))
    return weights


def queue_score(node: str, url: str, planned_queue: Mapping[str, float], live_queue: Mapping[str, float]) -> float:
    """How full an endpoint is against the plan: (1 + requests in flight) / (1 + its node's planned queue)."""
    return (1.0 + max(0.0, live_queue.get(url, 0.0))) / (1.0 + max(0.0, planned_queue.get(node, 0.0)))


def choose_endpoint(
    endpoints: Sequence[tuple[str, str]],
    shares: Mapping[str, float],
    planned_queue: Mapping[str, float] | None,
    live_queue: Mapping[str, float] | None,
    draws: tuple[float, float],
    rule: str = DEFAULT_RULE,
    idle: Mapping[str, int] | None = None,
    finish: Sequence[Finish] | None = None,
) -> int | None:
    """The index of the endpoint that takes the request by ``rule`` (module docstring); None when no
    endpoint has a plan weight (and, under ``lef``, none a finish). ``draws``: two uniforms in [0, 1)
    (injected: the function is pure); ``idle``: per node, running instances the plan keeps without traffic;
    ``finish``: ``lef``'s inputs per endpoint, in order (None under ``lef``: the ``p2c`` rule decides)."""
    if rule not in RULES:
        raise ValueError(f"unknown endpoint rule {rule!r}; choose one of {', '.join(RULES)}")
    if rule == "lef":
        pick = least_finish(endpoints, finish, live_queue, idle) if finish is not None else None
        if pick is not None:
            return pick
        rule = "p2c"  # no endpoint with a service time: the plan's shares decide, as under p2c
    if rule == "weighted" or live_queue is None:
        return draw(spread_weights(endpoints, shares, planned_queue, live_queue, idle), draws[0])
    planned = planned_queue or {}
    scores = [queue_score(node, url, planned, live_queue) for node, url in endpoints]
    plain = spread_weights(endpoints, shares, idle=idle)
    weights = [w / s**LIVE_POWER for w, s in zip(plain, scores, strict=True)]
    first, second = draw(weights, draws[0]), draw(weights, draws[1])
    if first is None or second is None:
        return first
    return second if scores[second] < scores[first] else first


@dataclass(frozen=True)
class Finish:
    """``lef``'s inputs for one endpoint: the client's RTT to its node (ms), the catalogue's service time for
    the node's class (ms; None: unknown) and the node's slots (requests an instance serves at once)."""

    rtt_ms: float
    service_ms: float | None
    slots: float


def expected_finish_ms(rtt_ms: float, queue: float, service_ms: float, slots: float) -> float:
    """RTT + the wait for one of ``slots`` slots behind ``queue`` requests + the request's own service (ms)."""
    return rtt_ms + (max(0.0, queue + 1.0 - slots) / slots + 1.0) * service_ms


def serving_mask(endpoints: Sequence[tuple[str, str]], idle: Mapping[str, int] | None) -> list[bool]:
    """Per endpoint, whether it may take traffic: all but the last ``idle[node]`` of each node's, in order
    (the instances a Mode 1 plan keeps running without traffic; a node whose every one is idle has none)."""
    left: dict[str, int] = {}
    for node, _ in endpoints:
        left[node] = left.get(node, 0) + 1
    for node, n in (idle or {}).items():
        if node in left:
            left[node] -= max(0, min(n, left[node]))
    out = []
    for node, _ in endpoints:
        out.append(left[node] > 0)
        left[node] -= 1
    return out


def least_finish(
    endpoints: Sequence[tuple[str, str]],
    finish: Sequence[Finish],
    live_queue: Mapping[str, float] | None,
    idle: Mapping[str, int] | None = None,
) -> int | None:
    """``lef``: the index of the endpoint with the least expected finish (module docstring), the first of
    equals; None when no endpoint may take traffic with finite inputs and a service time. ``live_queue``:
    this agent's requests in flight by URL (absent: none; negative counts read 0)."""
    if len(finish) != len(endpoints):
        raise ValueError(f"{len(finish)} finish inputs for {len(endpoints)} endpoints")
    live = live_queue or {}
    best: tuple[float, int] | None = None
    for e, (may, (_, url), f) in enumerate(zip(serving_mask(endpoints, idle), endpoints, finish, strict=True)):
        service = f.service_ms
        if not may or service is None or not 0.0 < service < math.inf or not 1.0 <= f.slots <= MAX_SLOTS:
            continue
        try:
            queue = float(live.get(url, 0))
        except (OverflowError, TypeError, ValueError):  # an int past any float, or not a number: not a count
            continue
        if not (math.isfinite(f.rtt_ms) and f.rtt_ms >= 0.0 and math.isfinite(queue)):
            continue
        t = expected_finish_ms(f.rtt_ms, max(0.0, queue), service, f.slots)
        if math.isfinite(t) and (best is None or t < best[0]):
            best = (t, e)
    return None if best is None else best[1]


def reported_slots(concurrency: float | None, cores: float | None) -> float | None:
    """The slots the leader publishes for a member (the summary's ``slots``; docs/security.md): its reported
    concurrency bounded as the plan bounds it (solver.node_cpu.node_slots: at most max(cores, 1)) and by
    MAX_SLOTS, so a member gains no more under ``lef`` than the figures the plan already trusts give it.
    None (left out: one slot) where it reports no finite concurrency."""
    if concurrency is None or not math.isfinite(concurrency):
        return None
    bound = MAX_SLOTS if cores is None or not math.isfinite(cores) or cores <= 0 else min(max(cores, 1.0), MAX_SLOTS)
    return min(max(concurrency, 1.0), bound)


def node_slots(placement: Mapping[str, Any] | None) -> dict[str, float]:
    """The placement summary's ``slots`` per node (the nodes' concurrency as the leader gathered it);
    malformed, boolean or out-of-range (not 1-MAX_SLOTS) entries skipped."""
    raw = (placement or {}).get("slots")
    if not isinstance(raw, Mapping):
        return {}
    return {
        str(n): float(v)
        for n, v in raw.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and 1.0 <= v <= MAX_SLOTS
    }


def draw(weights: Sequence[float], u: float) -> int | None:
    """The index ``u`` in [0, 1) falls on in proportion to ``weights``; None when they sum to zero."""
    total = sum(weights)
    if total <= 0:
        return None
    target, acc = min(max(u, 0.0), 1.0 - 1e-12) * total, 0.0
    for i, w in enumerate(weights):
        acc += w
        if target < acc:
            return i
    return len(weights) - 1
