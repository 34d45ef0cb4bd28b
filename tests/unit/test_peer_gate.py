"""The peer port's handshake caps: per source address and in all, released when a handshake ends."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from agent.peer_gate import PENDING_PER_ADDRESS, PENDING_TOTAL, Handshakes


def test_one_address_is_capped_and_a_few_addresses_cannot_fill_the_total() -> None:
    gate = Handshakes()
    assert all(gate.admit("10.0.0.1") for _ in range(PENDING_PER_ADDRESS))
    assert not gate.admit("10.0.0.1")
    addresses = [f"10.0.0.{i}" for i in range(2, 10)]
    admitted = sum(gate.admit(a) for a in addresses for _ in range(PENDING_PER_ADDRESS))
    assert gate.in_progress == PENDING_TOTAL == PENDING_PER_ADDRESS + admitted
    assert not gate.admit("10.0.0.99")  # the total is reached: a new address waits too
    gate.done("10.0.0.1")
    assert gate.admit("10.0.0.99")


@given(st.lists(st.tuples(st.booleans(), st.sampled_from("abcde")), max_size=300))
def test_the_counts_match_the_handshakes_in_progress(events: list[tuple[bool, str]]) -> None:
    gate, held = Handshakes(per_address=4, total=10), {h: 0 for h in "abcde"}
    for start, host in events:
        if start:
            ok = gate.admit(host)
            assert ok == (held[host] < 4 and sum(held.values()) < 10)
            held[host] += ok
        elif held[host]:
            gate.done(host)
            held[host] -= 1
        else:
            gate.done(host)  # an end never counted (refused at once) changes nothing
        assert gate.in_progress == sum(held.values()) <= 10
        assert gate.pending == {h: n for h, n in held.items() if n}


def test_writes_within_one_loop_iteration_leave_as_one_and_close_flushes_first() -> None:
    """uvicorn writes an answer's head and body separately: one TLS record and one send instead of two."""
    import asyncio
    import socket

    from agent.peer_gate import CoalescingTransport

    async def run() -> None:
        ours, theirs = socket.socketpair()
        transport, _ = await asyncio.get_running_loop().create_connection(asyncio.Protocol, sock=ours)
        sent: list[bytes] = []
        real_write = transport.write

        def counted(data: bytes | bytearray | memoryview) -> None:
            sent.append(bytes(data))
            real_write(data)

        transport.write = counted  # type: ignore[method-assign]
        t = CoalescingTransport(transport)  # type: ignore[arg-type]
        t.write(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\n")
        t.write(b"body")
        assert sent == [] and t.get_write_buffer_size() == 42
        await asyncio.sleep(0)
        assert sent == [b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nbody"]
        t.write(b"last")
        t.close()  # what is pending goes out before the close
        assert sent[-1] == b"last" and t.is_closing()
        await asyncio.sleep(0.01)
        theirs.settimeout(1)
        assert theirs.recv(100) == b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nbodylast"
        theirs.close()

    asyncio.run(run())
