"""The client library against a rogue agent on loopback (review 11a, finding 5): a real HTTP server that
answers every question with a 200 the client cannot use (not JSON, the wrong shape, too long), advertised
by mDNS on 127.0.0.1 beside a real agent run with --client-token.

Found by mDNS, neither may have the client token: the rogue never sees it, and the real agent's 401 says
how to send it. With ``trust_discovered`` (the lab-LAN opt-in) both clients, sync and async, fail over
from the rogue's garbage to the real agent and predict correctly.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from client import AsyncClient, Client, ClusterUnreachableError
from client.answers import CONTROL_LIMIT
from tests.service.conftest import free_port

CLIENT_TOKEN = "phones-need-this-0123"
SERVICE = "_peerserve._tcp.local."


class Rogue(BaseHTTPRequestHandler):
    """Answers 200 to everything, never usably; remembers every Authorization header it was sent."""

    seen: list[str | None]
    lock = threading.Lock()

    def do_GET(self) -> None:
        with self.lock:
            self.seen.append(self.headers.get("Authorization"))
        if self.path == "/cluster":
            self._answer(b'{"members": "x"}')  # the wrong shape
        elif self.path == "/services":
            self._answer(b"[" + b'{"model": "m"},' * (CONTROL_LIMIT // 15) + b"{}]")  # over the client's limit
        else:
            self._answer(b"<html>captive portal</html>", "text/html")  # not JSON

    do_POST = do_GET

    def _answer(self, body: bytes, kind: str = "application/json") -> None:
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        with contextlib.suppress(OSError):
            self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        return


@pytest.fixture
def rogue() -> Iterator[tuple[str, list[str | None]]]:
    seen: list[str | None] = []
    handler = type("RogueHere", (Rogue,), {"seen": seen})
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def advertised(*urls: str) -> Iterator[None]:
    """Advertise each URL as a peerserve agent by mDNS, on 127.0.0.1 only."""
    from zeroconf import IPVersion, ServiceInfo, Zeroconf

    zc = Zeroconf(interfaces=["127.0.0.1"], ip_version=IPVersion.V4Only)
    infos = []
    for i, url in enumerate(urls):
        port = int(url.rsplit(":", 1)[1])
        name = f"trust-{port}-{i}"
        info = ServiceInfo(SERVICE, f"{name}.{SERVICE}", port=port, addresses=[socket.inet_aton("127.0.0.1")],
                           properties={"id": name, "port": str(port), "pv": "1"}, server=f"{name}.local.")  # fmt: skip
        zc.register_service(info)
        infos.append(info)
    try:
        yield
    finally:
        for info in infos:
            zc.unregister_service(info)
        zc.close()


def found_first(found: list[str], rogue: str, good: str) -> list[str] | None:
    """Both ours among what a browse found (other tests' agents may advertise on loopback too), the rogue first."""
    return [rogue, good] if {rogue, good} <= set(found) else None


def discover(client: Client, rogue: str, good: str) -> None:
    for _ in range(3):  # a loaded machine may need more than one 2 s browse to resolve both adverts
        client.core.agents = []
        with contextlib.suppress(ClusterUnreachableError):
            ours = found_first(client._ordered_agents(), rogue, good)
            if ours:
                client.core.agents = ours  # still found by mDNS: neither is named
                return
    raise AssertionError("the adverts were not found")


def test_the_token_never_goes_to_a_discovered_agent_and_garbage_fails_over(
    agents: Any, rogue: tuple[str, list[str | None]], monkeypatch: pytest.MonkeyPatch
) -> None:
    rogue_url, seen = rogue
    a = agents("a", "--no-discovery", "--client-token", CLIENT_TOKEN)
    monkeypatch.setenv("PEERSERVE_CLIENT_TOKEN", CLIENT_TOKEN)
    monkeypatch.delenv("PEERSERVE_AGENT", raising=False)
    monkeypatch.delenv("PEERSERVE_TRUST_DISCOVERED", raising=False)
    with advertised(rogue_url, a.url):
        with Client(discover_interfaces=["127.0.0.1"], timeout=5) as c:
            discover(c, rogue_url, a.url)
            with pytest.raises(ClusterUnreachableError, match="PEERSERVE_TRUST_DISCOVERED"):
                c.cluster()  # the rogue's garbage, then the real agent's 401: it did not get the token
        assert seen and not any(seen)  # asked, never with the token
        seen.clear()

        with Client(discover_interfaces=["127.0.0.1"], timeout=5, trust_discovered=True) as c:
            discover(c, rogue_url, a.url)
            assert c.cluster()["node_id"] == "a"  # {"members": "x"} from the rogue: the next agent
            c.core.agents = [rogue_url, a.url]
            assert c.predict("half_plus_two", instances=[1.0, 2.0]) == {"predictions": [2.5, 3.0]}  # HTML: next
            c.core.agents = [rogue_url, a.url]
            assert c.predict("half_plus_two", instances=[5.0], via_proxy=True) == {"predictions": [4.5]}
            c.core.agents = [rogue_url, a.url]
            assert [e.model for e in c.endpoints()] == ["half_plus_two"]  # a /services over the limit: next
        # each question (/cluster, /services/half_plus_two, the proxied predict, /services) went to the
        # rogue first, and with the opt-in it got the token: the price of trusting mDNS (docs/security.md)
        assert seen == [f"Bearer {CLIENT_TOKEN}"] * 4

    async def async_client() -> Any:
        async with AsyncClient(timeout=5) as c:
            c.core.agents = [rogue_url, a.url]  # as a browse finds them: neither is named
            with pytest.raises(ClusterUnreachableError, match="PEERSERVE_TRUST_DISCOVERED"):
                await c.cluster()
        async with AsyncClient(timeout=5, trust_discovered=True) as c:
            c.core.agents = [rogue_url, a.url]
            assert (await c.cluster())["node_id"] == "a"
            c.core.agents = [rogue_url, a.url]
            return await c.predict("half_plus_two", instances=[1.0], via_proxy=True)

    assert asyncio.run(async_client()) == {"predictions": [2.5]}
    assert CLIENT_TOKEN not in a.log.read_text()
