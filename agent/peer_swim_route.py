"""POST /peer/swim as a lean ASGI route ahead of FastAPI: the message every agent gets several times a second.

The same contract as every peer route (agent/peer_api.py): the request must carry a valid card and
signature for this node (agent.identity: 401/403, replays and stale messages refused), a body of at most
wire.MAX_BODY bytes (413), a well-formed SwimMessage (400) that names its signer as sender (403); the
answer is the node's own SwimMessage, signed and bound to the request's nonce. Only the framework is left
out: FastAPI's routing, request object and dependency machinery cost more than the exchange itself.

A *direct* message (no card header) is authenticated by its connection instead: the node id and key the
client's certificate proved in the mutual-TLS handshake (agent.peer_tls, put in the scope by the listener),
the key pinned for that id; its answer goes back unsigned on the same connection (docs/security.md,
"Direct exchanges"). Without such a certificate it is 401, so a client can fall back to signing.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any

from agent.discovery.swim_io import RelayRefused
from agent.identity import AuthError, Identity, StaleBoot
from agent.peer_tls import PEER_KEY
from peerserve import wire

if TYPE_CHECKING:
    from agent.node import NodeAgent

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class SwimRoute:
    """ASGI middleware: answers ``POST /peer/swim`` itself and passes every other request to ``app``."""

    def __init__(self, app: ASGIApp, agent: NodeAgent, identity: Identity) -> None:
        self.app, self.agent, self.identity = app, agent, identity

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != wire.ROUTE_SWIM or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        direct = wire.H_CARD not in headers  # no signature: the connection's certificate must say who it is
        client = scope.get("client")
        try:
            body = await _body(headers, receive)
            if direct:
                sender = await self.tls_sender(scope, str(client[0]) if client else "")
            else:
                query = scope["query_string"].decode("latin-1")
                target = scope["path"] + (f"?{query}" if query else "")
                source = str(client[0]) if client else ""
                sender = await self.identity.verify_request_async(
                    headers, "POST", target, body, self.agent.clock(), source, mono=time.monotonic()
                )
        except StaleBoot as exc:  # authentic, made for another run of this node: signed, naming ours
            log.info("refused a peer message from %s to %s: %s", client[0] if client else "?", scope["path"], exc)
            data = json.dumps(exc.answer(), separators=(",", ":")).encode()
            signed = self.identity.sign_response(exc.sender, exc.status, exc.nonce, data, self.agent.clock())
            await _send(send, exc.status, data, signed)
            return
        except AuthError as exc:
            log.warning("refused a peer message from %s to %s: %s", client[0] if client else "?", scope["path"], exc)
            retry = {"retry-after": str(exc.retry_after)} if exc.retry_after is not None else {}
            await _send(send, exc.status, json.dumps({"error": str(exc)}).encode(), retry)
            return
        status, payload = await self.answer(sender, body)
        data = json.dumps(payload, separators=(",", ":")).encode()
        if direct:  # the answer goes back on the same authenticated connection
            await _send(send, status, data, {})
            return
        signed = self.identity.sign_response(sender, status, headers[wire.H_NONCE], data, self.agent.clock())
        await _send(send, status, data, signed)

    async def tls_sender(self, scope: Scope, source: str = "") -> str:
        """The sender of a direct (unsigned) message: the node its connection's certificate proved, with the key
        pinned for that node id (checked at every message: an operator may re-pin it; a first contact spends
        ``source``'s budget, as a signed one does); raises AuthError."""
        found = scope.get("state", {}).get(PEER_KEY)
        if found is None:
            raise AuthError("unauthenticated: no node card, and no node certificate on this connection")
        node_id, key = found
        self.identity.vouch(node_id, key, self.agent.clock())  # operator-CA mode: a live board card shown for it
        await self.identity.pins.pin(node_id, key, source, self.agent.clock())
        return str(node_id)

    async def answer(self, sender: str, body: bytes) -> tuple[int, Any]:
        """(status, JSON answer) to an authenticated membership message from ``sender``."""
        discovery = self.agent.discovery
        if discovery is None:
            return 409, {"error": "this node takes no part in membership (discovery is off)"}
        if discovery.stopping:
            return 503, {"error": "this node is leaving"}
        try:
            msg = wire.SwimMessage.parse(json.loads(body))
        except ValueError as exc:  # wire.WireError is a ValueError, and so is a JSON error
            status = exc.status if isinstance(exc, wire.WireError) else 400
            return status, {"error": f"malformed membership message: {exc}"}
        if msg.node_id != sender:
            return 403, {"error": f"{sender} cannot speak for {msg.node_id} in membership"}
        try:
            answer = await discovery.handle_swim(sender, msg)
        except RelayRefused as exc:
            return exc.status, {"error": str(exc)}
        return 200, answer.to_json()


async def _body(headers: dict[str, str], receive: Receive) -> bytes:
    declared = headers.get("content-length", "0")
    if not declared.isdigit() or int(declared) > wire.MAX_BODY:
        raise AuthError("peer message body too large or malformed length", 413)
    body = b""
    while True:
        message = await receive()
        if message["type"] != "http.request":
            raise AuthError("the peer went away in the middle of its message", 400)
        body += bytes(message.get("body", b""))
        if len(body) > wire.MAX_BODY:
            raise AuthError("peer message body too large", 413)
        if not message.get("more_body", False):
            return body


async def _send(send: Send, status: int, data: bytes, headers: dict[str, str]) -> None:
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    raw += [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": data})
