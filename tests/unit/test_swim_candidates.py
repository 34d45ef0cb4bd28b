"""The candidate table (agent.discovery.swim ``Swim.hint``) under a stranger's flood of mDNS adverts (review11b).

A stranger without the token can advertise made-up node ids (only the public ``c=`` is needed) and re-announce them
forever. Before the fix the 64 slots filled with them, every further hint was dropped, and re-hints kept the made-up
ones: a new board was never admitted (sans-IO: 0 admission attempts in 10 simulated minutes; two real agents never
saw each other). Now the node's own authenticated word has slots no stranger can fill, and a stranger's hint at a
full table takes the slot of the candidate that failed admission most often.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.discovery import swim as sw
from tests.unit.swim_sim import state_of, url_of

GHOST_URL = "https://10.9.9.9:9999"  # where the made-up nodes "listen": nothing answers there


def ghost(i: int) -> str:
    return f"ghost{i}"


def flooded(
    arrives: str, ghosts: int, every: float, before: bool, until: float, arrival: float
) -> tuple[sw.Swim, float | None, int]:
    """The victim under ``ghosts`` made-up adverts re-announced every ``every`` s from t=0 (each fails admission);
    the newcomer arrives at ``arrival`` s by ``arrives``: "ping" (its signed ping every 0.1 s, as in review11b's
    sans-IO repro), "advert" (one mDNS advert, never repeated) or "state" (its signed state request, once).
    ``before``: the newcomer's hint comes before the step's adverts. (victim, when admitted, ghost admission tries)."""
    me = sw.Swim("victim", url_of(0), sw.SwimConfig(), random.Random(1))
    real = sw.Swim("newcomer", url_of(1), sw.SwimConfig(), random.Random(2))
    step, admitted_at, ghost_tries = 0, None, 0
    while step * 0.1 < until and admitted_at is None:
        t = round(step * 0.1, 2)

        def newcomer(t: float, at: float) -> None:
            if arrives == "ping" and t >= arrival:
                me.received(real.message("ping", "victim"), at)
            elif abs(t - arrival) < 0.05:  # once
                me.hint("newcomer", real.self_url, "127.0.0.3", at, vouched=arrives == "state")

        if before:
            newcomer(t, t)
        if step % round(every / 0.1) == 0:
            for i in range(ghosts):  # a burst, one advert after the other
                me.hint(ghost(i), GHOST_URL, "10.9.9.9", t + (i + 1) * 1e-5)
        if not before:
            newcomer(t, t + 0.01)
        instructions, _ = me.tick(t + 0.02)
        for ins in instructions:
            if isinstance(ins, sw.Admit) and ins.node_id == "newcomer":
                me.admitted("newcomer", ins.url, ins.address, state_of(real), t + 0.03)  # it answers, authenticated
                admitted_at = t + 0.03
            elif isinstance(ins, sw.Admit):
                ghost_tries += 1
                me.admit_failed(ins.node_id, ins.url, t + 0.03)  # the ghost's address never answers
        step += 1
    return me, admitted_at, ghost_tries


@pytest.mark.parametrize("arrives", ["ping", "advert", "state"])
@pytest.mark.parametrize(("ghosts", "every"), [(64, 30.0), (64, 0.1), (300, 0.1), (300, 30.0)])
@pytest.mark.parametrize("before", [True, False])
def test_a_newcomer_is_admitted_under_a_flood_of_made_up_adverts_re_announced_forever(
    arrives: str, ghosts: int, every: float, before: bool
) -> None:
    arrival = 35.0 if every >= 30.0 else 10.0  # after the first re-announce; or a hundred of them
    me, admitted_at, ghost_tries = flooded(arrives, ghosts, every, before, until=arrival + 10.0, arrival=arrival)
    assert admitted_at is not None and admitted_at - arrival <= 0.1, admitted_at  # asked at the next tick
    assert me.status_of("newcomer") == "alive" and not me.conflicts  # no "duplicate node id" for a full table
    assert len(me.candidates) <= me.config.max_candidates + me.config.max_vouched
    assert ghost_tries > 0  # the flood was tried all along (and failed): it was a real flood


def test_our_own_id_elsewhere_is_the_only_conflict() -> None:
    me = sw.Swim("victim", url_of(0), sw.SwimConfig(max_candidates=2), random.Random(1))
    for i in range(5):
        me.hint(ghost(i), GHOST_URL, "", 0.0)
    me.hint("victim", url_of(7), "", 0.0)
    assert me.conflicts == {("victim", url_of(7))} and len(me.candidates) == 2 and me.replaced == 3


def test_a_stranger_cannot_take_a_slot_the_nodes_own_word_holds() -> None:
    me = sw.Swim("victim", url_of(0), sw.SwimConfig(max_candidates=4, max_vouched=3), random.Random(1))
    for i in range(3):
        me.hint(f"real{i}", url_of(i + 1), "", 0.0, vouched=True)
    for i in range(1000):
        me.hint(ghost(i), GHOST_URL, "", 0.1 + i / 1000)
    vouched = {k for k, c in me.candidates.items() if c.vouched}
    assert vouched == {(f"real{i}", url_of(i + 1)) for i in range(3)} and len(me.candidates) == 7
    instructions, _ = me.tick(2.0)
    asked = [i.node_id for i in instructions if isinstance(i, sw.Admit)]
    assert asked[:3] == ["real0", "real1", "real2"]  # and they are asked first


def test_a_stranger_vouched_for_by_the_node_itself_moves_to_its_slots() -> None:
    me = sw.Swim("victim", url_of(0), sw.SwimConfig(), random.Random(1))
    me.hint("p", url_of(3), "", 0.0)
    me.admit_failed("p", url_of(3), 0.5)
    me.hint("p", url_of(3), "", 1.0, vouched=True)  # it asked for our state, signed: asked afresh in its own slot
    cand = me.candidates[("p", url_of(3))]
    assert cand.vouched and cand.failures == 0 and cand.last_try == float("-inf")


def test_a_failing_candidate_is_not_kept_by_its_adverts_and_comes_back_as_failed() -> None:
    me = sw.Swim("victim", url_of(0), sw.SwimConfig(), random.Random(1))
    ttl = me.config.candidate_ttl_s
    me.hint("g", GHOST_URL, "", 0.0)
    me.admit_failed("g", GHOST_URL, 0.1)
    for t in range(1, int(ttl)):
        me.hint("g", GHOST_URL, "", float(t))  # re-announced every second: not refreshed, it keeps failing
    me.tick(ttl)
    assert ("g", GHOST_URL) not in me.candidates
    me.hint("g", GHOST_URL, "", ttl + 1)
    assert me.candidates[("g", GHOST_URL)].failures == 1  # remembered: a failed one, behind any new hint
    me.hint("n", url_of(5), "", ttl + 1)
    me.hint("n", url_of(5), "", ttl + 30)  # one that has not failed is kept by its adverts
    me.tick(ttl + 61.5)
    assert ("n", url_of(5)) in me.candidates and ("g", GHOST_URL) not in me.candidates


# -- bounds ----------------------------------------------------------------------------------------------------
hints = st.lists(
    st.tuples(st.integers(0, 400), st.booleans(), st.sampled_from(["hint", "fail", "tick", "admit"])),
    max_size=600,
)


@settings(max_examples=60, deadline=None)
@given(events=hints, caps=st.tuples(st.integers(0, 8), st.integers(0, 8)))
def test_every_candidate_table_is_bounded(events: list[tuple[int, bool, str]], caps: tuple[int, int]) -> None:
    """Whatever is hinted, failed, admitted or expired: at most ``max_candidates`` strangers' candidates, at most
    ``max_vouched`` of the nodes' own word, at most ``4 * max_candidates`` remembered failures."""
    me = sw.Swim("me", url_of(0), sw.SwimConfig(max_candidates=caps[0], max_vouched=caps[1]), random.Random(0))
    t = 0.0
    for n, vouched, what in events:
        t += 0.7
        key = (f"x{n}", url_of(n % 50 + 1))
        if what == "hint":
            me.hint(*key, "", t, vouched=vouched)
        elif what == "fail":
            me.admit_failed(*key, t)
        elif what == "admit":
            me.admitted(*key, "", state_of(sw.Swim(key[0], key[1])), t)
        else:
            me.tick(t + (me.config.candidate_ttl_s if vouched else 0.0))
        strangers = sum(1 for c in me.candidates.values() if not c.vouched)
        assert strangers <= caps[0] and len(me.candidates) - strangers <= caps[1]
        assert len(me._failed) <= 4 * caps[0] and len(me.conflicts) <= sw.MAX_CONFLICTS


def test_the_remembered_failures_are_bounded() -> None:
    me = sw.Swim("victim", url_of(0), sw.SwimConfig(max_candidates=2), random.Random(1))
    for i in range(100):
        me.hint(ghost(i), GHOST_URL, "", float(i))
        me.admit_failed(ghost(i), GHOST_URL, i + 0.5)
    assert len(me.candidates) == 2 and len(me._failed) == 8
    assert set(me._failed) == {(ghost(i), GHOST_URL) for i in range(90, 98)}  # the latest replaced
