"""The solver worker builds the round's snapshot from its copy of the window (agent.window_sync): a real child process,
the same plan as the snapshot built in this process, a reset after the worker dies, and a refused delta recovered."""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any

import pytest

from agent.solver_worker import SolverWorker, SolverWorkerError
from agent.window_sync import WindowBuild, WindowDelta
from tests.unit.test_window_sync import inputs, rounds


def timeless(plan: dict[str, Any]) -> dict[str, Any]:
    """A plan without its timings (which differ run to run) and with the running value's start-free facts only (its
    split starts from the worker's last round's, so a second solve of one snapshot values it within its gap)."""
    out = {k: v for k, v in plan.items() if not k.endswith("_ms") or k == "objective_ms"}
    if isinstance(plan.get("running_value"), dict):
        facts = ("instances", "unserved", "demand", "over_bound")
        out["running_value"] = {k: v for k, v in plan["running_value"].items() if k in facts}
    return out


def test_the_worker_built_plan_equals_the_plan_of_the_snapshot_built_here_and_survives_a_dead_worker() -> None:
    async def scenario() -> None:
        worker = SolverWorker("least-loaded")
        try:
            worker.start()
            gaps = 0
            for i, (records, config, delta, now) in enumerate(rounds(11)):
                here = inputs(now)
                snapshot = here.build(records)
                expected, _ = await worker.solve(snapshot, "least-loaded", "2")
                plan, fallback, requests = await worker.solve_window(
                    WindowBuild(delta, records, config, here), "least-loaded", "2"
                )
                assert plan["status"] != "infeasible" and plan["instances"] != {"a": {}, "b": {}, "c": {}}
                assert (timeless(plan), fallback, requests) == (timeless(expected), "", len(snapshot["requests"]))
                gaps += delta.gap
                if i == 3:  # the worker dies between rounds: the next one resets the new worker's window
                    pid = worker.pid
                    assert pid is not None
                    os.kill(pid, signal.SIGKILL)
                    await asyncio.to_thread(worker._proc.wait)  # type: ignore[union-attr]
            assert worker.resets == 2 + gaps  # the first round, the one after the death (and any journal gap): no other
        finally:
            await worker.close()

    asyncio.run(scenario())


def test_a_delta_the_worker_refuses_is_sent_again_as_the_whole_window() -> None:
    async def scenario() -> None:
        worker = SolverWorker("least-loaded")
        try:
            worker.start()
            steps = rounds(5)
            records, config, delta, now = steps[0]
            await worker.solve_window(WindowBuild(delta, records, config, inputs(now)), "least-loaded", "1")
            records, config, delta, now = steps[2]  # step 1's events never reached the worker
            worker._synced = (worker.pid or 0, delta.base)  # as if they had: the worker refuses, a reset follows
            plan, _, requests = await worker.solve_window(
                WindowBuild(WindowDelta(delta.base, delta.seq, delta.events), records, config, inputs(now)),
                "least-loaded", "1",
            )  # fmt: skip
            expected, _ = await worker.solve(inputs(now).build(records), "least-loaded", "1")
            assert timeless(plan) == timeless(expected) and requests > 0
        finally:
            await worker.close()

    asyncio.run(scenario())


def test_a_solve_that_fails_after_the_window_applied_needs_no_whole_window_next_round() -> None:
    """The worker says where its copy stands in every reply (``window_seq``): a failed build or solve is not a
    reason to resend the whole window (at 50,000 records that resend is the stall the copy removed)."""

    async def scenario() -> None:
        worker = SolverWorker("least-loaded")
        try:
            worker.start()
            steps = rounds(7)
            assert not any(delta.gap for _, _, delta, _ in steps[4:6])  # only the first is a whole window
            for i, (records, config, delta, now) in enumerate(steps[3:6]):
                build = WindowBuild(delta, records, config, inputs(now))
                if i == 1:  # an unknown mode: the solve raises in the worker after the delta applied
                    with pytest.raises(SolverWorkerError, match="mode"):
                        await worker.solve_window(build, "least-loaded", "no such mode")
                else:
                    await worker.solve_window(build, "least-loaded", "1")
            assert worker.resets == 1
        finally:
            await worker.close()

    asyncio.run(scenario())
