"""The leader's solver process (agent.solver_worker): a real child process, real solves, its bounds."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import signal
import time
from typing import Any

import psutil
import pytest

from agent.solver_worker import SolverStopped, SolverWorker, SolverWorkerError
from solver.simulate import site_instance, thesis_instance


def snapshot() -> dict[str, Any]:
    return thesis_instance(25, 10, 1).to_dict()


@functools.cache
def big_snapshot() -> dict[str, Any]:
    """An exact MILP of 1,000 requests on 100 nodes: seconds of solving, so a kill or a stop lands while the round is
    in flight. Built once (1.5 s of CPU each time on this machine); the solves only read it (it is sent as JSON)."""
    return site_instance(1000, 100, sites=100, seed=0).to_dict()


def gone(pid: int, timeout: float = 10.0) -> bool:
    """Whether ``pid`` has exited and been reaped within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                with contextlib.suppress(ChildProcessError):  # we may be its reaper (tests/child_guard.py)
                    os.waitpid(pid, os.WNOHANG)
                time.sleep(0.05)  # exited; the reaper has not collected it yet
                continue
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False


def test_no_process_until_started_and_none_after_stop() -> None:
    async def scenario() -> None:
        worker = SolverWorker("ipopt")
        assert worker.pid is None
        worker.start()
        pid = worker.pid
        assert pid is not None and psutil.Process(pid).ppid() == os.getpid()
        plan, fallback = await worker.solve(snapshot(), "ipopt", "1")
        assert plan["status"] == "optimal" and plan["feasible"] and fallback == ""
        assert len(plan["assignments"]) == 25
        worker.stop()
        assert worker.pid is None
        assert gone(pid), "the worker outlived stop()"
        # a round still in flight after stepping down must not bring a solver back
        with pytest.raises(SolverStopped, match="does not lead"):  # not a fault: logged as the round dropped
            await worker.solve(snapshot(), "ipopt", "1")
        assert worker.pid is None

    asyncio.run(scenario())


def test_a_bad_request_is_an_error_and_the_worker_keeps_serving() -> None:
    async def scenario() -> None:
        worker = SolverWorker("least-loaded")
        try:
            worker.start()
            with pytest.raises(SolverWorkerError, match="SnapshotError"):
                await worker.solve({"nodes": "nope"}, "ipopt", "1")
            pid = worker.pid
            plan, _ = await worker.solve(snapshot(), "least-loaded", "2")
            assert plan["method"] == "least-loaded" and worker.pid == pid  # same process
        finally:
            await worker.close()

    asyncio.run(scenario())


def test_a_worker_dying_mid_solve_fails_that_solve_and_the_next_solve_starts_a_new_one() -> None:
    async def scenario() -> None:
        worker = SolverWorker("least-loaded")
        try:
            worker.start()
            first = worker.pid
            assert first is not None
            big = big_snapshot()  # seconds of exact MILP: the kill lands mid-solve
            pending = asyncio.create_task(worker.solve(big, "milp", "2"))
            await asyncio.sleep(0.5)
            os.kill(first, signal.SIGKILL)
            with pytest.raises(SolverWorkerError, match=r"exited|unreachable"):
                await pending
            plan, _ = await worker.solve(snapshot(), "least-loaded", "1")
            assert plan["feasible"] and worker.pid not in (None, first)
        finally:
            await worker.close()

    asyncio.run(scenario())


def test_stepping_down_mid_solve_is_a_dropped_round_not_a_fault() -> None:
    """stop() (the node stepped down) while a round solves: that solve raises SolverStopped, which leadership logs
    as a dropped round (no traceback at ERROR: the chaos soak's agent logs showed one at every step-down)."""

    async def scenario() -> None:
        worker = SolverWorker("least-loaded")
        try:
            worker.start()
            big = big_snapshot()  # seconds of exact MILP
            pending = asyncio.create_task(worker.solve(big, "milp", "2"))
            await asyncio.sleep(0.5)
            worker.stop()
            with pytest.raises(SolverStopped, match="stepped down"):
                await pending
        finally:
            await worker.close()

    asyncio.run(scenario())


def test_a_reply_over_the_bound_is_refused_and_the_worker_replaced() -> None:
    async def scenario() -> None:
        worker = SolverWorker("least-loaded", max_reply_bytes=500)
        try:
            worker.start()
            first = worker.pid
            with pytest.raises(SolverWorkerError, match="over 500 bytes"):
                await worker.solve(snapshot(), "least-loaded", "1")
            assert worker.pid is None and first is not None and gone(first)
            worker.max_reply_bytes = 10**6
            plan, _ = await worker.solve(snapshot(), "least-loaded", "1")
            assert len(plan["assignments"]) == 25
        finally:
            await worker.close()

    asyncio.run(scenario())


def test_the_worker_exits_at_end_of_input_and_with_a_killed_parent() -> None:
    """Closing its input ends it; a SIGKILLed parent takes it along (PR_SET_PDEATHSIG)."""
    import subprocess
    import sys

    parent = subprocess.Popen(
        [sys.executable, "-c",
         "import subprocess, sys, time\n"
         "p = subprocess.Popen([sys.executable, '-m', 'agent.solver_worker', '--warm-up', 'least-loaded'],"
         " stdin=subprocess.PIPE)\n"
         "print(p.pid, flush=True)\n"
         "time.sleep(60)\n"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    parent.kill()
    parent.wait()
    assert gone(child), "the solver worker outlived its killed parent"


def test_a_worker_whose_agent_died_before_it_armed_pdeathsig_exits_even_under_a_subreaper() -> None:
    """Reparented to a subreaper (this test runner, a container's init), not PID 1: the PID check still holds."""
    import subprocess
    import sys

    gone_parent = subprocess.Popen([sys.executable, "-c", "pass"])
    gone_parent.wait()  # its PID names no live parent of the worker
    worker = subprocess.Popen(
        [sys.executable, "-m", "agent.solver_worker", "--warm-up", "least-loaded", "--parent", str(gone_parent.pid)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert worker.wait(30) == 0  # it left at once; it did not wait for end of input (stdin stays open)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
        assert worker.stdin is not None and worker.stdout is not None
        worker.stdin.close()
        worker.stdout.close()


def test_a_solver_process_runs_blas_on_one_thread() -> None:
    """The solver's matrices are small; BLAS threads only spun against the model servers (an LP estimate
    took 13.8 s with OpenBLAS's default threads on a loaded machine, 0.05 s with one)."""
    import subprocess
    import sys

    probe = (
        "import numpy, json\n"
        "from threadpoolctl import threadpool_info\n"
        "from solver.fastlp import tune_solver_process\n"
        "tune_solver_process()\n"
        "after = [i['num_threads'] for i in threadpool_info() if i['user_api'] == 'blas']\n"
        "print(json.dumps(after))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")}
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True, timeout=60)
    after = __import__("json").loads(out.stdout)
    assert after and all(n == 1 for n in after)
