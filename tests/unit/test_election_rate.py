"""One member cannot make this node act on election messages in a loop (each may cost a new term: an fsync and a
broadcast on every node): past a burst it is answered 429 (agent/peer_api.py, agent/rate_limit.py)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from agent.leadership import Leadership
from agent.node import NodeAgent
from agent.peer_api import ELECTION_BURST
from agent.settings import load_settings
from peerserve import wire
from tests.peer_tools import in_process_peer

TOKEN = "election-rate-cluster-token-0123456789"


def test_a_member_sending_election_messages_in_a_loop_is_answered_429(tmp_path: Path) -> None:
    async def scenario() -> list[int]:
        overrides = {"node_id": "f", "data_dir": str(tmp_path / "f"), "cluster_token": TOKEN, "mdns": False}
        frozen = time.time()  # time stands still: no refill during the loop (signatures stay fresh)
        agent = NodeAgent(load_settings(env={}, overrides=overrides), clock=lambda: frozen)
        agent.leadership = Leadership(agent)
        client = in_process_peer(agent, "m", TOKEN, tmp_path / "m")
        body = {"type": "vote_request", "term": 1, "candidate": "m", "priority": [0, 1.0, "m"], "node": "m"}
        try:
            statuses = []
            for _ in range(ELECTION_BURST + 5):
                status, _ = await client.call("f", "http://f", "POST", wire.ROUTE_ELECTION, body=body)
                statuses.append(status)
            return statuses
        finally:
            await client.close()
            await agent.stop()

    statuses = asyncio.run(scenario())
    assert 429 not in statuses[:ELECTION_BURST]  # within the burst: handled (here 409: m is no member yet)
    assert statuses[ELECTION_BURST:] == [429] * 5
