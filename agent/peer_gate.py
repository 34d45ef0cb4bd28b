"""What a stranger can hold on the peer port before TLS says who it is: a few connections, for a few seconds.

asyncio hands a TLS connection to the HTTP protocol only once the handshake is done, and gives the
handshake 60 s; uvicorn's caps (``limit_concurrency``) count only connections past it. So a host with no
card could open tens of thousands of TCP connections to the peer port, send nothing, and hold each for a
minute: the agent's file descriptors run out and its client API stops answering too (measured: 400 idle
connections against an agent limited to 256 descriptors). ``gate_tls`` takes TLS out of the listener
and does it per connection instead: at most ``PENDING_PER_ADDRESS`` handshakes in progress per source
address and ``PENDING_TOTAL`` in all (a stranger with a handful of addresses cannot fill the descriptors
either) and ``HANDSHAKE_S`` to finish one (then the connection is closed). Past the per-address cap a
newcomer is closed at once; at the total, a newcomer from an address holding fewer handshakes than the
busiest address takes that address's oldest slot (it is aborted): two addresses holding 64 idle connections
each, renewed before the deadline, used to lock every other client out (review 11a: 0 of 60 HTTPS requests).
a finished handshake (mutual TLS: a certificate of this cluster) hands the TLS transport to uvicorn's
own protocol, and the handshake slot is free again. Used by the peer listener (agent/peer_api.py) and the
optional HTTPS client listener (agent/client_auth.py, with a longer deadline for phones).
"""

from __future__ import annotations

import asyncio
import asyncio.sslproto as sslproto
import contextlib
import itertools
import logging
import ssl
import sys
from collections.abc import Callable
from typing import Any

import uvicorn

log = logging.getLogger(__name__)

HANDSHAKE_S = 5.0  # an Ed25519 mutual-TLS handshake on a LAN takes milliseconds
PENDING_PER_ADDRESS = 64  # handshakes in progress from one address (agents on one host share it)
PENDING_TOTAL = 128  # handshakes in progress from every address together
# Decrypted bytes held between the handshake's end and the handover (past them: not a peer speaking HTTP). Python
# 3.10's TLS (the asyncio.sslproto before 3.11's rewrite) decrypts a whole socket read, up to 256 KiB, in the call
# that completes the handshake and hands it all over at once: a client writing its request right after its Finished
# message (agent.peer_http does) was past 64 KiB there before the handover could run, and was cut off.
EARLY_BYTES = 1 << 16 if sys.version_info >= (3, 11) else (1 << 16) + 256 * 1024
# asyncio gives every TLS connection a read buffer of 256 KiB, zero-filled (resident): measured 330 KiB per kept
# connection (both ends) against 90 KiB with 32 KiB, and an agent keeps connections to and from every member.
# TLS records are at most 16 KiB, so a smaller buffer only means more reads for a large answer.
TLS_READ_BUFFER = 32 * 1024


def small_tls_buffers() -> None:
    """Make asyncio's TLS connections (made after this call, in this process) read through a TLS_READ_BUFFER."""
    sslproto.SSLProtocol.max_size = TLS_READ_BUFFER


COALESCE_WRITES = True  # the peer listener's writes within one loop iteration go out as one (bench: off to compare)
# A TLS connection the server closes sends close_notify and waits for the client's (asyncio: up to 30 s on 3.11, with
# no bound on 3.10), and uvicorn counts it open until then: a client that kept its socket open after a "Connection:
# close" answer (httpx's pool does) held the HTTPS listener's stop for the whole grace. Past this it is aborted.
CLOSE_LINGER_S = 1.0
# A closed connection whose last answer is still being sent is looked at again every CLOSE_LINGER_S, up to this long
# after the close: a reader that stops reading is then cut off as any other (outside a stop, nothing else would).
CLOSE_LINGER_MAX_S = 30.0


class CoalescingTransport:
    """A TLS transport whose writes within one event-loop iteration leave as one write: uvicorn writes an answer's
    head and body separately, which was two TLS records and two socket sends per peer answer (profiled: the
    largest single cost of answering a SWIM message). Its ``close`` aborts a connection still open CLOSE_LINGER_S
    later (up to CLOSE_LINGER_MAX_S while its last answer is being sent). Everything else is the wrapped transport's."""

    def __init__(self, transport: asyncio.Transport, coalesce: bool = True) -> None:
        self._transport = transport
        self._coalesce = coalesce
        self._pending: list[bytes] = []
        self._loop = asyncio.get_running_loop()
        self._closed_at: float | None = None  # the loop's time at the first close
        self._socket_level: asyncio.Transport | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self._coalesce:
            self._transport.write(data)
            return
        if not self._pending:
            self._loop.call_soon(self._flush)
        self._pending.append(bytes(data))

    def writelines(self, lines: Any) -> None:
        for data in lines:
            self.write(data)

    def _flush(self) -> None:
        if self._pending:
            data = b"".join(self._pending)
            self._pending.clear()
            if not self._transport.is_closing():
                self._transport.write(data)

    def close(self) -> None:
        self._flush()
        first = self._closed_at is None
        if first:  # the socket's transport under asyncio's TLS one (3.10-3.13), kept: a second close forgets it
            self._closed_at = self._loop.time()
            self._socket_level = getattr(getattr(self._transport, "_ssl_protocol", None), "_transport", None)
        self._transport.close()
        if first:
            self._loop.call_later(CLOSE_LINGER_S, self._linger)

    def _tls_buffered(self) -> int | None:
        """The TLS transport's unsent bytes; None where it cannot say (asyncio's raises AttributeError once the
        connection is lost on 3.10, and once closed twice on 3.11-3.13: it drops its protocol)."""
        try:
            return self._transport.get_write_buffer_size()
        except AttributeError:
            return None

    def _linger(self) -> None:
        """Abort the closed connection, unless it is gone (or going: closing with nothing left to send) or its
        last answer is still being sent (a slow reader): then look again a CLOSE_LINGER_S later, up to
        CLOSE_LINGER_MAX_S after the close. An abort sends an RST where the client had not yet read everything
        the kernel holds for it; only a reader that stopped reading for the whole wait is in that case."""
        sock = self._socket_level
        if sock is not None and sock.is_closing() and not sock.get_write_buffer_size():
            return
        sending = self._tls_buffered() or (sock is not None and sock.get_write_buffer_size())
        assert self._closed_at is not None
        if sending and self._loop.time() - self._closed_at < CLOSE_LINGER_MAX_S:
            self._loop.call_later(CLOSE_LINGER_S, self._linger)
            return
        self._transport.abort()  # a no-op where asyncio's TLS transport has dropped its protocol: then the socket's
        if sock is not None:
            sock.abort()

    def write_eof(self) -> None:
        self._flush()
        self._transport.write_eof()

    def abort(self) -> None:
        self._pending.clear()
        self._transport.abort()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(map(len, self._pending))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class Handshakes:
    """Handshakes in progress per source address and in all (bounded by the caps above); at the total, the busiest
    address gives up its oldest handshake to a newcomer from an address holding fewer."""

    def __init__(self, per_address: int = PENDING_PER_ADDRESS, total: int = PENDING_TOTAL) -> None:
        self.per_address, self.total = per_address, total
        self.pending: dict[str, dict[int, Callable[[], None]]] = {}  # host -> {ticket: abort}, oldest first
        self.in_progress = 0
        self._tickets = itertools.count()

    def admit(self, host: str, abort: Callable[[], None]) -> int | None:
        """A ticket for a new handshake from ``host`` (``abort`` ends it if it is evicted later), or None: ``host``
        is at its cap, or the total is reached and no address holds more handshakes than ``host``. At the total,
        the busiest address's oldest handshake is forgotten and its ``abort`` called, so the count never passes it."""
        mine = self.pending.get(host, {})
        if len(mine) >= self.per_address:
            return None
        if self.in_progress >= self.total:
            busiest = max(self.pending, key=lambda h: len(self.pending[h]))
            if len(self.pending[busiest]) <= len(mine):
                return None
            oldest = next(iter(self.pending[busiest]))
            evicted = self.pending[busiest][oldest]
            self.done(busiest, oldest)
            evicted()
        ticket = next(self._tickets)
        self.pending.setdefault(host, {})[ticket] = abort
        self.in_progress += 1
        return ticket

    def done(self, host: str, ticket: int) -> None:
        """The handshake ``ticket`` from ``host`` ended (either way; nothing if it was evicted already)."""
        held = self.pending.get(host)
        if held is None or held.pop(ticket, None) is None:
            return
        self.in_progress -= 1
        if not held:
            del self.pending[host]

    def held(self, host: str) -> int:
        """Handshakes in progress from ``host``."""
        return len(self.pending.get(host, {}))


def gated_protocol(
    inner: type[asyncio.Protocol],
    context: ssl.SSLContext,
    handshakes: Handshakes,
    handshake_s: float = HANDSHAKE_S,
    connection_state: Callable[[Any], dict[str, Any]] | None = None,
    stopping: Callable[[], bool] | None = None,
) -> type[Any]:
    """A protocol class for uvicorn that does the TLS handshake itself, under the caps, then hands over.

    ``connection_state(tls_transport)``: entries added to the ASGI scope's "state" of every request on that
    connection (the peer listener: the identity the client's certificate proved, agent.peer_tls).
    ``stopping()``: true once the server's stop began. uvicorn asks the connections it holds to close once, when
    its shutdown starts, and a connection joins them only at the handover: one whose handshake ends after that
    would be served through the whole stop and hold it for the graceful timeout (review20e M1). So a handshake
    that ends while stopping is not handed over: the connection is closed."""

    class TlsGate(asyncio.Protocol):
        pending = handshakes  # the caps' state, for a look from outside (tests)

        def __init__(self, **kwargs: Any) -> None:
            self._kwargs = kwargs
            self._inner: asyncio.Protocol | None = None
            self._task: asyncio.Task[None] | None = None
            self._early: list[bytes] = []
            self._overflow = False

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            assert isinstance(transport, asyncio.Transport)
            peer = transport.get_extra_info("peername")
            host = str(peer[0]) if peer else "?"
            ticket = handshakes.admit(host, transport.abort)
            if ticket is None:
                log.debug("closing a connection from %s: handshake caps reached", host)
                transport.abort()
                return
            self._task = asyncio.get_running_loop().create_task(self._handshake(transport, host, ticket))  # held

        async def _handshake(self, transport: Any, host: str, ticket: int) -> None:
            loop = asyncio.get_running_loop()
            try:
                if transport.is_closing():  # evicted before this task ran
                    return
                tls = await loop.start_tls(
                    transport, self, context, server_side=True, ssl_handshake_timeout=handshake_s
                )
            except (OSError, ssl.SSLError, asyncio.TimeoutError, ConnectionError, RuntimeError) as exc:
                log.debug("no TLS session with %s: %r", host, exc)
                with contextlib.suppress(Exception):
                    transport.abort()
                return
            finally:
                handshakes.done(host, ticket)
            if tls is None or tls.is_closing():
                return
            if self._overflow:  # more than EARLY_BYTES before the handover: not a peer speaking HTTP
                tls.abort()
                return
            if stopping is not None and stopping():  # the stop began: refused, as a new connection is
                log.debug("closing a connection from %s: its handshake ended after the stop began", host)
                tls.abort()
                return
            kwargs = self._kwargs
            if connection_state is not None:
                kwargs = {**kwargs, "app_state": {**kwargs.get("app_state", {}), **connection_state(tls)}}
            self._inner = inner(**kwargs)
            tls.set_protocol(self._inner)
            self._inner.connection_made(CoalescingTransport(tls, COALESCE_WRITES))  # type: ignore[arg-type]
            for data in self._early:
                self._inner.data_received(data)
            self._early.clear()

        def data_received(self, data: bytes) -> None:
            if self._inner is not None:
                self._inner.data_received(data)
            else:  # decrypted bytes that arrived before the handover (bounded)
                self._overflow = self._overflow or sum(map(len, self._early)) + len(data) > EARLY_BYTES
                if not self._overflow:
                    self._early.append(data)

        def eof_received(self) -> bool | None:
            return self._inner.eof_received() if self._inner is not None else None

        def connection_lost(self, exc: Exception | None) -> None:
            if self._inner is not None:
                self._inner.connection_lost(exc)

    return TlsGate


def gate_tls(
    config: uvicorn.Config,
    handshake_s: float = HANDSHAKE_S,
    connection_state: Callable[[Any], dict[str, Any]] | None = None,
    stopping: Callable[[], bool] | None = None,
) -> uvicorn.Config:
    """Load ``config`` and move its listener's TLS into ``gated_protocol`` (no-op without TLS)."""
    small_tls_buffers()
    if not config.loaded:
        config.load()
    if config.ssl is not None:
        context, config.ssl = config.ssl, None
        if connection_state is not None:  # the connection's certificate authenticates its messages: TLS 1.3 only
            context.minimum_version = ssl.TLSVersion.TLSv1_3  # (no renegotiation: no second certificate later)
        config.http_protocol_class = gated_protocol(config.http_protocol_class, context, Handshakes(), handshake_s,
                                                    connection_state, stopping)  # fmt: skip
    return config
