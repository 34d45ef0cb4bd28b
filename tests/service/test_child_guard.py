"""The leak guard (tests/child_guard.py) fails the test that leaks a child process and reaps it; without the
guard the same leak outlives the run."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[2]

INNER = """
import subprocess, sys
from pathlib import Path

PIDS = Path(__file__).with_name("pids.txt")


def note(pid):
    with PIDS.open("a") as f:
        f.write(f"{pid}\\n")


def test_leaks_a_child():
    note(subprocess.Popen(["sleep", "300"]).pid)


def test_cleans_up():
    p = subprocess.Popen(["sleep", "300"])
    p.kill()
    p.wait()


def test_leaks_an_orphan():
    # like a model server whose agent died: its parent exits, it runs on in a session of its own
    code = ("import subprocess; print(subprocess.Popen(['sleep', '300'], start_new_session=True, "
            "stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).pid)")
    note(int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout))


def test_after_the_leaks():
    pass


KEPT = []


def test_keeps_a_server_for_the_next_test():
    # started on purpose for the test after it (as the system tier boots boards): kept, not a leak
    import tests.child_guard

    KEPT.append(subprocess.Popen(["sleep", "300"]))
    tests.child_guard.keep(KEPT[0].pid)


def test_uses_what_was_kept_and_ends_it():
    assert KEPT[0].poll() is None
    KEPT[0].kill()
    KEPT[0].wait()
"""


def run_inner(tmp_path: Path, guard: bool) -> tuple[subprocess.CompletedProcess[str], list[int]]:
    (tmp_path / "test_inner.py").write_text(INNER)
    plugins = ["-p", "tests.child_guard"] if guard else []
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *plugins, "-q", "test_inner.py"],
                         cwd=tmp_path, capture_output=True, text=True, env=env, timeout=120)  # fmt: skip
    pids = [int(x) for x in (tmp_path / "pids.txt").read_text().split()]
    return run, pids


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def test_guard_fails_the_leaking_tests_and_reaps_their_children_but_not_what_is_kept(tmp_path: Path) -> None:
    run, pids = run_inner(tmp_path, guard=True)
    assert run.returncode == 1, run.stdout
    assert "6 passed, 2 errors" in run.stdout, run.stdout  # each leaking test errors at teardown, none other
    assert "ERROR test_inner.py::test_leaks_a_child - Failed: test left 1 child" in run.stdout
    assert "ERROR test_inner.py::test_leaks_an_orphan - Failed: test left 1 child" in run.stdout
    assert len(pids) == 2 and not any(alive(p) for p in pids)


def test_without_the_guard_the_same_leaks_outlive_the_run(tmp_path: Path) -> None:
    run, pids = run_inner(tmp_path, guard=False)
    try:
        assert run.returncode == 0, run.stdout
        assert len(pids) == 2 and all(alive(p) for p in pids)
    finally:
        for pid in pids:  # ours: the inner run started them and wrote their PIDs down
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        for pid in pids:
            with contextlib.suppress(psutil.Error):
                psutil.Process(pid).wait(5)
