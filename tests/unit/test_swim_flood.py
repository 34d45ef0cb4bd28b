"""A member that floods ping_req (or unauthenticated mDNS goodbyes) cannot make a healthy member look failed nor
set our probe rate: relays deduplicated and rate-limited per member, our own bound's refusal never a miss, ticks
floored (agent.discovery.swim_io). Real mutual TLS on loopback; the review's attack, kept as regressions."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
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
from tests.unit.swim_sim import Sim
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


def goodbye_probes(core: sw.Swim, instructions: list[sw.Instruction]) -> int:
    return sum(isinstance(i, sw.Probe) and i.node_id == "t" for i in instructions)


def lone_member(seed: int = 1) -> sw.Swim:
    """A core with one member, ``t``, and its rotation stopped: every probe of ``t`` is a goodbye's."""
    core = sw.Swim("a", "https://127.0.0.1:2", sw.SwimConfig(), __import__("random").Random(seed))
    core.admitted("t", "https://127.0.0.1:9", "127.0.0.1", state("t"), 0.0)
    core._next_probe = float("inf")
    return core


def test_goodbyes_take_one_probe_per_member_per_gap_at_a_random_point() -> None:
    """review26b F3: each goodbye probed at once (at most once per probe interval), so a stranger's goodbyes made
    every agent probe a member in the same instant, each probe interval. Now one goodbye per member per
    ``_goodbye_gap`` (an unconfirmed suspicion's timeout) is taken, its probe due at a random point of the gap."""
    core = lone_member()
    gap = core._goodbye_gap()
    probes, taken, now = 0, set(), 10.0
    while now < 10.0 + 10 * gap:  # a goodbye every 20 ms, for ten gaps
        core.recheck("t", now)
        taken.add(core.records["t"].goodbye_at)
        probes += goodbye_probes(core, core.tick(now)[0])
        now += 0.02
    # one taken per gap, never one per goodbye (1,600 here); its probe skipped when the last one was within the gap
    assert 1 <= probes <= len(taken) <= 11
    # every agent hears the same goodbye: their probes are spread over the gap, not sent in the same instant
    dues = []
    for seed in range(9):
        other = lone_member(seed)
        other.recheck("t", 10.0)
        dues.append(other.records["t"].goodbye_due)
    assert all(10.0 <= d <= 10.0 + gap for d in dues) and len(set(dues)) == 9 and max(dues) - min(dues) > gap / 3
    # a goodbye's probe is sent only if we have not probed the member within the gap by then
    core = lone_member()
    core.recheck("t", 10.0)
    due = core.records["t"].goodbye_due
    assert goodbye_probes(core, core.tick(due - 1e-6)[0]) == 0 and goodbye_probes(core, core.tick(due)[0]) == 1
    core.recheck("t", 10.0 + gap)
    core.records["t"] = replace(core.records["t"], last_probe=10.0 + gap)  # say our rotation probed it then
    assert goodbye_probes(core, core.tick(10.0 + 2 * gap)[0]) == 0


def test_a_strangers_goodbyes_do_not_turn_a_short_stall_into_a_death() -> None:
    """review26b F3 (its simulation, /tmp/review26b/goodbye_sim.py): every agent hearing a goodbye for a member
    every 20 ms while it stalls 1.9 s. Probed at once, the stall was a death in 5/5 runs (4-6 of 9 members declaring
    it), 0/5 without goodbyes; now none (0/12 measured, as without)."""
    for seed in range(4):
        sim = Sim(10, seed=seed, loss=0.01, config=sw.SwimConfig(), proofs=True)
        sim.run(15)
        assert sim.converged()
        victim = f"n{2 + seed % 8}"
        sim.pause(victim, 1.9)
        start = sim.now
        while sim.now - start < 1.9 + 6.0:
            for node_id, node in sim.nodes.items():
                if node_id != victim:
                    node.recheck(victim, sim.now)
            sim.run(0.02)
        assert [d for d in sim.false_deaths() if d[2] == victim] == [], seed
