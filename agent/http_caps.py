"""The client port's protocol: deadlines and caps per connection on top of ``SlicedH11Protocol``.

Split out of agent/http_limits.py (the overview is there). ``limited_protocol(...)`` builds the ``H11Protocol``
subclass for ``uvicorn.Config(http=...)``: a request-header deadline (``header_timeout_s``; uvicorn has none), a
per-address connection cap (read from the count ``AddressBudgets`` keeps), a deadline for a client that stops
reading what it is sent (``write_timeout_s``), and at uvicorn's ``limit_concurrency`` a newcomer takes the place
of the oldest connection waiting on its client (a request head, or the rest of a request body that has stalled
or fallen behind the minimum rate: ``body_rate_left``) from the address holding the most such
(``oldest_of_busiest``); the cap's 503s say when to come back (``retry_after_s``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Callable, Iterable, Iterator
from typing import Any, ClassVar

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from agent.http_parse import AddressBudgets
from agent.http_sliced import SlicedH11Protocol, raw_response, warn_once_a_minute
from agent.modelserver import oldest_of_busiest

log = logging.getLogger(__name__)

BODY_STALL_S = 1.0  # a request body counts as waiting on its client after this long with no byte (reading not paused)
BODY_MIN_RATE = 500.0  # ... or once it falls behind this many bytes a second (Apache mod_reqtimeout's MinRate) ...
BODY_RATE_GRACE_S = 2.0  # ... by more than this long (500 B/s x 2 s: its first ~1 KB may take 2 s longer than that)
TAKE_SLOWEST_BODY = (
    True  # at a full cap with no connection waiting, a newcomer's request head takes the slowest body's place
)
TAKE_BELOW_RATES = 4.0  # ... only a body sent slower than this many times the minimum rate, or one that cannot finish
HEAD_RECHECK_S = 0.05  # a header deadline put off for the agent's hold of a head looks again this long after its step
GIVEN_UP = "peerserve.given_up"  # scope key: the request's place went to a newcomer and its task was cancelled


def body_rate_left(body_bytes: int, elapsed_s: float, min_rate: float, grace_s: float) -> float:
    """Seconds before a request body that has sent ``body_bytes`` in ``elapsed_s`` seconds of its client's time falls
    behind ``min_rate`` bytes a second by more than ``grace_s`` (<= 0: it has; ``inf``: no minimum, ``min_rate`` 0,
    which the settings refuse: their floor is 10 B/s).

    mod_reqtimeout's form: a body may take ``grace_s + body_bytes / min_rate`` seconds for what it has sent, so
    every byte buys ``1 / min_rate`` seconds more. The stall rule (no byte for ``BODY_STALL_S``) alone let a body
    trickled one byte every 0.9 s hold its place at the cap for ``body_timeout_s``; at 500 B/s it is behind after
    ~2 s, while a 2 KB body over a 64 kbit/s link (8 KB/s) is never behind (a 2G link is ~5 KB/s)."""
    if min_rate <= 0:
        return math.inf
    return grace_s + body_bytes / min_rate - elapsed_s


def time_to_finish(remaining: float, sent: int, elapsed_s: float) -> float:
    """Seconds a request body still needs at its measured rate (``sent`` bytes in ``elapsed_s`` of its client's
    time) for ``remaining`` bytes (``inf``: a chunked body's length is unknown); ``inf`` for one that sent nothing."""
    if remaining <= 0:
        return 0.0
    if sent <= 0 or elapsed_s <= 0:
        return math.inf
    return remaining * elapsed_s / sent


def takeable_rate(
    sent: int,
    remaining: float,
    elapsed_s: float,
    min_rate: float,
    body_timeout_s: float | None,
    below_rates: float | None = None,
) -> float | None:
    """The measured rate (bytes a second) of a body a newcomer may take the place of at a full cap, or None if it
    may not: one sent slower than ``below_rates`` (None: ``TAKE_BELOW_RATES``) x ``min_rate``, or one whose
    ``remaining`` bytes (Content-Length known) cannot come before ``body_timeout_s`` at that rate (it would get the
    408 anyway). A chunked body (``remaining`` inf) is judged by its rate alone. review15d F1: choosing the body
    that would take longest gave up the biggest honest upload (3 MB at 100 KB/s, or any chunked one) and kept a
    trickler at 520 B/s."""
    rate = sent / elapsed_s if elapsed_s > 0 else 0.0
    if rate < (TAKE_BELOW_RATES if below_rates is None else below_rates) * min_rate:
        return rate
    if (
        body_timeout_s is not None
        and remaining != math.inf
        and elapsed_s + time_to_finish(remaining, sent, elapsed_s) > body_timeout_s
    ):
        return rate
    return None


def slowest_body(bodies: Iterable[tuple[Any, str, float]], users: Callable[[str], int], host: str) -> Any | None:
    """Of ``bodies`` (a connection, its address, its body's ``takeable_rate``), the one a newcomer from ``host``
    takes the place of when the cap is full and no connection counts as waiting on its client: the one sent at the
    lowest rate, from an address holding more connections than ``host`` (``users``); None if there is none.
    Bodies sent just over the minimum rate held every place (review15c F5: 23 connections at 600 B/s from 3
    addresses at cap 24, newcomers 0 of 10 served); an honest upload well above the minimum rate is never taken."""
    own = users(host)
    best, lowest = None, math.inf
    for conn, address, rate in bodies:
        if rate < lowest and users(address) > own:
            best, lowest = conn, rate
    return best


def retry_after_s(stall_s: float, rate_grace_s: float) -> int:
    """The ``Retry-After`` (whole seconds, at least 1) of the cap's 503s: to a request given up for a newcomer, and
    to a newcomer refused because no connection could be given up for it.

    At the cap a place is made for a newcomer from the connections waiting on their clients; a body still coming
    becomes one once it has gone ``stall_s`` without a byte, or fallen ``rate_grace_s`` behind the minimum rate
    (``body_rate_left``). A retry sooner finds the uploads of now still counted as coming (only a request that
    ended makes room); one this much later finds every upload that stopped or trickles counted as waiting on its
    client, so its place can be taken. (What a request being answered takes, the agent cannot know.)"""
    return max(1, math.ceil(max(stall_s, rate_grace_s)))


def address_retry_after_s(deadlines: Iterable[float], now: float, most_s: float) -> int:
    """The ``Retry-After`` (whole seconds, 1 to ``ceil(most_s)``) of the per-address cap's 503: when the first place
    of that address is sure to free, the soonest of ``deadlines`` (loop times at which its connections waiting for
    a request head, idle keep-alive ones included, close: their header deadlines), or ``most_s`` (the header
    deadline, ``header_timeout_s``) if none waits for a head.

    A connection waiting for its head closes by its deadline unless its client sends a request first (then it
    frees later, or its own client reuses it): so the soonest deadline is when a retry is sure to find a place,
    should the address's clients keep every connection idle. One in a request (a body coming, an answer being
    written) frees when it ends, which the agent cannot know, and then idles up to ``header_timeout_s`` before it
    closes: a retry later than that finds the same clients holding the same places, so that is the longest wait
    the header says."""
    bound = max(1, math.ceil(most_s))
    soonest = min(deadlines, default=math.inf)
    if soonest == math.inf:
        return bound
    return max(1, min(bound, math.ceil(soonest - now)))


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
    body_min_rate: float | None = None,
    body_rate_grace_s: float | None = None,
    body_timeout_s: float | None = None,
    take_below_rates: float | None = None,
) -> type[H11Protocol]:
    """A ``parsing`` (SlicedH11Protocol) subclass with a request-header deadline, a per-address connection cap
    and (with ``write_timeout_s``) a deadline for a client that stops reading what it is sent.

    ``address_budgets``: the per-address table (parse budgets, places in the turns, connection counts) to share
    with another listener of the same agent (its HTTP and HTTPS ports: one address, one place and one cap, not
    one on each, review13b F4); None: a table of its own on the parsing class's turns. ``body_stall_s``: how long a
    request body must go without a byte (while the agent is not the one holding its reading) before the connection
    counts as waiting on its client, one a newcomer may take the place of at the cap (None: ``BODY_STALL_S``);
    ``body_min_rate`` / ``body_rate_grace_s``: the bytes a second below which (by more than the grace) a body counts
    so too (``body_rate_left``; None: ``BODY_MIN_RATE`` / ``BODY_RATE_GRACE_S``; the settings keep the rate 10 or more).
    ``body_timeout_s``: the app's deadline for a whole body (``HttpLimits``): a body that cannot finish before it
    at its rate may be given up for a newcomer's request (``takeable_rate``; None: judged by its rate alone);
    ``take_below_rates``: the multiple of the minimum rate under which it may be (None: ``TAKE_BELOW_RATES``). The
    agent passes its settings (``body_stall_s``, ``body_min_rate``, ``body_rate_grace_s``, ``body_take_below_rates``).
    The cap's 503s say ``Retry-After: retry_after_s(...)``."""
    if address_budgets is None:
        own = parsing.address_budgets
        address_budgets = AddressBudgets(own.share, own.burst_s, own.turns)
    table: AddressBudgets = address_budgets
    drain_s = header_timeout_s if write_timeout_s is None else write_timeout_s
    stall_s = BODY_STALL_S if body_stall_s is None else body_stall_s
    min_rate = BODY_MIN_RATE if body_min_rate is None else body_min_rate
    grace_s = BODY_RATE_GRACE_S if body_rate_grace_s is None else body_rate_grace_s
    retry_after = retry_after_s(stall_s, grace_s if min_rate > 0 else 0.0)
    take_slowest = TAKE_SLOWEST_BODY
    below_rates = TAKE_BELOW_RATES if take_below_rates is None else take_below_rates

    class LimitedH11Protocol(parsing):  # type: ignore[valid-type,misc]
        address_budgets = table  # the parsing class's turns (PARSING unless a test's)
        close_drain_s = drain_s  # what a closed connection's unsent bytes get (_close)
        waiting: ClassVar[dict[str, dict[Any, None]]] = {}  # waiting for a request head, per address, oldest first
        given_up: ClassVar[set[Any]] = set()  # closed to make room, not yet gone from uvicorn's connection set
        _header_timer: asyncio.TimerHandle | None = None
        _write_timer: asyncio.TimerHandle | None = None
        _partial = False
        _head_put_off_s = 0.0  # how long the armed header deadline was put off for the agent's hold (_head_held)
        _half_closed = False  # the client ended its sending side: answer what it sent, then close
        _task: asyncio.Task[None] | None = None  # its latest request's task (RecordedTasks)
        _body_at = 0.0  # loop time its client last sent a byte, or the agent last let its reading go on
        _stall_timer: asyncio.TimerHandle | None = None  # when an incomplete body would count as stalled
        _rate_cycle: Any = None  # the request whose body's rate is measured (a new one starts its clock)
        _rate_from = 0.0  # loop time its body's clock started, moved on by the time the agent held its reading
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
            self.counted.on_continue = self._continue_sent
            host = self.client[0] if self.client else None
            if host is not None and self._over_address_cap(host):
                warn_once_a_minute(host, f"refusing connections from {host}: {max_connections_per_address} open")
                message = f"over {max_connections_per_address} connections open from {host}"
                after = self._address_retry_after(host)
                transport.write(raw_response(503, "Service Unavailable", message, after))
                self._close()
                return
            self._make_room(host or "", take_bodies=False)
            self._update_header_deadline()

        def _address_retry_after(self, host: str) -> int:
            """``address_retry_after_s`` of ``host``'s connections waiting for a request head, or lingering (at the
            linger's latest end): O(the per-address cap), only on a refusal (the address's entry of ``waiting``; a
            stalled body there has no header deadline)."""
            held = self.waiting.get(host, {})
            deadlines = (
                conn._linger_ends if conn._lingering is not None else conn._header_timer.when()  # (the linger's latest)
                for conn in held
                if conn._lingering is not None or conn._header_timer is not None
            )
            return address_retry_after_s(deadlines, self.loop.time(), header_timeout_s)

        def _make_room(self, host: str, take_bodies: bool) -> None:
            """At ``limit_concurrency`` (uvicorn answers every request 503 while that many connections are open), give
            up the oldest connection waiting on its client from the address holding the most such, if more than
            ``host`` holds (``oldest_of_busiest``): four addresses' 64 idle connections each kept every other client
            out (review12e), and so did 4 x 64 predicts whose bodies stalled after a byte (review14a F5). Waiting on
            its client: for a request head (idle keep-alive included: closed without a word) or for the rest of a
            request body that has stalled (``_body_stalled``; answered 503, see ``_give_up``). A request read whole,
            or being answered, is never given up. ``take_bodies`` (a newcomer's request head, ``_should_upgrade``, not a
            bare connect: review15d F1): with no connection waiting, a body still coming slowly (``slowest_body``)."""
            limit = self.limit_concurrency
            while limit is not None and len(self.connections) - len(self.given_up) >= limit:
                victim = oldest_of_busiest(self.waiting, host)
                if victim is None and not self.waiting and take_bodies and take_slowest:
                    victim = slowest_body(self._incomplete_bodies(), self.address_budgets.users, host)
                if victim is None:
                    return  # the newcomer's own address holds the most: its request gets uvicorn's 503
                victim._unmark_waiting()
                if victim._answer_started() and victim._lingering is None:  # answering before the body came (an
                    continue  # early error): not waiting (lingering after an answer, _linger_close: taken)
                self.given_up.add(victim)
                log.debug("giving up a connection from %s for a newcomer from %s", victim.client, host)
                victim._give_up()

        def _incomplete_bodies(self) -> Iterator[tuple[Any, str, float]]:
            """(connection, address, measured rate) of each body awaited from its client for at least the rate's
            grace, not held by the agent (``_body_stalled``'s rules), that ``takeable_rate`` lets a newcomer take:
            O(connections), only at a full cap with no connection waiting, on a newcomer's request head."""
            now = self.loop.time()
            for conn in self.connections:
                if conn in self.given_up or not isinstance(conn, LimitedH11Protocol) or conn._address is None:
                    continue
                if not conn._awaiting_body() or conn.flow.read_paused or conn._agent_holds_reading():
                    continue
                if conn._awaiting_continue():
                    continue
                conn._rate_left()  # (starts its clock if its request is new)
                elapsed = now - conn._rate_from
                if elapsed < grace_s:
                    continue
                sent = conn.counted.body_bytes
                rate = takeable_rate(sent, conn._remaining(), elapsed, min_rate, body_timeout_s, below_rates)
                if rate is not None:
                    yield conn, conn._address, rate

        def _remaining(self) -> float:
            """Bytes of the awaited body still to come (``inf``: chunked, its length unknown)."""
            for name, value in self.headers:
                if name == b"content-length":
                    with contextlib.suppress(ValueError):
                        return float(int(value) - self.counted.body_bytes)
            return math.inf

        def _should_upgrade(self) -> bool:
            """uvicorn asks this of each request head just before it checks ``limit_concurrency`` and, past it, answers
            with its own 503 (which says nothing of when to come back): that 503 gets ``Retry-After`` (the
            connection's h11 adds it, ``ChunkCountingConnection.send``). uvicorn 0.54 calls it there only; a test
            (``test_an_upload_still_coming_or_held_by_the_agent_is_not_given_up``) fails if a version stops. With
            ws="none" (agent.cli, review15c F4) it is never true: an upgrade request is a plain request."""
            upgrade: bool = super()._should_upgrade()
            limit = self.limit_concurrency
            if not upgrade and limit is not None and len(self.connections) >= limit:
                self._make_room_for_head()
            at_cap = limit is not None and (len(self.connections) >= limit or len(self.tasks) >= limit)
            self.counted.retry_after_s = retry_after if at_cap and not upgrade else None
            return upgrade

        def _make_room_for_head(self) -> None:
            """A request head at a full cap (uvicorn's check comes next): make room (``_make_room``, bodies included),
            and let the connections given up leave uvicorn's set now, not at their ``connection_lost`` on a later
            turn, so that this request is the one served (each is closing: nothing more is read from it)."""
            self._unmark_waiting()  # its head is in: not waiting (marked again after the parse if it must be)
            self._make_room(self.client[0] if self.client else "", take_bodies=True)
            for gone in [conn for conn in self.given_up if conn in self.connections]:
                self.connections.discard(gone)
                self.given_up.discard(gone)

        def _unsupported_upgrade_warning(self) -> None:
            """uvicorn logs two warnings for each upgrade request it will not upgrade (ws="none"): a client could fill
            the log with them; one line at debug."""
            log.debug("upgrade request from %s served as a plain request (no WebSockets here)", self.client)

        def _answer_started(self) -> bool:
            return self.cycle is not None and not self.cycle.response_complete and self.cycle.response_started

        def _body_stalled(self) -> bool:
            """A body awaited (``_awaiting_body``) that has really stalled, while reading was not paused by the agent:
            no byte for ``body_stall_s``, or its bytes behind the minimum rate by more than the grace
            (``_rate_left``: one byte every 0.9 s never stalls, and held its place for ``body_timeout_s``). An
            honest upload on a slow link keeps sending, and one the agent stopped reading (uvicorn pauses reading
            while a handler leaves 64 KiB unread; the slicing holds it while parsing waits) waits on the agent,
            not its client: neither is given up for a newcomer (review14c F1)."""
            return (
                self._awaiting_body()
                and not self.flow.read_paused
                and not self._agent_holds_reading()
                and not self._awaiting_continue()
                and (self.loop.time() - self._body_at >= stall_s or self._rate_left() <= 0)
            )

        def _agent_holds_reading(self) -> bool:
            """The slicing holds reading for the agent's own reasons (the port's parse turns, a slice at a time), not
            for the connection's own parse debt (``_in_own_debt``: its budget or its fair part of its address's):
            excused it let a client keep its address in debt so that its tricklers never counted as waiting
            (review15c F7). The rest of its address's debt is its NAT neighbours' (review15d F4): excused."""
            return self._reading_held and not self._held_for_debt

        def _awaiting_continue(self) -> bool:
            """The client sent ``Expect: 100-continue`` and the agent has not asked for the body yet (uvicorn sends
            the 100 at the handler's first ``receive``): it waits on the agent, not the other way round, and is never
            given up for a newcomer (review15c F6: one whose handler worked 3 s first got 503 at 1.3 s)."""
            return self.cycle is not None and bool(self.cycle.waiting_for_100_continue)

        def _continue_sent(self) -> None:
            """The agent asked for the body (its ``100 Continue`` went out): both body clocks start now."""
            now = self.loop.time()
            self._rate_cycle, self._rate_from, self._body_at = self.cycle, now, now

        def _rate_left(self) -> float:
            """``body_rate_left`` of the awaited body: its clock starts when its request is first looked at here
            (after its head was parsed) and does not run while the agent held its reading (``_reading_resumed``)."""
            now = self.loop.time()
            if self._rate_cycle is not self.cycle:
                self._rate_cycle, self._rate_from = self.cycle, now
            return body_rate_left(self.counted.body_bytes, now - self._rate_from, min_rate, grace_s)

        def _reading_resumed(self) -> None:
            """The client could not send while the agent held its reading: neither clock counts that time (taken
            as from its last byte, or its body's start if later). Not a hold for its own parse debt
            (``_agent_holds_reading``): that time counts."""
            if self._held_for_debt:
                return
            now = self.loop.time()
            self._rate_from += max(0.0, now - max(self._body_at, self._rate_from))
            self._body_at = now

        def _arm_stall_check(self) -> None:
            """Look again when the awaited body would have gone ``body_stall_s`` without a byte, or fallen behind
            the minimum rate, whichever comes first."""
            if self._stall_timer is None:
                held = self.flow.read_paused or self._agent_holds_reading() or self._awaiting_continue()
                left = stall_s if held else min(stall_s - (self.loop.time() - self._body_at), self._rate_left())
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
                    self.transport.write(raw_response(503, "Service Unavailable", message, retry_after))
                cycle.disconnected = True  # receive() answers http.disconnect; send() writes nothing more
                cycle.message_event.set()
                if self._task is not None:
                    self.server_state.tasks.discard(self._task)
                    cycle.scope[GIVEN_UP] = True  # (an ASGI scope is a dict)
                    self._task.cancel()
            self._unparsed.clear()
            self._close()

        def _mark_waiting(self, first: bool = False) -> None:
            """Waiting on its client: kept in place if it was marked already. ``first``: ahead of its address's
            others, where a newcomer looks first (``oldest_of_busiest``): a lingering connection has had its answer,
            and giving it up costs its client nothing, where an idle one's would have to connect again (review24
            F6: marked as its linger began, it was the newest, the last its address gave up)."""
            if self._address is None:
                return
            held = self.waiting.setdefault(self._address, {})
            if first and next(iter(held), self) is not self:  # (O(the per-address cap), once a linger)
                others = [conn for conn in held if conn is not self]
                held.clear()
                held[self] = None
                held.update(dict.fromkeys(others))
            else:
                held[self] = None

        def _unmark_waiting(self) -> None:
            held = self.waiting.get(self._address or "")
            if held is not None and held.pop(self, 0) is None and not held:
                del self.waiting[self._address or ""]

        def _over_address_cap(self, host: str) -> bool:
            """Whether ``host`` holds more than the cap, this connection included (counted by ``take`` in the parent's
            ``connection_made``): O(1), where a scan of uvicorn's connection set cost O(open connections) per connect
            (review12e: 6,000 connects against 2,560 held connections, 7-13 s of loop lag)."""
            return self.address_budgets.users(host) > max_connections_per_address

        def _head_held(self) -> bool:
            """Bytes the client sent after an answer (its next request, or part of it), read and held unparsed by
            the slicing for this connection's own parse debt (``_held_for_debt``): they wait on the agent, not on the
            client. The header deadline armed at the answer kept running meanwhile and answered 408 "request headers
            not received" to a request sent whole, and the connection stayed marked as waiting for its head, one a
            newcomer at the cap could take (review17a F2). Holds for the port's turns or the address's other
            connections' debt are left out, as for the body clocks (``_agent_holds_reading``, review15c F7): a
            flood from elsewhere could make those last, and every trickled head with them (a hold that began for the
            connection's own debt keeps ``_held_for_debt`` until reading resumes, a wait for its turn after it
            included: bounded by the put-off's cap)."""
            return self._reading_held and self._held_for_debt and self._parsing_left() and self._head_sent()

        def _head_sent(self) -> bool:
            """The held bytes end a next request's head (its blank line came): the client sent it whole, and the
            wait is the agent's. Only while h11 waits for a new request (IDLE): after an answer given before its
            request's body was read (a 401, a 404), what follows is that body, never a head (review17c F2: a blank
            line in it passed for one). Only the first ``head_limit`` + 3 bytes are looked at (a longer head is a
            431): scanning all that was held, at every step and hold, cost the loop ~13 ns a byte received, never
            charged (review17c F1: one client sending a body after an early 401 took 4.8 s of loop CPU in 6 s, against
            1.4 s). A head still being trickled is not excused (its deadline and its place at a full cap stay as
            for any slow head); a blank line sent early to look whole gets at most the put-off's cap, and h11
            refuses it (400) once the step parses it."""
            if self.conn.their_state is not h11.IDLE:
                return False
            limit = self.counted.head_limit + 3
            held = bytes(self.counted.buffered()[:limit])  # h11's unparsed bytes (pipelined requests: more than a head)
            window = held + bytes(self._unparsed[: max(0, limit - len(held))])
            return b"\n\n" in window or b"\n\r\n" in window

        def _hold_reading(self, debt: bool = False) -> None:
            super()._hold_reading(debt)
            if self._header_timer is not None and self._head_held():
                self._unmark_waiting()  # marked again when its step has parsed what was held (_after_parse)

        def _on_data(self) -> None:
            self._body_at = self.loop.time()
            if self._header_timer is not None:
                self._partial = True
            elif not (self._awaiting_body() and self._rate_left() <= 0):  # a stalled body moves again: not waiting
                self._unmark_waiting()  # (one behind the rate keeps its place in the table, looked at after the parse)

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

        def _linger_close(self, idle_s: float, most_s: float, drop_bytes: int) -> None:
            super()._linger_close(idle_s, most_s, drop_bytes)
            self._update_header_deadline()  # waiting: a newcomer at a full cap may take its place (_make_room)

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
            if self._lingering is not None:  # answered and closing: a newcomer at the connection limit may take it
                self._cancel_header_deadline()
                if self not in self.given_up:  # (one given up already is closing for good)
                    self._mark_waiting(first=True)
                return
            if self.transport.is_closing() or not self._waiting_for_headers():
                self._cancel_header_deadline()
            elif self._header_timer is None:
                self._partial, self._head_put_off_s = False, 0.0
                self._header_timer = self.loop.call_later(header_timeout_s, self._header_timeout)
            if (self._header_timer is not None and not self._head_held()) or self._body_stalled():
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
            """No request head within ``header_timeout_s``: 408 if part of one came, then close. While the agent holds
            what came for the connection's own debt (``_head_held``), look again after its step instead, the
            deadline put off by ``header_timeout_s`` at most in all: a client that trickles its head so that a byte
            is always held (a step's refill at its fair part of a busy address's share: tens of ms) gets twice the
            deadline, not as many as its head has bytes."""
            self._header_timer = None
            left = header_timeout_s - self._head_put_off_s
            if self._head_held() and left > 0 and not self.transport.is_closing():
                later = min(max(self._wait(), 0.0) + HEAD_RECHECK_S, left)
                self._head_put_off_s += later
                self._header_timer = self.loop.call_later(later, self._header_timeout)
                return
            self._unmark_waiting()
            if self.transport.is_closing():
                return
            if self._partial and self.conn.our_state in (h11.IDLE, h11.DONE):
                message = f"request headers not received within {header_timeout_s:g} s"
                self.transport.write(raw_response(408, "Request Timeout", message))
            log.debug("closing a connection from %s: no complete request in %g s", self.client, header_timeout_s)
            self._close()

    return LimitedH11Protocol
