"""What the benches share: a served process (start it, wait until it answers, stop it), and an earlier revision's
tree to measure against in the same run (``extract_revision``).

Benches run as scripts (``python bench/X.py``), so each puts the repository on ``sys.path`` before importing
this module; processes stop through peerserve.agent_procs like the demo's and the test bed's agents.
"""

from __future__ import annotations

import os
import subprocess
import tarfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import httpx

from peerserve.agent_procs import stop

REPO = Path(__file__).resolve().parent.parent


def extract_revision(rev: str, into: Path, paths: Sequence[str] = ()) -> Path:
    """The tree of git revision ``rev`` (only ``paths`` where given) under ``into``/code."""
    data = subprocess.run(["git", "-C", str(REPO), "archive", rev, *paths], check=True, capture_output=True).stdout
    tar = into / "before.tar"
    tar.write_bytes(data)
    with tarfile.open(tar) as t:
        t.extractall(into / "code", filter="data")
    return into / "code"


def wait_answering(url: str, timeout: float = 30.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Until a GET of ``url`` gets any HTTP answer; RuntimeError when ``proc`` exits or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode} before {url} answered")
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer in {timeout} s")


@contextmanager
def served(argv: Sequence[str], ready_url: str, env: dict[str, str] | None = None, cwd: Path | None = None,
           timeout: float = 30.0) -> Iterator[subprocess.Popen[bytes]]:  # fmt: skip
    """Run ``argv`` (output discarded) until ``ready_url`` answers; SIGTERM (SIGKILL after 20 s) at the end."""
    proc = subprocess.Popen(list(argv), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, **(env or {})}, cwd=cwd)  # fmt: skip
    try:
        wait_answering(ready_url, timeout, proc)
        yield proc
    finally:
        stop(proc)
