"""The stand-in's reads (agent/modelserver.py DeadlineReader, read_line) over a local socket pair: each socket
read is armed by the request's deadline, and what is buffered already costs none (review12c: arming before every
chunk line made a body of 1-byte chunks 1.7x dearer in CPU)."""

from __future__ import annotations

import io
import socket
import threading
import time
from typing import Any

import pytest

from agent.modelserver import DeadlineReader, LineTimeout, read_line


class CountingReader(DeadlineReader):
    """A DeadlineReader that counts its socket reads."""

    reads = 0

    def readinto(self, buffer: Any) -> int:
        self.reads += 1
        return super().readinto(buffer)


def test_lines_already_buffered_cost_no_socket_read() -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        theirs.sendall(b"1\r\nx\r\n" * 1000)  # 1,000 one-byte chunks: 2,000 lines, 6,000 bytes
        reader = CountingReader(ours, 30.0)
        reader.deadline = time.monotonic() + 30
        rfile = io.BufferedReader(reader)
        lines = [read_line(rfile, 1024) for _ in range(2000)]
        assert lines == [b"1\r\n", b"x\r\n"] * 1000
        assert reader.reads <= 2  # one read fills the 8 KiB buffer; it was 3 settimeout calls per chunk
        theirs.close()
        assert read_line(rfile, 1024) == b""  # the end of the stream: a short line


def test_a_trickled_line_ends_at_its_deadline_with_what_came_counted() -> None:
    ours, theirs = socket.socketpair()
    stop = threading.Event()

    def trickle() -> None:
        while not stop.wait(0.05):
            theirs.sendall(b"a")  # each read of the line gets a byte within the per-read timeout

    sender = threading.Thread(target=trickle)
    sender.start()
    try:
        reader = DeadlineReader(ours, 30.0)
        reader.deadline = time.monotonic() + 0.5
        started = time.monotonic()
        with pytest.raises(LineTimeout) as cut:
            read_line(io.BufferedReader(reader), 1024)
        assert time.monotonic() - started < 1.5  # by the deadline, never 1,024 reads of 30 s each
        assert cut.value.partial > 0
        with pytest.raises(TimeoutError):  # past its deadline, a read fails at once
            reader.readinto(bytearray(10))
    finally:
        stop.set()
        sender.join()
        ours.close()
        theirs.close()
