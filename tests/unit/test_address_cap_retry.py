"""The per-address cap's 503 says when to come back (agent/http_caps.py, ``address_retry_after_s``).

Its ``Retry-After`` is when the address's first place is sure to free: the soonest header deadline of its
connections waiting for a request head, 1 s at least, ``header_timeout_s`` at most (also when none waits for a
head: all are in requests). Over real loopback sockets with the client port's protocol."""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

import uvicorn
from uvicorn.server import ServerState

from agent.http_caps import address_retry_after_s, limited_protocol
from bench.nat_excuse_bench import app as _reader  # reads the whole body, answers an empty 200

HEADER_S = 5.0


def test_the_soonest_deadline_bounded_by_one_second_and_the_header_deadline() -> None:
    assert address_retry_after_s([107.2, 103.5, 109.0], 100.0, 10.0) == 4  # the soonest: 3.5 s, whole seconds up
    assert address_retry_after_s([100.2], 100.0, 10.0) == 1  # at least 1
    assert address_retry_after_s([99.0], 100.0, 10.0) == 1  # past, its timer not yet run (a busy loop)
    assert address_retry_after_s([], 100.0, 10.0) == 10  # none waits for a head: the header deadline
    assert address_retry_after_s([], 100.0, 0.3) == 1
    assert address_retry_after_s([500.0], 100.0, 10.0) == 10  # never past the bound


async def _refused(port: int, source: str) -> tuple[int, int]:
    """A connection from ``source`` over its address's cap: (status, Retry-After) of what the agent sends."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head = answer.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
    after = [line.split(b":", 1)[1].strip() for line in head if line.lower().startswith(b"retry-after:")]
    return int(head[0].split()[1]), int(after[0]) if after else -1


async def _scenario() -> dict[str, Any]:
    config = uvicorn.Config(_reader, log_config=None)
    config.load()
    protocol_class = limited_protocol(HEADER_S, 2, 30.0)
    state = ServerState()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: protocol_class(config=config, server_state=state, app_state={}),
                                      "127.0.0.1", 0)  # fmt: skip
    port = server.sockets[0].getsockname()[1]
    out: dict[str, Any] = {}
    began = time.monotonic()
    held = [await asyncio.open_connection("127.0.0.1", port, local_addr=("127.0.92.1", 0)) for _ in range(2)]
    out["idle"] = await _refused(port, "127.0.92.1")
    out["idle_within_s"] = time.monotonic() - began
    await asyncio.sleep(2.2)
    out["later"] = await _refused(port, "127.0.92.1")
    for _, writer in held:  # both now in a request whose body is still coming: no header deadline
        writer.write(b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 1000\r\n\r\nx")
    await asyncio.sleep(0.3)
    out["in_requests"] = await _refused(port, "127.0.92.1")
    out["other_address"] = await asyncio.open_connection("127.0.0.1", port, local_addr=("127.0.92.2", 0))
    await asyncio.sleep(0.1)
    out["other_open"] = not out["other_address"][0].at_eof()
    out["other_address"][1].close()
    for _, writer in held:
        writer.close()
    server.close()
    return out


def test_the_per_address_503_says_when_a_place_of_that_address_frees() -> None:
    out = asyncio.run(_scenario())
    status, first = out["idle"]
    assert status == 503
    slack = out["idle_within_s"]  # the idle connections' deadlines came within this of the refusal
    assert math.ceil(HEADER_S - slack) <= first <= HEADER_S, out
    status, later = out["later"]
    assert status == 503 and 1 <= later <= first - 2, out  # 2.2 s on: the same deadline, nearer
    assert out["in_requests"] == (503, HEADER_S), out  # none waits for a head: the header deadline, the bound
    assert out["other_open"]  # (another address is not refused)
