"""A server of this node that refused a proxied connection (review12d F5): out of the ready set until a probe sent
after the refusal answers; the bookkeeping for it and for the last good probe stays bounded by the servers."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from agent.node import NodeAgent
from agent.runtime.process import ProcessRuntime
from agent.settings import load_settings


def test_a_refusal_holds_until_a_later_probe_and_the_books_follow_the_servers(tmp_path: Path) -> None:
    cat = tmp_path / "catalogue.toml"
    cat.write_text('[[models]]\nname = "m"\nimage = "x"\nstand_in = "half_plus_two"\nmem_mb = 16\ncompute = 1\n')
    settings = load_settings(
        env={},
        overrides={
            "node_id": "n",
            "data_dir": str(tmp_path / "n"),
            "catalogue": str(cat),
            "discovery": False,
            "instance_drain_s": 0,
        },
    )
    now = [time.time()]  # the runtime's start times are wall-clock times
    runtime = ProcessRuntime(settings.host, tmp_path / "n", max_body_mb=settings.max_body_mb)

    async def ready_now(agent: NodeAgent) -> set[str]:
        await agent.observe()
        return set(agent.state.ready)

    async def scenario() -> None:
        agent = NodeAgent(settings, runtime=runtime, clock=lambda: now[0])
        try:
            agent.set_desired(1, "lead", {"m": 1})
            for _ in range(50):
                await agent.reconcile_once()
                if agent.state.ready:
                    break
                await asyncio.sleep(0.1)
            [inst] = agent.state.instances
            assert agent.state.ready == {inst.id} and agent._last_ready == {inst.id: now[0]}
            assert not agent.endpoint_refused("http://127.0.0.1:1")  # not a server of this node: nothing changes
            agent._wake.clear()
            assert agent.endpoint_refused(inst.url)
            assert agent.state.ready == set() and agent._wake.is_set()
            assert agent.candidates("m") == []
            assert await ready_now(agent) == set()  # a probe sent in the same instant may predate the refusal
            now[0] += 1
            assert await ready_now(agent) == {inst.id}  # one sent after it answered: it is back (it was alive)
            assert agent._refused == {}
            agent.set_desired(2, "lead", {})
            await agent.reconcile_once()
            assert agent.state.instances == [] and agent._last_ready == {} and agent._refused == {}
        finally:
            await agent.stop()

    asyncio.run(scenario())
