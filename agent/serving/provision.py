"""Explicit provisioning requests: when a model runs nowhere and ``resolve`` picks a peer with room, this
node asks that peer to start it (``POST /peer/provision``) instead of leaving the demand to be inferred
from logged 503s. At most one request per (peer, model) every ``ASK_INTERVAL_S``; the table is bounded.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections import OrderedDict
from typing import TYPE_CHECKING

import httpx

if TYPE_CHECKING:
    from agent.node import NodeAgent

log = logging.getLogger(__name__)

ASK_INTERVAL_S = 5.0
MAX_TRACKED = 1024


def should_ask(asked: OrderedDict[tuple[str, str], float], key: tuple[str, str], now: float) -> bool:
    """Whether to ask ``key`` = (peer, model) again at ``now``; records the ask and keeps ``asked`` bounded."""
    last = asked.get(key)
    if last is not None and now - last < ASK_INTERVAL_S:
        return False
    asked[key] = now
    asked.move_to_end(key)
    while len(asked) > MAX_TRACKED:
        asked.popitem(last=False)
    return True


def token_ok(expected: str, header: str | None) -> bool:
    """A peer message carries the cluster token when one is configured (an open cluster has none)."""
    if not expected:
        return True
    scheme, _, token = (header or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), expected.encode())


class ProvisionRequests:
    """Sends provisioning requests to peers in the background (the caller never waits for them)."""

    def __init__(self) -> None:
        self.asked: OrderedDict[tuple[str, str], float] = OrderedDict()
        self._tasks: set[asyncio.Task[None]] = set()

    def ask(self, agent: NodeAgent, peer_id: str, model: str) -> bool:
        """Ask ``peer_id`` to start ``model`` unless asked recently; True when a request went out."""
        peer = next((p for p in agent.peers.members() if p.node_id == peer_id and p.status == "alive"), None)
        if peer is None or not should_ask(self.asked, (peer_id, model), agent.clock()):
            return False
        task = asyncio.create_task(self._send(agent, peer.api_url, model))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def _send(self, agent: NodeAgent, api_url: str, model: str) -> None:
        token = agent.settings.cluster_token
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        body = {"model": model, "from": agent.settings.node_id}
        try:
            r = await agent.http.post(f"{api_url}/peer/provision", json=body, headers=headers, timeout=2.0)
            log.info("asked %s to provision %s: HTTP %d", api_url, model, r.status_code)
        except httpx.HTTPError as exc:
            log.warning("could not ask %s to provision %s: %s", api_url, model, exc)
