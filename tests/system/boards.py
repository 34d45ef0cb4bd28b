"""Debian "boards" for the system tier: a root file system booted by systemd-nspawn on the test bed's bridge.

A board is a directory on this machine holding a Debian 12 root file system (mmdebstrap with systemd,
cached as a tarball), the peerserve source under /src/peerserve and a wheelhouse under /src/wheels. It is
installed with scripts/install.sh in a chroot with no network (``unshare --net``), as an image build would,
then booted with ``systemd-nspawn -b`` inside one of the test bed's host namespaces, so its agent lives on
the bed's bridge and nowhere else. Commands run inside a booted board through ``nsenter`` into its PID 1.
A power cut is SIGKILL to the board's PID 1: every process in it dies at once, no unit is stopped.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from tests import child_guard

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10 (JetPack 6)
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("PEERSERVE_CACHE", "/var/cache/peerserve"))
PACKAGES = (
    "systemd,systemd-sysv,dbus,passwd,python3,python3-venv,python3-dev,ca-certificates,iproute2,"
    "libamplsolver-dev,g++,cmake,make,procps"
)
SERVICE = "peerserve-agent.service"
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def codename() -> str:
    for line in Path("/etc/os-release").read_text().splitlines():
        if line.startswith("VERSION_CODENAME="):
            return line.split("=", 1)[1].strip('"') or "bookworm"
    return "bookworm"


def missing_tools() -> str | None:
    """Why boards cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root"
    for tool in ("mmdebstrap", "systemd-nspawn", "nsenter", "unshare", "ip"):
        if shutil.which(tool) is None:
            return f"needs {tool} (scripts/bootstrap.sh --test installs it)"
    return None


def rootfs_tarball() -> Path:
    """The cached board root file system (built once by mmdebstrap from the machine's apt sources)."""
    key = hashlib.sha256(PACKAGES.encode()).hexdigest()[:12]
    tarball = CACHE / f"board-{codename()}-{key}.tar"
    if not tarball.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        partial = tarball.with_suffix(".partial.tar")
        subprocess.run(["mmdebstrap", "--quiet", "--variant=apt", f"--include={PACKAGES}", codename(), str(partial)],
                       check=True, timeout=900)  # fmt: skip
        partial.rename(tarball)
    return tarball


def wheelhouse_key(repo: Path = REPO) -> str:
    """What the wheelhouse holds depends on: the build system, the runtime requirements and the two extras a board
    installs (``[solver,agent]``), and install-solver.sh. A change to the rest of pyproject.toml (the dev extra,
    tool settings) downloads nothing again."""
    project = tomllib.loads((repo / "pyproject.toml").read_text())
    extras = project["project"].get("optional-dependencies", {})
    wanted = {
        "build-system": project.get("build-system", {}),
        "requires-python": project["project"].get("requires-python", ""),
        "dependencies": project["project"].get("dependencies", []),
        "extras": {name: extras.get(name, []) for name in ("solver", "agent")},
    }
    h = hashlib.sha256(json.dumps(wanted, sort_keys=True).encode())
    h.update((repo / "scripts/install-solver.sh").read_bytes())
    return h.hexdigest()[:12]


def wheelhouse() -> Path:
    """The cached wheelhouse for offline installs, filled by ``install.sh --download-wheels`` (needs the index)."""
    target = CACHE / f"wheels-{wheelhouse_key()}"
    if not target.exists():
        partial = CACHE / f"{target.name}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        subprocess.run(["bash", str(REPO / "scripts/install.sh"), "--download-wheels", str(partial)], check=True,
                       timeout=900, capture_output=True)  # fmt: skip
        partial.rename(target)
    return target


def source_archive(repo: Path = REPO) -> bytes:
    """The checkout as a tar stream: tracked files and untracked ones git does not ignore."""
    files = subprocess.run(["git", "-C", str(repo), "ls-files", "-co", "--exclude-standard", "-z"],
                           capture_output=True, check=True).stdout  # fmt: skip
    present = b"\0".join(f for f in files.split(b"\0") if f and (repo / f.decode()).exists())
    return subprocess.run(["tar", "--null", "-T", "-", "-cf", "-"], input=present, cwd=repo, check=True,
                          capture_output=True).stdout  # fmt: skip


@dataclass
class Board:
    """One board: its root directory, the test bed namespace it boots into, and its nspawn process."""

    name: str
    root: Path
    netns: str
    ip: str
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    source: str = "/src/peerserve"
    boots: list[float] = field(default_factory=list)

    @property
    def machine(self) -> str:
        return f"{self.name}-{os.getpid()}"

    @property
    def url(self) -> str:
        return f"http://{self.ip}:8400"

    # -- image ---------------------------------------------------------------------------------------
    def prepare(self, tarball: Path, wheels: Path, source: bytes) -> None:
        self.root.mkdir(parents=True)
        subprocess.run(["tar", "-xf", str(tarball), "-C", str(self.root)], check=True)
        src = self.root / "src" / "peerserve"
        src.mkdir(parents=True)
        subprocess.run(["tar", "-xf", "-", "-C", str(src)], input=source, check=True)
        try:  # hard links: the wheelhouse is only read
            subprocess.run(["cp", "-al", str(wheels), str(self.root / "src" / "wheels")], check=True,
                           capture_output=True)  # fmt: skip
        except subprocess.CalledProcessError:
            shutil.copytree(wheels, self.root / "src" / "wheels")

    def chroot(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        """Run in a chroot of the (not booted) board with no network, /proc and /dev mounted privately."""
        r = str(self.root)
        script = f'mount -t proc proc "{r}/proc" && mount --bind /dev "{r}/dev" && exec chroot "{r}" "$@"'
        env = {"PATH": PATH, "HOME": "/root", "LANG": "C.UTF-8"}
        return subprocess.run(["unshare", "--net", "--mount", "sh", "-c", script, "sh", *args], capture_output=True,
                              text=True, timeout=timeout, env=env)  # fmt: skip

    # -- power ---------------------------------------------------------------------------------------
    def boot(self) -> None:
        """Power on: systemd-nspawn boots the board in its namespace (returns at once)."""
        assert self.proc is None or self.proc.poll() is not None, f"{self.name} is running"
        out = open(self.log, "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen(
            ["systemd-nspawn", "--quiet", "-D", str(self.root), "-M", self.machine, "--hostname", self.name, "-b",
             "--register=no", "--keep-unit", f"--network-namespace-path=/run/netns/{self.netns}",
             "--console=passive", "--link-journal=no", "--resolv-conf=off", "--timezone=off"],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        child_guard.keep(self.proc.pid)  # booted for the tests after this one; the fleet fixture powers it off
        self.boots.append(time.monotonic())

    def pid1(self, timeout: float = 20) -> int:
        """The host PID of the board's init (the nspawn process's child that is PID 1 in its namespace)."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for pid in _children(self.proc.pid):
                with contextlib.suppress(OSError):
                    status = Path(f"/proc/{pid}/status").read_text()
                    nspid = next((ln.split()[1:] for ln in status.splitlines() if ln.startswith("NSpid:")), [])
                    if nspid[-1:] == ["1"] and len(nspid) > 1:
                        return pid
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name}: systemd-nspawn exited: {self.log.read_text()[-2000:]}")
            time.sleep(0.05)
        raise RuntimeError(f"{self.name}: no init process in {timeout} s")

    def power_cut(self) -> None:
        """Pull the plug: SIGKILL to the board's init ends every process in it; no unit is stopped."""
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(RuntimeError, OSError):
            os.kill(self.pid1(timeout=2), signal.SIGKILL)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        # nspawn leaves its mount-propagation folder behind when /run is not a tmpfs
        shutil.rmtree(f"/run/systemd/nspawn/propagate/{self.machine}", ignore_errors=True)

    # -- inside --------------------------------------------------------------------------------------
    def sh(self, *args: str, timeout: float = 120, check: bool = False) -> subprocess.CompletedProcess[str]:
        """Run a command inside the booted board (every namespace of its PID 1)."""
        cmd = ["nsenter", "-t", str(self.pid1()), "-a", "env", "-i", f"PATH={PATH}", "HOME=/root", "LANG=C.UTF-8",
               *args]  # fmt: skip
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if check and out.returncode != 0:
            raise AssertionError(f"{self.name}: {' '.join(args)} exited {out.returncode}: {out.stdout}{out.stderr}")
        return out

    def unit(self, prop: str) -> str:
        return self.sh("systemctl", "show", "-p", prop, "--value", SERVICE).stdout.strip()

    def journal(self, unit: str = SERVICE) -> str:
        return self.sh("journalctl", "-u", unit, "--no-pager", "-o", "cat").stdout

    def install(self, *args: str, source: str | None = None, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        """Run scripts/install.sh inside the booted board (offline: the board has no route out)."""
        return self.sh("bash", f"{source or self.source}/scripts/install.sh", *args, timeout=timeout)


def _children(pid: int) -> Iterable[int]:
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                yield from (int(c) for c in (task / "children").read_text().split())


def leader_conflicts(observations: Iterable[tuple[str, int | None, str | None]]) -> dict[int, set[str]]:
    """Terms in which two or more different leaders were seen: observations are (observer, term, leader)."""
    seen: dict[int, set[str]] = {}
    for _observer, term, leader in observations:
        if term is not None and leader is not None:
            seen.setdefault(term, set()).add(leader)
    return {term: leaders for term, leaders in seen.items() if len(leaders) > 1}


def failures_outside(failures: Iterable[float], windows: Iterable[tuple[float, float]]) -> list[float]:
    """Failure times (monotonic) that fall in none of the allowed windows [start, end]."""
    spans = list(windows)
    return [t for t in failures if not any(a <= t <= b for a, b in spans)]
