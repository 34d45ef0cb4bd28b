"""Issue 16's p99 target in simulation, with requests dispatched as the agent dispatches them.

The shared-cores lab (``peerserve simulate --workload --cores 2 --concurrency 2 --throughput 50 --node-mem-mb
4096 --model-mem-mb 100``: 60 clients at 6 sites, three 2-core nodes, a 50 req/s instance serving up to 2
requests at once, as TF-Serving's thread pool sized by the cores; ``--concurrency 1``: one at a time, the lab
before) at 1-4 req/s per client (60-240 req/s), exponential and constant service. Each placement is solved
once per rate and its plan simulated over the same arrivals and service times under three dispatches
(solver/workload.py):

* ``agent``: the agent's rule (peerserve/dispatch.py, ``p2c``, the default): every plan publishes its
  shares (thesis-model plans: their assignments, solver/assigned_spread.py), two endpoints drawn by
  them and weighed by the entry agent's live queues, the emptier against its planned queue taken;
* ``weighted``: the agent's rule before p2c (``--endpoint-rule weighted``): one draw, each share weighed
  by (1 + planned) / (1 + live), an idle endpoint at live 0;
* ``plan``: the plan's node, then one of its instances uniformly (the simulation before).

And two what-ifs that are NOT the agent's rule (this file only), on the queue-p99 plan, to show what the
tail owes to the rule rather than to the instance count: ``jsq``: the entry agent sends each request
to the endpoint of the model where it has the fewest requests in flight (its own counts, as the agent
keeps them), ties drawn by the plan's shares; ``jsq_plan``: the same among the endpoints on the nodes
the plan gives the client's site. bench/endpoint_rules_bench.py weighs more candidate rules.

Prints p50 / p99 ms per placement, the ratio "queue-p99 p99 / best baseline's p99" within each dispatch and
against the best baseline of any dispatch, the CPU seconds each dispatch's simulations took, and the load
average (the machine is shared; the simulation's results do not depend on it, its run time does).

    .venv/bin/python bench/dispatch_bench.py [--duration S] [--rates 1 2 3 4] [--concurrency 2] [--json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from typing import Any

from peerserve.dispatch import draw
from solver.agent_sim import AgentDispatch
from solver.api import solve
from solver.workload import PLACEMENTS, Workload, _arrivals, lab_snapshot, sim_slots, simulate_plan

PLACES = ("queue", "queue-p99", "thesis", "nearest", "least-loaded")
BASELINES = ("thesis", "nearest", "least-loaded")
DISPATCHES = ("agent", "weighted", "plan")
WHAT_IFS = ("jsq_plan", "jsq")
LAB = Workload(cores=2.0, concurrency=2, throughput=50.0, node_mem_mb=4096.0, model_mem_mb=100.0)


class JoinShortest(AgentDispatch):
    """What-if: the endpoint with the fewest of the entry agent's requests in flight, ties by the shares."""

    within_plan = False  # True: only the endpoints on nodes the plan gives the client's site

    def choose(self, i: int, now: float) -> int:
        if not self.endpoints:
            return -1
        c = self.client[i]
        a = self.agent[c]
        live, order = self.live[a], self.ranked(a, c)
        if self.within_plan and self.shares[c]:
            order = [e for e in order if self.shares[c].get(self.endpoints[e][0], 0.0) > 0] or order
        fewest = min(live.get(self.endpoints[e][1], 0) for e in order)
        tied = [e for e in order if live.get(self.endpoints[e][1], 0) == fewest]
        pick = draw([self.shares[c].get(self.endpoints[e][0], 0.0) for e in tied], self.draws[i])
        k = tied[0 if pick is None else pick]
        url = self.endpoints[k][1]
        live[url] = live.get(url, 0) + 1
        self.sent_by[i] = a
        return k


class JoinShortestWithinPlan(JoinShortest):
    """What-if: JoinShortest among the endpoints on the nodes the plan gives the client's site."""

    within_plan = True


class Weighted(AgentDispatch):
    """The agent's rule before p2c (``--endpoint-rule weighted``)."""

    rule = "weighted"


def what_if(rule: type[AgentDispatch], plan: Any, w: Workload, rtt: Any, arrivals: Any) -> dict[str, Any]:
    """The queue-p99 plan with ``rule`` in place of the agent's."""
    return simulate_plan("queue-p99", plan, dataclasses.replace(w, dispatch="agent"), rtt, arrivals, rule).to_dict()


def one_rate(rate: float, service: str, duration: float, concurrency: int = LAB.concurrency) -> dict[str, Any]:
    """Every placement under every dispatch at one rate: outcomes and the simulations' CPU seconds."""
    w = dataclasses.replace(LAB, rate=rate, service=service, duration_s=duration, concurrency=concurrency)
    snap, rtt = lab_snapshot(w)
    arrivals = _arrivals(w)
    plans = {}
    for name in PLACES:
        method, objective = PLACEMENTS[name]
        plans[name] = solve(snap, method=method, mode="2", objective=objective)
    row: dict[str, Any] = {
        "rate": rate, "total_rps": rate * w.clients, "service": service, "concurrency": concurrency, "by": {}
    }  # fmt: skip
    for d in DISPATCHES:
        start = time.process_time()
        wd, rule = ("agent", Weighted) if d == "weighted" else (d, AgentDispatch)
        outs = {
            n: simulate_plan(n, p, dataclasses.replace(w, dispatch=wd), rtt, arrivals, rule) for n, p in plans.items()
        }
        row["by"][d] = {
            "cpu_s": round(time.process_time() - start, 3),
            "outcomes": {n: o.to_dict() for n, o in outs.items()},
        }
    row["jsq"] = what_if(JoinShortest, plans["queue-p99"], w, rtt, arrivals)
    row["jsq_plan"] = what_if(JoinShortestWithinPlan, plans["queue-p99"], w, rtt, arrivals)
    best_any = min(row["by"][d]["outcomes"][b]["p99_ms"] for d in DISPATCHES for b in BASELINES)
    for d in DISPATCHES:
        outs = row["by"][d]["outcomes"]
        best = min(outs[b]["p99_ms"] for b in BASELINES)
        row["by"][d]["ratio"] = round(outs["queue-p99"]["p99_ms"] / best, 3)
        row["by"][d]["ratio_any"] = round(outs["queue-p99"]["p99_ms"] / best_any, 3)
    for key in WHAT_IFS:
        row[key]["ratio_any"] = round(row[key]["p99_ms"] / best_any, 3)
    return row


def print_rows(rows: list[dict[str, Any]]) -> None:
    """One line per (service, rate, dispatch): p50 / p99 per placement, instances, the ratios."""
    head = f"{'svc':<4}{'req/s':>6} {'dispatch':<9}" + "".join(f"{p:>18}" for p in PLACES)
    print(head + f"{'ratio':>7}{'vs any':>7}{'cpu s':>7}")
    for r in rows:
        for d in DISPATCHES:
            by = r["by"][d]
            cells = "".join(
                f"{by['outcomes'][p]['p50_ms']:>7.0f}/{by['outcomes'][p]['p99_ms']:<7.0f}{by['outcomes'][p]['instances']:>3}"
                for p in PLACES
            )
            ratios = f"{by['ratio']:>7.2f}{by['ratio_any']:>7.2f}{by['cpu_s']:>7.2f}"
            print(f"{r['service']:<4}{r['total_rps']:>6g} {d:<9}{cells}{ratios}")
        ifs = ", ".join(f"{k} {r[k]['p50_ms']:.0f}/{r[k]['p99_ms']:.0f} ({r[k]['ratio_any']:.2f})" for k in WHAT_IFS)
        print(f"{'':<10} what-ifs, queue-p99 (p99 / best baseline of any dispatch): {ifs}")


def lab_arguments(doc: str | None) -> argparse.Namespace:
    """The lab benches' command line: --duration, --rates, --services, --concurrency, --json."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=60.0, help="simulated seconds per run (default 60)")
    ap.add_argument("--rates", type=float, nargs="+", default=[1.0, 2.0, 3.0, 4.0], help="req/s per client")
    ap.add_argument("--services", nargs="+", default=["exp", "det"], choices=("exp", "det"))
    ap.add_argument(
        "--concurrency",
        type=int,
        default=LAB.concurrency,
        help=f"requests one instance serves at once, at most the node's cores (default {LAB.concurrency}: the lab's "
        "cores, TF-Serving's thread pool; 1: one at a time, the lab before)",
    )
    ap.add_argument("--json", action="store_true", help="machine-readable output")
    args = ap.parse_args()
    if not 1 <= args.concurrency <= 1024:
        ap.error("--concurrency must be 1-1024")
    return args


def main() -> None:
    args = lab_arguments(__doc__)
    solve(lab_snapshot(LAB)[0], method="ipopt", mode="2", objective="queue")  # warm: imports and set-up
    rows = [one_rate(rate, svc, args.duration, args.concurrency) for svc in args.services for rate in args.rates]
    load = os.getloadavg()
    if args.json:
        print(json.dumps({"rows": rows, "concurrency": args.concurrency, "loadavg": load}, indent=1))
        return
    print(f"shared-cores lab, concurrency {args.concurrency} (slots per instance: "
          f"{sim_slots(dataclasses.replace(LAB, concurrency=args.concurrency))}), {args.duration:g} s per run; "
          "cells: p50/p99 ms, instances; "
          f"ratio: queue-p99 p99 / best baseline (same dispatch; 'vs any': best baseline of any dispatch)")  # fmt: skip
    print_rows(rows)
    print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


if __name__ == "__main__":
    main()
