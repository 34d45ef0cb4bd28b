"""The process runtime records a model server from the moment it is spawned: an agent that dies or stops
while a server starts leaves nothing behind (the cause of stand-in servers orphaned by the service tier)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from agent.catalogue import builtin_catalogue_text, parse_catalogue
from agent.runtime.process import ProcessRuntime, _argv_is_server, _boot_time, recorded_server_pids, start_ticks
from tests.waiting import wait_for

SPEC = parse_catalogue(builtin_catalogue_text(), "builtin").get("half_plus_two")


def records(data_dir: Path) -> list[dict[str, object]]:
    return list(json.loads((data_dir / "process-runtime.json").read_text()))


def running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def test_a_server_being_started_is_recorded_and_a_cancelled_start_ends_it(tmp_path: Path) -> None:
    assert SPEC is not None
    seen: list[dict[str, object]] = []

    async def main() -> None:
        runtime = ProcessRuntime("127.0.0.1", tmp_path)
        task = asyncio.create_task(runtime.start(SPEC, term=1))
        deadline = asyncio.get_running_loop().time() + 10
        while not seen and asyncio.get_running_loop().time() < deadline and not task.done():
            await asyncio.sleep(0.001)
            if (tmp_path / "process-runtime.json").exists():
                seen.extend(records(tmp_path))
        task.cancel()  # the agent stops while the server starts
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(main())
    (entry,) = seen
    assert entry["port"] == 0 and entry["model"] == "half_plus_two"  # on disk before it was ready
    pid = int(str(entry["pid"]))
    assert not running(pid) and recorded_server_pids(tmp_path) == []


def test_a_restart_stops_the_server_its_last_run_left_half_started(tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "agent.modelserver", "--model", "half_plus_two", "--name", "half_plus_two",
            "--host", "127.0.0.1", "--port", "0"]  # fmt: skip
    orphan = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        (tmp_path / "process-runtime.json").write_text(json.dumps([{
            "id": f"proc-half_plus_two-{orphan.pid}", "model": "half_plus_two", "pid": orphan.pid, "port": 0,
            "term": 1, "started_at": time.time(), "ticks": start_ticks(orphan.pid)}]))  # fmt: skip
        # whoever cleans up after a dead agent finds it (/proc/PID/cmdline reads empty for a moment after exec)
        wait_for(lambda: recorded_server_pids(tmp_path) == [orphan.pid], 10)
        runtime = ProcessRuntime("127.0.0.1", tmp_path)  # the agent starts again on the same data directory
        assert orphan.wait(5) == -9
        assert asyncio.run(runtime.list()) == [] and records(tmp_path) == []
    finally:
        if orphan.poll() is None:
            orphan.kill()
            orphan.wait()


# -- a recorded PID is ours only while it is the same process (review12a F5: PID reuse, another agent's server) ------


def sleeper(name: str) -> subprocess.Popen[bytes]:
    """A process whose command line reads like a stand-in's (``-m agent.modelserver --name NAME``), as another
    agent's server on the same host does, or a process that took a recorded PID does."""
    code = "import time; time.sleep(60)"
    return subprocess.Popen([sys.executable, "-c", code, "-m", "agent.modelserver", "--name", name])


@pytest.fixture
def sleepers() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait()


def record(proc: subprocess.Popen[bytes], port: int, **fields: object) -> dict[str, object]:
    wait_for(lambda: b"agent.modelserver" in Path(f"/proc/{proc.pid}/cmdline").read_bytes(), 10)
    entry = {"id": f"proc-half_plus_two-{proc.pid}", "model": "half_plus_two", "pid": proc.pid, "port": port,
             "term": 1, "started_at": time.time(), "ticks": start_ticks(proc.pid)}  # fmt: skip
    return {**entry, **fields}


def test_start_ticks_are_the_process_start_time() -> None:
    ticks = start_ticks(os.getpid())
    assert ticks is not None and ticks > 0
    started = _boot_time() + ticks / os.sysconf("SC_CLK_TCK")
    assert abs(started - psutil.Process().create_time()) < 0.05
    assert start_ticks(2**22 + 1) is None  # above the kernel's PID limit: no such process


def test_a_foreign_process_is_neither_adopted_nor_killed(
    tmp_path: Path, sleepers: list[subprocess.Popen[bytes]]
) -> None:
    a, b, c, d = (sleeper(n) for n in ("other-agents", "other-agents", "half_plus_two", "half_plus_two"))
    sleepers += [a, b, c, d]
    entries = [
        record(a, 0, started_at=0, ticks=0),  # the review's records: another agent's stand-ins, no start time
        record(b, 45678, started_at=0, ticks=0),
        record(c, 0, ticks=int(str(start_ticks(c.pid))) - 1),  # the right name, another start: a reused PID
        record(d, 45679, ticks=int(str(start_ticks(d.pid))) + 7),
    ]
    (tmp_path / "process-runtime.json").write_text(json.dumps(entries))
    assert recorded_server_pids(tmp_path) == []
    runtime = ProcessRuntime("127.0.0.1", tmp_path)
    time.sleep(0.2)
    assert asyncio.run(runtime.list()) == []
    assert all(p.poll() is None for p in (a, b, c, d))  # none of them signalled


def test_our_server_is_adopted_and_stopped_and_a_half_started_one_killed(
    tmp_path: Path, sleepers: list[subprocess.Popen[bytes]]
) -> None:
    ready, half = sleeper("half_plus_two"), sleeper("half_plus_two")
    sleepers += [ready, half]
    (tmp_path / "process-runtime.json").write_text(json.dumps([record(ready, 45680), record(half, 0)]))
    assert sorted(recorded_server_pids(tmp_path)) == sorted([ready.pid, half.pid])
    runtime = ProcessRuntime("127.0.0.1", tmp_path)
    assert half.wait(5) == -9
    [adopted] = asyncio.run(runtime.list())
    assert adopted.running and adopted.detail == f"pid {ready.pid}"
    asyncio.run(runtime.stop(adopted.id))
    assert ready.wait(10) is not None and asyncio.run(runtime.list()) == []


def test_a_record_from_before_start_ticks_needs_a_matching_start_time(
    tmp_path: Path, sleepers: list[subprocess.Popen[bytes]]
) -> None:
    upgraded, stale = sleeper("half_plus_two"), sleeper("half_plus_two")
    sleepers += [upgraded, stale]
    entries = [
        record(upgraded, 45681, ticks=None),  # written by the version before: started_at only, and it matches
        record(stale, 45682, ticks=None, started_at=time.time() - 86400),  # this PID started a day after the record
    ]
    (tmp_path / "process-runtime.json").write_text(json.dumps(entries))
    assert recorded_server_pids(tmp_path) == [upgraded.pid]
    [adopted] = asyncio.run(ProcessRuntime("127.0.0.1", tmp_path).list())
    assert adopted.detail == f"pid {upgraded.pid}" and stale.poll() is None


def test_command_lines_that_are_ours() -> None:
    standin = [sys.executable, "-m", "agent.modelserver", "--model", "half_plus_two", "--name", "m1", "--port", "0"]
    assert _argv_is_server([a.encode() for a in standin], "m1", 0)
    assert not _argv_is_server([a.encode() for a in standin], "m2", 0)
    assert not _argv_is_server([b"/bin/sh", b"-c", b"echo agent.modelserver --name m1"], "m1", 0)
    triton = ["/opt/triton/bin/tritonserver", "--model-repository=/d/triton/repos/m1", "--http-port=40001"]
    assert _argv_is_server([a.encode() for a in triton], "m1", 40001)
    assert not _argv_is_server([a.encode() for a in triton], "m1", 40002)
    assert not _argv_is_server([a.encode() for a in triton], "m2", 40001)
    assert not _argv_is_server([], "m1", 0)
