"""The operator-CA mode through the real peer route (signed HTTP messages, agent.peer_api, Leadership, agent.quorum):
a token holder without a board card is refused, ids minted with the token (at one address or at a member's second
address) add no vote, members count by node id (two boards behind one address are two voices), the card's priority
replaces the claimed one, and expired or revoked cards are refused. The same exchanges in the token-only mode show
what the mode changes. Only the membership table is a fixed list (SWIM's view)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent.identity import AuthError, Card, Identity, derive_ca_key
from agent.node import NodeAgent
from agent.operator_ca import b64, raw_public, sign_revocations
from agent.peer_api import create_peer_app
from agent.peer_client import PeerCallError, PeerClient
from agent.peer_swim_route import SwimRoute
from agent.peer_tls import PEER_KEY
from agent.peers import Member
from agent.quorum import Grants
from agent.settings import load_settings
from peerserve import wire
from tests.peer_tools import leadership_up_a_minute
from tests.unit.test_operator_ca import OPERATOR, board

TOKEN = "operator-route-cluster-token-0123456789"


def _member(node: str, address: str, priority: int = 0) -> Member:
    """A member at ``address`` (what voices count by) whose listeners are on loopback: the agent under test dials its
    members (announces, rounds), and a test sends nothing off this machine (tests/no_traffic.py: these dialled
    10.0.0.5:8401 out of the machine's interface until session 27)."""
    here = "127.0.0." + address.rsplit(".", 1)[-1]
    return Member(node, address, f"http://{here}:8400", "alive", mem_total_mb=1000.0, priority=priority,
                  peer_url=f"https://{here}:8401")  # fmt: skip


class Table:
    """f's membership view, as SWIM would hand it (what each claims: m says priority 100)."""

    def __init__(self, members: list[Member]) -> None:
        self.list = members

    def members(self) -> list[Member]:
        return self.list


def _announce(node: str, term: int, cert: list[wire.Grant], priority: int = 0) -> dict[str, Any]:
    return {"type": "announce", "term": term, "leader": node, "priority": [priority, 1000.0, node],
            "cert": [g.to_json() for g in cert]}  # fmt: skip


def _minted(tmp_path: Path, node: str, show: Identity | None = None) -> Identity:
    """A node id minted with the token alone; ``show``: a member whose key and board card it carries (one member
    answering under a second id)."""
    ident = Identity(node, TOKEN, tmp_path / (show.node_id if show is not None else node))
    if show is not None and show.board is not None:
        ident.card_text = Card.issue(derive_ca_key(TOKEN), node, show.public_key, show.board.raw()).encode()
    return ident


def _run(tmp_path: Path, operator: bool, members: list[Member], script: Any) -> Any:
    async def scenario() -> Any:
        folder = board(tmp_path / "f", "f", priority=2, token=TOKEN)
        overrides: dict[str, Any] = {"node_id": "f", "data_dir": str(folder), "cluster_token": TOKEN,
                                     "mdns": False, "priority": 9}  # fmt: skip
        if operator:
            overrides["operator_ca"] = b64(raw_public(OPERATOR.public_key()))
        agent = NodeAgent(load_settings(env={}, overrides=overrides), peers=Table(members))
        agent.leadership = leadership_up_a_minute(agent)
        assert agent.identity is not None
        http = httpx.AsyncClient(transport=httpx.ASGITransport(app=create_peer_app(agent, agent.identity)))
        clients: list[PeerClient] = []

        async def send(sender: Identity, body: dict[str, Any]) -> int:
            client = PeerClient(sender, lambda url: None, http=http)
            clients.append(client)
            try:
                status, _ = await client.call("f", "http://f", "POST", wire.ROUTE_ELECTION, body=body)
            except PeerCallError as exc:
                return exc.status
            return status

        try:
            return await script(agent, send)
        finally:
            for client in clients:
                await client.close()
            await agent.stop()

    return asyncio.run(scenario())


def _ids(tmp_path: Path, operator: bool, **priorities: int) -> dict[str, Identity]:
    ca = OPERATOR.public_key() if operator else None
    return {
        n: Identity(n, TOKEN, board(tmp_path / n, n, priority=p, token=TOKEN), operator_ca=ca)
        for n, p in priorities.items()
    }


@pytest.mark.parametrize("operator", [True, False])
def test_two_boards_behind_one_address_are_two_voices_with_cards_one_without(tmp_path: Path, operator: bool) -> None:
    """L and A share 10.0.0.5 (a NAT, or one host): f's view {f, L, A}; L's certificate [L, A]. By node id (cards)
    that is 2 of 3, a majority; by address (token-only) 1 of 2 voices, not one."""
    ids = _ids(tmp_path, operator, L=5, A=0)

    async def script(agent: NodeAgent, send: Any) -> Any:
        await send(ids["A"], _announce("A", 1, [Grants(ids["A"]).sign(1, "A")]))  # A's first contact: pinned
        cert = [Grants(ids["L"]).sign(1, "L"), Grants(ids["A"]).sign(1, "L")]
        status = await send(ids["L"], _announce("L", 1, cert))
        lead = agent.leadership
        assert lead is not None
        return status, lead.accepted

    members = [_member("L", "10.0.0.5"), _member("A", "10.0.0.5")]
    assert _run(tmp_path, operator, members, script) == ((200, "L") if operator else (200, None))


def test_ids_minted_with_the_token_get_no_vote_and_no_voice(tmp_path: Path) -> None:
    """x1 and x2 are minted with the token at one address; m2 is a member m answering at its second address under a
    second id, with m's board card. None of them is refused admission only in name: their own messages get 403, and
    their grants in m's certificate count nothing, even where the table lists them alive."""
    ids = _ids(tmp_path, True, L=5, m=1)
    x1, x2, m2 = _minted(tmp_path, "x1"), _minted(tmp_path, "x2"), _minted(tmp_path, "m2", show=ids["m"])

    async def script(agent: NodeAgent, send: Any) -> Any:
        seen = [await send(x1, _announce("x1", 1, [Grants(x1).sign(1, "x1")]))]
        seen.append(await send(m2, _announce("m2", 1, [Grants(m2).sign(1, "m2")])))
        cert = [Grants(ids["m"]).sign(2, "m"), Grants(x1).sign(2, "m"), Grants(x2).sign(2, "m"),
                Grants(m2).sign(2, "m")]  # fmt: skip
        seen.append(await send(ids["m"], _announce("m", 2, cert, priority=100)))
        lead = agent.leadership
        assert lead is not None
        seen.append(lead.accepted)
        return seen

    members = [_member("L", "10.0.0.5"), _member("m", "10.0.0.6", priority=100), _member("x1", "10.0.0.9"),
               _member("x2", "10.0.0.9"), _member("m2", "10.0.0.16")]  # fmt: skip
    assert _run(tmp_path, True, members, script) == [403, 403, 200, None]


def test_the_cards_priority_replaces_the_claimed_one(tmp_path: Path) -> None:
    ids = _ids(tmp_path, True, L=5, m=1)

    async def script(agent: NodeAgent, send: Any) -> Any:
        await send(ids["L"], _announce("L", 1, [Grants(ids["L"]).sign(1, "L")]))  # f sees L's and m's cards
        await send(ids["m"], _announce("m", 1, [Grants(ids["m"]).sign(1, "m")], priority=100))
        lead = agent.leadership
        assert lead is not None
        view = lead._view()
        return agent.settings.priority, lead.priority[0], view["L"][0], view["m"][0]

    members = [_member("L", "10.0.0.5"), _member("m", "10.0.0.6", priority=100)]
    # f: its card grants 2 (--priority 9 ignored); L's grants 5; m claims 100, its card grants 1
    assert _run(tmp_path, True, members, script) == (2, 2, 5, 1)


def test_expired_and_revoked_cards_are_refused_on_the_route(tmp_path: Path) -> None:
    ids = _ids(tmp_path, True, L=5, m=1)
    expired = Identity("e", TOKEN, board(tmp_path / "e", "e", days=-1, token=TOKEN), operator_ca=OPERATOR.public_key())

    async def script(agent: NodeAgent, send: Any) -> Any:
        seen = [await send(expired, _announce("e", 1, [Grants(expired).sign(1, "e")]))]
        seen.append(await send(ids["m"], _announce("m", 1, [Grants(ids["m"]).sign(1, "m")])))
        listed = Path(agent.settings.data_dir) / "peer" / "revoked.json"
        listed.write_text(json.dumps(sign_revocations(OPERATOR, 1, [ids["m"].board.fingerprint])))  # type: ignore[union-attr]
        seen.append(await send(ids["m"], _announce("m", 2, [Grants(ids["m"]).sign(2, "m")])))
        seen.append(await send(ids["L"], _announce("L", 2, [Grants(ids["L"]).sign(2, "L")])))
        return seen

    members = [_member("L", "10.0.0.5"), _member("m", "10.0.0.6"), _member("e", "10.0.0.7")]
    assert _run(tmp_path, True, members, script) == [403, 200, 403, 200]


def test_token_only_mode_admits_a_token_holder_as_before(tmp_path: Path) -> None:
    x1 = _minted(tmp_path, "x1")

    async def script(agent: NodeAgent, send: Any) -> Any:
        return await send(x1, _announce("x1", 1, [Grants(x1).sign(1, "x1")])), agent.settings.priority

    assert _run(tmp_path, False, [_member("x1", "10.0.0.9")], script) == (200, 9)


def test_a_direct_swim_exchange_needs_the_card_its_node_showed_signed(tmp_path: Path) -> None:
    """SWIM's direct exchanges carry no card (the TLS certificate, from the token's CA, names node and key): the route
    takes one only from a node whose live board card it saw in a signed message; else 401, and the client signs."""
    ids = _ids(tmp_path, True, m=1)
    x1 = _minted(tmp_path, "x1")

    async def script(agent: NodeAgent, send: Any) -> Any:
        route = SwimRoute(None, agent, agent.identity)  # type: ignore[arg-type]

        async def direct(ident: Identity) -> Any:
            scope = {"state": {PEER_KEY: (ident.node_id, ident.public_key)}}
            try:
                return await route.tls_sender(scope, "10.0.0.6")
            except AuthError as exc:
                return exc.status

        seen = [await direct(ids["m"]), await direct(x1)]
        seen.append(await send(ids["m"], _announce("m", 1, [Grants(ids["m"]).sign(1, "m")])))
        seen += [await direct(ids["m"]), await direct(x1)]
        return seen

    members = [_member("m", "10.0.0.6"), _member("x1", "10.0.0.9")]
    assert _run(tmp_path, True, members, script) == [401, 401, 200, "m", 401]
