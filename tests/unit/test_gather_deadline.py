"""One node's gather (three stats calls on one kept connection) ends within GATHER_DEADLINE_S in all: a node that
answers each call just inside its own timeout cannot hold the leader's round three times as long (review), nor
can a layer below that loses the deadline's cancellation (Python 3.10/3.11's ``asyncio.wait_for`` does, when the
cancellation arrives as its read completes): each call's own timeout is what is left of the deadline."""

from __future__ import annotations

import asyncio
import contextlib
import time
import types
from typing import Any

import httpx
import pytest

from agent import leader_round as lr
from agent import leadership
from agent.leadership import Leadership
from agent.peer_client import PeerCallError


def gather_with(delay: float, loses_cancel: bool = False) -> tuple[Any, list[str], list[float], float]:
    """(the gather's result, the calls made, each call's own timeout, seconds the gather took)."""
    calls: list[str] = []
    timeouts: list[float] = []

    async def get_json(url: str, params: Any, timeout: httpx.Timeout, stamp: Any = None) -> Any:
        calls.append(url.rsplit("/", 1)[-1])
        assert timeout.read is not None and timeout.connect is not None and timeout.connect <= timeout.read
        timeouts.append(timeout.read)
        if delay > timeout.read:  # the call's own timeout ends it first, as the peer client's would
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(timeout.read)
            raise PeerCallError(f"b unreachable: timed out after {timeout.read:.2f} s")
        try:
            await asyncio.sleep(delay)
        except asyncio.CancelledError:
            if not loses_cancel:
                raise
            await asyncio.sleep(delay)  # a layer below lost the cancellation: the answer still comes
        if url.endswith("/stats/node"):
            return {"node_id": "b", "mem_available_mb": 1, "mem_total_mb": 1, "compute": 1, "instances": []}
        if url.endswith("/stats/models"):
            return {"models": {}}
        return {"requests": []}

    stub = types.SimpleNamespace(_get_json=get_json, agent=types.SimpleNamespace(clock=time.time),
                                 _say_once=lambda *args: None)  # fmt: skip
    stub._fetch_stats = lambda g, deadline: Leadership._fetch_stats(stub, g, deadline)  # type: ignore[arg-type]
    g = lr.Gather(1, "b", "https://b", 0, 100)
    start = time.monotonic()
    result = asyncio.run(Leadership._gather(stub, g))  # type: ignore[arg-type]
    return result, calls, timeouts, time.monotonic() - start


def test_a_node_answering_each_call_late_fails_the_gather_at_the_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(leadership, "GATHER_DEADLINE_S", 0.5)
    result, calls, timeouts, took = gather_with(0.3)  # each call inside its own timeout; the three past the deadline
    assert isinstance(result, lr.GatherFailed) and "within 0.5 s" in result.error
    assert calls == ["node", "models"]  # the third was never asked
    assert timeouts[0] == pytest.approx(0.5, abs=0.05) and timeouts[1] <= 0.21  # what was left of the deadline
    assert took < 0.9


def test_a_lost_cancellation_below_the_gather_does_not_carry_it_past_its_deadline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Before, the second call started with the full 3 s timeout once the first had returned despite the
    deadline's cancellation, and the gather answered at 0.8 s (Gathered); now the second call is given the
    0.1 s left and the gather fails at the deadline."""
    monkeypatch.setattr(leadership, "GATHER_DEADLINE_S", 0.5)
    result, calls, timeouts, took = gather_with(0.4, loses_cancel=True)
    assert isinstance(result, lr.GatherFailed) and "within 0.5 s" in result.error, result
    assert calls == ["node", "models"] and timeouts[1] <= 0.11
    assert took < 0.9, f"the gather took {took:.2f} s under a 0.5 s deadline"


def test_a_prompt_node_is_gathered_in_order_on_one_connection() -> None:
    result, calls, timeouts, _took = gather_with(0.0)
    assert isinstance(result, lr.Gathered) and calls == ["node", "models", "requests"]
    assert all(t == pytest.approx(3.0, abs=0.05) for t in timeouts)  # agent.peer_client.TIMEOUT, left whole
