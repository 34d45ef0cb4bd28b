"""A fake peer for the hostile-peer suite: its own mDNS adverts, an HTTP server that lies, forged goodbyes.

Run inside a test-bed namespace: ``python -m tests.cluster.hostile_peer --ip IP --cluster CID --ids n9,n2
--record FILE``. It knows the public cluster id (TXT ``c=``) but not the token. It advertises each id in
``--ids`` at its own address, answers every request on the client and peer ports (8400, 8401, plain HTTP)
with claims an attacker would make (foreign endpoints, other nodes' ids, huge counts), and records every
request it receives (JSON lines) so the test can check that no secret ever reached it. On SIGUSR1 it sends a
forged mDNS goodbye for ``--goodbye`` once a second for ``--goodbye-for`` seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

SERVICE_TYPE = "_peerserve._tcp.local."
SSRF = "http://10.213.10.1:9/internal"  # an internal address it wants agents to send users' inputs to


def lies(node_id: str, ip: str) -> dict[str, Any]:
    """What it answers to any GET: a heartbeat, a stats report and a cluster hint at once."""
    return {
        "node_id": node_id, "api_url": f"http://{ip}:8400", "peer_port": 8401,
        "endpoints": {"half_plus_two": [SSRF], "evil_model": [f"http://{ip}:8400"]},
        "mem_available_mb": 1e9, "mem_total_mb": 1e9, "gpu_load": None, "cpu_load": 0, "node_class": "orin",
        "compute": 1e9, "term": 2_000_000, "leader": node_id, "priority": 2**31,
        "instances": [{"model": "half_plus_two", "running": True, "ready": True}], "models": {},
        "requests": [], "next": 0, "members": [], "role": "leader",
    }  # fmt: skip


def serve(ip: str, port: int, record: str, node_id: str) -> None:
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def _note(self) -> bytes:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(min(length, 1 << 20)) if length else b""
            entry = {"port": port, "method": self.command, "path": self.path, "headers": dict(self.headers),
                     "body": body.decode("utf-8", "replace")}  # fmt: skip
            with lock, open(record, "a") as f:
                f.write(json.dumps(entry) + "\n")
            return body

        def _answer(self) -> None:
            self._note()
            out = json.dumps(lies(node_id, ip)).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        do_GET = do_POST = do_PUT = _answer

        def log_message(self, *args: Any) -> None:
            pass

    ThreadingHTTPServer((ip, port), Handler).serve_forever()


async def advertise(ip: str, cluster: str, ids: list[str], goodbye: str, goodbye_for: float) -> None:
    from zeroconf import DNSOutgoing, DNSPointer, IPVersion
    from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf
    from zeroconf.const import _CLASS_IN, _FLAGS_AA, _FLAGS_QR_RESPONSE, _TYPE_PTR

    zc = AsyncZeroconf(interfaces=[ip], ip_version=IPVersion.V4Only)
    for node_id in ids:
        txt = {"id": node_id, "port": "8400", "pv": "1", "c": cluster, "cv": "x", "m": "half_plus_two",
               "mt": "999999", "ma": "999999", "g": "", "t": "2000000", "pp": "8401"}  # fmt: skip
        info = AsyncServiceInfo(SERVICE_TYPE, f"{node_id}.{SERVICE_TYPE}", addresses=[socket.inet_aton(ip)],
                                port=8400, properties=txt, server=f"{node_id}-fake.local.")  # fmt: skip
        await zc.async_register_service(info, allow_name_change=False)
    go = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, go.set)
    while True:
        await go.wait()
        go.clear()
        for _ in range(int(goodbye_for)):  # one forged goodbye a second for the victim
            out = DNSOutgoing(_FLAGS_QR_RESPONSE | _FLAGS_AA)
            out.add_answer_at_time(DNSPointer(SERVICE_TYPE, _TYPE_PTR, _CLASS_IN, 0, f"{goodbye}.{SERVICE_TYPE}"), 0)
            zc.zeroconf.async_send(out)
            await asyncio.sleep(1.0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--ip", required=True)
    p.add_argument("--cluster", required=True, help="the public cluster id (TXT c=)")
    p.add_argument("--ids", required=True, help="node ids to advertise, comma-separated")
    p.add_argument("--record", required=True, help="JSON-lines file of every request received")
    p.add_argument("--goodbye", default="n0", help="node whose mDNS goodbye it forges on SIGUSR1")
    p.add_argument("--goodbye-for", type=float, default=5.0)
    args = p.parse_args()
    ids = args.ids.split(",")
    for port in (8400, 8401):
        threading.Thread(target=serve, args=(args.ip, port, args.record, ids[0]), daemon=True).start()
    asyncio.run(advertise(args.ip, args.cluster, ids, args.goodbye, args.goodbye_for))


if __name__ == "__main__":
    main()
