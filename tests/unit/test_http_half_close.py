"""A client that half-closes its socket after its request still gets the answer (agent/http_limits.py).

uvicorn's protocols let asyncio close the transport on the client's EOF, so ``printf 'GET ...' | nc -N``,
``curl`` fed from a pipe or any client that calls ``shutdown(SHUT_WR)`` got the connection closed with no
answer. The client API's protocol keeps its write side open while a request read whole is being answered,
then closes. Over real loopback sockets in this process, as a client would see it.
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

import uvicorn
from uvicorn.server import ServerState

from agent.http_limits import PARSE_SLICE, limited_protocol

seen: list[str] = []  # what the handlers saw of a request cut short


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Reads the whole body, waits as a model would, answers the body's length and digest."""
    if scope["type"] != "http":
        return
    digest, size = hashlib.sha256(), 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            seen.append("disconnect")
            return
        digest.update(message.get("body", b""))
        size += len(message.get("body", b""))
        if not message.get("more_body"):
            break
    await asyncio.sleep(0.2)  # the EOF arrives long before the answer is ready
    answer = f"{scope['path']} {size} {digest.hexdigest()}".encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(answer))]})
    await send({"type": "http.response.body", "body": answer})


async def half_closed_exchange(wire: bytes) -> bytes:
    """Send ``wire`` to the client API's protocol on 127.0.0.1, shut down our sending side, read to the end."""
    config = uvicorn.Config(app, h11_max_incomplete_event_size=16384, log_config=None)
    config.load()
    protocol_class = limited_protocol(10.0, 64, 30.0)
    state = ServerState()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: protocol_class(config=config, server_state=state, app_state={}),
                                      "127.0.0.1", 0)  # fmt: skip
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(wire)
    writer.write_eof()
    answer = await asyncio.wait_for(reader.read(), 10)  # to the end: the server closes once it has answered
    writer.close()
    server.close()
    await server.wait_closed()
    return answer


def request(path: str, body: bytes = b"", length: int | None = None) -> bytes:
    size = len(body) if length is None else length
    return f"POST {path} HTTP/1.1\r\nHost: a\r\nContent-Length: {size}\r\n\r\n".encode() + body


def test_a_request_then_eof_is_answered_and_the_connection_closed() -> None:
    answer = asyncio.run(half_closed_exchange(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n"))
    assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b"/x 0 " + hashlib.sha256().hexdigest().encode())


def test_a_large_body_still_parsing_at_the_eof_is_answered() -> None:
    body = hashlib.sha256(b"b").digest() * (2**20 // 32)  # 1 MiB: parsed in slices, long after the EOF came
    assert len(body) > 8 * PARSE_SLICE
    answer = asyncio.run(half_closed_exchange(request("/big", body)))
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert answer.endswith(f"/big {len(body)} {hashlib.sha256(body).hexdigest()}".encode())


def test_pipelined_requests_before_the_eof_are_all_answered() -> None:
    answer = asyncio.run(half_closed_exchange(request("/one", b"1") + request("/two", b"22")))
    assert answer.count(b"HTTP/1.1 200 ") == 2
    assert b"/one 1 " in answer and answer.endswith(f"/two 2 {hashlib.sha256(b'22').hexdigest()}".encode())


def test_a_request_cut_short_by_the_eof_is_closed_unanswered() -> None:
    seen.clear()
    assert asyncio.run(half_closed_exchange(b"GET /x HTTP/1.1\r\nHost: a\r\n")) == b""  # headers never ended
    assert asyncio.run(half_closed_exchange(request("/short", b"0123456789", length=100))) == b""
    assert seen == ["disconnect"]  # the handler reading the body is told the client is gone
