"""Node identity and message authentication on the peer plane, all derived from the cluster token.

* The cluster CA: an Ed25519 key derived from ``--cluster-token`` with HKDF (every board derives the same
  one; no node is special, boards start in any order). The token itself never leaves the process.
* The node key: Ed25519, generated once and kept in ``DATA_DIR/peer/node.key`` (0600).
* The node's certificates, both signed by the CA at every start: a *card* (node id + public key + CA
  signature, sent with every message) and an X.509 certificate (CN and SAN = node id) for mutual TLS.
* Every peer request and answer carries an Ed25519 signature over sender, receiver, method, target, body
  digest, timestamp and nonce (peerserve.wire's signing bytes). ``Verifier`` checks card, signature,
  receiver, freshness (``window_s``) and one-time use of the nonce (bounded cache), then pins the node id to
  its key on first contact: a later, different key for that id is refused and logged until an operator
  forgets or re-pins it (``peerserve pins``, agent/pins_cli.py), which a running agent sees at once, or (operator-CA
  mode only) the id shows a live board card for the new key that expires later than the pinned key's
  (``Identity._repin_from``).
  The pin write (flock, rewrite, two fsyncs) never runs on the event loop: an awaited first contact
  (``Pins.pin``) waits for it in the pin writer thread; a synchronous one on a loop (``Pins.check``: the
  statements SWIM relays) starts it there and is refused this once (503, retry).

    AuthError(Exception)   a message that is not authentic, not for us, stale or replayed (status 401/403/429)
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import errno
import fcntl
import hashlib
import heapq
import ipaddress
import json
import logging
import math
import os
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.x509.oid import NameOID

from agent.durable import fsync_dir, tmp_glob, unique_tmp, write_atomic, write_synced
from agent.errors import ConfigError, StateError
from agent.operator_ca import MAX_BOARD_BYTES, BoardCard, CardError, OperatorTrust, PinCards, read_board_card
from agent.rate_limit import SenderBuckets
from peerserve import wire

log = logging.getLogger(__name__)

CARD_CONTEXT = b"peerserve-card-v1\0"
WINDOW_S = 30.0  # a message older or newer than this (sender's clock vs ours) is refused
NONCE_CACHE = 100_000  # one-time nonces remembered for 2 x WINDOW_S; beyond this, new messages wait (429)
NONCE_PER_SENDER = 4096  # of them, one sender's (~68 messages/s to one node): past it only that sender waits (429)
# ... and one source address's, whatever card ids it signs with: a token holder can mint a card for any id, and 25 of
# them filled the whole cache; now it takes four addresses (a quarter still covers ~400 messages/s from one host, as
# when many agents share one loopback address)
NONCE_PER_SOURCE = NONCE_CACHE // 4
# entries one message moves to ``_ahead`` or forgets at most (NonceCache._expire): worst call 8-10 ms, not 130-300 ms
EXPIRE_PER_CALL = 1024
PIN_LIMIT = 4096  # node ids pinned to keys
# first-contact pins one source address may make: a burst (a board meeting a shelf of new members at once), then a
# rate; past it that address waits (429 + Retry-After) before anything is written. Without it one token holder minted
# ids until the table was full (403 for every new board until an operator ran `pins forget`), each costing an fsync
# and a rewrite of the whole file (then on the event loop: 2.8 ms at 4,000 pins here; tens of ms on an SD card)
PIN_FIRST_PER_MIN = 8.0
PIN_FIRST_BURST = 16
# first-contact pin writes in flight (until they land, whether or not their contact still waits) and contacts
# waiting on another's, all addresses together (the budget bounds them per address only): the writes run one at
# a time in one thread, off the event loop; past this a new first contact is answered 503 + Retry-After at once (no
# budget spent, nothing queued). At an SD card's tens of ms an fsync pair, the last one waits well under a second;
# a shelf of boards joining at once retries the rest a second later
PIN_PENDING = 16
RELAYED = "(relayed)"  # the budget key of signers first met in a statement another member relays (leases, proofs)
PIN_SOURCES = 1024  # source addresses whose budget is remembered (least recently used dropped: starts full again)
CARD_CACHE = 1024  # verified cards kept (saves one signature check per message)
_EPOCH = datetime.datetime(2020, 1, 1, tzinfo=datetime.timezone.utc)
_FAR = datetime.datetime(2120, 1, 1, tzinfo=datetime.timezone.utc)


class AuthError(Exception):
    """Not authentic, not for this node, stale or replayed; ``status`` is the HTTP answer."""

    def __init__(self, message: str, status: int = 401, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after  # whole seconds, for a Retry-After header (429)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(text: str, limit: int = 512) -> bytes:
    """The bytes ``text`` spells in ``b64``'s form, the only one accepted: base64url, unpadded, every bit used.
    The decoder alone takes many spellings of the same bytes (other low bits in the last character, characters
    outside the alphabet skipped, padding), and anything keyed by a received text (a counted proof, a verdict, a card)
    would count a re-spelled copy as new (review16a F1). Re-encoded and compared: ``strict_mode`` needs Python 3.11."""
    if len(text) > limit:
        raise AuthError("oversized header")
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except ValueError as exc:
        raise AuthError("malformed base64 in an authentication header") from exc
    if b64(raw) != text:
        raise AuthError("non-canonical base64 in an authentication header (unpadded base64url, as sent, expected)")
    return raw


def derive_ca_key(token: str) -> Ed25519PrivateKey:
    """The cluster CA key: the same on every board given the same token (HKDF-SHA256)."""
    seed = HKDF(algorithm=hashes.SHA256(), length=32, salt=b"peerserve-cluster-ca-v1", info=b"ed25519").derive(
        token.encode()
    )
    return Ed25519PrivateKey.from_private_bytes(seed)


def cluster_of(token: str) -> str:
    """The cluster's fingerprint (``Identity.cluster``): the token CA's public key's SHA-256, 32 hex digits."""
    return hashlib.sha256(_raw(derive_ca_key(token).public_key())).hexdigest()[:32]


def derive_stats_token(token: str) -> str:
    """The request-log reader token: derived from the cluster token (HKDF), so the token itself never
    crosses the wire and a captured reader token reads statistics only (``peerserve stats-token``)."""
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=b"peerserve-stats-reader-v1", info=b"bearer").derive(
        token.encode()
    )
    return b64(key)


def _raw(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


@dataclass(frozen=True)
class Card:
    """A node's certified signing key: node id + Ed25519 public key, signed by the cluster CA."""

    node_id: str
    public_key: bytes  # 32 raw bytes
    signature: bytes  # 64 bytes, CA over CARD_CONTEXT + node id + NUL + key
    # the operator CA's board card for this id and key, appended (agent/operator_ca.py; b"": none, token-only mode).
    # The cluster CA's signature does not cover it: the operator's own signature does, over the same id and key
    board: bytes = b""

    @staticmethod
    def issue(ca: Ed25519PrivateKey, node_id: str, public_key: bytes, board: bytes = b"") -> Card:
        return Card(node_id, public_key, ca.sign(CARD_CONTEXT + node_id.encode() + b"\0" + public_key), board)

    def encode(self) -> str:
        nid = self.node_id.encode()
        return b64(bytes([len(nid)]) + nid + self.public_key + self.signature + self.board)

    @staticmethod
    def decode(text: str) -> Card:
        raw = unb64(text, wire.MAX_CARD)
        n = raw[0] if raw else 0
        if not 0 < n <= 63 or not 1 + n + 32 + 64 <= len(raw) <= 1 + n + 32 + 64 + MAX_BOARD_BYTES:
            raise AuthError("malformed node card")
        node_id = raw[1 : 1 + n].decode("ascii", "replace")
        if not wire.NODE_ID.fullmatch(node_id):
            raise AuthError("malformed node id in card")
        return Card(node_id, raw[1 + n : 1 + n + 32], raw[1 + n + 32 : 1 + n + 96], raw[1 + n + 96 :])

    def verify(self, ca_public: Ed25519PublicKey) -> None:
        try:
            ca_public.verify(self.signature, CARD_CONTEXT + self.node_id.encode() + b"\0" + self.public_key)
        except InvalidSignature as exc:
            raise AuthError("node card not issued by this cluster (wrong cluster token?)", 403) from exc


class NonceCache:
    """One-time nonces seen within the freshness window; bounded (a full cache refuses, never forgets early).

    Each sender has its own share (``per_sender``): one member sending as fast as it can fills only its own
    share and waits (429), the others' messages still pass (the whole cache's bound is the last resort). A
    cluster-token holder can sign as many node ids as it likes, so each source address has a share too
    (``per_source``): one host fills at most that, however many ids it uses.

    A nonce is forgotten only when both clocks say so: the wall clock reads more than ``ttl_s`` past when it was
    used (its message, stamped within WINDOW_S of that, can no longer pass the freshness check) AND the monotonic
    clock has advanced more than ``ttl_s`` since. The wall clock alone forgot every nonce as soon as one message
    came in while it read ahead: a forward jump then corrected made a message captured just before it fresh again,
    its nonce gone (review12f replayed one stamped T at T + 5 s after a +1 h excursion); the monotonic clock alone
    forgot nonces a step back keeps fresh. Nonces are queued in the order they were used, which is the monotonic
    clock's, so the front of the queue is the first to age by it. One that has aged by it but not by the wall clock
    (the wall clock stepped back since, or reads behind by more than the time elapsed) moves to ``_ahead`` (still
    refused as replays, still counted in both bounds) and is forgotten once the wall clock has climbed back past
    its use + ``ttl_s``, so it never stops the queue's expiry (a sender was refused 429 after ``per_sender``
    messages) nor is forgotten while the climb back can make its message fresh again (forgetting it on
    |now - at| > ``ttl_s`` accepted a replay 98 s after a 100 s step).

    What it costs: a forward jump keeps what the monotonic clock has not aged (one window of messages, as without
    the jump; the wall clock alone had dropped them), so through a forward excursion a sender holds what it sent in
    the last ``ttl_s`` of real time. Each step back (the correction of a forward excursion is one) costs at most one
    more window of nonces (those used in the ``ttl_s`` before it), held until the wall clock reads their use +
    ``ttl_s`` again: a sender under ``per_sender`` / (2 x ``ttl_s``) messages a second (34/s) is never refused for
    it (tests/unit/test_nonce_clock.py). That is for one step: k steps back before the wall clock has climbed back
    hold k windows (review16a F4: two steps within an hour's climb back refused such a sender 429). Still open
    (docs/security.md): a step back to before a message's use once both clocks had aged it (a wall clock that read
    ahead, or right, for over ``ttl_s`` after it) revives it; and a restart forgets the whole cache.

    A caller may read ``mono`` before an await (the first-contact pin write) and use the nonce after another message
    was used: each entry is stored at max(``mono``, the last one stored), so the queue stays in monotonic order (an
    entry is held at most that wait longer, never released earlier). One call moves or forgets at most
    ``EXPIRE_PER_CALL`` entries (a whole window after idle or a long climb back took 130-250 ms at 100,000); the rest
    wait for the next calls, still refused as replays and still counted, and a message about to be refused 429 first
    has everything due forgotten, so the cap delays a release and never causes a refusal. That refusal path is not
    capped: a member that keeps its share full through a step back can choose the moment the backlog is moved, once
    per step (120-195 ms at 100,000 entries, review16c F2; the same work the first message after the step did before
    the cap). Capping it too would refuse senders whose share is full only of due entries."""

    def __init__(
        self,
        ttl_s: float = 2 * WINDOW_S,
        limit: int = NONCE_CACHE,
        per_sender: int = NONCE_PER_SENDER,
        per_source: int = NONCE_PER_SOURCE,
    ) -> None:
        self.ttl_s = ttl_s
        self.limit = limit
        self.per_sender = per_sender
        self.per_source = per_source
        # (sender, nonce) -> (wall clock at its use, monotonic clock at its use, source address), in order of use
        self._seen: OrderedDict[tuple[str, str], tuple[float, float, str]] = OrderedDict()
        self._held: dict[str, int] = {}  # sender -> its live nonces (only senders with one or more)
        self._from: dict[str, int] = {}  # source address -> its live nonces (likewise)
        # aged by the monotonic clock, not by the wall clock: (sender, nonce) -> (when, source), a heap by when
        self._ahead: dict[tuple[str, str], tuple[float, str]] = {}
        self._ahead_by_time: list[tuple[float, tuple[str, str]]] = []
        self._last_mono = -math.inf  # the latest monotonic stamp stored: entries are queued in monotonic order

    def __len__(self) -> int:
        return len(self._seen) + len(self._ahead)

    def held(self, sender: str) -> int:
        """How many of ``sender``'s nonces are remembered."""
        return self._held.get(sender, 0)

    def held_from(self, source: str) -> int:
        """How many nonces that came from ``source`` (an address) are remembered."""
        return self._from.get(source, 0)

    def use(self, nonce: str, now: float, sender: str = "", source: str = "", *, mono: float) -> None:
        """Record ``sender``'s ``nonce``, received from address ``source`` when the wall clock read ``now`` and the
        monotonic clock ``mono`` (time.time(), time.monotonic()); AuthError when it was used before, or when the
        sender's share, the source's share or the cache is full of live ones (429: retry later)."""
        self._expire(now, mono, EXPIRE_PER_CALL)
        key = (sender, nonce)
        if key in self._seen or key in self._ahead:
            raise AuthError("replayed message (nonce already used)")
        full = self._full(sender, source)
        if full:  # before refusing: forget all that is due, not only EXPIRE_PER_CALL of it
            self._expire(now, mono, None)
            full = self._full(sender, source)
            if full:
                raise AuthError(full, 429)
        self._last_mono = max(mono, self._last_mono)
        self._seen[key] = (now, self._last_mono, source)
        self._held[sender] = self._held.get(sender, 0) + 1
        self._from[source] = self._from.get(source, 0) + 1

    def _full(self, sender: str, source: str) -> str:
        """Why a new nonce of ``sender`` from ``source`` would overflow a share or the cache ("": it would not)."""
        if self._held.get(sender, 0) >= self.per_sender:
            return "too many messages from this sender in the freshness window; retry"
        if self._from.get(source, 0) >= self.per_source:
            return "too many messages from this address in the freshness window; retry"
        return "" if len(self) < self.limit else "too many messages in the freshness window; retry"

    def _expire(self, now: float, mono: float, cap: int | None) -> None:
        """Forget what both clocks read more than ``ttl_s`` past; set aside in ``_ahead`` what only the monotonic
        clock does (the wall clock reads less: it stepped back), until the wall clock does too. At most ``cap``
        entries moved and forgotten (None: all that are due)."""
        budget = math.inf if cap is None else cap
        while self._seen and budget > 0:
            key, (at, since, where) = next(iter(self._seen.items()))
            if not mono - since > self.ttl_s:  # used in the last ttl_s: so was everything behind it
                break
            budget -= 1
            del self._seen[key]
            if now - at > self.ttl_s:  # no longer replayable by the freshness check: forgotten
                _release(self._held, key[0])
                _release(self._from, where)
            else:  # the wall clock reads less than it did + the time since: kept until it climbs back past at + ttl_s
                self._ahead[key] = (at, where)
                heapq.heappush(self._ahead_by_time, (at, key))
        while self._ahead_by_time and now - self._ahead_by_time[0][0] > self.ttl_s and budget > 0:
            budget -= 1
            _, key = heapq.heappop(self._ahead_by_time)
            _, where = self._ahead.pop(key)
            _release(self._held, key[0])
            _release(self._from, where)


def _release(counts: dict[str, int], key: str) -> None:
    """One fewer live nonce for ``key``; a key with none left is dropped (the tables stay as small as the cache)."""
    left = counts[key] - 1
    if left:
        counts[key] = left
    else:
        del counts[key]


class StaleBoot(AuthError):
    """A v2 request, authentic, fresh and from a pinned key, that names another boot id than this run's (one made
    before this agent restarted, replayed, or a sender that has not learnt this run's id yet): refused before
    anything acts on it, with an answer signed for ``sender`` and bound to ``nonce`` that names ``boot_id``, ours,
    so an honest sender retries once with it (agent.peer_client), signed anew. Its nonce is spent first: a repeat of
    the request is refused as replayed (401, unsigned), so replays of one captured request cost no signature."""

    def __init__(self, sender: str, nonce: str, boot_id: str, named: str) -> None:
        said = f"{sender}'s request names boot id {named}, this run of the node is {boot_id}"
        super().__init__(said, wire.STALE_BOOT)
        self.sender, self.nonce, self.boot_id = sender, nonce, boot_id

    def answer(self) -> dict[str, str]:
        """The refusal's JSON body (signed by the route that answers it)."""
        return {"error": str(self), "boot_id": self.boot_id}


def new_boot_id() -> str:
    """A boot id for this run: 16 random bytes, hex (never 'unknown': wire.UNKNOWN_BOOT is not hex)."""
    return secrets.token_hex(16)


class DamagedPinFile(AuthError):
    """The pin file exists but cannot be read as pins: nothing is pinned from it, and nothing new is (403)."""

    def __init__(self, path: Path, reason: str) -> None:
        self.path, self.reason = path, reason
        super().__init__(
            f"this board's pin file {path} is damaged ({reason}); it pins no new node until an operator repairs "
            "it or moves it aside (docs/operator-guide.md, troubleshooting)",
            403,
        )


class Pins:
    """node id -> public key, pinned on first authenticated contact, kept in a JSON file (bounded).

    The file is the truth: an operator's ``peerserve pins forget`` edits it under the same lock (flock on
    its folder), and a running agent re-reads it whenever it changed (one stat per check), no restart.
    A damaged file (truncated, hand-edited badly) fails closed: it is never overwritten, and no node is
    pinned for the first time while it is there (its ids might be in it); a running agent keeps the pins it
    read before. Writes are fsynced, so a power cut leaves the old file or the new one, never a torn one.

    The write (the lock, a rewrite of the whole file, two fsyncs: tens of ms on an SD card, as long as an
    operator's edit holds the lock) never runs on an event loop. ``pin`` (awaited: both peer routes, answers to
    our requests, a listener's certificate) hands it to the one pin writer thread and waits while the loop goes
    on; ``check`` (synchronous: the statements SWIM relays) writes at once where no loop runs in its thread (the
    CLI, tests), and on a loop starts the write there and refuses this one contact (503, retry: its signer is
    pinned for the next). One write per node id at a time: a second contact for the id waits for it and is then
    checked against what it pinned (two keys cannot both win); at most ``pending`` writes in flight and contacts
    joined to one (503 at once past it). The writer thread touches nothing of this object: it is given the pins
    and stamp read so far and gives back the new ones, which the loop takes (``_landed``), so ``_pins`` and
    ``_stamp`` change on one thread only."""

    def __init__(
        self,
        path: Path | None,
        limit: int = PIN_LIMIT,
        first_per_min: float = PIN_FIRST_PER_MIN,
        first_burst: int = PIN_FIRST_BURST,
        pending: int = PIN_PENDING,
    ) -> None:
        self.path = path
        self.limit = limit
        self.pending = pending
        # per source address; loopback is exempt (this board itself, and the test bed's agents sharing 127.0.0.1)
        self.first_contacts = SenderBuckets(first_per_min / 60.0, first_burst, PIN_SOURCES)
        self._pins: dict[str, bytes] = {}  # replaced whole, never changed in place (the writer reads a snapshot)
        self._stamp: tuple[int, int, int] | None = None
        self._damaged: DamagedPinFile | None = None
        self._unreadable: str | None = None  # the last read failed (EMFILE, EIO...): retried at every check
        self._writing: dict[str, asyncio.Task[AuthError | None]] = {}  # node id -> its pin write in flight
        self._joined = 0  # contacts waiting for a write another contact started (no write of their own)
        self.moved = 0  # pins moved to another key by a newer operator board card (operator-CA mode)
        self._refresh()

    def check(
        self, node_id: str, public_key: bytes, source: str = "", now: float = 0.0, replace: bytes | None = None
    ) -> None:
        """Pin on first contact; raises AuthError when ``node_id`` is pinned to another key, or is not pinned
        and the pin file is damaged (DamagedPinFile), or the new pin cannot be written now (503: retry), or
        ``source`` (the address it came from, at wall-clock ``now``) has spent its first-contact budget (429).
        On an event loop a first contact is not written here: its write starts in the pin writer thread (budget
        spent first) and this contact is refused 503 + Retry-After; what the write finds (damage, another key)
        answers the next one. ``replace``: a pin to exactly this key is moved to ``public_key`` as a first contact
        would be pinned (the operator-CA mode's re-pin, which the caller has decided: ``Identity._repin_from``)."""
        if self.pinned(node_id, public_key, replace):
            return
        if self.path is None or not _on_loop():  # nothing to write, or no loop to keep from waiting
            self._spend_first_contact(source, now)
            written = _pin_on_disk(self.path, node_id, public_key, self.limit, self._seen(), replace)
            self._landed(node_id, public_key, written)
            return
        if node_id not in self._writing:
            self._admit()
            self._start(node_id, public_key, source, now, replace)
        raise AuthError(f"node {node_id!r} is being pinned (first contact); retry", 503, 1)

    async def pin(
        self, node_id: str, public_key: bytes, source: str = "", now: float = 0.0, replace: bytes | None = None
    ) -> None:
        """``check`` for a caller that can wait: a known pin costs what it costs there (no thread, no await that
        yields); a first contact waits for its write in the pin writer thread while the loop serves others, and
        returns once the pin is on disk and in memory (or raises what ``check`` raises)."""
        if self.pinned(node_id, public_key, replace):
            return
        if self.path is None:
            self.check(node_id, public_key, source, now, replace)
            return
        self._admit()
        task = self._writing.get(node_id)  # another contact's write for this id: wait for it, spend nothing
        joined = task is not None
        if task is None:
            task = self._start(node_id, public_key, source, now, replace)
        self._joined += joined
        try:
            failed = await asyncio.shield(task)  # a contact that goes away leaves the write to finish (counted)
        finally:
            self._joined -= joined
        if self.pinned(node_id, public_key):  # by this write, another contact's, or an operator meanwhile
            return
        raise _again(failed) if failed is not None else AuthError(f"node {node_id!r} is not pinned yet; retry", 503, 1)

    def _admit(self) -> None:
        """Room for one more first contact: the writes in flight (until they land, whether or not their contact
        still waits) and the contacts joined to one are under ``pending``; else AuthError 503 at once (nothing
        spent, nothing queued)."""
        if len(self._writing) + self._joined >= self.pending:
            raise AuthError(f"{len(self._writing)} pin writes in flight; retry", 503, 1)

    def _start(
        self, node_id: str, public_key: bytes, source: str, now: float, replace: bytes | None = None
    ) -> asyncio.Task[AuthError | None]:
        """Spend ``source``'s budget (429 before anything is queued), then start ``node_id``'s write."""
        self._spend_first_contact(source, now)
        task = asyncio.get_running_loop().create_task(self._write(node_id, public_key, self._seen(), replace))
        self._writing[node_id] = task
        return task

    async def _write(
        self, node_id: str, public_key: bytes, seen: _Seen | None, replace: bytes | None = None
    ) -> AuthError | None:
        """``node_id``'s pin written in the pin writer thread and taken here, on the loop; what refused it, if any
        (returned, not raised: every contact waiting for it raises its own copy)."""
        try:
            result = await asyncio.get_running_loop().run_in_executor(
                _writer(), _pin_on_disk, self.path, node_id, public_key, self.limit, seen, replace
            )
        except AuthError as exc:
            return exc
        finally:
            self._writing.pop(node_id, None)
        self._landed(node_id, public_key, result)
        return None

    def _landed(self, node_id: str, public_key: bytes, result: _Written) -> None:
        """Take the pins a write left on disk. A write that lands after a later one (or an operator's edit) leaves
        a stamp older than the file's: the next check's stat sees it and reads the file again."""
        pins, stamp, wrote, moved_from = result
        self._pins, self._stamp, self._damaged, self._unreadable = pins, stamp, None, None
        if moved_from is not None:
            self.moved += 1
            log.warning("re-pinned node %s from key %s to key %s (a newer board card of the operator CA)", node_id,
                        moved_from.hex()[:16], public_key.hex()[:16])  # fmt: skip
        elif wrote:
            log.info("pinned node %s to key %s", node_id, public_key.hex()[:16])

    def _seen(self) -> _Seen | None:
        """The pins read so far and the stamp they were read at, for the writer to use if the file has not changed
        since; None after damage or a failed read (the writer reads the file itself, under the lock)."""
        return (self._pins, self._stamp) if self._damaged is None and self._unreadable is None else None

    def pinned(self, node_id: str, public_key: bytes, replace: bytes | None = None) -> bool:
        """Whether ``node_id`` is pinned to ``public_key`` now (the file re-read if it changed); AuthError 403 when
        it is pinned to another key (but ``replace``: False, to be moved)."""
        self._refresh()
        return self._known(node_id, public_key, replace)

    def current(self) -> Mapping[str, bytes]:
        """The pins in force now (the file re-read if it changed): a new mapping whenever they may have changed (it is
        replaced whole, never changed in place), so a cache of verdicts that took pins can tell (agent.quorum)."""
        self._refresh()
        return self._pins

    def _spend_first_contact(self, source: str, now: float) -> None:
        """One first contact from ``source``, or AuthError 429 with the seconds until it has one again. Checked
        before the lock and the write: a refused contact costs neither. "" (no address: an answer to our own
        request, the certificate of a listener we connect to) and loopback addresses are not budgeted."""
        if not source or _is_loopback(source) or self.first_contacts.allow(source, now):
            return
        wait = max(1, math.ceil(self.first_contacts.wait(source, now)))
        raise AuthError(f"too many new node ids from {source}; retry in {wait} s", 429, wait)

    def _known(self, node_id: str, public_key: bytes, replace: bytes | None = None) -> bool:
        """True when pinned to ``public_key``, False when not pinned (or pinned to ``replace``, to be moved);
        AuthError when pinned to another."""
        known = self._pins.get(node_id)
        if known is not None and known == replace:
            return False
        if known is not None and known != public_key:
            log.error("node %s presented a different key than the one pinned; refused", node_id)
            raise AuthError(f"node id {node_id!r} belongs to another key (pinned on first contact)", 403)
        return known is not None

    def _refresh(self) -> None:
        stamp = _stamp_of(self.path)
        if stamp == self._stamp and self._unreadable is None:
            return
        try:
            pins = read_pins(self.path)
        except DamagedPinFile as exc:  # logged once per version of the file; the pins read before are kept
            log.error("%s", exc)
            self._stamp, self._damaged, self._unreadable = stamp, exc, None
            return
        except OSError as exc:  # a passing failure, not damage: the pins read before are kept, the next check retries
            if self._unreadable is None:
                log.warning("cannot read pin file %s: %s", self.path, exc)
            self._unreadable = str(exc)[:200]
            return
        self._pins, self._stamp, self._damaged, self._unreadable = pins, stamp, None, None


_Stamp = tuple[int, int, int] | None
_Seen = tuple[Mapping[str, bytes], _Stamp]  # pins, and the file's stamp when they were read
# the pins on disk, the file's stamp, whether this call wrote it, the key it moved the pin from (None: no move)
_Written = tuple[dict[str, bytes], _Stamp, bool, "bytes | None"]
_WRITER: ThreadPoolExecutor | None = None
_WRITER_MADE = threading.Lock()


def _writer() -> ThreadPoolExecutor:
    """The process's one pin writer thread (made at the first write off a loop). One is enough: the folder lock
    serialises the writes anyway, and a flood cannot multiply threads (``Pins.pending`` bounds its queue)."""
    global _WRITER
    with _WRITER_MADE:
        if _WRITER is None:
            _WRITER = ThreadPoolExecutor(1, thread_name_prefix="peerserve-pins")
        return _WRITER


def _forget_writer() -> None:
    """In a forked child the thread is gone but the executor would still count it: make a new one there."""
    global _WRITER, _WRITER_MADE
    _WRITER, _WRITER_MADE = None, threading.Lock()


os.register_at_fork(after_in_child=_forget_writer)


def _off_loop(job: Callable[[], None]) -> None:
    """Run ``job`` (a small file write) in the pin writer thread when on an event loop (not waited for), else here."""
    if _on_loop():
        _writer().submit(job)
    else:
        job()


def _on_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _again(exc: AuthError) -> AuthError:
    """A fresh copy of ``exc`` for one more contact (a raised exception grows its traceback at each raise)."""
    if isinstance(exc, DamagedPinFile):
        return DamagedPinFile(exc.path, exc.reason)
    return AuthError(str(exc), exc.status, exc.retry_after)


def _pin_on_disk(
    path: Path | None, node_id: str, public_key: bytes, limit: int, seen: _Seen | None, replace: bytes | None = None
) -> _Written:
    """Pin ``node_id`` to ``public_key`` in the file, under the folder lock: (the pins on disk after, the file's
    stamp, whether this wrote, the key moved from). ``seen``: the pins the caller read and the stamp then, used when
    the file still has it; None: read it again. ``replace``: a pin to this key is moved (a pin to any other is not).
    Runs in the pin writer thread (or where no loop runs) and touches no Pins. AuthError when the id is pinned to
    another key meanwhile (403), the file is damaged (DamagedPinFile), the table is full (403), or the file cannot
    be read or written now (503: retry)."""
    try:
        with _folder_lock(path):
            stamp = _stamp_of(path)
            if seen is not None and seen[1] == stamp:
                pins = dict(seen[0])
            else:
                try:
                    pins = read_pins(path)
                except OSError as exc:  # not known to be unpinned: this contact waits, the next re-reads
                    raise AuthError(
                        f"this board cannot read its pin file right now ({str(exc)[:200]}); retry", 503
                    ) from exc
            known = pins.get(node_id)
            moved = known is not None and known == replace and known != public_key
            if known is not None and not moved:  # pinned by an operator (or another contact) meanwhile
                if known != public_key:
                    log.error("node %s presented a different key than the one pinned; refused", node_id)
                    raise AuthError(f"node id {node_id!r} belongs to another key (pinned on first contact)", 403)
                return pins, stamp, False, None
            if not moved and len(pins) >= limit:
                raise AuthError("pin table full", 403)
            # pinned in memory only once it is on disk: a pin held in memory alone (disk full) admitted the
            # key until a restart, after which another key for the id was pinned in its place
            pins[node_id] = public_key
            return pins, _save_pins(path, pins), True, known if moved else None
    except OSError as exc:  # disk full, I/O error, out of descriptors: not pinned, this contact waits (503)
        raise AuthError(f"this board cannot write its pin file right now ({str(exc)[:200]}); retry", 503) from exc


def _is_loopback(source: str) -> bool:
    try:
        return ipaddress.ip_address(source).is_loopback
    except ValueError:  # not an address (a test client's name): budgeted like any other source
        return False


def _stamp_of(path: Path | None) -> tuple[int, int, int] | None:
    try:
        st = path.stat() if path is not None else None
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size) if st is not None else None


def read_pins(path: Path | None) -> dict[str, bytes]:
    """The pins kept in ``path`` ({} when there is none); DamagedPinFile when it is there but not pins, OSError
    when it cannot be read now (out of descriptors, an I/O error: not damage)."""
    if path is None or not path.exists():
        return {}
    text = path.read_bytes()
    try:
        raw = json.loads(text)
        if not isinstance(raw, dict):
            raise ValueError("not a JSON object")
        pins = {}
        for node_id, key in raw.items():
            if not wire.NODE_ID.fullmatch(node_id) or not isinstance(key, str) or len(key) != 64:
                raise ValueError(f"bad entry {str(node_id)[:64]!r}")
            pins[node_id] = bytes.fromhex(key)
        return pins
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise DamagedPinFile(path, str(exc)[:200]) from exc


def _save_pins(path: Path | None, pins: Mapping[str, bytes]) -> tuple[int, int, int] | None:
    """Write ``pins`` atomically and durably (temp file fsynced, renamed, folder fsynced; owned like its
    folder, so root's edits stay the agent's); its new stamp."""
    if path is None:
        return None
    folder = path.parent.stat()
    owner = (folder.st_uid, folder.st_gid) if os.geteuid() == 0 and (folder.st_uid, folder.st_gid) != (0, 0) else None
    data = json.dumps({k: v.hex() for k, v in pins.items()}).encode()
    write_atomic(path, data, tmp=path.with_suffix(".tmp"), owner=owner)
    return _stamp_of(path)


@contextlib.contextmanager
def _folder_lock(path: Path | None) -> Iterator[None]:
    """Exclusive lock shared by the agent and ``peerserve pins``: flock on the pin file's folder."""
    if path is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def edit_pin(path: Path, node_id: str, key: bytes | None) -> bytes | None:
    """Forget ``node_id``'s pin (``key`` None: its next CA-signed key is pinned) or pin it to ``key``;
    the key it was pinned to before. A running agent sees the change at its next check."""
    with _folder_lock(path):
        pins = read_pins(path)
        before = pins.pop(node_id, None)
        if key is not None:
            pins[node_id] = key
        _save_pins(path, pins)
    return before


@dataclass(frozen=True)
class Signed:
    """The authentication headers of one request, and the nonce its answer must be bound to."""

    headers: Mapping[str, str]
    nonce: str


class Identity:
    """This node's keys, certificates and verifier, made from the token and the data dir."""

    def __init__(
        self,
        node_id: str,
        token: str,
        data_dir: Path | None,
        pin_first_per_min: float = PIN_FIRST_PER_MIN,
        pin_first_burst: int = PIN_FIRST_BURST,
        operator_ca: Ed25519PublicKey | None = None,
        board_card: Path | None = None,
        revocations: Path | None = None,
        boot_id: str | None = None,
        accept_v1: bool = True,
    ) -> None:
        """``boot_id``: this run's (drawn here by default: every start has its own; v2 requests must name it).
        ``accept_v1``: whether requests without a boot id (agents older than boot ids) are accepted as before, with
        the clock window alone against their replay (docs/security.md, "Boot ids").
        ``operator_ca`` switches the operator-CA mode on (agent/operator_ca.py): this node shows its board card
        (``board_card``, default ``DATA_DIR/peer/board.card``) and admits only peers showing one; ``revocations``
        (default ``DATA_DIR/peer/revoked.json``, absent: none) is the operator's signed revocation list."""
        self.node_id = node_id
        ca = derive_ca_key(token)
        self.ca_public = ca.public_key()
        # names this cluster in statements signed for it (quorum grants): the CA key's digest, the same on every node
        self.cluster = cluster_of(token)
        self.key = _load_or_create_key(data_dir / "peer" / "node.key" if data_dir else None)
        self.public_key = _raw(self.key.public_key())
        self.operator: OperatorTrust | None = None
        self.board: BoardCard | None = None
        if operator_ca is not None:
            peer = data_dir / "peer" if data_dir else None
            if revocations is None and peer is not None:
                revocations = peer / "revoked.json"
            floor = peer / "revoked.stamp.json" if peer is not None else None  # the "not older" rule's record
            synced = peer / "revoked.synced.json" if peer is not None else None  # lists members handed this board
            self.operator = OperatorTrust(operator_ca, revocations, cluster=bytes.fromhex(self.cluster), floor=floor,
                                          synced=synced)  # fmt: skip
            self.board = _own_board_card(board_card or (peer / "board.card" if peer else None), node_id,
                                         self.public_key, self.operator)  # fmt: skip
        self.card = Card.issue(ca, node_id, self.public_key, self.board.raw() if self.board else b"")
        self.card_text = self.card.encode()
        pins_path = data_dir / "peer" / "pins.json" if data_dir else None
        self.pins = Pins(pins_path, first_per_min=pin_first_per_min, first_burst=pin_first_burst)
        # operator-CA mode: the newest board card each pinned key showed, what a new key's card must be newer than
        self.pin_cards: PinCards | None = None
        if self.operator is not None:
            self.pin_cards = PinCards(data_dir / "peer" / "pin-cards.json" if data_dir else None, run=_off_loop)
        self.nonces = NonceCache()
        self.boot_id = boot_id if boot_id is not None else new_boot_id()
        if not wire.BOOT_ID.fullmatch(self.boot_id):
            raise ValueError("a boot id is 32 lower-case hex digits")
        self.accept_v1 = accept_v1
        self.stale_boot_refused = 0  # requests refused (signed, wire.STALE_BOOT) for naming another boot id
        self.v1_refused = 0  # requests without a boot id refused (accept_v1 off)
        self._cards: OrderedDict[str, Card] = OrderedDict()
        self.tls_files = _write_tls_files(data_dir / "peer", ca, self.key, node_id) if data_dir else None

    # -- sending -------------------------------------------------------------------------------------
    def sign_request(
        self, receiver: str, method: str, target: str, body: bytes, now: float, boot: str | None = None
    ) -> Signed:
        """A request's headers; ``boot`` (the receiver's boot id, or wire.UNKNOWN_BOOT) makes it a v2 request,
        None a v1 request (what an agent older than boot ids sends)."""
        ts, nonce = f"{now:.3f}", b64(secrets.token_bytes(16))
        sig = self.key.sign(wire.request_signing_bytes(self.node_id, receiver, method, target, body, ts, nonce, boot))
        headers = {wire.H_CARD: self.card_text, wire.H_TO: receiver, wire.H_TIME: ts, wire.H_NONCE: nonce,
                   wire.H_SIGNATURE: b64(sig)}  # fmt: skip
        if boot is not None:
            headers[wire.H_BOOT] = boot
        return Signed(headers, nonce)

    def sign_response(self, requester: str, status: int, nonce: str, body: bytes, now: float) -> dict[str, str]:
        ts = f"{now:.3f}"
        sig = self.key.sign(wire.response_signing_bytes(self.node_id, requester, status, nonce, body, ts))
        return {wire.H_CARD: self.card_text, wire.H_TIME: ts, wire.H_SIGNATURE: b64(sig)}

    def sign_detached(self, data: bytes) -> tuple[str, str]:
        """(our card, our signature over ``data``): a statement any member can relay and check (wire.Lease)."""
        return self.card_text, b64(self.key.sign(data))

    # -- receiving -----------------------------------------------------------------------------------
    def verify_detached(self, card_text: str, signature: str, data: bytes, now: float | None = None) -> str:
        """The node whose certified key signed ``data`` (its card issued by our cluster CA, pinned); AuthError.
        With ``now`` (wall clock), a signer met here for the first time spends the one budget all relayed
        statements share (``RELAYED``): a member relaying statements of minted ids pins no more than one address.
        Synchronous (SWIM checks relayed statements inside its message handling): on an event loop a signer met
        for the first time is refused this once (503) while its pin is written off the loop (``Pins.check``);
        its next statement passes."""
        card = self.detached_card(card_text, signature, data)
        self.admit(card, time.time() if now is None else now)
        replace = self._repin_from(card)
        self.pins.check(card.node_id, card.public_key, RELAYED if now is not None else "", now or 0.0, replace)
        self._shown(card)
        return card.node_id

    def detached_card(self, card_text: str, signature: str, data: bytes) -> Card:
        """The card (issued by our cluster CA) whose key signed ``data``; AuthError. Depends on the bytes alone (no
        pin, no clock), so a verdict may be cached by them (agent.quorum); ``verify_detached`` adds the pin check."""
        card = self._card({wire.H_CARD: card_text})
        _check_signature(card, {wire.H_SIGNATURE: signature}, data)
        return card

    def verify_pinned(self, card: Card, now: float) -> None:
        """The checks ``verify_detached`` makes of a relayed statement's signer (``detached_card``) that depend on this
        node's state: its board card's expiry and revocation (operator-CA mode) and its pin; AuthError."""
        self.admit(card, now)
        self.pins.check(card.node_id, card.public_key, RELAYED, now, self._repin_from(card))
        self._shown(card)

    def verify_request(
        self,
        headers: Mapping[str, str],
        method: str,
        target: str,
        body: bytes,
        now: float,
        source: str = "",
        *,
        mono: float,
    ) -> str:
        """The authenticated sender of a request to this node, received from address ``source`` when the wall clock
        read ``now`` and the monotonic clock ``mono`` (the nonce is forgotten only once both have moved on:
        ``NonceCache``); raises AuthError. Synchronous: on an event loop a first contact is refused 503 while its pin
        is written (``Pins.check``); the peer routes await ``verify_request_async``."""
        card, nonce, boot = self._request_card(headers, method, target, body, now)
        self.admit(card, now)
        self.pins.check(card.node_id, card.public_key, source, now, self._repin_from(card))
        self._shown(card)
        self.nonces.use(nonce, now, card.node_id, source, mono=mono)  # first: a repeat is "replayed", not 421 again
        self._check_boot(card.node_id, nonce, boot)
        return card.node_id

    async def verify_request_async(
        self,
        headers: Mapping[str, str],
        method: str,
        target: str,
        body: bytes,
        now: float,
        source: str = "",
        *,
        mono: float,
    ) -> str:
        """``verify_request`` where a first contact waits for its pin write off the loop (``Pins.pin``); the nonce
        is spent after it, as there (a replay sent meanwhile waits for the same write, then is refused). ``mono`` is
        read before the wait, as ``now`` is: the nonce is remembered from when the message was checked fresh."""
        card, nonce, boot = self._request_card(headers, method, target, body, now)
        self.admit(card, now)
        await self.pins.pin(card.node_id, card.public_key, source, now, self._repin_from(card))
        self._shown(card)
        self.nonces.use(nonce, now, card.node_id, source, mono=mono)  # first: a repeat is "replayed", not 421 again
        self._check_boot(card.node_id, nonce, boot)
        return card.node_id

    def _request_card(
        self, headers: Mapping[str, str], method: str, target: str, body: bytes, now: float
    ) -> tuple[Card, str, str | None]:
        """The card of a request's signer, its nonce and the boot id it names (None: a v1 request), everything but
        the pin, the boot id and the nonce's use checked."""
        card = self._card(headers)
        if headers.get(wire.H_TO) != self.node_id:
            raise AuthError("message addressed to another node", 403)
        ts, nonce = headers.get(wire.H_TIME, ""), headers.get(wire.H_NONCE, "")
        if not 8 <= len(nonce) <= 64:
            raise AuthError("missing or malformed nonce")
        boot = headers.get(wire.H_BOOT)
        if boot is not None and not wire.valid_boot(boot):
            raise AuthError("malformed boot id", 400)
        signed = wire.request_signing_bytes(card.node_id, self.node_id, method, target, body, ts, nonce, boot)
        _check_signature(card, headers, signed)
        _check_fresh(ts, now, f"a message signed by {card.node_id}")
        return card, nonce, boot

    def _check_boot(self, sender: str, nonce: str, boot: str | None) -> None:
        """Refuse an authenticated request made for another run of this node (StaleBoot, signed by the route), or a v1
        request when they are no longer accepted. Called once the nonce is spent: each signed refusal answers a
        request its sender signed anew (a repeat of one is the plain unsigned "replayed" 401), so it costs this node
        one signature made (~50 us on x86) per signature checked (~200 us), and needs no budget of its own: the
        per-sender budget it had let replays of one captured request spend the sender's refusals (review19e F2)."""
        if boot is None:
            if not self.accept_v1:
                self.v1_refused += 1
                raise AuthError("requests without a boot id (agents older than boot ids) are not accepted here", 401)
            return
        if boot == self.boot_id:
            return
        self.stale_boot_refused += 1
        raise StaleBoot(sender, nonce, self.boot_id, boot)

    def verify_response(
        self, headers: Mapping[str, str], responder: str, status: int, nonce: str, body: bytes, now: float
    ) -> None:
        """Check that an answer comes from ``responder`` and answers our request ``nonce``; raises AuthError.
        Synchronous (see ``verify_request``); the peer client awaits ``verify_response_async``."""
        card = self._response_card(headers, responder, status, nonce, body, now)
        self.admit(card, now)
        self.pins.check(card.node_id, card.public_key, replace=self._repin_from(card))
        self._shown(card)

    async def verify_response_async(
        self, headers: Mapping[str, str], responder: str, status: int, nonce: str, body: bytes, now: float
    ) -> None:
        """``verify_response`` where a first contact waits for its pin write off the loop."""
        card = self._response_card(headers, responder, status, nonce, body, now)
        self.admit(card, now)
        await self.pins.pin(card.node_id, card.public_key, replace=self._repin_from(card))
        self._shown(card)

    def _response_card(
        self, headers: Mapping[str, str], responder: str, status: int, nonce: str, body: bytes, now: float
    ) -> Card:
        card = self._card(headers)
        if card.node_id != responder:
            raise AuthError(f"expected an answer from {responder!r}, {card.node_id!r} answered", 403)
        ts = headers.get(wire.H_TIME, "")
        _check_signature(card, headers, wire.response_signing_bytes(responder, self.node_id, status, nonce, body, ts))
        _check_fresh(ts, now, f"an answer signed by {responder}")
        return card

    def _card(self, headers: Mapping[str, str]) -> Card:
        text = headers.get(wire.H_CARD)
        if not text:
            raise AuthError("unauthenticated: no node card (peer messages must be signed)")
        card = self._cards.get(text)
        if card is None:
            card = Card.decode(text)
            card.verify(self.ca_public)
            if self.operator is not None:
                self._certify(card)
            self._cards[text] = card
            if len(self._cards) > CARD_CACHE:
                self._cards.popitem(last=False)
        return card

    def _certify(self, card: Card) -> BoardCard:
        assert self.operator is not None
        try:
            return self.operator.certify(card.node_id, card.public_key, card.board)
        except CardError as exc:
            raise AuthError(str(exc), exc.status) from exc

    def admit(self, card: Card, now: float) -> None:
        """In the operator-CA mode, refuse ``card`` (already checked by ``_card``) unless it carries a live board card
        of the operator (not expired at wall clock ``now``, not revoked); a no-op in the token-only mode. Run at every
        use: a card cached as verified may have expired or been revoked since."""
        if self.operator is None:
            return
        try:
            self.operator.check_live(self._certify(card), now)
        except CardError as exc:
            raise AuthError(str(exc), exc.status) from exc

    def _repin_from(self, card: Card) -> bytes | None:
        """In the operator-CA mode, the key ``card``'s node id is pinned to when ``card`` (admitted: its board card
        live, not revoked) may move the pin to its own key: its board card expires strictly later than the newest
        card the pinned key showed (``pin_cards``). Cards carry no issue time; 'ca sign' sets the expiry from when it
        signs, so a later expiry is a later card for the same --days (a renewal with fewer days moves nothing: pins
        forget). Never back (an older card, or the old key's, is not newer than the one recorded), never on equal
        expiries (two cards for one id cannot make the pin flip-flop), never without a record of the pinned key's
        card (pinned in the token-only mode, or the record lost). None (no move) in the token-only mode."""
        if self.pin_cards is None:
            return None
        pinned = self.pins.current().get(card.node_id)
        if pinned is None or pinned == card.public_key:
            return None
        held = self.pin_cards.get(card.node_id)
        board = self._certify(card)
        if held is None or held[0] != pinned or board.expires <= held[1]:
            return None  # Pins refuses it (403, logged): another key for a pinned id, as without a card
        log.info("node %s shows a new key %s with a board card (fingerprint %s) expiring at %d, after the card its "
                    "pinned key %s last showed (%d): moving the pin", card.node_id, card.public_key.hex()[:16],
                    board.fingerprint, board.expires, pinned.hex()[:16], held[1])  # fmt: skip
        return pinned

    def _shown(self, card: Card) -> None:
        """``card`` passed its pin check (its key is the pinned one): remember its board card as the pinned key's."""
        if self.pin_cards is not None:
            self.pin_cards.shown(card.node_id, card.public_key, self._certify(card).expires)

    def revocation_state(self) -> object:
        """What the operator's revocation list says now, as an object that stays the same while the list does (None in
        the token-only mode; a new object each call while the list is damaged): caches of verdicts compare it."""
        if self.operator is None:
            return None
        try:
            return self.operator.revocations.current()
        except CardError:
            return object()

    def vouch(self, node_id: str, public_key: bytes, now: float) -> None:
        """For an exchange authenticated by its TLS connection alone (no card on the wire): in the operator-CA mode,
        ``node_id`` must have shown a live board card for ``public_key`` in a signed message (401 otherwise: the
        client falls back to signing, with its card); a no-op in the token-only mode."""
        if self.operator is None:
            return
        try:
            self.operator.vouch(node_id, public_key, now)
        except CardError as exc:
            raise AuthError(str(exc), exc.status) from exc


def _own_board_card(path: Path | None, node_id: str, public_key: bytes, trust: OperatorTrust) -> BoardCard:
    """This board's card from the operator (``path``), checked against our id, our key and the operator CA; a
    missing or wrong one is a setup error (ConfigError: the agent does not start), an expired one is logged (peers
    refuse it: this node serves alone until the operator signs a new one)."""
    if path is None:
        raise ConfigError("board_card", "operator_ca is set but there is no data dir for the board card")
    try:
        card = read_board_card(path)
        card.verify(trust.ca_public)
    except CardError as exc:
        raise ConfigError(
            "board_card",
            f"operator_ca is set but this board has no usable board card: {exc} (make a request with "
            "'peerserve card request', have the operator sign it with 'peerserve ca sign')",
        ) from exc
    if card.cluster != trust.cluster:
        raise ConfigError(
            "board_card",
            f"the board card in {path} is for cluster {card.cluster.hex()}, this node's token is cluster "
            f"{trust.cluster.hex()}: request a card with this token ('peerserve card request')",
        )
    if card.node_id != node_id or card.public_key != public_key:
        raise ConfigError(
            "board_card",
            f"the board card in {path} is for {card.node_id} with key {card.public_key.hex()[:16]}..., "
            f"this node is {node_id} with key {public_key.hex()[:16]}...: request a card for this board",
        )
    left = card.expires - time.time()
    if left <= 0:
        log.error("this board's card %s expired %.0f s ago: every peer refuses this node until the operator signs "
                  "a new one (peerserve ca sign)", path, -left)  # fmt: skip
    elif left < 14 * 86400:
        log.warning("this board's card %s expires in %.1f days: ask the operator for a new one", path, left / 86400)
    return card


def _check_signature(card: Card, headers: Mapping[str, str], signed: bytes) -> None:
    try:
        Ed25519PublicKey.from_public_bytes(card.public_key).verify(unb64(headers.get(wire.H_SIGNATURE, "")), signed)
    except (InvalidSignature, ValueError) as exc:
        raise AuthError("bad signature") from exc


def _check_fresh(ts: str, now: float, what: str = "a message") -> None:
    """Refuse a stamp more than WINDOW_S from ``now``, saying by how much: a replay that old, or clocks that far apart
    (the pair of boards cannot talk until one is set right: docs/architecture.md, "Clocks")."""
    try:
        at = float(ts)
    except ValueError as exc:
        raise AuthError("malformed timestamp") from exc
    if not abs(now - at) <= WINDOW_S:  # also refuses NaN
        raise AuthError(skew_refusal(what, at - now))


def skew_refusal(what: str, ahead_s: float) -> str:
    """Why a stamp ``ahead_s`` seconds off this node's clock (negative: behind) is refused."""
    way = "ahead of" if ahead_s > 0 else "behind"
    return (
        f"stale or future message: {what} is stamped {abs(ahead_s):.1f} s {way} this node's clock, over the "
        f"{WINDOW_S:.0f} s the peer plane accepts (a replay, or clock skew: set both boards' clocks, e.g. by NTP)"
    )


MAX_KEY_BYTES = 16 * 1024  # an Ed25519 PKCS#8 PEM is 119 bytes: anything past this is not a key
# A temporary key file younger than this may be another start's, written and about to be linked (a start links its
# own right after its fsync); an older one is a crash's. review27c I2: every one was removed, another start's too.
STALE_KEY_TMP_S = 60.0
# link(2) errors of a file system without hard links: FAT answers EPERM, others EOPNOTSUPP/ENOTSUP, and some FUSE
# file systems ENOSYS (review27c I5); the key is renamed into place there instead
NO_HARD_LINKS = frozenset({errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS})


def _load_or_create_key(path: Path | None) -> Ed25519PrivateKey:
    """This node's key from ``path``, made there on first start; StateError for a file that holds no key.

    Made durably (review27b F1: it was written in place with no fsync, so a power cut soon after the first start
    could leave an empty file and every later start a traceback): a temporary file (0600) written and fsynced, then
    hard-linked to ``path``, which never replaces a key already there (another start's: that one is used), then the
    folder fsynced. A damaged key is never replaced here: a new key is a new identity its peers must pin again.

    Starts at once on one data folder (review27c I2: with three, one that found the key removed the temporary file
    another was linking, whose link then failed ENOENT, a traceback): a start that finds the key removes only
    temporary files older than STALE_KEY_TMP_S, and one whose temporary file is gone all the same (its write stalled
    that long, or the clock jumped) reads the key the start that removed it found."""
    if path is None:
        return Ed25519PrivateKey.generate()
    try:
        found = _read_key(path)
    except FileNotFoundError:
        pass
    else:  # a crash's temporary files (each holding a key never used) go once the key is in place, not while made
        _remove_stale_key_tmps(path, time.time())
        return found
    key = Ed25519PrivateKey.generate()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())  # fmt: skip
    tmp = unique_tmp(path)
    try:
        write_synced(tmp, pem)
        try:
            os.link(tmp, path)
        except FileExistsError:  # made by another start since: it is the node's key
            return _read_key(path)
        except FileNotFoundError as exc:  # removed by another start, which found the key in place: that key
            return _key_made_meanwhile(path, exc)
        except OSError as exc:  # a file system without hard links (FAT): a rename, which could replace a race's key
            if exc.errno not in NO_HARD_LINKS:
                raise
            try:
                os.rename(tmp, path)
            except FileNotFoundError as gone:
                return _key_made_meanwhile(path, gone)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
    fsync_dir(path.parent)
    log.info("generated this node's key pair in %s (public key %s)", path, _raw(key.public_key()).hex())
    return key


def _remove_stale_key_tmps(path: Path, now: float) -> None:
    """Remove the temporary key files beside ``path`` last written over STALE_KEY_TMP_S before ``now``."""
    for stale in path.parent.glob(tmp_glob(path)):
        with contextlib.suppress(OSError):
            if now - stale.lstat().st_mtime > STALE_KEY_TMP_S:
                stale.unlink()


def _key_made_meanwhile(path: Path, gone: OSError) -> Ed25519PrivateKey:
    """The key at ``path`` after this start's temporary key file went (``gone``): another start's, which removed it."""
    try:
        return _read_key(path)
    except FileNotFoundError:
        raise StateError(
            f"cannot make this node's key {path}: its temporary file {gone.filename} was removed before it was "
            f"linked into place, and no key is there (is another program removing files in {path.parent}?)"
        ) from gone


def _read_key(path: Path) -> Ed25519PrivateKey:
    """The Ed25519 key in ``path``; FileNotFoundError when there is none, StateError when it holds none."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_KEY_BYTES + 1)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise StateError(f"cannot read this node's key {path}: {exc.strerror}") from exc
    why = ""
    if len(data) > MAX_KEY_BYTES:
        why = f"over {MAX_KEY_BYTES} bytes"
    else:
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            why = "empty" if not data else f"no PEM private key: {exc}"
        else:
            if isinstance(key, Ed25519PrivateKey):
                return key
            why = "not an Ed25519 key"
    raise StateError(
        f"this node's key {path} is damaged ({why}; e.g. a power cut during the first start). Move it aside "
        f"(mv {path} {path}.damaged) and start again: the agent makes a new key, a new identity to its peers, which "
        "refuse it as 'a different key than the one pinned' until re-pinned ('peerserve pins key' here, 'peerserve "
        "pins forget NODE_ID --key KEY' on each other board); with your own CA, request and install a new board "
        "card for the new key ('peerserve card request', 'peerserve ca sign'), which re-pins it by itself"
    )


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    cert: Path
    key: Path


def _x509(subject: str, public: Ed25519PublicKey, ca: Ed25519PrivateKey, is_ca: bool, issuer: str) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
        .public_key(public)
        .serial_number(1 if is_ca else x509.random_serial_number())
        .not_valid_before(_EPOCH)
        .not_valid_after(_FAR)
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
    )
    if not is_ca:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(subject)]), critical=False)
    return builder.sign(ca, None)


def _write_tls_files(folder: Path, ca: Ed25519PrivateKey, key: Ed25519PrivateKey, node_id: str) -> TlsFiles:
    """The cluster CA certificate (identical on every board) and this node's certificate, as PEM files."""
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    ca_name = "peerserve cluster " + _raw(ca.public_key()).hex()[:16]
    files = TlsFiles(folder / "ca.crt", folder / "node.crt", folder / "node.key")
    pem = serialization.Encoding.PEM
    files.ca.write_bytes(_x509(ca_name, ca.public_key(), ca, True, ca_name).public_bytes(pem))
    files.cert.write_bytes(_x509(node_id, key.public_key(), ca, False, ca_name).public_bytes(pem))
    return files
