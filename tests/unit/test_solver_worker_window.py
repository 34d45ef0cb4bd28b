"""The solver worker builds the round's snapshot from its copy of the window (agent.window_sync): a real child process,
the same plan as the snapshot built in this process, a reset after the worker dies, and a refused delta recovered."""

from __future__ import annotations

import asyncio
import os
import random
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

import pytest

from agent.packed_records import MAX_ROW_BYTES, pack_record
from agent.solver_worker import SolverWorker, SolverWorkerError
from agent.window_sync import JournaledWindow, WindowBuild, WindowDelta
from bench.window_memory_bench import maximal_record, rss_kib
from tests.unit.test_window_sync import MODELS, inputs, record, rounds


def timeless(plan: dict[str, Any]) -> dict[str, Any]:
    """A plan without its timings (which differ run to run) and with the running value's start-free facts only (its
    split starts from the worker's last round's, so a second solve of one snapshot values it within its gap)."""
    out = {k: v for k, v in plan.items() if not k.endswith("_ms") or k == "objective_ms"}
    if isinstance(plan.get("running_value"), dict):
        facts = ("instances", "unserved", "demand", "over_bound")
        out["running_value"] = {k: v for k, v in plan["running_value"].items() if k in facts}
    return out


@asynccontextmanager
async def started_worker() -> AsyncIterator[SolverWorker]:
    """A real solver worker (least-loaded), started, and closed however the scenario ends (no process left over)."""
    worker = SolverWorker("least-loaded")
    try:
        worker.start()
        yield worker
    finally:
        await worker.close()


def test_the_worker_built_plan_equals_the_plan_of_the_snapshot_built_here_and_survives_a_dead_worker() -> None:
    async def scenario() -> None:
        async with started_worker() as worker:
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

    asyncio.run(scenario())


def test_a_delta_the_worker_refuses_is_sent_again_as_the_whole_window() -> None:
    async def scenario() -> None:
        async with started_worker() as worker:
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

    asyncio.run(scenario())


def test_a_solve_that_fails_after_the_window_applied_needs_no_whole_window_next_round() -> None:
    """The worker says where its copy stands in every reply (``window_seq``): a failed build or solve is not a
    reason to resend the whole window (at 50,000 records that resend is the stall the copy removed)."""

    async def scenario() -> None:
        async with started_worker() as worker:
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

    asyncio.run(scenario())


def test_a_flood_of_maximal_rows_leaves_the_workers_copy_within_the_budget_and_the_snapshot_solves() -> None:
    """Thirty rounds in which one node offers ~1.2 MiB of maximal rows (36 MiB in all) beside two quiet nodes, each
    solved by a real worker from its copy: the copy holds what the leader's window holds, within the 2 MiB budget with
    every quiet record kept; the worker's RSS grows by a small multiple of the budget, not by what was offered; and
    the snapshot of a window at its budget solves, to the plan of the same snapshot built here."""
    budget = 2 << 20

    async def scenario() -> None:
        window = JournaledWindow(50_000, 600.0, 30.0, budget)
        rnd = random.Random(3)
        offered = 0
        async with started_worker() as worker:
            await worker.solve(inputs(1000.0).build(()), "least-loaded", "1")  # started and warmed up
            assert worker.pid is not None
            before = rss_kib(worker.pid)
            for i in range(30):
                now = 1000.0 + i
                for node in ("a", "b"):
                    window.add(node, [replace(record(rnd, now), ts=now - 1.0) for _ in range(10)], now)
                for _ in range(6):  # pages as a peer's answer carries them (at most 256 KiB)
                    offered += 25 * len(pack_record(maximal_record(now, MODELS[1])))
                    window.add("c", [maximal_record(now, MODELS[1])] * 25, now)
                window.expire(now)
                records, delta = window.records(), window.take_delta()
                build = WindowBuild(delta, records, window.config(), inputs(now))
                plan, fallback, requests = await worker.solve_window(build, "least-loaded", "1")
                assert worker.window_bytes == window.nbytes <= budget
            grown = (rss_kib(worker.pid) - before) * 1024
            quiet = [r for r in records if r.logged_by in ("a", "b")]
            assert len(quiet) == 600 and window.nbytes > budget - 2 * MAX_ROW_BYTES  # at the budget, the quiet kept
            assert offered > 16 * budget and grown < 8 * budget, (offered, grown)  # unbounded: ~36x (74 MiB)
            expected, _ = await worker.solve(inputs(now).build(records), "least-loaded", "1")
            assert plan["status"] != "infeasible" and requests > 0 and fallback == ""
            assert timeless(plan) == timeless(expected)

    asyncio.run(scenario())


def test_a_message_not_written_whole_ends_the_worker_and_the_next_round_resets(monkeypatch: pytest.MonkeyPatch) -> None:
    """The window goes to the worker piece by piece as it is encoded: a failure half-way leaves its line protocol
    mid-line, so that worker is ended, and the next round gives a new one the whole window."""
    import agent.window_sync as ws  # agent.solver_worker imports it where it writes (a worker starts light)

    def broken(*args: Any) -> Any:
        yield '{"seq":1,'
        raise RuntimeError("encoding failed")

    async def scenario() -> None:
        async with started_worker() as worker:
            steps = rounds(9)
            records, config, delta, now = steps[0]
            with monkeypatch.context() as m:
                m.setattr(ws, "reset_parts", broken)
                with pytest.raises(RuntimeError, match="encoding failed"):
                    await worker.solve_window(WindowBuild(delta, records, config, inputs(now)), "least-loaded", "1")
            assert worker.pid is None  # ended
            records, config, delta, now = steps[1]
            plan, _, requests = await worker.solve_window(
                WindowBuild(delta, records, config, inputs(now)), "least-loaded", "1"
            )
            expected, _ = await worker.solve(inputs(now).build(records), "least-loaded", "1")
            assert timeless(plan) == timeless(expected) and requests > 0 and worker.resets == 2

    asyncio.run(scenario())
