"""A private Docker Engine for tests and benchmarks: its own socket, data root and bridge.

Host-namespace safety (DESIGN.md, traffic rule): the bridge's subnet gets a blackhole route first (a
higher metric than the bridge's own route, so it takes over if the bridge goes away); in a test-bed
namespace (``netns=``) the bridge lives inside that namespace instead. dockerd runs with
``--iptables=false --ip-forward=false --ip-masq=false`` so no container packet can be routed off this
machine, ports are published on 127.0.0.1 only, and everything is removed at stop, by PID.

    with private_dockerd() as engine:   # engine.host == "unix:///tmp/peerserve-dockerd-.../docker.sock"
        ...
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SUBNET = "10.213.77.0/24"
BRIDGE_IP = "10.213.77.1/24"


class DockerUnavailable(RuntimeError):
    """No Docker Engine can be started here (not root, or dockerd not installed)."""


@dataclass
class PrivateDockerd:
    host: str
    pid: int
    root: Path
    bridge: str

    @property
    def env(self) -> dict[str, str]:
        return {"DOCKER_HOST": self.host}


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


def available() -> str | None:
    """Why a private dockerd cannot run here, or None when it can."""
    if os.geteuid() != 0:
        return "needs root"
    for tool in ("dockerd", "ip", "docker"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (scripts/bootstrap.sh --test installs it)"
    return None


@contextlib.contextmanager
def private_dockerd(build_images: bool = True, netns: str | None = None) -> Iterator[PrivateDockerd]:
    """A dockerd of our own; inside network namespace ``netns`` when given (one per test-bed host)."""
    reason = available()
    if reason:
        raise DockerUnavailable(reason)
    root = Path(tempfile.mkdtemp(prefix="peerserve-dockerd-"))
    bridge = "psdock0" if netns else f"psdock{os.getpid() % 10000}"
    sock = root / "docker.sock"
    proc: subprocess.Popen[bytes] | None = None
    in_ns = ["-n", netns] if netns else []
    if netns is None:  # the host namespace: blackhole the bridge's subnet first
        _ip("route", "add", "blackhole", SUBNET, "metric", "4000", check=False)
    try:
        _ip(*in_ns, "link", "add", bridge, "type", "bridge")
        _ip(*in_ns, "addr", "add", BRIDGE_IP, "dev", bridge)
        _ip(*in_ns, "link", "set", bridge, "up")
        log = open(root / "dockerd.log", "wb")  # noqa: SIM115 - owned by the daemon until stop
        # nsenter, not `ip netns exec`: that remounts /sys and hides the cgroup mounts dockerd needs
        enter = ["nsenter", f"--net=/run/netns/{netns}"] if netns else []
        proc = subprocess.Popen(
            [*enter, "dockerd", "--data-root", str(root / "data"), "--exec-root", str(root / "exec"),
             "--pidfile", str(root / "dockerd.pid"), "-H", f"unix://{sock}", f"--bridge={bridge}",
             "--iptables=false", "--ip6tables=false", "--ip-forward=false", "--ip-masq=false",
             "--userland-proxy=true", "--storage-driver=overlay2"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        engine = PrivateDockerd(f"unix://{sock}", proc.pid, root, bridge)
        _wait_ready(engine, proc)
        if build_images:
            subprocess.run(
                ["bash", str(REPO / "scripts" / "build-images.sh")],
                env={**os.environ, **engine.env}, check=True, capture_output=True, timeout=600,
            )  # fmt: skip
        yield engine
    finally:
        try:
            if proc is not None:
                _stop_daemon(sock, proc)
        finally:  # a stop that raised (a wedged engine's CLI timed out) still leaves no bridge, route or files
            _ip(*in_ns, "link", "del", bridge, check=False)
            if netns is None:
                _ip("route", "del", "blackhole", SUBNET, "metric", "4000", check=False)
            subprocess.run(["umount", "-R", str(root / "data")], capture_output=True, check=False)
            shutil.rmtree(root, ignore_errors=True)


def _wait_ready(engine: PrivateDockerd, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise DockerUnavailable(f"dockerd exited: {(engine.root / 'dockerd.log').read_text()[-2000:]}")
        out = subprocess.run(["docker", "version", "--format", "{{.Server.Version}}"], env={**os.environ, **engine.env},
                             capture_output=True, text=True)  # fmt: skip
        if out.returncode == 0:
            return
        time.sleep(0.2)
    raise DockerUnavailable("dockerd did not answer in 30 s")


DOCKER_CLI_TIMEOUT_S = 30.0  # docker ps / docker rm -f against our engine: a wedged one must not hang the teardown


def _stop_daemon(sock: Path, proc: subprocess.Popen[bytes], cli_timeout: float = DOCKER_CLI_TIMEOUT_S) -> None:
    """Remove the engine's containers, then stop the daemon: SIGTERM, SIGKILL after 30 s. The daemon is ours (we
    started it: ``proc``, by its PID), so it is killed whatever the CLI did -- a CLI call that timed out or failed is
    raised after the kill (review18a F7: it raised before the SIGTERM and left the daemon running)."""
    env = {**os.environ, "DOCKER_HOST": f"unix://{sock}"}
    try:
        listed = subprocess.run(["docker", "ps", "-aq"], env=env, capture_output=True, text=True, timeout=cli_timeout)
        ids = listed.stdout.split()
        if ids:
            subprocess.run(["docker", "rm", "-f", *ids], env=env, capture_output=True, timeout=cli_timeout)
        proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
