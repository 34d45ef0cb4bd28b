"""The solver's output: where each request goes, how many instances each node runs, what to change."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass(frozen=True)
class Action:
    """Start or stop ``count`` instances of ``model`` on ``node``."""

    op: Literal["start", "stop"]
    node: str
    model: str
    count: int

    def to_dict(self) -> dict[str, Any]:
        return {"op": self.op, "node": self.node, "model": self.model, "count": self.count}


@dataclass(frozen=True)
class Rejection:
    """A request (index in the snapshot) that no node can serve, and why."""

    request: int
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"request": self.request, "reason": self.reason}


@dataclass(frozen=True)
class Plan:
    """A placement for one snapshot. ``objective_ms`` sums RTT + execution over assigned requests."""

    status: str
    method: str
    mode: str
    objective_ms: float
    solve_ms: float
    assignments: tuple[str | None, ...]
    instances: Mapping[str, Mapping[str, int]]
    rejected: tuple[Rejection, ...]
    actions: tuple[Action, ...]
    feasible: bool
    violations: tuple[str, ...] = ()
    lower_bound_ms: float | None = None
    note: str = ""
    details: Mapping[str, Any] = field(default_factory=dict)
    shares: tuple[Mapping[str, float], ...] = ()  # queue objective: per request, node -> share of its rate

    @property
    def served(self) -> int:
        return sum(1 for a in self.assignments if a is not None)

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape `peerserve solve --json` prints."""
        out: dict[str, Any] = {
            "status": self.status,
            "method": self.method,
            "mode": self.mode,
            "objective_ms": round(self.objective_ms, 6),
            "solve_ms": round(self.solve_ms, 3),
            "assignments": list(self.assignments),
            "instances": {n: dict(m) for n, m in self.instances.items()},
            "rejected": [r.to_dict() for r in self.rejected],
            "actions": [a.to_dict() for a in self.actions],
            "feasible": self.feasible,
            "violations": list(self.violations),
        }
        if self.lower_bound_ms is not None:
            out["lower_bound_ms"] = round(self.lower_bound_ms, 6)
        if self.note:
            out["note"] = self.note
        if self.details:
            out["details"] = dict(self.details)
        if self.shares:
            out["shares"] = [dict(s) for s in self.shares]
        return out
