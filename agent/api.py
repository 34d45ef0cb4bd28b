"""The agent's HTTP API (FastAPI): client paths, TF-Serving proxy, leader-facing stats and control.

    GET  /services                         best endpoint of every deployed model (whole cluster)
    GET  /services/{model}                 best endpoint for this client, with `why`
    ANY  /services/{model}/v1/models/...   TF-Serving REST proxied to the best endpoint
    GET  /stats/requests?since=CURSOR      request log for the leader (cursor-paged)
    GET  /stats/models                     per model: requests since provisioned, last request
    GET  /stats/node                       memory, CPU, GPU, instances
    GET  /cluster                          membership, leader, term (and this node's peer port, a hint)

Peer-plane routes (heartbeats, election, the leader's commands) are not here: they live on the
authenticated peer listener (agent.peer_api, mutual TLS on --peer-port).
    GET  /health                           liveness and readiness detail

Clients may report their measured RTT to nodes with the header ``X-Peerserve-RTT: n1=2.5, n2=4.1``
(milliseconds) or the query parameter ``rtt=n1:2.5,n2:4.1``; ``X-Peerserve-Client`` names the client
(default: its address). Every error is JSON ``{"error": "..."}``; bad input is a 4xx, never a 500.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from agent.catalogue import valid_model_name
from agent.decisions import Choice, best_per_model, rank_endpoints
from agent.node import NodeAgent

log = logging.getLogger(__name__)

RTT_HEADER = "x-peerserve-rtt"
CLIENT_HEADER = "x-peerserve-client"
PROXY_PATH = re.compile(
    r"^v1/models/(?P<model>[^/:]+)(?:/versions/\d+|/labels/[A-Za-z0-9_-]+)?(?:/metadata|:predict|:classify|:regress)?$"
)
HOP_HEADERS = {"content-type", "accept", "accept-encoding"}


def error(status: int, message: str, **extra: Any) -> JSONResponse:
    headers = {"Retry-After": str(extra.pop("retry_after"))} if "retry_after" in extra else None
    return JSONResponse({"error": message, **extra}, status_code=status, headers=headers)


def parse_rtts(header: str | None, query: str | None) -> dict[str, float]:
    """``n1=2.5, n2=4`` (header) or ``n1:2.5,n2:4`` (query) -> {node: ms}; ValueError when malformed."""
    out: dict[str, float] = {}
    for raw, sep in ((header, "="), (query, ":")):
        if not raw:
            continue
        for part in raw.split(","):
            part = part.strip()
            if not part:
                continue
            node, _, value = part.partition(sep)
            ms = float(value)
            if not node.strip() or not math.isfinite(ms) or ms < 0:
                raise ValueError(part)
            out[node.strip()] = ms
    if len(out) > 256:
        raise ValueError("too many nodes")
    return out


def create_app(agent: NodeAgent) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await agent.start()
        try:
            yield
        finally:
            await agent.stop()

    app = FastAPI(title="peerserve agent", version="1", lifespan=lifespan)
    app.state.agent = agent
    max_body = int(agent.settings.max_body_mb * 2**20)
    app.add_middleware(BodyLimit, max_body=max_body)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_r: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def validation_error(_r: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return error(422, f"invalid request: {where}: {first.get('msg', 'invalid')}")

    def client_of(request: Request) -> tuple[str, dict[str, float]] | JSONResponse:
        client = request.headers.get(CLIENT_HEADER) or (request.client.host if request.client else "unknown")
        try:
            rtts = parse_rtts(request.headers.get(RTT_HEADER), request.query_params.get("rtt"))
        except ValueError:
            return error(400, "malformed RTT report: use 'X-Peerserve-RTT: node=ms, node=ms' or '?rtt=node:ms,...'")
        return client[:128], rtts

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

    @app.get("/services")
    async def services(request: Request) -> Any:
        who = client_of(request)
        if isinstance(who, JSONResponse):
            return who
        client, reported = who
        best = best_per_model(agent.candidates(), known_rtts(client, reported))
        return JSONResponse([endpoint_json(choice) for choice in best.values()])

    @app.get("/services/{model}")
    async def service(model: str, request: Request) -> Any:
        chosen = await choose(model, request)
        if isinstance(chosen, JSONResponse):
            return chosen
        ranked, client, reported = chosen
        agent.store.record_request(time.time(), model, client, reported, ranked[0].candidate.node, None, 200)
        return JSONResponse({**endpoint_json(ranked[0]), "alternatives": [endpoint_json(c) for c in ranked[1:4]]})

    @app.api_route("/services/{model}/{path:path}", methods=["GET", "POST"])
    async def proxy(model: str, path: str, request: Request) -> Response:
        match = PROXY_PATH.match(path)
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
    async def stats_requests(since: int = Query(0, ge=0), limit: int = Query(1000, ge=1, le=10000)) -> Any:
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
            "peer_port": s.peer_listen_port,
            "members": [me, *(p.to_dict() for p in agent.peers.members())],
            "last_placement": placement,
        }

    @app.get("/health")
    async def health() -> Any:
        return agent.health_report()

    return app


class BodyLimit:
    """Refuse a declared body over ``max_body`` bytes before reading it (pure ASGI: no per-request task)."""

    def __init__(self, app: Any, max_body: int) -> None:
        self.app = app
        self.max_body = max_body

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            for name, value in scope["headers"]:
                if name == b"content-length":
                    if not value.isdigit():
                        await error(400, "invalid Content-Length")(scope, receive, send)
                        return
                    if int(value) > self.max_body:
                        await error(413, f"request body over {self.max_body} bytes")(scope, receive, send)
                        return
        await self.app(scope, receive, send)


def _forward_params(request: Request) -> list[tuple[str, str | int | float | bool | None]]:
    return [(k, v) for k, v in request.query_params.multi_items() if k != "rtt"]
