"""POST /peer/swim ahead of FastAPI (agent/peer_swim_route.py): the same authentication and answers as every route."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from agent.discovery import swim as sw
from agent.discovery.metrics import MembershipCollector
from agent.discovery.swim_io import SwimDriver
from agent.identity import Identity
from agent.peer_client import PeerClient
from agent.peer_swim_route import SwimRoute
from peerserve import wire
from peerserve.wire import SwimMessage

TOKEN = "unit-cluster-token-0123456789"
B_URL = "https://127.0.0.2:7001"
A, B = Identity("a", TOKEN, None), Identity("b", TOKEN, None)  # one key each: a receiver pins it on first contact


@dataclass
class Membership:
    """What the route needs of agent.discovery.Discovery, around a real SWIM driver (its core answers)."""

    driver: SwimDriver
    stopping: bool = False
    mdns: Counter[str] = field(default_factory=Counter)  # adverts by outcome (no mDNS here)
    revocations: None = None  # the token-only mode: no revocation list travels

    @property
    def swim(self) -> SwimDriver:
        return self.driver

    @property
    def peers(self) -> PeerClient:
        return self.driver.peers

    async def handle_swim(self, sender: str, msg: SwimMessage) -> SwimMessage:
        return await self.driver.handle(sender, msg)


@dataclass
class Node:
    discovery: Membership | None

    def clock(self) -> float:
        return time.time()


def node_b() -> tuple[Node, Identity]:
    ident = B
    driver = SwimDriver("b", B_URL, PeerClient(ident, lambda url: None), sw.SwimConfig(), lambda: None,
                        lambda s, u: s, lambda t: None)  # type: ignore[arg-type,return-value]  # fmt: skip
    return Node(Membership(driver)), ident


def app_of(node: Node, ident: Identity) -> FastAPI:
    app = FastAPI()
    app.add_middleware(SwimRoute, agent=node, identity=ident)  # type: ignore[arg-type]

    @app.get("/other")
    async def other() -> dict[str, str]:
        return {"through": "fastapi"}

    return app


def ping(sender: str = "a") -> dict[str, Any]:
    return SwimMessage("ping", sender, 0, 1, "https://127.0.0.3:7001").to_json()


async def call(node: Node, ident: Identity, body: Any) -> tuple[int, Any]:
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app_of(node, ident)))
    client = PeerClient(A, lambda url: None, http=http)
    try:
        return await client.call("b", "http://b", "POST", wire.ROUTE_SWIM, body=body)
    finally:
        await client.close()


def test_a_signed_ping_gets_the_nodes_signed_ack() -> None:
    node, ident = node_b()
    status, answer = asyncio.run(call(node, ident, ping()))  # PeerClient checked the answer's signature and nonce
    assert status == 200 and SwimMessage.parse(answer).kind == "ack" and answer["node_id"] == "b"
    assert node.discovery is not None
    assert ("a", "https://127.0.0.3:7001") in node.discovery.driver.core.candidates  # a hint, never a member
    samples = {(m.name, tuple(sorted(x.labels.items()))): x.value for m in MembershipCollector(node.discovery).collect()
               for x in m.samples}  # type: ignore[arg-type]  # fmt: skip
    assert samples[("peerserve_membership_messages", (("direction", "received"), ("kind", "ping")))] == 1
    assert samples[("peerserve_peer_connections_opened", ())] == 0


@pytest.mark.parametrize(
    ("body", "status", "error"),
    [
        ({**ping(), "kind": "nonsense"}, 400, "malformed membership message"),
        ({**ping(), "updates": "x"}, 400, "updates"),
        (ping("someone-else"), 403, "a cannot speak for someone-else"),
    ],
)
def test_bad_messages_get_a_signed_4xx(body: Any, status: int, error: str) -> None:
    node, ident = node_b()
    got, answer = asyncio.run(call(node, ident, body))
    assert got == status and error in answer["error"]


def test_off_or_leaving_membership_answers_409_and_503() -> None:
    node, ident = node_b()
    assert asyncio.run(call(Node(None), ident, ping()))[0] == 409
    assert node.discovery is not None
    node.discovery.stopping = True
    assert asyncio.run(call(node, ident, ping()))[0] == 503


def test_unauthenticated_oversized_and_non_json_messages_are_refused_unsigned() -> None:
    node, ident = node_b()

    async def run() -> None:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app_of(node, ident)), base_url="http://b") as h:
            r = await h.post(wire.ROUTE_SWIM, json=ping())
            assert r.status_code == 401 and "no node card" in r.json()["error"]
            r = await h.post(wire.ROUTE_SWIM, content=b"x" * (wire.MAX_BODY + 1))
            assert r.status_code == 413
            assert (await h.get("/other")).json() == {"through": "fastapi"}  # every other route: FastAPI's
        status, answer = await call(node, ident, None)  # no body at all: not JSON
        assert status == 400 and "malformed membership message" in answer["error"]

    asyncio.run(run())
