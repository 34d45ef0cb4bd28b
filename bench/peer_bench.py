"""Cost of peer-plane authentication, each figure against the unauthenticated path measured in the same run.

* Signing and verifying one message (Ed25519 + SHA-256 + nonce cache + pin), in microseconds.
* A heartbeat: GET /peer/state over mutual TLS, request signed and answer verified (keep-alive), against
  the same JSON answer fetched over plain HTTP with no signatures (what a heartbeat cost before #10).
* A proxied predict through an agent whose peer plane is on (a peer heartbeating it all the while),
  against the same agent without a cluster token (no peer plane at all).

    .venv/bin/python bench/peer_bench.py [--requests N] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from agent.identity import Identity  # noqa: E402
from bench.common import served  # noqa: E402
from tests.peer_tools import TestPeer  # noqa: E402
from tests.service.conftest import TOKEN, free_port  # noqa: E402

PREDICT = "/services/half_plus_two/v1/models/half_plus_two:predict"


def p50(xs: list[float]) -> float:
    return statistics.median(xs)


def timed(fn: Any, n: int) -> list[float]:
    for _ in range(min(50, n)):
        fn()
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append(1000 * (time.perf_counter() - t))
    return out


@contextmanager
def agent(tmp: Path, name: str, token: bool, *extra: str) -> Iterator[tuple[str, str]]:
    port, peer_port = free_port(), free_port()
    args = [sys.executable, "-m", "peerserve", "agent", "--port", str(port), "--peer-port", str(peer_port),
            "--node-id", name, "--data-dir", str(tmp / name), "--log-level", "warning", "--no-discovery",
            *extra]  # fmt: skip
    if token:
        args += ["--cluster-token", TOKEN]
    url = f"http://127.0.0.1:{port}"
    with served(args, url + "/health"):
        yield url, f"https://127.0.0.1:{peer_port}"


def bench_crypto(n: int) -> dict[str, float]:
    a, b = Identity("a", TOKEN, None), Identity("b", TOKEN, None)
    body = json.dumps({"node_id": "a", "endpoints": {"m": ["http://10.0.0.1:8501"]}}).encode()
    now = time.time()

    def sign_verify() -> None:
        s = a.sign_request("b", "GET", "/peer/state", body, now)
        b.verify_request(s.headers, "GET", "/peer/state", body, now, mono=time.monotonic())

    def digest_only() -> None:
        import hashlib

        hashlib.sha256(body).hexdigest()

    return {"sign_verify_us": 1000 * p50(timed(sign_verify, n)), "digest_only_us": 1000 * p50(timed(digest_only, n))}


@contextmanager
def plain_server(payload: bytes, tmp: Path) -> Iterator[str]:
    """The unauthenticated heartbeat: the same answer bytes from bare FastAPI + uvicorn on plain HTTP."""
    (tmp / "payload.json").write_bytes(payload)
    port = free_port()
    env = {"PEERSERVE_BENCH_PAYLOAD": str(tmp / "payload.json")}
    argv = [sys.executable, "-m", "uvicorn", "bench.plain_state:app", "--port", str(port), "--log-level", "warning"]
    url = f"http://127.0.0.1:{port}"
    with served(argv, url + "/peer/state", env=env, cwd=REPO):
        yield url


def bench_heartbeat(tmp: Path, n: int) -> dict[str, float]:
    with agent(tmp, "hb", token=True) as (_url, peer_url):
        peer = TestPeer("prober", TOKEN, tmp / "prober")
        answer = peer.request("hb", peer_url, "GET", "/peer/state")
        assert answer.status_code == 200, answer.text
        authed = timed(lambda: peer.request("hb", peer_url, "GET", "/peer/state"), n)
        with plain_server(answer.content, tmp) as plain, httpx.Client() as client:
            bare = timed(lambda: client.get(plain + "/peer/state"), n)
        peer.close()
    return {"authenticated_ms": p50(authed), "plain_ms": p50(bare)}


def bench_predict(tmp: Path, n: int) -> dict[str, float]:
    out = {}
    for label, token in (("peer_plane_on", True), ("no_peer_plane", False)):
        with agent(tmp, f"pr-{label}", token=token) as (url, peer_url), httpx.Client() as client:
            assert client.get(url + "/services/half_plus_two", timeout=30).status_code == 200  # provisions here
            stop = threading.Event()
            if token:  # a peer heartbeats it all the while, as in a cluster
                hb = TestPeer("prober", TOKEN, tmp / "prober-2")
                threading.Thread(target=_heartbeats, args=(hb, f"pr-{label}", peer_url, stop), daemon=True).start()
            xs = timed(lambda u=url: client.post(u + PREDICT, json={"instances": [1.0, 2.0]}), n)  # type: ignore[misc]
            stop.set()
            out[label] = p50(xs)
    return out


def _heartbeats(peer: TestPeer, node: str, url: str, stop: threading.Event) -> None:
    while not stop.is_set():
        peer.request(node, url, "GET", "/peer/state")
        time.sleep(0.5)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=400, help="timed requests per figure (default 400)")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        crypto = bench_crypto(args.requests * 5)
        hb = bench_heartbeat(tmp, args.requests)
        pred = bench_predict(tmp, args.requests)
    figures = {"crypto": crypto, "heartbeat": hb, "predict": pred}
    if args.json:
        print(json.dumps(figures, indent=2))
        return 0
    print("| what | authenticated | unauthenticated, same run | ratio |")
    print("| --- | --- | --- | --- |")
    print(f"| sign + verify one message | {crypto['sign_verify_us']:.0f} us | SHA-256 of the body only "
          f"{crypto['digest_only_us']:.1f} us | |")  # fmt: skip
    print(f"| heartbeat `GET /peer/state` p50 | {hb['authenticated_ms']:.2f} ms (mutual TLS, signed both ways) | "
          f"{hb['plain_ms']:.2f} ms (same bytes, bare FastAPI, plain HTTP) | "
          f"{hb['authenticated_ms'] / hb['plain_ms']:.2f}x |")  # fmt: skip
    print(f"| proxied predict p50 | {pred['peer_plane_on']:.2f} ms (peer plane on) | "
          f"{pred['no_peer_plane']:.2f} ms (no token, no peer plane) | "
          f"{pred['peer_plane_on'] / pred['no_peer_plane']:.2f}x |")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
