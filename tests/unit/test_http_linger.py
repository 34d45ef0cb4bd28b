"""An answer given before the request's body was read is followed by a lingering close (agent/http_sliced.py).

The client port answers 413 as soon as a declared body is over the limit, before reading a byte of it, and closes.
A client still sending then met a reset, and its kernel dropped the answer it had not read: Python's http.client,
which sends the whole body before it reads, got ConnectionResetError or BrokenPipeError for a 4 MB upload against a
1 MiB limit, 5 times of 5 (urllib3, httpx and curl coped). The protocol now half-closes after the answer and drops
what still comes, unparsed, until the client has been silent for ``EARLY_ANSWER_LINGER_S``, for
``EARLY_ANSWER_LINGER_MAX_S`` in all, or past ``EARLY_ANSWER_DROP_BYTES``. Over real loopback sockets in this
process, the client port's protocol and the agent's HttpLimits middleware as the agent runs them.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn
from uvicorn.server import ServerState

from agent import http_sliced
from agent.http_limits import HttpLimits, limited_protocol
from tests.waiting import wait_for

MAX_BODY = 2**20


async def echo_length(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Reads the whole body and answers its length (only bodies within the limit get here whole); ``/early``
    answers 401 at once, keeping the connection, without reading the body (as an auth failure does)."""
    if scope["path"] == "/early":
        await send({"type": "http.response.start", "status": 401, "headers": [(b"content-length", b"0")]})
        await send({"type": "http.response.body", "body": b""})
        return
    size, more = 0, True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        size += len(message.get("body", b""))
        more = message.get("more_body", False)
    answer = b"%d" % size
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(answer))]})
    await send({"type": "http.response.body", "body": answer})


class Server:
    """The client port's protocol on 127.0.0.1 in a thread of its own; what each closed connection dropped."""

    def __init__(self, limit_concurrency: int | None = None, header_timeout_s: float = 10.0) -> None:
        self.limit_concurrency, self.header_timeout_s = limit_concurrency, header_timeout_s
        self.port = 0
        self.dropped: list[int] = []  # bytes each lingering connection dropped, at its close
        self.open: list[int] = []  # the server's open connections, sampled by ``count_open``
        self.state = ServerState()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=asyncio.run, args=(self._serve(),), daemon=True)

    async def _serve(self) -> None:
        config = uvicorn.Config(HttpLimits(echo_length, MAX_BODY, 30.0), h11_max_incomplete_event_size=16384,
                                log_config=None, limit_concurrency=self.limit_concurrency,
                                timeout_keep_alive=1)  # fmt: skip
        config.load()
        base = limited_protocol(self.header_timeout_s, 64, 30.0)
        dropped = self.dropped

        class Recording(base):  # type: ignore[misc,valid-type]
            def connection_lost(self, exc: Exception | None) -> None:
                if self._lingering is not None:
                    dropped.append(self._dropped)
                super().connection_lost(exc)

        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        server = await self._loop.create_server(
            lambda: Recording(config=config, server_state=self.state, app_state={}), "127.0.0.1", 0
        )
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        await self._stop.wait()
        server.close()
        for conn in list(self.state.connections):
            conn.transport.abort()
        await server.wait_closed()

    def __enter__(self) -> Server:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def connections(self) -> int:
        """How many connections the server holds now (uvicorn's count, the one its caps read)."""
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(self._count(), self._loop).result(5)

    async def _count(self) -> int:
        return len(self.state.connections)


@pytest.fixture
def server() -> Iterator[Server]:
    with Server() as running:
        yield running


def post(port: int, body: bytes) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", "/p", body=body)
        answer = conn.getresponse()
        return answer.status, answer.read()
    finally:
        conn.close()


def test_http_client_uploading_over_the_limit_reads_its_413(server: Server) -> None:
    for size in (4 * 2**20, 12 * 2**20):  # both under the drop bound: the client sends all of it, then reads
        for _ in range(3):
            status, body = post(server.port, b"x" * size)
            assert status == 413 and b"request body over 1048576 bytes" in body, (size, status, body)


def test_a_body_within_the_limit_is_still_read_and_answered(server: Server) -> None:
    assert post(server.port, b"y" * MAX_BODY) == (200, b"%d" % MAX_BODY)
    assert server.dropped == []  # nothing answered early, nothing lingered


def open_upload(port: int, declared: int, source: str = "127.0.0.1") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=30, source_address=(source, 0))
    sock.sendall(f"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: {declared}\r\n\r\n".encode())
    return sock


def read_answer(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data or not data.endswith(b"}"):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def test_a_client_that_never_stops_sending_is_cut_off_at_the_bounds(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sender at loopback speed: the agent drops at most the drop bound (then reads no more), holds the connection
    at most the linger (counted in the server's connections meanwhile), and closes it."""
    monkeypatch.setattr(http_sliced, "EARLY_ANSWER_DROP_BYTES", 2**20)
    sock = open_upload(server.port, 2**40)
    sent, stop = [0], threading.Event()

    def flood() -> None:
        with contextlib.suppress(OSError):
            while not stop.is_set():
                sent[0] += sock.send(b"z" * 65536)

    sender = threading.Thread(target=flood)
    sender.start()
    try:
        started = time.monotonic()
        answer = read_answer(sock)
        assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
        assert server.connections() == 1  # lingering: still open, still counted against the caps
        sender.join(30)  # the close ends the flood (a reset or a broken pipe)
        took = time.monotonic() - started
    finally:
        stop.set()
        sender.join(5)
        sock.close()
    assert not sender.is_alive()
    assert http_sliced.EARLY_ANSWER_LINGER_S - 0.1 < took < http_sliced.EARLY_ANSWER_LINGER_S + 10, took
    assert server.dropped and 2**20 < server.dropped[0] <= 2**20 + 256 * 1024, server.dropped  # one read past it
    assert sent[0] > server.dropped[0], sent  # it went on sending past the bound (the kernel's buffers took the rest)
    wait_for(lambda: server.connections() == 0, 20)


def test_a_slow_upload_is_heard_out_while_it_keeps_sending(server: Server) -> None:
    """The linger ends once the client has been silent for ``EARLY_ANSWER_LINGER_S``, not that long after the
    answer: a 4 MiB upload at ~1.3 MB/s (a Wi-Fi uplink; ~3 s, past the 2 s) that reads only once it has sent
    everything still gets its 413. Paced by the clock (a chunk every 50 ms after the first), so a busy machine
    makes it no slower."""
    sock = open_upload(server.port, 4 * 2**20)
    chunk, started = b"s" * 65536, time.monotonic()
    for i in range(64):
        time.sleep(max(0.0, started + 0.05 * i - time.monotonic()))
        sock.sendall(chunk)
    assert time.monotonic() - started > http_sliced.EARLY_ANSWER_LINGER_S  # longer than a fixed linger
    assert read_answer(sock).startswith(b"HTTP/1.1 413 ")
    sock.close()


def test_the_clients_eof_ends_the_linger_at_once(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    """A client that stops sending once it has read the answer (shutdown(SHUT_WR)) is not held for the linger."""
    monkeypatch.setattr(http_sliced, "EARLY_ANSWER_LINGER_S", 60.0)
    sock = open_upload(server.port, 8 * 2**20)
    sock.sendall(b"w" * 100_000)
    assert read_answer(sock).startswith(b"HTTP/1.1 413 ")
    started = time.monotonic()
    sock.shutdown(socket.SHUT_WR)
    assert sock.recv(1) == b""  # our FIN came with the answer; then the close
    wait_for(lambda: server.connections() == 0, 20)
    assert time.monotonic() - started < 30  # not the 60 s linger
    sock.close()
    assert server.dropped and server.dropped[0] <= 100_000, server.dropped  # it lingered, and dropped the rest


def test_a_newcomer_at_a_full_cap_takes_a_lingering_connections_place(monkeypatch: pytest.MonkeyPatch) -> None:
    """A lingering connection keeps its place in uvicorn's count (it is still open), so at a full cap it is the
    first a newcomer from another address takes (agent/http_caps.py ``_make_room``), not a reason to refuse it."""
    monkeypatch.setattr(http_sliced, "EARLY_ANSWER_LINGER_S", 60.0)
    with Server(limit_concurrency=2) as server:  # uvicorn refuses a request that finds 2 open, its own included
        sock = open_upload(server.port, 8 * 2**20, source="127.0.0.2")
        sock.sendall(b"w" * 100_000)
        assert read_answer(sock).startswith(b"HTTP/1.1 413 ")
        assert server.connections() == 1
        assert post(server.port, b"small") == (200, b"5")  # before: uvicorn's 503 for the linger's 60 s
        wait_for(lambda: server.dropped != [], 10)  # the lingering one was closed for it
        sock.close()


def test_a_lingering_connection_is_taken_before_an_older_idle_one_of_its_address(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """review24 F6: the address whose place a newcomer takes gives up its lingering connection (answered: its client
    loses nothing) before an idle keep-alive one opened earlier (its client would have to connect again). Marked
    waiting as its linger began, the lingering one was the newest, the last taken."""
    monkeypatch.setattr(http_sliced, "EARLY_ANSWER_LINGER_S", 60.0)
    with Server(limit_concurrency=3) as server:  # room for two connections besides a newcomer's
        idle = socket.create_connection(("127.0.0.1", server.port), timeout=30, source_address=("127.0.0.2", 0))
        wait_for(lambda: server.connections() == 1, 10)
        sock = open_upload(server.port, 8 * 2**20, source="127.0.0.2")
        sock.sendall(b"w" * 100_000)
        assert read_answer(sock).startswith(b"HTTP/1.1 413 ")
        assert server.connections() == 2
        assert post(server.port, b"small") == (200, b"5")  # from 127.0.0.1: it takes one of 127.0.0.2's places
        wait_for(lambda: server.dropped != [], 10)  # the lingering one's (before: the idle one was closed) ...
        idle.settimeout(0.5)
        with pytest.raises(TimeoutError):  # ... and the idle one is still open
            idle.recv(1)
        idle.close()
        sock.close()


def test_a_chunk_refusals_linger_taken_by_a_newcomer_leaves_the_newcomer_its_deadline() -> None:
    """review24 F1: the chunk refusal's linger did not count as closing, so a newcomer at a full cap that took its
    place wrote a 503 after its FIN (asyncio: "Cannot call write() after write_eof()") inside the newcomer's
    ``connection_made``, which then never armed the newcomer's header deadline: a silent connection held its place
    for good."""
    with Server(limit_concurrency=2, header_timeout_s=1.0) as server:
        refused = socket.create_connection(("127.0.0.1", server.port), timeout=30, source_address=("127.0.0.2", 0))
        refused.sendall(b"POST /p HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n" + b"1\r\nx\r\n" * 400)
        assert b"too many small chunks" in read_answer(refused)
        silent = socket.create_connection(("127.0.0.1", server.port), timeout=30)  # the chunk linger is 1 s: within
        started = time.monotonic()
        assert silent.recv(1) == b""  # closed by its own 1 s header deadline, quietly
        assert time.monotonic() - started < 15
        wait_for(lambda: server.connections() == 0, 20)
        silent.close()
        refused.close()


def test_uvicorns_keep_alive_timeout_after_an_early_keep_alive_answer_closes_at_once(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """review24b: a 401 that keeps the connection, its request's body still coming, then uvicorn's keep-alive timer
    (1 s here): its close is uvicorn's own, not an answer's, and does not linger (the server's stop neither)."""
    monkeypatch.setattr(http_sliced, "EARLY_ANSWER_LINGER_S", 60.0)
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    sock.sendall(b"POST /early HTTP/1.1\r\nHost: a\r\nContent-Length: 1000000\r\n\r\n" + b"e" * 10_000)
    started = time.monotonic()
    answer = b""
    while chunk := sock.recv(65536):
        answer += chunk
    assert answer.startswith(b"HTTP/1.1 401 ") and time.monotonic() - started < 20
    wait_for(lambda: server.connections() == 0, 20)  # before: held for the linger's 60 s
    assert time.monotonic() - started < 30
    assert server.dropped == []
    sock.close()
