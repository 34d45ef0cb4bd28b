"""The header-field count (agent/http_sliced.py ``MAX_HEADER_FIELDS``): a request head, or a chunked body's trailer,
of more than 100 field lines is refused with 431 before h11 parses it.

h11 parses a whole head in one step of pure Python, ~3 us a line: 2,500 tiny lines in 16 KiB were one 8-13 ms step
that no slice could cut, and a round of the client port's parse turns across a dozen such senders kept an honest
client's predict waiting ~1.8 s (5.2 s once, in CI). The count is checked on bytes (wherever the reads fall) and
over real loopback sockets (the answer, a pipelined head, a trailer).
"""

from __future__ import annotations

import asyncio

import h11
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.http_limits import MAX_HEADER_FIELDS, ChunkCountingConnection
from agent.http_sliced import header_lines
from tests.unit.test_http_chunks import HEAD, chunked, events, serve_once


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
    assert header_lines(b"x\n" * 1000, 100) == 50  # only the window is looked at
    assert header_lines(bytearray(b"abc" + head(3)), 20_000, 3) == 4  # from where it starts (a trailer)


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
    conn = ChunkCountingConnection(16384)
    for _ in range(3):
        conn.receive_data(head(100))
        assert isinstance(conn.next_event(), h11.Request) and isinstance(conn.next_event(), h11.EndOfMessage)
        conn.send(h11.Response(status_code=200, headers=[(b"content-length", b"0")]))
        conn.send(h11.EndOfMessage())
        conn.start_next_cycle()
    assert not conn.refused


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 1200), max_size=12), st.sampled_from([100, 101, 400]), st.sampled_from([3, 300]))
def test_trailer_fields_are_counted_however_the_reads_fall(splits: list[int], fields: int, size: int) -> None:
    """h11 reads on from the last chunk's line into the trailer within one step, so the count looks ahead at the
    last chunk's line (and past the CRLF that ends the chunk before it) wherever the reads cut the wire."""
    body = b"z" * 600  # (in chunks of 3 bytes: 200, under the chunk rule)
    wire = HEAD + chunked(body, size)[: -len(b"\r\n")] + trailer(fields)
    conn = ChunkCountingConnection(16384)
    got, ended = events(conn, wire, splits)
    if fields <= MAX_HEADER_FIELDS:
        assert ended and got == body and not conn.refused
    else:
        assert not ended and conn.refusal is not None and conn.refusal.status == 431
        assert conn.refusal.message == "more than 100 trailer fields"


def test_chunk_data_full_of_line_ends_is_not_taken_for_a_trailer() -> None:
    """Chunks whose sizes start with zeros (``00c8``) and whose data is all line ends: only a size of zero is the
    last chunk, and a chunk's data is never counted as header lines."""
    data = b"\r\n" * 100
    wire = HEAD + (b"00%x\r\n" % len(data) + data + b"\r\n") * 3 + b"000\r\n" + trailer(5)
    conn = ChunkCountingConnection(16384)
    got, ended = events(conn, wire, [len(HEAD) + 5, len(HEAD) + 300])
    assert ended and got == data * 3 and not conn.refused


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


def test_over_loopback_a_trailer_of_too_many_fields_gets_431() -> None:
    wire = HEAD + b"5\r\nhello\r\n0\r\n" + trailer(150)
    answer = asyncio.run(serve_once(wire))[0]
    assert answer.startswith(b"HTTP/1.1 431 ") and answer.endswith(b'{"error": "more than 100 trailer fields"}')
