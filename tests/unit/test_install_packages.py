"""What scripts/install.sh builds peerserve from (``package_dirs``: the clean copy pip installs and the source digest
that decides whether to install at all) is pyproject.toml's packages, and the digest covers their package data: a
page-only change with the same version installed nothing while it counted only .py/.toml/.html/.json (tidy18)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

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
