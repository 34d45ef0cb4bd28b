"""The HTTPS client listener's stop (review19c F6) over real loopback HTTP and HTTPS: a real agent (the agent's own
server, ``agent.cli.agent_server``, in this process, mDNS off) in front of a scripted model server that answers a
predict only when the test lets it.

Before, the listener kept accepting while the client port drained (up to its 10 s grace), then was stopped in
50 ms: a new HTTPS connection was still served during the stop, and an HTTPS predict in flight was cut.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent.api import create_app
from agent.cli import agent_server, server_config
from agent.node import NodeAgent
from agent.settings import Settings
from tests.service.conftest import PLAIN, free_port
from tests.service.scripted import MODEL, Listed
from tests.service.test_client_auth import self_signed
from tests.service.test_proxy_deadlines import Scripted, ok
from tests.waiting import wait_for

# held requests and a stop watched from outside: one at a time, as the other serving-path service tests
pytestmark = pytest.mark.serial

PREDICT = f"/v1/models/{MODEL}:predict"


def refused(port: int) -> bool:
    """True when a new TCP connection to ``port`` on 127.0.0.1 is refused (nothing listens)."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


class Held:
    """A model server's answer that waits, for a predict whose body says "hold", until ``release`` is set."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.held = 0

    def __call__(self, conn: socket.socket, body: bytes) -> None:
        if b"hold" in body:
            self.held += 1
            self.release.wait(60)
        ok(conn, body)


def https_settings(tmp_path: Path) -> tuple[Settings, Path]:
    """An agent's settings with a client port and an HTTPS port on loopback (a self-signed certificate), its data in
    ``tmp_path``; and the certificate to trust."""
    cert, key = self_signed(tmp_path)
    https_port = free_port()
    data = tmp_path / "data"
    data.mkdir()
    config = Settings(node_id="n1", host="127.0.0.1", port=free_port(avoid=https_port), data_dir=str(data),
                      discovery=False, https_port=https_port, tls_cert=str(cert), tls_key=str(key))  # fmt: skip
    return config, cert


@contextlib.contextmanager
def agent_with_https(tmp_path: Path, answer: Held) -> Iterator[tuple[Any, Settings, Path]]:
    """A real agent serving ``MODEL`` from one scripted server, on a client port and an HTTPS port; yields (its
    uvicorn server, running in a thread, its settings, the certificate to trust) and ends the server after."""
    up = Scripted(answer)
    config, cert = https_settings(tmp_path)
    agent = NodeAgent(config, runtime=Listed([up.url]))
    agent.set_desired(1, None, {MODEL: 1})
    app = create_app(agent)
    server = agent_server(server_config(app, config, "warning"), agent)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started and len(agent.candidates(MODEL)) == 1, timeout=20)
        server.thread = thread
        yield server, config, cert
    finally:
        answer.release.set()
        server.should_exit = True
        thread.join(20)
        up.close()


def call(client: httpx.Client, url: str, out: list[Any]) -> threading.Thread:
    """A held predict to ``url`` in a thread of its own: its status (or the error that ended it) lands in ``out``."""

    def run() -> None:
        try:
            out.append(client.post(url, json={"instances": [1.0], "hold": 1}, timeout=60).status_code)
        except httpx.HTTPError as exc:
            out.append(type(exc).__name__)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_the_https_port_stops_accepting_with_the_client_port_and_finishes_its_in_flight_predict(
    tmp_path: Path,
) -> None:
    answer = Held()
    with agent_with_https(tmp_path, answer) as (server, config, cert):
        tls = httpx.Client(verify=ssl.create_default_context(cafile=str(cert)))
        https = f"https://127.0.0.1:{config.https_port}"
        assert tls.get(https + "/health").status_code == 200
        over_https: list[Any] = []
        over_http: list[Any] = []
        calls = [call(tls, https + PREDICT, over_https), call(PLAIN, f"http://127.0.0.1:{config.port}{PREDICT}",
                                                                over_http)]  # fmt: skip
        wait_for(lambda: answer.held == 2, timeout=10)  # both predicts reached the model server: in flight
        server.should_exit = True  # as SIGTERM does
        wait_for(lambda: refused(config.port), timeout=10)  # the client port stopped accepting: the stop began
        # the HTTPS port refuses new connections too, while both ports drain (before: served until the client
        # port's drain ended)
        assert refused(config.https_port)
        with pytest.raises(httpx.ConnectError):
            tls.get(https + "/health")
        assert server.thread.is_alive() and all(t.is_alive() for t in calls)  # the stop waits for both
        answer.release.set()
        for t in calls:
            t.join(20)
        server.thread.join(20)
        assert not server.thread.is_alive()
        # the HTTPS predict in flight was answered (before: cut 50 ms after the client port's drain ended)
        assert (over_https, over_http) == ([200], [200])


def test_an_https_predict_held_past_the_grace_does_not_hold_the_stop(tmp_path: Path) -> None:
    """The drain is bounded: a predict still held when the graceful timeout ends is cut and the stop ends, on
    both ports (the grace scaled down from the agent's 10 s to 1 s)."""
    answer = Held()
    with agent_with_https(tmp_path, answer) as (server, config, cert):
        https_listener = server.config.app.state.https_listener
        server.config.timeout_graceful_shutdown = https_listener.server.config.timeout_graceful_shutdown = 1
        tls = httpx.Client(verify=ssl.create_default_context(cafile=str(cert)))
        out: list[Any] = []
        held = call(tls, f"https://127.0.0.1:{config.https_port}{PREDICT}", out)
        wait_for(lambda: answer.held == 1, timeout=10)
        server.should_exit = True
        server.thread.join(20)  # the model server still holds the predict: only the grace ends the stop
        assert not server.thread.is_alive() and not answer.release.is_set()
        held.join(20)
        assert out and out != [200], out  # cut at the grace, not answered


def test_a_tls_handshake_that_ends_after_the_stop_began_is_not_served_and_does_not_hold_the_stop(
    tmp_path: Path,
) -> None:
    """review20e M1: a connection accepted before the stop whose TLS handshake ends after it, while the drain waits
    for an HTTPS predict in flight. Before, it was handed to uvicorn after uvicorn had asked its connections to
    close, so nothing asked it: it was served (a request every half second) through the whole stop and held it for
    the full grace (10 s) after the predict was answered. Now it is closed at the handover, and the stop ends once
    the predict is answered: well within the grace (the bound: half of it; not a timing target)."""
    answer = Held()
    with agent_with_https(tmp_path, answer) as (server, config, cert):
        https_listener = server.config.app.state.https_listener
        grace = float(https_listener.server.config.timeout_graceful_shutdown)
        gate = https_listener.server.config.http_protocol_class
        context = ssl.create_default_context(cafile=str(cert))
        out: list[Any] = []
        held = call(httpx.Client(verify=context), f"https://127.0.0.1:{config.https_port}{PREDICT}", out)
        wait_for(lambda: answer.held == 1, timeout=10)  # in flight: the HTTPS drain will wait for it
        raw = socket.create_connection(("127.0.0.1", config.https_port), timeout=10)  # no ClientHello yet
        answers: list[str] = []
        try:
            wait_for(lambda: gate.pending.in_progress == 1, timeout=10)  # accepted: its handshake is pending
            began = time.monotonic()
            server.should_exit = True  # as SIGTERM does
            wait_for(lambda: refused(config.https_port), timeout=10)  # the HTTPS listener's stop began
            time.sleep(0.3)  # and uvicorn's shutdown asked its connections to close (its main loop ticks at 0.1 s)
            try:
                tls = context.wrap_socket(raw, server_hostname="127.0.0.1")
            except OSError as exc:  # (TLS 1.3: the client's side of the handshake ends first, so it does not)
                answers.append(type(exc).__name__)
            while not answers or answers[-1].startswith("HTTP"):  # keep using it, as the reviewer's client did
                if time.monotonic() - began > grace + 1:
                    break
                try:
                    tls.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                    got = tls.recv(4096)
                except OSError as exc:
                    answers.append(type(exc).__name__)
                    break
                finally:
                    answer.release.set()  # the predict in flight is answered: only this connection could hold on
                answers.append(got.split(b"\r\n", 1)[0].decode() if got else "closed")
                time.sleep(0.5)
        finally:
            answer.release.set()
            raw.close()
        server.thread.join(20)
        took = time.monotonic() - began
        held.join(20)
        assert not server.thread.is_alive() and out == [200]  # the predict in flight was answered, as before
        assert len(answers) == 1 and not answers[0].startswith("HTTP"), answers  # closed, not served
        assert took < grace / 2, took  # before: the whole grace


def test_a_failed_https_listener_does_not_stop_the_lifespans_stop(tmp_path: Path) -> None:
    """review20e L2: an HTTPS listener whose task had failed made ``stop()`` re-raise its error into the lifespan's
    ``finally``, which then skipped ``agent.stop()`` and the pool's close. Now it is logged and the stop goes on
    (and the listening socket it left open is closed)."""
    import asyncio

    config, _ = https_settings(tmp_path)
    https_port = config.https_port
    agent = NodeAgent(config, runtime=Listed([]))
    app = create_app(agent)

    async def fail() -> None:
        raise RuntimeError("the listener broke")

    async def run() -> None:
        async with app.router.lifespan_context(app):
            https = app.state.https_listener
            https.server.config.callback_notify, https.server.config.timeout_notify = fail, 0  # uvicorn's own hook
            for _ in range(200):
                if https._task.done():
                    break
                await asyncio.sleep(0.05)
            assert isinstance(https._task.exception(), RuntimeError)  # its serve() ended with the error
            assert not refused(https_port)  # and left its listening socket open

    asyncio.run(run())  # before: RuntimeError("the listener broke") out of the lifespan, agent.stop() skipped
    assert agent.http.is_closed  # agent.stop() ran to its end
    assert refused(https_port)
