"""Review findings on the operator CA (review15a): each test here failed on the code before its fix."""

from __future__ import annotations

import asyncio
import gc
import json
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi import FastAPI

from agent import ca_cli
from agent.discovery import swim as sw
from agent.discovery.swim_io import SwimDriver
from agent.errors import ConfigError
from agent.identity import Card, Identity, derive_ca_key
from agent.operator_ca import (
    BoardCard,
    CardError,
    OperatorTrust,
    parse_operator_ca,
    parse_revocations,
    raw_public,
    sign_revocations,
)
from agent.peer_api import PeerServer
from agent.peer_client import PeerClient
from agent.peer_swim_route import SwimRoute
from agent.quorum import Certificates, Grants
from peerserve import wire
from peerserve.cli import main
from tests.service.conftest import free_port
from tests.unit.test_operator_ca import CLUSTER, NOW, OPERATOR, TOKEN, board, send
from tests.unit.test_operator_ca import member as _member
from tests.unit.test_peer_direct import ping
from tests.unit.test_peer_swim_route import Membership, Node


@pytest.fixture(autouse=True)
def _board_token(monkeypatch: pytest.MonkeyPatch) -> None:
    """'card request' and 'card install' read the board's token (its card names the cluster)."""
    monkeypatch.setenv("PEERSERVE_CLUSTER_TOKEN", TOKEN)


def _depth(exc: BaseException) -> int:
    n, tb = 0, exc.__traceback__
    while tb is not None:
        n, tb = n + 1, tb.tb_next
    return n


def test_repeated_refusals_of_a_bad_card_keep_nothing_growing() -> None:
    """F1: the refusal is cached as data and raised fresh; a cached exception re-raised grew its traceback (and the
    frames it keeps) by a frame per refused request, without a ceiling."""
    key = raw_public(Ed25519PrivateKey.generate().public_key())
    card = Card.issue(derive_ca_key(TOKEN), "evil", key, board=b"\x01junk")
    trust = OperatorTrust(OPERATOR.public_key(), cluster=CLUSTER)
    depths = []
    for _ in range(200):
        with pytest.raises(CardError) as refused:
            trust.certify("evil", key, card.board)
        depths.append(_depth(refused.value))
    assert trust.verifications == 1  # the verdict is still cached: one check per card bytes
    assert depths[0] == depths[-1]  # each refusal a fresh error, as deep as the first
    cached = trust._verdicts[card.board]
    assert not isinstance(cached, BaseException)  # data, holding no frames
    assert refused.value.status == 403 and "malformed" in str(refused.value)
    gc.collect()
    assert sum(isinstance(o, CardError) for o in gc.get_objects()) <= 2  # none kept but the last one raised


def test_a_callers_stale_card_of_the_listener_falls_back_to_a_signed_call(tmp_path: Path) -> None:
    """F4: a holds b's card that has since expired (b was renewed, same key). a's own check of b's certificate used
    to fail the direct call (PeerCallError, each probe, on every board at once); now it is a 401: a asks signed, b's
    answer shows b's current card, and a's later direct calls go through."""
    a = Identity("a", TOKEN, board(tmp_path / "a", "a"), operator_ca=OPERATOR.public_key())
    b = Identity("b", TOKEN, board(tmp_path / "b", "b"), operator_ca=OPERATOR.public_key())
    old = BoardCard.issue(
        OPERATOR, "b", b.public_key, int(time.time() - 60), cluster=CLUSTER
    )  # b's previous card, expired a minute ago
    assert a.operator is not None
    a.operator.check_live(old, time.time() - 120)  # a saw it while it was live
    send(a, b, time.time())  # b saw a's card
    driver = SwimDriver("b", "https://127.0.0.1:1", PeerClient(b, lambda url: None), sw.SwimConfig(), lambda: None,
                        lambda s, u: s, lambda t: None)  # type: ignore[arg-type,return-value]  # fmt: skip
    app = FastAPI()
    app.add_middleware(SwimRoute, agent=Node(Membership(driver)), identity=b)  # type: ignore[arg-type]

    async def main() -> list[int]:
        port = free_port()
        server = PeerServer(app, b, "127.0.0.1", port)  # type: ignore[arg-type]
        await server.start()
        client, url, out = PeerClient(a, lambda u: None), f"https://127.0.0.1:{port}", []
        try:
            for _ in range(2):
                status, _answer = await client.call("b", url, "POST", wire.ROUTE_SWIM, body=ping(), direct=True)
                out.append(status)
            client._signed_only.clear()  # past SIGNED_ONLY_S: a tries direct again, now with b's current card held
            status, _answer = await client.call("b", url, "POST", wire.ROUTE_SWIM, body=ping(), direct=True)
            out.append(status)
            assert "b" not in client._signed_only  # that one went direct: a now holds a live card of b
        finally:
            await client.close()
            await server.stop()
        return out

    assert asyncio.run(main()) == [200, 200, 200]
    assert a.operator.roster["b"].expires > time.time() + 86400  # the signed answer brought b's current card


def test_an_older_card_shown_again_does_not_roll_back_a_renewed_one(tmp_path: Path) -> None:
    """F2: the roster held the card shown last, so a relayed older statement of x (its older, still valid card) put
    x's old priority back on this board only; priority() read the held card without checking it was live."""
    key = raw_public(Ed25519PrivateKey.generate().public_key())
    old = BoardCard.issue(OPERATOR, "x", key, int(NOW + 300 * 86400), priority=10, cluster=CLUSTER)
    new = BoardCard.issue(OPERATOR, "x", key, int(NOW + 365 * 86400), priority=1, cluster=CLUSTER)
    trust = OperatorTrust(OPERATOR.public_key(), cluster=CLUSTER)
    trust.check_live(trust.certify("x", key, new.raw()), NOW)
    assert trust.priority("x", NOW) == 1
    trust.check_live(trust.certify("x", key, old.raw()), NOW)  # still valid: accepted, but it does not replace
    assert trust.priority("x", NOW) == 1 and trust.roster["x"] == new
    assert trust.priority("x", new.expires) == 0  # a held card that expired grants nothing
    revoked = tmp_path / "revoked.json"  # the operator revokes the renewed card: the older one is x's card again
    revoked.write_text(json.dumps(sign_revocations(OPERATOR, int(NOW), [new.fingerprint])))
    later = OperatorTrust(OPERATOR.public_key(), revoked, cluster=CLUSTER)
    later.roster["x"] = new  # held from before the revocation
    later.check_live(later.certify("x", key, old.raw()), NOW)
    assert later.roster["x"] == old and later.priority("x", NOW) == 10


def test_ca_sign_gives_a_board_one_card_and_replace_revokes_the_old(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """F3: 'ca sign' signed any request: one key got ids x and y, and x a second valid card (two cards, two voices)."""
    ca, data, other = tmp_path / "ca", tmp_path / "board", tmp_path / "other"
    assert main(["ca", "init", str(ca)]) == 0
    for node, folder in (("x", data), ("y", data), ("x", other)):
        assert main(["card", "request", "--node-id", node, "--data-dir", str(folder), "-o",
                     str(tmp_path / f"{node}-{folder.name}.req")]) == 0  # fmt: skip
    capsys.readouterr()

    def sign(request: str, *extra: str) -> int:
        return main(["ca", "sign", "--ca", str(ca), str(tmp_path / request), "-o", str(tmp_path / "out.card"), *extra])

    assert sign("x-board.req", "--priority", "10") == 0
    first = json.loads((tmp_path / "out.card").read_text())["fingerprint"]
    assert sign("y-board.req") == 1  # the same key under another id
    assert sign("x-other.req") == 1  # the same id for another key
    assert sign("x-board.req", "--priority", "9") == 1  # a second valid card for x
    assert "--replace" in capsys.readouterr().err
    assert sign("x-board.req", "--priority", "1", "--replace") == 0  # a renewal: the old card revoked in the list
    public = parse_operator_ca(str(ca / "ca.pub"))
    assert parse_revocations((ca / "revoked.json").read_bytes(), public) == {first}
    second = json.loads((tmp_path / "out.card").read_text())["fingerprint"]
    listed = tmp_path / "list.json"
    assert sign("y-board.req", "--replace", "--revoked", str(listed)) == 0  # the board's key moves to id y
    assert parse_revocations(listed.read_bytes(), public) == {first, second}
    assert sign("x-other.req", "--revoked", str(listed)) == 0  # x's cards all revoked there: x is free again


def test_a_certificate_cached_whole_is_dropped_when_a_voters_card_expires(tmp_path: Path) -> None:
    """F6: the cached voter set kept counting A after A's board card expired (a fresh look counted only L)."""
    receiver, leader = _member(tmp_path, "f"), _member(tmp_path, "L")
    voter = _member(tmp_path, "A", days=1)
    for ident in (leader, voter):
        send(ident, receiver)
    clock = [NOW]
    certs = Certificates(receiver, wall=lambda: clock[0])
    cert = [Grants(leader).sign(1, "L"), Grants(voter).sign(1, "L")]
    assert certs.voters(1, "L", cert, {"f", "L", "A"}) == {"L", "A"}
    checked = certs.verifications
    assert certs.voters(1, "L", cert, {"f", "L", "A"}) == {"L", "A"} and certs.verifications == checked  # cached
    clock[0] = NOW + 2 * 86400  # A's card expired a day ago
    assert certs.voters(1, "L", cert, {"f", "L", "A"}) == {"L"}
    assert certs.verifications == checked  # judged again from each grant's kept verdict: no signature re-checked
    assert len(certs.cache) <= 1


def test_ca_init_keeps_its_folder_private_and_stays_off_boards(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """F7: 'ca init' into an existing folder kept its mode (0777 stayed 0777: ca.key swappable), and ran on a board."""
    monkeypatch.setattr(ca_cli, "BOARD_MARKERS", (tmp_path / "board" / "peer" / "node.key",))
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    assert main(["ca", "init", str(shared)]) == 1 and not (shared / "ca.key").exists()
    kept = tmp_path / "kept"
    kept.mkdir(mode=0o755)
    kept.chmod(0o755)
    assert main(["ca", "init", str(kept)]) == 0 and kept.stat().st_mode & 0o777 == 0o700
    (tmp_path / "board" / "peer").mkdir(parents=True)
    (tmp_path / "board" / "peer" / "node.key").write_text("")
    assert main(["ca", "init", str(tmp_path / "on-board")]) == 1 and not (tmp_path / "on-board").exists()
    assert "board" in capsys.readouterr().err


def test_card_install_checks_the_ca_signature_and_the_node_id(tmp_path: Path) -> None:
    """F7: 'card install' checked the card against the board's key and expiry only: another CA's card, or one for
    another node id (the agent then fails every start), installed."""
    ca, data = tmp_path / "ca", tmp_path / "board"
    assert main(["ca", "init", str(ca)]) == 0
    assert main(["ca", "init", str(tmp_path / "other-ca")]) == 0
    assert main(["card", "request", "--node-id", "n1", "--data-dir", str(data), "-o", str(tmp_path / "req")]) == 0
    assert main(["ca", "sign", "--ca", str(ca), str(tmp_path / "req"), "-o", str(tmp_path / "n1.card")]) == 0

    def install(pub: Path, node: str) -> int:
        return main(["card", "install", str(tmp_path / "n1.card"), "--data-dir", str(data), "--operator-ca", str(pub),
                     "--node-id", node])  # fmt: skip

    assert install(tmp_path / "other-ca" / "ca.pub", "n1") == 1  # not signed by the configured CA
    assert install(ca / "ca.pub", "n2") == 1  # not this agent's node id
    assert not (data / "peer" / "board.card").exists()
    assert install(ca / "ca.pub", "n1") == 0 and (data / "peer" / "board.card").exists()


def test_a_card_for_one_cluster_admits_nobody_to_another(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """F5: a board card named no cluster: one operator CA for clusters A and B, a board carded for A that is given
    B's token was a full member of B. Cards (v2) and requests name the token CA's fingerprint."""
    other = "cluster-B-token-0123456789abcdef"
    folder = board(tmp_path / "x", "x")  # x's card, for this cluster (TOKEN)
    with pytest.raises(ConfigError, match="is for cluster"):
        Identity("x", other, folder, operator_ca=OPERATOR.public_key())  # x given B's token: it does not start
    x = Identity("x", TOKEN, folder, operator_ca=OPERATOR.public_key())
    f_in_b = Identity("f", other, board(tmp_path / "f", "f", token=other), operator_ca=OPERATOR.public_key())
    forged = Card.issue(derive_ca_key(other), "x", x.public_key, x.board.raw() if x.board else b"")
    assert f_in_b.operator is not None
    with pytest.raises(CardError, match="another cluster"):
        f_in_b.operator.certify("x", x.public_key, Card.decode(forged.encode()).board)
    # the commands: the request names the board's cluster; install refuses a card of another
    ca, data = tmp_path / "ca", tmp_path / "board"
    assert main(["ca", "init", str(ca)]) == 0
    assert main(["card", "request", "--node-id", "n1", "--data-dir", str(data), "-o", str(tmp_path / "req")]) == 0
    assert json.loads((tmp_path / "req").read_text())["cluster"] == CLUSTER.hex()
    assert main(["ca", "sign", "--ca", str(ca), str(tmp_path / "req"), "-o", str(tmp_path / "n1.card")]) == 0
    monkeypatch.setenv("PEERSERVE_CLUSTER_TOKEN", other)
    install = ["card", "install", str(tmp_path / "n1.card"), "--data-dir", str(data), "--operator-ca",
               str(ca / "ca.pub"), "--node-id", "n1"]  # fmt: skip
    assert main(install) == 1
    monkeypatch.setenv("PEERSERVE_CLUSTER_TOKEN", TOKEN)
    assert main(install) == 0
