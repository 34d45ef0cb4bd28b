"""Quorum certificates for the election: the signed grants a candidate collects and the certificates others carry.

A granted vote carries the voter's card and a detached signature over (cluster, term, candidate, voter)
(``wire.Grant``, signed as leases and SWIM's proofs are: ``Identity.sign_detached``). The candidate keeps the grants
of its candidacy (``Grants``) and attaches them to its first announce of the term, to the certificate it sends a
node that does not follow it yet, and to its vote requests when it stands again while leading. A receiver verifies a
certificate's grants (``Certificates``) and hands the election machine only the set of voters whose grant checked out:
a forged signature, another node's card, a grant of another term or of another candidate, or a voter named twice
adds nothing. Each (term, leader)'s certificate is verified once and cached (bounded), and at most the cluster's
worth of grants of one certificate is ever verified (its members; a name that is not a member here cannot count).

I/O-free but for the node's key and the wall clock (the pin rules of ``Identity.verify_detached``).
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Mapping

from cryptography.exceptions import InvalidSignature

from agent.identity import AuthError, Card, Identity, unb64
from agent.operator_ca import BoardCard, CardError
from peerserve.wire import Grant

log = logging.getLogger(__name__)

MAX_CACHED = 64  # (term, leader) certificates remembered once verified
MAX_VERDICTS = 4096  # grants whose signature verdict is remembered (16 certificates of a 256-member cluster)
KEEP_TERMS = 4  # candidacies whose grants we keep (besides the term we stand for and the term we lead, never pruned)


class Grants:
    """Our own grants to others (signed once per (term, candidate)) and the grants our candidacies collected."""

    def __init__(self, identity: Identity, wall: Callable[[], float] = time.time) -> None:
        self.identity, self.wall = identity, wall
        self.collected: dict[int, dict[str, Grant]] = {}  # our candidacy's term -> voter -> its verified grant
        self.refused = 0  # grants to us that did not check out

    def _bytes(self, term: int, candidate: str, voter: str) -> bytes:
        return Grant.signing_bytes(self.identity.cluster, term, candidate, voter)

    def sign(self, term: int, candidate: str) -> Grant:
        """Our grant of ``term`` to ``candidate`` (to ourselves when we stand)."""
        me = self.identity.node_id
        card, signature = self.identity.sign_detached(self._bytes(term, candidate, me))
        return Grant(me, card, signature)

    def take(self, term: int, voter: str, grant: Grant | None, standing: int | None, led: int = 0) -> bool:
        """A vote granted to us in ``term`` by ``voter``: True (and kept) only if we stand for ``term`` now
        (``standing``: the machine's candidacy, a sitting leader's standing again included) and ``grant`` is the voter's
        signature of it. A grant of any other term is not booked: a member's signed grants of far-future terms once
        pruned the book of the term we stood for, and we won with a certificate nobody followed (review14b F1)."""
        if standing is None or term != standing or grant is None or grant.voter != voter:
            self.refused += 1
            return False
        if verified(self.identity, grant, term, self.identity.node_id, self.wall()) is None:
            self.refused += 1
            return False
        self._book(term, (led,))[voter] = grant
        return True

    def _book(self, term: int, keep: Collection[int] = ()) -> dict[str, Grant]:
        """The grants of our candidacy of ``term``; the oldest other books are pruned to ``KEEP_TERMS``, never
        ``term``'s nor ``keep``'s (the term we lead: failed stand-agains must not prune its certificate)."""
        book = self.collected.setdefault(term, {})
        kept = {term, *keep}
        for old in sorted(t for t in self.collected if t not in kept)[: max(0, len(self.collected) - KEEP_TERMS)]:
            del self.collected[old]
        return book

    def certificate(self, term: int, voters: Collection[str], keep: Collection[int] = ()) -> tuple[Grant, ...]:
        """The grants of ``voters`` for our candidacy of ``term`` (ours signed now); ``keep``: the books to keep too."""
        book = self._book(term, keep)
        if self.identity.node_id in voters and self.identity.node_id not in book:
            book[self.identity.node_id] = self.sign(term, self.identity.node_id)
        return tuple(book[v] for v in sorted(voters) if v in book)


def verified(identity: Identity, grant: Grant, term: int, candidate: str, now: float) -> str | None:
    """The voter, if ``grant`` is its signature of (this cluster, ``term``, ``candidate``, itself); else None."""
    data = Grant.signing_bytes(identity.cluster, term, candidate, grant.voter)
    if grant.voter == identity.node_id:  # our own grant: our card and our key (we are in no pin file of ours)
        try:
            identity.key.public_key().verify(unb64(grant.signature), data)
        except (InvalidSignature, AuthError, ValueError):
            return None
        return grant.voter if grant.card == identity.card_text else None
    try:
        signer = identity.verify_detached(grant.card, grant.signature, data, now)
    except AuthError as exc:
        log.debug("grant of %s for %s at term %d refused: %s", grant.voter, candidate, term, exc)
        return None
    return signer if signer == grant.voter else None


def board_expiry(card: Card) -> float:
    """When ``card``'s board card expires (operator-CA mode; infinity without one): a certificate cached whole counts
    its voter until then at most, as expiry is judged at every use (review15a F6)."""
    if not card.board:
        return math.inf
    try:
        return float(BoardCard.parse(card.board).expires)
    except CardError:
        return -math.inf  # not a board card (it was refused when checked): never cached past now


class Certificates:
    """Verified certificates of others, per (term, leader): the voters whose grants checked out.

    Two caches, both bounded: a certificate's voter set once it was looked at whole (every grant a member's here and
    every verdict final), and each grant's own verdict by its bytes (the card that signed it, or None for a forgery),
    so that a grant's signature is checked once whatever the certificate around it: a certificate with one bad grant
    (never cached whole) once cost every receiver all its signatures again on each message (3.56 ms for 32 grants,
    review14b F6), and a grant skipped while its voter was not yet a member is verified when it is (review14b F3).
    The pin check, which depends on this node's state (a first contact's pin being written: 503), runs each time a
    grant is looked at; the certificates cached whole are dropped whenever the pins change (an operator's ``pins
    forget`` or a re-pin, a new pin written), so a voter whose pin went no longer counts in one (review14d Q3); in
    the operator-CA mode also when the revocation list changes, and each once its voters' earliest board card
    expires (``board_expiry``)."""

    def __init__(
        self, identity: Identity, wall: Callable[[], float] = time.time, limit: int = MAX_CACHED,
        grant_limit: int = MAX_VERDICTS,
    ) -> None:  # fmt: skip
        self.identity, self.wall, self.limit, self.grant_limit = identity, wall, limit, grant_limit
        # (term, leader) -> (its voters, the wall time the earliest of their board cards expires: dropped then)
        self.cache: OrderedDict[tuple[int, str], tuple[frozenset[str], float]] = OrderedDict()
        self.checked: OrderedDict[bytes, Card | None] = OrderedDict()  # a grant's digest -> the card that signed it
        self.verifications = 0  # signatures checked (each grant's bytes at most once while remembered)
        self._pins: Mapping[str, bytes] | None = None  # the pins the cached certificates were judged under
        self._revoked: object = None  # ... and the revocation list (operator-CA mode; Identity.revocation_state)

    def voters(
        self, term: int, leader: str, grants: Collection[Grant], members: Collection[str], from_leader: bool = True
    ) -> frozenset[str]:
        """The voters among ``grants`` whose signature of (term, leader) checks out; only ``members``' grants are
        looked at, one per voter (at most ``len(members)`` verifications, each grant's once). ``from_leader`` False:
        the grants came by a relay (a gossiped lease), which may have swapped one for a forgery, so the set is not
        cached whole under (term, leader) (it would stand for the leader's own certificate), nor is a new verdict of
        its grants remembered (one already there is used)."""
        key = (term, leader)
        pins = self.identity.pins.current()
        revoked = self.identity.revocation_state()
        if pins is not self._pins or revoked is not self._revoked:
            # a pin forgotten, changed or added, or the operator's revocation list changed: every verdict on a pin
            # or a board card is looked at again
            self.cache.clear()
            self._pins, self._revoked = pins, revoked
        now = self.wall()
        cached = self.cache.get(key)
        if cached is not None and now < cached[1]:
            self.cache.move_to_end(key)
            return cached[0]
        found, seen, whole, until = set(), set(), True, math.inf
        if cached is not None:  # a voter's board card has expired since: judged again, each grant's verdict kept
            del self.cache[key]
        for grant in grants:
            if grant.voter in seen:
                continue  # a voter named twice counts once
            if grant.voter not in members:
                whole = False  # a stranger cannot count here; it may be a member whose admission is under way (F3)
                continue
            seen.add(grant.voter)
            verdict, card = self._verdict(grant, term, leader, now, keep=from_leader)
            if verdict and card is not None:
                found.add(grant.voter)
                until = min(until, board_expiry(card))
            whole = whole and verdict is not None  # a pin refusal may pass next time: looked at again then
        result = frozenset(found)
        if whole and from_leader:
            # cached whole only when no verdict may change: a pin refusal (a signer's first pin still being written,
            # 503) and a voter not yet a member here may count on a later message; a forged grant never will. Only
            # the leader itself sends its (term, leader) certificate (the peer route checks the sender), and an
            # honest one carries no forgery (it verified each grant it booked), so nobody else's grants are lost
            self.cache[key] = (result, until)
            while len(self.cache) > self.limit:
                self.cache.popitem(last=False)
        return result

    def _verdict(
        self, grant: Grant, term: int, leader: str, now: float, keep: bool = True
    ) -> tuple[bool | None, Card | None]:
        """True if ``grant`` is its voter's signature of (term, leader); False if it never will be (forged, another
        cluster's card, another node's); None if it may be on a later message (a pin refusal). With the card that
        signed it. ``keep`` False (a grant relayed on a gossiped lease): a verdict already remembered is used, a new one
        is not remembered, so that leases of forged grants (any member may put them on SWIM messages) cannot evict
        genuine verdicts (review15b F2)."""
        own = grant.voter == self.identity.node_id
        digest = hashlib.sha256(repr((term, leader, grant.voter, grant.card, grant.signature)).encode()).digest()
        if digest in self.checked:
            self.checked.move_to_end(digest)
            card = self.checked[digest]
        else:
            self.verifications += 1
            card = self._signer(grant, term, leader, now, own)
            if keep:
                self.checked[digest] = card
                while len(self.checked) > self.grant_limit:
                    self.checked.popitem(last=False)
        if card is None or card.node_id != grant.voter:
            return False, card
        if own:
            return True, card  # our own key (we are in no pin file of ours)
        try:
            self.identity.verify_pinned(card, now)
        except AuthError as exc:
            log.debug("grant of %s for %s at term %d not counted yet: %s", grant.voter, leader, term, exc)
            return None, card
        return True, card

    def _signer(self, grant: Grant, term: int, leader: str, now: float, own: bool) -> Card | None:
        """The card whose key signed ``grant`` of (term, leader), pins aside; None for a forgery."""
        if own:
            return Card.decode(self.identity.card_text) if verified(self.identity, grant, term, leader, now) else None
        data = Grant.signing_bytes(self.identity.cluster, term, leader, grant.voter)
        try:
            return self.identity.detached_card(grant.card, grant.signature, data)
        except AuthError as exc:
            log.debug("grant of %s for %s at term %d refused: %s", grant.voter, leader, term, exc)
            return None
