"""The peer listener: agent-to-agent routes over mutual TLS, every request and answer signed.

    GET  /peer/state                 this node's PeerState (admission, resource state; stamped with its
                                     membership version and incarnation)
    POST /peer/swim                  SWIM membership: ping, gossip, ping_req, sync (agent/discovery/swim.py;
                                     answered by agent/peer_swim_route.py ahead of FastAPI)
    POST /peer/leave                 the sender leaves (only for itself)
    POST /peer/provision             the sender asks this node to start a model (agent/serving/provision.py)
    POST /election/message           one election message (its node field must be the sender)
    PUT  /control/desired            the leader's desired set (only from the leader this node accepts)
    GET  /stats/node | /stats/models | /stats/requests?since=&limit=   for the leader's placement round
    GET  /peer/revocations?stamp=&offset=   operator-CA mode: a page of the operator's revocation list in force
                                     (agent/revocation_sync.py); 409 when it is not the one signed at ``stamp``

Requests without a valid card and signature (agent.identity) get 401/403 and are never acted on; replays
and stale messages are refused. Malformed or out-of-range fields are 400 (peerserve.wire), never a 500.
The listener runs inside the agent's process on ``--peer-port`` (PeerServer); interactive docs are off.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import logging
import ssl
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from agent import aio
from agent.decisions import memory_refusal
from agent.http_limits import PeerH11Protocol
from agent.identity import AuthError, Identity, StaleBoot
from agent.node import CapacityError, FencedError, UnknownModelError
from agent.operator_ca import MAX_REVOKED, REVOCATION_PAGE
from agent.peer_gate import gate_tls
from agent.peer_swim_route import SwimRoute
from agent.peer_tls import connection_state
from agent.rate_limit import SenderBuckets
from agent.serving.provision import ROUTE_PROVISION, provision_for_peer
from coordinator_election import (
    MAX_TERM_AHEAD,  # an election message may not push terms further than this past ours
    fencing,
)
from peerserve import names, wire

if TYPE_CHECKING:
    from agent.node import NodeAgent

log = logging.getLogger(__name__)

ELECTION_RATE = 5.0  # election messages per second one member may make us act on, past the burst
ELECTION_BURST = 20
# pages of the revocation list one member may ask for: a whole list is at most revocation_sync.MAX_PAGES (16) pages,
# and a member fetches it once (a newer stamp advertised); past that, 2 a second (each page up to ~140 KB to sign)
REVOCATION_RATE = 2.0
REVOCATION_BURST = 32
PEER_URL = names.PEER_URL  # IPv4 peer listeners, as Discovery announces them (peerserve/names.py)


def command_refusal(sender: str, cmd: wire.DesiredCommand, accepted: tuple[int, str | None] | None) -> str | None:
    """Why a desired set from ``sender`` is refused (None: accept); ``accepted`` = (term, leader) we follow."""
    if cmd.leader != sender:
        return f"{sender} cannot send commands in the name of {cmd.leader}"
    if accepted is None:  # no election here (discovery off): any admitted node, fenced by term
        return None
    return fencing.command_refusal(cmd.term, sender, *accepted)


def capacity_refusal(cmd: wire.DesiredCommand, mem_total_mb: float, mem_need: dict[str, float]) -> str | None:
    """Why the counts exceed what this node could ever hold (None: within capacity; agent.decisions.memory_refusal)."""
    return memory_refusal(cmd.instances, mem_need, mem_total_mb)


class _Signed:
    """Builds answers signed for the authenticated requester of one request."""

    def __init__(self, identity: Identity, clock: Any, sender: str, nonce: str) -> None:
        self.identity, self.clock, self.sender, self.nonce = identity, clock, sender, nonce

    def __call__(self, payload: Any, status: int = 200) -> Response:
        body = json.dumps(payload, separators=(",", ":")).encode()
        headers = self.identity.sign_response(self.sender, status, self.nonce, body, self.clock())
        return Response(body, status_code=status, media_type="application/json", headers=headers)

    def error(self, status: int, message: str, **extra: Any) -> Response:
        return self({"error": message, **extra}, status)


def create_peer_app(agent: NodeAgent, identity: Identity) -> FastAPI:
    """The peer-plane ASGI app of ``agent`` (no lifespan: the client app's lifespan runs the agent)."""
    app = FastAPI(title="peerserve peer plane", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(SwimRoute, agent=agent, identity=identity)  # POST /peer/swim, without the framework
    # an election message can make the leader take a new term (fsync and broadcast everywhere): per sender,
    # ELECTION_BURST at once, then ELECTION_RATE a second (an election needs a few; a loop is answered 429)
    election_buckets = SenderBuckets(ELECTION_RATE, ELECTION_BURST)
    app.state.election_buckets = election_buckets
    revocation_buckets = SenderBuckets(REVOCATION_RATE, REVOCATION_BURST)

    async def authenticate(request: Request) -> tuple[_Signed, bytes]:
        declared = request.headers.get("content-length", "0")
        if not declared.isdigit() or int(declared) > wire.MAX_BODY:
            raise AuthError("peer message body too large or malformed length", 413)
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > wire.MAX_BODY:
                raise AuthError("peer message body too large", 413)
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        headers = {k.lower(): v for k, v in request.headers.items()}
        source = request.client.host if request.client else ""
        sender = await identity.verify_request_async(
            headers, request.method, target, body, agent.clock(), source, mono=time.monotonic()
        )
        return _Signed(identity, agent.clock, sender, headers[wire.H_NONCE]), body

    def parse(body: bytes) -> Any:
        try:
            return json.loads(body)
        except ValueError as exc:
            raise wire.WireError("body is not JSON") from exc

    @app.exception_handler(AuthError)
    async def auth_error(request: Request, exc: AuthError) -> Response:
        host = request.client.host if request.client else "?"
        if isinstance(exc, StaleBoot):  # authentic, made for another run of this node: signed, naming ours
            log.info("refused a peer message from %s to %s: %s", host, request.url.path, exc)
            return _Signed(identity, agent.clock, exc.sender, exc.nonce)(exc.answer(), exc.status)
        log.warning("refused a peer message from %s to %s: %s", host, request.url.path, exc)
        headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after is not None else None
        return JSONResponse({"error": str(exc)}, status_code=exc.status, headers=headers)

    @app.get(wire.ROUTE_STATE)
    async def peer_state(request: Request) -> Response:
        reply, _ = await authenticate(request)
        if agent.discovery is not None and agent.discovery.stopping:
            return reply.error(503, "this node is leaving")
        if agent.discovery is not None:
            agent.discovery.swim.received["state"] += 1
        hint = request.query_params.get("peer", "")
        if agent.discovery is not None and PEER_URL.fullmatch(hint):
            # an authenticated node asks for our state: a hint of where it listens (its mDNS name may be squatted)
            agent.discovery.heard_from(reply.sender, hint)
        state = agent.peer_state()
        return reply((agent.discovery.stamp(state) if agent.discovery is not None else state).to_json())

    @app.post(ROUTE_PROVISION)
    async def peer_provision(request: Request) -> Response:
        reply, body = await authenticate(request)
        try:
            data = parse(body)
        except wire.WireError as exc:
            return reply.error(exc.status, str(exc))
        status, answer = provision_for_peer(agent, reply.sender, data)  # 202: in the desired set; reconcile starts it
        return reply(answer, status)

    @app.post(wire.ROUTE_LEAVE)
    async def peer_leave(request: Request) -> Response:
        reply, body = await authenticate(request)
        try:
            leave = wire.Leave.parse(parse(body))
        except wire.WireError as exc:
            return reply.error(exc.status, str(exc))
        if leave.node_id != reply.sender:
            return reply.error(403, "a node can only leave for itself")
        if agent.discovery is not None:
            agent.discovery.peer_left(reply.sender)
        return reply({"ok": True})

    @app.post(wire.ROUTE_ELECTION)
    async def election_message(request: Request) -> Response:
        reply, body = await authenticate(request)
        lead = agent.leadership
        if lead is None:
            return reply.error(409, "this node takes no part in elections (discovery is off)")
        try:
            post = wire.ElectionPost.parse(parse(body))
        except wire.WireError as exc:
            return reply.error(exc.status, f"malformed election message: {exc}")
        if post.node != reply.sender:
            return reply.error(403, f"{reply.sender} cannot speak for {post.node} in an election")
        if not election_buckets.allow(reply.sender, agent.clock()):
            return reply.error(429, f"{reply.sender} sends election messages faster than {ELECTION_RATE:g}/s")
        if post.term > lead.term + MAX_TERM_AHEAD:
            return reply.error(409, f"term {post.term} is too far ahead of ours ({lead.term})", term=lead.term)
        if reply.sender not in {m.node_id for m in agent.peers.members() if m.status != "dead"}:
            return reply.error(409, f"{reply.sender} is not an alive member here yet")
        lead.receive(reply.sender, post.to_json())
        return reply({"ok": True})

    @app.put(wire.ROUTE_DESIRED)
    async def control_desired(request: Request) -> Response:
        reply, body = await authenticate(request)
        try:
            cmd = wire.DesiredCommand.parse(parse(body))
        except wire.WireError as exc:
            return reply.error(exc.status, f"invalid desired set: {exc}")
        lead = agent.leadership
        if lead is None and agent.discovery is not None:  # starting: until the election runs, no one is obeyed
            return reply.error(
                503, "the election is not running yet on this node", highest_term=agent.store.highest_term()
            )
        why = command_refusal(reply.sender, cmd, (lead.term, lead.accepted) if lead is not None else None)
        if why is not None:
            return reply.error(409, why, highest_term=agent.store.highest_term())
        need = {m: s.mem_mb for m, s in agent.catalogue.current.models.items()}
        why = capacity_refusal(cmd, agent.node_metrics().mem_total_mb, need)
        if why is not None:
            return reply.error(400, why)
        try:
            state = agent.set_desired(cmd.term, cmd.leader, cmd.instances, dict(cmd.placement or {}) or None)
        except FencedError as exc:
            return reply.error(409, str(exc), highest_term=exc.highest)
        except (UnknownModelError, CapacityError) as exc:
            return reply.error(400, str(exc))
        return reply({"accepted": True, "term": state.term, "leader": state.leader, "instances": dict(state.instances)})

    @app.get(wire.ROUTE_REVOCATIONS)
    async def peer_revocations(request: Request) -> Response:
        reply, _ = await authenticate(request)
        if identity.operator is None:
            return reply.error(404, "no operator CA on this board: it keeps no revocation list")
        if not revocation_buckets.allow(reply.sender, agent.clock()):
            return reply.error(429, f"{reply.sender} asks for revocation list pages faster than {REVOCATION_RATE:g}/s")
        q = request.query_params
        try:
            stamp, offset = int(q.get("stamp", "")), int(q.get("offset", "0"))
            if not (0 <= stamp <= wire.MAX_TERM and 0 <= offset <= MAX_REVOKED):
                raise ValueError
        except ValueError:
            return reply.error(400, f"stamp must be in [0, 2**53] and offset in [0, {MAX_REVOKED}]")
        page = identity.operator.revocations.page(stamp, offset, REVOCATION_PAGE)
        if page is None:
            held = identity.operator.revocations.advert()
            return reply.error(409, f"this board holds no revocation list signed at {stamp}",
                               issued=held[0] if held is not None else None)  # fmt: skip
        return reply(page)

    @app.get(wire.ROUTE_STATS_NODE)
    async def stats_node(request: Request) -> Response:
        reply, _ = await authenticate(request)
        return reply(agent.node_report())

    @app.get(wire.ROUTE_STATS_MODELS)
    async def stats_models(request: Request) -> Response:
        reply, _ = await authenticate(request)
        return reply(agent.models_report())

    @app.get(wire.ROUTE_STATS_REQUESTS)
    async def stats_requests(request: Request) -> Response:
        reply, _ = await authenticate(request)
        q = request.query_params
        try:
            since, limit = int(q.get("since", "0")), int(q.get("limit", "1000"))
            if not (0 <= since <= wire.MAX_TERM and 1 <= limit <= wire.MAX_PAGE):
                raise ValueError
        except ValueError:
            return reply.error(400, f"since must be in [0, 2**53] and limit in [1, {wire.MAX_PAGE}]")
        records, cursor = agent.store.requests_since(since, limit)
        rows, cursor = fit_page([r.to_dict() for r in records], cursor)
        return reply({"node_id": agent.settings.node_id, "requests": rows, "next": cursor})

    return app


def fit_page(rows: list[dict[str, Any]], cursor: int, budget: int = wire.MAX_BODY - 1024) -> tuple[list[Any], int]:
    """The leading rows whose JSON fits ``budget`` bytes (at least one) and the cursor after the last of them.

    A peer answer over wire.MAX_BODY is refused by the reader, so a full page of long rows would fail the
    leader's gather from this node every round (seen in the chaos soak: 5,000 rows, 275 KB); the rest
    comes with the next page."""
    size = 0
    for n, row in enumerate(rows):
        size += len(json.dumps(row, separators=(",", ":"))) + 1
        if size > budget and n > 0:
            return rows[:n], int(rows[n - 1]["id"])
    return rows, cursor


def peer_http_parser() -> str | type[asyncio.Protocol]:
    """uvicorn's HTTP implementation for the peer listener: httptools (C) when installed, else h11 with the
    client port's parsing bounds (``PeerH11Protocol``: per loop turn, per connection, per address, chunks per
    body, and a total of its own).

    Every member answers several SWIM messages a second; h11's pure-Python parsing was a quarter of an idle
    member's CPU (bench/peer_exchange_bench.py, same run: 0.43 -> 0.30 ms per direct exchange, both ends). On
    the fallback, one connection's body of 1-byte chunks would hold the loop that runs SWIM and the election
    as it did on the client port (review 11a), from any holder of a cluster certificate."""
    if importlib.util.find_spec("httptools") is not None:
        return "httptools"
    return PeerH11Protocol


class _EmbeddedServer(uvicorn.Server):
    """A uvicorn server that leaves signal handling to the process's main (client API) server, and that looks
    for its exit once a second or when ``stop_soon`` says so (uvicorn's own loop wakes 10 times a second)."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self._exit = asyncio.Event()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def main_loop(self) -> None:
        counter = 0  # uvicorn's on_tick refreshes the date header when counter % 10 == 0: every tick here
        while not await self.on_tick(counter):
            counter = (counter + 10) % 864000
            with contextlib.suppress(asyncio.TimeoutError):
                await aio.wait_for(self._exit.wait(), 1.0)

    def stop_soon(self) -> None:
        """Exit now rather than at the next once-a-second look."""
        self.should_exit = True
        self._exit.set()


class PeerServer:
    """Runs the peer app on ``host:port`` with mutual TLS (only certificates of this cluster's CA)."""

    def __init__(self, app: FastAPI, identity: Identity, host: str, port: int) -> None:
        files = identity.tls_files
        if files is None:
            raise ValueError("the peer listener needs a data dir for its TLS files")
        config = uvicorn.Config(
            app, host=host, port=port, log_level=None, lifespan="off", http=peer_http_parser(),
            ssl_keyfile=str(files.key), ssl_certfile=str(files.cert), ssl_ca_certs=str(files.ca),
            ssl_cert_reqs=ssl.CERT_REQUIRED, timeout_keep_alive=30, limit_concurrency=256, log_config=None,
            ws="none",  # no WebSockets here: an upgrade would leave the connection's caps (review15c F4)
            # access_log=False would strip the process's shared "uvicorn.access" logger of its handlers
            access_log=True,
            timeout_graceful_shutdown=2,
        )  # fmt: skip
        # a stranger holds few handshakes, briefly; each request's scope names the node the client certificate proved;
        # a handshake that ends once the stop began is closed, not handed over (served after the stop's abort)
        self.server = _EmbeddedServer(
            gate_tls(config, connection_state=connection_state, stopping=lambda: self.server.should_exit)
        )
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self.server.serve())
        while not self.server.started:
            if self._task.done():
                self._task.result()  # raises what stopped it
                raise OSError("the peer listener did not start (port in use?)")
            await asyncio.sleep(0.02)

    async def stop(self) -> None:
        if self._task is None:
            return
        self.server.stop_soon()
        await asyncio.sleep(0.05)  # uvicorn stops accepting and asks idle connections to close
        for conn in list(self.server.server_state.connections):
            # An idle peer never answers TLS close_notify: abort rather than wait ssl_shutdown_timeout (30 s).
            transport = getattr(conn, "transport", None)
            if transport is not None:
                transport.abort()
        self.server.force_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
