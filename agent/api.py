"""The agent's HTTP API (FastAPI): client paths, TF-Serving proxy, leader-facing stats and control.

    GET  /services                         best endpoint of every deployed model (whole cluster)
    GET  /services/{model}                 best endpoint for this client, with `why`
    ANY  /services/{model}/v1/models/...   TF-Serving REST proxied to the best endpoint
    GET  /stats/requests?since=CURSOR      request log for the leader (cursor-paged)
    GET  /stats/models                     per model: requests since provisioned, last request
    GET  /stats/node                       memory, CPU, GPU, instances
    PUT  /control/desired                  the leader's desired set (cluster token; term-fenced)
    GET  /cluster                          membership, leader, term
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
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from agent.catalogue import valid_model_name
from agent.client_ids import BadClientInput, ClientIds, known_nodes_only, parse_rtt_report, valid_client_id
from agent.decisions import Choice, best_per_model, rank_endpoints
from agent.http_limits import HttpLimits
from agent.node import FencedError, NodeAgent, UnknownModelError
from agent.observe import mount as mount_operator_routes

log = logging.getLogger(__name__)

RTT_HEADER = "x-peerserve-rtt"
CLIENT_HEADER = "x-peerserve-client"
PROXY_PATH = re.compile(
    r"^v1/models/(?P<model>[^/:]+)(?:/versions/\d+|/labels/[A-Za-z0-9_-]+)?(?:/metadata|:predict|:classify|:regress)?$"
)
HOP_HEADERS = {"content-type", "accept", "accept-encoding"}
CONTROL_MAX_BYTES = 64 * 1024
MAX_CURSOR = 2**63 - 1  # SQLite's largest integer
RTT_ENTRY = r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}%s[0-9.eE+-]{1,12}"
CLIENT_INPUT = {  # parsed by client_of(), described here so the schema (and schemathesis) knows them
    "parameters": [
        {"name": "X-Peerserve-RTT", "in": "header", "required": False,
         "schema": {"type": "string", "pattern": f"^{RTT_ENTRY % '='}(, ?{RTT_ENTRY % '='})*$"},
         "description": "the client's measured RTT to nodes in ms: 'node=ms, node=ms' (0-60000, <= 64 nodes)"},
        {"name": "X-Peerserve-Client", "in": "header", "required": False,
         "schema": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,127}$"},
         "description": "the client's id (default: its address; a few per address count, the rest as the address)"},
        {"name": "rtt", "in": "query", "required": False,
         "schema": {"type": "string", "pattern": f"^{RTT_ENTRY % ':'}(,{RTT_ENTRY % ':'})*$"},
         "description": "the client's measured RTT to nodes in ms: 'node:ms,node:ms'"},
    ]
}  # fmt: skip


class DesiredBody(BaseModel):
    term: int = Field(ge=0)
    leader: str = Field(min_length=1, max_length=64)
    instances: dict[str, int]
    placement: dict[str, Any] | None = None


def error(status: int, message: str, **extra: Any) -> JSONResponse:
    headers = {"Retry-After": str(extra.pop("retry_after"))} if "retry_after" in extra else None
    return JSONResponse({"error": message, **extra}, status_code=status, headers=headers)


def create_app(agent: NodeAgent) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await agent.start()
        try:
            yield
        finally:
            await agent.stop()

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
        client = client_ids.resolve(address, claimed, agent.clock())
        nodes = {agent.settings.node_id, *(p.node_id for p in agent.peers.members())}
        return client, known_nodes_only(rtts, nodes)

    def known_rtts(client: str, reported: dict[str, float]) -> dict[str, float]:
        return agent.client_rtts(client, reported)

    def endpoint_json(choice: Choice) -> dict[str, Any]:
        c = choice.candidate
        return {"model": c.model, "node": c.node, "url": c.url, "why": choice.why()}

    async def choose(model: str, request: Request) -> tuple[list[Choice], str, dict[str, float]] | JSONResponse:
        """Ranked endpoints for ``model``; provisions on demand; JSON error when there is none."""
        if not valid_model_name(model):
            return error(400, f"invalid model name {model[:80]!r}")
        spec = agent.catalogue.current.get(model)
        if spec is None:
            return error(
                404,
                f"unknown model {model!r}: not in the catalogue",
                models=sorted(agent.catalogue.current.models),
            )
        who = client_of(request)
        if isinstance(who, JSONResponse):
            return who
        client, reported = who
        rtts = known_rtts(client, reported)
        ranked = rank_endpoints(agent.candidates(model), rtts)
        if not ranked:
            target, reason = agent.provision_decision(spec)
            if target is None:
                agent.store.record_request(time.time(), model, client, reported, None, None, 507)
                return error(507, f"{model} cannot be placed: {reason}")
            if target == agent.settings.node_id and await agent.provision_locally(
                model, agent.settings.provision_wait_s
            ):
                ranked = rank_endpoints(agent.candidates(model), rtts)
            if not ranked:
                agent.store.record_request(time.time(), model, client, reported, None, None, 503)
                return error(503, f"{model} is being provisioned ({reason}); retry shortly", retry_after=2)
        return ranked, client, reported

    @app.get("/services", openapi_extra=CLIENT_INPUT)
    async def services(request: Request) -> Any:
        who = client_of(request)
        if isinstance(who, JSONResponse):
            return who
        client, reported = who
        best = best_per_model(agent.candidates(), known_rtts(client, reported))
        return JSONResponse([endpoint_json(choice) for choice in best.values()])

    @app.get("/services/{model}", openapi_extra=CLIENT_INPUT)
    async def service(model: str, request: Request) -> Any:
        chosen = await choose(model, request)
        if isinstance(chosen, JSONResponse):
            return chosen
        ranked, client, reported = chosen
        agent.store.record_request(time.time(), model, client, reported, ranked[0].candidate.node, None, 200)
        return JSONResponse({**endpoint_json(ranked[0]), "alternatives": [endpoint_json(c) for c in ranked[1:4]]})

    @app.api_route("/services/{model}/{path:path}", methods=["GET", "POST"], openapi_extra=CLIENT_INPUT)
    async def proxy(model: str, path: str, request: Request) -> Response:
        match = PROXY_PATH.fullmatch(path)
        if match is None or match.group("model") != model:
            return error(400, f"not a TF-Serving REST path for {model!r}: /{path[:100]}")
        chosen = await choose(model, request)
        if isinstance(chosen, JSONResponse):
            return chosen
        ranked, client, reported = chosen
        body = await request.body()
        if len(body) > max_body:
            return error(413, f"request body over {max_body} bytes")
        headers = {k: v for k, v in request.headers.items() if k.lower() in HOP_HEADERS}
        for choice in ranked[:2]:  # the best, then one retry elsewhere if it is unreachable
            target = choice.candidate
            started = time.perf_counter()
            try:
                upstream = await agent.http.request(
                    request.method,
                    f"{target.url}/{path}",
                    params=_forward_params(request),
                    content=body,
                    headers=headers,
                )
            except httpx.HTTPError as exc:
                log.warning("proxy to %s (%s) failed: %s", target.url, target.node, exc)
                continue
            latency = 1000 * (time.perf_counter() - started)
            if upstream.status_code < 500:
                agent.record_latency(target.node, model, latency)
            agent.store.record_request(time.time(), model, client, reported, target.node, latency, upstream.status_code)
            media = upstream.headers.get("content-type", "application/json")
            return Response(upstream.content, status_code=upstream.status_code, media_type=media)
        agent.store.record_request(time.time(), model, client, reported, None, None, 502)
        return error(502, f"no endpoint of {model} answered")

    @app.get("/stats/requests")
    async def stats_requests(
        since: int = Query(0, ge=0, le=MAX_CURSOR), limit: int = Query(1000, ge=1, le=10000)
    ) -> Any:
        records, cursor = agent.store.requests_since(since, limit)
        return {"node_id": agent.settings.node_id, "requests": [r.to_dict() for r in records], "next": cursor}

    @app.get("/stats/models")
    async def stats_models() -> Any:
        stats = agent.store.model_stats()
        out: dict[str, dict[str, Any]] = {}
        for inst in agent.state.instances:
            entry = out.setdefault(inst.model, {"instances": 0, "ready": 0, **stats.get(inst.model, {})})
            entry["instances"] += 1
            entry["ready"] += int(inst.id in agent.state.ready)
        return {"node_id": agent.settings.node_id, "models": out}

    @app.get("/stats/node")
    async def stats_node() -> Any:
        s = agent.settings
        return {
            "node_id": s.node_id,
            "node_class": s.node_class,
            "compute": s.compute,
            "api_url": s.api_url,
            **agent.node_metrics().to_dict(),
            "instances": [{**i.to_dict(), "ready": i.id in agent.state.ready} for i in agent.state.instances],
            "desired": dict(agent.desired.instances),
            "term": agent.store.highest_term(),
        }

    @app.put("/control/desired")
    async def control_desired(request: Request) -> Any:
        denied = _check_token(agent.settings.cluster_token, request.headers.get("authorization"))
        if denied is not None:
            return denied
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            return error(415, "Content-Type must be application/json")
        raw = await request.body()
        if len(raw) > CONTROL_MAX_BYTES:
            return error(413, f"control body over {CONTROL_MAX_BYTES} bytes")
        try:
            body = DesiredBody.model_validate_json(raw)
        except ValidationError as exc:
            first = exc.errors()[0]
            return error(400, f"invalid desired set: {'.'.join(str(p) for p in first['loc'])}: {first['msg']}")
        if any(c < 0 for c in body.instances.values()) or any(not valid_model_name(m) for m in body.instances):
            return error(400, "instances must map catalogue model names to non-negative counts")
        try:
            state = agent.set_desired(body.term, body.leader, body.instances, body.placement)
        except FencedError as exc:
            return error(409, str(exc), highest_term=exc.highest)
        except UnknownModelError as exc:
            return error(400, str(exc))
        return {
            "accepted": True,
            "term": state.term,
            "leader": state.leader,
            "instances": dict(state.instances),
        }

    @app.get("/peer/state")
    async def peer_state() -> Any:
        if agent.discovery is not None and agent.discovery.stopping:
            return error(503, "this node is leaving")
        return JSONResponse(agent.peer_state())

    def peer_denied(request: Request) -> JSONResponse | None:
        """Peer-to-peer messages carry the cluster token when one is configured (an open cluster has none)."""
        if not agent.settings.cluster_token:
            return None
        return _check_token(agent.settings.cluster_token, request.headers.get("authorization"))

    @app.post("/peer/leave")
    async def peer_leave(request: Request) -> Any:
        if (denied := peer_denied(request)) is not None:
            return denied
        try:
            body = await request.json()
            node_id = body["node_id"]
            if not isinstance(node_id, str):
                raise TypeError(node_id)
        except (ValueError, KeyError, TypeError):
            return error(400, 'expected {"node_id": "..."}')
        if agent.discovery is not None:
            agent.discovery.peer_left(node_id)
        return {"ok": True}

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
        return {
            "node_id": s.node_id,
            "leader": lead.leader if lead is not None else None,
            "term": lead.term if lead is not None else None,
            "role": lead.machine.role.value if lead is not None else None,
            "members": [me, *(p.to_dict() for p in agent.peers.members())],
            "last_placement": placement,
        }

    @app.post("/election/message")
    async def election_message(request: Request) -> Any:
        if (denied := peer_denied(request)) is not None:
            return denied
        if agent.leadership is None:
            return error(409, "this node takes no part in elections (discovery is off)")
        try:
            body = await request.json()
            sender = body["from"]
            if not isinstance(sender, str):
                raise TypeError(sender)
            agent.leadership.receive(sender, body["message"])
        except (ValueError, KeyError, TypeError) as exc:
            return error(400, f"malformed election message: {exc}")
        return {"ok": True}

    @app.get("/health")
    async def health() -> Any:
        return agent.health_report()

    return app


def _forward_params(request: Request) -> list[tuple[str, str | int | float | bool | None]]:
    return [(k, v) for k, v in request.query_params.multi_items() if k != "rtt"]


def _check_token(expected: str, header: str | None) -> JSONResponse | None:
    if not expected:
        return error(401, "control API disabled: this agent has no cluster token configured")
    scheme, _, token = (header or "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), expected.encode()):
        return error(401, "missing or wrong cluster token (Authorization: Bearer TOKEN)")
    return None
