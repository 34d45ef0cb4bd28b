"""The revocation list between boards: what session 19's reviews left (trust20a). review19f R4: the event loop never
waits on the stamp record's disk I/O; R3: the synced file follows the list in force; review19a F4: one member cannot
hold the one fetch slot past the fetch's deadline, and a stamp two members advertise pre-empts a lone one's."""

from __future__ import annotations

import asyncio
import json
import os
import threading
from pathlib import Path

import pytest

from tests.unit.test_revocation_sync import A, B, lists_at, revocations_at, signed, state


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
