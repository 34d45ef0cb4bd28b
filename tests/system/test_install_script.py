"""scripts/install.sh as a new operator runs it: in a fresh Debian root file system (mmdebstrap + chroot).

The root file system is the system tier's board (tests/system/boards.py: systemd, python3 and the build
tools the solver needs, cached between runs); the install itself runs for real inside it, online from the
package index: venv under /opt/peerserve, pip installs, PyNumero's ASL build, user, config, systemd unit.
systemd does not run in a chroot, so the unit is enabled for the next boot, not started.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.system.boards import rootfs_tarball, source_archive


@pytest.fixture(scope="module")
def rootfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    if os.geteuid() != 0 or shutil.which("mmdebstrap") is None:
        if os.environ.get("PEERSERVE_REQUIRE_DOCKER") == "1":
            pytest.fail("the install test needs root and mmdebstrap (scripts/bootstrap.sh --test)")
        pytest.skip("needs root and mmdebstrap")
    tarball = rootfs_tarball()
    root = tmp_path_factory.mktemp("debian") / "root"
    root.mkdir()
    subprocess.run(["tar", "-xf", str(tarball), "-C", str(root)], check=True)
    src = root / "src" / "peerserve"
    src.mkdir(parents=True)
    subprocess.run(["tar", "-xf", "-", "-C", str(src)], input=source_archive(), check=True)
    shutil.copy("/etc/resolv.conf", root / "etc" / "resolv.conf")
    shutil.copy("/etc/ssl/certs/ca-certificates.crt", root / "etc" / "ssl" / "certs" / "ca-certificates.crt")
    mounts = [root / "proc", root / "dev"]
    subprocess.run(["mount", "-t", "proc", "proc", str(root / "proc")], check=True)
    subprocess.run(["mount", "--bind", "/dev", str(root / "dev")], check=True)
    try:
        yield root
    finally:
        for m in reversed(mounts):
            subprocess.run(["umount", "-l", str(m)], check=False)
        with contextlib.suppress(OSError):
            shutil.rmtree(root.parent)


def chroot(root: Path, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_FIND")}
    env["PIP_CERT"] = "/etc/ssl/certs/ca-certificates.crt"
    env["PATH"] = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    return subprocess.run(["chroot", str(root), *args], capture_output=True, text=True, timeout=timeout, env=env)


def digest(root: Path) -> str:
    h = hashlib.sha256()
    for path in sorted([*(root / "etc" / "peerserve").rglob("*"), root / "etc/systemd/system/peerserve-agent.service"]):
        if path.is_file():
            h.update(path.name.encode() + path.read_bytes() + oct(path.stat().st_mode).encode())
    freeze = chroot(root, "/opt/peerserve/venv/bin/python", "-m", "pip", "freeze").stdout
    h.update(freeze.encode())
    return h.hexdigest()


def test_install_rerun_and_uninstall_in_a_fresh_debian(rootfs: Path) -> None:
    script = "/src/peerserve/scripts/install.sh"
    src = rootfs / "src/peerserve"
    (src / "peerserve/_probe.py").write_text("VALUE = 1\n")  # for same_version_checkout_upgrades, installed now
    (src / "peerserve/_removed.py").write_text("")
    assert chroot(rootfs, "bash", script, "--help").returncode == 0
    dry = chroot(rootfs, "bash", script, "--dry-run", "--no-start", "--runtime", "process")
    assert dry.returncode == 0 and "would run" in dry.stdout and not (rootfs / "opt/peerserve").exists()

    first = chroot(rootfs, "bash", script, "--runtime", "process", "--node-id", "board-1", "--interface", "eth0")
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "generated the cluster token" in first.stdout
    wants = rootfs / "etc/systemd/system/multi-user.target.wants/peerserve-agent.service"
    assert wants.is_symlink()  # enabled offline: the board starts the agent at its first boot
    help_out = chroot(rootfs, "/opt/peerserve/venv/bin/peerserve", "--help")
    assert help_out.returncode == 0 and "agent" in help_out.stdout
    config = rootfs / "etc/peerserve/peerserve.toml"
    assert oct(config.stat().st_mode & 0o777) == "0o640"  # root:peerserve: the agent's user reads the token
    text = config.read_text()
    assert 'node_id = "board-1"' in text and 'runtime = "process"' in text and "cluster_token" in text
    assert 'interface = "eth0"' in text and 'advertise_address = ""' in text  # resolved by the agent at boot
    unit = (rootfs / "etc/systemd/system/peerserve-agent.service").read_text()
    assert "ExecStart=/opt/peerserve/venv/bin/peerserve agent --config /etc/peerserve/peerserve.toml" in unit
    # the solver stack works from the installed environment (Ipopt through PyNumero's ASL build)
    check = "import solver, pyomo.environ as p; assert p.SolverFactory('cyipopt').available(); print('ok')"
    solve = chroot(rootfs, "/opt/peerserve/venv/bin/python", "-c", check)
    assert solve.stdout.strip() == "ok", solve.stderr[-2000:]

    before = digest(rootfs)
    second = chroot(rootfs, "bash", script, "--runtime", "process")
    assert second.returncode == 0 and "nothing to change" in second.stdout, second.stdout + second.stderr
    assert digest(rootfs) == before
    same_version_checkout_upgrades(rootfs, script)

    gone = chroot(rootfs, "bash", script, "--uninstall")
    assert gone.returncode == 0, gone.stdout + gone.stderr
    assert not (rootfs / "opt/peerserve").exists() and not wants.exists()
    assert not (rootfs / "etc/systemd/system/peerserve-agent.service").exists()
    assert config.exists()  # data and config kept unless --purge
    purge = chroot(rootfs, "bash", script, "--uninstall", "--purge")
    assert purge.returncode == 0 and not (rootfs / "etc/peerserve").exists()
    assert "peerserve:" not in (rootfs / "etc/passwd").read_text()


def same_version_checkout_upgrades(root: Path, script: str) -> None:
    """A newer checkout with the same version still upgrades, to exactly its files: one changed with an older time
    (a copy that kept its files' times), one removed, one added, and package data alone (the cluster page's script).
    pip builds in the tree it is given, where setuptools' build/lib kept the old copy of both files and the wheel
    took them (tidy18); the page's script was not in the source digest, so its change installed nothing. The first
    install (the test's) had the probe at 1 and the module to remove."""
    src = root / "src/peerserve"
    probe, removed, added = (src / f"peerserve/{name}.py" for name in ("_probe", "_removed", "_added"))
    app = src / "agent/ui/app.js"
    python = "/opt/peerserve/venv/bin/python"
    show = ("import importlib.util as u, pathlib, agent.ui, peerserve._probe as p; "
            "page = (pathlib.Path(agent.ui.__file__).parent / 'app.js').read_text(); "
            "print(p.VALUE, u.find_spec('peerserve._removed') is None, u.find_spec('peerserve._added') is not None, "
            "page.endswith('// newer page\\n'))")  # fmt: skip
    try:
        seen = chroot(root, python, "-c", show)
        assert seen.stdout.split() == ["1", "False", "False", "False"], seen.stdout + seen.stderr
        for step, wanted in (("changed", "2 True True False"), ("page", "2 True True True")):
            if step == "changed":
                probe.write_text("VALUE = 2\n")
                os.utime(probe, (1e9, 1e9))  # 2001: older than any build of it
                removed.unlink()
                added.write_text("")
            elif step == "page":
                app.write_text(app.read_text() + "// newer page\n")
            out = chroot(root, "bash", script, "--runtime", "process")
            assert out.returncode == 0 and "installed peerserve 0.1.0" in out.stdout, (step, out.stdout + out.stderr)
            seen = chroot(root, python, "-c", show)
            assert seen.stdout.split() == wanted.split(), (step, seen.stdout + seen.stderr)
        assert not (src / "build").exists() and not list(src.glob("*.egg-info"))  # nothing written into it
    finally:
        for path in (probe, removed, added):
            path.unlink(missing_ok=True)
        app.write_text(app.read_text().removesuffix("// newer page\n"))


def test_missing_prerequisites_are_named(rootfs: Path) -> None:
    out = chroot(rootfs, "bash", "/src/peerserve/scripts/install.sh", "--runtime", "docker", "--no-start")
    assert out.returncode == 1
    assert "missing: Docker Engine" in out.stderr
