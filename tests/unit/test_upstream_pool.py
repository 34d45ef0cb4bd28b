"""The proxy's upstream pool against real loopback servers (asyncio): when a connection is retried or reused, how
long a response head may take, and the pace a streamed body must keep (review14a F1, F6 and its LOW items)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from agent.serving.upstream import Replay, UpstreamError, UpstreamPool

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _serve(handler: Handler) -> tuple[asyncio.AbstractServer, str]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"


async def _request_body(reader: asyncio.StreamReader) -> bytes:
    """Read one request with a Content-Length or chunked body (enough for these tests); its body."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").lower().split("\r\n")
    length = next((int(v.split(":")[1]) for v in lines if v.startswith("content-length:")), None)
    if length is not None:
        return await reader.readexactly(length)
    body = b""
    if any("chunked" in v for v in lines if v.startswith("transfer-encoding:")):
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
            body += (await reader.readexactly(size + 2))[:-2]
            if size == 0:
                return body
    return body


def test_a_pooled_connection_the_server_closed_is_retried_once_on_a_fresh_one() -> None:
    """The retry that stays: a reused connection closed while idle fails at once with no response byte."""

    async def main() -> tuple[int, bytes, int]:
        async def once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await _request_body(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()
            await asyncio.sleep(0.05)
            writer.close()  # keep-alive announced, then closed while idle

        server, url = await _serve(once)
        pool = UpstreamPool(timeout=1.0)
        try:
            first = await pool.request("GET", url + "/a", [], None)
            assert await first.read() == b"ok"
            await first.aclose()
            assert pool.idle_count() == 1
            await asyncio.sleep(0.2)
            second = await pool.request("GET", url + "/b", [], None)
            got = await second.read()
            await second.aclose()
            return second.status, got, pool.opened
        finally:
            await pool.aclose()
            server.close()

    assert asyncio.run(main()) == (200, b"ok", 2)


def test_a_sent_request_that_timed_out_is_not_retried() -> None:
    """review14a F6: a read timeout after the request went out was retried on a fresh connection (the model ran
    twice on one server before the proxy went on to the next)."""

    async def main() -> tuple[int, bool, int]:
        runs = [0]

        async def slow_second(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while True:
                    body = await _request_body(reader)
                    if body == b"slow":
                        runs[0] += 1
                        await asyncio.sleep(1.0)
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    await writer.drain()
            except (asyncio.IncompleteReadError, ConnectionError):
                writer.close()

        server, url = await _serve(slow_second)
        pool = UpstreamPool(timeout=0.3)
        try:
            first = await pool.request("POST", url + "/a", [("Content-Length", "4")], _whole(b"fast"))
            await first.read()
            await first.aclose()
            with pytest.raises(UpstreamError) as failed:
                await pool.request("POST", url + "/a", [("Content-Length", "4")], _whole(b"slow"))
            await asyncio.sleep(1.2)
            return runs[0], failed.value.timed_out and failed.value.sent, pool.opened
        finally:
            await pool.aclose()
            server.close()

    assert asyncio.run(main()) == (1, True, 1)


def test_a_pooled_post_its_server_read_whole_and_closed_on_is_sent_again_once_to_that_server() -> None:
    """review14d S1: the server read the request whole and closed without answering (the input killed it); the
    reused connection looks stale (no response byte, no timeout), as one the server closed idle does, so the pool
    sends it once more on a fresh connection to the same server, and no more (the proxy sends it to no other:
    test_proxy_deadlines)."""

    async def main() -> tuple[int, bool, int]:
        runs = [0]

        async def dies_on_deadly(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while True:
                    if await _request_body(reader) == b"deadly":
                        runs[0] += 1
                        writer.close()
                        return
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    await writer.drain()
            except (asyncio.IncompleteReadError, ConnectionError):
                writer.close()

        server, url = await _serve(dies_on_deadly)
        pool = UpstreamPool(timeout=1.0)
        try:
            first = await pool.request("POST", url + "/a", [("Content-Length", "2")], _whole(b"ok"))
            await first.read()
            await first.aclose()
            assert pool.idle_count() == 1
            with pytest.raises(UpstreamError) as failed:
                await pool.request("POST", url + "/a", [("Content-Length", "6")], _whole(b"deadly"))
            await asyncio.sleep(0.3)
            return runs[0], failed.value.sent and not failed.value.timed_out, pool.opened
        finally:
            await pool.aclose()
            server.close()

    assert asyncio.run(main()) == (2, True, 2)


def _whole(data: bytes) -> Replay:
    async def one() -> AsyncIterator[bytes]:
        yield data

    body = Replay(one(), 1 << 20)
    asyncio.get_running_loop()  # built inside the loop, read there
    return body


def test_bytes_past_an_answers_end_never_become_the_next_requests_answer() -> None:
    """LOW (review14a): ``_release`` ignored h11's trailing data: bytes past Content-Length, here a whole forged
    answer, were read as the next request's answer on the reused connection."""

    async def main() -> tuple[bytes, int]:
        connections = [0]

        async def extra(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            connections[0] += 1
            await _request_body(reader)
            if connections[0] == 1:
                forged = b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nforged"
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok" + forged)  # one write, one read
            else:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nreal")
            await writer.drain()
            try:
                await _request_body(reader)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nreal")
                await writer.drain()
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            writer.close()

        server, url = await _serve(extra)
        pool = UpstreamPool(timeout=1.0)
        try:
            first = await pool.request("GET", url + "/a", [], None)
            assert await first.read() == b"ok"
            await first.aclose()
            second = await pool.request("GET", url + "/b", [], None)
            got = await second.read()
            await second.aclose()
            return got, pool.opened
        finally:
            await pool.aclose()
            server.close()

    assert asyncio.run(main()) == (b"real", 2)


def test_the_head_waits_while_a_slow_upload_still_makes_progress() -> None:
    """The head's deadline runs from the last request byte: an upload slower than the timeout in all, each piece
    within it, is not cut while the server (rightly) says nothing until the body is whole."""

    async def main() -> tuple[int, bytes]:
        async def echo_size(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            body = await _request_body(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%d" % (len(str(len(body))), len(body)))
            await writer.drain()
            writer.close()

        async def slow() -> AsyncIterator[bytes]:
            for _ in range(8):
                await asyncio.sleep(0.15)
                yield b"x" * 1000

        server, url = await _serve(echo_size)
        pool = UpstreamPool(timeout=0.6)
        try:
            answer = await pool.request("POST", url + "/a", [], Replay(slow(), 1 << 20))  # 1.2 s in all
            got = await answer.read()
            await answer.aclose()
            return answer.status, got
        finally:
            await pool.aclose()
            server.close()

    assert asyncio.run(main()) == (200, b"8000")


def test_a_head_trickled_while_the_server_stops_reading_the_body_is_cut_off() -> None:
    """review14a F1: each head byte came within the per-read timeout, so nothing ended the wait; and the send of a
    body the server no longer read waited without end. Now the head has the pool's timeout from the last progress."""

    async def main() -> tuple[bool, float]:
        async def trickler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")  # the head only: the body is never read
            writer.write(b"HTTP/1.1 200 OK\r\n")
            try:
                for _ in range(2000):
                    writer.write(b"X")
                    await writer.drain()
                    await asyncio.sleep(0.05)
            except ConnectionError:
                pass
            writer.close()

        async def big() -> AsyncIterator[bytes]:
            for _ in range(1024):  # 64 MiB: far past what the socket buffers take
                yield b"x" * 65536

        server, url = await _serve(trickler)
        pool = UpstreamPool(timeout=0.5)
        began = time.monotonic()
        try:
            with pytest.raises(UpstreamError) as failed:
                await pool.request("POST", url + "/a", [], Replay(big(), 1 << 30))
            return failed.value.timed_out, time.monotonic() - began
        finally:
            await pool.aclose()
            server.close()

    timed_out, took = asyncio.run(main())
    assert timed_out and took < 5.0, took


@pytest.mark.parametrize("caller_pause", [0.0, 0.3])
def test_a_streamed_body_must_keep_its_pace_however_slowly_the_caller_reads(caller_pause: float) -> None:
    """``aiter_body(pace=(n, s))``: each n bytes within s seconds of waiting on the server. A server trickling
    (2,000 B/s against 4 KiB in 0.5 s) is cut off; the caller's own pauses between chunks (a slow client) count
    for nothing, so a server keeping the pace is never cut because its client reads slowly."""

    async def main() -> tuple[int, int, bool]:
        async def paced(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            path = (await reader.readuntil(b"\r\n\r\n")).split(b" ")[1]
            piece, gap = (100, 0.05) if path == b"/trickle" else (2000, 0.05)  # 2,000 B/s or 40,000 B/s
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 40000\r\n\r\n")
            try:
                for _ in range(40000 // piece):
                    writer.write(b"x" * piece)
                    await writer.drain()
                    await asyncio.sleep(gap)
            except ConnectionError:
                pass
            writer.close()

        server, url = await _serve(paced)
        pool = UpstreamPool(timeout=5.0)
        results = []
        try:
            for path in ("/steady", "/trickle"):
                answer = await pool.request("GET", url + path, [], None)
                got, cut = 0, False
                try:
                    async for chunk in answer.aiter_body(pace=(4096, 0.5)):
                        got += len(chunk)
                        await asyncio.sleep(caller_pause if path == "/steady" else 0.0)
                except UpstreamError as exc:
                    cut = exc.timed_out
                await answer.aclose()
                results.append((got, cut))
            (steady, steady_cut), (trickled, trickle_cut) = results
            assert (steady, steady_cut) == (40000, False)
            return trickled, 0, trickle_cut
        finally:
            await pool.aclose()
            server.close()

    trickled, _, cut = asyncio.run(main())
    assert cut and trickled < 4096
