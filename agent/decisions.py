"""The agent's pure decisions: endpoint choice, reconciliation steps, retry backoff, where to provision.

No I/O and no clock reads: callers pass ``now`` and the facts; these return what to do.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from agent.runtime.base import Instance
from peerserve import dispatch as rule  # the endpoint rule, shared with the workload simulation
from peerserve.dispatch import (
    DEFAULT_RULE,
    MAX_SLOTS,
    Finish,
    choose_endpoint,
    idle_counts,
    node_slots,
    planned_queues,
    rank_key,
)

UNKNOWN_RTT_MS = rule.UNKNOWN_RTT_MS  # these five re-exported: their callers import them from here
MAX_SPREAD_SITES = rule.MAX_SPREAD_SITES
SiteShares = rule.SiteShares
parse_spread = rule.parse_spread
site_shares = rule.site_shares

BACKOFF_BASE_S = 1.0
BACKOFF_MAX_S = 60.0
MEMORY_REFUSAL_NAMES = 5  # models a memory refusal names (a desired set may hold every model of the catalogue)


@dataclass(frozen=True)
class Candidate:
    """A ready model server somewhere in the cluster."""

    node: str
    url: str
    model: str
    exec_ms: float
    load: float  # 0-100, GPU load if known else CPU load
    # the catalogue's service time for the node's class (ms; None: the catalogue has none): the endpoint rule
    # ``lef``'s (exec_ms is the measured server time where there is one, and that includes the wait)
    service_ms: float | None = None


@dataclass(frozen=True)
class Choice:
    candidate: Candidate
    rtt_ms: float
    rtt_measured: bool

    @property
    def total_ms(self) -> float:
        return self.rtt_ms + self.candidate.exec_ms

    def why(self) -> dict[str, Any]:
        return {
            "rtt_ms": round(self.rtt_ms, 3),
            "rtt_source": "client" if self.rtt_measured else "default",
            "exec_ms": round(self.candidate.exec_ms, 3),
            "estimated_ms": round(self.total_ms, 3),
            "load": round(self.candidate.load, 1),
        }


def rank_endpoints(candidates: Iterable[Candidate], client_rtts: Mapping[str, float]) -> list[Choice]:
    """Candidates best first: lowest estimated RTT + execution, ties to lower load, then node id."""
    choices = [Choice(c, client_rtts.get(c.node, UNKNOWN_RTT_MS), c.node in client_rtts) for c in candidates]
    return sorted(choices, key=lambda ch: rank_key(ch.total_ms, ch.candidate.load, ch.candidate.node, ch.candidate.url))


def best_per_model(candidates: Iterable[Candidate], client_rtts: Mapping[str, float]) -> dict[str, Choice]:
    """The best endpoint of every model that has one."""
    by_model: dict[str, list[Candidate]] = {}
    for c in candidates:
        by_model.setdefault(c.model, []).append(c)
    return {m: rank_endpoints(cs, client_rtts)[0] for m, cs in sorted(by_model.items())}


def spread_choice(
    ranked: Sequence[Choice],
    shares: Mapping[str, float],
    u: float,
    planned_queue: Mapping[str, float] | None = None,
    live_queue: Mapping[str, float] | None = None,
    idle: Mapping[str, int] | None = None,
    u2: float = 0.0,
    rule: str = DEFAULT_RULE,
    slots: Mapping[str, float] | None = None,
) -> list[Choice]:
    """``ranked`` with one endpoint chosen first in the plan's proportions; the rest keep their rank order.

    A node's share is split evenly over its ready endpoints but the last ``idle[node]`` of them in rank
    order (instances the plan keeps running without traffic; at least one endpoint keeps the share);
    ``rule`` (peerserve/dispatch.py) adjusts the choice by the live queues (``live_queue`` by URL, an
    endpoint absent from it idle) against the plan's (``planned_queue`` by node). ``u``, ``u2`` in [0, 1)
    are the random draws (injected: the function is pure). No share on any ready endpoint (no plan, or
    the planned nodes are down): ``ranked`` unchanged. Under ``lef`` the endpoint with the least expected
    finish goes first, plan or not (each choice's RTT, its candidate's catalogue service time, ``slots`` by
    node: absent 1); where no candidate has a service time, the shares decide as under ``p2c``.
    """
    endpoints = [(ch.candidate.node, ch.candidate.url) for ch in ranked]
    finish = None
    if rule == "lef":
        finish = [
            Finish(ch.rtt_ms, ch.candidate.service_ms, (slots or {}).get(ch.candidate.node, 1.0)) for ch in ranked
        ]
    pick = choose_endpoint(endpoints, shares, planned_queue, live_queue, (u, u2), rule, idle, finish)
    if pick is None:
        return list(ranked)
    return [ranked[pick], *ranked[:pick], *ranked[pick + 1 :]]


def spread_ranked(
    ranked: Sequence[Choice],
    placement: Mapping[str, Any] | None,
    model: str,
    client_rtts: Mapping[str, float],
    u: float,
    live_queue: Mapping[str, float] | None = None,
    u2: float = 0.0,
    rule: str = DEFAULT_RULE,
    own_slots: tuple[str, float] | None = None,
    slots: Mapping[str, float] | None = None,
) -> list[Choice]:
    """``spread_choice`` with the last placement summary's shares, planned queues, idle running instances and
    (``lef`` only) nodes' slots (``live_queue`` by URL; ``own_slots``: this node's id and slots, over the
    summary's figure for it, at most MAX_SLOTS; ``slots``: the summary's ``slots`` already parsed by
    ``node_slots``, as the agent does once per summary, else parsed here). Without a summary only ``lef``
    reorders (it needs no plan). Other rules never read ``slots``."""
    if not ranked or (not placement and rule != "lef"):
        return list(ranked)
    placement = placement or {}
    shares = site_shares(parse_spread(placement.get("spread")), model, client_rtts)
    planned = planned_queues(placement, model)
    idle = idle_counts(placement, model)
    if rule != "lef":
        return spread_choice(ranked, shares, u, planned, live_queue, idle, u2, rule)
    known = node_slots(placement) if slots is None else slots
    mine = {ch.candidate.node: known.get(ch.candidate.node, 1.0) for ch in ranked}  # the ready endpoints' only
    if own_slots is not None and own_slots[0] in mine:
        mine[own_slots[0]] = min(own_slots[1], MAX_SLOTS)  # past the bound: as many as a node may have, not skipped
    return spread_choice(ranked, shares, u, planned, live_queue, idle, u2, rule, mine)


@dataclass(frozen=True)
class Start:
    model: str


@dataclass(frozen=True)
class Stop:
    instance_id: str
    model: str
    reason: str


Step = Start | Stop


def plan_reconcile(
    desired: Mapping[str, int],
    instances: Sequence[Instance],
    next_try: Mapping[str, float],
    now: float,
    stuck: Collection[str] = (),
    ready: Collection[str] = (),
    mem_need: Mapping[str, float] | None = None,
    mem_total_mb: float | None = None,
    draining: Collection[str] = (),
) -> list[Step]:
    """Steps that bring the runtime to ``desired``; a model in backoff is not started before next_try.

    ``stuck`` names running instances that never became ready in time: they are stopped and replaced.
    An ``outdated`` instance (created with other settings than the runtime would use now) is replaced
    make-before-break: it counts for nothing towards ``desired``, so a new one is started, and it is stopped
    (drained, reason "outdated") only while enough of the new ones are ready (``ready``: ids that answer) to
    keep ``desired`` ready servers; a model whose new server cannot start keeps its outdated one.

    With the catalogue's sizes (``mem_need``) and the node's total, a replacement starts only where it fits beside
    every server still in memory (``memory_fits``, the rule desired sets are accepted by; a full board's start
    would fail while the old one keeps serving): those that do not fit wait (``stop_first``; ``draining``: the ids
    the node is draining, so a server stopped first stays the one stopped first).
    """
    steps: list[Step] = []
    live: dict[str, list[Instance]] = {}
    old: dict[str, list[Instance]] = {}
    for inst in instances:
        if not inst.running:
            steps.append(Stop(inst.id, inst.model, "exited"))
        elif inst.id in stuck:
            steps.append(Stop(inst.id, inst.model, "not ready in time"))
        elif inst.model not in desired or desired[inst.model] <= 0:
            steps.append(Stop(inst.id, inst.model, "not desired"))
        else:
            (old if inst.outdated else live).setdefault(inst.model, []).append(inst)
    for model, count in sorted(desired.items()):
        have = sorted(live.get(model, []), key=lambda i: (i.started_at, i.id))
        if len(have) > count:
            steps += [Stop(i.id, model, "more than desired") for i in have[count:]]
        elif len(have) < count and now >= next_try.get(model, 0.0):
            steps += [Start(model)] * (count - len(have))
        outdated = sorted(old.get(model, []), key=lambda i: (i.started_at, i.id))
        ready_new = sum(1 for i in have[:count] if i.id in ready)
        retire = min(len(outdated), max(0, ready_new + len(outdated) - count))
        steps += [Stop(i.id, model, "outdated") for i in outdated[:retire]]
    if mem_need is None or mem_total_mb is None or not old:
        return steps
    return stop_first(steps, instances, old, mem_need, mem_total_mb, ready, draining)


def stop_first(
    steps: list[Step],
    instances: Sequence[Instance],
    old: Mapping[str, Sequence[Instance]],
    mem_need: Mapping[str, float],
    mem_total_mb: float,
    ready: Collection[str] = (),
    draining: Collection[str] = (),
) -> list[Step]:
    """Replacement starts of outdated servers (``old``: model -> its outdated running servers) cut to what fits.

    In memory this round: every running server not stopped at once (a drained stop still holds its memory) and
    the starts of other models. A model's replacements start as many as fit beside that (make-before-break for
    those); where none fits and nothing is on its way anywhere on the node -- no server being stopped, no new
    server loading, no replacement starting this round -- the oldest outdated server of the models waiting is
    stopped first (reason ``STOP_FIRST``, drained; one a round) and its replacement starts the round after it is
    gone: that model has fewer servers, none if it had one, while the new one loads. Otherwise they wait for
    what is on its way. An outdated server already being drained (``draining``: it was stopped first in an earlier
    round) is on its way too, and stays the one stopped first until it is gone: chosen afresh each round, a model
    that went outdated during its drain, with an older server, was stopped first as well, and both models went dark
    at once (on a real engine: a catalogue reload landing in the middle of one listing judged one container by the
    old entry, the other by the new).
    """
    at_once = {s.instance_id for s in steps if isinstance(s, Stop) and s.reason not in DRAINED_REASONS}
    held: dict[str, int] = {}
    for inst in instances:
        if inst.running and inst.id not in at_once:
            held[inst.model] = held.get(inst.model, 0) + 1
    starts: dict[str, int] = {}
    for s in steps:
        if isinstance(s, Start):
            starts[s.model] = starts.get(s.model, 0) + 1
    for m, c in starts.items():
        if m not in old:
            held[m] = held.get(m, 0) + c
    # on its way, anywhere on the node: a drained stop, a new server loading (an old one retires when it is
    # ready), a replacement that fits this round. Any of them frees or will free memory, so nothing is stopped
    # first while one is under way, and at most one server per round: stopping every outdated model of a full
    # board at once after an upgrade took all of them down together (review13b F1)
    leaving = any(isinstance(s, Stop) and s.reason in DRAINED_REASONS for s in steps)
    loading = any(i.running and not i.outdated and i.id not in ready for i in instances)
    cut: dict[str, int] = {}
    waiting: list[str] = []
    for m in sorted(set(old) & set(starts)):
        k = _most_that_fit(held, m, starts[m], mem_need, mem_total_mb)
        held[m] = held.get(m, 0) + k
        cut[m] = starts[m] - k
        if k == 0:
            waiting.append(m)
    first: list[Step] = []
    starting = sum(starts.values()) > sum(cut.values())  # a start that goes ahead this round, of any model
    going = [i for m in waiting for i in old[m] if i.id in draining]  # stopped first in an earlier round
    if going:
        oldest = min(going, key=lambda i: (i.started_at, i.id))
        first.append(Stop(oldest.id, oldest.model, STOP_FIRST))
    elif waiting and not leaving and not loading and not starting:
        oldest = min((i for m in waiting for i in old[m]), key=lambda i: (i.started_at, i.id))
        first.append(Stop(oldest.id, oldest.model, STOP_FIRST))
    out: list[Step] = []
    for s in steps:
        if isinstance(s, Start) and cut.get(s.model, 0) > 0:
            cut[s.model] -= 1
            continue
        out.append(s)
    return out + first


def stuck_instances(
    instances: Iterable[Instance], ready: Collection[str], last_ready: Mapping[str, float], now: float, timeout: float
) -> set[str]:
    """Running servers not ready now and not ready for ``timeout`` seconds: since their start, or since their
    last successful probe (``last_ready``: id -> when).

    Counting from the start alone replaced any server older than ``timeout`` at its first missed probe (a
    3 s stall of a Triton up 151 s stopped it, review12d F2); a server that was ready gets the same
    ``timeout`` from its last good probe. It leaves the ready set (and every endpoint answer) at the first
    missed probe all the same: this only decides when it is stopped and replaced.
    """
    return {
        i.id
        for i in instances
        if i.running and i.id not in ready and now - max(i.started_at, last_ready.get(i.id, i.started_at)) > timeout
    }


def memory_fits(instances: Mapping[str, int], mem_need: Mapping[str, float], mem_total_mb: float) -> bool:
    """Whether a node accepts ``instances`` for memory: one server in all, or sum(count x mem_mb) within its total.

    The one rule the node applies (``memory_refusal``) and the leader's make-before-break plans by
    (handover.make_before_break), so a leader never sends a set the node would refuse for what it adds."""
    counts = {m: c for m, c in instances.items() if c > 0}
    if sum(counts.values()) <= 1:
        return True
    return sum(c * mem_need.get(m, 0.0) for m, c in counts.items()) <= mem_total_mb


def memory_refusal(instances: Mapping[str, int], mem_need: Mapping[str, float], mem_total_mb: float) -> str | None:
    """Why a desired set could never fit in this node's memory (None: it fits).

    The servers together, sum(count x mem_mb), may not need more than ``mem_total_mb``: each model alone may fit
    while all of them order many times the board, and every one would be started. A set of one server in all is
    accepted whatever its size (a catalogue's mem_mb is the planner's estimate; one model on a board said to be
    too small for it is the operator's call, as before).
    """
    if memory_fits(instances, mem_need, mem_total_mb):
        return None
    counts = {m: c for m, c in instances.items() if c > 0}
    total = sum(c * mem_need.get(m, 0.0) for m, c in counts.items())
    largest = sorted(counts, key=lambda m: (-counts[m] * mem_need.get(m, 0.0), m))[:MEMORY_REFUSAL_NAMES]
    parts = ", ".join(f"{counts[m]} x {m} ({mem_need.get(m, 0.0):.0f} MB)" for m in largest)
    more = f" and {len(counts) - len(largest)} more models" if len(counts) > len(largest) else ""
    return (
        f"the desired servers need {total:.0f} MB together, over this node's memory capacity of {mem_total_mb:.0f} MB "
        f"(largest: {parts}{more})"
    )


def _most_that_fit(held: Mapping[str, int], m: str, most: int, need: Mapping[str, float], total: float) -> int:
    """How many more servers of ``m`` (at most ``most``) fit beside ``held`` (arithmetic, not one by one)."""
    size = need.get(m, 0.0)
    if memory_fits({**held, m: held.get(m, 0) + most}, need, total):
        return most
    if size <= 0:
        return 0  # takes no memory, yet the set is over: the one-server rule alone let ``held`` fit
    used = sum(c * need.get(x, 0.0) for x, c in held.items() if c > 0)
    k = min(most, max(0, math.floor((total - used) / size)))
    while k > 0 and not memory_fits({**held, m: held.get(m, 0) + k}, need, total):
        k -= 1  # float rounding in the estimate: once or twice
    if 0 < k < most and memory_fits({**held, m: held.get(m, 0) + k + 1}, need, total):
        k += 1  # rounded down past one that fits
    if k == 0 and memory_fits({**held, m: held.get(m, 0) + 1}, need, total):
        k = 1  # one server in all fits whatever its size
    return k


# an outdated server stopped before its replacement starts: the node's memory cannot hold both (stop_first)
STOP_FIRST = "outdated, no memory for both"
# a healthy server the plan no longer wants, or one replaced by a ready newer one (or before it: STOP_FIRST)
DRAINED_REASONS = ("not desired", "more than desired", "outdated", STOP_FIRST)


def while_stopping(steps: Sequence[Step]) -> list[Step]:
    """The steps an agent that is shutting down still carries out: its stops, but no start, and no stop made only
    to give a start room (``STOP_FIRST``). A server started during the stop is started for nobody (its waiter was
    answered 503 "shutting down"), and a Docker container outlives the agent (review19c F5)."""
    return [s for s in steps if isinstance(s, Stop) and s.reason != STOP_FIRST]


def drain_stops(
    steps: Sequence[Step], draining: Mapping[str, float], now: float, drain_s: float
) -> tuple[list[Step], dict[str, float]]:
    """Hold back stops of healthy servers until they have been unpublished for ``drain_s`` seconds.

    Returns (the steps to carry out now, the servers to leave out of endpoint answers: id -> since when).
    A server enters the drain on its first stop step and leaves it when it is gone or wanted again;
    exited and stuck servers stop at once. Every server with a stop step, drained or being stopped now, is
    in no endpoint answer, so peers and clients move off it before it stops and no request is cut off by
    the stop (make-before-break on the serving path).
    """
    now_steps: list[Step] = []
    hidden: dict[str, float] = {}
    for step in steps:
        if not isinstance(step, Stop):
            now_steps.append(step)
            continue
        since = hidden[step.instance_id] = draining.get(step.instance_id, now)
        if step.reason not in DRAINED_REASONS or drain_s <= 0 or now - since >= drain_s:
            now_steps.append(step)
    return now_steps, hidden


def backoff_delay(failures: int) -> float:
    """Seconds to wait before retrying after ``failures`` consecutive failures (1, 2, 4, ... 60 s)."""
    if failures <= 0:
        return 0.0
    return float(min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2 ** (failures - 1)))


@dataclass(frozen=True)
class NodeRoom:
    node: str
    mem_available_mb: float


def provision_target(mem_mb: float, local: NodeRoom, peers: Sequence[NodeRoom]) -> tuple[str | None, str]:
    """Where a model needing ``mem_mb`` could start now: this node first, else the roomiest peer.

    Returns (node id or None, reason); None means it fits nowhere.
    """
    if local.mem_available_mb >= mem_mb:
        return local.node, f"{local.node} has {local.mem_available_mb:.0f} MB free"
    roomy = sorted(peers, key=lambda p: (-p.mem_available_mb, p.node))
    if roomy and roomy[0].mem_available_mb >= mem_mb:
        return roomy[0].node, f"{roomy[0].node} has {roomy[0].mem_available_mb:.0f} MB free"
    best = max([local, *peers], key=lambda p: p.mem_available_mb)
    return None, (
        f"needs {mem_mb:.0f} MB but no node has that much free; most free: {best.node} "
        f"with {best.mem_available_mb:.0f} MB"
    )
