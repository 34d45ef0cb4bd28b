"""`peerserve pins`: list, forget or re-pin the node keys an agent has pinned (re-admitting a re-imaged board).

An agent pins each node id to the first key that proves it (agent/identity.py); a board whose data dir was
wiped comes back with a new key and is refused. The operator, on each other board, either forgets the old
pin (the next CA-signed key for that id is pinned) or, stricter, pins the new key it read on the re-imaged
board with ``peerserve pins key``. Both edit ``DATA_DIR/peer/pins.json`` under the lock the agent uses; a
running agent sees the change at its next message, no restart. Only someone who can write the data dir
(root, the agent's user) can do this: a peer, even an admitted one, cannot.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

DEFAULT_DATA_DIR = "/var/lib/peerserve"  # what scripts/install.sh configures
_KEY = re.compile(r"[0-9a-f]{64}")


def register(commands: Any) -> None:
    p = commands.add_parser(
        "pins",
        help="list, forget or re-pin the node keys this board's agent trusts",
        description=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="pins_command", required=True, metavar="COMMAND")
    ls = sub.add_parser("list", help="the pinned node ids and their keys")
    ls.add_argument("--json", action="store_true", help="one JSON object {node_id: key hex}")
    fg = sub.add_parser("forget", help="drop a node id's pin, or replace it with --key")
    fg.add_argument("node_id", help="the re-imaged board's node id")
    fg.add_argument("--key", help="pin this key (64 hex digits, from 'peerserve pins key' on that board) "
                    "instead of accepting the next key that proves the id")  # fmt: skip
    key = sub.add_parser("key", help="this board's own public node key (to pin elsewhere with forget --key)")
    for s in (ls, fg, key):
        s.add_argument(
            "--data-dir", default=DEFAULT_DATA_DIR, help=f"the agent's data dir (default {DEFAULT_DATA_DIR})"
        )
    p.set_defaults(handler=cmd_pins)


def cmd_pins(args: argparse.Namespace) -> int:
    import sys

    from agent.identity import DamagedPinFile

    try:
        return _pins(args)
    except DamagedPinFile as exc:
        path = Path(args.data_dir) / "peer" / "pins.json"
        print(f"peerserve: error: {exc}\n  to start afresh (every node pinned again on first contact, the agent "
              f"picks it up at once): mv {path} {path}.damaged", file=sys.stderr)  # fmt: skip
        return 1
    except OSError as exc:
        print(f"peerserve: error: cannot read or write the pin file: {exc}", file=sys.stderr)
        return 1


def _pins(args: argparse.Namespace) -> int:
    from agent.identity import edit_pin, read_pins
    from peerserve import wire
    from peerserve.errors import UsageError

    peer = Path(args.data_dir) / "peer"
    if not peer.is_dir():
        raise UsageError(f"{peer} does not exist: is --data-dir the agent's data dir (and are you root)?")
    if args.pins_command == "key":
        print(own_public_key(peer / "node.key").hex())
        return 0
    path = peer / "pins.json"
    if args.pins_command == "list":
        pins = {k: v.hex() for k, v in read_pins(path).items()}
        print(json.dumps(pins, indent=1) if args.json else "\n".join(f"{k}  {v}" for k, v in sorted(pins.items())))
        return 0
    if not wire.NODE_ID.fullmatch(args.node_id):
        raise UsageError(f"{args.node_id!r} is not a node id")
    if args.key is not None and not _KEY.fullmatch(args.key.lower()):
        raise UsageError("--key takes the 64 hex digits 'peerserve pins key' prints on that board")
    before = edit_pin(path, args.node_id, bytes.fromhex(args.key) if args.key else None)
    was = before.hex() if before else "nothing"
    now = f"pinned to {args.key.lower()}" if args.key else "forgotten: its next key with a valid card is pinned"
    print(f"{args.node_id}: was pinned to {was}; now {now}")
    return 0


def own_public_key(path: Path) -> bytes:
    """The raw Ed25519 public key of the node key at ``path``."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from peerserve.errors import UsageError

    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read the node key {path}: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise UsageError(f"{path} is not an Ed25519 key")
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
