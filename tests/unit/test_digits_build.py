"""``python -m agent.digits build`` run by several builders at once into one file (build-images.sh in each of the
Docker cluster test's engines when the weights are missing): each writes a temp file of its own and renames it, so
every one succeeds and the file is one whole build (they all used to write the same ``digits.tmp``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from agent.digits import load_weights

ROOT = Path(__file__).resolve().parents[2]


def test_three_builds_at_once_into_one_file_all_succeed_and_leave_one_whole_file(tmp_path: Path) -> None:
    out = tmp_path / "models" / "digits.json"
    # One BLAS thread a builder: three builders on the 2-core CI machine each spun a pool of two (three builds took
    # 15.0 / 12.2 s of CPU with the default pools, 11.5 / 10.5 s with one thread each, on this machine); nothing here
    # depends on how a builder's BLAS is threaded: what is tested is three writers of one file at once.
    threads = {k: "1" for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
    env = {**os.environ, "PYTHONPATH": str(ROOT), **threads}
    argv = [sys.executable, "-m", "agent.digits", "build", "--out", str(out)]
    procs = [subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(3)]  # fmt: skip
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outs
    weights = load_weights(str(out))  # whole: it parses, and it is exactly what one build writes
    assert out.read_text() == json.dumps(weights.to_json()) and len(weights.heldout) == 450
    assert [f.name for f in out.parent.iterdir()] == ["digits.json"]  # no temp file left behind
    assert out.stat().st_mode & 0o777 == 0o644
