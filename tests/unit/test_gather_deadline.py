"""One node's gather (three stats calls on one kept connection) ends within GATHER_DEADLINE_S in all: a node that
answers each call just inside its own timeout cannot hold the leader's round three times as long (review)."""

from __future__ import annotations

import asyncio
import time
import types
from typing import Any

import pytest

from agent import leader_round as lr
from agent import leadership
from agent.leadership import Leadership


def gather_with(delay: float) -> tuple[Any, list[str]]:
    calls: list[str] = []

    async def get_json(url: str, params: Any = None, stamp: Any = None) -> Any:
        calls.append(url.rsplit("/", 1)[-1])
        await asyncio.sleep(delay)
        if url.endswith("/stats/node"):
            return {"node_id": "b", "mem_available_mb": 1, "mem_total_mb": 1, "compute": 1, "instances": []}
        if url.endswith("/stats/models"):
            return {"models": {}}
        return {"requests": []}

    stub = types.SimpleNamespace(_get_json=get_json, agent=types.SimpleNamespace(clock=time.time),
                                 _say_once=lambda *args: None)  # fmt: skip
    stub._fetch_stats = lambda g: Leadership._fetch_stats(stub, g)  # type: ignore[arg-type]
    g = lr.Gather(1, "b", "https://b", 0, 100)
    return asyncio.run(Leadership._gather(stub, g)), calls  # type: ignore[arg-type]


def test_a_node_answering_each_call_late_fails_the_gather_at_the_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(leadership, "GATHER_DEADLINE_S", 0.5)
    result, calls = gather_with(0.3)  # each call well inside its own timeout; the three together past the deadline
    assert isinstance(result, lr.GatherFailed) and "within 0.5 s" in result.error
    assert calls == ["node", "models"]  # the third was never asked


def test_a_prompt_node_is_gathered_in_order_on_one_connection() -> None:
    result, calls = gather_with(0.0)
    assert isinstance(result, lr.Gathered) and calls == ["node", "models", "requests"]
