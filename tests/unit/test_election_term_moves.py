"""Which vote requests move a voter's term (docs/election.md, "Pre-vote: why not"): the parts of Raft's pre-vote
that stop a candidate that cannot win are already the voter's own checks, and what remains is the lease-less voter.

* a voter holding a lease on a live leader refuses, its term unmoved (no Persist, no fsync), whatever term is asked;
* so does a restarted voter whose expected peers are not all back, and a fresh board whose view still grows;
* a voter with no live leader (an election is on) takes the request's term and grants it: one Persist each. Raft's
  pre-vote would be granted there too (no leader, and no log to compare), and a member that skips it is not stopped:
  that is the cost the doc keeps.
(The peer route refuses before the machine: a sender that is not an alive member, 409, and a term more than
``MAX_TERM_AHEAD`` past ours, 409: tests/unit/test_election_rate.py, test_lease.py.)
"""

from __future__ import annotations

from coordinator_election import Announce, Election, ElectionConfig, Persist, Received, Send, Tick, Vote, VoteRequest
from coordinator_election.lease import MAX_TERM_AHEAD

CFG = ElectionConfig(heartbeat_s=0.3, election_timeout_s=1.2)
P = {n: (0, 1000.0 - i, n) for i, n in enumerate(["a", "b", "c"])}  # a is best
Q = frozenset(P)


def follower_of_a() -> Election:
    """c following a at term 1 (on a's certificate), its lease fresh at 0.2 s."""
    c = Election("c", P["c"], CFG, now=0.0)
    c.step(Tick(0.1, P))
    c.step(Received(0.2, "a", Announce(1, "a", P["a"], Q)))
    assert (c.term, c.leader, c.accepted) == (1, "a", "a")
    return c


def test_a_voter_holding_a_lease_on_a_live_leader_moves_no_term_for_any_request() -> None:
    c = follower_of_a()
    for i, term in enumerate((2, 50, 1 + MAX_TERM_AHEAD)):
        actions = c.step(Received(0.3 + 0.1 * i, "b", VoteRequest(term, "b", (9, 9e9, "b"))))
        assert actions == [Send("b", Vote(term, "c", False, "a"))]  # refused, naming its leader; nothing persisted
    assert (c.term, c.vote, c.accepted) == (1, None, "a")


def test_a_restarted_voter_waiting_for_its_peers_and_a_settling_board_move_no_term() -> None:
    restarted = Election("c", P["c"], CFG, now=0.0, term=3, accepted="a", known=frozenset({"a", "b"}))
    restarted.step(Tick(0.1, {"c": P["c"], "b": P["b"]}))  # a not back yet
    assert restarted.step(Received(0.2, "b", VoteRequest(9, "b", P["b"]))) == [Send("b", Vote(9, "c", False, None))]
    assert restarted.term == 3
    fresh = Election("c", P["c"], CFG, now=0.0, fresh=True)
    fresh.step(Tick(0.1, {"c": P["c"], "b": P["b"]}))  # its view grew just now
    assert fresh.step(Received(0.2, "b", VoteRequest(9, "b", P["b"]))) == [Send("b", Vote(9, "c", False, None))]
    assert fresh.term == 0


def test_a_lease_less_voter_takes_each_newer_term_asked_one_persist_each() -> None:
    """The cost docs/election.md keeps: with no live leader, each newer term a member asks is taken and persisted
    (the peer route bounds how often: ELECTION_RATE a second per member)."""
    c = follower_of_a()
    c.step(Tick(0.2 + CFG.lease + 0.1, P))  # a's lease ran out (a crashed): no live leader
    now = 0.2 + CFG.lease + 0.2
    assert c.step(Received(now, "b", VoteRequest(7, "b", P["b"]))) == [
        Persist(7, "b"),
        Send("b", Vote(7, "c", True, None)),
    ]
    assert c.step(Received(now + 0.2, "b", VoteRequest(8, "b", P["b"])))[0] == Persist(8, "b")
