"""What-if endpoint choices for the workload simulation: which rule, fed which queue information, would meet issue
16's p99 clause (bench/dispatch_study.py runs them in every lab of bench/p99_audit.py).

Each what-if is an ``AgentDispatch`` (solver/agent_sim.py: the same entry agent, ranking, plan shares and
event order) that differs in two things only.

Information, the queue length per instance the entry agent sees at an arrival:

* ``own``: the requests it has in flight there itself (agent/serving/inflight.py: today's agent);
* ``gossip``: its own, exact, plus every other agent's in flight there as of the last gossip round (a round
  every ``period_s``: what SWIM's piggyback could carry, a count per instance); ``period_s`` 0: exact;
* ``server``: the instance's whole queue (waiting and in service) as the server itself last reported it, a
  report every ``period_s``, plus the requests this agent sent there since that report;
* ``reply``: the instance's whole queue as the server wrote it into its last response to this agent (a
  response header: fresh wherever the agent sends often), plus the requests this agent sent there since;
  ``period_s`` plays no part.

In this simulation an instance's whole queue is the sum of every agent's requests in flight there (the RTT is
added to the latency, not simulated as travel), so ``gossip`` 0 and ``server`` 0 see the same exact queue.

Rules, over the ranked endpoints with the plan's shares for the client's site:

* ``p2c``: peerserve.dispatch's rule (today's), fed the information above;
* ``jsq``: the shortest queue among the plan's endpoints (plan weight > 0), ties to the better ranked;
* ``lef``: the least expected finish among the plan's endpoints: RTT + (the wait for a slot + 1) service times,
  the wait ``max(0, queue + 1 - slots) / slots`` service times (catalogue service time, the node's slots);
* ``p2c-lef``: two endpoints drawn by plan weight (the request's two uniforms), the lower expected finish taken;
* ``lef-any``: ``lef`` over every running endpoint but those a Mode 1 plan keeps idle (``idle_running``), the
  plan's shares ignored (a request may leave its planned instances when another would finish it first); the
  agent's ``lef`` (peerserve.dispatch.least_finish) chooses the same;
* ``p2c-lef-any``: one endpoint drawn by plan weight, one uniformly among every running endpoint, the lower
  expected finish taken (randomised, as power-of-two choices are, against herding on stale counts).

Pure bookkeeping on top of the simulation's clock: a gossip round or server report happens at every multiple
of ``period_s`` and is taken at the first event at or after it, before that event changes any queue (no event
falls between, so the snapshot is the queues at the round's instant). Memory: one count per (agent, endpoint).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from peerserve.dispatch import choose_endpoint, draw, expected_finish_ms, serving_mask, spread_weights
from solver.agent_sim import AgentDispatch
from solver.problem import FloatArray, IntArray

INFORMATION = ("own", "gossip", "server", "reply")
RULES = ("p2c", "jsq", "lef", "p2c-lef", "lef-any", "p2c-lef-any")


def what_if(rule: str, information: str, period_s: float = 0.0, slots: int = 1) -> type[WhatIfDispatch]:
    """An ``AgentDispatch`` class choosing by ``rule`` on ``information`` refreshed every ``period_s`` (module
    docstring); ``slots``: requests an instance serves at once (``lef``'s wait)."""
    if rule not in RULES:
        raise ValueError(f"unknown rule {rule!r}; choose one of {', '.join(RULES)}")
    if information not in INFORMATION:
        raise ValueError(f"unknown information {information!r}; choose one of {', '.join(INFORMATION)}")
    if not 0.0 <= period_s < float("inf") or slots < 1:
        raise ValueError("period_s must be >= 0 and finite, slots >= 1")

    class WhatIf(WhatIfDispatch):
        pass

    WhatIf.rule_name, WhatIf.information, WhatIf.period_s, WhatIf.slots = rule, information, period_s, slots
    WhatIf.__name__ = WhatIf.__qualname__ = f"WhatIf_{rule}_{information}_{period_s:g}"
    return WhatIf


class WhatIfDispatch(AgentDispatch):
    """``AgentDispatch`` with the rule and information of ``what_if`` (class attributes set there)."""

    rule_name = "p2c"
    information = "own"
    period_s = 0.0
    slots = 1

    def __init__(
        self,
        plan_details: Mapping[str, Any],
        node_ids: Sequence[str],
        started: Sequence[int],
        rtt: FloatArray,
        client: IntArray,
        exec_ms: float,
        draws: FloatArray,
        draws2: FloatArray | None = None,
        slots: Sequence[float] | None = None,
        endpoint_rule: str | None = None,
    ) -> None:
        super().__init__(plan_details, node_ids, started, rtt, client, exec_ms, draws, draws2, slots, endpoint_rule)
        self.snapshot: list[dict[str, int]] = [{} for _ in self.node_ids]  # agent -> URL -> in flight at the round
        self.sent_since: list[dict[str, int]] = [{} for _ in self.node_ids]  # agent -> URL -> sent since the report
        self.next_round = 0.0
        self.rounds = 0
        self.replied: list[dict[str, int]] = [{} for _ in self.node_ids]  # agent -> URL -> queue in its last reply

    def _round(self, now: float) -> None:
        """Take the gossip round / server report due at or before ``now`` (the queues are those of its instant)."""
        if self.period_s <= 0.0 or now < self.next_round:
            return
        self.snapshot = [dict(counts) for counts in self.live]
        if self.information != "reply":
            self.sent_since = [{} for _ in self.node_ids]
        self.rounds += 1
        self.next_round = (np.floor(now / self.period_s) + 1.0) * self.period_s

    def view(self, a: int) -> dict[str, int]:
        """The queue per endpoint URL agent ``a`` sees now (module docstring's information)."""
        if self.information == "own":
            return self.live[a]
        if self.information == "reply":
            seen = dict(self.replied[a])
            for url, n in self.sent_since[a].items():
                seen[url] = seen.get(url, 0) + n
            return seen
        exact = self.period_s <= 0.0
        source = self.live if exact else self.snapshot
        total: dict[str, int] = {}
        for b, counts in enumerate(source):
            if self.information == "gossip" and b == a:
                continue
            for url, n in counts.items():
                total[url] = total.get(url, 0) + n
        mine = self.live[a] if self.information == "gossip" else ({} if exact else self.sent_since[a])
        for url, n in mine.items():
            total[url] = total.get(url, 0) + n
        return total

    def choose(self, i: int, now: float) -> int:
        self._round(now)
        k = super().choose(i, now)
        if k >= 0:
            url = self.endpoints[k][1]
            a = self.agent[self.client[i]]
            self.sent_since[a][url] = self.sent_since[a].get(url, 0) + 1
        return k

    def done(self, i: int, instance: int, now: float, sojourn_ms: float) -> None:
        self._round(now)
        a = self.sent_by[i]
        super().done(i, instance, now, sojourn_ms)
        if self.information == "reply":  # the queue the server holds as this response leaves it
            url = self.endpoints[instance][1]
            self.replied[a][url] = sum(counts.get(url, 0) for counts in self.live)
            self.sent_since[a].pop(url, None)

    def pick(self, endpoints: list[tuple[str, str]], c: int, a: int, i: int) -> int | None:
        live = self.view(a)
        draws = (self.draws[i], self.draws2[i])
        if self.rule_name == "p2c":
            return choose_endpoint(endpoints, self.shares[c], self.planned, live, draws, "p2c", self.idle)
        weights = spread_weights(endpoints, self.shares[c], idle=self.idle)
        row = self.rtt[c].tolist()

        def finish(e: int) -> float:
            node, url = endpoints[e]
            rtt = row[self.node_ids.index(node)]
            return expected_finish_ms(rtt, float(live.get(url, 0)), self.exec_ms, self.slots)

        if self.rule_name in ("p2c-lef", "p2c-lef-any"):
            anywhere = [1.0] * len(endpoints) if self.rule_name == "p2c-lef-any" else weights
            first, second = draw(weights, draws[0]), draw(anywhere, draws[1])
            if first is None or second is None:
                return first
            return second if finish(second) < finish(first) else first
        if self.rule_name == "lef-any":  # as the agent's lef: every endpoint but the plan's idle_running ones
            allowed = [e for e, may in enumerate(serving_mask(endpoints, self.idle)) if may]
        else:
            allowed = [e for e, w in enumerate(weights) if w > 0]
        if not allowed:
            return None
        if self.rule_name == "jsq":
            return min(allowed, key=lambda e: (live.get(endpoints[e][1], 0), e))
        return min(allowed, key=lambda e: (finish(e), e))
