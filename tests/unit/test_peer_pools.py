"""PeerClient keeps one small connection pool per peer (a shared pool made each request cost O(peers)), bounded."""

from __future__ import annotations

import asyncio

import pytest

from agent import peer_client
from agent.identity import Identity
from agent.peer_client import PeerClient

TOKEN = "unit-cluster-token-0123456789"


def test_each_peer_has_its_own_pool_and_the_pools_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(peer_client, "MAX_POOLS", 3)

    async def run() -> None:
        client = PeerClient(Identity("a", TOKEN, None), lambda url: None)
        first = client._client("https://127.0.0.2:7001")
        assert client._client("https://127.0.0.2:7001") is first  # the same peer reuses its pool
        others = [client._client(f"https://127.0.0.{i}:7001") for i in range(3, 6)]
        assert len({id(c) for c in [first, *others]}) == 4  # one pool per peer
        assert client.pool_count == 3  # the bound: the least recently used pool went
        await asyncio.sleep(0)
        await asyncio.gather(*client._closing)
        assert first.is_closed and not any(c.is_closed for c in others)
        await client.close()
        assert client.pool_count == 0 and all(c.is_closed for c in others)

    asyncio.run(run())


def test_a_given_client_serves_every_peer() -> None:
    async def run() -> None:
        import httpx

        http = httpx.AsyncClient()
        client = PeerClient(Identity("a", TOKEN, None), lambda url: None, http=http)
        assert client._client("https://127.0.0.2:7001") is http is client._client("https://127.0.0.3:7001")
        await client.close()
        assert http.is_closed

    asyncio.run(run())
