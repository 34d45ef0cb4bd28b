"""A lean HTTP/1.1 client for the peer plane: kept-alive (mutual-TLS) connections per peer, one exchange each.

Membership sends several small signed messages a second to every agent; through httpx each one went
through the client, its transport, httpcore's pool and h11 (profiled: the largest share of an idle
follower's CPU after TLS). Peers all speak our own listener (uvicorn, agent/peer_api.py), so this client
does only what that needs: a request with a ``content-length`` body, an answer with a ``content-length``
(or chunked, under the listener's own chunk rule) body of at most ``max_body`` bytes. Connections are kept per
peer (at most ``max_idle`` idle ones each, ``max_peers`` peers, least recently used first out) and dropped after
``idle_s`` unused, before the listener's own 30 s keep-alive ends; a kept connection the peer closed meanwhile
is retried once on a new one (only when no byte of an answer came back). At most ``max_busy`` exchanges per peer
are in flight (connecting included); more wait their turn within their own deadline, and past ``max_waiting``
fail at once.

    PeerHttpError(OSError)   unreachable, timed out, or not a well-formed HTTP/1.1 answer
"""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from agent import aio
from agent.http_sliced import MAX_HEADER_FIELDS, too_many_chunks
from agent.peer_gate import small_tls_buffers
from agent.peer_tls import PeerIdentity, peer_identity

log = logging.getLogger(__name__)

MAX_IDLE = 2  # idle connections kept per peer (membership has one or two exchanges with a peer at a time)
# Exchanges in flight per peer, connecting included: a burst to a silent peer (probes, relays, a leader's gather)
# opened 101 TLS handshakes at once. Past it an exchange waits for a free one within its own deadline ...
MAX_BUSY = 8
MAX_WAITING = 64  # ... and past this many waiting for one peer, it fails at once
MAX_PEERS = 320  # peers with kept connections (swim.MAX_MEMBERS + candidates); least recently used dropped
IDLE_S = 25.0  # under the listener's keep-alive (30 s): we close first, so a kept connection is rarely stale
HEAD_LIMIT = 1 << 16  # bytes of status line and headers
MAX_FRAMING = 1 << 16  # bytes of a chunked answer's framing (size lines, CRLFs, trailer); ~12 KiB at most honestly
SWEEP_S = 5.0  # how often idle connections past IDLE_S are closed (their TLS buffers freed)


class PeerHttpError(OSError):
    """No well-formed answer: the peer is unreachable, timed out, closed the connection or spoke garbage."""


class PeerBusyError(PeerHttpError):
    """Refused here before a byte left: our bound of exchanges with that peer is in flight, and its queue is full
    or the wait for a slot outlived the deadline. Evidence of nothing about the peer (the slots may be held by
    relays other members asked of us): a prober must not count it as the peer's miss."""


@dataclass
class Answer:
    """An HTTP answer: status, headers (lower-case names) and the whole body."""

    status: int
    headers: dict[str, str]
    content: bytes
    peer: PeerIdentity | None = None  # who the connection's TLS certificate proved the listener is (agent.peer_tls)


@dataclass
class _Conn:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    idle_since: float = 0.0
    peer: PeerIdentity | None = None

    def usable(self) -> bool:
        return not (self.writer.is_closing() or self.reader.at_eof())

    def close(self) -> None:
        self.writer.transport.abort()  # no TLS close_notify round trip: the peer may be gone


class _Stale(Exception):
    """A kept connection ended before any byte of the answer (the peer closed it while idle)."""


class PeerConnections:
    """Kept-alive connections to peers' listeners, bounded per peer and in peers; ``request`` is one exchange."""

    def __init__(
        self,
        tls: ssl.SSLContext | None,
        max_body: int,
        max_idle: int = MAX_IDLE,
        max_peers: int = MAX_PEERS,
        idle_s: float = IDLE_S,
        clock: Callable[[], float] = time.monotonic,
        max_busy: int = MAX_BUSY,
        max_waiting: int = MAX_WAITING,
    ) -> None:
        small_tls_buffers()
        self.tls = tls
        self.max_body = max_body
        self.max_idle, self.max_peers, self.idle_s = max_idle, max_peers, idle_s
        self.max_busy, self.max_waiting = max_busy, max_waiting
        self._busy: dict[str, int] = {}  # exchanges in flight per peer (only peers with some)
        self._waiting: dict[str, deque[asyncio.Future[None]]] = {}
        self.clock = clock
        self._idle: OrderedDict[str, list[_Conn]] = OrderedDict()
        self._swept = clock()
        self.opened = 0  # connections opened so far (a handshake each: tests and benches read it)

    @property
    def peer_count(self) -> int:
        return len(self._idle)

    @property
    def idle_count(self) -> int:
        return sum(len(v) for v in self._idle.values())

    async def request(
        self,
        base_url: str,
        method: str,
        target: str,
        headers: Mapping[str, str],
        body: bytes,
        timeout: float,
        connect_timeout: float,
        verify_peer: Callable[[PeerIdentity | None], Awaitable[None] | None] | None = None,
    ) -> Answer:
        """One exchange with the listener at ``base_url`` (``https://host:port``); raises PeerHttpError.

        ``verify_peer``: called with the connection's proven identity before anything is written on it; it
        raises to refuse the listener (the request is then never sent), or returns what to await first (within
        the exchange's deadline: a first contact's pin write, agent.identity.Pins.pin)."""
        listener_address(base_url)  # a URL we could never connect to fails here, before it takes a slot
        head = _request_head(base_url, method, target, headers, len(body))
        deadline = self.clock() + timeout  # one deadline for the whole exchange, the retry included
        await self._acquire(base_url, timeout)
        try:
            return await self._request(base_url, head + body, deadline, connect_timeout, verify_peer)
        finally:
            self._release(base_url)

    async def _request(
        self,
        base_url: str,
        data: bytes,
        deadline: float,
        connect_timeout: float,
        verify_peer: Callable[[PeerIdentity | None], Awaitable[None] | None] | None,
    ) -> Answer:
        timeout = max(deadline - self.clock(), 0.001)
        conn = self._checkout(base_url)
        if conn is not None:
            await _verified(conn, verify_peer, deadline - self.clock())
            try:
                return await self._exchange(base_url, conn, data, timeout)
            except _Stale:
                pass  # the peer closed our kept connection: once more on a new one
        left = deadline - self.clock()
        if left <= 0:
            raise PeerHttpError(f"{base_url} timed out")
        conn = await self._connect(base_url, min(connect_timeout, left))
        await _verified(conn, verify_peer, deadline - self.clock())
        try:
            return await self._exchange(base_url, conn, data, max(deadline - self.clock(), 0.001))
        except _Stale as exc:
            raise PeerHttpError(f"{base_url} closed the connection without an answer") from exc

    async def _exchange(self, key: str, conn: _Conn, data: bytes, timeout: float) -> Answer:
        try:
            answer, keep = await aio.wait_for(self._send_and_read(conn, data), timeout)
        except BaseException:
            conn.close()
            raise
        if keep:
            self._checkin(key, conn)
        else:
            conn.close()
        answer.peer = conn.peer
        return answer

    async def _send_and_read(self, conn: _Conn, data: bytes) -> tuple[Answer, bool]:
        try:
            conn.writer.write(data)
            await conn.writer.drain()
            first = await conn.reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            if not exc.partial:
                raise _Stale from exc
            raise PeerHttpError("connection closed in the middle of an answer's head") from exc
        except (ConnectionResetError, BrokenPipeError) as exc:
            raise _Stale from exc
        except asyncio.LimitOverrunError as exc:
            raise PeerHttpError(f"an answer's head over {HEAD_LIMIT} bytes") from exc
        try:
            status, headers = _parse_head(first)
            if 100 <= status < 200:  # we never send Expect: an interim answer is not one of ours
                raise PeerHttpError(f"an interim answer (HTTP {status})")
            content = await self._read_body(conn.reader, headers, status)
        except (ValueError, asyncio.LimitOverrunError) as exc:  # a malformed number or an endless line
            raise PeerHttpError(f"malformed answer: {exc!r}") from exc
        # kept only if nothing follows the answer: bytes past it would be read as the next exchange's answer
        keep = headers.get("connection", "").lower() != "close" and not _buffered(conn.reader)
        return Answer(status, headers, content), keep

    async def _read_body(self, reader: asyncio.StreamReader, headers: dict[str, str], status: int) -> bytes:
        try:
            if "content-length" in headers:
                size = _decimal(headers["content-length"])
                if not 0 <= size <= self.max_body:
                    raise PeerHttpError(f"an answer of {size} bytes (at most {self.max_body})")
                return await reader.readexactly(size)
            if headers.get("transfer-encoding", "").lower() == "chunked":
                return await self._read_chunked(reader)
        except ValueError as exc:
            raise PeerHttpError(f"malformed answer length: {exc}") from exc
        except asyncio.IncompleteReadError as exc:
            raise PeerHttpError("connection closed in the middle of an answer") from exc
        if status in (204, 304) or 100 <= status < 200:
            return b""
        raise PeerHttpError("an answer with neither content-length nor chunked encoding")

    async def _read_chunked(self, reader: asyncio.StreamReader) -> bytes:
        """A chunked body under our listener's own rules (agent/http_sliced.py): ``max_body`` decoded bytes, at
        most ``too_many_chunks`` chunks, ``MAX_HEADER_FIELDS`` trailer lines and ``MAX_FRAMING`` bytes of framing
        (size lines, their CRLFs, the trailer). Each chunk is a readuntil and two readexactly that never yield
        when the bytes are buffered: 262,144 1-byte chunks (1.5 MB, within max_body) were 1.2-1.6 s of loop CPU
        in stalls of up to 830 ms that the exchange's deadline could not cut (review26b F1); now at most 1,024
        chunks in 256 KiB (~11 ms measured, with 255 KiB front-loaded to buy 1,022 1-byte chunks and a trailer of
        100 lines). Our listener never chunks an answer (every peer route sets a content-length); a proxy might."""
        out = bytearray()
        chunks = framing = 0
        while True:
            line = await reader.readuntil(b"\r\n")
            framing += len(line) + 2  # the CRLF after the chunk's data (or the blank line ending the trailer)
            size = _hex(line.split(b";", 1)[0].strip())
            if size < 0 or len(out) + size > self.max_body:
                raise PeerHttpError(f"a chunked answer over {self.max_body} bytes")
            if framing > MAX_FRAMING:
                raise PeerHttpError(f"a chunked answer's framing over {MAX_FRAMING} bytes")
            if size == 0:
                break
            chunks += 1
            if too_many_chunks(chunks, len(out) + size):
                raise PeerHttpError(f"a chunked answer of {chunks} chunks for {len(out) + size} bytes")
            out += await reader.readexactly(size)
            if await reader.readexactly(2) != b"\r\n":
                raise PeerHttpError("malformed chunk")
        for _ in range(MAX_HEADER_FIELDS + 1):  # the trailer's lines, if any, then the blank line that ends it
            line = await reader.readuntil(b"\r\n")
            if line == b"\r\n":
                return bytes(out)
            framing += len(line)
            if framing > MAX_FRAMING:
                raise PeerHttpError(f"a chunked answer's framing over {MAX_FRAMING} bytes")
        raise PeerHttpError(f"a chunked answer's trailer of more than {MAX_HEADER_FIELDS} lines")

    # -- exchanges in flight per peer --------------------------------------------------------------------
    async def _acquire(self, key: str, timeout: float) -> None:
        """A slot for one exchange with ``key``: at once under ``max_busy``, else the next one freed, in order."""
        queue = self._waiting.get(key)
        if self._busy.get(key, 0) < self.max_busy and not queue:
            self._busy[key] = self._busy.get(key, 0) + 1
            return
        if len(queue or ()) >= self.max_waiting:
            raise PeerBusyError(f"{key}: {self.max_busy} exchanges in flight and {len(queue or ())} waiting")
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(key, deque()).append(waiter)
        try:
            await aio.wait_for(waiter, timeout)  # _release hands its slot over (the count stays)
        except BaseException as exc:  # timed out or cancelled
            if waiter.done() and not waiter.cancelled():
                self._release(key)  # a slot handed over just as we gave up: pass it on
            elif waiter in self._waiting.get(key, ()):
                self._waiting[key].remove(waiter)
            if isinstance(exc, asyncio.TimeoutError):
                raise PeerBusyError(f"{key} timed out: {self.max_busy} exchanges with it in flight") from exc
            raise
        finally:
            if key in self._waiting and not self._waiting[key]:
                del self._waiting[key]

    def _release(self, key: str) -> None:
        queue = self._waiting.get(key)
        while queue:
            waiter = queue.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot goes to the longest waiting exchange
                return
        left = self._busy.get(key, 1) - 1
        if left > 0:
            self._busy[key] = left
        else:
            self._busy.pop(key, None)

    @property
    def busy_count(self) -> int:
        """Exchanges in flight now, all peers together."""
        return sum(self._busy.values())

    # -- the kept connections ---------------------------------------------------------------------------
    async def _connect(self, base_url: str, timeout: float) -> _Conn:
        scheme, host, port = listener_address(base_url)
        tls = _unverified() if scheme == "https" and self.tls is None else self.tls
        try:
            reader, writer = await aio.wait_for(
                asyncio.open_connection(host, port, ssl=tls if scheme == "https" else None, limit=HEAD_LIMIT,
                                        ssl_handshake_timeout=timeout if scheme == "https" else None),
                timeout,
            )  # fmt: skip
        except (OSError, ssl.SSLError, asyncio.TimeoutError) as exc:  # on 3.10 asyncio's is not an OSError
            raise PeerHttpError(f"cannot connect to {base_url}: {exc!r}") from exc
        self.opened += 1
        return _Conn(reader, writer, peer=peer_identity(writer) if self.tls is not None else None)

    def _checkout(self, key: str) -> _Conn | None:
        now = self.clock()
        if now - self._swept >= SWEEP_S:
            self._sweep(now)
        conns = self._idle.get(key)
        while conns:
            conn = conns.pop()
            if conn.usable() and now - conn.idle_since < self.idle_s:
                return conn
            conn.close()
        return None

    def _checkin(self, key: str, conn: _Conn) -> None:
        conns = self._idle.get(key)
        if conns is None:
            conns = self._idle[key] = []
            while len(self._idle) > self.max_peers:
                _, old = self._idle.popitem(last=False)
                for c in old:
                    c.close()
        self._idle.move_to_end(key)
        if len(conns) >= self.max_idle:
            conn.close()
            return
        conn.idle_since = self.clock()
        conns.append(conn)

    def _sweep(self, now: float) -> None:
        """Close idle connections unused for ``idle_s`` (each holds TLS buffers) and forget peers left with none."""
        self._swept = now
        for key in list(self._idle):
            keep = []
            for conn in self._idle[key]:
                if conn.usable() and now - conn.idle_since < self.idle_s:
                    keep.append(conn)
                else:
                    conn.close()
            if keep:
                self._idle[key] = keep
            else:
                del self._idle[key]

    def close(self) -> None:
        """Close every kept connection."""
        for conns in self._idle.values():
            for conn in conns:
                conn.close()
        self._idle.clear()


async def _verified(
    conn: _Conn, verify_peer: Callable[[PeerIdentity | None], Awaitable[None] | None] | None, timeout: float
) -> None:
    """Let ``verify_peer`` refuse the connection's listener before anything is written (then it is closed); what
    it gives to await (a pin write) is refused as timed out past ``timeout``, what is left of the deadline."""
    if verify_peer is None:
        return
    try:
        pending = verify_peer(conn.peer)
        if pending is not None:  # only a first contact: a known pin is decided at once, with no task or timer
            await aio.wait_for(pending, max(timeout, 0.001))
    except BaseException:
        conn.close()
        raise


def listener_address(base_url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of a listener's base URL; PeerHttpError when it is not ``http(s)://HOST:PORT``.

    urlsplit raises ValueError for a port it cannot read (``https://fe80::1:7001``: no brackets) or out of range,
    and for an unclosed '[': before, that escaped every caller's ``except PeerHttpError`` (review13a F5)."""
    try:
        parts = urlsplit(base_url)
        host, port = parts.hostname, parts.port
    except ValueError as exc:
        raise PeerHttpError(f"not a peer listener URL: {base_url[:100]!r} ({exc})") from exc
    if parts.scheme not in ("http", "https") or not host or port is None:
        raise PeerHttpError(f"not a peer listener URL: {base_url[:100]!r}")
    return parts.scheme, host, port


def _request_head(base_url: str, method: str, target: str, headers: Mapping[str, str], length: int) -> bytes:
    host = base_url.split("//", 1)[-1].rstrip("/")
    lines = [f"{method} {target} HTTP/1.1", f"host: {host}", *(f"{k}: {v}" for k, v in headers.items())]
    if length or method in ("POST", "PUT"):
        lines.append(f"content-length: {length}")
    if any(c in line for line in lines for c in "\r\n\0"):
        raise PeerHttpError("a line break or NUL in the request line or a header")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _parse_head(data: bytes) -> tuple[int, dict[str, str]]:
    """(status, headers with lower-case names; repeated ones joined by ', ') of an answer's head."""
    lines = data.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or parts[0] not in ("HTTP/1.1", "HTTP/1.0") or not _DIGITS.fullmatch(parts[1]):
        raise PeerHttpError(f"not an HTTP/1.1 status line: {lines[0][:60]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise PeerHttpError(f"malformed header line {line[:60]!r}")
        name, value = name.lower(), value.strip()
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    keep_10 = parts[0] == "HTTP/1.0" and headers.get("connection", "").lower() != "keep-alive"
    if keep_10:
        headers["connection"] = "close"
    return int(parts[1]), headers


_DIGITS = re.compile(r"[0-9]{3}")  # a status code: three ASCII digits (str.isdigit also takes '\xb2')


def _decimal(value: str) -> int:
    """A content length: ASCII digits only (int() also reads '5_0', ' 5' or '\u0665')."""
    if not value.isascii() or not value.isdigit() or len(value) > 19:
        raise PeerHttpError(f"malformed content-length {value[:40]!r}")
    return int(value)


def _hex(value: bytes) -> int:
    """A chunk size: ASCII hex digits only (int(x, 16) also reads '0x10' or '1_0')."""
    if not value or len(value) > 16 or any(c not in b"0123456789abcdefABCDEF" for c in value):
        raise PeerHttpError(f"malformed chunk size {value[:40]!r}")
    return int(value, 16)


def _buffered(reader: asyncio.StreamReader) -> bool:
    """Whether bytes past the answer already wait in ``reader`` (asyncio has no public peek)."""
    return bool(getattr(reader, "_buffer", b""))


_UNVERIFIED: ssl.SSLContext | None = None


def _unverified() -> ssl.SSLContext:
    """TLS without checking the peer (a node without a data dir has no cluster CA files: tests only)."""
    global _UNVERIFIED
    if _UNVERIFIED is None:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        _UNVERIFIED = ctx
    return _UNVERIFIED
