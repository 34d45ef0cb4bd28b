"""One member cannot make itself every node's leader with an announce or lease of a higher term (review13a F1):
through the real peer route (signed messages, agent.peer_api, Leadership, the fencing check), a node that holds a
lease on a live leader ignores a newer term from anyone else (leader stickiness), so it keeps obeying its leader and
refuses the member's command. Only the membership table is a fixed list here (SWIM's view: L and m alive)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx

from agent.identity import Identity
from agent.node import NodeAgent
from agent.peer_api import create_peer_app
from agent.peer_client import PeerClient
from agent.peers import Member
from agent.quorum import Grants
from agent.settings import load_settings
from peerserve import wire
from tests.peer_tools import leadership_up_a_minute

TOKEN = "takeover-cluster-token-0123456789"


class Table:
    """The membership view: L (the leader, best memory) and m (the lowest) alive; ``alive`` can drop L."""

    def __init__(self) -> None:
        self.leader_status = "alive"

    def members(self) -> list[Member]:
        return [
            Member("L", "127.0.0.1", "http://127.0.0.1:18101", self.leader_status, mem_total_mb=8000.0,
                   peer_url="https://127.0.0.1:18102"),
            Member("m", "127.0.0.1", "http://127.0.0.1:18201", "alive", mem_total_mb=1000.0,
                   peer_url="https://127.0.0.1:18202"),
        ]  # fmt: skip


def _announce(node: str, term: int, memory: float, cert: list[wire.Grant] | None = None) -> dict[str, Any]:
    body = {"type": "announce", "term": term, "leader": node, "priority": [0, memory, node], "node": node}
    return body if cert is None else {**body, "cert": [g.to_json() for g in cert]}


def _command(node: str, term: int) -> dict[str, Any]:
    return {"term": term, "leader": node, "instances": {}}  # an empty desired set: stop every model server


def test_a_member_announcing_a_higher_term_does_not_take_over_a_follower(tmp_path: Path) -> None:
    async def scenario() -> list[Any]:
        table = Table()
        overrides = {"node_id": "f", "data_dir": str(tmp_path / "f"), "cluster_token": TOKEN, "mdns": False}
        agent = NodeAgent(load_settings(env={}, overrides=overrides), peers=table)
        agent.leadership = lead = leadership_up_a_minute(agent)
        assert agent.identity is not None
        http = httpx.AsyncClient(transport=httpx.ASGITransport(app=create_peer_app(agent, agent.identity)))
        clients = {n: PeerClient(Identity(n, TOKEN, tmp_path / n), lambda url: None, http=http) for n in ("L", "m")}

        async def send(node: str, method: str, route: str, body: dict[str, Any]) -> int:
            status, _ = await clients[node].call("f", "http://f", method, route, body=body)
            return status

        seen: list[Any] = []
        try:
            # L's certificate of term 1: its grant and f's (a majority of f's view {f, L, m}; agent/quorum.py)
            cert = [Grants(clients["L"].identity).sign(1, "L"), Grants(agent.identity).sign(1, "L")]
            seen.append(await send("L", "POST", wire.ROUTE_ELECTION, _announce("L", 1, 8000.0, cert)))
            seen.append((lead.term, lead.accepted))
            seen.append(await send("m", "POST", wire.ROUTE_ELECTION, _announce("m", 2, 1000.0)))
            seen.append((lead.term, lead.accepted))
            # the same through a lease relayed on SWIM (its signature checked there): not taken, so not relayed
            seen.append(lead.lease_received(wire.Lease(3, "m", 1, (0, 1000.0, "m"))))
            seen.append((lead.term, lead.accepted))
            seen.append(await send("L", "PUT", wire.ROUTE_DESIRED, _command("L", 1)))
            seen.append(await send("m", "PUT", wire.ROUTE_DESIRED, _command("m", 2)))
            # once the leader is dead in the view the lease no longer holds, but m's word is still no certificate
            table.leader_status = "dead"
            seen.append(await send("m", "POST", wire.ROUTE_ELECTION, _announce("m", 2, 1000.0)))
            seen.append((lead.term, lead.accepted))
            return seen
        finally:
            for client in clients.values():
                await client.close()
            await agent.stop()

    seen = asyncio.run(scenario())
    assert seen == [200, (1, "L"), 200, (1, "L"), False, (1, "L"), 200, 409, 200, (1, "L")]
