"""The operator CA's revocation list across restarts (agent/operator_ca.py ``Revocations``): the newest accepted
list's stamp is recorded per CA in DATA_DIR/peer/revoked.stamp.json, so a restarted agent refuses an older list (or
none) instead of readmitting what a newer one revoked; a damaged or foreign record is an error, never a crash."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.identity import AuthError, Identity
from agent.operator_ca import STAMP_CAS, STAMP_FORMAT, CardError, Revocations, sign_revocations
from tests.unit.test_operator_ca import OPERATOR, TOKEN, member, send


def restart(tmp_path: Path, node_id: str) -> Identity:
    """The same board started again: a new Identity over the same data dir."""
    return Identity(node_id, TOKEN, tmp_path / node_id, operator_ca=OPERATOR.public_key())


def put(path: Path, issued: int, revoked: list[str]) -> None:
    path.write_text(json.dumps(sign_revocations(OPERATOR, issued, revoked)))


def m_revoked_at_5(tmp_path: Path) -> tuple[Identity, Identity, Identity, Path, Path]:
    """Board f (the receiver), members m and k; f's list at stamp 5 revokes m, and f refuses m: f, m, k, f's list
    file and its stamp record."""
    receiver = member(tmp_path, "f")
    m, k = member(tmp_path, "m"), member(tmp_path, "k")
    listed = tmp_path / "f" / "peer" / "revoked.json"
    put(listed, 5, [m.board.fingerprint])  # type: ignore[union-attr]
    with pytest.raises(AuthError, match="revoked"):
        send(m, receiver)
    return receiver, m, k, listed, tmp_path / "f" / "peer" / "revoked.stamp.json"


def test_a_restarted_agent_refuses_an_older_list_and_keeps_the_revocations(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    receiver, m, k, listed, stamp = m_revoked_at_5(tmp_path)
    assert json.loads(stamp.read_text())["stamps"] == {receiver.operator.revocations.ca: 5}  # type: ignore[union-attr]
    put(listed, 4, [])  # someone puts back an older list that revoked nothing, then the board restarts
    again = restart(tmp_path, "f")
    with caplog.at_level(logging.ERROR), pytest.raises(AuthError, match="signed at 4") as closed:
        send(m, again)
    assert closed.value.status == 503  # fail closed: what the newer list revoked is not known here
    assert "signed at 5 before" in caplog.text and "copied there" in caplog.text
    with pytest.raises(AuthError, match="signed at 4"):
        send(k, again)  # everyone, until the current list is back
    listed.unlink()  # the list removed before a restart: the same
    with pytest.raises(AuthError, match="is missing"):
        send(k, restart(tmp_path, "f"))
    put(listed, 5, [m.board.fingerprint])  # the operator's current list copied back: in force, no restart
    with pytest.raises(AuthError, match="revoked"):
        send(m, again)
    assert send(k, again) == "k"
    put(listed, 7, [])  # a newer list is recorded and in force after the next restart too
    assert send(m, again) == "m"
    assert json.loads(stamp.read_text())["stamps"][again.operator.revocations.ca] == 7  # type: ignore[union-attr]
    put(listed, 6, [m.board.fingerprint])
    with pytest.raises(AuthError, match="signed at 6"):
        send(m, restart(tmp_path, "f"))


@pytest.mark.parametrize(
    "content",
    [
        b'{"format": "peerserve-revocation-stamps-v1", "stamps": {"ab',  # cut short (not by our writes)
        b"\xff\xfe not text",
        json.dumps({"format": "something-else", "stamps": {}}).encode(),  # foreign
        json.dumps({"format": STAMP_FORMAT, "stamps": {"x" * 32: 3}}).encode(),
        json.dumps({"format": STAMP_FORMAT, "stamps": {"a" * 32: "9"}}).encode(),
        json.dumps({"format": STAMP_FORMAT, "stamps": [1, 2]}).encode(),
    ],
)
def test_a_damaged_stamp_file_is_a_clear_error_and_the_list_on_disk_stands(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, content: bytes
) -> None:
    _, m, k, listed, stamp = m_revoked_at_5(tmp_path)
    stamp.write_bytes(content)
    with caplog.at_level(logging.ERROR):
        again = restart(tmp_path, "f")  # no crash
        with pytest.raises(AuthError, match="revoked"):
            send(m, again)  # the revocations of the newest readable list stay in force
    assert "damaged or not ours" in caplog.text and str(stamp) in caplog.text
    assert send(k, again) == "k"
    assert (stamp.parent / "revoked.stamp.json.damaged").read_bytes() == content  # kept for the operator
    assert json.loads(stamp.read_text())["stamps"] == {again.operator.revocations.ca: 5}  # type: ignore[union-attr]
    put(listed, 4, [])  # recorded anew: the rule holds again from the next restart
    with pytest.raises(AuthError, match="signed at 4"):
        send(k, restart(tmp_path, "f"))


def test_a_stamp_record_that_cannot_be_opened_is_no_crash_and_fails_closed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A record that is there but cannot be read (here a directory: IsADirectoryError; EACCES and EIO in
    test_operator_ca_stamps.py) may hold a newer stamp than the list on disk: fail closed until it is fixed."""
    stamp = tmp_path / "revoked.stamp.json"
    stamp.mkdir()
    (stamp / "x").write_text("")
    with caplog.at_level(logging.ERROR):
        revocations = Revocations(tmp_path / "revoked.json", OPERATOR.public_key(), stamp)
    assert "cannot be read" in caplog.text
    with pytest.raises(CardError) as closed:
        revocations.current()  # no list: refused, as a missing list after a restart is
    assert closed.value.status == 503
    put(tmp_path / "revoked.json", 3, ["a" * 32])
    with pytest.raises(CardError):
        revocations.current()  # nor a list: its stamp cannot be compared
    assert (stamp / "x").exists()  # left as it was


def test_one_record_per_ca_and_at_most_STAMP_CAS(tmp_path: Path) -> None:
    stamp, listed = tmp_path / "revoked.stamp.json", tmp_path / "revoked.json"
    cas = [Ed25519PrivateKey.generate() for _ in range(STAMP_CAS + 3)]
    for i, ca in enumerate(cas):
        revocations = Revocations(listed, ca.public_key(), stamp)
        for issued in (10 + i, 20 + i):  # a newer list of the same CA replaces its record
            listed.write_text(json.dumps(sign_revocations(ca, issued, [])))
            revocations.current()
        assert json.loads(stamp.read_text())["stamps"][revocations.ca] == 20 + i
    stamps = json.loads(stamp.read_text())["stamps"]
    assert len(stamps) == STAMP_CAS and list(stamps.values()) == [20 + i for i in range(3, STAMP_CAS + 3)]
    # the operator switched back to a CA whose record was dropped: its lists are accepted as on a first start
    first = Revocations(listed, cas[0].public_key(), stamp)
    listed.write_text(json.dumps(sign_revocations(cas[0], 1, [])))
    assert first.current() == frozenset()
    # another CA's record does not apply to this one
    last = Revocations(listed, cas[-1].public_key(), stamp)
    listed.write_text(json.dumps(sign_revocations(cas[-1], 1, [])))
    with pytest.raises(Exception, match="signed at 1"):
        last.current()
