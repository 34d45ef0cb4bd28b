"""Review16d's findings on the revocation list's stamps (agent/ca_cli.py ``_stamp``, agent/operator_ca.py
``Revocations``): each list a CA writes is stamped strictly above the last, whatever the operator's clock says; a
board takes a list with the same stamp as the one it accepted only if it names the same cards, live and after a
restart; and a stamp record that cannot be read fails closed and is never written over."""

from __future__ import annotations

import builtins
import json
import logging
import os
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent import ca_cli
from agent.operator_ca import (
    STAMP_FORMAT,
    CardError,
    Revocations,
    list_digest,
    parse_operator_ca,
    read_revocations,
    sign_revocations,
)
from peerserve.cli import main
from tests.unit.test_operator_ca_clusters import _fingerprint, _request, _sign

A, B = "a" * 32, "b" * 32


def state(revocations: Revocations) -> Any:
    try:
        return sorted(revocations.current())
    except CardError as exc:
        return exc.status


def clock(monkeypatch: pytest.MonkeyPatch, now: float) -> None:
    """The operator machine's clock (only ca_cli's) reads ``now``."""
    monkeypatch.setattr(ca_cli, "time", SimpleNamespace(time=lambda: now, gmtime=time.gmtime, strftime=time.strftime))


def test_each_list_is_stamped_above_the_last_whatever_the_clock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """F1: a list signed later on a clock 1000 s behind was ignored by running boards and failed restarted ones closed;
    F2: two lists in one second tied, and the first (revoking fewer) put back was taken over the second."""
    ca = tmp_path / "ca"
    assert main(["ca", "init", str(ca)]) == 0
    for node in ("n1", "n2", "n3", "n4"):
        assert _sign(ca, _request(tmp_path, monkeypatch, node, node), tmp_path / f"{node}.card") == 0
    public = parse_operator_ca(str(ca / "ca.pub"))
    listed, floor = tmp_path / "board" / "revoked.json", tmp_path / "board" / "revoked.stamp.json"
    listed.parent.mkdir()
    running = Revocations(listed, public, floor)

    def revoke(card: str, *extra: str) -> tuple[int, frozenset[str]]:
        assert main(["ca", "revoke", "--ca", str(ca), str(tmp_path / f"{card}.card"), *extra]) == 0
        listed.write_bytes((ca / "revoked.json").read_bytes())  # copied to the board
        return read_revocations(listed.read_bytes(), public)

    clock(monkeypatch, 1_800_000_000)
    first = revoke("n1")
    assert first[0] == 1_800_000_000 and state(running) == [_fingerprint(tmp_path / "n1.card")]
    kept = listed.read_bytes()
    clock(monkeypatch, 1_800_000_000)  # the same second: a scripted loop
    second = revoke("n2")
    assert second[0] == 1_800_000_001 and len(state(running)) == 2
    listed.write_bytes(kept)  # the first put back: not newer, the second stays in force
    assert len(state(running)) == 2
    listed.write_bytes((ca / "revoked.json").read_bytes())
    clock(monkeypatch, 1_799_999_000)  # another operator machine, 1000 s behind
    third = revoke("n3")
    assert third[0] == 1_800_000_002 and len(state(running)) == 3  # applied at once
    assert len(state(Revocations(listed, public, floor))) == 3  # and after a restart: no fail closed
    # 'ca sign --replace' too, and a copy (--revoked) stamped above the CA's list counts
    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_text(json.dumps(sign_revocations(ca_key(ca), 1_900_000_000, [])))
    assert _sign(ca, tmp_path / "n4-n4.req", tmp_path / "n4new.card", "--replace", "--revoked", str(elsewhere)) == 0
    issued, revoked = read_revocations((ca / "revoked.json").read_bytes(), public)
    assert issued == 1_900_000_001 and len(revoked) == 4
    clock(monkeypatch, 2_000_000_000)  # a clock ahead of every list: its own time
    assert revoke("n1")[0] == 2_000_000_000


def ca_key(folder: Path) -> Ed25519PrivateKey:
    return ca_cli._load_ca(folder)  # type: ignore[no-any-return]


def test_a_list_with_the_same_stamp_but_other_cards_is_refused_live_and_after_a_restart(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ca = Ed25519PrivateKey.generate()
    listed, floor = tmp_path / "revoked.json", tmp_path / "revoked.stamp.json"
    listed.write_text(json.dumps(sign_revocations(ca, 50, [A, B])))
    running = Revocations(listed, ca.public_key(), floor)
    assert state(running) == [A, B]
    record = json.loads(floor.read_text())
    assert record["lists"] == {running.ca: list_digest(frozenset({A, B}))}
    listed.write_text(json.dumps(sign_revocations(ca, 50, [A])))  # the same stamp, fewer cards
    with caplog.at_level(logging.ERROR):
        assert state(running) == [A, B]  # the list in force stays
    assert "conflicting list" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        assert state(Revocations(listed, ca.public_key(), floor)) == 503  # after a restart: fail closed
    assert "names other cards" in caplog.text
    listed.write_text(json.dumps(sign_revocations(ca, 50, [B, A])))  # the identical list: taken, live and restarted
    assert state(running) == [A, B]
    assert state(Revocations(listed, ca.public_key(), floor)) == [A, B]
    assert json.loads(floor.read_text()) == record  # nothing rewritten


def test_a_record_without_list_digests_is_still_read_and_gets_one(tmp_path: Path) -> None:
    ca = Ed25519PrivateKey.generate()
    listed, floor = tmp_path / "revoked.json", tmp_path / "revoked.stamp.json"
    revocations = Revocations(None, ca.public_key(), None)
    floor.write_text(json.dumps({"format": STAMP_FORMAT, "stamps": {revocations.ca: 50}}))  # as ca16 wrote it
    listed.write_text(json.dumps(sign_revocations(ca, 50, [A])))
    assert state(Revocations(listed, ca.public_key(), floor)) == [A]
    assert json.loads(floor.read_text())["lists"] == {revocations.ca: list_digest(frozenset({A}))}
    listed.write_text(json.dumps(sign_revocations(ca, 49, [])))
    assert state(Revocations(listed, ca.public_key(), floor)) == 503


@pytest.mark.parametrize("newer", [False, True])
def test_an_unreadable_stamp_record_fails_closed_and_is_never_written_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, newer: bool
) -> None:
    """F4: a record there but unreadable at the start was taken as none: the older list on disk was accepted and its
    stamp written over the record, lowering the floor for good. A mode-000 file; as root (who reads it anyway) its
    open fails as a non-root agent's does."""
    ca = Ed25519PrivateKey.generate()
    listed, floor = tmp_path / "revoked.json", tmp_path / "revoked.stamp.json"
    listed.write_text(json.dumps(sign_revocations(ca, 2_000, [A, B])))
    assert state(Revocations(listed, ca.public_key(), floor)) == [A, B]
    record = floor.read_bytes()
    listed.write_text(json.dumps(sign_revocations(ca, 3_000 if newer else 1_000, [A])))  # older put back, or newer
    floor.chmod(0)
    if os.geteuid() == 0:
        real_open = builtins.open

        def refusing_open(file: Any, *args: Any, **kwargs: Any) -> Any:
            if str(file) == str(floor):
                raise PermissionError(13, "Permission denied", str(file))
            return real_open(file, *args, **kwargs)

        monkeypatch.setattr(builtins, "open", refusing_open)
    with caplog.at_level(logging.ERROR):
        restarted = Revocations(listed, ca.public_key(), floor)
        assert state(restarted) == 503  # fail closed, like a missing list
        listed.write_text(json.dumps(sign_revocations(ca, 4_000, [])))
        assert state(restarted) == 503  # any list: its stamp cannot be compared
    assert "cannot be read" in caplog.text and "restart" in caplog.text
    monkeypatch.undo()
    floor.chmod(0o600)
    assert floor.read_bytes() == record  # never written over
    listed.write_text(json.dumps(sign_revocations(ca, 1_000, [A])))
    assert state(Revocations(listed, ca.public_key(), floor)) == 503  # readable again: the floor holds
