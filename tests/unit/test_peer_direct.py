"""Direct SWIM exchanges (docs/security.md, "Direct exchanges"): authenticated by the mutual-TLS connection's
certificates, with no per-message signature, over real TLS on loopback (agent.peer_tls, agent.peer_gate)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, NoReturn

import pytest
from fastapi import FastAPI

from agent.discovery import swim as sw
from agent.discovery.swim_io import SwimDriver
from agent.identity import Identity
from agent.peer_api import PeerServer, peer_http_parser
from agent.peer_client import PeerCallError, PeerClient
from agent.peer_swim_route import SwimRoute
from agent.peer_tls import PEER_KEY, cert_identity
from peerserve import wire
from peerserve.wire import SwimMessage
from tests.service.conftest import free_port
from tests.unit.test_peer_swim_route import Membership, Node

TOKEN = "unit-cluster-token-0123456789"
Run = Callable[[PeerClient, str, Node, Identity], Awaitable[None]]
server_of: list[PeerServer] = []  # the listener of the test running now


def ping(sender: str = "a") -> dict[str, Any]:
    return SwimMessage("ping", sender, 0, 1, "https://127.0.0.3:7001").to_json()


def _no_signing(*_args: Any, **_kwargs: Any) -> NoReturn:
    raise AssertionError("a direct exchange must not sign or verify per message")


def serve(tmp_path: Path, run: Run, strip_identity: bool = False) -> None:
    """B's real peer listener (its SwimRoute and SWIM driver) and A's PeerClient with its own TLS connections."""
    a, b = Identity("a", TOKEN, tmp_path / "a"), Identity("b", TOKEN, tmp_path / "b")
    driver = SwimDriver("b", "https://127.0.0.1:1", PeerClient(b, lambda url: None), sw.SwimConfig(), lambda: None,
                        lambda s, u: s, lambda t: None)  # type: ignore[arg-type,return-value]  # fmt: skip
    node = Node(Membership(driver))
    app = FastAPI()
    app.add_middleware(SwimRoute, agent=node, identity=b)  # type: ignore[arg-type]

    async def old_agent(scope: Any, receive: Any, send: Any) -> None:  # an agent that knows only signed messages
        if scope["type"] == "http":
            scope["state"].pop(PEER_KEY, None)
        await app(scope, receive, send)

    async def main() -> None:
        port = free_port()
        server = PeerServer(old_agent if strip_identity else app, b, "127.0.0.1", port)  # type: ignore[arg-type]
        server_of[:] = [server]
        await server.start()
        client = PeerClient(a, lambda url: None)
        try:
            await run(client, f"https://127.0.0.1:{port}", node, b)
        finally:
            await client.close()
            await server.stop()

    asyncio.run(main())


def test_a_direct_ping_is_answered_without_any_signature(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def run(client: PeerClient, url: str, node: Node, b: Identity) -> None:
        for ident in (client.identity, b):
            for name in ("sign_request", "verify_request", "sign_response", "verify_response"):
                monkeypatch.setattr(ident, name, _no_signing)
        for _ in range(3):
            status, answer = await client.call("b", url, "POST", wire.ROUTE_SWIM, body=ping(), direct=True)
            assert status == 200 and SwimMessage.parse(answer).kind == "ack" and answer["node_id"] == "b"
        assert node.discovery is not None and node.discovery.driver.received["ping"] == 3
        assert client.connections.opened == 1  # one handshake authenticated all three
        assert b.pins._pins["a"] == client.identity.public_key  # the certificate's key, pinned on first contact
        (served,) = server_of[0].server.server_state.connections  # the listener parses with httptools (C)
        assert type(served).__name__ == "HttpToolsProtocol" and peer_http_parser() == "httptools"

    serve(tmp_path, run)


def test_a_direct_message_speaks_only_for_its_certificates_node(tmp_path: Path) -> None:
    async def run(client: PeerClient, url: str, node: Node, b: Identity) -> None:
        status, answer = await client.call("b", url, "POST", wire.ROUTE_SWIM, body=ping("c"), direct=True)
        assert status == 403 and "a cannot speak for c" in answer["error"]

    serve(tmp_path, run)


def _impostor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch | None) -> int:
    """B pinned node id "a" to another key; a holder of the token with a new key for "a" pings B directly."""
    got: list[int] = []

    async def run(client: PeerClient, url: str, node: Node, b: Identity) -> None:
        await b.pins.pin("a", bytes(32))  # pinned first to another key
        if monkeypatch is not None:  # the pin check switched off: the checker below must see the impostor in

            async def nothing(node_id: str, key: bytes, *where: Any) -> None:
                return None

            monkeypatch.setattr(b.pins, "pin", nothing)
        got.append((await client.call("b", url, "POST", wire.ROUTE_SWIM, body=ping(), direct=True))[0])

    serve(tmp_path, run)
    return got[0]


def test_a_certificate_with_another_key_than_the_pinned_one_is_refused(tmp_path: Path) -> None:
    assert _impostor(tmp_path / "on", None) == 403


def test_the_pin_checker_fails_when_the_pin_check_is_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert _impostor(tmp_path / "off", monkeypatch) == 200


def test_the_client_refuses_a_listener_whose_certificate_names_another_node(tmp_path: Path) -> None:
    async def run(client: PeerClient, url: str, node: Node, b: Identity) -> None:
        with pytest.raises(PeerCallError, match="its certificate names 'b'"):
            await client.call("c", url, "POST", wire.ROUTE_SWIM, body=ping(), direct=True)
        await client.identity.pins.pin("b", bytes(32))  # and one that names the node, with another key than pinned
        with pytest.raises(PeerCallError, match="pinned"):
            await client.call("b", url, "POST", wire.ROUTE_SWIM, body=ping(), direct=True)
        assert node.discovery is not None and node.discovery.driver.received["ping"] == 0  # refused before sending
        assert client.connections.idle_count == 0  # and the connection closed, not kept

    serve(tmp_path, run)


def test_a_listener_that_wants_signatures_gets_them(tmp_path: Path) -> None:
    async def run(client: PeerClient, url: str, node: Node, b: Identity) -> None:
        status, answer = await client.call("b", url, "POST", wire.ROUTE_SWIM, body=ping(), direct=True)
        assert status == 200 and answer["node_id"] == "b"  # 401 to the direct try, then signed
        assert "b" in client._signed_only
        assert node.discovery is not None and node.discovery.driver.received["ping"] == 1

    serve(tmp_path, run, strip_identity=True)


def test_only_a_node_certificate_of_an_ed25519_key_names_a_node() -> None:
    assert cert_identity(None) is None and cert_identity(b"") is None and cert_identity(b"garbage") is None


def test_a_node_certificate_names_its_node_and_the_cards_key(tmp_path: Path) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    ident = Identity("n7", TOKEN, tmp_path)
    assert ident.tls_files is not None
    cert = x509.load_pem_x509_certificate(ident.tls_files.cert.read_bytes())
    assert cert_identity(cert.public_bytes(serialization.Encoding.DER)) == ("n7", ident.public_key)
    ca = x509.load_pem_x509_certificate(ident.tls_files.ca.read_bytes())  # the CA's CN is no node id
    assert cert_identity(ca.public_bytes(serialization.Encoding.DER)) is None


def test_the_peer_listener_speaks_tls_1_3_only(tmp_path: Path) -> None:
    """TLS 1.2 could renegotiate a connection with another certificate after its identity was read."""
    import ssl

    from agent.peer_client import tls_context

    async def run(client: PeerClient, url: str, node: Node, b: Identity) -> None:
        ctx = tls_context(client.identity)
        assert isinstance(ctx, ssl.SSLContext)
        ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        host, port = url.removeprefix("https://").split(":")
        with pytest.raises((ssl.SSLError, ConnectionError)):
            _, writer = await asyncio.open_connection(host, int(port), ssl=ctx)
            writer.close()

    serve(tmp_path, run)


def test_without_httptools_the_peer_listener_parses_with_the_client_ports_bounds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fallback (no httptools): h11, sliced and budgeted as on the client port (one implementation). A
    certificate holder's body in 1-byte chunks gets 400 at the 257th chunk, and SWIM still works on it."""
    import importlib.util

    from agent.http_limits import SlicedH11Protocol
    from agent.peer_client import tls_context

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "httptools" else find_spec(name, *a)
    )
    assert peer_http_parser() is SlicedH11Protocol

    async def run(client: PeerClient, url: str, node: Node, b: Identity) -> None:
        status, answer = await client.call("b", url, "POST", wire.ROUTE_SWIM, body=ping(), direct=True)
        assert status == 200 and SwimMessage.parse(answer).kind == "ack"
        (served,) = server_of[0].server.server_state.connections
        assert isinstance(served, SlicedH11Protocol)
        host, port = url.removeprefix("https://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port), ssl=tls_context(client.identity))
        writer.write(f"POST {wire.ROUTE_SWIM} HTTP/1.1\r\nHost: b\r\nTransfer-Encoding: chunked\r\n\r\n".encode())
        writer.write(b"1\r\nx\r\n" * 20_000)
        answer_bytes = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        assert (
            answer_bytes.startswith(b"HTTP/1.1 400 ") and b"too many small chunks (257 for 257 bytes)" in answer_bytes
        )

    serve(tmp_path, run)
