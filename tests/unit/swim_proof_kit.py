"""What the signed-suspicion tests share (tests/unit/test_swim_proofs.py, test_swim_dead_quorum.py,
test_swim_confirmers.py): real identities, a settable clock, the messages, a proof as its origin signs it, one as a
liar re-signs it, node b's real SWIM driver with m, c1-c3 and x as members, and x's suspicion there after m's
message."""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Callable, Iterable
from dataclasses import replace

from agent.discovery import swim as sw
from agent.discovery.swim_io import SwimDriver
from agent.discovery.swim_proofs import ProofBook
from agent.identity import Identity
from agent.peer_client import PeerClient
from peerserve.wire import MemberUpdate, SuspectProof, SwimMessage
from tests.unit.swim_sim import state_of, url_of

TOKEN = "unit-cluster-token-0123456789"
IDS = {n: Identity(n, TOKEN, None) for n in ("b", "m", "c1", "c2", "c3", "x")}  # b: us; m: a liar; x: the victim
# A book's ``started`` in the tests of what proofs prove: a run that started long ago, its R3 gate past (relayed
# proofs count). The gate itself: test_swim_proofs.py's restart tests, which start the book at a clock they move.
PAST_GATE = -math.inf


class Clock:
    def __init__(self, t: float = 1_800_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def suspect(origin: str, inc: int = 0, about: str = "x") -> MemberUpdate:
    return MemberUpdate(about, "suspect", inc, url_of(9), 0, origin)


def gossip(sender: str, *updates: MemberUpdate, proofs: tuple[SuspectProof, ...] = ()) -> SwimMessage:
    return SwimMessage("gossip", sender, 0, 1, url_of(3), updates, proofs=proofs)


def own_proof(origin: str, clock: Clock, inc: int = 0) -> SuspectProof:
    """``origin``'s own signed suspicion of x, as its book attaches it to a message of its own."""
    msg = ProofBook(IDS[origin], clock).attach(gossip(origin, suspect(origin, inc)))
    [proof] = msg.proofs
    return proof


def resigned(proof: SuspectProof, signer: str) -> SuspectProof:
    """``proof`` as a liar passes it on: signed with ``signer``'s key and card, its origin still the one it names."""
    card, signature = IDS[signer].sign_detached(proof.signing_bytes())
    return replace(proof, card=card, signature=signature)


def swim_driver(config: sw.SwimConfig, started: float | None = PAST_GATE) -> SwimDriver:
    """Node b's real driver (``config``) with m, c1-c3 and x as members; its proof books' run began at ``started``
    (default: long ago, the R3 gate past; None: when the driver was made, as in the agent)."""
    d = SwimDriver("b", url_of(1), PeerClient(IDS["b"], lambda url: None), config,
                   lambda: None, lambda s, u: s, lambda t: None)  # type: ignore[arg-type,return-value]  # fmt: skip
    if started is not None:
        d.proofs.started = d.dead_proofs.started = started
    for i, n in enumerate(("m", "c1", "c2", "c3", "x")):
        other = sw.Swim(n, url_of(i + 2), sw.SwimConfig(), random.Random(i))
        d.core.hint(n, other.self_url, "", 0.0)
        d.core.admitted(n, other.self_url, "", state_of(other), 0.0)
    return d


def signed_by(
    signers: Iterable[str], proof_of: Callable[[str, Clock], SuspectProof], clock: Clock, forged_by: str | None = None
) -> tuple[SuspectProof, ...]:
    """The proofs ``signers`` sign (``proof_of(origin, clock)``), or, with ``forged_by``, as that liar re-signs each
    with its own key while it still claims the others as origins."""
    proofs = tuple(proof_of(n, clock) for n in signers)
    return proofs if forged_by is None else tuple(resigned(p, forged_by) for p in proofs)


def suspicion_after(d: SwimDriver, message: SwimMessage) -> sw.Suspicion:
    """x's suspicion at b once b's driver ``d`` has handled m's ``message``."""
    asyncio.run(d.handle("m", message))
    sus = d.core.records["x"].suspicion
    assert sus is not None
    return sus
