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


@contextlib.contextmanager
def agent_with_https(tmp_path: Path, answer: Held) -> Iterator[tuple[Any, Settings, Path]]:
    """A real agent serving ``MODEL`` from one scripted server, on a client port and an HTTPS port; yields (its
    uvicorn server, running in a thread, its settings, the certificate to trust) and ends the server after."""
    up = Scripted(answer)
    cert, key = self_signed(tmp_path)
    https_port = free_port()
    data = tmp_path / "data"
    data.mkdir()
    config = Settings(node_id="n1", host="127.0.0.1", port=free_port(avoid=https_port), data_dir=str(data),
                      discovery=False, https_port=https_port, tls_cert=str(cert), tls_key=str(key))  # fmt: skip
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
