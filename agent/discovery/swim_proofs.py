"""Signed suspicions for Lifeguard's confirmers: ours signed once, others' checked, both relayed with the update.

A suspect update's ``origin`` is a claim; the SWIM core (agent.discovery.swim) counts it as a confirmer only
from the origin itself or with the origin's signature (``wire.SuspectProof``: its card, fresh within the
identity's window) riding on the same message. This book signs our own suspicions (only those the core shows
we probed ourselves, each (member, incarnation) once, again when half the window has passed or a new episode
began), keeps the proofs that checked out where the core would use them (one per (member, origin), bounded),
attaches to each outgoing message the proofs of the suspect updates it carries (at most ``wire.MAX_PROOFS``),
and tells the caller which incoming ones are proven. A proof counts only for a suspicion still open here that
began at most ``EPISODE_SKEW_S`` after it was signed, and never for a later suspicion than the one it first counted
for here (remembered by the digest of the statement signed, not of its text, on our own clocks: a cleared
suspicion's proof cannot confirm a new one, whatever the origin's clock says, nor whatever our wall clock did
since). Refused ones are remembered briefly by their exact bytes, which saves re-verifying a replay but not a
forger's fresh signatures (each costs a verification, at most ``MAX_PROOFS`` a message).
I/O-free but for the clocks and the node's key.

A second book (``dead=True``) does the same for dead declarations (``SwimMessage.dead_proofs``, signed under their
own context): ours signed only where the core shows we declared the member dead ourselves, others' counted only
where the core would count their origin as a declarer (``Swim.declaration_age``); both books share the message's
``MAX_PROOFS``.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import replace

from agent.identity import WINDOW_S, AuthError, Identity
from peerserve.wire import MAX_PROOFS, SuspectProof, SwimMessage

log = logging.getLogger(__name__)

MAX_HELD = 512  # proofs kept to relay (ours and others'), one per (member, origin); stale ones dropped first
MAX_REFUSED = 256  # digests of proofs that did not check out, not verified again for REFUSED_TTL_S
REFUSED_TTL_S = 10.0  # on the monotonic clock (a step of the wall clock neither stretches nor ends it)
EPISODE_SKEW_S = 3.0  # a proof signed this long before its suspicion opened here still counts (relay, clocks)
# A proof that counted here is remembered (by digest, when it first counted, on our own clocks) and refused for any
# later suspicion of that member: honest origins sign anew for each suspicion, so no origin's clock is needed for
# a replay of what we saw. "Later" is judged on the monotonic clock the core measures suspicions on (a step back of
# the wall clock made a proof counted before it look counted after the new suspicion began: its replay counted
# again). Bounded: per (member, origin) and in all; kept while any skew could keep it fresh, and forgotten only when
# both clocks say so (the wall clock SPENT_TTL_S past when it counted, as for the nonces, and the monotonic clock
# SPENT_TTL_S on): forgetting it by the wall clock alone, a forward jump and its correction made it count again.
MAX_SPENT_KEYS = 512
MAX_SPENT_PER_KEY = 8
SPENT_TTL_S = 2 * WINDOW_S
# R3 (docs/security.md): the spent table is in memory, so a restart forgot which proofs had counted, and a member
# could replay one that counted in the previous run (stamped ahead by an origin whose clock reads ahead, so still
# fresh) into a new suspicion after the restart. A relayed proof (origin other than the message's sender) counts
# only once the monotonic clock has moved RELAYED_GATE_S past this book's start: every proof that counted before
# the start is stale by then (stamped within WINDOW_S of the wall clock when it counted), unless the wall clock
# stepped back across the restart. Until then the origin's own word (its message) and our own probes still count,
# and a relayed proof that checks out is held and relayed, only not counted here.
RELAYED_GATE_S = SPENT_TTL_S
SAME_EPISODE_S = 0.05  # counted this close to the suspicion's start here: the same one (two clocks read apart)
REMEMBER_SPENT = True  # tests switch it off to show the skew replay comes back
Key = tuple[str, int, str]  # (member, incarnation, origin)
# the core's view (Swim.suspicion_age): how long the suspicion a proof confirms has been open (0: opens now);
# None: it confirms nothing (not a member, cleared, another incarnation, ours unprobed, enough confirmers)
Episode = Callable[[str, int, str], float | None]


def _any_episode(node_id: str, incarnation: int, origin: str) -> float | None:
    return 0.0


def spent_forgotten(counted: tuple[float, float], now: float, mono: float) -> bool:
    """Whether a proof that first counted at ``counted`` (wall clock, monotonic clock) may be forgotten at wall clock
    ``now`` and monotonic clock ``mono``: only once both have moved SPENT_TTL_S past it (its stamp, within WINDOW_S of
    the wall clock when it counted, is then stale; a wall clock that jumped ahead and came back reads it fresh)."""
    return now - counted[0] > SPENT_TTL_S and mono - counted[1] > SPENT_TTL_S


class ProofBook:
    """Our signed suspicions and the checked ones of others, for the suspect updates our messages carry.

    ``episode``: the core's view (the driver passes ``Swim.suspicion_age``); the default, for tests of the
    signatures alone, takes every suspicion as opening now. ``wall``: the agent's wall clock (proof stamps and their
    freshness); ``mono``: the monotonic clock the episode's ages are measured on (the driver's ``SwimDriver.clock``).
    ``started``: the ``mono`` reading at this run's start (None: when the book is made); relayed proofs count only
    once ``mono`` is more than ``gate_s`` past it (``RELAYED_GATE_S``; 0 turns the gate off: tests of the
    signatures alone, and the rule before)."""

    def __init__(
        self,
        identity: Identity,
        wall: Callable[[], float] = time.time,
        episode: Episode = _any_episode,
        dead: bool = False,
        mono: Callable[[], float] = time.monotonic,
        started: float | None = None,
        gate_s: float = RELAYED_GATE_S,
    ):
        self.identity, self.wall, self.episode, self.dead, self.mono = identity, wall, episode, dead, mono
        self.started = mono() if started is None else started
        self.gate_s = gate_s
        self.gated = 0  # relayed proofs that checked out but did not count: within gate_s of the start (R3)
        self.status = "dead" if dead else "suspect"  # the updates whose origins this book signs and checks
        self.held: dict[tuple[str, str], SuspectProof] = {}  # (member, origin) -> its newest usable proof
        self.checked = 0  # proofs that checked out (signature verified once each)
        self.refused = 0  # proofs that did not check out (bad signature, another signer, stale, replayed)
        self._refused: dict[bytes, float] = {}  # digest -> until when (monotonic) it is refused without a check
        # (member, origin) -> digest -> (wall clock, monotonic clock) when it first counted here
        self._spent: dict[tuple[str, str], dict[bytes, tuple[float, float]]] = {}
        self._warned = False

    def _fresh(self, proof: SuspectProof, margin: float = 0.0) -> bool:
        return abs(self.wall() * 1000 - proof.stamp_ms) <= (WINDOW_S - margin) * 1000

    def _age(self, proof: SuspectProof) -> float | None:
        """How long its suspicion has been open here, if ``proof`` (fresh) may confirm it now; else None."""
        age = self.episode(proof.node_id, proof.incarnation, proof.origin)
        if age is None or not self._fresh(proof):
            return None
        return age if proof.stamp_ms >= (self.wall() - age - EPISODE_SKEW_S) * 1000 else None

    def _keep(self, proof: SuspectProof) -> None:
        key = (proof.node_id, proof.origin)
        self.held.pop(key, None)
        if len(self.held) >= MAX_HELD:  # those no suspicion here would use go first, then the oldest
            for k in [k for k, p in self.held.items() if self._age(p) is None]:
                del self.held[k]
        while len(self.held) >= MAX_HELD:
            del self.held[next(iter(self.held))]
        self.held[key] = proof

    def _own(self, node_id: str, incarnation: int) -> SuspectProof | None:
        """Our signed suspicion, only where the core shows our own probe missed ``node_id`` at ``incarnation``."""
        me = self.identity.node_id
        age = self.episode(node_id, incarnation, me)
        if age is None:
            return None  # a rumour naming us is no suspicion of ours: we sign nothing we did not probe
        proof = self.held.get((node_id, me))
        stale = proof is None or proof.incarnation != incarnation or not self._fresh(proof, margin=WINDOW_S / 2)
        if stale or proof is None or proof.stamp_ms < (self.wall() - age - 0.01) * 1000:  # or an earlier episode's
            proof = SuspectProof(node_id, incarnation, me, int(self.wall() * 1000), dead=self.dead)
            card, signature = self.identity.sign_detached(proof.signing_bytes())
            proof = replace(proof, card=card, signature=signature)
            self._keep(proof)
        return proof

    def attach(self, msg: SwimMessage) -> SwimMessage:
        """``msg`` with the proofs of the suspect (dead) updates it carries (ours signed now if need be; others' if
        held), in the room the other book's proofs leave of ``MAX_PROOFS``."""
        proofs: list[SuspectProof] = []
        room = MAX_PROOFS - len(msg.proofs if self.dead else msg.dead_proofs)
        for u in msg.updates:
            if len(proofs) >= room:
                break
            if u.status != self.status or not u.origin:
                continue
            if u.origin == self.identity.node_id:
                proof = self._own(u.node_id, u.incarnation)
            else:
                proof = self.held.get((u.node_id, u.origin))
                if proof is not None and (proof.incarnation != u.incarnation or self._age(proof) is None):
                    proof = None
            if proof is not None and self._fresh(proof) and proof not in proofs:
                proofs.append(proof)
        if self.dead:
            return replace(msg, dead_proofs=tuple(proofs)) if proofs else msg
        return replace(msg, proofs=tuple(proofs)) if proofs else msg

    def check(self, msg: SwimMessage) -> list[Key]:
        """The suspicions (dead declarations) ``msg`` carries that its proofs prove (signed by their origin, fresh,
        for a suspicion the core would count now); others ignored, and never verified unless they could count."""
        carried = {(u.node_id, u.incarnation, u.origin) for u in msg.updates if u.status == self.status}
        out: list[Key] = []
        for proof in msg.dead_proofs if self.dead else msg.proofs:
            key = (proof.node_id, proof.incarnation, proof.origin)
            if key not in carried or key in out or proof.origin == self.identity.node_id:
                continue  # our own word comes back: we count ourselves only by our own probe
            if self.episode(*key) is None:
                continue  # nothing here it could confirm: not worth a verification, nor a place in the store
            age = self._age(proof)
            if age is None:
                self._refuse(proof, AuthError("stale, or older than the suspicion it would confirm (a replay?)"))
            elif self._spent_before(proof, age):
                self._refuse(proof, AuthError("it counted for an earlier suspicion here (a replay)"))
            elif self.held.get(key[::2]) == proof or self._verified(proof):
                if proof.origin != msg.node_id and self.relay_gated():
                    self.gated += 1  # held (and relayed) as checked, but not counted here yet: R3
                    continue
                self._spend(proof)
                out.append(key)
        return out

    def relay_gated(self) -> bool:
        """Whether relayed proofs are still not counted: ``mono`` is within ``gate_s`` of this run's start (R3). Every
        proof that counted in an earlier run is stale once it is past (strictly, as ``spent_forgotten``)."""
        return self.mono() - self.started <= self.gate_s

    def _spent_before(self, proof: SuspectProof, age: float) -> bool:
        """Whether ``proof`` first counted here before the suspicion it would confirm now (``age`` s old, on the
        monotonic clock) began."""
        counted = self._spent.get((proof.node_id, proof.origin), {}).get(self._digest(proof))
        return REMEMBER_SPENT and counted is not None and counted[1] < self.mono() - age - SAME_EPISODE_S

    def _spend(self, proof: SuspectProof) -> None:
        """Remember when ``proof`` first counted (bounded; the oldest go first)."""
        now, mono, key, digest = self.wall(), self.mono(), (proof.node_id, proof.origin), self._digest(proof)
        book = self._spent.pop(key, {})
        book = {d: t for d, t in book.items() if not spent_forgotten(t, now, mono)}
        book.setdefault(digest, (now, mono))
        while len(book) > MAX_SPENT_PER_KEY:
            del book[min(book, key=lambda d: book[d][1])]
        while len(self._spent) >= MAX_SPENT_KEYS:
            del self._spent[next(iter(self._spent))]
        self._spent[key] = book  # most recently counted last

    def _digest(self, proof: SuspectProof) -> bytes:
        """What a counted proof is remembered by: the statement its origin signed (context, member, incarnation,
        origin, stamp), not its text. Any valid signature of it is the same proof; keyed by the text of card and
        signature, a re-encoded or re-signed copy of a proof that counted looked new and counted again
        (review16a F1)."""
        return hashlib.sha256(proof.signing_bytes()).digest()

    def _exact(self, proof: SuspectProof) -> bytes:
        """A refused proof is remembered by its exact bytes: keyed by its statement, a forger's signature of a genuine
        statement would hold off the origin's own for REFUSED_TTL_S."""
        return hashlib.sha256(
            proof.signing_bytes() + b"\0" + proof.card.encode() + b"\0" + proof.signature.encode()
        ).digest()

    def _verified(self, proof: SuspectProof) -> bool:
        digest, now = self._exact(proof), self.wall()
        if self._refused.get(digest, -math.inf) > self.mono():
            self.refused += 1  # refused a moment ago: not verified again
            return False
        try:
            signer = self.identity.verify_detached(proof.card, proof.signature, proof.signing_bytes(), now)
            if signer != proof.origin:
                raise AuthError(f"signed by {signer}, not by {proof.origin}")
        except AuthError as exc:
            if exc.status == 503:  # retryable: the signer's first pin is being written (identity.Pins.pin), or the
                # pin file cannot be read right now. Not remembered as refused: the origin reuses this proof for
                # up to WINDOW_S / 2, and its relays must count once the pin lands (review13b F3)
                self.refused += 1
                return False
            self._refuse(proof, exc)
            mono = self.mono()
            for d in [d for d, until in self._refused.items() if until <= mono]:
                del self._refused[d]
            while len(self._refused) >= MAX_REFUSED:
                del self._refused[next(iter(self._refused))]
            self._refused[digest] = mono + REFUSED_TTL_S
            return False
        self.checked += 1
        self._keep(proof)
        return True

    def _refuse(self, proof: SuspectProof, exc: AuthError) -> None:
        self.refused += 1
        if not self._warned:  # a member relaying forged proofs would repeat: loudly once
            self._warned = True
            what = "dead declaration" if self.dead else "suspicion"
            log.warning("refused a %s of %s claimed for %s: %s", what, proof.node_id, proof.origin, exc)
