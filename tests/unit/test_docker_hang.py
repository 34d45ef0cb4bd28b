"""DockerRuntime against a daemon that accepts and never answers (a hung dockerd), and the start time it reports.

review12a F4: a read timeout escaped as a raw requests exception (the client never reset, /health showing a
reconcile error instead of runtime.error) and Docker calls filled asyncio's default pool, which the leader's solver
round trips and the request-log flush share. F3: started_at came from Created, so after a reboot a container
restarted seconds ago looked days old and, still loading, was replaced as stuck."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import docker
import pytest

from agent.catalogue import ModelSpec
from agent.errors import RuntimeUnavailable
from agent.node import NodeAgent
from agent.runtime.docker import DOCKER_WORKERS, DockerRuntime, started_at
from agent.settings import load_settings

NEVER = "0001-01-01T00:00:00Z"  # what Docker reports for a time that never happened


def iso(t: float) -> str:
    """A time as the Engine writes it: UTC, nanoseconds, Z."""
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f") + "123Z"


def test_started_at_is_the_last_start_not_the_creation() -> None:
    now = time.time()
    restarted = {"Created": iso(now - 2 * 86400), "State": {"Status": "running", "StartedAt": iso(now - 5)}}
    assert abs(started_at(restarted) - (now - 5)) < 0.01  # restarted by the policy after a reboot: 5 s old
    never = {"Created": iso(now - 30), "State": {"Status": "created", "StartedAt": NEVER}}
    assert abs(started_at(never) - (now - 30)) < 0.01  # never started: its creation
    assert abs(started_at({"Created": iso(now - 30)}) - (now - 30)) < 0.01  # no State at all
    assert abs(started_at({"Created": iso(now - 30), "State": {"StartedAt": ""}}) - (now - 30)) < 0.01
    assert started_at({"Created": "garbage", "State": None}) == 0.0
    assert started_at({}) == 0.0


@pytest.fixture
def hung_socket() -> Iterator[str]:
    """A unix socket that accepts every connection and never writes a byte."""
    folder = Path(tempfile.mkdtemp(prefix="hung-", dir="/tmp"))  # short: a socket path has ~100 bytes
    path = folder / "docker.sock"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.listen(64)
    held: list[socket.socket] = []

    def accept() -> None:
        with contextlib.suppress(OSError):
            while True:
                held.append(server.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"unix://{path}"
    with contextlib.suppress(OSError):
        server.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread
    server.close()
    for conn in held:
        conn.close()
    shutil.rmtree(folder, ignore_errors=True)


def client_for(url: str, timeout: float) -> docker.DockerClient:
    return docker.DockerClient(base_url=url, version="1.41", timeout=timeout)  # no version query on creation


def spec() -> ModelSpec:
    return ModelSpec("half_plus_two", "peerserve/modelserver:latest", "half_plus_two", "/models/half_plus_two", 1, 64,
                     5, {"default": 1.0})  # fmt: skip


def test_a_read_timeout_is_runtime_unavailable_and_resets_the_client(hung_socket: str) -> None:
    async def scenario() -> None:
        rt = DockerRuntime("n1", "127.0.0.1", client_factory=lambda: client_for(hung_socket, 0.5))
        try:
            with pytest.raises(RuntimeUnavailable, match="ReadTimeout"):
                await rt.list()  # no client yet: the ping times out
            rt._client = client_for(hung_socket, 0.5)  # a client made while the daemon answered, then it hung
            with pytest.raises(RuntimeUnavailable, match="ReadTimeout"):
                await rt.list()
            assert rt._client is None  # the next call builds a new one
            with pytest.raises(RuntimeUnavailable):
                await rt.start(spec(), 1)
        finally:
            await rt.close()

    asyncio.run(scenario())


def test_the_agent_reports_a_hung_daemon_as_runtime_unavailable(hung_socket: str, tmp_path: Path) -> None:
    settings = load_settings(env={}, overrides={"node_id": "n1", "data_dir": str(tmp_path), "discovery": False})
    rt = DockerRuntime("n1", "127.0.0.1", client_factory=lambda: client_for(hung_socket, 0.5))

    async def scenario() -> None:
        agent = NodeAgent(settings, runtime=rt)
        try:
            assert await agent.observe() is None
            assert agent.state.runtime_error is not None and "ReadTimeout" in agent.state.runtime_error
            await agent.reconcile_once()  # a round against the hung daemon ends quietly: nothing raised
        finally:
            await agent.stop()

    asyncio.run(scenario())


def test_docker_calls_run_on_their_own_bounded_pool(hung_socket: str) -> None:
    async def scenario() -> tuple[float, int, float]:
        # threads of an earlier test's runtime may still sit on its hung daemon (up to its 3 s client timeout):
        # only this runtime's are counted (one such thread made it 5 under load in session 19)
        earlier = {t for t in threading.enumerate() if t.name.startswith("docker")}
        rt = DockerRuntime("n1", "127.0.0.1", client_factory=lambda: client_for(hung_socket, 3.0))
        starts = [asyncio.create_task(rt.start(spec(), 1)) for _ in range(3 * DOCKER_WORKERS)]
        await asyncio.sleep(0.3)
        docker_threads = sum(t.name.startswith("docker") and t not in earlier for t in threading.enumerate())
        t = time.monotonic()
        await asyncio.to_thread(lambda: None)  # what the request-log flush or a solver round trip waits for
        waited = time.monotonic() - t
        t = time.monotonic()
        await rt.close()  # does not wait for the calls stuck on the daemon
        closing = time.monotonic() - t
        for task in starts:
            task.cancel()
        await asyncio.gather(*starts, return_exceptions=True)
        return waited, docker_threads, closing

    waited, docker_threads, closing = asyncio.run(scenario())
    assert waited < 0.5
    assert docker_threads == DOCKER_WORKERS
    assert closing < 0.5
