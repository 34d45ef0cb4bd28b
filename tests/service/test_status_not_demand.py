"""Status, metadata, readiness and config requests are not execution times (review26a M1), over real loopback HTTP:
a real agent (tests/service/scripted.py ``agent_in_front``) in front of a scripted model server that takes 50 ms for
an inference and answers everything else at once.

Before the fix every 2xx proxied answer was an execution time: after 16 predicts of 603 ms, status GETs from two
more addresses made the node's exec_ms 6.3 ms for every client of the agent, and each was logged as a service time.
They are still logged as demand, without a time (review26c: a readiness poll provisions the model, and a poll that
were not demand would have the model stopped and started again at each poll).
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h11
import httpx
import pytest

from agent.node import NodeAgent
from tests.service.scripted import MODEL, LoopbackServer, agent_in_front

TRITON_MODEL = "digits_triton"  # served by "triton" in the packaged catalogue: the v2 routes
RUN_S = 0.05  # an inference's time in the scripted server; anything else is answered at once
PREDICTS = 16  # ExecTimes' window (SAMPLES)
BROKEN = threading.Event()  # set: every proxied request is answered 500 text/plain (a crash page)
ANSWER = json.dumps({"model_version_status": [{"version": "1", "state": "AVAILABLE"}], "predictions": [1]}).encode()


def serve(conn: socket.socket) -> None:
    """Keep-alive: a POST (an inference) after RUN_S, any other request at once; 200 JSON to each (500 text once
    BROKEN is set)."""
    with contextlib.suppress(OSError, h11.RemoteProtocolError):
        parser = h11.Connection(h11.SERVER)
        method, proxied = b"", False
        while True:
            event = parser.next_event()
            if event is h11.NEED_DATA:
                data = conn.recv(65536)
                if not data:
                    return
                parser.receive_data(data)
            elif isinstance(event, h11.Request):
                method = event.method
                proxied = any(name == b"x-forwarded-for" for name, _ in event.headers)
            elif isinstance(event, h11.EndOfMessage):
                if BROKEN.is_set() and proxied:  # the agent's own readiness probes still pass
                    conn.sendall(b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: text/plain\r\n")
                    conn.sendall(b"Content-Length: 5\r\n\r\ncrash")
                    parser = h11.Connection(h11.SERVER)
                    continue
                if method == b"POST":
                    time.sleep(RUN_S)
                head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(ANSWER)
                conn.sendall(head + ANSWER)
                parser = h11.Connection(h11.SERVER)


@contextlib.contextmanager
def client_from(address: str) -> Iterator[httpx.Client]:
    """A client whose connections come from ``address`` (127.0.0.x: each a source of its own for ExecTimes)."""
    with httpx.Client(transport=httpx.HTTPTransport(local_address=address), timeout=10) as c:
        yield c


CASES = [
    pytest.param(
        MODEL,
        (f"/v1/models/{MODEL}:predict", {"instances": [1.0]}),
        [f"/v1/models/{MODEL}", f"/v1/models/{MODEL}/metadata", f"/v1/models/{MODEL}/versions/1",
         f"/services/{MODEL}/v1/models/{MODEL}"],
        id="tf-serving",
    ),
    pytest.param(
        TRITON_MODEL,
        (f"/v2/models/{TRITON_MODEL}/infer", {"inputs": []}),
        [f"/v2/models/{TRITON_MODEL}", f"/v2/models/{TRITON_MODEL}/ready", f"/v2/models/{TRITON_MODEL}/config",
         f"/v2/models/{TRITON_MODEL}/versions/1/ready", f"/services/{TRITON_MODEL}/v2/models/{TRITON_MODEL}/ready"],
        id="v2",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("model", "inference", "status_paths"), CASES)
def test_status_requests_interleaved_with_predicts_are_demand_but_not_exec_times(
    tmp_path: Path, model: str, inference: tuple[str, Any], status_paths: list[str]
) -> None:
    """16 inferences from one address, each followed by every status path from two other addresses: the agent's
    execution-time figure is the inferences' alone (>= RUN_S; the median of 16 inferences and 16 x 8 or 10 instant
    GETs from two more sources was ~1 ms before), record_latency ran once per inference, and the request log holds
    every request, the GETs without a time (before: each with its ~1 ms, the leader's service time too)."""
    server = LoopbackServer(serve)
    try:
        with agent_in_front([server.url], tmp_path, model=model) as (base, agent):
            timed: list[float] = []
            record_latency = agent.record_latency

            def spy(node: str, name: str, latency_ms: float, source: str = "") -> None:
                timed.append(latency_ms)
                record_latency(node, name, latency_ms, source)

            agent.record_latency = spy  # type: ignore[method-assign]
            path, body = inference
            with client_from("127.0.0.1") as c1, client_from("127.0.0.2") as c2, client_from("127.0.0.3") as c3:
                for _ in range(PREDICTS):
                    assert c1.post(base + path, json=body).status_code == 200
                    for c in (c2, c3):
                        for status_path in status_paths:
                            r = c.get(base + status_path)
                            assert r.status_code == 200, (status_path, r.status_code, r.text)
            assert len(timed) == PREDICTS and min(timed) >= 1000 * RUN_S * 0.9, timed
            figure = agent.exec_ms.get(("n1", model))
            assert figure is not None and figure >= 1000 * RUN_S * 0.9, figure
            gets = PREDICTS * 2 * len(status_paths)
            assert_timed_inferences_only(agent, model, gets)
            BROKEN.set()  # the server fails now: a status GET's error is logged as demand too, without a time
            with client_from("127.0.0.2") as c2:
                failed = [c2.get(base + status_path).status_code for status_path in status_paths]
                assert failed == [500] * len(status_paths), failed
                assert c2.post(base + path, json=body).status_code == 500
            records, _ = agent.store.requests_since(0, 10_000)
            assert len(records) == PREDICTS + gets + len(status_paths) + 1
            assert [r.status for r in records[-len(status_paths) - 1 :]] == [500] * (len(status_paths) + 1)
            assert all(r.latency_ms is None for r in records[-len(status_paths) - 1 :])
    finally:
        BROKEN.clear()
        server.close()


def assert_timed_inferences_only(agent: NodeAgent, model: str, gets: int) -> None:
    """The request log holds the inferences with their times and every status GET without one, all as demand."""
    records, _ = agent.store.requests_since(0, 10_000)
    assert len(records) == PREDICTS + gets and all(r.model == model and r.status == 200 for r in records)
    timed = [r for r in records if r.latency_ms is not None]
    assert len(timed) == PREDICTS and min(r.latency_ms or 0 for r in timed) >= 1000 * RUN_S * 0.9
    assert agent.store.model_stats()[model]["requests_since_provisioned"] == PREDICTS + gets
