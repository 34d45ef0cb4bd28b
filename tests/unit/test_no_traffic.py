"""The unit tier's traffic guard (tests/no_traffic.py): loopback and Unix sockets connect, anything else is refused
before a packet leaves, and counted."""

from __future__ import annotations

import socket
import threading

import httpx
import pytest

from tests.no_traffic import Guard, OffMachine, allowed


@pytest.mark.parametrize(
    ("family", "address", "ok"),
    [
        (socket.AF_INET, ("127.0.0.1", 80), True),
        (socket.AF_INET, ("127.3.2.1", 80), True),
        (socket.AF_INET6, ("::1", 80, 0, 0), True),
        (socket.AF_INET6, ("::ffff:127.0.0.1", 80, 0, 0), True),
        (socket.AF_INET, ("localhost", 80), True),
        (socket.AF_INET, ("10.0.0.1", 8400), False),
        (socket.AF_INET, ("192.0.2.1", 80), False),
        (socket.AF_INET, ("0.0.0.0", 80), False),
        (socket.AF_INET6, ("fe80::1%eth0", 80, 0, 2), False),
        (socket.AF_INET6, ("::ffff:10.0.0.1", 80, 0, 0), False),
        (socket.AF_INET, ("example.invalid", 80), False),
    ],
)
def test_only_loopback_is_allowed(family: int, address: tuple, ok: bool) -> None:
    assert allowed(family, address) is ok


def test_a_connect_off_the_machine_is_refused_at_once_and_counted() -> None:
    guard = Guard()
    with guard.active():  # inside the tier's own guard: this one refuses first, so the tier's sees nothing
        with socket.socket() as sock, pytest.raises(OffMachine):
            sock.connect(("192.0.2.1", 9))
        with socket.socket() as sock, pytest.raises(OffMachine):
            sock.connect_ex(("10.0.0.1", 8400))
        with pytest.raises(httpx.ConnectError):  # what a client under test sees: a refused connection
            httpx.get("http://10.0.0.1:8400/health", timeout=5)
    assert guard.count == 3 and "10.0.0.1" in guard.tried[1]
    with socket.socket() as sock, pytest.raises(OSError) as refused:  # the guard is gone: a real connect again
        sock.connect(("127.0.0.1", 9))  # discard, nothing listens here
    assert not isinstance(refused.value, OffMachine)


def test_loopback_connects_through_the_guard() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        accepted = threading.Thread(target=lambda: server.accept()[0].close())
        accepted.start()
        with Guard().active(), socket.create_connection(server.getsockname(), timeout=5):
            pass
        accepted.join(5)
