"""A start that cannot go on (a damaged state database or node key, a broken settings or catalogue file) ends with
one 'peerserve: error:' line naming the file and what to do, never a traceback; and it counts as a crash, so a
crash loop under systemd backs off (agent/crash_backoff.py) instead of restarting every second (review27b F1, F2)."""

from __future__ import annotations

import errno
import json
import os
import stat
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent import crash_backoff, identity
from agent.durable import tmp_glob
from agent.errors import StateError
from agent.identity import _load_or_create_key
from agent.store import Store
from peerserve.cli import main
from tests.unit.test_state_version import recorded_fsyncs

TOKEN = "startup-errors-cluster-token-0123"


@pytest.fixture(autouse=True)
def _no_agent_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The agent reads PEERSERVE_* variables; its log set-up replaces the root logger's handlers (pytest's too)."""
    for name in list(os.environ):
        if name.startswith("PEERSERVE_"):
            monkeypatch.delenv(name)
    monkeypatch.setattr("agent.logs.configure", lambda *a, **k: None)


def start(data: Path, *extra: str) -> tuple[int, str]:
    """One `peerserve agent` start that must fail before serving: its exit status and stderr."""
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = main(["agent", "--host", "127.0.0.1", "--port", "1", "--no-discovery", "--data-dir", str(data), *extra])
    return rc, err.getvalue()


def crashes(data: Path) -> int:
    return int(json.loads((data / crash_backoff.RECORD).read_text())["crashes"])


def test_a_damaged_database_is_refused_by_name_and_the_restarts_back_off(tmp_path: Path) -> None:
    """Before: sqlite3.DatabaseError's traceback on each start, from NodeAgent() before crash_backoff ran: no record,
    so no delay ever (the reviewer's 5 starts: 1 s each, crash.json absent). Now each start is counted (the 3rd
    in a row within 60 s of the last would wait 2 s: the count is what is checked, no time)."""
    data = tmp_path / "data"
    data.mkdir()
    damaged = bytes(range(256)) * 32  # 8 KiB that are no SQLite file
    (data / "peerserve.sqlite3").write_bytes(damaged)
    seen = []
    for _ in range(3):
        rc, err = start(data)
        assert rc == 2 and "Traceback" not in err
        assert err.startswith(f"peerserve: error: cannot use the state database {data / 'peerserve.sqlite3'}")
        assert "move it aside" in err and "election term and vote" in err
        seen.append(crashes(data))
    assert seen == [0, 1, 2]
    assert (data / "peerserve.sqlite3").read_bytes() == damaged  # never replaced: it holds the election's state


def test_an_empty_node_key_is_refused_by_name_saying_what_a_new_one_costs(tmp_path: Path) -> None:
    """What a power cut soon after the first start left before the key was written durably: a traceback
    (ValueError from the PEM loader) on every start."""
    data = tmp_path / "data"
    (data / "peer").mkdir(parents=True)
    (data / "peer" / "node.key").write_bytes(b"")
    rc, err = start(data, "--cluster-token", TOKEN)
    assert rc == 2 and "Traceback" not in err
    assert err.startswith(f"peerserve: error: this node's key {data / 'peer' / 'node.key'} is damaged (empty;")
    assert "peerserve pins forget" in err and "board card" in err
    assert crashes(data) == 0  # counted: the next start in a row is one more crash
    assert (data / "peer" / "node.key").read_bytes() == b""


@pytest.mark.parametrize(
    "content",
    [b"", b"-----BEGIN PRIVATE KEY-----\nAAAA", b"x" * 100_000, b"not a key"],
    ids=["empty", "torn", "big", "junk"],
)
def test_a_damaged_key_is_a_state_error_never_replaced(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "peer" / "node.key"
    path.parent.mkdir()
    path.write_bytes(content)
    with pytest.raises(StateError, match="is damaged"):
        _load_or_create_key(path)
    assert path.read_bytes() == content


def test_a_non_ed25519_key_is_refused(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    path = tmp_path / "node.key"
    path.write_bytes(ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))  # fmt: skip
    with pytest.raises(StateError, match="not an Ed25519 key"):
        _load_or_create_key(path)


def test_the_node_key_is_made_durably_and_never_replaces_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: opened O_CREAT|O_EXCL and written in place, no fsync of file or folder (a power cut could leave it
    empty). Now: a temporary file fsynced, linked into place, the folder fsynced; 0600; no temporary file left."""
    synced = recorded_fsyncs(monkeypatch)
    path = tmp_path / "peer" / "node.key"
    key = _load_or_create_key(path)
    assert synced == ["file", "folder"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and path.stat().st_nlink == 1
    assert list(path.parent.glob(tmp_glob(path))) == []
    raw = serialization.Encoding.Raw, serialization.PublicFormat.Raw
    assert _load_or_create_key(path).public_key().public_bytes(*raw) == key.public_key().public_bytes(*raw)


def test_a_key_made_meanwhile_by_another_start_is_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The link never replaces a key already there: the one another start made first is the node's."""
    path = tmp_path / "node.key"
    theirs = Ed25519PrivateKey.generate()
    pem = theirs.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                               serialization.NoEncryption())  # fmt: skip
    real_link = os.link

    def link_after_theirs(src: str, dst: str) -> None:
        Path(dst).write_bytes(pem)
        real_link(src, dst)

    monkeypatch.setattr(os, "link", link_after_theirs)
    mine = _load_or_create_key(path)
    raw = serialization.Encoding.Raw, serialization.PublicFormat.Raw
    assert mine.public_key().public_bytes(*raw) == theirs.public_key().public_bytes(*raw)
    assert path.read_bytes() == pem and list(tmp_path.glob(tmp_glob(path))) == []


def test_a_crashs_temporary_key_is_removed_once_the_key_is_in_place(tmp_path: Path) -> None:
    """Only an old one (review27c I2): a temporary key file written just now may be another start's, being linked."""
    path = tmp_path / "node.key"
    _load_or_create_key(path)
    left = tmp_path / "node.key.0123456789abcdef.tmp"
    left.write_bytes(b"a key never used")
    _load_or_create_key(path)
    assert left.exists()  # fresh: kept
    old = time.time() - identity.STALE_KEY_TMP_S - 5
    os.utime(left, (old, old))
    _load_or_create_key(path)
    assert not left.exists()


RAW = serialization.Encoding.Raw, serialization.PublicFormat.Raw


def after_the_first_write(monkeypatch: pytest.MonkeyPatch, others: Callable[[Path], None]) -> None:
    """Run ``others`` (the starts racing this one) once, right after the first temporary key file is written and
    synced, before this start links it into place: inside the start under test only."""
    real = identity.write_synced
    raced = [False]

    def racing(tmp: Path, data: bytes) -> os.stat_result:
        st = real(tmp, data)
        if not raced[0]:
            raced[0] = True
            others(tmp)
        return st

    monkeypatch.setattr(identity, "write_synced", racing)


def test_three_first_starts_at_once_agree_on_one_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """review27c I2 (the reviewer's race): C writes its temporary key; B makes the key; A finds it and removed every
    temporary file, C's among them, so C's link failed ENOENT, a FileNotFoundError traceback. Now A leaves a fresh
    temporary file alone and C links into a key already there: all three have B's key, no temporary file is left."""
    path = tmp_path / "peer" / "node.key"
    others: list[Ed25519PrivateKey] = []

    def b_and_a(tmp: Path) -> None:
        others.extend([_load_or_create_key(path), _load_or_create_key(path)])  # B makes the key, A finds it

    after_the_first_write(monkeypatch, b_and_a)
    c = _load_or_create_key(path)
    b, a = others
    assert c.public_key().public_bytes(*RAW) == b.public_key().public_bytes(*RAW) == a.public_key().public_bytes(*RAW)
    assert list(path.parent.glob(tmp_glob(path))) == []


@pytest.mark.parametrize("links", [True, False], ids=["hard links", "no hard links (rename)"])
def test_a_start_whose_temporary_key_went_reads_the_key_another_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, links: bool
) -> None:
    """review27c I2: the same race where C's temporary file is old enough to be removed (its write stalled, or the
    clock jumped): the link (or, without hard links, the rename) fails ENOENT, and C reads the key B made."""
    path = tmp_path / "node.key"
    made: list[Ed25519PrivateKey] = []

    def b_then_a(tmp: Path) -> None:
        made.append(_load_or_create_key(path))  # B makes the key
        old = time.time() - identity.STALE_KEY_TMP_S - 5
        os.utime(tmp, (old, old))
        _load_or_create_key(path)  # A: finds the key, removes C's temporary file
        assert not tmp.exists()

    after_the_first_write(monkeypatch, b_then_a)
    if not links:
        real_link = os.link

        def no_links(src: Path, dst: Path) -> None:
            if Path(dst) == path and made and not Path(src).exists():
                raise OSError(errno.EPERM, "Operation not permitted")
            real_link(src, dst)

        monkeypatch.setattr(os, "link", no_links)
    c = _load_or_create_key(path)
    assert c.public_key().public_bytes(*RAW) == made[0].public_key().public_bytes(*RAW)


def test_a_temporary_key_gone_with_no_key_in_place_is_a_state_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "node.key"
    real = identity.write_synced

    def vanishing(tmp: Path, data: bytes) -> os.stat_result:
        st = real(tmp, data)
        tmp.unlink()
        return st

    monkeypatch.setattr(identity, "write_synced", vanishing)
    with pytest.raises(StateError, match="was removed before it was linked into place, and no key is there"):
        _load_or_create_key(path)


@pytest.mark.parametrize("code", [errno.EPERM, errno.EOPNOTSUPP, errno.ENOSYS])
def test_a_file_system_without_hard_links_gets_the_key_renamed_into_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    """FAT answers link(2) EPERM; some FUSE file systems ENOSYS (review27c I5: that was a traceback at every start)."""

    def no_link(src: Path, dst: Path) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "link", no_link)
    path = tmp_path / "peer" / "node.key"
    key = _load_or_create_key(path)
    assert _load_or_create_key(path).public_key().public_bytes(*RAW) == key.public_key().public_bytes(*RAW)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and list(path.parent.glob(tmp_glob(path))) == []


def test_a_database_with_damaged_pages_is_refused_as_the_agent_reads_it(tmp_path: Path) -> None:
    """A file SQLite opens (its header intact) but cannot read: the first read raises, named as a StateError."""
    store = Store(tmp_path)
    store.set_desired(__import__("agent.store", fromlist=["DesiredState"]).DesiredState({"m": 1}, 1, "a"))
    store.close()
    db = tmp_path / "peerserve.sqlite3"
    for extra in (db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
        extra.unlink(missing_ok=True)
    raw = bytearray(db.read_bytes())
    raw[100:] = b"\xff" * (len(raw) - 100)  # every page's content, the 100-byte header kept
    db.write_bytes(bytes(raw))
    from agent.node import NodeAgent
    from agent.settings import Settings

    with pytest.raises(StateError, match="cannot use the state database"):
        NodeAgent(Settings(node_id="n1", data_dir=str(tmp_path), discovery=False, port=40599))


@pytest.mark.parametrize("case", ["config not utf-8", "catalogue missing", "catalogue a folder"])
def test_a_broken_settings_or_catalogue_file_is_one_error_line(tmp_path: Path, case: str) -> None:
    """review27b F2: these were tracebacks (UnicodeDecodeError, FileNotFoundError, IsADirectoryError)."""
    data = tmp_path / "data"
    if case == "config not utf-8":
        cfg = tmp_path / "peerserve.toml"
        cfg.write_bytes(b"port = 1\n# \xff\xfe\n")
        rc, err = start(data, "--config", str(cfg))
        named = str(cfg)
    else:
        cat = tmp_path / "catalogue.toml"
        if case == "catalogue a folder":
            cat.mkdir()
        rc, err = start(data, "--catalogue", str(cat))
        named = str(cat)
    assert rc == 2 and "Traceback" not in err
    assert err.startswith("peerserve: error: ") and named in err and err.count("\n") == 1
