"""Agents as local processes, for whoever runs several on one machine (`peerserve demo`, the namespace test
bed behind `peerserve chaos`, benches): one command line, one start with a log file, one stop (signal, wait,
kill), and the clean-up of the model servers an agent recorded, by PID from its data directory."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path


def agent_argv(node_id: str, host: str, port: int, data_dir: Path, token: str, *extra: str,
               peer_port: int | None = None) -> list[str]:  # fmt: skip
    """``python -m peerserve agent`` for one node (the peer port defaults to port + 1), then ``extra`` flags."""
    argv = [sys.executable, "-m", "peerserve", "agent", "--host", host, "--port", str(port), "--node-id", node_id,
            "--data-dir", str(data_dir), "--cluster-token", token]  # fmt: skip
    if peer_port is not None:
        argv += ["--peer-port", str(peer_port)]
    return [*argv, *extra]


def spawn(argv: Sequence[str], log: Path, env: dict[str, str] | None = None,
          new_session: bool = False) -> subprocess.Popen[bytes]:  # fmt: skip
    """Start ``argv`` with stdout and stderr appended to ``log`` and no stdin; ``env`` adds to ours."""
    with open(log, "ab") as out:
        return subprocess.Popen(list(argv), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env={**os.environ, **(env or {})}, start_new_session=new_session)  # fmt: skip


def stop(proc: subprocess.Popen[bytes] | None, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int | None:
    """Send ``sig`` if it still runs, wait up to ``timeout`` s, then SIGKILL; its exit status (None: none)."""
    if proc is None:
        return None
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def kill_servers(data_dir: Path, sig: int = signal.SIGKILL) -> list[int]:
    """Signal the model servers the agent of ``data_dir`` recorded and that still run; their PIDs."""
    from agent.runtime.process import recorded_server_pids

    pids = recorded_server_pids(data_dir)
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, sig)
    return pids
