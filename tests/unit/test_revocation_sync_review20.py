"""The revocation list between boards: review20a's findings (fix20a). M1: the stamp being the advertiser's to choose,
two colluding members advertising a made-up newer one cancelled every honest fetch that more members backed; now a
fetch is pre-empted only by a stamp more members advertise. L1: nothing a record write raises wedges the record
thread. L2: a rewrite of the synced file that a newer list made needless is no failure. L3: an advert costs two
stats."""

from __future__ import annotations

import asyncio
import json
import random
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent import operator_ca
from agent.aio import wait_for as agent_aio_wait
from agent.peer_client import PeerClient
from agent.revocation_sync import FETCH, PREEMPT, FetchPlan, RevocationSync
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
from tests.unit.test_revocation_sync_review19 import _chooser, _member_sync, _until, trickling_member

FAKE, HONEST, OURS = 10**12, 100, 50  # the liars' made-up stamp, the operator's newer list, the list in force


def _collude(seed: int, download_s: float, horizon_s: float = 600.0) -> tuple[float | None, int, int]:
    """review20a's collude.py as a pure simulation with the real FetchPlan and the clock passed in: members c1 and c2
    advertise FAKE (a fetch of it trickles until the 10 s deadline and fails), h1..h3 the operator's list HONEST (a
    ``download_s`` fetch, accepted); every member advertises every 0.2 s, in an order the seed shuffles. Returns when
    the honest list was in force (None: not within ``horizon_s``), the pre-emptions of an honest fetch and all
    pre-emptions."""
    adverts = {"c1": FAKE, "c2": FAKE, "h1": HONEST, "h2": HONEST, "h3": HONEST}
    rng, plan = random.Random(seed), FetchPlan()
    now, under_way, ends_at = 0.0, None, 0.0
    honest_cancelled = preempted = 0

    def backers(stamp: int) -> int:
        return sum(1 for s in adverts.values() if s == stamp)

    while now < horizon_s:
        order = list(adverts.items())
        rng.shuffle(order)
        for member, stamp in order:
            busy = plan.in_flight
            decision = plan.choose(member, (stamp, "0" * 32), (OURS, "1" * 32), now, backers)
            if decision == PREEMPT:
                preempted += 1
                honest_cancelled += busy is not None and busy[1] == HONEST
            if decision in (FETCH, PREEMPT):
                under_way, ends_at = (member, stamp, plan.ticket), now + (10.0 if stamp == FAKE else download_s)
        if under_way is not None and now >= ends_at:
            member, stamp, ticket = under_way
            under_way = None
            plan.done(member, stamp == HONEST, now, ticket)
            if stamp == HONEST:
                return now, honest_cancelled, preempted
        now = round(now + 0.2, 6)
    return None, honest_cancelled, preempted


@pytest.mark.parametrize("download_s", [1.0, 3.0])
def test_two_colluding_members_never_cancel_a_fetch_three_members_back(download_s: float) -> None:
    """review20a M1: before, a stamp two members advertised pre-empted any OLDER one, so two colluders advertising
    10**12 cancelled the honest fetch that three members backed each time one of them was off back-off (and backed
    the honest member off as if it had failed): the honest list was in force after 85.2 s (83.2 s with a 1 s
    download), in every seed. Now the honest fetch is never cancelled and the list is in force once one download
    has run (the liars' fetch, when it came first, is the one pre-empted)."""
    for seed in range(20):
        in_force_at, honest_cancelled, preempted = _collude(seed, download_s)
        assert honest_cancelled == 0, seed
        assert in_force_at is not None and in_force_at <= download_s + 0.5, (seed, in_force_at)
        assert preempted <= 1, seed


def test_a_fetch_is_pre_empted_only_by_a_stamp_more_members_advertise_and_only_a_lone_one_is_backed_off() -> None:
    plan = FetchPlan(interval_s=1.0, backoff_max_s=300.0)
    choose = _chooser(plan, OURS)
    assert choose("c1", FAKE, 0.0) == FETCH and choose("c2", FAKE, 0.0) is None  # two liars back FAKE
    assert choose("h1", HONEST, 0.0) is None and choose("h2", HONEST, 0.0) is None  # 2 against 2: it stays
    assert choose("h3", HONEST, 0.0) == PREEMPT and plan.in_flight == ("h3", HONEST)  # 3 against 2, older or not
    assert plan.members["c1"].failures == 0 and plan.backoff("c1", 0.0) == 1.0  # c2 backed it: not backed off
    for now in (1.0, 2.0, 5.0):  # the liars off their interval, advertising the newer stamp: nothing cancelled
        assert choose("c1", FAKE, now) is None and choose("c2", FAKE, now) is None
        assert choose("c3", FAKE, now) is None  # a third liar: 3 against 3, a tie pre-empts nothing
    assert plan.in_flight == ("h3", HONEST)
    assert choose("c4", FAKE, 5.0) == PREEMPT  # four liars against three: they are the most (the bound's price)
    assert plan.members["h3"].failures == 0  # h1 and h2 back its stamp: not backed off either
    plan = FetchPlan(interval_s=1.0, backoff_max_s=300.0)
    choose = _chooser(plan, OURS)
    assert choose("liar", FAKE, 0.0) == FETCH  # a lone liar is still pre-empted, and backed off
    assert choose("h1", HONEST, 0.0) is None and choose("h2", HONEST, 0.0) == PREEMPT
    assert plan.members["liar"].failures == 1 and plan.backoff("liar", 0.0) == 2.0


def test_two_colluding_trickling_members_never_cancel_the_honest_fetch(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """review20a M1 through the real fetch: t1 and t2 advertise 10**12 and trickle their pages; h, g and f advertise
    the operator's list (40, served by f). f's advert, the third, pre-empts t1's fetch; the liars advertising again
    while f's list downloads cancel nothing (before, t2 pre-empted it at once: 10**12 > 40 with two backers)."""
    slow, asked = trickling_member()

    members = ("t1", "t2", "h", "g", "f")

    async def scenario() -> None:
        agent, f_http = _serving_board(tmp_path)
        assert agent.identity is not None and agent.identity.operator is not None
        served = agent.identity.operator.revocations.advert()
        assert served is not None
        slow_t = httpx.ASGITransport(app=slow)
        http = httpx.AsyncClient(mounts={"http://t1": slow_t, "http://t2": slow_t, "http://f": f_http._transport})
        try:
            ident, _ = _fetcher(tmp_path, http)
            assert ident.operator is not None
            sync = RevocationSync(ident.operator.revocations, PeerClient(ident, lambda url: None, http=http),
                                  lambda m: f"http://{m}" if m in members else None)  # fmt: skip
            sync.heard("t1", (FAKE, "0" * 32))
            await agent_aio_wait(asked.wait(), 10.0)
            sync.heard("t2", (FAKE, "0" * 32))
            sync.heard("h", served)
            sync.heard("g", served)  # two against two: t1's fetch stays
            assert sync.plan.in_flight == ("t1", FAKE)
            sync.heard("f", served)  # three: f's fetch replaces it
            assert sync.plan.in_flight == ("f", served[0])
            for _ in range(2000):  # the liars advertise again and again while f's list downloads and is written
                if sync.plan.in_flight is None:
                    break
                sync.heard("t1", (FAKE, "0" * 32))
                sync.heard("t2", (FAKE, "0" * 32))
                await asyncio.sleep(0.005)
            assert sync.plan.in_flight is None
            assert sync.outcomes["accepted"] == 1 and sync.outcomes["preempted"] == 1  # only t1's fetch
            assert sorted(ident.operator.revocations.current()) == [A, B, C]
            assert sync.plan.members["t1"].failures == 0  # t2 backed its stamp: pre-empted, not backed off
            await sync.stop()
            await sync.peers.close()
        finally:
            await http.aclose()
            await f_http.aclose()
            await agent.stop()

    asyncio.run(scenario())
    said = [r.getMessage() for r in caplog.records if "gave up fetching" in r.getMessage()]
    assert said == [f"gave up fetching the revocation list signed at {FAKE} from t1 (2 member(s) advertise it) for "
                    "the one signed at 40 that more do: f and 2 other member(s)"]  # fmt: skip


# -- review20a L1: the record thread ---------------------------------------------------------------------------------
def test_a_record_write_that_raises_anything_does_not_wedge_the_record_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Before, a MemoryError (or any bug) in the record thread ended it with ``_recording`` set: every later record
    of an operator's copy was queued and never written, and ``wait_recorded`` never returned True."""
    listed, floor, _ = lists_at(tmp_path)
    listed.write_bytes(signed(90, [A]))
    revs = revocations_at(tmp_path)
    real, calls = operator_ca.write_atomic, []

    def once(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            raise MemoryError("simulated")
        return real(*args, **kwargs)

    monkeypatch.setattr(operator_ca, "write_atomic", once)

    async def scenario() -> None:
        listed.write_bytes(signed(100, [A, B]))
        revs.current()  # its record fails in the thread
        assert await asyncio.to_thread(revs.wait_recorded, 5.0)
        listed.write_bytes(signed(110, [A, B, C]))
        revs.current()
        assert await asyncio.to_thread(revs.wait_recorded, 5.0)

    asyncio.run(scenario())
    assert len(calls) == 2 and not revs._recording and revs._queued is None
    assert json.loads(floor.read_text())["stamps"][revs.ca] == 110
    assert "MemoryError: simulated" in caplog.text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["revoked.json", "revoked.stamp.json"]


# -- review20a L2 and L3: the synced file written again ---------------------------------------------------------------
def test_a_rewrite_a_newer_list_made_needless_is_no_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """review20a L2: the synced file lost list 100 and its rewrite is being written when a member's list 110 is put in
    force; the rewrite is dropped (right), but it counted as a failed write, backing the next real one off (2 s
    doubling to 300 s for repeated drops)."""
    listed, _, synced = lists_at(tmp_path)
    listed.write_bytes(signed(90, [A]))
    revs, clock = revocations_at(tmp_path), [100.0]
    assert revs.offer(signed(100, [A, B]), "m") == "accepted"
    sync = _member_sync(revs, clock)
    synced.unlink()
    real, gate, inside = operator_ca.write_synced, threading.Event(), threading.Event()

    def held(tmp: Path, data: bytes, *args: Any, **kwargs: Any) -> Any:
        if json.loads(data)["issued"] == 100:
            inside.set()
            gate.wait(10.0)
        return real(tmp, data, *args, **kwargs)

    monkeypatch.setattr(operator_ca, "write_synced", held)

    async def scenario() -> None:
        sync.advert()
        await _until(inside.is_set)
        assert revs.offer(signed(110, [A, B, C]), "m2") == "accepted"
        gate.set()
        await _until(lambda: sync._restoring is None)

    asyncio.run(scenario())
    assert sync.restored == 0 and sync.restores.failures == 0 and sync.restores.next_at == 101.0
    assert json.loads(synced.read_text())["issued"] == 110 and state(revs) == [A, B, C]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["revoked.json", "revoked.stamp.json", "revoked.synced.json"]
    assert state(revocations_at(tmp_path)) == [A, B, C]


def test_an_advert_costs_two_stats_when_nothing_is_lost(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """review20a L3: ``keep_synced`` stat'd both files again right after ``advert`` had (4 stats an advert)."""
    listed, _, _ = lists_at(tmp_path)
    listed.write_bytes(signed(90, [A]))
    revs, clock = revocations_at(tmp_path), [100.0]
    assert revs.offer(signed(100, [A, B]), "m") == "accepted"
    sync = _member_sync(revs, clock)
    real, stats = operator_ca._stat_of, []

    def counted(path: Path | None) -> Any:
        stats.append(path)
        return real(path)

    monkeypatch.setattr(operator_ca, "_stat_of", counted)

    async def scenario() -> None:
        for _ in range(3):
            assert sync.advert() is not None and sync._restoring is None

    asyncio.run(scenario())
    assert len(stats) == 6
