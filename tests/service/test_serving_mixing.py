"""One client's bad request never breaks another client's good one (issue #11's most serious finding).

Before: the stand-in answered 404/405 before reading the body, the leftover bytes were read as the
next request on that keep-alive connection, and the agent's pooled upstream connection carried them
into another client's predict (``400 Bad request syntax ('{"instances": [1.0, 5.0]}POST /v1/...')``).
Now both ends are fixed: the stand-in always reads (or closes), and the proxy's pool never reuses a
connection after an incomplete exchange or an error answer to a request with a body.
"""

from __future__ import annotations

import asyncio
import json
import random
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import h11
import httpx
import pytest

from agent.modelserver import serve
from agent.serving.upstream import UpstreamPool, UpstreamResponse
from tests.service.conftest import PLAIN

CLIENTS = 12
ROUNDS = 24


def _exchange_on_one_socket(port: int, raw_requests: list[bytes]) -> list[tuple[int, bytes]]:
    """Send raw requests one after another on ONE keep-alive connection; parse each answer with h11."""
    answers = []
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        conn = h11.Connection(h11.CLIENT)
        for raw in raw_requests:
            sock.sendall(raw)
            status, body = 0, b""
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(sock.recv(65536))
                elif isinstance(event, h11.Response):
                    status = event.status_code
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage):
                    break
                elif isinstance(event, h11.ConnectionClosed):
                    return [*answers, (status, body)]
            answers.append((status, body))
            if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                return answers
            # h11 tracks only what it sent; our raw bytes bypassed it, so mark our side done by hand.
            conn = h11.Connection(h11.CLIENT)
    return answers


def _post(path: str, body: bytes, extra: str = "") -> bytes:
    return f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n{extra}\r\n".encode() + body


BAD_REQUESTS = {
    "unknown model with a body": _post("/v1/models/nope:predict", b'{"instances": [1.0, 5.0]}'),
    "wrong version with a body": _post("/v1/models/half_plus_two/versions/7:predict", b'{"instances": [1.0]}'),
    "unknown label with a body": _post("/v1/models/half_plus_two/labels/canary:predict", b'{"instances": [1.0]}'),
    "wrong method path with a body": _post("/v1/models/half_plus_two/metadata", b'{"instances": [1.0]}'),
    "not a /v1 path with a body": _post("/admin", b'{"instances": [1.0]}'),
    "malformed JSON": _post("/v1/models/half_plus_two:predict", b'{"instances": [1.0,'),
    "GET with a body": b"GET /v1/models/half_plus_two HTTP/1.1\r\nHost: x\r\nContent-Length: 9\r\n\r\n[1, 2, 3]",
    "unknown method with a body": b"BREW /v1/models/half_plus_two HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\ntea!",
    "chunked body to a bad path": (
        b'POST /v1/models/nope:predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{"ins\r\n0\r\n\r\n'
    ),
    "malformed Content-Length": (
        b"POST /v1/models/half_plus_two:predict HTTP/1.1\r\nHost: x\r\nContent-Length: 2x\r\n\r\n[1]"
    ),
}


@pytest.fixture
def stand_in() -> Iterator[int]:
    server = serve("half_plus_two", "127.0.0.1", 0)
    yield int(server.server_address[1])
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("bad", sorted(BAD_REQUESTS))
def test_stand_in_never_reads_a_body_as_the_next_request(stand_in: int, bad: str) -> None:
    good = _post("/v1/models/half_plus_two:predict", b'{"instances": [4.0]}')
    answers = _exchange_on_one_socket(stand_in, [BAD_REQUESTS[bad], good])
    assert answers[0][0] == 200 if bad == "GET with a body" else 400 <= answers[0][0] < 500, answers
    if len(answers) == 2:  # the server kept the connection: then the good request must be answered right
        assert answers[1] == (200, b'{"predictions": [4.0]}'), answers
    # Either way a fresh connection works (a closed one must not leave a half-read request behind).
    assert _exchange_on_one_socket(stand_in, [good]) == [(200, b'{"predictions": [4.0]}')]


def _bad_through_agent(http: httpx.Client, base: str, rng: random.Random) -> httpx.Response:
    kind = rng.randrange(6)
    body = b'{"instances": [1.0, 5.0]}'
    if kind == 0:
        return http.post(f"{base}/v1/models/half_plus_two/versions/7:predict", content=body)
    if kind == 1:
        return http.post(f"{base}/v1/models/half_plus_two:predict", content=b'{"instances": [1.0,')
    if kind == 2:
        return http.post(f"{base}/services/half_plus_two/v1/models/half_plus_two/labels/x:predict", content=body)
    if kind == 3:
        return http.post(f"{base}/v1/models/half_plus_two:classify", content=body)
    if kind == 4:
        return http.post(f"{base}/v1/models/half_plus_two:predict", content=iter([b'{"instances": ', b"[1.0, oops"]))
    return http.post(f"{base}/v1/models/half_plus_two/metadata", content=body)


def test_many_clients_interleaving_bad_and_good_requests_through_the_agent(agents: Any) -> None:
    a = agents("a")
    assert (
        PLAIN.post(a.url + "/v1/models/half_plus_two:predict", json={"instances": [0]}, timeout=30).status_code == 200
    )
    failures: list[str] = []
    good_count = [0]

    def client(n: int) -> None:
        rng = random.Random(n)
        with httpx.Client(timeout=30) as http:  # keep-alive to the agent, like a real client
            for i in range(ROUNDS):
                if rng.random() < 0.5:
                    bad = _bad_through_agent(http, a.url, rng)
                    if not (400 <= bad.status_code < 500) or set(bad.json()) != {"error"}:
                        failures.append(f"bad request answered {bad.status_code} {bad.text[:200]}")
                    continue
                x = n * 1000 + i  # unique per client and round: a crossed answer shows
                path = (
                    "/v1/models/half_plus_two:predict"
                    if i % 2
                    else "/services/half_plus_two/v1/models/half_plus_two:predict"
                )
                r = http.post(a.url + path, json={"instances": [float(x)]})
                good_count[0] += 1
                if r.status_code != 200 or r.json() != {"predictions": [0.5 * x + 2.0]}:
                    failures.append(f"client {n} round {i}: {r.status_code} {r.text[:200]}")

    threads = [threading.Thread(target=client, args=(n,)) for n in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert good_count[0] > CLIENTS * ROUNDS // 4
    assert failures == []


class _AnswersBeforeReading(BaseHTTPRequestHandler):
    """The old stand-in's bug on purpose: an error answered before the body is read, keep-alive kept."""

    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        if self.path != "/ok":
            self._send(404, b'{"error": "not found"}')  # the body stays unread on the connection
            return
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self._send(200, json.dumps({"echo": json.loads(body)}).encode())

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


async def _interleave_through_pool(port: int) -> list[str]:
    pool = UpstreamPool(max_idle_per_host=1)
    wrong: list[str] = []
    for i in range(40):
        path, payload = ("/bad", b'{"x": "leftover"}') if i % 2 else ("/ok", json.dumps({"n": i}).encode())
        headers = [("Content-Type", "application/json"), ("Content-Length", str(len(payload)))]

        async def one_chunk(data: bytes = payload) -> Any:
            yield data

        from agent.serving.upstream import Replay

        try:
            response = await pool.request(
                "POST", f"http://127.0.0.1:{port}{path}", headers, Replay(one_chunk(), 1 << 20)
            )
            body = await response.read()
            await response.aclose()
        except Exception as exc:
            wrong.append(f"{i}: {exc!r}")
            continue
        if path == "/ok" and (response.status != 200 or json.loads(body) != {"echo": {"n": i}}):
            wrong.append(f"{i}: {response.status} {body[:100]!r}")
    await pool.aclose()
    return wrong


def test_pool_keeps_a_servers_unread_body_away_from_the_next_request_and_the_check_catches_it_when_off() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _AnswersBeforeReading)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = int(server.server_address[1])
    try:
        assert asyncio.run(_interleave_through_pool(port)) == []
        UpstreamResponse.reuse_after_error_with_body = True  # switch the property off: the check must see it
        try:
            assert asyncio.run(_interleave_through_pool(port)) != []
        finally:
            UpstreamResponse.reuse_after_error_with_body = False
    finally:
        server.shutdown()
        server.server_close()


def test_a_streamed_body_over_the_limit_is_refused_and_the_next_request_is_fine(agents: Any) -> None:
    a = agents("a", env={"PEERSERVE_MAX_BODY_MB": "0.01"})  # ~10 KB
    big = [b'{"instances": [' + b"1.0, " * 1000, b"1.0" * 2000 + b"]}"]
    with httpx.Client(timeout=30) as http:
        r = http.post(a.url + "/v1/models/half_plus_two:predict", content=iter(big))  # chunked: no length up front
        assert r.status_code == 413 and set(r.json()) == {"error"}, r.text
        ok = http.post(a.url + "/v1/models/half_plus_two:predict", json={"instances": [2.0]})
        assert ok.status_code == 200 and ok.json() == {"predictions": [3.0]}


async def _concurrent_through_small_pool(port: int) -> tuple[int, int]:
    pool = UpstreamPool(max_idle_per_host=2)

    async def one() -> None:
        response = await pool.request("GET", f"http://127.0.0.1:{port}/v1/models/half_plus_two", [], None)
        await response.read()
        await response.aclose()

    await asyncio.gather(*(one() for _ in range(8)))
    idle, opened = pool.idle_count(), pool.opened
    await pool.aclose()
    return idle, opened


def test_pool_keeps_at_most_its_bound_of_idle_connections(stand_in: int) -> None:
    idle, opened = asyncio.run(_concurrent_through_small_pool(stand_in))
    assert opened == 8 and idle == 2


class _ClosesSilently(BaseHTTPRequestHandler):
    """Answers, then drops the keep-alive connection without saying so (as servers do after an idle timeout)."""

    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True


async def _through_a_server_that_drops_idle_connections(port: int, pause: float) -> tuple[list[bytes], int]:
    from agent.serving.upstream import Replay

    pool = UpstreamPool()
    got = []
    for i in range(6):
        payload = f"request {i}".encode()

        async def one_chunk(data: bytes = payload) -> Any:
            yield data

        response = await pool.request(
            "POST", f"http://127.0.0.1:{port}/", [("Content-Length", str(len(payload)))], Replay(one_chunk(), 1 << 20)
        )
        got.append(await response.read())
        await response.aclose()
        await asyncio.sleep(pause)  # with a pause the server's FIN arrives while the connection is idle
    opened = pool.opened
    await pool.aclose()
    return got, opened


@pytest.mark.parametrize("pause", [0.05, 0.0])
def test_a_pooled_connection_the_server_dropped_is_not_used_and_nothing_fails(pause: float) -> None:
    """Noticed while idle (pause), or on use (no pause: the request is sent again on a fresh connection)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ClosesSilently)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        got, opened = asyncio.run(_through_a_server_that_drops_idle_connections(int(server.server_address[1]), pause))
    finally:
        server.shutdown()
        server.server_close()
    assert got == [f"request {i}".encode() for i in range(6)]
    assert opened >= 6  # each dropped connection was replaced


def test_stand_in_refuses_a_body_over_its_bound_and_closes(stand_in: int) -> None:
    from agent.modelserver import MAX_BODY

    head = f"POST /v1/models/half_plus_two:predict HTTP/1.1\r\nHost: x\r\nContent-Length: {MAX_BODY + 1}\r\n\r\n"
    answers = _exchange_on_one_socket(stand_in, [head.encode() + b'{"instances": [1.0]}'])
    assert len(answers) == 1 and answers[0][0] == 413  # and the connection ended (no second answer possible)


def test_replay_keeps_at_most_its_bound() -> None:
    from agent.serving.upstream import REPLAY_LIMIT, Replay

    async def run() -> tuple[bool, int, bool]:
        async def chunks(n: int) -> Any:
            for _ in range(n):
                yield b"x" * 8192

        small = Replay(chunks(2), 1 << 30)
        sent = b"".join([c async for c in small.chunks()])
        again = b"".join([c async for c in small.chunks()])  # replayed whole
        big = Replay(chunks(REPLAY_LIMIT // 8192 + 4), 1 << 30)
        _ = [c async for c in big.chunks()]
        return small.replayable and sent == again, big._kept_size, big.replayable

    small_ok, kept, big_replayable = asyncio.run(run())
    assert small_ok and kept <= REPLAY_LIMIT and not big_replayable


def test_a_request_h11_cannot_write_is_refused_at_once_not_a_server_failure(stand_in: int) -> None:
    from agent.serving.upstream import Unsendable

    async def send(headers: list[tuple[str, str]], target: str) -> None:
        with pytest.raises(Unsendable):  # was an UpstreamError (a 502) after waiting 1 s for an answer
            await UpstreamPool().request("POST", f"http://127.0.0.1:{stand_in}{target}", headers, None)

    asyncio.run(send([("X-Bad", "a\x00b")], "/v1/models/half_plus_two:predict"))
    asyncio.run(send([], "/v1/models/half plus two:predict"))
