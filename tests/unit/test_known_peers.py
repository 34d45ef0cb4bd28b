"""The peers an agent saves for its next start: merged, bounded, parsed strictly, saved atomically."""

from __future__ import annotations

import errno
import logging
import os
import stat
from pathlib import Path

import pytest

from agent.known_peers import FILE_NAME, FORGET_AFTER_S, MAX_KNOWN, KnownPeer, load, merge, parse, save
from tests.unit.test_state_version import recorded_fsyncs

URL = "https://10.0.0.{}:8401"


def test_merge_keeps_one_entry_per_node_the_latest_first() -> None:
    old = [KnownPeer("b", URL.format(2), 10.0), KnownPeer("c", URL.format(3), 20.0)]
    merged = merge(old, [("b", URL.format(9)), ("d", URL.format(4))], now=30.0)
    assert merged == [KnownPeer("b", URL.format(9), 30.0), KnownPeer("d", URL.format(4), 30.0),
                      KnownPeer("c", URL.format(3), 20.0)]  # fmt: skip


def test_merge_forgets_peers_not_seen_for_a_day_and_ignores_blanks() -> None:
    old = [KnownPeer("b", URL.format(2), 0.0), KnownPeer("c", URL.format(3), 5.0)]
    merged = merge(old, [("", URL.format(7)), ("e", "")], now=FORGET_AFTER_S + 1.0)
    assert merged == [KnownPeer("c", URL.format(3), 5.0)]


def test_merge_is_bounded() -> None:
    alive = [(f"n{i}", URL.format(i % 250)) for i in range(MAX_KNOWN + 50)]
    merged = merge([], alive, now=1.0)
    assert len(merged) == MAX_KNOWN and len(merge(merged, [("x", URL.format(1))], now=2.0)) == MAX_KNOWN
    assert merge(merged, [("x", URL.format(1))], now=2.0)[0].node_id == "x"  # the newest stays


def test_parse_skips_what_is_malformed_and_is_bounded() -> None:
    good = {"node_id": "b", "peer_url": URL.format(2), "seen_at": 1.5}
    bad = [7, {"node_id": 3, "peer_url": URL.format(2), "seen_at": 1}, {"node_id": "c", "peer_url": "http://x",
           "seen_at": 1}, {"node_id": "d", "peer_url": URL.format(4), "seen_at": True}, {"node_id": "e"}]  # fmt: skip
    assert parse([*bad, good]) == [KnownPeer("b", URL.format(2), 1.5)]
    assert parse({"not": "a list"}) == [] and len(parse([good] * (MAX_KNOWN + 10))) == MAX_KNOWN


def test_save_then_load_round_trips_and_a_broken_file_is_ignored(tmp_path: Path) -> None:
    peers = [KnownPeer("b", URL.format(2), 3.0)]
    save(tmp_path, peers)
    assert load(tmp_path) == peers and not (tmp_path / "known-peers.tmp").exists()
    (tmp_path / FILE_NAME).write_text("{broken")
    assert load(tmp_path) == [] and load(tmp_path / "missing") == []
    save(tmp_path / "missing", peers)  # a directory that does not exist: logged, never raised
    assert not (tmp_path / "missing").exists()


@pytest.mark.parametrize(
    "text",
    ["[" * 100_000 + "]" * 100_000, '[{"node_id": "b", "peer_url": "https://b", "seen_at": 1' + "0" * 400 + "}]"],
)
def test_a_deeply_nested_or_overflowing_file_is_ignored_not_a_crash(tmp_path: Path, text: str) -> None:
    """review27b F1: json.loads' RecursionError and float()'s OverflowError escaped load, ending every start."""
    (tmp_path / FILE_NAME).write_text(text)
    assert load(tmp_path) == []


def test_save_is_durable_the_folder_is_fsynced_after_the_rename(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """tidy18: the rename reaches the disk only with the folder's next journal commit unless the folder is fsynced;
    a power cut before it (boards lose power) lost the new file's directory entry. The file keeps its name; its
    mode is 0600, the agent's own (trust20a: the temporary file is created O_EXCL, never opened through a link)."""
    synced = recorded_fsyncs(monkeypatch)  # (agent/durable.py writes the file)
    peers = [KnownPeer("b", URL.format(2), 3.0)]
    save(tmp_path, peers)
    assert synced == ["file", "folder"] and load(tmp_path) == peers
    assert stat.S_IMODE((tmp_path / FILE_NAME).stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == [FILE_NAME]


def test_a_failing_save_keeps_the_old_file_and_leaves_no_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    old = [KnownPeer("b", URL.format(2), 3.0)]
    save(tmp_path, old)

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with caplog.at_level(logging.WARNING, logger="agent.known_peers"):
        save(tmp_path, [KnownPeer("c", URL.format(3), 4.0)])  # logged, never raised
    assert load(tmp_path) == old and sorted(p.name for p in tmp_path.iterdir()) == [FILE_NAME]
    assert sum("cannot save" in r.message for r in caplog.records) == 1
