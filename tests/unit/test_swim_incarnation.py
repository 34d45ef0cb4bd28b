"""Incarnations (agent.discovery.swim): a node's own authenticated word is taken however far it jumps, so a member
that pumps a node's incarnation (suspicions of it at inc+64: it refutes above each, as memberlist does) cannot
desync it from the others. ``SwimConfig.bounded_own_jump`` switches back to the rule before to show the checker
fails.
"""

from __future__ import annotations

from agent.discovery import swim as sw
from peerserve.wire import MemberUpdate, SwimMessage
from tests.unit.swim_sim import Sim
from tests.unit.test_swim_confirmers import cluster, from_member


def tell(sim: Sim, liar: str, target: str, update: MemberUpdate) -> None:
    s = sim.nodes[liar]
    msg = SwimMessage("gossip", liar, s.incarnation, s.version, s.self_url, (update,))
    sim._note(target, sim.nodes[target].received(msg, sim.now)[1])


def pumped(seed: int, **config: bool) -> tuple[int, list[int]]:
    """n1 tells n4 three times "you are suspect at your incarnation + 64": (n4's incarnation, the others' view of it
    2 s later)."""
    sim = Sim(10, seed=seed, loss=0.01, config=sw.SwimConfig(**config))
    sim.run(15)
    assert sim.converged()
    victim = sim.nodes["n4"]
    for _ in range(3):
        inc = victim.incarnation + sw.MAX_INC_JUMP
        tell(sim, "n1", "n4", MemberUpdate("n4", "suspect", inc, victim.self_url, 0, "n1"))
        sim.run(0.05)
    sim.run(2)
    return victim.incarnation, sorted({sim.nodes[n].records["n4"].incarnation for n in sim.nodes if n != "n4"})


def test_a_pumped_incarnation_reaches_every_member_from_the_node_itself() -> None:
    for seed in (2, 4):
        inc, others = pumped(seed)
        assert inc >= 3 * sw.MAX_INC_JUMP and others == [inc]  # it refuted above each; all took its own word
    # the checker fails under the rule before: a jump above 64 ignored even from the node, the others stay behind
    inc, others = pumped(2, bounded_own_jump=True)
    assert max(others) + sw.MAX_INC_JUMP < inc


def test_a_node_refutes_above_any_plausible_suspicion_of_it() -> None:
    """As memberlist's refute (max(own, accused) + 1): an agent restarted at incarnation 0 is remembered at its old
    one by the others (nothing persists it), and must refute their suspicions above that."""
    nodes = cluster()
    a, m = nodes["a"], nodes["m"]
    a.received(from_member(m, MemberUpdate("a", "suspect", 5, a.self_url, 0, "m")), 1.0)
    assert a.incarnation == 6
    a.received(from_member(m, MemberUpdate("a", "suspect", 6 + sw.MAX_INC_JUMP + 1, a.self_url, 0, "m")), 1.1)
    assert a.incarnation == 6  # an implausible one is no one's view of us: ignored
    a.received(from_member(m, MemberUpdate("a", "suspect", 2, a.self_url, 0, "m")), 1.2)
    assert a.incarnation == 6  # an older one is answered by our current incarnation (our own word to each member)


def test_a_far_alive_rumour_makes_us_probe_but_sets_nothing() -> None:
    nodes = cluster()
    a, b, m = nodes["a"], nodes["b"], nodes["m"]
    a.received(from_member(m, MemberUpdate("b", "alive", 10**6, b.self_url, 99)), 1.0)
    assert a.records["b"].incarnation == 0 and a.records["b"].claimed_version == 0
    assert sw.Probe("b", b.self_url) in a.tick(1.0)[0]  # b's own answer decides
