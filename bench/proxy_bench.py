"""Proxy overhead: p50/p99 of a predict through the agent vs straight to the model server, same run,
both protocols (TF-Serving REST to the stand-in's ``digits``; Open Inference Protocol to Triton's
``digits_triton``, tritonclient-style binary tensors). One agent (process runtime, no discovery) on loopback.

    .venv/bin/python bench/proxy_bench.py [--requests N] [--rows R] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from agent import digits  # noqa: E402
from peerserve.agent_procs import stop  # noqa: E402
from tests.service.conftest import free_port  # noqa: E402


def percentiles(samples: list[float]) -> dict[str, float]:
    q = statistics.quantiles(samples, n=100)
    return {"p50_ms": round(statistics.median(samples), 3), "p99_ms": round(q[98], 3)}


def timed(send: Callable[[], httpx.Response], n: int) -> list[float]:
    out = []
    for _ in range(n):
        started = time.perf_counter()
        r = send()
        out.append(1000 * (time.perf_counter() - started))
        if r.status_code != 200:
            raise RuntimeError(f"{r.status_code} {r.text[:200]}")
    return out


def v2_body(rows: list[list[float]]) -> tuple[bytes, dict[str, str]]:
    import numpy as np

    data = np.asarray(rows, dtype=np.float32).tobytes()
    head = json.dumps({"inputs": [{"name": "pixels", "shape": [len(rows), 64], "datatype": "FP32",
                       "parameters": {"binary_data_size": len(data)}}],
                       "parameters": {"binary_data_output": True}}).encode()  # fmt: skip
    return head + data, {"Inference-Header-Content-Length": str(len(head)), "Content-Type": "application/octet-stream"}


def run(n: int, rows: int) -> dict[str, Any]:
    images = digits.heldout_set()[0][:rows]
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.Popen(
            [sys.executable, "-m", "peerserve", "agent", "--host", "127.0.0.1", "--port", str(port), "--node-id",
             "bench", "--data-dir", tmp, "--no-discovery", "--provision-wait-s", "60"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dict(os.environ),
        )  # fmt: skip
        try:
            with httpx.Client(timeout=90) as http:
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline:
                    try:
                        http.get(url + "/health")
                        break
                    except httpx.HTTPError:
                        time.sleep(0.1)
                tf_body = {"instances": images}
                v2, v2_headers = v2_body(images)
                assert http.post(url + "/v1/models/digits:predict", json=tf_body).status_code == 200
                assert http.get(url + "/v2/models/digits_triton/ready").status_code == 200
                servers = {i["model"]: i["url"] for i in http.get(url + "/stats/node").json()["instances"]}
                cases = {
                    "tfserving": ("/v1/models/digits:predict", servers["digits"],
                                  lambda base: http.post(base + "/v1/models/digits:predict", json=tf_body)),
                    "triton": ("/v2/models/digits_triton/infer", servers["digits_triton"],
                               lambda base: http.post(base + "/v2/models/digits_triton/infer", content=v2,
                                                      headers=v2_headers)),
                }  # fmt: skip
                out: dict[str, Any] = {"requests": n, "rows": rows}
                for name, (_path, direct, send) in cases.items():
                    timed(lambda s=send, d=direct: s(d), 20)  # warm both paths
                    timed(lambda s=send: s(url), 20)
                    d = percentiles(timed(lambda s=send, d=direct: s(d), n))
                    a = percentiles(timed(lambda s=send: s(url), n))
                    out[name] = {"direct": d, "agent": a, "overhead_p50_ms": round(a["p50_ms"] - d["p50_ms"], 3),
                                 "ratio_p50": round(a["p50_ms"] / d["p50_ms"], 2),
                                 "ratio_p99": round(a["p99_ms"] / d["p99_ms"], 2)}  # fmt: skip
                return out
        finally:
            stop(proc, timeout=30)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--requests", type=int, default=300, help="timed requests per path and protocol (default 300)")
    ap.add_argument("--rows", type=int, default=1, help="digits per request (default 1)")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = ap.parse_args()
    out = run(args.requests, args.rows)
    if args.json:
        print(json.dumps(out))
        return 0
    print(f"proxy overhead, {out['requests']} predicts of {out['rows']} digit(s) each, same run:")
    for name in ("tfserving", "triton"):
        r = out[name]
        print(f"  {name:9s} direct p50 {r['direct']['p50_ms']:.2f} ms p99 {r['direct']['p99_ms']:.2f} ms | "
              f"agent p50 {r['agent']['p50_ms']:.2f} ms p99 {r['agent']['p99_ms']:.2f} ms | "
              f"+{r['overhead_p50_ms']:.2f} ms p50 (x{r['ratio_p50']} p50, x{r['ratio_p99']} p99)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
