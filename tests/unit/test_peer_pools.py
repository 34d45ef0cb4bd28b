"""PeerClient keeps its own connections per peer (agent.peer_http, bounded there), or uses the client it is given."""

from __future__ import annotations

import asyncio

import httpx

from agent import peer_http
from agent.identity import Identity
from agent.peer_client import PeerClient

TOKEN = "unit-cluster-token-0123456789"


def test_kept_connections_are_bounded_by_default() -> None:
    client = PeerClient(Identity("a", TOKEN, None), lambda url: None)
    assert client.connections.max_peers == peer_http.MAX_PEERS and client.connections.max_idle == peer_http.MAX_IDLE
    assert peer_http.MAX_IDLE <= 2 and peer_http.IDLE_S < 30  # under the listener's keep-alive (agent/peer_api.py)


def test_a_given_client_serves_every_peer() -> None:
    async def run() -> None:
        http = httpx.AsyncClient()
        client = PeerClient(Identity("a", TOKEN, None), lambda url: None, http=http)
        await client.close()
        assert http.is_closed and client.connections.opened == 0

    asyncio.run(run())
