"""The client against a hostile agent (real loopback HTTP): every call has a whole-call deadline, and measuring
RTTs to the members an agent lists has one time budget and a cap on the members probed.

review14a F4: any agent's /cluster decides which members the client probes (3 x GET /health each), with httpx's
per-read timeout and nothing bounding a call: 64 listed members that trickle their answer held ``endpoint()``
for as long as they trickled; 64 that accept and never answer cost 69 s, again every ``rtt_ttl_s``.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from client import AsyncClient, Client, ClusterUnreachableError, deadline, ops
from client.ops import RTT_BUDGET_S, RTT_MAX_PROBED, rtt_targets
from tests.service.scripted import LoopbackServer

# scripts/test.sh runs it with nothing else: call times bounded from both sides (1.4-4 s, 0.9-3 s)
pytestmark = pytest.mark.serial

MODEL = "half_plus_two"


class Server(LoopbackServer):
    """A loopback listener handing each connection to ``handle`` in a thread; ``stop`` ends the trickles."""

    def __init__(self, handle: Callable[[socket.socket], None]) -> None:
        self.stop = threading.Event()
        super().__init__(handle)

    def close(self) -> None:
        self.stop.set()
        super().close()


def _answer(conn: socket.socket, body: bytes) -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
    conn.sendall(head + body)


def _path(conn: socket.socket) -> str:
    return conn.recv(65536).split(b" ", 2)[1].decode()


def _trickled_body(stop: threading.Event) -> Callable[[socket.socket], None]:
    def handle(conn: socket.socket) -> None:
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000000\r\n\r\n")
        while not stop.wait(0.2):
            conn.sendall(b" ")

    return handle


def _trickled_head(stop: threading.Event) -> Callable[[socket.socket], None]:
    def handle(conn: socket.socket) -> None:
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 200 OK\r\nX-Slow: ")
        while not stop.wait(0.2):
            conn.sendall(b"a")

    return handle


def _silent(stop: threading.Event) -> Callable[[socket.socket], None]:
    def handle(conn: socket.socket) -> None:
        conn.recv(65536)
        stop.wait(60)

    return handle


@pytest.fixture
def cluster() -> Iterator[tuple[Server, Server, dict[str, Server]]]:
    """(rogue, honest, hostile members): the rogue lists 64 hostile members (trickled bodies, trickled heads,
    silent) and answers every other path with the same /cluster (not an endpoint); the honest agent answers."""
    stop = threading.Event()
    hostile = {
        "body": Server(_trickled_body(stop)),
        "head": Server(_trickled_head(stop)),
        "silent": Server(_silent(stop)),
    }
    kinds = list(hostile)
    members = [{"node_id": f"m{i}", "api_url": hostile[kinds[i % 3]].url, "status": "alive"} for i in range(64)]
    listing = json.dumps({"node_id": "r", "members": members}).encode()

    def rogue_handle(conn: socket.socket) -> None:
        conn.recv(65536)
        _answer(conn, listing)

    rogue = Server(rogue_handle)

    def honest_handle(conn: socket.socket) -> None:
        path = _path(conn)
        if path == "/cluster":
            body: Any = {"node_id": "h", "members": [{"node_id": "h", "api_url": honest.url, "status": "alive"}]}
        elif path == f"/services/{MODEL}":
            body = {"model": MODEL, "node": "h", "url": "http://127.0.0.1:9", "why": {}}
        else:
            body = {"status": "ok"}
        _answer(conn, json.dumps(body).encode())

    honest = Server(honest_handle)
    try:
        yield rogue, honest, hostile
    finally:
        stop.set()
        for server in (rogue, honest, *hostile.values()):
            server.close()


def _bounded(run: Callable[[], Any], cap_s: float = 40.0) -> tuple[Any, float]:
    """``run()`` in a thread (the old client hung there): its result or exception, and how long it took."""
    out: list[Any] = []

    def go() -> None:
        try:
            out.append(run())
        except Exception as exc:  # handed back to the test
            out.append(exc)

    began = time.monotonic()
    thread = threading.Thread(target=go, daemon=True)
    thread.start()
    thread.join(cap_s)
    assert out, f"still blocked after {cap_s:g} s"
    return out[0], time.monotonic() - began


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_endpoint_returns_within_the_budget_despite_64_hostile_members(cluster: Any, flavour: str) -> None:
    rogue, honest, _hostile = cluster
    agents = [rogue.url, honest.url]

    def sync() -> Any:
        with Client(agents=agents, timeout=5.0) as c:
            return c.endpoint(MODEL), c.core.rtts

    def in_loop() -> Any:
        async def go() -> Any:
            async with AsyncClient(agents=agents, timeout=5.0) as c:
                return await c.endpoint(MODEL), c.core.rtts

        return asyncio.run(go())

    result, took = _bounded(sync if flavour == "sync" else in_loop)
    assert not isinstance(result, Exception), result
    endpoint, rtts = result
    assert (endpoint.node, endpoint.model) == ("h", MODEL)  # the honest agent's answer
    assert rtts == {}  # no hostile member gave a sample
    print(f"\n{flavour}: endpoint() beside 64 hostile members: {took:.2f} s")
    assert took < RTT_BUDGET_S + 3.0, took  # was: blocked for as long as the trickle went on


@pytest.mark.parametrize("kind", ["body", "head"])
@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_a_trickled_answer_fails_at_the_calls_deadline(cluster: Any, kind: str, flavour: str) -> None:
    """An agent whose answer (its head, or its body) trickles within every read's timeout: the call fails at its
    deadline and says so; the client then fails over (here: no other agent)."""
    _rogue, _honest, hostile = cluster
    agents = [hostile[kind].url]

    def sync() -> Any:
        with Client(agents=agents, timeout=5.0, call_deadline_s=1.5) as c:
            return c.cluster()

    def in_loop() -> Any:
        async def go() -> Any:
            async with AsyncClient(agents=agents, timeout=5.0, call_deadline_s=1.5) as c:
                return await c.cluster()

        return asyncio.run(go())

    error, took = _bounded(sync if flavour == "sync" else in_loop)
    assert isinstance(error, ClusterUnreachableError), error
    assert "within 1.5 s (the call's deadline)" in str(error)
    assert 1.4 < took < 4.0, took


def test_rtt_targets_named_then_nearest_known_then_listed_at_most_the_cap() -> None:
    nodes = {f"n{i}": f"http://10.0.0.{i}:8000" for i in range(40)}
    known = {"n30": 9.0, "n31": 2.0, "n5": 4.0}
    probed, skipped = rtt_targets(nodes, known, frozenset({"http://10.0.0.39:8000"}))
    order = [node for node, _ in probed]
    assert len(order) == RTT_MAX_PROBED and len(skipped) == 40 - RTT_MAX_PROBED
    assert order[:4] == ["n39", "n31", "n5", "n30"]  # the named agent's node, then known, nearest first
    assert order[4:] == [f"n{i}" for i in range(40) if i not in (5, 30, 31, 39)][: RTT_MAX_PROBED - 4]
    assert set(order) | set(skipped) == set(nodes)
    assert rtt_targets({}, known, frozenset()) == ([], [])


@pytest.mark.parametrize("kind", ["body", "head", "silent"])
def test_a_rogue_alone_listing_hostile_members_is_given_up_in_bounded_time(
    cluster: Any, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reviewer's shape: only the rogue is named; its members all trickle (or never answer). endpoint() asks
    /services of the rogue (not an endpoint), then of the members it learned, each a control call: it fails in
    the RTT budget plus one control deadline per member URL, not for as long as the trickle goes on."""
    monkeypatch.setattr(ops, "CONTROL_DEADLINE_S", 2.0)
    _rogue, _honest, hostile = cluster
    members = [{"node_id": f"m{i}", "api_url": hostile[kind].url, "status": "alive"} for i in range(64)]
    listing = json.dumps({"node_id": "r", "members": members}).encode()

    def handle(conn: socket.socket) -> None:
        conn.recv(65536)
        _answer(conn, listing)

    rogue = Server(handle)

    def run() -> Any:
        with Client(agents=[rogue.url], timeout=5.0) as c:
            return c.endpoint(MODEL)

    try:
        error, took = _bounded(run)
    finally:
        rogue.close()
    assert isinstance(error, ClusterUnreachableError), error
    assert took < RTT_BUDGET_S + 2.0 + 3.0, took


HUNG_LOOKUP = """
import asyncio, json, sys, time
from client import AsyncClient, Client, ClusterUnreachableError
agents = ["http://member.peerserve.test:9"]
began = time.monotonic()
try:
    if sys.argv[1] == "sync":
        with Client(agents=agents, timeout=5.0, call_deadline_s=1.0) as c:
            c.cluster()
    else:
        async def go():
            async with AsyncClient(agents=agents, timeout=5.0, call_deadline_s=1.0) as c:
                await c.cluster()
        asyncio.run(go())
    error = None
except ClusterUnreachableError as exc:
    error = str(exc)
print(json.dumps({"error": error, "took": time.monotonic() - began}), flush=True)
"""


def _namespaces() -> bool:
    """Whether this machine lets a user make a user and mount namespace of its own (``unshare -rm``)."""
    if shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "-rm", "true"], capture_output=True, timeout=10).returncode == 0


@pytest.mark.skipif(not _namespaces(), reason="needs unprivileged user and mount namespaces (unshare -rm)")
@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_a_member_whose_name_lookup_hangs_fails_at_the_calls_deadline(tmp_path: Any, flavour: str) -> None:
    """review14c (suspected; confirmed here first): an agent given by hostname is looked up by ``getaddrinfo``,
    which no deadline bounded. A real lookup that hangs: in a user and mount namespace of the test's own (no network
    namespace: nothing is sent anywhere), /etc/hosts is a named pipe nobody writes, so glibc's ``getaddrinfo``
    (``hosts: files dns``) blocks opening it, as it blocks on a resolver that never answers. Before: the sync
    client was still blocked at 30 s with a 1 s deadline; the async one failed at its deadline, but ``asyncio.run``
    then waited at exit for the lookup stuck on the loop's executor (also past 30 s). Now both fail at the deadline
    and exit (the lookup's daemon thread is left to the OS)."""
    fifo = tmp_path / "hosts"
    os.mkfifo(fifo)
    repo = str(Path(__file__).resolve().parents[2])
    command = ["unshare", "-rm", "sh", "-c", 'mount --bind "$0" /etc/hosts && exec "$1" -c "$2" "$3"',
               str(fifo), sys.executable, HUNG_LOOKUP, flavour]  # fmt: skip
    began = time.monotonic()
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=30, env={**os.environ, "PYTHONPATH": repo}
        )
    except subprocess.TimeoutExpired:
        raise AssertionError(f"{flavour}: still blocked after 30 s (a 1 s deadline)") from None
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["error"] is not None and "within 1 s (the call's deadline)" in result["error"], result
    assert 0.9 < result["took"] < 3.0, result
    assert time.monotonic() - began < 20  # the process exited too (the interpreter's start included)


def test_a_member_given_by_name_is_looked_up_and_answers(cluster: Any) -> None:
    """The lookup in the client's own thread (``deadline.LOOKUPS``) for a name that resolves: the call goes on."""
    _rogue, honest, _hostile = cluster
    with Client(agents=[honest.url.replace("127.0.0.1", "localhost")], timeout=5.0) as c:
        assert c.cluster()["node_id"] == "h"
    assert len(deadline.LOOKUPS) == 0  # done, nothing left running


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_a_question_to_128_agents_all_down_fails_within_its_budget(flavour: str) -> None:
    """128 named agents, every one down: half closed ports (refused at once), half listeners that accept (the
    kernel's backlog) and never answer, each costing the client's per-read timeout (0.5 s here). Before: every one
    asked, 64 x 0.5 s = 32 s at least; now the first agent's call and the question's budget after it, four
    timeouts (2 s), then ClusterUnreachableError."""
    silent = [socket.create_server(("127.0.0.1", 0), backlog=8) for _ in range(64)]  # never accepted
    closed = []
    for _ in range(64):
        with socket.create_server(("127.0.0.1", 0)) as sock:
            closed.append(sock.getsockname()[1])  # nothing listens there once it is closed
    agents = []
    for quiet, port in zip(silent, closed, strict=True):
        agents += [f"http://127.0.0.1:{quiet.getsockname()[1]}", f"http://127.0.0.1:{port}"]

    def sync() -> Any:
        with Client(agents=agents, timeout=0.5) as c:
            return c.cluster()

    def in_loop() -> Any:
        async def go() -> Any:
            async with AsyncClient(agents=agents, timeout=0.5) as c:
                return await c.cluster()

        return asyncio.run(go())

    try:
        error, took = _bounded(sync if flavour == "sync" else in_loop)
    finally:
        for sock in silent:
            sock.close()
    assert isinstance(error, ClusterUnreachableError), error
    assert "within 2 s" in str(error) and "of 128 asked" in str(error), error
    print(f"\n{flavour}: 128 agents down: {took:.2f} s ({error})")
    assert took < 0.5 + 2.0 + 0.5 + 1.5, took  # the first call, the budget after it, the last call's timeout, noise
