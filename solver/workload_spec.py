"""The ``peerserve simulate --workload`` lab's parameters (solver/workload.py runs it), apart from the simulation:
solver.cli reads their defaults for its --help when it registers the command, and this module imports no numpy, so
neither does `peerserve --help` nor a client command (the console script registers every part's commands)."""

from __future__ import annotations

from dataclasses import dataclass

from peerserve.dispatch import RULES as ENDPOINT_RULES

DISPATCH = ("agent", "assigned", "plan")
MAX_REQUESTS = 2_000_000  # simulated arrivals per placement (clients x rate x duration); a usage error above


@dataclass(frozen=True)
class Workload:
    """The simulated lab; sizes and rates as on the command line."""

    clients: int = 60
    rate: float = 5.0
    sites: int = 6
    nodes: int = 3
    throughput: float = 300.0
    duration_s: float = 60.0
    node_mem_mb: float = 2048.0
    model_mem_mb: float = 300.0
    seed: int = 0
    service: str = "exp"  # exp: exponential service times (M/M/1 queues); det: constant (M/D/1)
    cores: float = 0.0  # cores a node's instances share; 0: one core per instance (no sharing)
    concurrency: int = 1  # requests one instance serves at once (at most the node's cores: its slots)
    dispatch: str = "agent"  # agent: the agent's endpoint rule (solver.agent_sim); assigned: the same, plans
    # without shares (thesis, baselines) published with their assignments as shares; plan: shares, then uniform
    endpoint_rule: str = "p2c"  # the agents' endpoint_rule (peerserve.dispatch.RULES) under agent / assigned

    def check(self) -> str | None:
        """Why the workload cannot be simulated, or None."""
        if min(self.clients, self.sites, self.nodes) < 1:
            return "clients, sites and nodes must be at least 1"
        if self.rate <= 0 or self.throughput <= 0 or self.duration_s <= 0:
            return "rate, throughput and duration must be positive"
        if self.service not in ("exp", "det"):
            return "service must be exp or det"
        if self.dispatch not in DISPATCH:
            return f"dispatch must be one of {', '.join(DISPATCH)}"
        if self.endpoint_rule not in ENDPOINT_RULES:
            return f"endpoint rule must be one of {', '.join(ENDPOINT_RULES)}"
        if self.node_mem_mb <= 0 or self.model_mem_mb <= 0:
            return "memory sizes must be positive"
        if not 0 <= self.cores < float("inf"):
            return "cores must be a positive number (0: one per instance)"
        if (
            isinstance(self.concurrency, bool)
            or not isinstance(self.concurrency, int)
            or not 1 <= self.concurrency <= 1024
        ):
            return "concurrency must be a whole number from 1 to 1024"
        if self.clients * self.rate * self.duration_s > MAX_REQUESTS:
            return f"clients x rate x duration exceeds {MAX_REQUESTS:,} simulated requests"
        return None
