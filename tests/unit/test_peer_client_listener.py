"""Whom a signed request reaches (review19e F3, F1): over real mutual TLS on loopback, the peer client writes a
signed request only on a connection whose certificate proves the addressed node (its id, and its pinned key when
one is pinned), and so asks a peer v1 (agent.boot_ids) only on an unsigned refusal that node's listener gave.

Another cluster member listening at the URL used for a node (an mDNS advert "b at m's address" makes such a
candidate, admitted by a state fetch) sees nothing of the request, and its forged "bad signature" refusal cannot
downgrade the sender's requests to that node."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent.identity import AuthError, Identity
from agent.peer_api import PeerServer
from agent.peer_client import PeerCallError, PeerClient
from peerserve import wire
from tests.service.conftest import free_port

TOKEN = "listener-cluster-token-0123456789"
Asgi = Callable[[Any, Any, Any], Awaitable[None]]


def refusing(seen: list[dict[str, str]]) -> Asgi:
    """A member's listener that answers every request 401 {"error": "bad signature"}, unsigned (what an agent older
    than boot ids says to a v2 request), recording what reached it."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        seen.append({k.decode(): v.decode() for k, v in scope["headers"]})
        await send({"type": "http.response.start", "status": 401, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": json.dumps({"error": "bad signature"}).encode()})

    return app


def older_agent(node: Identity, seen: list[str | None]) -> Asgi:
    """A listener of an agent older than boot ids: it checks every request as v1 (the boot header ignored), so a v2
    signature is 'bad' to it (401, unsigned); a v1 request is answered signed."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        seen.append(headers.pop(wire.H_BOOT, None))
        try:
            sender = await node.verify_request_async(headers, "GET", scope["path"], b"", time.time(), mono=time.time())
        except AuthError as exc:
            await send({"type": "http.response.start", "status": exc.status, "headers": []})
            await send({"type": "http.response.body", "body": json.dumps({"error": str(exc)}).encode()})
            return
        body = json.dumps({"node_id": node.node_id}).encode()
        signed = node.sign_response(sender, 200, headers[wire.H_NONCE], body, time.time())
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(k.encode(), v.encode()) for k, v in signed.items()]})  # fmt: skip
        await send({"type": "http.response.body", "body": body})

    return app


def listening(listener: Identity, app: Asgi, run: Callable[[str], Awaitable[None]]) -> None:
    """``app`` behind ``listener``'s real peer listener (its certificate) on a loopback port; ``run(url)``."""

    async def main() -> None:
        port = free_port()
        server = PeerServer(app, listener, "127.0.0.1", port)  # type: ignore[arg-type]
        await server.start()
        try:
            await run(f"https://127.0.0.1:{port}")
        finally:
            await server.stop()

    asyncio.run(main())


# -- F3: the signed path sends only to the addressed node's certificate ----------------------------------
def test_a_signed_request_is_not_written_to_another_members_listener(tmp_path: Path) -> None:
    a, m = Identity("a", TOKEN, tmp_path / "a"), Identity("m", TOKEN, tmp_path / "m")
    seen: list[dict[str, str]] = []

    async def run(url: str) -> None:
        client = PeerClient(a, lambda u: None)
        try:
            with pytest.raises(PeerCallError, match=r"is not b .*names 'm'"):
                await client.call("b", url, "GET", wire.ROUTE_STATE)
            with pytest.raises(PeerCallError, match="is not b"):
                await client.call("b", url, "PUT", wire.ROUTE_DESIRED, body={"term": 1})
            assert client.connections.idle_count == 0  # refused connections are closed, not kept
            with pytest.raises(PeerCallError) as refused:  # the node it does prove: sent (v2, then v1), refused
                await client.call("m", url, "GET", wire.ROUTE_STATE)
        finally:
            await client.close()
        assert refused.value.status == 401

    listening(m, refusing(seen), run)
    assert [h[wire.H_TO] for h in seen] == ["m", "m"]  # nothing addressed to b reached m


def test_a_signed_request_is_not_written_to_a_certificate_with_another_key_than_pinned(tmp_path: Path) -> None:
    a, impostor = Identity("a", TOKEN, tmp_path / "a"), Identity("b", TOKEN, tmp_path / "impostor")
    seen: list[dict[str, str]] = []

    async def run(url: str) -> None:
        await a.pins.pin("b", Identity("b", TOKEN, tmp_path / "b").public_key)  # the real b, met before
        client = PeerClient(a, lambda u: None)
        try:
            with pytest.raises(PeerCallError, match="pinned"):
                await client.call("b", url, "GET", wire.ROUTE_STATE)
        finally:
            await client.close()

    listening(impostor, refusing(seen), run)
    assert seen == []


# -- F1: asked v1 only on the addressed node's own refusal --------------------------------------------
def test_a_forged_old_agent_refusal_from_another_member_does_not_downgrade(tmp_path: Path) -> None:
    a, m = Identity("a", TOKEN, tmp_path / "a"), Identity("m", TOKEN, tmp_path / "m")
    seen: list[dict[str, str]] = []

    async def run(url: str) -> None:
        client = PeerClient(a, lambda u: None)
        try:
            with pytest.raises(PeerCallError):
                await client.call("b", url, "GET", wire.ROUTE_STATE)
        finally:
            await client.close()
        assert client.boots.boot_for("b", time.monotonic()) == wire.UNKNOWN_BOOT  # still v2

    listening(m, refusing(seen), run)
    assert seen == []


def test_an_older_agent_proven_by_its_certificate_is_asked_v1(tmp_path: Path) -> None:
    """A rolling upgrade keeps working: the older agent's listener proves itself, so its refusal is trusted."""
    a, old = Identity("a", TOKEN, tmp_path / "a"), Identity("b", TOKEN, tmp_path / "b")
    seen: list[str | None] = []
    statuses: list[int] = []

    async def run(url: str) -> None:
        client = PeerClient(a, lambda u: None)
        try:
            statuses.extend([(await client.call("b", url, "GET", wire.ROUTE_STATE))[0] for _ in range(2)])
        finally:
            await client.close()

    listening(old, older_agent(old, seen), run)
    assert statuses == [200, 200]
    assert seen == [wire.UNKNOWN_BOOT, None, None]  # v2 once, refused; then v1 (and the next call v1 at once)


def test_no_downgrade_when_this_node_refuses_v1_itself(tmp_path: Path) -> None:
    """``accept_v1`` off: the operator declared every member upgraded, so an 'older agent' refusal is an error."""
    a = Identity("a", TOKEN, tmp_path / "a", accept_v1=False)
    old = Identity("b", TOKEN, tmp_path / "b")
    seen: list[str | None] = []

    async def run(url: str) -> None:
        client = PeerClient(a, lambda u: None)
        try:
            with pytest.raises(PeerCallError, match="bad signature") as refused:
                await client.call("b", url, "GET", wire.ROUTE_STATE)
        finally:
            await client.close()
        assert refused.value.status == 401 and client.boots.boot_for("b", time.monotonic()) == wire.UNKNOWN_BOOT

    listening(old, older_agent(old, seen), run)
    assert seen == [wire.UNKNOWN_BOOT]  # no v1 request sent


def test_no_downgrade_over_a_given_client_that_proves_no_listener(tmp_path: Path) -> None:
    """A given httpx client (plain HTTP here) proves nobody's certificate: whoever answered could be anyone."""
    a, old = Identity("a", TOKEN, tmp_path / "a"), Identity("b", TOKEN, tmp_path / "b")
    seen: list[str | None] = []

    async def scenario() -> None:
        http = httpx.AsyncClient(transport=httpx.ASGITransport(app=older_agent(old, seen)))
        client = PeerClient(a, {"http://b": ("b", "http://b")}.get, http=http)
        try:
            with pytest.raises(PeerCallError, match="bad signature"):
                await client.call("b", "http://b", "GET", wire.ROUTE_STATE)
        finally:
            await client.close()

    asyncio.run(scenario())
    assert seen == [wire.UNKNOWN_BOOT]
