"""The pure SWIM core (agent.discovery.swim): trust rules, bounds, and whole-cluster properties in simulation."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from agent.discovery import swim as sw
from agent.discovery.swim_io import LOAD_UPDATE_S, fingerprint, version_due
from peerserve.wire import MemberUpdate, SwimMessage, WireError
from tests.unit.swim_sim import Sim, state_of, url_of

FAST = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def node(name: str = "n0", i: int = 0, **config: float) -> sw.Swim:
    return sw.Swim(name, url_of(i), sw.SwimConfig(**config), random.Random(i))  # type: ignore[arg-type]


def admit(me: sw.Swim, other: sw.Swim, now: float = 0.0) -> list[sw.Transition]:
    me.hint(other.self_id, other.self_url, "", now)
    return me.admitted(other.self_id, other.self_url, "", state_of(other), now)


def pair() -> tuple[sw.Swim, sw.Swim]:
    a, b = node("a", 0), node("b", 1)
    admit(a, b)
    admit(b, a)
    return a, b


# -- trust ---------------------------------------------------------------------------------------------------
def test_gossip_makes_a_candidate_never_a_member() -> None:
    a = node("a")
    a.apply(MemberUpdate("x", "alive", 0, url_of(9)), 0.0)
    assert a.records == {} and ("x", url_of(9)) in a.candidates
    instructions, _ = a.tick(1.0)
    assert sw.Admit("x", url_of(9), "127.0.0.11") in instructions  # it must answer us itself
    x = node("x", 9)
    assert a.admitted("x", url_of(9), "", state_of(x), 1.1)[0].new == "alive"


def test_a_new_candidate_is_asked_at_the_next_tick_and_then_every_admit_interval() -> None:
    a = node("a")
    assert not any(isinstance(i, sw.Admit) for i in a.tick(0.0)[0])  # nobody to ask; the next round is 0.5 s on
    a.apply(MemberUpdate("x", "alive", 0, url_of(9)), 0.1)
    assert sw.Admit("x", url_of(9), "127.0.0.11") in a.tick(0.15)[0]  # at once, not at 0.5 s
    a.admit_failed("x", url_of(9), 0.2)
    a.apply(MemberUpdate("x", "alive", 0, url_of(9)), 0.3)  # gossip about a known candidate: no extra try
    assert not any(isinstance(i, sw.Admit) for i in a.tick(0.35)[0] + a.tick(0.6)[0])
    assert sw.Admit("x", url_of(9), "127.0.0.11") in a.tick(0.75)[0]  # its retry, admit_interval_s after


def test_a_join_pulls_the_first_members_whole_table() -> None:
    a, b, c = node("a", 0), node("b", 1), node("c", 2)
    admit(b, c)  # b (the seed) knows c
    a.tick(0.0)  # a alone: the first push-pull is due later
    admit(a, b, 0.05)
    syncs = [i for i in a.tick(0.1)[0] if isinstance(i, sw.Sync)]
    assert [s.node_id for s in syncs] == ["b"]
    table, _ = b.received(syncs[0].message, 0.1)
    assert table is not None
    a.received(table, 0.11)
    assert ("c", c.self_url) in a.candidates  # learned through the seed, still to be admitted itself


def test_a_failed_push_pull_is_retried_within_a_second() -> None:
    a, _b = pair()
    assert any(isinstance(i, sw.Sync) for i in a.tick(0.0)[0])
    assert not any(isinstance(i, sw.Sync) for i in a.tick(1.5)[0])  # next one in push_pull_interval_s
    a.sync_failed(1.5)
    assert any(isinstance(i, sw.Sync) for i in a.tick(2.5)[0])


def test_a_dead_rumour_is_a_suspicion_checked_with_our_own_probe() -> None:
    a, b = node("a", 0, dead_rumour_verify=False), node("b", 1)  # the quorum rule: one member's word is a suspicion
    admit(a, b)
    admit(b, a)
    a.apply(MemberUpdate("b", "dead", 0, b.self_url, 0, "c"), 1.0)
    sus = a.records["b"].suspicion
    assert a.status_of("b") == "suspect" and sus is not None and not sus.probed  # a rumour: not dead, not ours
    assert sw.Probe("b", b.self_url, verify=True) not in a.tick(1.1)[0]  # no verify before its timeout runs out
    instructions, _ = a.tick(1.0 + a.suspicion_timeout(0) + 0.01)
    assert sw.Probe("b", b.self_url, verify=True) in instructions
    ack = b.received(a.message("ping", "b"), 1.1)[0]
    a.probe_result("b", ack, 0, 4.0, verify=True)
    assert a.status_of("b") == "alive"  # it answers our probes: no rumour makes it dead
    assert b.incarnation == a.records["b"].incarnation == 1  # our ping carried our suspicion: b refuted it
    a.apply(MemberUpdate("b", "dead", 1, b.self_url, 0, "c"), 5.0)
    end = 5.0 + a.suspicion_timeout(0) + 0.01
    a.tick(end)
    assert a.probe_result("b", None, 0, end + 1.2, verify=True, sent=end) == []  # our probe missed too: our clock
    assert a.tick(end + 1.2 + a.suspicion_timeout(0) + 0.01)[1][0].new == "dead"  # and it ran out


def test_only_the_node_itself_clears_a_suspicion() -> None:
    a, b = pair()
    a.apply(MemberUpdate("b", "suspect", 0, b.self_url, 0, "c"), 1.0)
    assert a.status_of("b") == "suspect"
    a.apply(MemberUpdate("b", "alive", 1, b.self_url, 0), 1.1)  # someone relays a refutation: a hint
    assert a.status_of("b") == "suspect"
    instructions, _ = a.tick(1.2)
    assert sw.Probe("b", b.self_url) in instructions  # ... that makes us ask b at once
    b.apply(MemberUpdate("b", "suspect", 0, b.self_url, 0, "c"), 1.2)
    assert b.incarnation == 1  # b refutes
    a.probe_result("b", b.received(a.message("ping", "b"), 1.2)[0], 0, 1.25)
    assert a.status_of("b") == "alive" and a.records["b"].incarnation == 1


def test_incarnation_jumps_are_bounded() -> None:
    a, b = pair()
    a.apply(MemberUpdate("b", "suspect", sw.MAX_INC_JUMP + 1, b.self_url, 0, "c"), 1.0)
    assert a.status_of("b") == "alive"  # an implausible suspicion is ignored
    a.apply(MemberUpdate("b", "alive", sw.MAX_INC_JUMP + 1, b.self_url, 0), 1.05)
    assert a.records["b"].incarnation == 0  # nor is an alive rumour taken (it only makes us probe b)
    b.incarnation = 10**9
    a.received(b.message("ping", "a"), 1.1)
    assert a.records["b"].incarnation == 10**9  # the node's own word is (only it raises it: test_swim_incarnation)
    b.apply(MemberUpdate("b", "dead", 10**9 + sw.MAX_INC_JUMP + 1, b.self_url, 0, "c"), 1.2)
    assert b.incarnation == 10**9  # nor does a node refute an implausible rumour about itself


def test_our_own_id_claimed_elsewhere_is_ignored() -> None:
    a = node("a")
    a.hint("a", url_of(5), "", 0.0)
    assert not a.candidates and ("a", url_of(5)) in a.conflicts


def test_a_graceful_leave_is_immediate_and_a_goodbye_only_probes() -> None:
    a, b = pair()
    a.recheck("b", 0.4)  # an mDNS goodbye: anyone can send one
    instructions, _ = a.tick(0.5)
    assert a.status_of("b") == "alive" and sw.Probe("b", b.self_url) in instructions
    [t] = a.left("b", 0.6)  # b said so itself, authenticated
    assert t.new == "dead" and t.reason == "left" and a.left("b", 0.7) == []


def test_an_id_belongs_to_whoever_authenticates_as_it() -> None:
    a, p = node("a"), node("p", 3)
    a.hint("p", url_of(7), "", 0.0)  # a stranger advertises p first
    a.hint("p", p.self_url, "", 0.1)  # then the real p
    a.admitted("p", p.self_url, "", state_of(p), 0.2)  # only the real p can answer as p
    assert a.records["p"].peer_url == p.self_url and ("p", url_of(7)) in a.candidates


def test_a_suspected_node_refutes_and_tells_the_suspecter() -> None:
    _a, b = pair()
    b.apply(MemberUpdate("b", "suspect", 0, b.self_url, 0, "a"), 1.0, sender="a")  # a tells b itself
    instructions, _ = b.tick(1.0)
    direct = [i for i in instructions if isinstance(i, sw.Gossip) and i.node_id == "a"]
    assert direct and any(u.node_id == "b" and u.incarnation == 1 for u in direct[0].message.updates)


def test_state_versions_endpoints_at_once_loads_at_most_every_30_s() -> None:
    from dataclasses import replace

    base = state_of(node("a"))
    fp = fingerprint(base)
    served = fingerprint(replace(base, endpoints={"m": ("http://127.0.0.2:9000",)}))
    busy = fingerprint(replace(base, cpu_load=55.0))
    assert version_due(fp, served, 1.0, 0.5)  # a new endpoint: at once
    assert not version_due(fp, fingerprint(replace(base, cpu_load=3.0)), 100.0, 0.0)  # below a step: never
    assert not version_due(fp, busy, 10.0, 0.0) and version_due(fp, busy, LOAD_UPDATE_S, 0.0)


def test_local_health_stretches_our_timeouts_while_we_are_slow() -> None:
    a, b = pair()
    base_timeout, base_suspicion = a.probe_timeout(), a.suspicion_timeout(0)
    a.probe_result("b", None, 0, 1.0, sent=0.9)  # b missed but the relays answered: b's problem, not ours
    assert a.health == 0
    for i in range(20):
        a.probe_result("b", None, 0, 2.0 + i, sent=1.9 + i, relays_silent=True)  # nobody answers us
    assert a.health == sw.MAX_HEALTH and a.probe_timeout() == base_timeout * (1 + sw.MAX_HEALTH)
    assert a.suspicion_timeout(0) > base_suspicion
    a.probe_result("b", b.received(a.message("ping", "b"), 30.0)[0], 0, 30.0)
    assert a.health == sw.MAX_HEALTH - 1  # each answered probe heals a step


# -- bounds --------------------------------------------------------------------------------------------------
def test_candidates_are_bounded_and_expire() -> None:
    a = node("a", max_candidates=5)
    for i in range(20):
        a.hint(f"x{i}", url_of(i + 1), "", 0.0)
    assert len(a.candidates) == 5
    a.tick(a.config.candidate_ttl_s + 1)
    assert a.candidates == {}


def test_members_are_bounded() -> None:
    a = node("a", max_members=3)
    for i in range(6):
        admit(a, node(f"x{i}", i + 1))
    assert len(a.records) == 3


def test_broadcast_queue_is_bounded_and_retransmits_are_limited() -> None:
    a = node("a", max_broadcasts=4)
    for i in range(10):
        a.apply(MemberUpdate(f"x{i}", "alive", 0, url_of(i + 1)), 0.0)  # candidates: nothing to queue
        admit(a, node(f"x{i}", i + 1))
    assert len(a.broadcasts) == 4
    for _ in range(a.retransmit_limit()):
        a.message("gossip")
    assert a.broadcasts == {}  # each update went out retransmit_limit times, then left the queue


def test_the_retransmit_limit_and_suspicion_timeout_scale_with_log_n() -> None:
    a = node("a")
    small = (a.retransmit_limit(), a.suspicion_timeout(0))
    for i in range(60):
        admit(a, node(f"x{i}", i + 1))
    assert a.retransmit_limit() > small[0] and a.suspicion_timeout(0) > small[1]
    assert a.suspicion_timeout(3) < a.suspicion_timeout(0)  # Lifeguard: confirmations shorten it


def test_dead_members_are_forgotten() -> None:
    a, _b = pair()
    a.left("b", 1.0)
    assert a.status_of("b") == "dead"
    _, transitions = a.tick(1.0 + a.config.forget_after_s)
    assert transitions[0].new is None and "b" not in a.records


def test_wire_messages_are_strict_and_bounded() -> None:
    a, b = pair()
    msg = a.sync_message()
    assert SwimMessage.parse(msg.to_json()) == msg
    with pytest.raises(WireError):
        SwimMessage.parse({**a.message("ping").to_json(), "updates": [["b", "alive", 0, b.self_url, 0, ""]] * 25})
    with pytest.raises(WireError):
        MemberUpdate.parse(["b", "zombie", 0, b.self_url, 0, ""])
    with pytest.raises(WireError):
        MemberUpdate.parse(["b", "alive", True, b.self_url, 0, ""])
    with pytest.raises(WireError):
        MemberUpdate.parse(["b", "alive", 0, "http://evil.example/", 0, ""])


# -- the simulated cluster -----------------------------------------------------------------------------------
def _detect(sim: Sim, victim: str, limit: float) -> float:
    start = sim.now
    while sim.now - start < limit:
        sim.run(0.02)
        if all(sim.view(o, victim) in ("dead", None) for o in sim.live()):
            return sim.now - start
    return float("inf")


@FAST
@given(n=st.integers(3, 14), seed=st.integers(0, 10**6), loss=st.floats(0.0, 0.03))
def test_one_seed_learns_the_cluster_and_a_crash_is_dead_everywhere(n: int, seed: int, loss: float) -> None:
    sim = Sim(n, seed=seed, loss=loss)
    sim.run(15)
    assert sim.converged()
    victim = f"n{seed % n}"
    sim.crash(victim)
    assert _detect(sim, victim, 6.0) < 6.0
    sim.run(3)
    assert sim.false_deaths() == []  # loss below the design bound: no live node is declared dead


def _suspect_after_heal(sim: Sim, victim: str, pause: float) -> float:
    """How long after a pause of ``victim`` some live node still does not see it alive."""
    sim.pause(victim, pause)
    sim.run(pause)
    healed = last = sim.now
    while sim.now - healed < 5:
        sim.run(0.02)
        if any(sim.view(o, victim) != "alive" for o in sim.live() if o != victim):
            last = sim.now
    return last - healed


@FAST
@given(seed=st.integers(0, 10**6), pause=st.floats(0.2, 0.5))
@example(seed=869331, pause=0.453125)  # 1.52 s: the suspecter's probe of it came one period later
def test_a_suspected_live_node_refutes(seed: int, pause: float) -> None:
    sim = Sim(10, seed=seed, loss=0.01)
    sim.run(15)
    assert sim.converged()
    # a probe sent in the pause may still report a miss up to 3 probe timeouts (1.2 s) later; then the suspecter's
    # next probe of it (each period) or its refutation clears it: two periods, the first ack may be lost
    assert _suspect_after_heal(sim, "n3", pause) < 3 * sim.config.probe_timeout_s + 2 * sim.config.probe_interval_s
    assert sim.false_deaths() == []


def _lag_without_refutation(seed: int) -> float:
    sim = Sim(10, seed=seed, loss=0.01, refute=False)
    sim.run(15)
    return _suspect_after_heal(sim, "n3", 0.5)


def test_the_refutation_checker_fails_when_refutation_is_off() -> None:
    # without refutation the suspicion lingers: the property above would fail (in some seed of 4; any() stops at the
    # first, where max() of all four ran three more clusters: the lags are 3.18, 3.18, 2.76, 0.0 s)
    assert any(_lag_without_refutation(seed) >= 1.5 for seed in range(4))


def _verify_across_a_cut(verify_indirect: bool) -> list[tuple[float, str, str]]:
    """n1 cannot reach n3 directly (n3 lags for n1, or a link is down) and hears that n3 is dead."""
    sim = Sim(6, seed=3, config=sw.SwimConfig(verify_indirect=verify_indirect))
    sim.run(15)
    assert sim.converged()
    sim.cut("n1", "n3")
    n3 = sim.nodes["n1"].records["n3"]
    sim.nodes["n1"].apply(MemberUpdate("n3", "dead", n3.incarnation, n3.peer_url, 0, "n2"), sim.now)
    sim.run(9)  # a suspicion now: its unconfirmed timeout, the verify probe, then our own timeout
    return sim.false_deaths()


def test_a_dead_rumour_needs_the_indirect_probes_to_miss_too() -> None:
    assert _verify_across_a_cut(verify_indirect=True) == []
    # the checker fails with the old rule (one missed direct probe confirmed the rumour): a live node died
    assert ("n1", "n3") in {(o, v) for _t, o, v in _verify_across_a_cut(verify_indirect=False)}


def test_the_crash_checker_fails_when_nothing_is_detected() -> None:
    sim = Sim(5, seed=1, config=sw.SwimConfig(suspicion_mult=1000.0))
    sim.run(10)
    sim.crash("n2")
    assert _detect(sim, "n2", 6.0) == float("inf")


def _lease_gap(n: int, seed: int, relay: bool = True) -> float:
    """The longest a follower went without a newer lease renewal, over 20 s, leases carried by SWIM only."""
    sim = Sim(n, seed=seed, loss=0.01, max_delay=0.05)
    sim.run(12)
    assert sim.converged()
    sim.leader, sim.relay_leases = "n0", relay
    sim.run(2)
    start = sim.now
    sim.run(20)
    return max(sim.lease_gaps(start).values())


@pytest.mark.parametrize("n", [10, 50])
def test_the_leaders_lease_reaches_every_member_in_time_by_gossip(n: int) -> None:
    # agent.leadership: a follower's lease lasts election_timeout_s + GOSSIP_LEASE_SLACK_S (2.0 s by default)
    assert _lease_gap(n, seed=n) < 1.2


def test_the_lease_checker_fails_when_members_do_not_relay() -> None:
    assert _lease_gap(50, seed=50, relay=False) > 2.0  # only the leader's own pushes and probes: too rare


# -- idle cost: the shell ticks the core only when work is due (Swim.next_due) ------------------------------
def test_next_due_is_the_next_probe_when_idle_and_now_when_work_is_queued() -> None:
    a, _b = pair()
    a.tick(0.0)
    while a.broadcasts:  # drain the join's news
        a.message("gossip", "b")
    a.tick(0.05)
    assert a.next_due(0.06) == pytest.approx(a.config.probe_interval_s)  # idle: the next probe, not the next 50 ms
    a.set_version(a.version + 1)  # news to gossip: due at the next gossip round (0.1 s), before the probe
    assert a.next_due(0.07) == pytest.approx(a.config.gossip_interval_s)
    c = node("c", 0)
    c.hint("x", url_of(9), "", 1.0)  # a candidate is asked at once
    assert c.next_due(1.0) == 1.0
    a.recheck("b", 0.08)  # a goodbye: its probe is due at a random point within the goodbye gap (review26b F3)
    due = a.records["b"].goodbye_due
    assert 0.08 <= due <= 0.08 + a._goodbye_gap() and a.next_due(due) == due


@FAST
@given(n=st.integers(3, 12), seed=st.integers(0, 10**6), loss=st.floats(0.0, 0.03))
def test_ticking_only_when_due_keeps_joins_and_detection(n: int, seed: int, loss: float) -> None:
    sim = Sim(n, seed=seed, loss=loss, lazy=True)
    sim.run(15)
    assert sim.converged()
    victim = f"n{seed % n}"
    sim.crash(victim)
    assert _detect(sim, victim, 6.0) < 6.0
    sim.run(3)
    assert sim.false_deaths() == []


def test_lazy_ticking_needs_a_fraction_of_the_ticks_and_the_lease_still_arrives() -> None:
    eager, lazy = Sim(10, seed=7, loss=0.01, max_delay=0.05), Sim(10, seed=7, loss=0.01, max_delay=0.05, lazy=True)
    for sim in (eager, lazy):
        sim.run(12)
        assert sim.converged()
        sim.leader = "n0"
        start = sim.now
        sim.run(20)
        assert max(sim.lease_gaps(start).values()) < 1.2
    assert lazy.ticks < eager.ticks / 2, (lazy.ticks, eager.ticks)


def test_the_lazy_checker_fails_when_next_due_oversleeps() -> None:
    sim = Sim(8, seed=3, lazy=True)
    sim.run(15)
    assert sim.converged()
    for node in sim.nodes.values():  # a next_due that ignores queued work and suspicions: only probe periods
        node.next_due = lambda now, node=node: max(now, node._next_probe + 5.0)  # type: ignore[method-assign]
    sim.crash("n4")
    assert _detect(sim, "n4", 6.0) >= 6.0


# -- loads ride on the node's own messages (no state fetch for a load change) ---------------------------------
def test_a_members_own_message_brings_its_loads_and_gossip_about_others_cannot() -> None:
    from peerserve.wire import Loads

    a, b = pair()
    c = node("c", 2)
    admit(a, c)
    b.loads = Loads(123.0, 77.0, 5.0)
    a.received(b.message("ping", "a"), 1.0)
    s = a.records["b"].state
    assert (s.mem_available_mb, s.cpu_load, s.gpu_load) == (123.0, 77.0, 5.0)
    assert a.records["b"].claimed_version == a.records["b"].state.version  # no fetch needed for it
    c.loads = Loads(1.0, 99.0)
    a.received(c.message("gossip", "a"), 1.1)  # c's message carries c's loads, never b's
    assert a.records["b"].state.cpu_load == 77.0 and a.records["c"].state.cpu_load == 99.0
    stranger = node("x", 9)
    stranger.loads = Loads(5.0, 5.0)
    a.received(stranger.message("ping", "a"), 1.2)  # not a member: a hint only, no record
    assert "x" not in a.records


def test_loads_parse_strictly_and_older_messages_carry_none() -> None:
    from peerserve.wire import Loads

    msg = SwimMessage("ack", "b", 0, 1, url_of(1), loads=Loads(10.0, 20.5, None))
    assert SwimMessage.parse(msg.to_json()) == msg
    old = {k: v for k, v in msg.to_json().items() if k != "loads"}
    assert SwimMessage.parse(old).loads is None
    for bad in ({"cpu_load": float("nan")}, {"mem_available_mb": -1}, {"cpu_load": True}, {"gpu_load": "x"}):
        with pytest.raises(WireError):
            SwimMessage.parse({**msg.to_json(), "loads": {**msg.to_json()["loads"], **bad}})
    with pytest.raises(WireError):
        SwimMessage.parse({**msg.to_json(), "loads": [1, 2]})
