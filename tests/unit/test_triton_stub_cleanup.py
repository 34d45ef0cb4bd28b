"""A stopped server's leftover Triton backend stubs are ended, and their /dev/shm regions removed.

A tritonserver stopped while it loads its model exits at once and may leave its Python-backend stub running: it
ignores SIGTERM and never exits (measured: 2 of 7 stops during load), ~37 MB resident and a 1 MiB
``triton_python_backend_shm_region_*`` file in /dev/shm each, for good. Here a real process tree stands for it: a
session leader (as the runtime starts every server) with a child run under the stub's path that ignores SIGTERM,
and a child run from elsewhere that must be left alone.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from agent.runtime.process import STUB_SHM_PREFIX, end_leftover_stubs, session_members

# ignores SIGTERM, then says so (touches its first argument), then stays
STAY = (
    "import pathlib, signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "pathlib.Path(sys.argv[1]).touch(); time.sleep(120)"
)


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="no /dev/shm")
def test_a_stopped_servers_leftover_stub_is_ended_and_its_region_removed(tmp_path: Path) -> None:
    backends = tmp_path / "triton" / "backends"
    stub = backends / "python" / "triton_python_backend_stub"
    elsewhere = tmp_path / "other" / "helper"
    region = f"{STUB_SHM_PREFIX}{uuid.uuid4()}"
    shm = Path("/dev/shm") / region
    shm.write_bytes(b"\0" * 4096)  # this test's own region, as the stub's parent creates one per stub
    script = (
        f'(exec -a "{stub}" "{sys.executable}" -c "{STAY}" "{tmp_path}/a" {region}) & '
        f'(exec -a "{elsewhere}" "{sys.executable}" -c "{STAY}" "{tmp_path}/b") & wait'
    )
    leader = subprocess.Popen(["bash", "-c", script], start_new_session=True)
    others: list[int] = []
    try:
        deadline = time.monotonic() + 30
        while True:
            members = {pid: argv for pid, argv in session_members(leader.pid) if pid != leader.pid}
            started = sorted(argv[0] for argv in members.values() if argv) == sorted([str(stub), str(elsewhere)])
            if started and (tmp_path / "a").exists() and (tmp_path / "b").exists():
                break
            assert time.monotonic() < deadline, members
            time.sleep(0.05)
        [stub_pid] = [pid for pid, argv in members.items() if argv[0] == str(stub)]
        others = [pid for pid, argv in members.items() if argv[0] == str(elsewhere)]
        leader.kill()  # the server is gone; its children stay behind in its session
        leader.wait()
        os.kill(stub_pid, signal.SIGTERM)  # ignored, as the real stub does
        time.sleep(0.2)
        assert alive(stub_pid)
        assert end_leftover_stubs(leader.pid, backends) == 1
        deadline = time.monotonic() + 10
        while alive(stub_pid):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert not shm.exists()
        assert all(alive(pid) for pid in others)  # not run from the backends folder: not ours to end
        assert end_leftover_stubs(leader.pid, backends) == 0  # nothing left: nothing done
        assert end_leftover_stubs(os.getpid(), backends) == 0  # another session: its processes are not looked at
    finally:
        for pid in others:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if leader.poll() is None:
            leader.kill()
            leader.wait()
        shm.unlink(missing_ok=True)
