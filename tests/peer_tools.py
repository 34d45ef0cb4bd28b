"""A test peer that speaks the real peer plane (mutual TLS + signed messages) with its own identity.

Service and cluster tests use it to send a leader's command as an admitted node would, and the hostile
suites use it (with another token, no certificate, or tampered bytes) to act as a stranger.
"""

from __future__ import annotations

import json
import shutil
import ssl
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx

from agent.identity import Identity
from agent.leadership import Leadership
from agent.node import NodeAgent
from agent.peer_api import create_peer_app
from agent.peer_client import PeerClient, tls_context


class TestPeer:
    """A node identity (``node_id`` + ``token``, keys in ``data_dir``) that signs and sends peer messages."""

    __test__ = False

    def __init__(
        self, node_id: str, token: str, data_dir: Path, with_certificate: bool = True, key_from: Path | None = None
    ) -> None:
        if key_from is not None:  # sign with a real node's key (copied: its data dir stays untouched)
            (data_dir / "peer").mkdir(parents=True, exist_ok=True)
            shutil.copy(key_from / "peer" / "node.key", data_dir / "peer" / "node.key")
        self.identity = Identity(node_id, token, data_dir)
        ctx = tls_context(self.identity)
        if not with_certificate:  # a client that presents no certificate at all
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        self.http = httpx.Client(verify=ctx, timeout=30)

    def request(
        self, to: str, base: str, method: str, path: str, body: Any = None, params: dict[str, Any] | None = None,
        signed: bool = True, now: float | None = None, raw: bytes | None = None,
    ) -> httpx.Response:  # fmt: skip
        """Send one message to node ``to`` at peer URL ``base``; the answer's signature is checked when 2xx-4xx."""
        target = path + (f"?{urlencode(params)}" if params else "")
        content = raw if raw is not None else (b"" if body is None else json.dumps(body).encode())
        headers = {"content-type": "application/json"}
        nonce = ""
        if signed:
            s = self.identity.sign_request(to, method, target, content, time.time() if now is None else now)
            headers.update(s.headers)
            nonce = s.nonce
        r = self.http.request(method, base + target, content=content, headers=headers)
        if signed and "x-peerserve-signature" in r.headers:
            self.identity.verify_response(r.headers, to, r.status_code, nonce, r.content, time.time())
        return r

    def put_desired(self, to: str, base: str, term: int, instances: dict[str, int], leader: str = "") -> httpx.Response:
        body = {"term": term, "leader": leader or self.identity.node_id, "instances": instances}
        return self.request(to, base, "PUT", "/control/desired", body)

    def close(self) -> None:
        self.http.close()


def leadership_up_a_minute(agent: NodeAgent) -> Leadership:
    """``agent``'s election as on a board up for a minute: past a fresh board's wait for its view to settle (a fresh
    board judges no certificate and grants nothing while its view still grows, docs/election.md). For tests about
    certificates, admission or persistence rather than that wait."""
    ahead = [0.0]
    lead = Leadership(agent, monotonic=lambda: time.monotonic() + ahead[0])
    ahead[0] = 60.0
    return lead


def in_process_peer(agent: NodeAgent, node_id: str, token: str, data_dir: Path) -> PeerClient:
    """A PeerClient that signs as ``node_id`` (its keys in ``data_dir``) and reaches ``agent``'s real peer app in this
    process (httpx's ASGI transport): the signed peer plane without a listener. Close it when done."""
    assert agent.identity is not None
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=create_peer_app(agent, agent.identity)))
    return PeerClient(Identity(node_id, token, data_dir), lambda url: None, http=http)
