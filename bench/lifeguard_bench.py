"""Lifeguard's confirmers, proven origins against the rule before, in the same run (the simulated SWIM cluster).

Three measurements under six rules, in the same run: ``quorum`` (built, the agent setting ``dead_quorum = 2``,
not yet the default: a suspect update's origin counts as a confirmer only from the origin itself or with its
signature, ``wire.SuspectProof``, which senders attach and relays carry; a suspicion's clock starts at our own
missed probe; a third party's "dead" is a suspicion unless
``SwimConfig.dead_quorum`` (2) distinct members are proven to have declared it, their own word or their signed
declaration, then one missed probe of ours makes it dead), ``quorum+own`` (the same, but our own probed suspicion
counts as one of the two: ``dead_quorum_own``), ``proven`` (every third party's dead/left a suspicion:
``dead_quorum=0``), ``direct`` (``proven`` without signatures: only the origin's own message proves it), ``verify``
(``proven`` but ``SwimConfig.dead_rumour_verify``: any dead rumour and one missed probe of ours made a node dead
at once: still the default) and ``before`` (``unproven_confirmers`` and ``rumour_clock`` too: every distinct
claimed origin counted, the clock ran from the first rumour):

* **crash**: N nodes (``tests/unit/swim_sim.py``, 1 % loss, delays up to 10 ms) converge, one is crashed, and
  we time when the first member declares it dead and when every live member has (p50/p99 over seeds);
* **attack**: the same cluster, one member (``n1``) lies: every 0.1 s it tells every member that ``k`` others
  suspect a victim; the victim stalls for ``--pause`` seconds (answers nothing), then answers again. Counted:
  members that declared the live victim dead (false deaths), with and without the liar;
* **dead lie**: the same, but ``n1`` says in its own name that the victim is dead (the victim stalls
  ``--dead-pause`` seconds).

    .venv/bin/python bench/lifeguard_bench.py [--sizes 5,10,25,50] [--seeds 20] [--pause 1.0] [--dead-pause 1.3]
        [--rules quorum,proven,verify] [--json]

Pure simulation (no sockets, one core): the figures are simulated seconds, so the machine's load does not move
them; the wall time of the run is printed for the record.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.discovery import swim as sw
from tests.unit.swim_sim import Sim

# name -> (the rule before: SwimConfig.unproven_confirmers and rumour_clock; senders attach signed suspicions;
# SwimConfig.dead_rumour_verify)
RULES = {"quorum": (False, True, False, 2, False), "quorum+own": (False, True, False, 2, True),
         "proven": (False, True, False, 0, False), "direct": (False, False, False, 0, False),
         "verify": (False, True, True, 0, False), "before": (True, True, True, 0, False)}  # fmt: skip
Rule = tuple[bool, bool, bool, int, bool]
STEP = 0.02


def converged(n: int, seed: int, rule: Rule) -> Sim:
    """A cluster of ``n`` under ``rule`` that has converged (every member sees every other alive)."""
    before, proofs, dead_verify, quorum, own = rule
    config = sw.SwimConfig(unproven_confirmers=before, rumour_clock=before, dead_rumour_verify=dead_verify,
                           dead_quorum=quorum, dead_quorum_own=own)  # fmt: skip
    sim = Sim(n, seed=seed, loss=0.01, config=config, proofs=proofs)
    sim.run(15 if n <= 25 else 25)
    if not sim.converged():
        raise RuntimeError(f"{n} nodes, seed {seed}: no convergence")
    return sim


def crash_detection(n: int, seed: int, rule: Rule, limit: float = 15.0) -> tuple[float, float]:
    """(first member's, last member's) time from the crash to declaring the crashed node dead."""
    sim = converged(n, seed, rule)
    victim = f"n{2 + seed % (n - 2)}"
    sim.crash(victim)
    start, first = sim.now, None
    while sim.now - start < limit:
        sim.run(STEP)
        views = [sim.view(o, victim) for o in sim.live()]
        if first is None and "dead" in views:
            first = sim.now - start
        if all(v in ("dead", None) for v in views):
            return first if first is not None else sim.now - start, sim.now - start
    return float("inf"), float("inf")


def stall(n: int, seed: int, rule: Rule, pause: float, liar: bool | str, after: float = 6.0) -> int:
    """Members that declared a victim dead that only stalled ``pause`` s (with ``n1`` lying throughout if ``liar``:
    forged confirmers, or ``"dead"``: its own word that the victim is dead)."""
    sim = converged(n, seed, rule)
    victim = f"n{2 + seed % (n - 2)}"
    k = sim.config.indirect_k
    sim.pause(victim, pause)
    start = sim.now
    while sim.now - start < pause + after:
        if liar and round((sim.now - start) / STEP) % 5 == 0:
            if liar == "dead":
                sim.forge_dead("n1", victim)
            else:
                sim.forge_suspicion("n1", victim, k)
        sim.run(STEP)
    return len({o for _t, o, s in sim.false_deaths() if s == victim})


def pct(values: list[float], q: float) -> float:
    return sorted(values)[min(len(values) - 1, int(q * len(values)))]


def measure(
    sizes: list[int], seeds: int, pause: float, dead_pause: float = 1.3, rules: list[str] | None = None
) -> dict[str, Any]:
    out: dict[str, Any] = {"crash": [], "attack": [], "dead_lie": []}
    for n in sizes:
        for name, rule in RULES.items():
            if rules and name not in rules:
                continue
            runs = [crash_detection(n, s, rule) for s in range(seeds)]
            firsts, lasts = [r[0] for r in runs], [r[1] for r in runs]
            row = {"n": n, "rule": name, "first_p50": statistics.median(firsts), "first_p99": pct(firsts, 0.99),
                   "all_p50": statistics.median(lasts), "all_p99": pct(lasts, 0.99)}  # fmt: skip
            out["crash"].append(row)
            print(f"crash n={n:3d} {name:7s} first p50 {row['first_p50']:.2f} s p99 {row['first_p99']:.2f} s, "
                  f"everywhere p50 {row['all_p50']:.2f} s p99 {row['all_p99']:.2f} s", file=sys.stderr)  # fmt: skip
            for liar in (False, True):
                deaths = [stall(n, s, rule, pause, liar) for s in range(seeds)]
                row = {"n": n, "rule": name, "liar": liar, "pause_s": pause, "runs_with_false_death":
                       sum(d > 0 for d in deaths), "runs": seeds, "false_deaths": sum(deaths)}  # fmt: skip
                out["attack"].append(row)
                print(f"stall n={n:3d} {name:7s} liar={liar!s:5s}: false deaths in {row['runs_with_false_death']}"
                      f"/{seeds} runs ({row['false_deaths']} members in all)", file=sys.stderr)  # fmt: skip
            deaths = [stall(n, s, rule, dead_pause, "dead") for s in range(seeds)]
            row = {"n": n, "rule": name, "pause_s": dead_pause, "runs_with_false_death": sum(d > 0 for d in deaths),
                   "runs": seeds, "false_deaths": sum(deaths)}  # fmt: skip
            out["dead_lie"].append(row)
            print(f"stall n={n:3d} {name:7s} liar=dead : false deaths in {row['runs_with_false_death']}/{seeds} runs "
                  f"({row['false_deaths']} members in all)", file=sys.stderr)  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="5,10,25,50", help="cluster sizes, comma-separated (default 5,10,25,50)")
    ap.add_argument("--seeds", type=int, default=20, help="runs per size and rule (default 20)")
    ap.add_argument("--pause", type=float, default=1.0, help="seconds the victim stalls in the attack (default 1.0)")
    ap.add_argument("--dead-pause", type=float, default=1.3, help="seconds the victim stalls under the dead lie")
    ap.add_argument("--rules", default="", help=f"rules to run, comma-separated (default all: {','.join(RULES)})")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON on stdout")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    rules = [r for r in args.rules.split(",") if r]
    if set(rules) - set(RULES):
        ap.error(f"unknown rules {sorted(set(rules) - set(RULES))}")
    out = measure([int(s) for s in args.sizes.split(",")], args.seeds, args.pause, args.dead_pause, rules)
    out["wall_s"] = round(time.perf_counter() - t0, 1)
    if args.json:
        print(json.dumps(out, indent=1))
    print(f"wall {out['wall_s']} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
