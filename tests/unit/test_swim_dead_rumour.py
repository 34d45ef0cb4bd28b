"""A third party's dead or left rumour is a suspicion (agent.discovery.swim): our own miss starts its clock, the
node may refute, and the probes rumours ask for are rate-limited per member.

These tests run that rule (``SwimConfig.dead_rumour_verify=False``: one proven declarer's word, or any unproven
one, is a suspicion; two proven declarers take the fast path, tests/unit/test_swim_dead_quorum.py: the default);
the rule before (``dead_rumour_verify=True``: one missed probe of ours after any dead rumour makes the node dead at
once) and a zero ``_check_gap`` (unlimited check probes) show each checker fails.
"""

from __future__ import annotations

import pytest

from agent.discovery import swim as sw
from peerserve.wire import MemberUpdate, SwimMessage
from tests.unit.swim_sim import Sim
from tests.unit.test_swim_confirmers import cluster, from_member


def probes_of(instructions: list[sw.Instruction], node_id: str) -> list[sw.Probe]:
    return [i for i in instructions if isinstance(i, sw.Probe) and i.node_id == node_id]


@pytest.mark.parametrize("quorum", [0, 2])
def test_a_dead_or_left_rumour_opens_a_suspicion_the_node_can_refute(quorum: int) -> None:
    nodes = cluster(dead_rumour_verify=False, dead_quorum=quorum)
    a, b, m = nodes["a"], nodes["b"], nodes["m"]
    a.received(from_member(m, MemberUpdate("b", "dead", 0, b.self_url, 0, "m")), 1.0)
    sus = a.records["b"].suspicion
    assert a.status_of("b") == "suspect" and sus is not None and not sus.probed and sus.confirmers == {"m"}
    assert sus.declarers == (frozenset({"m"}) if quorum else frozenset())
    relayed = [u for u in a.message("gossip", "c1").updates if u.node_id == "b"]
    # passed on as the suspicion it is here; with a quorum, as m's declaration (others count m once, as we do)
    assert [(u.status, u.origin) for u in relayed] == [("dead", "m") if quorum else ("suspect", "m")]
    b.received(a.message("ping", "b"), 1.1)  # our message carries our suspicion of b: b refutes it
    assert b.incarnation == 1
    a.received(from_member(b), 1.2)
    assert a.status_of("b") == "alive" and a.records["b"].incarnation == 1
    # a relayed "left" (origin: the node itself) is a suspicion too, naming no suspecter
    a.received(from_member(m, MemberUpdate("b", "left", 1, b.self_url, 0, "b")), 2.0)
    sus = a.records["b"].suspicion
    assert a.status_of("b") == "suspect" and sus is not None and not sus.confirmers


def test_a_nodes_own_left_is_final_at_once() -> None:
    nodes = cluster()
    a, b = nodes["a"], nodes["b"]
    out = a.received(from_member(b, MemberUpdate("b", "left", 0, b.self_url, 0, "b")), 1.0)[1]
    assert a.records["b"].status == "left" and [t.new for t in out if t.node_id == "b"] == ["alive", "dead"][1:]


@pytest.mark.parametrize("old_rule", [False, True])
def test_our_verify_miss_of_a_rumour_starts_our_clock(old_rule: bool) -> None:
    nodes = cluster(dead_rumour_verify=old_rule)
    a, b, m = nodes["a"], nodes["b"], nodes["m"]
    a.received(from_member(m, MemberUpdate("b", "dead", 0, b.self_url, 0, "m")), 1.0)
    at = 1.0 if old_rule else 1.0 + a.suspicion_timeout(0) + 0.01  # the rule before: checked at once
    assert probes_of(a.tick(at)[0], "b") == [sw.Probe("b", b.self_url, verify=True)]
    out = a.probe_result("b", None, 0, at + 1.2, verify=True, sent=at)
    if old_rule:  # the checker: under the rule before, that one miss made b dead
        assert [t.new for t in out] == ["dead"]
        return
    sus = a.records["b"].suspicion
    assert a.status_of("b") == "suspect" and sus is not None and sus.probed and sus.started == at + 1.2
    assert a.tick(at + 1.3)[1] == []  # the normal timeout runs from our own miss
    end = at + 1.2 + a.suspicion_timeout(sus.confirmations())
    assert [t.new for t in a.tick(end + 0.01)[1]] == ["dead"]


@pytest.mark.parametrize("unlimited", [False, True])
def test_dead_rumours_set_no_probe_rate(unlimited: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """m sends "b dead" every 10 ms for 5 s; a ticks every 10 ms; no probe of b is ever answered."""
    if unlimited:  # the rule before: a verify probe every tick while one runs
        monkeypatch.setattr(sw.Swim, "_check_gap", lambda self: 0.0)
    nodes = cluster(dead_rumour_verify=False)
    a, b, m = nodes["a"], nodes["b"], nodes["m"]
    sent: list[sw.Probe] = []
    for step in range(1, 501):
        now = round(step * 0.01, 6)
        a.received(from_member(m, MemberUpdate("b", "dead", a.records["b"].incarnation, b.self_url, 0, "m")), now)
        sent += [p for p in probes_of(a.tick(now)[0], "b") if p.verify]  # those the rumours asked for
    if unlimited:
        assert len(sent) >= 100  # the checker: one per tick once its suspicion ran out
    else:  # its unconfirmed timeout (2.7 s here), then one verify probe per probe length (1.2 s)
        assert 1 <= len(sent) <= 5 / (3 * a.probe_timeout()) + 1
    assert a.records["b"].status == "suspect"  # and no rumour made it dead


def test_a_verify_probe_is_not_repeated_while_one_runs() -> None:
    nodes = cluster()
    a, b, m = nodes["a"], nodes["b"], nodes["m"]
    a.received(from_member(m, MemberUpdate("b", "suspect", 0, b.self_url, 0, "m")), 1.0)
    start = 1.0 + a.suspicion_timeout(0) + 0.01
    verifies = []
    for step in range(100):  # a second of ticks after its timeout ran out
        verifies += [p for p in probes_of(a.tick(round(start + step * 0.01, 6))[0], "b") if p.verify]
    assert len(verifies) == 1  # the rule before sent one every tick until the first came back
    assert a.next_due(start + 0.5) > start + 0.5  # nor does the shell spin meanwhile (the rule before: due now)


def test_a_crash_is_still_detected_everywhere_within_the_suspicion_timeouts() -> None:
    """A real crash in 10 nodes: every live member declares it dead (the first one's own probe, the others' own
    misses with its signed suspicion), within a probe round, the probe, and the unconfirmed timeout."""
    for seed in (1, 2):
        sim = Sim(10, seed=seed, loss=0.01)
        sim.run(15)
        assert sim.converged()
        sim.crash("n5")
        start = sim.now
        node = sim.nodes["n0"]
        bound = 10 * node.config.probe_interval_s + 3 * node.probe_timeout() + node.suspicion_timeout(0)
        sim.run(bound)
        assert all(sim.view(o, "n5") == "dead" for o in sim.live()), seed
        assert max(t for t, _o, v in sim.deaths if v == "n5") - start <= bound
        assert sim.false_deaths() == []


def test_a_gossiped_dead_about_ourselves_is_refuted() -> None:
    nodes = cluster()
    a, m = nodes["a"], nodes["m"]
    a.received(SwimMessage("gossip", "m", 0, 0, m.self_url, (MemberUpdate("a", "dead", 0, a.self_url, 0, "m"),)), 1.0)
    assert a.incarnation == 1
