"""The process's parse budget across all addresses (agent/http_limits.py ``ParseTurns``).

Per-address budgets alone let five addresses take the whole event loop, and on a LAN an attacker has many.
The turns' arithmetic is checked with the clock passed in (a simulated loop: a step holds it for its cost);
the protocol itself over real loopback sockets, many 127.0.x.y source addresses against one honest one.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import socket
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from hypothesis import given, settings
from hypothesis import strategies as st
from uvicorn.server import ServerState

from agent.http_limits import (
    EVENTS_PER_TURN,
    PARSING,
    PEER_PARSING,
    RECENT_ADDRESSES,
    AddressBudgets,
    AddressEntry,
    ParseTurns,
    PeerH11Protocol,
    limited_protocol,
    sliced_protocol,
)
from agent.serving import pauses
from bench.parse_cost_bench import reader_app  # the bench's flood target: the same server app


@dataclass(eq=False)
class Conn:
    """A connection as the turns see it (a key in its address's queue) and what the simulation needs of it."""

    host: str
    cost: float  # CPU each of its steps takes
    think_s: float | None  # None: always wants another step; else waits this long after one (a client's request)
    served: list[tuple[float, float]] = field(default_factory=list)  # (asked, served) per step


class Loop:
    """One event loop, simulated: steps happen one at a time, each holding the loop for its cost; the clock
    advances to the next timer (the turns' or a client's next request) when nothing is ready."""

    def __init__(self, turns: ParseTurns, table: AddressBudgets) -> None:
        self.turns, self.table, self.now = turns, table, 0.0
        self.entries: dict[str, AddressEntry] = {}
        self.conns: set[Conn] = set()
        self.asks: list[tuple[float, int, Conn]] = []  # (when, order, connection): a client's next request
        self.asked: dict[Conn, float] = {}
        self.steps: list[tuple[float, float, str]] = []  # (start, cost, host)

    def open(self, conn: Conn, at: float = 0.0) -> None:
        self.entries[conn.host] = self.table.take(conn.host)
        self.conns.add(conn)
        self.asks.append((at, len(self.asks), conn))

    def close(self, conn: Conn) -> None:
        entry = self.entries.pop(conn.host)
        self.conns.discard(conn)
        self.turns.withdraw(entry, conn)
        self.table.give(conn.host)

    def _step(self, entry: AddressEntry, conn: Conn) -> None:
        conn.served.append((self.asked.pop(conn), self.now))
        self.steps.append((self.now, conn.cost, conn.host))
        self.now += conn.cost
        self.turns.charge(entry, conn.cost, self.now)
        nxt = self.now if conn.think_s is None else self.now + conn.think_s
        self.asks.append((nxt, len(self.steps), conn))

    def _ask(self, conn: Conn) -> None:
        self.asked[conn] = self.now
        entry = self.entries[conn.host]
        if self.turns.admit(entry, conn, self.now):
            self._step(entry, conn)

    def run(self, until: float) -> None:
        while self.now < until:
            self.asks.sort(key=lambda a: (a[0], a[1]))
            due = [a for a in self.asks if a[0] <= self.now]
            for ask in due:  # every client ready now asks (in order)
                self.asks.remove(ask)
                if ask[2] in self.conns:
                    self._ask(ask[2])
            wait = self.turns.wait(self.now)
            if wait is not None and wait <= 0:
                turn = self.turns.next_turn(self.now)
                assert turn is not None
                self._step(*turn)
                self.turns.release(turn[0])
                continue
            later = [a[0] for a in self.asks] + ([self.now + wait] if wait is not None else [])
            self.now = max(self.now, min(later)) if later else until


def spent_in_windows_at_most(steps: list[tuple[float, float, str]], share: float, burst_s: float, step: float) -> None:
    """Over any window of the loop, the steps took at most ``burst_s + share x window + one step``: for steps i..j,
    (spent to j - share x end of j) + (share x start of i - spent before i) at most burst + step, O(n)."""
    before, best = 0.0, float("-inf")
    for start, cost, _ in steps:
        best = max(best, share * start - before)  # the worst window start so far
        before += cost
        assert before - share * (start + cost) + best <= burst_s + step + 1e-9, (start, before)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 7), st.floats(0.0005, 0.003), st.one_of(st.none(), st.floats(0, 0.05))),
        min_size=1,
        max_size=24,
    )
)
def test_all_parsing_together_stays_within_the_total_budget(conns: list[tuple[int, float, float | None]]) -> None:
    """Whatever addresses, connections, step costs and request rates, the turns keep every window of the loop's
    parsing within the total budget (plus one step: a step may overdraw before it is charged)."""
    turns = ParseTurns(0.5, 0.05)
    loop = Loop(turns, AddressBudgets(1.0, 1.0, turns))
    for n, (address, cost, think) in enumerate(conns):
        loop.open(Conn(f"10.0.{address}.{n}", cost, think))
    loop.run(2.0)
    assert loop.steps
    spent_in_windows_at_most(loop.steps, 0.5, 0.05, 0.003)


def test_honest_addresses_among_200_flooding_ones_get_answers_and_their_share() -> None:
    """200 addresses, 4 connections each, every one always wanting another 2 ms step: the budget (50 % of the
    loop) is spent all the time. An honest keep-alive client asking a 0.3 ms step every 250 ms (less than its
    fair part, 1 / 202 of the budget) joins the queues next in line each time: it waits about a step's refill
    (4 ms), not a round of the 200 addresses (0.8 s). A busier one, asking every 5 ms (more than its part),
    still gets its part of the budget. The flooding addresses share the rest equally, and the loop's parsing
    stays within its budget."""
    turns = ParseTurns(0.5, 0.1)
    loop = Loop(turns, AddressBudgets(1.0, 1.0, turns))
    for a in range(200):
        for _ in range(4):
            loop.open(Conn(f"10.1.{a}.1", 0.002, None))
    light, busy = Conn("10.9.9.9", 0.0003, 0.25), Conn("10.9.9.10", 0.0003, 0.005)
    loop.open(light, at=1.0)  # (connected at 0 and kept alive: the first round, everyone at 0, is over by 1 s)
    loop.open(busy, at=1.0)
    loop.run(11.0)
    waits = [served - asked for asked, served in light.served]
    p50, top, busy_n = 1000 * statistics.median(waits), 1000 * max(waits), len(busy.served)
    print(
        f"\nlight honest among 200 flooding: {len(waits)} asked, wait p50 {p50:.1f} / max {top:.1f} ms; busy {busy_n}"
    )
    assert len(waits) >= 0.9 * 10.0 / 0.25  # one request per think time, all answered ...
    assert max(waits) <= 2 * 0.002 / 0.5 + 0.002 + 1e-9  # ... each after a step's refill and a step, at worst
    assert len(busy.served) * 0.0003 >= 0.9 * 10.0 * 0.5 / 202  # its part of the budget
    spent = {h: sum(c for _, c, x in loop.steps if x == h and _ > 1.0) for h in {x for _, _, x in loop.steps}}
    spent.pop(light.host), spent.pop(busy.host)
    assert len(spent) == 200 and max(spent.values()) - min(spent.values()) <= 3 * 0.002 + 1e-9  # of ~12 steps each
    spent_in_windows_at_most(loop.steps, 0.5, 0.1, 0.002)


def reconnecting(hosts: list[str]) -> tuple[int, list[int]]:
    """20 addresses always wanting a 2 ms step; then a connection that closes after each step it gets and opens
    again, from each of ``hosts`` in turn: its steps, and each of the 20's meanwhile."""
    turns = ParseTurns(0.5, 0.1)
    loop = Loop(turns, AddressBudgets(1.0, 1.0, turns))
    for a in range(20):
        loop.open(Conn(f"10.2.{a}.1", 0.002, None))
    loop.run(1.0)
    started = len(loop.steps)
    for host in hosts:
        conn = Conn(host, 0.002, None)
        loop.open(conn, at=loop.now)
        while not conn.served:
            loop.run(loop.now + 0.001)
        loop.close(conn)
    steps = loop.steps[started:]
    return len(hosts), [sum(1 for _, _, h in steps if h == f"10.2.{a}.1") for a in range(20)]


def test_an_address_that_reconnects_or_appears_buys_no_burst() -> None:
    """An address that closes its connections after each step and opens a new one gets one turn a round, as
    each of the 20 that stay do (its place is remembered), not a turn after each of its own; a stream of new
    addresses, one after another, each starting at the horizon behind everyone, gets one turn a round in all,
    as one more address would (started at the current virtual time, either took every turn, the 20 none)."""
    for kind, hosts in (("one address", ["10.3.0.1"] * 100), ("new addresses", [f"10.4.0.{n}" for n in range(100)])):
        fresh, others = reconnecting(hosts)
        print(f"\n{kind}: {fresh} reconnects, one step each; each of the 20 took {min(others)}-{max(others)} meanwhile")
        assert fresh <= min(others) + 1, (kind, fresh, others)


def test_the_tables_stay_bounded() -> None:
    """Heap entries: at most twice the addresses waiting, plus 16, however many joined and left; remembered
    addresses: ``RECENT_ADDRESSES``; held entries: addresses with a connection open."""
    turns = ParseTurns(0.5, 0.1)
    table = AddressBudgets(1.0, 1.0, turns)
    turns.charge(table.take("10.5.0.0"), 1.0, 0.0)  # the budget spent: everyone after waits in the queues
    stay = [Conn(f"10.6.0.{a}", 0.001, None) for a in range(8)]
    for conn in stay:
        assert not turns.admit(table.take(conn.host), conn, 0.0)
    for n in range(5000):  # addresses that join the queues and close before their turn
        conn = Conn(f"10.7.{n // 256}.{n % 256}", 0.001, None)
        entry = table.take(conn.host)
        assert not turns.admit(entry, conn, 0.0)
        turns.withdraw(entry, conn)
        table.give(conn.host)
        assert len(turns) <= 2 * turns.waiting + 16 and turns.waiting == 8
        assert len(table._recent) <= RECENT_ADDRESSES and len(table) == 9
    served = []
    now = 10.0
    while (turn := turns.next_turn(now)) is not None:
        served.append(turn[1])
        turns.charge(turn[0], 0.0, now)
        turns.release(turn[0])
    assert served == stay and turns.waiting == 0  # the live ones, each once, in the order they joined


def test_the_client_listeners_share_one_total_and_one_address_table_and_the_peer_port_has_its_own(
    tmp_path: Path,
) -> None:
    """The HTTP and HTTPS client listeners of one agent (``server_config`` builds a protocol class for each) take
    turns in one total with one per-address table: an address using both ports had two places in each round, two
    address budgets and two connection caps (review13b F4). Another agent in the same process (the tests' and
    benches' in-process clusters) keeps a table of its own. The peer port's h11 fallback has its own total, so a
    flood of the client port never delays a member's SWIM messages there."""
    from fastapi import FastAPI

    from agent.cli import server_config
    from agent.settings import load_settings

    settings = load_settings(None, overrides={"data_dir": str(tmp_path)})
    app, other = FastAPI(), FastAPI()
    http, https = server_config(app, settings).http, server_config(app, settings).http
    assert http is not https and http.address_budgets is https.address_budgets
    assert server_config(other, settings).http.address_budgets is not http.address_budgets
    assert http.address_budgets.turns is PARSING
    one, two = limited_protocol(10.0, 64), limited_protocol(10.0, 64)
    assert one.address_budgets is not two.address_budgets  # type: ignore[attr-defined]
    assert one.address_budgets.turns is two.address_budgets.turns is PARSING  # type: ignore[attr-defined]
    assert PeerH11Protocol.address_budgets.turns is PEER_PARSING and PEER_PARSING is not PARSING


# -- over loopback ---------------------------------------------------------------------------------------------


def front_loaded(size: int) -> bytes:
    """A chunked POST of one big chunk, then as many 1-byte chunks as the chunk rule allows (``size`` in all)."""
    tiny = size // 256 - 1
    big = size - tiny
    head = b"POST /p HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    return head + b"%x\r\n" % big + b"b" * big + b"\r\n" + b"1\r\nx\r\n" * tiny + b"0\r\n\r\n"


MANY_HEADERS = (  # the most header fields a head may have (MAX_HEADER_FIELDS, 100), in ~15 KiB
    b"POST /p HTTP/1.1\r\nHost: a\r\n" + (b"x: " + b"y" * 150 + b"\r\n") * 98 + b"Content-Length: 0\r\n\r\n"
)
PREDICT = b'{"instances": [1.0, 2.0, 5.0]}'
HONEST = b"POST /v1/models/m:predict HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n%s" % (len(PREDICT), PREDICT)


@dataclass
class Flooded:
    """What ``flood`` measured: the parsing CPU of all connections and of the honest one, the elapsed time, the
    honest answers' latencies, the loop's longest lag (a 5 ms ticker), every parse step's CPU, and the answers the
    agent refused input with (none: the flood is what the bounds allow)."""

    spent: float
    honest_spent: float
    elapsed: float
    latencies: list[float]
    lag: float
    steps: list[float]
    refused: list[str]


async def flood(addresses: int, turns: ParseTurns, seconds: float) -> Flooded:
    """``addresses`` hostile addresses (127.0.79.x): half send front-loaded 2 MiB bodies, half pipeline heads of the
    most header fields allowed, all at once, while one honest address (127.0.78.9, connected before them) sends
    small predicts one after another on a kept-alive connection for ``seconds``."""
    config = uvicorn.Config(reader_app, h11_max_incomplete_event_size=16384, log_config=None)
    config.load()
    parsing = sliced_protocol(share=1.0, burst_s=1.0, address=AddressBudgets(1.0, 1.0, turns))  # only turns bind
    steps: list[float] = []

    class Recorded(limited_protocol(30.0, 64, 30.0, parsing)):  # type: ignore[misc]
        def _charge(self, spent: float) -> float:
            steps.append(spent)
            return float(super()._charge(spent))

    state, made = ServerState(), []

    def make() -> Any:
        made.append(Recorded(config=config, server_state=state, app_state={}))
        return made[-1]

    loop = asyncio.get_running_loop()
    server = await loop.create_server(make, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    lags: list[float] = []
    stop = asyncio.Event()

    async def ticker() -> None:
        while not stop.is_set():
            before = loop.time()
            await asyncio.sleep(0.005)
            lags.append(loop.time() - before - 0.005)

    # the honest client connects first and keeps its connection (a new address would join behind everyone waiting)
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=("127.0.78.9", 0))
    hostile = []
    for a in range(addresses):
        _, flooding = await asyncio.open_connection("127.0.0.1", port, local_addr=(f"127.0.79.{a + 1}", 0))
        flooding.write(front_loaded(2 * 2**20) if a % 2 == 0 else MANY_HEADERS * 200)
        hostile.append(flooding)
    tick = asyncio.ensure_future(ticker())
    await asyncio.sleep(0.3)  # the flood is on: the budget spent, the queues full
    (honest,) = [p for p in made if p.client[0] == "127.0.78.9"]
    started, cpu_before, honest_before = time.monotonic(), sum(p.parse_cpu_s for p in made), honest.parse_cpu_s
    latencies = []
    while time.monotonic() - started < seconds:
        sent = time.monotonic()
        writer.write(HONEST)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
        assert head.startswith(b"HTTP/1.1 200 ") and await reader.readexactly(2) == b"30"
        latencies.append(time.monotonic() - sent)
    elapsed, spent = time.monotonic() - started, sum(p.parse_cpu_s for p in made) - cpu_before
    honest_spent = honest.parse_cpu_s - honest_before
    refused = [p.counted.refusal.message for p in made if p.counted.refusal is not None]
    stop.set()
    await tick
    for w in [writer, *hostile]:
        w.transport.abort()
    for p in made:  # the server's side too, before the loop ends: a connection still in the turns could be granted
        p.transport.abort()  # a step as asyncio.run cancels the tasks, and start a request whose task never runs
    server.close()
    await server.wait_closed()
    await asyncio.sleep(0.05)
    return Flooded(spent, honest_spent, elapsed, latencies, max(lags), sorted(steps), refused)


def test_many_addresses_flooding_get_the_total_share_and_an_honest_one_is_served() -> None:
    """24 addresses flood expensive-to-parse input (1-byte chunks, heads of 100 header fields), each connection and
    address free to parse (their budgets at 100 %): together they get the total share (here 10 % of a second),
    and an honest client from another address, sending small predicts one after another, gets its fair part of
    it (a 25th), each predict waiting at most about a round of the turns (one step of each address)."""
    share, burst = 0.1, 0.02
    gc.collect()  # (what earlier tests left); the collector runs during the flood: full collections of the test
    # process's heap (0.25-0.3 s, seen) land inside steps, and are not charged to them (agent/serving/pauses.py)
    run = asyncio.run(flood(24, ParseTurns(share, burst), 4.0))
    spent, elapsed, latencies = run.spent, run.elapsed, run.latencies
    p50 = statistics.median(latencies)
    print(f"\n24 flooding addresses, total share {share:.0%}: parsing {spent:.3f} s in {elapsed:.2f} s (the honest "
          f"address {1000 * run.honest_spent:.1f} ms); honest {len(latencies)} predicts, p50 {1000 * p50:.1f} ms, "
          f"max {1000 * max(latencies):.1f} ms; loop lag max {1000 * run.lag:.1f} ms; {len(run.steps)} parse "
          f"steps, p99 {1000 * run.steps[int(0.99 * (len(run.steps) - 1))]:.2f} ms")  # fmt: skip
    assert not run.refused, run.refused  # the flood stays within the bounds: heads at the field cap, legal chunks
    # every step is short: a head at the field cap ~1 ms, a turn's 128 chunk events ~1 ms (seen: p99 2.0 ms, max
    # 7 ms, a young collection inside a step); a head of 2,500 tiny lines was one 8-13 ms step, a complete head of
    # 30,000 past the byte bound one 165-235 ms step (review25 F1), so half the hostile steps would be past this
    p99_step = run.steps[int(0.99 * (len(run.steps) - 1))]
    assert p99_step < 0.006, p99_step
    assert spent <= burst + share * elapsed + 0.02, (spent, elapsed)  # (a step may overdraw: a header block)
    assert spent >= 0.5 * share * elapsed, (spent, elapsed)  # the flood did want it: the cap is what bound it
    # fair: the honest address's steps took about what each flooding address's did (start-time fair queuing gives
    # each the same CPU; seen 1.2-1.4 of a 25th, with its head start as it joins), not starved behind the flood
    assert run.honest_spent >= 0.4 * spent / 25, (run.honest_spent, spent)
    # starved, each predict would wait a round of the 24 at their burst (24 x burst / share = 4.8 s): one predict
    # in the run at most. Served, it waits about a round of one step each: with heads of 2,500 tiny header lines
    # (one 8-13 ms step of h11 each, before MAX_HEADER_FIELDS) a round took ~1.8 s and one predict in every run
    # waited that long, once 5.2 s (CI, 3.10); at 100 fields a step is ~1 ms and the round ~0.25 s (idle: 42-48
    # predicts, p50 83-101 ms, max 213-303 ms; 3.10 beside two busy loops: 33-41, p50 97-136 ms, max 262-392 ms).
    # What catches long steps is the p99 bound above. The slowest predict may still wait several rounds: one honest
    # step charged a few ms (a young collection inside it, a contended core) puts the address that far ahead in
    # virtual time, and each of the 24 catches up at a 10 % share (1.44 s once, CI's unit tier at nice 19 beside
    # the serial tests, its p99 step 2.5 ms). The bound also allows for the machine's own stalls, measured (the
    # loop's longest lag: 1.3 s once, CI, loaded)
    assert len(latencies) >= 10 and p50 < 0.5, (len(latencies), p50)
    assert max(latencies) < 2.5 + 2 * run.lag, (max(latencies), run.lag)


def test_a_request_held_for_its_turn_past_the_keep_alive_timeout_is_answered_not_closed() -> None:
    """uvicorn cancels a connection's keep-alive timer when bytes arrive; the sliced protocol holds bytes for their
    parse turn before uvicorn sees them, so a kept-alive client whose next request waited for its turn longer than
    ``timeout_keep_alive`` had its connection closed under it, the request unanswered (an IncompleteReadError in the
    flood test above, session 16). Here the port's parse budget is overdrawn right after the first answer, so the
    second request waits 1.5 s for its turn, three keep-alive timeouts: it is answered on the same connection."""

    async def scenario() -> tuple[bytes, bytes, float]:
        turns = ParseTurns(0.5, 0.01)
        config = uvicorn.Config(reader_app, timeout_keep_alive=0.5, log_config=None)
        config.load()
        parsing = sliced_protocol(share=1.0, burst_s=1.0, address=AddressBudgets(1.0, 1.0, turns))
        protocol_class: Any = limited_protocol(30.0, 64, 30.0, parsing)
        state = ServerState()
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: protocol_class(config=config, server_state=state, app_state={}), "127.0.0.1", 0
        )
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(HONEST)
            first = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            await reader.readexactly(2)
            turns.budget.spend(0.75, loop.time())  # overdrawn: every step waits ~1.5 s for the refill
            sent = time.monotonic()
            writer.write(HONEST)
            second = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            return first, second, time.monotonic() - sent
        finally:
            writer.transport.abort()
            server.close()
            await server.wait_closed()

    first, second, waited = asyncio.run(scenario())
    assert first.startswith(b"HTTP/1.1 200 ") and second.startswith(b"HTTP/1.1 200 "), (first, second)
    assert waited >= 1.0, waited  # it really waited past the keep-alive timeout for its turn


async def early_answer_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answers 401 at once, its request's body never read (as the agent's token check or a 404 does)."""
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 401, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"no"})


async def answered_after_a_costly_step(
    first_request: bytes,
    header_timeout_s: float = 30.0,
    keep_alive_s: float = 0.5,
    then: bytes = HONEST,
    app: Any = reader_app,
) -> tuple[bytes, float, bool]:
    """A connection whose first step is charged 0.75 s more at a 50 % share (all its budgets owe ~1.5 s of refill)
    sends ``first_request``, reads its answer, then sends ``then`` whole at once: the next answer's head (or what
    ended the connection), the seconds it took, and whether the connection was marked as waiting for its head 0.3 s
    in (the agent holding it)."""
    config = uvicorn.Config(app, timeout_keep_alive=keep_alive_s, log_config=None)
    config.load()
    parsing = sliced_protocol(share=0.5, burst_s=0.01, address=AddressBudgets(0.5, 0.01, ParseTurns(1.0, 1.0)))
    made: list[Any] = []

    class Costly(limited_protocol(header_timeout_s, 64, 30.0, parsing)):  # type: ignore[misc]
        def _charge(self, spent: float) -> float:
            if not made:  # its first step cost 0.75 s (a header block parsed slowly, say): all its budgets owe
                made.append(self)
                spent += 0.75
            return super()._charge(spent)  # type: ignore[no-any-return]

    state = ServerState()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Costly(config=config, server_state=state, app_state={}), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(first_request)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 200 " if app is reader_app else b"HTTP/1.1 401 "), head
        await reader.readexactly(int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0]))
        sent = time.monotonic()
        writer.write(then)
        await asyncio.sleep(0.3)
        marked = any(made[0] in held for held in Costly.waiting.values())
        second = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        return second, time.monotonic() - sent, marked
    except (ConnectionError, asyncio.IncompleteReadError) as exc:  # (the keep-alive timer closed it under the request)
        return repr(exc).encode(), time.monotonic() - sent, False
    finally:
        writer.transport.abort()
        server.close()
        await server.wait_closed()


def test_a_request_held_for_its_connections_parse_debt_past_the_keep_alive_timeout_is_answered() -> None:
    """The same for a connection's own parse debt (its budget, its address's, its fair part): after an answer, a
    connection in debt had its reading held until the refill though nothing was left to parse, so its client's
    next request went unread, and uvicorn's keep-alive timer (cancelled only by bytes read) closed the connection
    under it: reset, the request lost (found with the collection test below, session 17). Here the first step is
    charged 0.75 s at a 50 % share: the second request waits ~1.5 s, three keep-alive timeouts, and is answered."""
    second, waited, _ = asyncio.run(answered_after_a_costly_step(HONEST))
    assert second.startswith(b"HTTP/1.1 200 "), second
    assert waited >= 1.0, waited  # it really waited for the refill, past the keep-alive timeout


def test_a_request_whose_last_step_used_up_its_turn_is_not_left_cut_short_after_its_answer() -> None:
    """review17a F1: 126 one-byte chunks are 128 events (the head, the chunks, the end), a whole turn's: h11 was
    asked for one more event after the answer with none left in the turn, the connection counted as cut short with
    nothing to parse, its reading was held for the debt's refill, and the next request was lost to the keep-alive
    timer as above (a reset at 0.5 s). 125 or 127 chunks did not show it; neither does this now."""
    chunks = EVENTS_PER_TURN - 2
    wire = b"POST /p HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n" + b"1\r\nx\r\n" * chunks + b"0\r\n\r\n"
    second, waited, _ = asyncio.run(answered_after_a_costly_step(wire))
    assert second.startswith(b"HTTP/1.1 200 "), (second, waited)
    assert waited >= 1.0, waited


def test_a_request_held_for_its_connections_parse_debt_is_not_timed_out_as_a_missing_head() -> None:
    """review17a F2: the header deadline is armed at an answer; a next request sent whole but held unparsed for the
    connection's own debt got 408 "request headers not received" when the deadline (1 s here) came before the
    refill (~1.5 s), and meanwhile the connection was marked as waiting for its head (a newcomer at the cap could
    take its place). The hold is the agent's: the request is answered after the refill, never marked waiting."""
    second, waited, marked = asyncio.run(answered_after_a_costly_step(HONEST, header_timeout_s=1.0, keep_alive_s=30))
    assert second.startswith(b"HTTP/1.1 200 "), (second, waited)
    assert waited >= 1.0, waited  # past the header deadline
    assert not marked


def test_a_body_after_an_early_answer_is_never_taken_for_a_held_head() -> None:
    """review17c F2: a request answered before its body was read (a 401) leaves h11 in the body while the connection
    waits for a next head; body bytes with a blank line in them, held for the connection's own debt, passed for a
    head sent whole: the deadline was put off to twice its length and the connection left the waiting set. Only
    while h11 waits for a new request is a blank line a head's end: 408 at the deadline (1 s), marked waiting."""
    early = b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\n"
    answer, waited, marked = asyncio.run(
        answered_after_a_costly_step(early, header_timeout_s=1.0, keep_alive_s=30, then=b"\n\n", app=early_answer_app)
    )
    assert answer.startswith(b"HTTP/1.1 408 "), (answer, waited)
    assert 0.9 <= waited < 1.4, waited  # the deadline itself (the refill ends at ~1.5 s, the put-off cap 2 s)
    assert marked


def test_a_blank_line_past_the_longest_head_is_not_looked_for() -> None:
    """review17c F1: every step and hold scanned all the bytes held for a blank line (up to a 272 KiB read, 17 steps
    of it, twice a step: ~13 ns of uncharged loop time a byte received). Only the first ``head_limit`` + 3 bytes
    can end a head h11 takes (16 KiB here; a longer one is a 431): a head whose blank line comes after 20 KiB is
    not excused, and gets its 408 at the deadline (1 s) rather than a 431 after the refill."""
    long_head = b"GET / HTTP/1.1\r\nHost: a\r\nx-pad: " + b"a" * 20_000 + b"\r\n\r\n"
    answer, waited, marked = asyncio.run(
        answered_after_a_costly_step(HONEST, header_timeout_s=1.0, keep_alive_s=30, then=long_head)
    )
    assert answer.startswith(b"HTTP/1.1 408 "), (answer, waited)
    assert 0.9 <= waited < 1.4, waited
    assert marked


@pytest.mark.parametrize("looks_whole", [False, True])
def test_a_head_trickled_while_its_connection_stays_in_debt_is_timed_out(looks_whole: bool) -> None:
    """The bound on F2's excuse: every step of this connection costs 0.3 s more (0.6 s of refill at a 50 % share),
    and its client sends a byte of an endless head every 50 ms, so a byte is nearly always held for its own debt
    when the deadline (1 s) comes. A head whose blank line has not come is not excused: 408 at the deadline, as for
    any slow head. ``looks_whole``: the check of the blank line fooled (every held head taken as whole): put off for
    each hold, the deadline would never come; put off by the deadline at most in all, the 408 comes within twice
    the deadline (plus a step)."""

    async def scenario() -> tuple[bytes, float]:
        config = uvicorn.Config(reader_app, log_config=None)
        config.load()
        parsing = sliced_protocol(share=0.5, burst_s=0.01, address=AddressBudgets(0.5, 0.01, ParseTurns(1.0, 1.0)))

        class Costly(limited_protocol(1.0, 64, 30.0, parsing)):  # type: ignore[misc]
            def _charge(self, spent: float) -> float:
                return super()._charge(spent + 0.3)  # type: ignore[no-any-return]

            def _head_sent(self) -> bool:
                return looks_whole or super()._head_sent()  # type: ignore[no-any-return]

        state = ServerState()
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: Costly(config=config, server_state=state, app_state={}), "127.0.0.1", 0
        )
        port = server.sockets[0].getsockname()[1]
        # A plain socket, not asyncio's streams: the client keeps trickling after the 408 and the close, so the
        # agent's end answers a byte with a reset; a stream's read then raises it before the 408 it holds (seen in
        # CI), where the socket's recv returns what came first.
        client = socket.create_connection(("127.0.0.1", port))
        client.setblocking(False)

        async def trickle() -> None:
            with contextlib.suppress(OSError):
                await loop.sock_sendall(client, b"GET / HTTP/1.1\r\nHost: a\r\nx-pad: ")
                for _ in range(200):  # 10 s of it
                    await asyncio.sleep(0.05)
                    await loop.sock_sendall(client, b"x")

        started = time.monotonic()
        sending = asyncio.ensure_future(trickle())
        try:
            answer = await asyncio.wait_for(loop.sock_recv(client, 4096), 10)
            return answer, time.monotonic() - started
        finally:
            sending.cancel()
            client.close()
            server.close()
            await server.wait_closed()

    answer, after = asyncio.run(scenario())
    print(f"\nhead trickled into own parse debt (looks whole: {looks_whole}): {answer[:12]!r} after {after:.2f} s")
    assert answer.startswith(b"HTTP/1.1 408 "), (answer, after)
    deadlines = 2.0 if looks_whole else 1.0  # the put-off's cap, or the deadline itself
    assert 1.0 <= after < deadlines + 0.6 + 0.3, after  # and at most a step's refill and some slack


def test_a_full_collection_inside_a_step_is_not_charged_to_its_address() -> None:
    """A step's CPU is its thread time, and a full collection that runs inside it scans the whole heap (0.25-0.3 s
    in a test process, seen): charged, the address whose step it was owed its budget seconds of refill (session
    16: an honest address starved ~3 s at a 10 % share). Here a full collection runs inside the first request's
    step (h11's events handed out: the protocol's own path, the collection forced at once): the connection is
    charged its parsing only, and the next request on it is answered at once, not after the budget's refill."""
    share, burst = 0.02, 0.01  # charged the collection (~60 ms here), the next request would wait (c - burst) / share

    async def scenario() -> tuple[float, float, float]:
        pauses.install()  # (the protocol installs it as it connects; here the collection is measured before)
        config = uvicorn.Config(reader_app, log_config=None)
        config.load()
        parsing: Any = sliced_protocol(share=1.0, burst_s=1.0, address=AddressBudgets(share, burst, ParseTurns()))
        made: list[Any] = []

        class CollectingInAStep(limited_protocol(30.0, 64, 30.0, parsing)):  # type: ignore[misc]
            def handle_events(self) -> None:
                if not made:  # the first step: a full collection lands inside it
                    made.append(self)
                    gc.collect()
                super().handle_events()

        state = ServerState()
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: CollectingInAStep(config=config, server_state=state, app_state={}), "127.0.0.1", 0
        )
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            collected = pauses.full_collection_cpu_s()
            writer.write(HONEST)
            assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)).startswith(b"HTTP/1.1 200 ")
            await reader.readexactly(2)
            collection = pauses.full_collection_cpu_s() - collected
            sent = time.monotonic()
            writer.write(HONEST)
            assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)).startswith(b"HTTP/1.1 200 ")
            return collection, made[0].parse_cpu_s, time.monotonic() - sent
        finally:
            writer.transport.abort()
            server.close()
            await server.wait_closed()

    heap = [[] for _ in range(1_000_000)]  # a heap like a test process's, for the collection to scan
    try:
        collection, charged, waited = asyncio.run(scenario())
    finally:
        del heap
    print(f"\na full collection of {1000 * collection:.1f} ms inside a step: charged {1000 * charged:.2f} ms, the next "
          f"request answered in {1000 * waited:.1f} ms")  # fmt: skip
    assert collection > 0.03, collection  # the collection did run inside the step, and took long enough to matter
    assert charged < 0.01 and charged < collection / 4, (charged, collection)  # the step's parsing only
    assert waited < 0.5, waited  # charged the collection, it waited (collection - burst) / share: > 1 s
