"""Mode 1 eviction and the Mode `auto` rule (thesis 4.3 and its future work). Pure: ``now`` is passed in.

Eviction (Mode 1 only; the solver itself never stops anything there): all instances of a model on a
node are stopped when

* they have been idle for at least ``idle_s`` seconds (recency: no request since then), or
* they have run for at least ``idle_s`` seconds and served fewer than ``min_requests`` requests since
  they were provisioned (frequency: started but hardly used).

Instances with no usage record, or a snapshot without ``now_s``, are never evicted.

Auto: solve both modes; take Mode 2 when it serves more requests than Mode 1, or lowers the objective by
at least ``auto_gain`` (default 10 %) — a re-plan that stops running instances must pay for its churn;
otherwise Mode 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from solver.problem import IntArray, running_instances
from solver.snapshot import Snapshot


@dataclass(frozen=True)
class EvictionPolicy:
    """Thresholds for Mode 1 eviction and for the auto mode's choice."""

    idle_s: float = 600.0
    min_requests: int = 1
    auto_gain: float = 0.10


def evictions(snapshot: Snapshot, policy: EvictionPolicy, now_s: float | None) -> IntArray:
    """[j, k] instances to stop under ``policy`` at time ``now_s``."""
    running = running_instances(snapshot)
    out = np.zeros_like(running)
    if now_s is None:
        return out
    names = [m.name for m in snapshot.models]
    for j, node in enumerate(snapshot.nodes):
        for k, name in enumerate(names):
            usage = node.usage.get(name)
            if running[j, k] == 0 or usage is None:
                continue
            last = usage.last_request_s if usage.last_request_s is not None else usage.provisioned_s
            idle = last is not None and now_s - last >= policy.idle_s
            age_ok = usage.provisioned_s is not None and now_s - usage.provisioned_s >= policy.idle_s
            unused = age_ok and usage.requests < policy.min_requests
            if idle or unused:
                out[j, k] = running[j, k]
    return out


def prefer_mode2(
    served1: int, objective1: float, served2: int, objective2: float, auto_gain: float
) -> tuple[bool, str]:
    """The auto rule: whether Mode 2's plan is worth its churn, and why."""
    if served2 > served1:
        return True, f"mode 2 serves {served2 - served1} more request(s)"
    if served2 == served1 and objective2 <= objective1 * (1.0 - auto_gain):
        gain = 0.0 if objective1 == 0 else 100.0 * (1 - objective2 / objective1)
        return True, f"mode 2 lowers latency by {gain:.1f}% (threshold {100 * auto_gain:.0f}%)"
    return False, "mode 1 is within the churn threshold of mode 2"
