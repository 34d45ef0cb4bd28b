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
from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import urlencode

import httpx

from agent import boot_ids
from agent.identity import AuthError, Identity
from agent.peer_http import PeerBusyError, PeerConnections, PeerHttpError
from agent.peer_tls import PeerIdentity
from peerserve import wire

log = logging.getLogger(__name__)

TIMEOUT = httpx.Timeout(3.0, connect=0.5)
SIGNED_ONLY_S = 300.0  # a peer that wants signed messages (an older agent) is asked signed this long
MAX_SIGNED_ONLY = 1024


class _NotThatNode(PeerHttpError):
    """The listener's certificate does not prove the node we meant (or not with its pinned key)."""


class _Unvouched(PeerHttpError):
    """The listener proved its node and key, but we hold no live board card for it (operator-CA mode: none seen yet,
    or the one seen expired or was revoked): like a listener's 401, answered by asking signed, which carries its
    current card and so refreshes ours. Raised before a byte of the message is written."""


class PeerCallError(ValueError):
    """A peer call that did not produce an authenticated answer (``status``: the peer's HTTP status, or 0;
    ``busy``: refused here by the bound of exchanges in flight with the peer: nothing was sent)."""

    def __init__(self, message: str, status: int = 0, busy: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.busy = busy


class _Unauthentic(PeerCallError):
    """An answer not signed by the node we addressed for our request (a refusal before it could authenticate us,
    or not that node); ``stated``: the error it states, unauthenticated."""

    def __init__(self, message: str, status: int, stated: str) -> None:
        super().__init__(message, status)
        self.stated = stated


def tls_context(identity: Identity) -> ssl.SSLContext | bool:
    """Client side of mutual TLS: trust only the cluster CA, present this node's certificate."""
    files = identity.tls_files
    if files is None:
        return False
    ctx = ssl.create_default_context(cafile=str(files.ca))
    ctx.check_hostname = False  # peers are reached by IP; the signed answer (or the certificate's CN) names the node
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3  # no renegotiation: a connection's certificate is fixed for good
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
        self.http = http  # one given client for every peer (tests), else our own kept connections per peer
        tls = tls_context(identity) if http is None else False
        # kept-alive connections per peer (agent.peer_http), bounded per peer and in peers
        self.connections = PeerConnections(tls if isinstance(tls, ssl.SSLContext) else None, wire.MAX_BODY)
        self._signed_only: dict[str, float] = {}  # peers that refused a direct exchange (401), since when
        self.boots = boot_ids.BootTable()  # each peer's boot id, as its signed refusals taught it (agent.boot_ids)

    async def close(self) -> None:
        if self.http is not None:
            await self.http.aclose()
        self.connections.close()

    async def call(
        self,
        node_id: str,
        base_url: str,
        method: str,
        path: str,
        params: Mapping[str, Any] | None = None,
        body: Mapping[str, Any] | None = None,
        timeout: httpx.Timeout | float = TIMEOUT,
        direct: bool = False,
        stamp: list[float] | None = None,
    ) -> tuple[int, Any]:
        """One authenticated exchange with ``node_id`` at ``base_url``: (status, JSON answer).

        ``direct``: no per-message signatures when our kept mutual-TLS connections carry it; the connection's
        certificate must name ``node_id`` with its pinned key (docs/security.md, "Direct exchanges"). A peer
        that still wants signed messages (401) is asked signed, and so for ``SIGNED_ONLY_S``. ``stamp``: the signed
        answer's stamp (the peer's wall clock as it answered, checked fresh) is appended to it."""
        target = path + (f"?{urlencode(dict(params))}" if params else "")
        content = json.dumps(body, separators=(",", ":")).encode() if body is not None else b""
        if direct and self._direct_to(node_id):
            status, answer = await self._direct(node_id, base_url, method, target, content, timeout)
            if status != 401:
                return status, answer
            if len(self._signed_only) >= MAX_SIGNED_ONLY:
                self._signed_only.clear()
            self._signed_only[node_id] = time.monotonic()
        boot = self.boots.boot_for(node_id, time.monotonic())
        try:
            status, answer_headers, answer = await self._signed(node_id, base_url, method, target, content, timeout,
                                                                body is not None, boot)  # fmt: skip
        except _Unauthentic as exc:
            if not self._may_ask_v1(exc.status, exc.stated, boot):
                raise
            log.info("%s cannot check a request naming its boot id (an older agent): asking it v1 for %.0f s",
                     node_id, boot_ids.V1_ONLY_S)  # fmt: skip
            self.boots.ask_v1(node_id, time.monotonic())
            status, answer_headers, answer = await self._signed(node_id, base_url, method, target, content, timeout,
                                                                body is not None, None)  # fmt: skip
        else:
            learnt = boot_ids.retry_boot(status, _json(answer), boot) if status == wire.STALE_BOOT else None
            if learnt is not None:  # its refusal, verified: made for another run of it (or none known); once more
                log.info("%s runs as boot id %s now: asking again", node_id, learnt)
                self.boots.learn(node_id, learnt)
                status, answer_headers, answer = await self._signed(node_id, base_url, method, target, content,
                                                                    timeout, body is not None, learnt)  # fmt: skip
        if stamp is not None:
            stamp.append(float(answer_headers[wire.H_TIME]))  # verified: a finite number within the window
        try:
            return status, json.loads(answer)
        except ValueError as exc:
            raise PeerCallError(f"{node_id} answered non-JSON", status) from exc

    async def _signed(
        self,
        node_id: str,
        base_url: str,
        method: str,
        target: str,
        content: bytes,
        timeout: httpx.Timeout | float,
        has_body: bool,
        boot: str | None,
    ) -> tuple[int, Mapping[str, str], bytes]:
        """One signed exchange naming ``boot`` (None: v1) and its verified answer: (status, headers, body)."""
        signed = self.identity.sign_request(node_id, method, target, content, self.clock(), boot)
        headers = dict(signed.headers)
        if has_body:
            headers["content-type"] = "application/json"
        status, answer_headers, answer = await self._exchange(node_id, base_url, method, target, headers, content,
                                                              timeout)  # fmt: skip
        if len(answer) > wire.MAX_BODY:
            raise PeerCallError(f"{node_id} answered {len(answer)} bytes", status)
        try:
            await self.identity.verify_response_async(
                answer_headers, node_id, status, signed.nonce, answer, self.clock()
            )
        except AuthError as exc:
            stated = _stated(answer)  # unauthenticated: shown as what it claims, for the operator's log only
            said = f"; it said: {stated[:200]!r}" if stated else ""
            raise _Unauthentic(f"unauthenticated answer from {node_id} (HTTP {status}): {exc}{said}", status,
                               stated=stated) from exc  # fmt: skip
        return status, answer_headers, answer

    def _may_ask_v1(self, status: int, stated: str, boot: str | None) -> bool:
        """Whether an unauthenticated refusal of a v2 request (``status``, its stated error) makes us ask v1: it says
        the peer is older than boot ids (agent.boot_ids.old_agent), the connection it came on proved the addressed
        node (``_exchange``'s certificate check: only our own TLS connections can; a given client or plain HTTP
        proves nobody, so anyone answering at the URL could otherwise downgrade us), and this node still accepts
        v1 requests itself (off: the operator declared every member upgraded, so no member asks for v1)."""
        proven = self.http is None and self.connections.tls is not None
        return proven and self.identity.accept_v1 and boot_ids.old_agent(status, stated, boot)

    def _direct_to(self, node_id: str) -> bool:
        """Whether direct exchanges with ``node_id`` are possible: our own TLS connections, and it takes them."""
        if self.http is not None or self.connections.tls is None:
            return False
        since = self._signed_only.get(node_id)
        return since is None or time.monotonic() - since >= SIGNED_ONLY_S

    async def _direct(
        self, node_id: str, base_url: str, method: str, target: str, content: bytes, timeout: httpx.Timeout | float
    ) -> tuple[int, Any]:
        """An exchange authenticated by the connection alone: the listener's certificate must prove ``node_id``."""
        total, connect = _seconds(timeout)
        headers = {"content-type": "application/json"} if content else {}

        async def pin(key: bytes) -> None:  # a first contact with the listener: its pin written off the loop
            try:
                await self.identity.pins.pin(node_id, key)
            except AuthError as exc:
                raise _NotThatNode(f"{node_id} at {base_url}: {exc}") from exc

        def is_node(peer: PeerIdentity | None) -> Awaitable[None] | None:  # before a byte of the message is written
            if peer is None or peer[0] != node_id:
                raise _NotThatNode(f"{base_url} is not {node_id} (its certificate names {peer and peer[0]!r})")
            try:
                self.identity.vouch(node_id, peer[1], self.clock())  # operator-CA mode: its live board card seen
            except AuthError as exc:
                raise _Unvouched(f"{node_id} at {base_url}: {exc}") from exc
            try:
                return None if self.identity.pins.pinned(node_id, peer[1]) else pin(peer[1])
            except AuthError as exc:
                raise _NotThatNode(f"{node_id} at {base_url}: {exc}") from exc

        try:
            a = await self.connections.request(base_url, method, target, headers, content, total, connect, is_node)
        except _Unvouched as exc:  # our own check's 401: the caller asks signed (and so for SIGNED_ONLY_S)
            log.info("direct exchange with %s not sent: %s", node_id, exc)
            return 401, {"detail": str(exc)}
        except _NotThatNode as exc:
            raise PeerCallError(str(exc)) from exc
        except PeerBusyError as exc:
            raise PeerCallError(f"{node_id}: {exc}", busy=True) from exc
        except (OSError, asyncio.TimeoutError) as exc:
            raise PeerCallError(f"{node_id} unreachable: {type(exc).__name__}: {exc}") from exc
        if len(a.content) > wire.MAX_BODY:
            raise PeerCallError(f"{node_id} answered {len(a.content)} bytes", a.status)
        try:
            return a.status, json.loads(a.content)
        except ValueError as exc:
            raise PeerCallError(f"{node_id} answered non-JSON", a.status) from exc

    async def _exchange(
        self,
        node_id: str,
        base_url: str,
        method: str,
        target: str,
        headers: dict[str, str],
        content: bytes,
        timeout: httpx.Timeout | float,
    ) -> tuple[int, Mapping[str, str], bytes]:
        """(status, headers, body) of one HTTP exchange: our kept connections, or the given httpx client. On our
        connections the listener's certificate must name ``node_id`` (with its pinned key, when one is pinned) before
        a byte of the signed request is written: a request (and the unsigned refusals it draws, agent.boot_ids) is
        exchanged with the addressed node only, never with another cluster member listening at that URL."""
        if self.http is None:
            total, connect = _seconds(timeout)

            def is_node(peer: PeerIdentity | None) -> None:
                if peer is None or peer[0] != node_id:
                    raise _NotThatNode(f"{base_url} is not {node_id} (its certificate names {peer and peer[0]!r})")
                try:
                    self.identity.pins.pinned(node_id, peer[1])  # pinned to another key: AuthError; unpinned: the
                except AuthError as exc:  # signed answer's card pins it (verify_response_async)
                    raise _NotThatNode(f"{node_id} at {base_url}: {exc}") from exc

            try:
                a = await self.connections.request(base_url, method, target, headers, content, total, connect,
                                                   is_node if self.connections.tls is not None else None)  # fmt: skip
            except _NotThatNode as exc:
                raise PeerCallError(str(exc)) from exc
            except PeerBusyError as exc:
                raise PeerCallError(f"{node_id}: {exc}", busy=True) from exc
            except (OSError, asyncio.TimeoutError) as exc:  # PeerHttpError is an OSError
                raise PeerCallError(f"{node_id} unreachable: {type(exc).__name__}: {exc}") from exc
            return a.status, a.headers, a.content
        try:
            r = await self.http.request(method, base_url + target, content=content, headers=headers, timeout=timeout)
        except (httpx.HTTPError, httpx.InvalidURL) as exc:  # InvalidURL: not an HTTPError
            raise PeerCallError(f"{node_id} unreachable: {type(exc).__name__}: {exc}") from exc
        return r.status_code, r.headers, r.content

    # -- the leader's seams (agent.leadership) --------------------------------------------------------
    def _routed(self, url: str) -> tuple[str, str, str]:
        for prefix_len in range(len(url), 0, -1):
            if prefix_len < len(url) and url[prefix_len] != "/":
                continue
            hit = self.route(url[:prefix_len])
            if hit is not None:
                return hit[0], hit[1], url[prefix_len:] or "/"
        raise PeerCallError(f"no admitted node serves {url}")

    async def get_json(
        self,
        url: str,
        params: Mapping[str, Any] | None = None,
        timeout: httpx.Timeout | float = TIMEOUT,
        stamp: list[float] | None = None,
    ) -> Any:
        """GET a stats route of the node behind agent URL ``url``; the answer is validated and re-encoded.
        ``stamp``: as ``call``'s (the node's clock as it answered)."""
        node_id, base, path = self._routed(url)
        status, data = await self.call(node_id, base, "GET", path, params, timeout=timeout, stamp=stamp)
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


def _seconds(timeout: httpx.Timeout | float) -> tuple[float, float]:
    """(whole exchange, connect) in seconds from an httpx-style timeout."""
    if isinstance(timeout, httpx.Timeout):
        total = timeout.read if timeout.read is not None else TIMEOUT.read
        return float(total or 0.0), float(timeout.connect if timeout.connect is not None else total or 0.0)
    return float(timeout), float(timeout)


def _parse_answer(path: str, data: Any, since: int) -> wire.NodeStats | wire.ModelStats | wire.RequestPage:
    if path == wire.ROUTE_STATS_NODE:
        return wire.NodeStats.parse(data)
    if path == wire.ROUTE_STATS_MODELS:
        return wire.ModelStats.parse(data)
    if path == wire.ROUTE_STATS_REQUESTS:
        return wire.RequestPage.parse(data, since)
    raise wire.WireError(f"no parser for {path}")


def _json(answer: bytes) -> Any:
    """``answer`` parsed as JSON, or None."""
    try:
        return json.loads(answer)
    except ValueError:
        return None


def _stated(answer: bytes) -> str:
    """The ``error`` an answer states (input from whoever answered), or "" when it states none. A peer's own
    refusals before it could authenticate us are unsigned, so this is the only place their reason shows up on our
    side (the log), and how an agent older than boot ids is told (agent.boot_ids.old_agent)."""
    try:
        error = json.loads(answer[:4096]).get("error") if answer.startswith(b"{") else None
    except (ValueError, AttributeError):
        return ""
    return error if isinstance(error, str) else ""
