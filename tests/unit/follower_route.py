"""Follower f on the real peer route (signed messages, agent.peer_api, Leadership, agent.quorum's checks, the fencing
check), with L (a leader) and m (a member) sending to it as admitted nodes with their own keys. Only the membership
table is a fixed list (SWIM's view: L and m alive). The election tests about who can take a follower share it."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from agent.identity import Identity
from agent.node import NodeAgent
from agent.peer_api import create_peer_app
from agent.peer_client import PeerClient
from agent.peers import Member
from agent.settings import load_settings
from tests.peer_tools import leadership_up_a_minute

SENDERS = ("L", "m")


class LeaderAndMember:
    """The membership view: L (the best memory) and m alive, m claiming ``m_priority`` (it says what it likes);
    ``leader_status`` can drop L."""

    def __init__(self, m_priority: int = 0) -> None:
        self.leader_status = "alive"
        self.m_priority = m_priority

    def members(self) -> list[Member]:
        return [
            Member("L", "127.0.0.1", "http://127.0.0.1:18101", self.leader_status, mem_total_mb=8000.0,
                   peer_url="https://127.0.0.1:18102"),
            Member("m", "127.0.0.1", "http://127.0.0.1:18201", "alive", mem_total_mb=1000.0,
                   priority=self.m_priority, peer_url="https://127.0.0.1:18202"),
        ]  # fmt: skip


@dataclass
class FollowerBed:
    agent: NodeAgent  # f; its election is ``agent.leadership`` (a test may replace it, as a restart does)
    clients: dict[str, PeerClient]  # L's and m's, each signing with its own identity

    async def send(self, node: str, method: str, route: str, body: dict[str, Any]) -> int:
        """``node`` sends ``body`` to f; f's HTTP status."""
        status, _ = await self.clients[node].call("f", "http://f", method, route, body=body)
        return status


@contextlib.asynccontextmanager
async def follower_bed(tmp_path: Path, token: str, table: LeaderAndMember) -> AsyncIterator[FollowerBed]:
    """f (fresh data dir, mDNS off, up a minute: past a fresh board's settling wait) with ``table`` as its view."""
    overrides = {"node_id": "f", "data_dir": str(tmp_path / "f"), "cluster_token": token, "mdns": False}
    agent = NodeAgent(load_settings(env={}, overrides=overrides), peers=table)
    agent.leadership = leadership_up_a_minute(agent)
    assert agent.identity is not None
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=create_peer_app(agent, agent.identity)))
    clients = {n: PeerClient(Identity(n, token, tmp_path / n), lambda url: None, http=http) for n in SENDERS}
    try:
        yield FollowerBed(agent, clients)
    finally:
        for client in clients.values():
            await client.close()
        await agent.stop()


def command(node: str, term: int) -> dict[str, Any]:
    """``node``'s desired-state command of ``term``: an empty desired set (stop every model server)."""
    return {"term": term, "leader": node, "instances": {}}
