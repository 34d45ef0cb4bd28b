"""The operator's revocation list between boards (agent/revocation_sync.py, ``Revocations.offer`` / ``page`` in
agent/operator_ca.py, ``SwimMessage.revocations`` and ``GET /peer/revocations``): the pure decisions with the clock
passed in, what a board does with a list a member hands it (only a newer one signed by its own operator CA is put in
force, through the file, and kept over a restart), and fetches through the real signed peer route, against an honest
board and against a member that serves what it cannot back."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi import FastAPI, Request
from fastapi.responses import Response

from agent import peer_api, revocation_sync
from agent.aio import wait_for as agent_aio_wait
from agent.identity import Identity
from agent.node import NodeAgent
from agent.operator_ca import (
    MAX_REVOCATION_FILE,
    MAX_REVOKED,
    CardError,
    Revocations,
    b64,
    list_digest,
    raw_public,
    sign_revocations,
)
from agent.peer_api import create_peer_app
from agent.peer_client import PeerClient
from agent.revocation_sync import CONFLICT, FETCH, FetchError, FetchPlan, Pages, RevocationSync, take_page
from agent.settings import load_settings
from peerserve import wire
from tests.unit.test_operator_ca import OPERATOR, TOKEN, board

A, B, C = "a" * 32, "b" * 32, "c" * 32


def state(revocations: Revocations) -> Any:
    try:
        return sorted(revocations.current())
    except CardError as exc:
        return exc.status


def signed(stamp: int, cards: list[str], ca: Ed25519PrivateKey = OPERATOR) -> bytes:
    return json.dumps(sign_revocations(ca, stamp, cards)).encode()


# -- FetchPlan (pure) ---------------------------------------------------------------------------------------------
def test_only_a_newer_stamp_is_fetched_and_the_same_stamp_with_other_cards_is_a_conflict() -> None:
    plan = FetchPlan(interval_s=1.0)
    own = (50, list_digest(frozenset({A})))
    assert plan.choose("m", (49, "0" * 32), own, 0.0) is None  # behind us: it fetches ours
    assert plan.choose("m", own, own, 0.0) is None  # the same list
    assert plan.choose("m", (50, "0" * 32), own, 0.0) == CONFLICT  # same stamp, other cards: never fetched
    assert plan.in_flight is None
    assert plan.choose("m", (51, "0" * 32), own, 0.0) == FETCH
    assert plan.in_flight == ("m", 51)
    assert plan.choose("n", (52, "0" * 32), None, 0.0) is None  # one fetch in flight at a time, whoever advertises
    plan.done("m", True, 0.5)
    assert plan.choose("n", (0, "0" * 32), None, 0.5) == FETCH  # no list here: any stamp is newer


def test_a_member_is_asked_at_most_once_an_interval_and_backed_off_after_failures() -> None:
    plan = FetchPlan(interval_s=1.0, backoff_max_s=8.0)
    advert = (60, "0" * 32)
    waits = []
    now = 0.0
    for _ in range(6):  # a liar: advertises a stamp it cannot back, every fetch fails
        assert plan.choose("liar", advert, None, now) == FETCH
        plan.done("liar", False, now)
        waits.append(plan.backoff("liar", now))
        assert plan.choose("liar", advert, None, now + waits[-1] - 0.01) is None  # not before its back-off ends
        now += waits[-1]
    assert waits == [2.0, 4.0, 8.0, 8.0, 8.0, 8.0]  # doubling, up to the cap
    assert plan.choose("honest", advert, None, now) == FETCH  # others are not held back by the liar
    plan.done("honest", True, now)
    assert plan.backoff("honest", now) == 1.0  # a success: the interval alone
    assert plan.choose("liar", advert, None, now) == FETCH
    plan.done("liar", True, now)  # it backed its stamp this time: its failures are forgotten
    assert plan.members["liar"].failures == 0


def test_the_back_off_table_is_bounded() -> None:
    plan = FetchPlan(tracked=3)
    for n in range(10):
        assert plan.choose(f"m{n}", (n + 1, "0" * 32), None, float(n)) == FETCH
        plan.done(f"m{n}", False, float(n))
    assert list(plan.members) == ["m7", "m8", "m9"]


# -- take_page (pure) ---------------------------------------------------------------------------------------------
def page(offset: int, cards: list[str], total: int, stamp: int = 7, signature: str = "sig") -> dict[str, Any]:
    return {"issued": stamp, "signature": signature, "total": total, "offset": offset, "revoked": cards}


def test_pages_make_one_list_and_anything_else_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(revocation_sync, "REVOCATION_PAGE", 2)
    pages = Pages(7)
    take_page(pages, page(0, [A, B], 3))
    assert not pages.complete
    take_page(pages, page(2, [C], 3))
    assert pages.complete and json.loads(pages.text())["revoked"] == [A, B, C]
    bad = [
        page(0, [A, B], 3, stamp=8),  # another stamp than advertised
        page(0, [A, B], 3, stamp=True),  # type: ignore[arg-type]
        page(0, [A, B, C], 3),  # more than a page
        page(0, [A], 3),  # less than a page
        page(1, [A, B], 3),  # out of order
        page(0, [A, B], MAX_REVOKED + 1),  # too long a list
        page(0, [A, "x"], 3),  # not a fingerprint
        page(0, [A, B], 3, signature=""),
        page(0, [A, B], 3, signature="s" * 129),
        [A, B],
    ]
    for answer in bad:
        with pytest.raises(FetchError):
            take_page(Pages(7), answer)
    first = Pages(7)
    take_page(first, page(0, [A, B], 3))
    for answer in (page(2, [C], 4), page(2, [C], 3, signature="other")):  # another list than the first page's
        with pytest.raises(FetchError):
            take_page(first, answer)


def test_the_advert_on_a_swim_message_round_trips_and_is_bounded() -> None:
    msg = wire.SwimMessage("ping", "n1", 1, 1, "https://127.0.0.1:8401", revocations=(5, "0f" * 16))
    assert wire.SwimMessage.parse(msg.to_json()).revocations == (5, "0f" * 16)
    assert "revocations" not in wire.SwimMessage("ping", "n1", 1, 1, "https://127.0.0.1:8401").to_json()
    for value in ([-1, "0" * 32], [2**53 + 1, "0" * 32], [True, "0" * 32], [1, "0" * 31], [1, "G" * 32], [1], "x"):
        data = {**msg.to_json(), "revocations": value}
        with pytest.raises(wire.WireError):
            wire.SwimMessage.parse(data)


# -- Revocations.offer / page ---------------------------------------------------------------------------------------
def lists_at(folder: Path) -> tuple[Path, Path, Path]:
    """The operator's list, the stamp record and the synced list, as an agent's DATA_DIR/peer holds them."""
    return folder / "revoked.json", folder / "revoked.stamp.json", folder / "revoked.synced.json"


def revocations_at(folder: Path) -> Revocations:
    listed, floor, synced = lists_at(folder)
    return Revocations(listed, OPERATOR.public_key(), floor, synced)


def test_a_newer_list_is_put_in_force_through_the_synced_file_and_kept_over_a_restart(tmp_path: Path) -> None:
    listed, _, synced = lists_at(tmp_path)
    revs = revocations_at(tmp_path)
    assert revs.advert() is None and state(revs) == [] and revs.in_force_from is None
    assert revs.offer(signed(10, [A]), "m") == "accepted"  # none here: any signed list is newer
    assert state(revs) == [A] and revs.advert() == (10, list_digest(frozenset({A})))
    assert revs.offer(signed(11, [A, B]), "m") == "accepted"
    assert json.loads(synced.read_text())["issued"] == 11 and revs.in_force_from == synced
    assert not listed.exists()  # the operator's file is never written
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
    restarted = revocations_at(tmp_path)
    assert state(restarted) == [A, B] and restarted.in_force_from == synced
    listed.write_bytes(signed(10, [A]))  # the older list put back after a restart: the synced one is newer
    assert state(revocations_at(tmp_path)) == [A, B]
    synced.unlink()  # ... and with the synced list gone, the recorded stamp refuses it
    assert state(revocations_at(tmp_path)) == 503
    listed.write_bytes(signed(12, [A, B, C]))  # the operator's newer copy wins over the synced one
    synced.write_bytes(signed(11, [A, B]))
    again = revocations_at(tmp_path)
    assert state(again) == [A, B, C] and again.in_force_from == listed


def test_an_operators_copy_landing_while_a_members_list_is_installed_is_never_lost(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """review19a F1/F2: the operator's mv (tmp then rename, as the guide says) of a newer list lands while the board
    installs an older one a member handed it, before or after the install's rename. Before, the install renamed over
    the operator's copy (lost on every board), or kept the operator's file's stat with the member's list in force
    (until a restart). Now the member's list goes to the board's own file and the operator's copy wins either way."""
    real = os.replace
    for after in (False, True):
        folder = tmp_path / f"after-{after}"
        folder.mkdir()
        listed = lists_at(folder)[0]
        listed.write_bytes(signed(100, [A]))
        revs = revocations_at(folder)
        assert state(revs) == [A]
        copied: list[Path] = []

        def racing(src: Any, dst: Any, *args: Any, _after: bool = after, _listed: Path = listed,
                   _copied: list[Path] = copied, **kwargs: Any) -> None:  # fmt: skip
            install = Path(src).name != "operators.tmp" and not _copied  # the board's first rename: its install
            if install and not _after:
                _operators_copy(_listed, _copied)
            real(src, dst, *args, **kwargs)
            if install and _after:
                _operators_copy(_listed, _copied)

        monkeypatch.setattr(os, "replace", racing)
        outcome = revs.offer(signed(101, [A, B]), "m")
        monkeypatch.setattr(os, "replace", real)
        assert copied and outcome in ("accepted", "older")
        assert state(revs) == [A, B, C] and revs.advert() == (102, list_digest(frozenset({A, B, C})))
        assert json.loads(listed.read_text())["issued"] == 102  # the operator's copy is there, as copied
        assert state(revocations_at(folder)) == [A, B, C]  # and after a restart


def _operators_copy(listed: Path, copied: list[Path]) -> None:
    """The operator's copy of a newer list: a temporary name beside it, then a rename over it (os.rename: the test
    above watches os.replace)."""
    mine = listed.with_name("operators.tmp")
    mine.write_bytes(signed(102, [A, B, C]))
    os.rename(mine, listed)
    copied.append(listed)


def test_the_synced_file_in_force_and_its_recorded_stat_cannot_disagree(tmp_path: Path) -> None:
    """review19a F2: the stat kept for the synced file is the one of the file written (a rename keeps it), not a
    stat taken after the rename: whatever replaced the file since is read at the next check."""
    _, _, synced = lists_at(tmp_path)
    revs = revocations_at(tmp_path)
    checked = revs.offer_check(signed(101, [A, B]), "m")
    assert not isinstance(checked, str)
    staged = revs.offer_stage(signed(101, [A, B]), checked)
    assert staged.tmp is not None and staged.tmp.parent == tmp_path and staged.tmp.name != "revoked.synced.json.tmp"
    outcome, record = revs.offer_commit(staged, "m")
    assert outcome == "accepted" and state(revs) == [A, B]
    synced.write_bytes(signed(103, [A, B, C]))  # replaced after the rename, before anything was recorded
    revs.offer_persist(record)
    assert state(revs) == [A, B, C] and revs.advert() == (103, list_digest(frozenset({A, B, C})))
    assert state(revocations_at(tmp_path)) == [A, B, C]


def test_a_same_stamp_pair_after_a_restart_keeps_the_synced_list_that_was_in_force(tmp_path: Path) -> None:
    """review19f R1: the synced file takes only a stamp above the list in force, so when both files hold the same
    stamp with other lists the synced one was in force and the operator's copy was refused. With the stamp record
    behind (a crash between the commit and the record), a restart put the operator's list in force: B unrevoked."""
    listed, _, synced = lists_at(tmp_path)
    revs = revocations_at(tmp_path)
    assert revs.offer(signed(100, [A]), "m") == "accepted"
    checked = revs.offer_check(signed(101, [A, B]), "m")
    assert not isinstance(checked, str)
    outcome, _ = revs.offer_commit(revs.offer_stage(signed(101, [A, B]), checked), "m")  # no offer_persist: a crash
    assert outcome == "accepted" and state(revs) == [A, B]
    mine = listed.with_name("operators.tmp")
    mine.write_bytes(signed(101, [A, C]))  # the operator's copy of another list signed in the same second
    os.rename(mine, listed)
    assert state(revs) == [A, B]  # refused as a conflict while running
    restarted = revocations_at(tmp_path)
    assert state(restarted) == [A, B] and restarted.in_force_from == synced


def test_a_symlinked_operator_list_stays_a_link_and_its_target_is_followed(tmp_path: Path) -> None:
    """review19a F3: the ``revocations`` setting may name a link to an operator-managed file; before, an accepted
    member's list replaced the link by a plain file and the target's later updates were ignored."""
    (tmp_path / "etc").mkdir()
    target, peer = tmp_path / "etc" / "revoked.json", tmp_path / "peer"
    peer.mkdir()
    target.write_bytes(signed(100, [A]))
    link, floor, synced = lists_at(peer)
    link.symlink_to(target)
    revs = Revocations(link, OPERATOR.public_key(), floor, synced)
    assert state(revs) == [A]
    assert revs.offer(signed(101, [A, B]), "m") == "accepted"
    assert link.is_symlink() and json.loads(target.read_text())["issued"] == 100
    target.write_bytes(signed(103, [A, B, C]))  # the operator updates the target
    assert state(revs) == [A, B, C] and revs.in_force_from == link


def test_a_damaged_synced_file_is_not_used_and_temporary_files_a_crash_left_are_removed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    listed, _, synced = lists_at(tmp_path)
    listed.write_bytes(signed(100, [A]))
    left = [tmp_path / f"revoked.synced.json.{i:016x}.tmp" for i in range(3)]
    for path in left:
        path.write_bytes(b"half a list")
    other = tmp_path / "revoked.synced.json.mine.tmp"  # not a name of ours: left alone
    other.write_bytes(b"")
    synced.write_bytes(b'{"format": "peerserve-revocations-v1", "issued": 1')
    with caplog.at_level(logging.ERROR):
        revs = revocations_at(tmp_path)
        assert state(revs) == [A]  # the operator's list in force; the damaged synced one logged, not used
    assert "cannot be used" in caplog.text and not any(p.exists() for p in left) and other.exists()
    assert revs.offer(signed(101, [A, B]), "m") == "accepted"  # a member's newer list replaces it
    assert state(revocations_at(tmp_path)) == [A, B]


def test_a_forged_older_conflicting_damaged_or_oversized_list_is_refused_logged_and_loses_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    listed, floor, _ = lists_at(tmp_path)
    listed.write_bytes(signed(20, [A, B]))
    revs = revocations_at(tmp_path)
    assert state(revs) == [A, B]
    before, record = listed.read_bytes(), floor.read_bytes()
    other_ca = Ed25519PrivateKey.generate()
    tampered = json.loads(signed(30, [A, B]))
    tampered["revoked"] = [A]  # a newer stamp, a card dropped: the signature no longer holds
    offers = {
        "forged": signed(30, [A], other_ca),
        "forged ": json.dumps(tampered).encode(),
        "older": signed(19, [A]),
        "older ": signed(20, [B, A]),  # the same list: nothing to do
        "conflict": signed(20, [A]),
        "damaged": b'{"format": "peerserve-revocations-v1", "issued": 30',
        "oversized": b" " * (MAX_REVOCATION_FILE + 1),
    }
    with caplog.at_level(logging.WARNING):
        for outcome, text in offers.items():
            assert revs.offer(text, "liar") == outcome.strip()
    assert state(revs) == [A, B] and listed.read_bytes() == before and floor.read_bytes() == record
    assert sorted(tmp_path.iterdir()) == sorted([listed, floor])  # nothing written, no temporary file left
    assert caplog.text.count("from liar") >= len(offers)
    assert "conflicting list" in caplog.text


def test_no_list_file_or_an_unusable_list_takes_nothing_from_members(tmp_path: Path) -> None:
    assert Revocations(None, OPERATOR.public_key(), None).offer(signed(5, [A]), "m") == "unusable"
    listed, _, synced = lists_at(tmp_path)  # no data dir: an operator's list, no synced file
    assert Revocations(listed, OPERATOR.public_key(), None).offer(signed(5, [A]), "m") == "unusable"
    listed.write_text("not a list")  # fails closed: every card refused, members' answers too
    revs = revocations_at(tmp_path)
    assert state(revs) == 503 and revs.advert() is None
    assert revs.offer(signed(5, [A]), "m") == "unusable" and listed.read_text() == "not a list"
    assert not synced.exists()


def test_pages_of_the_list_in_force_only(tmp_path: Path) -> None:
    listed = tmp_path / "revoked.json"
    listed.write_bytes(signed(9, [C, A, B]))
    revs = Revocations(listed, OPERATOR.public_key(), tmp_path / "stamp.json")
    assert revs.page(9, 0, 2) == {"issued": 9, "signature": json.loads(listed.read_text())["signature"], "total": 3,
                                  "offset": 0, "revoked": [A, B]}  # fmt: skip
    assert revs.page(9, 2, 2)["revoked"] == [C]  # type: ignore[index]
    assert revs.page(8, 0, 2) is None and revs.page(10, 0, 2) is None


# -- fetches through the signed peer route ----------------------------------------------------------------------------
def _fetcher(tmp_path: Path, http: httpx.AsyncClient) -> tuple[Identity, RevocationSync]:
    ident = Identity("g", TOKEN, board(tmp_path / "g", "g"), operator_ca=OPERATOR.public_key())
    assert ident.operator is not None
    sync = RevocationSync(ident.operator.revocations, PeerClient(ident, lambda url: None, http=http),
                          lambda member: "http://f" if member == "f" else None)  # fmt: skip
    return ident, sync


def _serving_board(tmp_path: Path) -> tuple[NodeAgent, httpx.AsyncClient]:
    """Board "f" holding the list signed at 40 ([A, B, C]), and a client of its peer app (in-process ASGI)."""
    folder = board(tmp_path / "f", "f")
    (folder / "peer" / "revoked.json").write_bytes(signed(40, [A, B, C]))
    agent = NodeAgent(load_settings(env={}, overrides={
        "node_id": "f", "data_dir": str(folder), "cluster_token": TOKEN, "mdns": False, "discovery": False,
        "operator_ca": b64(raw_public(OPERATOR.public_key()))}))  # fmt: skip
    assert agent.identity is not None
    return agent, httpx.AsyncClient(transport=httpx.ASGITransport(app=create_peer_app(agent, agent.identity)))


async def _settle(sync: RevocationSync) -> None:
    while sync.plan.in_flight is not None:
        await asyncio.sleep(0.01)


def test_a_board_fetches_a_newer_list_in_pages_from_a_member_and_a_stamp_it_cannot_back_is_backed_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(peer_api, "REVOCATION_PAGE", 2)  # three pages for three cards, both sides
    monkeypatch.setattr(revocation_sync, "REVOCATION_PAGE", 2)

    async def scenario() -> None:
        agent, http = _serving_board(tmp_path)
        assert agent.identity is not None
        try:
            ident, sync = _fetcher(tmp_path, http)
            served = agent.identity.operator.revocations.advert()  # type: ignore[union-attr]
            assert served is not None
            sync.heard("stranger", (41, "0" * 32))  # not a member: nothing asked
            assert sync.plan.in_flight is None and not sync.heard_from
            sync.heard("f", (45, "0" * 32))  # a stamp it cannot back: 409, backed off
            await _settle(sync)
            assert sync.outcomes["failed"] == 1 and sync.plan.backoff("f", sync.clock()) > 1.0
            sync.plan.members["f"].next_at = 0.0  # (its back-off over)
            sync.heard("f", served)
            await _settle(sync)
            assert sync.outcomes["accepted"] == 1
            assert sorted(ident.operator.revocations.current()) == [A, B, C]  # type: ignore[union-attr]
            assert json.loads((tmp_path / "g" / "peer" / "revoked.synced.json").read_text())["issued"] == 40
            assert not (tmp_path / "g" / "peer" / "revoked.json").exists()
            assert sync.advert() == served  # it advertises the list now
            sync.plan.members["f"].next_at = 0.0
            sync.heard("f", served)  # the same list again: nothing to fetch
            assert sync.plan.in_flight is None
            await sync.peers.close()
        finally:
            await http.aclose()
            await agent.stop()

    asyncio.run(scenario())


def test_a_list_a_member_serves_that_is_not_the_operators_is_refused_and_loses_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A member (carded, its answers signed by its own key) hands out a newer list signed by another CA, then one with
    a card dropped under the operator's signature of the older list: both refused, the list in force stays."""
    liar = Identity("f", TOKEN, board(tmp_path / "f", "f"), operator_ca=OPERATOR.public_key())
    lists = [json.loads(signed(70, [A], Ed25519PrivateKey.generate()))]
    tampered = json.loads(signed(50, [A, B]))
    lists.append({**tampered, "issued": 71, "revoked": [A]})
    app, serving = FastAPI(), [0]

    @app.get(wire.ROUTE_REVOCATIONS)
    async def serve(request: Request) -> Response:
        served = lists[serving[0]]
        cards = served["revoked"]
        body = json.dumps({"issued": served["issued"], "signature": served["signature"], "total": len(cards),
                           "offset": 0, "revoked": cards}).encode()  # fmt: skip
        headers = liar.sign_response("g", 200, request.headers[wire.H_NONCE], body, time.time())
        return Response(body, headers=headers, media_type="application/json")

    async def scenario() -> None:
        http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app))
        try:
            ident, sync = _fetcher(tmp_path, http)
            listed = tmp_path / "g" / "peer" / "revoked.json"
            listed.write_bytes(signed(50, [A, B]))
            assert sorted(ident.operator.revocations.current()) == [A, B]  # type: ignore[union-attr]
            before = listed.read_bytes()
            with caplog.at_level(logging.WARNING):
                for n, stamp in enumerate((70, 71)):
                    serving[0] = n
                    sync.plan.members.pop("f", None)  # (its back-off forgotten)
                    sync.heard("f", (stamp, "0" * 32))
                    await _settle(sync)
                    assert sync.outcomes["forged"] == n + 1
            assert listed.read_bytes() == before
            assert sorted(ident.operator.revocations.current()) == [A, B]  # type: ignore[union-attr]
            assert "refused a revocation list from f" in caplog.text
            await sync.peers.close()
        finally:
            await http.aclose()

    asyncio.run(scenario())


@pytest.mark.parametrize("operator", [True, False])
def test_the_route_answers_pages_within_its_bounds_and_nothing_in_the_token_only_mode(
    tmp_path: Path, operator: bool
) -> None:
    async def scenario() -> None:
        folder = board(tmp_path / "f", "f")
        (folder / "peer" / "revoked.json").write_bytes(signed(40, [A, B]))
        overrides: dict[str, Any] = {"node_id": "f", "data_dir": str(folder), "cluster_token": TOKEN, "mdns": False,
                                     "discovery": False}  # fmt: skip
        if operator:
            overrides["operator_ca"] = b64(raw_public(OPERATOR.public_key()))
        agent = NodeAgent(load_settings(env={}, overrides=overrides))
        assert agent.identity is not None
        http = httpx.AsyncClient(transport=httpx.ASGITransport(app=create_peer_app(agent, agent.identity)))
        ca = OPERATOR.public_key() if operator else None
        ident = Identity("g", TOKEN, board(tmp_path / "g", "g"), operator_ca=ca)
        client = PeerClient(ident, lambda url: None, http=http)

        async def ask(**params: Any) -> int:
            status, _ = await client.call("f", "http://f", "GET", wire.ROUTE_REVOCATIONS, params)
            return status

        try:
            if not operator:
                assert await ask(stamp=40) == 404
                return
            assert await ask(stamp=40, offset=MAX_REVOKED + 1) == 400
            assert await ask(stamp=-1) == 400
            assert await ask(stamp=41) == 409  # not the list in force
            started, served = time.monotonic(), 0
            while (status := await ask(stamp=40, offset=0)) == 200 and served < 4 * peer_api.REVOCATION_BURST:
                served += 1
            refilled = peer_api.REVOCATION_RATE * (time.monotonic() - started) + 1
            assert status == 429  # the three above took from the burst too; refilled at the rate meanwhile
            assert peer_api.REVOCATION_BURST - 3 <= served <= peer_api.REVOCATION_BURST - 3 + refilled
        finally:
            await client.close()
            await http.aclose()
            await agent.stop()

    asyncio.run(scenario())


def test_a_cancelled_fetch_releases_the_fetch_slot(tmp_path: Path) -> None:
    """review19a F5: a fetch cancelled while it waits on a member (``stop``) gives the one fetch slot back, or this
    board would never fetch a list again."""
    app, asked = FastAPI(), asyncio.Event()

    @app.get(wire.ROUTE_REVOCATIONS)
    async def never(request: Request) -> Response:
        asked.set()
        await asyncio.sleep(3600)  # a member that never answers the page
        return Response(b"{}")

    async def scenario() -> None:
        http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app))
        try:
            _, sync = _fetcher(tmp_path, http)
            sync.heard("f", (70, "0" * 32))
            assert sync.plan.in_flight == ("f", 70)
            await agent_aio_wait(asked.wait(), 5.0)
            await sync.stop()
            assert sync.plan.in_flight is None and sync.outcomes["failed"] == 1
            sync.plan.members["f"].next_at = 0.0  # (its back-off over)
            assert sync.plan.choose("f", (70, "0" * 32), sync.advert(), sync.clock()) == FETCH
            await sync.peers.close()
        finally:
            await http.aclose()

    asyncio.run(scenario())


def test_a_fetched_list_is_built_checked_and_written_off_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """review19a F6: the list's text, its check and every write with its fsync (the list, its folder, the stamp
    record) run in a thread; only the commit (the stamp comparison, the rename, the list in force) on the loop."""
    synced_at = tmp_path / "g" / "peer"
    threads: dict[str, set[int]] = {"fsync": set(), "text": set()}
    fsync, text = os.fsync, Pages.text

    def fsync_seen(fd: int) -> None:
        if os.readlink(f"/proc/self/fd/{fd}").startswith(str(synced_at)):  # the fetching board's files only
            threads["fsync"].add(threading.get_ident())
        fsync(fd)

    def text_seen(pages: Pages) -> bytes:
        threads["text"].add(threading.get_ident())
        return text(pages)

    monkeypatch.setattr(os, "fsync", fsync_seen)
    monkeypatch.setattr(Pages, "text", text_seen)

    async def scenario() -> None:
        agent, http = _serving_board(tmp_path)
        assert agent.identity is not None
        try:
            ident, sync = _fetcher(tmp_path, http)
            threads["fsync"].clear()  # (the board's own files written when it started)
            sync.heard("f", agent.identity.operator.revocations.advert())  # type: ignore[union-attr]
            await _settle(sync)
            assert sync.outcomes["accepted"] == 1
            assert sorted(ident.operator.revocations.current()) == [A, B, C]  # type: ignore[union-attr]
            loop = threading.get_ident()
            assert threads["text"] and loop not in threads["text"]
            assert threads["fsync"] and loop not in threads["fsync"]
            await sync.peers.close()
        finally:
            await http.aclose()
            await agent.stop()

    asyncio.run(scenario())


def test_cluster_shows_the_stamps_of_current_members_only(tmp_path: Path) -> None:
    """review19a F7: a member that died, left or was revoked keeps its last advert in ``heard_from`` (bounded), but
    /cluster (``members``) lists current members only."""
    alive = {"m1", "m2"}
    lists_at(tmp_path)[0].write_bytes(signed(50, [A]))
    revs = revocations_at(tmp_path)
    sync = RevocationSync(revs, None, lambda m: f"http://{m}" if m in alive else None)  # type: ignore[arg-type]
    for member in ("m1", "m2"):
        sync.heard(member, revs.advert())  # the list in force here: nothing to fetch
    assert sync.members() == {"m1": 50, "m2": 50}
    alive.discard("m1")  # m1 is dead (or revoked, or left)
    assert sync.members() == {"m2": 50} and "m1" in sync.heard_from
