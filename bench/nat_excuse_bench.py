"""How long a trickled body escapes the minimum-rate rule while its own address's other connections keep the
address in parse debt (docs/security.md: the trade-off of review15d F4's fix).

A hold of a connection's reading for the part of its address's parse debt that the address's other connections ran
up does not count against its body clocks (``_in_own_debt``): behind a NAT, those are other clients. The same rule
lets an attacker's own second (third...) connections run the address into debt so that its trickler's holds are
excused. One address (127.0.93.1) on the client port's protocol (``limited_protocol``, default budgets): a trickler
(a predict of Content-Length 100,000, one byte every 0.3 s: under the 1 s stall) and ``--debt`` connections
sending pipelined GETs of 150 headers each as fast as they are answered (header parsing is what h11 charges; no
body trick: 1-byte chunks are refused past 256). Measured: seconds until the trickler counts as waiting on its
client (``_body_stalled``: what lets a newcomer at a full cap take its place), capped at ``--limit``; the address's
debt and the share of that time the trickler's reading was held. Rounds alternate debt connections off and on.

    PYTHONPATH=. python bench/nat_excuse_bench.py --rounds 2 --debt 8
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import time
from typing import Any

import uvicorn
from uvicorn.server import ServerState

from agent.http_caps import limited_protocol

SOURCE = "127.0.93.1"
HEADERS = "".join(f"X-H{i}: {'v' * 20}\r\n" for i in range(150))
GET = f"GET /g HTTP/1.1\r\nHost: a\r\n{HEADERS}\r\n".encode()


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Read the whole body, answer an empty 200 (also the server app of the edge's unit tests)."""
    if scope["type"] != "http":
        return
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        more = bool(message.get("more_body"))
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"0")]})
    await send({"type": "http.response.body", "body": b""})


async def debt_runner(port: int, stop: asyncio.Event) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(SOURCE, 0))
    try:
        while not stop.is_set():
            writer.write(GET * 20)
            got = 0
            while got < 20 and not stop.is_set():
                data = await reader.read(65536)
                if not data:
                    return
                got += data.count(b"HTTP/1.1 200")
    except OSError:
        return
    finally:
        writer.close()


async def one_round(debt: int, limit_s: float) -> dict[str, Any]:
    config = uvicorn.Config(app, log_config=None, h11_max_incomplete_event_size=16384)
    config.load()
    protocol_class: Any = limited_protocol(10.0, 64, 30.0, body_timeout_s=120.0)
    state, made = ServerState(), []

    def make() -> Any:
        made.append(protocol_class(config=config, server_state=state, app_state={}))
        return made[-1]

    loop = asyncio.get_running_loop()
    server = await loop.create_server(make, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    stop = asyncio.Event()
    runners = [asyncio.ensure_future(debt_runner(port, stop)) for _ in range(debt)]
    await asyncio.sleep(3.0 if debt else 0.0)  # the address's debt builds up first
    _, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(SOURCE, 0))
    local = writer.get_extra_info("sockname")[1]
    writer.write(b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\n")
    began = loop.time()
    trickler, held, debts, stalled_at, next_byte = None, 0, [], None, began
    while loop.time() - began < limit_s:
        now = loop.time()
        if now >= next_byte:
            writer.write(b"x")
            next_byte = now + 0.3
        if trickler is None:
            trickler = next((p for p in made if p.client and p.client[1] == local), None)
        elif trickler.cycle is not None:
            held += trickler._reading_held
            debts.append(-trickler.shared.credit)
            if trickler._body_stalled():
                stalled_at = now - began
                break
        await asyncio.sleep(0.05)
    stop.set()
    writer.close()
    for task in runners:
        with contextlib.suppress(asyncio.CancelledError, OSError):
            await task
    server.close()
    samples = max(1, len(debts))
    return {"debt_connections": debt, "trickler_waiting_after_s": stalled_at,
            "held_share": round(held / samples, 2), "address_debt_s_max": round(max(debts, default=0.0), 2),
            "address_debt_s_mean": round(sum(debts) / samples, 2)}  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--debt", type=int, default=8)
    ap.add_argument("--limit", type=float, default=30.0)
    args = ap.parse_args()
    logging.getLogger("uvicorn.error").setLevel(logging.CRITICAL)  # the handlers cut off at each round's end
    report: dict[str, Any] = {"load_average": os.getloadavg(), "rounds": []}
    for _ in range(args.rounds):
        for debt in (0, args.debt):
            started = time.monotonic()
            r = asyncio.run(one_round(debt, args.limit))
            r["round_s"] = round(time.monotonic() - started, 1)
            print(json.dumps(r), flush=True)
            report["rounds"].append(r)
    report["load_average_end"] = os.getloadavg()
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
