"""What operators see, mounted into the agent's app by ``mount(app, agent)``.

    GET /metrics          Prometheus text format (agent.telemetry); 404 when metrics are off
    GET /sd/prometheus    the cluster's members in Prometheus's HTTP SD format (http_sd_configs)
    GET /  and  /ui       the cluster page (agent/ui/: plain HTML, CSS and JS, no library, no CDN)
    GET /ui/static/NAME   the page's assets
    GET /ui/latency       recent per-model latency through this agent, for the page's charts

/metrics and /sd/prometheus are open by default (they carry no client names and no secrets); with
``metrics_token`` set they need ``Authorization: Bearer TOKEN`` (Prometheus's ``authorization``; the bare
token is accepted too, as Prometheus 2.42's HTTP SD sends it when the config gives no ``type``).
"""

from __future__ import annotations

import hmac
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from fastapi import FastAPI, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response

from agent.telemetry import CONTENT_TYPE, RequestMetrics

if TYPE_CHECKING:
    from agent.node import NodeAgent

UI_DIR = Path(__file__).with_name("ui")
ASSETS = {"app.js": "text/javascript", "style.css": "text/css"}
# The page and its assets (review27a Info: none were sent, and a cross-site <iframe> of the page passes the
# browser guard, which checks Host and Origin, not framing). The page has no inline script or style and loads
# nothing from elsewhere (tests/service/test_cluster_page.py), so 'self' is all it needs; its favicon is a data:
# URL. Set on these routes alone, as constant headers: no middleware, nothing per request on the inference path.
PAGE_HEADERS = {
    "Cache-Control": "no-cache",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; "
    "form-action 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
}


def sd_targets(agent: NodeAgent) -> list[dict[str, Any]]:
    """One target group per member (this node included); dead members stay until forgotten so ``up`` drops to 0."""
    s = agent.settings
    rows = [(s.node_id, s.api_url, "alive")]
    rows += [(m.node_id, m.api_url, m.status) for m in agent.peers.members()]
    groups = []
    for node_id, url, status in sorted(rows):
        parts = urlsplit(url)
        if not parts.netloc:
            continue
        labels = {"node": node_id, "__meta_peerserve_status": status, "__scheme__": parts.scheme or "http"}
        groups.append({"targets": [parts.netloc], "labels": labels})
    return groups


def _denied(agent: NodeAgent, request: Request) -> JSONResponse | None:
    expected = agent.settings.metrics_token
    if not expected:
        return None
    header = request.headers.get("authorization", "").strip()
    scheme, _, token = header.partition(" ")
    # Prometheus 2.42's http_sd_configs sends the bare credentials when `authorization` has no `type:`
    presented = token.strip() if scheme.lower() == "bearer" else header
    if hmac.compare_digest(presented.encode(), expected.encode()):
        return None
    return JSONResponse(
        {"error": "this agent's metrics need a token (Authorization: Bearer TOKEN)"},
        status_code=401,
        headers={"WWW-Authenticate": "Bearer"},
    )


def mount(app: FastAPI, agent: NodeAgent) -> None:
    """Add the operator routes (and, when metrics are on, the request middleware) to ``app``."""
    telemetry = agent.telemetry
    if telemetry.enabled:
        app.add_middleware(RequestMetrics, telemetry=telemetry)

    @app.get("/metrics", include_in_schema=False)
    async def metrics(request: Request) -> Response:
        if not telemetry.enabled:
            return JSONResponse({"error": "metrics are off on this agent (metrics = false)"}, status_code=404)
        if (denied := _denied(agent, request)) is not None:
            return denied
        return Response(telemetry.exposition(), media_type=CONTENT_TYPE)

    @app.get("/sd/prometheus", include_in_schema=False)
    async def service_discovery(request: Request) -> Response:
        if (denied := _denied(agent, request)) is not None:
            return denied
        return JSONResponse(sd_targets(agent))

    @app.get("/", include_in_schema=False)
    @app.get("/ui", include_in_schema=False)
    async def page() -> Response:
        return FileResponse(UI_DIR / "index.html", media_type="text/html", headers=PAGE_HEADERS)

    @app.get("/ui/static/{name}", include_in_schema=False)
    async def asset(name: str) -> Response:
        if name not in ASSETS:
            return JSONResponse({"error": f"no asset {name[:80]!r}"}, status_code=404)
        return FileResponse(UI_DIR / name, media_type=ASSETS[name], headers=PAGE_HEADERS)

    @app.get("/ui/latency", include_in_schema=False)
    async def latency(span_s: float = Query(300.0, gt=0, le=3600), bin_s: float = Query(10.0, ge=1, le=600)) -> Any:
        series = telemetry.latencies.series(time.time(), span_s, bin_s)
        body = {"node_id": agent.settings.node_id, "span_s": span_s, "models": series}
        return JSONResponse(body, headers={"X-Content-Type-Options": "nosniff"})
