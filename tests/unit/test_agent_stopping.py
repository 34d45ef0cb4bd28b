"""An agent that is shutting down (NodeAgent.begin_shutdown) starts nothing: not for a new request, not for a peer's
provisioning request, not from its reconcile loop (review19c F2, F5, F7). Real agents, the real signed peer plane
(over an in-process transport) and the real process runtime."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from agent.decisions import STOP_FIRST, Start, Stop, while_stopping
from agent.metrics import MetricsReader, NodeMetrics
from agent.node import NodeAgent
from agent.runtime.process import ProcessRuntime
from agent.serving.provision import ROUTE_PROVISION
from agent.serving.resolve import ShuttingDown, resolve
from agent.settings import Settings
from tests.peer_tools import in_process_peer
from tests.unit import stand_in

TOKEN = "agent-stopping-cluster-token-0123456789"


class RoomFor1000(MetricsReader):
    """A node of 1000 MB, all of it free (the seam NodeAgent(metrics=) is for)."""

    def __init__(self) -> None:
        super().__init__(detect=False)

    def read(self) -> NodeMetrics:
        return NodeMetrics(mem_total_mb=1000, mem_available_mb=1000, cpu_percent=0, gpu_percent=None, gpu_source="none")


def settings_for(tmp_path: Path, sizes: dict[str, float], **extra: Any) -> Settings:
    return stand_in.settings(tmp_path, sizes, TOKEN, **extra)


async def ask_to_provision(agent: NodeAgent, tmp_path: Path, model: str) -> tuple[int, Any]:
    """A peer's signed ``POST /peer/provision`` to ``agent``'s real peer app."""
    client = in_process_peer(agent, "peer", TOKEN, tmp_path / "peer")
    try:
        return await client.call("n", "http://n", "POST", ROUTE_PROVISION, body={"model": model})
    finally:
        await client.close()


def test_a_peer_asking_a_stopping_node_to_provision_hears_503_and_nothing_is_added(tmp_path: Path) -> None:
    agent = NodeAgent(settings_for(tmp_path, {"m": 100, "k": 100}), metrics=RoomFor1000())

    async def scenario() -> tuple[tuple[int, Any], dict[str, int], tuple[int, Any], dict[str, int], dict[str, int]]:
        accepted = await ask_to_provision(agent, tmp_path, "m")
        before = dict(agent.desired.instances)
        agent.begin_shutdown()
        refused = await ask_to_provision(agent, tmp_path, "k")
        return accepted, before, refused, dict(agent.desired.instances), dict(agent.store.desired().instances)

    try:
        accepted, before, refused, after, saved = asyncio.run(scenario())
    finally:
        asyncio.run(agent.stop())
    assert accepted[0] == 202 and accepted[1]["model"] == "m" and before == {"m": 1}
    assert refused == (503, {"error": "this node is stopping"})  # was 202 {"accepted": true}, with nothing started
    assert after == saved == {"m": 1}


def test_a_peer_hears_507_when_the_desired_set_with_the_model_would_not_fit(tmp_path: Path) -> None:
    """Free memory alone let the request through (the desired set's servers are not started yet): the answer was
    202 while add_on_demand refused the model. Now the answer says what was done."""
    agent = NodeAgent(settings_for(tmp_path, {"m": 600, "k": 600}), metrics=RoomFor1000())
    try:
        agent.set_desired(1, "lead", {"m": 1})
        status, answer = asyncio.run(ask_to_provision(agent, tmp_path, "k"))
    finally:
        asyncio.run(agent.stop())
    assert status == 507 and "k does not fit" in answer["error"]
    assert agent.desired.instances == {"m": 1}


def test_provision_locally_refuses_at_once_while_shutting_down(tmp_path: Path) -> None:
    agent = NodeAgent(settings_for(tmp_path, {"m": 100}), metrics=RoomFor1000())

    async def scenario() -> tuple[bool, bool, float, dict[str, int]]:
        agent.begin_shutdown()
        began = agent.clock()
        ready = await agent.provision_locally("m", 10.0)
        return ready, agent.add_on_demand("m"), agent.clock() - began, dict(agent.store.desired().instances)

    try:
        ready, added, took, saved = asyncio.run(scenario())
    finally:
        asyncio.run(agent.stop())
    assert not ready and not added and took < 1.0  # no 10 s wait for a model it would not start
    assert agent.desired.instances == {} and saved == {}


def test_a_new_request_after_the_stop_began_is_answered_shutting_down(tmp_path: Path) -> None:
    """The early branch of resolve: no server of the model anywhere, the stop already begun (a request over HTTPS,
    whose listener still accepts, or one that arrived just before the port closed). Nothing is added here and no
    peer is asked."""
    agent = NodeAgent(settings_for(tmp_path, {"m": 100}), metrics=RoomFor1000())

    async def scenario() -> Any:
        agent.begin_shutdown()
        return await resolve(agent, "m", "phone", {})

    try:
        outcome = asyncio.run(scenario())
    finally:
        asyncio.run(agent.stop())
    assert outcome == ShuttingDown()
    assert agent.desired.instances == {} and not agent.provision_requests.asked


def test_a_stopping_agent_keeps_its_stops_and_drops_its_starts() -> None:
    steps = [
        Start("a"),
        Stop("b-1", "b", "not desired"),
        Stop("c-1", "c", STOP_FIRST),  # only to make room for a start that will not come
        Start("c"),
        Stop("d-1", "d", "exited"),
    ]
    assert while_stopping(steps) == [Stop("b-1", "b", "not desired"), Stop("d-1", "d", "exited")]
    assert while_stopping([]) == []


def test_the_reconcile_loop_starts_nothing_once_shutting_down_and_still_stops(tmp_path: Path) -> None:
    """The desired set still names models once the stop begins (an on-demand one whose waiter just got the 503):
    a round then started them for nobody, and a Docker container outlived the agent (review19c F5)."""
    settings = settings_for(tmp_path, {"m": 16, "k": 16}, instance_drain_s=0.0)
    runtime = ProcessRuntime(settings.host, tmp_path / "n", max_body_mb=settings.max_body_mb)

    async def scenario() -> tuple[list[str], list[str]]:
        agent = NodeAgent(settings, runtime=runtime)
        try:
            agent.set_desired(1, "lead", {"m": 1})
            await agent.reconcile_once()
            before = sorted(i.model for i in await runtime.list() if i.running)
            agent.begin_shutdown()
            agent.set_desired(2, "lead", {"k": 1})  # m is no longer wanted, k is
            await agent.reconcile_once()
            return before, sorted(i.model for i in await runtime.list() if i.running)
        finally:
            await agent.stop()

    before, after = asyncio.run(scenario())
    assert before == ["m"]
    assert after == []  # m stopped (a stop still runs), k not started
