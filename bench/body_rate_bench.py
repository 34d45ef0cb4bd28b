"""A trickled request body against an honest slow upload at the agent's connection cap (agent/http_caps.py).

A real agent (cap 24, 8 per address; the agent's own protocol and constants: ``BODY_STALL_S`` 1 s) in front of a
scripted model server. The cap is held by 22 predicts a heavy model answers late, one trickler (127.0.77.1: a
predict declaring 1,000 bytes, then one byte every 0.9 s: it never goes 1 s without a byte) and an honest client
(127.0.79.1) uploading 2 KB predicts over a 64 kbit/s link (100 bytes every 12.5 ms), one after another, each on a
new connection. A newcomer (127.0.78.x) asks ``/health`` every second. Rounds alternate the minimum body rate off
(``BODY_MIN_RATE`` 0: the stall rule alone, as before) and on (the default), in one run; with ``--slowest``, the
default rate throughout and the slowest-body rule (``TAKE_SLOWEST_BODY``: at a full cap with no connection
waiting, a newcomer takes the place of the body that would take longest) off and on.

    PYTHONPATH=. python bench/body_rate_bench.py --rounds 3 --seconds 10 [--slowest]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from agent import http_caps
from tests.service.scripted import MODEL, agent_in_front
from tests.service.test_connection_cap import ModelServer

CAP, PER_ADDRESS = 24, 8
HEALTH = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"


def head(length: int) -> bytes:
    return (f"POST /v1/models/{MODEL}:predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {length}\r\nConnection: close\r\n\r\n").encode()  # fmt: skip


def answer(sock: socket.socket) -> bytes:
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except OSError:
        pass
    return data


def status_of(data: bytes) -> tuple[int, str | None]:
    line, _, rest = data.partition(b"\r\n")
    status = int(line.split()[1]) if line.startswith(b"HTTP/1.1 ") else 0
    after = [h.split(b":", 1)[1].strip().decode() for h in rest.split(b"\r\n") if h.lower().startswith(b"retry-after:")]
    return status, after[0] if after else None


def one_round(min_rate: float, seconds: float, slowest: bool = True) -> dict[str, Any]:
    http_caps.TAKE_SLOWEST_BODY = slowest  # read by limited_protocol when the agent's server_config is built
    upstream = ModelServer()
    upstream.slow_s = seconds + 5
    with (
        tempfile.TemporaryDirectory() as tmp,
        agent_in_front(
            [upstream.url],
            Path(tmp),
            max_concurrency=CAP,
            max_connections_per_address=PER_ADDRESS,
            body_min_rate=min_rate,
        ) as (
            url,
            _,
        ),
    ):
        port = int(url.rsplit(":", 1)[1])
        slow = b'{"instances": [1.0], "x": "slow"}'
        busy = []
        for i in range(CAP - 2):
            sock = socket.create_connection(("127.0.0.1", port), 10, (f"127.0.71.{i // PER_ADDRESS + 1}", 0))
            sock.sendall(head(len(slow)) + slow)
            busy.append(sock)
        time.sleep(0.5)
        began = time.monotonic()
        end = began + seconds
        result: dict[str, Any] = {
            "min_rate": min_rate,
            "slowest": slowest,
            "honest": [],
            "newcomers": [],
            "trickler_503_at_s": None,
        }
        trickler = socket.create_connection(("127.0.0.1", port), 30, ("127.0.77.1", 0))
        trickler.sendall(head(1000) + b"[")
        sent_at = time.monotonic()

        def trickle() -> None:
            nonlocal sent_at
            trickler.settimeout(0.01)
            while time.monotonic() < end:
                time.sleep(max(0.0, sent_at + 0.9 - time.monotonic()))  # never 1 s without a byte
                sent_at = time.monotonic()
                try:
                    trickler.sendall(b"1")
                    got = trickler.recv(65536)
                except TimeoutError:
                    continue
                except OSError:
                    got = b"closed"
                if got:
                    result["trickler_503_at_s"] = round(time.monotonic() - began, 2)
                    result["trickler_answer"] = status_of(got)
                    return

        def honest() -> None:
            body = b'{"instances": [' + b"1.0," * 500 + b"1.0]}"  # 2,018 bytes
            while time.monotonic() < end:
                started = time.monotonic()
                with socket.create_connection(("127.0.0.1", port), 30, ("127.0.79.1", 0)) as sock:
                    try:
                        sock.sendall(head(len(body)))
                        for i in range(0, len(body), 100):
                            time.sleep(0.0125)
                            sock.sendall(body[i : i + 100])
                    except OSError:
                        pass
                    result["honest"].append((status_of(answer(sock))[0], round(time.monotonic() - started, 2)))
                time.sleep(0.25)

        threads = [threading.Thread(target=trickle), threading.Thread(target=honest)]
        threads[0].start()
        time.sleep(0.2)  # the trickler's head parsed: else the honest client's first connection may take its place
        threads[1].start()  # as an idle one's
        k = 0
        while time.monotonic() < end - 0.5:
            time.sleep(1.0)
            k += 1
            with socket.create_connection(("127.0.0.1", port), 10, (f"127.0.78.{k}", 0)) as sock:
                sock.sendall(HEALTH)
                result["newcomers"].append(status_of(answer(sock)))
        for thread in threads:
            thread.join(30)
        for sock in [trickler, *busy]:
            sock.close()
    upstream.close()
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--slowest", action="store_true", help="alternate the slowest-body rule off and on instead")
    args = ap.parse_args()
    default = http_caps.BODY_MIN_RATE  # (the default of the agent's body_min_rate setting)
    report: dict[str, Any] = {"load_average": os.getloadavg(), "rounds": []}
    for _ in range(args.rounds):
        for rate, slowest in [(default, False), (default, True)] if args.slowest else [(0.0, True), (default, True)]:
            r = one_round(rate, args.seconds, slowest)
            honest = r.pop("honest")
            r["honest_answered"] = f"{sum(s == 200 for s, _ in honest)}/{len(honest)}"
            r["honest_statuses"] = sorted({s for s, _ in honest})
            r["honest_max_s"] = max((t for _, t in honest), default=None)
            print(json.dumps(r), flush=True)
            report["rounds"].append(r)
    report["load_average_end"] = os.getloadavg()
    print(json.dumps({k: v for k, v in report.items() if k != "rounds"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
