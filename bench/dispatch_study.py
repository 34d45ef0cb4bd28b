"""Which endpoint choice, fed which queue information, meets issue 16's p99 clause in every lab of
bench/p99_audit.py (the clause: queue-p99's p99 no worse than 1.2x the best baseline's, in the same run).

For each lab, service and rate of the audit, queue-p99's plan (the default objective) is simulated on the same
arrivals and service draws under every rule x information of solver/dispatch_whatif.py, and its p99 divided by
the best baseline's (thesis, nearest, least-loaded) under today's rule (p2c on the agent's own requests in
flight: ``vs_today``) and, with ``--same-rule``, under the same what-if rule and information (the baselines run
through the same agents: ``vs_same``). The plan, the instances and the bound are queue-p99's: only the dispatch
changes.

    .venv/bin/python bench/dispatch_study.py [--labs queue_bench shared shared1] [--rules ...] [--info own gossip:0.1
    server:0.5 ...] [--same-rule] [--json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from typing import Any

from bench.p99_audit import BASELINES, LABS, TARGET
from solver.api import solve
from solver.dispatch_whatif import INFORMATION, RULES, what_if
from solver.workload import PLACEMENTS, Workload, _arrivals, lab_snapshot, simulate_plan

DEFAULT_INFO = ("own", "gossip:0", "gossip:0.1", "gossip:0.5", "server:0.1", "server:0.5")


def parse_info(text: str) -> tuple[str, float]:
    """``own`` / ``gossip:0.1`` / ``server:0.5`` -> (information, period in s)."""
    kind, _, period = text.partition(":")
    if kind not in INFORMATION:
        raise argparse.ArgumentTypeError(f"information must be one of {', '.join(INFORMATION)}")
    try:
        value = float(period) if period else 0.0
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"bad period in {text!r}") from exc
    if not 0.0 <= value < 3600.0:
        raise argparse.ArgumentTypeError("period must be from 0 to 3600 s")
    return kind, value


def cell(w: Workload, rules: list[str], info: list[tuple[str, float]], same_rule: bool) -> dict[str, Any]:
    """queue-p99's p99 over the best baseline's at one rate of one lab, per rule and information."""
    snap, rtt = lab_snapshot(w)
    arrivals = _arrivals(w)
    names = ("queue-p99", *BASELINES)
    plans = {n: solve(snap, method=PLACEMENTS[n][0], mode="2", objective=PLACEMENTS[n][1]) for n in names}
    today = {n: simulate_plan(n, p, w, rtt, arrivals).to_dict() for n, p in plans.items()}
    best = min(today[b]["p99_ms"] for b in BASELINES)
    slots = max(1, w.concurrency)
    out: dict[str, Any] = {
        "service": w.service,
        "rate": w.rate,
        "instances": today["queue-p99"]["instances"],
        "best_baseline_ms": best,
        "today_ratio": round(today["queue-p99"]["p99_ms"] / best, 3),
        "ratios": {},
    }
    for rule in rules:
        for kind, period in info:
            cls = what_if(rule, kind, period, slots)
            q = simulate_plan("queue-p99", plans["queue-p99"], w, rtt, arrivals, cls).to_dict()
            entry = {"p99_ms": q["p99_ms"], "vs_today": round(q["p99_ms"] / best, 3)}
            if same_rule:
                same = min(simulate_plan(b, plans[b], w, rtt, arrivals, cls).p99_ms for b in BASELINES)
                entry["vs_same"] = round(q["p99_ms"] / same, 3)
            out["ratios"][f"{rule} {kind}:{period:g}"] = entry
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--labs", nargs="+", default=list(LABS), choices=list(LABS))
    ap.add_argument("--rules", nargs="+", default=list(RULES), choices=list(RULES))
    ap.add_argument("--info", nargs="+", type=parse_info, default=[parse_info(s) for s in DEFAULT_INFO])
    ap.add_argument("--rates", type=float, nargs="+", default=None, help="req/s per client (default: the lab's)")
    ap.add_argument("--services", nargs="+", default=None, choices=("exp", "det"), help="default: the lab's")
    ap.add_argument(
        "--seed", type=int, default=0, help="the lab's draws (RTTs, arrivals, service; default: the audit's 0)"
    )
    ap.add_argument("--same-rule", action="store_true", help="also run the baselines under each what-if")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    rows = []
    for lab in args.labs:
        base, services, rates = LABS[lab]
        for service in args.services or services:
            for rate in args.rates or rates:
                w = dataclasses.replace(base, service=service, rate=rate, seed=args.seed)
                row = {"lab": lab, "seed": args.seed, **cell(w, args.rules, args.info, args.same_rule)}
                rows.append(row)
                out = sys.stderr if args.json else sys.stdout
                cells = "  ".join(
                    f"{k} {v['vs_today']:.2f}" + (f"/{v['vs_same']:.2f}" if "vs_same" in v else "")
                    for k, v in row["ratios"].items()
                )
                print(f"{lab} {service} {rate:g}: today {row['today_ratio']:.2f}  {cells}", file=out, flush=True)
    load = os.getloadavg()
    if args.json:
        print(json.dumps({"target": TARGET, "rows": rows, "load_average": load}, indent=1))
    else:
        print("load average: " + ", ".join(f"{x:.2f}" for x in load))


if __name__ == "__main__":
    main()
