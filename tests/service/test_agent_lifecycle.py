"""Restart and restore, graceful shutdown, catalogue reload: a real agent process killed and restarted."""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from agent.catalogue import builtin_catalogue_text
from tests.service.test_agent_api import BROKEN, _catalogue
from tests.waiting import wait_for

# scripts/test.sh runs it with nothing else: a fixed loopback address (127.0.0.10)
pytestmark = pytest.mark.serial


def _alive(pid: int) -> bool:
    try:
        return b"agent.modelserver" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def test_power_cut_restores_desired_set_and_adopts_servers(agents: Any) -> None:
    a = agents("a", "--no-discovery")
    assert a.put_desired(4, {"half_plus_two": 1, "xor_mlp": 1}).status_code == 200
    before = {i["model"]: i["id"] for m in ("half_plus_two", "xor_mlp") for i in a.wait_ready(m)}
    pids = a.server_pids()
    assert a.stop(signal.SIGKILL) == -signal.SIGKILL  # a power cut for the agent
    assert all(_alive(p) for p in pids)  # model servers run in their own session
    a.start()
    after = {i["model"]: i["id"] for m in ("half_plus_two", "xor_mlp") for i in a.wait_ready(m)}
    assert after == before  # adopted, not restarted
    assert a.get("/stats/node").json()["desired"] == {"half_plus_two": 1, "xor_mlp": 1}
    stale = a.put_desired(3, {})
    assert stale.status_code == 409  # the fencing term survived the restart too
    assert a.put_desired(5, {"xor_mlp": 1}).status_code == 200
    # half_plus_two's server stopped, xor_mlp's kept, as the agent lists them and as the processes are. (It waited
    # for the first recorded PID to end: half the time xor_mlp's, which never does (15 s), the other half
    # half_plus_two's, and then read the list before the agent had dropped it.)
    wait_for(lambda: [i["model"] for i in a.get("/stats/node").json()["instances"]] == ["xor_mlp"], 15)
    wait_for(lambda: [_alive(p) for p in pids].count(True) == 1, 15)


def test_graceful_shutdown_stops_owned_servers(agents: Any) -> None:
    a = agents("a", "--no-discovery")
    a.put_desired(1, {"half_plus_three": 2})
    a.wait_ready("half_plus_three", 2)
    pids = a.server_pids()
    assert len(pids) == 2
    # uvicorn re-raises SIGTERM after a clean shutdown, as systemd expects
    assert a.stop(signal.SIGTERM) in (0, -signal.SIGTERM)
    assert "Application shutdown complete" in a.log.read_text()
    assert not any(_alive(p) for p in pids)


def test_restart_after_graceful_stop_starts_the_desired_set_again(agents: Any) -> None:
    a = agents("a", "--no-discovery")
    a.put_desired(1, {"half_plus_two": 1})
    a.wait_ready("half_plus_two")
    a.stop(signal.SIGTERM)
    a.start()
    assert len(a.wait_ready("half_plus_two")) == 1


def test_catalogue_reload_without_restart_and_broken_file_keeps_last_good(agents: Any, tmp_path: Path) -> None:
    f = tmp_path / "catalogue.toml"
    f.write_text(builtin_catalogue_text())
    a = agents("a", "--catalogue", str(f))
    v1 = a.get("/health").json()["catalogue"]["version"]
    f.write_text(builtin_catalogue_text().replace('name = "xor_mlp"', 'name = "xor_net"'))
    os.utime(f, (time.time() + 5, time.time() + 5))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and "xor_net" not in a.get("/health").json()["catalogue"]["models"]:
        time.sleep(0.2)
    health = a.get("/health").json()
    assert "xor_net" in health["catalogue"]["models"] and health["catalogue"]["version"] != v1
    assert a.get("/services/xor_net").status_code == 200
    f.write_text("[[models]\nbroken")
    os.utime(f, (time.time() + 10, time.time() + 10))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and a.get("/health").json()["catalogue"]["error"] is None:
        time.sleep(0.2)
    health = a.get("/health").json()
    assert health["status"] == "degraded" and "not valid TOML" in health["catalogue"]["error"]
    assert "xor_net" in health["catalogue"]["models"]
    assert a.get("/services/xor_net").status_code == 200
    assert "catalogue reload failed" in a.log.read_text()


def test_broken_catalogue_at_start_is_a_usage_error(agents: Any, tmp_path: Path) -> None:
    import subprocess
    import sys

    f = tmp_path / "bad.toml"
    f.write_text("models = 3")
    out = subprocess.run(
        [sys.executable, "-m", "peerserve", "agent", "--catalogue", str(f), "--data-dir", str(tmp_path / "d")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 2 and "models" in out.stderr


def test_solver_worker_dies_with_a_killed_agent(agents: Any) -> None:
    import psutil

    a = agents("a", host="127.0.0.10")
    assert a.proc is not None
    deadline = time.monotonic() + 20  # alone, it leads after an election timeout; the worker is the leader's
    workers: list[psutil.Process] = []
    while time.monotonic() < deadline and not workers:
        workers = [c for c in psutil.Process(a.proc.pid).children() if "agent.solver_worker" in c.cmdline()]
        time.sleep(0.1)
    assert workers, "the agent should run its solver in a worker process"
    a.stop(signal.SIGKILL)
    _gone, alive = psutil.wait_procs(workers, timeout=5)
    assert not alive, "a solver worker outlived its agent"


def _waiting_predict(port: int) -> socket.socket:
    """A predict for ``broken``, whose server never starts: its handler waits for it (provision_wait_s)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=15)
    body = b'{"instances": [1]}'
    sock.sendall(b"POST /v1/models/broken:predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)  # fmt: skip
    return sock


def test_a_stop_ends_the_waits_for_provisioning_at_once(agents: Any, tmp_path: Path) -> None:
    """suite19: uvicorn's shutdown waits up to 10 s (its graceful timeout) for every open request, and a handler
    waiting for a model started on demand for it waited on (provision_wait_s), its client gone or not: the stop
    took the 10 s. Now the stop ends those waits at once (NodeAgent.begin_shutdown): a client still there is
    answered 503 with Retry-After and why, one that left holds nothing, and the agent exits within seconds."""
    a = agents("a", "--no-discovery", "--catalogue", _catalogue(tmp_path, BROKEN), "--provision-wait-s", "60")
    assert a.proc is not None
    left, staying = _waiting_predict(a.port), _waiting_predict(a.port)
    wait_for(lambda: "broken" in a.get("/health").json()["failing_models"], 15)  # its start was tried and failed
    time.sleep(0.5)  # both handlers wait for it (60 s)
    left.close()  # this client leaves; its handler waits on
    began = time.monotonic()
    a.proc.send_signal(signal.SIGTERM)
    answer = b""
    with staying:
        while chunk := staying.recv(65536):  # the agent closes it after the answer
            answer += chunk
    assert a.proc.wait(15) in (0, -signal.SIGTERM)
    took = time.monotonic() - began
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503 "), (took, answer[:300])  # before: 500, cancelled after 10 s
    assert b"\r\nretry-after: 2" in head.lower() and b"\r\nx-peerserve-error: shutting_down" in head.lower()
    assert b"agent shutting down" in body
    assert took < 4.0, took  # 10 s and more before (uvicorn's graceful timeout, then the stop itself)
    assert "timeout graceful shutdown exceeded" not in a.log.read_text()
