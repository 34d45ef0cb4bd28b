"""scripts/dockerd.py's stop of a private Docker Engine when the engine is wedged: the docker CLI calls had no
timeout (a hung engine hung the teardown, and the steps after it -- PIDs, namespaces, the route -- never ran), and a
CLI call that raised left the daemon running (review18a F7). The daemon here is a process the test starts (as
private_dockerd starts dockerd) and the CLI one that never answers, as a wedged engine's does."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from scripts.dockerd import _stop_daemon


def test_a_wedged_engine_is_killed_and_its_cli_timeout_raised(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    docker = bin_dir / "docker"
    docker.write_text("#!/bin/sh\nexec sleep 60\n")  # `docker ps` against an engine that accepts and never answers
    docker.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    daemon = subprocess.Popen(["sleep", "600"], start_new_session=True)
    try:
        began = time.monotonic()
        with pytest.raises(subprocess.TimeoutExpired):
            _stop_daemon(tmp_path / "docker.sock", daemon, cli_timeout=0.5)
        assert time.monotonic() - began < 10
        assert daemon.poll() is not None  # killed by its PID although the CLI call raised
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
