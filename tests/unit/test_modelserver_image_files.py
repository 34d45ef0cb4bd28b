"""The stand-in model server's image copies every module the server imports: the files its Dockerfile COPYs, alone
in a directory, import ``agent.modelserver`` (a new import missing from the image broke every container; the
Docker tests saw it only as a container that never became ready)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "images" / "modelserver" / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"  # "*" then "!path" for each file a build may see


def copied_python_files() -> list[str]:
    """The .py sources of the Dockerfile's COPY lines (repository paths)."""
    files: list[str] = []
    for line in DOCKERFILE.read_text().splitlines():
        words = line.split()
        if words[:1] == ["COPY"]:
            files += [w for w in words[1:-1] if w.endswith(".py")]
    return files


def test_the_image_files_alone_import_the_model_server(tmp_path: Path) -> None:
    files = copied_python_files()
    assert "agent/modelserver.py" in files
    for f in files:
        (tmp_path / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / f, tmp_path / f)
    env = {"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"}
    argv = [sys.executable, "-c", "import agent.modelserver"]
    done = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]


def test_the_build_context_lets_every_copied_file_through() -> None:
    lines = [line.strip() for line in DOCKERIGNORE.read_text().splitlines() if line.strip()]
    assert lines[0] == "*"
    allowed = {line[1:] for line in lines if line.startswith("!")}
    assert set(copied_python_files()) <= allowed, set(copied_python_files()) - allowed
