"""The cluster page's security headers (agent/observe.py ``PAGE_HEADERS``), on the routes alone (review27a Info).

Pure: the operator routes mounted on a bare FastAPI app, asked in process (httpx.ASGITransport).
"""

from __future__ import annotations

import asyncio
import re
from types import SimpleNamespace

import httpx
from fastapi import FastAPI

from agent import observe
from agent.telemetry import LatencyWindow

CSP = "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"


def ask(*paths: str) -> list[httpx.Response]:
    app = FastAPI()
    telemetry = SimpleNamespace(enabled=False, latencies=LatencyWindow())
    settings = SimpleNamespace(node_id="n1", metrics_token="", api_url="http://127.0.0.1:8400")
    observe.mount(app, SimpleNamespace(telemetry=telemetry, settings=settings))  # type: ignore[arg-type]

    async def main() -> list[httpx.Response]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://n1") as http:
            return [await http.get(p) for p in paths]

    return asyncio.run(main())


def test_the_page_and_its_assets_forbid_framing_sniffing_and_anything_off_the_agent() -> None:
    """review27a Info: the page, /ui and its assets sent no security header, and a cross-site <iframe> of the page
    passed the browser guard (it checks Host and Origin). Now each sends the CSP, nosniff and X-Frame-Options: DENY;
    /ui/latency (JSON) nosniff."""
    for r in ask("/", "/ui", "/ui/static/app.js", "/ui/static/style.css"):
        assert r.status_code == 200
        assert r.headers["content-security-policy"] == CSP
        assert r.headers["x-content-type-options"] == "nosniff" and r.headers["x-frame-options"] == "DENY"
        assert r.headers["cache-control"] == "no-cache"
    (latency,) = ask("/ui/latency?span_s=180&bin_s=5")
    assert latency.status_code == 200 and latency.json()["models"] == {}
    assert latency.headers["x-content-type-options"] == "nosniff"


def test_the_page_needs_nothing_the_policy_refuses() -> None:
    """The CSP allows scripts and styles from the agent alone: the page must have no inline script, inline style,
    style attribute or event handler, and the script must set no style (each would be refused, the page broken)."""
    (page, script) = ask("/", "/ui/static/app.js")
    html = page.text
    assert re.findall(r"<script\b[^>]*>", html) == ['<script src="/ui/static/app.js">']
    assert "<style" not in html and " style=" not in html and not re.search(r"\son[a-z]+=", html)
    assert ".style" not in script.text and '"style"' not in script.text and "innerHTML" not in script.text
    assert "eval(" not in script.text and "new Function" not in script.text
