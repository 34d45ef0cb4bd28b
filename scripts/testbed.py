"""The multi-host test bed: N hosts as network namespaces on a bridge, agents inside, faults injected.

Layout (SUBNET 10.213.10.0/24, blackholed in the host namespace before anything is created):

    ps<tag>br  : bridges br0 (the LAN) and br1 (the far side of a partition), one veth end per host
    ps<tag>n<i>: node i, eth0 = 10.213.10.<10+i>, multicast route 224.0.0.0/4 via eth0
    ps<tag>c   : a client host, eth0 = 10.213.10.250; tests send their HTTP from here (setns in a thread)

Faults: kill (-9), stop (SIGTERM), pause/resume (SIGSTOP/SIGCONT), power_cut() (every agent and model
server SIGKILLed at once; restart(i) brings one back on its data), partition(groups) moves hosts' bridge
ports to br1, heal() moves them back; link_down/link_up cut one host.
teardown() ends only the processes it started (by PID), stops its Docker Engines, deletes the
namespaces it created and the blackhole route, even after a failed test; every step runs, then one error names
each that failed (an engine still running, a namespace left behind).

    python -m scripts.testbed up 3      # bring up 3 hosts with agents and print their URLs; Ctrl-C tears down
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

SUBNET = "10.213.10.0/24"
CLIENT_IP = "10.213.10.250"
CLONE_NEWNET = 0x40000000
TOKEN = "testbed-cluster-token-0123456789"
T = TypeVar("T")
R = TypeVar("R")

from peerserve.agent_procs import agent_argv, kill_servers, spawn, stop  # noqa: E402 - after the constants


def node_ip(i: int) -> str:
    return f"10.213.10.{10 + i}"


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, check=check)


class StepsFailed(RuntimeError):
    """Several steps that all had to run, and which of them failed: ``errors`` pairs each failing step's name with
    its exception (the first is also the cause). Python 3.10 has no ExceptionGroup."""

    def __init__(self, what: str, errors: list[tuple[str, BaseException]], of: int) -> None:
        self.errors = errors
        named = "; ".join(f"{name}: {type(exc).__name__}: {exc}" for name, exc in errors)
        super().__init__(f"{what}: {len(errors)} of {of} failed -- {named}")


class Failures:
    """Steps that must all run whatever the others do (a teardown): each runs under ``with failures.step(name)``,
    which records an exception and goes on; ``raise_any`` at the end raises one StepsFailed naming every one."""

    def __init__(self) -> None:
        self.errors: list[tuple[str, BaseException]] = []
        self.steps = 0

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        self.steps += 1
        try:
            yield
        except Exception as exc:
            self.errors.append((name, exc))

    def raise_any(self, what: str) -> None:
        if self.errors:
            raise StepsFailed(what, self.errors, self.steps) from self.errors[0][1]


def run_all(fn: Callable[[T], R], items: Sequence[T], what: str, name: Callable[[T], str] = str) -> list[R]:
    """``fn`` on every item at once, a thread each; the results in the items' order. Every call runs to its end
    whatever the others do; then, if any raised, one StepsFailed names each failing item (``name(item)``) and its
    exception -- pool.map raised only the first and the others' were lost."""
    with concurrent.futures.ThreadPoolExecutor(len(items) or 1) as pool:
        futures = [pool.submit(fn, item) for item in items]
    errors = [(name(item), exc) for item, f in zip(items, futures, strict=True) if (exc := f.exception()) is not None]
    if errors:
        raise StepsFailed(what, errors, len(items)) from errors[0][1]
    return [f.result() for f in futures]


def remove_tree(path: Path) -> None:
    """shutil.rmtree that goes on past what it cannot remove, then says so (a root file system left behind is a
    leak)."""
    shutil.rmtree(path, ignore_errors=True)
    if path.exists():
        left = sum(1 for _ in path.rglob("*"))
        raise OSError(f"{path} not removed: {left} entries left")


def available() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    if run("ip", "netns", "list", check=False).returncode != 0:
        return "ip netns does not work here"
    return None


@dataclass
class Host:
    index: int
    netns: str
    ip: str
    port: str  # the bridge-side veth name
    proc: subprocess.Popen[bytes] | None = None
    data_dir: Path = field(default_factory=Path)
    log: Path = field(default_factory=Path)
    args: list[str] = field(default_factory=list)

    @property
    def node_id(self) -> str:
        return f"n{self.index}"

    @property
    def url(self) -> str:
        return f"http://{self.ip}:8400"

    @property
    def peer_url(self) -> str:
        """The agent's authenticated peer listener (mutual TLS; --peer-port defaults to port + 1)."""
        return f"https://{self.ip}:8401"


class NetnsWorker:
    """Runs callables in a thread that joined a network namespace (sockets made there live there)."""

    def __init__(self, netns: str) -> None:
        self._pool = concurrent.futures.ThreadPoolExecutor(1, initializer=_join_netns, initargs=(netns,))

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return self._pool.submit(fn, *args, **kwargs).result()

    def close(self) -> None:
        self._pool.shutdown(wait=True)


def _join_netns(netns: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    with open(f"/run/netns/{netns}") as f:
        if libc.setns(f.fileno(), CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {netns} failed")


class TestBed:
    """Create with ``TestBed(n, workdir)``; ``up()`` builds the network; ``start(i)`` runs an agent."""

    __test__ = False  # not a pytest test class

    def __init__(self, n: int, workdir: Path, tag: str | None = None) -> None:
        self.tag = tag or f"{os.getpid() % 10000}"
        self.workdir = workdir
        self.bridge_ns = f"ps{self.tag}br"
        self.hosts = [Host(i, f"ps{self.tag}n{i}", node_ip(i), f"v{self.tag}n{i}") for i in range(n)]
        self.client_ns = f"ps{self.tag}c"
        self.created: list[str] = []
        self.route_added = False
        self.extra_pids: list[int] = []
        self._dockerds: list[tuple[int, contextlib.AbstractContextManager[Any]]] = []  # (host, engine)
        self.docker_hosts: dict[int, str] = {}
        self._clients: dict[str, tuple[NetnsWorker, Any]] = {}

    # -- network -------------------------------------------------------------------------------------
    def up(self) -> TestBed:
        if run("ip", "route", "add", "blackhole", SUBNET, check=False).returncode == 0:
            self.route_added = True
        self._netns(self.bridge_ns)
        for bridge in ("br0", "br1"):
            self._in(self.bridge_ns, "ip", "link", "add", bridge, "type", "bridge", "mcast_snooping", "0")
            self._in(self.bridge_ns, "ip", "link", "set", bridge, "up")
        for host in self.hosts:
            self._attach(host.netns, host.port, host.ip)
        self._attach(self.client_ns, f"v{self.tag}c", CLIENT_IP)
        return self

    def _netns(self, name: str) -> None:
        run("ip", "netns", "add", name)
        self.created.append(name)
        self._in(name, "ip", "link", "set", "lo", "up")

    def _in(self, netns: str, *args: str) -> None:
        run("ip", "netns", "exec", netns, *args)

    def _attach(self, netns: str, port: str, ip: str) -> None:
        self._netns(netns)
        run("ip", "link", "add", port, "netns", self.bridge_ns, "type", "veth", "peer", "name", "eth0", "netns", netns)
        self._in(self.bridge_ns, "ip", "link", "set", port, "master", "br0", "up")
        self._in(netns, "ip", "addr", "add", f"{ip}/24", "dev", "eth0")
        self._in(netns, "ip", "link", "set", "eth0", "up")
        self._in(netns, "ip", "route", "add", "224.0.0.0/4", "dev", "eth0")

    def start_dockerd(self, i: int) -> str:
        """A Docker Engine of host i's own, inside its namespace, with the stand-in image built."""
        from scripts.dockerd import private_dockerd

        ctx = private_dockerd(netns=self.hosts[i].netns)
        engine = ctx.__enter__()
        self._dockerds.append((i, ctx))
        self.docker_hosts[i] = engine.host
        return engine.host

    def start_dockerds(self, indices: list[int]) -> list[str]:
        """start_dockerd for several hosts at once: each engine's start and image build (a docker import of the
        cached root file system and a build) mostly waits on its own daemon; one after the other they were most of
        the Docker cluster test's set-up. Engines that failed to start raise here, together, one StepsFailed naming
        each; those started are torn down with the bed."""
        return run_all(self.start_dockerd, indices, "starting the Docker Engines", lambda i: f"host {i}")

    # -- agents --------------------------------------------------------------------------------------
    def start(self, i: int, *args: str, env: dict[str, str] | None = None) -> Host:
        host = self.hosts[i]
        if i in self.docker_hosts:
            env = {"DOCKER_HOST": self.docker_hosts[i], **(env or {})}
        host.args = list(args) or host.args
        host.data_dir = self.workdir / host.node_id
        host.log = self.workdir / f"{host.node_id}.log"
        argv = agent_argv(host.node_id, host.ip, 8400, host.data_dir, TOKEN, "--interface", host.ip, *host.args)
        host.proc = spawn(["ip", "netns", "exec", host.netns, *argv], host.log, env, new_session=True)
        return host

    def wait_healthy(self, i: int, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                if self.get(self.hosts[i].url + "/health", timeout=1).status_code == 200:
                    return
            proc = self.hosts[i].proc
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"agent n{i} exited: {self.hosts[i].log.read_text()[-2000:]}")
            time.sleep(0.1)
        raise RuntimeError(f"agent n{i} not healthy in {timeout} s")

    def kill(self, i: int, sig: int = signal.SIGKILL) -> None:
        """Signal agent i (the `ip netns exec` process execs into python, so the PID is the agent's)."""
        stop(self.hosts[i].proc, sig)

    # -- faults --------------------------------------------------------------------------------------
    def pause(self, i: int) -> None:
        """SIGSTOP agent i: a frozen board or a long GC pause (its model servers keep running)."""
        proc = self.hosts[i].proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGSTOP)

    def resume(self, i: int) -> None:
        proc = self.hosts[i].proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGCONT)

    def power_cut(self) -> None:
        """Every board loses power at once: agents and their model servers die by SIGKILL."""
        for host in self.hosts:
            proc = host.proc
            if proc is not None and proc.poll() is None:
                proc.kill()
            kill_servers(host.data_dir)
        for host in self.hosts:
            if host.proc is not None:
                host.proc.wait()

    def restart(self, i: int) -> Host:
        """Start agent i again with the arguments and data directory it had (after kill or power cut)."""
        return self.start(i, *self.hosts[i].args)

    def partition(self, *groups: list[int]) -> None:
        """Hosts in the first group stay on br0 with the client; every other listed host moves to br1."""
        for group in groups[1:]:
            for i in group:
                self._in(self.bridge_ns, "ip", "link", "set", self.hosts[i].port, "master", "br1")

    def heal(self) -> None:
        for host in self.hosts:
            self._in(self.bridge_ns, "ip", "link", "set", host.port, "master", "br0")

    def link_down(self, i: int) -> None:
        self._in(self.bridge_ns, "ip", "link", "set", self.hosts[i].port, "down")

    def link_up(self, i: int) -> None:
        self._in(self.bridge_ns, "ip", "link", "set", self.hosts[i].port, "up")

    # -- client side ---------------------------------------------------------------------------------
    def request(self, method: str, url: str, via: int | None = None, **kwargs: Any) -> Any:
        """An HTTP request from the client host, or from inside host ``via`` (to reach a partitioned side)."""
        worker, client = self._client(self.client_ns if via is None else self.hosts[via].netns)
        return worker.call(client.request, method, url, **kwargs)

    def _client(self, netns: str) -> tuple[NetnsWorker, Any]:
        if netns not in self._clients:
            import httpx

            worker = NetnsWorker(netns)
            self._clients[netns] = (worker, worker.call(lambda: httpx.Client(timeout=5.0)))
        return self._clients[netns]

    def peer_request(self, peer: Any, to: int, method: str, path: str, via: int | None = None, **kwargs: Any) -> Any:
        """A peer-plane message from ``peer`` (tests.peer_tools.TestPeer) to host ``to``'s peer listener."""
        worker, _ = self._client(self.client_ns if via is None else self.hosts[via].netns)
        host = self.hosts[to]
        return worker.call(peer.request, host.node_id, host.peer_url, method, path, **kwargs)

    def get(self, url: str, via: int | None = None, **kwargs: Any) -> Any:
        return self.request("GET", url, via=via, **kwargs)

    def json(self, i: int, path: str, via: int | None = None) -> Any:
        return self.get(self.hosts[i].url + path, via=via).json()

    def exec_in_client(self, *args: str, timeout: float = 30, env: dict[str, str] | None = None) -> str:
        out = subprocess.run(["ip", "netns", "exec", self.client_ns, *args], capture_output=True, text=True,
                             timeout=timeout, env={**os.environ, **(env or {})})  # fmt: skip
        return out.stdout

    # -- teardown ------------------------------------------------------------------------------------
    def teardown(self) -> None:
        """Every step runs whatever the others did; then one StepsFailed names each that failed (a Docker Engine
        whose stop failed may still run, a namespace not deleted is left behind: a teardown must say so). What was
        torn down is forgotten (and each engine, whose stop runs once), so a second call does not fail on it again."""
        failures = Failures()
        clients, self._clients = self._clients, {}
        for netns, (worker, client) in clients.items():
            with failures.step(f"closing the client in {netns}"):
                try:
                    worker.call(client.close)
                finally:
                    worker.close()
        for host in self.hosts:
            with failures.step(f"stopping the agent of host {host.index}"):
                self.kill(host.index, signal.SIGKILL)
            with failures.step(f"stopping the model servers of host {host.index}"):
                kill_servers(host.data_dir)
        engines, self._dockerds = self._dockerds, []
        with failures.step("stopping the Docker Engines"):  # at once: each waits on its own daemon
            run_all(_exit, engines[::-1], "stopping the Docker Engines", lambda engine: f"host {engine[0]}")
        pids, self.extra_pids = self.extra_pids, []  # forgotten once killed: a PID reaped since may be reused
        for pid in pids:
            with failures.step(f"killing PID {pid}"), contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for name in reversed(self.created[:]):
            with failures.step(f"deleting namespace {name}"):
                _checked(run("ip", "netns", "del", name, check=False))
                self.created.remove(name)
        if self.route_added:
            with failures.step(f"deleting the blackhole route for {SUBNET}"):
                _checked(run("ip", "route", "del", "blackhole", SUBNET, check=False))
                self.route_added = False
        failures.raise_any("the test bed's teardown")


def _exit(engine: tuple[int, contextlib.AbstractContextManager[Any]]) -> None:
    """Leave a started engine's context (stop the daemon, remove its bridge and files); what fails is raised."""
    engine[1].__exit__(None, None, None)


def _checked(done: subprocess.CompletedProcess[str]) -> None:
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(done.args)} exited {done.returncode}: {done.stderr.strip()[-500:]}")


@contextlib.contextmanager
def testbed(n: int, workdir: Path) -> Iterator[TestBed]:
    bed = TestBed(n, workdir)
    try:
        yield bed.up()
    finally:
        bed.teardown()


def main() -> int:
    import argparse
    import tempfile

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("action", choices=["up"])
    ap.add_argument("n", type=int, nargs="?", default=3)
    args = ap.parse_args()
    reason = available()
    if reason:
        print(f"testbed: {reason}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp, testbed(args.n, Path(tmp)) as bed:
        for i in range(args.n):
            bed.start(i)
        for i in range(args.n):
            bed.wait_healthy(i)
            print(f"n{i}: {bed.hosts[i].url} (netns {bed.hosts[i].netns}); logs {bed.hosts[i].log}")
        print(f"client netns {bed.client_ns}: ip netns exec {bed.client_ns} curl {bed.hosts[0].url}/cluster")
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
