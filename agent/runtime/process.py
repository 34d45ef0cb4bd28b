"""ProcessRuntime: model servers as local processes: the stand-in TF-Serving server (agent.modelserver),
or a real Triton Inference Server for catalogue entries with ``server = "triton"`` (agent/runtime/triton.py).

The embedded default for laptops, the demo and CI. Servers run in their own session, so they outlive
an agent crash; their pids are kept in ``<data_dir>/process-runtime.json`` (from the moment they are spawned,
so a server whose agent dies before it is ready is never lost: its record has port 0) and a restarted agent
adopts those still alive and ready, and stops those left half-started. A graceful agent shutdown stops every
server it owns.

A recorded PID is ours only while it is the same process: its start time (/proc/PID/stat field 22, clock ticks
since boot, recorded at spawn) and its command line (the stand-in's ``--name``, Triton's ``--http-port`` and
repository) must match the record before it is adopted or signalled; a PID reused by another process, or
another agent's server, is left alone. A pidfd (Linux >= 5.3) is taken of each server at spawn (and at adoption,
before the check): it names that process for good, so a stop's signals go through it and never reach a process
that took the PID over (asyncio's child watcher reaps a child before its returncode is set: review18e).

Each model's server writes ``<data_dir>/logs/<model>.log`` (stdout and stderr, append mode). No client can make
it grow without bound: Triton's log verbosity is one of its restricted APIs (agent/runtime/triton.py), the
stand-in rotates its own log, and past ``log_max_bytes`` every such file is cut in place (``bound_log``: its
last part kept in ``<model>.log.1``) at each start and each ``list()`` (every reconcile round, 2 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import json
import logging
import os
import random
import signal
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from agent import aio
from agent.catalogue import ModelSpec
from agent.errors import InstanceStartError
from agent.runtime.base import Instance
from agent.runtime.environment import server_environment

log = logging.getLogger(__name__)

START_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 5.0
LEGACY_SLACK_S = START_TIMEOUT_S + 5.0  # a record without ticks: the process started this long before it at most
LOG_MAX_BYTES = 1024 * 1024  # a server's log is cut past this (its last part kept in .1): ~2 MiB a model at most
STUB_SHM_PREFIX = "triton_python_backend_shm_region_"  # a Python-backend stub's /dev/shm region, named in its argv
STUB_NAME = "triton_python_backend_stub"  # the stub binary, copied into <data_dir>/triton/backends/python
PID_MAX_LIMIT = 2**22  # Linux's highest pid_max (64-bit): a recorded PID above it names no process


@dataclass
class _Server:
    id: str
    model: str
    pid: int
    port: int
    term: int
    started_at: float
    process: asyncio.subprocess.Process | None = None  # None when adopted after a restart
    ticks: int = 0  # the process's start time (/proc/PID/stat field 22); 0: a record written before it was kept
    pidfd: int | None = None  # names this process even once its PID is reused (None: no pidfds, or not taken)
    stub: tuple[int, int] | None = None  # (st_dev, st_ino) of the Triton backend stub copy it started with

    def is_alive(self) -> bool:
        """Whether this server's process still runs: the same PID, start time and command line as recorded."""
        return _is_our_server(self.pid, self.model, self.port, self.ticks, self.started_at)


class ProcessRuntime:
    kind = "process"

    def __init__(
        self,
        host: str,
        data_dir: Path,
        server_timing: bool = True,
        max_body_mb: float = 8.0,
        log_max_bytes: int = LOG_MAX_BYTES,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if log_max_bytes < 1024:
            raise ValueError("log_max_bytes must be at least 1024")
        # absolute once: tritonserver runs in <data_dir>/triton, and its command line names paths under data_dir
        data_dir = Path(os.path.abspath(data_dir))
        self.host = host
        self.server_timing = server_timing  # the stand-in servers' Server-Timing header (settings.server_timing)
        self.max_body_mb = max_body_mb  # the stand-ins take what the agent takes (settings.max_body_mb)
        self.state_file = data_dir / "process-runtime.json"
        self.log_dir = data_dir / "logs"
        self.log_max_bytes = log_max_bytes
        self.clock = clock  # the agent's wall clock: a server's started_at is compared with it (stuck_instances)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._servers: dict[str, _Server] = {}
        self._starting: dict[int, _Server] = {}  # pid -> spawned, not yet ready (recorded with port 0)
        self._priority_tasks: set[asyncio.Task[bool]] = set()  # carry_priority, tried again after EAGAIN
        self._adopt()

    def _adopt(self) -> None:
        try:
            entries = json.loads(self.state_file.read_text())
        except (OSError, ValueError, RecursionError):  # RecursionError: nested too deep (a damaged file)
            return
        adopted: set[int] = set()  # their PIDs
        for e in entries if isinstance(entries, list) else []:
            server = _record(e)
            if server is None:
                continue
            if server.id in self._servers or server.pid in adopted:
                # a duplicate (a damaged file): the server is adopted once, with one pidfd (review19b F4)
                log.warning(
                    "process-runtime.json: a second record of server %.80r (pid %d) ignored", server.id, server.pid
                )
                continue
            server.pidfd = _server_pidfd(server.pid)  # held before the check: what is checked is what is signalled
            if not server.is_alive():
                _close_pidfd(server)
                continue
            if server.port == 0:  # the last run died while it started: ours, never ready, nobody else stops it
                with contextlib.suppress(OSError):
                    _send(server.pid, server.pidfd, signal.SIGKILL)
                _close_pidfd(server)
                log.info("stopped model server %s (pid %d) left half-started by the last run", server.model, server.pid)
                continue
            log.info("adopted model server %s (%s, pid %d)", server.id, server.model, server.pid)
            self._servers[server.id] = server
            adopted.add(server.pid)
        self._save()

    def _save(self) -> None:
        entries = [
            {
                "id": s.id,
                "model": s.model,
                "pid": s.pid,
                "port": s.port,
                "term": s.term,
                "started_at": s.started_at,
                "ticks": s.ticks,
                **({"stub": list(s.stub)} if s.stub else {}),
            }
            for s in [*self._servers.values(), *self._starting.values()]
        ]
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(entries))
        tmp.replace(self.state_file)

    def _url(self, port: int) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{port}"

    async def start(self, spec: ModelSpec, term: int) -> Instance:
        from agent.models import MODELS

        if spec.server == "triton":
            return await self._start_triton(spec, term)
        if spec.stand_in not in MODELS:
            raise InstanceStartError(f"the process runtime has no stand-in model {spec.stand_in!r}")
        log_path = self._log_path(spec.name)
        # stderr (what fails before its logging is set up) goes to the log file; the server then logs there
        # through a handler that rotates it, so no client can make it grow without bound (after a rotation
        # stderr still points at the old file: only what fails outside logging, such as a crash, lands there).
        with open(log_path, "ab") as log_file:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "agent.modelserver",
                "--model", spec.stand_in, "--name", spec.name, "--host", self.host, "--port", "0",
                "--max-body-mb", f"{self.max_body_mb:g}", "--log-file", str(log_path),
                "--log-max-kb", str(self.log_max_bytes // 1024),
                *(() if self.server_timing else ("--no-server-timing",)),
                stdout=asyncio.subprocess.PIPE, stderr=log_file, stdin=asyncio.subprocess.DEVNULL,
                env=server_environment(os.environ), start_new_session=True,
            )  # fmt: skip
        # at once, before any await: the narrowest window (Python 3.10/3.11's ThreadedChildWatcher reaps in a thread
        # of its own, so a child that died at once could be reaped first, and its PID would then have to be reused)
        pidfd = _server_pidfd(proc.pid)
        ticks = start_ticks(proc.pid) or 0
        self._carry_priority(proc.pid, ticks)  # its session's CPU share: the agent's, not a fresh group's
        self._starting[proc.pid] = _Server(
            f"proc-{spec.name}-{proc.pid}", spec.name, proc.pid, 0, term, self.clock(), ticks=ticks, pidfd=pidfd
        )
        self._save()  # recorded before it is ready: if this agent dies now, whoever cleans up finds it
        try:
            assert proc.stdout is not None
            line = await aio.wait_for(proc.stdout.readline(), START_TIMEOUT_S)
            port = int(line.decode().split()[1]) if line.startswith(b"READY ") else 0
        except (asyncio.TimeoutError, ValueError, IndexError):
            port = 0
        except BaseException:  # cancelled while it starts (the agent stops): end it rather than leave it behind
            try:
                with contextlib.suppress(ProcessLookupError):
                    _send(proc.pid, pidfd, signal.SIGKILL)
                await proc.wait()
            finally:  # a second cancel during the wait must not leak the pidfd (review19b F6)
                if pidfd is not None:
                    os.close(pidfd)
            raise
        finally:
            self._starting.pop(proc.pid, None)
        if not port:
            try:
                await _terminate(proc.pid, proc, lambda: proc.returncode is None, pidfd)
            finally:
                if pidfd is not None:
                    os.close(pidfd)
            self._save()
            raise InstanceStartError(f"model server for {spec.name} did not start; see {log_path}")
        server = _Server(
            f"proc-{spec.name}-{proc.pid}", spec.name, proc.pid, port, term, self.clock(), proc, ticks, pidfd
        )
        self._servers[server.id] = server
        self._save()
        log.info("started %s on port %d (pid %d)", spec.name, port, proc.pid)
        return self._instance(server)

    async def _start_triton(self, spec: ModelSpec, term: int) -> Instance:
        """Start tritonserver for ``spec``; it loads the model in the background (readiness is probed)."""
        from agent.runtime import triton

        install = triton.find_triton()
        base = self.log_dir.parent / "triton"
        backends = triton.prepare_backend(install, base / "backends")
        stub = _file_id(backends / "python" / STUB_NAME)  # the copy its stubs run: the sweep knows them by it
        repository = triton.prepare_repository(spec, base / "repos" / spec.name)
        port = triton.free_port(self.host)
        log_path = self._log_path(spec.name)
        with open(log_path, "ab") as log_file:  # append mode: a cut (bound_log) makes its next write land at 0
            proc = await asyncio.create_subprocess_exec(
                *triton.command(install, repository, backends, self.host, port, triton.admin_key()),
                stdout=log_file, stderr=log_file, stdin=asyncio.subprocess.DEVNULL,
                env=triton.environment(install), start_new_session=True,
                cwd=base,  # the backend stub imports from its working directory first: ours, not the agent's
            )  # fmt: skip
        # at once, before any await: the narrowest window (Python 3.10/3.11's ThreadedChildWatcher reaps in a thread
        # of its own, so a child that died at once could be reaped first, and its PID would then have to be reused)
        pidfd = _server_pidfd(proc.pid)
        ticks = start_ticks(proc.pid) or 0
        self._carry_priority(proc.pid, ticks)  # its session's CPU share: the agent's, not a fresh group's
        server = _Server(
            f"triton-{spec.name}-{proc.pid}", spec.name, proc.pid, port, term, self.clock(), proc, ticks, pidfd, stub
        )
        self._servers[server.id] = server
        self._save()
        log.info("started tritonserver for %s on port %d (pid %d)", spec.name, port, proc.pid)
        return self._instance(server)

    def _log_path(self, model: str) -> Path:
        """``model``'s log file, cut first if it is over the bound (left so by an earlier run)."""
        path = self.log_dir / f"{model}.log"
        bound_log(path, self.log_max_bytes)
        return path

    def _instance(self, s: _Server) -> Instance:
        running = s.process.returncode is None if s.process is not None else s.is_alive()
        url = self._url(s.port)
        return Instance(s.id, s.model, url, running, s.term, s.started_at, f"pid {s.pid}", tree_rss_mb(s.pid))

    async def stop(self, instance_id: str) -> None:
        server = self._servers.pop(instance_id, None)
        if server is None:
            return
        try:
            try:
                self._save()
            finally:  # a record that cannot be saved (a full disk) still has its server stopped (review19b F6)
                await self._stop(server)
        finally:
            _close_pidfd(server)

    async def _stop(self, server: _Server) -> None:
        if server.process is None and not server.is_alive():
            return  # adopted, and gone or no longer the one recorded: its session number is not known to be ours
        # reaped before this stop (it crashed or was killed; its pidfd says so even where asyncio's child watcher has
        # reaped it but not yet set its returncode): its PID may name another process by now, so it is not signalled;
        # its session is swept only while no live process leads one of that number (review18d F7): a session whose
        # members live keeps its number, so one without a leader is the dead server's (or, once that one emptied,
        # another's whose members the sweep ends only if they run our stub copy: an orphan of ours either way)
        exited = server.process is not None and server.process.returncode is not None
        if not exited and server.pidfd is not None:
            try:
                signal.pidfd_send_signal(server.pidfd, 0)
            except ProcessLookupError:
                exited = True
        if not exited:
            await _terminate(server.pid, server.process, server.is_alive, server.pidfd)
        log.info("stopped %s (pid %d)", server.model, server.pid)
        # a scan of /proc (~5 ms for 100 processes at load 5): off the loop. It never fails a stop: the other
        # servers' stops and the agent's own shutdown (http, metrics, store) must still run
        stub = self.log_dir.parent / "triton" / "backends" / "python" / STUB_NAME
        copies = [server.stub] if server.stub else []
        try:
            ended = await asyncio.to_thread(end_leftover_stubs, server.pid, stub, exited, copies)
        except Exception:
            log.exception("the sweep for Triton backend stubs left by %s (pid %d) failed", server.model, server.pid)
            return
        if ended:
            log.warning("ended %d Triton backend stub(s) left running by %s (pid %d)", ended, server.model, server.pid)

    async def list(self) -> list[Instance]:
        for model in {s.model for s in self._servers.values()}:
            bound_log(self.log_dir / f"{model}.log", self.log_max_bytes)
        return [self._instance(s) for s in self._servers.values()]

    def _carry_priority(self, pid: int, ticks: int) -> None:
        """Give a server just started this agent's priority (``carry_priority``): at once where the kernel allows
        it, else in a task of its own, so no start waits on the kernel's 100 ms window."""
        if keep_priority(pid) is not None:
            return
        task = asyncio.get_running_loop().create_task(carry_priority(pid, ticks))
        self._priority_tasks.add(task)
        task.add_done_callback(self._priority_tasks.discard)

    async def close(self) -> None:
        for task in list(self._priority_tasks):
            task.cancel()
        for instance_id in list(self._servers):
            await self.stop(instance_id)


def bound_log(path: Path, limit: int) -> bool:
    """Cut ``path`` in place when it is larger than ``limit``: its last ``limit`` bytes replace ``<path>.1`` and
    it is truncated to 0 (as the stand-in's own rotation, one old file kept). Returns whether it was cut.

    In place (copy, then truncate) because the server keeps the file open: renamed, the server would go on
    writing to the renamed file. The servers write in append mode, so their next write lands at the new end,
    not at their old offset (no hole). What a server writes between the copy and the truncation is lost; when
    the copy fails (a full disk) the file is cut all the same, and nothing here raises: it runs in every
    reconcile round."""
    try:
        size = path.stat().st_size
    except OSError:
        return False
    if size <= limit:
        return False
    old = path.with_name(path.name + ".1")
    try:
        with open(path, "rb") as f:
            f.seek(size - limit)
            tail = f.read(limit)
        tmp = path.with_name(path.name + ".1.tmp")
        tmp.write_bytes(tail)
        tmp.replace(old)
    except OSError as exc:
        log.warning("model server log %s: its end not kept (%s), cut all the same", path, exc)
    try:
        os.truncate(path, 0)
    except OSError as exc:
        log.warning("model server log %s could not be cut: %s", path, exc)
        return False
    log.info("cut model server log %s at %d bytes (its last %d bytes are in %s)", path, size, limit, old.name)
    return True


def recorded_server_pids(data_dir: Path) -> list[int]:
    """PIDs of the model servers an agent's process runtime recorded under ``data_dir``, still running.

    For whoever started that agent and must clean up after it died (tests, the demo, the test bed).
    """
    try:
        entries = json.loads((data_dir / "process-runtime.json").read_text())
    except (OSError, ValueError, RecursionError):
        return []
    servers = [_record(e) for e in entries] if isinstance(entries, list) else []
    return [s.pid for s in servers if s is not None and s.is_alive()]


def _record(entry: object) -> _Server | None:
    """One entry of process-runtime.json, or None when it is malformed (never raises: the agent reads the file at
    start, and a damaged one must not stop it starting: review19b F3).

    A PID outside 1..PID_MAX_LIMIT (which os.pidfd_open would refuse with OverflowError) or a start time that is not
    a finite non-negative whole number drops the record: no process of ours can be named by it. A malformed ``stub``
    only loses the stub (logged): the record's server is still adopted or stopped, not left running on its port."""
    if not isinstance(entry, dict):
        return None
    e = entry
    try:
        pid, ticks = int(e["pid"]), int(e.get("ticks") or 0)
        server = _Server(
            str(e["id"]), str(e["model"]), pid, int(e["port"]), int(e["term"]), float(e["started_at"]), ticks=ticks
        )
    except (KeyError, TypeError, ValueError, IndexError, OverflowError):
        return None
    if not 1 <= pid <= PID_MAX_LIMIT or ticks < 0:
        return None
    stub = e.get("stub")
    if stub is not None:
        server.stub = _stub_id(stub)
        if server.stub is None:
            log.warning(
                "process-runtime.json: server %.80r (pid %d): malformed stub %.80r ignored", server.id, pid, stub
            )
    return server


def _stub_id(stub: object) -> tuple[int, int] | None:
    """A record's ``stub``: [st_dev, st_ino], two whole numbers in 0..2**64-1 (as _save writes them), or None."""
    if not isinstance(stub, list) or len(stub) != 2:
        return None
    if not all(isinstance(n, int) and not isinstance(n, bool) and 0 <= n < 2**64 for n in stub):
        return None
    return stub[0], stub[1]


def end_leftover_stubs(
    session: int, stub: Path, leader_gone: bool = False, copies: Iterable[tuple[int, int]] = ()
) -> int:
    """SIGKILL what a stopped server left running in its session: Triton's Python-backend stubs (the binary
    ``stub``, where this runtime copied it, or an earlier copy the server started with, ``copies``: its (st_dev,
    st_ino)), and remove the /dev/shm region each one names. Returns how many.

    A tritonserver stopped while it loads its model (within ~2 s of its start: an agent stopping, a plan changed)
    exits at once and may leave a stub behind that ignores SIGTERM and never exits (measured: 2 of 7 stops during
    load), ~37 MB resident and a 1 MiB region in /dev/shm each, for good. Every server starts in a session of its
    own (start_new_session): its stubs stay in it. The caller passes only the session of a server that was its own
    (its child, or an adopted one still alive before it was stopped). A member is ended only when the binary it runs
    (/proc/PID/exe, which no process can set for itself, unlike its argv) is one of our copies, known by its inode
    (os.stat follows /proc/PID/exe to the file even once it is deleted: an operator wiping DATA_DIR/triton, review18d
    F4; the " (deleted)" text readlink shows was matched before, which a file so named also passed: review18e); its
    regions are removed only then. The process is pinned by a pidfd (Linux >= 5.3) before it is checked, so a PID reused
    between the check and the kill is never signalled; without pidfds, os.kill. Errors (a member of another user:
    EPERM) are logged and the sweep goes on: it never raises.

    ``leader_gone``: the server was reaped before its stop, so a live process of PID ``session`` is another one (the
    PID reused): then nothing is swept, its session is not the stopped server's."""
    binaries = set(copies)
    current = _file_id(stub)
    if current is not None:
        binaries.add(current)
    if not binaries:
        return 0
    members = session_members(session)
    if leader_gone and any(pid == session for pid, _argv in members):
        return 0
    ended = 0
    for pid, _argv in members:
        if pid == session:
            continue
        try:
            if _end_stub(pid, session, binaries):
                ended += 1
        except OSError as exc:
            log.warning("could not end a Triton backend stub (pid %d) of session %d: %s", pid, session, exc)
    return ended


def _end_stub(pid: int, session: int, binaries: set[tuple[int, int]]) -> bool:
    """End ``pid`` and remove the regions it names when it is still a member of ``session`` running one of
    ``binaries`` ((st_dev, st_ino) of our stub copies)."""
    try:
        pidfd = _pidfd_open(pid)
    except ProcessLookupError:  # exited since it was listed: nothing to end (review18d F3)
        return False
    try:
        argv = _stub_argv(pid, session, binaries)  # checked after the pidfd is held: the same process is signalled
        if argv is None:
            return False
        try:
            if pidfd is not None:
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            else:
                os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    finally:
        if pidfd is not None:
            os.close(pidfd)
    for region in argv[1:]:
        if region.startswith(STUB_SHM_PREFIX) and "/" not in region:
            try:
                os.unlink(Path("/dev/shm") / region)
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.warning("could not remove /dev/shm/%s of a Triton backend stub (pid %d): %s", region, pid, exc)
    return True


def _pidfd_open(pid: int) -> int | None:
    """A pidfd for ``pid`` (it names that process even after the PID is reused), or None where there are none
    (Linux < 5.3, not Linux); a process already gone raises ProcessLookupError."""
    if not hasattr(os, "pidfd_open") or not hasattr(signal, "pidfd_send_signal"):
        return None
    try:
        return os.pidfd_open(pid)
    except ProcessLookupError:
        raise
    except OSError as exc:
        if exc.errno in (errno.ENOSYS, errno.EPERM, errno.EINVAL):
            return None
        raise


def _stub_argv(pid: int, session: int, binaries: set[tuple[int, int]]) -> list[str] | None:
    """``pid``'s command line when it is a member of ``session`` whose executable is one of ``binaries`` (by
    (st_dev, st_ino): a copy removed or replaced since the stub started is still known by its inode), else None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        if int(stat.rsplit(")", 1)[1].split()[3]) != session:
            return None
        exe = os.stat(f"/proc/{pid}/exe")
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
        return None
    if (exe.st_dev, exe.st_ino) not in binaries:
        return None
    return [a for a in argv if a]


def _file_id(path: Path) -> tuple[int, int] | None:
    """(st_dev, st_ino) of the file at ``path`` (links followed), or None when there is none."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def session_members(session: int) -> list[tuple[int, list[str]]]:
    """Processes whose session is ``session`` (/proc/PID/stat field 6), with their command lines."""
    try:
        pids = [int(name) for name in os.listdir("/proc") if name.isdigit()]
    except OSError:
        return []
    members = []
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[3]) != session:
                continue
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
        except (OSError, IndexError, ValueError):
            continue
        members.append((pid, [a for a in argv if a]))
    return members


def start_ticks(pid: int) -> int | None:
    """When ``pid`` started, in clock ticks since boot (/proc/PID/stat field 22); None when there is no such PID."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat.rsplit(")", 1)[1].split()[19])  # the name (field 2) may hold spaces and ')': cut after it
    except (OSError, IndexError, ValueError):
        return None


def _is_our_server(pid: int, model: str, port: int, ticks: int, started_at: float) -> bool:
    """Whether ``pid`` is still the model server recorded: same start time, and a command line that is ours.

    A record without ``ticks`` (written before they were kept) needs a start within LEGACY_SLACK_S before
    ``started_at`` instead."""
    now_ticks = start_ticks(pid)
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    if now_ticks is None:
        return False
    if ticks:
        if now_ticks != ticks:
            return False
    else:
        started = _boot_time() + now_ticks / os.sysconf("SC_CLK_TCK")
        if not started_at - LEGACY_SLACK_S <= started <= started_at + 2.0:
            return False
    return _argv_is_server(argv, model, port)


def _argv_is_server(argv: list[bytes], model: str, port: int) -> bool:
    """A stand-in started for ``model`` (``-m agent.modelserver ... --name model``), or tritonserver on ``port``
    serving ``model``'s repository."""
    args = [a.decode(errors="replace") for a in argv]
    if any(a == "-m" and b == "agent.modelserver" for a, b in itertools.pairwise(args)):
        return any(a == "--name" and b == model for a, b in itertools.pairwise(args))
    if args and args[0].endswith("/tritonserver"):
        repository = next((a for a in args if a.startswith("--model-repository=")), "")
        return f"--http-port={port}" in args and repository.endswith(f"/repos/{model}")
    return False


def _boot_time() -> float:
    """When this machine booted, seconds since the epoch (/proc/stat btime)."""
    import psutil

    return float(psutil.boot_time())


def tree_rss_mb(pid: int) -> float | None:
    """Resident memory of ``pid`` and its descendants (Triton's backend stubs are children), in MiB."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return None
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            continue
    return round(total / 2**20, 1)


# The kernel lets a writer without CAP_SYS_ADMIN set an autogroup's nice once per 100 ms, machine-wide: a second
# server started in that window (up to max_parallel_starts at once; other agents on the machine share the window)
# gets EAGAIN and is tried again, after a jittered wait, while its start time still says it is the same process.
PRIORITY_RETRY_S = 0.11
PRIORITY_TRIES = 40  # 40 x 0.11-0.22 s: 4.4-8.8 s, past what the machine's other writers could hold the window for


def keep_priority(pid: int) -> bool | None:
    """Give the session of server ``pid`` (started with start_new_session) this agent's CPU priority: True if set,
    False where there is nothing to set or it cannot be, None where the kernel said to try again (EAGAIN).

    With the kernel's autogroup scheduling (sched(7); on by default in most distributions' kernels, this machine's
    included) every session is a group of its own, and the scheduler shares the CPU between groups first: a nice
    value only orders processes within their group, and a new session's group starts at nice 0. So an agent run under
    ``nice -n 19`` (as the test suite runs tiers beside its timed tests) started model servers that competed with the
    whole machine at full weight, however low the agent's own priority. The server's group gets the agent's nice.
    Only a lower priority than the default is carried (a higher one needs CAP_SYS_NICE, and an agent at nice 0 has
    nothing to carry). Where the kernel has no autogroup (no file, or ``kernel.sched_autogroup_enabled = 0``, where
    the plain nice the server inherited applies) nothing changes and the server runs as before."""
    niceness = os.getpriority(os.PRIO_PROCESS, 0)
    if niceness <= 0:
        return False
    try:
        Path(f"/proc/{pid}/autogroup").write_text(f"{niceness}\n")
    except OSError as exc:
        return None if exc.errno == errno.EAGAIN else False
    return True


async def carry_priority(pid: int, ticks: int) -> bool:
    """``keep_priority`` for a server just started, tried again after EAGAIN (review27c L1: of four servers started
    at once by an agent not run as root, only the first got its nice) while ``pid`` is still the process that
    started at ``ticks`` (its start time: a PID reused by another process is left alone). Whether it was set."""
    for _ in range(PRIORITY_TRIES):
        if start_ticks(pid) != ticks:
            return False
        done = keep_priority(pid)
        if done is not None:
            return done
        await asyncio.sleep(PRIORITY_RETRY_S * (1 + random.random()))  # jitter: agents on one machine share it
    return False


def _server_pidfd(pid: int) -> int | None:
    """A pidfd for a server just spawned or about to be adopted; None where there are none, it is gone already, or
    none could be opened (EMFILE, ENFILE, ENOMEM: an agent near its fd limit; logged). It never raises: raised right
    after a spawn, the server would run on unrecorded, an orphan on its port (review19b F5). Without a pidfd a stop
    signals the PID while its start time and command line still match the record."""
    try:
        return _pidfd_open(pid)
    except (ProcessLookupError, OverflowError):  # OverflowError: a PID outside C int range (a damaged record)
        return None
    except OSError as exc:
        log.warning("no pidfd for model server pid %d (%s): its stop checks its start time and command line", pid, exc)
        return None


def _close_pidfd(server: _Server) -> None:
    if server.pidfd is not None:
        os.close(server.pidfd)
        server.pidfd = None


def _send(pid: int, pidfd: int | None, sig: int) -> None:
    """``sig`` to the process: through its pidfd when there is one (never to another that took the PID over: a gone
    process raises ProcessLookupError), else os.kill."""
    if pidfd is not None:
        signal.pidfd_send_signal(pidfd, sig)
    else:
        os.kill(pid, sig)


async def _terminate(
    pid: int, proc: asyncio.subprocess.Process | None, alive: Callable[[], bool], pidfd: int | None = None
) -> None:
    """SIGTERM, then SIGKILL after STOP_TIMEOUT_S; only the given pid, while ``alive`` says it is still ours; through
    ``pidfd`` when given: a process gone (reaped) is never signalled, whatever holds its PID now."""
    try:
        _send(pid, pidfd, signal.SIGTERM)
    except ProcessLookupError:
        if pidfd is not None and proc is None:
            return  # gone: whatever now holds the PID (alive() may say "ours") is not it
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await aio.wait_for(proc.wait(), 0.05)
            if proc.returncode is not None:
                return
        elif not alive():
            return
        else:
            await asyncio.sleep(0.05)
    if proc is None and not alive():
        return
    with contextlib.suppress(ProcessLookupError):
        _send(pid, pidfd, signal.SIGKILL)
    if proc is not None:
        await proc.wait()
