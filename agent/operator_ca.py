"""Board cards from an operator's CA (opt-in): node ids bound to board keys by someone who holds no token secret.

In the token-only mode (the default) the cluster CA is derived from the shared token (agent/identity.py), so anyone
who holds the token can mint a card for any node id: ids are free, and a majority has to count distinct addresses
instead (a member that answers at several addresses still has several voices), and priorities are self-declared.

With an operator CA (agent setting ``operator_ca``: its public key) a peer is a member only with a *board card*:
the operator CA's Ed25519 signature over (node id, the board's node key, expiry, optional priority). The board card
rides appended to the token card (``Card.board``), so it goes wherever the token card goes today (every signed
message, every answer, every relayed statement: grants, leases, suspicion proofs) and is checked where that card is
checked; the token still gates TLS and the token card must still hold. The operator's private key never sits on a
board (``peerserve ca init`` on the operator's machine). Node ids are no longer free, so majorities count node ids
(one voice per card), and the election takes the card's priority (0 where the card carries none), not the flag.

    BoardCard        the signed binding; ``issue`` (operator side), ``parse`` / ``verify`` (board side)
    BoardRequest     what a board hands the operator: node id + node key, signed by that key (proof of possession)
    Revocations      the operator's signed list of revoked card fingerprints, re-read when its file changes
    OperatorTrust    a board's verifier: card -> BoardCard (verdicts cached, bounded), expiry and revocation per use,
                     and the roster of the latest verified card per node id (bounded) for direct TLS exchanges
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import os
import struct
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from agent.durable import fsync_dir, tmp_glob, unique_tmp, write_atomic, write_synced
from peerserve import wire

log = logging.getLogger(__name__)

BOARD_CONTEXT = b"peerserve-board-card-v2\0"
REQUEST_CONTEXT = b"peerserve-board-request-v2\0"
REVOKE_CONTEXT = b"peerserve-revocations-v1\0"
VERSION = 2  # v2 names the cluster (review15a F5); v1 cards (no cluster) are refused
V1 = "a v1 card (before cards named the cluster): request and sign a new one"  # what a v1 card or request is told
CLUSTER_BYTES = 16  # Identity.cluster: the token CA's public key's SHA-256, first 16 bytes
# the largest board card: version, id, key, cluster, expiry/flags/priority, signature
MAX_BOARD_BYTES = 2 + 63 + 32 + CLUSTER_BYTES + 13 + 64
VERDICTS = 1024  # board cards whose operator signature was checked, by their bytes (one check per card, not message)
ROSTER = 4096  # node id -> its latest verified board card (as many as ids can be pinned: identity.PIN_LIMIT)
MAX_REVOKED = 65_536  # fingerprints in one revocation list
MAX_REVOCATION_FILE = 64 + MAX_REVOKED * 40 + 4096  # bytes read from it at most
PRIORITY_RANGE = (-(2**31), 2**31 - 1)
REVOCATION_PAGE = 4096  # fingerprints in one answer of GET /peer/revocations (~140 KB, under wire.MAX_BODY)
# what became of a list a member handed this board (Revocations.offer; peerserve_revocation_lists_total{outcome})
OFFER_OUTCOMES = ("accepted", "older", "conflict", "forged", "damaged", "oversized", "unusable", "unwritable")
STAMP_FORMAT = "peerserve-revocation-stamps-v1"
STAMP_CAS = 16  # records in the stamp file: one per operator CA this board has trusted (the oldest other one dropped)
STAMP_FILE = 4096  # bytes read from it at most
PIN_CARDS_FORMAT = "peerserve-pin-cards-v1"
PIN_CARDS_FILE = 1 << 20  # bytes read from DATA_DIR/peer/pin-cards.json at most (ROSTER entries of ~150 bytes)


class CardError(Exception):
    """Not a valid board card, request or revocation list for this operator; ``status`` the HTTP answer."""

    def __init__(self, message: str, status: int = 403) -> None:
        super().__init__(message)
        self.status = status


class ForgedList(CardError):
    """A revocation list whose signature is not this operator CA's (forged, or another operator's)."""


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except ValueError as exc:
        raise CardError("malformed base64") from exc


def raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


@dataclass(frozen=True)
class BoardCard:
    """The operator CA's signature binding ``node_id`` to ``public_key`` (the board's node key) in ``cluster`` (the
    token CA's fingerprint: a card for one cluster admits nobody to another the same operator CA serves) until
    ``expires``."""

    node_id: str
    public_key: bytes  # 32 raw bytes: DATA_DIR/peer/node.key's public half
    cluster: bytes  # CLUSTER_BYTES: bytes.fromhex(Identity.cluster) of the token the board was given
    expires: int  # unix seconds
    priority: int | None  # the election priority the operator grants (None: 0 in this mode)
    signature: bytes = b""  # 64 bytes, the operator CA over BOARD_CONTEXT + body

    def body(self) -> bytes:
        nid = self.node_id.encode()
        has = self.priority is not None
        return (
            bytes([VERSION, len(nid)])
            + nid
            + self.public_key
            + self.cluster
            + struct.pack(">QBi", self.expires, has, self.priority or 0)
        )

    def raw(self) -> bytes:
        return self.body() + self.signature

    @property
    def fingerprint(self) -> str:
        """What a revocation list names: the card's bytes' SHA-256 (32 hex digits); a renewed card has another."""
        return hashlib.sha256(self.raw()).hexdigest()[:32]

    @staticmethod
    def issue(
        ca: Ed25519PrivateKey, node_id: str, public_key: bytes, expires: int, priority: int | None = None, *,
        cluster: bytes,
    ) -> BoardCard:  # fmt: skip
        if not wire.NODE_ID.fullmatch(node_id) or len(public_key) != 32 or len(cluster) != CLUSTER_BYTES:
            raise CardError("a board card names a node id, a 32-byte Ed25519 key and a 16-byte cluster")
        if priority is not None and not PRIORITY_RANGE[0] <= priority <= PRIORITY_RANGE[1]:
            raise CardError("priority out of range")
        unsigned = BoardCard(node_id, public_key, cluster, expires, priority)
        return BoardCard(node_id, public_key, cluster, expires, priority, ca.sign(BOARD_CONTEXT + unsigned.body()))

    @staticmethod
    def parse(raw: bytes) -> BoardCard:
        if len(raw) >= 2 and raw[0] == 1 and len(raw) == 2 + raw[1] + 32 + 13 + 64:  # v1: no cluster
            raise CardError(V1)
        if len(raw) < 2 or raw[0] != VERSION:
            raise CardError("malformed board card (or of a newer version)")
        n = raw[1]
        if not 0 < n <= 63 or len(raw) != 2 + n + 32 + CLUSTER_BYTES + 13 + 64:
            raise CardError("malformed board card")
        node_id = raw[2 : 2 + n].decode("ascii", "replace")
        if not wire.NODE_ID.fullmatch(node_id):
            raise CardError("malformed node id in board card")
        at = 2 + n
        key, cluster = raw[at : at + 32], raw[at + 32 : at + 32 + CLUSTER_BYTES]
        at += 32 + CLUSTER_BYTES
        expires, has, priority = struct.unpack(">QBi", raw[at : at + 13])
        if has not in (0, 1):
            raise CardError("malformed board card")
        return BoardCard(node_id, key, cluster, expires, priority if has else None, raw[at + 13 :])

    def verify(self, ca_public: Ed25519PublicKey) -> None:
        try:
            ca_public.verify(self.signature, BOARD_CONTEXT + self.body())
        except InvalidSignature as exc:
            raise CardError(f"{self.node_id}'s board card is not signed by this cluster's operator CA") from exc

    def to_json(self) -> dict[str, Any]:
        return {"format": "peerserve-board-card-v2", "node_id": self.node_id, "public_key": self.public_key.hex(),
                "cluster": self.cluster.hex(), "expires": self.expires, "priority": self.priority,
                "fingerprint": self.fingerprint, "card": b64(self.raw())}  # fmt: skip


def read_board_card(path: Path) -> BoardCard:
    """The board card in ``path`` (what ``peerserve ca sign`` writes: JSON with a ``card`` field); CardError."""
    try:
        data = json.loads(path.read_text())
        return BoardCard.parse(unb64(str(data["card"])))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CardError(f"cannot read a board card from {path}: {exc}") from exc


@dataclass(frozen=True)
class BoardRequest:
    """A board's signing request: its node id, node key and cluster (from its token), signed by that key (the
    operator signs only a key whose holder asked, for the cluster it was given the token of)."""

    node_id: str
    public_key: bytes
    cluster: bytes
    signature: bytes

    @staticmethod
    def signing_bytes(node_id: str, public: bytes, cluster: bytes) -> bytes:
        return REQUEST_CONTEXT + node_id.encode() + b"\0" + public + cluster

    @staticmethod
    def make(node_id: str, key: Ed25519PrivateKey, cluster: bytes) -> BoardRequest:
        public = raw_public(key.public_key())
        return BoardRequest(node_id, public, cluster, key.sign(BoardRequest.signing_bytes(node_id, public, cluster)))

    def to_json(self) -> dict[str, Any]:
        return {"format": "peerserve-board-request-v2", "node_id": self.node_id, "public_key": self.public_key.hex(),
                "cluster": self.cluster.hex(), "signature": b64(self.signature)}  # fmt: skip

    @staticmethod
    def from_json(data: Any) -> BoardRequest:
        """The request in ``data``, its signature checked; CardError."""
        if isinstance(data, dict) and data.get("format") == "peerserve-board-request-v1":
            raise CardError(
                "a v1 request (for a v1 card, before cards named the cluster): run 'peerserve card request' "
                "again on the board and sign the new one"
            )
        try:
            node_id, public = str(data["node_id"]), bytes.fromhex(str(data["public_key"]))
            cluster = bytes.fromhex(str(data["cluster"]))
            request = BoardRequest(node_id, public, cluster, unb64(str(data["signature"])))
        except (KeyError, TypeError, ValueError) as exc:
            raise CardError(f"not a board signing request: {exc}") from exc
        if (
            data.get("format") != "peerserve-board-request-v2"
            or not wire.NODE_ID.fullmatch(node_id)
            or len(public) != 32
            or len(cluster) != CLUSTER_BYTES
        ):
            raise CardError("not a board signing request (format, node id, key or cluster)")
        try:
            Ed25519PublicKey.from_public_bytes(public).verify(
                request.signature, BoardRequest.signing_bytes(node_id, public, cluster)
            )
        except (InvalidSignature, ValueError) as exc:
            raise CardError("the request is not signed by the key it names") from exc
        return request


def revocation_bytes(issued: int, revoked: list[str]) -> bytes:
    return REVOKE_CONTEXT + json.dumps([issued, sorted(revoked)], separators=(",", ":")).encode()


def list_text(issued: int, ordered: list[str] | tuple[str, ...], signature: str) -> bytes:
    """A signed list as a file holds it (what ``peerserve ca revoke`` writes, compactly): ``ordered`` sorted."""
    return json.dumps({"format": "peerserve-revocations-v1", "issued": issued, "revoked": list(ordered),
                       "signature": signature}, separators=(",", ":")).encode()  # fmt: skip


def list_digest(revoked: frozenset[str]) -> str:
    """What a revocation list names, in 32 hex digits: recorded with its stamp, so that two lists signed at the same
    stamp are told apart after a restart."""
    return hashlib.sha256(json.dumps(sorted(revoked)).encode()).hexdigest()[:32]


def sign_revocations(ca: Ed25519PrivateKey, issued: int, revoked: list[str]) -> dict[str, Any]:
    if len(revoked) > MAX_REVOKED:
        raise CardError(f"a revocation list holds at most {MAX_REVOKED} cards")
    revoked = sorted(set(revoked))
    return {"format": "peerserve-revocations-v1", "issued": issued, "revoked": revoked,
            "signature": b64(ca.sign(revocation_bytes(issued, revoked)))}  # fmt: skip


def parse_revocations(text: bytes, ca_public: Ed25519PublicKey) -> frozenset[str]:
    """The fingerprints a signed revocation list names; CardError when it is not one (damaged, unsigned, too long)."""
    return read_revocations(text, ca_public)[1]


def read_revocations(text: bytes, ca_public: Ed25519PublicKey) -> tuple[int, frozenset[str]]:
    """(when it was signed, the fingerprints) of a signed revocation list; CardError as ``parse_revocations``."""
    issued, revoked, _signature = read_signed_revocations(text, ca_public)
    return issued, revoked


def read_signed_revocations(text: bytes, ca_public: Ed25519PublicKey) -> tuple[int, frozenset[str], str]:
    """``read_revocations`` with the operator's signature (base64url): what a board hands a peer that asks for the
    list (``GET /peer/revocations``), so the peer checks it under its own operator CA. A list not signed by
    ``ca_public`` is a ``ForgedList``."""
    try:
        data = json.loads(text)
        issued, revoked = int(data["issued"]), data["revoked"]
        if data.get("format") != "peerserve-revocations-v1" or not isinstance(revoked, list):
            raise ValueError("not a revocation list")
        if len(revoked) > MAX_REVOKED or not all(isinstance(r, str) and len(r) == 32 for r in revoked):
            raise ValueError(f"at most {MAX_REVOKED} fingerprints of 32 hex digits")
        signature = str(data["signature"])
        ca_public.verify(unb64(signature), revocation_bytes(issued, revoked))
    except InvalidSignature as exc:
        raise ForgedList("the revocation list is not signed by this cluster's operator CA") from exc
    except (ValueError, KeyError, TypeError) as exc:  # JSON errors are ValueErrors
        raise CardError(f"damaged revocation list: {str(exc)[:200]}") from exc
    return issued, frozenset(revoked), signature


@dataclass(frozen=True)
class SignedList:
    """A revocation list checked against the operator CA (``Revocations.offer_check``), with its order and digest."""

    issued: int
    revoked: frozenset[str]
    signature: str
    ordered: tuple[str, ...]
    digest: str


@dataclass(frozen=True)
class Staged:
    """A list a member handed this board, checked (``offer_check``) and written to a temporary file beside the
    synced one, fsynced (``offer_stage``, off the event loop), for ``offer_commit`` to rename into place or drop."""

    checked: SignedList
    tmp: Path | None  # None: not written (no synced file kept, or the write failed: ``error``)
    stat: tuple[int, int, int] | None  # (inode, mtime, size) of the file written: what the synced file is once renamed
    error: str = ""


@dataclass
class _ListFile:
    """One file a revocation list is read from: the operator's or the synced one (``Revocations``)."""

    path: Path | None
    stat: tuple[int, int, int] | None = None  # (inode, mtime, size) when last read
    read: bool = False  # looked at since the start
    held: tuple[int, frozenset[str], str] | None = None  # (issued, fingerprints, signature) of the list it holds
    damage: str | None = None  # why what it holds cannot be used
    why: str = ""  # why its list is not in force after a restart (older than the record)


def _stat_of(path: Path | None) -> tuple[int, int, int] | None:
    try:
        st = path.stat() if path is not None else None  # follows a symlinked operator path to its target
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size) if st is not None else None


def _unlink_quietly(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()


class Revocations:
    """The operator's revocation list (absent: nothing revoked), read from two files and re-read whenever either
    changes (one stat each per check): ``path``, the operator's (``DATA_DIR/peer/revoked.json``, or the agent's
    ``revocations`` setting, which may be a symlink; this board never writes it), and ``synced``
    (``DATA_DIR/peer/revoked.synced.json``), where this board keeps the newest list a member handed it
    (agent/revocation_sync.py; ``offer_*``). The list in force is the newer signed one of the two; each is held to
    the same rules. Had the board written fetched lists to the operator's file, an operator's newer copy landing during
    that write was renamed over and lost, the stat recorded could name the operator's file while the list in force was
    another, and a symlinked path became a plain file (review19a F1-F3).

    An operator's file that is there but not a list signed by this operator CA fails closed: every board card is
    refused (503) until it is replaced, logged once per version of the file; a list cut short or forged must not
    readmit a revoked board. A damaged synced file (only this board writes it) is logged and not used; the stamp
    record below refuses what it may have held. A synced file that loses the list in force from it while the agent
    runs (removed, damaged, an older list copied over it) is written again (``lost_synced``, ``restore_*``, driven by
    agent/revocation_sync.py). An older list (a stale copy, or one replayed to undo a revocation):
    one signed before the list in force, or a file's removal, leaves that list in force (logged); only a newer signed
    list, as ``peerserve ca revoke`` writes or a member hands over, changes it.

    The rule outlives a restart: when a newer list is accepted, its stamp (when it was signed) is recorded for this
    CA in ``floor`` (``DATA_DIR/peer/revoked.stamp.json``; atomic, fsynced; one record per CA, ``STAMP_CAS``). A
    restarted agent that finds neither file holding a list signed at or after the recorded stamp cannot know what the
    newer one revoked: it fails closed (503 for every board card, logged with what to do) until a list at least as
    new is copied there. A damaged or foreign stamp file is logged as such and set aside (``.damaged``), never a
    crash: the lists on disk are then used as they are (their revocations in force) and the stamp recorded anew. For
    an operator's copy read on an event loop, the record is written by a thread of its own (``_record_later``; the
    loop never fsyncs it nor waits on its lock: review19f R4); for a member's list, in a thread (``offer_persist``).
    Either way a newer record is never overwritten by an older one (versions, ``_write_record``)."""

    def __init__(
        self, path: Path | None, ca_public: Ed25519PublicKey, floor: Path | None = None, synced: Path | None = None
    ) -> None:
        self.path, self.ca_public, self.floor_path, self.synced_path = path, ca_public, floor, synced
        self.ca = hashlib.sha256(raw_public(ca_public)).hexdigest()[:32]  # whose record in the stamp file
        self._operator, self._synced = _ListFile(path), _ListFile(synced)
        self._source: _ListFile | None = None  # the file the list in force was read from (or written to)
        self._revoked: frozenset[str] = frozenset()
        self._damage: str | None = None
        self._issued = -1  # when the list in force was signed (-1: none read yet)
        self._signature = ""  # ... the operator's signature over it, and its fingerprints in order: what a member
        self._sorted: tuple[str, ...] = ()  # that asks is handed (``page``), to check under its own operator CA
        self._digest = ""  # list_digest of the list in force: advertised to members (``advert``)
        self._lists: dict[str, str] = {}  # CA fingerprint -> the digest of the list recorded with its stamp
        self._unreadable: str | None = None  # why the record exists but cannot be read (fails closed)
        self._write_lock = threading.Lock()  # one writer of the stamp record at a time (never the loop: review19f R4)
        self._record_seq = self._written_seq = 0  # record versions made / the newest written (none goes back)
        # the record of an operator's copy read on an event loop, for the record thread (``_record_later``): the
        # newest one waiting (older ones are skipped, as ``_write_record`` would), and whether that thread runs;
        # the condition's lock is never held across I/O, so the loop never waits on a disk
        self._queued: tuple[int, bytes] | None = None
        self._recording = False
        self._queue = threading.Condition(threading.Lock())
        for kept in (synced, floor):  # temporary files a crash left behind (unique names, see durable.unique_tmp)
            if kept is not None:
                for left in kept.parent.glob(tmp_glob(kept)):
                    _unlink_quietly(left)
        self._stamps = self._read_floor()  # CA fingerprint -> the newest list's stamp this board accepted for it
        self._floor = self._stamps.get(self.ca, -1)

    def current(self) -> frozenset[str]:
        """The revoked fingerprints; CardError (503) while the operator's file is damaged or, after a restart, no
        list as new as the recorded one is there."""
        fresh = []
        for f in (self._operator, self._synced):
            stat = _stat_of(f.path)
            if stat != f.stat or not f.read:
                first, f.stat, f.read = not f.read, stat, True
                self._read_file(f)
                fresh.append((f, first))
        if fresh:
            self._settle(fresh)
        if self._damage is not None:
            raise CardError(self._damage, 503)
        return self._revoked

    @property
    def in_force_from(self) -> Path | None:
        """The file the list in force was read from or written to (None: none in force): what /cluster shows."""
        return self._source.path if self._source is not None and self._issued >= 0 else None

    def _read_file(self, f: _ListFile) -> None:
        f.held, f.damage, f.why = None, None, ""
        if f.path is None:
            return
        if f.stat is None:
            if self._source is f and self._issued >= 0:
                log.error("revocation list %s removed: the list signed at %d stays in force (%d card(s) revoked)%s",
                          f.path, self._issued, len(self._revoked),
                          "; it is written there again" if f is self._synced else "")  # fmt: skip
            return
        try:
            with open(f.path, "rb") as file:
                text = file.read(MAX_REVOCATION_FILE + 1)
            if len(text) > MAX_REVOCATION_FILE:
                raise CardError(f"revocation list over {MAX_REVOCATION_FILE} bytes")
            f.held = read_signed_revocations(text, self.ca_public)
        except (OSError, CardError) as exc:
            if f is self._operator:
                f.damage = f"this board's revocation list {f.path} cannot be used ({exc}): no board card is " \
                           "accepted until the operator's signed list replaces it"  # fmt: skip
                log.error("%s", f.damage)
            else:  # only this board writes it: the record refuses whatever older list it may leave in force
                f.damage = f"{exc}"
                log.error("the revocation list members handed this board, %s, cannot be used (%s): not taken; a "
                          "newer list from a member replaces it, unless this board's stamp record then refuses every "
                          "list it has (copy the operator's list here by hand)", f.path, exc)  # fmt: skip

    def _settle(self, fresh: list[tuple[_ListFile, bool]]) -> None:
        """The files in ``fresh`` were (re)read: put the newest usable list in force, then work out whether to fail
        closed (the operator's file damaged, the record unreadable, or none as new as the recorded stamp)."""
        if self._unreadable is not None:  # its stamp unknown: any list may be the older one put back
            self._damage = self._unreadable
            return
        held = [(f, first) for f, first in fresh if f.held is not None]
        # newest first; at a tie the synced file first: it only ever takes a stamp above the list in force, so a
        # same-stamp pair means it was in force and the operator's other list was refused (review19f R1: with the
        # record behind -- a crash before it, a full disk -- the operator's list won after a restart)
        for f, first in sorted(held, key=lambda h: (-h[0].held[0], h[0] is self._operator)):  # type: ignore[index]
            self._consider(f, first)
        damage = self._operator.damage
        if damage is None and self._issued < 0 and self._floor >= 0:  # restarted without the list accepted last
            what = " and ".join(f"{f.path} {f.why or ('is missing' if f.stat is None else 'cannot be used')}"
                                for f in (self._operator, self._synced) if f.path is not None)  # fmt: skip
            damage = self._refuse_older(what or "(none kept) is missing")
        self._damage = damage

    def _consider(self, f: _ListFile, first: bool) -> None:
        """The list ``f`` holds, newly read: in force if newer than the one in force and not older than the record."""
        assert f.held is not None
        issued, revoked, signature = f.held
        if issued == self._issued:
            if revoked == self._revoked:
                f.held = (issued, self._revoked, signature)  # the very set in force: ``lost_synced`` compares by id
            else:
                log.error("revocation list %s was signed at %d like the one in force but names other cards: a "
                          "conflicting list (two signed in one second by an older 'peerserve ca'?). The list in force "
                          "stays; sign a new one with 'peerserve ca revoke'", f.path, issued)  # fmt: skip
            return
        if issued < self._issued:
            if first:  # at the start: the operator's copy of an older list, a newer one from members kept (or so)
                log.info("revocation list %s was signed at %d; the one in force, from %s, is newer (%d)", f.path,
                         issued, self.in_force_from, self._issued)  # fmt: skip
            else:
                log.error("revocation list %s was signed at %d, before the one in force (%d, from %s): a stale copy? "
                          "The newer list stays in force", f.path, issued, self._issued,
                          self.in_force_from)  # fmt: skip
            return
        if issued < self._floor:  # none in force yet (a restart): the newer list's revocations are unknown here
            f.why = f"was signed at {issued}"
            return
        recorded = self._lists.get(self.ca)
        if issued == self._floor and recorded is not None and recorded != list_digest(revoked):
            f.why = f"was signed at {issued} but names other cards than the list recorded"
            return
        self._record_later(self._accept(issued, revoked, signature, f))
        log.info("revocation list %s: %d board card(s) revoked", f.path, len(self._revoked))

    def _accept(
        self, issued: int, revoked: frozenset[str], signature: str, f: _ListFile, known: SignedList | None = None
    ) -> tuple[int, bytes] | None:
        """Put the list signed at ``issued`` (from ``f``) in force; note its stamp when newer than the record (or
        none held) and return the record to write (``_write_record``), else None. ``known``: its order and digest,
        worked out already (off the loop)."""
        self._issued, self._revoked, self._signature, self._source = issued, revoked, signature, f
        self._sorted = known.ordered if known is not None else tuple(sorted(revoked))
        self._digest = known.digest if known is not None else list_digest(revoked)
        if issued > self._floor or self._lists.get(self.ca) is None:
            return self._note(issued, self._digest)
        return None

    # -- between boards (agent/revocation_sync.py) ---------------------------------------------------------------
    def advert(self) -> tuple[int, str] | None:
        """(stamp, digest) of the list in force, which this board advertises on its SWIM messages; None when none is
        in force or the list is unusable (nothing to hand out)."""
        try:
            self.current()
        except CardError:
            return None
        return (self._issued, self._digest) if self._issued >= 0 else None

    def page(self, stamp: int, offset: int, limit: int) -> dict[str, Any] | None:
        """Fingerprints ``offset`` .. ``offset + limit`` of the list in force (in order) with its stamp, signature and
        length: one answer of ``GET /peer/revocations`` (a whole list can exceed a peer answer's bound); None when the
        list in force is not the one signed at ``stamp`` (a newer one came meanwhile, or none is in force)."""
        if self.advert() is None or self._issued != stamp:
            return None
        return {"issued": self._issued, "signature": self._signature, "total": len(self._sorted), "offset": offset,
                "revoked": list(self._sorted[offset : offset + limit])}  # fmt: skip

    def offer(self, text: bytes, source: str) -> str:
        """A list a member (``source``) handed this board, all steps in line: ``offer_check``, ``offer_stage``,
        ``offer_commit``, ``offer_persist``; the outcome. (revocation_sync runs all but the commit in a thread.)"""
        checked = self.offer_check(text, source)
        if isinstance(checked, str):
            return checked
        outcome, record = self.offer_commit(self.offer_stage(text, checked), source)
        if outcome == "accepted":
            self.offer_persist(record)
        return outcome

    def offer_check(self, text: bytes, source: str) -> SignedList | str:
        """The bytes-only part of ``offer``: ``text`` as a ``SignedList`` if it is a list signed by this board's
        operator CA, else the outcome (logged). Reads nothing that changes, so it runs off the event loop: a whole
        list is ~2.3 MB of JSON, a signature over it, its order and digest (~0.3 s on a loaded core)."""
        if len(text) > MAX_REVOCATION_FILE:
            log.warning("refused a revocation list from %s: over %d bytes", source, MAX_REVOCATION_FILE)
            return "oversized"
        try:
            issued, revoked, signature = read_signed_revocations(text, self.ca_public)
        except CardError as exc:
            log.warning("refused a revocation list from %s: %s", source, exc)
            return "forged" if isinstance(exc, ForgedList) else "damaged"
        return SignedList(issued, revoked, signature, tuple(sorted(revoked)), list_digest(revoked))

    def offer_stage(self, text: bytes, checked: SignedList) -> Staged:
        """Write ``text`` (``checked``) to a temporary file of its own beside the synced file and fsync it (off the
        event loop: ~20 ms for a whole list here, more on eMMC); never raises. Reads nothing that changes."""
        if self.synced_path is None:
            return Staged(checked, None, None)
        tmp = unique_tmp(self.synced_path)
        try:
            st = write_synced(tmp, text)
        except OSError as exc:
            _unlink_quietly(tmp)
            return Staged(checked, None, None, str(exc))
        return Staged(checked, tmp, (st.st_ino, st.st_mtime_ns, st.st_size))

    def offer_commit(self, staged: Staged, source: str) -> tuple[str, tuple[int, bytes] | None]:
        """On the event loop: put the list ``staged`` in force, by renaming it over the synced file, only if strictly
        newer than the list in force (both files re-read first if changed) and the recorded stamp; else drop it. The
        outcome, one of ``OFFER_OUTCOMES`` (every refusal logged), and the stamp record to write (``offer_persist``).
        Never raises: a member's bad list loses nothing here. The synced file's stat is the one of the file written,
        not a stat after the rename: if anything replaced it since, the next check re-reads it."""
        checked = staged.checked
        outcome = self._admit(checked, source)
        if outcome is None and staged.tmp is None:
            log.error("cannot write the revocation list signed at %d from %s beside %s (%s): it is not in force",
                      checked.issued, source, self.synced_path, staged.error)  # fmt: skip
            outcome = "unwritable"
        if outcome is None:
            assert staged.tmp is not None and self.synced_path is not None
            try:
                os.replace(staged.tmp, self.synced_path)
            except OSError as exc:
                log.error("cannot put the revocation list signed at %d from %s in place at %s (%s): it is not in "
                          "force", checked.issued, source, self.synced_path, exc)  # fmt: skip
                outcome = "unwritable"
        if outcome is not None:
            if staged.tmp is not None:
                _unlink_quietly(staged.tmp)
            return outcome, None
        f = self._synced
        f.stat, f.read, f.held, f.damage, f.why = staged.stat, True, (checked.issued, checked.revoked,
                                                                      checked.signature), None, ""  # fmt: skip
        record = self._accept(checked.issued, checked.revoked, checked.signature, f, checked)
        log.info("revocation list signed at %d (%d board card(s) revoked) from %s put in force, kept in %s",
                 checked.issued, len(checked.revoked), source, self.synced_path)  # fmt: skip
        return "accepted", record

    def offer_persist(self, record: tuple[int, bytes] | None) -> None:
        """After an accepted ``offer_commit`` (off the event loop): the synced file's rename made durable (its folder
        fsynced), then the stamp record written. A crash before the record leaves a synced list newer than the
        record, which the restart accepts and records."""
        if self.synced_path is not None:
            try:
                fsync_dir(self.synced_path.parent)
            except OSError as exc:
                log.error("cannot fsync %s (%s): a power cut may lose the revocation list members handed this board",
                          self.synced_path.parent, exc)  # fmt: skip
        self._write_record(record)

    def lost_synced(self, restat: bool = True) -> SignedList | None:
        """The list in force, when it was put in force from the synced file and that file no longer holds it: removed
        (by hand, a disk problem), damaged or replaced by an older list while the agent runs. The board would go on
        enforcing and advertising it while the next restart found none (and failed closed) or an older one (review19f
        R3): ``restore_stage`` writes it again, ``restore_commit`` puts it back. None when the file holds it, or the
        list in force is the operator's (this board never writes that file). Re-stats both files (``current``) unless
        ``restat`` is False (the caller has just called ``current``: ``RevocationSync.advert``)."""
        if restat:
            with contextlib.suppress(CardError):  # the operator's file damaged: the members' list kept
                self.current()
        f = self._synced
        if self._source is not f or self._issued < 0 or f.path is None:
            return None
        if f.held is not None and f.held[0] == self._issued and f.held[1] is self._revoked:
            return None  # (by identity: it runs at every advert, and comparing 65,536 fingerprints costs ~3 ms)
        return SignedList(self._issued, self._revoked, self._signature, self._sorted, self._digest)

    def restore_stage(self, lost: SignedList) -> Staged:
        """Off the event loop: ``lost`` (``lost_synced``) as a file's text, written beside the synced file and fsynced
        (``offer_stage``); never raises."""
        return self.offer_stage(list_text(lost.issued, lost.ordered, lost.signature), lost)

    def restore_commit(self, staged: Staged) -> str:
        """On the event loop: rename ``staged`` (``restore_stage``) over the synced file if the list in force is still
        the one it holds and the synced file still lacks it (both re-stat'd), else drop it. "written" when put back
        (the folder's fsync then: ``offer_persist(None)``); "not needed" when dropped because nothing is lost any more
        or another list is (a newer list came in meanwhile: review20a L2); "failed" when the write or the rename
        failed (logged). Never raises."""
        checked, lost = staged.checked, self.lost_synced()
        put = staged.tmp is not None and lost is not None and (lost.issued, lost.digest) == (checked.issued,
                                                                                            checked.digest)  # fmt: skip
        if put:
            assert staged.tmp is not None and self.synced_path is not None
            try:
                os.replace(staged.tmp, self.synced_path)
            except OSError as exc:
                staged = Staged(checked, staged.tmp, None, str(exc))
                put = False
        if not put:
            if staged.tmp is not None:
                _unlink_quietly(staged.tmp)
            if staged.error:
                log.error("cannot write the revocation list in force (signed at %d) to %s again (%s): a restart would "
                          "not find it; asked again later", checked.issued, self.synced_path, staged.error)  # fmt: skip
                return "failed"
            return "not needed"
        f = self._synced
        f.stat, f.read, f.held, f.damage, f.why = staged.stat, True, (checked.issued, checked.revoked,
                                                                      checked.signature), None, ""  # fmt: skip
        log.warning("the revocation list in force (signed at %d, %d board card(s) revoked) was no longer in %s: "
                    "written there again", checked.issued, len(checked.revoked), self.synced_path)  # fmt: skip
        return "written"

    def _admit(self, checked: SignedList, source: str) -> str | None:
        """None when ``checked`` is newer than the list in force (both files re-read if changed) and the record;
        else the outcome, logged."""
        issued = checked.issued
        if self.advert() is None and self._damage is not None:
            log.warning("not taking the revocation list signed at %d from %s: %s", issued, source, self._damage)
            return "unusable"
        if self.synced_path is None:
            log.warning("not taking the revocation list signed at %d from %s: this board keeps no synced list (no "
                        "data dir)", issued, source)  # fmt: skip
            return "unusable"
        newest = max(self._issued, self._floor)
        if issued == newest and checked.digest != (self._digest or self._lists.get(self.ca)):
            log.error("refused a revocation list from %s signed at %d like the one this board holds but naming other "
                      "cards: a conflicting list (two signed in one second by an older 'peerserve ca'?). The list in "
                      "force stays; sign a new one with 'peerserve ca revoke'", source, issued)  # fmt: skip
            return "conflict"
        if issued <= newest:
            log.warning("refused a revocation list from %s signed at %d: not newer than the one this board holds (%d)",
                        source, issued, newest)  # fmt: skip
            return "older"
        return None

    def _refuse_older(self, what: str) -> str:
        """Fail closed after a restart: neither file holds a list as new as (or the one) this board accepted."""
        when = "then" if "other cards" in what else "before"
        damage = (
            f"this board's revocation list {what}, but this board accepted a list signed at {self._floor} {when} "
            f"(recorded in {self.floor_path}): a stale copy, or one put back to undo a revocation. No board card is "
            f"accepted until the operator's current list (the CA folder's revoked.json, signed at or after that) is "
            f"copied there ({self.path}); only if that record is wrong, remove it and restart"
        )
        if damage != self._damage:
            log.error("%s", damage)
        return damage

    def _read_floor(self) -> dict[str, int]:
        """The stamps recorded in ``floor_path`` ({} when there is none). A file that is there but not a record of
        ours (damaged, foreign) is logged as an error and set aside, and {} returned: the list on disk then stands as
        it is, and the next list accepted is recorded anew. One that cannot be read (EACCES, EIO) fails closed, as a
        missing list does, and is never written over: its stamp may be newer than the list on disk."""
        path = self.floor_path
        if path is None:
            return {}
        try:
            with open(path, "rb") as f:
                text = f.read(STAMP_FILE + 1)
        except FileNotFoundError:
            return {}
        except OSError as exc:  # there, but its stamps unknown: fail closed, and never write over it (review16d F4)
            self._unreadable = (
                f"this board's record of the newest revocation list it accepted, {path}, cannot be read ({exc}): "
                "an older list put back could not be told from the current one, so no board card is accepted. Make "
                "it readable by the agent (or, if it is lost, remove it and copy the operator's current "
                "revoked.json to the list's place) and restart"
            )
            log.error("%s", self._unreadable)
            return {}
        try:
            data = json.loads(text)
            stamps = data["stamps"] if isinstance(data, dict) and data.get("format") == STAMP_FORMAT else None
            lists = data.get("lists", {}) if isinstance(data, dict) else None
            if len(text) > STAMP_FILE or not isinstance(stamps, dict) or len(stamps) > STAMP_CAS:
                raise ValueError(f"not a {STAMP_FORMAT} record of at most {STAMP_CAS} CAs")
            if not isinstance(lists, dict) or not all(ca in stamps and isinstance(d, str) and len(d) == 32
                                                      for ca, d in lists.items()):  # fmt: skip
                raise ValueError("bad list digests")
            for ca, issued in stamps.items():
                if len(ca) != 32 or type(issued) is not int or issued < 0:
                    raise ValueError(f"bad record {str(ca)[:40]!r}")
                int(ca, 16)
            self._lists = dict(lists)
            return dict(stamps)
        except (ValueError, KeyError, TypeError) as exc:  # JSON errors are ValueErrors
            return self._floor_damaged(str(exc)[:200])

    def _floor_damaged(self, why: str, aside: bool = True) -> dict[str, int]:
        """Log that the record cannot be used; a damaged one is moved aside (kept for the operator to look at)."""
        kept = "left in place"
        if aside:
            try:
                os.replace(self.floor_path, f"{self.floor_path}.damaged")  # type: ignore[arg-type]
                kept = f"moved to {self.floor_path}.damaged"
            except OSError as exc:
                kept = f"left in place ({exc})"
        log.error("this board's record of the newest revocation list it accepted, %s, is damaged or not ours (%s; %s): "
                  "the list at %s is used as it is and its stamp recorded anew. If an older list may have been put "
                  "there since, copy the operator's current revoked.json to it", self.floor_path, why, kept,
                  self.path)  # fmt: skip
        return {}

    def _note(self, issued: int, digest: str) -> tuple[int, bytes] | None:
        """Note ``issued`` as this CA's newest accepted stamp, with the digest of the list signed at it (a list with
        the same stamp but other cards is refused after a restart too); the record to write (its version and bytes;
        ``_write_record``), None when none is kept."""
        self._floor = issued
        self._stamps.pop(self.ca, None)
        self._stamps[self.ca] = issued
        self._lists[self.ca] = digest
        while len(self._stamps) > STAMP_CAS:  # the oldest-recorded other CA's record goes
            gone = next(iter(self._stamps))
            del self._stamps[gone]
            self._lists.pop(gone, None)
        if self.floor_path is None:
            return None
        self._record_seq += 1
        return self._record_seq, json.dumps({"format": STAMP_FORMAT, "stamps": self._stamps,
                                             "lists": self._lists}).encode()  # fmt: skip

    def _record_later(self, record: tuple[int, bytes] | None) -> None:
        """``_write_record`` off the event loop: on a loop, ``record`` waits for the record thread (started here if
        none runs; one at a time, a newer record replacing a waiting older one), so the loop neither fsyncs nor waits
        for ``_write_lock`` while ``offer_persist``'s thread fsyncs under it (review19f R4); elsewhere (the CLI, a
        thread) it is written here."""
        if record is None or self.floor_path is None:
            return
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            self._write_record(record)
            return
        with self._queue:
            if self._queued is None or record[0] > self._queued[0]:
                self._queued = record
            if self._recording:
                return
            self._recording = True
        try:  # not a daemon: an interpreter that exits waits for the record
            threading.Thread(target=self._record_thread, name="peerserve-revocation-record").start()
        except RuntimeError as exc:  # no thread to be had: written here, once, rather than lost
            log.error("cannot start the revocation record's writer (%s): writing it on the event loop", exc)
            self._record_thread()

    def _record_thread(self) -> None:
        """Write the waiting records until none waits (the newest each time). A write that raises anything (not only
        the OSError ``_write_record`` logs: a MemoryError, a bug) is logged and the next record still written; before,
        it ended the thread with ``_recording`` set, and no record was written again for the life of the process
        (review20a L1). ``_recording`` is cleared under the same lock hold as the empty queue is seen, so a record
        queued meanwhile starts a thread of its own."""
        try:
            while True:
                with self._queue:
                    record, self._queued = self._queued, None
                    if record is None:
                        self._recording = False
                        self._queue.notify_all()
                        return
                try:
                    self._write_record(record)
                except Exception as exc:
                    log.error("cannot record the revocation list's stamp in %s (%s: %s): after a restart this "
                              "board would accept an older list", self.floor_path, type(exc).__name__, exc,
                              exc_info=exc)  # fmt: skip
        except BaseException:  # not an Exception (a thread is not interrupted, but never wedge): the next record
            with self._queue:  # starts a thread again, which takes any record still waiting
                self._recording = False
                self._queue.notify_all()
            raise

    def wait_recorded(self, timeout: float | None = None) -> bool:
        """Block (off the loop) until no record waits for the record thread (``_record_later``); False at
        ``timeout``."""
        with self._queue:
            return self._queue.wait_for(lambda: not self._recording, timeout)

    def _write_record(self, record: tuple[int, bytes] | None) -> None:
        """Write ``record`` (``_note``) to ``floor`` unless a later version is written already (the loop and
        ``offer_persist``'s thread may both write; a temporary name of each write's own); atomic, fsynced; logged,
        never raised, on failure."""
        if record is None or self.floor_path is None:
            return
        version, data = record
        with self._write_lock:
            if version <= self._written_seq:
                return
            tmp = unique_tmp(self.floor_path)
            try:
                write_atomic(self.floor_path, data, tmp=tmp)
                self._written_seq = version
            except OSError as exc:
                _unlink_quietly(tmp)
                log.error("cannot record the revocation list's stamp %d in %s (%s): after a restart this board would "
                          "accept an older list", self._floor, self.floor_path, exc)  # fmt: skip
            except BaseException:  # (the record thread logs it) no temporary file left behind either way
                _unlink_quietly(tmp)
                raise


class PinCards:
    """node id -> (key, expiry) of the newest board card its *pinned* key showed: what a re-imaged board's new card
    must be newer than to move the pin (``Identity._repin_from``). Kept in ``path`` (``DATA_DIR/peer/pin-cards.json``)
    across restarts, or a board restarted after the old key's last message could never compare; bounded (``limit``,
    as many as ids can be pinned; least recently changed dropped). A record changes only when a pinned key shows a
    card newer than the one held, or the pin moves: a few writes when boards first meet and at renewals. A change
    only marks the record dirty; one job handed to ``run`` (the pin writer thread, off the event loop) serialises
    and writes the latest state, so N changes while a write is queued or running cost at most two writes, and the
    loop never serialises the whole record (review16d F7: 4 ms per change at 4,096 ids, one snapshot each). A
    damaged file is logged and ignored: with no record, no pin moves (``peerserve pins forget`` re-admits, as in the
    token-only mode) until the pinned key shows its card again."""

    def __init__(self, path: Path | None, limit: int = ROSTER, run: Callable[[Callable[[], None]], None] | None = None):
        self.path, self.limit = path, limit
        self.run = run or (lambda job: job())
        self._cards: OrderedDict[str, tuple[bytes, int]] = self._read()
        self._lock = threading.Lock()  # the record's changes (on the loop) against the writer's copy (its thread)
        self._dirty = False  # a write of the latest state is queued and has not copied it yet
        self.writes = 0  # the record's writes started (a bound the tests check)

    def get(self, node_id: str) -> tuple[bytes, int] | None:
        return self._cards.get(node_id)

    def __len__(self) -> int:
        return len(self._cards)

    def shown(self, node_id: str, key: bytes, expires: int) -> None:
        """``node_id``'s pinned ``key`` showed a live card expiring at ``expires``: kept if newer than the one held (or
        the one held is another key's: the pin moved, by a card or by an operator)."""
        held = self._cards.get(node_id)
        if held is not None and held[0] == key and held[1] >= expires:
            return
        if held is not None:  # the pin moved (or an operator set it): the floor stays, so an older card of the old
            expires = max(expires, held[1])  # key cannot move it back (review16d F3)
        with self._lock:
            self._cards[node_id] = (key, expires)
            self._cards.move_to_end(node_id)
            while len(self._cards) > self.limit:
                self._cards.popitem(last=False)
            if self.path is None or self._dirty:
                return  # none kept, or the queued write has not copied the record yet: it takes this change too
            self._dirty = True
        self.run(self._flush)

    def _flush(self) -> None:
        """Write the latest record (in the pin writer thread): copied under the lock, serialised and written out of
        it; a change after the copy queues the next write."""
        with self._lock:
            self._dirty = False
            cards = list(self._cards.items())
            self.writes += 1
        assert self.path is not None
        data = json.dumps({"format": PIN_CARDS_FORMAT, "cards": {n: [k.hex(), e] for n, (k, e) in cards}}).encode()
        _save_quietly(self.path, data)

    def _read(self) -> OrderedDict[str, tuple[bytes, int]]:
        cards: OrderedDict[str, tuple[bytes, int]] = OrderedDict()
        if self.path is None:
            return cards
        try:
            with open(self.path, "rb") as f:
                text = f.read(PIN_CARDS_FILE + 1)
            data = json.loads(text)
            if len(text) > PIN_CARDS_FILE or not isinstance(data, dict) or data.get("format") != PIN_CARDS_FORMAT:
                raise ValueError(f"not a {PIN_CARDS_FORMAT} file")
            for node_id, (key, expires) in data["cards"].items():
                if not wire.NODE_ID.fullmatch(node_id) or len(key) != 64 or type(expires) is not int:
                    raise ValueError(f"bad entry {str(node_id)[:64]!r}")
                cards[node_id] = (bytes.fromhex(key), expires)
        except FileNotFoundError:
            return cards
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            log.error("cannot use %s (%s): no pin moves by a newer board card until each pinned key has shown its card "
                      "again ('peerserve pins forget ID' re-admits a re-imaged board meanwhile)", self.path,
                      str(exc)[:200])  # fmt: skip
            return OrderedDict()
        while len(cards) > self.limit:
            cards.popitem(last=False)
        return cards


def _save_quietly(path: Path, data: bytes) -> None:
    try:
        write_atomic(path, data)
    except OSError as exc:
        log.warning("cannot save %s (%s): after a restart, a pin moves by a newer board card only once the pinned key "
                    "has shown its card again", path, exc)  # fmt: skip


class OperatorTrust:
    """A board's check of its peers' board cards against the operator CA (``ca_public``).

    ``certify`` is the bytes-only part (the operator's signature, the binding to the token card's id and key), cached
    by the card's bytes (``verdicts``, least recently used dropped); ``check_live`` the part that depends on the clock
    and the revocation list, run at every use. Every certified card becomes its node's entry in the roster (``roster``
    ids, least recently used dropped; only operator-signed cards enter it, so a token holder cannot fill it), which
    direct TLS exchanges (no card on the wire) are checked against (``vouch``)."""

    def __init__(
        self, ca_public: Ed25519PublicKey, revocations: Path | None = None, verdicts: int = VERDICTS,
        roster: int = ROSTER, *, cluster: bytes, floor: Path | None = None, synced: Path | None = None,
    ) -> None:  # fmt: skip
        self.ca_public = ca_public
        self.cluster = cluster  # this node's (bytes.fromhex(Identity.cluster)): cards for another are refused
        self.revocations = Revocations(revocations, ca_public, floor, synced)
        self.verdict_limit, self.roster_limit = verdicts, roster
        # a refusal is cached as data (message, status) and raised fresh each time: a cached exception object re-raised
        # grows its __traceback__ by the raiser's frames at every use (and keeps them, their requests, alive)
        self._verdicts: OrderedDict[bytes, BoardCard | tuple[str, int]] = OrderedDict()
        self.roster: OrderedDict[str, BoardCard] = OrderedDict()
        self.verifications = 0  # operator signatures checked
        self._said: set[tuple[str, str]] = set()  # (node id, why) logged once (bounded by the roster's ids x reasons)

    def certify(self, node_id: str, public_key: bytes, board: bytes) -> BoardCard:
        """The board card in ``board`` if the operator CA signed it for exactly (``node_id``, ``public_key``)."""
        if not board:
            raise CardError(f"{node_id} shows no board card signed by the operator CA: a token holder without one is "
                            "no member of this cluster (docs/security.md, operator CA)")  # fmt: skip
        verdict = self._verdicts.get(board)
        if verdict is None:
            self.verifications += 1
            try:
                verdict = BoardCard.parse(board)
                verdict.verify(self.ca_public)
            except CardError as exc:
                verdict = (str(exc), exc.status)
            self._verdicts[board] = verdict
            while len(self._verdicts) > self.verdict_limit:
                self._verdicts.popitem(last=False)
        else:
            self._verdicts.move_to_end(board)
        if isinstance(verdict, tuple):
            raise CardError(*verdict)
        if verdict.node_id != node_id or verdict.public_key != public_key:
            raise CardError(f"the board card shown by {node_id} is for {verdict.node_id} with another key")
        if verdict.cluster != self.cluster:
            raise CardError(f"the board card shown by {node_id} is for another cluster (another token): the operator "
                            "signs a card per cluster")  # fmt: skip
        return verdict

    def check_live(self, card: BoardCard, now: float) -> None:
        """Refuse an expired or revoked card (logged once per node and reason); remember it in the roster."""
        if now >= card.expires:
            self._say(card.node_id, "expired", "board card of %s expired %.0f s ago (fingerprint %s): refused until "
                      "the operator signs a new one", card.node_id, now - card.expires, card.fingerprint)  # fmt: skip
            raise CardError(f"{card.node_id}'s board card expired {now - card.expires:.0f} s ago")
        revoked = self.revocations.current()
        if card.fingerprint in revoked:
            self._say(card.node_id, "revoked", "board card of %s (fingerprint %s) is revoked by the operator: refused",
                      card.node_id, card.fingerprint)  # fmt: skip
            raise CardError(f"{card.node_id}'s board card is revoked by the operator")
        held = self.roster.get(card.node_id)
        # A renewed card replaces the one held only if it lasts at least as long, or the held one is no longer live:
        # any member relaying an older statement of this node shows its older card, which must not roll back its
        # priority (or key) here while still valid ('ca sign' revokes the old card when it issues a replacement).
        if held is None or card.expires >= held.expires or now >= held.expires or held.fingerprint in revoked:
            self.roster[card.node_id] = card
        self.roster.move_to_end(card.node_id)
        while len(self.roster) > self.roster_limit:
            self.roster.popitem(last=False)

    def vouch(self, node_id: str, public_key: bytes, now: float) -> BoardCard:
        """The live board card this node proved for (``node_id``, ``public_key``) in a signed message (a direct TLS
        exchange carries no card); CardError 401 when there is none, or the one seen expired or was revoked (the client
        falls back to signing, with its current card, which is checked in full)."""
        card = self.roster.get(node_id)
        if card is None or card.public_key != public_key:
            raise CardError(f"no board card of {node_id} for this key seen yet: sign the message", 401)
        try:
            self.check_live(card, now)
        except CardError as exc:  # the card we saw expired or was revoked; it may have a new one: let it show it
            raise CardError(f"{exc}: sign the message (with the current card)", 401) from exc
        return card

    def priority(self, node_id: str, now: float) -> int:
        """The election priority the operator granted ``node_id``: its live card's (0 without one, or without a live
        card seen: expired, revoked, or the revocation list unusable)."""
        card = self.roster.get(node_id)
        if card is None or card.priority is None or now >= card.expires:
            return 0
        try:
            return 0 if card.fingerprint in self.revocations.current() else card.priority
        except CardError:
            return 0

    def _say(self, node_id: str, why: str, fmt: str, *args: Any) -> None:
        if (node_id, why) not in self._said:
            if len(self._said) >= 2 * self.roster_limit:
                self._said.clear()
            self._said.add((node_id, why))
            log.warning(fmt, *args)


def parse_operator_ca(value: str) -> Ed25519PublicKey:
    """The operator CA public key from the ``operator_ca`` setting: a file (``ca.pub`` from ``peerserve ca init``) or
    the key itself, base64url or 64 hex digits; ValueError."""
    text = value.strip()
    if os.sep in text or text.endswith(".pub"):
        text = Path(text).read_text().strip()
    raw = bytes.fromhex(text) if len(text) == 64 and all(c in "0123456789abcdefABCDEF" for c in text) else None
    if raw is None:
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        except ValueError as exc:
            raise ValueError("not a base64url or hex Ed25519 public key") from exc
    if len(raw) != 32:
        raise ValueError("an Ed25519 public key is 32 bytes")
    return Ed25519PublicKey.from_public_bytes(raw)
