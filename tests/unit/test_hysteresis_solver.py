"""The flap regression: bench/load_bench.py's symmetric 3-site case, through the real round machine and solver.

Three nodes, three sites of ten clients (4 req/s each, Poisson) next to one node each and 12 ms from the
others, the digits model: room for two instances, and which two is a coin toss that measurement noise
flips. Each round the leader's own machine (agent.leader_round) gathers the reports and the new requests,
the solver worker's request function (agent.solver_worker.solve_request: real Ipopt, and the running
instances valued by solver.hold) solves, and the commanded desired sets become what runs next round.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.catalogue import builtin_catalogue_text, parse_catalogue
from agent.hysteresis import HoldConfig
from agent.leader_round import (
    Acknowledged,
    Command,
    Elected,
    Gather,
    Gathered,
    LeaderRound,
    MembershipChanged,
    Placed,
    RoundConfig,
    Solve,
    Solved,
    Tick,
)
from agent.placement import NodeReport, RequestRecord, build_snapshot
from agent.solver_worker import solve_request

pytest.importorskip("cyipopt")

CAT = parse_catalogue(builtin_catalogue_text(), "builtin")
NODES = ("node0", "node1", "node2")
PERIOD, WINDOW = 4.0, 25.0
Placement = dict[str, dict[str, int]]


@dataclass
class BenchCase:
    """The cluster and its clients; ``rates[site]`` is each of the site's ten clients' rate."""

    hold: HoldConfig
    seed: int = 0
    rates: list[float] = field(default_factory=lambda: [4.0, 4.0, 4.0])
    alive: list[str] = field(default_factory=lambda: list(NODES))
    running: Placement = field(default_factory=lambda: {n: {} for n in NODES})
    summaries: list[dict[str, Any]] = field(default_factory=list)
    now: float = 1000.0

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.machine = LeaderRound(
            "node0", RoundConfig(period_s=PERIOD, debounce_s=0.0, window_s=WINDOW, hold=self.hold, page_limit=10**6)
        )
        self.machine.step(Elected(self.now - PERIOD, 1, self._members()))
        self.ids = 0
        self.pending = self._requests(self.now - WINDOW, self.now)

    def _members(self) -> dict[str, str]:
        return {n: f"http://{n}" for n in self.alive}

    def _requests(self, start: float, end: float) -> list[tuple[int, RequestRecord]]:
        out = []
        served = [n for n in self.alive if self.running.get(n)]
        for site, rate in enumerate(self.rates):
            rtts = {n: 1.0 if j == site else 12.0 for j, n in enumerate(NODES)}
            for c in range(10):
                t = start + self.rng.expovariate(rate)
                while t < end:
                    node = self.rng.choice(served) if served else None
                    latency = self.rng.lognormvariate(1.8, 0.4) if node else None  # slower than the catalogue says
                    out.append(RequestRecord(t, "digits", f"c{site}-{c}", rtts, node, latency, 200))
                    t += self.rng.expovariate(rate)
        first, self.ids = self.ids + 1, self.ids + len(out)
        return list(enumerate(sorted(out, key=lambda r: r.ts), start=first))  # ids grow with time, as a log's

    def shift(self, site: int, factor: float) -> None:
        """The site's clients send ``factor`` times as fast, and have for a whole window (the estimate's lag aside)."""
        self.rates[site] *= factor
        self.machine.window.clear()
        self.pending = self._requests(self.now - WINDOW, self.now)

    def kill(self, node: str) -> None:
        self.alive.remove(node)
        self.running.pop(node, None)
        self.machine.step(MembershipChanged(self.now, self._members()))

    def round(self) -> Placement:
        """One placement round; returns what runs after it (commands carried out at once)."""
        out = self.machine.step(Tick(self.now))
        gathers = [g for g in out if isinstance(g, Gather)]
        assert gathers, out
        for g in gathers:
            page = tuple(self.pending) if g.node == "node0" else ()
            report = NodeReport(
                g.node, 4000, 4000, 100, "default", dict(self.running[g.node]), {}, dict(self.running[g.node])
            )
            out = self.machine.step(Gathered(self.now, g.round, g.node, report, page))
        solve = out[0]
        assert isinstance(solve, Solve)
        snapshot = build_snapshot(list(solve.nodes), list(solve.requests), CAT, solve.now, "queue-p99", WINDOW)
        reply = solve_request({"snapshot": snapshot, "method": "ipopt", "mode": "2", "held": solve.held})
        out = self.machine.step(Solved(self.now, solve.round, reply["plan"], len(snapshot["requests"])))
        for c in [c for c in out if isinstance(c, Command)]:
            self.running[c.node] = dict(c.instances)
            out = self.machine.step(Acknowledged(self.now, c.round, c.node))
        placed = [p for p in out if isinstance(p, Placed)]
        assert placed
        self.summaries.append(dict(placed[0].summary))
        start, self.now = self.now, self.now + PERIOD
        self.pending = self._requests(start, self.now)
        return {n: dict(ms) for n, ms in self.running.items() if ms}


def moves_after_first(placements: list[Placement]) -> int:
    """The flap checker: rounds after the first plan whose placement differs from the round before."""
    return sum(a != b for a, b in itertools.pairwise(placements))


def run(case: BenchCase, rounds: int, between: Callable[[int], None] = lambda r: None) -> list[Placement]:
    out = []
    for r in range(rounds):
        between(r)
        out.append(case.round())
    return out


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000))
def test_steady_noisy_load_never_moves_after_the_first_plan(seed: int) -> None:
    case = BenchCase(HoldConfig(), seed)
    placements = run(case, 8)
    assert placements[1], "the first plan starts instances"
    assert moves_after_first(placements) == 0, placements
    assert [s["hold"]["changed"] for s in case.summaries[1:]] == [False] * 7
    held = [s for s in case.summaries if not s["hold"]["switched"]]
    for s in held:  # a held round says why, shows no actions and the running instances' split
        assert "must gain over" in s["hold"]["reason"] and s["actions"] == [] and s["spread"]


def test_the_flap_checker_fails_with_hysteresis_switched_off() -> None:
    moves = [moves_after_first(run(BenchCase(HoldConfig(enabled=False), seed), 8)) for seed in range(3)]
    assert sum(moves) > 0, "without hysteresis the symmetric case flaps (docs/benchmarks/queue-placement.md, run 5)"


def test_a_site_at_five_times_its_rate_gets_its_instance_within_one_round() -> None:
    case = BenchCase(HoldConfig(), seed=1)
    steady = run(case, 5)[-1]
    bare = [j for j, n in enumerate(NODES) if n not in steady]
    assert len(bare) == 1
    case.shift(bare[0], 5.0)
    after = case.round()
    assert NODES[bare[0]] in after, (steady, after, case.summaries[-1]["hold"])
    assert case.summaries[-1]["hold"]["switched"]


def test_a_dead_node_is_replaced_in_the_next_round() -> None:
    case = BenchCase(HoldConfig(min_dwell_s=3600.0), seed=2)
    steady = run(case, 4)[-1]
    victim = sorted(steady)[0]
    case.kill(victim)
    after = case.round()
    assert victim not in after and sum(c for ms in after.values() for c in ms.values()) >= 2, after
    hold = case.summaries[-1]["hold"]
    assert hold["switched"] and hold["hard"] and victim in hold["reason"]
