"""The peer table the agent consults: who else is in the cluster and what they serve.

The discovery layer (mDNS, seeds and SWIM membership) fills it; until a node has peers it answers for itself alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class Member:
    """What this node knows of another agent."""

    node_id: str
    address: str
    api_url: str
    status: str  # alive | suspect | dead
    endpoints: Mapping[str, Sequence[str]] = field(default_factory=dict)  # model -> ready server URLs
    mem_available_mb: float = 0.0
    gpu_load: float | None = None
    cpu_load: float = 0.0
    node_class: str = "default"
    mem_total_mb: float = 0.0
    priority: int = 0
    peer_url: str = ""  # where its authenticated peer listener answers (https://ADDRESS:PEER_PORT)

    @property
    def models(self) -> list[str]:
        return sorted(m for m, urls in self.endpoints.items() if urls)

    def to_dict(self) -> dict[str, Any]:
        return {
            "node_id": self.node_id,
            "address": self.address,
            "api_url": self.api_url,
            "status": self.status,
            "models": self.models,
            "mem_available_mb": round(self.mem_available_mb, 1),
            "gpu_load": self.gpu_load,
        }


class PeerTable(Protocol):
    def members(self) -> list[Member]:
        """Other nodes, any status; callers filter on ``status``."""
        ...


class NoPeers:
    """A node on its own (no discovery running)."""

    def members(self) -> list[Member]:
        return []
