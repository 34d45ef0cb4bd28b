"""A valid operator card re-pins (agent/identity.py ``Identity._repin_from``, agent/operator_ca.py ``PinCards``): a
re-imaged board (new node key, new card for its id, signed later by the operator's CA) is admitted by boards that
pinned its old key, with no 'peerserve pins forget'; nobody else moves a pin, and never back."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.identity import AuthError, Card, Identity, derive_ca_key, edit_pin, read_pins
from agent.operator_ca import PinCards, sign_revocations
from tests.unit.test_operator_ca import BODY, NOW, OPERATOR, TOKEN, board, member, send


def imaged(tmp_path: Path, name: str, node_id: str, days: float) -> Identity:
    """``node_id`` on a freshly imaged data dir ``name`` (a new node key) with a card valid ``days``."""
    return Identity(node_id, TOKEN, board(tmp_path / name, node_id, days=days), operator_ca=OPERATOR.public_key())


def pinned(receiver: Identity, node_id: str) -> bytes:
    return receiver.pins.current()[node_id]


def test_a_reimaged_board_with_a_newer_card_moves_the_pin(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    receiver = member(tmp_path, "f")
    old = member(tmp_path, "m")  # card valid 30 days
    assert send(old, receiver) == "m" and pinned(receiver, "m") == old.public_key
    new = imaged(tmp_path, "m-reimaged", "m", days=31)  # signed later: expires later
    with caplog.at_level(logging.INFO):
        assert send(new, receiver) == "m"  # no 'pins forget'
    assert pinned(receiver, "m") == new.public_key == read_pins(tmp_path / "f" / "peer" / "pins.json")["m"]
    assert receiver.pins.moved == 1 and "re-pinned node m" in caplog.text and "moving the pin" in caplog.text
    # never back: the old key's (older) card is refused as any other key for a pinned id
    with pytest.raises(AuthError, match="belongs to another key") as refused:
        send(old, receiver)
    assert refused.value.status == 403 and pinned(receiver, "m") == new.public_key
    # the answers and the relayed statements of the new key pass too; the old key's do not
    card, sig = new.sign_detached(b"s")
    assert receiver.verify_detached(card, sig, b"s", NOW) == "m"
    card, sig = old.sign_detached(b"s")
    with pytest.raises(AuthError, match="belongs to another key"):
        receiver.verify_detached(card, sig, b"s", NOW)
    assert receiver.pins.moved == 1


def test_the_record_of_the_pinned_keys_card_survives_a_restart(tmp_path: Path) -> None:
    receiver = member(tmp_path, "f")
    old = member(tmp_path, "m")
    assert send(old, receiver) == "m"
    receiver = Identity("f", TOKEN, tmp_path / "f", operator_ca=OPERATOR.public_key())  # restarted meanwhile
    assert receiver.pin_cards is not None and receiver.pin_cards.get("m") == (old.public_key, old.board.expires)  # type: ignore[union-attr]
    new = imaged(tmp_path, "m-reimaged", "m", days=31)
    assert send(new, receiver) == "m" and pinned(receiver, "m") == new.public_key
    again = Identity("f", TOKEN, tmp_path / "f", operator_ca=OPERATOR.public_key())
    with pytest.raises(AuthError, match="belongs to another key"):  # after a restart too: never back
        send(old, again)


def test_a_token_holder_without_a_card_cannot_repin(tmp_path: Path) -> None:
    receiver = member(tmp_path, "f")
    old = member(tmp_path, "m")
    assert send(old, receiver) == "m"
    minted = Identity("m", TOKEN, tmp_path / "minted")  # the token's CA signs its card; no operator card
    with pytest.raises(AuthError, match="shows no board card"):
        send(minted, receiver)
    assert pinned(receiver, "m") == old.public_key and receiver.pins.moved == 0
    # nor with the card of another board (the operator signed it for another key)
    other = imaged(tmp_path, "m-other", "m", days=60)
    forged = Identity("m", TOKEN, tmp_path / "minted")
    forged.card = Card.issue(derive_ca_key(TOKEN), "m", forged.public_key, other.board.raw())  # type: ignore[union-attr]
    forged.card_text = forged.card.encode()
    with pytest.raises(AuthError, match="another key"):
        send(forged, receiver)
    assert pinned(receiver, "m") == old.public_key and receiver.pins.moved == 0


def test_a_revoked_newer_card_cannot_repin(tmp_path: Path) -> None:
    receiver = member(tmp_path, "f")
    old = member(tmp_path, "m")
    assert send(old, receiver) == "m"
    new = imaged(tmp_path, "m-stolen", "m", days=31)
    listed = tmp_path / "f" / "peer" / "revoked.json"
    listed.write_text(json.dumps(sign_revocations(OPERATOR, 1, [new.board.fingerprint])))  # type: ignore[union-attr]
    with pytest.raises(AuthError, match="revoked"):
        send(new, receiver)
    assert pinned(receiver, "m") == old.public_key and receiver.pins.moved == 0


def test_an_equal_or_older_card_for_another_key_does_not_move_the_pin(tmp_path: Path) -> None:
    receiver = member(tmp_path, "f")
    old = member(tmp_path, "m")  # 30 days
    assert send(old, receiver) == "m"
    for name, days in (("m-same", 30), ("m-older", 29)):
        other = imaged(tmp_path, name, "m", days=days)
        with pytest.raises(AuthError, match="belongs to another key"):
            send(other, receiver)
    assert pinned(receiver, "m") == old.public_key and receiver.pins.moved == 0


def test_two_valid_cards_for_one_id_do_not_make_the_pin_flip_flop(tmp_path: Path) -> None:
    """An operator mistake: two boards carded for one id (later expiry for b). The pin moves to b once, then stays."""
    receiver = member(tmp_path, "f")
    a, b = imaged(tmp_path, "a", "m", days=30), imaged(tmp_path, "b", "m", days=31)
    assert send(a, receiver) == "m"
    results = []
    for sender in (b, a, b, a, a, b):
        try:
            results.append(send(sender, receiver) == "m")
        except AuthError:
            results.append(False)
    assert results == [True, False, True, False, False, True]
    assert pinned(receiver, "m") == b.public_key and receiver.pins.moved == 1


def test_no_record_of_the_pinned_keys_card_means_no_move(tmp_path: Path) -> None:
    """A pin made in the token-only mode (or whose record was lost) is moved by an operator only ('pins forget')."""
    receiver = member(tmp_path, "f")
    old = member(tmp_path, "m")
    assert send(old, receiver) == "m"
    (tmp_path / "f" / "peer" / "pin-cards.json").write_text("{not json")
    receiver = Identity("f", TOKEN, tmp_path / "f", operator_ca=OPERATOR.public_key())  # logs, does not crash
    assert receiver.pin_cards is not None and len(receiver.pin_cards) == 0
    with pytest.raises(AuthError, match="belongs to another key"):
        send(imaged(tmp_path, "m-new", "m", days=31), receiver)
    assert send(old, receiver) == "m"  # the pinned key shows its card again: the record is back
    assert send(imaged(tmp_path, "m-newer", "m", days=32), receiver) == "m"


def test_the_token_only_mode_never_repins(tmp_path: Path) -> None:
    receiver = Identity("f", TOKEN, tmp_path / "f")
    old, new = Identity("m", TOKEN, tmp_path / "m"), Identity("m", TOKEN, tmp_path / "m2")
    assert send(old, receiver) == "m"
    with pytest.raises(AuthError, match="belongs to another key"):
        send(new, receiver)
    assert receiver.pin_cards is None and not (tmp_path / "f" / "peer" / "pin-cards.json").exists()


def test_the_move_on_an_event_loop_is_written_off_it(tmp_path: Path) -> None:
    """The awaited paths wait for the move in the pin writer thread; a relayed statement (synchronous) starts it and
    is refused this once (503), as a first contact."""
    receiver = member(tmp_path, "f")
    old = member(tmp_path, "m")
    assert send(old, receiver) == "m"
    new = imaged(tmp_path, "m-new", "m", days=31)
    newer = imaged(tmp_path, "m-newer", "m", days=32)

    async def main() -> None:
        headers = dict(new.sign_request("f", "POST", "/election/message", BODY, NOW).headers)
        target = "/election/message"
        assert await receiver.verify_request_async(headers, "POST", target, BODY, NOW, "10.0.0.9", mono=NOW) == "m"
        assert pinned(receiver, "m") == new.public_key
        card, sig = newer.sign_detached(b"s")
        with pytest.raises(AuthError, match="being pinned") as busy:
            receiver.verify_detached(card, sig, b"s", NOW)
        assert busy.value.status == 503
        while receiver.pins._writing:
            await asyncio.sleep(0.01)
        assert receiver.verify_detached(card, sig, b"s", NOW) == "m"

    asyncio.run(main())
    assert pinned(receiver, "m") == newer.public_key and receiver.pins.moved == 2
    from agent.identity import _writer

    _writer().submit(lambda: None).result()  # the record's write (queued behind) has landed
    saved = json.loads((tmp_path / "f" / "peer" / "pin-cards.json").read_text())["cards"]
    assert saved["m"] == [newer.public_key.hex(), newer.board.expires]  # type: ignore[union-attr]


def test_the_record_is_bounded(tmp_path: Path) -> None:
    path = tmp_path / "pin-cards.json"
    cards = PinCards(path, limit=3)
    for i in range(5):
        cards.shown(f"n{i}", bytes([i]) * 32, 100 + i)
    assert len(cards) == 3 and cards.get("n0") is None and cards.get("n4") == (bytes([4]) * 32, 104)
    cards.shown("n2", bytes([2]) * 32, 50)  # an older card of the same key changes nothing (and writes nothing)
    assert cards.get("n2") == (bytes([2]) * 32, 102)
    again = PinCards(path, limit=3)
    assert [again.get(f"n{i}") for i in range(5)] == [None, None, *(cards.get(f"n{i}") for i in range(2, 5))]
    assert len(PinCards(path, limit=2)) == 2  # a file written under a larger bound is cut on reading


@pytest.mark.parametrize("by_hand", ["set", "forget"])
def test_a_pin_moved_by_hand_is_not_moved_back_by_the_old_keys_card(tmp_path: Path, by_hand: str) -> None:
    """review16d F3: a renewal with fewer days moves nothing, so the operator re-pins by hand ('pins set m --key K2'
    or 'pins forget m'); the record then held K2's earlier expiry and the old key's unrevoked card (later) moved the
    pin back at its next message, refusing the operator's K2. The record keeps the later of the two expiries."""
    receiver = member(tmp_path, "f")
    old = member(tmp_path, "m", days=90)
    assert send(old, receiver) == "m"
    new = imaged(tmp_path, "m-new", "m", days=30)
    with pytest.raises(AuthError, match="belongs to another key"):
        send(new, receiver)  # an earlier expiry: no move, as documented
    edit_pin(tmp_path / "f" / "peer" / "pins.json", "m", new.public_key if by_hand == "set" else None)
    assert send(new, receiver) == "m" and pinned(receiver, "m") == new.public_key
    assert receiver.pin_cards is not None and receiver.pin_cards.get("m") == (new.public_key, old.board.expires)  # type: ignore[union-attr]
    with pytest.raises(AuthError, match="belongs to another key"):
        send(old, receiver)  # never back
    assert send(new, receiver) == "m" and receiver.pins.moved == 0
    again = Identity("f", TOKEN, tmp_path / "f", operator_ca=OPERATOR.public_key())
    with pytest.raises(AuthError, match="belongs to another key"):
        send(old, again)  # after a restart too
    assert send(imaged(tmp_path, "m-later", "m", days=91), again) == "m"  # a card later than both still moves it


def test_record_changes_while_a_write_is_queued_join_it(tmp_path: Path) -> None:
    """review16d F7: each change serialised the whole record on the loop and queued its own snapshot (N boards
    meeting first: N snapshots). Now a change marks the record dirty; the one queued job writes the latest state."""
    path = tmp_path / "pin-cards.json"
    queued: list[Callable[[], None]] = []
    cards = PinCards(path, run=queued.append)
    for i in range(500):
        cards.shown(f"n{i}", bytes([i % 256]) * 32, 1000 + i)
    assert len(queued) == 1 and not path.exists()  # nothing serialised or written on the caller's side
    queued.pop()()
    assert cards.writes == 1 and len(PinCards(path)) == 500 and PinCards(path).get("n499") == (bytes([243]) * 32, 1499)
    cards.shown("n0", bytes([0]) * 32, 5000)  # a change after the write: one more job, the latest state again
    cards.shown("n1", bytes([1]) * 32, 5001)
    assert len(queued) == 1
    queued.pop()()
    assert PinCards(path).get("n0") == (bytes([0]) * 32, 5000) and PinCards(path).get("n1") == (bytes([1]) * 32, 5001)
    assert cards.writes == 2


def test_record_writes_in_the_writer_thread_stay_bounded(tmp_path: Path) -> None:
    """The same through the real pin writer thread, changes made from an event loop as the agent makes them."""
    from agent.identity import _off_loop, _writer

    path = tmp_path / "pin-cards.json"
    cards = PinCards(path, run=_off_loop)
    gate = threading.Event()
    _writer().submit(gate.wait)  # the writer busy: every change below lands while the first write is queued

    async def change() -> None:
        for i in range(300):
            cards.shown(f"n{i}", bytes([i % 256]) * 32, 1000 + i)

    try:
        asyncio.run(change())
    finally:
        gate.set()
    _writer().submit(lambda: None).result()
    assert cards.writes == 1 and len(PinCards(path)) == 300
