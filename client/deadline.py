"""A whole-call deadline under httpx: every socket wait of a call is bounded by what is left of it.

httpx's ``timeout`` is per read: an answer (its head included) that trickles one byte within each read's timeout
holds a call for as long as the sender likes (review14a F4: 64 members trickling their /health held
``endpoint()`` without end). A call sets ``DEADLINE`` (a ``time.monotonic()`` instant; a context variable, so
each thread and each asyncio task has its own) and the client's transport runs on a network backend whose
streams clamp each connect, read and write timeout to the time left, and fail at once (httpx's
``ConnectTimeout`` / ``ReadTimeout`` / ``WriteTimeout``) once it has passed. A timeout on each wait, not a
cancellation from outside (Python 3.10 / 3.11's ``asyncio.wait_for`` can lose a cancellation that arrives as
its inner await completes; ``asyncio.timeout`` does not exist on 3.10, JetPack 6's Python).

A member given by hostname is looked up under the deadline too (``Lookups``): httpcore's sync backend connects with
``socket.create_connection``, whose ``getaddrinfo`` has no timeout at all (a resolver that never answers held a
call with a 1 s deadline for good), and its async backend runs ``getaddrinfo`` on the event loop's default
executor, where the call returns at its deadline but ``asyncio.run`` then waits at exit for the stuck thread.
``getaddrinfo`` cannot be interrupted, so it runs in a daemon thread of its own that the call waits for at most
what is left of its deadline (a lookup that hangs is left to the OS, never waited for again); the addresses it
gives are tried in order, as ``create_connection`` does.

``deadline_transport()`` / ``async_deadline_transport()`` build httpx's own transport over that backend (its
default pool limits, certificates from ``SSL_CERT_FILE`` where set, else certifi's); the clients use them unless
handed a ``transport=``, whose own timeouts then bound the head (the client still checks the deadline between
the chunks of a streamed answer). A transport built here ignores ``HTTP(S)_PROXY``: agents are on the LAN, and
an RTT measured through a proxy would be the proxy's.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ipaddress
import socket
import ssl
import threading
import time
import typing
from collections.abc import Callable
from contextvars import ContextVar

import httpcore
import httpx

DEADLINE: ContextVar[float | None] = ContextVar("peerserve_call_deadline", default=None)

Timeout = type[httpcore.TimeoutException]
MAX_LOOKUPS = 16  # name lookups in flight at once, process-wide (a daemon thread each; one that hangs holds its slot)
KEPT_FOR_GIVEN = 4  # ... of which only names the user gave may take the last few (``Lookups.give``)
MAX_GIVEN = 64  # names remembered as the user's (oldest forgotten first: each client adds its own)
Addresses = list[str]


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


class _Lookup:
    """One name's lookup: its outcome, and the calls waiting for it (each a wake-up; a call that gives up takes its
    own out, so a lookup that never ends holds none of them: review15c F3)."""

    __slots__ = ("future", "started", "waiters")

    def __init__(self) -> None:
        self.future: concurrent.futures.Future[Addresses] = concurrent.futures.Future()
        self.future.set_running_or_notify_cancel()  # (nobody's cancel can take it from the others)
        self.waiters: list[Callable[[], None]] = []
        self.started = False  # (its thread: it has a slot)


class Lookups:
    """Name lookups (``getaddrinfo``) that a call waits for at most what is left of its deadline.

    Each runs in a daemon thread of its own: ``getaddrinfo`` cannot be interrupted, and a resolver that never
    answers would hold the thread (and, on the default executor, ``asyncio.run``'s exit) for good. A lookup is
    of a host (port 0; the caller attaches its port), shared by every call for that host whatever its port
    (review15c F2: shared by (host, port), one hanging name listed under 16 ports took every slot). At most
    ``limit`` run at once, so names that hang cannot pile up threads without bound; past it a call waits, within
    its deadline, for a slot (first come first served) instead of failing at once. A waiting call that gives up
    takes its wake-up out (review15c F3: a done-callback left on the shared future per timed-out call, ~0.7 KB
    each, without bound), and a name no call waits for any more is not looked up. The last ``kept`` slots are
    only for names the user gave (``give``): names learned from /cluster answers (4 an answer, but a member that
    changes its names each refresh adds 4 hung lookups each time) filled all 16, and the user's own agent then
    waited its whole deadline for a slot (review15d F6). ``resolve`` is ``socket.getaddrinfo``."""

    def __init__(
        self,
        limit: int = MAX_LOOKUPS,
        resolve: Callable[..., typing.Any] = socket.getaddrinfo,
        kept: int = KEPT_FOR_GIVEN,
    ) -> None:
        if not 0 <= kept < limit:
            raise ValueError("kept is at least 0 and below limit")
        self.limit, self.kept = limit, kept
        self.resolve = resolve
        self._lock = threading.Lock()
        self._running: dict[str, _Lookup] = {}
        self._queued: dict[str, _Lookup] = {}  # waiting for a slot, in order of arrival
        self._given: dict[str, None] = {}  # the user's names, oldest first (at most MAX_GIVEN)

    def give(self, hosts: typing.Iterable[str]) -> None:
        """Remember ``hosts`` as names the user gave (its agents): they may take the slots kept for them."""
        with self._lock:
            for host in hosts:
                if host and not is_address(host):
                    self._given.pop(host, None)
                    self._given[host] = None
                    while len(self._given) > MAX_GIVEN:
                        del self._given[next(iter(self._given))]
            self._start_queued()

    def given(self) -> int:
        """Names remembered as the user's."""
        return len(self._given)

    def __len__(self) -> int:
        """Lookups running (a hung one included)."""
        return len(self._running)

    def waiting(self) -> tuple[int, int]:
        """(names waiting for a slot, calls waiting for a lookup): both held only by calls still waiting."""
        with self._lock:
            lookups = [*self._running.values(), *self._queued.values()]
            return len(self._queued), sum(len(lookup.waiters) for lookup in lookups)

    def _join(self, host: str, wake: Callable[[], None]) -> _Lookup:
        """``host``'s lookup, running or queued for a slot, with ``wake`` called once it has an outcome."""
        with self._lock:
            lookup = self._running.get(host) or self._queued.get(host)
            if lookup is None:
                lookup = self._queued[host] = _Lookup()
                self._start_queued()
            lookup.waiters.append(wake)
            return lookup

    def _leave(self, host: str, lookup: _Lookup, wake: Callable[[], None]) -> None:
        """A call stops waiting for ``lookup`` (its deadline): its wake-up taken out; a queued lookup no call waits
        for any more is dropped."""
        with self._lock:
            with contextlib.suppress(ValueError):  # (already taken by _run)
                lookup.waiters.remove(wake)
            if not lookup.waiters and self._queued.get(host) is lookup:
                del self._queued[host]

    def _start_queued(self) -> None:
        """(under the lock) Start queued lookups, oldest first, while there are slots: a name not given only while
        more than ``kept`` are free. O(queued) a call: each queued name is held by a call still waiting."""
        while self._queued and len(self._running) < self.limit:
            others = len(self._running) < self.limit - self.kept
            found = next((h for h in self._queued if others or h in self._given), None)
            if found is None:
                return
            host = found
            lookup = self._running[host] = self._queued.pop(host)
            lookup.started = True
            threading.Thread(target=self._run, args=(host, lookup), name=f"lookup {host}", daemon=True).start()

    def _run(self, host: str, lookup: _Lookup) -> None:
        try:
            infos = self.resolve(host, 0, type=socket.SOCK_STREAM)
            found: Addresses | Exception = list(dict.fromkeys(str(info[4][0]) for info in infos))
        except Exception as exc:  # (a lookup's failure is the call's: gaierror, UnicodeError)
            found = exc
        if isinstance(found, Exception):
            lookup.future.set_exception(found)
        else:
            lookup.future.set_result(found)
        with self._lock:  # no longer running once its waiters hear of it; its slot to the next queued
            self._running.pop(host, None)
            waiters, lookup.waiters = lookup.waiters, []
            self._start_queued()
        for wake in waiters:
            wake()

    def _outcome(self, host: str, lookup: _Lookup) -> Addresses:
        if not lookup.future.done():
            if not lookup.started:
                raise httpcore.ConnectTimeout(
                    f"no slot to look {host} up within the call's deadline ({len(self._running)} name lookups in"
                    f" flight; the last {self.kept} of {self.limit} slots only for the agents you named)"
                )
            raise httpcore.ConnectTimeout(f"no address for {host} within the call's deadline")
        try:
            return _looked_up(host, lookup.future.result())
        except (OSError, UnicodeError) as exc:  # (as httpcore's backends map them: gaierror is an OSError)
            raise httpcore.ConnectError(f"{host}: {exc}") from exc

    def addresses(self, host: str, port: int, timeout: float | None) -> Addresses:
        """``host``'s addresses within ``timeout`` (None: no limit; an IP address as it is). ``port`` is the
        caller's: the lookup is of the host alone."""
        if is_address(host):
            return [host]
        woken = threading.Event()
        lookup = self._join(host, woken.set)
        if not woken.wait(timeout):
            self._leave(host, lookup, woken.set)
        return self._outcome(host, lookup)

    async def async_addresses(self, host: str, port: int, timeout: float | None) -> Addresses:
        """``addresses`` for asyncio code: waits on the loop, its thread never the loop's executor's."""
        if is_address(host):
            return [host]
        loop = asyncio.get_running_loop()
        done = loop.create_future()

        def settle() -> None:
            if not done.done():
                done.set_result(None)

        def wake() -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody waits
                loop.call_soon_threadsafe(settle)

        lookup = self._join(host, wake)
        try:
            await asyncio.wait({done}, timeout=timeout)  # (a timeout on the wait; nothing cancelled from outside)
        finally:
            if not done.done():
                done.cancel()
                self._leave(host, lookup, wake)
        return self._outcome(host, lookup)


def is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _looked_up(host: str, addresses: Addresses) -> Addresses:
    if not addresses:
        raise httpcore.ConnectError(f"no address for {host}")
    return addresses


LOOKUPS = Lookups()  # the process's: every client's transports share the bound


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
    def __init__(self, backend: httpcore.NetworkBackend | None = None, lookups: Lookups | None = None) -> None:
        self.backend = backend or httpcore.SyncBackend()
        self.lookups = LOOKUPS if lookups is None else lookups

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        addresses = self.lookups.addresses(host, port, clamp(timeout, httpcore.ConnectTimeout))
        failed: Exception | None = None
        for address in addresses:  # in getaddrinfo's order, as socket.create_connection tries them
            left = clamp(timeout, httpcore.ConnectTimeout)
            try:
                return DeadlineStream(self.backend.connect_tcp(address, port, left, local_address, socket_options))
            except httpcore.ConnectError as exc:
                failed = exc
        assert failed is not None
        raise failed

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
    def __init__(self, backend: httpcore.AsyncNetworkBackend | None = None, lookups: Lookups | None = None) -> None:
        self.backend = backend or httpcore.AnyIOBackend()
        self.lookups = LOOKUPS if lookups is None else lookups

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        addresses = await self.lookups.async_addresses(host, port, clamp(timeout, httpcore.ConnectTimeout))
        failed: Exception | None = None
        for address in addresses:
            left = clamp(timeout, httpcore.ConnectTimeout)
            try:
                stream = await self.backend.connect_tcp(address, port, left, local_address, socket_options)
            except httpcore.ConnectError as exc:
                failed = exc
                continue
            return AsyncDeadlineStream(stream)
        assert failed is not None
        raise failed

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
