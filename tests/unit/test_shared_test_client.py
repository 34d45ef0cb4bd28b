"""The service tier's shared plain-HTTP client (tests/service/conftest.py ``PLAIN``) keeps nothing between calls,
as ``httpx.get`` did: no connection, and no cookie (review19c F4: one test's Set-Cookie from 127.0.0.1 went to
every later agent on 127.0.0.1 in that pytest process, whatever its port). Real HTTP servers on loopback."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from typing import ClassVar

import pytest

from tests.service.conftest import PLAIN


class Recorder(http.server.BaseHTTPRequestHandler):
    """Records each request's Cookie header; ``/set`` answers with two Set-Cookie headers."""

    seen: ClassVar[list[tuple[int, str | None]]] = []

    def do_GET(self) -> None:
        self.seen.append((self.server.server_address[1], self.headers.get("Cookie")))
        self.send_response(200)
        if self.path == "/set":
            self.send_header("Set-Cookie", "a=1")
            self.send_header("Set-Cookie", "b=2; Path=/")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        return None


@pytest.fixture
def two_servers() -> Iterator[list[int]]:
    Recorder.seen = []
    servers = [http.server.ThreadingHTTPServer(("127.0.0.1", 0), Recorder) for _ in range(2)]
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in servers]
    for t in threads:
        t.start()
    try:
        yield [s.server_address[1] for s in servers]
    finally:
        for s in servers:
            s.shutdown()
            s.server_close()


def test_the_shared_client_stores_and_sends_no_cookie(two_servers: list[int]) -> None:
    first, second = two_servers
    given = PLAIN.get(f"http://127.0.0.1:{first}/set", timeout=10).headers.get_list("set-cookie")
    assert given == ["a=1", "b=2; Path=/"]
    PLAIN.get(f"http://127.0.0.1:{first}/again", timeout=10)  # the same server
    PLAIN.get(f"http://127.0.0.1:{second}/other", timeout=10)  # another agent on the same host, a later test
    assert Recorder.seen == [(first, None), (first, None), (second, None)]
    assert len(PLAIN.cookies.jar) == 0
