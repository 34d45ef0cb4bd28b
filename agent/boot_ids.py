"""Which run of a peer a signed request is for: the sender's side of boot ids (pure; the clock is passed in).

Every agent draws a boot id at each start (agent.identity); a v2 request names the receiver's, and a receiver
refuses one naming another (wire.STALE_BOOT, a signed answer naming its current id), so a request captured
before a restart never acts after it, whatever the clocks say (docs/security.md, "Boot ids"). The sender learns a
peer's id from that refusal, the first time it asks and after each restart of the peer, and retries once: one
round trip per peer restart. An agent older than boot ids cannot check a v2 signature ("bad signature", 401,
unsigned): the sender asks it v1 for ``V1_ONLY_S``, but only when that refusal came on a connection whose
certificate proved the addressed node (agent.peer_client: the refusal itself is unsigned, and any cluster member
listening at a URL used for the node could forge it: review19e F1) and only while the sender accepts v1 itself.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from peerserve import wire

MAX_BOOTS = 1024  # peers whose boot id is kept (least recently used dropped: the next request to it learns it again)
V1_ONLY_S = 300.0  # a peer that could not check a v2 signature is asked v1 this long, then v2 again
OLD_AGENT_REFUSAL = "bad signature"  # what an agent older than boot ids says to a v2 request (unsigned 401)


class BootTable:
    """The boot id last learnt for each peer, at most ``limit`` peers (least recently used dropped), and the peers
    that asked for v1 requests (an older agent), since when (monotonic seconds), as many at most."""

    def __init__(self, limit: int = MAX_BOOTS) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self.limit = limit
        self._boots: OrderedDict[str, str] = OrderedDict()
        self._v1: OrderedDict[str, float] = OrderedDict()
        self.learnt = 0  # boot ids learnt from a peer's signed refusal (each followed by one retry)

    def __len__(self) -> int:
        return len(self._boots)

    def boot_for(self, node_id: str, mono: float) -> str | None:
        """What a request to ``node_id`` names: its boot id as known, wire.UNKNOWN_BOOT (the refusal teaches it),
        or None (a v1 request: it is an older agent, asked v1 until ``V1_ONLY_S`` after it said so)."""
        since = self._v1.get(node_id)
        if since is not None:
            if 0 <= mono - since < V1_ONLY_S:
                return None
            del self._v1[node_id]
        boot = self._boots.get(node_id)
        if boot is None:
            return wire.UNKNOWN_BOOT
        self._boots.move_to_end(node_id)
        return boot

    def learn(self, node_id: str, boot: str) -> None:
        self.learnt += 1
        self._boots[node_id] = boot
        self._boots.move_to_end(node_id)
        while len(self._boots) > self.limit:
            self._boots.popitem(last=False)

    def ask_v1(self, node_id: str, mono: float) -> None:
        self._boots.pop(node_id, None)
        self._v1[node_id] = mono
        self._v1.move_to_end(node_id)
        while len(self._v1) > self.limit:
            self._v1.popitem(last=False)


def retry_boot(status: int, answer: Any, sent: str | None) -> str | None:
    """The boot id to retry a request with, from its verified answer (``status``, parsed JSON ``answer``), or None:
    no retry. Only a v2 request (``sent`` not None) refused STALE_BOOT, naming a well-formed id other than the one
    it named (the same one again would be a loop: not retried)."""
    if sent is None or status != wire.STALE_BOOT or not isinstance(answer, Mapping):
        return None
    boot = answer.get("boot_id")
    if not isinstance(boot, str) or not wire.BOOT_ID.fullmatch(boot) or boot == sent:
        return None
    return boot


def old_agent(status: int, stated: str, sent: str | None) -> bool:
    """Whether an unauthenticated answer (``status``, its stated error) to a v2 request says the peer is an agent
    older than boot ids: 401 "bad signature" (it checked our v2 signature as v1). A new agent never says it to an
    honest request."""
    return sent is not None and status == 401 and stated == OLD_AGENT_REFUSAL
