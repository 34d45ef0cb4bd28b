"""Signed suspicions for Lifeguard's confirmers: ours signed once, others' checked, both relayed with the update.

A suspect update's ``origin`` is a claim; the SWIM core (agent.discovery.swim) counts it as a confirmer only
from the origin itself or with the origin's signature (``wire.SuspectProof``: its card, fresh within the
identity's window). This book signs our own suspicions (each (member, incarnation) once, again when half the
window has passed), keeps the proofs that checked out (bounded), attaches to each outgoing message the proofs of
the suspect updates it carries (at most ``wire.MAX_PROOFS``), and tells the caller which incoming ones are
proven. I/O-free but for the clock and the node's key; the decisions stay the core's.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import replace

from agent.identity import WINDOW_S, AuthError, Identity
from peerserve.wire import MAX_PROOFS, SuspectProof, SwimMessage

log = logging.getLogger(__name__)

MAX_HELD = 512  # proofs kept to relay (ours and others'), oldest dropped first
Key = tuple[str, int, str]  # (member, incarnation, origin)


class ProofBook:
    """Our signed suspicions and the checked ones of others, for the suspect updates our messages carry."""

    def __init__(self, identity: Identity, wall: Callable[[], float] = time.time) -> None:
        self.identity, self.wall = identity, wall
        self.held: dict[Key, SuspectProof] = {}
        self.checked = 0  # proofs that checked out (signature verified once each)
        self.refused = 0  # proofs that did not check out (bad signature, another signer, stale)
        self._warned = False

    def _fresh(self, proof: SuspectProof, margin: float = 0.0) -> bool:
        return abs(self.wall() * 1000 - proof.stamp_ms) <= (WINDOW_S - margin) * 1000

    def _keep(self, key: Key, proof: SuspectProof) -> None:
        self.held.pop(key, None)
        while len(self.held) >= MAX_HELD:
            del self.held[next(iter(self.held))]
        self.held[key] = proof

    def _own(self, node_id: str, incarnation: int) -> SuspectProof:
        key = (node_id, incarnation, self.identity.node_id)
        proof = self.held.get(key)
        if proof is None or not self._fresh(proof, margin=WINDOW_S / 2):
            proof = SuspectProof(node_id, incarnation, self.identity.node_id, int(self.wall() * 1000))
            card, signature = self.identity.sign_detached(proof.signing_bytes())
            proof = replace(proof, card=card, signature=signature)
            self._keep(key, proof)
        return proof

    def attach(self, msg: SwimMessage) -> SwimMessage:
        """``msg`` with the proofs of the suspect updates it carries (ours signed now if need be; others' if held)."""
        proofs: list[SuspectProof] = []
        for u in msg.updates:
            if len(proofs) >= MAX_PROOFS:
                break
            if u.status != "suspect" or not u.origin:
                continue
            if u.origin == self.identity.node_id:
                proof: SuspectProof | None = self._own(u.node_id, u.incarnation)
            else:
                proof = self.held.get((u.node_id, u.incarnation, u.origin))
            if proof is not None and self._fresh(proof) and proof not in proofs:
                proofs.append(proof)
        return replace(msg, proofs=tuple(proofs)) if proofs else msg

    def check(self, msg: SwimMessage) -> list[Key]:
        """The suspicions ``msg`` carries that its proofs prove (signed by their origin, fresh); others ignored."""
        carried = {(u.node_id, u.incarnation, u.origin) for u in msg.updates if u.status == "suspect"}
        out: list[Key] = []
        for proof in msg.proofs:
            key = (proof.node_id, proof.incarnation, proof.origin)
            if key not in carried or key in out:
                continue
            if (self.held.get(key) == proof and self._fresh(proof)) or self._verified(proof):
                out.append(key)
        return out

    def _verified(self, proof: SuspectProof) -> bool:
        try:
            if not self._fresh(proof):
                raise AuthError("stale or future suspicion (clock skew?)")
            signer = self.identity.verify_detached(proof.card, proof.signature, proof.signing_bytes())
            if signer != proof.origin:
                raise AuthError(f"signed by {signer}, not by {proof.origin}")
        except AuthError as exc:
            self.refused += 1
            if not self._warned:  # a member relaying forged proofs would repeat: loudly once
                self._warned = True
                log.warning("refused a suspicion of %s claimed for %s: %s", proof.node_id, proof.origin, exc)
            return False
        self.checked += 1
        self._keep((proof.node_id, proof.incarnation, proof.origin), proof)
        return True
