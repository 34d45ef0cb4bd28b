"""The leader's placement round as a sans-IO state machine: events in, instructions out, the clock passed in.

A round gathers every member's stats and request log (paged by a per-node cursor, so nothing is counted
twice or lost), solves the placement once every member answered or failed, then commands each gathered
node its desired set with the leader's term, retrying a command that failed for a transient reason.
A member whose gather fails keeps last round's report for that one round (no command goes to it), so a
timeout on a loaded board is not taken for a lost node; a command not delivered drops that node's target,
and a target its reports still fall short of after ``target_rounds`` rounds falls back to what it reports.
Rounds start ``debounce_s`` after election or a membership change and every ``period_s`` otherwise.

    idle --(due)--> gathering --(all answered)--> solving --(solved)--> commanding --(all done)--> idle

Every instruction carries its round number and every result echoes it, so results of an abandoned
round (deposed, re-elected, timed out) are ignored. State is bounded: cursors for at most
``max_nodes`` nodes, a request window of at most ``max_window`` records and ``max_window_bytes`` of them within
``window_s``, fair between the nodes that logged them (agent/request_window.py).
``agent/leadership.py`` carries the instructions out over HTTP and in the solver worker.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any

from agent.handover import make_before_break
from agent.hysteresis import Births, HoldConfig, Verdict, judge
from agent.placement import NodeReport, RequestRecord, desired_sets
from agent.request_window import MAX_WINDOW_BYTES
from agent.window_sync import JournaledWindow, WindowConfig, WindowDelta
from peerserve.dispatch import reported_slots

# /stats/node rounds mem_total_mb to 0.1 MB (agent.metrics) while the node checks a set against its exact total:
# make-before-break plans against the reported total less the most that rounding can add
REPORTED_MB_ROUNDING = 0.05


# -- events in ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Tick:
    now: float


@dataclass(frozen=True)
class Elected:
    """This node leads ``term`` (first time, or moved to a new term); ``members``: node id -> API URL."""

    now: float
    term: int
    members: Mapping[str, str]


@dataclass(frozen=True)
class Deposed:
    now: float


@dataclass(frozen=True)
class MembershipChanged:
    now: float
    members: Mapping[str, str]


@dataclass(frozen=True)
class Gathered:
    """One gather answer: the node's report and one page of its request log (``(id, record)``, by id).

    ``clock_ahead_s``: how far the node's wall clock reads ahead of ours (negative: behind), from the signed stamp of
    its answer; its records' stamps are moved onto our clock by it (``on_our_clock``)."""

    now: float
    round: int
    node: str
    report: NodeReport
    page: tuple[tuple[int, RequestRecord], ...]
    clock_ahead_s: float = 0.0


@dataclass(frozen=True)
class GatherFailed:
    now: float
    round: int
    node: str
    error: str


@dataclass(frozen=True)
class Solved:
    now: float
    round: int
    plan: Mapping[str, Any]
    requests: int  # requests in the snapshot that was solved
    fallback: str = ""  # why the preferred solver was not used, if it was not
    # the catalogue's mem_mb per model the plan was made with: make-before-break keeps each node's set within its
    # memory by the node's own rule (empty: holds are added without a memory check, as before)
    mem_mb: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class SolveFailed:
    """The solve raised (a broken worker): the round is dropped; the next comes at the period."""

    now: float
    round: int
    error: str


@dataclass(frozen=True)
class Acknowledged:
    now: float
    round: int
    node: str


@dataclass(frozen=True)
class CommandFailed:
    """A command got no answer: ``transient`` (timeout, 5xx) is retried; an unreachable node is not."""

    now: float
    round: int
    node: str
    transient: bool


@dataclass(frozen=True)
class Fenced:
    """An agent refused a command (409): it has seen ``highest``, a term at or past ours."""

    now: float
    round: int
    node: str
    highest: int


Event = (
    Tick | Elected | Deposed | MembershipChanged | Gathered | GatherFailed | Solved | SolveFailed | Acknowledged
    | CommandFailed | Fenced
)  # fmt: skip


def on_our_clock(record: RequestRecord, clock_ahead_s: float) -> RequestRecord:
    """``record`` as stamped by a node whose clock reads ``clock_ahead_s`` ahead of ours, stamped on our clock.

    Stamped by the node's own clock, a record of a board 20 s behind looked 20 s old on arrival and left the window
    20 s early, and one of a board far enough ahead was dropped as future. The offset comes from the signed stamp of
    the node's answer, which the peer plane accepts only within identity.WINDOW_S of our clock: a member can move
    its own records by no more than that, and it could stamp them anywhere in the window anyway."""
    if clock_ahead_s == 0 or not math.isfinite(clock_ahead_s):
        return record
    return replace(record, ts=record.ts - clock_ahead_s)


# -- instructions out --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Gather:
    """Fetch ``node``'s /stats/node, /stats/models and one page of /stats/requests after ``since``."""

    round: int
    node: str
    url: str
    since: int
    limit: int


@dataclass(frozen=True)
class Solve:
    """Build the snapshot from these reports and requests at ``now`` and solve it (off the event loop)."""

    round: int
    nodes: tuple[NodeReport, ...]
    requests: Sequence[RequestRecord]  # the window's records (agent.packed_records.RecordView: packed until read)
    now: float
    held: Mapping[str, Mapping[str, int]] = field(default_factory=dict)  # the status quo to value (hysteresis)
    # what changed in the window since the last Solve, and its bounds: the solver worker's copy (agent.window_sync)
    delta: WindowDelta | None = field(default=None, compare=False)
    window_config: WindowConfig | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Command:
    """``PUT /control/desired`` to ``node``: its instances, with the leader's term and the round summary."""

    round: int
    node: str
    url: str
    term: int
    instances: Mapping[str, int]
    summary: Mapping[str, Any]


@dataclass(frozen=True)
class Placed:
    """A round finished: ``summary`` is the placement every agent shows on /cluster."""

    summary: Mapping[str, Any]


Instruction = Gather | Solve | Command | Placed


class Phase(str, Enum):
    IDLE = "idle"
    GATHERING = "gathering"
    SOLVING = "solving"
    COMMANDING = "commanding"


@dataclass(frozen=True)
class RoundConfig:
    period_s: float = 30.0
    debounce_s: float = 0.2
    window_s: float = 600.0
    round_timeout_s: float = 60.0  # a round still unfinished after this is abandoned
    fence_pause_s: float = 5.0  # a 409 naming a newer term: no new round for this long (a real one deposes us sooner)
    max_attempts: int = 3  # command attempts on transient failures
    retry_base_s: float = 0.2  # backoff: base, 2 x base, ...
    max_nodes: int = 256  # request-log cursors kept
    max_window: int = 50_000  # request records kept for the snapshot
    max_window_bytes: int = MAX_WINDOW_BYTES  # ... and their rows' bytes (settings.request_window_mb)
    max_clock_ahead_s: float = 60.0  # a record stamped later than now + this (a peer's clock or its word) is left out
    page_limit: int = 5000  # request-log records per gather page
    hold: HoldConfig = field(default_factory=HoldConfig)  # hysteresis: when a plan may replace the running instances
    target_rounds: int = 3  # a target a node's reports still fall short of after this many rounds stops counting


@dataclass
class _Round:
    number: int
    started: float
    members: dict[str, str]
    waiting: set[str]
    reports: dict[str, NodeReport] = field(default_factory=dict)
    stale: set[str] = field(default_factory=set)  # members whose gather failed: last round's report stands in
    commands: dict[str, Command] = field(default_factory=dict)
    attempts: dict[str, int] = field(default_factory=dict)
    retry_at: dict[str, float] = field(default_factory=dict)
    delivered: int = 0
    summary: dict[str, Any] = field(default_factory=dict)


class LeaderRound:
    """One node's placement rounds while it leads. ``step(event)`` returns the instructions to carry out."""

    def __init__(self, node_id: str, config: RoundConfig) -> None:
        self.node_id = node_id
        self.config = config
        self.term: int | None = None  # None while not leading
        self.members: dict[str, str] = {}
        self.phase = Phase.IDLE
        self.due: float | None = None
        self.fenced_at: int | None = None  # a term past ours that an agent reported (a claim: see _on_command_result)
        self.fenced_until: float | None = None  # no new round before this (fence_pause_s after that report)
        self.last_placement: dict[str, Any] | None = None
        self.cursors: OrderedDict[str, int] = OrderedDict()  # node -> last request id taken, LRU order
        self.window = JournaledWindow(config.max_window, config.window_s, config.max_clock_ahead_s,
                                      config.max_window_bytes)  # fmt: skip
        self.births = Births()  # when each (node, model) count last grew: the minimum dwell
        self.last_running: dict[str, dict[str, int]] = {}  # last round's nodes with instances: who was lost
        self.last_reports: dict[str, NodeReport] = {}  # last round's fresh reports (members only)
        self.intent: dict[str, dict[str, int]] = {}  # last round's target per node (before make-before-break)
        self.leaving: dict[str, dict[str, int]] = {}  # instances make-before-break keeps beyond that target
        self.short: dict[tuple[str, str], int] = {}  # (node, model) -> rounds its reports fell short of the target
        self.pending = False  # last round held a modest gain until this one confirms it
        self.changes = 0  # rounds whose command changed the running instances
        self.holds = 0  # rounds whose plan was held back
        self._rounds = 0
        self._round: _Round | None = None

    # -- the step function -------------------------------------------------------------------------
    def step(self, event: Event) -> list[Instruction]:
        if isinstance(event, Elected):
            return self._elected(event)
        if isinstance(event, Deposed):
            self.term, self._round, self.phase, self.due = None, None, Phase.IDLE, None
            self.window.forget_journal()  # the worker stops with the lead: nothing will replay these events
            return []
        if self.term is None:
            return []
        if isinstance(event, Tick):
            return self._tick(event.now)
        if isinstance(event, MembershipChanged):
            self.members = dict(event.members)
            self._due_soon(event.now)
            return []
        r = self._round
        if r is None or event.round != r.number:
            return []  # a result of an abandoned round
        if isinstance(event, Gathered | GatherFailed):
            return self._on_gather(r, event)
        if isinstance(event, Solved):
            return self._on_solved(r, event)
        if isinstance(event, SolveFailed):
            self._round, self.phase = None, Phase.IDLE
            return []
        return self._on_command_result(r, event)

    def _elected(self, e: Elected) -> list[Instruction]:
        if self.term is not None and e.term > self.term:
            return self._moved(e)
        self.term, self.members = e.term, dict(e.members)
        self.intent, self.leaving, self.short = {}, {}, {}  # a new term weighs plans against what nodes report
        self.last_reports = {}  # nor does a report from before it stand in for a missed answer
        self.fenced_at = self.fenced_until = None
        self._round, self.phase = None, Phase.IDLE  # a round of the old term would command with it
        self._due_soon(e.now)
        return []

    def _moved(self, e: Elected) -> list[Instruction]:
        """This leader moved itself to a newer term (past a rival or a candidate): the same leader with the same
        knowledge, so the round in progress goes on (dropping it let a member's vote requests, one a second, stop
        placement: review13a F2); its commands still to send, and retries, carry the new term."""
        self.term, self.members = e.term, dict(e.members)
        if self.fenced_at is not None and self.fenced_at <= e.term:
            self.fenced_at = self.fenced_until = None  # the newer term we were told of is now ours
        return []

    def _due_soon(self, now: float) -> None:
        soon = now + self.config.debounce_s
        self.due = soon if self.due is None else min(self.due, soon)

    def _tick(self, now: float) -> list[Instruction]:
        r = self._round
        if r is not None and now - r.started > self.config.round_timeout_s:
            self._round, self.phase = None, Phase.IDLE
            self._due_soon(now)
            return []
        if r is not None and self.phase is Phase.COMMANDING:
            return self._retries_due(r, now)
        if self.fenced_until is not None and now >= self.fenced_until:
            self.fenced_at = self.fenced_until = None  # no election deposed us meanwhile: the claim was not news
        if r is None and self.due is not None and now >= self.due and self.fenced_until is None:
            return self._start(now)
        return []

    # -- gathering ---------------------------------------------------------------------------------
    def _start(self, now: float) -> list[Instruction]:
        self._rounds += 1
        self.due = now + self.config.period_s
        r = _Round(self._rounds, now, dict(self.members), set(self.members))
        self._round, self.phase = r, Phase.GATHERING
        for node in r.members:
            self._touch_cursor(node)
        if not r.waiting:
            return self._solve(r, now)
        return [
            Gather(r.number, n, url, self.cursors[n], self.config.page_limit) for n, url in sorted(r.members.items())
        ]

    def _touch_cursor(self, node: str) -> None:
        self.cursors[node] = self.cursors.get(node, 0)
        self.cursors.move_to_end(node)
        while len(self.cursors) > self.config.max_nodes:
            self.cursors.popitem(last=False)  # the node least recently gathered

    def _on_gather(self, r: _Round, e: Gathered | GatherFailed) -> list[Instruction]:
        if self.phase is not Phase.GATHERING or e.node not in r.waiting:
            return []
        if isinstance(e, GatherFailed) and e.node in self.last_reports:
            # one missed answer (a timeout on a loaded board) is not a lost node: last round's report
            # stands in once, and the node gets no command; a second miss in a row leaves it out
            r.reports[e.node] = self.last_reports[e.node]
            r.stale.add(e.node)
        if isinstance(e, Gathered):
            r.reports[e.node] = e.report
            cursor = self.cursors.get(e.node, 0)
            fresh = []
            for rid, record in e.page:
                if rid > cursor:  # ids only grow: at or below the cursor was taken already
                    fresh.append(on_our_clock(record, e.clock_ahead_s))
                    cursor = rid
            self.window.add(e.node, fresh, e.now)  # marked as its word; implausible stamps left out
            self.cursors[e.node] = cursor
            if len(e.page) >= self.config.page_limit:
                return [Gather(r.number, e.node, r.members[e.node], cursor, self.config.page_limit)]  # more pages
        r.waiting.discard(e.node)
        if r.waiting:
            return []
        return self._solve(r, e.now)

    def _solve(self, r: _Round, now: float) -> list[Instruction]:
        self.window.expire(now)
        self.phase = Phase.SOLVING
        self._expire_targets(r)
        nodes = tuple(r.reports[n] for n in sorted(r.reports))
        records, delta = self.window.records(), self.window.take_delta()
        return [Solve(r.number, nodes, records, now, self._status_quo(r), delta, self.window.config())]

    def _expire_targets(self, r: _Round) -> None:
        """Count, per (node, model), the rounds a fresh report runs fewer than the target; at ``target_rounds``
        the target falls back to what the node reports (a start that keeps failing is not counted as made)."""
        for n in sorted(set(r.reports) - r.stale):
            target, running = self.intent.get(n, {}), r.reports[n].instances
            for m in sorted(target):
                if running.get(m, 0) >= target[m]:
                    self.short.pop((n, m), None)
                    continue
                self.short[(n, m)] = self.short.get((n, m), 0) + 1
                if self.short[(n, m)] >= self.config.target_rounds:
                    del self.short[(n, m)]
                    target[m] = running.get(m, 0)

    def _status_quo(self, r: _Round) -> dict[str, dict[str, int]]:
        """What a plan is weighed against: what each node runs, less what make-before-break keeps only until
        its replacement is ready (on its way out; draining servers are not reported running), and at least
        last round's target (a start still under way counts as made)."""
        out: dict[str, dict[str, int]] = {}
        for n, rep in sorted(r.reports.items()):
            leaving, target = self.leaving.get(n, {}), self.intent.get(n, {})
            models = {*rep.instances, *target}
            counts = {m: max(rep.instances.get(m, 0) - leaving.get(m, 0), target.get(m, 0)) for m in models}
            out[n] = {m: c for m, c in sorted(counts.items()) if c > 0}
        return out

    # -- commanding --------------------------------------------------------------------------------
    def _on_solved(self, r: _Round, e: Solved) -> list[Instruction]:
        if self.phase is not Phase.SOLVING or self.term is None:
            return []
        plan = e.plan
        gathered = sorted(r.reports)
        running = {n: {m: c for m, c in r.reports[n].instances.items() if c > 0} for n in gathered}
        self.births.observe(running, e.now)
        lost = {n for n, ms in self.last_running.items() if ms and n not in r.reports}
        self.last_running = {n: ms for n, ms in running.items() if ms}
        self.last_reports = {n: r.reports[n] for n in gathered if n not in r.stale}
        status_quo = self._status_quo(r)
        verdict = judge(
            desired_sets(plan.get("instances", {}), gathered), status_quo, plan.get("objective_ms"),
            plan.get("running_value"), lost, self.births, e.now, self.config.hold, self.pending,
            plan.get("details", {}).get("model_ms"),
        )  # fmt: skip
        self.pending = verdict.pending
        for n, d in verdict.desired.items():  # a raised target gets its full rounds to be met
            for m, c in d.items():
                if c > self.intent.get(n, {}).get(m, 0):
                    self.short.pop((n, m), None)
        self.intent = {n: dict(d) for n, d in verdict.desired.items()}
        self.short = {(n, m): k for (n, m), k in self.short.items() if m in self.intent.get(n, {})}
        changed = verdict.desired != status_quo
        self.changes += changed
        self.holds += not verdict.switch
        totals = {n: r.reports[n].mem_total_mb - REPORTED_MB_ROUNDING for n in gathered} if e.mem_mb else {}
        # a stale node's report is last round's: its "ready" servers may be on a board that just died, so they
        # make no model "served" (a live node's last ready server of a moving model was dropped for them, review13b F2)
        live_ready = {n: r.reports[n].ready for n in gathered if n not in r.stale}
        desired = make_before_break(verdict.desired, live_ready, e.mem_mb, totals)
        self.leaving = {
            n: {m: c - verdict.desired[n].get(m, 0) for m, c in d.items() if c > verdict.desired[n].get(m, 0)}
            for n, d in desired.items()
        }
        deferred = {
            n: {m: c - desired[n].get(m, 0) for m, c in d.items() if c > desired[n].get(m, 0)}
            for n, d in verdict.desired.items()
        }
        deferred = {n: d for n, d in deferred.items() if d}
        for n, d in deferred.items():  # held back by the leader, not failing: its rounds to be met start when sent
            for m in d:
                self.short.pop((n, m), None)
        slots: dict[str, float] = {}
        for n in gathered:  # bounded as the plan bounds it (reported_slots): a member's own figures, no more
            bounded = reported_slots(r.reports[n].concurrency, r.reports[n].cores)
            if bounded is not None:
                slots[n] = bounded
        r.summary = self._summary(plan, e, gathered, verdict, changed, slots)
        held = {n: d for n, d in self.leaving.items() if d}
        if held or deferred:  # make-before-break at work: what is kept until its replacement is ready, what waits
            r.summary["handover"] = {"held": held, "deferred": deferred}
        r.commands = {
            n: Command(r.number, n, r.members[n], self.term, d, r.summary)
            for n, d in sorted(desired.items())
            if n not in r.stale
        }
        r.attempts = dict.fromkeys(r.commands, 1)
        r.waiting = set(r.commands)
        self.phase = Phase.COMMANDING
        if not r.waiting:
            return self._finish(r)
        return list(r.commands.values())

    def _summary(
        self,
        plan: Mapping[str, Any],
        e: Solved,
        gathered: list[str],
        verdict: Verdict,
        changed: bool,
        slots: Mapping[str, float] | None = None,
    ) -> dict[str, Any]:
        """The round summary every agent shows; a held plan shows the running instances' value and split.
        ``slots``: the gathered nodes' reported concurrency bounded by their cores and MAX_SLOTS (the endpoint rule
        ``lef``'s, peerserve/dispatch.py ``reported_slots``; a node without one is left out and counts one slot)."""
        value = plan.get("running_value") or {}
        source = plan.get("details", {}) if verdict.switch else value
        hold = {
            **verdict.to_dict(),
            "changed": changed,
            "plan_objective_ms": plan.get("objective_ms"),
            "running_objective_ms": value.get("objective_ms"),
            "changes": self.changes,
            "holds": self.holds,
        }
        if not verdict.switch:
            hold["plan_actions"] = list(plan.get("actions", []))
        return {
            "at": e.now, "term": self.term, "leader": self.node_id, "method": plan.get("method"),
            "mode": plan.get("mode"), "status": plan.get("status"),
            "objective_ms": plan.get("objective_ms") if verdict.switch else value.get("objective_ms"),
            "solve_ms": plan.get("solve_ms"), "requests": e.requests, "nodes": gathered,
            "actions": list(plan.get("actions", [])) if verdict.switch else [],
            "rejected": len(plan.get("rejected", [])), "note": plan.get("note", ""), "fallback": e.fallback,
            "hold": hold, **{key: source[key] for key in ("spread", "planned_queue", "idle_running") if key in source},
            **({"slots": dict(sorted(slots.items()))} if slots else {}),
        }  # fmt: skip

    def _on_command_result(self, r: _Round, e: Acknowledged | CommandFailed | Fenced) -> list[Instruction]:
        if self.phase is not Phase.COMMANDING or e.node not in r.waiting or e.node in r.retry_at:
            return []
        if isinstance(e, Acknowledged):
            r.delivered += 1
        elif isinstance(e, Fenced) and e.highest > (self.term or 0):
            # a newer term may exist: no new round for a few seconds, long enough for a real one to depose us through
            # the election (its announces and leases); a member's made-up term must not hold placement back longer
            self.fenced_at = max(e.highest, self.fenced_at or 0)
            pause = min(self.config.fence_pause_s, self.config.period_s)
            self.fenced_until = max(e.now + pause, self.fenced_until or 0.0)
        elif isinstance(e, Fenced) and r.commands[e.node].term < (self.term or 0):
            # sent before this leader moved to its current term, and refused by a node already there: again, at once
            # with the current term (one attempt, counted like a transient failure's)
            if r.attempts[e.node] < self.config.max_attempts:
                r.retry_at[e.node] = e.now
                return []
            self.intent.pop(e.node, None)
        elif isinstance(e, Fenced):  # refused at or below our term (a member that follows no one yet, or lies):
            self.intent.pop(e.node, None)  # that node alone is not commanded this round; the cluster goes on
        elif e.transient and r.attempts[e.node] < self.config.max_attempts:
            r.retry_at[e.node] = e.now + self.config.retry_base_s * 2 ** (r.attempts[e.node] - 1)
            return []
        else:  # the target was not delivered: weigh the next plan against what the node reports
            self.intent.pop(e.node, None)
        r.waiting.discard(e.node)
        return self._finish(r) if not r.waiting else []

    def _retries_due(self, r: _Round, now: float) -> list[Instruction]:
        due = sorted(n for n, at in r.retry_at.items() if now >= at)
        for n in due:
            del r.retry_at[n]
            r.attempts[n] += 1
        term = self.term if self.term is not None else 0
        return [replace(r.commands[n], term=max(term, r.commands[n].term)) for n in due]  # the term we hold now

    def _finish(self, r: _Round) -> list[Instruction]:
        summary = {**r.summary, "delivered": r.delivered}
        self.last_placement = summary
        self._round, self.phase = None, Phase.IDLE
        return [Placed(summary)]
