"""Real agents as subprocesses on loopback, with teardown that ends only what the test started."""

from __future__ import annotations

import collections
import contextlib
import http.cookiejar
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent.identity import derive_stats_token
from agent.runtime.process import recorded_server_pids
from tests.peer_tools import TestPeer

# Under pytest-xdist (scripts/test.sh runs the service tier's tests not marked ``serial`` on two workers) each worker
# is a cluster of its own: agents with discovery on hear every other worker's mDNS adverts on loopback, and with
# another cluster token they stay strangers (refused at the peer plane) instead of joining a test they are not part of.
WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")  # "gw0", "gw1", ...; "" in a plain pytest run
TOKEN = "test-cluster-token-0123456789" + (f"-{WORKER}" if WORKER else "")
STATS_READER = {"Authorization": f"Bearer {derive_stats_token(TOKEN)}"}


WORKERS_SPAN = (20000, 32000)
PLAIN_SPAN = (12000, 19999)


def listen_ports(worker: str, workers: int, span: tuple[int, int] = WORKERS_SPAN) -> tuple[int, int]:
    """This worker's share of ``span``; outside xdist, ``PLAIN_SPAN``, apart from every worker's: two workers never
    pick the same port to listen on later, so one worker's agent cannot take the port another's test chose a moment
    before, and neither can the serial tests' (one pytest process, no xdist), which scripts/test.sh runs beside the
    workers of the service tier's other tests."""
    if not worker.startswith("gw"):
        return PLAIN_SPAN
    if workers < 2:
        return span
    index = int(worker[2:]) % workers
    width = (span[1] - span[0]) // workers
    return span[0] + index * width, span[0] + (index + 1) * width - 1


# Below Linux's ephemeral range (32768-60999): no outgoing connection takes them.
LISTEN_PORTS = listen_ports(WORKER, int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))

# One client for the plain-HTTP calls to agents below (start's /health polls, ``get``). ``httpx.get`` builds a client,
# and its TLS context with the CA bundle parsed, at every call: ~30 ms of CPU (0.2 ms on a built client), so a test
# polling an agent every 0.05-0.1 s spent a third of a core or more on it beside the agents it waited for, on two
# cores. It keeps no connection: each call opens its own and closes it after the answer, as ``httpx.get`` did; and it
# keeps no cookie, as ``httpx.get`` did (its jar was new at each call): a Set-Cookie from one agent or model server was
# sent to every later agent on 127.0.0.1, cookies ignoring the port, and the agent forwards Cookie (review19c F4).
PLAIN = httpx.Client(
    limits=httpx.Limits(max_keepalive_connections=0),
    cookies=http.cookiejar.CookieJar(policy=http.cookiejar.DefaultCookiePolicy(allowed_domains=[])),
)


HANDED_OUT: collections.deque[int] = collections.deque(maxlen=1024)  # free_port's latest answers, not given again


def free_port(host: str = "127.0.0.1", avoid: int = 0) -> int:
    """A port to listen on later, free now, outside the range the kernel hands outgoing connections: a port
    from that range (bind to 0) was taken by some agent's outgoing connection before the agent meant to
    listen on it started (seen in a 25-agent bench: "address already in use", the cluster never converged).
    Never one of its last 1,024 answers in this process, nor ``avoid``: a port handed out is free until its agent
    starts, so a second draw could give it again (an agent's client port drawn, then its peer port: the same one
    in 1 of ~6,000 starts on a worker's range, and the agent refused to start: the fresh-clone CI of session 17)."""
    for _ in range(64):
        port = random.randint(*LISTEN_PORTS)
        if port == avoid or port in HANDED_OUT:
            continue
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((host, port))
            except OSError:
                continue
        HANDED_OUT.append(port)
        return port
    with socket.socket() as s:  # the low range is full: any free port
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass
class RunningAgent:
    data_dir: Path
    port: int
    host: str
    args: list[str]
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    log: Path = field(default_factory=Path)
    peer_port: int = 0
    _leaders: dict[str, TestPeer] = field(default_factory=dict)

    @property
    def peer_url(self) -> str:
        return f"https://{self.host}:{self.peer_port}"

    @property
    def node_id(self) -> str:
        return self._flag("--node-id") or self.data_dir.name

    def _flag(self, name: str) -> str | None:
        return next((b for a, b in zip(self.args, self.args[1:], strict=False) if a == name), None)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 30.0) -> RunningAgent:
        self.log = self.data_dir.parent / f"agent-{self.port}.log"
        out = open(self.log, "ab")  # noqa: SIM115 - handed to the child
        self.peer_port = self.peer_port or free_port(self.host, avoid=self.port)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "peerserve", "agent", "--host", self.host, "--port", str(self.port),
             "--peer-port", str(self.peer_port), "--node-id", self.data_dir.name, "--data-dir", str(self.data_dir),
             "--cluster-token", TOKEN, *self.args],
            stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **self.env},
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"agent exited with {self.proc.returncode}: {self.log.read_text()[-3000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if PLAIN.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return self
            time.sleep(0.1)
        raise RuntimeError(f"agent did not answer in {timeout} s: {self.log.read_text()[-3000:]}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return int(self.proc.returncode)

    def server_pids(self) -> list[int]:
        """PIDs of the model servers this agent's process runtime recorded (still running)."""
        return recorded_server_pids(self.data_dir)

    def get(self, path: str, **kw: Any) -> httpx.Response:
        """GET on the client port; the request log is read with the reader token, as an operator would."""
        if path.startswith("/stats/requests") and "headers" not in kw:
            kw["headers"] = STATS_READER
        return PLAIN.get(f"{self.url}{path}", timeout=30, **kw)

    def put_desired(self, term: int, instances: dict[str, int], leader: str = "lead") -> httpx.Response:
        """A signed command from the admitted test node ``leader`` (agents without an election accept it)."""
        if leader not in self._leaders:
            suffix = "" if leader == "lead" else f"-{leader}"
            self._leaders[leader] = TestPeer(leader, TOKEN, self.data_dir.parent / f"lead-identity{suffix}")
        return self._leaders[leader].put_desired(self.node_id, self.peer_url, term, instances)

    def wait_ready(self, model: str, count: int = 1, timeout: float = 30.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            insts = [i for i in self.get("/stats/node").json()["instances"] if i["model"] == model and i["ready"]]
            if len(insts) >= count:
                return insts
            time.sleep(0.1)
        tail = self.log.read_text(errors="replace")[-3000:] if self.log.is_file() else ""
        raise AssertionError(f"{model} x{count} not ready on {self.url} in {timeout} s; its log ends:\n{tail}")


@pytest.fixture
def agents(tmp_path: Path) -> Iterator[Any]:
    """Factory: agents(name, *extra_args, env=...) starts a real agent on its own port and data dir."""
    started: list[RunningAgent] = []

    def make(
        name: str = "a", *args: str, env: dict[str, str] | None = None, port: int | None = None, host: str = "127.0.0.1"
    ) -> RunningAgent:
        agent = RunningAgent(tmp_path / name, port or free_port(host), host, list(args), env or {})
        started.append(agent)
        return agent.start()

    make.started = started  # type: ignore[attr-defined]  # (the Docker tests' engine fixtures end them first)
    yield make
    for agent in started:
        end(agent)


def end(agent: RunningAgent) -> None:
    """SIGKILL the agent and the model servers it recorded."""
    if agent.proc is not None:
        agent.stop(signal.SIGKILL)
    for pid in agent.server_pids():
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def shared_agent(root: Path, name: str, *args: str, env: dict[str, str] | None = None) -> Iterator[RunningAgent]:
    """One agent for the tests of a module that start it with the same arguments, for a module-scoped fixture to
    yield (started in the fixture's set-up, the leak guard counts it as the fixture's): its start-up, ~2-4 s, once.
    Only for tests that leave it as they found it -- what they open they close, or the agent closes by its own
    deadlines; they read no count another test's requests could move."""
    agent = RunningAgent(root / name, free_port(), "127.0.0.1", list(args), env or {})
    try:
        yield agent.start()
    finally:
        end(agent)
