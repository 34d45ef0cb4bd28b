"""The leader's lease on SWIM: signed renewals, what counts as news, and what the election may take."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.discovery import swim as sw
from agent.discovery.swim_io import SwimDriver
from agent.identity import AuthError, Identity
from agent.peer_client import PeerClient
from coordinator_election import MAX_TERM_AHEAD, LeaseBook, lease_refusal
from coordinator_election.lease import MAX_LEADERS, CertAllowance
from peerserve import wire
from peerserve.wire import Lease, SwimMessage

TOKEN = "unit-cluster-token-0123456789"
LEADER = Identity("a", TOKEN, None)
PRIORITY = (0, 2048.0, "a")


def signed(term: int = 3, seq: int = 10, by: Identity = LEADER, leader: str = "a") -> Lease:
    lease = Lease(term, leader, seq, (0, 2048.0, leader))
    card, signature = by.sign_detached(lease.signing_bytes())
    return replace(lease, card=card, signature=signature)


@given(st.lists(st.tuples(st.sampled_from("abcdefgh"), st.integers(0, 5), st.integers(0, 50)), max_size=80))
def test_only_a_newer_renewal_of_a_leader_is_news(notes: list[tuple[str, int, int]]) -> None:
    book, newest = LeaseBook(limit=4), {}
    for leader, term, seq in notes:
        expected = (term, seq) > newest.get(leader, (-1, -1))
        if leader in book.seen or len(book.seen) < 4:  # a forgotten leader's renewals are news again (bounded)
            assert book.is_news(leader, term, seq) == expected
        book.note(leader, term, seq)
        if expected:
            newest[leader] = (term, seq)
        newest = {n: newest[n] for n in book.seen}  # the bound forgets a leader: the model forgets it too
        assert all(book.seen[n][:2] == newest[n] for n in book.seen)
        assert len(book.seen) <= 4  # the bound
        assert not book.is_news(leader, term, seq)  # a replay is never news


def test_the_election_takes_only_a_members_lease_within_the_term_bound() -> None:
    assert lease_refusal(5, "a", "b", 4, {"a", "c"}) is None
    assert lease_refusal(5, "b", "b", 4, {"a"}) == "our own lease"
    assert "too far ahead" in str(lease_refusal(4 + MAX_TERM_AHEAD + 1, "a", "b", 4, {"a"}))
    assert lease_refusal(4 + MAX_TERM_AHEAD, "a", "b", 4, {"a"}) is None
    assert "not a member" in str(lease_refusal(5, "x", "b", 4, {"a"}))


def test_leases_travel_on_swim_messages_and_parse_strictly() -> None:
    lease = signed()
    msg = SwimMessage("ping", "c", 0, 1, "https://127.0.0.3:7001", lease=lease)
    assert SwimMessage.parse(msg.to_json()) == msg
    assert SwimMessage.parse({**msg.to_json(), "lease": None}).lease is None  # older senders carry none
    for bad in (
        {"term": -1},
        {"seq": True},
        {"leader": "a b"},
        {"card": "x" * (wire.MAX_CARD + 1)},
        {"priority": [0, 1]},
    ):
        with pytest.raises(wire.WireError):
            SwimMessage.parse({**msg.to_json(), "lease": {**lease.to_json(), **bad}})


def test_a_forged_lease_does_not_verify() -> None:
    other = Identity("x", TOKEN, None)
    verifier = Identity("b", TOKEN, None)
    assert verifier.verify_detached(signed().card, signed().signature, signed().signing_bytes()) == "a"
    tampered = replace(signed(), seq=11)  # a relay moves the seq on: the signature no longer covers it
    with pytest.raises(AuthError):
        verifier.verify_detached(tampered.card, tampered.signature, tampered.signing_bytes())
    alien = Identity("a", "another-cluster-token-0123456789", None)  # right name, wrong cluster
    forged = signed(by=alien)
    with pytest.raises(AuthError):
        verifier.verify_detached(forged.card, forged.signature, forged.signing_bytes())
    # x signs a lease naming a: verifies as x's statement, which the driver refuses (below)
    assert verifier.verify_detached(signed(by=other).card, signed(by=other).signature, signed().signing_bytes()) == "x"


def driver(taken: list[Lease], accept: bool = True) -> SwimDriver:
    ident = Identity("b", TOKEN, None)
    d = SwimDriver("b", "https://127.0.0.2:7001", PeerClient(ident, lambda url: None), sw.SwimConfig(),
                   lambda: None, lambda s, u: s, lambda t: None)  # type: ignore[arg-type,return-value]  # fmt: skip
    d.on_lease = lambda lease: taken.append(lease) or accept
    return d


def carrying(lease: Lease, sender: str = "c") -> SwimMessage:
    return SwimMessage("gossip", sender, 0, 1, "https://127.0.0.3:7001", lease=lease)


def test_the_driver_takes_each_renewal_once_and_refuses_stale_replayed_and_forged_ones() -> None:
    taken: list[Lease] = []
    d = driver(taken)
    d.lease_in(carrying(signed(seq=10)))
    assert [t.seq for t in taken] == [10] and d.core.lease == signed(seq=10)  # relayed from now on
    d.lease_in(carrying(signed(seq=10), sender="e"))  # replayed by another relay
    d.lease_in(carrying(signed(seq=9)))  # stale
    assert [t.seq for t in taken] == [10]
    d.lease_in(carrying(replace(signed(seq=12), seq=13)))  # tampered
    d.lease_in(carrying(signed(seq=14, by=Identity("x", TOKEN, None))))  # signed by x in a's name
    assert [t.seq for t in taken] == [10]
    d.lease_in(carrying(signed(seq=13)))  # the refused ones were not remembered as seen: a real 13 counts
    d.lease_in(carrying(signed(term=4, seq=1)))  # a new term starts its seq anew
    assert [(t.term, t.seq) for t in taken] == [(3, 10), (3, 13), (4, 1)]


def test_a_lease_the_election_refuses_is_not_relayed() -> None:
    taken: list[Lease] = []
    d = driver(taken, accept=False)
    d.lease_in(carrying(signed(seq=10)))
    assert len(taken) == 1 and d.core.lease is None
    assert d.core.message("ping", "c").lease is None


def test_the_leader_signs_pushes_and_then_piggybacks_its_renewals() -> None:
    ident = Identity("a", TOKEN, None)
    d = SwimDriver("a", "https://127.0.0.2:7001", PeerClient(ident, lambda url: None), sw.SwimConfig(),
                   lambda: None, lambda s, u: s, lambda t: None)  # type: ignore[arg-type,return-value]  # fmt: skip
    first, second = d.renew_lease(3, PRIORITY), d.renew_lease(3, PRIORITY)
    assert second.seq == first.seq + 1
    assert Identity("b", TOKEN, None).verify_detached(second.card, second.signature, second.signing_bytes()) == "a"
    assert d.core.message("ack", "c").lease == second


def test_a_renewal_from_the_leader_itself_needs_no_signature_check_and_a_relayed_one_does(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    taken: list[Lease] = []
    d = driver(taken)
    checked: list[str] = []
    real = d.peers.identity.verify_detached
    monkeypatch.setattr(d.peers.identity, "verify_detached", lambda *a: checked.append("x") or real(*a))
    d.lease_in(carrying(signed(seq=10), sender="a"))  # the leader's own (authenticated) message: no Ed25519 verify
    assert [t.seq for t in taken] == [10] and checked == []
    d.lease_in(carrying(signed(seq=11), sender="c"))  # relayed: the leader's signature is what makes it the leader's
    assert [t.seq for t in taken] == [10, 11] and checked == ["x"]
    d.lease_in(carrying(signed(seq=12, by=Identity("x", TOKEN, None)), sender="c"))  # forged in a's name: refused
    assert [t.seq for t in taken] == [10, 11]


def test_a_renewals_pushes_carry_its_certificate_and_its_piggybacks_do_not() -> None:
    """elect15 item 4: a gossiped lease carried no certificate, so a member that missed the winner's announce learnt a
    leader it could not verify (it asked the leader for the certificate). The leader's certificate now rides on the
    renewal's pushes (and a member's forward of it), at most MAX_LEASE_GRANTS grants on the wire; every other message
    that piggybacks the lease carries none (its size stays as it was)."""
    from agent.quorum import Grants
    from tests.unit.test_swim import admit, node

    cert = tuple(Grants(Identity(n, TOKEN, None)).sign(3, "a") for n in ("a", "b", "c"))
    a, b, c = node("a", 0), node("b", 1), node("c", 2)
    admit(a, b)
    admit(a, c)
    a.renew(replace(signed(seq=10), cert=cert))
    gossip = [i.message for i in a.tick(0.5)[0] if isinstance(i, sw.Gossip)]
    pushes = [m for m in gossip if m.lease is not None and m.lease.cert == cert]
    assert len(pushes) == 2 and all(m.lease == signed(seq=10) for m in gossip if m not in pushes)  # b and c
    assert a.message("ping", "b").lease == signed(seq=10) and a.sync_message().lease == signed(seq=10)
    wire_form = SwimMessage.parse(pushes[0].to_json())
    assert wire_form.lease is not None and wire_form.lease.cert == cert
    admit(b, a)
    admit(b, c)
    b.take_lease(wire_form.lease, "a", True)  # b follows a: it forwards the renewal (to c) with its certificate
    forwards = [i.message for i in b.tick(0.5)[0] if isinstance(i, sw.Gossip)]
    assert [m.lease.cert for m in forwards if m.lease is not None and m.lease.cert] == [cert]
    assert b.message("ack", "a").lease == signed(seq=10)
    too_many = {**signed().to_json(), "cert": [cert[0].to_json()] * (wire.MAX_LEASE_GRANTS + 1)}
    with pytest.raises(wire.WireError):
        Lease.parse(too_many)
    assert Lease.parse(signed().to_json()).cert == ()  # older leaders send none


def test_a_copy_with_its_certificate_is_news_after_one_without() -> None:
    """review15b F3: the copies of a renewal piggybacked on SWIM messages carry no certificate and often arrive before
    a push that does; a receiver took only the first copy of a (term, seq), so the certificate was never looked at.
    Now the same renewal carrying a certificate is news once when the copy seen carried none (and never again)."""
    from agent.quorum import Grants

    cert = (Grants(LEADER).sign(3, "a"),)
    taken: list[Lease] = []
    d = driver(taken)
    d.lease_in(carrying(signed(seq=10)))
    d.lease_in(carrying(replace(signed(seq=10), cert=cert), sender="e"))  # the push with the certificate
    d.lease_in(carrying(replace(signed(seq=10), cert=cert), sender="f"))  # again: no news
    d.lease_in(carrying(signed(seq=10), sender="g"))  # a cert-less copy after it: no news
    assert [(t.seq, len(t.cert)) for t in taken] == [(10, 0), (10, 1)]
    d.lease_in(carrying(replace(signed(seq=11), cert=cert)))  # with it first: one copy is news, as before
    d.lease_in(carrying(signed(seq=11)))
    assert [(t.seq, len(t.cert)) for t in taken] == [(10, 0), (10, 1), (11, 1)]


def test_a_lease_certificate_is_checked_once_per_leader_per_interval_for_a_bounded_set_of_leaders() -> None:
    """review15b F2's table: one check per leader per ``every`` seconds, at most MAX_LEADERS leaders at once (a member
    minting leader ids cannot grow it); entries older than ``every`` make room."""
    allow = CertAllowance(every=1.2)
    assert allow.take("a", 0.0) and not allow.take("a", 1.0) and allow.take("a", 1.2)
    assert all(allow.take(f"x{i}", 1.3) for i in range(MAX_LEADERS - 1))
    assert not allow.take("late", 1.3) and len(allow.at) == MAX_LEADERS  # full: a new leader waits
    assert allow.take("late", 2.5) and len(allow.at) <= MAX_LEADERS  # the old entries went
