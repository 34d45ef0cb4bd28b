"""The agent's HTTP API (FastAPI): client paths, TF-Serving proxy, leader-facing stats and control.

    GET  /services[/{model}], /services/{model}/v1|v2/..., /v1/models/..., /v2/...   agent/serving/routes.py
    GET  /stats/requests?since=CURSOR      request log, cursor-paged (reader token: `peerserve stats-token`)
    GET  /stats/models                     per model: requests since provisioned, last request
    GET  /stats/node                       memory, CPU, GPU, instances
    GET  /cluster                          membership, leader, term (and this node's peer port, a hint)

Peer-plane routes (membership, election, the leader's commands, and the leader's stats reads) live on the
authenticated peer listener (agent.peer_api: mutual TLS on --peer-port, every message signed).
    GET  /health                           liveness and readiness detail

Clients may report their measured RTT to nodes with the header ``X-Peerserve-RTT: n1=2.5, n2=4.1``
(milliseconds) or the query parameter ``rtt=n1:2.5,n2:4.1``; ``X-Peerserve-Client`` names the client
(default: its address; at most ``max_clients_per_address`` ids per address, agent/client_ids.py). Every
error is JSON ``{"error": "..."}``; bad input is a 4xx, never a 500. Body size and read deadlines:
agent/http_limits.py. Interactive docs (/docs, /redoc, /openapi.json) only with ``api_docs = true``.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from agent.browser_guard import BrowserGuard, host_rule
from agent.client_auth import ClientToken, HttpsListener
from agent.client_ids import BadClientInput, ClientIds, known_nodes_only, parse_rtt_report, scoped, valid_client_id
from agent.http_limits import HttpLimits
from agent.identity import derive_stats_token
from agent.node import NodeAgent
from agent.observe import mount as mount_operator_routes
from agent.serving.routes import mount_serving

log = logging.getLogger(__name__)

RTT_HEADER = "x-peerserve-rtt"
CLIENT_HEADER = "x-peerserve-client"
MAX_CURSOR = 2**63 - 1  # SQLite's largest integer


def error(status: int, message: str, **extra: Any) -> JSONResponse:
    headers = {"Retry-After": str(extra.pop("retry_after"))} if "retry_after" in extra else None
    return JSONResponse({"error": message, **extra}, status_code=status, headers=headers)


def create_app(agent: NodeAgent) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await agent.start()
        https = HttpsListener(app, agent.settings) if agent.settings.https_port else None
        if https is not None:
            await https.start()
            app.state.https_listener = https  # the agent's server begins its stop with the client port's
        try:
            yield
        finally:
            if https is not None:
                await https.stop()
            await agent.stop()
            await app.state.serving.pool.aclose()

    docs = agent.settings.api_docs
    app = FastAPI(
        title="peerserve agent",
        version="1",
        lifespan=lifespan,
        docs_url="/docs" if docs else None,
        redoc_url="/redoc" if docs else None,
        openapi_url="/openapi.json" if docs else None,
    )
    app.state.agent = agent
    max_body = int(agent.settings.max_body_mb * 2**20)
    app.add_middleware(
        HttpLimits,
        max_body=max_body,
        body_timeout_s=agent.settings.body_timeout_s,
        max_header_bytes=agent.settings.max_header_kb * 1024,
    )
    if agent.settings.client_token:  # optional: the client API is open by default (agent/client_auth.py)
        app.add_middleware(ClientToken, token=agent.settings.client_token)
    # outermost: a page on another site, or one that re-pointed its name at us, is refused before anything runs
    app.add_middleware(BrowserGuard, rule=host_rule(agent.settings.node_id, agent.settings.allowed_hosts))
    client_ids = ClientIds(agent.settings.max_clients_per_address, agent.settings.request_window_s)
    mount_operator_routes(app, agent)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_r: Request, exc: StarletteHTTPException) -> JSONResponse:
        response = error(exc.status_code, str(exc.detail))
        response.headers.update(exc.headers or {})
        return response

    @app.exception_handler(RequestValidationError)
    async def validation_error(_r: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return error(422, f"invalid request: {where}: {first.get('msg', 'invalid')}")

    def client_of(request: Request) -> tuple[str, dict[str, float]] | JSONResponse:
        """(client id to record, its RTT report about known nodes), or a 400 naming the bad input."""
        claimed = request.headers.get(CLIENT_HEADER)
        if claimed is not None and not valid_client_id(claimed):
            return error(400, "invalid X-Peerserve-Client: 1-128 of letters, digits and _ . : @ - expected")
        try:
            rtts = parse_rtt_report(request.headers.get(RTT_HEADER), request.query_params.get("rtt"))
        except BadClientInput as exc:
            return error(400, f"malformed RTT report ({exc}): use 'X-Peerserve-RTT: node=ms, ...' or '?rtt=node:ms'")
        address = request.client.host if request.client else "unknown"
        client = scoped(client_ids.resolve(address, claimed, agent.clock()), address)  # id@address
        nodes = {agent.settings.node_id, *(p.node_id for p in agent.peers.members())}
        return client, known_nodes_only(rtts, nodes)

    serving = mount_serving(app, agent, client_of, max_body)
    app.state.serving = serving

    reader = derive_stats_token(agent.settings.cluster_token) if agent.settings.cluster_token else ""

    @app.get("/stats/requests")
    async def stats_requests(
        request: Request, since: int = Query(0, ge=0, le=MAX_CURSOR), limit: int = Query(1000, ge=1, le=10000)
    ) -> Any:
        """The request log names clients: it needs the reader token derived from the cluster token."""
        if (denied := _check_reader(reader, request.headers.get("authorization"))) is not None:
            return denied
        records, cursor = agent.store.requests_since(since, limit)
        return {"node_id": agent.settings.node_id, "requests": [r.to_dict() for r in records], "next": cursor}

    @app.get("/stats/models")
    async def stats_models() -> Any:
        return agent.models_report()

    @app.get("/stats/node")
    async def stats_node() -> Any:
        return agent.node_report()

    @app.get("/cluster")
    async def cluster() -> Any:
        s = agent.settings
        m = agent.node_metrics()
        me = {
            "node_id": s.node_id,
            "address": s.advertise_address or s.host,
            "api_url": s.api_url,
            "status": "alive",
            "models": sorted({i.model for i in agent.state.instances if i.id in agent.state.ready}),
            "mem_available_mb": round(m.mem_available_mb, 1),
            "gpu_load": m.gpu_percent,
        }
        lead = agent.leadership
        placement = lead.last_placement if lead is not None and lead.is_leader else agent.last_placement
        answer = {
            "node_id": s.node_id,
            "leader": lead.leader if lead is not None else None,
            "term": lead.term if lead is not None else None,
            "role": lead.machine.role.value if lead is not None else None,
            "peer_port": s.peer_listen_port,
            "members": [me, *(p.to_dict() for p in agent.peers.members())],
            "last_placement": placement,
        }
        sync = agent.discovery.revocations if agent.discovery is not None else None
        if sync is not None:  # operator-CA mode: the stamp of the list in force here, and each member's last said
            own = sync.advert()
            held = sync.revocations.in_force_from  # the operator's file or the synced one (members' lists)
            answer["revocations"] = {"stamp": own[0] if own is not None else None,
                                     "file": str(held) if held is not None else None,
                                     "members": sync.members()}  # fmt: skip
        return answer

    @app.get("/health")
    async def health() -> Any:
        return agent.health_report()

    return app


def _check_reader(expected: str, header: str | None) -> JSONResponse | None:
    """None when ``header`` carries the request-log reader token; else a 401 that says how to get one."""
    if not expected:
        return error(401, "this agent has no cluster token: its request log is not served on the client port")
    scheme, _, token = (header or "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), expected.encode()):
        return error(401, "the request log names clients: send 'Authorization: Bearer READER' (peerserve stats-token)")
    return None
