"""A member that floods ping_req (or unauthenticated mDNS goodbyes) cannot make a healthy member look failed nor
set our probe rate: relays deduplicated and rate-limited per member, our own bound's refusal never a miss, ticks
floored (agent.discovery.swim_io). Real mutual TLS on loopback; the review's attack, kept as regressions."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI

from agent.discovery import swim as sw
from agent.discovery import swim_io
from agent.discovery.swim_io import RelayRefused, SwimDriver
from agent.identity import Identity
from agent.peer_api import PeerServer
from agent.peer_client import PeerClient
from agent.peer_swim_route import SwimRoute
from peerserve.wire import PeerState, SwimMessage
from tests.service.conftest import free_port
from tests.unit.test_peer_swim_route import Membership, Node

TOKEN = "unit-cluster-token-0123456789"


def state(node_id: str) -> PeerState:
    return PeerState(node_id, "http://127.0.0.1:7000", 7001, {}, 1000.0, 2000.0, None, 0.0, "default", 1.0, 0, None)


def driver_for(ident: Identity, url: str) -> SwimDriver:
    return SwimDriver(ident.node_id, url, PeerClient(ident, lambda u: None), sw.SwimConfig(),
                      lambda: state(ident.node_id), lambda s, u: s, lambda t: None)  # fmt: skip


class Target:
    """A healthy member's real peer listener that answers after ``delay`` and counts the pings it got."""

    def __init__(self, ident: Identity, delay: float) -> None:
        self.node = Node(Membership(driver_for(ident, "https://127.0.0.1:1")))
        self.ident, self.delay, self.requests = ident, delay, 0
        app = FastAPI()
        app.add_middleware(SwimRoute, agent=self.node, identity=ident)  # type: ignore[arg-type]
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            self.requests += 1
            await asyncio.sleep(self.delay)
        await self.app(scope, receive, send)

    async def start(self) -> tuple[PeerServer, str]:
        port = free_port()
        server = PeerServer(self, self.ident, "127.0.0.1", port)  # type: ignore[arg-type]
        await server.start()
        return server, f"https://127.0.0.1:{port}"


def test_a_ping_req_flood_costs_the_target_one_ping_and_past_the_burst_is_refused(tmp_path: Path) -> None:
    a, t = Identity("a", TOKEN, tmp_path / "a"), Identity("t", TOKEN, tmp_path / "t")
    out: dict[str, Any] = {}

    async def main() -> None:
        target = Target(t, 0.1)
        server, url = await target.start()
        da = driver_for(a, "https://127.0.0.1:2")
        da.core.admitted("t", url, "127.0.0.1", state("t"), time.time())
        preq = SwimMessage("ping_req", "m", 0, 1, "https://127.0.0.9:7001", (), 0, None, "t", url)
        try:
            flood = [asyncio.ensure_future(da.handle("m", preq)) for _ in range(80)]
            done = await asyncio.gather(*flood, return_exceptions=True)
            out["acked"] = sum(1 for d in done if isinstance(d, SwimMessage) and d.acked)
            out["refused"] = [d.status for d in done if isinstance(d, RelayRefused)]
            out["pings_at_target"] = target.requests
            out["relays_left"] = len(da._relays)
        finally:
            await da.peers.close()
            await server.stop()

    asyncio.run(main())
    assert out["acked"] == swim_io.RELAY_BURST  # the burst is answered (yes: the target is up) ...
    assert out["refused"] == [429] * (80 - int(swim_io.RELAY_BURST))  # ... the rest refused, not answered "no"
    assert out["pings_at_target"] == 1  # and the 16 relays shared one ping
    assert out["relays_left"] == 0  # the shared ping's entry goes with it


@pytest.mark.parametrize("verify", [False, True])
def test_our_own_bound_refusing_the_ping_is_no_miss(tmp_path: Path, verify: bool) -> None:
    """Every slot to the target is taken (here by slow exchanges of ours; in the attack, relays a member asked of
    us): the probe learns nothing and must not suspect the target, nor, checking a dead rumour, declare it dead."""
    a, t = Identity("a", TOKEN, tmp_path / "a"), Identity("t", TOKEN, tmp_path / "t")
    out: dict[str, Any] = {}

    async def main() -> None:
        target = Target(t, 2.0)  # slower than the whole probe (3 probe timeouts): its answer settles nothing
        server, url = await target.start()
        da = driver_for(a, "https://127.0.0.1:2")
        da.peers.connections.max_busy, da.peers.connections.max_waiting = 1, 0
        da.core.admitted("t", url, "127.0.0.1", state("t"), da.clock() - 5)
        try:
            hold = asyncio.ensure_future(da.send("t", url, da.core.message("gossip", "t"), factor=20))
            await asyncio.sleep(0.05)  # its one slot is taken
            await da._probe(sw.Probe("t", url, verify))
            out["status"] = da.core.records["t"].status
            out["inconclusive"] = da.inconclusive_probes
            await asyncio.gather(hold, return_exceptions=True)  # its answer or not: beside the point
        finally:
            await da.peers.close()
            await server.stop()

    asyncio.run(main())
    assert out == {"status": "alive", "inconclusive": 1}


def test_wake_ups_cannot_drive_the_tick_rate(tmp_path: Path) -> None:
    """Goodbyes (anyone can multicast them) recheck a member and wake the loop every 2 ms: ticks stay under
    1 / MIN_TICK_S a second, and the member is probed at most once per probe interval."""
    a = Identity("a", TOKEN, tmp_path / "a")
    out: dict[str, Any] = {}

    async def main() -> None:
        da = driver_for(a, "https://127.0.0.1:2")
        da.core.admitted("t", "https://127.0.0.1:9", "127.0.0.1", state("t"), da.clock())
        probes: list[float] = []

        def start(ins: sw.Instruction) -> None:
            if isinstance(ins, sw.Probe) and ins.node_id == "t":
                probes.append(da.clock())

        da._start = start  # type: ignore[method-assign]  # count what the loop would send
        loop = asyncio.ensure_future(da.run())
        try:
            await asyncio.sleep(0.05)
            ticks0, t0 = da.ticks, da.clock()
            while da.clock() - t0 < 1.0:
                da.core.recheck("t", da.clock())
                da.wake()
                await asyncio.sleep(0.002)
            out["ticks"] = da.ticks - ticks0
            out["probes"] = len([p for p in probes if p >= t0])
        finally:
            loop.cancel()
            await asyncio.gather(loop, return_exceptions=True)

    asyncio.run(main())
    assert out["ticks"] <= 1.0 / swim_io.MIN_TICK_S + 2
    # the rotation's probe of our one member, and at most one goodbye recheck, per probe interval
    assert out["probes"] <= 2 / sw.SwimConfig().probe_interval_s + 2


def test_a_goodbye_within_a_probe_interval_of_our_last_probe_adds_none() -> None:
    core = sw.Swim("a", "https://127.0.0.1:2", sw.SwimConfig(), __import__("random").Random(1))
    core.admitted("t", "https://127.0.0.1:9", "127.0.0.1", state("t"), 0.0)
    core.recheck("t", 10.0)
    first, _ = core.tick(10.0)
    assert sw.Probe("t", "https://127.0.0.1:9", False) in first
    core.recheck("t", 10.01)  # probed 10 ms ago: nothing new to learn
    again, _ = core.tick(10.02)
    assert all(not (isinstance(i, sw.Probe) and i.node_id == "t") for i in again)
    core.recheck("t", 10.0 + core.config.probe_interval_s)
    later, _ = core.tick(10.0 + core.config.probe_interval_s)
    assert any(isinstance(i, sw.Probe) and i.node_id == "t" for i in later)
