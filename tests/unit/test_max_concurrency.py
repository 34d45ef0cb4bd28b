"""``max_concurrency`` is the number of connections the client port serves at once (agent/cli.py ``server_config``).

uvicorn's ``limit_concurrency`` refuses a request (503) when that many connections are open, the request's own
among them, so the agent passed ``max_concurrency`` straight through and served one fewer than it says: 255 at the
default 256, and at 1 nothing at all. Over real loopback sockets, through the agent's own ``server_config``: N
requests held in their handlers at once are all answered, and the next connection's request gets the cap's 503.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from agent.settings import Settings
from tests.unit.test_body_rate_settings import serve

REQUEST = b"GET /held HTTP/1.1\r\nHost: a\r\n\r\n"


async def held_and_one_more(settings: Settings, held: int) -> tuple[int, list[bytes], bytes]:
    """``held`` requests on connections of their own, each kept in its handler until all are in, then one more
    connection's request while they are held: (how many got in together, the held ones' answers, the extra's)."""
    inside, release = [0], asyncio.Event()
    all_in = asyncio.Event()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        inside[0] += 1
        if inside[0] == held:
            all_in.set()
        await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})

    server, port = await serve(settings, app)
    clients = []
    try:
        for n in range(held):  # (each from an address of its own: the per-address cap is not what is tested)
            reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(f"127.0.93.{n + 1}", 0))
            writer.write(REQUEST)
            clients.append((reader, writer))
        await asyncio.wait_for(all_in.wait(), 10)
        got_in = inside[0]
        reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=("127.0.94.1", 0))
        clients.append((reader, writer))
        writer.write(REQUEST)
        extra = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        release.set()
        answers = [await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 10) for r, _ in clients[:held]]
        return got_in, answers, extra
    finally:
        for _, writer in clients:
            writer.close()
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize("cap", [1, 3])
def test_max_concurrency_connections_are_served_at_once_and_the_next_is_refused(cap: int, tmp_path: Path) -> None:
    settings = Settings(node_id="n1", data_dir=str(tmp_path), discovery=False, max_concurrency=cap)
    got_in, answers, extra = asyncio.run(held_and_one_more(settings, cap))
    assert got_in == cap  # before: at 3, the third got uvicorn's 503; at 1, the only one did
    assert all(a.startswith(b"HTTP/1.1 200 ") for a in answers), answers
    assert extra.startswith(b"HTTP/1.1 503 "), extra  # the cap's (no connection waits on its client to take)
