"""The h11 protocol with its work on the event loop bounded (``SlicedH11Protocol``), and the raw answers it sends.

Split out of agent/http_limits.py (the overview is there). h11 parses in pure Python on the agent's event loop,
which also runs SWIM and the election: a body sent as 1-byte chunks (``1\\r\\n1\\r\\n``...) cost ~9 us per chunk, 0.4 s
of loop for one 256 KiB socket read, and two such connections got a leader declared dead (review 11a). So the
protocol hands h11 at most ``PARSE_SLICE`` bytes and takes at most ``EVENTS_PER_TURN`` events per loop turn (reading
paused until the rest is parsed), a body of more than ``max(MIN_CHUNKS, bytes / MIN_CHUNK_BYTES)`` chunks gets
``400`` and the connection closed (``too_many_chunks``), a head (or a chunked trailer) of more than
``MAX_HEADER_FIELDS`` lines, longer than ``max_header_kb`` or with more than ``MAX_LIST_COMMAS`` commas in the
fields h11 splits gets ``431`` before h11 parses it (h11 parses a head in one step), and each step is
charged to the parse budgets of agent/http_parse.py. The peer port runs the same protocol when httptools is
missing (``PeerH11Protocol``, with a total of its own: a client-port flood never delays SWIM there).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import h11
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.h11_impl import H11Protocol

from agent.http_parse import (
    PARSE_BURST_S,
    PARSE_SHARE,
    PEER_PARSING,
    AddressBudgets,
    AddressEntry,
    ParseBudget,
    step_wait,
)
from agent.serving import pauses

log = logging.getLogger(__name__)

PARSE_SLICE = 16 * 1024  # bytes h11 parses per loop turn (at most ~2,700 chunks), and ...
# uvicorn's own refusal at limit_concurrency (flow_control.service_unavailable) is text/plain "Service Unavailable":
# the connection sends this in its place, as every other error of the agent's is {"error": ...} (review26a L3)
CAP_REFUSAL = "over the agent's limit of requests in progress (max_concurrency): retry after the time given"
UVICORN_REFUSAL_TYPE = b"text/plain; charset=utf-8"
EVENTS_PER_TURN = 128  # ... events it hands out per turn (~1 ms of 1-byte chunks); other tasks run between
MIN_CHUNKS = 256  # chunks any body may use ...
MIN_CHUNK_BYTES = 256  # ... past which they must average at least this many bytes
MAX_LIST_COMMAS = 64  # commas a head's Connection, Transfer-Encoding, Content-Length, Upgrade and Expect may hold:
# h11 and uvicorn split those in Python, 2-3 times each, so 16,000 commas in one field were a 5-7 ms step (review25b)
MAX_HEADER_FIELDS = 100  # header lines a request head (or a chunked body's trailer) may have: past it, 431 before
# h11 parses it (Apache's LimitRequestFields, Tomcat's maxHeaderCount): h11 parses a head in one step, ~3 us a line,
# so 2,500 tiny lines in 16 KiB were one ~8-13 ms step that no slice could cut, and a round of the parse turns
# across 12 such addresses took ~1.8 s at a 10 % share; 100 lines of 150 bytes are ~1 ms
CLOSE_DRAIN_S = 10.0  # a closed connection's unsent bytes get this long to drain before it is aborted (_close)
REFUSAL_LINGER_S = 1.0  # a refused client has this long to read its 400; what it still sends is dropped unparsed ...
REFUSAL_DROP_BYTES = 1 << 20  # ... up to this much (then reading stops: a sender at line rate cost ~0.7 GB/s of reads)
EARLY_ANSWER_LINGER_S = 2.0  # an answer that closes before the request's body was all read (a 413 before reading):
EARLY_ANSWER_LINGER_MAX_S = 10.0  # the client may still be sending it; dropped unparsed after our FIN until it has
EARLY_ANSWER_DROP_BYTES = 16 << 20  # sent nothing for LINGER_S, for LINGER_MAX_S in all, or this much (twice the
# default max_body_mb), so a client that reads only once it has sent everything (Python's http.client and
# urllib.request) gets the answer, not a reset (nginx's lingering_timeout and lingering_time, 5 s and 30 s)


_BLANK_LINE = re.compile(rb"\n\r?\n")  # where a head (or a trailer) ends: h11's blank_line_regex
_LAST_CHUNK = re.compile(rb"0{1,20}(?![0-9A-Fa-f])")  # a chunked body's last chunk's size (0): its trailer next


@dataclass
class HeadScan:
    """How far ``header_lines`` has looked at the head (or trailer) starting at ``start`` of a buffer: the lines
    before ``scanned``, and where the head ends once its blank line came (``end``, past its last line's newline;
    -1 before). ``listed``: its list headers were counted (``list_commas``, once a head)."""

    start: int = -1
    scanned: int = 0
    lines: int = 0
    end: int = -1
    listed: bool = False


def header_lines(data: bytes | bytearray, window: int, start: int = 0, scan: HeadScan | None = None) -> int | None:
    """Lines of the head (or trailer) at ``start`` in ``data`` (request line included, the blank line that ends
    it not), as far as it has arrived; None when ``window`` bytes of it have come without its end: too large,
    however it ends (h11 refuses only an incomplete head over its bound, and parses a complete one of any size
    in one step). ``scan`` carries what earlier calls counted for the same head, so bytes are looked at once (a
    head trickled a byte a read costs its length in all, not its square); another start, or a buffer shorter
    than what was scanned, starts it over."""
    if scan is None:
        scan = HeadScan()
    if scan.start != start or scan.scanned > len(data):
        scan.start, scan.scanned, scan.lines, scan.end, scan.listed = start, start, 0, -1, False
    if data[start : start + 1] == b"\n" or data[start : start + 2] == b"\r\n":
        return 0  # (an empty trailer; a head that starts with a blank line is h11's error)
    limit = start + window
    end = _BLANK_LINE.search(data, max(start, scan.scanned - 2), limit)  # (a blank line the last bytes began)
    stop = min(len(data), limit) if end is None else end.start() + 1
    if stop > scan.scanned:
        scan.lines += data.count(b"\n", scan.scanned, stop)
        scan.scanned = stop
    if end is None:
        return None if len(data) - start > window - 4 else scan.lines  # (past h11's bound: too long however it ends)
    scan.end = stop
    return scan.lines


_LIST_HEADERS = re.compile(rb"^(?:connection|transfer-encoding|content-length|upgrade|expect)[ \t]*:[^\n]*",
                           re.IGNORECASE | re.MULTILINE)  # fmt: skip


def list_commas(data: bytes | bytearray, start: int, end: int) -> int:
    """Commas in the head's fields that h11 and uvicorn split as lists (``get_comma_header``, ``_get_upgrade``):
    Connection, Transfer-Encoding, Content-Length, Upgrade, Expect (one regex pass in C)."""
    return sum(found.group().count(b",") for found in _LIST_HEADERS.finditer(data, start, end))


def error_bytes(status: int, message: str) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """Headers and body of a JSON error that also closes the connection."""
    body = json.dumps({"error": message}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]
    return headers, body


def raw_response(status: int, reason: str, message: str, retry_after_s: int | None = None) -> bytes:
    """A whole HTTP/1.1 error response, for answering outside any request cycle (with ``Retry-After`` if given)."""
    headers, body = error_bytes(status, message)
    if retry_after_s is not None:
        headers.append((b"retry-after", b"%d" % retry_after_s))
    lines = b"".join(k + b": " + v + b"\r\n" for k, v in headers)
    return f"HTTP/1.1 {status} {reason}\r\n".encode() + lines + b"\r\n" + body


class LingeringTransport:
    """The protocol's transport (the client port's, and the peer port's h11 fallback's), whose ``close()`` lingers
    where closing at once would reset the connection.

    uvicorn closes the transport itself once an answer with ``Connection: close`` is sent (its request cycle's
    ``send``), and the agent's errors close (``error_bytes``). When that answer came before the request's body was
    all read (a declared body over ``max_body_mb`` gets 413 before a byte of it is read), the client is still
    sending: the socket closed with bytes unread sends a reset, and the client's kernel drops the answer it had not
    read yet. ``linger`` (the protocol's ``_linger_instead``) decides and carries out the lingering close; the
    agent's own closes (``close_now``: a newcomer taking the place, a header deadline, the linger's end) never
    linger; every other method is the transport's own. ``is_closing()`` is true from a linger on (``lingering``;
    the chunk refusal's included), as it is after a close: nothing more is written or parsed."""

    __slots__ = ("_closing", "_linger", "_transport")

    def __init__(self, transport: asyncio.Transport, linger: Callable[[], bool]) -> None:
        self._transport = transport
        self._linger = linger
        self._closing = False  # lingering: closed as far as the protocol's users are concerned

    def close(self) -> None:
        if not self._closing and not self._transport.is_closing() and self._linger():
            return
        self._transport.close()

    def close_now(self) -> None:
        self._transport.close()

    def lingering(self) -> None:
        self._closing = True

    def is_closing(self) -> bool:
        return self._closing or self._transport.is_closing()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


_warned: dict[str, float] = {}


def warn_once_a_minute(key: str, message: str) -> None:
    """Log ``message`` at most once a minute per ``key`` (a flood of refusals is one line, not thousands)."""
    now = time.monotonic()
    if now - _warned.get(key, -60.0) >= 60.0:
        if len(_warned) > 1000:
            _warned.clear()
        _warned[key] = now
        log.warning("%s", message)


def step_cpu(started: float, collected: float) -> float:
    """The calling thread's CPU since ``started`` (``time.thread_time()``), less what full collections took of it
    since ``collected`` (``pauses.full_collection_cpu_s()``), never below 0: what a parse step is charged. A full
    collection that lands in a step scans the whole heap (0.25-0.3 s in a test process): charged, it starved the
    address whose step it was for seconds (session 16); it is the process's pause, not that address's parsing."""
    return max(0.0, time.thread_time() - started - (pauses.full_collection_cpu_s() - collected))


def client_host(protocol: Any) -> str | None:
    client = getattr(protocol, "client", None)
    return str(client[0]) if client else None


def too_many_chunks(chunks: int, body_bytes: int) -> bool:
    """Whether a chunked body of ``chunks`` chunks and ``body_bytes`` bytes so far is chunked pathologically.

    Parsing costs per chunk, not per byte: past ``MIN_CHUNKS``, chunks must average ``MIN_CHUNK_BYTES`` or more.
    Clients send what they have in chunks of kilobytes; 1-byte chunks only make the agent work (6 wire bytes
    per body byte, one h11 event each). So a body's chunks are bounded by its size (at most max_body / 256)."""
    return chunks > max(MIN_CHUNKS, body_bytes // MIN_CHUNK_BYTES)


@dataclass(frozen=True)
class Refusal:
    """Why a connection's input is refused before h11 parses more of it: the answer, and the warning's kind."""

    status: int
    reason: str
    message: str
    kind: str  # "chunks" or "headers": one warning a minute per kind and address
    head: bool = False  # a new request's head (between requests): answered even after the last one's answer


class ChunkCountingConnection(h11.Connection):
    """h11's server side, counting the chunks and bytes of each request body and the lines, bytes and list commas of
    each request head (and chunked trailer) before h11 parses it; past ``too_many_chunks``, or past a head's bounds
    (``_head_over_bounds``), it hands out no more events (``NEED_DATA``) and sets ``refusal``: the protocol answers
    400 or 431 and closes.

    It also hands out at most ``EVENTS_PER_TURN`` events between ``new_turn()`` calls: then ``NEED_DATA`` with
    ``cut_short`` set, and the protocol asks again on a later loop turn (h11 holds the rest, at most a slice).
    Only while h11 holds bytes or an EOF: with its buffer empty it hands out an ``EndOfMessage`` at most (a body
    of ``Content-Length: 0``), and cut short there, a request whose last step used up the turn exactly (126
    one-byte chunks) left its connection holding reading for nothing to parse, its client's next request unread
    until keep-alive reset it (review17a F1)."""

    def __init__(
        self,
        max_incomplete_event_size: int,
        events_per_turn: int = EVENTS_PER_TURN,
        max_header_fields: int = MAX_HEADER_FIELDS,
    ) -> None:
        super().__init__(h11.SERVER, max_incomplete_event_size=max_incomplete_event_size)
        self.head_limit = max_incomplete_event_size  # the longest request head h11 takes (past it: 431)
        self.max_header_fields = max_header_fields
        self.chunks = 0
        self.body_bytes = 0
        self.refusal: Refusal | None = None  # why no more events are handed out (the protocol answers it)
        self._scan = HeadScan()  # how far the next head (or trailer) has been counted (``header_lines``)
        self.events_per_turn = events_per_turn
        self.turn_left = events_per_turn
        self.cut_short = False
        self.retry_after_s: int | None = None  # what a 503 to the current request says, if it says nothing itself
        self._refusal_body: bytes | None = None  # the JSON body sent for uvicorn's text one (None: not replacing)
        self.on_continue: Callable[[], None] | None = None  # called as a ``100 Continue`` goes out (the protocol's)

    def send(self, event: Any) -> Any:  # (h11's overloads: any event in, bytes or None out)
        """h11's ``send``, a 503 response head without ``Retry-After`` given ``retry_after_s`` (uvicorn's own
        refusal at its concurrency limit says nothing of when to come back; the protocol sets it for that one).
        uvicorn's own text/plain refusal goes out as ``{"error": CAP_REFUSAL}`` instead (head and body)."""
        after = self.retry_after_s
        refusal = after is not None and isinstance(event, h11.Response) and event.status_code == 503
        if refusal and (b"content-type", UVICORN_REFUSAL_TYPE) in event.headers:
            headers, self._refusal_body = error_bytes(503, CAP_REFUSAL)
            own = next((value for name, value in event.headers if name == b"retry-after"), None)
            headers.append((b"retry-after", own or b"%d" % (after or 0)))
            event = h11.Response(status_code=503, headers=headers, reason=event.reason)
        elif refusal and not any(name == b"retry-after" for name, _ in event.headers):
            headers = [*event.headers, (b"retry-after", b"%d" % (after or 0))]
            event = h11.Response(status_code=503, headers=headers, reason=event.reason)
        elif isinstance(event, h11.Data) and self._refusal_body is not None and event.data:  # (a HEAD's is empty)
            event, self._refusal_body = h11.Data(data=self._refusal_body), b""  # uvicorn's text (all of it) dropped
            if not event.data:
                return b""
        elif isinstance(event, h11.EndOfMessage):
            self._refusal_body = None
        data = super().send(event)
        if self.on_continue is not None and isinstance(event, h11.InformationalResponse) and event.status_code == 100:
            self.on_continue()
        return data

    def new_turn(self) -> None:
        """A new loop turn: ``events_per_turn`` more events may be handed out."""
        self.turn_left, self.cut_short = self.events_per_turn, False

    @property
    def refused(self) -> bool:
        return self.refusal is not None

    def next_event(self) -> Any:
        if self.refusal is not None:
            return h11.NEED_DATA
        if self.turn_left <= 0 and any(self.trailing_data):  # bytes (or an EOF) left: on a later turn
            self.cut_short = True
            return h11.NEED_DATA
        if self._head_over_bounds():
            return h11.NEED_DATA
        event = super().next_event()
        if event is h11.NEED_DATA or event is h11.PAUSED:
            return event
        self._scan.start = -1  # (h11 took bytes: a head counted so far is no longer where it was)
        self.turn_left -= 1
        if isinstance(event, h11.Request):
            self.chunks = self.body_bytes = 0
            self.retry_after_s = None
        elif isinstance(event, h11.Data):
            self.body_bytes += len(event.data)
            # chunk_end, not chunk_start: h11 drops chunk_start when a read ends between a chunk's size and its data
            if event.chunk_end:
                self.chunks += 1
                if too_many_chunks(self.chunks, self.body_bytes):
                    message = f"request body in too many small chunks ({self.chunks} for {self.body_bytes} bytes)"
                    self.refusal = Refusal(400, "Bad Request", message, "chunks")
                    return h11.NEED_DATA
        return event

    def _head_over_bounds(self) -> bool:
        """Whether the head h11 is about to parse (a request's, or a chunked body's trailer) has more than
        ``max_header_fields`` field lines, or runs past ``head_limit`` bytes, as far as it has arrived, or (a
        request's, complete) more than ``MAX_LIST_COMMAS`` commas in the fields h11 splits (then ``refusal`` is
        set). Counted before h11 parses it, in C, each byte once (``HeadScan``): h11 parses a whole
        head in one step, its cost in its lines, and a complete head of any length (review25 F1: 16 KiB of long
        lines, then 30,000 short ones in the same read, one 165-235 ms step)."""
        if self.their_state is h11.IDLE:
            lines = header_lines(self.buffered(), self.head_limit + 4, 0, self._scan)
            fields, what = (None if lines is None else lines - 1), "header"  # (the request line is no field)
        elif self.their_state is h11.SEND_BODY and (start := self._trailer_start()) is not None:
            fields, what = header_lines(self.buffered(), self.head_limit + 4, start, self._scan), "trailer"
        else:
            return False
        head = what == "header"  # a new request's: answered whatever the last one's answer did
        if fields is None:
            message = f"request {'head' if head else 'trailer'} over {self.head_limit} bytes"
        elif fields > self.max_header_fields:
            message = f"more than {self.max_header_fields} {what} fields"
        elif head and self._scan.end >= 0 and not self._scan.listed:  # (its end came: counted once)
            self._scan.listed = True
            if list_commas(self.buffered(), 0, self._scan.end) <= MAX_LIST_COMMAS:
                return False
            listed = "Connection, Transfer-Encoding, Content-Length, Upgrade or Expect"
            message = f"more than {MAX_LIST_COMMAS} commas in {listed}"
        else:
            return False
        self.refusal = Refusal(431, "Request Header Fields Too Large", message, "headers", head)
        return True

    def _trailer_start(self) -> int | None:
        """Where a chunked body's trailer starts in h11's buffer, if h11's next step may parse it: it is reading
        the trailer, or its buffer holds the last chunk's line next (h11 reads on into the trailer in the same
        step). h11's chunked reader's state is private: unknown state reads as no trailer (the count is skipped)."""
        reader = self._reader
        if getattr(reader, "_reading_trailer", False):
            return 0
        if getattr(reader, "_bytes_in_chunk", None) != 0:
            return None  # (not chunked, or inside a chunk's data)
        data = self.buffered()
        last = _LAST_CHUNK.match(data, len(getattr(reader, "_bytes_to_discard", b"")))
        line_end = -1 if last is None else data.find(b"\n", last.end())  # (memchr: a long extension costs ~1 us)
        return None if line_end < 0 else line_end + 1

    def buffered(self) -> bytes | bytearray:
        """What h11 holds unparsed: its buffer itself where it is the bytearray h11 0.14-0.16 keep (looked at at
        every chunk's end, so not copied), else a copy (``trailing_data``)."""
        data = getattr(self._receive_buffer, "_data", None)
        return data if isinstance(data, bytearray) else self.trailing_data[0]


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
    _held_for_debt = False  # ... and, since reading was last let go on, for its own parse debt (``_in_own_debt``)
    _lingering: asyncio.TimerHandle | None = None  # refused or answered early: dropping what comes until this closes
    _dropped = 0  # bytes dropped since the refusal
    _drop_limit = REFUSAL_DROP_BYTES  # ... and how many it may drop before reading stops (_linger_close)
    _linger_idle_s = 0.0  # ... the linger ends once nothing came for this long ...
    _linger_ends = 0.0  # ... or at this loop time at the latest
    _linger_heard = 0.0  # loop time of the last bytes dropped
    _no_linger = False  # uvicorn closes for its own reasons (the server's stop, the keep-alive timeout): at once
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
        pauses.install()  # full collections' CPU is counted, to be left out of the steps' charges (step_cpu)
        super().connection_made(transport)
        self._own_transport = LingeringTransport(transport, self._linger_instead)  # (typed: uvicorn's is a Transport)
        self.transport = self._own_transport  # type: ignore[assignment]
        self.flow = SlicedFlowControl(transport, lambda: self._reading_held, self._reading_resumed)
        self._address = client_host(self) or ""
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

    def _in_own_debt(self) -> bool:
        """Whether this connection waits for its own parse debt: its own budget or its fair part of its address's
        (what its own steps spent), not the rest of its address's debt. review15d F4: behind a NAT, the address's
        other users' parsing held an honest upload's reading, that hold counted against its body clocks, and past
        ``BODY_STALL_S`` held it counted as waiting on its client: the first to go at a full cap."""
        now = self.loop.time()
        if self.budget.wait(now) > 0:
            return True
        return self.shared is not None and self._fair_now().wait(now) > 0

    def data_received(self, data: bytes) -> None:
        if self._lingering is not None:
            self._dropped += len(data)
            self._linger_heard = self.loop.time()
            if self._dropped > self._drop_limit:
                self.transport.pause_reading()
            return
        self._unset_keepalive_if_required()  # as uvicorn's own: bytes came, whether parsed now or held for a turn
        self._on_data()
        if self._next_step is not None or self._in_turns:  # a step waits (reading is paused: this read was under way)
            self._unparsed += data
            self._hold_reading()
        elif (wait := self._wait()) > 0:
            self._unparsed += data
            self._hold_reading(debt=self._in_own_debt())
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
        never fires and the close never finishes; 23 such held a cap of 24 (/health 503 at 40 s, review14c F3).
        Never a linger: the agent's own closes are meant at once (``LingeringTransport.close_now``)."""
        self._own_transport.close_now()
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
            self._held_for_debt = self._held_for_debt or self._in_own_debt()
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
        started, collected = time.thread_time(), pauses.full_collection_cpu_s()
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
        wait = self._charge(step_cpu(started, collected))
        if self.transport.get_protocol() is not self:  # upgraded (WebSocket): the rest was never h11's
            self._unparsed.clear()
            self.transport.resume_reading()
            return
        if self.counted.refusal is not None:
            self._refuse(self.counted.refusal)
            return
        self._after_parse()
        self._next_or_release(wait)

    def _next_or_release(self, wait: float) -> None:
        """Schedule the next step when work is left (after ``wait``), else let reading go on."""
        if self.transport.is_closing():
            self._unparsed.clear()
        elif self.counted.cut_short or self._unparsed:
            self._hold_reading(debt=wait > 0 and self._in_own_debt())
            if self._next_step is None and not self._in_turns:
                call = self.loop.call_soon if wait <= 0 else partial(self.loop.call_later, wait)
                self._next_step = call(self._step)
        elif self._reading_held:
            self._reading_held = False
            self._reading_resumed()
            self._held_for_debt = False
            if not self.flow.read_paused:  # else the flow control resumes it once the handler has read on
                self.transport.resume_reading()

    def _hold_reading(self, debt: bool = False) -> None:
        """Pause reading while parsing waits: every time, since uvicorn resumes the transport itself at the end
        of a body its handler did not read (pausing a paused transport does nothing). ``debt``: it waits for its
        own parse debt (``_in_own_debt``), not the port's turns nor its address's other connections' debt."""
        self._reading_held = True
        self._held_for_debt = self._held_for_debt or debt
        self.transport.pause_reading()

    def on_response_complete(self) -> None:
        """uvicorn parses pipelined events here: a step like any other, charged, and only if the budgets allow
        it now (else it is left to the step that waits: h11 keeps the events, cut short at once). With nothing
        read past the request (h11's buffer and ``_unparsed`` empty) there is nothing to leave, and reading goes on:
        cut short, reading was held for the debt's refill, the client's next request unread, and uvicorn's
        keep-alive timer (armed here, cancelled only by bytes read) closed the connection under it (a reset, the
        request lost, when an address owed more than ``timeout_keep_alive`` of refill)."""
        waiting = self._next_step is not None or self._in_turns
        pending = bool(self._unparsed) or bool(self.counted.trailing_data[0])
        if pending and (waiting or self.transport.is_closing() or self._wait() > 0 or not self._admitted()):
            self.counted.turn_left = 0
        started, collected = time.thread_time(), pauses.full_collection_cpu_s()
        super().on_response_complete()
        wait = self._charge(step_cpu(started, collected))
        if self.counted.refusal is not None:  # (a pipelined request refused: its head, or its body's chunks)
            if not self.transport.is_closing():
                self._refuse(self.counted.refusal)
        elif self.counted.cut_short and self._next_step is None and not self._in_turns:
            self._next_or_release(wait)

    def _refuse(self, refusal: Refusal) -> None:
        """Answer ``refusal`` (unless an answer to the request has started) and close; a handler reading the body
        sees the client gone. A head refused between requests has no cycle of its own (the last one is done)."""
        self._unparsed.clear()
        host = client_host(self)
        warn_once_a_minute(f"{refusal.kind} {host}", f"refusing a request from {host}: {refusal.message}")
        cycle = self.cycle
        if refusal.head or cycle is None or not cycle.response_started:  # (never a second answer to one request)
            self.transport.write(raw_response(refusal.status, refusal.reason, refusal.message))
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True  # the handler's receive() says so, its send() writes nothing more
            cycle.message_event.set()
        self._linger_close(REFUSAL_LINGER_S, REFUSAL_LINGER_S, REFUSAL_DROP_BYTES)

    def _linger_instead(self) -> bool:
        """uvicorn is closing the transport (``LingeringTransport.close``): linger instead when the answer it sent
        in full closes the connection (h11: ``MUST_CLOSE``, or ``CLOSED`` once uvicorn said so) while the request's
        body was still coming (h11 waits for more of it), and say whether it does. An early answer that keeps the
        connection (a 401 with keep-alive) reads and drops the rest of the body as uvicorn does: no linger."""
        cycle = self.cycle
        if self._lingering is not None or self._no_linger or cycle is None or not cycle.response_complete:
            return False  # (lingering already: its end closes)
        if self.conn.their_state is not h11.SEND_BODY or self.conn.our_state not in (h11.MUST_CLOSE, h11.CLOSED):
            return False
        self._linger_close(EARLY_ANSWER_LINGER_S, EARLY_ANSWER_LINGER_MAX_S, EARLY_ANSWER_DROP_BYTES)
        return True

    def _linger_close(self, idle_s: float, most_s: float, drop_bytes: int) -> None:
        """Closing with the client's bytes unread would reset the connection, and the client's kernel drops the
        answer it has not read yet: end our side (the answer is followed by our FIN), drop what still comes (no
        parsing) until nothing came for ``idle_s``, ``most_s`` in all, or past ``drop_bytes`` (then reading
        stops), close. The connection keeps its place in the caps until then (a newcomer at a full cap may take
        it); the client's own EOF closes it at once."""
        self._unparsed.clear()
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self._own_transport.lingering()  # is_closing() from now: nothing more is written (no 503 after its answer)
        now = self.loop.time()
        self._drop_limit = drop_bytes
        self._linger_idle_s, self._linger_ends, self._linger_heard = idle_s, now + most_s, now
        self._lingering = self.loop.call_later(min(idle_s, most_s), self._linger_check)
        self._reading_held = False
        self._held_for_debt = False
        self.flow.read_paused = False
        self.transport.resume_reading()

    def shutdown(self) -> None:
        """The server's stop: a connection it closes (now, or once its answer is sent) does not linger."""
        self._no_linger = True
        super().shutdown()

    def timeout_keep_alive_handler(self) -> None:
        """An idle keep-alive connection closed by uvicorn's timer (after an early answer that kept the connection,
        h11 still waits for that request's body): closed at once, as before the linger."""
        self._no_linger = True
        super().timeout_keep_alive_handler()

    def _linger_check(self) -> None:
        """The linger's timer: close once the client has been silent for its idle time, or its time is up."""
        now = self.loop.time()
        until = min(self._linger_heard + self._linger_idle_s, self._linger_ends)
        if self._dropped > self._drop_limit or now >= until:
            self._close()
        else:
            self._lingering = self.loop.call_later(until - now, self._linger_check)

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
