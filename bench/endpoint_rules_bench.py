"""Candidate endpoint rules for the agent (issue 16, part 2) on the queue-p99 plan, in simulation.

The shared-cores lab of bench/dispatch_bench.py (60 clients at 6 sites, three 2-core nodes, a 50 req/s
instance) at 1-4 req/s per client, exponential and constant service. The queue-p99 plan and the
baselines are solved once per rate; every candidate rule then dispatches the same arrivals and service
times (solver/workload.py ``simulate_plan`` with the rule in place of the agent's). Candidates:

* ``weighted``: the rule before p2c (peerserve/dispatch.py), idle endpoints at live 0;
* ``p2c`` (the agent's default, peerserve/dispatch.py): two endpoints drawn by plan weight / score ** 2
  (score: (1 + live) / (1 + planned)), the one with the lower score taken, a tie keeping the first;
* ``p2c_plan``: two draws by the plan's weights alone, the lower score taken; ``d3``: the same with
  three draws;
* ``p2c_all``: the first endpoint by the plan's weights, the second uniformly over every ready endpoint of
  the model (the plan's or not), taken only with strictly fewer in flight;
* ``weighted2``: one draw, by plan weight / score ** 2 (p2c with one choice);
* ``jsq``: the fewest of the entry agent's requests in flight over all endpoints (bench/dispatch_bench.py).

Prints per rule p50 / p99 ms, p99 and p50 over the best baseline's (least-loaded / nearest / thesis,
each under the agent's rule with its assignments as shares), and the share departure: how far the nodes'
received shares of each site's requests are from the plan's (total variation, 0 = exactly the plan's,
1 = disjoint), weighted by requests. And the load average (the results do not depend on it).

    .venv/bin/python bench/endpoint_rules_bench.py [--duration S] [--rates 1 2 3 4] [--json]
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections import Counter
from typing import Any

from bench.dispatch_bench import BASELINES, LAB, JoinShortest, lab_arguments
from peerserve.dispatch import draw, queue_score, spread_weights
from solver.agent_sim import AgentDispatch
from solver.api import solve
from solver.workload import PLACEMENTS, _arrivals, lab_snapshot, simulate_plan


class Weighted(AgentDispatch):
    rule = "weighted"


class P2C(AgentDispatch):
    rule = "p2c"


class P2CPlan(AgentDispatch):
    def pick(self, endpoints: list[tuple[str, str]], c: int, a: int, i: int) -> int | None:
        weights = spread_weights(endpoints, self.shares[c])
        first, second = draw(weights, self.draws[i]), draw(weights, self.draws2[i])
        if first is None or second is None:
            return first
        score = [queue_score(*endpoints[k], self.planned, self.live[a]) for k in (first, second)]
        return second if score[1] < score[0] else first


class D3(AgentDispatch):
    def pick(self, endpoints: list[tuple[str, str]], c: int, a: int, i: int) -> int | None:
        weights = spread_weights(endpoints, self.shares[c])
        third = (self.draws[i] * 7919.0 + self.draws2[i]) % 1.0  # a third uniform from the two
        picks = [p for p in (draw(weights, u) for u in (self.draws[i], self.draws2[i], third)) if p is not None]
        if not picks:
            return None
        return min(picks, key=lambda p: queue_score(*endpoints[p], self.planned, self.live[a]))


class P2CAll(AgentDispatch):
    def pick(self, endpoints: list[tuple[str, str]], c: int, a: int, i: int) -> int | None:
        first = draw(spread_weights(endpoints, self.shares[c]), self.draws[i])
        if first is None:
            return None
        second = min(int(self.draws2[i] * len(endpoints)), len(endpoints) - 1)
        live = self.live[a]
        return second if live.get(endpoints[second][1], 0) < live.get(endpoints[first][1], 0) else first


class Weighted2(AgentDispatch):
    def pick(self, endpoints: list[tuple[str, str]], c: int, a: int, i: int) -> int | None:
        plain = spread_weights(endpoints, self.shares[c])
        live = self.live[a]
        weights = [w / queue_score(n, u, self.planned, live) ** 2 for w, (n, u) in zip(plain, endpoints, strict=True)]
        return draw(weights, self.draws[i])


CANDIDATES: dict[str, type[AgentDispatch]] = {
    "weighted": Weighted, "p2c": P2C, "p2c_plan": P2CPlan, "d3": D3, "p2c_all": P2CAll,
    "weighted2": Weighted2, "jsq": JoinShortest,
}  # fmt: skip


def recorded(base: type[AgentDispatch], log: dict[tuple[tuple[str, float], ...], Counter[str]]) -> type[AgentDispatch]:
    """``base`` that counts, per site's shares, the node each request went to into ``log``."""

    class Recorded(base):  # type: ignore[valid-type,misc]
        def choose(self, i: int, now: float) -> int:
            k = int(super().choose(i, now))
            if k >= 0:
                log.setdefault(tuple(sorted(self.shares[self.client[i]].items())), Counter())[self.endpoints[k][0]] += 1
            return k

    return Recorded


def departure(log: dict[tuple[tuple[str, float], ...], Counter[str]]) -> float:
    """Requests-weighted total variation between the nodes' received shares and the plan's, per site."""
    total = sum(sum(c.values()) for c in log.values())
    gap = 0.0
    for shares, got in log.items():
        n = sum(got.values())
        plan = dict(shares)
        gap += 0.5 * sum(abs(got.get(k, 0) / n - plan.get(k, 0.0)) for k in {*plan, *got}) * n
    return gap / total if total else 0.0


def one_rate(rate: float, service: str, duration: float, concurrency: int = LAB.concurrency) -> dict[str, Any]:
    """Every candidate rule on the queue-p99 plan at one rate, against the best baseline's p99 and p50."""
    w = dataclasses.replace(LAB, rate=rate, service=service, duration_s=duration, dispatch="agent")
    w = dataclasses.replace(w, concurrency=concurrency)
    snap, rtt = lab_snapshot(w)
    arrivals = _arrivals(w)
    plans = {
        n: solve(snap, method=PLACEMENTS[n][0], mode="2", objective=PLACEMENTS[n][1]) for n in ("queue-p99", *BASELINES)
    }
    assigned = dataclasses.replace(w, dispatch="assigned")
    base = [simulate_plan(n, plans[n], assigned, rtt, arrivals).to_dict() for n in BASELINES]
    best99 = min(b["p99_ms"] for b in base)
    best50 = min(b["p50_ms"] for b in base)
    row: dict[str, Any] = {"rate": rate, "total_rps": rate * w.clients, "service": service, "rules": {}}
    for name, rule in CANDIDATES.items():
        log: dict[tuple[tuple[str, float], ...], Counter[str]] = {}
        out = simulate_plan("queue-p99", plans["queue-p99"], w, rtt, arrivals, recorded(rule, log)).to_dict()
        out["p99_ratio"] = round(out["p99_ms"] / best99, 3)
        out["p50_ratio"] = round(out["p50_ms"] / best50, 3)
        out["departure"] = round(departure(log), 3)
        row["rules"][name] = out
    row["best_baseline"] = {"p50_ms": best50, "p99_ms": best99}
    return row


def main() -> None:
    args = lab_arguments(__doc__)
    rows = [one_rate(rate, svc, args.duration, args.concurrency) for svc in args.services for rate in args.rates]
    load = os.getloadavg()
    if args.json:
        print(json.dumps({"rows": rows, "loadavg": load}, indent=1))
        return
    print(f"queue-p99 plan, shared-cores lab, concurrency {args.concurrency}, {args.duration:g} s per run; "
          "cells: p50/p99 ms, "
          "p99 and p50 / best baseline's, share departure from the plan")  # fmt: skip
    print(f"{'svc':<4}{'req/s':>6} {'base':>9}" + "".join(f"{n:>24}" for n in CANDIDATES))
    for r in rows:
        b = r["best_baseline"]
        cells = "".join(
            f"{o['p50_ms']:>6.0f}/{o['p99_ms']:<5.0f}{o['p99_ratio']:>4.2f} {o['p50_ratio']:>4.2f} "
            f"{o['departure']:>4.2f}"
            for o in r["rules"].values()
        )
        print(f"{r['service']:<4}{r['total_rps']:>6g} {b['p50_ms']:>4.0f}/{b['p99_ms']:<4.0f}{cells}")
    print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


if __name__ == "__main__":
    main()
