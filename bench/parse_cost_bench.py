"""What one connection's body parsing costs the agent's event loop, before and after the parse budget.

The chunk rule (agent/http_limits.py) bounds a body's chunks by its size, so a sender can front-load bytes to
buy tiny chunks: one chunk of 8 MiB - 32,767 bytes, then 32,767 1-byte chunks (8 MiB in all, within every
bound). Two parts, each alternating the protocol before (``--before``: another checkout's agent/http_limits.py,
e.g. main's) and this checkout's, in the same run. Each in-process measurement runs in a process of its own with
its checkout first on ``sys.path`` (review15c F7: loaded by path, a post-split before's ``from agent.http_caps
import`` resolved to this checkout, which was then compared with itself):

- in-process: a uvicorn server with each protocol and an app that reads the whole body; a ticker on the same
  loop records how late each 1 ms sleep wakes (the loop's longest turn), while (a) the front-loaded body and
  (b) an honest 8 MiB upload (64 KiB chunks; and Content-Length) are sent from another thread. Reported: the
  request's time, the loop's lag p99 / max, and the CPU the loop thread spent.
- real agents (``--agents``): an agent from each checkout; ``--attackers`` connections (2) send front-loaded
  bodies (POST /health: 405, each body drained by h11) one after another, kept alive (the header deadline cuts
  one off after 10 s: it reconnects), while /health is timed on new connections; and the agent's CPU.
  ``--addresses N`` spreads the senders over N source addresses (127.0.79.x): many addresses against the budget
  of all of them together (``ParseTurns``) rather than one address's.
- in-process flood (``--flood N``): N addresses x 4 connections (127.0.79.x) send front-loaded 2 MiB bodies and
  pipelined 2,500-header requests at once while a keep-alive client from another address sends small predicts
  one after another for ``--seconds``: parsing CPU a second, the loop's CPU, the honest answers, the loop's lag.

    .venv/bin/python bench/parse_cost_bench.py --before /work/main [--rounds 3] [--agents] [--json]
    .venv/bin/python bench/parse_cost_bench.py --before /work/main --cases front_loaded --agents --attackers 24 \
        --addresses 24 --rounds 2
    .venv/bin/python bench/parse_cost_bench.py --before /work/main --flood 24 --seconds 4 --rounds 4
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import importlib
import json
import logging
import multiprocessing
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import ModuleType
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

HEAD = b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
MIB8 = 8 * 2**20


def front_loaded(path: bytes = b"/echo", size: int = MIB8) -> bytes:
    """The worst legal body: one big chunk, then as many 1-byte chunks as the chunk rule allows (8 MiB in all)."""
    tiny = size // 256 - 1
    big = size - tiny
    head = HEAD.replace(b"/echo", path) + b"\r\n"
    return head + b"%x\r\n" % big + b"b" * big + b"\r\n" + b"1\r\nx\r\n" * tiny + b"0\r\n\r\n"


def honest_chunked() -> bytes:
    chunk = b"%x\r\n" % 65536 + b"h" * 65536 + b"\r\n"
    return HEAD + b"\r\n" + chunk * (MIB8 // 65536) + b"0\r\n\r\n"


def honest_length() -> bytes:
    return b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % MIB8 + b"l" * MIB8


CASES = {"front_loaded": front_loaded, "honest_chunked_64k": honest_chunked, "honest_length": honest_length}


def side(root: Path, what: str, args: argparse.Namespace, total_share: float = 0.0) -> dict[str, Any]:
    """One measurement (``what``: ``in_process:<case>`` or ``flood``) in a process of its own whose
    ``agent`` package is ``root``'s (its first ``sys.path`` entry): its JSON result."""
    argv = [sys.executable, str(Path(__file__).resolve()), "--before", str(root), "--side", str(root), "--what", what,
            "--flood", str(args.flood), "--seconds", str(args.seconds), "--total-share", str(total_share),
            "--header-fields", str(args.header_fields)]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{what} with {root} failed: {done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def one_side(args: argparse.Namespace) -> dict[str, Any]:
    """(The process ``side`` starts.) ``args.side``'s agent.http_limits, first on sys.path, measured once."""
    root = args.side.resolve()
    sys.path.insert(0, str(root))
    module = importlib.import_module("agent.http_limits")
    loaded = Path(str(module.__file__)).resolve()
    if root not in loaded.parents:
        raise RuntimeError(f"agent.http_limits came from {loaded}, not {root}")
    if args.total_share and hasattr(module, "PARSING"):  # (a checkout from before the port's total has none)
        module.PARSING.budget.share = args.total_share
        module.PARSING.budget.burst_s = min(module.PARSING.budget.burst_s, args.total_share / 5)
    if args.what == "flood":
        return asyncio.run(one_flood(module, args.flood, 4, args.seconds, args.header_fields))
    return asyncio.run(one_request(module, CASES[args.what.split(":", 1)[1]]()))


async def reader_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Reads the whole body, answers its length."""
    if scope["type"] != "http":
        return
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        size += len(message.get("body", b""))
        if not message.get("more_body"):
            break
    answer = str(size).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(answer))]})
    await send({"type": "http.response.body", "body": answer})


def send_and_read(port: int, wire: bytes, out: dict[str, Any]) -> None:
    """From another thread: send ``wire``, read the answer's status line; the time from first byte to answer."""
    started = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(wire)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    out["status"] = data.split(b" ", 2)[1].decode() if data.startswith(b"HTTP/1.1 ") else "none"
    out["s"] = time.perf_counter() - started


async def one_request(module: ModuleType, wire: bytes) -> dict[str, Any]:
    import uvicorn
    from uvicorn.server import ServerState

    config = uvicorn.Config(reader_app, h11_max_incomplete_event_size=16384, log_config=None)
    config.load()
    protocol_class = module.limited_protocol(10.0, 64, 30.0)
    state = ServerState()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: protocol_class(config=config, server_state=state, app_state={}), "127.0.0.1", 0
    )
    port = server.sockets[0].getsockname()[1]
    lags: list[float] = []
    out: dict[str, Any] = {}
    thread = threading.Thread(target=send_and_read, args=(port, wire, out))
    cpu = time.thread_time()
    thread.start()
    while thread.is_alive():
        before = loop.time()
        await asyncio.sleep(0.001)
        lags.append(loop.time() - before - 0.001)
    cpu = time.thread_time() - cpu
    thread.join()
    server.close()
    await server.wait_closed()
    lags.sort()
    return {
        "status": out.get("status"),
        "s": round(out.get("s", float("nan")), 3),
        "lag_p99_ms": round(1000 * lags[int(0.99 * (len(lags) - 1))], 2),
        "lag_max_ms": round(1000 * lags[-1], 2),
        "loop_cpu_s": round(cpu, 3),
    }


def in_process(before: Path, args: argparse.Namespace) -> dict[str, Any]:
    cases = [c for c in CASES if not args.cases or c in args.cases.split(",")]
    results: dict[str, dict[str, list[dict[str, Any]]]] = {c: {"before": [], "after": []} for c in cases}
    sides = {"before": (before, 0.0), "after": (REPO, args.total_share)}
    for r in range(args.rounds):
        for case in cases:
            order = ["before", "after"] if r % 2 == 0 else ["after", "before"]
            for label in order:
                result = side(sides[label][0], f"in_process:{case}", args, sides[label][1])
                results[case][label].append(result)
                print(f"round {r} {case:20s} {label:6s} {result}", flush=True)
    return results


def many_headers(fields: int) -> bytes:
    """A request head of ``fields`` header fields in ~15 KiB (the agent takes 100 at most, ``MAX_HEADER_FIELDS``;
    before that, 2,500 tiny ones were one 8-13 ms step of h11 each)."""
    value = b"y" * max(1, 15_000 // fields - 5)
    return b"POST /echo HTTP/1.1\r\nHost: a\r\n" + b"x: %s\r\n" % value * (fields - 2) + b"Content-Length: 0\r\n\r\n"


PREDICT = b'{"instances": [1.0, 2.0, 5.0]}'
HONEST = b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n%s" % (len(PREDICT), PREDICT)


def flood_from(port: int, addresses: int, per_address: int, fields: int) -> None:
    """(A process of its own.) Open the flood's connections and write to them until killed."""

    async def run() -> None:
        body, heads = front_loaded(b"/echo", 2 * 2**20), many_headers(fields) * 200
        for n in range(addresses * per_address):
            source = (f"127.0.79.{n % addresses + 1}", 0)
            _, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=source)
            writer.write(body if n % 2 == 0 else heads)
        await asyncio.sleep(3600)

    asyncio.run(run())


async def one_flood(
    module: ModuleType, addresses: int, per_address: int, seconds: float, fields: int
) -> dict[str, Any]:
    """``addresses`` x ``per_address`` connections from 127.0.79.x flood (half front-loaded 2 MiB bodies, half
    pipelined requests of ``fields`` headers) while one keep-alive client from 127.0.78.9 sends small predicts one
    after another for ``seconds``: parsing CPU a second (all connections), the loop thread's CPU a second, the
    honest answers, and the loop's lag (a 5 ms ticker). The module's default budgets."""
    import uvicorn
    from uvicorn.server import ServerState

    config = uvicorn.Config(reader_app, h11_max_incomplete_event_size=16384, log_config=None)
    config.load()
    protocol_class = module.limited_protocol(30.0, 64, 30.0)
    state, made = ServerState(), []

    def make() -> Any:
        made.append(protocol_class(config=config, server_state=state, app_state={}))
        return made[-1]

    loop = asyncio.get_running_loop()
    server = await loop.create_server(make, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    logging.getLogger("uvicorn.error").setLevel(logging.CRITICAL)  # (the aborted flood's handlers, at the end)
    spawn = multiprocessing.get_context("spawn")
    flooders = spawn.Process(target=flood_from, args=(port, addresses, per_address, fields))
    flooders.start()  # another process: its writes are not the loop's work
    await asyncio.sleep(2.0)
    lags: list[float] = []
    stop = asyncio.Event()

    async def ticker() -> None:
        while not stop.is_set():
            before = loop.time()
            await asyncio.sleep(0.005)
            lags.append(loop.time() - before - 0.005)

    tick = asyncio.ensure_future(ticker())
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=("127.0.78.9", 0))
    started, cpu, parse = time.monotonic(), time.thread_time(), sum(p.parse_cpu_s for p in made)
    took: list[float] = []
    while time.monotonic() - started < seconds:
        sent = time.monotonic()
        writer.write(HONEST)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 60)
        await reader.readexactly(int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0]))
        took.append(time.monotonic() - sent)
    elapsed = time.monotonic() - started
    parse, cpu = sum(p.parse_cpu_s for p in made) - parse, time.thread_time() - cpu
    stop.set()
    await tick
    flooders.kill()
    flooders.join()
    writer.transport.abort()
    server.close()
    await server.wait_closed()
    took.sort()
    lags.sort()
    return {
        "parse_cpu_s_per_s": round(parse / elapsed, 3),
        "loop_cpu_s_per_s": round(cpu / elapsed, 3),
        "honest_n": len(took),
        "honest_p50_ms": round(1000 * statistics.median(took), 1),
        "honest_p99_ms": round(1000 * took[int(0.99 * (len(took) - 1))], 1),
        "honest_max_ms": round(1000 * took[-1], 1),
        "lag_p99_ms": round(1000 * lags[int(0.99 * (len(lags) - 1))], 2),
        "lag_max_ms": round(1000 * lags[-1], 2),
    }


def flood(before: Path, args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, list[dict[str, Any]]] = {"before": [], "after": []}
    sides = {"before": (before, args.total_share), "after": (REPO, args.total_share)}
    for r in range(args.rounds):
        order = ["before", "after"] if r % 2 == 0 else ["after", "before"]
        for label in order:
            result = side(sides[label][0], "flood", args, sides[label][1])
            results[label].append(result)
            print(f"flood round {r} {label:6s} {result}", flush=True)
    return results


def health_p99(
    port: int, seconds: float, attack_port: int | None, attackers: int = 2, addresses: int = 0
) -> dict[str, Any]:
    """/health timings on new connections for ``seconds``; ``attackers`` front-loaded senders if ``attack_port``
    (from 127.0.0.1, or spread over ``addresses`` source addresses 127.0.79.x)."""
    stop = threading.Event()
    wire = front_loaded(b"/health")

    def drain(sock: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while sock.recv(65536):
                pass

    def attacker(n: int) -> None:  # body after body on one kept-alive connection (each 405, drained); again if cut off
        source = (f"127.0.79.{n % addresses + 1}", 0) if addresses else None
        while not stop.is_set():
            try:
                with socket.create_connection(("127.0.0.1", attack_port or 0), 30, source) as sock:
                    threading.Thread(target=drain, args=(sock,), daemon=True).start()
                    while not stop.is_set():
                        sock.sendall(wire)
            except OSError:
                time.sleep(0.05)

    threads = [threading.Thread(target=attacker, args=(n,)) for n in range(attackers if attack_port else 0)]
    for t in threads:
        t.start()
    took: list[float] = []
    until = time.monotonic() + seconds
    try:
        while time.monotonic() < until:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            started = time.perf_counter()
            conn.request("GET", "/health")
            assert conn.getresponse().status == 200
            took.append(time.perf_counter() - started)
            conn.close()
            time.sleep(0.02)
    finally:
        stop.set()
        for t in threads:
            t.join()
    took.sort()
    return {
        "n": len(took),
        "p50_ms": round(1000 * statistics.median(took), 1),
        "p99_ms": round(1000 * took[int(0.99 * (len(took) - 1))], 1),
        "max_ms": round(1000 * took[-1], 1),
    }


def agents(before_repo: Path, rounds: int, seconds: float, attackers: int, addresses: int = 0) -> dict[str, Any]:
    import psutil

    from bench.common import served
    from tests.service.conftest import TOKEN, free_port

    results: dict[str, list[dict[str, Any]]] = {"before": [], "after": []}
    for r in range(rounds):
        order = [("before", before_repo), ("after", REPO)] if r % 2 == 0 else [("after", REPO), ("before", before_repo)]
        for label, repo in order:
            port = free_port()
            with tempfile.TemporaryDirectory() as tmp:
                argv = [sys.executable, "-m", "peerserve", "agent", "--port", str(port), "--data-dir", tmp,
                        "--peer-port", str(free_port()), "--node-id", "bench-node", "--no-discovery",
                        "--cluster-token", TOKEN, "--log-level", "warning"]  # fmt: skip
                # cwd and PYTHONPATH both the checkout: `python -m` puts the working directory first on the path
                with served(argv, f"http://127.0.0.1:{port}/health", {"PYTHONPATH": str(repo)}, cwd=repo) as popen:
                    proc = psutil.Process(popen.pid)
                    quiet = health_p99(port, 2.0, None)
                    cpu = sum(proc.cpu_times()[:2])
                    attacked = health_p99(port, seconds, port, attackers, addresses)
                    attacked["agent_cpu_s_per_s"] = round((sum(proc.cpu_times()[:2]) - cpu) / seconds, 3)
            results[label].append({"quiet": quiet, "attacked": attacked})
            print(f"agents round {r} {label:6s} quiet {quiet} attacked {attacked}", flush=True)
    return results


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", type=Path, required=True, help="checkout whose agent/http_limits.py is 'before'")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--agents", action="store_true", help="also time /health of real agents under the attack")
    ap.add_argument("--seconds", type=float, default=6.0, help="attack length per agent round")
    ap.add_argument("--cases", default="", help="in-process cases to run, comma-separated (default: all)")
    ap.add_argument("--attackers", type=int, default=2, help="front-loaded senders per agent round")
    ap.add_argument("--addresses", type=int, default=0, help="spread the senders over this many 127.0.79.x addresses")
    ap.add_argument("--flood", type=int, default=0, help="in-process: this many addresses x 4 connections flood")
    ap.add_argument("--total-share", type=float, default=0.0,
                    help="the total parse share (default: each checkout's TOTAL_SHARE; the before checkout's too, if "
                    "it has one); lower stands in for a machine where the process gets a whole core")  # fmt: skip
    ap.add_argument(
        "--header-fields",
        type=int,
        default=100,
        help="--flood: header fields in each flooding head (the agent refuses more than 100)",
    )
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--side", type=Path, help=argparse.SUPPRESS)  # (one measurement, in the process side() starts)
    ap.add_argument("--what", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.side is not None:
        print(json.dumps(one_side(args)), flush=True)
        return 0
    before = args.before.resolve()
    report: dict[str, Any] = {"load_average": os.getloadavg()}
    if args.flood:
        report["flood"] = flood(before, args)
    if not args.flood or args.cases:
        report["in_process"] = in_process(before, args)
    if args.agents:
        report["agents"] = agents(args.before, args.rounds, args.seconds, args.attackers, args.addresses)
    report["load_average_end"] = os.getloadavg()
    if args.json:
        print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
