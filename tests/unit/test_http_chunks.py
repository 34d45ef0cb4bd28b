"""The client protocol's parsing bounds (agent/http_limits.py): chunks per body, bytes parsed per loop turn.

h11 parses in pure Python on the agent's event loop; a body of 1-byte chunks held it 0.4 s per socket read.
The pure rule and the counting connection are checked on bytes; the protocol itself runs over real loopback
sockets in this process, where what h11 is handed per loop turn can be observed.
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

import h11
import uvicorn
from hypothesis import given, settings
from hypothesis import strategies as st
from uvicorn.server import ServerState

from agent.http_limits import (
    MIN_CHUNK_BYTES,
    MIN_CHUNKS,
    PARSE_SLICE,
    ChunkCountingConnection,
    limited_protocol,
    too_many_chunks,
)

HEAD = b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"


def chunked(body: bytes, size: int) -> bytes:
    parts = [b"%x\r\n%s\r\n" % (len(body[i : i + size]), body[i : i + size]) for i in range(0, len(body), size)]
    return b"".join(parts) + b"0\r\n\r\n"


def test_past_256_chunks_they_must_average_256_bytes() -> None:
    assert not too_many_chunks(MIN_CHUNKS, MIN_CHUNKS)  # 256 1-byte chunks: any client may
    assert too_many_chunks(MIN_CHUNKS + 1, MIN_CHUNKS + 1)
    assert not too_many_chunks(1000, 1000 * MIN_CHUNK_BYTES)
    assert too_many_chunks(1001, 1000 * MIN_CHUNK_BYTES)
    assert not too_many_chunks(128, 2**20)  # 8 KiB chunks of 1 MiB
    assert not too_many_chunks(2**20 // 300, 2**20)  # 300-byte chunks


def events(conn: h11.Connection, wire: bytes, splits: list[int]) -> tuple[bytes, bool]:
    """The body h11 hands out for ``wire`` fed in pieces cut at ``splits``; whether the request ended."""
    body: list[bytes] = []
    ended, last = False, 0
    for cut in [*sorted(splits), len(wire)]:
        if cut > last:  # h11 reads empty data as the end of the stream
            conn.receive_data(wire[last:cut])
            last = cut
        while (event := conn.next_event()) is not h11.NEED_DATA:
            if isinstance(event, h11.Data):
                body.append(event.data)
            ended = ended or isinstance(event, h11.EndOfMessage)
    return b"".join(body), ended


def test_one_byte_chunks_are_refused_at_the_257th() -> None:
    conn = ChunkCountingConnection(16384)
    body, ended = events(conn, HEAD + b"1\r\nx\r\n" * 10_000, [])
    assert conn.refused and not ended
    assert conn.chunks == MIN_CHUNKS + 1 and len(body) == MIN_CHUNKS  # the refused chunk is not handed out
    assert events(conn, b"1\r\nx\r\n" * 100, [])[0] == b""  # and nothing after it


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(0, 2**18), max_size=30), st.sampled_from([300, 8192, 65536]))
def test_ordinary_chunked_bodies_pass_however_the_reads_fall(splits: list[int], size: int) -> None:
    body = hashlib.sha256(b"x").digest() * (2**18 // 32)  # 256 KiB
    conn = ChunkCountingConnection(16384)
    got, ended = events(conn, HEAD + chunked(body, size), splits)
    assert got == body and ended and not conn.refused
    assert conn.chunks == -(-len(body) // size)  # every chunk counted once, wherever a read ends


def test_the_count_starts_again_with_each_request() -> None:
    conn = ChunkCountingConnection(16384)
    request = HEAD + chunked(b"y" * 200, 1)  # 200 chunks: allowed, twice
    body, ended = events(conn, request, [])
    assert ended and body == b"y" * 200
    conn.send(h11.Response(status_code=200, headers=[(b"content-length", b"0")]))
    conn.send(h11.EndOfMessage())
    conn.start_next_cycle()
    body, ended = events(conn, request, [])
    assert ended and body == b"y" * 200 and not conn.refused


# -- the protocol over loopback ---------------------------------------------------------------------------


async def echo(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Reads the whole body (slowly, as a busy handler would) and answers its length and digest."""
    if scope["type"] != "http":
        return
    digest, size = hashlib.sha256(), 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        digest.update(message.get("body", b""))
        size += len(message.get("body", b""))
        await asyncio.sleep(0.001)
        if not message.get("more_body"):
            break
    answer = f"{size} {digest.hexdigest()}".encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(answer))]})
    await send({"type": "http.response.body", "body": answer})


async def serve_once(wire: bytes) -> tuple[bytes, list[int], int]:
    """Send ``wire`` at once to a LimitedH11Protocol server; its answer, the sizes h11 was handed per feed and
    the most bytes the protocol held unparsed at a feed."""
    config = uvicorn.Config(echo, h11_max_incomplete_event_size=16384, log_config=None)
    config.load()
    protocol_class = limited_protocol(10.0, 64, 30.0)
    state, fed, held = ServerState(), [], [0]

    def make() -> Any:
        protocol: Any = protocol_class(config=config, server_state=state, app_state={})
        receive_data = protocol.conn.receive_data

        def observed(data: bytes) -> None:  # what h11 is handed, and what still waits beside it
            fed.append(len(data))
            held[0] = max(held[0], len(protocol._unparsed))
            receive_data(data)

        protocol.conn.receive_data = observed
        return protocol

    loop = asyncio.get_running_loop()
    server = await loop.create_server(make, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(wire)
    answer = await asyncio.wait_for(reader.read(), 30)  # to the end: a refusal ends our side before it closes
    writer.close()
    server.close()
    await server.wait_closed()
    return answer, fed, held[0]


def test_tiny_chunks_get_400_and_h11_never_gets_more_than_a_slice() -> None:
    wire = HEAD + b"1\r\nx\r\n" * 200_000  # 1.2 MB of 1-byte chunks, written at once
    answer, fed, _ = asyncio.run(serve_once(wire))
    assert answer.startswith(b"HTTP/1.1 400 ") and b"too many small chunks (257 for 257 bytes)" in answer
    assert max(fed) <= PARSE_SLICE and sum(fed) <= PARSE_SLICE  # refused within the first slice


def test_a_large_chunked_upload_still_works_in_slices() -> None:
    body = hashlib.sha256(b"z").digest() * (2**20 // 32)  # 1 MiB in 8 KiB chunks
    answer, fed, held = asyncio.run(serve_once(HEAD.replace(b"Host: a", b"Host: a\r\nConnection: close") +
                                               chunked(body, 8192)))  # fmt: skip
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert answer.endswith(f"{len(body)} {hashlib.sha256(body).hexdigest()}".encode())
    assert max(fed) <= PARSE_SLICE and sum(fed) >= len(body)
    assert held <= PARSE_SLICE + 256 * 1024 + 4096, held  # what waits: a slice and one read, not the socket
