"""Optional protection of the client API for operators who want it: a client token and an HTTPS listener.

By default the client API is open plain HTTP on ``--port`` (phones on the LAN, as in the thesis). With
``client_token`` set, every client path but ``/health`` needs ``Authorization: Bearer CLIENT_TOKEN``
(401 otherwise; the client library sends ``PEERSERVE_CLIENT_TOKEN``). With ``https_port`` (and the
operator's ``tls_cert`` / ``tls_key``) the same API is also served over HTTPS on that port.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
from collections.abc import Iterator
from typing import Any

import uvicorn

from agent.peer_gate import gate_tls

log = logging.getLogger(__name__)

OPEN_PATHS = ("/health",)
HTTPS_HANDSHAKE_S = 10.0  # a phone's TLS handshake; a connection that has not finished it by then is closed


class ClientToken:
    """Pure ASGI: refuse client requests without the configured bearer token (constant-time compare)."""

    def __init__(self, app: Any, token: str) -> None:
        self.app = app
        self.expected = f"bearer {token}".encode()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] not in OPEN_PATHS:
            given = dict(scope["headers"]).get(b"authorization", b"")
            scheme, _, rest = given.partition(b" ")
            if not hmac.compare_digest(scheme.lower() + b" " + rest.strip(), self.expected):
                body = json.dumps({"error": "this agent needs a client token (Authorization: Bearer TOKEN)"}).encode()
                await send({"type": "http.response.start", "status": 401, "headers": [
                    (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                    (b"www-authenticate", b"Bearer")]})  # fmt: skip
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


class _Embedded(uvicorn.Server):
    """A second uvicorn server in the agent's process; the main server handles signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class HttpsListener:
    """The client app served over HTTPS on ``https_port`` with the operator's certificate (no lifespan)."""

    def __init__(self, app: Any, settings: Any) -> None:
        from agent.cli import server_config

        config = server_config(app, settings, log_level="warning")
        config.port = settings.https_port
        config.lifespan = "off"
        config.log_level = None
        config.ssl_certfile, config.ssl_keyfile = settings.tls_cert, settings.tls_key
        self.server = _Embedded(gate_tls(config, HTTPS_HANDSHAKE_S))  # bounded handshakes (agent/peer_gate.py)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self.server.serve())
        while not self.server.started:
            if self._task.done():
                self._task.result()
                raise OSError("the HTTPS listener did not start")
            await asyncio.sleep(0.02)
        log.info("client API also on https port %d", self.server.config.port)

    async def stop(self) -> None:
        if self._task is not None:
            self.server.should_exit = True
            await asyncio.sleep(0.05)
            self.server.force_exit = True
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
