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
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

RULES = ("p2c", "weighted")  # the endpoint rules (module docstring)
DEFAULT_RULE = RULES[0]
LIVE_POWER = 2  # p2c draws by plan weight / score ** LIVE_POWER (bench/endpoint_rules_bench.py: 2 over 1)
UNKNOWN_RTT_MS = 1.0  # a LAN hop, used for a node the client has not measured
MAX_SPREAD_SITES = 64  # site entries an agent keeps from a plan (more are ignored)


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
) -> int | None:
    """The index of the endpoint that takes the request by ``rule`` (module docstring); None when no
    endpoint has a plan weight. ``draws``: two uniforms in [0, 1) (injected: the function is pure);
    ``idle``: per node, running instances the plan keeps without traffic."""
    if rule not in RULES:
        raise ValueError(f"unknown endpoint rule {rule!r}; choose one of {', '.join(RULES)}")
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
