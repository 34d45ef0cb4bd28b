"""The revocation list between boards: what session 19's reviews left (trust20a). review19f R4: the event loop never
waits on the stamp record's disk I/O; R3: the synced file follows the list in force; review19a F4: one member cannot
hold the one fetch slot past the fetch's deadline, and a stamp two members advertise pre-empts a lone one's."""

from __future__ import annotations

import asyncio
import json
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import Response

from agent import operator_ca
from agent.aio import wait_for as agent_aio_wait
from agent.operator_ca import Revocations, list_digest
from agent.peer_client import PeerClient
from agent.revocation_sync import FETCH, PREEMPT, FetchPlan, RevocationSync
from peerserve import wire
from tests.unit.test_revocation_sync import (
    A,
    B,
    C,
    _fetcher,
    _serving_board,
    lists_at,
    revocations_at,
    signed,
    state,
)


def _held_fsyncs(monkeypatch: pytest.MonkeyPatch, name: str) -> tuple[threading.Event, threading.Event, set[int]]:
    """os.fsync, except that an fsync of a file named ``name``* off the loop waits for ``release`` (a slow disk;
    ``holding`` set while it waits); the threads that fsynced anything of the folder are noted."""
    holding, release, fsynced = threading.Event(), threading.Event(), set()
    real = os.fsync

    def slow(fd: int) -> None:
        fsynced.add(threading.get_ident())
        if os.path.basename(os.readlink(f"/proc/self/fd/{fd}")).startswith(name) and not release.is_set():
            holding.set()
            release.wait(10.0)  # (bounded: a regression fails the test instead of hanging it)
        real(fd)

    monkeypatch.setattr(os, "fsync", slow)
    return holding, release, fsynced


def test_the_loop_never_waits_on_the_stamp_record_while_a_thread_fsyncs_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """review19f R4: a member's list is recorded in a thread (``offer_persist``) whose fsync of the record is slow;
    meanwhile the operator copies a newer list, read on the loop. Before, the loop took the record's lock (held by
    that thread for its fsync) and then fsynced the record itself: a slow disk stalled SWIM, the peer plane, every
    request. Now the loop hands the record to the record thread and goes on; the newer record still wins."""
    listed, floor, _ = lists_at(tmp_path)
    revs = revocations_at(tmp_path)
    holding, release, fsynced = _held_fsyncs(monkeypatch, floor.name)

    async def scenario() -> None:
        loop = threading.get_ident()
        checked = revs.offer_check(signed(100, [A]), "m")
        assert not isinstance(checked, str)
        staged = await asyncio.to_thread(revs.offer_stage, signed(100, [A]), checked)
        outcome, record = revs.offer_commit(staged, "m")
        assert outcome == "accepted"
        persisting = asyncio.ensure_future(asyncio.to_thread(revs.offer_persist, record))
        while not holding.is_set():  # the thread is in the record's fsync, under its lock
            await asyncio.sleep(0.01)
        fsynced.clear()
        mine = listed.with_name("operators.tmp")
        mine.write_bytes(signed(101, [A, B]))
        os.rename(mine, listed)
        assert state(revs) == [A, B]  # on the loop: the operator's newer list in force at once ...
        assert not release.is_set() and loop not in fsynced  # ... without waiting for the disk, nor fsyncing
        ticks = 0
        for _ in range(5):  # and the loop goes on serving while the thread's fsync is still held
            await asyncio.sleep(0)
            ticks += 1
        assert ticks == 5 and not persisting.done()
        release.set()
        await persisting
        assert await asyncio.to_thread(revs.wait_recorded, 30.0)
        assert loop not in fsynced

    asyncio.run(scenario())
    record = json.loads(floor.read_text())
    assert record["stamps"][revs.ca] == 101  # the newer of the two records, whichever thread wrote last
    restarted = revocations_at(tmp_path)
    assert state(restarted) == [A, B]


def test_records_waiting_for_the_record_thread_are_written_newest_last(tmp_path: Path) -> None:
    """Ten operator copies read on the loop in a row, one record thread at a time: the newest record is the one on
    disk when it is done (a waiting older one is replaced, never written after a newer one)."""
    listed, floor, _ = lists_at(tmp_path)
    revs = revocations_at(tmp_path)

    async def scenario() -> None:
        for stamp in range(200, 210):
            listed.write_bytes(signed(stamp, [A, B] if stamp % 2 else [A]))
            os.utime(listed, ns=(stamp * 10**9, stamp * 10**9))  # a new stat each time, whatever the clock's grain
            assert revs.advert() is not None and revs.advert()[0] == stamp  # type: ignore[index]
        assert await asyncio.to_thread(revs.wait_recorded, 30.0)

    asyncio.run(scenario())
    assert json.loads(floor.read_text())["stamps"][revs.ca] == 209
    assert state(revocations_at(tmp_path)) == [A, B]


# -- review19f R3: the synced file follows the list in force ---------------------------------------------------------
async def _until(done: Callable[[], bool], within_s: float = 10.0) -> None:
    """Let the loop run until ``done()`` (a thread's write), bounded: a regression fails instead of hanging."""
    for _ in range(int(within_s / 0.01)):
        if done():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("not done in time")


def _issued(path: Path) -> int | None:
    try:
        return int(json.loads(path.read_bytes())["issued"])
    except (OSError, ValueError, KeyError):
        return None


def _member_sync(revs: Revocations, clock: list[float]) -> RevocationSync:
    return RevocationSync(revs, None, lambda m: f"http://{m}", clock=lambda: clock[0])  # type: ignore[arg-type]


@pytest.mark.parametrize("loss", ["removed", "damaged", "older"])
def test_a_synced_file_lost_while_the_agent_runs_is_written_again_and_a_restart_keeps_the_list(
    tmp_path: Path, loss: str
) -> None:
    """review19f R3: the list members handed this board is in force from peer/revoked.synced.json; the file is
    removed (by hand, a disk problem), damaged, or an older list is copied over it. Before, the board went on
    enforcing and advertising the list while its disk held none (or an older one): the next restart failed closed
    (503 for every card) or enforced less. Now the next advert finds the loss and writes the list in force again."""
    listed, _, synced = lists_at(tmp_path)
    listed.write_bytes(signed(90, [A]))  # the operator's own, older list stays as it is
    revs, clock = revocations_at(tmp_path), [100.0]
    assert revs.offer(signed(100, [A, B]), "m") == "accepted" and revs.in_force_from == synced
    sync = _member_sync(revs, clock)
    if loss == "removed":
        synced.unlink()
    else:
        synced.write_bytes(b'{"format": "peerserve-revo' if loss == "damaged" else signed(95, [A]))

    async def scenario() -> None:
        assert sync.advert() == (100, list_digest(frozenset({A, B})))  # still in force and advertised ...
        await _until(lambda: _issued(synced) == 100, 5.0)  # ... and written again, in a thread
        await _until(lambda: sync._restoring is None)

    asyncio.run(scenario())
    assert json.loads(synced.read_text())["issued"] == 100 and state(revs) == [A, B]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["revoked.json", "revoked.stamp.json", "revoked.synced.json"]
    restarted = revocations_at(tmp_path)
    assert state(restarted) == [A, B] and restarted.in_force_from == synced


def test_only_a_lost_list_from_members_is_written_again_and_a_failing_write_is_backed_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The operator's list in force is never copied to the synced file (nor the operator's file written); a write
    that fails (a full disk) is logged and tried again only after the back-off (2 s, 4 s ... up to 300 s), one at a
    time however often the board advertises."""
    listed, _, synced = lists_at(tmp_path)
    listed.write_bytes(signed(90, [A]))
    revs, clock = revocations_at(tmp_path), [100.0]
    sync = _member_sync(revs, clock)
    writes: list[Path] = []
    real = operator_ca.write_synced

    def full_disk(tmp: Path, data: bytes, *args: Any, **kwargs: Any) -> os.stat_result:
        writes.append(tmp)
        raise OSError(28, "No space left on device")

    async def scenario() -> None:
        assert sync.advert() is not None and sync._restoring is None  # the operator's list: nothing to write
        assert not synced.exists() and revs.lost_synced() is None
        monkeypatch.setattr(operator_ca, "write_synced", real)
        assert revs.offer(signed(100, [A, B]), "m") == "accepted"
        synced.unlink()
        monkeypatch.setattr(operator_ca, "write_synced", full_disk)
        for _ in range(50):  # advertised often: one write
            sync.advert()
            await asyncio.sleep(0)
        await _until(lambda: sync._restoring is None)
        assert len(writes) == 1 and sync.restored == 0 and sync.restores.failures == 1
        clock[0] += 1.9
        sync.advert()
        assert sync._restoring is None and len(writes) == 1  # backed off 2 s
        clock[0] += 0.2
        monkeypatch.setattr(operator_ca, "write_synced", real)
        sync.advert()
        await _until(lambda: sync._restoring is None)
        assert sync.restored == 1 and sync.restores.failures == 0
        clock[0] += 5.0
        synced.write_bytes(synced.read_bytes())  # the same list written again by hand (a new stat): re-read ...
        os.utime(synced, ns=(1, 1))
        assert sync.advert() is not None and sync._restoring is None  # ... and nothing is lost: nothing written
        assert sync.restored == 1 and revs.lost_synced() is None

    asyncio.run(scenario())
    assert "cannot write the revocation list in force (signed at 100)" in caplog.text
    assert state(revocations_at(tmp_path)) == [A, B] and json.loads(listed.read_text())["issued"] == 90


# -- review19a F4: one fetch slot, a deadline and pre-emption ---------------------------------------------------------
def _chooser(plan: FetchPlan, own: int) -> Callable[[str, int, float], str | None]:
    """``plan.choose`` as a member advertising ``stamp`` at ``now`` makes it run, on a board whose own list is signed
    at ``own``; a stamp's backers are the members whose last advert named it."""
    adverts: dict[str, int] = {}

    def backers(stamp: int) -> int:
        return sum(1 for s in adverts.values() if s == stamp)

    def choose(member: str, stamp: int, now: float) -> str | None:
        adverts[member] = stamp
        return plan.choose(member, (stamp, "0" * 32), (own, "1" * 32), now, backers)

    return choose


def test_a_stamp_several_members_advertise_pre_empts_a_lone_advertisers_fetch_and_nothing_else_does() -> None:
    plan = FetchPlan(interval_s=1.0, backoff_max_s=300.0)
    choose = _chooser(plan, 10)
    assert choose("liar", 10**12, 0.0) == FETCH and plan.in_flight == ("liar", 10**12)
    assert choose("h1", 40, 0.0) is None  # one member's stamp against one member's: the fetch under way stays
    assert choose("liar", 10**12, 0.0) is None  # (its own advert again: asked once an interval)
    assert choose("h2", 40, 0.0) == PREEMPT and plan.in_flight == ("h2", 40)  # two members back 40
    assert plan.backoff("liar", 0.0) == 2.0  # backed off as after a failure
    ticket = plan.ticket
    plan.done("liar", False, 0.5, ticket - 1)  # the pre-empted fetch's end changes nothing
    assert plan.in_flight == ("h2", 40) and plan.members["liar"].failures == 1
    assert choose("h3", 40, 0.1) is None  # the same stamp as the fetch under way: nothing
    assert choose("h4", 41, 0.1) is None  # a newer stamp one member advertises does not pre-empt a backed one
    assert choose("h5", 41, 0.1) is None  # nor one two members do: 40 has three (review20a M1)
    assert choose("h6", 41, 0.1) is None  # a tie: nothing
    assert choose("h7", 41, 0.1) == PREEMPT and plan.in_flight == ("h7", 41)  # four against three
    assert plan.members["h2"].failures == 0  # h1 and h3 backed its stamp: not backed off
    plan.preemptible = False  # its list is being checked and written: nothing pre-empts it any more
    assert all(choose(f"x{i}", 42, 0.2) is None for i in range(8))
    plan.done("h7", True, 0.3, plan.ticket)
    assert plan.in_flight is None and plan.backoff("h7", 0.3) == 1.0
    choose = _chooser(plan, 10)  # the adverts heard so far forgotten, the plan kept
    assert choose("h1", 50, 5.0) == FETCH
    assert choose("h1", 51, 5.0) is None  # a member does not pre-empt its own fetch
    assert choose("liar", 51, 1.0) is None  # backed by h1 and itself, but backed off (until 2.0: asked at 1.0)
    assert plan.in_flight == ("h1", 50)


def test_a_pre_empted_fetch_is_counted_and_the_chain_of_pre_emptions_is_bounded() -> None:
    """Colluding members may back a stamp they cannot back with a list: each pre-emption is by a stamp more members
    advertise than the one being fetched, from a member not backed off, so with k such members and any number of
    stamps the pre-emptions within one interval are at most k."""
    adverts: dict[str, int] = {}
    plan = FetchPlan(interval_s=1.0, backoff_max_s=300.0)

    def backers(stamp: int) -> int:
        return sum(1 for s in adverts.values() if s == stamp)

    liars = [f"l{i}" for i in range(8)]
    assert plan.choose("h1", (40, "0" * 32), None, 0.0, backers) == FETCH
    adverts["h1"] = adverts["h2"] = 40
    pre_empted, stamp = 0, 40
    for _ in range(50):  # every liar advertises a newer stamp than the last, with a partner, every round
        stamp += 1
        for liar in liars:
            adverts[liar] = stamp
        for liar in liars:
            if plan.choose(liar, (stamp, "0" * 32), None, 0.5, backers) == PREEMPT:
                pre_empted += 1
    assert pre_empted <= len(liars)
    assert all(plan.backoff(liar, 0.5) > 0.0 for liar in liars)


def test_the_whole_fetch_is_bounded_by_its_deadline_whatever_the_transport_does(tmp_path: Path) -> None:
    """review19a F4: each page's timeout is the transport's to keep; one that keeps none (here httpx's ASGI transport;
    per read, a trickled page) held the one slot for ever. Now the fetch itself ends at ``timeout_s``."""
    app, asked = FastAPI(), asyncio.Event()

    @app.get(wire.ROUTE_REVOCATIONS)
    async def trickled(request: Request) -> Response:
        asked.set()
        await asyncio.sleep(3600)  # a page that never ends
        return Response(b"{}")

    async def scenario() -> None:
        http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app))
        try:
            _, sync = _fetcher(tmp_path, http)
            sync.timeout_s = 0.3
            sync.heard("f", (70, "0" * 32))
            assert sync.plan.in_flight == ("f", 70)
            await _until(lambda: sync.plan.in_flight is None, 20.0)
            assert asked.is_set() and sync.outcomes["failed"] == 1 and sync.plan.backoff("f", sync.clock()) > 1.0
            await sync.peers.close()
        finally:
            await http.aclose()

    asyncio.run(scenario())


def trickling_member() -> tuple[FastAPI, asyncio.Event]:
    """A member's app whose revocation list never finishes arriving (it holds the fetch), and an event set once
    it is asked."""
    slow, asked = FastAPI(), asyncio.Event()

    @slow.get(wire.ROUTE_REVOCATIONS)
    async def trickled(request: Request) -> Response:
        asked.set()
        await asyncio.sleep(3600)
        return Response(b"{}")

    return slow, asked


def test_a_lone_trickling_member_is_pre_empted_by_a_stamp_two_members_advertise(tmp_path: Path) -> None:
    """review19a F4: member "t" advertises a stamp it cannot back (10**12) and trickles its pages, holding the one
    fetch slot; "f" and "h" advertise the operator's list (40). Before, the board waited for t's fetch to fail (10 s,
    every back-off step). Now the second advert of 40 pre-empts it: the list comes from f at once."""
    slow, asked = trickling_member()

    async def scenario() -> None:
        agent, f_http = _serving_board(tmp_path)
        assert agent.identity is not None and agent.identity.operator is not None
        served = agent.identity.operator.revocations.advert()
        assert served is not None
        http = httpx.AsyncClient(mounts={"http://t": httpx.ASGITransport(app=slow), "http://f": f_http._transport})
        try:
            ident, _ = _fetcher(tmp_path, http)
            assert ident.operator is not None
            sync = RevocationSync(ident.operator.revocations, PeerClient(ident, lambda url: None, http=http),
                                  lambda m: f"http://{m}" if m in ("t", "f", "h") else None)  # fmt: skip
            sync.heard("t", (10**12, "0" * 32))
            await agent_aio_wait(asked.wait(), 10.0)
            sync.heard("h", served)  # one member backs 40: t's fetch stays
            assert sync.plan.in_flight == ("t", 10**12)
            sync.heard("f", served)  # two do: f's fetch replaces t's
            assert sync.plan.in_flight == ("f", served[0])
            await _until(lambda: sync.plan.in_flight is None, 20.0)
            assert sync.outcomes["accepted"] == 1 and sync.outcomes["preempted"] == 1
            assert sorted(ident.operator.revocations.current()) == [A, B, C]
            assert sync.plan.backoff("t", sync.clock()) > 1.0
            await sync.peers.close()
        finally:
            await http.aclose()
            await f_http.aclose()
            await agent.stop()

    asyncio.run(scenario())
