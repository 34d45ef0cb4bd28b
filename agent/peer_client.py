"""PeerClient: signs and sends peer-plane requests over mutual TLS, and accepts only authenticated answers.

Every request carries this node's card and an Ed25519 signature (agent.identity); every answer must be
signed by the node we addressed and bound to our request's nonce, or the call fails with PeerCallError.
Answers of the stats routes are parsed strictly (peerserve.wire) and must name the node that signed them.

    PeerCallError(ValueError)   the peer is unreachable, refused us, or answered something unauthentic/bad
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlencode

import httpx

from agent.identity import AuthError, Identity
from peerserve import wire

log = logging.getLogger(__name__)

TIMEOUT = httpx.Timeout(3.0, connect=0.5)
# One small connection pool PER PEER, kept alive: SWIM reaches each member every N probe periods (10 s at 50
# nodes), under the listener's 30 s keep-alive, so a probe costs no handshake. Not one shared pool: httpcore
# checks every pooled connection (a poll() each) on every request, which made a request cost O(N) (profiled:
# ~30 % of a 15-agent leader's CPU).
POOL = httpx.Limits(max_connections=None, max_keepalive_connections=4, keepalive_expiry=25.0)
MAX_POOLS = 320  # peers with a pool of their own (swim.MAX_MEMBERS + candidates); least recently used closed


class PeerCallError(ValueError):
    """A peer call that did not produce an authenticated answer (``status``: the peer's HTTP status, or 0)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


def tls_context(identity: Identity) -> ssl.SSLContext | bool:
    """Client side of mutual TLS: trust only the cluster CA, present this node's certificate."""
    files = identity.tls_files
    if files is None:
        return False
    ctx = ssl.create_default_context(cafile=str(files.ca))
    ctx.check_hostname = False  # peers are reached by IP; the signed answer names the node
    ctx.load_cert_chain(str(files.cert), str(files.key))
    return ctx


class PeerClient:
    """Sends signed requests to peers' listeners; ``route(url)`` maps an agent URL to (node id, peer URL)."""

    def __init__(
        self,
        identity: Identity,
        route: Callable[[str], tuple[str, str] | None],
        clock: Callable[[], float] = time.time,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self.identity = identity
        self.route = route
        self.clock = clock
        self.http = http  # one given client for every peer (tests), else a pool per peer (``_client``)
        self._tls = tls_context(identity) if http is None else False
        self._pools: OrderedDict[str, httpx.AsyncClient] = OrderedDict()
        self._closing: set[asyncio.Task[None]] = set()

    def _client(self, base_url: str) -> httpx.AsyncClient:
        """The HTTP client (connection pool) for the peer at ``base_url``; at most MAX_POOLS are kept."""
        if self.http is not None:
            return self.http
        client = self._pools.get(base_url)
        if client is not None:
            self._pools.move_to_end(base_url)
            return client
        client = httpx.AsyncClient(verify=self._tls, timeout=TIMEOUT, limits=POOL)
        self._pools[base_url] = client
        if len(self._pools) > MAX_POOLS:
            _, old = self._pools.popitem(last=False)
            task = asyncio.get_running_loop().create_task(old.aclose())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
        return client

    @property
    def pool_count(self) -> int:
        return len(self._pools)

    async def close(self) -> None:
        clients = [self.http] if self.http is not None else list(self._pools.values())
        self._pools.clear()
        await asyncio.gather(*(c.aclose() for c in clients), *self._closing, return_exceptions=True)

    async def call(
        self,
        node_id: str,
        base_url: str,
        method: str,
        path: str,
        params: Mapping[str, Any] | None = None,
        body: Mapping[str, Any] | None = None,
        timeout: httpx.Timeout | float = TIMEOUT,
    ) -> tuple[int, Any]:
        """One authenticated exchange with ``node_id`` at ``base_url``: (status, JSON answer)."""
        target = path + (f"?{urlencode(dict(params))}" if params else "")
        content = json.dumps(body, separators=(",", ":")).encode() if body is not None else b""
        signed = self.identity.sign_request(node_id, method, target, content, self.clock())
        headers = dict(signed.headers)
        if body is not None:
            headers["content-type"] = "application/json"
        try:
            r = await self._client(base_url).request(
                method, base_url + target, content=content, headers=headers, timeout=timeout
            )
        except httpx.HTTPError as exc:
            raise PeerCallError(f"{node_id} unreachable: {type(exc).__name__}: {exc}") from exc
        if len(r.content) > wire.MAX_BODY:
            raise PeerCallError(f"{node_id} answered {len(r.content)} bytes", r.status_code)
        try:
            self.identity.verify_response(r.headers, node_id, r.status_code, signed.nonce, r.content, self.clock())
        except AuthError as exc:
            raise PeerCallError(f"unauthenticated answer from {node_id} (HTTP {r.status_code}): {exc}",
                                r.status_code) from exc  # fmt: skip
        try:
            return r.status_code, r.json()
        except ValueError as exc:
            raise PeerCallError(f"{node_id} answered non-JSON", r.status_code) from exc

    # -- the leader's seams (agent.leadership) --------------------------------------------------------
    def _routed(self, url: str) -> tuple[str, str, str]:
        for prefix_len in range(len(url), 0, -1):
            if prefix_len < len(url) and url[prefix_len] != "/":
                continue
            hit = self.route(url[:prefix_len])
            if hit is not None:
                return hit[0], hit[1], url[prefix_len:] or "/"
        raise PeerCallError(f"no admitted node serves {url}")

    async def get_json(self, url: str, params: Mapping[str, Any] | None = None) -> Any:
        """GET a stats route of the node behind agent URL ``url``; the answer is validated and re-encoded."""
        node_id, base, path = self._routed(url)
        status, data = await self.call(node_id, base, "GET", path, params)
        if status != 200:
            raise PeerCallError(f"{node_id} answered HTTP {status} to {path}", status)
        try:
            parsed = _parse_answer(path, data, int((params or {}).get("since", 0)))
        except wire.WireError as exc:
            raise PeerCallError(f"{node_id} answered a malformed {path}: {exc}", status) from exc
        if parsed.node_id != node_id:
            raise PeerCallError(f"{node_id} answered for another node ({parsed.node_id!r})", status)
        return parsed.to_json()

    async def send(self, url: str, method: str, path: str, body: Mapping[str, Any]) -> tuple[int, Any]:
        """Send ``body`` to the node behind agent URL ``url`` (election messages, commands)."""
        node_id, base, _ = self._routed(url)
        return await self.call(node_id, base, method, path, body=body)


def _parse_answer(path: str, data: Any, since: int) -> wire.NodeStats | wire.ModelStats | wire.RequestPage:
    if path == wire.ROUTE_STATS_NODE:
        return wire.NodeStats.parse(data)
    if path == wire.ROUTE_STATS_MODELS:
        return wire.ModelStats.parse(data)
    if path == wire.ROUTE_STATS_REQUESTS:
        return wire.RequestPage.parse(data, since)
    raise wire.WireError(f"no parser for {path}")
