"""The election machine: one test per role transition, then simulated networks with faults."""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coordinator_election import (
    Announce,
    BecameFollower,
    BecameLeader,
    Broadcast,
    Election,
    ElectionConfig,
    Persist,
    Received,
    Renew,
    Role,
    Send,
    Tick,
    Vote,
    VoteRequest,
)
from coordinator_election.fencing import command_refusal
from tests.unit.election_sim import FAULTS, Network

CFG = ElectionConfig(heartbeat_s=0.3, election_timeout_s=1.2)
P = {n: (0, 1000.0 - i, n) for i, n in enumerate(["a", "b", "c"])}  # a is best
Q = frozenset(P)  # a quorum certificate every view here takes (each voter's grant verified by the shell)


def machine(node: str = "a", term: int = 0) -> Election:
    return Election(node, P[node], CFG, now=0.0, term=term)


def test_config_demands_timeout_over_three_heartbeats() -> None:
    with pytest.raises(ValueError):
        ElectionConfig(heartbeat_s=0.5, election_timeout_s=1.5)


def test_listens_before_standing() -> None:
    m = machine()
    assert m.step(Tick(1.0, P)) == []  # quiet period: election timeout after start
    assert m.role is Role.FOLLOWER


def test_follower_to_candidate_when_best_and_no_leader() -> None:
    m = machine()
    assert m.step(Tick(1.0, P)) == []
    actions = m.step(Tick(1.25, P))
    assert m.role is Role.CANDIDATE and m.term == 1
    assert actions == [Persist(1, "a"), Broadcast(VoteRequest(1, "a", P["a"]))]


def test_not_best_waits_then_skips_a_silent_best() -> None:
    m = machine("b")
    assert m.step(Tick(1.2, P)) == [] and m.role is Role.FOLLOWER  # a is better: wait for it
    assert m.step(Tick(2.0, P)) == []
    actions = m.step(Tick(2.4, P))  # a stayed silent for an election timeout: pass over it
    assert m.role is Role.CANDIDATE and actions == [Persist(1, "b"), Broadcast(VoteRequest(1, "b", P["b"]))]


def test_alone_wins_at_once() -> None:
    m = machine()
    actions = m.step(Tick(1.3, {}))
    assert m.role is Role.LEADER and actions[:2] == [Persist(1, "a", "a"), BecameLeader(1, frozenset({"a"}))]


def test_candidate_to_leader_on_majority() -> None:
    m = machine()
    m.step(Tick(1.3, P))
    assert m.step(Received(1.31, "b", Vote(1, "b", True, None))) == [
        Persist(1, "a", "a"),  # durable before its first command: it accepts itself for term 1
        BecameLeader(1, frozenset({"a", "b"})),
        Broadcast(Announce(1, "a", P["a"], frozenset({"a", "b"}))),  # with its certificate
    ]
    assert m.role is Role.LEADER and m.leader == "a"


def test_leader_renews_its_lease_every_heartbeat() -> None:
    m = machine()
    m.step(Tick(1.3, {}))
    assert m.step(Tick(1.4, {})) == []
    assert m.step(Tick(1.6, {})) == [Renew(Announce(1, "a", P["a"]))]  # gossip may carry it (not O(N) sends)


def test_a_renewal_holds_a_follower_for_lease_s() -> None:
    m = Election("b", P["b"], ElectionConfig(heartbeat_s=0.3, election_timeout_s=1.2, lease_s=2.0), now=0.0)
    m.step(Received(0.1, "a", Announce(1, "a", P["a"], Q)))
    assert m.leader == "a" and m.lease_until == pytest.approx(2.1)
    with pytest.raises(ValueError, match="lease_s"):
        ElectionConfig(heartbeat_s=0.3, election_timeout_s=1.2, lease_s=1.0)


def test_candidate_to_follower_when_refused_for_a_live_leader() -> None:
    m = machine()
    m.step(Tick(1.3, P))
    assert m.step(Received(1.31, "b", Vote(1, "b", False, "c"))) == [BecameFollower(1, None)]
    assert m.role is Role.FOLLOWER


def test_candidate_asks_again_and_ignores_refusals_naming_the_lost_leader() -> None:
    m = machine("b")
    m.step(Received(0.1, "a", Announce(1, "a", P["a"], Q)))
    m.step(Tick(1.4, {"b": P["b"], "c": P["c"]}))  # a silent and gone from the view: b is best
    assert m.role is Role.CANDIDATE and m._lost_leader == "a"
    assert m.step(Received(1.45, "c", Vote(2, "c", False, "a"))) == []  # c's lease on a runs out soon
    assert m.role is Role.CANDIDATE
    assert m.step(Tick(1.75, {"b": P["b"], "c": P["c"]})) == [Broadcast(VoteRequest(2, "b", P["b"]))]
    actions = m.step(Received(1.8, "c", Vote(2, "c", True, None)))
    assert m.role is Role.LEADER and actions[:2] == [Persist(2, "b", "b"), BecameLeader(2, frozenset({"b", "c"}))]


def test_candidate_times_out() -> None:
    m = machine()
    m.step(Tick(1.3, P))
    assert m.step(Tick(2.6, P)) == [BecameFollower(1, None)]


def test_announce_makes_a_follower_and_refreshes_its_lease() -> None:
    m = machine("b")
    assert m.step(Received(0.5, "a", Announce(3, "a", P["a"], Q))) == [Persist(3, None, "a"), BecameFollower(3, "a")]
    assert m.term == 3 and m.leader == "a"
    assert m.step(Tick(1.6, P)) == []  # lease valid until 1.7
    m.step(Received(1.6, "a", Announce(3, "a", P["a"])))  # a renewal: no certificate needed for the leader we accept
    assert m.step(Tick(2.7, P)) == [] and m.leader == "a"


def test_lease_expiry_drops_the_leader() -> None:
    m = machine("a")
    m.step(Received(0.1, "c", Announce(2, "c", P["c"], Q)))
    actions = m.step(Tick(1.4, P))  # lease expired at 1.3; a is best and stands at once
    assert m.leader is None
    assert m.role is Role.CANDIDATE and m.term == 3 and actions


def test_leader_steps_down_for_a_leader_a_majority_granted_a_newer_term() -> None:
    m = machine("a")
    m.step(Tick(1.3, {}))
    assert m.is_leader
    m.observe(P)
    # the best priority, but b holds a certificate of a newer term from a majority of a's view: b won
    assert m.step(Received(2.0, "b", Announce(5, "b", P["b"], frozenset({"b", "c"})))) == [
        Persist(5, None, "b"),
        BecameFollower(5, "b"),
    ]


def test_two_leaders_of_one_term_the_larger_certificate_keeps_leading() -> None:
    """A partition healed: a (best priority, elected alone) meets b, elected by b and c. a's certificate is a minority
    of its grown view and b's is larger: a stands down, b's certificate is a majority and b keeps leading."""
    m = machine("a")
    m.step(Tick(1.3, {}))
    m.observe(P)
    assert m.step(Received(2.0, "b", Announce(1, "b", P["b"]))) == [Send("b", Announce(1, "a", P["a"], {"a"}))]
    assert m.step(Received(2.1, "b", Announce(1, "b", P["b"], frozenset({"b", "c"})))) == [BecameFollower(1, None)]
    assert m.role is Role.FOLLOWER and m.accepted == "a"  # it never follows a rival of its own term
    winner = machine("b")
    winner.step(Tick(0.05, {"b": P["b"], "c": P["c"]}))
    winner.step(Tick(1.3, {"b": P["b"], "c": P["c"]}))
    winner.step(Received(1.31, "c", Vote(1, "c", True, None)))
    assert winner.is_leader and winner.cert == {"b", "c"}
    winner.observe(P)  # a is back in the view: b's certificate is still a majority (2 of 3), a's {a} is not
    actions = winner.step(Received(2.0, "a", Announce(1, "a", P["a"], frozenset({"a"}))))
    assert actions == [Send("a", Announce(1, "b", P["b"], frozenset({"b", "c"})))] and winner.is_leader


def test_equal_certificates_priority_breaks_the_tie_and_the_winner_stands_again() -> None:
    """Two leaders elected alone (a 1/1 split of two nodes): neither certificate is a majority of the healed view of
    two; the better priority keeps leading and stands again, the other stands down and grants it."""
    a, b = machine("a"), machine("b")
    for m in (a, b):
        m.step(Tick(1.3, {}))
    two = {n: P[n] for n in ("a", "b")}
    b.observe(two)
    assert b.step(Received(2.0, "a", Announce(1, "a", P["a"], frozenset({"a"})))) == [BecameFollower(1, None)]
    actions = a.step(Tick(2.0, two))  # a's view grew past its certificate: it stands again
    assert actions[:2] == [Persist(2, "a"), Broadcast(VoteRequest(2, "a", P["a"], frozenset({"a"}), 1))]
    assert a.is_leader and a.term == 2 and a.accepted is None
    assert b.step(Received(2.01, "a", actions[1].message)) == [Persist(2, "a"), Send("a", Vote(2, "b", True, None))]
    won = a.step(Received(2.02, "b", Vote(2, "b", True, None)))
    assert won[:2] == [Persist(2, "a", "a"), BecameLeader(2, frozenset({"a", "b"}))]
    assert b.step(Received(2.03, "a", won[2].message)) == [Persist(2, "a", "a"), BecameFollower(2, "a")]


def test_stale_leader_is_sent_the_certificate_of_the_newer_term() -> None:
    m = machine()
    m.step(Tick(1.3, {}))
    m.step(Received(1.4, "c", Announce(4, "c", P["c"], frozenset({"c"}))))  # a majority of a's view {a}? no: a leads
    m.step(Tick(3.0, {}))
    assert m.role is Role.LEADER and m.term == 1
    assert m.step(Received(3.2, "b", Announce(0, "b", P["b"]))) == [Send("b", Announce(1, "a", P["a"], {"a"}))]


def test_votes_once_per_term_and_not_while_following_a_live_leader() -> None:
    m = machine("c")
    m.step(Tick(0.05, P))
    assert m.step(Received(0.1, "a", VoteRequest(1, "a", P["a"]))) == [
        Persist(1, "a"),
        Send("a", Vote(1, "c", True, None)),
    ]
    assert m.step(Received(0.2, "b", VoteRequest(1, "b", P["b"]))) == [Send("b", Vote(1, "c", False, None))]
    m.step(Received(0.3, "a", Announce(1, "a", P["a"], Q)))
    assert m.step(Received(0.4, "b", VoteRequest(2, "b", P["b"]))) == [Send("b", Vote(2, "c", False, "a"))]
    assert m.step(Received(0.5, "b", VoteRequest(0, "b", P["b"]))) == [Send("b", Vote(1, "c", False, "a"))]


def test_higher_term_refusal_makes_a_candidate_follow() -> None:
    m = machine()
    m.step(Tick(1.3, P))
    assert m.step(Received(1.4, "b", Vote(7, "b", False, None))) == [Persist(7, None), BecameFollower(7, None)]


# -- simulated networks ------------------------------------------------------------------------------
def test_five_nodes_agree_on_the_best() -> None:
    net = Network(5)
    took = net.time_until_agreed(10)
    assert took is not None and took < 3
    assert net.agreed_leader() == "n4"  # equal memory: the highest id wins


def test_memory_decides_by_default() -> None:
    net = Network(4, memory={"n1": 8000.0})
    net.time_until_agreed(10)
    assert net.agreed_leader() == "n1"


def test_leader_crash_new_leader_everywhere_within_3_s() -> None:
    net = Network(5)
    net.time_until_agreed(10)
    net.crash("n4")
    took = net.time_until_agreed(10)
    assert took is not None and took < 3.0
    assert net.agreed_leader() == "n3"


def test_no_flapping_in_steady_state() -> None:
    net = Network(5)
    net.time_until_agreed(10)
    elections = len(net.leader_log)
    net.run(60)
    assert len(net.leader_log) == elections


def test_returning_node_causes_no_churn() -> None:
    net = Network(5)
    net.time_until_agreed(10)
    net.crash("n4")
    net.time_until_agreed(10)
    leader, term = net.agreed_leader(), net.nodes["n3"].term
    net.restart("n4")
    net.run(10)
    assert net.agreed_leader() == leader == "n3" and net.nodes["n3"].term == term


def test_partition_gives_each_side_a_leader_and_heal_leaves_one() -> None:
    net = Network(5)
    net.time_until_agreed(10)
    net.partition(["n0", "n1", "n2"], ["n3", "n4"])
    assert net.time_until_agreed(10, ["n0", "n1", "n2"]) is not None
    assert net.agreed_leader(["n3", "n4"]) == "n4"
    minority_term = net.nodes["n4"].term
    majority_leader = net.agreed_leader(["n0", "n1", "n2"])
    assert majority_leader == "n2" and net.nodes["n2"].term > minority_term
    majority_term = net.nodes["n2"].term
    net.heal()
    took = net.time_until_agreed(5)
    # the two leaders hear each other: n2's certificate (3 voters) is a majority of the healed view, n4's (2) is not;
    # n4 stands down, its followers' leases run out, and n2 stands again past n4's term with every vote
    assert took is not None and took < CFG.lease + 4 * CFG.heartbeat_s, took
    assert net.agreed_leader() == "n2"
    assert all(net.nodes[n].term > majority_term for n in net.ids)  # both sides' old commands are now fenced
    assert net.majority_violations() == [] and not net.double_votes()


def _voter_of(net: Network, leader: str) -> str:
    """The one node besides ``leader`` that voted for it (a three-node cluster's first election)."""
    (elected,) = (voters for n, voters in net.leader_log_voters() if n == leader)
    (voter,) = elected - {leader}
    return voter


def _isolated_quick_restart(persist: bool) -> Network:
    """A voter of the leader of term 1 is cut off, crashes and is back within 0.5 s, and stands alone."""
    net = Network(3, persist=persist)
    net.time_until_agreed(10)
    leader = net.agreed_leader()
    assert leader == "n2" and net.nodes[leader].term == 1
    voter = _voter_of(net, leader)
    net.isolate(voter)
    net.crash(voter)
    net.run(0.5)
    net.restart(voter)
    net.run(6)
    return net


def test_restart_restores_term_and_vote_so_a_voter_cannot_elect_twice() -> None:
    net = _isolated_quick_restart(persist=True)
    assert net.double_votes() == []
    alone = [n for n in net.leaders() if n != "n2"]
    assert alone and net.nodes[alone[0]].term == 2  # it stood in a new term: its term-1 vote was kept


def test_checker_finds_the_double_leader_when_persistence_is_off() -> None:
    net = _isolated_quick_restart(persist=False)  # the test-only fault: every Persist is lost
    (violation,) = net.double_votes()
    term, first, second, shared = violation
    assert term == 1 and first == "n2" and shared == {second}  # it voted for n2, then for itself, in term 1


def _chaos(seed: int, persist: bool) -> Network:
    """A seeded schedule of quick crash-restarts, partitions, heals and power cuts on five nodes."""
    rng = random.Random(seed)
    net = Network(5, seed=seed, persist=persist)
    net.run(2)
    for _ in range(25):
        kind, node = rng.choice(["restart", "restart", "partition", "heal", "power"]), rng.choice(net.ids)
        if kind == "restart":
            net.crash(node)
            net.run(rng.uniform(0.05, 0.9))
            net.restart(node)
        elif kind == "partition":
            ids = rng.sample(net.ids, len(net.ids))
            cut = rng.randint(1, len(ids) - 1)
            net.partition(ids[:cut], ids[cut:])
        elif kind == "heal":
            net.heal()
        else:
            net.power_cut()
        net.run(rng.uniform(0.2, 3.0))
    return net


def test_seeded_chaos_finds_double_leaders_only_without_persistence() -> None:
    without = (seed for seed in range(5) if _chaos(seed, persist=False).double_votes())
    # the checker bites when the property is switched off (3 of these 5 seeds; the first two are all it asks for)
    assert len(list(itertools.islice(without, 2))) >= 2
    assert all(_chaos(seed, persist=True).double_votes() == [] for seed in range(5))


def test_persist_always_precedes_the_sends_of_a_changed_term_or_vote() -> None:
    net = Network(5, seed=3)
    seen: list[tuple[str, list[object]]] = []
    original = net._carry_out
    net._carry_out = lambda n, actions: (seen.append((n, actions)), original(n, actions))[1]  # type: ignore[method-assign]
    net.run(3)
    net.crash("n4")
    net.run(4)
    for n, actions in seen:
        for i, action in enumerate(actions):
            if isinstance(action, Persist):
                assert i == 0, actions  # first in the list: durable before anything else goes out
        assert net.disk[n] == (net.nodes[n].term, net.nodes[n].vote, net.nodes[n].accepted) or n == "n4"


def test_a_frozen_leader_is_replaced_and_steps_down_when_it_thaws() -> None:
    net = Network(5)
    net.time_until_agreed(10)
    old_term = net.nodes["n4"].term
    net.pause("n4")  # SIGSTOP for longer than the election timeout (the chaos soak's pause_leader)
    net.run(2.5)
    assert net.agreed_leader([n for n in net.ids if n != "n4"]) == "n3"
    assert net.nodes["n4"].role is Role.LEADER  # frozen: it has not noticed yet
    net.resume("n4")  # it thaws with its old term and a backlog of messages
    took = net.time_until_agreed(3)
    assert took is not None and took < 1.0 and net.agreed_leader() == "n3"
    assert net.nodes["n4"].term > old_term and net.double_votes() == []


def _one_fault_at_a_time(seed: int, persist: bool, known: bool = False) -> Network:
    """The chaos soak's nemeses in the simulator, each ended before the next: the regression tier for it."""
    rng = random.Random(seed)
    net = Network(5, seed=seed, persist=persist, known=known)
    net.run(2)
    for _ in range(12):
        kind, node = rng.choice(["quick", "partition", "power", "pause", "kill"]), rng.choice(net.ids)
        if kind == "quick":
            net.crash(node)
            net.run(rng.uniform(0.05, 0.9))
            net.restart(node)
        elif kind == "partition":
            ids = rng.sample(net.ids, 5)
            net.partition(ids[2:], ids[:2])
            net.run(rng.uniform(2, 5))
            net.heal()
        elif kind == "power":
            net.power_cut()
        elif kind == "pause":
            net.pause(node)
            net.run(rng.uniform(1.8, 3))
            net.resume(node)
        else:
            net.crash(node)
            net.run(rng.uniform(2, 5))
            net.restart(node)
        net.run(rng.uniform(2, 5))
    return net


def test_one_fault_at_a_time_never_gives_a_term_two_leaders() -> None:
    nets = [_one_fault_at_a_time(seed, persist=True) for seed in range(8)]
    assert all(net.max_leaders_per_term() == 1 and net.fencing_violations() == [] for net in nets)
    # the same count catches the fault of lost writes (in some seed: any() stops at the first, seed 1 today, where
    # the list built all 8 runs only to ask whether it was empty)
    assert any(_one_fault_at_a_time(seed, persist=False).max_leaders_per_term() > 1 for seed in range(8))


def _check_invariants(net: Network) -> None:
    assert not net.double_votes(), f"a voter elected two leaders in a term: {net.double_votes()}"
    assert not net.fencing_violations(), f"a node obeyed two leaders in a term: {net.fencing_violations()[:3]}"


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.integers(2, 6),
    st.integers(0, 10_000),
    st.lists(
        st.tuples(st.sampled_from(FAULTS), st.integers(0, 5), st.floats(0.1, 3.0)),
        max_size=8,
    ),
)  # fmt: skip
def test_random_fault_schedules(size: int, seed: int, schedule: list[tuple[str, int, float]]) -> None:
    net = Network(size, seed=seed)
    net.run(2)
    for kind, who, duration in schedule:
        net.inject(kind, who)
        net.run(duration)
        _check_invariants(net)
    net.end_faults()  # faults end: the network heals and settles
    took = net.time_until_agreed(8)
    assert took is not None, [(n, net.nodes[n].role, net.nodes[n].term, net.nodes[n].leader) for n in net.ids]
    _check_invariants(net)
    leader = net.agreed_leader()
    net.run(10)
    assert net.agreed_leader() == leader  # and it stays: no flapping once stable


def test_two_nodes_that_each_passed_over_the_other_do_not_split_the_vote_forever() -> None:
    """Found by the property test above: n0 passed over the crashed n1; when n1 came back both thought
    themselves the best candidate, stood at the same instant every timeout and split the vote forever."""
    net = Network(2, seed=0)
    net.run(2)
    net.restart(net.ids[0])
    net.run(2.875)
    net.crash(net.ids[1])
    net.run(1.0)
    net.restart(net.ids[1])
    assert net.time_until_agreed(8) is not None
    _check_invariants(net)


# -- the first election after a restart, with the peers known before it ------------------------------------
def known_machine(node: str = "a", known: tuple[str, ...] = ("a", "b", "c")) -> Election:
    return Election(node, P[node], CFG, now=0.0, term=4, vote="b", known=frozenset(known))


def test_restart_with_every_known_peer_back_stands_after_two_heartbeats() -> None:
    m = known_machine()
    assert m.step(Tick(0.05, P)) == []  # all back from here on
    assert m.step(Tick(0.6, P)) == []  # not yet two heartbeats
    actions = m.step(Tick(0.65, P))  # no leader announced itself: no reason to wait out the timeout
    assert m.role is Role.CANDIDATE and actions == [Persist(5, "a"), Broadcast(VoteRequest(5, "a", P["a"]))]


def test_restart_with_a_known_peer_missing_listens_a_full_timeout() -> None:
    m = known_machine()
    without_c = {n: p for n, p in P.items() if n != "c"}
    assert m.step(Tick(0.65, without_c)) == [] and m.step(Tick(1.1, without_c)) == []
    assert m.step(Tick(1.25, without_c))[0] == Persist(5, "a")  # the usual listen period


def test_the_short_listen_restarts_when_a_known_peer_drops_out() -> None:
    m = known_machine()
    without_c = {n: p for n, p in P.items() if n != "c"}
    assert m.step(Tick(0.05, P)) == [] and m.step(Tick(0.5, without_c)) == []
    assert m.step(Tick(0.6, P)) == [] and m.step(Tick(1.15, P)) == []  # back at 0.6: 0.6 s more from there
    assert m.step(Tick(1.2, P))[0] == Persist(5, "a")


def test_a_leader_heard_during_the_short_listen_is_followed_and_nobody_stands() -> None:
    m = known_machine()
    m.step(Tick(0.05, P))
    assert m.step(Received(0.3, "b", Announce(4, "b", P["b"], Q))) == [Persist(4, "b", "b"), BecameFollower(4, "b")]
    assert m.step(Tick(0.7, P)) == [] and m.role is Role.FOLLOWER and m.leader == "b"


def test_only_the_first_listen_is_short() -> None:
    m = known_machine()
    m.step(Tick(0.05, P))
    assert m.step(Tick(0.65, P))[0] == Persist(5, "a")  # stood early; nobody answers
    assert m.step(Tick(1.85, P)) == [BecameFollower(5, None)]  # the candidacy timed out: listen again
    assert m.step(Tick(2.0, P)) == [] and m.step(Tick(3.0, P)) == []  # now for a full election timeout
    assert m.step(Tick(3.1, P))[0] == Persist(6, "a")


def test_without_known_peers_a_restart_listens_a_full_timeout() -> None:
    m = Election("a", P["a"], CFG, now=0.0, term=4, vote="b")
    assert m.step(Tick(0.05, P)) == [] and m.step(Tick(1.1, P)) == []
    assert m.role is Role.FOLLOWER


def test_power_cut_elects_within_a_second_when_the_peers_are_known() -> None:
    quick, slow = Network(5, known=True), Network(5)
    for net in (quick, slow):
        assert net.time_until_agreed(10) is not None
        net.power_cut()
    took_quick, took_slow = quick.time_until_agreed(10), slow.time_until_agreed(10)
    assert took_quick is not None and took_quick < 1.0
    assert took_slow is not None and took_slow >= CFG.election_timeout_s
    assert quick.max_leaders_per_term() == 1 and not quick.double_votes()


def test_known_peers_keep_one_leader_per_term_through_the_soak_nemeses() -> None:
    for seed in range(8):
        net = _one_fault_at_a_time(seed, persist=True, known=True)
        assert net.max_leaders_per_term() == 1 and not net.double_votes() and not net.fencing_violations(), seed


def test_a_node_joining_through_seeds_does_not_lead_itself_alone() -> None:
    joining = Election("a", P["a"], CFG, now=0.0, join_by=10.0)
    assert all(joining.step(Tick(t / 10, {})) == [] for t in range(1, 100))  # alone, still joining: no candidacy
    assert joining.role is Role.FOLLOWER
    assert BecameLeader(1, frozenset({"a"})) in joining.step(Tick(10.0, {}))  # nobody came: it founds one
    with_peer = Election("a", P["a"], CFG, now=0.0, join_by=10.0)
    actions = [a for t in range(1, 30) for a in with_peer.step(Tick(t / 10, {"b": P["b"]}))]
    assert Broadcast(VoteRequest(1, "a", P["a"])) in actions  # a member admitted: the usual election
    founder = Election("a", P["a"], CFG, now=0.0)  # no seeds: the first node founds the cluster after a listen
    assert BecameLeader(1, frozenset({"a"})) in founder.step(Tick(1.3, {}))


# -- leader stickiness: a higher term without votes behind it (review13a F1) -------------------------------------------
def _follower_of_a(node: str = "b") -> Election:
    m = machine(node)
    m.step(Tick(0.05, P))
    m.step(Received(0.1, "a", Announce(1, "a", P["a"], Q)))
    assert m.leader == "a" and m.term == 1
    return m


def test_a_follower_with_a_live_lease_ignores_a_higher_term_announce_from_anyone_else() -> None:
    m = _follower_of_a("b")
    # it says whom it follows, at what term (once a timeout: c learns of a at once after a heal, elect15 item 2)
    assert m.step(Received(0.5, "c", Announce(2, "c", P["c"]))) == [Send("c", Vote(1, "b", False, "a"))]
    assert (m.term, m.leader, m.accepted) == (1, "a", "a")
    assert m.step(Received(0.6, "c", Announce(1000, "c", P["c"]))) == []  # however far ahead
    assert m.step(Received(0.7, "c", Vote(5, "c", False, None))) == []  # nor unasked-for news of a newer term
    assert m.term == 1
    # our own leader's newer term without a certificate holds our lease on it, but is not accepted
    assert m.step(Received(0.8, "a", Announce(2, "a", P["a"]))) == [Send("a", Vote(2, "b", False, None))]
    assert (m.term, m.accepted) == (1, "a")  # it asks a for the certificate (once a timeout)
    assert m.step(Received(0.9, "a", Announce(2, "a", P["a"], Q))) == [Persist(2, None, "a"), BecameFollower(2, "a")]
    assert (m.term, m.leader) == (2, "a")


def test_once_the_lease_runs_out_a_certified_higher_term_leader_is_followed() -> None:
    m = _follower_of_a("b")
    assert m.step(Received(1.31, "c", Announce(2, "c", P["c"]))) == [Send("c", Vote(2, "b", False, None))]  # its word
    assert m.step(Received(1.32, "c", Announce(2, "c", P["c"], frozenset({"b", "c"})))) == [
        Persist(2, None, "c"),
        BecameFollower(2, "c"),
    ]


def test_a_certified_newer_leader_is_followed_despite_a_lease() -> None:
    """A majority of the view granted c a newer term: those voters held no lease on a, so a is no longer leading."""
    m = _follower_of_a("b")
    assert m.step(Received(0.5, "c", Announce(2, "c", P["c"], frozenset({"a", "c"})))) == [
        Persist(2, None, "c"),
        BecameFollower(2, "c"),
    ]


def test_a_lease_on_a_leader_gone_from_the_view_holds_nobody_back() -> None:
    m = _follower_of_a("c")
    m.step(Tick(0.2, {n: p for n, p in P.items() if n != "a"}))  # membership declared a dead
    # b and c are the view: b's grant alone is not a majority of two (c is told it follows no one), b's and c's are
    assert m.step(Received(0.3, "b", Announce(2, "b", P["b"], frozenset({"b"})))) == [
        Send("b", Vote(2, "c", False, None))
    ]
    assert m.step(Received(0.4, "b", Announce(2, "b", P["b"], frozenset({"b", "c"})))) == [
        Persist(2, None, "b"),
        BecameFollower(2, "b"),
    ]


def test_a_leader_is_not_unseated_by_a_lower_members_announce_of_a_higher_term() -> None:
    m = machine("a")
    m.step(Tick(1.3, {}))
    assert m.is_leader and m.term == 1
    m.observe(P)
    # c (lower priority) announces itself at term 2 without a certificate: a sends it its own and stays leader
    actions = m.step(Received(1.5, "c", Announce(2, "c", P["c"])))
    assert actions == [Send("c", Announce(1, "a", P["a"], frozenset({"a"})))] and m.term == 1 and m.is_leader
    # once per election timeout for each node: a second one within it is not answered
    assert m.step(Received(1.6, "c", Announce(4, "c", P["c"]))) == [] and m.term == 1 and m.is_leader
    # nor with c's own grant as its certificate (one voter, a's has as many and a better priority), nor on hearsay
    assert m.step(Received(2.8, "c", Announce(4, "c", P["c"], frozenset({"c"}))))[0] == Send("c", m_announce(m))
    assert m.step(Received(2.9, "b", Vote(9, "b", False, "c")))[1] == Broadcast(m_request(m))  # stands again
    assert m.is_leader and m.accepted is None and m.term == 10
    assert m.step(Received(3.0, "b", Vote(10, "b", True, None)))[1] == BecameLeader(10, frozenset({"a", "b"}))


def m_announce(m: Election) -> Announce:
    return Announce(m.led_term, m.node_id, m.priority, m.cert)


def m_request(m: Election) -> VoteRequest:
    return VoteRequest(m.term, m.node_id, m.priority, m.cert, m.led_term)


def test_the_announce_route_repro_no_member_takes_over_with_one_announce() -> None:
    """review13a announce_takeover.py with the real machines: L leads, a follows; m (lowest) announces T + 1."""
    prio = {"L": (0, 4000.0, "L"), "a": (0, 2000.0, "a"), "m": (0, 1000.0, "m")}
    cfg = ElectionConfig(heartbeat_s=0.3, election_timeout_s=1.2, lease_s=2.0)
    nodes = {n: Election(n, prio[n], cfg, now=0.0) for n in ("L", "a")}
    now = 1.3
    nodes["L"].step(Tick(now, prio))
    nodes["a"].step(Tick(now, prio))
    (won,) = [a for a in nodes["L"].step(Received(now, "a", Vote(1, "a", True, None))) if isinstance(a, Broadcast)]
    nodes["a"].step(Received(now, "L", won.message))  # with its certificate {L, a}
    assert nodes["L"].is_leader and nodes["a"].leader == "L"
    answers = {n: e.step(Received(now + 0.1, "m", Announce(2, "m", prio["m"]))) for n, e in nodes.items()}
    assert nodes["a"].accepted == "L" and nodes["a"].term == 1  # sticky: m's announce ignored
    assert nodes["L"].is_leader and nodes["L"].term == 1  # L keeps its term: it sends m its certificate, nothing more
    assert answers["L"] == [Send("m", Announce(1, "L", prio["L"], frozenset({"L", "a"})))]
    assert command_refusal(2, "m", nodes["a"].term, nodes["a"].accepted) is not None  # m leads nobody


def test_a_leader_back_from_a_freeze_yields_to_the_newer_term() -> None:
    m = machine("a")
    m.step(Tick(1.3, {}))
    assert m.is_leader and m.term == 1
    # frozen for longer than a lease: b may have been elected meanwhile; a, though better, stands down (no churn) and
    # asks b for its certificate, then follows it
    assert m.step(Received(4.0, "b", Announce(2, "b", P["b"]))) == [
        BecameFollower(1, None),
        Send("b", Vote(2, "a", False, None)),
    ]
    assert m.step(Received(4.1, "b", Announce(2, "b", P["b"], Q))) == [Persist(2, None, "b"), BecameFollower(2, "b")]
    m2 = machine("a")
    m2.step(Tick(1.3, {}))
    assert m2.step(Received(4.0, "c", Vote(3, "c", False, "b"))) == [Persist(3, None), BecameFollower(3, None)]


def test_a_leader_moves_past_vote_requests_at_most_once_per_election_timeout() -> None:
    """review13a F2: one member's vote requests made the leader take a new term (fsync, broadcast) on each one."""
    m = machine("a")
    m.step(Tick(1.3, {}))
    assert m.is_leader and m.term == 1
    first = m.step(Received(1.4, "c", VoteRequest(1, "c", P["c"])))
    assert first == [
        Persist(2, "a", "a"),
        BecameLeader(2, frozenset({"a"})),  # alone in its view: its own vote is a majority
        Broadcast(Announce(2, "a", P["a"], frozenset({"a"}))),
        Send("c", Vote(2, "a", False, "a")),
    ]
    # within the timeout: refused with the current term, nothing persisted or broadcast
    for t, term in [(1.5, 2), (2.0, 3), (2.5, 2)]:
        assert m.step(Received(t, "c", VoteRequest(term, "c", P["c"]))) == [Send("c", Vote(2, "a", False, "a"))]
    assert m.step(Received(2.55, "c", Vote(7, "c", False, None))) == []  # the refusal route too
    assert m.term == 2 and m.is_leader
    later = m.step(Received(2.6, "c", VoteRequest(2, "c", P["c"])))  # a timeout after the move: once more
    assert later[0] == Persist(3, "a", "a") and later[-1] == Send("c", Vote(3, "a", False, "a"))


def test_a_follower_with_a_live_leader_neither_grants_nor_moves_on_vote_requests() -> None:
    m = _follower_of_a("c")
    for t in (0.2, 0.3, 0.4):
        assert m.step(Received(t, "b", VoteRequest(2, "b", P["b"]))) == [Send("b", Vote(2, "c", False, "a"))]
    assert (m.term, m.vote, m.leader) == (1, None, "a")


def test_a_leader_elected_during_its_first_listen_still_follows_a_better_leader_of_a_newer_term() -> None:
    """A leader elected before its listen period ended (every known peer back) still has that period's lease time:
    stickiness is a follower's rule, so the better leader's newer term is followed, not ignored."""
    m = Election("b", P["b"], CFG, now=0.0, known=frozenset({"c"}))
    view = {n: P[n] for n in ("b", "c")}
    m.step(Tick(0.0, view))
    m.step(Tick(0.6, view))  # c back for two heartbeats: b (the best it sees) stands
    m.step(Received(0.65, "c", Vote(1, "c", True, None)))
    assert m.is_leader and m.lease_until > 0.7
    m.observe(P)  # a is back: a majority of this view (a and c) granted it a newer term
    assert m.step(Received(0.7, "a", Announce(2, "a", P["a"], frozenset({"a", "c"})))) == [
        Persist(2, None, "a"),
        BecameFollower(2, "a"),
    ]


def test_a_vote_for_a_newer_term_leaves_no_leader_named_for_it() -> None:
    """A follower whose lease ran out between ticks votes in a newer term: the old leader is not that term's."""
    m = _follower_of_a("c")
    actions = m.step(Received(1.35, "b", VoteRequest(2, "b", P["b"])))  # lease ended at 1.3, no tick since
    assert actions == [Persist(2, "b"), BecameFollower(2, None), Send("b", Vote(2, "c", True, None))]
    assert (m.term, m.leader, m.accepted, m.vote) == (2, None, None, "b")
