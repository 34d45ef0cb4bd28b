"""The control route while the node is starting: until its election runs, no command is obeyed (a card holder's
command at any term would otherwise be persisted as the highest term and the election built at it)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from agent.node import NodeAgent
from agent.settings import load_settings
from peerserve import wire
from tests.peer_tools import in_process_peer

TOKEN = "start-window-cluster-token-0123456789"


def test_no_command_is_obeyed_before_the_election_runs(tmp_path: Path) -> None:
    async def scenario() -> tuple[int, object, int]:
        overrides = {"node_id": "f", "data_dir": str(tmp_path / "f"), "cluster_token": TOKEN, "mdns": False}
        agent = NodeAgent(load_settings(env={}, overrides=overrides))
        assert agent.discovery is not None and agent.leadership is None  # between the listener and Leadership()
        client = in_process_peer(agent, "m", TOKEN, tmp_path / "m")
        try:
            body = {"term": wire.MAX_TERM, "leader": "m", "instances": {}, "placement": None}
            status, answer = await client.call("f", "http://f", "PUT", wire.ROUTE_DESIRED, body=body)
            return status, answer, agent.store.highest_term()
        finally:
            await client.close()
            await agent.stop()

    status, answer, highest = asyncio.run(scenario())
    assert status == 503 and "election is not running" in str(answer)
    assert highest == 0  # nothing persisted: the election will start from the node's own term
