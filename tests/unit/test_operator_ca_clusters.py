"""Review15d's findings on the operator's CA commands (agent/ca_cli.py): ids are per cluster, one revocation list per
CA, and a v1 card or request says what it is. Each test here failed on the code before its fix."""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import pytest

from agent.identity import cluster_of
from agent.operator_ca import CardError, b64, parse_operator_ca, parse_revocations, read_board_card
from peerserve.cli import main
from tests.unit.test_operator_ca import TOKEN

OTHER = "cluster-B-token-0123456789abcdef"  # a second cluster the same operator CA serves
A, B = cluster_of(TOKEN), cluster_of(OTHER)


def _request(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, node: str, folder: str, token: str = TOKEN
) -> Path:  # fmt: skip
    """'card request' for ``node`` on the board whose data dir is tmp_path/folder, given ``token``."""
    monkeypatch.setenv("PEERSERVE_CLUSTER_TOKEN", token)
    out = tmp_path / f"{node}-{folder}.req"
    assert main(["card", "request", "--node-id", node, "--data-dir", str(tmp_path / folder), "-o", str(out)]) == 0
    return out


def _sign(ca: Path, request: Path, out: Path, *extra: str) -> int:
    return main(["ca", "sign", "--ca", str(ca), str(request), "-o", str(out), *extra])


def _fingerprint(card: Path) -> str:
    return str(json.loads(card.read_text())["fingerprint"])


def test_an_id_clash_is_per_cluster_and_a_key_clash_across_clusters(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """F2: jetson1 carded for cluster A refused another board named jetson1 in cluster B, and --replace revoked A's
    card; 'ca revoke --node jetson1' revoked the id in every cluster."""
    ca = tmp_path / "ca"
    assert main(["ca", "init", str(ca)]) == 0
    a1 = _request(tmp_path, monkeypatch, "jetson1", "a1")
    b1 = _request(tmp_path, monkeypatch, "jetson1", "b1", OTHER)
    a1_in_b = _request(tmp_path, monkeypatch, "jetson9", "a1", OTHER)  # A's board's key, asking for a card in B
    a1_again = _request(tmp_path, monkeypatch, "jetson1", "a2")  # another board named jetson1 in A
    assert _sign(ca, a1, tmp_path / "a1.card") == 0
    assert _sign(ca, b1, tmp_path / "b1.card") == 0  # another cluster's jetson1: no clash
    assert _sign(ca, a1_again, tmp_path / "x.card") == 1  # the same id in the same cluster still clashes
    assert _sign(ca, a1_in_b, tmp_path / "x.card") == 1  # one key, one card, in any cluster
    assert "--replace" in capsys.readouterr().err
    # a v1 entry (no cluster) counts in every cluster
    with open(ca / "issued.jsonl", "a") as log:
        log.write(json.dumps({"node_id": "old", "public_key": "00" * 32, "expires": 2**40, "fingerprint": "f" * 32})
                  + "\n")  # fmt: skip
    assert _sign(ca, _request(tmp_path, monkeypatch, "old", "o", OTHER), tmp_path / "x.card") == 1

    revoke = ["ca", "revoke", "--ca", str(ca), "--node", "jetson1"]
    assert main(revoke) == 1  # carded in two clusters: which one?
    assert A in capsys.readouterr().err
    assert not (ca / "revoked.json").exists()
    assert main([*revoke, "--cluster", "00" * 15]) == 1  # not a cluster
    assert main([*revoke, "--cluster", B.upper()]) == 0
    public = parse_operator_ca(str(ca / "ca.pub"))
    assert parse_revocations((ca / "revoked.json").read_bytes(), public) == {_fingerprint(tmp_path / "b1.card")}
    assert main(["ca", "revoke", "--ca", str(ca), "--node", "old"]) == 0  # one cluster (or none): no --cluster needed
    assert main(["ca", "revoke", "--ca", str(ca), str(tmp_path / "a1.card"), "--cluster", A]) == 1  # --node only


def test_every_list_write_starts_from_the_cas_one_list(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """F3: 'ca revoke -o revoked.json' (the docs' example, the current folder) then 'ca sign --replace' (default
    DIR/revoked.json) signed a newer list without the first revocation: boards took it and re-admitted the card."""
    ca = tmp_path / "ca"
    assert main(["ca", "init", str(ca)]) == 0
    for node in ("bad", "jetson2", "jetson3"):
        assert _sign(ca, _request(tmp_path, monkeypatch, node, node), tmp_path / f"{node}.card") == 0
    bad, j2, j3 = (_fingerprint(tmp_path / f"{n}.card") for n in ("bad", "jetson2", "jetson3"))
    public = parse_operator_ca(str(ca / "ca.pub"))
    elsewhere = tmp_path / "revoked.json"
    assert main(["ca", "revoke", "--ca", str(ca), str(tmp_path / "bad.card"), "-o", str(elsewhere)]) == 0
    assert parse_revocations((ca / "revoked.json").read_bytes(), public) == {bad}  # the CA's list, always
    assert parse_revocations(elsewhere.read_bytes(), public) == {bad}  # and the copy asked for
    assert _sign(ca, tmp_path / "jetson2-jetson2.req", tmp_path / "j2new.card", "--replace") == 0
    assert parse_revocations((ca / "revoked.json").read_bytes(), public) == {bad, j2}
    assert main(["ca", "revoke", "--ca", str(ca), "--node", "jetson3"]) == 0  # -o is optional: DIR/revoked.json
    assert parse_revocations((ca / "revoked.json").read_bytes(), public) == {bad, j2, j3}
    assert _fingerprint(tmp_path / "j2new.card") != j2  # signed in the same second: still another card
    # a list kept elsewhere by the old commands is merged in, never dropped: here 'bad' only in the copy
    (ca / "revoked.json").unlink()
    assert _sign(ca, tmp_path / "jetson3-jetson3.req", tmp_path / "j3new.card", "--replace", "--revoked",
                 str(elsewhere)) == 0  # fmt: skip
    listed = parse_revocations((ca / "revoked.json").read_bytes(), public)
    assert listed == {bad, j3} == parse_revocations(elsewhere.read_bytes(), public)


def test_a_v1_card_or_request_says_it_is_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """F5: a v1 card read 'malformed board card (or of a newer version)', a v1 request "not a board signing request:
    'cluster'"; both now say they are v1 (before cards named the cluster) and what to do."""
    nid = b"jetson1"
    v1 = bytes([1, len(nid)]) + nid + bytes(32) + struct.pack(">QBi", 2**40, 0, 0) + bytes(64)  # the v1 layout
    card = tmp_path / "v1.card"
    card.write_text(json.dumps({"format": "peerserve-board-card-v1", "node_id": "jetson1", "card": b64(v1)}))
    with pytest.raises(
        CardError, match=re.escape("a v1 card (before cards named the cluster): request and sign a new one")
    ):
        read_board_card(card)
    ca = tmp_path / "ca"
    assert main(["ca", "init", str(ca)]) == 0
    request = json.loads(_request(tmp_path, monkeypatch, "jetson1", "b").read_text())
    del request["cluster"]
    (tmp_path / "v1.req").write_text(json.dumps({**request, "format": "peerserve-board-request-v1"}))
    capsys.readouterr()
    assert _sign(ca, tmp_path / "v1.req", tmp_path / "x.card") == 1
    assert "a v1 request (for a v1 card, before cards named the cluster)" in capsys.readouterr().err
    assert main(["ca", "show", "--ca", str(ca), str(card)]) == 1
    assert "a v1 card" in capsys.readouterr().err
