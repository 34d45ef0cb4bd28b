"""A node without room asks the roomiest peer, explicitly and on the signed peer plane, to start a model."""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from pathlib import Path
from typing import Any

import httpx

from agent.metrics import MetricsReader, NodeMetrics
from agent.node import NodeAgent
from agent.peers import Member
from agent.serving.provision import ASK_INTERVAL_S, MAX_TRACKED, should_ask
from agent.serving.resolve import Provisioning, resolve
from agent.settings import Settings
from tests.peer_tools import TestPeer
from tests.service.conftest import PLAIN, TOKEN


class LittleMemory(MetricsReader):
    """A node with 10 MB free (the seam NodeAgent(metrics=) is for)."""

    def __init__(self) -> None:
        super().__init__(detect=False)

    def read(self) -> NodeMetrics:
        return NodeMetrics(mem_total_mb=512, mem_available_mb=10, cpu_percent=0, gpu_percent=None, gpu_source="none")


class OnePeer:
    def __init__(self, member: Member) -> None:
        self.member = member

    def members(self) -> list[Member]:
        return [self.member]


def test_resolve_asks_the_peer_with_room_and_the_peer_starts_the_model(agents: Any, tmp_path: Path) -> None:
    b = agents("b")
    peer = Member("b", "127.0.0.1", b.url, "alive", mem_available_mb=1e6, mem_total_mb=1e6, peer_url=b.peer_url)
    settings = Settings(node_id="a", data_dir=str(tmp_path / "a"), discovery=False, cluster_token=TOKEN, port=1)

    async def main() -> Any:
        a = NodeAgent(settings, metrics=LittleMemory(), peers=OnePeer(peer))
        try:
            outcome = await resolve(a, "half_plus_two", "phone", {})
            again = await resolve(a, "half_plus_two", "phone", {})  # asked once per interval, not per request
            # the ask runs in the background: wait for it (a fixed 0.5 s let teardown cancel it under load)
            await asyncio.wait_for(asyncio.gather(*a.provision_requests._tasks), 30)
            return outcome, again, dict(a.provision_requests.asked)
        finally:
            await a.http.aclose()
            if a.peer_client is not None:
                await a.peer_client.close()
            a.store.close()

    outcome, again, asked = asyncio.run(main())
    assert isinstance(outcome, Provisioning) and outcome.node == "b" and isinstance(again, Provisioning)
    assert list(asked) == [("b", "half_plus_two")]
    b.wait_ready("half_plus_two")  # b started it because it was asked (b had no request of its own)


def test_the_peer_route_is_signed_only_and_checks_its_input(agents: Any, tmp_path: Path) -> None:
    b = agents("b")
    assert PLAIN.post(b.url + "/peer/provision", json={"model": "xor_mlp"}, timeout=10).status_code in (404, 405)
    stranger = TestPeer("c", "another-cluster-token-0123456789", tmp_path / "stranger")
    member = TestPeer("c", TOKEN, tmp_path / "member")
    try:
        refused = stranger.request("b", b.peer_url, "POST", "/peer/provision", {"model": "xor_mlp"}, signed=True)
        assert refused.status_code in (401, 403)
    except httpx.HTTPError:
        pass  # the TLS handshake itself refuses a certificate from another cluster
    unknown = member.request("b", b.peer_url, "POST", "/peer/provision", {"model": "nope"})
    assert unknown.status_code == 400 and unknown.json() == {"error": "unknown model 'nope': not in the catalogue"}
    assert member.request("b", b.peer_url, "POST", "/peer/provision", [1, 2]).status_code == 400
    r = member.request("b", b.peer_url, "POST", "/peer/provision", {"model": "xor_mlp"})
    assert r.status_code == 202 and r.json()["model"] == "xor_mlp"
    b.wait_ready("xor_mlp")
    stranger.close()
    member.close()


def test_ask_table_rate_limits_and_stays_bounded() -> None:
    asked: OrderedDict[tuple[str, str], float] = OrderedDict()
    assert should_ask(asked, ("b", "m"), 100.0)
    assert not should_ask(asked, ("b", "m"), 100.0 + ASK_INTERVAL_S / 2)
    assert should_ask(asked, ("b", "m"), 100.0 + ASK_INTERVAL_S)
    for i in range(MAX_TRACKED + 10):
        should_ask(asked, (f"n{i}", "m"), 200.0)
    assert len(asked) == MAX_TRACKED
