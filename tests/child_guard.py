"""Leak guard (a pytest plugin): a test that leaves a child process running fails, and the child is reaped.

The pytest process makes itself a child subreaper (PR_SET_CHILD_SUBREAPER), so a process whose parent
dies (a model server of an agent a test killed with SIGKILL) is reparented to pytest instead of init and
stays findable by parent. After every test's teardown the guard lists pytest's descendants by PID and
parent (never by name): those started since the session began, and not held by a live fixture of wider
scope (module, session: started during its set-up, they and their descendants are its own until it is
finalised), and not kept on purpose (``keep``: a test that starts state for the tests after it, such as
booted boards a module fixture tears down), are leaks once a short grace period has passed. Each is
killed (SIGKILL, by PID, after checking its start time so a reused PID is never hit) and reaped, and the
test's teardown fails naming them.
Zombies left by orphans that exited on their own are reaped quietly.

Loaded by tests/conftest.py; ``-p tests.child_guard`` loads it into any pytest run.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import time
from collections.abc import Generator, Iterable
from typing import Any

import psutil
import pytest

PR_SET_CHILD_SUBREAPER = 36
GRACE_S = 3.0  # a child killed by the test's own teardown may take a moment to exit
Ident = tuple[int, float]  # (pid, create time): a PID alone may be reused
_KEPT: set[Ident] = set()  # processes started on purpose for later tests (``keep``), with their descendants


def keep(pid: int) -> None:
    """Mark ``pid`` (and what it starts) as state a test leaves on purpose for the tests after it, which a
    wider-scope fixture ends (the system tier boots boards in one test and uses them in the next)."""
    with contextlib.suppress(psutil.Error):
        _KEPT.add((pid, psutil.Process(pid).create_time()))


def make_subreaper() -> bool:
    """Adopt orphaned descendants (Linux prctl); False where the call is unavailable."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
    return False


def descendants(pid: int) -> dict[Ident, psutil.Process]:
    """Every live or zombie descendant of ``pid``, by identity."""
    out: dict[Ident, psutil.Process] = {}
    with contextlib.suppress(psutil.Error):
        for p in psutil.Process(pid).children(recursive=True):
            with contextlib.suppress(psutil.Error):
                out[(p.pid, p.create_time())] = p
    return out


def running(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def describe(p: psutil.Process) -> str:
    with contextlib.suppress(psutil.Error):
        return f"pid {p.pid} ({' '.join(p.cmdline())[:160]})"
    return f"pid {p.pid}"


def reap(pids: Iterable[int]) -> None:
    """Collect the exit status of our own children among ``pids`` (zombies); others are not ours to wait for."""
    for pid in pids:
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)


class ChildGuard:
    """The plugin object: ``baseline`` at session start, ``held`` processes per wide-scope fixture."""

    def __init__(self, pid: int | None = None) -> None:
        self.pid = pid or os.getpid()
        self.subreaper = False
        self.baseline: set[Ident] = set()
        self.held: dict[int, set[Ident]] = {}  # id(fixturedef) -> what its set-up started

    def pytest_sessionstart(self, session: pytest.Session) -> None:
        self.subreaper = make_subreaper()
        with contextlib.suppress(Exception):  # a session-long helper: started here, not inside some test
            from multiprocessing import resource_tracker

            resource_tracker.ensure_running()
        self.baseline = set(descendants(self.pid))

    @pytest.hookimpl(wrapper=True)
    def pytest_fixture_setup(self, fixturedef: Any, request: pytest.FixtureRequest) -> Generator[None, Any, Any]:
        before = set(descendants(self.pid))
        try:
            return (yield)
        finally:
            if fixturedef.scope != "function":
                self.held[id(fixturedef)] = set(descendants(self.pid)) - before

    def pytest_fixture_post_finalizer(self, fixturedef: Any, request: pytest.FixtureRequest) -> None:
        self.held.pop(id(fixturedef), None)

    def exempt(self, current: dict[Ident, psutil.Process]) -> set[Ident]:
        """The session's own processes, and those wide-scope fixtures hold, with their descendants."""
        roots = self.baseline.union(_KEPT, *self.held.values())
        out = set(roots)
        for ident in roots:
            if ident in current:
                out |= set(descendants(ident[0]))
        return out

    def leaks(self, grace_s: float = GRACE_S) -> list[psutil.Process]:
        """Running descendants nobody holds, once ``grace_s`` has passed without them exiting."""
        deadline = time.monotonic() + grace_s
        while True:
            current = descendants(self.pid)
            exempt = self.exempt(current)
            stray = [p for ident, p in current.items() if ident not in exempt]
            reap(p.pid for p in stray if not running(p))
            live = [p for p in stray if running(p)]
            if not live or time.monotonic() >= deadline:
                return live
            time.sleep(0.1)

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_teardown(self, item: pytest.Item, nextitem: pytest.Item | None) -> Generator[None, Any, Any]:
        result = yield
        leaked = self.leaks()
        if leaked:
            names = [describe(p) for p in leaked]
            for p in leaked:
                with contextlib.suppress(psutil.Error):
                    p.send_signal(signal.SIGKILL)  # psutil checks the start time: never a reused PID
            psutil.wait_procs(leaked, timeout=5)
            reap(p.pid for p in leaked)
            pytest.fail(f"test left {len(names)} child process(es) running (killed now): {'; '.join(names)}")
        return result


def pytest_configure(config: pytest.Config) -> None:
    if not config.pluginmanager.has_plugin("child-guard"):
        config.pluginmanager.register(ChildGuard(), "child-guard")
