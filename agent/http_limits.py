"""Bounds on what one HTTP client can make the agent hold: body size, read deadlines, connections.

Two layers, because uvicorn gives no header timeout of its own:

- ``limited_protocol(...)`` builds an ``H11Protocol`` subclass for ``uvicorn.Config(http=...)``. Between
  requests (a new connection, or after a response) the client must deliver complete request headers
  within ``header_timeout_s``; a half-sent request line or header block gets ``408`` and the connection is
  closed (an idle keep-alive connection is simply closed). It also caps open connections per client
  address (``max_connections_per_address``), read from the count ``AddressBudgets`` keeps; at uvicorn's
  ``limit_concurrency`` a newcomer takes the place of the oldest connection waiting on its client (for its
  request head, or the rest of a request body that has stalled: no byte for ``body_stall_s``, or behind
  ``body_min_rate`` by more than ``body_rate_grace_s``, settings whose defaults are ``BODY_STALL_S``,
  ``BODY_MIN_RATE``, ``BODY_RATE_GRACE_S``, while the agent was not the one holding its reading) from
  the address holding the most such (a few addresses' idle connections or stalled bodies cannot keep everyone
  else out; an upload still coming at the rate, or one the agent stopped reading, is never given up). The cap's
  503s say ``Retry-After`` (``retry_after_s``; the per-address cap's, ``address_retry_after_s``).
  A client that stops reading an answer (its socket full for ``write_timeout_s``, or an answer's tail left
  unsent that long without the buffer shrinking) is cut off: it would otherwise hold the proxied model server's
  connection and its in-flight count, or its place in the cap, without end; every close aborts a connection whose
  unsent bytes have not drained by then (``_close``: ``transport.close()`` alone waits for the client to read).
- ``HttpLimits`` is pure ASGI middleware around the app. It refuses a path with control characters
  (400), request headers over the limit (431; h11's ``max_incomplete_event_size`` bounds what is
  buffered before they are complete) and a declared ``Content-Length`` over the limit before reading
  anything, counts the bytes of every body as it arrives (so a chunked body cannot bypass the limit:
  ``413`` as soon as it passes it), and gives the whole body ``body_timeout_s`` from the app's first
  read (``408``; the client is not blamed for time the app spent before reading). Both answers close
  the connection. A body the app never reads is drained under the header deadline.
- An answer that closes the connection while the request's body is still coming (a declared body over the limit
  gets its 413 before a byte of it is read) is followed by a lingering close (``LingeringTransport``): our FIN
  after the answer, then what the client still sends dropped unparsed until it has sent nothing for
  ``EARLY_ANSWER_LINGER_S``, ``EARLY_ANSWER_LINGER_MAX_S`` in all, or past ``EARLY_ANSWER_DROP_BYTES`` (nginx's
  lingering close), then the close. Closed at once, the unread bytes reset the connection and the client's kernel
  dropped the answer: Python's http.client, which reads only once it has sent everything, got
  ConnectionResetError for a 4 MB upload, never the 413. A lingering connection (the chunk refusal's too) counts
  as closing: nothing more is written to it; it still counts against the caps, and a newcomer at the connection
  limit (``max_concurrency``; not the per-address cap) may take its place. The agent's own closes (a newcomer's, a
  deadline's) and uvicorn's own (the server's stop, the keep-alive timeout) never linger.

h11 parses in pure Python on the agent's event loop, which also runs SWIM and the election: a body sent as 1-byte
chunks (``1\r\n1\r\n``...) cost ~9 us per chunk, 0.4 s of loop for one 256 KiB socket read, and two such connections
got a leader declared dead (review 11a). So the protocol (``SlicedH11Protocol``) hands h11 at most ``PARSE_SLICE``
bytes and takes at most ``EVENTS_PER_TURN`` events per loop turn (reading paused until the rest is parsed), and a
body of more than ``max(MIN_CHUNKS, bytes / MIN_CHUNK_BYTES)`` chunks gets ``400`` and the connection closed
(``too_many_chunks``). h11 parses a head in one step whatever the slice (~3 us a line), and a complete one of any
length, so a head or a chunked body's trailer of more than ``MAX_HEADER_FIELDS`` (100) lines, or longer than
``max_header_kb``, gets ``431`` and the connection closed, counted before h11 parses it. A sender can still
front-load bytes to buy tiny chunks (8 MiB buys 32,767), so each connection's parsing also has a CPU budget
(``ParseBudget``: ``PARSE_SHARE`` of a second, ``PARSE_BURST_S`` at once) and all connections from one address share
another (``AddressBudgets``); past either, the next step waits. Behind a NAT one address is many clients, so the
address's budget is not first come first served (60 throttled senders made an honest 8 MiB upload behind them wait
95-106 s, review12e): each connection also has its fair part, ``ADDRESS_SHARE / users`` (at most ``PARSE_SHARE``; a
new connection starts it one fair burst in debt, so reconnecting buys nothing), and may step on it whatever the
address's budget says, while the address owes less than ``ADDRESS_DEBT_S``. A connection that spends little never
waits on the others; every step is charged to the address, so what it takes in all stays ``ADDRESS_SHARE`` a second
(plus bursts). Five addresses at that share would take the whole loop, and on a LAN an attacker has many: all the
client port's parsing (HTTP and HTTPS listeners together) has one more budget, ``TOTAL_SHARE`` (50 %) of a second,
``TOTAL_BURST_S`` at once (``ParseTurns``). A step goes at once while it is in credit and nobody waits; else the
connection waits in its address's queue, and one timer serves the queues as the budget allows, the address whose
steps took least CPU first (start-time fair queuing): an honest request is next in line, not behind the floods, and
a new address starts behind everyone waiting, so appearing or reconnecting buys no burst. The peer port runs the
same protocol when httptools is missing (``PeerH11Protocol``, with a total of its own: a client-port flood never
delays SWIM there).

The concurrency limit itself is uvicorn's ``limit_concurrency`` (503 past it, unless a waiting connection is given
up for the newcomer), set in agent/cli.py; its text/plain 503 goes out as ``{"error": ...}`` with ``Retry-After``
(``ChunkCountingConnection.send``).

The code is in four modules, by responsibility: this one (the ASGI middleware, and every public name of the
others, importable from here as before), agent/http_parse.py (the parse budgets and turns: CPU accounting),
agent/http_sliced.py (the h11 protocol with its work per loop turn bounded, the chunk rule, the raw error answers)
and agent/http_caps.py (``limited_protocol``: deadlines, the per-address cap and the connection cap's give-up rule).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from typing import Any

from fastapi import HTTPException
from starlette.requests import ClientDisconnect

from agent import aio
from agent.http_caps import BODY_STALL_S, GIVEN_UP, RecordedTasks, limited_protocol
from agent.http_parse import (
    ADDRESS_BURST_S,
    ADDRESS_DEBT_S,
    ADDRESS_SHARE,
    IDLE_CREDIT_S,
    PARSE_BURST_S,
    PARSE_SHARE,
    PARSING,
    PEER_PARSING,
    RECENT_ADDRESSES,
    TOTAL_BURST_S,
    TOTAL_SHARE,
    AddressBudgets,
    AddressEntry,
    ParseBudget,
    ParseTurns,
    step_wait,
)
from agent.http_sliced import (
    CLOSE_DRAIN_S,
    EARLY_ANSWER_DROP_BYTES,
    EARLY_ANSWER_LINGER_MAX_S,
    EARLY_ANSWER_LINGER_S,
    EVENTS_PER_TURN,
    MAX_HEADER_FIELDS,
    MAX_LIST_COMMAS,
    MIN_CHUNK_BYTES,
    MIN_CHUNKS,
    PARSE_SLICE,
    REFUSAL_DROP_BYTES,
    REFUSAL_LINGER_S,
    ChunkCountingConnection,
    LingeringTransport,
    PeerH11Protocol,
    Refusal,
    SlicedFlowControl,
    SlicedH11Protocol,
    error_bytes,
    sliced_protocol,
    too_many_chunks,
)

__all__ = [
    "ABORTED", "ADDRESS_BURST_S", "ADDRESS_DEBT_S", "ADDRESS_SHARE", "BODY_STALL_S", "CLOSE_DRAIN_S", "CONTROL_CHARS",
    "EARLY_ANSWER_DROP_BYTES", "EARLY_ANSWER_LINGER_MAX_S", "EARLY_ANSWER_LINGER_S", "EVENTS_PER_TURN", "GIVEN_UP",
    "IDLE_CREDIT_S", "MAX_COOKIES", "MAX_HEADER_FIELDS", "MAX_LIST_COMMAS", "MAX_QUERY_ESCAPES", "MAX_QUERY_PARAMS",
    "MIN_CHUNKS",
    "MIN_CHUNK_BYTES", "PARSE_BURST_S", "PARSE_SHARE", "PARSE_SLICE", "PARSING", "PEER_PARSING", "RECENT_ADDRESSES",
    "REFUSAL_DROP_BYTES", "REFUSAL_LINGER_S", "TOTAL_BURST_S", "TOTAL_SHARE", "AbortAnswer", "AddressBudgets",
    "AddressEntry", "BodyRefused", "ChunkCountingConnection", "HttpLimits", "LingeringTransport", "ParseBudget",
    "ParseTurns", "PeerH11Protocol", "RecordedTasks", "Refusal", "SlicedFlowControl", "SlicedH11Protocol",
    "error_bytes", "limited_protocol", "sliced_protocol", "step_wait", "too_many_chunks",
]  # fmt: skip

log = logging.getLogger(__name__)

CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")  # decoded %0A etc.: Starlette's routes would drop a final \n
# What the app splits in Python on every request, counted in C first (review26a H1): FastAPI parses a route's whole
# query string and every Cookie pair for each request whatever the route declares, and the proxy parses the query again
# to forward it. 8,000 blank parameters (``?a&a&...``, inside the head's 16 KiB) cost 17-29 ms of loop CPU a request
# against ~1 ms for a plain one, none of it charged to the parse turns: 64 keep-alive connections from one address
# took an honest /health from 2.4 to 1,268 ms (p50). parse_qsl also unquotes each percent-escape in a Python loop:
# one parameter of 5,300 escapes was 6.8 ms of agent CPU a request against 1.4 ms (review26c). At these bounds a
# request costs ~0.4 ms more at most (99 blank parameters: 1.73 ms against 1.37).
MAX_QUERY_PARAMS = 100  # '&'-separated parts (Python's parse_qsl splits only there); TF-Serving's REST uses none
MAX_QUERY_ESCAPES = 256  # '%' in the query (each a Python step of unquote); a path's are uvicorn's, charged in turns
MAX_COOKIES = 200  # ';'-separated pairs in all Cookie fields: above any browser's per-site cap (Chrome's 180)
Scope = dict[str, Any]
Message = dict[str, Any]


class BodyRefused(HTTPException):
    """A request body over the size limit (413) or not delivered in time (408); raised from ``receive``."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(status_code=status, detail=detail, headers={"Connection": "close"})


ABORTED = "peerserve.answer_aborted"  # scope key HttpLimits sets when an answer was aborted (AbortAnswer)


class AbortAnswer(Exception):
    """Raised out of a streamed answer to end the exchange without completing it (the proxy's model server broke
    off mid-answer): ``HttpLimits`` returns without the answer's last chunk (or its declared bytes) and uvicorn
    closes the connection, so the client sees a cut answer, never a well-formed one that is short."""


class HttpLimits:
    """ASGI middleware: the head's size, its path's control characters, the query's parameters and escapes and the
    cookies counted (``MAX_QUERY_PARAMS``, ``MAX_QUERY_ESCAPES``, ``MAX_COOKIES``) before the app parses them, the
    body's size limit (declared and counted) and a deadline for receiving the body."""

    def __init__(self, app: Any, max_body: int, body_timeout_s: float, max_header_bytes: int = 16384) -> None:
        self.app = app
        self.max_body = max_body
        self.body_timeout_s = body_timeout_s
        self.max_header_bytes = max_header_bytes

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        head = len(scope.get("raw_path", b"")) + len(scope.get("query_string", b""))
        if head + sum(len(k) + len(v) + 4 for k, v in scope["headers"]) > self.max_header_bytes:
            await _send_error(send, 431, f"request line and headers over {self.max_header_bytes} bytes")
            return
        if CONTROL_CHARS.search(scope.get("path", "")):
            await _send_error(send, 400, "control characters in the request path")
            return
        query = scope.get("query_string", b"")
        if query.count(b"&") >= MAX_QUERY_PARAMS:
            await _send_error(send, 414, f"more than {MAX_QUERY_PARAMS} query parameters")
            return
        if query.count(b"%") > MAX_QUERY_ESCAPES:
            await _send_error(send, 414, f"more than {MAX_QUERY_ESCAPES} percent-escapes in the query")
            return
        if sum(v.count(b";") + 1 for k, v in scope["headers"] if k == b"cookie") > MAX_COOKIES:
            await _send_error(send, 431, f"more than {MAX_COOKIES} cookies")
            return
        declared = self._declared_length(scope)
        if isinstance(declared, tuple):
            await _send_error(send, *declared)
            return
        started = False

        async def send_tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, self._bounded_receive(receive), send_tracked)
        except BodyRefused as exc:  # raised outside the app's exception handlers
            if not started:
                await _send_error(send, exc.status_code, str(exc.detail))
        except ClientDisconnect:
            log.debug("client %s went away while sending its body", scope.get("client"))
        except asyncio.CancelledError:
            if not scope.get(GIVEN_UP):
                raise
            # its place went to a newcomer (limited_protocol's _give_up, which answered it 503): the task ends here
            # quietly, not as uvicorn's "Exception in ASGI application" once per newcomer
            log.debug("request from %s given up for a newcomer", scope.get("client"))
        except AbortAnswer as exc:
            scope[ABORTED] = True  # for the metrics outside: the answer failed whatever its head said
            if not started:
                await _send_error(send, 502, str(exc))

    def _declared_length(self, scope: Scope) -> int | tuple[int, str] | None:
        """The Content-Length (None if absent), or (status, message) when it is invalid or too large."""
        for name, value in scope["headers"]:
            if name == b"content-length":
                if not value.isdigit() or len(value) > 19:
                    return 400, "invalid Content-Length"
                if int(value) > self.max_body:
                    return 413, f"request body over {self.max_body} bytes"
                return int(value)
        return None

    def _bounded_receive(self, receive: Any) -> Any:
        """``receive`` that counts body bytes and gives the body ``body_timeout_s`` from the app's first read."""
        deadline: float | None = None
        seen = 0
        done = False

        async def bounded() -> Message:
            nonlocal seen, done, deadline
            if done:
                return dict(await receive())
            deadline = deadline or time.monotonic() + self.body_timeout_s
            remaining = deadline - time.monotonic()
            try:
                message = dict(await aio.wait_for(receive(), max(remaining, 0.0)))
            except asyncio.TimeoutError:
                raise BodyRefused(408, f"request body not received within {self.body_timeout_s:g} s") from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:
                    raise BodyRefused(413, f"request body over {self.max_body} bytes")
                done = not message.get("more_body", False)
            return message

        return bounded


async def _send_error(send: Any, status: int, message: str) -> None:
    headers, body = error_bytes(status, message)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})
