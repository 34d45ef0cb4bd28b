"""Scripted model servers and a real agent in front of them, for the service tests of the serving path.

* ``LoopbackServer``: a listener on 127.0.0.1 that hands each accepted connection to ``handle(conn)`` in a thread
  of its own and closes it after (an OSError ends that connection only).
* ``Listed``: a runtime whose servers are already running at the given URLs (as adopted containers are).
* ``agent_in_front``: a real agent (uvicorn with the agent's own protocol, in this process) serving one model from
  those servers.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import uvicorn

from agent.api import create_app
from agent.cli import server_config
from agent.node import NodeAgent
from agent.runtime.base import Instance
from agent.settings import Settings
from tests.service.conftest import free_port
from tests.waiting import wait_for

MODEL = "half_plus_two"


class LoopbackServer:
    """A loopback listener handing each connection to ``handle`` in a thread; closes what it accepted."""

    def __init__(self, handle: Callable[[socket.socket], None]) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._handle = handle
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            self._handle(conn)

    def close(self) -> None:
        self.sock.close()


class Listed:
    """A runtime whose servers of ``model`` are already running at ``urls`` (as adopted containers are)."""

    kind = "static"

    def __init__(self, urls: list[str], model: str = MODEL) -> None:
        self.urls = urls
        self.model = model

    async def start(self, spec: Any, term: int) -> Instance:
        raise AssertionError("the test's servers are already running")

    async def stop(self, instance_id: str) -> None:
        return None

    async def list(self) -> list[Instance]:
        return [Instance(f"up-{i}", self.model, u, True, 1, time.time()) for i, u in enumerate(self.urls)]

    async def close(self) -> None:
        return None


@contextlib.contextmanager
def agent_in_front(
    urls: list[str], tmp_path: Path, pool_timeout: float | None = None, model: str = MODEL, **settings: Any
) -> Iterator[tuple[str, NodeAgent]]:
    """A real agent serving ``model`` from the servers at ``urls``; yields (its base URL, the agent) once it is
    listening and lists them all as candidates. ``pool_timeout``: the proxy pool's per-read timeout."""
    port = free_port()
    config = Settings(node_id="n1", host="127.0.0.1", port=port, data_dir=str(tmp_path), discovery=False, **settings)
    agent = NodeAgent(config, runtime=Listed(urls, model))
    agent.set_desired(1, None, {model: len(urls)})
    app = create_app(agent)
    if pool_timeout is not None:
        app.state.serving.pool.timeout = pool_timeout
    server = uvicorn.Server(server_config(app, config, "warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started, timeout=20)
    wait_for(lambda: len(agent.candidates(model)) == len(urls), timeout=20)
    try:
        yield f"http://127.0.0.1:{port}", agent
    finally:
        server.should_exit = True
        thread.join(15)
