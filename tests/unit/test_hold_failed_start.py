"""A start that keeps failing, through the real round machine and the real solver worker: the leader's target
for it expires after ``target_rounds`` rounds, so the plan that moves the model to a node with room is taken."""

from __future__ import annotations

from typing import Any

import pytest

from agent.leader_round import (
    Acknowledged,
    Command,
    Elected,
    Gathered,
    LeaderRound,
    RoundConfig,
    Solve,
    Solved,
    Tick,
)
from agent.placement import NodeReport
from agent.solver_worker import solve_request

pytest.importorskip("cyipopt")

MEMBERS = {"n0": "http://n0", "n1": "http://n1"}
RTT = {"A": {"n0": 1.0, "n1": 1.0}, "B": {"n0": 1.0, "n1": 3.0}}  # B's clients sit next to n0
FIRST_PLAN: dict[str, Any] = {"instances": {"n0": {"A": 1, "B": 1}}, "method": "ipopt", "actions": []}


def snapshot(solve: Solve) -> dict[str, Any]:
    """The queue-objective snapshot of this round's reports; two streams of 50 req/s, A and B."""
    nodes = [
        {"id": r.node_id, "mem_available_mb": r.mem_available_mb, "mem_total_mb": r.mem_total_mb,
         "compute": r.compute, "instances": dict(r.instances)}
        for r in solve.nodes
    ]  # fmt: skip
    models = [{"name": m, "mem_mb": 64, "compute": 10, "throughput_rps": {"default": 300.0}} for m in "AB"]
    requests = [
        {"model": m, "client": m.lower(), "rate": 50.0, "rtt_ms": RTT[m], "exec_ms": {"n0": 3.3, "n1": 3.3}}
        for m in "AB"
    ]
    return {"objective": "queue", "nodes": nodes, "models": models, "requests": requests}


def rounds(target_rounds: int, count: int) -> tuple[list[dict[str, Any]], dict[str, dict[str, int]]]:
    """Round 1 commands n0 {A, B}; B never starts there (n0 has 10 MB left, so Mode 1's plans put B on n1),
    n1 has room. Returns each later round's hold summary and what the last round commanded."""
    m = LeaderRound("n0", RoundConfig(debounce_s=0.0, target_rounds=target_rounds))
    m.step(Elected(0.0, 1, MEMBERS))
    running: dict[str, dict[str, int]] = {"n0": {}, "n1": {}}
    holds, commanded = [], {}
    for k in range(count + 1):
        now = 30.0 * k
        m.step(Tick(now))
        out: list[Any] = []
        for n in sorted(MEMBERS):
            rep = NodeReport(n, 10 if n == "n0" else 4000, 4000, 100, "default", running[n], {}, running[n])
            out = m.step(Gathered(now, k + 1, n, rep, ()))
        (solve,) = out
        plan = FIRST_PLAN if k == 0 else solve_request(
            {"snapshot": snapshot(solve), "method": "ipopt", "mode": "1", "held": solve.held}
        )["plan"]  # fmt: skip
        commanded = {c.node: dict(c.instances) for c in m.step(Solved(now, k + 1, plan, 2)) if isinstance(c, Command)}
        running = {n: {mod: c for mod, c in d.items() if mod == "A"} for n, d in commanded.items()}  # only A starts
        if commanded.get("n1", {}).get("B"):
            running["n1"] = {"B": commanded["n1"]["B"]}  # n1 starts B fine
        for n in commanded:
            m.step(Acknowledged(now, k + 1, n))
        if k:
            holds.append(dict(m.last_placement["hold"]) if m.last_placement else {})
    return holds, commanded


def test_the_failing_start_expires_and_the_model_moves_to_the_node_with_room() -> None:
    holds, commanded = rounds(target_rounds=3, count=4)
    assert [h["switched"] for h in holds[:2]] == [False, False]  # the target still counts as made
    assert holds[2]["switched"] and holds[2]["hard"] and "no instance runs for B" in holds[2]["reason"]
    assert commanded == {"n0": {"A": 1}, "n1": {"B": 1}} and holds[3]["reason"] == "the plan keeps what runs"


def test_without_expiry_the_failing_start_is_held_forever() -> None:
    holds, commanded = rounds(target_rounds=10**6, count=4)
    assert not any(h["switched"] for h in holds), holds  # "the plan gains -1.00 ms": B looks served on n0
    assert "B" not in commanded.get("n1", {})
