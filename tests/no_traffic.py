"""The traffic rule, enforced in the test process: a socket may connect to loopback (127.0.0.0/8, ::1) or a Unix path,
nothing else (docs/architecture.md, "Traffic rule"; DESIGN.md). A test whose fixture names a LAN-looking address
(10.0.0.1, 192.0.2.x) for a node the code under test then dials sent real packets out of this machine's interface:
a reviewer's client test reached something listening at 10.0.0.1:8400 in session 27. Any other connect raises
``OffMachine`` (an OSError, so code that handles a refused connection sees one, at once, not after a timeout) and is
recorded, and the session fails where one was tried, even if the code under test swallowed the error.

Python-level: it sees every connect made through ``socket.socket`` (httpx, asyncio's loops, http.client,
create_connection), not the processes a test starts, which the service and cluster tiers run on loopback or in
namespaces of their own."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

MAX_KEPT = 20  # attempts kept for the report (each is also raised where it happened)


class OffMachine(OSError):
    """A connect to an address off this machine, refused before any packet left."""


def allowed(family: int, address: Any) -> bool:
    """Whether a connect to ``address`` stays on this machine: a Unix socket, or a loopback IP address."""
    if family == getattr(socket, "AF_UNIX", None):
        return True
    if family not in (socket.AF_INET, socket.AF_INET6) or not isinstance(address, tuple) or not address:
        return False
    host = str(address[0]).split("%", 1)[0]
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:  # a name: socket.connect resolves it, and only loopback names are ours
        return host == "localhost"
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


class Guard:
    """Patches ``socket.socket.connect`` and ``connect_ex`` while active; ``tried`` lists the first refused
    attempts, ``count`` counts them all."""

    def __init__(self) -> None:
        self.tried: list[str] = []
        self.count = 0  # every refused attempt, kept or not

    def _check(self, sock: socket.socket, address: Any) -> None:
        if not allowed(sock.family, address):
            self.count += 1
            if len(self.tried) < MAX_KEPT:
                self.tried.append(f"{socket.AddressFamily(sock.family).name} {address!r}")
            raise OffMachine(f"the test suite connects to loopback only, not {address!r} (tests/no_traffic.py)")

    @contextmanager
    def active(self) -> Iterator[Guard]:
        connect, connect_ex = socket.socket.connect, socket.socket.connect_ex
        guard = self

        def checked_connect(sock: socket.socket, address: Any) -> None:
            guard._check(sock, address)
            return connect(sock, address)

        def checked_connect_ex(sock: socket.socket, address: Any) -> int:
            guard._check(sock, address)
            return connect_ex(sock, address)

        socket.socket.connect = checked_connect  # type: ignore[method-assign]
        socket.socket.connect_ex = checked_connect_ex  # type: ignore[method-assign]
        try:
            yield self
        finally:
            socket.socket.connect, socket.socket.connect_ex = connect, connect_ex  # type: ignore[method-assign]
