"""A first contact's pin write (flock, rewrite, two fsyncs) runs off the event loop (agent/identity.py Pins).

The slow write here is the real contention case: another thread holds the pin folder's flock (as an operator's
``peerserve pins forget`` does), so the write waits on the lock for as long as it is held. Meanwhile the loop
must keep answering: measured on B's real peer listener (uvicorn, mutual TLS, loopback), once with the write
off the loop and once with it put back on the loop (the part off), which stalls every other request as long.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI

from agent.discovery import swim as sw
from agent.discovery.swim_io import SwimDriver
from agent.identity import AuthError, DamagedPinFile, Identity, Pins, _stamp_of, edit_pin, read_pins
from agent.peer_api import PeerServer
from agent.peer_client import PeerClient
from agent.peer_swim_route import SwimRoute
from peerserve import wire
from peerserve.wire import SwimMessage
from tests.service.conftest import free_port
from tests.unit.test_peer_swim_route import Membership, Node
from tests.unit.test_pins import disk_full

TOKEN = "unit-cluster-token-0123456789"
K1, K2 = b"1" * 32, b"2" * 32
HOLD_S = 1.2  # how long the other holder keeps the folder's lock


@contextmanager
def folder_locked(path: Path, hold_s: float | None = None) -> Iterator[threading.Event]:
    """The pin folder's flock held from another thread (a separate open file: it contends with the agent's), until
    the yielded event is set, or ``hold_s`` after it was taken; released on exit in any case."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    taken, release = threading.Event(), threading.Event()

    def hold() -> None:
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            taken.set()
            release.wait(hold_s if hold_s is not None else 30.0)
        finally:
            os.close(fd)

    holder = threading.Thread(target=hold, daemon=True)
    holder.start()
    assert taken.wait(5.0)
    try:
        yield release
    finally:
        release.set()
        holder.join(5.0)


async def until(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.005)


def ping(sender: str) -> dict[str, Any]:
    return SwimMessage("ping", sender, 0, 1, "https://127.0.0.3:7001").to_json()


def _latency_under_a_held_lock(tmp_path: Path, on_loop: bool, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """B's real peer listener; C (pinned already) pings it in a loop while A's first contact waits on the lock."""
    a, b, c = (Identity(n, TOKEN, tmp_path / n) for n in "abc")
    if on_loop:  # the part off: the awaited path writes on the loop, as before (the synchronous write, no thread)
        monkeypatch.setattr("agent.identity._on_loop", lambda: False)

        async def write_here(
            node_id: str, key: bytes, source: str = "", now: float = 0.0, replace: bytes | None = None
        ) -> None:
            b.pins.check(node_id, key, source, now, replace)

        monkeypatch.setattr(b.pins, "pin", write_here)
    driver = SwimDriver("b", "https://127.0.0.1:1", PeerClient(b, lambda url: None), sw.SwimConfig(), lambda: None,
                        lambda s, u: s, lambda t: None)  # type: ignore[arg-type,return-value]  # fmt: skip
    app = FastAPI()
    app.add_middleware(SwimRoute, agent=Node(Membership(driver)), identity=b)  # type: ignore[arg-type]
    out: dict[str, Any] = {}

    async def main() -> None:
        port = free_port()
        server = PeerServer(app, b, "127.0.0.1", port)
        await server.start()
        url = f"https://127.0.0.1:{port}"
        ca, cc = PeerClient(a, lambda u: None), PeerClient(c, lambda u: None)
        try:
            status, _ = await cc.call("b", url, "POST", wire.ROUTE_SWIM, body=ping("c"))  # C's first contact
            assert status == 200 and b.pins.pinned("c", c.public_key)
            lags: list[float] = []
            pings: list[float] = []

            stop = asyncio.Event()

            async def ticker() -> None:  # the loop's own lateness: a 10 ms sleep that wakes late
                while not stop.is_set():
                    t = time.perf_counter()
                    await asyncio.sleep(0.01)
                    lags.append(time.perf_counter() - t - 0.01)

            async def pinger() -> None:  # another member's signed SWIM pings over loopback TLS, one after another
                while not stop.is_set():
                    t = time.perf_counter()
                    status, _ = await cc.call("b", url, "POST", wire.ROUTE_SWIM, body=ping("c"))
                    assert status == 200
                    pings.append(time.perf_counter() - t)

            with folder_locked(tmp_path / "b" / "peer" / "pins.json", HOLD_S):
                side = [asyncio.ensure_future(ticker()), asyncio.ensure_future(pinger())]
                t0 = time.perf_counter()
                first = asyncio.ensure_future(ca.call("b", url, "POST", wire.ROUTE_SWIM, body=ping("a")))
                await asyncio.sleep(HOLD_S / 2)
                out["pending_midway"] = not first.done()
                out["pinned_midway"] = "a" in b.pins._pins or "a" in read_pins(tmp_path / "b" / "peer" / "pins.json")
                status, _ = await first
                out["first_s"] = time.perf_counter() - t0
                out["first_status"] = status
            stop.set()
            await asyncio.gather(*side)
            out["max_lag"], out["max_ping"], out["pings"] = max(lags), max(pings), len(pings)
            out["pinned"] = b.pins.pinned("a", a.public_key) and read_pins(b.pins.path) == {
                "a": a.public_key,
                "c": c.public_key,
            }
        finally:
            await ca.close()
            await cc.close()
            await server.stop()

    asyncio.run(main())
    return out


def test_the_listener_keeps_answering_while_a_first_contacts_pin_waits_on_the_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    got = _latency_under_a_held_lock(tmp_path, False, monkeypatch)
    assert got["first_status"] == 200 and got["pinned"]
    assert got["first_s"] >= HOLD_S * 0.5  # the first contact did wait for the lock (and its write)
    assert got["pending_midway"] and not got["pinned_midway"]  # not answered, not pinned, before it is on disk
    assert got["pings"] >= 5, got  # meanwhile other members were answered, and quickly
    assert got["max_ping"] < HOLD_S / 3 and got["max_lag"] < HOLD_S / 3, got


def test_with_the_write_on_the_loop_every_request_waits_for_the_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The part off: the loop itself waits in flock, and the other member's pings and the ticker with it."""
    got = _latency_under_a_held_lock(tmp_path, True, monkeypatch)
    assert got["first_status"] == 200 and got["pinned"]
    assert got["max_lag"] >= HOLD_S * 0.4 and got["max_ping"] >= HOLD_S * 0.4, got


def test_a_pin_is_in_memory_only_once_on_disk_and_two_keys_for_one_id_cannot_both_win(tmp_path: Path) -> None:
    path = tmp_path / "peer" / "pins.json"

    async def main() -> None:
        pins = Pins(path)
        with folder_locked(path) as release:
            first = asyncio.ensure_future(pins.pin("n", K1, "192.0.2.1", 0.0))
            await asyncio.sleep(0.05)
            second = asyncio.ensure_future(pins.pin("n", K2, "192.0.2.2", 0.0))  # same id, another key, meanwhile
            await asyncio.sleep(0.2)
            assert not first.done() and not second.done()
            assert "n" not in pins._pins and not path.exists()  # waiting for the lock: nothing pinned anywhere
            assert list(pins._writing) == ["n"] and pins._joined == 1  # one write; the second contact waits on it
            assert "192.0.2.2" not in pins.first_contacts._buckets  # ... and spent no budget (it writes nothing)
            release.set()
            await first
            with pytest.raises(AuthError) as info:
                await second
        assert info.value.status == 403 and "another key" in str(info.value)
        assert pins._pins == {"n": K1} and read_pins(path) == {"n": K1}
        assert pins._writing == {} and pins._joined == 0

    asyncio.run(main())


def test_first_contacts_waiting_on_writes_are_bounded_past_it_refused_at_once(tmp_path: Path) -> None:
    path = tmp_path / "peer" / "pins.json"

    async def main() -> None:
        pins = Pins(path, pending=3)
        with folder_locked(path) as release:
            waiting = [asyncio.ensure_future(pins.pin(f"n{i}", K1, f"192.0.2.{i + 1}", 0.0)) for i in range(3)]
            await asyncio.sleep(0.05)
            t = time.perf_counter()
            for late in ("n3", "n0"):  # a new id, and one more contact for an id being written: both wait nowhere
                with pytest.raises(AuthError) as info:
                    await pins.pin(late, K1, "192.0.2.9", 0.0)
                assert info.value.status == 503 and info.value.retry_after == 1
            assert time.perf_counter() - t < 0.1  # refused at once, not queued behind the lock
            with pytest.raises(AuthError) as info:  # the synchronous path (relayed statements) likewise
                pins.check("n4", K1, "192.0.2.9", 0.0)
            assert info.value.status == 503 and "in flight" in str(info.value)
            assert "192.0.2.9" not in pins.first_contacts._buckets  # a refused contact spends no budget
            assert len(pins._writing) == 3 and pins._joined == 0
            release.set()
            await asyncio.gather(*waiting)
        await pins.pin("n3", K1, "192.0.2.9", 0.0)  # room again
        assert read_pins(path) == {f"n{i}": K1 for i in range(4)} == pins._pins

    asyncio.run(main())


def test_contacts_that_go_away_leave_their_writes_counted_until_they_land(tmp_path: Path) -> None:
    """A contact cancelled while it waits (its peer hung up) does not free its place: its write still runs, so a
    flood that connects and leaves cannot queue writes past the bound; the pins it made land in memory too."""
    path = tmp_path / "peer" / "pins.json"

    async def main() -> None:
        pins = Pins(path, pending=2)
        with folder_locked(path) as release:
            gone = [asyncio.ensure_future(pins.pin(f"n{i}", K1, f"192.0.2.{i + 1}", 0.0)) for i in range(2)]
            await asyncio.sleep(0.05)
            for task in gone:
                task.cancel()
            await asyncio.gather(*gone, return_exceptions=True)
            with pytest.raises(AuthError) as info:
                await pins.pin("n2", K1, "192.0.2.3", 0.0)
            assert info.value.status == 503 and len(pins._writing) == 2
            release.set()
            await until(lambda: not pins._writing)
        assert pins._pins == read_pins(path) == {"n0": K1, "n1": K1}
        await pins.pin("n2", K1, "192.0.2.3", 0.0)

    asyncio.run(main())


def test_a_flood_of_first_contacts_leaves_disk_and_memory_equal(tmp_path: Path) -> None:
    """Many ids at once from many addresses: some wait, the rest are refused 503 and retry; every pin made is on
    disk, and memory holds exactly the file (the writer thread never touches the Pins object)."""
    path = tmp_path / "peer" / "pins.json"

    async def contact(pins: Pins, i: int) -> int:
        refused = 0
        while True:
            try:
                await pins.pin(f"id{i}", i.to_bytes(2, "big") * 16, f"10.0.{i // 200}.{i % 200 + 1}", 0.0)
                return refused
            except AuthError as exc:
                assert exc.status == 503 and exc.retry_after == 1
                refused += 1
                await asyncio.sleep(0.01)

    async def main() -> None:
        pins = Pins(path, pending=4)
        refused = await asyncio.gather(*(contact(pins, i) for i in range(60)))
        assert sum(refused) > 0  # the bound was reached
        assert pins._pins == read_pins(path) and len(pins._pins) == 60
        assert pins._writing == {} and pins._joined == 0

    asyncio.run(main())


def test_an_address_out_of_budget_is_refused_before_any_write(tmp_path: Path) -> None:
    path = tmp_path / "peer" / "pins.json"

    async def main() -> None:
        pins = Pins(path, first_per_min=1.0, first_burst=1)
        await pins.pin("n1", K1, "192.0.2.1", 0.0)
        stamp = _stamp_of(path)
        with pytest.raises(AuthError) as info:
            await pins.pin("n2", K1, "192.0.2.1", 0.0)
        assert info.value.status == 429 and pins._writing == {} and _stamp_of(path) == stamp
        with pytest.raises(AuthError) as info:
            pins.check("n2", K1, "192.0.2.1", 0.0)  # the synchronous path on a loop: 429 too, nothing started
        assert info.value.status == 429 and pins._writing == {} and _stamp_of(path) == stamp

    asyncio.run(main())


def test_a_damaged_file_fails_closed_off_the_loop_too(tmp_path: Path) -> None:
    path = tmp_path / "peer" / "pins.json"

    async def main() -> None:
        pins = Pins(path)
        await pins.pin("n1", K1)
        path.write_text('{"n1": "00')  # truncated by hand
        for _ in range(2):
            with pytest.raises(DamagedPinFile) as info:
                await pins.pin("n2", K1)
            assert info.value.status == 403
        await pins.pin("n1", K1)  # the pin read before still counts
        assert path.read_text() == '{"n1": "00'  # never overwritten

    asyncio.run(main())


def test_on_a_loop_the_synchronous_check_writes_off_it_and_refuses_once(tmp_path: Path) -> None:
    """Relayed statements are checked synchronously: the first from a new signer is refused (503) while its pin
    is written in the pin thread; once on disk, the next passes. A second key for the id never gets in."""
    path = tmp_path / "peer" / "pins.json"

    async def main() -> None:
        pins = Pins(path)
        with folder_locked(path) as release:
            for key in (K1, K1, K2):  # the same signer again, then another key: one write, no second one started
                with pytest.raises(AuthError) as info:
                    pins.check("s", key, "(relayed)", 0.0)
                assert info.value.status == 503 and info.value.retry_after == 1
            assert list(pins._writing) == ["s"] and "s" not in pins._pins
            release.set()
            await until(lambda: not pins._writing)
        pins.check("s", K1, "(relayed)", 0.0)
        with pytest.raises(AuthError) as info:
            pins.check("s", K2, "(relayed)", 0.0)
        assert info.value.status == 403 and read_pins(path) == {"s": K1} and pins._writing == {}

    asyncio.run(main())


def test_the_operators_forget_reaches_the_running_agent_between_writes(tmp_path: Path) -> None:
    path = tmp_path / "peer" / "pins.json"

    async def main() -> None:
        pins = Pins(path)
        await pins.pin("n2", K1)
        await pins.pin("n3", K1)
        assert await asyncio.to_thread(edit_pin, path, "n2", None) == K1  # `peerserve pins forget n2`
        await pins.pin("n2", K2)  # the re-imaged board's new key
        await pins.pin("n4", K1)  # another write must not bring the forgotten pin back
        assert read_pins(path) == {"n2": K2, "n3": K1, "n4": K1} == pins._pins
        with pytest.raises(AuthError):
            await pins.pin("n2", K1)

    asyncio.run(main())


def test_a_write_that_fails_is_not_pinned_and_every_waiter_is_told(tmp_path: Path) -> None:
    path = tmp_path / "peer" / "pins.json"
    path.parent.mkdir(parents=True)

    async def main() -> None:
        pins = Pins(path)
        with disk_full(path.parent):  # the temp file's write fails: ENOSPC
            with folder_locked(path) as release:
                waiters = [asyncio.ensure_future(pins.pin("n", K1)) for _ in range(3)]
                await asyncio.sleep(0.05)
                release.set()
                results = await asyncio.gather(*waiters, return_exceptions=True)
            assert all(isinstance(r, AuthError) and r.status == 503 and "cannot write" in str(r) for r in results)
            assert len({id(r) for r in results}) == 3  # each contact its own exception
            assert "n" not in pins._pins and not path.exists()
        await pins.pin("n", K1)
        assert read_pins(path) == {"n": K1}

    asyncio.run(main())


def test_a_client_meeting_a_listener_first_waits_for_its_pin_within_the_deadline(tmp_path: Path) -> None:
    """The client's check of a listener's certificate (agent.peer_http verify_peer): a first contact's write is
    awaited off the loop, within the exchange's deadline; past it the call fails, nothing is sent on that
    connection, and the write still lands for the next call."""
    from agent.peer_client import PeerCallError
    from tests.unit.test_peer_direct import Node as DirectNode
    from tests.unit.test_peer_direct import serve

    async def run(client: PeerClient, url: str, node: DirectNode, b: Identity) -> None:
        pins = client.identity.pins
        assert pins.path is not None
        with folder_locked(pins.path) as release:
            with pytest.raises(PeerCallError, match="TimeoutError"):
                await client.call("b", url, "POST", wire.ROUTE_SWIM, body=ping("a"), timeout=0.4, direct=True)
            assert node.discovery is not None and node.discovery.driver.received["ping"] == 0  # nothing sent
            assert client.connections.idle_count == 0 and list(pins._writing) == ["b"]
            release.set()
            await until(lambda: not pins._writing)
        assert pins.pinned("b", b.public_key) and read_pins(pins.path) == {"b": b.public_key}
        status, _ = await client.call("b", url, "POST", wire.ROUTE_SWIM, body=ping("a"), direct=True)
        assert status == 200 and node.discovery.driver.received["ping"] == 1

    serve(tmp_path, run)


def test_a_relayed_statement_of_a_new_signer_is_refused_once_while_its_pin_is_written(tmp_path: Path) -> None:
    """Identity.verify_detached (leases and suspect proofs SWIM relays, checked synchronously) on a loop: the
    signature is checked, the relayed budget spent, the write started off the loop; the next statement passes."""
    us, signer = Identity("us", TOKEN, tmp_path / "us"), Identity("s", TOKEN, None)
    data = b"a statement"

    async def main() -> None:
        card, signature = signer.sign_detached(data)
        with pytest.raises(AuthError) as info:
            us.verify_detached(card, signature, b"another statement", time.time())  # forged: no pin started
        assert info.value.status == 401 and us.pins._writing == {}
        with pytest.raises(AuthError) as info:
            us.verify_detached(card, signature, data, time.time())
        assert info.value.status == 503 and list(us.pins._writing) == ["s"]
        assert 15 <= us.pins.first_contacts._buckets["(relayed)"].tokens < 15.1  # one of the relayed budget's 16
        await until(lambda: not us.pins._writing)
        assert us.verify_detached(card, signature, data, time.time()) == "s"
        assert us.pins.path is not None and read_pins(us.pins.path) == {"s": signer.public_key}

    asyncio.run(main())
