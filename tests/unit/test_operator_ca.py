"""Board cards from an operator's CA (agent/operator_ca.py, agent/identity.py, agent/ca_cli.py): who is a member when
``operator_ca`` is set, expiry and revocation, the caches' bounds, and the operator's and the board's commands."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.discovery.swim import Swim, SwimConfig
from agent.errors import ConfigError
from agent.identity import AuthError, Card, Identity, cluster_of, derive_ca_key
from agent.operator_ca import (
    MAX_REVOKED,
    BoardCard,
    BoardRequest,
    CardError,
    OperatorTrust,
    b64,
    parse_operator_ca,
    parse_revocations,
    raw_public,
    sign_revocations,
)
from agent.quorum import Certificates, Grants
from peerserve import wire
from peerserve.cli import main

TOKEN = "operator-ca-cluster-token-0123456789"
NOW = time.time()
BODY = b'{"x":1}'
OPERATOR = Ed25519PrivateKey.generate()
CLUSTER = bytes.fromhex(cluster_of(TOKEN))  # what the cards of this cluster name


def board(
    folder: Path, node_id: str, *, ca: Ed25519PrivateKey = OPERATOR, days: float = 30, priority: int | None = None,
    token: str = TOKEN,
) -> Path:  # fmt: skip
    """A data dir whose node key has a board card signed by ``ca`` for ``node_id`` in ``token``'s cluster (as 'ca
    sign' writes it)."""
    key = Identity(node_id, token, folder).key  # makes DATA_DIR/peer/node.key, as the agent would
    card = BoardCard.issue(ca, node_id, raw_public(key.public_key()), int(NOW + days * 86400), priority,
                           cluster=bytes.fromhex(cluster_of(token)))  # fmt: skip
    (folder / "peer" / "board.card").write_text(json.dumps(card.to_json()))
    return folder


def member(tmp_path: Path, node_id: str, **kw: object) -> Identity:
    """A node of the operator-CA cluster, with its board card."""
    folder = board(tmp_path / node_id, node_id, **kw)  # type: ignore[arg-type]
    return Identity(node_id, TOKEN, folder, operator_ca=OPERATOR.public_key())


def send(sender: Identity, receiver: Identity, now: float = NOW, source: str = "10.0.0.9") -> str:
    headers = dict(sender.sign_request(receiver.node_id, "POST", "/election/message", BODY, now).headers)
    return receiver.verify_request(headers, "POST", "/election/message", BODY, now, source, mono=now)


def test_a_board_card_round_trips_and_any_change_breaks_its_signature() -> None:
    key = Ed25519PrivateKey.generate()
    card = BoardCard.issue(OPERATOR, "n1", raw_public(key.public_key()), 2_000_000_000, 7, cluster=CLUSTER)
    again = BoardCard.parse(card.raw())
    assert again == card and again.priority == 7 and len(card.raw()) <= 2 + 63 + 32 + 16 + 13 + 64
    again.verify(OPERATOR.public_key())
    for i in range(len(card.body())):  # each byte the signature covers
        raw = bytearray(card.raw())
        raw[i] ^= 1
        with pytest.raises(CardError):
            BoardCard.parse(bytes(raw)).verify(OPERATOR.public_key())
    with pytest.raises(CardError, match="operator CA"):
        card.verify(Ed25519PrivateKey.generate().public_key())
    assert BoardCard.parse(BoardCard.issue(OPERATOR, "n1", card.public_key, 1, cluster=CLUSTER).raw()).priority is None


def test_the_largest_card_fits_every_wire_field_that_carries_a_card(tmp_path: Path) -> None:
    """A token card with a board card appended (63-character id, a priority) travels in headers, grants, proofs and
    leases: wire.MAX_CARD (512) holds it, and the token-only card is as before."""
    nid = "n" * 63
    ident = member(tmp_path, nid, priority=-5)
    assert len(ident.card_text) <= wire.MAX_CARD
    assert Card.decode(ident.card_text).board == ident.board.raw()  # type: ignore[union-attr]
    grant = wire.Grant(nid, *ident.sign_detached(b"x"))
    assert wire.Grant.parse(grant.to_json()) == grant
    plain = Identity("n1", TOKEN, None)
    assert Card.decode(plain.card_text).board == b"" and len(plain.card_text) <= 220


def test_a_token_holder_without_a_board_card_is_refused_and_token_only_mode_is_unchanged(tmp_path: Path) -> None:
    receiver = member(tmp_path, "f")
    holder = Identity("x", TOKEN, tmp_path / "x")  # holds the token: a valid cluster card, no board card
    with pytest.raises(AuthError, match="no board card signed by the operator CA") as refused:
        send(holder, receiver)
    assert refused.value.status == 403
    assert send(member(tmp_path, "m"), receiver) == "m"
    token_only = Identity("g", TOKEN, tmp_path / "g")  # the default mode: the token alone admits, as before
    assert send(holder, token_only) == "x"
    assert send(member(tmp_path, "m2"), token_only) == "m2"  # a board card is ignored without operator_ca


def test_a_card_of_another_ca_another_id_or_another_key_is_refused(tmp_path: Path) -> None:
    receiver = member(tmp_path, "f")
    stranger_ca = Ed25519PrivateKey.generate()  # another operator's cluster with the same token
    other_ca = Identity("o", TOKEN, board(tmp_path / "o", "o", ca=stranger_ca), operator_ca=stranger_ca.public_key())
    with pytest.raises(AuthError, match="not signed by this cluster's operator CA"):
        send(other_ca, receiver)
    m = member(tmp_path, "m")
    # a member mints a second id with the token and shows its own board card with it: the card binds another id
    minted = Identity("m2", TOKEN, tmp_path / "m")  # m's key, id m2
    minted.card_text = Card.issue(derive_ca_key(TOKEN), "m2", m.public_key, m.board.raw()).encode()  # type: ignore[union-attr]
    with pytest.raises(AuthError, match="shown by m2 is for m"):
        send(minted, receiver)
    # ... or someone copies m's board card next to its own key
    thief = Identity("m", TOKEN, tmp_path / "thief")
    thief.card_text = Card.issue(derive_ca_key(TOKEN), "m", thief.public_key, m.board.raw()).encode()  # type: ignore[union-attr]
    with pytest.raises(AuthError, match="another key"):
        send(thief, receiver)


def test_relayed_statements_and_answers_need_the_board_card_too(tmp_path: Path) -> None:
    receiver = member(tmp_path, "f")
    holder = Identity("x", TOKEN, tmp_path / "x")
    card, sig = holder.sign_detached(b"statement")
    with pytest.raises(AuthError, match="no board card"):
        receiver.verify_detached(card, sig, b"statement", NOW)
    m = member(tmp_path, "m")
    card, sig = m.sign_detached(b"statement")
    assert receiver.verify_detached(card, sig, b"statement", NOW) == "m"
    nonce = "n" * 16
    answer = holder.sign_response("f", 200, nonce, BODY, NOW)
    with pytest.raises(AuthError, match="no board card"):
        receiver.verify_response(answer, "x", 200, nonce, BODY, NOW)


def test_an_expired_card_is_refused_with_a_clear_log_line(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    receiver = member(tmp_path, "f")
    with caplog.at_level(logging.WARNING, logger="agent.operator_ca"):
        old = member(tmp_path, "e", days=-1)
    assert old.board is not None  # an expired card of its own does not stop an agent: it is logged, peers refuse
    with caplog.at_level(logging.WARNING, logger="agent.operator_ca"):
        for _ in range(3):
            with pytest.raises(AuthError, match="board card expired"):
                send(old, receiver)
    assert sum("board card of e expired" in r.getMessage() for r in caplog.records) == 1  # once per node
    # a card that expires while it is in use: accepted before, refused after, the verified card cache notwithstanding
    soon = member(tmp_path, "s", days=1)
    assert send(soon, receiver, NOW) == "s"
    with pytest.raises(AuthError, match="expired"):
        send(soon, receiver, NOW + 86400 + 1)


def test_the_revocation_list_is_checked_at_each_message_and_reread_when_it_changes(tmp_path: Path) -> None:
    receiver = member(tmp_path, "f")
    m, k = member(tmp_path, "m"), member(tmp_path, "k")
    assert send(m, receiver) == "m"
    listed = tmp_path / "f" / "peer" / "revoked.json"  # the default place: DATA_DIR/peer/revoked.json
    listed.write_text(json.dumps(sign_revocations(OPERATOR, 1, [m.board.fingerprint])))  # type: ignore[union-attr]
    with pytest.raises(AuthError, match="revoked"):
        send(m, receiver)  # no restart: the next message
    assert send(k, receiver) == "k"
    card, sig = m.sign_detached(b"s")
    with pytest.raises(AuthError, match="revoked"):
        receiver.verify_detached(card, sig, b"s", NOW)
    # a list not signed by the operator (or damaged) fails closed: nobody passes until it is replaced
    listed.write_text(json.dumps(sign_revocations(Ed25519PrivateKey.generate(), 2, [])))
    with pytest.raises(AuthError, match="cannot be used") as closed:
        send(k, receiver)
    assert closed.value.status == 503
    listed.write_text(json.dumps(sign_revocations(OPERATOR, 3, [])))
    assert send(m, receiver) == "m"  # un-revoked by the operator's newer list
    listed.unlink()
    assert send(m, receiver) == "m"
    listed.write_text(json.dumps(sign_revocations(OPERATOR, 5, [k.board.fingerprint])))  # type: ignore[union-attr]
    with pytest.raises(AuthError, match="revoked"):
        send(k, receiver)
    # a stale copy (signed before the list in force) or the file's removal does not undo a revocation
    listed.write_text(json.dumps(sign_revocations(OPERATOR, 4, [])))
    with pytest.raises(AuthError, match="revoked"):
        send(k, receiver)
    listed.unlink()
    with pytest.raises(AuthError, match="revoked"):
        send(k, receiver)
    listed.write_text(json.dumps(sign_revocations(OPERATOR, 6, [])))
    assert send(k, receiver) == "k"


def test_a_revocation_list_is_bounded_and_its_signature_covers_every_entry() -> None:
    signed = sign_revocations(OPERATOR, 5, ["a" * 32, "b" * 32])
    assert parse_revocations(json.dumps(signed).encode(), OPERATOR.public_key()) == {"a" * 32, "b" * 32}
    dropped = {**signed, "revoked": ["a" * 32]}  # someone removed an entry on the way
    with pytest.raises(CardError, match="not signed"):
        parse_revocations(json.dumps(dropped).encode(), OPERATOR.public_key())
    with pytest.raises(CardError, match="at most"):
        sign_revocations(OPERATOR, 5, [f"{i:032x}" for i in range(MAX_REVOKED + 1)])
    too_long = {**signed, "revoked": [f"{i:032x}" for i in range(MAX_REVOKED + 1)]}
    with pytest.raises(CardError, match="at most"):
        parse_revocations(json.dumps(too_long).encode(), OPERATOR.public_key())


def test_the_verdict_cache_and_the_roster_are_bounded(tmp_path: Path) -> None:
    trust = OperatorTrust(OPERATOR.public_key(), None, verdicts=4, roster=3, cluster=CLUSTER)
    cards = []
    for i in range(10):
        key = raw_public(Ed25519PrivateKey.generate().public_key())
        card = BoardCard.issue(OPERATOR, f"n{i}", key, int(NOW + 3600), cluster=CLUSTER)
        cards.append(card)
        trust.check_live(trust.certify(card.node_id, key, card.raw()), NOW)
        assert len(trust._verdicts) <= 4 and len(trust.roster) <= 3
    assert list(trust.roster) == ["n7", "n8", "n9"]
    before = trust.verifications
    trust.certify("n9", cards[9].public_key, cards[9].raw())
    assert trust.verifications == before  # a card seen recently is not verified again
    for i in range(10):  # forged cards are remembered too (bounded), each verified once while remembered
        forged = BoardCard("z", cards[0].public_key, CLUSTER, 1, None, bytes(64)).raw() + bytes([i])
        with pytest.raises(CardError):
            trust.certify("z", cards[0].public_key, forged)
    assert len(trust._verdicts) <= 4 and len(trust.roster) <= 3


def test_a_direct_tls_exchange_needs_a_live_card_seen_in_a_signed_message(tmp_path: Path) -> None:
    receiver, m = member(tmp_path, "f"), member(tmp_path, "m", days=1)
    with pytest.raises(AuthError) as unknown:
        receiver.vouch("m", m.public_key, NOW)  # its certificate alone (the token's CA): sign first
    assert unknown.value.status == 401
    send(m, receiver)
    receiver.vouch("m", m.public_key, NOW)
    with pytest.raises(AuthError):
        receiver.vouch("m", bytes(32), NOW)  # another key under that id
    with pytest.raises(AuthError, match="expired") as expired:
        receiver.vouch("m", m.public_key, NOW + 2 * 86400)
    assert expired.value.status == 401  # the client signs instead, showing its current card (checked in full)
    with pytest.raises(AuthError, match="expired") as signed:
        send(m, receiver, NOW + 2 * 86400)
    assert signed.value.status == 403
    Identity("g", TOKEN, tmp_path / "g").vouch("anyone", bytes(32), NOW)  # token-only mode: the certificate is enough


def test_dead_declarers_count_by_address_in_token_mode_and_by_id_with_cards() -> None:
    for id_voices, voices in ((False, 1), (True, 2)):
        swim = Swim("a", "https://10.0.0.1:8401", SwimConfig(id_voices=id_voices))
        for n in ("m", "m2"):
            swim.records[n] = type("R", (), {"address": "10.0.0.7"})()  # type: ignore[assignment]
        assert len(swim._voices(["m", "m2"])) == voices


def test_an_agent_refuses_to_start_without_its_own_valid_card(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no usable board card"):
        Identity("n1", TOKEN, tmp_path / "n1", operator_ca=OPERATOR.public_key())
    board(tmp_path / "n2", "n2")
    with pytest.raises(ConfigError, match="is for n2"):
        Identity("n3", TOKEN, tmp_path / "n2", operator_ca=OPERATOR.public_key())
    with pytest.raises(ConfigError, match="operator CA"):
        Identity("n2", TOKEN, tmp_path / "n2", operator_ca=Ed25519PrivateKey.generate().public_key())


def test_the_operator_ca_setting_takes_a_file_or_the_key(tmp_path: Path) -> None:
    raw = raw_public(OPERATOR.public_key())
    (tmp_path / "ca.pub").write_text(b64(raw) + "\n")
    for value in (b64(raw), raw.hex(), str(tmp_path / "ca.pub")):
        assert raw_public(parse_operator_ca(value)) == raw
    with pytest.raises(ValueError):
        parse_operator_ca("abc")


def test_a_signing_request_must_be_signed_by_the_key_it_names() -> None:
    key = Ed25519PrivateKey.generate()
    request = BoardRequest.make("n1", key, CLUSTER).to_json()
    assert BoardRequest.from_json(request).node_id == "n1"
    with pytest.raises(CardError, match="not signed by the key"):
        BoardRequest.from_json({**request, "node_id": "n2"})
    with pytest.raises(CardError):
        BoardRequest.from_json({**request, "public_key": "00" * 32})
    with pytest.raises(CardError, match="not signed by the key"):
        BoardRequest.from_json({**request, "cluster": "00" * 16})  # the cluster is signed too


def test_the_operator_and_board_commands_end_to_end(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PEERSERVE_CLUSTER_TOKEN", TOKEN)  # the board's token: its card names the cluster
    ca, data = tmp_path / "ca", tmp_path / "board"
    assert main(["ca", "init", str(ca), "--json"]) == 0
    public = json.loads(capsys.readouterr().out)["public_key"]
    assert (ca / "ca.key").stat().st_mode & 0o777 == 0o600
    assert main(["ca", "init", str(ca)]) == 1  # never overwrites a CA
    capsys.readouterr()
    assert main(["card", "request", "--node-id", "n1", "--data-dir", str(data), "-o", str(tmp_path / "req")]) == 0
    assert main(["ca", "sign", "--ca", str(ca), str(tmp_path / "req"), "--days", "10", "--priority", "3",
                 "-o", str(tmp_path / "n1.card")]) == 0  # fmt: skip
    assert main(["ca", "show", "--ca", str(ca), str(tmp_path / "n1.card"), "--json"]) == 0
    capsys.readouterr()
    pub = ["--operator-ca", str(ca / "ca.pub"), "--node-id", "n1"]
    assert main(["card", "install", str(tmp_path / "n1.card"), "--data-dir", str(data), *pub]) == 0
    ident = Identity("n1", TOKEN, data, operator_ca=parse_operator_ca(public))  # the agent starts with it
    assert ident.board is not None and ident.board.priority == 3
    assert 9 * 86400 < ident.board.expires - time.time() <= 10 * 86400
    assert main(["card", "install", str(tmp_path / "n1.card"), "--data-dir", str(tmp_path / "other"), *pub]) == 1
    assert main(["ca", "revoke", "--ca", str(ca), "--node", "n1", "-o", str(tmp_path / "revoked.json")]) == 0
    revoked = parse_revocations((tmp_path / "revoked.json").read_bytes(), parse_operator_ca(public))
    assert revoked == {ident.board.fingerprint}
    assert main(["ca", "show", "--ca", str(ca), "--json"]) == 0
    assert public in capsys.readouterr().out


def test_a_certificate_cached_whole_is_judged_again_when_the_revocation_list_changes(tmp_path: Path) -> None:
    receiver, leader, voter = member(tmp_path, "f"), member(tmp_path, "L"), member(tmp_path, "A")
    for ident in (leader, voter):
        send(ident, receiver)  # their first contacts: pinned
    certificates = Certificates(receiver, wall=lambda: NOW)
    cert = [Grants(leader).sign(1, "L"), Grants(voter).sign(1, "L")]
    assert certificates.voters(1, "L", cert, {"f", "L", "A"}) == {"L", "A"}
    assert (1, "L") in certificates.cache  # cached whole
    listed = tmp_path / "f" / "peer" / "revoked.json"
    listed.write_text(json.dumps(sign_revocations(OPERATOR, 1, [voter.board.fingerprint])))  # type: ignore[union-attr]
    assert certificates.voters(1, "L", cert, {"f", "L", "A"}) == {"L"}
