"""A stand-in model server speaking TensorFlow Serving's REST API over the tiny models in agent.models.

Paths, JSON shapes, status codes and error texts follow TF-Serving's own code (agent/serving/tfrest.py):

    GET  /v1/models/{name}[/versions/{v}|/labels/{l}]             model status
    GET  /v1/models/{name}[/versions/{v}|/labels/{l}]/metadata    signatures
    POST /v1/models/{name}[/versions/{v}|/labels/{l}]:predict     {"instances": [...]} or {"inputs": ...}
    POST /v1/models/{name}[...]:classify | :regress               {"examples": [{"x": 1.0}, ...]}
    GET  /monitoring/prometheus/metrics                           TF-Serving's request_latency histogram (Prometheus
                                                                  text; the agent's own service figures: not served
                                                                  with --no-server-timing)

Errors are exactly ``{"error": "..."}``. HTTP/1.1 keep-alive is kept correct whatever the request: the
body is always read (Content-Length or chunked) before the answer, and a body that cannot be read whole
(too large, malformed framing) ends the connection, so no byte of one request is read as the next one.
The server is reachable from the LAN (clients are sent to it directly), so what one host can make it hold
is bounded: every socket read has a deadline (``timeout_s``, then the connection closes), a request's head
has ``head_timeout_s`` in all, the idle keep-alive before it included (closed; 408 if a part of it came), a
body ``timeout_s`` in all from its head (408), and one address may hold at most ``max_per_address``
connections (503 and close past it); a request's head (line and headers) is at most ``HEAD_MAX`` (414 / 431, closed; as
the agent's ``max_header_kb`` default). Memory: a body is at most ``max_body`` bytes (the agent's own limit, 8 MiB by
default: 413 past it), tfrest bounds its values and nesting, and what the bodies being read, parsed and
answered may cost together is one process-wide budget (``memory_budget``, sized to the 64 MiB containers
the catalogue gives stand-ins; parsed JSON costs up to ~30x its body: 2 MiB used to peak at 83 MiB). A
body over ``SMALL_BODY`` takes its ``body_cost`` before it is read (chunked: as it grows), from all but
``SMALL_SHARE`` of the budget; a small one takes ``SMALL_READ_COST`` per byte of it from there before it is
read and the rest of its ``body_cost`` once read whole. One that finds no room within ``budget_wait_s`` is read
to its end and dropped: 503 with Retry-After. Every accepted connection holds ``CONN_COST`` of the budget until it
closes, which bounds connections process-wide (``max_connections``: 572 at rest); past it, a newcomer takes the
place and share of the oldest connection still waiting on its client (a request's head or body not whole yet)
from the address holding the most such, if that is more than its own address holds (agent.peer_gate's rule
for handshakes), else 503 with Retry-After and close (the one given up is closed: a 503 with Retry-After first if
its body was awaited); a small body that finds no room in the budget makes it the same way before it waits (a few
addresses trickling heads or bodies otherwise held every share: review12b), a big one never (review12c).
Connections and bodies being read leave ``PARSE_ROOM`` (one largest small body's cost) of the budget, and big
bodies being read hold at most all but ``SMALL_SHARE`` together: what clients hold at their own pace never
stops a body read whole from being parsed, nor big bodies connections and small ones.
What the model or the server fails at is a 500 JSON answer and one log line, never a traceback; the log
(``--log-file``) rotates at ``LOG_MAX_BYTES``.
Runs as a process (``python -m agent.modelserver --model half_plus_two --port 8501``) for the
ProcessRuntime, and inside the stand-in Docker image (images/modelserver) for the DockerRuntime.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import io
import json
import logging
import logging.handlers
import os
import re
import signal
import socket
import sys
import threading
import time
from collections.abc import Mapping
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast

from agent.models import MODELS, TinyModel
from agent.serving import pauses, tfrest
from agent.serving.server_stats import INFERENCE_APIS, METRICS_PATH, PROMETHEUS_TEXT, RequestLatency

log = logging.getLogger(__name__)

MAX_BODY = 8 * 1024 * 1024  # as the agent's max_body_mb default: a larger body never came through an agent
MEMORY_BUDGET = 40 * 1024 * 1024  # body_cost of the requests in progress, process-wide (+ ~24 MiB at rest)
VALUE_COST = 128  # bytes one JSON value may cost parsed, run and encoded (measured: 65,535 floats, +7 MiB)
READ_PIECE = 64 * 1024  # a body is read in pieces of at most this size (each by the body's deadline)
SMALL_BODY = 64 * 1024  # a body up to this takes SMALL_READ_COST per byte before it is read, the rest once whole
SMALL_SHARE = 8 * 1024 * 1024  # of the budget, for bodies read whole (parsing) only: trickled bodies never reach it
SMALL_READ_COST = 2  # bytes per small-body byte while it is read (measured: a 64 KiB body being read, +121 KiB)
HEAD_MAX = 16 * 1024  # request line and headers, in all (the base class took 100 lines of 64 KiB: 6.2 MiB stalled)
CONN_COST = 64 * 1024  # of the budget, per open connection: its thread, socket, buffers, head (measured 32-45 KiB)
RETRY_AFTER_S = 1
BUDGET_WAIT_S = 1.0  # a body waits this long for room in the memory budget before its 503
LOG_MAX_BYTES = 1024 * 1024  # the log file rotates past this (one old file kept): 2 MiB of disk at most
TIMEOUT_S = 30.0  # a read that waits longer (idle keep-alive, half-sent request) ends the connection
HEAD_TIMEOUT_S = 10.0  # a request's head, idle keep-alive before it included (as the agent's header_timeout_s)
MAX_PER_ADDRESS = 256  # connections one address may hold (each a thread); an agent proxies at most 256 at once
CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,16}")  # int(x, 16) alone takes "-1", "+5", "0x5" and "5_0"
CONTENT_LENGTH = re.compile(r"[0-9]{1,16}")  # ASCII digits: "\xb2".isdigit() is True and int() raises (a 500)


def _busy(message: str) -> bytes:
    """A whole 503 answer (with Retry-After) for a connection refused before any of its request is read."""
    body = json.dumps({"error": message}).encode()
    return (
        b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nConnection: close\r\n"
        + f"Retry-After: {RETRY_AFTER_S}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body
    )


BUSY = _busy("too many connections from this address")
BUSY_ALL = _busy("busy: the connections open hold this server's memory budget")
EVICTED = _busy("busy: this request's place was given to a newcomer before its body came whole")


class BodyError(Exception):
    """The request body cannot be read whole: (status, message); the connection must close."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Busy(Exception):
    """The memory budget is spent: the body was read and dropped; answer 503 with Retry-After."""


def body_cost(n: int) -> int:
    """What a request body of ``n`` bytes may cost the process at most: the bytes, their decoded text and a
    string parsed from it (3n; one 8 MiB string measured +21 MiB), and VALUE_COST per value it can hold."""
    return 3 * n + VALUE_COST * min(tfrest.MAX_VALUES, n // 2 + 1)


def read_cost(n: int) -> int:
    """What a body of ``n`` bytes holds while it is read, taken before: a big one its whole ``body_cost``, a
    small one what its buffer costs (the rest of its body_cost once it is whole)."""
    return body_cost(n) if n > SMALL_BODY else SMALL_READ_COST * n


PARSE_ROOM = body_cost(SMALL_BODY)  # of SMALL_SHARE, never held by a client's pace: one small body always parses


class DeadlineReader(io.RawIOBase):
    """A connection's reads, each armed as it reaches the socket: it waits at most ``timeout_s`` and, while
    ``deadline`` is set (monotonic), at most until then (TimeoutError; past it, at once). Buffered over it, a
    request's lines and body pieces already read cost no system call: arming the socket before every line
    (``settimeout`` per chunk line, three per chunk) made a body of 1-byte chunks 1.7x dearer (review12c)."""

    def __init__(self, sock: socket.socket, timeout_s: float) -> None:
        super().__init__()
        self.sock = sock
        self.timeout_s = timeout_s
        self.deadline: float | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        wait_s = self.timeout_s
        if self.deadline is not None:
            wait_s = min(wait_s, self.deadline - time.monotonic())
            if wait_s <= 0:
                raise TimeoutError("read deadline")
        self.sock.settimeout(wait_s)
        return self.sock.recv_into(buffer)


def read_line(rfile: Any, limit: int) -> bytes:
    """One line of at most ``limit`` bytes from ``rfile`` (buffered over a DeadlineReader: by its deadline, or
    LineTimeout); short only at the end of the stream.

    A plain ``readline`` over a socket makes as many reads as it takes, each with the socket's whole timeout:
    one byte every 29 s kept a 16 KiB head (or a 1 KiB chunk-size line) being read for days. Here each read
    is armed by the deadline, and what a read that times out brought is counted (``LineTimeout.partial``)."""
    line = b""
    try:
        while len(line) < limit:
            ahead = rfile.peek(1)  # what is buffered, else one read of the socket
            if not ahead:
                break
            n = min(len(ahead), limit - len(line))
            end = ahead.find(b"\n", 0, n)
            line += rfile.read1(n if end < 0 else end + 1)  # buffered already: no read
            if end >= 0:
                break
    except TimeoutError:
        raise LineTimeout(len(line)) from None
    return line


class LineTimeout(TimeoutError):
    """A line not whole by its deadline; ``partial``: how many of its bytes came (they are consumed)."""

    def __init__(self, partial: int) -> None:
        super().__init__(f"line not received in time ({partial} bytes of it)")
        self.partial = partial


class Evicted(Exception):
    """The connection was given up to a newcomer while it waited on its client (ModelServer.process_request)."""


class _Head:
    """A request's rfile while its head (request line, headers) is read: at most ``left`` bytes in all, past
    which a line is LineTooLong (the base class answers 431 for a header line; the request line: 414), and
    all of it by the deadline of the DeadlineReader under ``raw`` (TimeoutError: ``timed_out``, and ``received``
    says whether any of it came)."""

    def __init__(self, raw: Any, left: int, connection: socket.socket, server: ModelServer) -> None:
        self.raw = raw
        self.left = left
        self.connection = connection
        self.server = server
        self.received = False
        self.timed_out = False

    def readline(self, limit: int = -1) -> bytes:
        cap = self.left + 1 if limit < 0 else min(limit, self.left + 1)
        try:
            line = read_line(self.raw, cap)
        except LineTimeout as exc:
            self.timed_out = True
            self.received = self.received or exc.partial > 0
            raise
        self.received = self.received or bool(line)
        if len(line) < cap and not line.endswith(b"\n") and not self.server.holds(self.connection):
            raise Evicted()  # shut down by process_request: its share of the budget is a newcomer's now
        self.left -= len(line)
        if self.left < 0:
            raise http.client.LineTooLong(f"request head over {HEAD_MAX} bytes")
        return line


class Budget:
    """A process-wide amount (bytes) that requests take from and give back; thread-safe."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.held = 0
        self.conns = 0  # of ``held``: what open connections hold (``take_conn``)
        self._room = threading.Condition()

    def take(self, n: int, wait_s: float = 0.0, limit: int | None = None, bodies_limit: int | None = None) -> bool:
        """Take ``n`` if the amount held stays within ``limit`` (default: all of it), and what bodies hold
        (all but the connections' shares) within ``bodies_limit``, within ``wait_s`` (a request just
        answered gives its share back after the client has its answer: without a short wait, one arriving
        then was refused by a server at rest)."""
        deadline = time.monotonic() + wait_s
        limit = self.total if limit is None else limit
        bodies_limit = self.total if bodies_limit is None else bodies_limit
        with self._room:
            while self.held + n > limit or self.held - self.conns + n > bodies_limit:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._room.wait(left)
            self.held += n
            return True

    def take_conn(self, n: int, limit: int) -> bool:
        """Take ``n`` for a connection, now or never, if the amount held stays within ``limit``."""
        with self._room:
            if self.held + n > limit:
                return False
            self.held += n
            self.conns += n
            return True

    def shortfall(self, n: int, limit: int, bodies_limit: int) -> int | None:
        """What connections would have to give back for ``take(n, 0, limit, bodies_limit)`` to succeed now (0:
        it would); None when no amount would do (what bodies hold is the bound)."""
        with self._room:
            if self.held - self.conns + n > bodies_limit:
                return None
            return max(0, self.held + n - limit)

    def give(self, n: int, conn: bool = False) -> None:
        with self._room:
            self.held -= n
            if conn:
                self.conns -= n
            self._room.notify_all()


def oldest_of_busiest(waiting: Mapping[str, Mapping[Any, object]], host: str) -> Any | None:
    """The connection a newcomer from ``host`` takes the place of when every connection is held (the rule of
    agent.peer_gate.Handshakes.admit): the oldest waiting on its client, a request's head or body not whole yet
    (``waiting``: per address, oldest first), from the address with the most of them, if that is more than
    ``host`` has; else None (the newcomer is refused). A few addresses holding every slot with requests they
    never finish then hold them only until someone else connects: each newcomer takes the place of one of
    theirs, never of another newcomer's. (A body read whole, being answered, is never given up.)"""
    busiest = max(waiting, key=lambda h: len(waiting[h]), default=None)
    if busiest is None or len(waiting[busiest]) <= len(waiting.get(host, {})):
        return None
    return next(iter(waiting[busiest]))


class ModelServer(ThreadingHTTPServer):
    """Serves one model (one version) on (host, port)."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128  # listen backlog (socketserver's 5 dropped SYNs of bursts: 1-3 s retransmits)

    def __init__(
        self,
        address: tuple[str, int],
        model: TinyModel,
        version: int = 1,
        name: str = "",
        timeout_s: float = TIMEOUT_S,
        max_per_address: int = MAX_PER_ADDRESS,
        head_timeout_s: float = HEAD_TIMEOUT_S,
        timing: bool = True,
        max_body: int = MAX_BODY,
        memory_budget: int = MEMORY_BUDGET,
        budget_wait_s: float = BUDGET_WAIT_S,
    ) -> None:
        super().__init__(address, _Handler)
        self.timing = timing  # W3C Server-Timing on answers (off: none; they reveal execution and GC times)
        self.model = model
        self.name = name or model.name
        self.version = version
        self.timeout_s = timeout_s
        self.head_timeout_s = head_timeout_s
        self.max_per_address = max_per_address
        self.max_body = max_body
        # a largest body always fits (the connections' shares come out of its SMALL_SHARE)
        self.budget = Budget(max(memory_budget, body_cost(max_body) + SMALL_SHARE))
        self.budget_wait_s = budget_wait_s
        self._open: dict[Any, str] = {}  # accepted socket -> its peer's address (each holds CONN_COST)
        # address -> its sockets waiting on the client, oldest first: True once a request's head is whole (its body
        # is awaited: given up, it is answered EVICTED; a head or an idle keep-alive just closes, as a client expects)
        self._waiting: dict[str, dict[Any, bool]] = {}
        self._open_lock = threading.Lock()
        self.evicted = 0  # connections given up to a newcomer (process_request)
        self.latency = RequestLatency()  # what its monitoring page answers (TF-Serving's request_latency)

    @property
    def max_connections(self) -> int:
        """Connections open at once, process-wide, when no body holds any of the budget."""
        return (self.budget.total - PARSE_ROOM) // CONN_COST

    def process_request(self, request: Any, client_address: Any) -> None:
        """Handle in a thread once the connection holds ``CONN_COST`` of the budget; the accept loop never waits
        for room. With no room, the newcomer takes the share of the connection ``oldest_of_busiest`` names
        (shut down: its thread wakes and ends), else 503 and close; 503 too when its address already holds
        ``max_per_address`` connections."""
        host = str(client_address[0])
        victim = None
        with self._open_lock:
            refusal = None
            if sum(1 for h in self._open.values() if h == host) >= self.max_per_address:
                refusal = BUSY
            elif not self.budget.take_conn(CONN_COST, self.budget.total - PARSE_ROOM):
                victim = oldest_of_busiest(self._waiting, host)
                if victim is None:
                    refusal = BUSY_ALL
                else:
                    self._evict(victim)  # its CONN_COST stays held: the newcomer's now
            if refusal is None:
                self._open[request] = host
                self._waiting.setdefault(host, {})[request] = False
        if refusal is not None:
            with contextlib.suppress(OSError):
                request.sendall(refusal)
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def take_evicting(self, host: str, n: int, limit: int, bodies_limit: int) -> bool:
        """Take ``n`` of the budget for a small body from ``host`` now (``Budget.take``'s bounds), giving up
        connections waiting on their clients (``oldest_of_busiest``, one at a time) if that makes the room: a few
        addresses holding every connection's share would otherwise leave none for a body (503 to every predict).
        Never for a big body (``_reserve``): it takes its whole ``body_cost`` before a byte of it is read, so one
        head announcing 8 MB (30.9 MiB) gave up 43 of 120 other requests in progress and then held their shares
        for as long as its client trickled the body, keeping their address out (review12c)."""
        with self._open_lock:  # the accept loop takes no share meanwhile: the room made is this body's
            short = self.budget.shortfall(n, limit, bodies_limit)
            while short is not None and short > 0:
                victim = oldest_of_busiest(self._waiting, host)
                if victim is None:
                    break
                self._evict(victim)
                self.budget.give(CONN_COST, conn=True)
                short -= CONN_COST
            return self.budget.take(n, 0.0, limit, bodies_limit)

    def _evict(self, request: Any) -> None:
        """End a connection waiting on its client (lock held, its share not given back: the caller's): its
        thread wakes (end of stream) and ends without a word. One whose body was awaited is answered EVICTED
        first, if its send buffer has room now (never waited for): a 503 with Retry-After that a client, or
        the agent's proxy, can retry, where a silent close mid-request was a 502 through the proxy. Under the
        lock, so its own close cannot come between and hand the descriptor to another connection first."""
        awaited = self._waiting.get(self._open.get(request, ""), {}).get(request, False)
        self._forget(request)
        self.evicted += 1
        if awaited:
            with contextlib.suppress(OSError), request.dup() as sock:
                sock.setblocking(False)  # a timeout socket's send polls for room first, up to its timeout
                sock.send(EVICTED)
        with contextlib.suppress(OSError):
            request.shutdown(socket.SHUT_RDWR)

    def _forget(self, request: Any) -> str | None:
        """Drop ``request`` from the connections held (lock held); its address, None if it was not held."""
        host = self._open.pop(request, None)
        waiting = self._waiting.get(host or "")
        if waiting is not None:
            waiting.pop(request, None)
            if not waiting:
                del self._waiting[host or ""]
        return host

    def holds(self, request: Any) -> bool:
        """``request`` still holds its share (False once it was given up to a newcomer, or ended)."""
        return request in self._open

    def waits_on_client(self, request: Any, waiting: bool, body: bool = False) -> bool:
        """``request`` waits on its client for a request's head or its body (``waiting``, ``body``; the newest of
        its address that does, unless it waits already) or has its request whole (it can no longer be given up);
        False if it was given up already."""
        with self._open_lock:
            host = self._open.get(request)
            if host is None:
                return False
            if waiting:
                self._waiting.setdefault(host, {})[request] = body  # one waiting already keeps its place
            elif request in self._waiting.get(host, {}):
                del self._waiting[host][request]
                if not self._waiting[host]:
                    del self._waiting[host]
            return True

    def shutdown_request(self, request: Any) -> None:
        """Every path that ends a connection comes here once it is done: its CONN_COST comes back (unless it was
        given up to a newcomer, who holds it now)."""
        with self._open_lock:
            held = self._forget(request) is not None
        if held:
            self.budget.give(CONN_COST, conn=True)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """One line, no traceback: socketserver's default printed ~2-150 KiB to stderr per failed request."""
        exc = sys.exc_info()[1]
        log.info("connection from %s ended: %s: %s", client_address[0], type(exc).__name__, str(exc)[:200])


class _Handler(BaseHTTPRequestHandler):
    server: ModelServer
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # without it keep-alive requests wait ~40 ms (Nagle + delayed ACK)
    server_version = "peerserve-modelserver/1"
    _began: float | None = None  # when this request was read whole (for Server-Timing)
    _exec_ms: float | None = None
    _api: str | None = None  # the inference call (predict, classify, regress) this answer completes, if served
    _gc_before = 0.0  # the process's GC pause total when this request began
    _held = 0  # what this request took from the server's memory budget
    _answered = False  # a status line went out for this request

    def setup(self) -> None:
        super().setup()
        self.connection.settimeout(self.server.timeout_s)  # every write has a deadline
        self.rfile.close()  # the base class's, over socket.SocketIO: every read armed by a DeadlineReader instead
        self.reader = DeadlineReader(self.connection, self.server.timeout_s)  # every read: idle, half-sent
        self.rfile = io.BufferedReader(self.reader)

    def handle_one_request(self) -> None:
        """The base class's, with the request's head read within HEAD_MAX bytes and ``head_timeout_s`` (idle
        keep-alive before it included: then the connection just closes; a part of a head came: 408)."""
        raw, s = self.rfile, self.server
        if not s.waits_on_client(self.connection, True):
            self.close_connection = True
            return
        self.reader.deadline = time.monotonic() + s.head_timeout_s
        head = _Head(raw, HEAD_MAX, self.connection, s)
        self.rfile = cast(Any, head)
        try:
            super().handle_one_request()  # a TimeoutError in it closes the connection
        except Evicted:
            self.close_connection = True
        except http.client.LineTooLong:  # the request line alone (a header line's is a 431 in parse_request)
            self._unparsed()
            self.send_error(HTTPStatus.REQUEST_URI_TOO_LONG)
        finally:
            self.rfile = raw
        if head.timed_out and head.received:
            self._unparsed()
            self.close_connection = True
            with contextlib.suppress(OSError):
                self._send(408, {"error": f"request head not received within {s.head_timeout_s:g} s"})

    def _unparsed(self) -> None:
        """What is answered next answers no request this handler parsed (the base class's fields of the last)."""
        self.requestline, self.request_version, self.command = "", "", ""
        self._exec_ms = None

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    def _handle(self) -> None:
        """One request; whatever fails in it is a 500 and one log line (it used to kill the thread: a 502)."""
        if isinstance(self.rfile, _Head):
            self.rfile = self.rfile.raw  # the head is read: the body has bounds of its own
        if not self.server.waits_on_client(self.connection, True, body=True):
            self.close_connection = True  # given up to a newcomer as its head came whole: closed without a word
            return
        self._began, self._exec_ms, self._answered, self._api = None, None, False, None
        self._gc_before = pauses.paused_ms()
        try:
            self._serve()
        except OSError:
            raise  # the connection itself failed: nothing to answer on (handle_error logs one line)
        except Exception as exc:
            log.warning("%s %s failed: %s: %s", self.command, self.path[:100], type(exc).__name__, str(exc)[:200])
            self.close_connection = True
            if not self._answered:
                self._send(500, {"error": f"internal error ({type(exc).__name__})"})
        finally:
            self._release()
            self.reader.deadline = None  # the body's deadline ended with it
            with contextlib.suppress(OSError):
                self.connection.settimeout(self.server.timeout_s)

    def _serve(self) -> None:
        try:
            body = self._read_body()
        except (TimeoutError, BodyError) as exc:
            self.close_connection = True  # what is left of the body must never be read as a request
            if not self.server.holds(self.connection):
                return  # given up to a newcomer (shut down, answered EVICTED if it could take it)
            if isinstance(exc, BodyError):
                self._send(exc.status, {"error": str(exc)})
            else:
                self._send(408, {"error": f"request body not received within {self.server.timeout_s:g} s"})
            return
        except Busy:  # the body was read whole (and dropped): the connection stays usable
            if not self.server.holds(self.connection):
                self.close_connection = True
                return
            self._send(
                503,
                {"error": "busy: the requests in progress hold this server's memory budget"},
                {"Retry-After": str(RETRY_AFTER_S)},
            )
            return
        if not self.server.waits_on_client(self.connection, False):  # given up to a newcomer as its body came
            self.close_connection = True
            return
        self._began = time.perf_counter()  # the request is whole: the server's own time starts here
        path = self.path.split("?", 1)[0]
        s = self.server
        if path == METRICS_PATH and self.command == "GET" and s.timing:  # off with Server-Timing: it shows load too
            self._send(200, None, text=s.latency.page(s.name))
            return
        if not path.lower().startswith("/v1/"):
            self._send(404, {"error": f"Not found: {self.command} {path[:200]}"})
            return
        started = time.perf_counter()
        status, payload = tfrest.handle(s.model, s.name, s.version, self.command, path, body)
        self._exec_ms = 1000 * (time.perf_counter() - started)
        api = path.rsplit(":", 1)[-1]
        self._api = api if status == 200 and self.command == "POST" and api in INFERENCE_APIS else None
        self._send(status, payload)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _handle

    def __getattr__(self, name: str) -> Any:
        if name.startswith("do_"):  # any other method: read its body, answer as TF-Serving (400 Malformed)
            return self._handle
        raise AttributeError(name)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """The base class's own errors (bad request line, headers too long) leave input unread: close."""
        self.close_connection = True
        self._send(code, {"error": message or self.responses.get(code, ("error",))[0]})

    def _reserve(self, cost: int, deadline: float, reading: int | None = None) -> bool:
        """Hold ``cost`` of the memory budget for this request in all (given back when it is answered);
        ``reading``: the size of the body it is taken for before that is read whole.

        What is taken before a body is read whole can be held by a client at its own pace (each for at most
        ``timeout_s``), so it leaves PARSE_ROOM of the budget, as connections do: nothing a client stalls
        stops a body read whole from being parsed. Big bodies hold at most all but SMALL_SHARE together:
        bodies announced and trickled can keep other big bodies waiting, never connections or small ones. Only a
        small body (or a body read whole) gives up connections waiting on their clients for room
        (``take_evicting``): a big one waits for room as it is (review12c)."""
        need = cost - self._held
        if need > 0:
            wait_s = min(self.server.budget_wait_s, max(0.0, deadline - time.monotonic()))
            budget = self.server.budget
            limit = budget.total if reading is None else budget.total - PARSE_ROOM
            big = reading is not None and reading > SMALL_BODY
            bodies_limit = budget.total - SMALL_SHARE if big else budget.total
            host = str(self.client_address[0])
            if not (
                (not big and self.server.take_evicting(host, need, limit, bodies_limit))
                or budget.take(need, wait_s, limit, bodies_limit)
            ):
                return False
            self._held += need
        return True

    def _release(self) -> None:
        if self._held:
            self.server.budget.give(self._held)
            self._held = 0

    def _read_into(self, buf: bytearray | None, n: int, short: str) -> None:
        """Read ``n`` body bytes into ``buf`` (None: keep none) by the body's deadline (the reader's)."""
        while n > 0:
            got = self.rfile.read1(min(n, READ_PIECE))
            if not got:
                raise BodyError(400, short)
            if buf is not None:
                buf += got
            n -= len(got)

    def _read_body(self) -> bytes:
        """The whole request body (Content-Length or chunked, at most max_body) within ``timeout_s`` of its
        head; BodyError, or Busy (the body was read to its end and dropped: the connection stays usable)."""
        deadline = time.monotonic() + self.server.timeout_s
        self.reader.deadline = deadline  # every read of the body by it (None again once it is answered)
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked(deadline)
        length = self.headers.get("Content-Length")
        if length is None:
            return b""
        if CONTENT_LENGTH.fullmatch(length.strip(" \t")) is None:
            raise BodyError(400, f"invalid Content-Length {length[:40]!r}")
        n = int(length)
        if n > self.server.max_body:
            raise BodyError(413, f"request body over {self.server.max_body} bytes")
        short = "request body shorter than its Content-Length"
        if not self._reserve(read_cost(n), deadline, n):
            self._read_into(None, n, short)
            raise Busy()
        body = bytearray()
        self._read_into(body, n, short)
        return self._whole(body, deadline)

    def _whole(self, body: bytearray, deadline: float) -> bytes:
        """The body read whole: it may be parsed once the budget holds what that can cost."""
        if not self._reserve(body_cost(len(body)), deadline):
            raise Busy()
        return bytes(body)

    def _read_chunked(self, deadline: float) -> bytes:
        body: bytearray | None = bytearray()  # None once dropped (no room in the budget): read on, keep nothing
        total = 0
        while True:
            line = self._line().split(b";", 1)[0].strip()
            if CHUNK_SIZE.fullmatch(line) is None:
                raise BodyError(400, "malformed chunked body")
            size = int(line, 16)
            if size == 0:
                while self._line() not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                if body is None:
                    raise Busy()
                return self._whole(body, deadline)
            total += size
            if total > self.server.max_body:
                raise BodyError(413, f"request body over {self.server.max_body} bytes")
            if body is not None and not self._reserve(read_cost(total), deadline, total):
                self._release()
                body = None
            self._read_into(body, size, "malformed chunked body")
            self._line()

    def _line(self) -> bytes:
        """A line of a chunked body (at most 1 KiB) by the body's deadline (the reader's)."""
        return read_line(self.rfile, 1024)

    def _timing(self) -> str:
        """W3C Server-Timing: ``server`` (request read whole -> answer encoded) and ``exec`` (the model's call), ms."""
        total = 0.0 if self._began is None else 1000 * (time.perf_counter() - self._began)
        exec_ms = self._exec_ms
        gc_ms = pauses.paused_ms() - self._gc_before
        return (
            f"server;dur={total:.3f}"
            + ("" if exec_ms is None else f", exec;dur={exec_ms:.3f}")
            + (f", server-gc;dur={gc_ms:.3f}" if self._began is not None else "")
        )

    def _send(self, status: int, payload: Any, headers: dict[str, str] | None = None, text: str | None = None) -> None:
        """Answer ``payload`` as JSON (``text``: that, as Prometheus text); an inference call served (``_api``) is
        counted in the server's ``latency``, its time from request read whole to answer encoded."""
        body = json.dumps(payload).encode() if text is None else text.encode()
        if self._api is not None and self._began is not None:
            self.server.latency.observe(self._api, 1e6 * (time.perf_counter() - self._began))
        self._api = None
        self._answered = True
        self.send_response(status)
        self.send_header("Content-Type", "application/json" if text is None else PROMETHEUS_TEXT)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if self.server.timing:
            self.send_header("Server-Timing", self._timing())
        self._began = None
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)


def one_malloc_arena() -> bool:
    """glibc's malloc: one arena for every thread (``MALLOC_ARENA_MAX=1``), set before any handler thread starts.

    Each handler thread otherwise gets an arena of its own that keeps what it freed: the largest legal
    requests, four at once, peaked at 54-65 MiB RSS with per-thread arenas and at 50 MiB with one (measured
    against the 64 MiB container). The GIL serialises the allocations anyway. False where it is not glibc.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        return bool(name) and ctypes.CDLL(name).mallopt(-8, 1) == 1  # M_ARENA_MAX
    except (OSError, AttributeError):
        return False


def serve(model: str, host: str, port: int, name: str = "") -> ModelServer:
    """Start a server in a background thread and return it (``shutdown()`` stops it)."""
    server = ModelServer((host, port), MODELS[model], name=name)
    threading.Thread(target=server.serve_forever, name=f"modelserver-{model}", daemon=True).start()
    return server


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="peerserve-modelserver",
        description="Stand-in TF-Serving REST server for one tiny model (see agent.models).",
    )
    ap.add_argument(
        "--model",
        default=os.environ.get("PEERSERVE_STAND_IN") or os.environ.get("MODEL_NAME"),
        choices=sorted(MODELS),
        help="tiny model to run (default: $PEERSERVE_STAND_IN, else $MODEL_NAME)",
    )
    ap.add_argument(
        "--name",
        default=os.environ.get("MODEL_NAME", ""),
        help="name to serve it under, as TF-Serving's MODEL_NAME (default: $MODEL_NAME, else the model)",
    )
    ap.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    ap.add_argument("--port", type=int, default=8501, help="REST port (default 8501, as TF-Serving)")
    ap.add_argument(
        "--max-body-mb",
        type=float,
        default=MAX_BODY / 2**20,
        help="largest request body, MiB (default 8, as the agent's max_body_mb; 413 past it)",
    )
    ap.add_argument("--log-file", default="", help="log here, rotated (one old file kept); default stderr")
    ap.add_argument("--log-max-kb", type=int, default=LOG_MAX_BYTES // 1024,
                    help=f"rotate the log file past this many KiB (default {LOG_MAX_BYTES // 1024})")  # fmt: skip
    ap.add_argument("--no-server-timing", dest="timing", action="store_false",
                    help="no W3C Server-Timing header on answers (it reveals execution and GC times)")  # fmt: skip
    args = ap.parse_args(argv)
    if not args.model:
        ap.error("--model is required (or set PEERSERVE_STAND_IN)")
    if not 0 < args.max_body_mb < float("inf"):
        ap.error("--max-body-mb must be a positive number")
    handlers: list[logging.Handler] = [logging.StreamHandler()]
    if args.log_file:
        if args.log_max_kb <= 0:
            ap.error("--log-max-kb must be positive")
        size = args.log_max_kb * 1024
        handlers = [logging.handlers.RotatingFileHandler(args.log_file, maxBytes=size, backupCount=1)]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", handlers=handlers)
    if args.model == "digits":
        from agent.digits import WeightsMissing, load_weights

        try:
            load_weights()
        except WeightsMissing as exc:
            ap.exit(1, f"peerserve-modelserver: {exc}\n")
    server = ModelServer(
        (args.host, args.port), MODELS[args.model], name=args.name, timing=args.timing,
        max_body=int(args.max_body_mb * 2**20),
    )  # fmt: skip
    one_malloc_arena()
    pauses.install()
    pauses.freeze_startup_heap()
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    log.info("serving %s as %s on http://%s:%d", args.model, server.name, args.host, server.server_address[1])
    print(f"READY {server.server_address[1]}", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()
    server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
