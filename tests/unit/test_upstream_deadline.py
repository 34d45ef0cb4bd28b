"""``UpstreamResponse.aiter_body(deadline)``: a body read ends at its deadline however the server paces it.

The CI run of session 13's stop caught a trickled error page holding the proxy's handler for over 20 s under a
1 s ``asyncio.timeout``: on Python 3.11 ``asyncio.wait_for`` hands back the inner read's data when a cancellation
arrives as that read completes, losing the cancellation (fixed in 3.12), and ``asyncio.timeout`` does not exist on
3.10 (JetPack 6's Python). The deadline now bounds each read's own timeout instead of cancelling from outside.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from agent.serving.upstream import UpstreamError, UpstreamPool


async def _trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answer any request with a chunked 500 page that never ends: one byte every 5 ms."""
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"HTTP/1.1 500 Oops\r\nContent-Type: text/html\r\nTransfer-Encoding: chunked\r\n\r\n")
    try:
        while True:
            writer.write(b"1\r\nx\r\n")
            await writer.drain()
            await asyncio.sleep(0.005)
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


async def _read_until(deadline_in: float) -> tuple[bytes, float, bool]:
    server = await asyncio.start_server(_trickle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    pool = UpstreamPool(timeout=30.0)
    got, cut = b"", False
    try:
        answer = await pool.request("GET", f"http://127.0.0.1:{port}/page", [], None)
        assert answer.status == 500
        loop = asyncio.get_running_loop()
        began = loop.time()
        try:
            async for chunk in answer.aiter_body(began + deadline_in):
                got += chunk
        except UpstreamError as exc:
            cut = "deadline passed" in str(exc)
        took = loop.time() - began
        await answer.aclose()
        return got, took, cut
    finally:
        await pool.aclose()
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize("deadline_in", [0.0, 0.2])
def test_a_trickled_body_ends_at_its_deadline(deadline_in: float) -> None:
    for _ in range(5):  # each read is ~5 ms: many chances for a read to complete as the deadline passes
        got, took, cut = asyncio.run(_read_until(deadline_in))
        assert cut, "the read must end with UpstreamError naming the deadline"
        assert took < deadline_in + 5.0  # bounded by the deadline (plus scheduling), not by the endless page
        if deadline_in == 0.0:
            assert len(got) < 64  # a deadline already passed reads nothing more (what came with the head is kept)
        else:
            assert 0 < len(got) < 2048


def test_no_deadline_keeps_the_per_read_timeout() -> None:
    """Without a deadline each read waits at most the pool's timeout (the long-standing rule)."""

    async def main() -> float:
        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
            await writer.drain()
            await asyncio.sleep(5)
            writer.close()

        server = await asyncio.start_server(silent, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        pool = UpstreamPool(timeout=0.2)
        try:
            answer = await pool.request("GET", f"http://127.0.0.1:{port}/", [], None)
            began = time.monotonic()
            with pytest.raises(UpstreamError, match=r"no data in 0\.2 s"):
                await answer.read()
            await answer.aclose()
            return time.monotonic() - began
        finally:
            await pool.aclose()
            server.close()

    assert asyncio.run(main()) < 5.0
