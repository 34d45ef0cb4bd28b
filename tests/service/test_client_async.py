"""The async client: mDNS browsing on the event loop (never blocking it), and transport= handed to httpx."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import httpx

from client import AsyncClient, ClusterUnreachableError


def test_async_client_browses_without_blocking_the_loop_and_takes_a_transport(agents: Any) -> None:
    a = agents("a")

    async def main() -> tuple[list[str], int, Any]:
        ticks = 0
        stop = asyncio.Event()

        async def ticker() -> None:
            nonlocal ticks
            while not stop.is_set():
                ticks += 1
                await asyncio.sleep(0.01)

        task = asyncio.create_task(ticker())
        transport = httpx.AsyncHTTPTransport(retries=1)
        async with AsyncClient(discover_interfaces=["127.0.0.1"], transport=transport) as c:
            found: list[str] = []
            for _ in range(3):  # a loaded machine may need more than one 2 s browse to resolve every agent
                c.core.agents = []  # no seeds: browse
                with contextlib.suppress(ClusterUnreachableError):
                    found = await c._run(c.core.ordered_agents())
                if a.url in found:
                    break
            c.core.agents = [a.url]
            result = await c.predict("half_plus_two", instances=[2.0])
        stop.set()
        await task
        return found, ticks, result

    found, ticks, result = asyncio.run(main())
    assert a.url in found
    assert ticks >= 20  # the loop kept running during the browse (a blocking browse would allow ~1)
    assert result == {"predictions": [3.0]}
