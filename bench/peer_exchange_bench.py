"""CPU of one membership exchange (POST /peer/swim: mutual TLS, signed both ways), client and listener in one process.

Two nodes' identities, a real peer listener (uvicorn, agent/peer_gate.py's TLS) answering with a real SWIM
driver, and a PeerClient sending pings one after another; the process's CPU time over ``--n`` exchanges is
the cost of both ends of one exchange. Variants, measured in the same run (same-run ratios, not absolute
figures, are the point on a shared machine):

    client  httpx   one httpx.AsyncClient per peer (what PeerClient used before agent/peer_http.py)
            lean    agent/peer_http.py's kept connections
    route   fastapi the FastAPI route (as agent/peer_api.py had it before agent/peer_swim_route.py)
            lean    agent/peer_swim_route.py ahead of FastAPI
    auth    signed  Ed25519 on request and answer (card, nonce, time; two signs and two verifies)
            direct  authenticated by the kept mutual-TLS connection (agent/peer_tls.py; lean client and route)
    writes  two     the listener sends an answer's head and body as uvicorn writes them (two TLS records)
            one     agent/peer_gate.py's CoalescingTransport: one TLS record and one send per answer
    parser  h11     uvicorn's pure-Python HTTP parser on the listener (before)
            httptools  uvicorn's httptools (C) parser (agent/peer_api.py peer_http_parser, when installed)

    .venv/bin/python bench/peer_exchange_bench.py [--n 2000] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import Response

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from agent import peer_api, peer_gate  # noqa: E402
from agent.discovery import swim as sw  # noqa: E402
from agent.discovery.swim_io import SwimDriver  # noqa: E402
from agent.identity import AuthError, Identity, StaleBoot  # noqa: E402
from agent.peer_api import PeerServer  # noqa: E402
from agent.peer_client import PeerClient, tls_context  # noqa: E402
from agent.peer_swim_route import SwimRoute  # noqa: E402
from peerserve import wire  # noqa: E402
from peerserve.wire import SwimMessage  # noqa: E402
from tests.service.conftest import TOKEN, free_port  # noqa: E402


@dataclass
class Membership:
    """What the route needs of agent.discovery.Discovery, around a real SWIM driver."""

    swim: SwimDriver
    stopping: bool = False

    async def handle_swim(self, sender: str, msg: SwimMessage) -> SwimMessage:
        return await self.swim.handle(sender, msg)


@dataclass
class Node:
    discovery: Membership

    def clock(self) -> float:
        return time.time()


def fastapi_route(app: FastAPI, node: Node, identity: Identity) -> None:
    """POST /peer/swim as a FastAPI route, the way agent/peer_api.py answered it before the lean route."""

    @app.post(wire.ROUTE_SWIM)
    async def peer_swim(request: Request) -> Response:
        body = b""
        async for chunk in request.stream():
            body += chunk
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        headers = {k.lower(): v for k, v in request.headers.items()}
        try:
            sender = await identity.verify_request_async(
                headers, request.method, target, body, node.clock(), mono=time.monotonic()
            )
        except StaleBoot as exc:  # as agent/peer_api.py answers it: signed, naming this run's boot id
            data = json.dumps(exc.answer(), separators=(",", ":")).encode()
            signed = identity.sign_response(exc.sender, exc.status, exc.nonce, data, node.clock())
            return Response(data, status_code=exc.status, media_type="application/json", headers=signed)
        except AuthError as exc:
            return Response(str(exc), status_code=exc.status)
        msg = wire.SwimMessage.parse(json.loads(body))
        answer = await node.discovery.handle_swim(sender, msg)
        data = json.dumps(answer.to_json(), separators=(",", ":")).encode()
        signed = identity.sign_response(sender, 200, headers[wire.H_NONCE], data, node.clock())
        return Response(data, media_type="application/json", headers=signed)


async def variant(
    tmp: Path,
    client_kind: str,
    route_kind: str,
    n: int,
    direct: bool = False,
    coalesce: bool = True,
    parser: str = "h11",
) -> dict[str, Any]:
    """CPU seconds per exchange (both ends) and handshakes for one (client, route, auth, writes, parser) variant."""
    peer_gate.COALESCE_WRITES = coalesce
    peer_api.peer_http_parser = lambda: parser  # type: ignore[assignment]
    a, b = Identity("a", TOKEN, tmp / "a"), Identity("b", TOKEN, tmp / "b")
    driver = SwimDriver("b", "https://127.0.0.1:1", PeerClient(b, lambda url: None), sw.SwimConfig(), lambda: None,  # type: ignore[arg-type,return-value]
                        lambda s, u: s, lambda t: None)  # fmt: skip
    node = Node(Membership(driver))
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    if route_kind == "lean":
        app.add_middleware(SwimRoute, agent=node, identity=b)  # type: ignore[arg-type]
    else:
        fastapi_route(app, node, b)
    port = free_port()
    server = PeerServer(app, b, "127.0.0.1", port)
    await server.start()
    http = None
    if client_kind == "httpx":
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=4, keepalive_expiry=25.0)
        http = httpx.AsyncClient(verify=tls_context(a), limits=limits)
    client = PeerClient(a, lambda url: None, http=http)
    url = f"https://127.0.0.1:{port}"
    msg = SwimMessage("ping", "a", 0, 1, "https://127.0.0.1:2").to_json()
    try:
        for _ in range(100):  # warm: the handshake, caches
            await client.call("b", url, "POST", wire.ROUTE_SWIM, body=msg, direct=direct)
        cpu, wall = time.process_time(), time.perf_counter()
        for _ in range(n):
            status, _ = await client.call("b", url, "POST", wire.ROUTE_SWIM, body=msg, direct=direct)
            assert status == 200
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    finally:
        await client.close()
        await server.stop()
    auth = "direct" if direct else "signed"
    return {"client": client_kind, "route": route_kind, "auth": auth, "writes": "one" if coalesce else "two",
            "parser": parser, "cpu_ms": 1000 * cpu / n, "wall_ms": 1000 * wall / n}  # fmt: skip


async def measure(n: int) -> list[dict[str, Any]]:
    out = []
    with tempfile.TemporaryDirectory(prefix="exchbench-") as tmp:
        variants = [("httpx", "fastapi", False, False, "h11"), ("lean", "fastapi", False, False, "h11"),
                    ("httpx", "lean", False, False, "h11"), ("lean", "lean", False, False, "h11"),
                    ("lean", "lean", True, False, "h11"), ("lean", "lean", True, True, "h11"),
                    ("lean", "lean", True, True, "httptools")]  # fmt: skip
        for i, (c, r, direct, coalesce, parser) in enumerate(variants):
            out.append(await variant(Path(tmp) / str(i), c, r, n, direct, coalesce, parser))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2000, help="exchanges per variant (default 2000)")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = ap.parse_args()
    rows = asyncio.run(measure(args.n))
    base = rows[0]["cpu_ms"]
    for r in rows:
        r["ratio_to_httpx_fastapi"] = r["cpu_ms"] / base
        r["load_avg_1m"] = os.getloadavg()[0]
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print("| client | /peer/swim route | auth | listener writes per answer | listener parser "
          "| CPU per exchange (both ends) | x httpx + FastAPI | wall per exchange |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['client']} | {r['route']} | {r['auth']} | {r['writes']} | {r['parser']} | {r['cpu_ms']:.3f} ms | "
              f"{r['ratio_to_httpx_fastapi']:.2f} | {r['wall_ms']:.3f} ms |")  # fmt: skip
    print(f"\nload average {os.getloadavg()[0]:.1f} (same run: compare the ratios)")


if __name__ == "__main__":
    main()
