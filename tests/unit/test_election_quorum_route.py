"""A leader is followed only on a quorum certificate, through the real peer route (signed messages, agent.peer_api,
Leadership, agent.quorum's checks, the fencing check). Session 13's closing gap: priorities are self-declared, so a
member m that claims a priority above the leader L's took a follower f with one announce of a newer term (the
follower gave way to a "better" leader despite its lease), and a node with no lease followed any member's newer
announce. Here f stays with L, obeys L (200) and refuses m (409), whatever m claims or signs, and whether or not f
holds a lease. Only the membership table is a fixed list (SWIM's view: L and m alive; m claims the higher priority).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent.identity import AuthError, Identity
from agent.leadership import Leadership
from agent.node import NodeAgent
from agent.peer_api import create_peer_app
from agent.peer_client import PeerClient
from agent.peers import Member
from agent.quorum import Certificates, Grants
from agent.settings import load_settings
from coordinator_election import Announce, Election, ElectionConfig, Received
from peerserve import wire
from tests.peer_tools import leadership_up_a_minute
from tests.unit.follower_route import LeaderAndMember, command, follower_bed

TOKEN = "quorum-cluster-token-0123456789ab"


def _announce(node: str, term: int, cert: list[wire.Grant] | None, priority: int = 0) -> dict[str, Any]:
    body: dict[str, Any] = {"type": "announce", "term": term, "leader": node, "priority": [priority, 8000.0, node]}
    if cert is not None:
        body["cert"] = [g.to_json() for g in cert]
    return body


def _scenario(tmp_path: Path, restarted: bool) -> list[Any]:
    async def scenario() -> list[Any]:
        table = LeaderAndMember(m_priority=100)
        async with follower_bed(tmp_path, TOKEN, table) as bed:
            agent, lead, send = bed.agent, bed.agent.leadership, bed.send
            assert agent.identity is not None
            ids = {n: client.identity for n, client in bed.clients.items()}
            signed = {n: Grants(identity) for n, identity in ids.items()}
            f_grants = Grants(agent.identity)
            seen: list[Any] = []
            # L stands for term 1; f grants (its vote, signed by f, goes back to L: here we sign it with f's key)
            request = {"type": "vote_request", "term": 1, "candidate": "L", "priority": [0, 8000.0, "L"]}
            seen.append(await send("L", "POST", wire.ROUTE_ELECTION, request))
            seen.append((lead.term, lead.machine.vote))
            cert_l = [signed["L"].sign(1, "L"), f_grants.sign(1, "L")]  # a majority of f's view {f, L, m}
            if restarted:  # f restarts: no lease, it keeps only (term, vote, accepted) from its disk
                agent.leadership = lead = Leadership(agent)
            else:
                seen.append(await send("L", "POST", wire.ROUTE_ELECTION, _announce("L", 1, cert_l)))
                seen.append((lead.term, lead.accepted))
            # m claims the higher priority and a newer term: without a certificate, with its own grant alone, with a
            # forged grant of f (m's card, f's name), with a grant f really signed -- but for another term
            seen.append(await send("m", "POST", wire.ROUTE_ELECTION, _announce("m", 2, None, priority=100)))
            seen.append(
                await send("m", "POST", wire.ROUTE_ELECTION, _announce("m", 3, [signed["m"].sign(3, "m")], 100))
            )
            forged = wire.Grant(
                "f", *ids["m"].sign_detached(wire.Grant.signing_bytes(agent.identity.cluster, 4, "m", "f"))
            )
            cert_forged = [signed["m"].sign(4, "m"), forged, forged]  # and named twice
            seen.append(await send("m", "POST", wire.ROUTE_ELECTION, _announce("m", 4, cert_forged, 100)))
            other_term = [signed["m"].sign(5, "m"), f_grants.sign(1, "m")]  # f's grant of term 1, replayed for 5
            seen.append(await send("m", "POST", wire.ROUTE_ELECTION, _announce("m", 5, other_term, 100)))
            other_candidate = [signed["m"].sign(1, "m"), f_grants.sign(1, "L")]  # L's grant, claimed for m
            seen.append(await send("m", "POST", wire.ROUTE_ELECTION, _announce("m", 6, other_candidate, 100)))
            seen.append(lead.lease_received(wire.Lease(7, "m", 1, (100, 1000.0, "m"))))  # a relayed lease too
            seen.append((lead.term, lead.accepted, lead.leader))
            if restarted:  # L's certificate reaches f (the announce of its win, or sent when f said it follows no one)
                seen.append(await send("L", "POST", wire.ROUTE_ELECTION, _announce("L", 1, cert_l)))
                seen.append((lead.term, lead.accepted))
            seen.append(await send("L", "PUT", wire.ROUTE_DESIRED, command("L", 1)))
            seen.append(await send("m", "PUT", wire.ROUTE_DESIRED, command("m", 7)))
            # L dies: f's lease ends, and still m's word takes nobody
            table.leader_status = "dead"
            seen.append(
                await send("m", "POST", wire.ROUTE_ELECTION, _announce("m", 8, [signed["m"].sign(8, "m")], 100))
            )
            seen.append((lead.term, lead.accepted))
            return seen

    return asyncio.run(scenario())


def test_a_member_claiming_a_higher_priority_does_not_take_the_follower(tmp_path: Path) -> None:
    seen = _scenario(tmp_path, restarted=False)
    assert seen == [
        200,
        (1, "L"),
        200,
        (1, "L"),
        200,
        200,
        200,
        200,
        200,
        False,
        (1, "L", "L"),
        200,
        409,
        200,
        (1, "L"),
    ]


def test_a_restarted_node_without_a_lease_is_not_captured_by_a_newer_term(tmp_path: Path) -> None:
    seen = _scenario(tmp_path, restarted=True)
    assert seen == [
        200,
        (1, "L"),
        200,
        200,
        200,
        200,
        200,
        False,
        (1, None, None),
        200,
        (1, "L"),
        200,
        409,
        200,
        (1, "L"),
    ]


def test_an_announce_without_a_certificate_is_refused_with_a_log_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An older peer's announce (no ``cert`` field): refused with a clear line, no crash, no 500."""
    with caplog.at_level(logging.WARNING, logger="agent.leadership"):
        _scenario(tmp_path, restarted=True)
    assert any("carries no quorum certificate" in r.getMessage() for r in caplog.records)


class Four:
    """L's view: A, B and m alive besides L."""

    def members(self) -> list[Member]:
        return [
            Member(n, "127.0.0.1", f"http://127.0.0.1:{19100 + i}", "alive", mem_total_mb=1000.0,
                   peer_url=f"https://127.0.0.1:{19200 + i}")
            for i, n in enumerate(("A", "B", "m"))
        ]  # fmt: skip


def test_planted_far_future_grants_do_not_empty_the_winners_certificate(tmp_path: Path) -> None:
    """review14b F1 (its repro, through the peer route): L stands for term 1; m sends L four granted votes of terms
    997-1000 (its own valid grants of L), then A and B grant term 1. L's announce used to carry only L's own grant (the
    book of term 1 was pruned) and a follower F of view {L, A, B, m, F} did not follow it."""

    async def scenario() -> tuple[list[wire.Grant], list[int], Any]:
        overrides = {"node_id": "L", "data_dir": str(tmp_path / "L"), "cluster_token": TOKEN, "mdns": False}
        agent = NodeAgent(load_settings(env={}, overrides=overrides), peers=Four())
        agent.leadership = lead = Leadership(agent)
        http = httpx.AsyncClient(transport=httpx.ASGITransport(app=create_peer_app(agent, agent.identity)))
        ids = {n: Identity(n, TOKEN, tmp_path / n) for n in ("A", "B", "m")}
        clients = {n: PeerClient(ids[n], lambda url: None, http=http) for n in ids}
        try:
            lead.machine.observe(lead._view())
            lead.machine._stand(lead.monotonic())  # L stands for term 1 (its broadcast is not needed here)
            for voter, term in [("m", 1000), ("m", 999), ("m", 998), ("m", 997), ("A", 1), ("B", 1)]:
                vote = {"type": "vote", "term": term, "voter": voter, "granted": True, "leader": None,
                        "grant": Grants(ids[voter]).sign(term, "L").to_json()}  # fmt: skip
                status, _ = await clients[voter].call("L", "http://L", "POST", wire.ROUTE_ELECTION, body=vote)
                assert status == 200
            assert lead.is_leader and lead.machine.cert == {"L", "A", "B"}
            body = lead._encode(None, Announce(lead.term, "L", lead.machine.priority, lead.machine.cert))
            return [wire.Grant.parse(g) for g in body["cert"]], sorted(lead.grants.collected), lead.machine.priority
        finally:
            for client in clients.values():
                await client.close()
            await agent.stop()

    cert, books, priority = asyncio.run(scenario())
    assert [g.voter for g in cert] == ["A", "B", "L"] and books == [1]
    voters = Certificates(Identity("F", TOKEN, tmp_path / "F")).voters(1, "L", cert, {"L", "A", "B", "m", "F"})
    f = Election("F", (0, 1000.0, "F"), ElectionConfig(), 0.0)
    f.observe({n: (0, 1000.0, n) for n in ("L", "A", "B", "m")})
    f.step(Received(10.0, "L", Announce(1, "L", priority, voters)))
    assert voters == {"A", "B", "L"} and f.accepted == "L"


class Filling:
    """f's view just after its restart: m got in first; the rest arrives later."""

    def __init__(self) -> None:
        self.names = ["m"]

    def members(self) -> list[Member]:
        return [
            Member(n, "127.0.0.1", f"http://127.0.0.1:{19300 + i}", "alive", mem_total_mb=1000.0,
                   peer_url=f"https://127.0.0.1:{19400 + i}")
            for i, n in enumerate(self.names)
        ]  # fmt: skip


def test_a_just_restarted_node_is_not_taken_by_the_member_admitted_first(tmp_path: Path) -> None:
    """review14b F7 (its repro, through the peer route): f restarts having followed L at term 3; m, admitted first,
    asks f for term 4. f granted, followed m's announce of {m, f}, obeyed m's empty desired set (200) and refused L
    (409). Now f refuses the vote, m's certificate of itself is no majority, m is fenced and L obeyed."""

    async def scenario() -> list[Any]:
        table = Filling()
        overrides = {"node_id": "f", "data_dir": str(tmp_path / "f"), "cluster_token": TOKEN, "mdns": False}
        agent = NodeAgent(load_settings(env={}, overrides=overrides), peers=table)
        agent.store.save_election_state(3, "L", "L")  # before the restart f followed L at term 3
        agent.leadership = lead = Leadership(agent)
        sent: list[dict[str, Any]] = []

        async def capture(url: str, body: dict[str, Any]) -> None:
            sent.append(body)

        lead._post = capture  # type: ignore[method-assign]
        http = httpx.AsyncClient(transport=httpx.ASGITransport(app=create_peer_app(agent, agent.identity)))
        ids = {n: Identity(n, TOKEN, tmp_path / n) for n in ("m", "L")}
        clients = {n: PeerClient(ids[n], lambda url: None, http=http) for n in ids}

        async def send(node: str, method: str, route: str, body: dict[str, Any]) -> int:
            for _ in range(3):
                status, _ = await clients[node].call("f", "http://f", method, route, body=body)
                if status != 503:  # a first contact waits for its pin write
                    break
                await asyncio.sleep(0.2)
            return status

        seen: list[Any] = []
        try:
            request = {"type": "vote_request", "term": 4, "candidate": "m", "priority": [0, 1000.0, "m"]}
            seen.append(await send("m", "POST", wire.ROUTE_ELECTION, request))
            await asyncio.sleep(0.1)
            vote = next(b for b in sent if b.get("type") == "vote")
            seen.append((vote["term"], vote["granted"], "grant" in vote))
            own = [Grants(ids["m"]).sign(4, "m")]  # m's certificate of itself: f granted nothing
            seen.append(await send("m", "POST", wire.ROUTE_ELECTION, _announce("m", 4, own)))
            seen.append((lead.term, lead.accepted))
            seen.append(await send("m", "PUT", wire.ROUTE_DESIRED, command("m", 4)))
            table.names += ["L", "A", "B"]  # the rest of f's view arrives
            seen.append(await send("L", "PUT", wire.ROUTE_DESIRED, command("L", 3)))
            return seen
        finally:
            for client in clients.values():
                await client.close()
            await agent.stop()

    assert asyncio.run(scenario()) == [200, (4, False, False), 200, (3, "L"), 409, 200]


class Minted:
    """f's view: L at its own address; m and the ids it minted with the token (admitted by SWIM) at m's."""

    def __init__(self) -> None:
        self.names = ["L", "m"]

    def members(self) -> list[Member]:
        return [
            Member(n, "10.0.0.1" if n == "L" else "10.0.0.9", f"http://127.0.0.1:{19500 + i}", "alive",
                   mem_total_mb=1000.0, peer_url=f"https://127.0.0.1:{19600 + i}")
            for i, n in enumerate(self.names)
        ]  # fmt: skip


def test_ids_minted_at_one_address_do_not_take_the_follower(tmp_path: Path) -> None:
    """review14b F2 (its repro, with the members at LAN addresses): f follows L at term 1 on {L, f}; m's three minted
    ids s1-s3 are admitted and grant m term 2. f followed m (4 of 6), obeyed its empty desired set and refused L. Now
    m's ids are one voice of f's three (L's, f's, m's address): f stays with L, refuses m (409) and obeys L."""

    async def scenario() -> list[Any]:
        table = Minted()
        overrides = {"node_id": "f", "data_dir": str(tmp_path / "f"), "cluster_token": TOKEN, "mdns": False}
        agent = NodeAgent(load_settings(env={}, overrides=overrides), peers=table)
        agent.leadership = lead = leadership_up_a_minute(agent)
        assert agent.identity is not None
        http = httpx.AsyncClient(transport=httpx.ASGITransport(app=create_peer_app(agent, agent.identity)))
        ids = {n: Identity(n, TOKEN, tmp_path / n) for n in ("L", "m", "s1", "s2", "s3")}
        clients = {n: PeerClient(ids[n], lambda url: None, http=http) for n in ids}
        g = {n: Grants(i) for n, i in ids.items()}

        async def send(node: str, method: str, route: str, body: dict[str, Any]) -> int:
            for _ in range(3):
                status, _ = await clients[node].call("f", "http://f", method, route, body=body)
                if status != 503:  # a first contact waits for its pin write
                    break
                await asyncio.sleep(0.2)
            return status

        seen: list[Any] = []
        try:
            cert_l = [g["L"].sign(1, "L"), Grants(agent.identity).sign(1, "L")]
            seen.append(await send("L", "POST", wire.ROUTE_ELECTION, _announce("L", 1, cert_l)))
            table.names += ["s1", "s2", "s3"]
            cert_m = [g[n].sign(2, "m") for n in ("m", "s1", "s2", "s3")]
            for _ in range(3):  # a minted signer met first is refused once while its pin is written
                seen.append(await send("m", "POST", wire.ROUTE_ELECTION, _announce("m", 2, cert_m)))
                await asyncio.sleep(0.3)
            seen.append((lead.term, lead.accepted, lead.leader))
            seen.append(await send("m", "PUT", wire.ROUTE_DESIRED, command("m", 2)))
            seen.append(await send("L", "PUT", wire.ROUTE_DESIRED, command("L", 1)))
            return seen
        finally:
            for client in clients.values():
                await client.close()
            await agent.stop()

    assert asyncio.run(scenario()) == [200, 200, 200, 200, (1, "L", "L"), 409, 200]


def test_a_node_that_missed_the_announce_follows_the_leader_from_its_gossiped_lease(tmp_path: Path) -> None:
    """elect15 item 4: a renewal relayed on SWIM carried no certificate, so f, which missed L's announce of term 1,
    could not verify L from it (it refused, and waited for L to send the certificate directly). Now a renewal's pushes
    carry it: f follows L from the lease alone. A relay that swapped a grant for a forgery does not poison the cache
    (the leader's certificate, whole, still counts afterwards), and a lease without one is judged as before."""

    async def scenario() -> list[Any]:
        table = LeaderAndMember(m_priority=100)
        overrides = {"node_id": "f", "data_dir": str(tmp_path / "f"), "cluster_token": TOKEN, "mdns": False}
        agent = NodeAgent(load_settings(env={}, overrides=overrides), peers=table)
        agent.leadership = lead = leadership_up_a_minute(agent)
        assert agent.identity is not None
        ids = {n: Identity(n, TOKEN, tmp_path / n) for n in ("L", "m")}
        for n, identity in ids.items():  # f has met them (a first contact's pin is written in the background)
            for _ in range(20):
                try:
                    agent.identity.pins.check(n, identity.public_key)
                    break
                except AuthError:
                    await asyncio.sleep(0.1)
        cert = (Grants(ids["L"]).sign(1, "L"), Grants(agent.identity).sign(1, "L"))  # 2 of f's view {f, L, m}
        forged = wire.Grant("f", *ids["m"].sign_detached(wire.Grant.signing_bytes(agent.identity.cluster, 1, "L", "f")))
        seen: list[Any] = []
        try:
            seen.append(lead.lease_received(wire.Lease(1, "L", 1, (0, 8000.0, "L"))))  # no certificate
            seen.append(lead.lease_received(wire.Lease(1, "L", 2, (0, 8000.0, "L"), cert=(cert[0], forged))))
            seen.append((lead.term, lead.accepted))
            # one lease certificate per leader per election timeout (review15b F2): the genuine one checked a timeout on
            seen.append(lead.lease_received(wire.Lease(1, "L", 3, (0, 8000.0, "L"), cert=cert)))
            clock = lead.monotonic
            lead.monotonic = lambda: clock() + lead.machine.config.election_timeout_s
            seen.append(lead.lease_received(wire.Lease(1, "L", 4, (0, 8000.0, "L"), cert=cert)))
            seen.append((lead.term, lead.accepted, lead.leader))
            return seen
        finally:
            await agent.stop()

    assert asyncio.run(scenario()) == [False, False, (0, None), False, True, (1, "L", "L")]


def test_a_members_own_leases_of_forged_grants_cost_one_check_per_timeout(tmp_path: Path) -> None:
    """review15b F2: m puts a lease signed as itself (a new seq each time) with forged grants of every member on SWIM
    messages (a route with no per-sender rate limit). Before, every such lease cost f a signature check per grant (150
    for 50 leases) and filled f's verdict cache; now one certificate per leader per election timeout is checked (3),
    its verdicts are not kept, and a lease that cannot change whom f follows (a term below f's, or of the leader f
    accepts at its term) is not checked at all."""

    async def scenario() -> None:
        overrides = {"node_id": "f", "data_dir": str(tmp_path / "f"), "cluster_token": TOKEN, "mdns": False}
        agent = NodeAgent(load_settings(env={}, overrides=overrides), peers=LeaderAndMember(m_priority=100))
        lead = leadership_up_a_minute(agent)
        assert agent.identity is not None and lead.certificates is not None
        m = Identity("m", TOKEN, tmp_path / "m")
        try:

            def forged(term: int) -> tuple[wire.Grant, ...]:  # m's card, a fresh random signature each (no cache hit)
                card = m.sign_detached(b"")[0]
                return tuple(wire.Grant(v, card, base64.b64encode(os.urandom(64)).decode()) for v in ("L", "m", "f"))

            for seq in range(1, 51):
                assert lead.lease_received(wire.Lease(5, "m", seq, (100, 1000.0, "m"), cert=forged(5))) is False
            assert lead.certificates.verifications == 3 and len(lead.certificates.checked) == 0
            lead.machine.term = 9  # a term below ours: nothing it carries can change whom f follows
            lead.monotonic = lambda: time.monotonic() + 120.0
            assert lead.lease_received(wire.Lease(8, "m", 99, (100, 1000.0, "m"), cert=forged(8))) is False
            lead.machine.accepted = "L"  # the leader f accepts at its term: followed already
            assert lead.lease_received(wire.Lease(9, "L", 1, (0, 8000.0, "L"), cert=forged(9))) is True
            assert lead.certificates.verifications == 3
        finally:
            await agent.stop()

    asyncio.run(scenario())


def test_the_leader_puts_its_certificate_on_every_fourth_renewal_within_the_bound(tmp_path: Path) -> None:
    """The leader's side of item 4: a renewal of the term it leads carries its certificate every LEASE_CERT_EVERY-th
    time (a member that missed the announce verifies it within 1.2 s), none while it stands again (the renewal's term
    is not the certificate's) and none above MAX_LEASE_GRANTS grants (those members ask, as before)."""
    from agent.leadership import LEASE_CERT_EVERY

    async def scenario() -> None:
        overrides = {"node_id": "f", "data_dir": str(tmp_path / "f"), "cluster_token": TOKEN, "mdns": False}
        agent = NodeAgent(load_settings(env={}, overrides=overrides), peers=LeaderAndMember(m_priority=100))
        lead = leadership_up_a_minute(agent)
        try:
            lead.machine.cert, lead.machine.led_term = frozenset({"f"}), 1  # f leads term 1 on its own grant
            carried = [len(lead._lease_cert(1)) for _ in range(2 * LEASE_CERT_EVERY)]
            assert carried == ([1] + [0] * (LEASE_CERT_EVERY - 1)) * 2
            assert all(lead._lease_cert(2) == () for _ in range(LEASE_CERT_EVERY))  # standing again for term 2
            lead.machine.cert = frozenset({"f", *(f"x{i}" for i in range(wire.MAX_LEASE_GRANTS))})
            assert all(lead._lease_cert(1) == () for _ in range(LEASE_CERT_EVERY))
        finally:
            await agent.stop()

    asyncio.run(scenario())
