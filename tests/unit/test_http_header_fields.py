"""The header-field count (agent/http_sliced.py ``MAX_HEADER_FIELDS``): a request head, or a chunked body's trailer,
of more than 100 field lines, or longer than the head bound (``max_header_kb``), is refused with 431 before h11
parses it.

h11 parses a whole head in one step of pure Python, ~3 us a line: 2,500 tiny lines in 16 KiB were one 8-13 ms step
that no slice could cut, and a round of the client port's parse turns across a dozen such senders kept an honest
client's predict waiting ~1.8 s (5.2 s once, in CI). And h11 refuses only an incomplete head over its bound: a
complete one of any length is parsed in one step (review25 F1: 16 KiB of long lines, then 30,000 short ones in the
same read, one 165-235 ms step). The count is checked on bytes (wherever the reads fall) and over real loopback
sockets (the answer, a pipelined head, a trailer).
"""

from __future__ import annotations

import asyncio

import h11
import uvicorn
from hypothesis import given, settings
from hypothesis import strategies as st
from uvicorn.server import ServerState

from agent.http_limits import MAX_HEADER_FIELDS, ChunkCountingConnection, limited_protocol
from agent.http_sliced import MAX_LIST_COMMAS, HeadScan, header_lines, list_commas
from tests.unit.test_http_chunks import HEAD, chunked, early, events, serve_once


def head(fields: int, value: bytes = b"y") -> bytes:
    """A request head with ``fields`` header fields in all (Host and Content-Length among them)."""
    return b"POST /echo HTTP/1.1\r\nHost: a\r\n" + b"x: %s\r\n" % value * (fields - 2) + b"Content-Length: 0\r\n\r\n"


def trailer(fields: int) -> bytes:
    return b"".join(b"t%d: v\r\n" % i for i in range(fields)) + b"\r\n"


def test_header_lines_counts_the_head_as_far_as_it_has_come() -> None:
    assert header_lines(head(3), 20_000) == 4  # the request line and three fields
    assert header_lines(head(3) + head(500), 20_000) == 4  # a pipelined head after it is not counted
    assert header_lines(head(500)[:100], 20_000) == head(500)[:100].count(b"\n")  # incomplete: what has come
    assert header_lines(b"GET / HTTP/1.1\nA: b\n\n", 100) == 2  # bare LF lines, as h11 takes them
    assert header_lines(b"\r\n", 100) == header_lines(b"", 100) == 0  # an empty trailer
    assert header_lines(b"x\n" * 49 + b"\n", 100) == 49  # ends within the window
    assert header_lines(b"x\n" * 1000, 100) is None  # the window came and no end: too long, however it ends
    assert header_lines(b"x\n" * 1000 + b"\n", 100) is None
    assert header_lines(b"x" * 96, 100) == 0 and header_lines(b"x" * 97, 100) is None  # (h11's bound: 96 here)
    assert header_lines(bytearray(b"abc" + head(3)), 20_000, 3) == 4  # from where it starts (a trailer)


def test_each_byte_is_looked_at_once() -> None:
    """A head trickled a byte a read costs its length in all, not its square (review25 F3): what was counted is not
    looked at again, even if it changed (h11 never changes what it holds; here it shows the scan kept its place)."""
    data, scan = bytearray(b"GET / HTTP/1.1\r\nA: b\r\n"), HeadScan()
    assert header_lines(data, 1000, 0, scan) == 2
    data[3:5] = b"\n\n"  # behind the scan's place: not seen
    data += b"C: d\r\n"
    assert header_lines(data, 1000, 0, scan) == 3


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 120), st.integers(0, 120), st.lists(st.integers(0, 1500), max_size=20), st.booleans())
def test_counting_as_the_bytes_come_matches_counting_them_at_once(
    lines: int, start: int, cuts: list[int], crlf: bool
) -> None:
    """``HeadScan`` keeps what was counted, so each byte is looked at once: whatever the reads, the count at each
    point is the count of what had come by then, and past the window it is None."""
    end = b"\r\n" if crlf else b"\n"
    data = b"z" * start + b"GET / HTTP/1.1" + end + b"".join(b"h%d: v" % i + end for i in range(lines)) + end
    window, scan = 600, HeadScan()
    for cut in [*sorted(cuts), len(data)]:
        part = bytearray(data[:cut])
        assert header_lines(part, window, start, scan) == header_lines(bytes(part), window, start), cut


def test_a_head_of_100_fields_is_parsed_and_101_is_refused_before_h11_parses_it() -> None:
    assert MAX_HEADER_FIELDS == 100
    conn = ChunkCountingConnection(16384)
    conn.receive_data(head(100, b"y" * 150))  # ~15.5 KiB: the most a head may have
    request = conn.next_event()
    assert isinstance(request, h11.Request) and len(request.headers) == 100 and not conn.refused
    for fields in (101, 2500):
        conn = ChunkCountingConnection(16384)
        conn.receive_data(head(fields))
        assert conn.next_event() is h11.NEED_DATA and conn.next_event() is h11.NEED_DATA
        assert conn.refusal is not None and conn.refusal.status == 431
        assert conn.refusal.message == "more than 100 header fields"
        assert conn.their_state is h11.IDLE  # h11 never parsed it


def test_a_head_coming_in_pieces_is_refused_once_it_passes_the_count() -> None:
    wire, conn = head(2500), ChunkCountingConnection(16384)
    for at in range(0, len(wire), 512):
        conn.receive_data(wire[at : at + 512])
        if conn.next_event() is h11.NEED_DATA and conn.refused:
            break
    assert conn.refused and at < 1024  # 101 lines of 6 bytes: in the second piece, not at the end of 15 KiB


def test_the_count_is_per_request_on_a_kept_alive_connection() -> None:
    """Heads of different lengths one after another, each read alone or all pipelined in one read: each is
    counted from its own start (review25b F3: a count kept from the request before, where the next head began
    at the same place, refused an honest second head as "more than 100 header fields")."""
    heads = [head(100), head(60), head(60, b"y" * 100), head(100, b"y" * 20), head(3)]
    for pipelined in (False, True):
        conn = ChunkCountingConnection(16384)
        if pipelined:
            conn.receive_data(b"".join(heads))
        for one in heads:
            if not pipelined:
                conn.receive_data(one)
            assert isinstance(conn.next_event(), h11.Request), (pipelined, conn.refusal)
            assert isinstance(conn.next_event(), h11.EndOfMessage)
            conn.send(h11.Response(status_code=200, headers=[(b"content-length", b"0")]))
            conn.send(h11.EndOfMessage())
            conn.start_next_cycle()
        assert not conn.refused


def test_list_headers_of_many_commas_are_refused_before_h11_splits_them() -> None:
    """review25b F1: h11 splits Connection, Transfer-Encoding, Content-Length, Upgrade and Expect at their commas
    in Python (uvicorn splits Connection again), so one field of 16,000 commas was a 5-7 ms step within the line
    and byte bounds. Past 64 commas in those, 431; commas elsewhere (Accept, Cookie) cost h11 nothing and pass."""
    assert MAX_LIST_COMMAS == 64
    base = b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n"
    for field in (
        b"Connection: a" + b"," * 16_000 + b"a",
        b"expect: " + b"100-continue," * 65,
        b"Upgrade:" + b",x" * 65,
    ):
        conn = ChunkCountingConnection(16384)
        conn.receive_data(base + field + b"\r\n\r\n")
        assert conn.next_event() is h11.NEED_DATA and conn.their_state is h11.IDLE, field[:20]
        assert conn.refusal is not None and conn.refusal.status == 431 and "commas" in conn.refusal.message
    honest = base + b"Connection: keep-alive, Upgrade\r\nAccept: " + b"a/b, " * 2000 + b"c/d\r\n\r\n"
    assert list_commas(honest, 0, len(honest)) == 1
    conn = ChunkCountingConnection(16384)
    conn.receive_data(honest)
    assert isinstance(conn.next_event(), h11.Request) and not conn.refused


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 4000), max_size=12), st.sampled_from([100, 101, 400]), st.sampled_from([3, 300]))
def test_trailer_fields_are_counted_however_the_reads_fall(splits: list[int], fields: int, size: int) -> None:
    """h11 reads on from the last chunk's line into the trailer within one step, so the count looks ahead at the
    last chunk's line (and past the CRLF that ends the chunk before it) wherever the reads cut the wire."""
    body = b"z" * 600  # (in chunks of 3 bytes: 200, under the chunk rule)
    wire = HEAD + chunked(body, size)[: -len(b"\r\n")] + trailer(fields)
    conn = ChunkCountingConnection(16384)
    got, ended = events(conn, wire, [min(cut, len(wire)) for cut in splits])  # (past the end: empty data, an EOF)
    if fields <= MAX_HEADER_FIELDS:
        assert ended and got == body and not conn.refused
    else:
        assert not ended and conn.refusal is not None and conn.refusal.status == 431
        assert conn.refusal.message == "more than 100 trailer fields"


def test_trailer_fields_are_counted_with_a_read_cut_at_each_byte_around_the_last_chunk() -> None:
    """Every cut from the end of the last data chunk to the trailer's first line, one read or two (review25 F5:
    the property test's cuts rarely fall there when the chunks are small)."""
    for fields in (100, 101):
        prefix = HEAD + b"3\r\nabc\r\n"
        wire = prefix + b"0;ext=1\r\n" + trailer(fields)
        around = range(len(prefix) - 6, len(prefix) + 16)
        for cuts in [[a] for a in around] + [[a, a + 2] for a in around]:
            conn = ChunkCountingConnection(16384)
            got, ended = events(conn, wire, cuts)
            assert got == b"abc" and ended == (fields <= MAX_HEADER_FIELDS) and conn.refused != ended, (fields, cuts)


def test_a_chunk_size_of_leading_zeros_is_not_taken_for_the_last_chunk() -> None:
    """``001c2`` is 450 bytes, not a last chunk followed by a trailer of 150 lines (review25b F4)."""
    data = b"a:\n" * 150
    conn = ChunkCountingConnection(16384)
    got, ended = events(conn, HEAD + b"00%x\r\n" % len(data) + data + b"\r\n0\r\n\r\n", [])
    assert ended and got == data and not conn.refused


def test_chunk_data_full_of_line_ends_is_not_taken_for_a_trailer() -> None:
    """Chunks whose sizes start with zeros (``00c8``) and whose data is all line ends: only a size of zero is the
    last chunk, and a chunk's data is never counted as header lines."""
    data = b"\r\n" * 100
    wire = HEAD + (b"00%x\r\n" % len(data) + data + b"\r\n") * 3 + b"000\r\n" + trailer(5)
    conn = ChunkCountingConnection(16384)
    got, ended = events(conn, wire, [len(HEAD) + 5, len(HEAD) + 300])
    assert ended and got == data * 3 and not conn.refused


def test_a_complete_head_longer_than_the_bound_is_refused_however_it_comes() -> None:
    """review25 F1: 16 KiB of long lines (under the field count, h11 holding them: not over its bound), then
    thousands of short ones and the blank line in the next read: h11 parsed it whole in one step. A head (or a
    trailer) is refused once ``head_limit`` + 4 bytes of it have come without its end."""
    first = b"GET /p HTTP/1.1\r\nHost: a\r\n" + (b"x: " + b"y" * 205 + b"\r\n") * 80  # 80 lines in 16,384 bytes
    for wire, cut in ((first + b"a:\n" * 5400 + b"\n", 16_384), (head(60, b"y" * 400), 4096)):
        conn = ChunkCountingConnection(16384)
        conn.receive_data(wire[:cut])
        assert conn.next_event() is h11.NEED_DATA and not conn.refused
        conn.receive_data(wire[cut:])
        assert conn.next_event() is h11.NEED_DATA and conn.their_state is h11.IDLE  # never parsed
        assert conn.refusal is not None and conn.refusal.message == "request head over 16384 bytes"
    conn = ChunkCountingConnection(16384)  # a trailer likewise
    conn.receive_data(HEAD + b"3\r\nabc\r\n0\r\n" + (b"t: " + b"v" * 205 + b"\r\n") * 80 + b"t:\n" * 5000 + b"\n")
    assert [type(e).__name__ for e in iter(conn.next_event, h11.NEED_DATA)] == ["Request", "Data"]
    assert conn.refusal is not None and conn.refusal.message == "request trailer over 16384 bytes"


def test_a_head_at_the_bound_is_parsed() -> None:
    wire = b"GET /p HTTP/1.1\r\nHost: a\r\n" + b"x: " + b"y" * 16_350 + b"\r\n\r\n"
    assert len(wire) == 16_383  # (h11 takes a head up to its bound, 16,384 bytes)
    conn = ChunkCountingConnection(16384)
    conn.receive_data(wire)
    assert isinstance(conn.next_event(), h11.Request) and not conn.refused


def test_over_loopback_a_head_of_101_fields_gets_431_and_the_connection_closes() -> None:
    answer = asyncio.run(serve_once(head(101)))[0]
    assert answer.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n"), answer[:80]
    assert b"connection: close" in answer.lower() and answer.endswith(b'{"error": "more than 100 header fields"}')


def test_over_loopback_a_pipelined_head_of_too_many_fields_is_answered_after_the_good_one() -> None:
    """The second head is counted as uvicorn starts the next cycle (``on_response_complete``), not on a later read:
    refused there, it was left unanswered until the keep-alive timer closed the connection."""
    good = chunked(b"q" * 10, 10)
    wire = HEAD + good + head(2500)
    answer = asyncio.run(asyncio.wait_for(serve_once(wire), 4))[0]
    assert answer.startswith(b"HTTP/1.1 200 ") and answer.count(b"HTTP/1.1 ") == 2, answer[:200]
    assert b"HTTP/1.1 431 " in answer and answer.endswith(b'{"error": "more than 100 header fields"}')


def test_over_loopback_a_pipelined_head_past_the_byte_bound_is_refused_unparsed() -> None:
    """review25 F1's pipelined form: the long head waits in h11 (PAUSED) while the first request is answered, and
    uvicorn's next cycle parsed it whole: 30,000 lines in one 165-235 ms step. Now a 431 after the first 200."""
    long_head = b"GET /p HTTP/1.1\r\nHost: a\r\n" + (b"x: " + b"y" * 200 + b"\r\n") * 77 + b"a:\n" * 30_000 + b"\n"
    made: list = []
    answer = asyncio.run(asyncio.wait_for(serve_once(HEAD + chunked(b"q" * 10, 10) + long_head, made=made), 10))[0]
    assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b'{"error": "request head over 16384 bytes"}')
    assert made[0].parse_cpu_s < 0.05, made[0].parse_cpu_s  # (parsed, it was ~0.2 s of h11 in one step)


def test_a_refused_trailer_after_an_early_answer_gets_no_second_answer() -> None:
    """review25 F2: a handler answered without reading the body (a 405, keep-alive) and the body's trailer is then
    refused: the client gets the 405 alone, the connection closed, never a 431 it would read as the answer to its
    next request."""

    async def scenario() -> bytes:
        config = uvicorn.Config(early, h11_max_incomplete_event_size=16384, log_config=None)
        config.load()
        protocol_class, state = limited_protocol(10.0, 64, 30.0), ServerState()
        server = await asyncio.get_running_loop().create_server(
            lambda: protocol_class(config=config, server_state=state, app_state={}), "127.0.0.1", 0
        )
        reader, writer = await asyncio.open_connection("127.0.0.1", server.sockets[0].getsockname()[1])
        writer.write(HEAD + b"5\r\nhello\r\n")
        answer = await asyncio.wait_for(reader.readuntil(b"no"), 10)  # the 405, before the body's end
        writer.write(b"0\r\n" + trailer(150))
        answer += await asyncio.wait_for(reader.read(), 10)  # then the end of the connection
        writer.close()
        server.close()
        await server.wait_closed()
        return answer

    answer = asyncio.run(scenario())
    assert answer.startswith(b"HTTP/1.1 405 ") and answer.count(b"HTTP/1.1 ") == 1, answer


def test_over_loopback_a_trailer_of_too_many_fields_gets_431() -> None:
    wire = HEAD + b"5\r\nhello\r\n0\r\n" + trailer(150)
    answer = asyncio.run(serve_once(wire))[0]
    assert answer.startswith(b"HTTP/1.1 431 ") and answer.endswith(b'{"error": "more than 100 trailer fields"}')
