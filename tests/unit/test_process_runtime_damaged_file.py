"""A damaged process-runtime.json (review19b): the agent reads it at start, so nothing in it may stop the agent
starting, drop a live server's record (its server would run on, unstopped, on its port) or leak a pidfd."""

from __future__ import annotations

import asyncio
import errno
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
from agent.runtime import process
from agent.runtime.process import PID_MAX_LIMIT, ProcessRuntime, _record, recorded_server_pids, start_ticks
from tests.waiting import wait_for


def sleeper() -> subprocess.Popen[bytes]:
    """A process whose command line reads like the stand-in server of model half_plus_two."""
    code = "import time; time.sleep(60)"
    proc = subprocess.Popen([sys.executable, "-c", code, "-m", "agent.modelserver", "--name", "half_plus_two"])
    wait_for(lambda: b"agent.modelserver" in Path(f"/proc/{proc.pid}/cmdline").read_bytes(), 10)
    return proc


@pytest.fixture
def live() -> Iterator[subprocess.Popen[bytes]]:
    proc = sleeper()
    yield proc
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def entry(proc: subprocess.Popen[bytes] | None = None, **fields: object) -> dict[str, object]:
    pid = proc.pid if proc is not None else 1
    ticks = start_ticks(pid) if proc is not None else 1
    base = {"id": f"proc-half_plus_two-{pid}", "model": "half_plus_two", "pid": pid, "port": 45690, "term": 1,
            "started_at": time.time(), "ticks": ticks}  # fmt: skip
    return {**base, **fields}


def adopted(data_dir: Path) -> list[str]:
    return [i.detail for i in asyncio.run(ProcessRuntime("127.0.0.1", data_dir).list())]


@pytest.mark.parametrize("pid", [2**32, -(2**31) - 1, 2**63, 0, -5, PID_MAX_LIMIT + 1])
def test_a_pid_no_process_can_have_drops_that_record_and_the_agent_starts(
    tmp_path: Path, live: subprocess.Popen[bytes], pid: int
) -> None:
    """``"pid": 4294967296`` made os.pidfd_open raise OverflowError out of ProcessRuntime(): the agent did not
    start, and restarted in a loop (F3). The record is dropped; the live server beside it is still adopted."""
    (tmp_path / "process-runtime.json").write_text(json.dumps([entry(id="bad", pid=pid), entry(live)]))
    assert adopted(tmp_path) == [f"pid {live.pid}"]


def test_a_start_time_out_of_range_drops_that_record(tmp_path: Path, live: subprocess.Popen[bytes]) -> None:
    good = json.dumps(entry(live))
    (tmp_path / "process-runtime.json").write_text(f'[{{"id": "x", "model": "m", "pid": 1, "port": 1, "term": 1, '
                                                   f'"started_at": 0, "ticks": 1e400}}, {good}]')  # fmt: skip
    assert adopted(tmp_path) == [f"pid {live.pid}"]
    assert _record(entry(ticks=-3)) is None and _record(entry(started_at="NaN x")) is None


@pytest.mark.parametrize("stub", [[float("inf"), 1], [1, float("nan")], "x", [1], {}, [1, 2, 3], [True, 1], [-1, 2],
                                  [2**64, 1], [1.5, 2], None])  # fmt: skip
def test_a_malformed_stub_keeps_the_record_and_its_server(
    tmp_path: Path, live: subprocess.Popen[bytes], stub: object
) -> None:
    """``"stub": [Infinity, 1]`` raised OverflowError out of _record (the agent did not start), and ``"x"``, ``[1]``
    or ``{}`` dropped the whole record: its live server was never adopted nor stopped (F3). Only the stub is lost."""
    server = _record(entry(live, stub=stub))
    assert server is not None and server.pid == live.pid and server.stub is None
    (tmp_path / "process-runtime.json").write_text(json.dumps([entry(live, stub=stub)]))
    assert adopted(tmp_path) == [f"pid {live.pid}"]
    assert live.poll() is None


def test_a_well_formed_stub_is_kept() -> None:
    server = _record(entry(stub=[2**64 - 1, 0]))
    assert server is not None and server.stub == (2**64 - 1, 0)
    assert os.getpid() <= PID_MAX_LIMIT


def pidfds() -> int:
    """How many pidfds this process holds (/proc/self/fd)."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:[pidfd]"
        except OSError:
            continue
    return count


@pytest.mark.skipif(not hasattr(os, "pidfd_open"), reason="no pidfds here")
def test_duplicate_records_adopt_the_server_once_and_leak_no_pidfd(
    tmp_path: Path, live: subprocess.Popen[bytes]
) -> None:
    """50 copies of one live record held 50 pidfds, 49 of them never closed, not even by close() (F4)."""
    before = pidfds()
    copies = [entry(live)] * 50 + [entry(live, id="another-id")] * 50
    (tmp_path / "process-runtime.json").write_text(json.dumps(copies))
    runtime = ProcessRuntime("127.0.0.1", tmp_path)
    assert pidfds() == before + 1
    assert [i.detail for i in asyncio.run(runtime.list())] == [f"pid {live.pid}"]
    assert len(json.loads((tmp_path / "process-runtime.json").read_text())) == 1
    asyncio.run(runtime.close())
    assert live.wait(10) is not None and pidfds() == before


def test_a_file_nested_too_deep_is_ignored(tmp_path: Path) -> None:
    """json.loads raises RecursionError, not ValueError, on ``[[[[...``: it went out of ProcessRuntime()."""
    (tmp_path / "process-runtime.json").write_text("[" * 100_000)
    assert asyncio.run(ProcessRuntime("127.0.0.1", tmp_path).list()) == []
    assert recorded_server_pids(tmp_path) == []


def test_no_pidfd_after_the_spawn_leaves_no_orphan(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A pidfd that cannot be opened right after the spawn (EMFILE: an agent near its fd limit) raised out of
    start() before the server was recorded: it ran on, unrecorded and never stopped, on its port (F5). Now the
    server starts without one, is recorded, and its stop (by PID, start time and command line checked) ends it."""

    def no_fds(pid: int) -> int | None:
        raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))

    monkeypatch.setattr(process, "_pidfd_open", no_fds)
    spec = parse_catalogue(builtin_catalogue_text(), "builtin").get("half_plus_two")
    assert spec is not None
    runtime = ProcessRuntime("127.0.0.1", tmp_path)

    async def start_and_stop() -> None:
        instance = await runtime.start(spec, term=1)
        [pid] = recorded_server_pids(tmp_path)
        assert instance.running and instance.detail == f"pid {pid}"
        await runtime.stop(instance.id)
        assert not psutil.pid_exists(pid)  # ended and reaped

    try:
        asyncio.run(start_and_stop())
    finally:
        for child in psutil.Process().children():  # the old code's orphan
            if "agent.modelserver" in child.cmdline():
                child.kill()
                child.wait(10)


@pytest.mark.skipif(not hasattr(os, "pidfd_open"), reason="no pidfds here")
def test_a_stop_whose_record_cannot_be_saved_still_stops_the_server_and_closes_its_pidfd(
    tmp_path: Path, live: subprocess.Popen[bytes]
) -> None:
    """_save() raising in stop() (a full disk; here its temporary file's name is taken by a directory) skipped both
    the stop and the pidfd's close (F6)."""
    before = pidfds()
    (tmp_path / "process-runtime.json").write_text(json.dumps([entry(live)]))
    runtime = ProcessRuntime("127.0.0.1", tmp_path)
    [instance] = asyncio.run(runtime.list())
    (tmp_path / "process-runtime.tmp").mkdir()
    with pytest.raises(OSError):
        asyncio.run(runtime.stop(instance.id))
    assert live.wait(10) is not None and pidfds() == before


@pytest.mark.skipif(not hasattr(os, "pidfd_open"), reason="no pidfds here")
def test_a_second_cancel_while_a_cancelled_start_waits_closes_the_pidfd(tmp_path: Path) -> None:
    """A start cancelled (the agent stops) kills its server and waits for it; a second cancel during that wait
    skipped the pidfd's close (F6)."""
    spec = parse_catalogue(builtin_catalogue_text(), "builtin").get("half_plus_two")
    assert spec is not None
    before = pidfds()

    async def main() -> None:
        runtime = ProcessRuntime("127.0.0.1", tmp_path)
        task = asyncio.create_task(runtime.start(spec, term=1))
        while not (tmp_path / "process-runtime.json").exists():  # spawned, its pidfd held, not yet ready
            await asyncio.sleep(0.001)
        while not task.done():  # cancelled again and again: the start kills its server and waits for it
            task.cancel()
            await asyncio.sleep(0)
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.2)  # the child watcher reaps it

    asyncio.run(main())
    assert pidfds() == before
