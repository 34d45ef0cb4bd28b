"""The leader's solver process: spawned when this node becomes leader, stopped when it steps down.

A follower keeps no solver in memory (numpy, Ipopt, SciPy: ~75 MB). ``SolverWorker.start`` spawns
``python -m agent.solver_worker``, which warms itself up (imports and a small solve, then freezes the
garbage collector's view of that long-lived heap; it also keeps freed memory in its heap, see
``solver.fastlp.tune_solver_process``) while the agent carries on; ``stop`` ends it.

Protocol, one JSON object per line: request ``{"snapshot": {...}, "method": str, "mode": str, "held": {...}}``
(``held``: node -> model -> count, the leader's status quo; absent: the snapshot's running instances) on the
worker's stdin; reply ``{"plan": {...}, "fallback": str}`` (``fallback`` names the missing solver when
least-loaded stood in for it; under a queue objective the plan carries ``running_value``, the running
instances valued by solver.hold for the leader's hysteresis) or ``{"error": str}`` on its stdout. A request may
carry ``{"window": {...}, "build": {...}}`` instead of the snapshot: the worker updates its copy of the leader's
request window (agent.window_sync; it holds what the window holds, up to 50,000 records and 16 MiB of them by
default), builds the snapshot itself and adds ``"requests"`` (the snapshot's count) and ``"window_bytes"`` (its
copy's bytes) to the reply; a window message that does not follow its copy gets ``{"error": str, "resync": true}``
and the leader sends the whole window. The
worker exits at end of input and dies with the agent (PR_SET_PDEATHSIG), even when it is SIGKILLed. Solving happens in
another process because the solver holds the GIL for the length of a solve, which would stall the API.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import gc
import json
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterable, Mapping
from itertools import chain
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agent.window_sync import WindowBuild, WorkerWindow
    from solver.hold import LastSplit

log = logging.getLogger(__name__)

MAX_REPLY_BYTES = 64 * 1024 * 1024  # a plan for thousands of requests is well under 1 MB
STOP_GRACE_S = 2.0


class SolverWorkerError(RuntimeError):
    """The worker could not solve: the solver raised, the reply was malformed or too big, or it died."""


class SolverStopped(SolverWorkerError):
    """No solve, because this node does not lead (any more): a round that outlived its leadership, not a fault."""


class SolverWorker:
    """One solver process at a time, owned by the agent; ``solve`` is safe to await from the event loop."""

    def __init__(self, method: str = "ipopt", max_reply_bytes: int = MAX_REPLY_BYTES) -> None:
        self.method = method
        self.max_reply_bytes = max_reply_bytes
        self._proc: subprocess.Popen[bytes] | None = None
        self._wanted = False  # between start() and stop(): a dead worker is replaced on the next solve
        self._lock = threading.Lock()  # one request in flight: the pipe carries one reply at a time
        self._synced: tuple[int, int] | None = None  # (worker pid, window sequence) its window copy is at
        self.resets = 0  # window requests sent whole (a new worker, a refused delta, a journal gap)
        self.window_bytes = 0  # the worker's copy of the window after the last round, as its byte budget counts it

    @property
    def pid(self) -> int | None:
        """The worker's PID while it runs, else None."""
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    def start(self) -> None:
        """Spawn the worker (it warms up on its own); no-op while one runs. Call from the event loop thread."""
        self._wanted = True
        if self.pid is not None:
            return
        # PR_SET_PDEATHSIG fires when the spawning *thread* exits, so spawn from the long-lived loop thread.
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "agent.solver_worker", "--warm-up", self.method, "--parent", str(os.getpid())],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            close_fds=True,
        )
        log.info("solver worker started (pid %d)", self._proc.pid)

    def stop(self) -> None:
        """End the worker now (a solve in flight fails) and start none until ``start``; reaped in the background."""
        self._wanted = False
        self._kill()

    def _kill(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        _end(proc)
        threading.Thread(target=_reap, args=(proc,), name="solver-worker-reaper", daemon=True).start()
        log.info("solver worker stopped (pid %d)", proc.pid)

    async def close(self) -> None:
        """Stop the worker and wait until it has exited."""
        self._wanted = False
        proc, self._proc = self._proc, None
        if proc is not None:
            _end(proc)
            await asyncio.to_thread(_reap, proc)

    async def solve(
        self, snapshot: dict[str, Any], method: str, mode: str, held: Mapping[str, Mapping[str, int]] | None = None
    ) -> tuple[dict[str, Any], str]:
        """(plan as a dict, fallback reason or ''); replaces a dead worker. Raises SolverWorkerError.

        Only between ``start`` and ``stop``: a round still in flight when the node stepped down must not
        bring a solver back onto a follower.
        """
        if not self._wanted:
            raise SolverStopped("no solver worker: this node does not lead")
        self.start()
        proc = self._proc
        assert proc is not None
        request = json.dumps({"snapshot": snapshot, "method": method, "mode": mode, "held": held}).encode() + b"\n"
        try:
            reply = await asyncio.to_thread(self._round_trip, proc, request)
        except SolverWorkerError:
            if proc is self._proc and proc.poll() is None:
                self._kill()  # a half-read pipe cannot be trusted; the next solve starts afresh
            raise
        if "error" in reply:
            raise SolverWorkerError(str(reply["error"]))
        return reply["plan"], str(reply.get("fallback", ""))

    async def solve_window(
        self, build: WindowBuild, method: str, mode: str, held: Mapping[str, Mapping[str, int]] | None = None
    ) -> tuple[dict[str, Any], str, int]:
        """(plan, fallback, requests in the snapshot): the worker builds the snapshot from its copy of the window
        (agent.window_sync), updated by ``build.delta``, or reset to ``build.records`` when it is not at the delta's
        base (a new worker, a refused delta, a journal gap). Raises SolverWorkerError, like ``solve``."""
        if not self._wanted:
            raise SolverStopped("no solver worker: this node does not lead")
        self.start()
        proc = self._proc
        assert proc is not None
        tail = json.dumps({"build": build.inputs.to_json(), "method": method, "mode": mode, "held": held})
        reply = await asyncio.to_thread(self._window_round_trip, proc, build, tail)
        if "error" in reply:
            raise SolverWorkerError(str(reply["error"]))
        return reply["plan"], str(reply.get("fallback", "")), int(reply.get("requests", 0))

    def _window_round_trip(self, proc: subprocess.Popen[bytes], build: WindowBuild, tail: str) -> dict[str, Any]:
        """One request with the window's delta (a reset where the worker is not at its base; once more as a reset
        when the worker refuses the delta). Runs in a thread: the encoding lets the event loop in between chunks, and
        is written to the worker a chunk at a time (the serving process never holds a whole window's text: at a
        16 MiB window that text is ~22 MiB, and was held three times over while it was put together)."""
        from agent.window_sync import delta_parts, reset_parts

        delta = build.delta
        for reset in (self._synced != (proc.pid, delta.base) or delta.gap, True):
            window = reset_parts(build.records, delta.seq, build.config) if reset else delta_parts(delta)
            if reset:
                self.resets += 1
                log.info("solver worker gets the whole request window (%d records)", len(build.records))
            self._synced = None  # until the worker says it applied this one
            pieces = (p.encode() for p in chain(('{"window":',), window, (f",{tail[1:]}\n",)))
            try:
                reply = self._round_trip(proc, pieces)
            except Exception:  # unreachable, or a request not written whole: the pipe cannot be trusted
                if proc is self._proc and proc.poll() is None:
                    self._kill()
                raise
            if isinstance(reply.get("window_bytes"), int):
                self.window_bytes = reply["window_bytes"]
            if not reply.get("resync"):
                if reply.get("window_seq") == delta.seq:  # applied, whether or not the build or the solve failed
                    self._synced = (proc.pid, delta.seq)
                return reply
            if reset:
                break
        return reply

    def _round_trip(self, proc: subprocess.Popen[bytes], request: bytes | Iterable[bytes]) -> dict[str, Any]:
        """Write one request line (whole, or piece by piece as it is encoded) and read the reply line."""
        assert proc.stdin is not None and proc.stdout is not None
        with self._lock:
            try:
                for piece in (request,) if isinstance(request, bytes) else request:
                    proc.stdin.write(piece)
                proc.stdin.flush()
                line = proc.stdout.readline(self.max_reply_bytes + 1)
            except (OSError, ValueError) as exc:
                if not self._wanted:  # stop() closed the pipe while the request was still being written or read
                    raise SolverStopped("solver worker stopped: this node stepped down") from exc
                raise SolverWorkerError(f"solver worker unreachable: {exc}") from exc
        if not line:
            if not self._wanted:
                raise SolverStopped("solver worker stopped: this node stepped down")
            raise SolverWorkerError(f"solver worker exited (status {proc.poll()})")
        if len(line) > self.max_reply_bytes or not line.endswith(b"\n"):
            raise SolverWorkerError(f"solver worker reply over {self.max_reply_bytes} bytes")
        try:
            reply = json.loads(line)
        except ValueError as exc:
            raise SolverWorkerError(f"malformed reply from the solver worker: {exc}") from exc
        if not isinstance(reply, dict) or not ("error" in reply or isinstance(reply.get("plan"), dict)):
            raise SolverWorkerError("malformed reply from the solver worker")
        return reply


def _end(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(OSError, ValueError):
        if proc.stdin is not None:
            proc.stdin.close()  # the worker exits at end of input
    with contextlib.suppress(OSError):
        proc.terminate()


def _reap(proc: subprocess.Popen[bytes]) -> None:
    try:
        proc.wait(STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


# -- the worker process ------------------------------------------------------------------------------


def solve_request(request: Any, mirror: WorkerWindow | None = None, last: LastSplit | None = None) -> dict[str, Any]:
    """One reply for one request; falls back to least-loaded when Ipopt/HiGHS are not installed. A request with a
    ``window`` (and ``build``) instead of a ``snapshot`` updates ``mirror`` and builds the snapshot from it; a
    window message that does not follow the mirror's state is answered ``{"error": .., "resync": true}``. ``last``
    (solver.hold.LastSplit): the running value's split kept between rounds, its next warm start beside the plan's."""
    from agent.window_sync import BuildInputs, WindowSyncError, WorkerWindow
    from solver import Snapshot, SolverUnavailableError
    from solver.api import solve

    if not isinstance(request, dict):
        return {"error": "request is not a JSON object"}
    built: int | None = None
    if "window" in request:
        mirror = mirror if mirror is not None else WorkerWindow()
        try:
            mirror.apply(request.pop("window"))  # taken out: its text is not held through the build
        except WindowSyncError as exc:
            return {"error": str(exc), "resync": True}
        snapshot = BuildInputs.from_json(request["build"]).build(mirror.records())
        request, built = {**request, "snapshot": snapshot}, len(snapshot["requests"])
    snap = Snapshot.from_dict(request.get("snapshot"))
    method, mode = str(request.get("method", "ipopt")), str(request.get("mode", "1"))
    try:
        solved = solve(snap, method=method, mode=mode)
    except SolverUnavailableError as exc:
        plan = solve(snap, method="least-loaded", mode=mode).to_dict()
        return {"plan": plan, "fallback": str(exc), **({} if built is None else {"requests": built})}
    plan = solved.to_dict()
    if snap.objective in ("queue", "queue-p99"):  # the status quo's value, for the leader's hysteresis
        from solver.hold import LastSplit, parse_counts, value_running

        last = last if last is not None else LastSplit()
        starts = {"plan": solved.shares, "last round": last.shares_for(snap)}  # warm starts (solver.hold)
        value = value_running(snap, parse_counts(request.get("held")), starts=starts)
        last.keep(snap, value)
        plan["running_value"] = value.to_dict()
    return {"plan": plan, "fallback": ""} if built is None else {"plan": plan, "fallback": "", "requests": built}


def warm_up(method: str) -> None:
    """Import and initialise the solver once, so the first round is not seconds of imports."""
    try:
        from solver.api import solve
        from solver.simulate import thesis_instance

        solve(thesis_instance(25, 10, 0), method=method)
    except Exception as exc:  # a missing solver shows up (and falls back) in the first round instead
        log.debug("solver warm-up failed: %s", exc)
    gc.collect()
    gc.freeze()  # the imported heap is long-lived: later collections need not scan it


def _die_with_parent(parent: int | None) -> None:
    """SIGKILL when the agent dies; exit now if it died already (we were reparented: to init, or to a
    subreaper such as a container's init or a test runner, so the check is against the agent's PID)."""
    pr_set_pdeathsig = 1
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() == 1 or (parent is not None and os.getppid() != parent):  # the agent died before we got here
        os._exit(0)


def _protocol_stdout() -> IO[str]:
    """The reply channel; fd 1 itself is pointed at stderr so that no library print can corrupt it."""
    out = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    return out


def serve(requests: IO[bytes], replies: IO[str]) -> None:
    """Answer requests line by line until end of input."""
    from agent.window_sync import WorkerWindow
    from solver.hold import LastSplit

    mirror = WorkerWindow()  # the leader's request window, kept between rounds (agent.window_sync)
    last = LastSplit()  # the running value's split, the next round's warm start
    for line in requests:
        try:
            request = json.loads(line)
            del line  # the text, as long as a whole-window message: not held while the window is replayed
            reply = solve_request(request, mirror, last)
            del request
        except Exception as exc:  # a bad request or a solver failure: report it, keep serving
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        if mirror.seq >= 0:
            reply["window_seq"] = mirror.seq  # where the copy stands: a failed build or solve needs no resend
        if mirror.window is not None:
            reply["window_bytes"] = mirror.window.nbytes  # what its copy holds (bounded as the leader's window)
        replies.write(json.dumps(reply) + "\n")
        replies.flush()


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m agent.solver_worker``."""
    ap = argparse.ArgumentParser(description="The leader's placement solver process (JSON lines on stdin/stdout).")
    ap.add_argument("--warm-up", metavar="METHOD", default="ipopt", help="solver method to warm up (default ipopt)")
    ap.add_argument("--parent", type=int, default=None, help="the agent's PID: exit at once if it is gone")
    args = ap.parse_args(argv)
    # First, before any heavy import (the window's and the solver's are imported where they are used, not at the
    # top: they took this process 1.2 s to reach here on a loaded 2-core machine, all that time outliving a dead
    # agent)
    _die_with_parent(args.parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C on the agent's terminal is the agent's to handle
    replies = _protocol_stdout()
    from solver.fastlp import tune_solver_process

    tune_solver_process()
    warm_up(args.warm_up)
    serve(sys.stdin.buffer, replies)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
