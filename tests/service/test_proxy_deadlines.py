"""The proxy's deadlines, its live-queue count, its execution-time figures and its retries (review14a F1, F1b, F2,
F3, F6) over real loopback HTTP: a real agent (uvicorn with the agent's own config, in this process, mDNS off)
in front of scripted model servers. Timeouts are scaled down through the module constants and the pool's.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import h11
import httpx
import pytest

from agent.node import NodeAgent
from agent.serving import routes
from tests.service.conftest import PLAIN
from tests.service.scripted import MODEL, LoopbackServer, agent_in_front
from tests.waiting import wait_for

# scripts/test.sh runs it with nothing else: deadlines and shares of traffic, measured on a core of its own
pytestmark = pytest.mark.serial

PROBE = json.dumps({"model_version_status": [{"version": "1", "state": "AVAILABLE"}]}).encode()
OK = b'{"predictions": [2.5]}'
TIMEOUT = 1.0  # the pool's per-read timeout here (30 s in the agent)
GAP = 0.1  # between trickled bytes: far under TIMEOUT, so no single read times out

Answer = Callable[[socket.socket, bytes], None]


def ok(conn: socket.socket, _body: bytes) -> None:
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(OK) + OK)


class Scripted(LoopbackServer):
    """A keep-alive model server: GETs (the readiness probe) answered whole; every other request is handed to
    ``answer(conn, body)`` and counted (``requests``), then the next request on the connection is read."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.requests = 0
        super().__init__(self._conn)

    def _conn(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError, h11.RemoteProtocolError):
            parser = h11.Connection(h11.SERVER)
            method, body = b"", b""
            while True:
                event = parser.next_event()
                if event is h11.NEED_DATA:
                    data = conn.recv(65536)
                    if not data:
                        return
                    parser.receive_data(data)
                elif isinstance(event, h11.Request):
                    method, body = event.method, b""
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage):
                    if method == b"GET":
                        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n")
                        conn.sendall(b"Content-Length: %d\r\n\r\n" % len(PROBE) + PROBE)
                    else:
                        self.requests += 1
                        self.answer(conn, body)
                    parser = h11.Connection(h11.SERVER)


@contextlib.contextmanager
def agent_before(
    answers: list[Answer], tmp_path: Path, timeout: float = TIMEOUT, **extra: Any
) -> Iterator[tuple[str, NodeAgent, list[Scripted]]]:
    """A real agent proxying ``MODEL`` to one scripted server per answer; yields (base URL, agent, servers)."""
    ups = [Scripted(a) for a in answers]
    try:
        with agent_in_front([u.url for u in ups], tmp_path, pool_timeout=timeout, **extra) as (base, agent):
            yield base, agent, ups
    finally:
        for u in ups:
            u.close()


def predict(base: str, body: dict[str, Any] | None = None, timeout: float = 10.0) -> tuple[int | str, float]:
    """(status, or "no answer" if the client gave up, seconds taken)."""
    began = time.monotonic()
    try:
        r = PLAIN.post(f"{base}/v1/models/{MODEL}:predict", json=body or {"instances": [1.0]}, timeout=timeout)
        return r.status_code, time.monotonic() - began
    except httpx.HTTPError:
        return "no answer", time.monotonic() - began


# -- F1: trickled answers and heads end in bounded time ---------------------------------------------------------


def trickle(head: bytes, body_len: int, piece: bytes = b" ") -> Answer:
    def answer(conn: socket.socket, _body: bytes) -> None:
        conn.sendall(head + b"Content-Length: %d\r\n\r\n" % body_len)
        for _ in range(body_len // len(piece)):
            conn.sendall(piece)
            time.sleep(GAP)

    return answer


def trickled_head(conn: socket.socket, _body: bytes) -> None:
    conn.sendall(b"HTTP/1.1 200 OK\r\n")
    for _ in range(10_000):
        conn.sendall(b"X")
        time.sleep(GAP)


TRICKLES = {
    "500 JSON, one-write": trickle(b"HTTP/1.1 500 Oops\r\nContent-Type: application/json\r\n", 400),
    "200 JSON, one-write": trickle(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n", 400),
    "head trickled": trickled_head,
    "200 streamed": trickle(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n", 1_000_000, b"x" * 100),
}


@pytest.mark.parametrize("case", list(TRICKLES))
def test_a_trickled_answer_or_head_ends_in_bounded_time(
    case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """review14a F1: each read came well within the pool's timeout, so nothing ended these exchanges (400 bytes at
    one per 29 s: 3 hours; a head up to h11's 16 KiB: 5.5 days). Now: the head within the pool's timeout of the
    last request byte, a one-write answer within ANSWER_READ_S (504), a streamed one at STREAM_PACE (cut)."""
    monkeypatch.setattr(routes, "ANSWER_READ_S", 1.0)
    monkeypatch.setattr(routes, "STREAM_PACE", (4096, 1.0))  # 1,000 B/s here: 4 KiB take 4 s of waiting
    with agent_before([TRICKLES[case]], tmp_path) as (base, agent, _ups):
        if case == "200 streamed":
            began, got, cut = time.monotonic(), b"", False
            url = f"{base}/v1/models/{MODEL}:predict"
            try:
                with PLAIN.stream("POST", url, json={"instances": [1]}, timeout=15) as r:
                    assert r.status_code == 200
                    for chunk in r.iter_raw():
                        got += chunk
                        if time.monotonic() - began > 10:
                            break  # still coming: the old code's 1 MB at 1,000 B/s would take 17 minutes
            except httpx.HTTPError:
                cut = True  # the answer is aborted: the client sees a cut, never a short complete answer
            took = time.monotonic() - began
            assert cut and len(got) < 4096 and took < 8, (cut, len(got), took)
        else:
            status, took = predict(base, timeout=15)
            assert status == 504 and took < 6, (status, took)
        wait_for(lambda: agent.store.requests_since(0, 10)[0], timeout=10)
        records, _ = agent.store.requests_since(0, 10)
        assert [(r.status, r.latency_ms) for r in records] == [(504, None)]  # recorded as a timeout, no latency


def endless_chunked(conn: socket.socket, _body: bytes) -> None:
    """A chunked 200 that never ends: 1 KiB every 0.3 s, well inside the scaled pace (1 KiB per 1 s of waiting)."""
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
    while True:
        conn.sendall(b"400\r\n" + b" " * 1024 + b"\r\n")
        time.sleep(0.3)


def test_a_streamed_answer_that_keeps_its_pace_still_ends_at_its_deadline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """review14d S2: a streamed answer had only STREAM_PACE, so a server sending just faster than it (2.2 KB/s at
    the real figures) held the handler, its concurrency slot and the upstream connection as long as it liked
    (still streaming after 20 x the scaled pace window). Now it is cut at STREAM_MAX_S from its head, recorded as
    a 504 with no latency."""
    monkeypatch.setattr(routes, "STREAM_PACE", (1024, 1.0))
    monkeypatch.setattr(routes, "STREAM_MAX_S", 2.0)
    with agent_before([endless_chunked], tmp_path) as (base, agent, _ups):
        began, got, cut = time.monotonic(), 0, False
        try:
            with PLAIN.stream("POST", f"{base}/v1/models/{MODEL}:predict", json={"instances": [1]}, timeout=15) as r:
                assert r.status_code == 200
                for chunk in r.iter_raw():
                    got += len(chunk)
                    if time.monotonic() - began > 12:
                        break  # still coming: no total deadline
        except httpx.HTTPError:
            cut = True  # aborted: the client sees the cut, never a short complete answer
        took = time.monotonic() - began
        assert cut and got >= 2048 and took < 6, (cut, got, took)  # it kept the pace, then met the deadline
        wait_for(lambda: agent.store.requests_since(0, 10)[0], timeout=10)
        records, _ = agent.store.requests_since(0, 10)
        assert [(r.status, r.latency_ms) for r in records] == [(504, None)]


def test_another_client_is_answered_while_a_trickling_server_holds_the_agent_at_its_cap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """review14a F1b: handlers stuck on a trickling server kept their uvicorn task and connection after their
    clients gave up (uvicorn stops reading once the body is in: the FIN is not seen); at the concurrency cap every
    client of the agent, any model or /health, got 503 for as long as the trickle went on (40 s here)."""
    monkeypatch.setattr(routes, "ANSWER_READ_S", 1.0)
    answer = trickle(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n", 400)
    with agent_before([answer], tmp_path, max_concurrency=3) as (base, _agent, ups):
        body = b'{"instances": [1.0]}'
        head = f"POST /v1/models/{MODEL}:predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        wire = (head + f"Content-Length: {len(body)}\r\n\r\n").encode() + body
        held = []
        for _ in range(3):  # the cap's worth of predicts (max_concurrency: 3 connections)
            s = socket.create_connection(("127.0.0.1", int(base.rsplit(":", 1)[1])))
            s.sendall(wire)
            held.append(s)
        wait_for(lambda: ups[0].requests >= 3, timeout=10)  # the warm-up's may count too
        for s in held:
            s.close()
        began, seen = time.monotonic(), []
        while time.monotonic() - began < 8:
            try:
                seen.append(PLAIN.get(f"{base}/health", timeout=5).status_code)
            except httpx.HTTPError:
                seen.append(0)
            if seen[-1] == 200:
                break
            time.sleep(0.2)
        assert seen[-1] == 200 and time.monotonic() - began < 5, seen


# -- F2: the live queue counts a request only while its server holds it ------------------------------------------


def in_flight(base: str) -> dict[str, int]:
    e = PLAIN.get(f"{base}/services/{MODEL}", headers={"X-Peerserve-Client": "spy"}, timeout=10).json()
    return {x["url"]: x["in_flight"] for x in [e, *e["alternatives"]]}


def tally(base: str, n: int = 200) -> Counter[str]:
    seen: Counter[str] = Counter()
    with httpx.Client(timeout=10) as c:
        for _ in range(n):
            seen[c.get(f"{base}/services/{MODEL}", headers={"X-Peerserve-Client": "victim"}).json()["url"]] += 1
    return seen


def plan_even_split(agent: NodeAgent, queue: float = 1.0) -> None:
    """The plan a leader publishes: this site's traffic all on n1, split over its two servers, ``queue`` planned."""
    agent.last_placement = {
        "spread": [{"model": MODEL, "rtt_ms": {"n1": 1.0}, "shares": {"n1": 1.0}}],
        "planned_queue": {"n1": {MODEL: queue}},
    }


def test_stalled_uploads_and_slow_readers_count_nowhere_in_the_live_queue(tmp_path: Path) -> None:
    """review14a F2: a predict's count began before its body was streamed and ended after its client read the whole
    answer; 3 stalled uploads (70 KiB of 1 MB, then nothing) on one server steered 199 of 200 endpoint answers to
    the other. The server held none of them."""
    big = b"x" * 1_000_000

    def large(conn: socket.socket, _body: bytes) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(big))
        conn.sendall(big)

    with agent_before([large, large], tmp_path) as (base, agent, ups):
        plan_even_split(agent)
        port = int(base.rsplit(":", 1)[1])
        head = (
            f"POST /v1/models/{MODEL}:predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            "X-Peerserve-RTT: n1=0\r\nContent-Length: 1000000\r\n\r\n"
        ).encode()
        stalled = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
        for s in stalled:
            s.sendall(head + b" " * 70_000)  # past the 64 KiB prefetch: streamed to a server, then nothing
        # and a client that reads the head of a 1 MB answer, then stops reading
        reader = socket.create_connection(("127.0.0.1", port))
        reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        reader.sendall(
            f"POST /v1/models/{MODEL}:predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2\r\n\r\n{{}}".encode()
        )
        assert reader.recv(64).startswith(b"HTTP/1.1 200")
        try:
            time.sleep(0.5)
            assert sum(in_flight(base).values()) == 0  # the old count: 4
            split = tally(base)
            assert all(0.35 < split[u.url] / 200 < 0.65 for u in ups), split
        finally:
            for s in [*stalled, reader]:
                s.close()


def test_a_request_its_server_holds_is_counted_and_drawn_away_from(tmp_path: Path) -> None:
    """The live queue still does its job: a predict its server has not answered counts on that server from its
    last byte sent to its response head, and the p2c rule draws away from it (issue 16)."""
    release = threading.Event()

    def held(conn: socket.socket, body: bytes) -> None:
        if b"hold" in body:
            release.wait(30)
        ok(conn, body)

    with agent_before([held, held], tmp_path, timeout=30.0) as (base, agent, _ups):
        plan_even_split(agent, queue=0.0)
        out: list[int | str] = []
        t = threading.Thread(target=lambda: out.append(predict(base, {"instances": [1.0], "hold": 1})[0]))
        t.start()
        try:
            wait_for(lambda: sum(in_flight(base).values()) == 1, timeout=5)
            busy = next(u for u, n in in_flight(base).items() if n == 1)
            share = tally(base, 400)[busy] / 400
            # p2c: scores 2 and 1, draw weights 0.5 / 2 ** 2 and 0.5 / 1: the busy server only when both draws
            # fall on it, 0.2 ** 2 = 4% of the time (sd 0.01)
            assert 0.005 < share < 0.1, share
        finally:
            release.set()
            t.join(15)
        assert out == [200] and sum(in_flight(base).values()) == 0


# -- F3: only 2xx answers are execution times ----------------------------------------------------------------------


def test_rejected_predicts_do_not_make_a_slow_server_look_fast(tmp_path: Path) -> None:
    """review14a F3: 4xx answers were recorded as execution times: after 16 honest 50 ms predicts, 9 malformed
    ones (rejected at once) made the node's exec_ms 5.66 for every client of the agent."""

    def answer(conn: socket.socket, body: bytes) -> None:
        if b"instances" not in body:
            out, status = b'{"error": "Missing \'instances\' key"}', b"400 Bad Request"
        else:
            time.sleep(0.05)
            out, status = OK, b"200 OK"
        head = b"HTTP/1.1 %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % (status, len(out))
        conn.sendall(head + out)

    with agent_before([answer], tmp_path) as (base, agent, _ups):
        with httpx.Client(timeout=10) as c:
            for _ in range(16):
                assert c.post(f"{base}/v1/models/{MODEL}:predict", json={"instances": [1.0]}).status_code == 200
            honest = agent.exec_ms.get(("n1", MODEL))
            assert honest is not None and honest >= 45
            for _ in range(16):
                assert c.post(f"{base}/v1/models/{MODEL}:predict", json={"x": 1}).status_code == 400
        assert agent.exec_ms.get(("n1", MODEL)) == honest


# -- F6: a request sent whole and timed out is not run again ------------------------------------------------------


def test_a_predict_slower_than_the_timeout_runs_once_and_answers_504(tmp_path: Path) -> None:
    """review14a F6: a read timeout after the whole request went out was retried on a fresh connection and then
    on the next endpoint: one heavy predict ran 3 times (up to 4), 502 after 3 x the timeout."""
    runs: list[int] = []

    def answer(conn: socket.socket, body: bytes) -> None:
        if b"slow" in body:
            runs.append(1)
            time.sleep(1.5 * TIMEOUT)
        ok(conn, body)

    with agent_before([answer, answer], tmp_path) as (base, _agent, _ups):
        with httpx.Client(timeout=10) as c:
            for _ in range(6):  # pooled connections to both servers: the retry on a fresh one had its chance
                assert c.post(f"{base}/v1/models/{MODEL}:predict", json={"instances": [1.0]}).status_code == 200
            began = time.monotonic()
            r = c.post(f"{base}/v1/models/{MODEL}:predict", json={"instances": [1.0], "slow": 1})
            took = time.monotonic() - began
        time.sleep(2 * TIMEOUT)  # a retry, had there been one, would have reached a server by now
        assert (r.status_code, r.headers[routes.ERROR_HEADER]) == (504, "upstream_timeout")
        assert len(runs) == 1 and took < 2 * TIMEOUT + 1, (runs, took)


def test_repeated_set_cookie_headers_reach_the_client_each(tmp_path: Path) -> None:
    """A dict of the server's headers kept one Set-Cookie of two; other repeated headers are joined (RFC 9110 5.3)."""

    def answer(conn: socket.socket, _body: bytes) -> None:
        head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n"
        conn.sendall(head + b"X-Tag: one\r\nX-Tag: two\r\nContent-Length: %d\r\n\r\n" % len(OK) + OK)

    with agent_before([answer], tmp_path) as (base, _agent, _ups):
        r = PLAIN.post(f"{base}/v1/models/{MODEL}:predict", json={"instances": [1.0]}, timeout=10)
        assert r.headers.get_list("set-cookie") == ["a=1", "b=2"] and r.headers["x-tag"] == "one, two"


def test_a_refused_server_during_the_stop_is_answered_shutting_down_not_being_replaced(tmp_path: Path) -> None:
    """review19c F6: a stopping agent answered a refusal from its only server "is being replaced" (503
    ``provisioning``, Retry-After 1), though nothing replaces it any more (the reconcile loop starts nothing once
    shutting down); the client asked this agent again. Now 503 ``shutting_down``: the client asks another agent."""

    def one_request(conn: socket.socket) -> None:  # then closes: no kept connection outlives the listener
        parser = h11.Connection(h11.SERVER)
        while not isinstance(event := parser.next_event(), h11.EndOfMessage):
            if event is h11.NEED_DATA:
                data = conn.recv(65536)
                if not data:
                    return
                parser.receive_data(data)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n")
        conn.sendall(b"Content-Length: %d\r\n\r\n" % len(PROBE) + PROBE)

    server = LoopbackServer(one_request)
    try:
        with agent_in_front([server.url], tmp_path, pool_timeout=TIMEOUT, reconcile_interval_s=30.0) as (base, agent):
            server.sock.shutdown(socket.SHUT_RDWR)  # wakes its accept(): a close alone left the port listening
            server.close()  # the server is gone: connections to it are refused
            agent.begin_shutdown()
            r = PLAIN.post(f"{base}/v1/models/{MODEL}:predict", json={"instances": [1.0]}, timeout=10)
    finally:
        server.close()
    assert (r.status_code, r.headers.get(routes.ERROR_HEADER)) == (503, "shutting_down"), (r.headers, r.text)
    assert "agent shutting down" in r.json()["error"] and r.headers["retry-after"] == "2"


# -- review14d S1: a request its server received whole is not sent again -----------------------------------------


def test_an_input_that_kills_its_server_reaches_one_server_once(tmp_path: Path) -> None:
    """review14d S1: the server read the predict whole and closed without answering (it died of the input); the
    pool's stale-connection retry sent it to that server again, then the proxy to the next: received [2, 1] times,
    two servers down for one request. Now one server only (the pool's one retry on a fresh connection reaches the
    same server, which refuses it where it really died), and the client gets a 502 that says so."""
    deadly: list[int] = []

    def answer(conn: socket.socket, body: bytes) -> None:
        if b"deadly" in body:
            deadly.append(conn.getsockname()[1])
            conn.close()  # the model server dies on this input: no answer
            return
        ok(conn, body)

    with agent_before([answer, answer], tmp_path) as (base, agent, _ups):
        with httpx.Client(timeout=10) as c:
            for _ in range(8):  # pooled connections to both servers: the stale-connection retry had its chance
                assert c.post(f"{base}/v1/models/{MODEL}:predict", json={"instances": [1.0]}).status_code == 200
            r = c.post(f"{base}/v1/models/{MODEL}:predict", json={"instances": [1.0], "deadly": 1})
        time.sleep(2 * TIMEOUT)  # a re-send, had there been one, would have reached a server by now
        assert (r.status_code, r.headers[routes.ERROR_HEADER]) == (502, "upstream_broke_off"), r.text
        assert 1 <= len(deadly) <= 2 and len(set(deadly)) == 1, deadly  # one server, never the next
        wait_for(lambda: len(agent.store.requests_since(0, 100)[0]) == 9, timeout=10)
        records, _ = agent.store.requests_since(0, 100)
        assert (records[-1].status, records[-1].node) == (502, "n1")
