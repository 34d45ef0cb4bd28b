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
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from agent.runtime.process import STUB_NAME, STUB_SHM_PREFIX, end_leftover_stubs, session_members

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


def stub_binary(backends: Path) -> Path:
    """A runnable stand-in for the stub binary at its place under ``backends``: a copy of this Python, so that
    /proc/PID/exe of what runs from it is that copy, as a real stub's is the copy the runtime made."""
    stub = backends / "python" / STUB_NAME
    stub.parent.mkdir(parents=True)
    shutil.copy(os.path.realpath(sys.executable), stub)
    if subprocess.run([str(stub), "-c", "pass"], capture_output=True).returncode != 0:
        pytest.skip("this Python does not run from a copy of its binary")
    return stub


def wait_for(session: int, count: int, marks: list[Path]) -> dict[int, list[str]]:
    """The members of ``session`` besides its leader, once there are ``count`` of them and every mark exists."""
    deadline = time.monotonic() + 30
    while True:
        members = {pid: argv for pid, argv in session_members(session) if pid != session and argv}
        if len(members) == count and all(m.exists() for m in marks):
            return members
        assert time.monotonic() < deadline, members
        time.sleep(0.05)


def one_staying_stub(tmp_path: Path) -> tuple[Path, Path, subprocess.Popen[bytes]]:
    """A stub binary under ``tmp_path``, one /dev/shm region of this test's named by a stub that ignores SIGTERM
    and touches ``tmp_path/a``, and the session leader it runs under: (the stub binary, the region, the leader)."""
    stub = stub_binary(tmp_path / "triton" / "backends")
    region = f"{STUB_SHM_PREFIX}{uuid.uuid4()}"
    shm = Path("/dev/shm") / region
    shm.write_bytes(b"\0" * 4096)
    leader = subprocess.Popen(
        ["bash", "-c", f'("{stub}" -c "{STAY}" "{tmp_path}/a" {region}) & wait'], start_new_session=True
    )
    return stub, shm, leader


def end_all(pids: list[int], *leaders: subprocess.Popen[bytes]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for leader in leaders:
        if leader.poll() is None:
            leader.kill()
            leader.wait()


@pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="no /dev/shm")
def test_a_stopped_servers_leftover_stub_is_ended_and_its_region_removed(tmp_path: Path) -> None:
    """Only a member running the stub binary itself is ended (/proc/PID/exe): one that only names itself so
    (exec -a: argv[0] is the stub's path, review18b F3) is left alone, with the region it names; so is a process
    running the stub binary in another live session."""
    backends = tmp_path / "triton" / "backends"
    stub = stub_binary(backends)
    elsewhere = tmp_path / "other" / "helper"
    region, spoofed, other = (f"{STUB_SHM_PREFIX}{uuid.uuid4()}" for _ in range(3))
    shms = [Path("/dev/shm") / r for r in (region, spoofed, other)]
    for shm in shms:
        shm.write_bytes(b"\0" * 4096)  # this test's own regions, as the stub's parent creates one per stub
    script = (
        f'("{stub}" -c "{STAY}" "{tmp_path}/a" {region}) & '
        f'(exec -a "{stub}" "{sys.executable}" -c "{STAY}" "{tmp_path}/s" {spoofed}) & '
        f'(exec -a "{elsewhere}" "{sys.executable}" -c "{STAY}" "{tmp_path}/b") & wait'
    )
    leader = subprocess.Popen(["bash", "-c", script], start_new_session=True)
    neighbour = subprocess.Popen(  # another live session, running the stub binary too
        [str(stub), "-c", STAY, str(tmp_path / "n"), other], start_new_session=True
    )
    others: list[int] = []
    try:
        members = wait_for(leader.pid, 3, [tmp_path / m for m in "asb"])
        wait_for(neighbour.pid, 0, [tmp_path / "n"])
        [stub_pid] = [pid for pid, argv in members.items() if argv[0] == str(stub) and region in argv]
        others = [pid for pid in members if pid != stub_pid]
        leader.kill()  # the server is gone; its children stay behind in its session
        leader.wait()
        os.kill(stub_pid, signal.SIGTERM)  # ignored, as the real stub does
        time.sleep(0.2)
        assert alive(stub_pid)
        assert end_leftover_stubs(leader.pid, stub) == 1
        deadline = time.monotonic() + 10
        while alive(stub_pid):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert not shms[0].exists()
        assert all(alive(pid) for pid in others)  # not running the stub binary: not ours to end
        assert shms[1].exists()  # named by a process that only calls itself a stub: not removed
        assert end_leftover_stubs(leader.pid, stub) == 0  # nothing left: nothing done
        assert alive(neighbour.pid) and shms[2].exists()  # another session, checked while it runs
        assert end_leftover_stubs(os.getpid(), stub) == 0  # another session: its processes are not looked at
        assert alive(neighbour.pid)
    finally:
        end_all([*others, neighbour.pid], leader, neighbour)
        for shm in shms:
            shm.unlink(missing_ok=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root, to run the sweep as another user than the stub's")
def test_a_stub_the_sweep_may_not_touch_is_logged_and_the_sweep_goes_on(tmp_path: Path) -> None:
    """review18b F2: an agent that is not root (install.sh's ``peerserve`` user) sweeping a session with a member of
    another user (EPERM) raised PermissionError out of stop(), which then skipped the other servers' stops and the
    agent's own shutdown. Now it is logged and the sweep returns. Run in a child forked from this process that
    drops to uid 65534; the member belongs to root (this test)."""
    tmp_path.chmod(0o755)
    stub, shm, leader = one_staying_stub(tmp_path)
    members: dict[int, list[str]] = {}
    try:
        members = wait_for(leader.pid, 1, [tmp_path / "a"])
        child = os.fork()
        if child == 0:  # pragma: no cover (the child's exit status carries its result)
            code = 3
            try:
                os.setgid(65534)
                os.setuid(65534)
                code = 0 if end_leftover_stubs(leader.pid, stub) == 0 else 1
            except BaseException:
                code = 2
            finally:
                os._exit(code)
        _, status = os.waitpid(child, 0)
        assert os.waitstatus_to_exitcode(status) == 0  # 2: it raised; 1: it claimed an end
        assert all(alive(pid) for pid in members) and shm.exists()  # not its to end, nor to remove
        assert end_leftover_stubs(leader.pid, stub) == 1  # its owner can
    finally:
        end_all(list(members), leader)
        shm.unlink(missing_ok=True)


def test_a_member_gone_since_the_listing_is_skipped_without_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """review18d F3: a member that exits between the /proc listing and the pidfd (any member, stub or not) was
    logged "could not end a Triton backend stub ... [Errno 3]". The race is replayed: the sweep is given the listing
    taken while the member ran, after it has exited and been reaped."""
    from agent.runtime import process

    stub = stub_binary(tmp_path / "triton" / "backends")
    go = tmp_path / "go"
    wait = "import pathlib, sys, time; pathlib.Path(sys.argv[1]).touch(); " \
        "[time.sleep(0.02) for _ in iter(pathlib.Path(sys.argv[2]).exists, True)]"  # fmt: skip
    leader = subprocess.Popen(
        ["bash", "-c", f'"{stub}" -c "{wait}" "{tmp_path}/a" "{go}" & wait'], start_new_session=True
    )
    members: dict[int, list[str]] = {}
    try:
        members = wait_for(leader.pid, 1, [tmp_path / "a"])
        listing = session_members(leader.pid)
        go.touch()  # the member exits; bash reaps it and exits too
        leader.wait(timeout=30)
        [member] = members
        assert not Path(f"/proc/{member}").exists()
        monkeypatch.setattr(process, "session_members", lambda session: listing)
        with caplog.at_level("WARNING", logger=process.log.name):
            assert end_leftover_stubs(leader.pid, stub) == 0
        assert not [r for r in caplog.records if r.levelname == "WARNING"], caplog.text
    finally:
        end_all(list(members), leader)


@pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="no /dev/shm")
def test_a_leftover_stub_whose_copy_was_deleted_is_still_ended(tmp_path: Path) -> None:
    """review18d F4: an operator wiping DATA_DIR/triton (to get a new stub after an upgrade) leaves a running stub
    whose /proc/PID/exe reads "<copy> (deleted)"; it was skipped, and it and its region leaked for good."""
    stub, shm, leader = one_staying_stub(tmp_path)
    members: dict[int, list[str]] = {}
    try:
        members = wait_for(leader.pid, 1, [tmp_path / "a"])
        [stub_pid] = members
        leader.kill()
        leader.wait()
        copy = os.stat(stub)  # the runtime records its copy's (st_dev, st_ino) at the server's start
        shutil.rmtree(tmp_path / "triton")
        assert os.readlink(f"/proc/{stub_pid}/exe") == f"{os.path.realpath(stub)} (deleted)"
        assert end_leftover_stubs(leader.pid, stub) == 0  # the path names nothing now: only the inode knows it
        assert end_leftover_stubs(leader.pid, stub, copies=[(copy.st_dev, copy.st_ino)]) == 1
        deadline = time.monotonic() + 10
        while alive(stub_pid):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert not shm.exists()
    finally:
        end_all(list(members), leader)
        shm.unlink(missing_ok=True)


def test_a_server_reaped_before_its_stop_is_not_signalled_nor_a_live_pid_reusers_session_swept(
    tmp_path: Path,
) -> None:
    """review18d F7: stop() of a child already reaped SIGTERMed its old PID and swept that PID's session. A PID
    reused by another live server of ours (its own session, its stub in it) lost both. Here the record of a reaped
    child names the PID of such a live session leader with a stub member: stop() leaves both running. A reaped
    server whose session has no leader any more is still swept (its stubs outlive it and keep the number)."""
    import asyncio

    from agent.runtime.process import ProcessRuntime, _Server

    data = tmp_path / "data"
    stub = stub_binary(data / "triton" / "backends")
    reuser = subprocess.Popen(  # the live server now holding the PID: a session leader with a stub in its session
        ["bash", "-c", f'("{stub}" -c "{STAY}" "{tmp_path}/a") & wait'], start_new_session=True
    )
    orphaned = subprocess.Popen(  # a dead server's session: its leader gone, its stub left
        ["bash", "-c", f'("{stub}" -c "{STAY}" "{tmp_path}/b") & exit 0'], start_new_session=True
    )
    members: dict[int, list[str]] = {}
    try:
        members = wait_for(reuser.pid, 1, [tmp_path / "a"])
        orphaned.wait(timeout=30)
        left = wait_for(orphaned.pid, 1, [tmp_path / "b"])
        members.update(left)

        async def scenario() -> None:
            runtime = ProcessRuntime("127.0.0.1", data)
            for name, pid in (("reused", reuser.pid), ("orphaned", orphaned.pid)):
                child = await asyncio.create_subprocess_exec("true")
                await child.wait()  # reaped: its returncode is set before the stop
                runtime._servers[name] = _Server(name, name, pid, 1, 1, time.time(), child)
            await runtime.stop("reused")
            await runtime.stop("orphaned")

        asyncio.run(scenario())
        assert reuser.poll() is None and all(alive(pid) for pid in members if pid not in left)
        [stub_pid] = left
        deadline = time.monotonic() + 10
        while alive(stub_pid):
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        end_all(list(members), reuser, orphaned)


@pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="no /dev/shm")
def test_a_binary_merely_named_like_a_deleted_copy_is_left_alone(tmp_path: Path) -> None:
    """review18e: the sweep matched /proc/PID/exe's text against "<copy> (deleted)", which a file literally so named
    also reads; it now matches the copy's (st_dev, st_ino), so such a process and the region it names stay."""
    stub = stub_binary(tmp_path / "triton" / "backends")
    named = stub.with_name(f"{STUB_NAME} (deleted)")
    shutil.copy(stub, named)
    region = f"{STUB_SHM_PREFIX}{uuid.uuid4()}"
    shm = Path("/dev/shm") / region
    shm.write_bytes(b"\0" * 4096)
    leader = subprocess.Popen(
        ["bash", "-c", f'("{named}" -c "{STAY}" "{tmp_path}/a" {region}) & wait'], start_new_session=True
    )
    members: dict[int, list[str]] = {}
    try:
        members = wait_for(leader.pid, 1, [tmp_path / "a"])
        [pid] = members
        assert os.readlink(f"/proc/{pid}/exe") == f"{os.path.realpath(stub)} (deleted)"  # what the text match took
        assert end_leftover_stubs(leader.pid, stub) == 0
        assert alive(pid) and shm.exists()
    finally:
        end_all(list(members), leader)
        shm.unlink(missing_ok=True)


@pytest.mark.skipif(not hasattr(os, "pidfd_open"), reason="no pidfds here")
def test_a_stop_never_signals_a_process_that_took_the_servers_pid_over(tmp_path: Path) -> None:
    """review18e: stop() checked the recorded PID (start time, command line), then signalled the number; a process
    that took the PID over in between (or one reaped by asyncio's child watcher before its returncode was set) got
    the SIGTERM. The runtime now holds a pidfd of each server from its spawn (or adoption) and signals through it.
    Here the server is gone and reaped, and its record's PID names a live look-alike that passes every check: the
    stop leaves it running, and closes the pidfd."""
    import asyncio

    from agent.runtime.process import ProcessRuntime, _Server, start_ticks

    server_process = subprocess.Popen(["sleep", "60"])
    pidfd = os.pidfd_open(server_process.pid)
    server_process.kill()
    server_process.wait()  # gone and reaped: its pidfd names nothing now
    lookalike = subprocess.Popen(  # what took the PID over, as far as the record can tell: a stand-in for model m
        [sys.executable, "-c", "import time; time.sleep(120)", "-m", "agent.modelserver", "--name", "m"],
        start_new_session=True,
    )
    try:
        ticks = start_ticks(lookalike.pid)
        assert ticks is not None
        server = _Server("s", "m", lookalike.pid, 1, 1, time.time(), ticks=ticks, pidfd=pidfd)
        deadline = time.monotonic() + 10
        while not server.is_alive():  # the record's checks pass: only the pidfd tells them apart
            assert time.monotonic() < deadline and lookalike.poll() is None, Path(f"/proc/{lookalike.pid}/cmdline")
            time.sleep(0.05)

        async def scenario() -> None:
            runtime = ProcessRuntime("127.0.0.1", tmp_path / "data")
            runtime._servers["s"] = server
            await runtime.stop("s")

        asyncio.run(scenario())
        time.sleep(0.2)
        assert lookalike.poll() is None and server.pidfd is None  # left running; the pidfd closed
    finally:
        lookalike.kill()
        lookalike.wait()
