"""A whole-call deadline under httpx: every socket wait of a call is bounded by what is left of it.

httpx's ``timeout`` is per read: an answer (its head included) that trickles one byte within each read's timeout
holds a call for as long as the sender likes (review14a F4: 64 members trickling their /health held
``endpoint()`` without end). A call sets ``DEADLINE`` (a ``time.monotonic()`` instant; a context variable, so
each thread and each asyncio task has its own) and the client's transport runs on a network backend whose
streams clamp each connect, read and write timeout to the time left, and fail at once (httpx's
``ConnectTimeout`` / ``ReadTimeout`` / ``WriteTimeout``) once it has passed. A timeout on each wait, not a
cancellation from outside (Python 3.10 / 3.11's ``asyncio.wait_for`` can lose a cancellation that arrives as
its inner await completes; ``asyncio.timeout`` does not exist on 3.10, JetPack 6's Python).

``deadline_transport()`` / ``async_deadline_transport()`` build httpx's own transport over that backend (its
default pool limits, certificates from ``SSL_CERT_FILE`` where set, else certifi's); the clients use them unless
handed a ``transport=``, whose own timeouts then bound the head (the client still checks the deadline between
the chunks of a streamed answer). A transport built here ignores ``HTTP(S)_PROXY``: agents are on the LAN, and
an RTT measured through a proxy would be the proxy's.
"""

from __future__ import annotations

import ssl
import time
import typing
from contextvars import ContextVar

import httpcore
import httpx

DEADLINE: ContextVar[float | None] = ContextVar("peerserve_call_deadline", default=None)

Timeout = type[httpcore.TimeoutException]


def clamp(timeout: float | None, error: Timeout, now: float | None = None) -> float | None:
    """``timeout`` (None: no limit) shortened to what is left of the current call's deadline; ``error`` raised
    when nothing is left."""
    end = DEADLINE.get()
    if end is None:
        return timeout
    left = end - (time.monotonic() if now is None else now)
    if left <= 0:
        raise error("the call's deadline passed")
    return left if timeout is None else min(timeout, left)


class DeadlineStream(httpcore.NetworkStream):
    def __init__(self, stream: httpcore.NetworkStream) -> None:
        self.stream = stream

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self.stream.read(max_bytes, clamp(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self.stream.write(buffer, clamp(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self.stream.close()

    def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        return DeadlineStream(
            self.stream.start_tls(ssl_context, server_hostname, clamp(timeout, httpcore.ConnectTimeout))
        )

    def get_extra_info(self, info: str) -> typing.Any:
        return self.stream.get_extra_info(info)


class DeadlineBackend(httpcore.NetworkBackend):
    def __init__(self, backend: httpcore.NetworkBackend | None = None) -> None:
        self.backend = backend or httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        left = clamp(timeout, httpcore.ConnectTimeout)
        return DeadlineStream(self.backend.connect_tcp(host, port, left, local_address, socket_options))

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        left = clamp(timeout, httpcore.ConnectTimeout)
        return DeadlineStream(self.backend.connect_unix_socket(path, left, socket_options))

    def sleep(self, seconds: float) -> None:
        self.backend.sleep(seconds)


class AsyncDeadlineStream(httpcore.AsyncNetworkStream):
    def __init__(self, stream: httpcore.AsyncNetworkStream) -> None:
        self.stream = stream

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return await self.stream.read(max_bytes, clamp(timeout, httpcore.ReadTimeout))

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        await self.stream.write(buffer, clamp(timeout, httpcore.WriteTimeout))

    async def aclose(self) -> None:
        await self.stream.aclose()

    async def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.AsyncNetworkStream:
        left = clamp(timeout, httpcore.ConnectTimeout)
        return AsyncDeadlineStream(await self.stream.start_tls(ssl_context, server_hostname, left))

    def get_extra_info(self, info: str) -> typing.Any:
        return self.stream.get_extra_info(info)


class AsyncDeadlineBackend(httpcore.AsyncNetworkBackend):
    def __init__(self, backend: httpcore.AsyncNetworkBackend | None = None) -> None:
        self.backend = backend or httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        left = clamp(timeout, httpcore.ConnectTimeout)
        return AsyncDeadlineStream(await self.backend.connect_tcp(host, port, left, local_address, socket_options))

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        left = clamp(timeout, httpcore.ConnectTimeout)
        return AsyncDeadlineStream(await self.backend.connect_unix_socket(path, left, socket_options))

    async def sleep(self, seconds: float) -> None:
        await self.backend.sleep(seconds)


def _limits() -> dict[str, typing.Any]:
    limits = httpx.Limits(max_connections=100, max_keepalive_connections=20, keepalive_expiry=5.0)  # httpx's own
    return {
        "ssl_context": httpx.create_ssl_context(),
        "max_connections": limits.max_connections,
        "max_keepalive_connections": limits.max_keepalive_connections,
        "keepalive_expiry": limits.keepalive_expiry,
    }


def deadline_transport() -> httpx.HTTPTransport:
    """httpx's transport, its pool on ``DeadlineBackend`` (httpx takes no backend: its pool is replaced)."""
    transport = httpx.HTTPTransport()
    transport._pool = httpcore.ConnectionPool(network_backend=DeadlineBackend(), **_limits())
    return transport


def async_deadline_transport() -> httpx.AsyncHTTPTransport:
    """httpx's async transport, its pool on ``AsyncDeadlineBackend``."""
    transport = httpx.AsyncHTTPTransport()
    transport._pool = httpcore.AsyncConnectionPool(network_backend=AsyncDeadlineBackend(), **_limits())
    return transport
