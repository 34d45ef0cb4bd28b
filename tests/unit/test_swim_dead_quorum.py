"""A third party's "dead" acts at once only from two proven declarers (agent.discovery.swim ``dead_quorum``).

A dead update's ``origin`` counts as a declarer only when proven: the origin sent it itself, or its signed
declaration (``wire.SuspectProof`` with ``dead``, ``SwimMessage.dead_proofs``: agent.discovery.swim_proofs) rides on
the same message. One proven declarer: a suspicion like any other (the node may refute). ``dead_quorum`` (2) distinct
declarers other than the node and ourselves: the fast path (probe now, one miss of ours kills). Real keys for the
signatures; the rules before (``dead_rumour_verify``, ``dead_quorum_own``) switched on to show each checker fails.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import pytest

from agent.discovery import swim as sw
from agent.discovery import swim_proofs
from agent.discovery.swim_io import SwimDriver
from agent.discovery.swim_proofs import ProofBook
from agent.identity import WINDOW_S
from peerserve import wire
from peerserve.wire import MAX_PROOFS, MemberUpdate, SuspectProof, SwimMessage
from tests.unit import swim_proof_kit as kit
from tests.unit.swim_proof_kit import IDS, PAST_GATE, Clock, gossip, own_proof, resigned, suspect
from tests.unit.swim_sim import Sim, url_of
from tests.unit.test_swim_confirmers import cluster, from_member

RULE: dict[str, Any] = {"dead_rumour_verify": False, "dead_quorum": 2}  # the quorum rule (the default, spelled out)


def dead(origin: str, inc: int = 0, about: str = "x") -> MemberUpdate:
    return MemberUpdate(about, "dead", inc, url_of(9), 0, origin)


def own_dead_proof(origin: str, clock: Clock, inc: int = 0) -> SuspectProof:
    """``origin``'s own signed declaration that x is dead, as its book attaches it to a message of its own."""
    msg = ProofBook(IDS[origin], clock, dead=True).attach(gossip(origin, dead(origin, inc)))
    [proof] = msg.dead_proofs
    return proof


def declared_dead(a: sw.Swim, victim: str, origin: str) -> MemberUpdate:
    return MemberUpdate(victim, "dead", a.records[victim].incarnation, a.records[victim].peer_url, 0, origin)


def verify_probes(a: sw.Swim, victim: str, now: float) -> list[sw.Probe]:
    return [i for i in a.tick(now)[0] if isinstance(i, sw.Probe) and i.node_id == victim and i.verify]


# -- the core -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("rule", ["quorum", "verify", "quorum+own"])
def test_one_members_declaration_signed_relayed_and_replayed_kills_no_stalled_node(rule: str) -> None:
    config = {"quorum": RULE, "verify": {"dead_rumour_verify": True}, "quorum+own": {**RULE, "dead_quorum_own": True}}[
        rule
    ]
    nodes = cluster(**config)
    a, b, m = nodes["a"], nodes["b"], nodes["m"]
    lie = declared_dead(a, "b", "m")
    a.received(from_member(m, lie), 1.0)  # m's own word
    for relay in ("c1", "c2", "c3"):  # m's genuine signature relayed by every other member, again and again
        for _ in range(3):
            a.received(from_member(nodes[relay], lie), 1.0, declared=[("b", 0, "m")])
    if rule == "verify":  # the checker: the rule before probes at once and one miss kills
        assert verify_probes(a, "b", 1.01)
        assert [t.new for t in a.probe_result("b", None, 0, 2.2, verify=True, sent=1.01)] == ["dead"]
        return
    sus = a.records["b"].suspicion
    assert a.status_of("b") == "suspect" and sus is not None and sus.declarers == {"m"} and not sus.probed
    assert verify_probes(a, "b", 1.01) == []  # one declarer: no fast path
    out = a.probe_result("b", None, 0, 2.2, sent=1.0)  # b stalls: our own probe (and k relays) miss it too
    if rule == "quorum+own":  # the checker: our own miss counted as the second declarer, b dead at once
        assert [t.new for t in out] == ["dead"]
        return
    assert out == [] and a.status_of("b") == "suspect"  # only our own clock now runs (from our miss)
    b.received(a.message("ping", "b"), 2.4)  # our message carries our suspicion of b: b refutes it
    a.received(from_member(b), 2.5)
    assert a.status_of("b") == "alive" and a.records["b"].incarnation == 1
    a.received(from_member(m, lie), 2.6)  # the replay at b's old incarnation is nothing now
    assert a.status_of("b") == "alive" and a.records["b"].suspicion is None


def test_two_members_proven_declarations_take_the_fast_path() -> None:
    nodes = cluster(**RULE)
    a, b, m, c2 = nodes["a"], nodes["b"], nodes["m"], nodes["c2"]
    a.received(from_member(m, declared_dead(a, "b", "m")), 1.0)  # m's own word
    a.received(from_member(c2, declared_dead(a, "b", "c1")), 1.1, declared=[("b", 0, "c1")])  # c1's, signed
    sus = a.records["b"].suspicion
    assert sus is not None and sus.declarers == {"m", "c1"}
    assert verify_probes(a, "b", 1.11) == [sw.Probe("b", b.self_url, verify=True)]
    out = a.probe_result("b", None, 0, 2.3, verify=True, sent=1.11)
    assert [t.new for t in out] == ["dead"] and "declared dead by enough members" in out[0].reason
    relayed = [u for u in a.message("gossip", "c3").updates if u.node_id == "b"]
    assert [(u.status, u.origin) for u in relayed] == [("dead", "a")]  # now our own declaration (signed by us)


def test_with_our_own_miss_in_hand_the_second_declarer_kills_at_once() -> None:
    nodes = cluster(**RULE)
    a, m, c1 = nodes["a"], nodes["m"], nodes["c1"]
    a.probe_result("b", None, 0, 1.0, sent=0.5)  # our own probe and its relays missed b: our suspicion, our clock
    a.received(from_member(m, declared_dead(a, "b", "m")), 1.1)
    assert a.status_of("b") == "suspect"  # one declarer and our own miss: still only our clock (not the fast path)
    out = a.received(from_member(c1, declared_dead(a, "b", "c1")), 1.2)[1]
    assert [t.new for t in out] == ["dead"]  # our miss since b last spoke to us is the fast path's miss


def test_the_fast_path_probe_answered_clears_the_declarations() -> None:
    nodes = cluster(**RULE)
    a, b, m, c1 = nodes["a"], nodes["b"], nodes["m"], nodes["c1"]
    a.received(from_member(m, declared_dead(a, "b", "m")), 1.0)
    a.received(from_member(c1, declared_dead(a, "b", "c1")), 1.0)
    assert verify_probes(a, "b", 1.01)
    ack = b.received(a.message("ping", "b"), 1.05)[0]
    assert ack is not None
    a.probe_result("b", ack, 0, 1.06, verify=True, sent=1.01)
    assert a.status_of("b") == "alive" and a.records["b"].suspicion is None
    a.received(from_member(m, declared_dead(a, "b", "m")), 1.5)  # b refuted (incarnation 1): m must say it again
    sus = a.records["b"].suspicion
    assert sus is not None and sus.declarers == {"m"} and verify_probes(a, "b", 1.51) == []


def test_claimed_origins_the_node_itself_and_ourselves_are_no_declarers() -> None:
    nodes = cluster(**RULE)
    a, m = nodes["a"], nodes["m"]
    names = ("m", "c1", "c2", "c3", "b", "a", "ghost")  # m names everyone (and a non-member) in one message
    a.received(from_member(m, *(declared_dead(a, "b", o) for o in names)), 1.0)
    sus = a.records["b"].suspicion
    assert sus is not None and sus.declarers == {"m"}  # only m's own word is proven
    assert verify_probes(a, "b", 1.01) == []
    # a signature "proving" the node's or our own declaration does not count either (the shell would never pass
    # one: it is not worth a check, declaration_age says)
    a.received(from_member(m, declared_dead(a, "b", "b"), declared_dead(a, "b", "a")), 1.1,
               declared=[("b", 0, "b"), ("b", 0, "a")])  # fmt: skip
    assert sus == a.records["b"].suspicion
    assert a.declaration_age("b", 0, "b", 1.2) is None and a.declaration_age("b", 0, "a", 1.2) is None
    assert a.declaration_age("b", 0, "ghost", 1.2) is None and a.declaration_age("ghost", 0, "m", 1.2) is None


def test_a_nodes_own_left_stays_final_at_once_and_a_relayed_left_is_a_suspicion() -> None:
    nodes = cluster(**RULE)
    a, b, m = nodes["a"], nodes["b"], nodes["m"]
    a.received(from_member(m, MemberUpdate("b", "left", 0, b.self_url, 0, "b")), 1.0)
    sus = a.records["b"].suspicion
    assert a.status_of("b") == "suspect" and sus is not None and not sus.declarers and not sus.confirmers
    out = a.received(from_member(b, MemberUpdate("b", "left", 0, b.self_url, 0, "b")), 1.1)[1]
    assert a.records["b"].status == "left" and out[-1].new == "dead"  # (its message spoke for it first: alive)


@pytest.mark.parametrize("quorum", [2, 3])
def test_declarers_are_bounded_by_the_quorum_which_is_a_setting(quorum: int) -> None:
    nodes = cluster(**{**RULE, "dead_quorum": quorum})
    a = nodes["a"]
    fast = []
    for i, origin in enumerate(("m", "c1", "c2", "c3")):
        a.received(from_member(nodes[origin], declared_dead(a, "b", origin)), 1.0 + i)
        fast.append(bool(verify_probes(a, "b", 1.0 + i + 0.01)))
    sus = a.records["b"].suspicion
    assert sus is not None and len(sus.declarers) == quorum  # no more are kept once it is reached
    assert fast.index(True) == quorum - 1
    assert a.declaration_age("b", 0, "c3", 5.0) is None  # nor are more proofs worth a check


def test_declarations_for_a_refuted_incarnation_are_ignored_and_not_worth_a_check() -> None:
    nodes = cluster(**RULE)
    a, b, m, c1 = nodes["a"], nodes["b"], nodes["m"], nodes["c1"]
    b.incarnation = 1
    a.received(from_member(b), 1.0)  # b refuted something: incarnation 1
    for origin in (m, c1):
        a.received(from_member(origin, MemberUpdate("b", "dead", 0, b.self_url, 0, origin.self_id)), 1.1)
    assert a.status_of("b") == "alive" and a.records["b"].suspicion is None
    assert a.declaration_age("b", 0, "c1", 1.2) is None and a.declaration_age("b", 1, "c1", 1.2) == 0.0


# -- the signatures (real keys) ----------------------------------------------------------------------------
def test_a_dead_declaration_is_signed_under_its_own_context_and_only_by_its_origin() -> None:
    clock = Clock()
    receiver = ProofBook(IDS["b"], clock, dead=True, started=PAST_GATE)
    proof = own_dead_proof("c1", clock)
    assert proof.dead and SwimMessage.parse(gossip("c1", dead("c1"), proofs=()).to_json()) == gossip("c1", dead("c1"))
    msg = replace(gossip("m", dead("c1")), dead_proofs=(proof,))
    assert SwimMessage.parse(msg.to_json()) == msg and "dead_proofs" in msg.to_json()
    assert receiver.check(msg) == [("x", 0, "c1")]
    # c1's suspicion signature passed off as its declaration (and the reverse) proves nothing
    as_dead = replace(own_proof("c2", clock), dead=True)
    assert (
        ProofBook(IDS["b"], clock, dead=True, started=PAST_GATE).check(
            replace(gossip("m", dead("c2")), dead_proofs=(as_dead,))
        )
        == []
    )
    as_suspicion = replace(own_dead_proof("c2", clock), dead=False)
    assert ProofBook(IDS["b"], clock, started=PAST_GATE).check(gossip("m", suspect("c2"), proofs=(as_suspicion,))) == []
    # m signs with its own key and names c3 (it cannot sign as another: a card names one node)
    forged = resigned(replace(own_dead_proof("m", clock), origin="c3"), "m")
    book = ProofBook(IDS["b"], clock, dead=True, started=PAST_GATE)
    assert book.check(replace(gossip("m", dead("c3")), dead_proofs=(forged,))) == [] and book.refused == 1


def test_proofs_and_declarations_share_the_bound_per_message() -> None:
    clock = Clock()
    ours = ProofBook(IDS["b"], clock, dead=True, started=PAST_GATE)
    updates = [*(dead("b", about=f"n{i}") for i in range(3)), *(suspect("b", about=f"s{i}") for i in range(3))]
    msg = ProofBook(IDS["b"], clock).attach(ours.attach(gossip("b", *updates)))
    assert len(msg.dead_proofs) == 3 and len(msg.proofs) == MAX_PROOFS - 3
    over = {**msg.to_json(), "dead_proofs": [p.to_json() for p in msg.dead_proofs] * 2}
    with pytest.raises(wire.WireError):
        SwimMessage.parse(over)
    verified: list[int] = []
    book = ProofBook(IDS["c1"], clock, dead=True, started=PAST_GATE)
    real = book.identity.verify_detached
    book.identity.verify_detached = lambda *a: verified.append(1) or real(*a)  # type: ignore[method-assign]
    book.check(SwimMessage.parse(msg.to_json()))
    assert len(verified) <= MAX_PROOFS  # a message costs at most MAX_PROOFS verifications


def driver(**config: Any) -> SwimDriver:
    """Node b's real driver (the quorum rule) with m, c1-c3 and x as members."""
    return kit.swim_driver(sw.SwimConfig(**{**RULE, **config}))


def declarers_after(*signers: str, forged_by: str | None = None) -> tuple[frozenset[str], bool]:
    """m relays the declarations of c1, c2 (with the signatures of ``signers``): (b's declarers of x, fast path?)."""
    d = driver()
    d.dead_proofs.wall = clock = Clock()
    proofs = kit.signed_by(signers, own_dead_proof, clock, forged_by)
    sus = kit.suspicion_after(d, replace(gossip("m", dead("c1"), dead("c2")), dead_proofs=proofs))
    return sus.declarers, bool(d.core._urgent.get("x"))


def test_the_driver_counts_a_relayed_declarer_only_with_its_origins_signature() -> None:
    assert declarers_after("c1", "c2") == ({"c1", "c2"}, True)  # two signed declarations, relayed: the fast path
    assert declarers_after("c1") == ({"c1"}, False)
    assert declarers_after() == (frozenset(), False)  # claims alone: hearsay
    assert declarers_after("c1", "c2", forged_by="m") == (frozenset(), False)  # m cannot sign as c1 or c2


def test_we_sign_a_declaration_only_of_a_node_we_hold_dead_ourselves() -> None:
    d = driver()
    clock = Clock()
    d.dead_proofs.wall = clock
    claim = gossip("b", dead("b"))
    assert d.dead_proofs.attach(claim).dead_proofs == ()  # x is alive here: nothing to sign
    d.core._declare_dead(d.core.records["x"], d.clock(), "test: our own suspicion ran out")
    [proof] = d.dead_proofs.attach(d.core.message("gossip", "m")).dead_proofs
    assert (proof.node_id, proof.origin, proof.dead) == ("x", "b", True)
    assert ProofBook(IDS["c1"], clock, dead=True, started=PAST_GATE).check(replace(claim, dead_proofs=(proof,))) == [
        ("x", 0, "b")
    ]


def test_a_replayed_declaration_from_a_cleared_episode_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    d = driver()
    clock = Clock()
    d.dead_proofs.wall = d.dead_proofs.mono = clock  # x alive: the core's age of the episode is 0 on any clock
    old = own_dead_proof("c1", clock)  # c1's genuine declaration from an earlier episode at incarnation 0
    carried = replace(gossip("m", dead("c1")), dead_proofs=(old,))
    assert d.dead_proofs.check(carried) == [("x", 0, "c1")]
    clock.t += 10  # x answered in between (no new incarnation); m replays c1's declaration to make a quorum
    d.dead_proofs.held.clear()
    assert d.dead_proofs.check(carried) == []
    monkeypatch.setattr(swim_proofs, "EPISODE_SKEW_S", WINDOW_S)  # any fresh proof would count ...
    assert d.dead_proofs.check(carried) == []  # ... but it counted here before: refused
    fresh = replace(gossip("m", dead("c1")), dead_proofs=(own_dead_proof("c1", clock),))
    assert d.dead_proofs.check(fresh) == [("x", 0, "c1")]  # c1's new declaration counts


def test_the_dead_book_is_bounded_and_made_up_nodes_are_never_verified(monkeypatch: pytest.MonkeyPatch) -> None:
    d = driver()
    clock = Clock()
    d.dead_proofs.wall = clock
    liar = ProofBook(IDS["m"], clock, dead=True, started=PAST_GATE)
    for i in range(0, 2 * swim_proofs.MAX_HELD, 4):  # declarations of nodes that do not exist: never verified
        asyncio.run(d.handle("m", liar.attach(gossip("m", *(dead("m", about=f"ghost{j + i}") for j in range(4))))))
    for inc in range(1, 9):  # x at ever new incarnations: one entry per (member, origin)
        asyncio.run(d.handle("m", liar.attach(gossip("m", dead("m", inc)))))
    assert len(d.dead_proofs.held) <= 1 and d.dead_proofs.checked <= 8
    monkeypatch.setattr(swim_proofs, "MAX_HELD", 3)
    book = ProofBook(IDS["b"], clock, dead=True, started=PAST_GATE)
    for i in range(6):
        book.attach(gossip("b", dead("b", about=f"n{i}")))
    assert len(book.held) == 3


def test_metrics_count_checked_and_refused_declarations() -> None:
    from collections import Counter
    from types import SimpleNamespace

    from agent.discovery.metrics import MembershipCollector

    d = driver()
    clock = Clock()
    d.dead_proofs.wall = clock
    good = own_dead_proof("c1", clock)
    bad = replace(own_dead_proof("c2", clock), signature=good.signature)
    asyncio.run(d.handle("m", replace(gossip("m", dead("c1"), dead("c2")), dead_proofs=(good, bad))))
    # adverts by outcome (no mDNS here), no revocation list (the token-only mode)
    discovery = SimpleNamespace(swim=d, peers=d.peers, mdns=Counter(), revocations=None)
    samples = {(x.name, tuple(x.labels.items())): x.value for m in MembershipCollector(discovery).collect()  # type: ignore[arg-type]
               for x in m.samples}  # fmt: skip
    name = "peerserve_membership_dead_proofs_total"
    assert samples[(name, (("outcome", "checked"),))] == 1 and samples[(name, (("outcome", "refused"),))] == 1


# -- the simulated cluster ---------------------------------------------------------------------------------
def dead_everywhere(seed: int, **config: Any) -> float:
    """A crash in 10 nodes: seconds until every live member declared it dead."""
    sim = Sim(10, seed=seed, loss=0.01, config=sw.SwimConfig(**config))
    sim.run(15)
    assert sim.converged()
    sim.crash("n5")
    start = sim.now
    while not all(sim.view(o, "n5") == "dead" for o in sim.live()):
        sim.run(0.02)
        assert sim.now - start < 15
    assert sim.false_deaths() == []
    return sim.now - start


def test_a_crash_is_dead_everywhere_sooner_than_under_the_suspicion_rule() -> None:
    """Same seeds: the quorum rule against the rule that takes every dead rumour as a suspicion (dead_quorum=0)."""
    for seed in (1, 2):
        quorum, suspicion = dead_everywhere(seed, **RULE), dead_everywhere(seed, **{**RULE, "dead_quorum": 0})
        assert quorum < suspicion - 0.3, (seed, quorum, suspicion)


def test_the_dead_books_refused_and_spent_memories_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(swim_proofs, "MAX_REFUSED", 3)
    monkeypatch.setattr(swim_proofs, "MAX_SPENT_KEYS", 3)
    monkeypatch.setattr(swim_proofs, "MAX_SPENT_PER_KEY", 2)
    clock = Clock()
    book = ProofBook(IDS["b"], clock, dead=True, started=PAST_GATE)
    for i in range(6):  # m signs in six others' names: each refused, the memory of refusals bounded
        forged = resigned(replace(own_dead_proof("m", clock), origin="c1", node_id=f"n{i}"), "m")
        assert book.check(replace(gossip("m", dead("c1", about=f"n{i}")), dead_proofs=(forged,))) == []
    assert book.refused == 6 and len(book._refused) == 3
    for i in range(6):  # c1's declarations of six members, three times each (signed anew every time)
        for _ in range(3):
            clock.t += 1.0
            proof = ProofBook(IDS["c1"], clock, dead=True).attach(gossip("c1", dead("c1", about=f"n{i}")))
            carried = replace(gossip("c1", dead("c1", about=f"n{i}")), dead_proofs=proof.dead_proofs)
            assert book.check(carried) != []
    assert len(book._spent) == 3 and all(len(v) == 2 for v in book._spent.values())


def test_the_agent_setting_switches_the_rule_and_is_bounded(tmp_path: Any) -> None:
    from agent.errors import ConfigError
    from agent.settings import load_settings

    base = {"PEERSERVE_DATA_DIR": str(tmp_path)}
    assert load_settings(None, env=base).dead_quorum == 2  # the quorum rule is the default (50 agents: p99 2.16 s)
    assert load_settings(None, env={**base, "PEERSERVE_DEAD_QUORUM": "0"}).dead_quorum == 0  # the rule before
    with pytest.raises(ConfigError):
        load_settings(None, env={**base, "PEERSERVE_DEAD_QUORUM": "17"})


def test_declarers_at_one_address_count_once_loopback_ones_each() -> None:
    """review14b F2: ids minted with the cluster token at one host met ``dead_quorum`` alone. Declarers count by their
    address as admitted: m and its minted c1 at one address are one declarer; c2 at its own is the second. At a
    loopback address (the one-host demo) each id still counts, as pins exempt it."""
    nodes = cluster(**RULE)
    a = nodes["a"]
    for node, address in (("m", "10.9.9.9"), ("c1", "10.9.9.9"), ("c2", "10.9.9.10")):
        a.records[node] = replace(a.records[node], address=address)
    a.received(from_member(nodes["m"], declared_dead(a, "b", "m")), 1.0)
    a.received(from_member(nodes["c1"], declared_dead(a, "b", "c1")), 1.1)
    sus = a.records["b"].suspicion
    assert sus is not None and sus.declarers == {"m"} and verify_probes(a, "b", 1.11) == []
    assert a.declaration_age("b", 0, "c1", 1.2) is None  # nor is its proof worth a check
    a.received(from_member(nodes["c2"], declared_dead(a, "b", "c2")), 1.3)
    assert verify_probes(a, "b", 1.31) == [sw.Probe("b", nodes["b"].self_url, verify=True)]
    demo = cluster(**RULE)
    for node in ("m", "c1"):
        demo["a"].records[node] = replace(demo["a"].records[node], address="127.0.0.1")
    demo["a"].received(from_member(demo["m"], declared_dead(demo["a"], "b", "m")), 1.0)
    demo["a"].received(from_member(demo["c1"], declared_dead(demo["a"], "b", "c1")), 1.1)
    assert verify_probes(demo["a"], "b", 1.11)  # two loopback ids: two declarers
