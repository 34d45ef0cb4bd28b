"""Explicit provisioning requests: when a model runs nowhere and ``resolve`` picks a peer with room, this
node asks that peer to start it (``POST /peer/provision`` on the peer plane: mutual TLS, signed, like
every agent-to-agent message) instead of leaving the demand to be inferred from logged 503s. At most one
request per (peer, model) every ``ASK_INTERVAL_S``; the table is bounded.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from agent.catalogue import valid_model_name
from agent.peer_client import PeerCallError
from agent.peers import Member

if TYPE_CHECKING:
    from agent.node import NodeAgent

log = logging.getLogger(__name__)

ROUTE_PROVISION = "/peer/provision"
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


def answer_provision(agent: NodeAgent, sender: str, data: Any) -> tuple[int, dict[str, Any]]:
    """What this node answers an authenticated peer's provisioning request: (status, JSON)."""
    model = data.get("model") if isinstance(data, dict) else None
    if not isinstance(model, str) or not valid_model_name(model):
        return 400, {"error": 'expected {"model": "<catalogue model>"}'}
    spec = agent.catalogue.current.get(model)
    if spec is None:
        return 400, {"error": f"unknown model {model!r}: not in the catalogue"}
    if agent.shutting_down:  # it would start nothing (NodeAgent.add_on_demand): the asking peer may ask another
        return 503, {"error": "this node is stopping"}
    free = agent.node_metrics().mem_available_mb
    if model not in agent.desired.instances and free < spec.mem_mb:
        return 507, {"error": f"{model} needs {spec.mem_mb:.0f} MB, {free:.0f} MB free here"}
    log.info("%s asked this node to provision %s", sender, model)
    return 202, {"accepted": True, "node_id": agent.settings.node_id, "model": model}


def provision_for_peer(agent: NodeAgent, sender: str, data: Any) -> tuple[int, dict[str, Any]]:
    """Answer a peer's provisioning request and carry it out: 202 only when the model is in the desired set now
    (the reconcile loop starts it). Before, the 202 went out whatever ``provision_locally`` did, and a peer asking
    a stopping node heard "accepted" for a model nobody started (review19c F2)."""
    status, answer = answer_provision(agent, sender, data)
    if status != 202 or agent.add_on_demand(answer["model"]):
        return status, answer
    if agent.shutting_down:
        return 503, {"error": "this node is stopping"}
    return 507, {"error": f"{answer['model']} does not fit in this node's memory beside the servers it is to run"}


class ProvisionRequests:
    """Sends provisioning requests to peers in the background (the caller never waits for them)."""

    def __init__(self) -> None:
        self.asked: OrderedDict[tuple[str, str], float] = OrderedDict()
        self._tasks: set[asyncio.Task[None]] = set()

    def ask(self, agent: NodeAgent, peer_id: str, model: str) -> bool:
        """Ask ``peer_id`` to start ``model`` unless asked recently; True when a request went out."""
        peer = next((p for p in agent.peers.members() if p.node_id == peer_id and p.status == "alive"), None)
        if peer is None or not peer.peer_url or agent.peer_client is None:
            return False
        if not should_ask(self.asked, (peer_id, model), agent.clock()):
            return False
        task = asyncio.create_task(self._send(agent, peer, model))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def _send(self, agent: NodeAgent, peer: Member, model: str) -> None:
        assert agent.peer_client is not None
        try:
            status, _ = await agent.peer_client.call(
                peer.node_id, peer.peer_url, "POST", ROUTE_PROVISION, body={"model": model}
            )
            log.info("asked %s to provision %s: HTTP %d", peer.node_id, model, status)
        except PeerCallError as exc:
            log.warning("could not ask %s to provision %s: %s", peer.node_id, model, exc)
