"""Model servers' log files stay bounded, and Triton's admin APIs are shut to clients (review12d F1).

A stranger on the LAN set Triton's log verbosity to 3 on its own port (published in /services): its log, which
the process runtime opened in append mode and never rotated, grew ~1.5 MB/s under small infers here.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from agent.runtime import triton
from agent.runtime.process import LOG_MAX_BYTES, ProcessRuntime, bound_log

ROOT = Path(__file__).resolve().parents[2]


def test_a_log_past_its_bound_is_cut_in_place_and_the_writer_goes_on_at_its_start(tmp_path: Path) -> None:
    path = tmp_path / "m.log"
    with open(path, "ab", buffering=0) as server:  # as the server holds it: append mode, inherited fd
        server.write(b"a" * 1000 + b"b" * 2000)
        assert not bound_log(path, 3000)  # at the bound: left alone
        server.write(b"c" * 100)
        assert bound_log(path, 3000)
        assert path.stat().st_size == 0
        assert (tmp_path / "m.log.1").read_bytes() == b"a" * 900 + b"b" * 2000 + b"c" * 100  # the last 3000 bytes
        server.write(b"after the cut\n")
    # The next write landed at the new end: no hole of NULs up to the writer's old offset.
    assert path.read_bytes() == b"after the cut\n"
    assert not bound_log(tmp_path / "absent.log", 3000)


def test_a_second_cut_replaces_the_old_file_so_two_files_are_kept_at_most(tmp_path: Path) -> None:
    path = tmp_path / "m.log"
    for round_ in range(5):
        path.write_bytes(bytes([65 + round_]) * 5000)
        assert bound_log(path, 2048)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.log", "m.log.1"]
    assert (tmp_path / "m.log.1").read_bytes() == b"E" * 2048


def test_a_log_is_cut_even_when_its_end_cannot_be_kept(tmp_path: Path) -> None:
    """A full disk (here: the old file's place is taken by a directory) must not leave the log growing, nor raise
    into the reconcile round that calls this."""
    path = tmp_path / "m.log"
    path.write_bytes(b"z" * 5000)
    (tmp_path / "m.log.1.tmp").mkdir()
    assert bound_log(path, 2048)
    assert path.stat().st_size == 0 and not (tmp_path / "m.log.1").exists()


def test_the_process_runtime_bound_is_at_least_a_kib(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        ProcessRuntime("127.0.0.1", tmp_path, log_max_bytes=1023)
    assert ProcessRuntime("127.0.0.1", tmp_path).log_max_bytes == LOG_MAX_BYTES


def test_a_left_over_log_past_the_bound_is_cut_when_its_model_starts_again(tmp_path: Path) -> None:
    runtime = ProcessRuntime("127.0.0.1", tmp_path, log_max_bytes=4096)
    (tmp_path / "logs" / "digits.log").write_bytes(b"x" * 10_000)
    path = runtime._log_path("digits")
    assert path.stat().st_size == 0 and (tmp_path / "logs" / "digits.log.1").stat().st_size == 4096


def _install() -> triton.TritonInstall:
    bin_ = Path("/opt/tritonserver/bin/tritonserver")
    return triton.TritonInstall(bin_, bin_.parent, bin_.parent, bin_.parent)


def test_tritons_admin_apis_are_restricted_to_a_key_given_nobody() -> None:
    key = triton.admin_key()
    assert re.fullmatch(r"[0-9a-f]{32}", key) and key != triton.admin_key()  # fresh each start
    argv = triton.command(_install(), Path("/r"), Path("/b"), "127.0.0.1", 8000, key)
    [flag] = [a for a in argv if a.startswith("--http-restricted-api=")]
    apis, header = flag.split("=", 1)[1].split(":")
    assert set(apis.split(",")) == {"shared-memory", "model-repository", "logging", "trace"}
    assert header == f"peerserve-admin={key}"
    for bad in ("", "a b", "k=v", "a,b:c"):  # would change what the flag restricts, or restrict nothing
        with pytest.raises(ValueError):
            triton.command(_install(), Path("/r"), Path("/b"), "127.0.0.1", 8000, bad)


@pytest.mark.parametrize("image", ["triton-x86", "triton-jetson"])
def test_both_triton_images_start_with_the_same_restriction_and_a_fresh_key(image: str) -> None:
    lines = (ROOT / "images" / image / "Dockerfile").read_text().splitlines()
    [cmd] = [json.loads(line[len("CMD ") :]) for line in lines if line.startswith("CMD ")]
    assert cmd[:2] == ["sh", "-c"] and cmd[2].startswith("exec tritonserver ")
    flag = f"--http-restricted-api={triton.RESTRICTED_APIS}:{triton.ADMIN_HEADER}="
    assert f"{flag}$(od -An -N16 -tx1 /dev/urandom | tr -d ' \\n')" in cmd[2]
