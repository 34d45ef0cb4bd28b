"""A model server that dies mid-answer: the client must see a failed exchange, never a well-formed short 200.

A real agent (uvicorn with the agent's own protocol, in this process) proxies to a real HTTP server on loopback
that answers the readiness probe and breaks off every predict part-way: chunked (no terminating chunk), with a
small Content-Length (the proxy's one-write path) and with a large one (the streamed path). review12a's F2: the
proxy used to end the client's chunked answer normally (a complete 200 with half a body) and log a 200.
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h11
import pytest

from agent.node import NodeAgent
from agent.serving import routes
from agent.telemetry import outcome_of
from tests.service.conftest import PLAIN
from tests.service.scripted import MODEL, LoopbackServer, agent_in_front
from tests.waiting import wait_for

PROBE = json.dumps({"model_version_status": [{"version": "1", "state": "AVAILABLE"}]}).encode()
PART = b'{"predictions": [2.5, 3.0'  # where every answer breaks off


class BreaksOff(LoopbackServer):
    """A model server that answers the probe and cuts every predict after ``PART`` (the way it frames it: ``mode``)."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        super().__init__(self._answer)

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            parser = h11.Connection(h11.SERVER)
            method = b""
            while True:
                event = parser.next_event()
                if event is h11.NEED_DATA:
                    data = conn.recv(65536)
                    if not data:
                        return
                    parser.receive_data(data)
                elif isinstance(event, h11.Request):
                    method = event.method
                elif isinstance(event, h11.EndOfMessage):
                    if method == b"GET":  # the readiness probe: answered whole, then the next request
                        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n")
                        conn.sendall(b"Content-Length: %d\r\n\r\n" % len(PROBE) + PROBE)
                        parser = h11.Connection(h11.SERVER)
                        continue
                    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    if self.mode in ("trickled error", "endless error"):  # an error page that never ends
                        conn.sendall(b"HTTP/1.1 500 Oops\r\nContent-Type: text/html\r\n")
                        conn.sendall(b"Transfer-Encoding: chunked\r\n\r\n")
                        with contextlib.suppress(OSError):
                            while True:
                                if self.mode == "trickled error":
                                    conn.sendall(b"1\r\nx\r\n")
                                    time.sleep(0.2)
                                else:
                                    conn.sendall(b"4000\r\n" + b"<p>" * 5461 + b"p\r\n")
                        return
                    if self.mode == "chunked":
                        conn.sendall(head + b"Transfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n" % (len(PART), PART))
                    else:
                        declared = 30 if self.mode == "small" else 1_000_000  # over the one-write limit (64 KiB)
                        conn.sendall(head + b"Content-Length: %d\r\n\r\n" % declared + PART)
                    time.sleep(0.05)
                    return  # the server dies: the connection closes mid-answer


@pytest.fixture(params=["chunked", "small", "large"])
def proxied(request: Any, tmp_path: Path) -> Iterator[tuple[str, int, NodeAgent]]:
    yield from _proxied_to(request.param, tmp_path)


def _proxied_to(mode: str, tmp_path: Path) -> Iterator[tuple[str, int, NodeAgent]]:
    upstream = BreaksOff(mode)
    try:
        with agent_in_front([upstream.url], tmp_path) as (base, agent):
            yield mode, int(base.rsplit(":", 1)[1]), agent
    finally:
        upstream.close()


def _predict(port: int) -> tuple[int | None, bytes, str]:
    """One predict read with h11 (strict framing): (status, body, how the exchange ended)."""
    body = b'{"instances": [1.0, 2.0]}'
    client = h11.Connection(h11.CLIENT)
    head = [("Host", f"127.0.0.1:{port}"), ("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    wire = client.send(h11.Request(method="POST", target=f"/v1/models/{MODEL}:predict", headers=head))
    status, got = None, b""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        rest = (client.send(h11.Data(data=body)) or b"") + (client.send(h11.EndOfMessage()) or b"")
        sock.sendall((wire or b"") + rest)
        while True:
            try:
                event = client.next_event()
            except h11.RemoteProtocolError:
                return status, got, "cut"
            if event is h11.NEED_DATA:
                client.receive_data(sock.recv(65536))
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                got += event.data
            elif isinstance(event, h11.EndOfMessage):
                return status, got, "complete"
            elif isinstance(event, h11.ConnectionClosed):
                return status, got, "cut"


def test_a_server_that_breaks_off_its_answer_never_reaches_the_client_as_a_complete_answer(proxied: Any) -> None:
    mode, port, agent = proxied
    status, body, ended = _predict(port)
    if mode == "small":  # nothing was sent yet: the client gets the failure as the protocol's error
        assert (status, ended) == (502, "complete")
        assert json.loads(body)["error"].startswith("model server n1 broke off its answer")
    else:  # already streaming: the answer is cut, not ended as if it were whole
        assert (status, ended) == (200, "cut")
        assert body.startswith(PART[:10]) and len(body) <= len(PART)
    wait_for(lambda: agent.store.requests_since(0, 10)[0], timeout=10)
    records, _ = agent.store.requests_since(0, 10)
    assert [(r.status, r.latency_ms) for r in records] == [(502, None)]  # a failure, no latency learned from it
    metrics = PLAIN.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    counted = [line for line in metrics.splitlines() if line.startswith("peerserve_inference_requests_total{")]
    assert len(counted) == 1 and f'outcome="{outcome_of(502)}"' in counted[0]  # the metrics say so too


@pytest.mark.parametrize("mode", ["trickled error", "endless error"])
def test_an_error_page_that_never_ends_is_answered_in_bounded_time(
    mode: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server's non-JSON error is read for its first ERROR_TEXT_MAX bytes within ERROR_READ_S (review12e: the
    pool's timeout is per read, so a trickled error page held the client's handler for as long as it went on)."""
    monkeypatch.setattr(routes, "ERROR_READ_S", 1.0)
    for _mode, port, _agent in _proxied_to(mode, tmp_path):
        began = time.monotonic()
        status, body, ended = _predict(port)
        assert (status, ended) == (500, "complete") and time.monotonic() - began < 10
        assert json.loads(body)["error"].startswith("model server answered HTTP 500")
