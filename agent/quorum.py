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

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Collection

from cryptography.exceptions import InvalidSignature

from agent.identity import AuthError, Identity, unb64
from peerserve.wire import Grant

log = logging.getLogger(__name__)

MAX_CACHED = 64  # (term, leader) certificates remembered once verified
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


class Certificates:
    """Verified certificates of others, per (term, leader): the voters whose grants checked out."""

    def __init__(self, identity: Identity, wall: Callable[[], float] = time.time, limit: int = MAX_CACHED) -> None:
        self.identity, self.wall, self.limit = identity, wall, limit
        self.cache: OrderedDict[tuple[int, str], frozenset[str]] = OrderedDict()
        self.verifications = 0  # signatures checked (each grant of a (term, leader) at most once)

    def voters(self, term: int, leader: str, grants: Collection[Grant], members: Collection[str]) -> frozenset[str]:
        """The voters among ``grants`` whose signature of (term, leader) checks out; only ``members``' grants are
        looked at, one per voter (at most ``len(members)`` verifications, once per (term, leader))."""
        key = (term, leader)
        cached = self.cache.get(key)
        if cached is not None:
            self.cache.move_to_end(key)
            return cached
        now, found, seen = self.wall(), set(), set()
        for grant in grants:
            if grant.voter in seen or grant.voter not in members:
                continue  # a voter named twice counts once; a stranger cannot count here
            seen.add(grant.voter)
            self.verifications += 1
            if verified(self.identity, grant, term, leader, now) is not None:
                found.add(grant.voter)
        result = frozenset(found)
        if len(result) == len(seen):
            # cached only whole: a grant refused may be a signer whose first pin is still being written (503), which
            # counts on a later message; and only the leader itself sends its (term, leader) certificate (the peer
            # route checks the sender), so nobody else can make us verify one again
            self.cache[key] = result
            while len(self.cache) > self.limit:
                self.cache.popitem(last=False)
        return result
