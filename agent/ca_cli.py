"""`peerserve ca` and `peerserve card`: an operator's CA for board cards (opt-in; docs/security.md, operator CA).

Without it the cluster token alone makes a member: anyone holding it can mint a card for any node id. With it,
a board is a member only with a board card the operator signed for its node id and node key, with an expiry.

On the operator's own machine (never on a board; the private key stays there, 0600):

  peerserve ca init DIR                         make the CA key pair (DIR/ca.key, DIR/ca.pub)
  peerserve ca sign --ca DIR REQUEST [--days N] [--priority P] [-o CARD] [--replace] [--revoked LIST]
                                                sign a board's request: its board card (JSON), valid N days;
                                                refused while the id (in the request's cluster) or the key
                                                holds a valid card, unless --replace (which revokes it in
                                                DIR/revoked.json, and a copy in LIST if given)
  peerserve ca revoke --ca DIR (CARD... | --node ID [--cluster C]) [-o LIST]
                                                the CA's one signed revocation list, DIR/revoked.json, with
                                                these cards added (-o: a copy there too); --cluster: an id
                                                used in two clusters (the card's cluster, 'ca show CARD')
  peerserve ca show --ca DIR [CARD]             the CA's public key (what boards configure), or a card's fields

On each board:

  peerserve card request --node-id ID [--data-dir D] [-o REQUEST]
                                                the signing request, from D/peer/node.key (made if missing)
  peerserve card install CARD --operator-ca CA.pub --node-id ID [--data-dir D]
                                                check the signed card (the CA's signature, this node id,
                                                this board's key, expiry), copy it to D/peer/board.card

Then give every agent the CA's public key (`operator_ca = "/etc/peerserve/operator-ca.pub"` in its config, or
--operator-ca, or scripts/install.sh --operator-ca FILE --board-card FILE) and copy DIR/revoked.json to a board's
D/peer/revoked.json whenever it changes (an agent re-reads it at once, and the boards pass a newer list on to each
other: agent/revocation_sync.py). The token still gates TLS: both must hold.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

DEFAULT_DATA_DIR = "/var/lib/peerserve"  # what scripts/install.sh configures
DEFAULT_DAYS = 365.0
# what a board has (scripts/install.sh): 'ca init' refuses to make the operator's key where one of these exists
DEFAULT_CONFIG = "/etc/peerserve/peerserve.toml"  # the config scripts/install.sh writes (was config.toml)
BOARD_MARKERS = (Path(DEFAULT_DATA_DIR) / "peer" / "node.key", Path(DEFAULT_CONFIG))


def register(commands: Any) -> None:
    desc = __doc__.split("\n\n", 1)[1]
    ca = commands.add_parser(
        "ca",
        help="an operator's CA for board cards (opt-in; on the operator's machine, never a board)",
        description=desc,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = ca.add_subparsers(dest="ca_command", required=True, metavar="COMMAND")
    init = sub.add_parser("init", help="make the CA key pair in DIR (ca.key 0600, ca.pub)")
    init.add_argument("dir", help="a folder for the CA (created 0700); keep it off the boards, back it up")
    sign = sub.add_parser("sign", help="sign a board's request (from 'peerserve card request'): its board card")
    sign.add_argument("request", help="the board's request file")
    sign.add_argument("--days", type=float, default=DEFAULT_DAYS, help=f"valid this long (default {DEFAULT_DAYS:g})")
    sign.add_argument("--priority", type=int, help="the election priority this board gets (default: none, i.e. 0)")
    sign.add_argument("-o", "--out", help="write the card here (default: stdout)")
    sign.add_argument("--replace", action="store_true", help="revoke (in DIR/revoked.json) the valid cards "
                      "this CA issued to this node id in this cluster or to this key, instead of refusing: one board, "
                      "one card, one voice")  # fmt: skip
    sign.add_argument("--revoked", help="a copy of the CA's revocation list (DIR/revoked.json) kept elsewhere: "
                      "merged into it, and written there too by --replace")  # fmt: skip
    revoke = sub.add_parser("revoke", help="add cards to the signed revocation list boards check")
    revoke.add_argument("cards", nargs="*", help="board card files to revoke")
    revoke.add_argument("--node", action="append", default=[], help="revoke every card issued to this node id (in "
                        "--cluster)")  # fmt: skip
    revoke.add_argument("--cluster", help="with --node: only the cards for this cluster (its 32 hex digits, a card's "
                        "'cluster'); needed for an id this CA carded in two clusters")  # fmt: skip
    revoke.add_argument("-o", "--out", help="a copy of the CA's revocation list (DIR/revoked.json, always written) "
                        "to write here too; merged into it first if it exists")  # fmt: skip
    show = sub.add_parser("show", help="the CA's public key, or a board card's fields")
    show.add_argument("card", nargs="?", help="a board card file to show (checked against the CA)")
    for s in (sign, revoke, show):
        s.add_argument("--ca", required=True, help="the CA folder ('peerserve ca init')")
    for s in (init, sign, revoke, show):
        s.add_argument("--json", action="store_true", help="answer as one JSON object")
    ca.set_defaults(handler=cmd_ca)

    card = commands.add_parser(
        "card",
        help="this board's signing request and signed board card (operator CA mode)",
        description=desc,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = card.add_subparsers(dest="card_command", required=True, metavar="COMMAND")
    req = sub.add_parser("request", help="write this board's signing request (node id + node key, signed by it)")
    req.add_argument("--node-id", required=True, help="the agent's node id (--node-id / node_id)")
    req.add_argument("-o", "--out", help="write the request here (default: stdout)")
    inst = sub.add_parser("install", help="check the operator's signed card against this board and install it")
    inst.add_argument("card", help="the card file from 'peerserve ca sign'")
    inst.add_argument("--operator-ca", required=True, help="the operator CA's public key (ca.pub, or the key): the "
                      "card must be signed by it")  # fmt: skip
    inst.add_argument("--node-id", required=True, help="this agent's node id (node_id): the card must name it")
    for s in (req, inst):
        s.add_argument(
            "--data-dir", default=DEFAULT_DATA_DIR, help=f"the agent's data dir (default {DEFAULT_DATA_DIR})"
        )
        s.add_argument("--config", help=f"the agent's config, for its cluster_token: the card names the cluster "
                       f"(default {DEFAULT_CONFIG} if there; PEERSERVE_CLUSTER_TOKEN also works)")  # fmt: skip
        s.add_argument("--json", action="store_true", help="answer as one JSON object")
    card.set_defaults(handler=cmd_card)


def _emit(args: argparse.Namespace, data: dict[str, Any], text: str) -> None:
    print(json.dumps(data, indent=1) if args.json else text)


def _write(path: str | None, data: dict[str, Any]) -> None:
    text = json.dumps(data, indent=1) + "\n"
    if path is None:
        sys.stdout.write(text)
        return
    tmp = Path(path + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def cmd_ca(args: argparse.Namespace) -> int:
    from agent.operator_ca import CardError

    try:
        return _ca(args)
    except (CardError, OSError, ValueError) as exc:
        print(f"peerserve: error: {exc}", file=sys.stderr)
        return 1


def _load_ca(folder: Path) -> Any:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = serialization.load_pem_private_key((folder / "ca.key").read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{folder / 'ca.key'} is not an Ed25519 key")
    return key


def _ca(args: argparse.Namespace) -> int:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from agent.operator_ca import (
        BoardCard,
        BoardRequest,
        CardError,
        b64,
        raw_public,
        read_board_card,
    )

    if args.ca_command == "init":
        folder = Path(args.dir)
        if (folder / "ca.key").exists():
            raise ValueError(f"{folder / 'ca.key'} exists: a second CA would orphan every card the first signed")
        board = [str(m) for m in BOARD_MARKERS if m.exists()]
        if board:
            raise ValueError(f"this looks like a board ({', '.join(board)}): the operator CA's key never sits on a "
                             "board (a board's root could sign itself any card); run 'ca init' on the operator's "
                             "machine")  # fmt: skip
        if folder.exists() and folder.stat().st_mode & 0o022:
            raise ValueError(f"{folder} is writable by group or others (mode {folder.stat().st_mode & 0o777:o}): "
                             "they could swap ca.key; use a new folder or chmod 700 it")  # fmt: skip
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        folder.chmod(0o700)
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())  # fmt: skip
        fd = os.open(folder / "ca.key", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
        public = b64(raw_public(key.public_key()))
        (folder / "ca.pub").write_text(public + "\n")
        _emit(args, {"ca": str(folder), "public_key": public, "public_file": str(folder / "ca.pub")},
              f"operator CA made in {folder} (keep ca.key there, off the boards)\npublic key {public}\n"
              f"boards: operator_ca = {public!r} (or copy {folder / 'ca.pub'} and name the file)")  # fmt: skip
        return 0
    folder = Path(args.ca)
    if args.ca_command == "show":
        public_key = (folder / "ca.pub").read_text().strip()
        if args.card is None:
            _emit(args, {"public_key": public_key}, public_key)
            return 0
        card = read_board_card(Path(args.card))
        from agent.operator_ca import parse_operator_ca

        try:
            card.verify(parse_operator_ca(public_key))
            valid = True
        except CardError:
            valid = False
        data = {**card.to_json(), "signed_by_this_ca": valid, "expired": time.time() >= card.expires}
        expires = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(card.expires))
        verdict = "signed by this CA" if valid else "NOT signed by this CA"
        _emit(args, data, f"{card.node_id}  key {card.public_key.hex()}  expires {expires}  priority "
              f"{card.priority}  cluster {card.cluster.hex()}  fingerprint {card.fingerprint}  {verdict}")  # fmt: skip
        return 0 if valid else 1
    ca = _load_ca(folder)
    if args.ca_command == "sign":
        request = BoardRequest.from_json(json.loads(Path(args.request).read_text()))
        if not 0 < args.days <= 36500:
            raise ValueError("--days must be 0-36500")
        now = int(time.time())
        copy = Path(args.revoked) if args.revoked else None
        revoked, issued = _revocations(folder, ca.public_key(), copy)
        clash = _valid_cards(folder, request.node_id, request.public_key.hex(), request.cluster.hex(), revoked, now)
        if clash and not args.replace:
            raise ValueError(
                f"this CA already issued valid card(s) to {request.node_id!r} in this cluster or to this key: "
                + ", ".join(f"{e['node_id']} (fingerprint {e['fingerprint']})" for e in clash)
                + f". One board, one card: pass --replace to revoke them in {folder / 'revoked.json'}, install the"
                " new card, then copy the list to the boards"
            )
        dropped = revoked | {str(e["fingerprint"]) for e in clash}
        until = int(now + args.days * 86400)
        card = BoardCard.issue(ca, request.node_id, request.public_key, until, args.priority, cluster=request.cluster)
        while card.fingerprint in dropped:  # the same fields signed in the same second: the very card revoked
            until += 1
            card = BoardCard.issue(ca, request.node_id, request.public_key, until, args.priority,
                                   cluster=request.cluster)  # fmt: skip
        if clash:
            written = _write_revocations(folder, ca, copy, dropped, _stamp(now, issued))
            print(f"revoked {len(clash)} card(s) in {' and '.join(map(str, written))}: copy it to a board's "
                  "DATA_DIR/peer/revoked.json once the new card is installed (the boards pass it on)",
                  file=sys.stderr)  # fmt: skip
        with open(folder / "issued.jsonl", "a") as log:  # what 'ca revoke --node' revokes
            log.write(json.dumps({k: v for k, v in card.to_json().items() if k != "card"}) + "\n")
        _write(args.out, card.to_json())
        if args.out is not None:
            _emit(args, card.to_json(), f"signed {card.node_id}'s card into {args.out} (fingerprint "
                  f"{card.fingerprint}); install it on the board with 'peerserve card install'")  # fmt: skip
        return 0
    # revoke
    copy = Path(args.out) if args.out else None
    revoked, issued = _revocations(folder, ca.public_key(), copy)
    added = {read_board_card(Path(c)).fingerprint for c in args.cards}
    if args.cluster is not None and not args.node:
        raise ValueError("--cluster picks which cards of a --node ID to revoke: give --node")
    added |= _issued_to(folder, args.node, args.cluster)
    if not added:
        raise ValueError("nothing to revoke: name card files or --node IDs this CA issued cards to (in --cluster)")
    written = _write_revocations(folder, ca, copy, revoked | added, _stamp(int(time.time()), issued))
    _emit(args, {"revoked": sorted(added), "total": len(revoked | added), "list": str(written[0]),
                 "copies": [str(p) for p in written[1:]]},
          f"revoked {len(added)} card(s), {len(revoked | added)} in {' and '.join(map(str, written))}: copy it to "
          "a board's DATA_DIR/peer/revoked.json (the boards pass it on to each other)")  # fmt: skip
    return 0


def _revocations(folder: Path, public: Any, copy: Path | None) -> tuple[set[str], int]:
    """The CA's revoked fingerprints: its one list, DIR/revoked.json, merged with ``copy`` (a list kept elsewhere,
    '-o' / '--revoked'), and the highest stamp among them (-1: none). Every write starts from this: a list written
    from a copy alone would be signed later than the CA's list yet lack its revocations, and boards take the newer
    list (review15d F3)."""
    from agent.operator_ca import read_revocations

    found: set[str] = set()
    highest = -1
    for path in (folder / "revoked.json", copy):
        if path is not None and path.exists():
            issued, revoked = read_revocations(path.read_bytes(), public)
            found |= revoked
            highest = max(highest, issued)
    return found, highest


def _stamp(now: int, highest: int) -> int:
    """The stamp a new list is signed with: strictly above every list this CA wrote (``highest``), whatever the clock
    says. Boards keep the newest stamp: a list signed on a clock that reads earlier than the last one's (a laptop
    behind, a second operator machine) would be ignored by running boards and fail every restarted one closed, and
    two lists in one second (a scripted revoke loop) would tie (review16d F1, F2)."""
    return max(now, highest + 1)


def _write_revocations(folder: Path, ca: Any, copy: Path | None, revoked: set[str], now: int) -> list[Path]:
    """Sign ``revoked`` once and write it to DIR/revoked.json and to ``copy`` (if another file); the paths."""
    from agent.operator_ca import MAX_REVOKED, sign_revocations

    if len(revoked) > MAX_REVOKED:
        raise ValueError(f"a revocation list holds at most {MAX_REVOKED} cards")
    signed = sign_revocations(ca, now, sorted(revoked))
    paths = [folder / "revoked.json"]
    if copy is not None and copy.resolve() != paths[0].resolve():
        paths.append(copy)
    for path in paths:
        _write(str(path), signed)
    return paths


def _issued_to(folder: Path, nodes: list[str], cluster: str | None) -> set[str]:
    """The fingerprints of the cards this CA issued (DIR/issued.jsonl) to ``nodes`` in ``cluster`` (None: every
    cluster, refused for an id carded in two: one board's id says nothing of another cluster's board of that name).
    An entry without a cluster (a v1 card) matches any."""
    if cluster is not None:
        cluster = cluster.lower()
        if len(cluster) != 32 or any(c not in "0123456789abcdef" for c in cluster):
            raise ValueError(f"--cluster {cluster!r}: a cluster is 32 hex digits (a card's 'cluster')")
    issued = folder / "issued.jsonl"
    entries = [json.loads(line) for line in (issued.read_text().splitlines() if issued.exists() else [])]
    found: set[str] = set()
    for node in nodes:
        mine = [e for e in entries if e.get("node_id") == node]
        clusters = sorted({str(e["cluster"]) for e in mine if e.get("cluster")})
        if cluster is None and len(clusters) > 1:
            raise ValueError(f"this CA carded {node!r} in {len(clusters)} clusters ({', '.join(clusters)}): name the "
                             "one to revoke with --cluster")  # fmt: skip
        found |= {str(e["fingerprint"]) for e in mine if cluster is None or e.get("cluster") in (None, cluster)}
    return found


def _valid_cards(
    folder: Path, node_id: str, key_hex: str, cluster_hex: str, revoked: set[str], now: int
) -> list[dict[str, Any]]:
    """The cards this CA issued (DIR/issued.jsonl) to ``node_id`` in ``cluster_hex`` or to the key ``key_hex`` (in
    any cluster: one board, one card) that are neither expired nor revoked: each is a voice a second card would add
    to. Ids are per cluster (review15d F2): cluster B's board jetson1 is no voice in cluster A. An entry without a
    cluster (a v1 card) counts in every cluster."""
    issued = folder / "issued.jsonl"
    found = []
    for line in issued.read_text().splitlines() if issued.exists() else []:
        entry = json.loads(line)
        same_id = entry.get("node_id") == node_id and entry.get("cluster", cluster_hex) == cluster_hex
        if not same_id and entry.get("public_key") != key_hex:
            continue
        if int(entry.get("expires", 0)) > now and str(entry.get("fingerprint")) not in revoked:
            found.append(entry)
    return found


def cmd_card(args: argparse.Namespace) -> int:
    from agent.operator_ca import CardError

    try:
        return _card(args)
    except (CardError, OSError, ValueError) as exc:
        print(f"peerserve: error: {exc}", file=sys.stderr)
        return 1


def _cluster(args: argparse.Namespace) -> bytes:
    """The cluster this board's token makes (``Identity.cluster``), which its card must name: the token from the
    agent's config (``--config``, or /etc/peerserve/peerserve.toml) or the environment."""
    from agent.identity import cluster_of
    from agent.settings import load_settings

    config = args.config or (DEFAULT_CONFIG if Path(DEFAULT_CONFIG).exists() else None)
    token = load_settings(config).cluster_token
    if not token:
        raise ValueError("the card names the cluster: give the agent's config (--config FILE with cluster_token) or "
                         "PEERSERVE_CLUSTER_TOKEN")  # fmt: skip
    return bytes.fromhex(cluster_of(token))


def _card(args: argparse.Namespace) -> int:
    from agent.identity import _load_or_create_key
    from agent.operator_ca import BoardRequest, parse_operator_ca, raw_public, read_board_card
    from peerserve import wire

    peer = Path(args.data_dir) / "peer"
    key = _load_or_create_key(peer / "node.key")  # the key the agent signs with (made here on a fresh board)
    if args.card_command == "request":
        if not wire.NODE_ID.fullmatch(args.node_id):
            raise ValueError(f"{args.node_id!r} is not a node id")
        request = BoardRequest.make(args.node_id, key, _cluster(args)).to_json()
        _write(args.out, request)
        if args.out is not None:
            _emit(args, request, f"request for {args.node_id} written to {args.out}: give it to the operator "
                  "('peerserve ca sign --ca DIR REQUEST')")  # fmt: skip
        return 0
    card = read_board_card(Path(args.card))
    try:
        card.verify(parse_operator_ca(args.operator_ca))
    except ValueError as exc:
        raise ValueError(f"--operator-ca {args.operator_ca}: {exc}") from exc
    if card.cluster != _cluster(args):
        raise ValueError(f"the card is for cluster {card.cluster.hex()}, this board's token is cluster "
                         f"{_cluster(args).hex()}: request a card with this board's token")  # fmt: skip
    if card.node_id != args.node_id:
        raise ValueError(f"the card is for node {card.node_id!r}, this agent is {args.node_id!r} (node_id): the "
                         "agent would refuse every start with it")  # fmt: skip
    if card.public_key != raw_public(key.public_key()):
        raise ValueError(f"the card is for another key than this board's ({peer / 'node.key'}): was the request "
                         "made on this board, with this data dir?")  # fmt: skip
    if card.expires <= time.time():
        raise ValueError("the card has expired: ask the operator for a new one")
    target = peer / "board.card"
    tmp = target.with_suffix(".tmp")
    tmp.write_text(json.dumps(card.to_json(), indent=1) + "\n")
    os.replace(tmp, target)
    _emit(args, {**card.to_json(), "installed": str(target)},
          f"installed {card.node_id}'s card in {target} (expires "
          f"{time.strftime('%Y-%m-%d', time.gmtime(card.expires))}); restart the agent")  # fmt: skip
    return 0
