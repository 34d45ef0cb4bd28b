"""The client protocol's parsing bounds (agent/http_limits.py): chunks per body, bytes parsed per loop turn.

h11 parses in pure Python on the agent's event loop; a body of 1-byte chunks held it 0.4 s per socket read.
The pure rule and the counting connection are checked on bytes; the protocol itself runs over real loopback
sockets in this process, where what h11 is handed per loop turn can be observed.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from typing import Any

import h11
import uvicorn
from hypothesis import given, settings
from hypothesis import strategies as st
from uvicorn.server import ServerState

from agent.http_limits import (
    ADDRESS_DEBT_S,
    EVENTS_PER_TURN,
    MIN_CHUNK_BYTES,
    MIN_CHUNKS,
    PARSE_SLICE,
    AddressBudgets,
    ChunkCountingConnection,
    ParseBudget,
    SlicedH11Protocol,
    limited_protocol,
    sliced_protocol,
    step_wait,
    too_many_chunks,
)

HEAD = b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"


def chunked(body: bytes, size: int) -> bytes:
    parts = [b"%x\r\n%s\r\n" % (len(body[i : i + size]), body[i : i + size]) for i in range(0, len(body), size)]
    return b"".join(parts) + b"0\r\n\r\n"


def test_past_256_chunks_they_must_average_256_bytes() -> None:
    assert not too_many_chunks(MIN_CHUNKS, MIN_CHUNKS)  # 256 1-byte chunks: any client may
    assert too_many_chunks(MIN_CHUNKS + 1, MIN_CHUNKS + 1)
    assert not too_many_chunks(1000, 1000 * MIN_CHUNK_BYTES)
    assert too_many_chunks(1001, 1000 * MIN_CHUNK_BYTES)
    assert not too_many_chunks(128, 2**20)  # 8 KiB chunks of 1 MiB
    assert not too_many_chunks(2**20 // 300, 2**20)  # 300-byte chunks


def events(
    conn: ChunkCountingConnection, wire: bytes, splits: list[int], turns: list[int] | None = None
) -> tuple[bytes, bool]:
    """The body h11 hands out for ``wire`` fed in pieces cut at ``splits``, a new turn whenever one is cut short
    (the events of each turn appended to ``turns``); whether the request ended."""
    body: list[bytes] = []
    ended, last, turn = False, 0, 0
    for cut in [*sorted(splits), len(wire)]:
        if cut > last:  # h11 reads empty data as the end of the stream
            conn.receive_data(wire[last:cut])
            last = cut
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                if not conn.cut_short:
                    break
                conn.new_turn()
                if turns is not None:
                    turns.append(turn)
                turn = 0
                continue
            turn += 1
            if isinstance(event, h11.Data):
                body.append(event.data)
            ended = ended or isinstance(event, h11.EndOfMessage)
    if turns is not None:
        turns.append(turn)
    return b"".join(body), ended


def test_one_byte_chunks_are_refused_at_the_257th() -> None:
    conn = ChunkCountingConnection(16384)
    body, ended = events(conn, HEAD + b"1\r\nx\r\n" * 10_000, [])
    assert conn.refused and not ended
    assert conn.chunks == MIN_CHUNKS + 1 and len(body) == MIN_CHUNKS  # the refused chunk is not handed out
    assert events(conn, b"1\r\nx\r\n" * 100, [])[0] == b""  # and nothing after it


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(0, 2**18), max_size=30), st.sampled_from([300, 8192, 65536]))
def test_ordinary_chunked_bodies_pass_however_the_reads_fall(splits: list[int], size: int) -> None:
    body = hashlib.sha256(b"x").digest() * (2**18 // 32)  # 256 KiB
    conn = ChunkCountingConnection(16384)
    got, ended = events(conn, HEAD + chunked(body, size), splits)
    assert got == body and ended and not conn.refused
    assert conn.chunks == -(-len(body) // size)  # every chunk counted once, wherever a read ends


def test_h11_hands_out_at_most_a_turns_events_and_the_rest_on_later_turns() -> None:
    """A front-loaded body: one big chunk buys 32,767 1-byte chunks under the chunk rule (8 MiB in all). They all
    come out, in turns of at most EVENTS_PER_TURN events (~1 ms), never more (it was ~2,700 per 16 KiB slice)."""
    tiny = 8 * 2**20 // MIN_CHUNK_BYTES - 1
    big = 8 * 2**20 - tiny
    wire = HEAD + b"%x\r\n" % big + b"b" * big + b"\r\n" + b"1\r\nx\r\n" * tiny + b"0\r\n\r\n"
    conn, turns = ChunkCountingConnection(16384), []
    body, ended = events(conn, wire, list(range(0, len(wire), PARSE_SLICE)), turns)
    assert ended and not conn.refused and len(body) == 8 * 2**20 and conn.chunks == tiny + 1
    assert max(turns) == EVENTS_PER_TURN and sum(turns) >= tiny and len(turns) >= tiny // EVENTS_PER_TURN


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 0.5), st.floats(0, 0.02)), min_size=1, max_size=60))
def test_the_parse_budget_bounds_any_connections_cpu_per_second(steps: list[tuple[float, float]]) -> None:
    """Whatever a connection's steps cost, if each waits as the budget says, the CPU it spends in any interval
    is at most burst + share x interval + one step (a step may overdraw before it is charged)."""
    budget, now, done = ParseBudget(share=0.05, burst_s=0.1), 0.0, []
    for gap, cost in steps:
        now += gap + budget.wait(now)  # the protocol parses no sooner than the budget allows
        done.append((now, cost))
        now += cost
        budget.spend(cost, now)
    for i, (start, _) in enumerate(done):
        for j in range(i, len(done)):
            end = done[j][0] + done[j][1]
            spent = sum(c for _, c in done[i : j + 1])
            assert spent <= 0.1 + 0.05 * (end - start) + 0.02 + 1e-9


def test_the_count_starts_again_with_each_request() -> None:
    conn = ChunkCountingConnection(16384)
    request = HEAD + chunked(b"y" * 200, 1)  # 200 chunks: allowed, twice
    body, ended = events(conn, request, [])
    assert ended and body == b"y" * 200
    conn.send(h11.Response(status_code=200, headers=[(b"content-length", b"0")]))
    conn.send(h11.EndOfMessage())
    conn.start_next_cycle()
    body, ended = events(conn, request, [])
    assert ended and body == b"y" * 200 and not conn.refused


# -- the protocol over loopback ---------------------------------------------------------------------------


async def echo(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Reads the whole body (slowly, as a busy handler would) and answers its length and digest."""
    if scope["type"] != "http":
        return
    digest, size = hashlib.sha256(), 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        digest.update(message.get("body", b""))
        size += len(message.get("body", b""))
        await asyncio.sleep(0.001)
        if not message.get("more_body"):
            break
    answer = f"{size} {digest.hexdigest()}".encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(answer))]})
    await send({"type": "http.response.body", "body": answer})


async def early(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answers at once without reading the body (as a 404 or 405 does): uvicorn drains it through h11."""
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 405, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"no"})


async def serve_once(
    wire: bytes, parsing: type[SlicedH11Protocol] = SlicedH11Protocol, made: list[Any] | None = None, app: Any = echo
) -> tuple[bytes, list[int], int]:
    """Send ``wire`` at once to a LimitedH11Protocol server; its answer, the sizes h11 was handed per feed and
    the most bytes the protocol held unparsed at a feed (the protocol itself appended to ``made``)."""
    config = uvicorn.Config(app, h11_max_incomplete_event_size=16384, log_config=None)
    config.load()
    protocol_class = limited_protocol(10.0, 64, 30.0, parsing)
    state, fed, held = ServerState(), [], [0]

    def make() -> Any:
        protocol: Any = protocol_class(config=config, server_state=state, app_state={})
        if made is not None:
            made.append(protocol)
        receive_data = protocol.conn.receive_data

        def observed(data: bytes) -> None:  # what h11 is handed, and what still waits beside it
            fed.append(len(data))
            held[0] = max(held[0], len(protocol._unparsed))
            receive_data(data)

        protocol.conn.receive_data = observed
        return protocol

    loop = asyncio.get_running_loop()
    server = await loop.create_server(make, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(wire)
    answer = await asyncio.wait_for(reader.read(), 30)  # to the end: a refusal ends our side before it closes
    writer.close()
    server.close()
    await server.wait_closed()
    return answer, fed, held[0]


def test_tiny_chunks_get_400_and_h11_never_gets_more_than_a_slice() -> None:
    wire = HEAD + b"1\r\nx\r\n" * 200_000  # 1.2 MB of 1-byte chunks, written at once
    answer, fed, _ = asyncio.run(serve_once(wire))
    assert answer.startswith(b"HTTP/1.1 400 ") and b"too many small chunks (257 for 257 bytes)" in answer
    assert max(fed) <= PARSE_SLICE and sum(fed) <= PARSE_SLICE  # refused within the first slice


def test_a_large_chunked_upload_still_works_in_slices() -> None:
    body = hashlib.sha256(b"z").digest() * (2**20 // 32)  # 1 MiB in 8 KiB chunks
    answer, fed, held = asyncio.run(serve_once(HEAD.replace(b"Host: a", b"Host: a\r\nConnection: close") +
                                               chunked(body, 8192)))  # fmt: skip
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert answer.endswith(f"{len(body)} {hashlib.sha256(body).hexdigest()}".encode())
    assert max(fed) <= PARSE_SLICE and sum(fed) >= len(body)
    assert held <= PARSE_SLICE + 256 * 1024 + 4096, held  # what waits: a slice and one read, not the socket


def front_loaded(size: int) -> bytes:
    """One big chunk, then as many 1-byte chunks as the chunk rule allows: ``size`` bytes of body in all."""
    tiny = size // MIN_CHUNK_BYTES - 1
    big = size - tiny
    return b"%x\r\n" % big + b"b" * big + b"\r\n" + b"1\r\nx\r\n" * tiny + b"0\r\n\r\n"


def test_a_front_loaded_body_is_parsed_within_the_connections_budget() -> None:
    """The chunk rule lets 1 MiB buy 4,095 1-byte chunks; they are parsed, but at the budget's pace: with 2 % of
    a second (10 ms at once) the connection's parsing took at least what that share allows, in steps of a few ms.
    (At 1 % the test took 23 s on a slow machine: 243 ms of parsing; 512 KiB cost 62 ms, too near the 15 ms
    floor below on a machine four times faster.)"""
    made: list[Any] = []
    wire = HEAD.replace(b"Host: a", b"Host: a\r\nConnection: close") + front_loaded(2**20)
    share = 0.02
    started = time.monotonic()
    answer, _, _ = asyncio.run(serve_once(wire, sliced_protocol(share=share, burst_s=0.01), made))
    took = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 200 ") and b"\r\n\r\n%d " % 2**20 in answer
    (protocol,) = made
    assert protocol.parse_cpu_s > 0.015  # it cost more than the burst (else this shows nothing)
    print(f"\nfront-loaded 1 MiB at 2 %: {took:.2f} s for {1000 * protocol.parse_cpu_s:.0f} ms of parsing")
    assert took >= 0.9 * (protocol.parse_cpu_s - 0.01 - 0.005) / share, (took, protocol.parse_cpu_s)
    made.clear()
    started = time.monotonic()
    answer, _, _ = asyncio.run(serve_once(wire, SlicedH11Protocol, made))  # the default: 2.5x that share, 0.1 s at once
    assert answer.startswith(b"HTTP/1.1 200 ") and time.monotonic() - started < 0.5 * took


def test_a_body_nobody_reads_is_drained_in_slices_too() -> None:
    """An answer before the body is read: uvicorn resumes reading itself at the body's end, while later bytes
    still wait to be parsed; what waits stays a slice and a read (it grew by a read at each resume before)."""
    drained = HEAD + front_loaded(2**20)
    wire = drained * 3 + b"GET /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
    answer, fed, held = asyncio.run(serve_once(wire, app=early))
    assert answer.count(b"HTTP/1.1 405 ") == 4 and max(fed) <= PARSE_SLICE and sum(fed) == len(wire)
    assert held <= PARSE_SLICE + 256 * 1024 + 4096, held


def test_address_budgets_are_shared_and_go_with_the_last_connection() -> None:
    budgets = AddressBudgets(0.2, 0.1)
    first, second, other = budgets.take("10.0.0.1"), budgets.take("10.0.0.1"), budgets.take("10.0.0.2")
    assert first is second and first is not other and len(budgets) == 2
    budgets.give("10.0.0.1")
    assert budgets.take("10.0.0.1") is first  # still held by the second connection
    budgets.give("10.0.0.1")
    budgets.give("10.0.0.1")
    budgets.give("10.0.0.2")
    assert len(budgets) == 0  # nothing kept for addresses with no connection


async def serve_together(wires: list[bytes], parsing: type[SlicedH11Protocol]) -> tuple[list[bytes], list[Any], Any]:
    """Send each of ``wires`` on its own connection at once (all from 127.0.0.1); the answers, the protocols and
    the server's address budgets once every connection closed."""
    config = uvicorn.Config(echo, h11_max_incomplete_event_size=16384, log_config=None)
    config.load()
    protocol_class: Any = limited_protocol(10.0, 64, 30.0, parsing)
    state, made = ServerState(), []

    def make() -> Any:
        made.append(protocol_class(config=config, server_state=state, app_state={}))
        return made[-1]

    server = await asyncio.get_running_loop().create_server(make, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]

    async def one(wire: bytes) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(wire)
        answer = await asyncio.wait_for(reader.read(), 60)
        writer.close()
        return answer

    answers = await asyncio.gather(*(one(w) for w in wires))
    server.close()
    await server.wait_closed()
    await asyncio.sleep(0.05)  # connection_lost of the last ones
    return list(answers), made, protocol_class.address_budgets


def test_connections_from_one_address_share_its_parse_budget() -> None:
    """64 connections from one address, each within its own budget, would take 64 x 5 % of a second: they share
    their address's too. Here four front-loaded bodies at once, each connection free, the address at 5 %."""
    wire = HEAD.replace(b"Host: a", b"Host: a\r\nConnection: close") + front_loaded(2**19)
    rate = 0.05  # (at 2 % the test took 16 s on a slow machine: 329 ms of parsing)
    parsing = sliced_protocol(share=1.0, burst_s=1.0, address=AddressBudgets(rate, 0.01))
    started = time.monotonic()
    answers, made, budgets = asyncio.run(serve_together([wire] * 4, parsing))
    took = time.monotonic() - started
    assert all(a.startswith(b"HTTP/1.1 200 ") and b"\r\n\r\n%d " % 2**19 in a for a in answers)
    spent = sum(p.parse_cpu_s for p in made)
    print(f"\nfour front-loaded 512 KiB bodies, one address at 5 %: {took:.2f} s for {1000 * spent:.0f} ms of parsing")
    assert spent > 0.04 and took >= 0.9 * (spent - 0.01 - 4 * 0.003) / rate, (took, spent)  # (a step may overdraw)
    assert len(budgets) == 0


class CountingSet(set[Any]):
    """uvicorn's connection set, counting the elements anything iterated over (a scan per connect is quadratic)."""

    scanned = 0

    def __iter__(self) -> Any:
        for item in super().__iter__():
            self.scanned += 1
            yield item


async def hold_connections(count: int, cap: int) -> tuple[int, int, int, int]:
    """Open ``count`` connections from 127.0.0.1 to a server capping ``cap`` per address, one at a time; the
    elements of the connection set scanned, the connections refused (503), those held, and the address's count."""
    config = uvicorn.Config(echo, h11_max_incomplete_event_size=16384, log_config=None)
    config.load()
    protocol_class: Any = limited_protocol(10.0, cap, 30.0)
    state = ServerState()
    state.connections = CountingSet()
    server = await asyncio.get_running_loop().create_server(
        lambda: protocol_class(config=config, server_state=state, app_state={}), "127.0.0.1", 0
    )
    port = server.sockets[0].getsockname()[1]
    writers, refused = [], 0
    for _ in range(count):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writers.append(writer)
        answer = await asyncio.wait_for(reader.read(12), 0.05) if len(writers) > cap else b""
        refused += answer.startswith(b"HTTP/1.1 503")
    await asyncio.sleep(0.05)
    held, users = len(state.connections), protocol_class.address_budgets.users("127.0.0.1")
    for writer in writers:
        writer.close()
    server.close()
    await server.wait_closed()
    return state.connections.scanned, refused, held, users


def test_the_per_address_cap_costs_no_scan_of_the_open_connections() -> None:
    """Review12e: the cap counted the address's connections by scanning uvicorn's whole set at each connect, so
    n connects cost O(n^2) (6,000 connects against 2,560 held connections: 7-13 s of loop lag). It reads the
    count ``AddressBudgets`` keeps: no element is scanned however many connections are open (40 or 160)."""
    for count in (40, 160):
        scanned, refused, held, users = asyncio.run(hold_connections(count, 16))
        assert scanned == 0, (count, scanned)
        assert refused == count - 16 and held == 16 and users == 16, (count, refused, held, users)


async def upload_behind(
    attackers: int, parsing: type[SlicedH11Protocol]
) -> tuple[float, float, bytes, tuple[float, float]]:
    """``attackers`` front-loaded bodies and one honest 512 KiB upload (Content-Length), all from 127.0.0.1 (a NAT):
    seconds the honest one took, seconds the last attacker's took, the honest answer, and the parse CPU charged
    to the honest connection and to the attackers' together."""
    wire = HEAD.replace(b"Host: a", b"Host: a\r\nConnection: close") + front_loaded(2**20)
    body = b"y" * 2**19
    upload = b"POST /u HTTP/1.1\r\nHost: a\r\nConnection: close\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    config = uvicorn.Config(echo, h11_max_incomplete_event_size=16384, log_config=None)
    config.load()
    protocol_class: Any = limited_protocol(10.0, 64, 30.0, parsing)
    state, made = ServerState(), []

    def make() -> Any:
        made.append(protocol_class(config=config, server_state=state, app_state={}))
        return made[-1]

    server = await asyncio.get_running_loop().create_server(make, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    started = time.monotonic()

    async def one(data: bytes, delay: float) -> tuple[float, bytes]:
        await asyncio.sleep(delay)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(data)
        answer = await asyncio.wait_for(reader.read(), 120)
        writer.close()
        return time.monotonic() - started - delay, answer

    results = await asyncio.gather(*(one(wire, 0.0) for _ in range(attackers)), one(upload, 0.2))
    server.close()
    await server.wait_closed()
    assert all(a.startswith(b"HTTP/1.1 200 ") for _, a in results), [a[:40] for _, a in results]
    charged = (made[-1].parse_cpu_s, sum(p.parse_cpu_s for p in made[:-1]))  # (it connects 0.2 s after them)
    return results[-1][0], max(t for t, _ in results[:-1]), results[-1][1], charged


def test_one_sender_behind_a_shared_address_does_not_starve_an_honest_upload() -> None:
    """Review12e: every connection of an address waited on one parse budget, first come first served, so 60
    throttled senders behind a NAT held an honest 8 MiB upload from the same address 95-106 s (a 408 in the
    agent). Each connection now also steps on its fair part of the address's budget (1 / users of it): here
    eight front-loaded 1 MiB bodies (4,095 1-byte chunks each) and one honest 512 KiB upload, the address at 10 % of
    a second. The honest upload takes what its own parsing costs at its fair part, and, costing little, ends
    before the senders, whose parsing takes the address's share."""
    rate, burst, users = 0.1, 0.01, 9
    parsing = sliced_protocol(share=1.0, burst_s=1.0, address=AddressBudgets(rate, burst))
    honest, attack, answer, (mine, theirs) = asyncio.run(upload_behind(users - 1, parsing))
    print(f"\nhonest 512 KiB upload behind 8 front-loaded senders: {honest:.2f} s (senders' last: {attack:.2f} s); "
          f"parse CPU charged {1000 * mine:.1f} ms (senders' {1000 * theirs:.0f} ms)")  # fmt: skip
    assert b"\r\n\r\n%d " % 2**19 in answer
    # The honest upload's time is its own parse CPU at its fair part (1/9 of the address's 10 %/s, its burst 1/9 of
    # 10 ms): ~90 x mine (sessions 17-18 at 2 %/s: 450 x mine + 0.3-0.4 s, 4.1-7.8 s for 9-17 ms charged; session
    # 22 at 10 %/s: 0.49 s for 4.5 ms, the senders' last 10.8 s for 1,082 ms; at 2 %/s this test took up to 59 s).
    # Before review12e's fix it queued behind the senders' whole charge on the address (theirs / the rate).
    # The charges move with the machine's load (9-17 ms against 365-820 ms), so a ratio of the two times (once
    # asserted > 3; failed at 2.4 under load: 17 ms against 379 ms) is not the property; the time a charge buys is.
    fair_part_s = max(0.0, mine - burst / users) / (rate / users)
    message = (honest, attack, mine, theirs, fair_part_s)
    assert honest <= 1.5 * fair_part_s + 1.0, message  # steps at its fair part, not behind the senders' charge
    assert honest < attack, message  # and so ends before them: its parsing is cheap, theirs is not
    assert mine < theirs / 8, message  # the senders' parse CPU is theirs, not charged to the honest connection


def test_a_connection_within_its_fair_part_never_waits_on_the_others() -> None:
    """The rule itself: the address's budget overdrawn by the others, a connection with its fair part in credit goes
    at once; one that spent its fair part waits for the sooner of the two; past ``ADDRESS_DEBT_S`` owed by the
    address, the fair part waits too, so what the address takes in all stays bounded."""
    own, address, fair = ParseBudget(1.0, 1.0), ParseBudget(0.2, 0.1), ParseBudget(0.2 / 61, 0.1 / 61)
    address.spend(0.3, 0.0)  # 60 throttled senders overdrew it: 1 s before it is back at zero
    fair.wait(0.0)
    assert step_wait(own, address, fair, 0.0) == 0.0  # an honest connection that spent little
    fair.spend(0.01, 0.0)  # one that spent past its fair part: the address is sooner (1 s) than its part (~6 s)
    assert abs(step_wait(own, address, fair, 0.0) - 1.0) < 1e-9
    fair.spend(-0.1, 0.0)  # (back in credit)
    address.spend(ADDRESS_DEBT_S, 0.0)  # owing 1.2 s: the fair part waits until it owes ADDRESS_DEBT_S
    assert abs(step_wait(own, address, fair, 0.0) - (1.2 - ADDRESS_DEBT_S) / 0.2) < 1e-9
    address = ParseBudget(0.2, 0.1)
    address.spend(0.6, 0.0)
    for _ in range(1000):  # whatever the fair parts spend, the address owes at most ADDRESS_DEBT_S and a step
        if step_wait(own, address, fair, 0.0) == 0.0:
            address.spend(0.001, 0.0)
            fair.spend(-0.001, 0.0)
    assert -address.credit <= ADDRESS_DEBT_S + 0.001 + 1e-9


async def idle_then_honest(addresses: int, each: int, limit: int) -> tuple[bytes, int, int]:
    """``each`` idle connections from each of ``addresses`` addresses (127.0.77.x), then one GET from 127.0.78.1,
    against a server whose ``limit_concurrency`` is ``limit``: its answer, the idle ones still open and the
    connections uvicorn holds after it."""
    config = uvicorn.Config(echo, h11_max_incomplete_event_size=16384, log_config=None, limit_concurrency=limit)
    config.load()
    protocol_class: Any = limited_protocol(10.0, 64, 30.0)
    state = ServerState()
    server = await asyncio.get_running_loop().create_server(
        lambda: protocol_class(config=config, server_state=state, app_state={}), "127.0.0.1", 0
    )
    port = server.sockets[0].getsockname()[1]
    idle = []
    for a in range(addresses):
        for _ in range(each):
            idle.append(await asyncio.open_connection("127.0.0.1", port, local_addr=(f"127.0.77.{a + 1}", 0)))
    await asyncio.sleep(0.05)
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=("127.0.78.1", 0))
    writer.write(b"GET /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    still_open = 0
    for r, w in idle:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(r.read(1), 0.01)  # b"" at once when the server closed it
        still_open += not r.at_eof()
        w.close()
    held = len(state.connections)
    server.close()
    await server.wait_closed()
    return answer, still_open, held


def test_idle_connections_from_a_few_addresses_do_not_keep_another_client_out() -> None:
    """Review12e: uvicorn's ``limit_concurrency`` counts open connections, so 4 addresses x 64 idle connections at
    the agent's 256 made every other client's request a 503. At the limit a newcomer takes the place of the oldest
    connection waiting for its request head from the address holding the most such (here 4 x 16 at a limit of
    64): it is answered, and the idle ones lose only the places it needed."""
    answer, still_open, held = asyncio.run(idle_then_honest(4, 16, 64))
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:60]
    assert 60 <= still_open <= 62, still_open  # 64 + 1 connections, at most 63 open for a request to be served
    assert held <= 64, held  # the limit still bounds what is held
