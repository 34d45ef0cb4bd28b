"""A model server that stalls, hangs or dies under a real agent (process runtime, the digits stand-in).

review12d F2: one missed readiness probe replaced any server up longer than ``instance_ready_timeout_s``.
review12d F5: a killed server's URL was handed out, and refused (502 without Retry-After), until the next round.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from typing import Any
from urllib.parse import urlsplit

from tests.service.conftest import PLAIN

ROW = {"instances": [[0.0] * 64]}


def _servers(a: Any) -> list[dict[str, Any]]:
    return [i for i in a.get("/stats/node").json()["instances"] if i["model"] == "digits"]


def _server(a: Any) -> dict[str, Any]:
    [inst] = _servers(a)
    return inst


def _provision(a: Any) -> tuple[dict[str, Any], int]:
    r = PLAIN.post(f"{a.url}/v1/models/digits:predict", json=ROW, timeout=30)
    assert r.status_code == 200, r.text
    a.wait_ready("digits")
    [pid] = a.server_pids()
    return _server(a), pid


def _refuses(url: str) -> bool:
    parts = urlsplit(url)
    try:
        socket.create_connection((parts.hostname, parts.port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    except ConnectionResetError:  # a connect racing the killed listener's close (seen once in CI): ask again
        return False
    return False


def test_a_stall_shorter_than_the_timeout_keeps_the_server_and_a_hang_replaces_it(agents: Any) -> None:
    env = {"PEERSERVE_INSTANCE_READY_TIMEOUT_S": "8", "PEERSERVE_RECONCILE_INTERVAL_S": "0.5"}
    a = agents("a", "--no-discovery", env=env)
    first, pid = _provision(a)
    time.sleep(max(0.0, first["started_at"] + 10 - time.time()))  # older than the timeout, as in review12d's run
    os.kill(pid, signal.SIGSTOP)
    try:
        deadline = time.monotonic() + 4.5
        left_ready = False
        while time.monotonic() < deadline and not left_ready:
            left_ready = not _server(a)["ready"]  # its probe failed: out of the ready set, not yet replaced
            time.sleep(0.2)
    finally:
        os.kill(pid, signal.SIGCONT)
    assert left_ready
    a.wait_ready("digits", timeout=10)
    assert _server(a)["id"] == first["id"] and a.server_pids() == [pid]  # the stall cost no restart
    assert "not AVAILABLE" not in a.log.read_text()
    # Hung for good: replaced once it has not been ready for the timeout (8 s from its last good probe).
    os.kill(pid, signal.SIGSTOP)
    hung_at = time.monotonic()
    try:
        deadline = hung_at + 40
        while time.monotonic() < deadline and first["id"] in {i["id"] for i in _servers(a)}:
            time.sleep(0.2)
        replaced_after = time.monotonic() - hung_at
    finally:
        with contextlib.suppress(ProcessLookupError):  # the runtime's stop has ended it (SIGKILL ends a stopped pid)
            os.kill(pid, signal.SIGCONT)
    assert first["id"] not in {i["id"] for i in _servers(a)}, "a server hung for good was never replaced"
    print(f"hung for good: replaced {replaced_after:.1f} s after the stop")
    # the timeout from its last good probe (up to a round before the stop), then the stop (SIGTERM waits 5 s)
    assert 7 <= replaced_after <= 30
    assert "not AVAILABLE for 8 s" in a.log.read_text()
    a.wait_ready("digits", timeout=10)


def test_a_killed_server_leaves_the_ready_set_at_its_first_refusal_and_clients_are_told_to_retry(agents: Any) -> None:
    # No periodic round within the test: only the refusal can have woken the loop that replaces the server.
    a = agents("a", "--no-discovery", env={"PEERSERVE_RECONCILE_INTERVAL_S": "120"})
    first, pid = _provision(a)
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while not _refuses(first["url"]) and time.monotonic() < deadline:
        time.sleep(0.02)
    r = PLAIN.post(f"{a.url}/v1/models/digits:predict", json=ROW, timeout=30)
    assert r.status_code == 503, r.text
    assert r.headers["retry-after"] == "1" and r.headers["x-peerserve-error"] == "provisioning"
    assert r.json() == {"error": r.json()["error"]} and "refused the connection" in r.json()["error"]
    assert "refused a connection" in a.log.read_text()
    # The refusal woke the reconcile loop: a replacement is ready long before the 120 s round.
    began = time.monotonic()
    again = PLAIN.post(f"{a.url}/v1/models/digits:predict", json=ROW, timeout=30)
    assert again.status_code == 200, again.text
    assert time.monotonic() - began < 10
    now = _server(a)
    assert now["ready"] and now["id"] != first["id"] and now["url"] != first["url"]
    svc = a.get("/services/digits").json()
    assert svc["url"] == now["url"]
    assert "model server exited" in a.log.read_text()  # the replacement counts as a failure, once
