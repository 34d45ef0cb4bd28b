"""HTTP bounds of a real agent over loopback, with raw sockets where a client misbehaves on purpose.

Each bound of agent/http_limits.py and agent/client_ids.py is exercised here: chunked body over the limit,
half-sent headers and bodies (slowloris), the concurrency limit, the per-address connection cap, the
header size limit, malformed client input, made-up client ids, /health when reconciling fails, API docs.
"""

from __future__ import annotations

import http.client
import select
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.service.conftest import PLAIN, STATS_READER, RunningAgent, free_port, shared_agent
from tests.waiting import wait_for

# scripts/test.sh runs it with nothing else: /health's p99 under 250 ms and other deadlines, on a core of its own
pytestmark = pytest.mark.serial

PREDICT = "/services/half_plus_two/v1/models/half_plus_two:predict"
QUIET = "--no-discovery"  # no mDNS: agents of parallel tests stay strangers


# Agents that several tests start with the same arguments, started once for the module (each test leaves it as it found
# it: the connections it opens are refused or timed out by the agent and closed; none reads a count that another's
# requests move; none provisions a model server). Running the module in its order and reversed, twice each, gave the
# same verdicts.
BODY_LIMITED = (QUIET, "--max-body-mb", "1")


@pytest.fixture(scope="module")
def body_limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningAgent]:
    """--max-body-mb 1: the declared body over the limit (refused before the route, so nothing is provisioned)."""
    with shared_agent(tmp_path_factory.mktemp("body"), "a", *BODY_LIMITED) as a:
        yield a


@pytest.fixture(scope="module")
def header_timed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningAgent]:
    """A 1 s header deadline: half-sent headers, a trickle of header bytes, idle and kept-alive connections."""
    with shared_agent(tmp_path_factory.mktemp("header"), "a", QUIET, env={"PEERSERVE_HEADER_TIMEOUT_S": "1"}) as a:
        yield a


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningAgent]:
    """The defaults (no mDNS): oversized headers, malformed client fields, API docs off."""
    with shared_agent(tmp_path_factory.mktemp("plain"), "a", QUIET) as a:
        yield a


def connect(agent: RunningAgent, source: str = "127.0.0.1") -> socket.socket:
    return socket.create_connection((agent.host, agent.port), timeout=30, source_address=(source, 0))


def read_until_closed(sock: socket.socket, timeout: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection, and how long that took."""
    started = time.monotonic()
    sock.settimeout(timeout)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    return data, time.monotonic() - started


def read_one_response(sock: socket.socket) -> bytes:
    """One response with a Content-Length body, leaving the connection open."""
    sock.settimeout(10)
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.lower().split(b"\r\n")
    length = next(int(line.split(b":")[1]) for line in lines if line.startswith(b"content-length"))
    while len(body) < length:
        body += sock.recv(65536)
    return data


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1]) if response.startswith(b"HTTP/1.1 ") else 0


def test_chunked_body_over_the_limit_is_refused_while_it_streams(agents: Any) -> None:
    # an agent of its own: the predict route streams the body on to a model server, so it provisions half_plus_two
    # first and this test leaves that server running; the agents fixture kills it with the agent at the test's end
    a = agents("a", *BODY_LIMITED)
    sock = connect(a)
    sock.sendall(
        f"POST {PREDICT} HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\n"
        "Transfer-Encoding: chunked\r\n\r\n".encode()
    )
    chunk = b"10000\r\n" + b" " * 0x10000 + b"\r\n"  # 64 KiB chunks, 64 MiB in all unless refused first
    sent, deadline = 0, time.monotonic() + 60
    sock.setblocking(False)
    while sent < 64 * 2**20 and time.monotonic() < deadline:
        readable, writable, _ = select.select([sock], [sock], [], 5)
        if readable:
            break
        if writable:
            try:
                sent += sock.send(chunk)  # a partial send just garbles the stream past the limit
            except (BlockingIOError, BrokenPipeError, ConnectionResetError):
                break
    sock.setblocking(True)
    response, _ = read_until_closed(sock, 30)
    assert status_of(response) == 413, response[:300]
    assert b"request body over 1048576 bytes" in response
    assert sent < 32 * 2**20, f"the agent read {sent} bytes before refusing"
    assert a.get("/health").status_code == 200


def health_latency(agent: RunningAgent) -> float:
    """Seconds for one GET /health on a new connection (http.client: httpx builds a TLS context per call)."""
    conn = http.client.HTTPConnection(agent.host, agent.port, timeout=30)
    started = time.monotonic()
    conn.request("GET", "/health")
    assert conn.getresponse().status == 200
    took = time.monotonic() - started
    conn.close()
    return took


def test_a_body_in_one_byte_chunks_gets_400_and_the_event_loop_keeps_serving(agents: Any) -> None:
    """Review 11a: h11 parsed each 1-byte chunk in Python on the loop that runs SWIM and the election (0.4 s per
    256 KiB read); two such connections to one member got it declared dead and the leader moved (term 1 -> 9)."""
    mdns_off = {"PEERSERVE_MDNS": "false"}
    port = free_port()
    a = agents("a", env=mdns_off, port=port)
    b = agents("b", "--seeds", f"http://127.0.0.1:{port}", env=mdns_off)

    def view() -> tuple[str | None, Any, Any]:
        cluster = b.get("/cluster").json()
        status = next((m["status"] for m in cluster["members"] if m["node_id"] == "a"), None)
        return status, cluster["leader"], cluster["term"]

    wait_for(lambda: view()[0] == "alive" and view()[1] is not None, 30, step=0.2)
    before = view()
    head = f"POST {PREDICT} HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
    tiny = b"1\r\nx\r\n" * 20_000  # 120 KB of 1-byte chunks
    probe = connect(a)
    started = time.monotonic()
    probe.sendall(head + tiny)  # the agent drops what follows its answer for a moment, so this all goes out
    response, _ = read_until_closed(probe, 10)
    assert status_of(response) == 400 and b"too many small chunks (257 for 257 bytes)" in response
    assert time.monotonic() - started < 5

    stop = threading.Event()

    def attacker() -> None:  # as the review did: send chunks until cut off, then again
        while not stop.is_set():
            with socket.create_connection((a.host, a.port), timeout=10) as sock:
                try:
                    sock.sendall(head)
                    while not stop.is_set():
                        sock.sendall(tiny)
                except OSError:
                    pass

    threads = [threading.Thread(target=attacker) for _ in range(2)]
    for t in threads:
        t.start()
    latencies, views = [], []
    try:
        until = time.monotonic() + 6
        while time.monotonic() < until:
            latencies.append(health_latency(a))
            views.append(view())
            time.sleep(0.05)
    finally:
        stop.set()
        for t in threads:
            t.join()
    latencies.sort()
    p99 = latencies[int(0.99 * (len(latencies) - 1))]
    p50, top = latencies[len(latencies) // 2], latencies[-1]
    print(f"\n/health, two 1-byte-chunk senders: n={len(latencies)} p50 {1000 * p50:.1f} ms p99 {1000 * p99:.1f} ms"
          f" max {1000 * top:.1f} ms")  # fmt: skip
    # The loop keeps serving: half the probes are answered at once. Before the fix every probe waited behind 0.4 s
    # parses. The tail is not asserted tightly: on a 2-core CI machine the pytest process (its two attacker threads and
    # this probe share one GIL), both agents and the attack contend for the cores, and a p99 of 81 probes, the second
    # slowest, met 525 ms there once (p50 4 ms). What the review saw break, the membership and the leader, is checked
    # exactly below; a probe near SWIM's suspicion time would be a stall, not noise.
    assert p50 < 0.1, f"/health p50 {1000 * p50:.0f} ms while two clients sent 1-byte chunks"
    assert top < 2.0, f"/health took {1000 * top:.0f} ms once while two clients sent 1-byte chunks"
    # ... nor a steady share of stalls (one attacker's slicing broken, say), which a p50 and a max let through
    slow = sum(took > 0.25 for took in latencies)
    assert slow <= max(4, len(latencies) // 10), f"{slow} of {len(latencies)} /health probes over 250 ms"
    assert set(views) == {before}, f"b's view of a (status, leader, term) changed: {sorted(set(views), key=str)}"


def test_declared_body_over_the_limit_is_refused_before_reading(body_limited: RunningAgent) -> None:
    a = body_limited
    sock = connect(a)
    sock.sendall(f"POST {PREDICT} HTTP/1.1\r\nHost: a\r\nContent-Length: {2**21}\r\n\r\n".encode())
    response, took = read_until_closed(sock, 30)
    assert status_of(response) == 413 and took < 10
    assert a.server_pids() == []  # refused before the route: the shared agent is left as it was found


def test_a_stdlib_client_uploading_over_the_limit_reads_its_413(body_limited: RunningAgent) -> None:
    """Python's http.client (and urllib.request on it) sends the whole body before it reads. The agent answers 413
    before reading the body and closed at once: the unread bytes reset the connection, and the client got
    ConnectionResetError or BrokenPipeError where the 413 was (5 of 5 at 4 MB). The agent now lingers
    (agent/http_sliced.py ``LingeringTransport``)."""
    a = body_limited
    body = b"x" * (4 * 2**20)  # 4 MiB against --max-body-mb 1
    for _ in range(3):
        conn = http.client.HTTPConnection(a.host, a.port, timeout=30)
        conn.request("POST", PREDICT, body=body, headers={"Content-Type": "application/json"})
        answer = conn.getresponse()
        assert answer.status == 413 and b"request body over 1048576 bytes" in answer.read()
        conn.close()
    assert a.server_pids() == []  # refused before the route, as the declared body's test says


def test_half_sent_headers_get_408_and_the_connection_closes(header_timed: RunningAgent) -> None:
    a = header_timed
    sock = connect(a)
    sock.sendall(b"GET /health HTTP/1.1\r\nHost: a\r\n")
    response, took = read_until_closed(sock, 30)
    assert status_of(response) == 408 and b"request headers not received within 1 s" in response
    assert 0.8 < took < 5


def test_a_trickle_of_header_bytes_does_not_hold_the_connection(header_timed: RunningAgent) -> None:
    a = header_timed
    sock = connect(a)
    sock.sendall(b"GET /health HTTP/1.1\r\nX-Slow: ")
    started = time.monotonic()
    closed_after = None
    while time.monotonic() - started < 10:
        try:
            sock.sendall(b"a")
        except (BrokenPipeError, ConnectionResetError):
            closed_after = time.monotonic() - started
            break
        if select.select([sock], [], [], 0.2)[0]:
            response, _ = read_until_closed(sock, 5)
            assert status_of(response) == 408
            closed_after = time.monotonic() - started
            break
    assert closed_after is not None and closed_after < 4, "a slowloris client held the connection"


def test_idle_and_kept_alive_connections_are_bounded_too(header_timed: RunningAgent) -> None:
    a = header_timed
    idle = connect(a)
    data, took = read_until_closed(idle, 30)
    assert data == b"" and took < 8  # closed without a word (uvicorn's keep-alive or our deadline)
    kept = connect(a)
    kept.sendall(b"GET /health HTTP/1.1\r\nHost: a\r\n\r\n")
    assert status_of(read_one_response(kept)) == 200
    kept.sendall(b"GET /health HTTP/1.1\r\nHo")  # the second request never completes
    response, took = read_until_closed(kept, 30)
    assert status_of(response) == 408 and took < 5


def test_half_sent_body_gets_408(agents: Any) -> None:
    a = agents("a", QUIET, "--body-timeout-s", "1", "--provision-wait-s", "20")
    sock = connect(a)
    sock.sendall(
        f"POST {PREDICT} HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
        '{"instances": ['.encode()
    )
    response, took = read_until_closed(sock, 60)
    assert status_of(response) == 408 and b"request body not received within 1 s" in response
    assert took < 30
    assert a.get("/health").status_code == 200


def test_concurrency_limit_answers_503_and_recovers(agents: Any) -> None:
    a = agents("a", QUIET, "--max-concurrency", "4", "--header-timeout-s", "60")
    held = [connect(a) for _ in range(4)]
    deadline = time.monotonic() + 10  # the agent may accept the held connections a moment later
    while (r := PLAIN.get(f"{a.url}/health", timeout=10)).status_code != 503:
        assert time.monotonic() < deadline, f"no 503 with 4 connections held: {r.status_code}"
        time.sleep(0.1)
    assert "max_concurrency" in r.json()["error"] and r.headers["retry-after"].isdigit()  # uvicorn's was plain text
    for sock in held:
        sock.close()
    deadline = time.monotonic() + 10
    while PLAIN.get(f"{a.url}/health", timeout=10).status_code != 200:
        assert time.monotonic() < deadline, "the agent did not recover from the concurrency limit"
        time.sleep(0.1)


def test_one_address_cannot_hold_every_connection(agents: Any) -> None:
    a = agents("a", QUIET, "--header-timeout-s", "60", env={"PEERSERVE_MAX_CONNECTIONS_PER_ADDRESS": "3"})
    held = [connect(a) for _ in range(3)]
    extra = connect(a)
    data, took = read_until_closed(extra, 10)
    assert status_of(data) == 503 and b"over 3 connections open from 127.0.0.1" in data and took < 5
    other = connect(a, source="127.0.0.2")  # another host still gets in
    other.sendall(b"GET /health HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    response, _ = read_until_closed(other, 10)
    assert status_of(response) == 200
    for sock in held:
        sock.close()


def test_oversized_headers_are_refused(plain: RunningAgent) -> None:
    a = plain
    whole = connect(a)  # complete in one write: refused before h11 parses it (it would, whole: review25 F1)
    whole.sendall(b"GET /health HTTP/1.1\r\nHost: a\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n")
    response, _ = read_until_closed(whole, 10)
    assert status_of(response) == 431 and b"over 16384 bytes" in response
    piecemeal = connect(a)  # never complete: refused once past the limit (h11's own refusal was a 400)
    piecemeal.sendall(b"GET /health HTTP/1.1\r\nHost: a\r\nX-Big: ")
    for _ in range(20):
        time.sleep(0.02)
        try:
            piecemeal.sendall(b"a" * 1000)
        except (BrokenPipeError, ConnectionResetError):
            break
    response, _ = read_until_closed(piecemeal, 10)
    assert status_of(response) in (0, 431)  # (0: the client's next write met the reset first)


def test_client_fields_overflow_nan_and_names_are_4xx(plain: RunningAgent) -> None:
    a = plain
    node = a.get("/health").json()["node_id"]
    for rtt in ("n1=NaN", "n1=Infinity", "n1=1e400", f"{node}=" + "9" * 400, f"{node}=1e30", "bad\x01=1"):
        r = a.get("/services", headers={"X-Peerserve-RTT": rtt})
        assert r.status_code == 400 and "RTT" in r.json()["error"], (rtt, r.text)
    for query in ("rtt=n1:nan", "rtt=n1:1e400", "rtt=" + ",".join(f"n{i}:1" for i in range(65))):
        r = a.get(f"/services/half_plus_two?{query}")
        assert r.status_code == 400, (query, r.text)
    for client in ("phone\t7", "x" * 129, "a/b"):
        r = a.get("/services", headers={"X-Peerserve-Client": client})
        assert r.status_code == 400 and "X-Peerserve-Client" in r.json()["error"], client
    for path in ("/services/half_plus_two%0A", PREDICT + "%0A"):
        r = PLAIN.post(a.url + path, json={"instances": [1]}, timeout=30) if ":predict" in path else a.get(path)
        assert r.status_code == 400 and "error" in r.json(), (path, r.text)
    for since in ("18446744073709551616", "9223372036854775808", "-1", "1e3", "NaN"):
        r = a.get(f"/stats/requests?since={since}")
        assert r.status_code == 422 and "error" in r.json(), (since, r.text)
    assert a.get("/health").status_code == 200


def test_made_up_client_ids_and_node_names_cannot_fake_demand(agents: Any) -> None:
    a = agents("a", QUIET, "--provision-wait-s", "20")
    node = a.get("/health").json()["node_id"]
    fakes = ", ".join(f"fake{k}=1" for k in range(60))
    with httpx.Client(base_url=a.url, timeout=30) as http:
        for i in range(200):
            headers = {
                "X-Peerserve-Client": f"made-up-{i}",
                "X-Peerserve-RTT": f"{fakes}, {node}=2",
                "X-Forwarded-For": f"10.0.0.{i}",  # not believed: the source address is the socket's
            }
            r = http.get("/services/half_plus_two", headers=headers)
            assert r.status_code == 200, r.text
        log = http.get("/stats/requests?since=0&limit=10000", headers=STATS_READER).json()["requests"]
    clients = {r["client"] for r in log}
    assert len(log) == 200 and clients == {*(f"made-up-{i}@127.0.0.1" for i in range(8)), "127.0.0.1"}
    assert all(r["rtt_ms"] == {node: 2.0} for r in log)  # reports about nodes nobody knows are dropped
    db = sqlite3.connect(f"file:{a.data_dir / 'peerserve.sqlite3'}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT COUNT(*) FROM client_rtt").fetchone()[0]
    finally:
        db.close()
    assert rows <= 9, f"{rows} client_rtt rows from one host"


def test_health_is_degraded_while_a_model_server_cannot_start(agents: Any) -> None:
    """A start that fails with an error the runtime did not foresee (here the OS's: its log is a folder) is the model's
    failure, backed off and on /health, not the reconcile round's (review27b F5: it ended the round, so every other
    model's start in flight went unlisted and was started again next round, and the model was retried every round)."""
    a = agents("a", QUIET, "--provision-wait-s", "1")
    blocker = Path(a.data_dir) / "logs" / "half_plus_two.log"
    blocker.mkdir(parents=True)  # the process runtime cannot open the model server's log: starts fail
    a.get("/services/half_plus_two")  # provisions on demand; the start raises
    deadline = time.monotonic() + 20
    while (health := a.get("/health").json())["status"] != "degraded":
        assert time.monotonic() < deadline, health
        time.sleep(0.2)
    assert "IsADirectoryError" in health["failing_models"]["half_plus_two"]["error"]
    assert any(reason.startswith("model half_plus_two failing") for reason in health["reasons"])
    assert health["reconcile"]["error"] is None  # the round itself went on
    blocker.rmdir()
    deadline = time.monotonic() + 30
    while (health := a.get("/health").json())["status"] != "ok":
        assert time.monotonic() < deadline, health
        time.sleep(0.2)
    assert health["reconcile"]["error"] is None and health["reasons"] == []


def test_api_docs_are_off_unless_asked_for(agents: Any, plain: RunningAgent) -> None:
    off = plain
    for path in ("/docs", "/redoc", "/openapi.json"):
        assert off.get(path).status_code == 404, path
    on = agents("on", QUIET, "--api-docs")
    for path in ("/docs", "/redoc", "/openapi.json"):
        assert on.get(path).status_code == 200, path
    assert "/services/{model}" in on.get("/openapi.json").json()["paths"]
