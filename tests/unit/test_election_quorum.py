"""Quorum certificates: a leader is followed only when a majority of the members alive in the follower's own view
granted it the term (coordinator_election/machine.py), and a certificate counts only the grants whose signatures
verify (agent/quorum.py). Session 13's closing gap, each case failing on the election before certificates."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from agent.discovery import swim as sw
from agent.discovery.swim import address_voice
from agent.identity import Identity, edit_pin
from agent.quorum import Certificates, Grants
from coordinator_election import (
    Announce,
    BecameFollower,
    Broadcast,
    Election,
    ElectionConfig,
    Persist,
    Received,
    Send,
    Tick,
    Vote,
    VoteRequest,
)
from peerserve import names, wire
from tests.unit.election_sim import Network

CFG = ElectionConfig(heartbeat_s=0.3, election_timeout_s=1.2, lease_s=2.0)
# m claims the highest priority of all (priorities are self-declared); L is the leader
P = {"m": (9, 100.0, "m"), "L": (0, 8000.0, "L"), "f": (0, 2000.0, "f"), "g": (0, 1500.0, "g"), "h": (0, 1400.0, "h")}
THREE = {n: P[n] for n in ("L", "f", "m")}


def _leader_and_follower(view: dict[str, tuple[int, float, str]] = THREE) -> tuple[Election, Election]:
    """L elected by L and f in ``view``; f follows it on that certificate."""
    leader, follower = Election("L", P["L"], CFG, now=0.0), Election("f", P["f"], CFG, now=0.0)
    follower.step(Tick(0.05, view))
    assert leader.step(Tick(1.3, view)) == []  # m claims the best priority: L waits for it ...
    request = next(a for a in leader.step(Tick(2.6, view)) if isinstance(a, Broadcast)).message  # ... m stays silent
    (grant,) = [a for a in follower.step(Received(2.61, "L", request)) if isinstance(a, Send)]
    (won,) = [a for a in leader.step(Received(2.62, "f", grant.message)) if isinstance(a, Broadcast)]
    assert won.message == Announce(1, "L", P["L"], frozenset({"L", "f"}))
    follower.step(Received(2.63, "L", won.message))
    assert leader.is_leader and (follower.term, follower.accepted) == (1, "L")
    return leader, follower


def test_follows_only_with_a_majority_of_its_own_view() -> None:
    f = Election("f", P["f"], CFG, now=0.0)
    f.step(Tick(0.05, P))  # five members
    assert f.step(Received(0.1, "L", Announce(1, "L", P["L"], frozenset({"L", "f"})))) == [
        Send("L", Vote(1, "f", False, None))  # two of five: it follows no one, and says so
    ]
    assert f.accepted is None and f.leader is None
    assert f.step(Received(0.2, "L", Announce(1, "L", P["L"], frozenset({"L", "f", "g"})))) == [
        Persist(1, None, "L"),
        BecameFollower(1, "L"),
    ]


def test_voters_outside_the_view_do_not_count() -> None:
    f = Election("f", P["f"], CFG, now=0.0)
    f.step(Tick(0.05, THREE))
    made_up = frozenset({"L", "x1", "x2", "x3"})  # names no member here: a majority of nothing
    assert f.step(Received(0.1, "L", Announce(1, "L", P["L"], made_up)))[0] == Send("L", Vote(1, "f", False, None))
    assert f.accepted is None


def test_a_member_claiming_a_higher_priority_does_not_unseat_the_leader() -> None:
    """The self-declared-priority takeover: m claims a priority above L's and announces a newer term (without a
    certificate, or with its own grant). Before, L followed m (a leader followed a newer term's leader that outranked
    it) and f followed m despite its lease (it gave way to a "better" leader)."""
    leader, f = _leader_and_follower()
    for message in (Announce(2, "m", P["m"]), Announce(3, "m", P["m"], frozenset({"m"}))):
        leader.step(Received(2.8, "m", message))
        f.step(Received(2.8, "m", message))
    assert leader.is_leader and (leader.term, leader.accepted) == (1, "L")
    assert (f.term, f.accepted, f.leader) == (1, "L", "L")


def test_a_lease_less_restarted_node_is_not_captured_by_a_newer_term() -> None:
    """f restarts (no lease, listening) and m announces term 1000: f does not follow it; L's certificate it does."""
    restarted = Election("f", P["f"], CFG, now=5.0, term=1, vote="L", accepted="L")
    restarted.step(Tick(5.05, THREE))
    assert restarted.step(Received(5.1, "m", Announce(1000, "m", P["m"]))) == [Send("m", Vote(1000, "f", False, None))]
    assert restarted.step(Received(5.2, "m", Announce(1000, "m", P["m"], frozenset({"m"})))) == []  # told already
    assert (restarted.term, restarted.accepted) == (1, "L")
    assert restarted.step(Received(5.3, "L", Announce(1, "L", P["L"]))) == [BecameFollower(1, "L")]  # its renewal


def test_a_certificate_becomes_a_minority_when_the_view_grows_and_the_leader_stands_again() -> None:
    """L was elected by L and f in a view of three; g and h join. A node that sees all five does not follow L on
    that certificate (two of five); L, seeing the new members, stands again and its new certificate is followed."""
    leader, _ = _leader_and_follower()
    g = Election("g", P["g"], CFG, now=0.0)
    g.step(Tick(3.0, P))
    assert g.step(Received(3.1, "L", Announce(1, "L", P["L"], frozenset({"L", "f"})))) == [
        Send("L", Vote(1, "g", False, None))
    ]
    actions = leader.step(Tick(3.2, P))  # its view grew past its electorate: it stands again, keeping term 1's lead
    request = VoteRequest(2, "L", P["L"], frozenset({"L", "f"}), 1)
    assert actions[:2] == [Persist(2, "L"), Broadcast(request)] and leader.is_leader
    assert g.step(Received(3.3, "L", request))[-1] == Send("L", Vote(2, "g", True, None))
    leader.step(Received(3.35, "g", Vote(2, "g", True, None)))
    won = leader.step(Received(3.36, "f", Vote(2, "f", True, "L")))
    announce = next(a.message for a in won if isinstance(a, Broadcast))
    assert announce.voters == {"L", "f", "g"} and leader.led_term == 2
    assert g.step(Received(3.4, "L", announce)) == [Persist(2, "L", "L"), BecameFollower(2, "L")]


def test_single_and_two_node_clusters_still_elect() -> None:
    alone = Election("L", P["L"], CFG, now=0.0)
    assert alone.step(Tick(1.3, {}))[1].voters == {"L"}  # a majority of one is itself
    two = Network(2)
    assert two.time_until_agreed(10) is not None  # a majority of two is both
    two.crash("n1")
    two.restart("n1")
    assert two.time_until_agreed(10) is not None and not two.majority_violations()


@pytest.mark.parametrize("seed", range(120))
def test_partitions_and_heals_converge_and_never_two_majority_leaders_in_a_term(seed: int) -> None:
    """Random overlapping partitions, heals, crashes, restarts and pauses with the certificates carried (forged names
    drop out, as the agents' signature checks leave them): never two leaders accepted by majorities in one term, no
    voter elects two, no node obeys two; one leader agreed within 8 s of the faults' end."""
    rng = random.Random(seed)
    net = Network(rng.choice([3, 4, 5, 6]), seed=seed)
    net.run(2)
    for _ in range(10):
        net.inject(rng.choice(["partition", "heal", "isolate", "restart", "crash", "pause", "drop"]), rng.randrange(6))
        net.run(rng.uniform(0.2, 3.0))
    net.end_faults()
    assert net.time_until_agreed(8) is not None, seed
    assert net.majority_violations() == [] and net.double_votes() == [] and net.fencing_violations() == []


def _identities(tmp_path: Path, *names: str) -> dict[str, Identity]:
    return {n: Identity(n, "quorum-cluster-token-0123456789ab", tmp_path / n) for n in names}


def test_a_certificate_counts_only_verified_grants_of_its_term_and_candidate(tmp_path: Path) -> None:
    ids = _identities(tmp_path, "f", "L", "a", "b", "m")
    f = ids["f"]
    for n in ("L", "a", "b", "m"):  # f has met them (their requests pinned their keys)
        f.pins.check(n, ids[n].public_key)
    good = [Grants(ids[n]).sign(3, "L") for n in ("L", "a")]
    forged = wire.Grant("b", *ids["m"].sign_detached(wire.Grant.signing_bytes(f.cluster, 3, "L", "b")))
    other_term = Grants(ids["b"]).sign(2, "L")
    other_candidate = Grants(ids["b"]).sign(3, "m")
    renamed = wire.Grant("b", other_candidate.card, other_candidate.signature)
    other_cluster = Identity("b", "another-cluster-token-0123456789", tmp_path / "b2")
    stranger = Grants(other_cluster).sign(3, "L")
    certificates = Certificates(f)
    members = {"f", "L", "a", "b", "m"}
    cert = [*good, good[0], forged, other_term, renamed, stranger]
    assert certificates.voters(3, "L", cert, members) == {"L", "a"}
    assert Certificates(f).voters(3, "L", [*good, Grants(ids["b"]).sign(3, "L")], members | {"x"}) == {"L", "a", "b"}
    assert Certificates(f).voters(3, "L", good, {"f", "L"}) == {"L"}  # a grant of a non-member is not looked at


def test_each_certificate_is_verified_once_and_the_cache_is_bounded(tmp_path: Path) -> None:
    ids = _identities(tmp_path, "f", "L", "a")
    for n in ("L", "a"):
        ids["f"].pins.check(n, ids[n].public_key)
    certificates = Certificates(ids["f"], limit=3)
    for term in range(1, 6):
        cert = [Grants(ids[n]).sign(term, "L") for n in ("L", "a")]
        for _ in range(4):
            assert certificates.voters(term, "L", cert, {"f", "L", "a"}) == {"L", "a"}
    assert certificates.verifications == 10 and len(certificates.cache) == 3  # 2 per (term, leader), once


def test_own_grants_and_collected_grants(tmp_path: Path) -> None:
    ids = _identities(tmp_path, "L", "a")
    ids["L"].pins.check("a", ids["a"].public_key)
    book = Grants(ids["L"])
    assert book.take(4, "a", Grants(ids["a"]).sign(4, "L"), standing=4)
    assert not book.take(4, "a", Grants(ids["a"]).sign(4, "a"), standing=4)  # a grant to someone else
    assert not book.take(4, "a", None, standing=4)  # a granted vote without its signed grant
    cert = book.certificate(4, {"L", "a"})
    assert [g.voter for g in cert] == ["L", "a"]
    assert Certificates(ids["L"]).voters(4, "L", cert, {"L", "a"}) == {"L", "a"}
    for term in range(5, 12):
        book.take(term, "a", Grants(ids["a"]).sign(term, "L"), standing=term)
    assert len(book.collected) <= 4  # only the last few candidacies' grants are kept


def test_grants_of_a_term_we_do_not_stand_for_are_not_booked_and_the_led_terms_book_is_kept(tmp_path: Path) -> None:
    """review14b F1: a member's valid grants of far-future terms were booked before the machine looked, and only the
    4 highest terms' books were kept, so four of them deleted the book of the term really stood for (the winner
    announced a certificate of itself alone). Also without an attacker: failed stand-agains pruned the led term's."""
    ids = _identities(tmp_path, "L", "a", "m")
    for n in ("a", "m"):
        ids["L"].pins.check(n, ids[n].public_key)
    book = Grants(ids["L"])
    for term in (1000, 999, 998, 997):  # m's own valid grants of L, of terms L does not stand for
        assert not book.take(term, "m", Grants(ids["m"]).sign(term, "L"), standing=1)
    assert not book.take(1, "m", Grants(ids["m"]).sign(1, "L"), standing=None)  # L stands for nothing
    assert book.take(1, "a", Grants(ids["a"]).sign(1, "L"), standing=1)
    assert sorted(book.collected) == [1]
    assert [g.voter for g in book.certificate(1, {"L", "a"})] == ["L", "a"]
    for term in range(2, 12):  # L leads term 1 and stands again ten times without winning
        assert book.take(term, "a", Grants(ids["a"]).sign(term, "L"), standing=term, led=1)
    assert 1 in book.collected and len(book.collected) <= 5  # the kept few, and the led term's book
    cert = book.certificate(1, {"L", "a"}, keep=(11,))
    assert Certificates(ids["L"]).voters(1, "L", cert, {"L", "a"}) == {"L", "a"}


def test_the_wire_bounds_a_certificate() -> None:
    grant = ["a", "c" * 10, "s" * 10]
    body = {"type": "announce", "term": 1, "leader": "L", "priority": [0, 1.0, "L"], "cert": [grant] * 3}
    post = wire.ElectionPost.parse(body)
    assert post.cert is not None and len(post.cert) == 3 and post.to_json() == body
    with pytest.raises(wire.WireError):
        wire.ElectionPost.parse({**body, "cert": [grant] * (wire.MAX_GRANTS + 1)})
    with pytest.raises(wire.WireError):
        wire.ElectionPost.parse({**body, "cert": [["a", "c"]]})


def test_a_follower_left_without_a_leader_by_a_standing_again_that_did_not_win_brings_another() -> None:
    """L stands again (m names a newer term); f grants, but its grant is lost and the attempt ends: f holds term 6 with
    no leader it accepts, so it cannot obey L. Its refusal at term 6 makes L stand again (it used to get L's
    certificate of term 1 back, which f, at term 6, cannot take: f stayed without a leader it obeys)."""
    leader, f = _leader_and_follower()
    stand = leader.step(Received(3.0, "m", Vote(5, "m", False, None)))
    request = next(a.message for a in stand if isinstance(a, Broadcast))
    assert request == VoteRequest(6, "L", P["L"], frozenset({"L", "f"}), 1)
    assert f.step(Received(3.01, "L", request))[-1] == Send("L", Vote(6, "f", True, "L"))  # lost on the way
    leader.step(Tick(5.4, THREE))  # a lease and a heartbeat later the attempt ends; L keeps leading term 1
    assert leader.is_leader and leader.led_term == 1 and (f.term, f.leader, f.accepted) == (6, "L", None)
    renewal = Announce(6, "L", P["L"])
    (refusal,) = f.step(Received(5.5, "L", renewal))  # holds its lease on L, and says it follows no one at 6
    assert refusal == Send("L", Vote(6, "f", False, None))
    again = leader.step(Received(5.51, "f", refusal.message))
    assert Broadcast(VoteRequest(7, "L", P["L"], frozenset({"L", "f"}), 1)) in again
    grant = f.step(Received(5.52, "L", VoteRequest(7, "L", P["L"], frozenset({"L", "f"}), 1)))[-1]
    won = next(a.message for a in leader.step(Received(5.53, "f", grant.message)) if isinstance(a, Broadcast))
    f.step(Received(5.54, "L", won))
    assert (f.term, f.accepted) == (7, "L") and leader.led_term == 7


def test_a_just_restarted_node_grants_nobody_until_its_expected_peers_are_back() -> None:
    """review14b F7: f restarts (it followed L at term 3) with a view still filling, {f, m} or {f, m, X}: it granted m,
    and m's certificate {m, f} (or {m, X}) was a majority of that small view. Now it refuses until its expected peers
    are all in view, and they count in the majority meanwhile; once back, it grants as before."""
    view = {n: (0, 1000.0, n) for n in ("f", "m", "X", "L", "A")}
    for known in (frozenset({"L", "A", "m", "X"}), frozenset()):  # the leader it accepted is expected even unnamed
        f = Election("f", view["f"], CFG, now=0.0, term=3, vote="L", accepted="L", known=known)
        f.step(Tick(0.05, {n: view[n] for n in ("f", "m")}))
        assert f.step(Received(0.1, "m", VoteRequest(4, "m", view["m"])))[-1] == Send("m", Vote(4, "f", False, None))
        f.step(Tick(0.15, {n: view[n] for n in ("f", "m", "X")}))
        f.step(Received(0.2, "m", Announce(4, "m", view["m"], frozenset({"m", "X"}))))
        assert (f.term, f.accepted, f.vote) == (3, "L", "L")  # 2 of {f, m, X, L(, A)}: not a majority
        f.step(Tick(0.25, view))  # all back: it grants again
        assert f.step(Received(0.3, "A", VoteRequest(4, "A", view["A"])))[-1] == Send("A", Vote(4, "f", True, None))
    fresh = Election("f", view["f"], CFG, now=0.0)  # a fresh node (nothing expected) grants as before
    fresh.step(Tick(0.05, {n: view[n] for n in ("f", "m")}))
    assert fresh.step(Received(0.1, "m", VoteRequest(1, "m", view["m"])))[-1] == Send("m", Vote(1, "f", True, None))


def test_a_certificate_met_while_the_view_fills_counts_its_voters_once_they_are_members(tmp_path: Path) -> None:
    """review14b F3: a grant of a voter not yet a member was skipped and the smaller set cached as whole, so a node
    that met L's certificate while its view was still filling kept {L} for good and never followed L."""
    ids = _identities(tmp_path, "L", "A", "B", "C")
    for n in ("L", "A", "B"):
        ids["C"].pins.check(n, ids[n].public_key)
    cert = [Grants(ids[n]).sign(7, "L") for n in ("L", "A", "B")]  # L won term 7 on {L, A, B} of five
    certificates = Certificates(ids["C"])
    assert certificates.voters(7, "L", cert, {"L", "C"}) == {"L"}  # A and B not admitted here yet
    assert certificates.voters(7, "L", cert, {"L", "A", "B", "C", "D"}) == {"L", "A", "B"}
    assert certificates.verifications == 3  # L's grant was not checked twice


def test_a_forged_grant_is_verified_once_and_the_verdicts_are_bounded(tmp_path: Path) -> None:
    """review14b F6: a certificate with one bad grant was never cached, so each message re-verified all its grants
    (3.56 ms per 32-grant message). Each grant's verdict is kept by its bytes (bounded); a certificate whose refusals
    are final (forgeries) is cached whole."""
    names = [f"n{i}" for i in range(6)]
    ids = _identities(tmp_path, "R", *names)
    for n in names:
        ids["R"].pins.check(n, ids[n].public_key)
    certificates = Certificates(ids["R"], grant_limit=8)
    for term in (1, 2):
        cert = [Grants(ids[n]).sign(term, "n0") for n in [*names, "R"]]  # R's own grant too
        cert[-2] = wire.Grant(cert[-2].voter, cert[-2].card, cert[0].signature)  # n5's card, n0's signature
        for _ in range(5):
            assert certificates.voters(term, "n0", cert, {*names, "R"}) == {*names[:-1], "R"}
    assert certificates.verifications == 14 and len(certificates.checked) == 8  # each grant once; bounded
    unpinned = Certificates(ids["R"])  # a voter whose pin is refused: not cached whole, its signature checked once
    stranger = _identities(tmp_path, "z")["z"]
    cert = [Grants(ids["n1"]).sign(3, "n0"), Grants(stranger).sign(3, "n0")]
    ids["R"].pins.check("z", ids["n1"].public_key)  # "z" is pinned to another key here: its grant cannot count
    for _ in range(3):
        assert unpinned.voters(3, "n0", cert, {"n0", "n1", "z", "R"}) == {"n1"}
    assert unpinned.verifications == 2 and not unpinned.cache


def test_ids_minted_at_one_address_are_one_voice() -> None:
    """review14b F2: a token holder mints ids (cards from the token's CA), gets them admitted, and their grants made
    its certificate a majority of every view: m with s1-s3 was 4 of 6 at f, which followed m despite its lease on L.
    Voters and the view count by address as admitted (the shell's ``voices``): m's four ids are one of three voices.
    Loopback members (no voice given) count by id, as before."""
    ids = ("L", "f", "m", "s1", "s2", "s3")
    view = {n: (0, 8000.0 if n == "L" else 1000.0, n) for n in ids}
    voices = {"L": "10.0.0.1", "m": "10.0.0.9", "s1": "10.0.0.9", "s2": "10.0.0.9", "s3": "10.0.0.9"}
    sybil = Announce(2, "m", view["m"], frozenset({"m", "s1", "s2", "s3"}))
    for lease in (True, False):
        f = Election("f", view["f"], CFG, now=0.0)
        f.step(Tick(0.05, view, voices))
        if lease:
            f.step(Received(0.1, "L", Announce(1, "L", view["L"], frozenset({"L", "f"}))))  # 2 of 3 voices
            assert f.accepted == "L"
        f.step(Received(0.2, "m", sybil))
        assert f.accepted == ("L" if lease else None) and f.term == (1 if lease else 0)
    loopback = Election("f", view["f"], CFG, now=0.0)  # the one-host demo: no voices, every id its own
    loopback.step(Tick(0.05, view))
    loopback.step(Received(0.2, "m", sybil))
    assert loopback.accepted == "m"
    # a candidate counts its grants the same way: m's own candidacy does not win on its minted ids' grants
    best = {**view, "m": (9, 1000.0, "m")}
    candidate = Election("m", best["m"], CFG, now=0.0)
    request = next(a.message for a in candidate.step(Tick(1.3, best, voices)) if isinstance(a, Broadcast))
    assert request == VoteRequest(1, "m", best["m"])
    for n in ("s1", "s2", "s3"):
        candidate.step(Received(1.31, n, Vote(1, n, True, None)))
    assert not candidate.is_leader  # one voice of three
    candidate.step(Received(1.32, "f", Vote(1, "f", True, None)))
    assert candidate.is_leader  # f's grant is a second voice: a real majority


SPELLINGS = ("10.0.05", "10.0.005", "10.00.5", "10.000005", "167772165", "012.0.5", "10.0.0005", "10.5", "0xa.0.0.5")


def test_one_address_in_other_spellings_is_one_voice() -> None:
    """review14d Q1: the C resolver (so httpx) connects every one of SPELLINGS to 10.0.0.5, and ``[0-9.]{7,15}``
    passed most: a member announcing each id it minted at another spelling gave each its own voice (4 ids at
    10.0.0.5 plus f: 5 of 7, a majority), and a loopback spelling lost its exemption. Now the wire, the peer
    route's hint and ``Swim.hint`` take only the canonical dotted quad, and ``address_voice`` counts any spelling as
    its dotted quad, so the same majority is 2 voices of 4."""
    for host in SPELLINGS:
        url = f"https://{host}:7443"
        assert names.ipv4_spelling(host) == "10.0.0.5" and not names.PEER_URL.fullmatch(url)
        with pytest.raises(wire.WireError):
            wire.MemberUpdate.parse(["m", "alive", 1, url, 0, ""])
        assert address_voice(host) == "10.0.0.5"
    for host in ("127.000001", "2130706433", "127.1", "0x7f.0.0.1"):
        assert address_voice(host) is None  # loopback in any spelling: exempt, as 127.0.0.1
    assert names.PEER_URL.fullmatch("https://10.0.0.5:7443") and address_voice("10.0.0.5") == "10.0.0.5"
    assert not names.PEER_URL.fullmatch("https://10.0.0.5:07443") and names.ipv4_spelling("board.lan") is None
    assert address_voice("board.lan") == "board.lan"  # a seed given by name (ours only: the wire takes no names)
    me = sw.Swim("f", "https://10.0.0.6:7443", sw.SwimConfig(), random.Random(0))
    for i, host in enumerate(SPELLINGS):
        me.hint(f"s{i}", f"https://{host}:7443", host, 0.0, vouched=True)
        me.hint(f"t{i}", "https://10.0.0.5:7443", host, 0.0)  # the address given apart, in another spelling
    me.hint("m", "https://10.0.0.5:7443", "10.0.0.5", 0.0)
    assert [c.node_id for c in me.candidates.values()] == ["m"]
    # the repro's certificate, counted by the voices the shell now gives
    hosts = {"m0": "10.0.0.5", "m1": "10.0.05", "m2": "167772165", "m3": "012.0.5", "L": "10.0.0.7", "g": "10.0.0.8"}
    view = {n: (0, 8000.0 if n == "L" else 1000.0, n) for n in [*hosts, "f"]}
    voices = {n: v for n, h in hosts.items() if (v := address_voice(h)) is not None}
    f = Election("f", view["f"], CFG, now=0.0)
    f.step(Tick(0.05, view, voices))
    f.step(Received(0.2, "m0", Announce(1, "m0", view["m0"], frozenset({"m0", "m1", "m2", "m3", "f"}))))
    assert f.accepted is None and f.term == 0  # 2 voices of 4 (m's address, f): not a majority


def _refused_stream(
    node: str, known: frozenset[str], alive: list[str], until: float
) -> tuple[Election, float | None, float | None]:
    """review14d Q2's run: ``node`` (default config) ticks every 0.1 s; a member M sends it a refused vote one term
    past its own once a second, and L (best priority) asks it for a vote at its next term once a second. When it
    first granted L, and when it first stood."""
    e = Election(node, (5, 0.0, node), ElectionConfig(), 0.0, term=3, known=known)
    view = {n: (9 if n == "L" else 1, 0.0, n) for n in alive}
    voices = {n: f"10.0.0.{i + 10}" for i, n in enumerate(alive)}
    granted_at = stood_at = None
    for k in range(1, round(until * 10) + 1):
        t = k / 10
        acts = e.step(Tick(t, view, voices))
        if stood_at is None and any(isinstance(a, Broadcast) and isinstance(a.message, VoteRequest) for a in acts):
            stood_at = t
        if k % 10 == 5:
            e.step(Received(t, "M", Vote(e.term + 1, "M", False, None)))
        if k % 10 == 0 and "L" in view:
            out = e.step(Received(t, "L", VoteRequest(e.term + 1, "L", view["L"])))
            if granted_at is None and any(isinstance(a, Send) and isinstance(a.message, Vote) and a.message.granted
                                          for a in out):  # fmt: skip
                granted_at = t
    return e, granted_at, stood_at


def test_one_members_refused_votes_neither_hold_a_restart_nor_stop_a_node_standing() -> None:
    """review14d Q2: each refused vote of a newer term restarted the listen (``lease_until``), any member may send
    them unasked, and the restart wait ended only with that listen: a restarted node expecting a board gone for good
    (G) refused every vote for the 60 s measured, and a node with no lease never stood. Now the first listen ends
    when it was due (1.2 s) and a refusal starts a listen at most once per two timeouts."""
    restarted, granted_at, _ = _refused_stream("r", frozenset({"L", "A", "M", "G"}), ["r", "L", "A", "M"], 30.0)
    assert granted_at is not None and granted_at <= 2.0 and not restarted._restarting()
    _, _, stood_at = _refused_stream("x", frozenset(), ["x", "A", "M"], 30.0)
    assert stood_at is not None and stood_at <= 2 * ElectionConfig().election_timeout_s
    # an honest refusal of a newer term still ends a candidacy and gives that term's leader a listen, once
    c = Election("x", (5, 0.0, "x"), CFG, now=0.0)
    view = {"x": (5, 0.0, "x"), "A": (1, 0.0, "A"), "B": (1, 0.0, "B")}
    c.step(Tick(1.3, view))
    assert c.role.value == "candidate" and c.term == 1
    c.step(Received(1.4, "A", Vote(4, "A", False, None)))
    assert c.role.value == "follower" and c.term == 4 and c.lease_until == pytest.approx(1.4 + CFG.election_timeout_s)
    c.step(Received(2.0, "B", Vote(5, "B", False, None)))  # another within two timeouts: the listen is not moved
    assert c.term == 5 and c.lease_until == pytest.approx(1.4 + CFG.election_timeout_s)


def test_a_certificate_cached_whole_drops_a_voter_whose_pin_is_forgotten_or_changed(tmp_path: Path) -> None:
    """review14d Q3: a certificate looked at whole was cached per (term, leader) and answered from the cache without
    the pin check, so a voter an operator had re-pinned to another key (``peerserve pins forget ID --key``: a stolen
    card's id given to the re-imaged board) still counted in it. The cache is dropped when the pins change."""
    ids = _identities(tmp_path, "R", "L", "a", "b")
    for n in ("L", "a", "b"):
        ids["R"].pins.check(n, ids[n].public_key)
    certificates = Certificates(ids["R"])
    cert = [Grants(ids[n]).sign(5, "L") for n in ("L", "a", "b")]
    members = {"R", "L", "a", "b"}
    assert certificates.voters(5, "L", cert, members) == {"L", "a", "b"} and certificates.cache
    reimaged = _identities(tmp_path / "new", "b")["b"]
    path = ids["R"].pins.path
    assert path is not None
    edit_pin(path, "b", reimaged.public_key)  # the operator's re-pin, as the CLI does it (the agent keeps running)
    assert certificates.voters(5, "L", cert, members) == {"L", "a"}  # b's old key no longer counts
    edit_pin(path, "a", None)  # forgotten: a's next key is pinned on its first contact (here, this grant's card)
    assert certificates.voters(5, "L", cert, members) == {"L", "a"}
    assert certificates.verifications == 3  # the signatures were not checked again: only the pins
