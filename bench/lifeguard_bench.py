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

``--restart`` measures R3's gate instead (docs/security.md; ``swim_proofs.RELAYED_GATE_S``: a node counts relayed
proofs only a minute after its start), the agent's rule (``quorum``), gate on and off on the same seeds:

* **restart**: in a converged cluster one member restarts (a fresh core and books, only its seed known); once it
  sees every member alive again (``rejoin``) a node crashes: when the restarted node declares it dead, and when
  the others do (they are past their gates);
* **cold**: the crash above, on a cluster whose every node started at 0 (the crash 15-25 s in: all gated).

    .venv/bin/python bench/lifeguard_bench.py --restart [--sizes 5,10,25,50] [--seeds 20] [--json]

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
from agent.discovery import swim_proofs
from tests.unit.swim_sim import Sim

# name -> (the rule before: SwimConfig.unproven_confirmers and rumour_clock; senders attach signed suspicions;
# SwimConfig.dead_rumour_verify)
RULES = {"quorum": (False, True, False, 2, False), "quorum+own": (False, True, False, 2, True),
         "proven": (False, True, False, 0, False), "direct": (False, False, False, 0, False),
         "verify": (False, True, True, 0, False), "before": (True, True, True, 0, False)}  # fmt: skip
Rule = tuple[bool, bool, bool, int, bool]
STEP = 0.02


def converged(n: int, seed: int, rule: Rule, gate_s: float = 0.0, cold: bool = False) -> Sim:
    """A cluster of ``n`` under ``rule`` that has converged (every member sees every other alive); ``gate_s``: R3's
    gate (0: none), ``cold``: every node's run began at 0 (else long before)."""
    before, proofs, dead_verify, quorum, own = rule
    config = sw.SwimConfig(unproven_confirmers=before, rumour_clock=before, dead_rumour_verify=dead_verify,
                           dead_quorum=quorum, dead_quorum_own=own)  # fmt: skip
    sim = Sim(n, seed=seed, loss=0.01, config=config, proofs=proofs, relay_gate_s=gate_s, cold_start=cold)
    sim.run(15 if n <= 25 else 25)
    if not sim.converged():
        raise RuntimeError(f"{n} nodes, seed {seed}: no convergence")
    return sim


def crash_detection(n: int, seed: int, rule: Rule, limit: float = 15.0, sim: Sim | None = None) -> tuple[float, float]:
    """(first member's, last member's) time from the crash to declaring the crashed node dead (in ``sim``, else a
    converged cluster under ``rule``)."""
    sim = sim or converged(n, seed, rule)
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


GATE_S = swim_proofs.RELAYED_GATE_S


def restart_detection(n: int, seed: int, gate_s: float, limit: float = 15.0) -> dict[str, float]:
    """A converged cluster (the agent's rule) where ``n1`` restarts: seconds until it sees every member alive again
    (``rejoin``), then a crash: seconds until ``n1`` declares it dead (``restarted``), until the first and the last
    of the others do (``first``, ``others``), and whether ``n1`` was still within the gate then (``gated``)."""
    sim = converged(n, seed, RULES["quorum"], gate_s)
    restarted, victim = "n1", f"n{2 + seed % (n - 2)}"
    sim.restart(restarted)
    start = sim.now
    while not all(sim.view(restarted, o) == "alive" for o in sim.live() if o != restarted):
        if sim.now - start > 45:
            raise RuntimeError(f"{n} nodes, seed {seed}: the restarted node did not rejoin in 45 s")
        sim.run(STEP)
    rejoin = sim.now - start
    sim.crash(victim)
    crashed, seen = sim.now, {}
    while sim.now - crashed < limit and len(seen) < len(sim.live()):
        sim.run(STEP)
        for o in sim.live():
            if o not in seen and sim.view(o, victim) in ("dead", None):
                seen[o] = sim.now - crashed
    others = [seen.get(o, float("inf")) for o in sim.live() if o != restarted]
    return {"rejoin": rejoin, "restarted": seen.get(restarted, float("inf")), "first": min(others),
            "others": max(others), "gated": float(sim.gated_at(restarted)), "held_not_counted": sim.gated}  # fmt: skip


def measure_restart(sizes: list[int], seeds: int) -> dict[str, Any]:
    """R3's gate on and off on the same seeds: a restarted node's detection (``restart_detection``) and a crash
    on a cluster started cold."""
    out: dict[str, Any] = {"gate_s": GATE_S, "restart": [], "cold": []}
    for n in sizes:
        for gate in (0.0, GATE_S):
            runs = [restart_detection(n, s, gate) for s in range(seeds)]
            row: dict[str, Any] = {"n": n, "gate_s": gate, "runs": seeds,
                                   "gated_at_crash": sum(r["gated"] for r in runs),
                                   "held_not_counted": sum(r["held_not_counted"] for r in runs)}  # fmt: skip
            for key in ("rejoin", "restarted", "first", "others"):
                values = [r[key] for r in runs]
                row[f"{key}_p50"], row[f"{key}_p99"], row[f"{key}_max"] = (
                    statistics.median(values), pct(values, 0.99), max(values))  # fmt: skip
            out["restart"].append(row)
            print(f"restart n={n:3d} gate {gate:4.0f} s: rejoined p50 {row['rejoin_p50']:.1f} s; crash dead at the "
                  f"restarted node p50 {row['restarted_p50']:.2f} s p99 {row['restarted_p99']:.2f} s, at the others "
                  f"p50 {row['others_p50']:.2f} s p99 {row['others_p99']:.2f} s ({row['gated_at_crash']:.0f}/{seeds} "
                  "gated at the crash)", file=sys.stderr)  # fmt: skip
            lasts = [crash_detection(n, s, RULES["quorum"], sim=converged(n, s, RULES["quorum"], gate, cold=True))
                     for s in range(seeds)]  # fmt: skip
            firsts, alls = [r[0] for r in lasts], [r[1] for r in lasts]
            row = {"n": n, "gate_s": gate, "runs": seeds, "first_p50": statistics.median(firsts),
                   "first_p99": pct(firsts, 0.99), "all_p50": statistics.median(alls), "all_p99": pct(alls, 0.99),
                   "all_max": max(alls)}  # fmt: skip
            out["cold"].append(row)
            print(f"cold    n={n:3d} gate {gate:4.0f} s: crash dead first p50 {row['first_p50']:.2f} s, everywhere "
                  f"p50 {row['all_p50']:.2f} s p99 {row['all_p99']:.2f} s", file=sys.stderr)  # fmt: skip
    return out


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
    ap.add_argument("--restart", action="store_true", help="measure R3's gate (a restarted node, a cold start)")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON on stdout")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    rules = [r for r in args.rules.split(",") if r]
    if set(rules) - set(RULES):
        ap.error(f"unknown rules {sorted(set(rules) - set(RULES))}")
    try:
        sizes = [int(s) for s in args.sizes.split(",")]
    except ValueError:
        ap.error(f"--sizes: comma-separated whole numbers expected, not {args.sizes!r}")
    if any(n < 4 for n in sizes) or args.seeds < 1:
        ap.error("--sizes: 4 or more nodes each; --seeds: 1 or more")
    if args.restart:
        out = measure_restart(sizes, args.seeds)
    else:
        out = measure(sizes, args.seeds, args.pause, args.dead_pause, rules)
    out["wall_s"] = round(time.perf_counter() - t0, 1)
    if args.json:
        print(json.dumps(out, indent=1))
    print(f"wall {out['wall_s']} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
