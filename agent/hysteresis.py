"""Placement hysteresis, pure: keep the running instances unless a new plan is better by a clear margin.

Between symmetric sites a queue-aware plan is a coin toss that measurement noise flips every round, and
every flip moves an instance (a start, a drain, a stop) for nothing. So the leader values the running
instances under the same snapshot and model as the plan (``solver.hold.value_running``: mean latency per
request at their best split of the streams; the split may stop early, so the figure is an achievable split's
and ``gap_ms`` bounds how far above the best it lies: every gain below is taken against that lower bound, and a
valuation cut short never makes the leader switch) and switches to the plan only when

* something hard requires it, at once: a node that ran instances is gone, a model with demand has no
  instance running, a running pool is loaded past ``rho_max`` even at the best split, nothing runs yet,
  or the running placement could not be valued (the thesis objective values per stream: no hold);
* or the plan is better by more than ``start_cost_ms`` per instance it starts plus ``margin`` x the
  running placement's latency (a gain under ``confirm_below`` times that must show in two rounds in a
  row: one noisy window does not move an instance), or more instances of a model run than the plan's
  instance bound allows (need at ``rho_max`` + one spare per node class);
* or the plan only stops instances and raises no latency (the mean, and each model's where known) by more
  than ``stop_tolerance``: it frees memory, and the way back needs a start's real gain, so the count
  cannot flap between n and n + 1 (a plan with fewer instances that costs latency is held);
* or, per model (``per_model``), some model's own mean latency (the plan's ``model_ms`` against the
  valuation's) drops by more than the same margin of its latency plus the per-start cost, and no model's
  rises by more than its margin: a small stream stuck far away is not drowned in the cluster mean.

Even then an instance started less than ``min_dwell_s`` ago is not stopped: the plan's starts go ahead and
the young instance stays until it is old enough (for a while one more instance runs than the plan says).

Stops of a model that has no demand at all (Mode 1's idle eviction) never wait: they cost no latency.
The clock is passed in; ``Births`` records when each (node, model) count last grew, as the leader saw it.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

Counts = Mapping[str, Mapping[str, int]]  # node -> model -> instances
MAX_BIRTHS = 16_384  # (node, model) entries the leader remembers


@dataclass(frozen=True)
class HoldConfig:
    """``enabled`` False: every plan is applied as it comes (the behaviour without hysteresis)."""

    enabled: bool = True
    margin: float = 0.1  # relative: the plan must beat the running latency by this share ...
    start_cost_ms: float = 1.0  # ... plus this per instance it starts
    min_dwell_s: float = 60.0  # an instance younger than this is not stopped for a soft gain
    confirm_below: float = 2.0  # a gain under this many times the margin must show in two rounds in a row
    per_model: bool = True  # a model's own mean latency past the same margin also switches (a small stream)
    stop_tolerance: float = 0.025  # a plan that only stops instances is taken if no latency rises past this share


@dataclass(frozen=True)
class Verdict:
    """Switch to the plan (``desired`` is the plan's) or hold (``desired`` is what runs); ``reason`` says why."""

    switch: bool
    reason: str
    desired: dict[str, dict[str, int]]
    gain_ms: float | None = None
    needed_ms: float | None = None
    hard: bool = False
    pending: bool = False  # held only until the next round confirms the gain

    def to_dict(self) -> dict[str, Any]:
        return {"switched": self.switch, "hard": self.hard, "reason": self.reason, "pending": self.pending,
                "gain_ms": _round(self.gain_ms), "needed_ms": _round(self.needed_ms)}  # fmt: skip


@dataclass
class Births:
    """When each (node, model) count last grew (bounded); a node first seen counts as running all along."""

    at: dict[tuple[str, str], float] = field(default_factory=dict)
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    limit: int = MAX_BIRTHS

    def observe(self, running: Counts, now: float) -> None:
        """Record this round's running counts (nodes not reported keep their last counts)."""
        for node, models in running.items():
            before = self.counts.get(node)
            for model, count in models.items():
                if before is not None and count > before.get(model, 0):
                    self.at[(node, model)] = now
            for model in list(before or {}):
                if models.get(model, 0) == 0:
                    self.at.pop((node, model), None)
            self.counts[node] = {m: c for m, c in models.items() if c > 0}
        while len(self.at) > self.limit:
            self.at.pop(next(iter(self.at)))
        while len(self.counts) > self.limit:
            self.counts.pop(next(iter(self.counts)))

    def age(self, node: str, model: str, now: float) -> float:
        born = self.at.get((node, model))
        return math.inf if born is None else now - born


def judge(
    plan: Counts,
    running: Counts,
    plan_objective_ms: float | None,
    value: Mapping[str, Any] | None,
    lost: Collection[str],
    births: Births,
    now: float,
    cfg: HoldConfig,
    confirmed: bool = False,
    plan_model_ms: Mapping[str, float] | None = None,
) -> Verdict:
    """Whether to command the plan or keep what runs, for the nodes in ``running`` (this round's gathered).

    ``confirmed``: the round before was held pending confirmation (a modest gain must persist);
    ``plan_model_ms``: the plan's mean latency per model (the per-model rule; None: the cluster mean only)."""
    desired = {n: {m: c for m, c in plan.get(n, {}).items() if c > 0} for n in running}
    held = {n: {m: c for m, c in running[n].items() if c > 0} for n in running}
    if desired == held:
        return Verdict(True, "the plan keeps what runs", desired)
    hard = _hard_reason(cfg, held, value, lost)
    if hard:
        return Verdict(True, hard, desired, hard=True)
    assert value is not None and plan_objective_ms is not None
    idle = _idle_models(value, held, desired)
    held = {n: _without_idle(ms, desired[n], idle) for n, ms in held.items()}
    if desired == held:
        return Verdict(True, f"only stops instances without demand: {', '.join(sorted(idle))}", desired)
    gain, needed, of = _gain(value, float(plan_objective_ms), plan_model_ms, held, desired, cfg)
    over = sorted(str(m) for m in value.get("over_bound", []))
    subject = f"the plan gains {gain:.2f} ms per request{of}"
    if over:
        why = f"more instances run than the bound allows: {', '.join(over)}"
    elif _frees_at_no_cost(value, float(plan_objective_ms), plan_model_ms, held, desired, cfg):
        why = f"{subject} and only stops instances (latency within {cfg.stop_tolerance:.1%})"
    elif gain <= needed:
        why = f"the plan gains {gain:.2f} ms per request, a switch must gain over {needed:.2f} ms"
        return Verdict(False, why, held, gain, needed)
    elif gain <= cfg.confirm_below * needed and not confirmed:
        why = f"{subject} (over {needed:.2f} ms): held until the next round confirms it"
        return Verdict(False, why, held, gain, needed, pending=True)
    else:
        why = subject
    young = _young_stops(held, desired, births, now, cfg.min_dwell_s)
    for n, m in young:
        desired[n][m] = held[n][m]
    if young:
        kept = ", ".join(f"{m} on {n} ({births.age(n, m, now):.0f} s)" for n, m in young)
        why += f"; kept until {cfg.min_dwell_s:g} s old: {kept}"
    return Verdict(desired != held, why, desired, gain, needed)


def _frees_at_no_cost(
    value: Mapping[str, Any],
    plan_ms: float,
    plan_model_ms: Mapping[str, float] | None,
    held: Counts,
    desired: Counts,
    cfg: HoldConfig,
) -> bool:
    """The plan only stops instances (no start anywhere) and raises neither the mean latency nor, where known,
    any model's by more than ``stop_tolerance``: taken, it frees memory (an extra instance left by a failover
    is trimmed once its node is back); the way back needs a real gain, so this cannot flap."""
    if _starts(held, desired):
        return False
    running_ms = float(value["objective_ms"])
    if plan_ms - _running_best_ms(value) > cfg.stop_tolerance * running_ms:
        return False
    per_model = value.get("model_ms")
    if isinstance(per_model, Mapping) and plan_model_ms:
        return all(
            float(plan_model_ms[m]) - float(r) <= cfg.stop_tolerance * float(r)
            for m, r in per_model.items()
            if m in plan_model_ms
        )
    return True


def _running_best_ms(value: Mapping[str, Any]) -> float:
    """The running placement's figure at its best split, as low as the valuation's gap allows: ``objective_ms`` is
    an achievable split's (an upper bound), ``gap_ms`` bounds how far above the best it may be, so a gain taken
    against this lower bound is one the plan surely has (a split stopped early never makes the leader switch)."""
    running_ms = float(value["objective_ms"])
    gap = value.get("gap_ms", 0.0)
    if isinstance(gap, bool) or not isinstance(gap, int | float) or not math.isfinite(gap):
        return running_ms
    return running_ms - min(max(float(gap), 0.0), running_ms)


def _starts(held: Counts, desired: Counts) -> int:
    """Instances the plan starts: its counts above what runs, over every (node, model)."""
    return sum(max(0, c - held[n].get(m, 0)) for n, ms in desired.items() for m, c in ms.items())


def _gain(
    value: Mapping[str, Any],
    plan_ms: float,
    plan_model_ms: Mapping[str, float] | None,
    held: Counts,
    desired: Counts,
    cfg: HoldConfig,
) -> tuple[float, float, str]:
    """(gain, needed, " of MODEL" or ""): the cluster mean's, or a model's where its own clears its margin by more."""
    running_ms = float(value["objective_ms"])
    gain = _running_best_ms(value) - plan_ms
    starts = _starts(held, desired)
    needed = starts * cfg.start_cost_ms + cfg.margin * running_ms
    model = _model_gain(value.get("model_ms"), plan_model_ms, starts, cfg) if cfg.per_model else None
    if model is not None and model[1] * needed > gain * model[2]:  # a larger share of its needed gain
        return model[1], model[2], f" of {model[0]}"
    return gain, needed, ""


def _model_gain(
    running_ms: Any, plan_ms: Mapping[str, float] | None, starts: int, cfg: HoldConfig
) -> tuple[str, float, float] | None:
    """(model, gain, needed) of the model the plan helps most past its own margin, provided the plan costs
    no model more than that model's margin; None if there is no such model (or no per-model values)."""
    if not isinstance(running_ms, Mapping) or not plan_ms:
        return None
    both = [(str(m), float(r), float(plan_ms[m])) for m, r in running_ms.items() if m in plan_ms]
    if any(p - r > cfg.margin * r for _, r, p in both):
        return None  # the plan buys one model's gain with another's loss: no switch on that
    best = None
    for m, r, p in both:
        gain, needed = r - p, starts * cfg.start_cost_ms + cfg.margin * r
        if gain > needed and (best is None or gain * best[2] > best[1] * needed):
            best = (m, gain, needed)
    return best


def _young_stops(held: Counts, desired: Counts, births: Births, now: float, dwell: float) -> list[tuple[str, str]]:
    """(node, model) pools the plan shrinks whose count grew less than ``dwell`` seconds ago."""
    return sorted(
        (n, m) for n, ms in held.items() for m, c in ms.items()
        if desired[n].get(m, 0) < c and births.age(n, m, now) < dwell
    )  # fmt: skip


def _hard_reason(cfg: HoldConfig, held: Counts, value: Mapping[str, Any] | None, lost: Collection[str]) -> str:
    """Why the plan must be applied now, or '' if holding is allowed."""
    if not cfg.enabled:
        return "hysteresis is off"
    if lost:
        return f"node lost: {', '.join(sorted(lost))}"
    if not any(held.values()):
        return "nothing runs yet"
    if value is None or not isinstance(value.get("objective_ms"), int | float):
        return "the running placement was not valued (objective without a queue model)"
    if value.get("unserved"):
        return f"no instance runs for {', '.join(sorted(value['unserved']))}"
    if value.get("overloaded"):
        return f"overloaded at the best split: {', '.join(sorted(value['overloaded']))}"
    return ""


def _idle_models(value: Mapping[str, Any], held: Counts, desired: Counts) -> set[str]:
    """Running models no stream asks for (not in the valuation's ``demand``)."""
    asked = {str(m) for m in value.get("demand", [])}
    have = {m for ms in [*held.values(), *desired.values()] for m in ms}
    return have - asked


def _without_idle(running: Mapping[str, int], desired: Mapping[str, int], idle: Collection[str]) -> dict[str, int]:
    """The running counts with the plan's stops of models without demand applied."""
    out = {m: min(c, desired.get(m, 0)) if m in idle else c for m, c in running.items()}
    return {m: c for m, c in out.items() if c > 0}


def _round(v: float | None) -> float | None:
    return None if v is None else round(v, 3)
