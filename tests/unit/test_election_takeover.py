"""One member cannot make itself every node's leader with an announce or lease of a higher term (review13a F1):
through the real peer route (signed messages, agent.peer_api, Leadership, the fencing check), a node that holds a
lease on a live leader ignores a newer term from anyone else (leader stickiness), so it keeps obeying its leader and
refuses the member's command. Only the membership table is a fixed list here (SWIM's view: L and m alive)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from agent.quorum import Grants
from peerserve import wire
from tests.unit.follower_route import LeaderAndMember, command, follower_bed

TOKEN = "takeover-cluster-token-0123456789"


def _announce(node: str, term: int, memory: float, cert: list[wire.Grant] | None = None) -> dict[str, Any]:
    body = {"type": "announce", "term": term, "leader": node, "priority": [0, memory, node], "node": node}
    return body if cert is None else {**body, "cert": [g.to_json() for g in cert]}


def test_a_member_announcing_a_higher_term_does_not_take_over_a_follower(tmp_path: Path) -> None:
    async def scenario() -> list[Any]:
        table = LeaderAndMember()
        async with follower_bed(tmp_path, TOKEN, table) as bed:
            agent, lead, send, clients = bed.agent, bed.agent.leadership, bed.send, bed.clients
            assert agent.identity is not None
            seen: list[Any] = []
            # L's certificate of term 1: its grant and f's (a majority of f's view {f, L, m}; agent/quorum.py)
            cert = [Grants(clients["L"].identity).sign(1, "L"), Grants(agent.identity).sign(1, "L")]
            seen.append(await send("L", "POST", wire.ROUTE_ELECTION, _announce("L", 1, 8000.0, cert)))
            seen.append((lead.term, lead.accepted))
            seen.append(await send("m", "POST", wire.ROUTE_ELECTION, _announce("m", 2, 1000.0)))
            seen.append((lead.term, lead.accepted))
            # the same through a lease relayed on SWIM (its signature checked there): not taken, so not relayed
            seen.append(lead.lease_received(wire.Lease(3, "m", 1, (0, 1000.0, "m"))))
            seen.append((lead.term, lead.accepted))
            seen.append(await send("L", "PUT", wire.ROUTE_DESIRED, command("L", 1)))
            seen.append(await send("m", "PUT", wire.ROUTE_DESIRED, command("m", 2)))
            # once the leader is dead in the view the lease no longer holds, but m's word is still no certificate
            table.leader_status = "dead"
            seen.append(await send("m", "POST", wire.ROUTE_ELECTION, _announce("m", 2, 1000.0)))
            seen.append((lead.term, lead.accepted))
            return seen

    seen = asyncio.run(scenario())
    assert seen == [200, (1, "L"), 200, (1, "L"), False, (1, "L"), 200, 409, 200, (1, "L")]
