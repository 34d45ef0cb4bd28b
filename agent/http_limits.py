"""Bounds on what one HTTP client can make the agent hold: body size, read deadlines, connections.

Two layers, because uvicorn gives no header timeout of its own:

- ``limited_protocol(...)`` builds an ``H11Protocol`` subclass for ``uvicorn.Config(http=...)``. Between
  requests (a new connection, or after a response) the client must deliver complete request headers
  within ``header_timeout_s``; a half-sent request line or header block gets ``408`` and the connection is
  closed (an idle keep-alive connection is simply closed). It also caps open connections per client
  address (``max_connections_per_address``), read from the count ``AddressBudgets`` keeps; at uvicorn's
  ``limit_concurrency`` a newcomer takes the place of the oldest connection waiting on its client (for its
  request head, or the rest of a request body that has stalled: no byte for ``BODY_STALL_S`` while the agent was
  not the one holding its reading) from the address holding the most such (a few addresses' idle connections or
  stalled bodies cannot keep everyone else out; an upload still coming, or one the agent stopped reading, is
  never given up).
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

h11 parses in pure Python on the agent's event loop, which also runs SWIM and the election: a body sent as
1-byte chunks (``1\r\n1\r\n``...) cost ~9 us per chunk, 0.4 s of loop for one 256 KiB socket read, and two such
connections got a leader declared dead (review 11a). So the protocol (``SlicedH11Protocol``) hands h11 at most
``PARSE_SLICE`` bytes and takes at most ``EVENTS_PER_TURN`` events per loop turn (reading paused until the rest
is parsed), and a body of more than ``max(MIN_CHUNKS, bytes / MIN_CHUNK_BYTES)`` chunks gets ``400`` and the
connection closed (``too_many_chunks``). A sender can still front-load bytes to buy tiny chunks (8 MiB buys
32,767), so each connection's parsing also has a CPU budget (``ParseBudget``: ``PARSE_SHARE`` of a second,
``PARSE_BURST_S`` at once) and all connections from one address share another (``AddressBudgets``); past
either, the next step waits. Behind a NAT one address is many clients, so the address's budget is not first come
first served (60 throttled senders made an honest 8 MiB upload behind them wait 95-106 s, review12e): each
connection also has its fair part, ``ADDRESS_SHARE / users`` (at most ``PARSE_SHARE``; a new connection starts it
one fair burst in debt, so reconnecting buys nothing), and may step on it whatever the address's budget says,
while the address owes less than ``ADDRESS_DEBT_S``. A connection that spends little never waits on the others;
every step is charged to the address, so what it takes in all stays ``ADDRESS_SHARE`` a second (plus bursts).
Five addresses at that share would take the whole loop, and on a LAN an attacker has many: all the client
port's parsing (HTTP and HTTPS listeners together) has one more budget, ``TOTAL_SHARE`` (50 %) of a second,
``TOTAL_BURST_S`` at once (``ParseTurns``). A step goes at once while it is in credit and nobody waits; else the
connection waits in its address's queue, and one timer serves the queues as the budget allows, the address whose
steps took least CPU first (start-time fair queuing): an honest request is next in line, not behind the floods,
and a new address starts behind everyone waiting, so appearing or reconnecting buys no burst. The peer port runs
the same protocol when httptools is missing (``PeerH11Protocol``, with a total of its own: a client-port flood
never delays SWIM there).

The concurrency limit itself is uvicorn's ``limit_concurrency`` (503 past it, unless a waiting connection is given
up for the newcomer), set in agent/cli.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import json
import logging
import re
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Any, ClassVar

import h11
from fastapi import HTTPException
from starlette.requests import ClientDisconnect
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.h11_impl import H11Protocol

from agent import aio
from agent.modelserver import oldest_of_busiest

log = logging.getLogger(__name__)

PARSE_SLICE = 16 * 1024  # bytes h11 parses per loop turn (at most ~2,700 chunks), and ...
EVENTS_PER_TURN = 128  # ... events it hands out per turn (~1 ms of 1-byte chunks); other tasks run between
PARSE_SHARE = 0.05  # CPU seconds per second one connection's parsing may take, past ...
PARSE_BURST_S = 0.1  # ... this much at once (an honest 8 MiB upload costs ~10-20 ms here)
ADDRESS_SHARE = 0.2  # ... and all connections from one address together (64 of them would be 3.2 s a second) ...
ADDRESS_BURST_S = 0.1  # ... past this much at once; each connection's fair part of it needs no more (see below) ...
ADDRESS_DEBT_S = 1.0  # ... while the address owes less than this (a cap on what fair parts may overdraw it)
TOTAL_SHARE = 0.5  # ... and all parsing of a port (every address; HTTP and HTTPS client listeners) together ...
TOTAL_BURST_S = 0.1  # ... this much at once: SWIM, the election and answers keep the rest, however many send
IDLE_CREDIT_S = 0.005  # an address that joins the turns may be this far behind their virtual time (a step's worth)
RECENT_ADDRESSES = 1024  # addresses with no connection open whose place in the turns is remembered (ParseTurns)
MIN_CHUNKS = 256  # chunks any body may use ...
MIN_CHUNK_BYTES = 256  # ... past which they must average at least this many bytes
BODY_STALL_S = 1.0  # a request body counts as waiting on its client after this long with no byte (reading not paused)
CLOSE_DRAIN_S = 10.0  # a closed connection's unsent bytes get this long to drain before it is aborted (_close)
REFUSAL_LINGER_S = 1.0  # a refused client has this long to read its 400; what it still sends is dropped unparsed ...
REFUSAL_DROP_BYTES = 1 << 20  # ... up to this much (then reading stops: a sender at line rate cost ~0.7 GB/s of reads)
CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")  # decoded %0A etc.: Starlette's routes would drop a final \n
Scope = dict[str, Any]
Message = dict[str, Any]


class BodyRefused(HTTPException):
    """A request body over the size limit (413) or not delivered in time (408); raised from ``receive``."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(status_code=status, detail=detail, headers={"Connection": "close"})


def error_bytes(status: int, message: str) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """Headers and body of a JSON error that also closes the connection."""
    body = json.dumps({"error": message}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]
    return headers, body


ABORTED = "peerserve.answer_aborted"  # scope key HttpLimits sets when an answer was aborted (AbortAnswer)
GIVEN_UP = "peerserve.given_up"  # scope key: the request's place went to a newcomer and its task was cancelled


class AbortAnswer(Exception):
    """Raised out of a streamed answer to end the exchange without completing it (the proxy's model server broke
    off mid-answer): ``HttpLimits`` returns without the answer's last chunk (or its declared bytes) and uvicorn
    closes the connection, so the client sees a cut answer, never a well-formed one that is short."""


class HttpLimits:
    """ASGI middleware: body size limit (declared and counted) and a deadline for receiving the body."""

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


def _raw_response(status: int, reason: str, message: str) -> bytes:
    """A whole HTTP/1.1 error response, for answering outside any request cycle."""
    headers, body = error_bytes(status, message)
    lines = b"".join(k + b": " + v + b"\r\n" for k, v in headers)
    return f"HTTP/1.1 {status} {reason}\r\n".encode() + lines + b"\r\n" + body


_warned: dict[str, float] = {}


def _warn_once_a_minute(key: str, message: str) -> None:
    """Log ``message`` at most once a minute per ``key`` (a flood of refusals is one line, not thousands)."""
    now = time.monotonic()
    if now - _warned.get(key, -60.0) >= 60.0:
        if len(_warned) > 1000:
            _warned.clear()
        _warned[key] = now
        log.warning("%s", message)


def _client_host(protocol: Any) -> str | None:
    client = getattr(protocol, "client", None)
    return str(client[0]) if client else None


def too_many_chunks(chunks: int, body_bytes: int) -> bool:
    """Whether a chunked body of ``chunks`` chunks and ``body_bytes`` bytes so far is chunked pathologically.

    Parsing costs per chunk, not per byte: past ``MIN_CHUNKS``, chunks must average ``MIN_CHUNK_BYTES`` or more.
    Clients send what they have in chunks of kilobytes; 1-byte chunks only make the agent work (6 wire bytes
    per body byte, one h11 event each). So a body's chunks are bounded by its size (at most max_body / 256)."""
    return chunks > max(MIN_CHUNKS, body_bytes // MIN_CHUNK_BYTES)


@dataclass
class ParseBudget:
    """The CPU time one connection's parsing may take: a bucket of ``burst_s`` refilled at ``share`` of a second
    per second. A step may overdraw it; the next one waits until the bucket is back at zero.

    The chunk rule bounds a body's chunks by its size, so a sender can still front-load bytes to buy tiny chunks
    (a full 8 MiB body buys 32,768 of them, ~0.3 s of h11); this bounds what any connection costs per second,
    whatever it sends. An honest 8 MiB upload costs a fraction of the burst."""

    share: float = PARSE_SHARE
    burst_s: float = PARSE_BURST_S
    credit: float = field(init=False)
    at: float | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.credit = self.burst_s

    def _refill(self, now: float) -> None:
        if self.at is not None:
            self.credit = min(self.burst_s, self.credit + max(0.0, now - self.at) * self.share)
        self.at = now

    def wait(self, now: float) -> float:
        """Seconds from ``now`` before the connection may parse again (0: at once)."""
        self._refill(now)
        return 0.0 if self.credit >= 0 else -self.credit / self.share

    def spend(self, seconds: float, now: float) -> float:
        """Charge ``seconds`` of parsing that ended at ``now``; the wait before the next step."""
        self._refill(now)
        self.credit -= seconds
        return 0.0 if self.credit >= 0 else -self.credit / self.share


def step_wait(own: ParseBudget, address: ParseBudget, fair: ParseBudget, now: float) -> float:
    """Seconds from ``now`` before a connection may parse again: its ``own`` budget, and the sooner of its
    ``address``'s budget and its ``fair`` part of it, that one only while the address owes less than
    ``ADDRESS_DEBT_S`` (each step is charged to all three)."""
    address_wait = address.wait(now)
    owed = max(0.0, (-address.credit - ADDRESS_DEBT_S) / address.share)
    return max(own.wait(now), min(address_wait, max(fair.wait(now), owed)))


class ParseTurns:
    """All parsing of a port together (every address; the client port's HTTP and HTTPS listeners share one, the
    peer port's h11 fallback has its own) takes at most ``share`` of a second, ``burst_s`` at once, and when that
    budget is spent, the steps that wait take turns fairly across addresses, whatever each address sends or how
    many connections it has.

    Per-address budgets alone let five addresses at ``ADDRESS_SHARE`` take the whole loop, and on a LAN an
    attacker has many addresses. A step goes at once only while the budget is in credit and nobody waits;
    else its connection joins its address's queue, and one timer serves the queues, one step at a time, as
    the budget allows: the address whose steps have taken the least goes first (start-time fair queuing: each
    address has a virtual time, the CPU its steps took; one that starts waiting again joins at the virtual
    time of the step served last, ``virtual``, if it is behind that, so an idle address banks nothing). An
    honest address, whose request parses in one cheap step, is next in line when it joins, not behind the
    others' floods (~one step of the budget's refill); the hostile ones share the rest equally. A new address
    starts at the ``horizon``, behind every one that waits (``AddressBudgets.take``): appearing, or closing
    every connection and reconnecting, buys one turn a round like everyone else's, never a burst.

    One timer however many wait (a timer per waiting connection would wake them all together each time the
    budget is back: their rechecks, uncharged, cost more than the steps); O(log n) per step (a heap of
    addresses; stale entries, of addresses whose last waiting connection closed, are dropped when popped or
    when they outnumber the live ones)."""

    def __init__(self, share: float = TOTAL_SHARE, burst_s: float = TOTAL_BURST_S) -> None:
        self.budget = ParseBudget(share, burst_s)
        self.virtual = 0.0  # the virtual time where the step served last started
        self.horizon = 0.0  # the latest virtual time any address has reached: where a new one starts
        # (virtual time, its last turn, ticket, address) per address waiting: among equal virtual times the one
        # served least recently goes first (an address that was idle is not put behind a round of ties)
        self._turns: list[tuple[float, int, int, AddressEntry]] = []
        self._tickets = itertools.count()
        self._live = 0  # addresses with a connection waiting (the others' heap entries are stale)
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def __len__(self) -> int:
        """Heap entries held (live and stale): at most twice the addresses waiting, plus 16."""
        return len(self._turns)

    @property
    def waiting(self) -> int:
        """Addresses with a connection waiting for its turn."""
        return self._live

    def admit(self, entry: AddressEntry, connection: Any, now: float) -> bool:
        """Whether ``connection`` (of ``entry``'s address) may parse now; if not, it waits in its address's queue
        for ``next_turn`` (the protocol then arms the timer: ``arm``)."""
        if not self._live and self._budget_wait(now) == 0:
            entry.virtual = max(entry.virtual, self.virtual - IDLE_CREDIT_S)
            self.virtual = max(self.virtual, entry.virtual)
            return True
        if not entry.waiting:
            self._join(entry)
        entry.waiting[connection] = None
        return False

    def next_turn(self, now: float) -> tuple[AddressEntry, Any] | None:
        """The connection whose turn it is (its address's oldest waiting, of the address that has had the least),
        or None (the budget is not back yet, or nobody waits). ``release`` its address after its step."""
        if self._budget_wait(now) > 0:
            return None
        while self._turns:
            virtual, _, ticket, entry = heapq.heappop(self._turns)
            if ticket == entry.ticket:
                connection = next(iter(entry.waiting))
                del entry.waiting[connection]
                self.virtual, entry.ticket, entry.served = max(self.virtual, virtual), None, next(self._tickets)
                self._live -= 1
                return entry, connection
        return None

    def release(self, entry: AddressEntry) -> None:
        """``entry``'s step is done (and charged): it joins the queues again if more of its connections wait."""
        if entry.waiting and entry.ticket is None:
            self._join(entry)

    def wait(self, now: float) -> float | None:
        """Seconds from ``now`` to the next turn; None when nobody waits."""
        return self._budget_wait(now) if self._live else None

    def _budget_wait(self, now: float) -> float:
        """The budget's wait, a rounding error taken as none (the refill's arithmetic can leave -1e-19 of credit)."""
        wait = self.budget.wait(now)
        return 0.0 if wait < 1e-9 else wait

    def withdraw(self, entry: AddressEntry, connection: Any) -> None:
        """``connection`` closed while it waited for its turn."""
        if entry.waiting.pop(connection, 0) is None and not entry.waiting and entry.ticket is not None:
            entry.ticket = None  # its heap entry is stale now
            self._live -= 1
            if len(self._turns) > 2 * self._live + 16:
                self._turns = [turn for turn in self._turns if turn[2] == turn[3].ticket]
                heapq.heapify(self._turns)

    def charge(self, entry: AddressEntry, seconds: float, now: float) -> None:
        """A step of ``entry``'s address took ``seconds`` of parsing, ending at ``now``."""
        self.budget.spend(seconds, now)
        entry.virtual += seconds
        self.horizon = max(self.horizon, entry.virtual)

    def ticket(self) -> int:
        """A ticket number: later than every one given so far."""
        return next(self._tickets)

    def _join(self, entry: AddressEntry) -> None:
        """``entry``'s address starts waiting: at its virtual time, or the current one if that is later (an address
        that was idle banks nothing)."""
        entry.virtual = max(entry.virtual, self.virtual - IDLE_CREDIT_S)
        self.horizon = max(self.horizon, entry.virtual)
        entry.ticket = next(self._tickets)
        heapq.heappush(self._turns, (entry.virtual, entry.served, entry.ticket, entry))
        self._live += 1

    def arm(self, loop: asyncio.AbstractEventLoop) -> None:
        """Serve the queues on ``loop``: one timer, at the next turn."""
        if self._loop is not loop:  # (a new loop: tests run one per server; the old one's timer went with it)
            self._loop, self._timer = loop, None
        wait = self.wait(loop.time())
        if self._timer is None and wait is not None:
            self._timer = loop.call_later(wait, self._serve)

    def _serve(self) -> None:
        """The timer: one step, the next turn's; then the timer for the one after (other tasks run between)."""
        self._timer = None
        assert self._loop is not None
        turn = self.next_turn(self._loop.time())
        if turn is not None:
            entry, connection = turn
            try:
                connection._granted()  # parses and charges (or finds its transport closing)
            finally:  # (whatever it raised: the others' turns go on)
                self.release(entry)
                self.arm(self._loop)
        else:
            self.arm(self._loop)


PARSING = ParseTurns()  # the client port's, HTTP and HTTPS listeners together
PEER_PARSING = ParseTurns()  # the peer port's h11 fallback's: a flood of the client port never delays SWIM there


@dataclass(eq=False)
class AddressEntry:
    """What ``AddressBudgets`` holds for one address: its parse budget, its open connections, and its place in
    the port's ``ParseTurns`` (virtual time, the connections waiting for a turn, oldest first)."""

    budget: ParseBudget
    virtual: float
    users: int = 0
    waiting: dict[Any, None] = field(default_factory=dict)
    ticket: int | None = None  # its live heap entry's, while a connection waits
    served: int = 0  # when it last had a turn (a ticket number; 0: never)


class AddressBudgets:
    """One ``ParseBudget`` per client address, shared by that address's open connections (held while one is
    open: as many entries as addresses with a connection, at most the server's connection limit), and the
    ``ParseTurns`` all of them take turns in (the client port's, ``PARSING``, unless given another)."""

    def __init__(
        self, share: float = ADDRESS_SHARE, burst_s: float = ADDRESS_BURST_S, turns: ParseTurns | None = None
    ) -> None:
        self.share, self.burst_s = share, burst_s
        self.turns = PARSING if turns is None else turns
        self._held: dict[str, AddressEntry] = {}
        self._recent: dict[str, float] = {}  # virtual times of addresses with no connection open, oldest first

    def __len__(self) -> int:
        return len(self._held)

    def take(self, host: str) -> AddressEntry:
        """``host``'s entry, for one more connection. A new one starts at the virtual time it had when its last
        connection closed, if remembered (an honest client that connects per request keeps its place), else
        at the turns' horizon, behind every address that waits: an address that appears, or reconnects to shed
        what its steps took, waits a whole round, never buys turns ahead of the others."""
        entry = self._held.get(host)
        if entry is None:
            start = self._recent.pop(host, self.turns.horizon)
            entry = self._held[host] = AddressEntry(ParseBudget(self.share, self.burst_s), start)
            entry.served = self.turns.ticket()  # last among equals, as if it had just had a turn
        entry.users += 1
        return entry

    def users(self, host: str) -> int:
        """How many open connections from ``host`` hold its budget: the per-address connection count, kept as
        connections open and close (a scan of the server's connections per connect was quadratic in them)."""
        entry = self._held.get(host)
        return 0 if entry is None else entry.users

    def give(self, host: str) -> None:
        """A connection from ``host`` closed; its budget goes when the last one does."""
        entry = self._held[host]
        entry.users -= 1
        if entry.users <= 0:
            del self._held[host]
            self._recent[host] = entry.virtual
            if len(self._recent) > RECENT_ADDRESSES:  # the least recently closed goes (it starts at the horizon)
                del self._recent[next(iter(self._recent))]


class ChunkCountingConnection(h11.Connection):
    """h11's server side, counting the chunks and bytes of each request body; past ``too_many_chunks`` it hands
    out no more events (``NEED_DATA``) and sets ``refused``: the protocol answers 400 and closes.

    It also hands out at most ``EVENTS_PER_TURN`` events between ``new_turn()`` calls: then ``NEED_DATA`` with
    ``cut_short`` set, and the protocol asks again on a later loop turn (h11 holds the rest, at most a slice)."""

    def __init__(self, max_incomplete_event_size: int, events_per_turn: int = EVENTS_PER_TURN) -> None:
        super().__init__(h11.SERVER, max_incomplete_event_size=max_incomplete_event_size)
        self.chunks = 0
        self.body_bytes = 0
        self.refused = False
        self.events_per_turn = events_per_turn
        self.turn_left = events_per_turn
        self.cut_short = False

    def new_turn(self) -> None:
        """A new loop turn: ``events_per_turn`` more events may be handed out."""
        self.turn_left, self.cut_short = self.events_per_turn, False

    def next_event(self) -> Any:
        if self.refused:
            return h11.NEED_DATA
        if self.turn_left <= 0:
            self.cut_short = True
            return h11.NEED_DATA
        event = super().next_event()
        if event is h11.NEED_DATA or event is h11.PAUSED:
            return event
        self.turn_left -= 1
        if isinstance(event, h11.Request):
            self.chunks = self.body_bytes = 0
        elif isinstance(event, h11.Data):
            self.body_bytes += len(event.data)
            # chunk_end, not chunk_start: h11 drops chunk_start when a read ends between a chunk's size and its data
            if event.chunk_end:
                self.chunks += 1
                if too_many_chunks(self.chunks, self.body_bytes):
                    self.refused = True
                    return h11.NEED_DATA
        return event


class SlicedFlowControl(FlowControl):
    """uvicorn's read flow control (paused while a handler leaves 64 KiB of body unread), except that it leaves
    reading paused while the protocol still holds bytes it has read but not parsed: else every resume would
    add another socket read (up to 256 KiB) to what waits, without bound."""

    def __init__(self, transport: asyncio.Transport, holding: Any, resumed: Any = None) -> None:
        super().__init__(transport)
        self._reading_transport = transport
        self._holding = holding
        self._resumed = resumed  # called when uvicorn lets reading go on (the protocol's ``_reading_resumed``)

    def resume_reading(self) -> None:
        if self.read_paused:
            self.read_paused = False
            if self._resumed is not None:
                self._resumed()
            if not self._holding():
                self._reading_transport.resume_reading()


class SlicedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with h11's work on the event loop bounded: per loop turn at most ``PARSE_SLICE``
    bytes and ``EVENTS_PER_TURN`` events, per connection at most ``ParseBudget`` (CPU time), and a body in too
    many small chunks refused (400, closed). Reading stays paused while parsed work waits for its turn.

    The client port's protocol (``limited_protocol``) adds its deadlines and caps on top; the peer port runs
    this one when httptools (C) is missing (``agent.peer_api.peer_http_parser``)."""

    parse_share = PARSE_SHARE
    parse_burst_s = PARSE_BURST_S
    events_per_turn = EVENTS_PER_TURN
    address_budgets = AddressBudgets()  # this class's connections' (a subclass may have its own)
    _address: str | None = None  # whose address budget this connection holds
    _entry: AddressEntry | None = None  # its address's entry (budget, place in the port's turns)
    _next_step: asyncio.Handle | None = None  # parsing the rest (or h11's pending events) on a later loop turn
    _in_turns = False  # waiting in its address's queue for a turn of the port's parse budget (ParseTurns)
    _reading_held = False  # reading paused by the slicing (uvicorn's flow control pauses it on its own too)
    _lingering: asyncio.TimerHandle | None = None  # refused: dropping what arrives until this closes
    _dropped = 0  # bytes dropped since the refusal
    close_drain_s = CLOSE_DRAIN_S  # (limited_protocol: its write_timeout_s)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        size = self.config.h11_max_incomplete_event_size or 16 * 1024
        self.counted = ChunkCountingConnection(size, self.events_per_turn)
        self.conn = self.counted
        self._unparsed = bytearray()  # read, not yet handed to h11: at most a slice plus one read
        self.budget = ParseBudget(self.parse_share, self.parse_burst_s)
        self.shared: ParseBudget | None = None  # its address's, from connection_made on
        self.fair = ParseBudget(self.parse_share, self.parse_burst_s)  # its fair part of the address's (_fair_now)
        self.parse_cpu_s = 0.0  # CPU time spent parsing on this connection (what the budget was charged)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.flow = SlicedFlowControl(transport, lambda: self._reading_held, self._reading_resumed)
        self._address = _client_host(self) or ""
        self._entry = self.address_budgets.take(self._address)
        self.shared = self._entry.budget
        self._fair_now()
        self.fair.credit, self.fair.at = -self.fair.burst_s, self.loop.time()

    def _fair_now(self) -> ParseBudget:
        """The fair part's rate and burst for the address's connections now: ``1 / users`` of the address's."""
        users = max(1, self.address_budgets.users(self._address or ""))
        self.fair.share = min(self.parse_share, self.address_budgets.share / users)
        self.fair.burst_s = min(self.parse_burst_s, self.address_budgets.burst_s / users)
        return self.fair

    def _wait(self) -> float:
        """Seconds before this connection may parse again: its own budget, and the sooner of its address's budget
        and its fair part of it (that one only while the address owes less than ``ADDRESS_DEBT_S``)."""
        now = self.loop.time()
        if self.shared is None:
            return self.budget.wait(now)
        return step_wait(self.budget, self.shared, self._fair_now(), now)

    def data_received(self, data: bytes) -> None:
        if self._lingering is not None:
            self._dropped += len(data)
            if self._dropped > REFUSAL_DROP_BYTES:
                self.transport.pause_reading()
            return
        self._on_data()
        if self._next_step is not None or self._in_turns:  # a step waits (reading is paused: this read was under way)
            self._unparsed += data
            self._hold_reading()
        elif (wait := self._wait()) > 0:
            self._unparsed += data
            self._hold_reading()
            self._next_step = self.loop.call_later(wait, self._step)
        elif not self._admitted():  # the port's parse budget is spent or others wait: in the queue
            self._unparsed += data
            self._hold_reading()
        elif self._unparsed or len(data) > PARSE_SLICE:
            self._unparsed += data
            self._parse(None)
        else:
            self._parse(data)  # the common case: a read of a slice or less, parsed as it came

    def _on_data(self) -> None:
        """Bytes arrived (before they are parsed); a subclass's hook."""

    def _reading_resumed(self) -> None:
        """Reading was paused by the agent (uvicorn's flow control or the slicing) and goes on; a subclass's hook."""

    def _close(self) -> None:
        """Close the connection, and abort it if what is still to be sent has not drained ``close_drain_s`` later.
        ``transport.close()`` waits for the client to read the write buffer: a client with a small receive buffer
        that never reads leaves a few tens of KB there, under asyncio's 64 KiB high-water mark, so ``pause_writing``
        never fires and the close never finishes; 23 such held a cap of 24 (/health 503 at 40 s, review14c F3)."""
        self.transport.close()
        if self.transport.get_write_buffer_size() > 0:
            self.loop.call_later(self.close_drain_s, self.transport.abort)  # (a no-op once it is closed)

    def _after_parse(self) -> None:
        """h11 has handed out what it could of a step; a subclass's hook."""

    def _step(self) -> None:
        """A scheduled step, on its loop turn: parse, unless the address's budget was spent since it was scheduled
        (then later) or the port's turns say to wait (then in its address's queue)."""
        self._next_step = None
        overdrawn = self.budget.credit < 0 or (
            self.shared is not None and min(self.shared.credit, self.fair.credit) < 0
        )
        if overdrawn and (wait := self._wait()) > 0 and not self.transport.is_closing():
            self._next_step = self.loop.call_later(wait, self._step)
            return
        if self.transport.is_closing() or self._admitted():
            self._parse(None)

    def _admitted(self) -> bool:
        """Whether the port's parse budget lets this connection step now; if not, it waits for its turn
        (``_granted``). Its own and its address's budgets were checked before: waiting only refills them."""
        if self._entry is None:
            return True
        turns = self.address_budgets.turns
        self._in_turns = not turns.admit(self._entry, self, self.loop.time())
        if self._in_turns:
            turns.arm(self.loop)
        return not self._in_turns

    def _granted(self) -> None:
        """Its turn (``ParseTurns``): one step (none for a connection of a loop that has closed: tests, benches)."""
        self._in_turns = False
        if not self.loop.is_closed():
            self._parse(None)

    def _charge(self, spent: float) -> float:
        """Charge ``spent`` seconds of parsing to every budget it counts against; the wait before the next step."""
        self.parse_cpu_s += spent
        now = self.loop.time()
        wait = self.budget.spend(spent, now)
        if self.shared is not None and self._entry is not None:
            self.shared.spend(spent, now)
            self._fair_now().spend(spent, now)
            self.address_budgets.turns.charge(self._entry, spent, now)
            wait = self._wait()
        return wait

    def _parse(self, data: bytes | None) -> None:
        """One loop turn's parsing: ``data`` (a slice at most, nothing waiting), else h11's events left from a turn
        cut short, else the next slice of what was read; then the next step is scheduled or reading resumed."""
        if self.transport.is_closing():
            self._unparsed.clear()
            return
        started = time.thread_time()
        pending = self.counted.cut_short
        self.counted.new_turn()
        if data is not None:
            super().data_received(data)
        elif pending:
            self.handle_events()
        elif self._unparsed:  # (never empty data: h11 reads that as the end of the stream)
            piece = self._unparsed[:PARSE_SLICE]
            del self._unparsed[:PARSE_SLICE]
            super().data_received(piece)  # type: ignore[arg-type]  # h11 takes any bytes-like
        wait = self._charge(time.thread_time() - started)
        if self.transport.get_protocol() is not self:  # upgraded (WebSocket): the rest was never h11's
            self._unparsed.clear()
            self.transport.resume_reading()
            return
        if self.counted.refused:
            self._refuse_chunking()
            return
        self._after_parse()
        self._next_or_release(wait)

    def _next_or_release(self, wait: float) -> None:
        """Schedule the next step when work is left (after ``wait``), else let reading go on."""
        if self.transport.is_closing():
            self._unparsed.clear()
        elif self.counted.cut_short or self._unparsed:
            self._hold_reading()
            if self._next_step is None and not self._in_turns:
                call = self.loop.call_soon if wait <= 0 else partial(self.loop.call_later, wait)
                self._next_step = call(self._step)
        elif self._reading_held:
            self._reading_held = False
            self._reading_resumed()
            if not self.flow.read_paused:  # else the flow control resumes it once the handler has read on
                self.transport.resume_reading()

    def _hold_reading(self) -> None:
        """Pause reading while parsing waits: every time, since uvicorn resumes the transport itself at the end
        of a body its handler did not read (pausing a paused transport does nothing)."""
        self._reading_held = True
        self.transport.pause_reading()

    def on_response_complete(self) -> None:
        """uvicorn parses pipelined events here: a step like any other, charged, and only if the budgets allow
        it now (else it is left to the step that waits: h11 keeps the events, cut short at once)."""
        waiting = self._next_step is not None or self._in_turns
        if waiting or self.transport.is_closing() or self._wait() > 0 or not self._admitted():
            self.counted.turn_left = 0
        started = time.thread_time()
        super().on_response_complete()
        wait = self._charge(time.thread_time() - started)
        if self.counted.cut_short and self._next_step is None and not self._in_turns and not self.counted.refused:
            self._next_or_release(wait)

    def _refuse_chunking(self) -> None:
        """400 (unless an answer has started) and close; the handler reading the body sees the client gone."""
        self._unparsed.clear()
        chunks, size, host = self.counted.chunks, self.counted.body_bytes, _client_host(self)
        _warn_once_a_minute(f"chunks {host}", f"refusing a body from {host}: {chunks} chunks for {size} bytes")
        if self.cycle is not None:
            if not self.cycle.response_started:
                message = f"request body in too many small chunks ({chunks} for {size} bytes)"
                self.transport.write(_raw_response(400, "Bad Request", message))
            self.cycle.disconnected = True  # the handler's receive() says so, its send() writes nothing more
            self.cycle.message_event.set()
        # Closing with the client's bytes unread would reset the connection, and the client's kernel drops
        # the 400 it has not read yet: end our side, drop what still comes (no parsing) for a moment, close.
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self._lingering = self.loop.call_later(REFUSAL_LINGER_S, self._close)
        self._reading_held = False
        self.flow.read_paused = False
        self.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        for handle in (self._next_step, self._lingering):
            if handle is not None:
                handle.cancel()
        self._next_step = None
        self._unparsed.clear()
        if self._in_turns and self._entry is not None:
            self.address_budgets.turns.withdraw(self._entry, self)
            self._in_turns = False
        if self._address is not None:
            self.address_budgets.give(self._address)
            self._address = None
        super().connection_lost(exc)


class PeerH11Protocol(SlicedH11Protocol):
    """The peer port's h11 fallback (``agent.peer_api.peer_http_parser``): the client port's bounds, with its
    own address table and turns (``PEER_PARSING``): a member's SWIM messages never wait behind the client port's
    queues; what the peer port's parsing takes (certificate holders only) has its own bound of the same size."""

    address_budgets = AddressBudgets(turns=PEER_PARSING)


def sliced_protocol(
    share: float = PARSE_SHARE,
    burst_s: float = PARSE_BURST_S,
    events_per_turn: int = EVENTS_PER_TURN,
    address: AddressBudgets | None = None,
) -> type[SlicedH11Protocol]:
    """``SlicedH11Protocol`` with another parse budget, turn size or address budgets (tests, benchmarks)."""
    fields = {"parse_share": share, "parse_burst_s": burst_s, "events_per_turn": events_per_turn,
              "address_budgets": AddressBudgets() if address is None else address}  # fmt: skip
    return type("SlicedH11Protocol", (SlicedH11Protocol,), fields)


class RecordedTasks:
    """uvicorn's set of request tasks (``server_state.tasks``) as one connection sees it: the same set, and the
    connection remembers the task uvicorn adds for its request, so a request given up for a newcomer can leave
    the count at once (``_give_up``). uvicorn uses only ``add``, ``discard`` and ``len`` on it."""

    def __init__(self, tasks: set[Any], owner: Any) -> None:
        self.tasks, self.owner = tasks, owner

    def add(self, task: Any) -> None:
        self.tasks.add(task)
        self.owner._task = task

    def discard(self, task: Any) -> None:
        self.tasks.discard(task)

    def __len__(self) -> int:
        return len(self.tasks)


def limited_protocol(
    header_timeout_s: float,
    max_connections_per_address: int,
    write_timeout_s: float | None = None,
    parsing: type[SlicedH11Protocol] = SlicedH11Protocol,
    address_budgets: AddressBudgets | None = None,
    body_stall_s: float | None = None,
) -> type[H11Protocol]:
    """A ``parsing`` (SlicedH11Protocol) subclass with a request-header deadline, a per-address connection cap
    and (with ``write_timeout_s``) a deadline for a client that stops reading what it is sent.

    ``address_budgets``: the per-address table (parse budgets, places in the turns, connection counts) to share
    with another listener of the same agent (its HTTP and HTTPS ports: one address, one place and one cap, not
    one on each, review13b F4); None: a table of its own on the parsing class's turns. ``body_stall_s``: how long a
    request body must go without a byte (while the agent is not the one holding its reading) before the connection
    counts as waiting on its client, one a newcomer may take the place of at the cap (None: ``BODY_STALL_S``)."""
    if address_budgets is None:
        own = parsing.address_budgets
        address_budgets = AddressBudgets(own.share, own.burst_s, own.turns)
    table: AddressBudgets = address_budgets
    drain_s = header_timeout_s if write_timeout_s is None else write_timeout_s
    stall_s = BODY_STALL_S if body_stall_s is None else body_stall_s

    class LimitedH11Protocol(parsing):  # type: ignore[valid-type,misc]
        address_budgets = table  # the parsing class's turns (PARSING unless a test's)
        close_drain_s = drain_s  # what a closed connection's unsent bytes get (_close)
        waiting: ClassVar[dict[str, dict[Any, None]]] = {}  # waiting for a request head, per address, oldest first
        given_up: ClassVar[set[Any]] = set()  # closed to make room, not yet gone from uvicorn's connection set
        _header_timer: asyncio.TimerHandle | None = None
        _write_timer: asyncio.TimerHandle | None = None
        _partial = False
        _half_closed = False  # the client ended its sending side: answer what it sent, then close
        _task: asyncio.Task[None] | None = None  # its latest request's task (RecordedTasks)
        _body_at = 0.0  # loop time its client last sent a byte, or the agent last let its reading go on
        _stall_timer: asyncio.TimerHandle | None = None  # when an incomplete body would count as stalled
        _write_left = 0  # bytes unsent when the write timer was armed (fewer when it fires: the client reads)

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.tasks = RecordedTasks(self.server_state.tasks, self)

        def pause_writing(self) -> None:
            """The client's socket is full: it must read again within ``write_timeout_s`` or be cut off."""
            super().pause_writing()
            self._arm_write_timer()

        def resume_writing(self) -> None:
            super().resume_writing()
            if self._write_timer is not None:
                self._write_timer.cancel()
                self._write_timer = None
            if self.transport.get_write_buffer_size() > 0:  # under the low-water mark, not drained: still watched
                self._arm_write_timer()

        def _arm_write_timer(self) -> None:
            if write_timeout_s is not None and self._write_timer is None:
                self._write_left = self.transport.get_write_buffer_size()
                self._write_timer = self.loop.call_later(write_timeout_s, self._write_timeout)

        def _write_timeout(self) -> None:
            """``write_timeout_s`` after the socket filled (``pause_writing``), or after an answer (or the
            low-water mark) left bytes unsent: cut off a client that read nothing meanwhile. Under asyncio's
            64 KiB high-water mark ``pause_writing`` never fires, so a client that stopped reading with a few
            tens of KB unsent was never cut off, and every close of its connection waited on it for good
            (review14c F3). A buffer still shrinking, or an answer still being written (that one pauses writing
            if its client stops reading), is looked at again later."""
            self._write_timer = None
            left = self.transport.get_write_buffer_size()
            if not self.flow.write_paused:
                if left == 0:
                    return
                answering = self.cycle is not None and not self.cycle.response_complete
                if left < self._write_left or (answering and not self.transport.is_closing()):
                    self._arm_write_timer()
                    return
            log.debug("aborting a connection to %s: it read nothing for %g s", self.client, write_timeout_s)
            self.transport.abort()  # close() would wait for the client to read the buffer first

        def connection_made(self, transport: asyncio.Transport) -> None:
            super().connection_made(transport)
            host = self.client[0] if self.client else None
            if host is not None and self._over_address_cap(host):
                _warn_once_a_minute(host, f"refusing connections from {host}: {max_connections_per_address} open")
                message = f"over {max_connections_per_address} connections open from {host}"
                transport.write(_raw_response(503, "Service Unavailable", message))
                self._close()
                return
            self._make_room(host or "")
            self._update_header_deadline()

        def _make_room(self, host: str) -> None:
            """At ``limit_concurrency`` (uvicorn answers every request 503 while that many connections are open), give
            up the oldest connection waiting on its client from the address holding the most such, if more than
            ``host`` holds (``oldest_of_busiest``): four addresses' 64 idle connections each kept every other client
            out (review12e), and so did 4 x 64 predicts whose bodies stalled after a byte (review14a F5). Waiting on
            its client: for a request head (idle keep-alive included: closed without a word) or for the rest of a
            request body that has stalled (``_body_stalled``; answered 503, see ``_give_up``). A request read whole,
            or being answered, is never given up."""
            limit = self.limit_concurrency
            while limit is not None and len(self.connections) - len(self.given_up) >= limit:
                victim = oldest_of_busiest(self.waiting, host)
                if victim is None:
                    return  # the newcomer's own address holds the most: its request gets uvicorn's 503
                victim._unmark_waiting()
                if victim._answer_started():  # answering before the body came (an early error): not waiting
                    continue
                self.given_up.add(victim)
                log.debug("giving up a connection from %s for a newcomer from %s", victim.client, host)
                victim._give_up()

        def _answer_started(self) -> bool:
            return self.cycle is not None and not self.cycle.response_complete and self.cycle.response_started

        def _body_stalled(self) -> bool:
            """A body awaited (``_awaiting_body``) that has really stalled: no byte for ``body_stall_s`` while reading
            was not paused by the agent. An honest upload on a slow link keeps sending, and one the agent stopped
            reading (uvicorn pauses reading while a handler leaves 64 KiB unread; the slicing holds it while
            parsing waits) waits on the agent, not its client: neither is given up for a newcomer (review14c F1)."""
            return (
                self._awaiting_body()
                and not self.flow.read_paused
                and not self._reading_held
                and self.loop.time() - self._body_at >= stall_s
            )

        def _reading_resumed(self) -> None:
            self._body_at = self.loop.time()  # the client could not send while the agent held its reading

        def _arm_stall_check(self) -> None:
            """Look again when the awaited body would have gone ``body_stall_s`` without a byte."""
            if self._stall_timer is None:
                held = self.flow.read_paused or self._reading_held
                left = stall_s if held else stall_s - (self.loop.time() - self._body_at)
                self._stall_timer = self.loop.call_later(max(left, 0.0), self._stall_check)

        def _stall_check(self) -> None:
            self._stall_timer = None
            if not self.transport.is_closing():
                self._update_header_deadline()

        def _awaiting_body(self) -> bool:
            """A request handed to the app whose body has not all come, and no answer started: waits on its client."""
            cycle = self.cycle
            return (
                cycle is not None
                and not cycle.response_started
                and self.conn.their_state is h11.SEND_BODY
                and not self.transport.is_closing()
            )

        def _give_up(self) -> None:
            """Close this connection for a newcomer. One waiting for its head just closes, as a client expects of an
            idle connection. One whose body was awaited is answered 503 with ``Connection: close`` (the app has
            written nothing: the stand-in's rule), and the app's ``receive`` says the client is gone
            (``http.disconnect``): the proxy reading the body stops there and closes its model-server
            connection mid-request (never reused, nothing answered from it), and nothing the app still sends is
            written. Its task also leaves uvicorn's count at once (else the newcomer's request, parsed on the next
            turns, still found the cap full of tasks and got the 503 itself), and is cancelled (``GIVEN_UP`` in its
            scope: ``HttpLimits`` ends it quietly): left to end at its next ``receive``, a handler that waits before
            reading its body (the proxy's ``resolve`` provisioning a model, up to ``provision_wait_s``) ran on
            uncounted, and newcomers from rotating addresses piled up 323 live handlers at cap 24 (review14c F2)."""
            if self.transport.get_write_buffer_size() > 0:  # it is not even reading what it was sent: nothing more
                self.transport.abort()
            cycle = self.cycle
            if cycle is not None and not cycle.response_complete:
                if not cycle.response_started and not self.transport.is_closing():
                    message = "this request's place was given to a newcomer: the agent is at its connection limit"
                    self.transport.write(_raw_response(503, "Service Unavailable", message))
                cycle.disconnected = True  # receive() answers http.disconnect; send() writes nothing more
                cycle.message_event.set()
                if self._task is not None:
                    self.server_state.tasks.discard(self._task)
                    cycle.scope[GIVEN_UP] = True  # (an ASGI scope is a dict)
                    self._task.cancel()
            self._unparsed.clear()
            self._close()

        def _mark_waiting(self) -> None:
            """Waiting on its client: kept in place if it was marked already."""
            if self._address is not None:
                self.waiting.setdefault(self._address, {})[self] = None

        def _unmark_waiting(self) -> None:
            held = self.waiting.get(self._address or "")
            if held is not None and held.pop(self, 0) is None and not held:
                del self.waiting[self._address or ""]

        def _over_address_cap(self, host: str) -> bool:
            """Whether ``host`` holds more than the cap, this connection included (counted by ``take`` in the parent's
            ``connection_made``): O(1), where a scan of uvicorn's connection set cost O(open connections) per connect
            (review12e: 6,000 connects against 2,560 held connections, 7-13 s of loop lag)."""
            return self.address_budgets.users(host) > max_connections_per_address

        def _on_data(self) -> None:
            self._body_at = self.loop.time()
            if self._header_timer is not None:
                self._partial = True
            else:  # a body that was stalled is moving again: no longer waiting on its client
                self._unmark_waiting()

        def eof_received(self) -> bool | None:  # asyncio.Protocol allows bool
            """The client shut down its sending side (``shutdown(SHUT_WR)``, ``curl`` reading a request from a pipe,
            netcat): uvicorn's own ``eof_received`` lets asyncio close the transport, so a request read whole got
            no answer at all. Keep the write side open (asyncio: return True) while a request is read or still
            being parsed, answer it, then close (``on_response_complete``). A request cut short by the EOF still
            closes the connection (its handler sees the client gone), as before. TLS has no half-close in
            asyncio (its transport closes whatever this returns): unchanged there."""
            if self.scheme == "https" or self.transport.is_closing():
                return None
            self._half_closed = True
            return True if self._parsing_left() or self._answering() else None

        def _parsing_left(self) -> bool:
            """Bytes read and not yet parsed, or events h11 holds from a turn cut short."""
            return bool(self._unparsed) or self.counted.cut_short

        def _answering(self) -> bool:
            """A request read whole whose answer is not complete yet."""
            return self.cycle is not None and not self.cycle.response_complete and self.conn.their_state is h11.DONE

        def _close_if_half_closed(self) -> None:
            """After the last answer to a client that half-closed (or once its cut-short request is parsed): close."""
            if self._half_closed and not self._parsing_left() and not self._answering():
                if self.transport.is_closing():
                    return
                if self.cycle is not None and not self.cycle.response_complete:  # the EOF cut its request short
                    self.cycle.disconnected = True
                    self.cycle.message_event.set()
                with contextlib.suppress(h11.LocalProtocolError):
                    self.conn.send(h11.ConnectionClosed())
                self._close()

        def _after_parse(self) -> None:
            self._close_if_half_closed()
            self._update_header_deadline()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if self.transport.get_write_buffer_size() > 0:  # the answer's tail unsent: the client must read it
                self._arm_write_timer()
            self._close_if_half_closed()
            self._update_header_deadline()

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel_header_deadline()
            self._unmark_waiting()
            self.given_up.discard(self)
            if self._stall_timer is not None:
                self._stall_timer.cancel()
                self._stall_timer = None
            if self._write_timer is not None:
                self._write_timer.cancel()
                self._write_timer = None
            super().connection_lost(exc)

        def _waiting_for_headers(self) -> bool:
            return self.cycle is None or self.cycle.response_complete

        def _update_header_deadline(self) -> None:
            """Arm the deadline while no request is in progress; disarm it once a request's headers are in. Then
            the connection is in ``waiting`` while it waits on its client (a head, or a body that has stalled:
            ``_body_stalled``, looked at again by a timer while the body is awaited)."""
            if self.transport.is_closing() or not self._waiting_for_headers():
                self._cancel_header_deadline()
            elif self._header_timer is None:
                self._partial = False
                self._header_timer = self.loop.call_later(header_timeout_s, self._header_timeout)
            if self._header_timer is not None or self._body_stalled():
                self._mark_waiting()
            else:
                self._unmark_waiting()
                if self._awaiting_body():
                    self._arm_stall_check()

        def _cancel_header_deadline(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _header_timeout(self) -> None:
            self._header_timer = None
            self._unmark_waiting()
            if self.transport.is_closing():
                return
            if self._partial and self.conn.our_state in (h11.IDLE, h11.DONE):
                message = f"request headers not received within {header_timeout_s:g} s"
                self.transport.write(_raw_response(408, "Request Timeout", message))
            log.debug("closing a connection from %s: no complete request in %g s", self.client, header_timeout_s)
            self._close()

    return LimitedH11Protocol
