"""One member's vote requests, within the peer route's rate (ELECTION_RATE 5/s), cannot stop placement (review13a F2).

The real Election and LeaderRound machines, wired as agent/leadership.py wires them (every BecameLeader is an
Elected event): gathers answer 150 ms after they are sent, a solve takes 100 ms, a command 50 ms. Before the fix,
every vote request at the leader's term moved it to a new term and each move dropped the round in progress: 1 round
placed in 120 s at 5 requests a second (577 term moves) against 4 without them."""

from __future__ import annotations

import pytest

from agent import leader_round as lr
from agent.peer_api import ELECTION_RATE
from agent.placement import NodeReport
from coordinator_election import Action, BecameLeader, Election, ElectionConfig, Received, Tick, Vote, VoteRequest

CFG = ElectionConfig(heartbeat_s=0.3, election_timeout_s=1.2, lease_s=2.0)
ALIVE = {"L": (0, 4000.0, "L"), "a": (0, 2000.0, "a"), "m": (0, 1000.0, "m")}


def _run(rate: float, seconds: float) -> tuple[int, int]:
    """Rounds placed and term moves in ``seconds`` while m sends ``rate`` vote requests a second at L's term."""
    e = Election("L", ALIVE["L"], CFG, now=0.0)
    rounds = lr.LeaderRound("L", lr.RoundConfig(period_s=30.0))
    members = {n: f"https://{n}:1" for n in ALIVE}
    pending: list[tuple[float, lr.Event]] = []
    placed = 0

    def feed(now: float, event: lr.Event) -> None:
        nonlocal placed
        for ins in rounds.step(event):
            if isinstance(ins, lr.Gather):
                rep = NodeReport(ins.node, 1000, 2000, 100, "default", {})
                pending.append((now + 0.15, lr.Gathered(now + 0.15, ins.round, ins.node, rep, ())))
            elif isinstance(ins, lr.Solve):
                plan = {"instances": {}, "method": "ipopt", "objective_ms": 1.0, "solve_ms": 1.0}
                pending.append((now + 0.1, lr.Solved(now + 0.1, ins.round, plan, 0)))
            elif isinstance(ins, lr.Command):
                assert ins.term == e.led_term  # commands go out with the term the leader holds a certificate for
                pending.append((now + 0.05, lr.Acknowledged(now + 0.05, ins.round, ins.node)))
            elif isinstance(ins, lr.Placed):
                placed += 1

    def carry_out(now: float, actions: list[Action]) -> None:
        for a in actions:
            if isinstance(a, BecameLeader):
                feed(now, lr.Elected(now, a.term, members))

    step, now, next_request, first_term = 0, 0.0, 3.0, None
    while now < seconds:
        step += 1
        now = step / 100
        for item in [p for p in pending if p[0] <= now]:
            pending.remove(item)
            feed(now, item[1])
        if step % 5 == 0:
            actions = e.step(Tick(now, ALIVE))
            for a in list(actions):  # our candidacy's vote request (or standing again while leading): a grants it
                message = getattr(a, "message", None)
                if isinstance(message, VoteRequest):
                    actions += e.step(Received(now, "a", Vote(message.term, "a", True, None)))
            carry_out(now, actions)
            feed(now, lr.Tick(now))
        if e.is_leader and first_term is None:
            first_term = e.term
        if rate and e.is_leader and now >= next_request:
            next_request = now + 1.0 / rate
            carry_out(now, e.step(Received(now, "m", VoteRequest(e.term, "m", ALIVE["m"]))))
    return placed, e.term - (first_term or 0)


@pytest.mark.parametrize("rate", [1.0, ELECTION_RATE])
def test_vote_requests_within_the_rate_leave_placement_rounds_as_they_were(rate: float) -> None:
    seconds = 65.0
    quiet, _ = _run(0.0, seconds)
    placed, moves = _run(rate, seconds)
    assert quiet == 3  # at about 0.2 s, 30 s and 60 s
    assert placed == quiet
    assert moves <= seconds / CFG.election_timeout_s + 1  # at most one new term per election timeout
