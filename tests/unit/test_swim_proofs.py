"""Signed suspicions (agent.discovery.swim_proofs, wire.SuspectProof): real Ed25519 keys and cards, no mocks.

A relayed suspicion counts as its origin's Lifeguard confirmation only with the origin's own signature; a
member that signs in another's name, tampers, replays a stale proof or attaches one for an update it does not
carry proves nothing. Every table has a bound.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import pytest

from agent.discovery import swim as sw
from agent.discovery import swim_proofs
from agent.discovery.swim_io import SwimDriver
from agent.discovery.swim_proofs import ProofBook
from agent.identity import WINDOW_S, Identity
from peerserve import wire
from peerserve.wire import MAX_PROOFS, MemberUpdate, SwimMessage
from tests.unit.swim_proof_kit import (
    IDS,
    PAST_GATE,
    TOKEN,
    Clock,
    gossip,
    own_proof,
    resigned,
    signed_by,
    suspect,
    suspicion_after,
    swim_driver,
)
from tests.unit.swim_sim import url_of


def test_our_suspicion_is_signed_once_and_checks_out_anywhere() -> None:
    clock = Clock()
    book = ProofBook(IDS["c1"], clock, started=PAST_GATE)
    msg = book.attach(gossip("c1", suspect("c1"), MemberUpdate("c2", "alive", 0, url_of(4))))
    [proof] = msg.proofs
    assert (proof.node_id, proof.incarnation, proof.origin) == ("x", 0, "c1")
    assert book.attach(gossip("c1", suspect("c1"))).proofs == (proof,)  # signed once, reused
    assert SwimMessage.parse(msg.to_json()) == msg  # travels on the wire
    assert ProofBook(IDS["b"], clock, started=PAST_GATE).check(msg) == [("x", 0, "c1")]
    clock.t += WINDOW_S  # past half the window: signed anew, so it stays fresh wherever it is relayed
    assert book.attach(gossip("c1", suspect("c1"))).proofs[0].stamp_ms > proof.stamp_ms


def test_a_relay_carries_the_proof_and_the_receiver_counts_only_proven_origins() -> None:
    clock = Clock()
    relay, receiver = ProofBook(IDS["m"], clock, started=PAST_GATE), ProofBook(IDS["b"], clock, started=PAST_GATE)
    assert relay.check(gossip("c1", suspect("c1"), proofs=(own_proof("c1", clock),))) == [("x", 0, "c1")]
    relayed = relay.attach(gossip("m", suspect("c1"), suspect("c2")))  # m holds c1's proof, none of c2's
    assert [p.origin for p in relayed.proofs] == ["c1"]
    assert receiver.check(relayed) == [("x", 0, "c1")]


def test_forged_tampered_stale_and_stray_proofs_prove_nothing() -> None:
    clock = Clock()
    receiver = ProofBook(IDS["b"], clock, started=PAST_GATE)
    forged = resigned(replace(own_proof("m", clock), origin="c1"), "m")  # m signs and names c1: the signature is m's
    tampered = replace(own_proof("c2", clock), incarnation=1)  # c2's proof moved to another incarnation
    stale = own_proof("c3", Clock(clock.t - WINDOW_S - 1))
    stray = own_proof("c2", clock)  # genuine, but for an update the message does not carry (c2 at incarnation 0)
    msg = gossip("m", suspect("c1"), suspect("c2", 1), suspect("c3"), proofs=(forged, tampered, stale, stray))
    assert receiver.check(msg) == []
    assert receiver.refused == 3 and receiver.held == {}  # the stray one was not even checked
    assert receiver.check(gossip("m", suspect("c2"), proofs=(stray,))) == [("x", 0, "c2")]
    assert receiver.checked == 1 and receiver.check(gossip("m", suspect("c2"), proofs=(stray,))) == [("x", 0, "c2")]
    assert receiver.checked == 1  # a proof held already is not verified again


def test_proofs_per_message_and_proofs_held_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    book = ProofBook(IDS["b"], clock, started=PAST_GATE)
    many = book.attach(gossip("b", *(suspect("b", about=f"n{i}") for i in range(10))))
    assert len(many.proofs) == MAX_PROOFS
    with pytest.raises(wire.WireError):
        SwimMessage.parse({**many.to_json(), "proofs": [p.to_json() for p in many.proofs] * 2})
    monkeypatch.setattr(swim_proofs, "MAX_HELD", 3)
    for i in range(6):
        book.attach(gossip("b", suspect("b", about=f"n{i}")))
    assert len(book.held) == 3


def driver() -> SwimDriver:
    """Node b's real driver (the default configuration) with m, c1-c3 and x as members."""
    return swim_driver(sw.SwimConfig())


def confirmers_after(*proof_signers: str, forged_by: str | None = None) -> frozenset[str]:
    """m relays the suspicions of c1-c3 (with the signatures of ``proof_signers``): b's confirmers of x."""
    d = driver()
    d.proofs.wall = clock = Clock()
    proofs = signed_by(proof_signers, own_proof, clock, forged_by)
    return suspicion_after(d, gossip("m", suspect("c1"), suspect("c2"), suspect("c3"), proofs=proofs)).confirmers


def test_the_driver_counts_a_relayed_confirmer_only_with_its_origins_signature() -> None:
    assert confirmers_after("c1", "c2", "c3") == {"c1", "c2", "c3"}  # relayed with proofs: Lifeguard's benefit kept
    assert confirmers_after() == frozenset()  # claims alone: hearsay
    assert confirmers_after("c1", "c2", "c3", forged_by="m") == frozenset()  # m cannot sign as c1, c2, c3


def test_metrics_count_checked_and_refused_proofs() -> None:
    from collections import Counter
    from types import SimpleNamespace

    from agent.discovery.metrics import MembershipCollector

    d = driver()
    clock = Clock()
    d.proofs.wall = clock
    good = own_proof("c1", clock)
    bad = replace(own_proof("c2", clock), incarnation=0, signature=good.signature)
    asyncio.run(d.handle("m", gossip("m", suspect("c1"), suspect("c2"), proofs=(good, bad))))
    discovery = SimpleNamespace(swim=d, peers=d.peers, mdns=Counter(), revocations=None)
    samples = {(x.name, tuple(x.labels.items())): x.value for m in MembershipCollector(discovery).collect()  # type: ignore[arg-type]
               for x in m.samples}  # fmt: skip
    name = "peerserve_membership_suspicion_proofs_total"
    assert samples[(name, (("outcome", "checked"),))] == 1 and samples[(name, (("outcome", "refused"),))] == 1


def test_metrics_count_gated_proofs() -> None:
    """A driver within R3's gate checks m's relay of c1's and c2's signed suspicions but counts neither: /metrics
    shows them as outcome="gated" (review20e L1), on both proof families."""
    from collections import Counter
    from types import SimpleNamespace

    from agent.discovery.metrics import MembershipCollector

    d = swim_driver(sw.SwimConfig(), started=0.0)
    d.clock = Clock(1.0)
    d.proofs.wall = clock = Clock()
    proofs = signed_by(("c1", "c2"), own_proof, clock)
    assert suspicion_after(d, gossip("m", suspect("c1"), suspect("c2"), proofs=proofs)).confirmers == frozenset()
    discovery = SimpleNamespace(swim=d, peers=d.peers, mdns=Counter(), revocations=None)
    samples = {(x.name, tuple(x.labels.items())): x.value for m in MembershipCollector(discovery).collect()  # type: ignore[arg-type]
               for x in m.samples}  # fmt: skip
    name = "peerserve_membership_suspicion_proofs_total"
    assert samples[(name, (("outcome", "gated"),))] == 2 and samples[(name, (("outcome", "checked"),))] == 2
    assert samples[("peerserve_membership_dead_proofs_total", (("outcome", "gated"),))] == 0


def test_a_member_cannot_flood_the_store_with_its_own_suspicions_of_made_up_nodes() -> None:
    d = driver()
    clock = Clock()
    d.proofs.wall = clock
    asyncio.run(d.handle("c1", gossip("c1", suspect("c1"), proofs=(own_proof("c1", clock),))))
    assert ("x", "c1") in d.proofs.held and d.proofs.checked == 1
    liar = ProofBook(IDS["m"], clock, started=PAST_GATE)
    for i in range(0, 2 * swim_proofs.MAX_HELD, 4):  # nodes that do not exist: nothing to confirm, never verified
        asyncio.run(d.handle("m", liar.attach(gossip("m", *(suspect("m", about=f"ghost{i + j}") for j in range(4))))))
    for inc in range(1, 9):  # x at ever new incarnations: one entry per (member, origin)
        asyncio.run(d.handle("m", liar.attach(gossip("m", suspect("m", inc)))))
    assert ("x", "c1") in d.proofs.held and len(d.proofs.held) <= 2
    assert d.proofs.checked <= 1 + 8


def test_a_refused_proof_is_not_verified_again_for_a_while_and_the_memory_is_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = Clock()
    book = ProofBook(IDS["b"], clock, mono=clock, started=PAST_GATE)  # 10 s on both clocks, below
    verified: list[str] = []
    real = book.identity.verify_detached
    monkeypatch.setattr(book.identity, "verify_detached", lambda *a: verified.append("v") or real(*a))
    forged = [replace(own_proof("m", clock, inc=i), origin=o) for i, o in enumerate(("c1", "c2", "c3", "x"))]
    msg = gossip("m", *(suspect(p.origin, p.incarnation) for p in forged), proofs=tuple(forged))
    for _ in range(50):
        assert book.check(msg) == []
    assert len(verified) == 4 and book.refused == 200  # each verified once, refused every time
    monkeypatch.setattr(swim_proofs, "EPISODE_SKEW_S", WINDOW_S)  # still fresh enough to be checked at all
    clock.t += swim_proofs.REFUSED_TTL_S + 1
    book.check(msg)
    assert len(verified) == 8  # remembered only briefly
    monkeypatch.setattr(swim_proofs, "MAX_REFUSED", 3)
    clock.t += swim_proofs.REFUSED_TTL_S + 1
    book.check(msg)
    assert len(verified) == 12 and len(book._refused) == 3  # the oldest refused digest makes room


def test_a_proof_from_a_cleared_suspicion_cannot_confirm_a_new_one(monkeypatch: pytest.MonkeyPatch) -> None:
    d = driver()
    clock = Clock()
    d.proofs.wall = d.proofs.mono = clock  # the core's own age of x's suspicion: 0 (alive), on any clock
    old = own_proof("c1", clock)  # c1's genuine signature from an earlier episode at incarnation 0
    assert d.proofs.check(gossip("m", suspect("c1"), proofs=(old,))) == [("x", 0, "c1")]
    clock.t += 10  # x answered in between (no new incarnation); now m replays c1's proof with a new rumour
    d.proofs.held.clear()
    assert d.proofs.check(gossip("m", suspect("c1"), proofs=(old,))) == []
    assert d.proofs.check(gossip("m", suspect("c1"), proofs=(own_proof("c1", clock),))) == [("x", 0, "c1")]
    monkeypatch.setattr(swim_proofs, "EPISODE_SKEW_S", WINDOW_S)  # the rules before: any fresh proof counted
    assert d.proofs.check(gossip("m", suspect("c1"), proofs=(old,))) == []  # it counted here before: refused
    monkeypatch.setattr(swim_proofs, "REMEMBER_SPENT", False)
    assert d.proofs.check(gossip("m", suspect("c1"), proofs=(old,))) == [("x", 0, "c1")]


def test_a_fast_origins_proof_cannot_be_replayed_into_a_later_suspicion(monkeypatch: pytest.MonkeyPatch) -> None:
    """The review's skew replay: c1's clock runs 20 s ahead; its proof counted for a suspicion here that x's own
    answer cleared (same incarnation); 15 s later m replays it into a new suspicion. The stamp looks 5 s in the
    future, so the 3 s rule lets it by; what counted here before is refused, on our own clock alone."""
    clock = Clock()
    state = {"age": 0.0}
    book = ProofBook(IDS["b"], clock, episode=lambda n, i, o: state["age"], mono=clock, started=PAST_GATE)
    fast = own_proof("c1", Clock(clock.t + 20.0))
    assert book.check(gossip("m", suspect("c1"), proofs=(fast,))) == [("x", 0, "c1")]  # episode 1 opens with it
    clock.t += 1.0
    state["age"] = 1.0
    assert book.check(gossip("m", suspect("c1"), proofs=(fast,))) == [("x", 0, "c1")]  # still episode 1: counts
    clock.t += 14.0
    state["age"] = 0.0  # x answered us in between; a new suspicion opens now
    assert book.check(gossip("m", suspect("c1"), proofs=(fast,))) == []
    assert book.check(gossip("c1", suspect("c1"), proofs=(own_proof("c1", Clock(clock.t + 20.0)),))) != []
    monkeypatch.setattr(swim_proofs, "REMEMBER_SPENT", False)  # the rule before: the replay counted
    assert book.check(gossip("m", suspect("c1"), proofs=(fast,))) == [("x", 0, "c1")]


def _episodes() -> tuple[ProofBook, Clock, Clock, dict[str, float]]:
    """b's book with its two clocks (wall, monotonic) and the core's age of x's suspicion (set by the test)."""
    wall, mono, state = Clock(), Clock(0.0), {"age": 0.0}
    return (
        ProofBook(IDS["b"], wall, episode=lambda n, i, o: state["age"], mono=mono, started=PAST_GATE),
        wall,
        mono,
        state,
    )


def test_a_forward_excursion_and_its_correction_do_not_free_a_counted_proof_for_a_later_suspicion() -> None:
    """c1's proof counted for a suspicion here at T; x answered (same incarnation). The whole cluster's clocks jump
    +1 h (one bad time source) and a new proof of c1's counts meanwhile: by the wall clock alone the first one's
    record was SPENT_TTL_S old and went. The clocks are corrected, 3 s after T, and a new suspicion of x opens: m's
    replay of the first proof (stamped T, fresh again, within EPISODE_SKEW_S of the new suspicion) counted again.
    Now the record stays until the monotonic clock has aged it too: refused; c1's genuine new proof still counts."""
    book, wall, mono, state = _episodes()
    first = own_proof("c1", wall)
    assert book.check(gossip("m", suspect("c1"), proofs=(first,))) == [("x", 0, "c1")]  # episode 1 opens with it
    wall.t += 3601.0
    mono.t += 1.0
    state["age"] = 0.0  # x answered; a new suspicion opens while the clocks read ahead
    assert book.check(gossip("c1", suspect("c1"), proofs=(own_proof("c1", wall),))) == [("x", 0, "c1")]
    wall.t -= 3599.0  # corrected: T + 2 s
    mono.t += 1.0
    state["age"] = 0.0  # answered again; another suspicion opens
    assert book.check(gossip("m", suspect("c1"), proofs=(first,))) == []
    assert book.refused == 1
    assert book.check(gossip("c1", suspect("c1"), proofs=(own_proof("c1", wall),))) == [("x", 0, "c1")]
    assert len(book._spent[("x", "c1")]) == 3  # all three kept: none aged by the monotonic clock


def test_a_step_back_of_the_wall_clock_does_not_free_a_counted_proof_for_a_later_suspicion() -> None:
    """c1's proof counted at T for a suspicion; x answered; b's wall clock steps back 10 s and, 2 s after T, a new
    suspicion opens. Judged on the wall clock the proof had counted at T, "after" the new suspicion began (T - 8 s):
    the same episode, so m's replay counted for it. On the monotonic clock it counted 2 s before: refused; c1's
    genuine proof, signed on its own (right) clock, counts."""
    book, wall, mono, state = _episodes()
    first = own_proof("c1", wall)
    assert book.check(gossip("m", suspect("c1"), proofs=(first,))) == [("x", 0, "c1")]
    genuine = own_proof("c1", Clock(wall.t + 2.0))
    wall.t -= 8.0  # stepped back 10 s, 2 s later
    mono.t += 2.0
    state["age"] = 0.0
    assert book.check(gossip("m", suspect("c1"), proofs=(first,))) == []
    assert book.check(gossip("c1", suspect("c1"), proofs=(genuine,))) == [("x", 0, "c1")]


def test_the_driver_judges_counted_proofs_on_the_clock_its_core_ages_suspicions_on() -> None:
    d = driver()
    d.clock = Clock(5.0)
    assert d.proofs.mono() == d.dead_proofs.mono() == 5.0


def test_a_counted_proof_is_forgotten_once_both_clocks_have_aged_it() -> None:
    """The record of a counted proof goes (when the next one of that (member, origin) counts) only once the wall
    clock reads SPENT_TTL_S past it and the monotonic clock has moved SPENT_TTL_S on; either alone keeps it."""
    ttl = swim_proofs.SPENT_TTL_S
    counted = (1_800_000_000.0, 0.0)
    assert not swim_proofs.spent_forgotten(counted, counted[0] + 3600.0, 1.0)  # the wall clock alone (jumped)
    assert not swim_proofs.spent_forgotten(counted, counted[0] + ttl, 3600.0)  # the monotonic clock alone
    assert not swim_proofs.spent_forgotten(counted, counted[0] + 3600.0, ttl)  # each to the instant
    assert swim_proofs.spent_forgotten(counted, counted[0] + ttl + 0.001, ttl + 0.001)
    book, wall, mono, _ = _episodes()

    def count() -> list[str]:
        assert book.check(gossip("c1", suspect("c1"), proofs=(own_proof("c1", wall),))) != []
        return sorted(f"{t - 1_800_000_000.0:g}@{m:g}" for t, m in book._spent[("x", "c1")].values())

    assert count() == ["0@0"]
    wall.t += 3600.0  # jumped ahead, a second later
    mono.t += 1.0
    assert count() == ["0@0", "3600@1"]
    wall.t -= 3600.0 - ttl  # corrected, to 60 s after the first, an hour later
    mono.t += 3600.0
    assert count() == ["0@0", "3600@1", "60@3601"]  # the first at its last instant, the second ahead of the clock
    wall.t += 0.5
    mono.t += 0.5
    assert count() == ["3600@1", "60.5@3601.5", "60@3601"]  # the first aged by both: gone
    wall.t += 3600.0
    mono.t += 1.0
    assert count() == ["3660.5@3602.5", "60.5@3601.5", "60@3601"]  # the second too, once the wall clock is past it


def test_the_memory_of_counted_proofs_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(swim_proofs, "MAX_SPENT_KEYS", 3)
    monkeypatch.setattr(swim_proofs, "MAX_SPENT_PER_KEY", 2)
    clock = Clock()
    book = ProofBook(IDS["b"], clock, mono=clock, started=PAST_GATE)
    for i in range(6):  # c1's suspicions of six members, three times each (signed anew every time)
        for _ in range(3):
            clock.t += 1.0
            proof = ProofBook(IDS["c1"], clock).attach(gossip("c1", suspect("c1", about=f"n{i}"))).proofs[0]
            assert book.check(gossip("c1", suspect("c1", about=f"n{i}"), proofs=(proof,))) != []
    assert len(book._spent) == 3 and all(len(v) == 2 for v in book._spent.values())
    clock.t += swim_proofs.SPENT_TTL_S + 1
    proof = ProofBook(IDS["c1"], clock).attach(gossip("c1", suspect("c1", about="n5"))).proofs[0]
    book.check(gossip("c1", suspect("c1", about="n5"), proofs=(proof,)))
    assert len(book._spent[("n5", "c1")]) == 1  # the expired ones went


def test_our_own_proof_echoed_back_is_not_counted() -> None:
    d = driver()
    clock = Clock()
    d.proofs.wall = clock
    ours = own_proof("b", clock)
    assert d.proofs.check(gossip("m", suspect("b"), proofs=(ours,))) == []
    asyncio.run(d.handle("m", gossip("m", suspect("b"), proofs=(ours,))))
    sus = d.core.records["x"].suspicion
    assert sus is not None and not sus.confirmers


def test_a_proof_refused_while_its_signers_pin_is_written_counts_once_the_pin_lands(tmp_path: Path) -> None:
    """On a running loop a first-met signer's pin is written off the loop and its statement refused 503 once; that
    refusal is retryable, so the same proof (its origin reuses it for WINDOW_S / 2) is checked again, not refused
    unchecked for REFUSED_TTL_S (review13b F3)."""

    async def run() -> tuple[bool, bool, bool]:
        me = Identity("b", TOKEN, tmp_path)  # a board with a real pin file that never met c1
        clock = Clock()
        t0 = clock.t
        book = ProofBook(me, clock, lambda n, i, o: clock.t - t0, started=PAST_GATE)
        proof = own_proof("c1", clock)
        msg = gossip("m", suspect("c1"), proofs=(proof,))
        first = book.check(msg)  # 503: c1's pin is being written
        for _ in range(200):  # the write lands off the loop
            await asyncio.sleep(0.01)
            if "c1" in me.pins._pins:
                break
        clock.t += 1.0
        return first, "c1" in me.pins._pins, book.check(msg)

    first, pinned, again = asyncio.run(run())
    assert not first and pinned
    assert again  # counted a second later, not REFUSED_TTL_S later


def _re_encoded(signature: str) -> str:
    """The same signature bytes spelled with another last character (the lenient decoder drops its low bits)."""
    import base64

    raw = base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4))
    for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_":
        twin = signature[:-1] + c
        if twin != signature and base64.urlsafe_b64decode(twin + "=" * (-len(twin) % 4)) == raw:
            return twin
    raise AssertionError("no other spelling")


def test_a_re_encoded_copy_of_a_counted_proof_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """review16a F1, the fast-origin replay with the signature re-spelled (same bytes after decoding): the record
    was keyed by the text, so the copy looked new and counted again. Refused now twice over: the record is keyed by
    the signed statement, and the decoder refuses the spelling (shown apart: with the old lenient decoder too)."""
    import base64

    from agent import identity as identity_module

    clock = Clock()
    state = {"age": 0.0}
    book = ProofBook(IDS["b"], clock, episode=lambda n, i, o: state["age"], mono=clock, started=PAST_GATE)
    fast = own_proof("c1", Clock(clock.t + 20.0))
    assert book.check(gossip("m", suspect("c1"), proofs=(fast,))) == [("x", 0, "c1")]
    clock.t += 15.0
    twin = replace(fast, signature=_re_encoded(fast.signature))
    assert book.check(gossip("m", suspect("c1"), proofs=(twin,))) == []  # refused: non-canonical, and spent
    monkeypatch.setattr(
        identity_module, "unb64", lambda text, limit=512: base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    )
    for copy in (twin, replace(fast, signature="...." + fast.signature)):
        state["age"] = 0.0
        clock.t += 1.0
        assert book.check(gossip("m", suspect("c1"), proofs=(copy,))) == []  # the statement counted before
    # a genuine new proof of c1's (a new statement: a later stamp) still counts
    assert book.check(gossip("c1", suspect("c1"), proofs=(own_proof("c1", Clock(clock.t + 20.0)),))) != []


# -- R3: a restart forgets which proofs counted; relayed proofs count only a minute after the start ----------------


def test_a_proof_counted_before_a_restart_is_not_counted_again_after_it() -> None:
    """R3 (docs/security.md): c1's clock reads 25 s ahead; its proof counted here for a suspicion of x, and b
    restarts 5 s later (its spent table, in memory, gone). x stalls again and a new suspicion opens 2 s after the
    start; m replays c1's proof (its stamp 22 s ahead of the wall clock: fresh, and within EPISODE_SKEW_S of the new
    suspicion). Without the gate (the rule before) the fresh run counts it; with it, a relayed proof counts only
    once the monotonic clock is RELAYED_GATE_S past the start, and by then the replay is stale. c1's own message
    counts throughout; a genuine relayed proof counts once the gate is past."""
    wall, mono, state = Clock(), Clock(100.0), {"age": 0.0}
    before = ProofBook(IDS["b"], wall, episode=lambda n, i, o: state["age"], mono=mono, started=PAST_GATE)
    fast = own_proof("c1", Clock(wall.t + 25.0))
    assert before.check(gossip("m", suspect("c1"), proofs=(fast,))) == [("x", 0, "c1")]
    wall.t += 5.0  # the restart; the monotonic clock of the new run starts at 0
    wall.t += 2.0
    restarted = {
        gate: ProofBook(IDS["b"], wall, episode=lambda n, i, o: state["age"], mono=Clock(2.0), started=0.0, gate_s=gate)
        for gate in (0.0, swim_proofs.RELAYED_GATE_S)
    }
    assert restarted[0.0].check(gossip("m", suspect("c1"), proofs=(fast,))) == [("x", 0, "c1")]  # R3, as before
    book = restarted[swim_proofs.RELAYED_GATE_S]
    assert book.check(gossip("m", suspect("c1"), proofs=(fast,))) == [] and book.gated == 1
    assert book.check(gossip("c1", suspect("c1"), proofs=(fast,))) == [("x", 0, "c1")]  # its origin's own word
    assert book.held[("x", "c1")] == fast  # checked and held: relayed to others, who judge it by their own books
    # the gate's last instant: still gated; just past it the replay is stale (stamped 25 s ahead of a clock that
    # then read 7 s before the start), and a genuine relayed proof counts
    book.mono = Clock(swim_proofs.RELAYED_GATE_S)
    wall.t += swim_proofs.RELAYED_GATE_S - 2.0
    assert book.check(gossip("m", suspect("c2"), proofs=(own_proof("c2", wall),))) == []
    book.mono = Clock(swim_proofs.RELAYED_GATE_S + 0.1)
    wall.t += 0.1
    assert book.check(gossip("m", suspect("c1"), proofs=(fast,))) == []
    assert book.check(gossip("m", suspect("c2"), proofs=(own_proof("c2", wall),))) == [("x", 0, "c2")]


def test_a_restarted_driver_counts_relayed_confirmers_only_past_the_gate() -> None:
    """The agent's books (SwimDriver) start their gate at the driver's start, on the clock the core ages
    suspicions on: m's relay of c1-c3's signed suspicions makes no confirmer of a driver a second old, and does
    of one RELAYED_GATE_S old; c1's own message is a confirmer at once."""
    for age, relayed in ((1.0, frozenset()), (swim_proofs.RELAYED_GATE_S + 1.0, frozenset({"c1", "c2", "c3"}))):
        d = swim_driver(sw.SwimConfig(), started=0.0)
        d.clock = Clock(age)
        d.proofs.wall = clock = Clock()
        proofs = signed_by(("c1", "c2", "c3"), own_proof, clock)
        message = gossip("m", suspect("c1"), suspect("c2"), suspect("c3"), proofs=proofs)
        assert suspicion_after(d, message).confirmers == relayed
    d = swim_driver(sw.SwimConfig(), started=0.0)
    d.clock = Clock(1.0)
    d.proofs.wall = clock = Clock()
    assert suspicion_after(d, gossip("c1", suspect("c1"), proofs=(own_proof("c1", clock),))).confirmers == {"c1"}
    fresh = swim_driver(sw.SwimConfig(), started=None)  # as the agent makes it
    assert fresh.proofs.started == fresh.dead_proofs.started <= fresh.clock() and fresh.proofs.relay_gated()
