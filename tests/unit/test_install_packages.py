"""What scripts/install.sh builds peerserve from (``package_dirs``: the clean copy pip installs and the source digest
that decides whether to install at all) is pyproject.toml's packages, and the digest covers their package data: a
page-only change with the same version installed nothing while it counted only .py/.toml/.html/.json (tidy18)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts/install.sh"


def package_dirs() -> list[str]:
    found = re.search(r"^package_dirs=\((.*)\)$", SCRIPT.read_text(), re.M)
    assert found, "install.sh names the packages it builds from in package_dirs=(...)"
    return found.group(1).split()


def digest(source: Path) -> str:
    functions = f"""source <(sed -n -e '/^package_dirs=/p' -e '/^source_digest() {{/,/^}}/p' {SCRIPT})
source_dir={source}
source_digest"""
    out = subprocess.run(["bash", "-c", functions], capture_output=True, text=True, check=True)
    assert re.fullmatch(r"[0-9a-f]{64}\n", out.stdout), out.stdout + out.stderr
    return out.stdout


def test_install_builds_from_the_packages_pyproject_names() -> None:
    include = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    assert sorted(package_dirs()) == sorted(p.rstrip("*") for p in include)
    assert all((REPO / d / "__init__.py").is_file() for d in package_dirs())


def test_the_source_digest_covers_package_data_and_not_bytecode(tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    shutil.copy(REPO / "pyproject.toml", source)
    for d in package_dirs():
        shutil.copytree(REPO / d, source / d, ignore=shutil.ignore_patterns("__pycache__"))
    first = digest(source)
    cache = source / "agent/__pycache__"
    cache.mkdir()
    (cache / "node.cpython-311.pyc").write_bytes(b"\0")  # what running from the checkout leaves: no new source
    assert digest(source) == first
    for data in ("agent/ui/app.js", "agent/ui/style.css", "agent/data/triton/digits/config.pbtxt"):
        path = source / data
        before = path.read_bytes()
        path.write_bytes(before + b"\n")
        assert digest(source) != first, data
        path.write_bytes(before)
    assert digest(source) == first


def _functions(*names: str) -> str:
    sed = " ".join(f"-e '/^{name}() {{/,/^}}/p'" for name in names)
    return f"""die() {{ echo "install.sh: $*" >&2; exit 1; }}
source <(sed -n -e '/^package_dirs=/p' -e '/^install_stage=/p' {sed} {SCRIPT})
"""


def test_a_source_tree_with_symbolic_links_is_refused(tmp_path: Path) -> None:
    """review18a F6: the digest reads regular files only, tar keeps links and the build follows them, so a linked
    module's target could change with no reinstall (and a root-only target was installed world-readable)."""
    source = tmp_path / "src"
    (source / "agent").mkdir(parents=True)
    (source / "pyproject.toml").write_text("[project]\n")
    (source / "agent/__init__.py").write_text("")
    check = _functions("refuse_source_links") + f"source_dir={source}\nrefuse_source_links\necho fine"
    plain = subprocess.run(["bash", "-c", check], capture_output=True, text=True, timeout=30)
    assert plain.returncode == 0 and plain.stdout == "fine\n", plain.stderr
    (tmp_path / "secret.py").write_text("KEY = 1\n")
    (source / "agent/linked.py").symlink_to(tmp_path / "secret.py")
    linked = subprocess.run(["bash", "-c", check], capture_output=True, text=True, timeout=30)
    assert linked.returncode == 1 and linked.stdout == "", linked.stdout
    assert "holds symbolic links (agent/linked.py)" in linked.stderr and "cp -rL" in linked.stderr


@pytest.mark.parametrize("sig", [signal.SIGHUP, signal.SIGTERM])
def test_the_temporary_copy_is_removed_when_the_install_is_killed(tmp_path: Path, sig: signal.Signals) -> None:
    """review18a F5: SIGHUP (the ssh session dropped) or SIGTERM during pip left each copy of the tree in /tmp. Here
    the venv's "python" records the copy it was given and waits: the signal goes to the install's process group."""
    prefix, seen = tmp_path / "prefix", tmp_path / "seen"
    (prefix / "venv/bin").mkdir(parents=True)
    fake = prefix / "venv/bin/python"
    fake.write_text(f'#!/bin/bash\necho "${{@: -1}}" > {seen}.tmp && mv {seen}.tmp {seen}\nsleep 30\n')
    fake.chmod(0o755)
    script = (
        _functions("install_peerserve")
        + f"""set -eEuo pipefail
prefix={prefix} source_dir={REPO} dry_run=0
TMPDIR={tmp_path} install_peerserve"""
    )

    def default_signals() -> None:  # a signal ignored on entry cannot be trapped by bash (a run under nohup)
        signal.signal(sig, signal.SIG_DFL)

    run = subprocess.Popen(
        ["bash", "-c", script], start_new_session=True, stderr=subprocess.PIPE, text=True, preexec_fn=default_signals
    )
    try:
        deadline = time.monotonic() + 30
        while not seen.exists() and time.monotonic() < deadline and run.poll() is None:
            time.sleep(0.05)
        assert seen.exists(), "the install never reached pip"
        stage = Path(seen.read_text().strip().removesuffix("[solver,agent]"))
        assert stage.is_dir() and (stage / "pyproject.toml").is_file()
        os.killpg(run.pid, sig)
        assert run.wait(timeout=30) != 0
    finally:
        if run.poll() is None:
            os.killpg(run.pid, 9)
            run.wait()
    assert not stage.exists(), f"{stage} left behind"


def test_the_card_commands_default_config_is_the_one_install_writes() -> None:
    """review18a's aside: ``peerserve card`` and ``ca init`` looked for /etc/peerserve/config.toml, but install.sh
    writes /etc/peerserve/peerserve.toml, so a board's card request needed --config and ca init's board check
    missed the config."""
    from agent import ca_cli

    text = SCRIPT.read_text()
    etc = re.search(r"^etc=(\S+)$", text, re.M)
    config = re.search(r'^config="\$etc/(\S+)"$', text, re.M)
    assert etc and config
    assert f"{etc.group(1)}/{config.group(1)}" == ca_cli.DEFAULT_CONFIG
    assert Path(ca_cli.DEFAULT_CONFIG) in ca_cli.BOARD_MARKERS
