"""A real agent's leadership hands the round machine the catalogue's sizes its plan was made with, so
make-before-break keeps every node's set within the node's memory (agent/handover.make_before_break)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from agent import leader_round as lr
from agent.leadership import Leadership
from agent.node import NodeAgent
from agent.placement import NodeReport
from agent.settings import load_settings


def test_a_solved_round_carries_the_catalogues_sizes(tmp_path: Path) -> None:
    agent = NodeAgent(load_settings(env={}, overrides={"node_id": "n1", "data_dir": str(tmp_path), "discovery": False}))
    lead = Leadership(agent)

    async def solve() -> lr.Solved | lr.SolveFailed:
        try:
            lead.solver.start()
            return await lead._solve(lr.Solve(1, (NodeReport("n1", 1000, 2000, 100, "orin", {}),), [], 10.0))
        finally:
            await lead.stop()
            await agent.stop()

    solved = asyncio.run(solve())
    assert isinstance(solved, lr.Solved), solved
    sizes = {m: spec.mem_mb for m, spec in agent.catalogue.current.models.items()}
    assert sizes and solved.mem_mb == sizes
