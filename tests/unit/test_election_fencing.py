"""One leader per term at each node: no node obeys two leaders in a term, nor a term below one it obeyed.

The checker is ``Network.fencing_violations`` (tests/unit/election_sim.py: leaders command at election and
with every renewal, receivers apply the agent's own fencing rule). Each property is shown both ways: with
the test-only fault ``one_leader_per_term=False`` (every node forgets the leader it accepted in its term, as
the election did before) the checker reports violations; with the machine as it is, none.
"""

from __future__ import annotations

import random

import pytest

from coordinator_election import (
    Announce,
    BecameFollower,
    BecameLeader,
    Election,
    ElectionConfig,
    Persist,
    Received,
    Send,
    Tick,
    Vote,
    VoteRequest,
)
from coordinator_election.fencing import command_refusal
from tests.unit.election_sim import CONFIG, Network

CFG = ElectionConfig(heartbeat_s=0.3, election_timeout_s=1.2)
P = {n: (0, 1000.0 - i, n) for i, n in enumerate(["a", "b", "c"])}  # a is best
Q = frozenset(P)  # a certificate every view here takes

# Schedules the property test's generator found against the election before this fix (size, seed, faults):
# each made a node obey two leaders of one term. Kept as regressions; they fail again with the fault on.
FOUND = [  # "fault node seconds" steps
    (2, 43, "isolate 3 1.17, restart 3 1.84, crash 4 1.35, drop 4 2.57, pause 3 1.24"),
    (2, 55, "isolate 5 0.98, restart 5 0.63, restart 2 2.76, power 4 1.22"),
    (4, 60, "isolate 2 0.77, power 3 2.67, crash 0 2.03, isolate 1 1.23, partition 5 2.4"),
    (4, 77, "partition 1 0.66, restart 2 1.48, pause 4 0.79, pause 5 2.02, crash 2 0.18, power 1 2.4"),
    (5, 93, "restart 0 1.13, isolate 3 0.45, isolate 4 0.2, pause 0 2.07, drop 3 2.73, restart 5 0.7"),
]


def _steps(text: str) -> list[tuple[str, int, float]]:
    return [(kind, int(who), float(seconds)) for kind, who, seconds in (step.split() for step in text.split(", "))]


def _play(size: int, seed: int, schedule: list[tuple[str, int, float]], **faults: bool) -> Network:
    net = Network(size, seed=seed, **faults)
    net.run(2)
    for kind, who, duration in schedule:
        net.inject(kind, who)
        net.run(duration)
    net.end_faults()
    net.run(8)
    return net


def _both_sides_elect_term_2(**faults: bool) -> Network:
    """The leader of term 1 dies as the cluster splits 2/1: each side elects its own leader of term 2; heal."""
    net = Network(4, **faults)
    net.time_until_agreed(10)
    assert net.agreed_leader() == "n3" and net.nodes["n3"].term == 1
    net.crash("n3")
    net.partition(["n0", "n1"], ["n2"])
    net.run(5)
    assert net.nodes["n1"].leader == "n1" and net.nodes["n2"].leader == "n2"
    assert net.nodes["n1"].term == net.nodes["n2"].term == 2  # one term number, a leader on each side
    net.heal()
    return net


def test_the_agent_rule_obeys_only_the_leader_accepted_for_exactly_that_term() -> None:
    assert command_refusal(7, "a", 7, "a") is None
    assert "not the leader" in (command_refusal(7, "b", 7, "a") or "")
    assert "not the leader" in (command_refusal(6, "a", 7, "a") or "")  # a lower term
    assert "not the leader" in (command_refusal(8, "a", 7, "a") or "")  # a term it has not accepted yet
    assert "not the leader" in (command_refusal(7, "a", 7, None) or "")  # its lease ran out: nobody


def test_two_sides_of_one_term_meet_and_no_node_obeys_both() -> None:
    net = _both_sides_elect_term_2()
    took = net.time_until_agreed(3)
    # n1's certificate {n0, n1} is a majority of the healed view of three, n2's {n2} is not: n2 stands down (it never
    # follows a rival of its own term), tells n1 the term is its own, and n1 stands again past it with every vote
    assert took is not None and took < CONFIG.lease + 2 * CONFIG.heartbeat_s
    assert net.agreed_leader() == "n1" and net.nodes["n1"].term > 2  # the winner stood again for a new term
    assert net.fencing_violations() == [] and net.majority_violations() == []
    assert {n: {t for _, t, leader in net.obeyed[n] if leader == "n2"} for n in ("n2",)} == {"n2": {2}}


@pytest.mark.parametrize(("size", "seed", "text"), FOUND, ids=[str(seed) for _, seed, _ in FOUND])
def test_found_schedules_obey_one_leader_per_term(size: int, seed: int, text: str) -> None:
    schedule = _steps(text)
    net = _play(size, seed, schedule)
    assert net.fencing_violations() == [] and net.majority_violations() == []


@pytest.mark.parametrize(("size", "seed", "text"), FOUND[:4], ids=[str(seed) for _, seed, _ in FOUND[:4]])
def test_found_schedules_break_the_election_without_its_guards(size: int, seed: int, text: str) -> None:
    """The checker bites on them: with every write lost (``persist=False``) a restarted node obeys a second leader or a
    lower term. (Forgetting the accepted leader and following any announce, the two guards' faults, no longer breaks
    these schedules: leaders stand again instead of jumping to a new term on their word; it still breaks seeded chaos,
    ``test_seeded_chaos_obeys_one_leader_per_term_only_with_the_fix``. Seed 93 breaks neither way now.)"""
    assert _play(size, seed, _steps(text), persist=False).fencing_violations()


def _chaos(seed: int, **faults: bool) -> Network:
    """Seeded quick restarts, partitions, heals and power cuts on five nodes, faults overlapping."""
    rng = random.Random(seed)
    net = Network(5, seed=seed, **faults)
    net.run(2)
    for _ in range(25):
        kind = rng.choice(["restart", "restart", "partition", "heal", "power", "pause", "isolate"])
        net.inject(kind, rng.randrange(5))
        net.run(rng.uniform(0.2, 3.0))
        if rng.random() < 0.3:
            net.end_faults()
    return net


def test_seeded_chaos_obeys_one_leader_per_term_only_with_the_fix() -> None:
    assert all(_chaos(seed).fencing_violations() == [] for seed in range(12))
    assert any(_chaos(seed, one_leader_per_term=False, quorum=False).fencing_violations() for seed in range(12))


def test_the_accepted_leader_must_survive_a_restart() -> None:
    """Losing writes (term, vote and accepted leader) lets a restarted node obey a lower term or a second leader."""
    assert any(_chaos(seed, persist=False).fencing_violations() for seed in range(12))


# -- the machine's rules, step by step -------------------------------------------------------------------
def test_a_follower_never_follows_a_second_leader_of_its_term_and_tells_it() -> None:
    m = Election("c", P["c"], CFG, now=0.0)
    m.step(Received(0.1, "b", Announce(2, "b", P["b"], Q)))
    assert (m.term, m.leader, m.accepted) == (2, "b", "b")
    assert m.step(Received(0.2, "a", Announce(2, "a", P["a"], Q))) == [Send("a", Vote(2, "c", False, "b"))]
    assert (m.leader, m.accepted) == ("b", "b")
    m.step(Tick(3.0, P))  # b's lease ran out: no leader, but term 2 still belongs to b here
    assert m.leader is None and m.step(Received(3.1, "a", Announce(2, "a", P["a"], Q)))[0] == Send(
        "a", Vote(2, "c", False, "b")
    )
    assert m.step(Received(3.2, "a", Announce(3, "a", P["a"], Q))) == [Persist(3, None, "a"), BecameFollower(3, "a")]


def test_a_voter_that_accepted_a_leader_gives_no_vote_in_that_term() -> None:
    m = Election("c", P["c"], CFG, now=0.0)
    m.step(Received(0.1, "b", Announce(2, "b", P["b"], Q)))
    m.step(Tick(3.0, P))  # lease gone
    assert m.step(Received(3.1, "a", VoteRequest(2, "a", P["a"]))) == [Send("a", Vote(2, "c", False, None))]
    granted = m.step(Received(3.2, "a", VoteRequest(3, "a", P["a"])))
    assert granted == [Persist(3, "a", None), Send("a", Vote(3, "c", True, None))]


def test_a_leader_told_of_a_rival_of_its_term_stands_again() -> None:
    """A refusal naming another leader of our term (a partition's other side): stand again past it, a real election
    (was: a new term on the leader's word, which followers no longer take)."""
    leader = Election("a", P["a"], CFG, now=0.0)
    leader.step(Tick(1.3, {}))  # leads term 1 alone
    leader.step(Tick(1.35, P))  # b and c are back: its certificate {a} is a minority, it stands again at once
    assert leader.term == 2 and leader.is_leader and leader.accepted is None
    actions = leader.step(Received(1.4, "c", Vote(2, "c", False, "b")))  # c follows b: it is asked again next beat
    assert actions == [] and leader.is_leader
    won = leader.step(Received(1.45, "b", Vote(2, "b", True, None)))
    assert won[:2] == [Persist(2, "a", "a"), BecameLeader(2, frozenset({"a", "b"}))] and leader.cert == {"a", "b"}


def test_a_restarted_node_keeps_the_leader_it_accepted() -> None:
    m = Election("c", P["c"], CFG, now=0.0, term=2, vote=None, accepted="b")
    assert m.step(Received(0.1, "a", Announce(2, "a", P["a"], Q))) == [Send("a", Vote(2, "c", False, "b"))]
    assert m.step(Received(0.2, "b", Announce(2, "b", P["b"]))) == [BecameFollower(2, "b")]  # nothing new to persist
