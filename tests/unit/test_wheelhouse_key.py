"""The system tier's cached wheelhouse (tests/system/boards.py) is keyed by what a board installs: a change to the
dev or test extra or to tool settings reuses it (its download needs the package index and minutes), a change to what
``install.sh --download-wheels`` fetches does not."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.system.boards import REPO, wheelhouse_key


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    (tmp_path / "scripts").mkdir()
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    shutil.copy(REPO / "scripts/install-solver.sh", tmp_path / "scripts/install-solver.sh")
    return tmp_path


def edit(repo: Path, old: str, new: str, name: str = "pyproject.toml") -> None:
    path = repo / name
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


def test_the_key_is_the_checkouts_and_stable(repo: Path) -> None:
    assert wheelhouse_key(repo) == wheelhouse_key(REPO) == wheelhouse_key(repo)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ('dev = [\n  "peerserve[test]",', 'dev = [\n  "peerserve[test]",\n  "some-dev-tool>=1",'),  # the dev extra
        ("test = [  # what the tests", 'test = [\n  "pytest-timeout>=2",  # what the tests'),  # the test extra
        ("[tool.mypy]\n", "[tool.mypy]\nstrict_equality = true\n"),  # tool settings
        ("[tool.pytest.ini_options]\n", "# a comment\n[tool.pytest.ini_options]\n"),
    ],
)
def test_what_a_board_does_not_install_keeps_the_key(repo: Path, old: str, new: str) -> None:
    before = wheelhouse_key(repo)
    edit(repo, old, new)
    assert wheelhouse_key(repo) == before


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ('agent = [\n  "fastapi>=0.110",', 'agent = [\n  "fastapi>=0.111",'),  # the agent extra
        ('solver = [\n  "numpy>=1.24",', 'solver = [\n  "numpy>=1.25",'),  # the solver extra
        ('requires = ["setuptools>=77"]', 'requires = ["setuptools>=78"]'),  # the build system
        ('  "zeroconf>=0.131",', '  "zeroconf>=0.132",'),  # the runtime requirements
    ],
)
def test_what_a_board_installs_changes_the_key(repo: Path, old: str, new: str) -> None:
    before = wheelhouse_key(repo)
    edit(repo, old, new)
    assert wheelhouse_key(repo) != before


def test_install_solver_changes_the_key(repo: Path) -> None:
    before = wheelhouse_key(repo)
    with (repo / "scripts/install-solver.sh").open("a") as f:
        f.write("# another line\n")
    assert wheelhouse_key(repo) != before
