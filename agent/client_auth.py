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

from agent.aio import wait_for
from agent.peer_gate import gate_tls

log = logging.getLogger(__name__)

OPEN_PATHS = ("/health",)
HTTPS_HANDSHAKE_S = 10.0  # a phone's TLS handshake; a connection that has not finished it by then is closed
STOP_MARGIN_S = 2.0  # past the graceful timeout, the HTTPS listener's stop waits this long for uvicorn to end it


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
    """The client app served over HTTPS on ``https_port`` with the operator's certificate (no lifespan).

    It stops as the client port does (review19c F6): ``begin_stop`` closes its listening socket at once (a new
    connection is refused) and starts uvicorn's own shutdown, which asks each open connection to close after its
    response and waits up to the graceful timeout (``server_config``'s, the client port's: 10 s) for in-flight
    requests; ``stop`` waits for that. The agent's server calls ``begin_stop`` when its own shutdown begins
    (agent/cli.py ``agent_server``), so both ports drain together and the stop takes one grace, not two. A TLS
    handshake that ends after ``begin_stop`` (its TCP connection was accepted before) is closed, not served
    (review20e M1: it would have held the stop for the whole grace)."""

    def __init__(self, app: Any, settings: Any) -> None:
        from agent.cli import server_config

        config = server_config(app, settings, log_level="warning")
        config.port = settings.https_port
        config.lifespan = "off"
        config.log_level = None
        config.ssl_certfile, config.ssl_keyfile = settings.tls_cert, settings.tls_key
        # bounded handshakes (agent/peer_gate.py); one that ends after begin_stop is closed, not served
        self.server = _Embedded(gate_tls(config, HTTPS_HANDSHAKE_S, stopping=lambda: self.server.should_exit))
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self.server.serve())
        while not self.server.started:
            if self._task.done():
                self._task.result()
                raise OSError("the HTTPS listener did not start")
            await asyncio.sleep(0.02)
        log.info("client API also on https port %d", self.server.config.port)

    def begin_stop(self) -> None:
        """Stop accepting now and start the drain (idempotent; returns at once)."""
        self.server.should_exit = True  # its main loop ends within a tick (0.1 s); its shutdown drains
        for listening in getattr(self.server, "servers", ()):
            listening.close()  # refused from now on, not only from that tick (uvicorn's shutdown closes it again)

    async def stop(self) -> None:
        """``begin_stop``, then wait for the drain: in-flight requests finish within the graceful timeout (counted
        from ``begin_stop``; past it uvicorn cancels them), and the wait itself is bounded a little past that. A
        listener that had failed is logged here, not raised: the caller's own stop goes on."""
        if self._task is None:
            return
        self.begin_stop()
        grace = float(self.server.config.timeout_graceful_shutdown or 0)
        try:
            await wait_for(asyncio.shield(self._task), grace + STOP_MARGIN_S)
        except asyncio.TimeoutError:
            log.warning("the HTTPS listener did not stop within %.0f s: closed", grace + STOP_MARGIN_S)
            self.server.force_exit = True
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            except Exception:
                log.exception("the HTTPS listener failed")
        except Exception:  # it had failed: logged, not raised, so the lifespan's stop goes on to agent.stop() and
            log.exception("the HTTPS listener failed")  # the pool's close (review20e L2)
