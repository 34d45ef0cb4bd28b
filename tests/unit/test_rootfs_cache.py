"""scripts/rootfs-cache.sh, build-images.sh's cache fill, with several builders at once on an empty cache (the Docker
cluster test's engines on a fresh machine): every one succeeds and the cache is one builder's whole output.

The real script runs; only mmdebstrap is replaced, through PEERSERVE_ROOTFS_BUILDER (which exists for this test
alone), by a writer that takes ~1 s and tags each line with its builder, so a mix of writers or a cut-off file
shows. Before the lock, three such fills at once failed two of three times (the second and third `mv` found no
partial file) and the cache held lines of 2-3 writers."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "rootfs-cache.sh"
CODENAME = "testcode"
LINES = 10

STAND_IN = """#!/usr/bin/env bash
# stand-in for mmdebstrap: $1 codename, $2 output; STANDIN_ID names the writer, STANDIN_FAIL=1 stops half way
set -euo pipefail
echo "$STANDIN_ID" >> "$STANDIN_CALLS"
for i in $(seq 1 @LINES@); do
  printf 'stream-%s-%s-part-%02d\\n' "$STANDIN_ID" "$1" "$i" >> "$2"
  if [ "${STANDIN_FAIL:-0}" = 1 ] && [ "$i" = 5 ]; then exit 1; fi
  sleep 0.1
done
""".replace("@LINES@", str(LINES))


def stand_in(tmp_path: Path) -> tuple[Path, Path]:
    builder = tmp_path / "builder.sh"
    builder.write_text(STAND_IN)
    builder.chmod(0o755)
    return builder, tmp_path / "calls"


def fill(cache: Path, builder: Path, calls: Path, writer: str, fail: bool = False) -> subprocess.Popen[str]:
    env = {**os.environ, "PEERSERVE_ROOTFS_BUILDER": str(builder), "STANDIN_ID": writer,
           "STANDIN_CALLS": str(calls), "STANDIN_FAIL": "1" if fail else "0"}  # fmt: skip
    argv = ["bash", str(SCRIPT), str(cache), CODENAME]
    return subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def whole_output(writer: str) -> str:
    return "".join(f"stream-{writer}-{CODENAME}-part-{i:02d}\n" for i in range(1, LINES + 1))


def test_three_fills_of_an_empty_cache_at_once_all_succeed_with_one_writers_whole_output(tmp_path: Path) -> None:
    builder, calls = stand_in(tmp_path)
    cache = tmp_path / "cache"  # not there yet: the script makes it, as on a fresh machine
    for attempt in range(3):
        if cache.exists():
            for f in cache.iterdir():
                f.unlink()
        calls.unlink(missing_ok=True)
        procs = [fill(cache, builder, calls, f"w{attempt}{k}") for k in range(3)]
        outs = [p.communicate(timeout=60)[0] for p in procs]
        assert [p.returncode for p in procs] == [0, 0, 0], outs
        writers = calls.read_text().split()
        assert len(writers) == 1, f"the lock let {writers} build"  # the others waited and reused its file
        assert (cache / f"python-rootfs-{CODENAME}.tar").read_text() == whole_output(writers[0])
        assert sorted(f.name for f in cache.iterdir()) == [".rootfs.lock", f"python-rootfs-{CODENAME}.tar"]


def test_a_failed_build_leaves_no_cache_file_and_the_next_fill_builds(tmp_path: Path) -> None:
    builder, calls = stand_in(tmp_path)
    cache = tmp_path / "cache"
    failed = fill(cache, builder, calls, "bad", fail=True)
    failed.communicate(timeout=60)
    assert failed.returncode != 0
    assert [f.name for f in cache.iterdir()] == [".rootfs.lock"]  # its partial file was removed, nothing renamed
    good = fill(cache, builder, calls, "good")
    good.communicate(timeout=60)
    assert good.returncode == 0
    rootfs = cache / f"python-rootfs-{CODENAME}.tar"
    assert rootfs.read_text() == whole_output("good")
    assert rootfs.stat().st_mode & 0o777 == 0o644


def test_a_filled_cache_is_reused_without_building(tmp_path: Path) -> None:
    builder, calls = stand_in(tmp_path)
    cache = tmp_path / "cache"
    cache.mkdir()
    rootfs = cache / f"python-rootfs-{CODENAME}.tar"
    rootfs.write_text("an earlier build\n")
    done = fill(cache, builder, calls, "again")
    done.communicate(timeout=60)
    assert done.returncode == 0
    assert rootfs.read_text() == "an earlier build\n" and not calls.exists()
