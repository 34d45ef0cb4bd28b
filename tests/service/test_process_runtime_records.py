"""The process runtime records a model server from the moment it is spawned: an agent that dies or stops
while a server starts leaves nothing behind (the cause of stand-in servers orphaned by the service tier)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
from pathlib import Path

import psutil

from agent.catalogue import builtin_catalogue_text, parse_catalogue
from agent.runtime.process import ProcessRuntime, _is_our_server, recorded_server_pids
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
        wait_for(lambda: _is_our_server(orphan.pid), 10)  # /proc/PID/cmdline reads empty for a moment after exec
        (tmp_path / "process-runtime.json").write_text(json.dumps([{
            "id": f"proc-half_plus_two-{orphan.pid}", "model": "half_plus_two", "pid": orphan.pid, "port": 0,
            "term": 1, "started_at": 0.0}]))  # fmt: skip
        assert recorded_server_pids(tmp_path) == [orphan.pid]  # whoever cleans up after a dead agent finds it
        runtime = ProcessRuntime("127.0.0.1", tmp_path)  # the agent starts again on the same data directory
        assert orphan.wait(5) == -9
        assert asyncio.run(runtime.list()) == [] and records(tmp_path) == []
    finally:
        if orphan.poll() is None:
            orphan.kill()
            orphan.wait()
